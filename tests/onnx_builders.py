"""Tiny ONNX decoders written with onnx.helper in the patterns real exporters emit.

Each builder takes a :class:`DecoderProgram` with random weights (from
``random_decoder``) and writes the same decoder as an ONNX graph in one exporter's
style, so a test can import the file and compare against onnxruntime and the source
program. Styles:

- ``llama``: torch.onnx (dynamo) Llama: decomposed RMSNorm (Pow/ReduceMean/Add/Sqrt/
  Reciprocal/Mul), rotate-half RoPE from a cos/sin subgraph (Range, Cast, Mul, Concat,
  Cos, Sin) with Slice/Neg/Concat, GQA by Unsqueeze/Expand/Reshape, a causal mask from
  Range/Less/Where or Trilu, SwiGLU as Sigmoid/Mul;
- ``gpt2``: LayerNormalization, fused QKV (Gemm on a 2-D reshape) then Split, GELU-tanh
  decomposed, learned positions;
- ``opt``: decomposed LayerNorm, biased MatMul+Add, q scaled before the product, ReLU,
  positions from CumSum(attention_mask) with offset 2;
- ``genai``: onnxruntime-genai model-builder style: SimplifiedLayerNormalization and
  SkipSimplifiedLayerNormalization, MatMulNBits int4 weights, GroupQueryAttention with
  its own rotary embedding, past_key_values inputs and present outputs;
- ``msrope``: com.microsoft RotaryEmbedding and QDQ int8 weights (DequantizeLinear).
"""

from __future__ import annotations

import math
from pathlib import Path

import numpy as np
import onnx
from onnx import TensorProto, helper, numpy_helper

from flightforge.compiler.graph import DecoderProgram, LinearParams

F32 = np.float32


class GraphBuilder:
    """Collects nodes and initialisers; ``op`` returns the output name(s)."""

    def __init__(self):
        self.nodes: list[onnx.NodeProto] = []
        self.inits: list[onnx.TensorProto] = []
        self._n = 0

    def name(self, stem: str) -> str:
        self._n += 1
        return f"{stem}_{self._n}"

    def const(self, value, stem: str = "c", dtype=None) -> str:
        arr = np.asarray(
            value,
            dtype=dtype
            if dtype is not None
            else (F32 if np.asarray(value).dtype.kind == "f" else np.int64),
        )
        name = self.name(stem)
        self.inits.append(numpy_helper.from_array(arr, name))
        return name

    def op(
        self,
        op: str,
        *inputs: str,
        outputs: int = 1,
        domain: str = "",
        stem: str | None = None,
        out: str | None = None,
        **attrs,
    ):
        outs = [out] if out else [self.name(stem or op.lower()) for _ in range(outputs)]
        self.nodes.append(
            helper.make_node(
                op, list(inputs), outs, name=self.name("n_" + op), domain=domain, **attrs
            )
        )
        return outs[0] if outputs == 1 else outs

    def model(self, inputs, outputs, opset: int = 18) -> onnx.ModelProto:
        graph = helper.make_graph(self.nodes, "decoder", inputs, outputs, self.inits)
        m = helper.make_model(
            graph,
            opset_imports=[helper.make_opsetid("", opset), helper.make_opsetid("com.microsoft", 1)],
        )
        m.ir_version = 9
        return m


def _io(vocab: int, past: list[tuple[str, int, int]] = ()):
    ins = [
        helper.make_tensor_value_info("input_ids", TensorProto.INT64, [1, "seq"]),
        helper.make_tensor_value_info("attention_mask", TensorProto.INT64, [1, "total"]),
    ]
    for name, kv, d in past:
        ins.append(helper.make_tensor_value_info(name, TensorProto.FLOAT, [1, kv, "past", d]))
    outs = [helper.make_tensor_value_info("logits", TensorProto.FLOAT, [1, "seq", vocab])]
    return ins, outs


# -------------------------------------------------------------------------- components


class Parts:
    """Pattern fragments shared by the styles; ``b`` is the GraphBuilder."""

    def __init__(self, b: GraphBuilder, prog: DecoderProgram, heads: int):
        self.b, self.p, self.heads = b, prog, heads
        self.d, self.kv = prog.head_dim, prog.kv_heads
        # sequence length and positions 0..S-1 as plumbing
        shp = b.op("Shape", "input_ids")
        self.seq = b.op("Gather", shp, b.const(1), axis=0)  # scalar
        self.seq1 = b.op("Unsqueeze", self.seq, b.const([0]))  # [1]
        self.pos = b.op("Range", b.const(0), self.seq, b.const(1))  # [S] int64

    def weight(self, key: str, mode: str = "float") -> tuple[str, str | None]:
        """``[in][out]`` weight for MatMul as an initialiser or a QDQ subgraph; bias name."""
        lp = self.p.linears[key]
        wt = lp.w.T.astype(F32)
        if mode == "qdq":
            scale = np.abs(wt).max(axis=0) / 127.0
            q = np.clip(np.round(wt / scale), -127, 127).astype(np.int8)
            w = self.b.op(
                "DequantizeLinear",
                self.b.const(q, "wq", np.int8),
                self.b.const(scale.astype(F32), "ws"),
                axis=1,
            )
        else:
            w = self.b.const(wt, "w_" + key)
        return w, (self.b.const(lp.b.astype(F32), "b_" + key) if lp.b is not None else None)

    def linear(self, x: str, key: str, mode: str = "float") -> str:
        if mode == "nbits":
            return self.nbits(x, key)
        w, bias = self.weight(key, mode)
        y = self.b.op("MatMul", x, w)
        return self.b.op("Add", y, bias) if bias is not None else y

    def nbits(self, x: str, key: str, block: int = 32, lp=None, out: str | None = None) -> str:
        """MatMulNBits int4 with symmetric blocks (default zero point 8)."""
        lp = lp or self.p.linears[key]
        n, k = lp.w.shape
        blocks = -(-k // block)
        w = np.zeros((n, blocks * block))
        w[:, :k] = lp.w
        w = w.reshape(n, blocks, block)
        scale = np.maximum(np.abs(w).max(axis=2), 1e-8) / 7.0
        q = (np.clip(np.round(w / scale[..., None]), -8, 7) + 8).astype(np.uint8)
        packed = (q[..., 0::2] | (q[..., 1::2] << 4)).astype(np.uint8)
        ins = [
            x,
            self.b.const(packed, "wq", np.uint8),
            self.b.const(scale.reshape(-1).astype(F32), "ws"),
        ]
        if lp.b is not None:
            ins += ["", "", self.b.const(lp.b.astype(F32), "b")]
        return self.b.op(
            "MatMulNBits", *ins, domain="com.microsoft", K=k, N=n, bits=4, block_size=block, out=out
        )

    def rms(self, x: str, key: str, style: str = "reciprocal") -> str:
        n = self.p.norms[key]
        b = self.b
        sq = b.op("Pow", x, b.const(2.0))
        ms = b.op("ReduceMean", sq, b.const([-1]), keepdims=1)
        var = b.op("Add", ms, b.const(np.float32(n.eps)))
        std = b.op("Sqrt", var)
        if style == "reciprocal":
            y = b.op("Mul", x, b.op("Reciprocal", std))
        else:
            y = b.op("Div", x, std)
        return b.op("Mul", b.const(n.gamma.astype(F32), "g"), y)

    def layer_norm(self, x: str, key: str, fused: bool) -> str:
        n = self.p.norms[key]
        b = self.b
        g, be = b.const(n.gamma.astype(F32), "g"), b.const(n.beta.astype(F32), "beta")
        if fused:
            return b.op("LayerNormalization", x, g, be, axis=-1, epsilon=n.eps)
        mean = b.op("ReduceMean", x, b.const([-1]), keepdims=1)
        c = b.op("Sub", x, mean)
        var = b.op("ReduceMean", b.op("Pow", c, b.const(2.0)), b.const([-1]), keepdims=1)
        std = b.op("Sqrt", b.op("Add", var, b.const(np.float32(n.eps))))
        return b.op("Add", b.op("Mul", b.op("Div", c, std), g), be)

    def heads_view(self, x: str, h: int) -> str:
        """[1,S,h*d] -> [1,h,S,d]."""
        r = self.b.op("Reshape", x, self.b.const([1, -1, h, self.d]))
        return self.b.op("Transpose", r, perm=[0, 2, 1, 3])

    def rope_tables(self) -> tuple[str, str]:
        """cos, sin [1,1,S,d] from positions, as torch exports them (inv_freq constant)."""
        b, d = self.b, self.d
        inv = 1.0 / self.p.rope_theta ** (np.arange(d // 2) * 2 / d)
        t = b.op("Cast", b.op("Unsqueeze", self.pos, b.const([1])), to=TensorProto.FLOAT)
        f = b.op("Mul", t, b.const(inv.astype(F32), "inv_freq"))
        emb = b.op("Concat", f, f, axis=-1)
        cs = [b.op("Unsqueeze", b.op(op, emb), b.const([0, 1])) for op in ("Cos", "Sin")]
        return cs[0], cs[1]

    def rotate_half_rope(self, x: str, cos: str, sin: str) -> str:
        b, h = self.b, self.d // 2
        x1 = b.op("Slice", x, b.const([0]), b.const([h]), b.const([-1]))
        x2 = b.op("Slice", x, b.const([h]), b.const([2**62]), b.const([-1]))
        rot = b.op("Concat", b.op("Neg", x2), x1, axis=-1)
        return b.op("Add", b.op("Mul", x, cos), b.op("Mul", rot, sin))

    def repeat_kv(self, x: str) -> str:
        """[1,kv,S,d] -> [1,heads,S,d] by Unsqueeze/Expand/Reshape (torch's repeat_kv)."""
        b = self.b
        g = self.heads // self.kv
        if g == 1:
            return x
        u = b.op("Unsqueeze", x, b.const([2]))
        shape = b.op("Concat", b.const([1, self.kv, g]), self.seq1, b.const([self.d]), axis=0)
        e = b.op("Expand", u, shape)
        return b.op("Reshape", e, b.const([1, self.heads, -1, self.d]))

    def causal_mask(self, style: str) -> str:
        """Additive [S,S] mask: 0 where key <= query, a large negative number elsewhere."""
        b = self.b
        if style == "trilu":
            shape = b.op("Concat", self.seq1, self.seq1, axis=0)
            full = b.op(
                "ConstantOfShape",
                shape,
                value=helper.make_tensor("v", TensorProto.FLOAT, [1], [-1e9]),
            )
            return b.op("Trilu", full, b.const(1), upper=1)
        q = b.op("Unsqueeze", self.pos, b.const([1]))
        k = b.op("Unsqueeze", self.pos, b.const([0]))
        above = b.op("Greater", k, q)
        return b.op("Where", above, b.const(np.float32(-np.inf)), b.const(np.float32(0.0)))

    def sdpa(self, q: str, k: str, v: str, mask: str, scale_style: str = "div") -> str:
        """Scores, mask, softmax, context; q, k, v as [1,h,S,d]; returns [1,S,h*d]."""
        b = self.b
        kt = b.op("Transpose", k, perm=[0, 1, 3, 2])
        s = b.op("MatMul", q, kt)
        if scale_style == "div":
            s = b.op("Div", s, b.const(np.float32(math.sqrt(self.d))))
        elif scale_style == "mul":
            s = b.op("Mul", s, b.const(np.float32(1 / math.sqrt(self.d))))
        s = b.op("Add", s, mask)
        p = b.op("Softmax", s, axis=-1)
        ctx = b.op("MatMul", p, v)
        t = b.op("Transpose", ctx, perm=[0, 2, 1, 3])
        return b.op("Reshape", t, b.const([1, -1, self.heads * self.d]))

    def embed(
        self, offset: int = 0, positions: np.ndarray | None = None, position_ids: str | None = None
    ) -> str:
        b = self.b
        h = b.op("Gather", b.const(self.p.embed.astype(F32), "embed"), "input_ids", axis=0)
        if positions is not None:
            pe = b.op("Gather", b.const(positions.astype(F32), "wpe"), position_ids, axis=0)
            h = b.op("Add", h, pe)
        return h


def _save(model: onnx.ModelProto, path: str | Path, check: bool = True) -> Path:
    """Write the model; the checker knows no contrib ops, so fused styles skip it."""
    path = Path(path)
    if check:
        onnx.checker.check_model(model)
    onnx.save(model, str(path))
    return path


# ------------------------------------------------------------------------------ styles


def llama(
    prog: DecoderProgram,
    heads: int,
    path,
    *,
    mask: str = "where",
    norm_style: str = "reciprocal",
    weights: str = "float",
    past: bool = False,
) -> Path:
    """``past``: Optimum-style ``past_key_values.{i}.key/value`` inputs concatenated with
    the new rows, and ``present.{i}.key/value`` outputs (the mask assumes an empty past)."""
    b = GraphBuilder()
    pasts, presents = [], []
    P = Parts(b, prog, heads)
    cos, sin = P.rope_tables()
    m = P.causal_mask(mask)
    h = P.embed()
    for i in range(prog.layers):
        p = f"l{i}."
        x = P.rms(h, p + "ln1", norm_style)
        q = P.rotate_half_rope(P.heads_view(P.linear(x, p + "q", weights), heads), cos, sin)
        k = P.rotate_half_rope(P.heads_view(P.linear(x, p + "k", weights), P.kv), cos, sin)
        v = P.heads_view(P.linear(x, p + "v", weights), P.kv)
        if past:
            names = [f"past_key_values.{i}.key", f"past_key_values.{i}.value"]
            pasts += [(n, P.kv, P.d) for n in names]
            k = b.op("Concat", names[0], k, axis=2, out=f"present.{i}.key")
            v = b.op("Concat", names[1], v, axis=2, out=f"present.{i}.value")
            presents += [f"present.{i}.key", f"present.{i}.value"]
        ctx = P.sdpa(q, P.repeat_kv(k), P.repeat_kv(v), m, "mul" if i % 2 else "div")
        h = b.op("Add", h, P.linear(ctx, p + "o", weights))
        x = P.rms(h, p + "ln2", norm_style)
        g = P.linear(x, p + "gate", weights)
        act = b.op("Mul", g, b.op("Sigmoid", g))
        h = b.op(
            "Add",
            h,
            P.linear(b.op("Mul", act, P.linear(x, p + "up", weights)), p + "down", weights),
        )
    x = P.rms(h, "final_norm", norm_style)
    b.op("MatMul", x, P.weight("lm_head", weights)[0], out="logits")
    ins, outs = _io(prog.vocab, pasts)
    outs += [
        helper.make_tensor_value_info(n, TensorProto.FLOAT, [1, P.kv, "total", P.d])
        for n in presents
    ]
    return _save(b.model(ins, outs), path)


def gpt2(prog: DecoderProgram, heads: int, path) -> Path:
    b = GraphBuilder()
    P = Parts(b, prog, heads)
    hid = prog.hidden
    m = P.causal_mask("where")
    h = P.embed(0, prog.positions, b.op("Unsqueeze", P.pos, b.const([0])))
    for i in range(prog.layers):
        p = f"l{i}."
        x = b.op("Reshape", P.layer_norm(h, p + "ln1", fused=True), b.const([-1, hid]))
        lq, lk, lv = (prog.linears[p + n] for n in "qkv")
        w = np.concatenate([lq.w, lk.w, lv.w]).T.astype(F32)
        bias = np.concatenate([lq.b, lk.b, lv.b]).astype(F32)
        qkv = b.op("Gemm", x, b.const(w, "c_attn"), b.const(bias, "c_attn_b"))
        qkv = b.op("Reshape", qkv, b.const([1, -1, 3 * hid]))
        q, k, v = b.op("Split", qkv, outputs=3, axis=2, num_outputs=3)
        ctx = P.sdpa(P.heads_view(q, heads), P.heads_view(k, heads), P.heads_view(v, heads), m)
        o = prog.linears[p + "o"]
        y = b.op(
            "Gemm",
            b.op("Reshape", ctx, b.const([-1, hid])),
            b.const(o.w.T.astype(F32)),
            b.const(o.b.astype(F32)),
        )
        h = b.op("Add", b.op("Reshape", y, b.const([1, -1, hid])), h)
        x = P.layer_norm(h, p + "ln2", fused=True)
        f = P.linear(x, p + "fc1")
        inner = b.op(
            "Mul",
            b.op("Add", f, b.op("Mul", b.op("Pow", f, b.const(3.0)), b.const(0.044715))),
            b.const(math.sqrt(2 / math.pi)),
        )
        gelu = b.op(
            "Mul", b.op("Mul", f, b.const(0.5)), b.op("Add", b.op("Tanh", inner), b.const(1.0))
        )
        h = b.op("Add", h, P.linear(gelu, p + "fc2"))
    x = P.layer_norm(h, "final_norm", fused=True)
    tied = b.op("Transpose", b.const(prog.linears["lm_head"].w.astype(F32), "wte"), perm=[1, 0])
    b.op("MatMul", x, tied, out="logits")
    ins, outs = _io(prog.vocab)
    return _save(b.model(ins, outs), path)


def opt(prog: DecoderProgram, heads: int, path) -> Path:
    """OPT keeps position p at row p + 2 of its table; the table gets two extra rows."""
    b = GraphBuilder()
    P = Parts(b, prog, heads)
    table = np.concatenate([np.full((2, prog.hidden), 0.5), prog.positions])
    cs = b.op("CumSum", "attention_mask", b.const(1))
    pos = b.op("Add", b.op("Sub", b.op("Mul", cs, "attention_mask"), b.const(1)), b.const(2))
    m = P.causal_mask("trilu")
    h = P.embed(2, table, pos)
    for i in range(prog.layers):
        p = f"l{i}."
        x = P.layer_norm(h, p + "ln1", fused=False)
        q = b.op("Mul", P.linear(x, p + "q"), b.const(np.float32(1 / math.sqrt(P.d))))
        ctx = P.sdpa(
            P.heads_view(q, heads),
            P.heads_view(P.linear(x, p + "k"), heads),
            P.heads_view(P.linear(x, p + "v"), heads),
            m,
            scale_style="none",
        )
        h = b.op("Add", h, P.linear(ctx, p + "o"))
        x = P.layer_norm(h, p + "ln2", fused=False)
        h = b.op("Add", h, P.linear(b.op("Relu", P.linear(x, p + "fc1")), p + "fc2"))
    x = P.layer_norm(h, "final_norm", fused=False)
    b.op("MatMul", x, P.weight("lm_head")[0], out="logits")
    ins, outs = _io(prog.vocab)
    return _save(b.model(ins, outs), path)


def genai(prog: DecoderProgram, heads: int, path, *, packed: bool = False) -> Path:
    """Model-builder style: fused norms, MatMulNBits, GroupQueryAttention, KV-cache I/O."""
    b = GraphBuilder()
    P = Parts(b, prog, heads)
    d, kv = P.d, P.kv
    inv = 1.0 / prog.rope_theta ** (np.arange(d // 2) * 2 / d)
    ang = np.arange(256)[:, None] * inv[None]
    cos_c, sin_c = (
        b.const(np.cos(ang).astype(F32), "cos_cache"),
        b.const(np.sin(ang).astype(F32), "sin_cache"),
    )
    total = b.op(
        "Cast", b.op("ReduceSum", "attention_mask", b.const([1]), keepdims=0), to=TensorProto.INT32
    )
    seqlens = b.op("Sub", total, b.const(np.int32(1), dtype=np.int32))
    total_len = b.op(
        "Cast",
        b.op("Gather", b.op("Shape", "attention_mask"), b.const(1), axis=0),
        to=TensorProto.INT32,
    )
    h = P.embed()
    past, presents = [], []
    x = b.op(
        "SimplifiedLayerNormalization",
        h,
        b.const(prog.norms["l0.ln1"].gamma.astype(F32)),
        axis=-1,
        epsilon=prog.norms["l0.ln1"].eps,
    )
    for i in range(prog.layers):
        p = f"l{i}."
        pk, pv = f"past_key_values.{i}.key", f"past_key_values.{i}.value"
        past += [(pk, kv, d), (pv, kv, d)]
        if packed:
            keys = [p + "q", p + "k", p + "v"]
            w = np.concatenate([prog.linears[k].w for k in keys])
            qkv = [P.nbits(x, "", lp=LinearParams(w, None)), "", ""]
        else:
            qkv = [P.nbits(x, p + n) for n in "qkv"]
        outs = [b.name("attn"), f"present.{i}.key", f"present.{i}.value"]
        b.nodes.append(
            helper.make_node(
                "GroupQueryAttention",
                qkv + [pk, pv, seqlens, total_len, cos_c, sin_c],
                outs,
                name=b.name("n_gqa"),
                domain="com.microsoft",
                num_heads=heads,
                kv_num_heads=kv,
                do_rotary=1,
            )
        )
        presents += outs[1:]
        o = P.nbits(outs[0], p + "o")
        g2 = prog.norms[p + "ln2"]
        x, _, _, h = b.op(
            "SkipSimplifiedLayerNormalization",
            o,
            h,
            b.const(g2.gamma.astype(F32)),
            outputs=4,
            domain="com.microsoft",
            epsilon=g2.eps,
        )
        gate, up = P.nbits(x, p + "gate"), P.nbits(x, p + "up")
        down = P.nbits(b.op("Mul", b.op("Mul", gate, b.op("Sigmoid", gate)), up), p + "down")
        nxt = prog.norms[f"l{i + 1}.ln1" if i + 1 < prog.layers else "final_norm"]
        x, _, _, h = b.op(
            "SkipSimplifiedLayerNormalization",
            down,
            h,
            b.const(nxt.gamma.astype(F32)),
            outputs=4,
            domain="com.microsoft",
            epsilon=nxt.eps,
        )
    P.nbits(x, "lm_head", out="logits")
    ins, outs = _io(prog.vocab, past)
    outs += [
        helper.make_tensor_value_info(n, TensorProto.FLOAT, [1, kv, "total", d]) for n in presents
    ]
    return _save(b.model(ins, outs), path, check=False)


def msrope(prog: DecoderProgram, heads: int, path) -> Path:
    """Llama with com.microsoft RotaryEmbedding, SimplifiedLayerNormalization and QDQ weights."""
    b = GraphBuilder()
    P = Parts(b, prog, heads)
    d = P.d
    inv = 1.0 / prog.rope_theta ** (np.arange(d // 2) * 2 / d)
    ang = np.arange(256)[:, None] * inv[None]
    cos_c, sin_c = (
        b.const(np.cos(ang).astype(F32), "cos_cache"),
        b.const(np.sin(ang).astype(F32), "sin_cache"),
    )
    pos_ids = b.op("Unsqueeze", P.pos, b.const([0]))
    m = P.causal_mask("where")
    h = P.embed()

    def norm(x, key):
        n = prog.norms[key]
        return b.op(
            "SimplifiedLayerNormalization", x, b.const(n.gamma.astype(F32)), axis=-1, epsilon=n.eps
        )

    def rope(x, nh):
        return b.op(
            "RotaryEmbedding",
            x,
            pos_ids,
            cos_c,
            sin_c,
            domain="com.microsoft",
            num_heads=nh,
            interleaved=0,
        )

    for i in range(prog.layers):
        p = f"l{i}."
        x = norm(h, p + "ln1")
        q = P.heads_view(rope(P.linear(x, p + "q", "qdq"), heads), heads)
        k = P.heads_view(rope(P.linear(x, p + "k", "qdq"), P.kv), P.kv)
        v = P.heads_view(P.linear(x, p + "v", "qdq"), P.kv)
        ctx = P.sdpa(q, P.repeat_kv(k), P.repeat_kv(v), m)
        h = b.op("Add", h, P.linear(ctx, p + "o", "qdq"))
        x = norm(h, p + "ln2")
        g = P.linear(x, p + "gate", "qdq")
        act = b.op("Mul", g, b.op("Sigmoid", g))
        h = b.op(
            "Add", h, P.linear(b.op("Mul", act, P.linear(x, p + "up", "qdq")), p + "down", "qdq")
        )
    x = norm(h, "final_norm")
    b.op("MatMul", x, P.weight("lm_head", "qdq")[0], out="logits")
    ins, outs = _io(prog.vocab)
    return _save(b.model(ins, outs), path, check=False)
