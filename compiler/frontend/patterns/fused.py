"""Fused and contrib operators, one rule each: what ORT transformers optimisations and the
onnxruntime-genai model builder write instead of decomposed patterns.

LayerNormalization, SimplifiedLayerNormalization, RMSNormalization,
Skip[Simplified]LayerNormalization (residual add fused with the next norm), MatMulNBits
(int4/int8 block-quantised weights, dequantised here to float), RotaryEmbedding
(com.microsoft, and ONNX opset 23; rotate-half only), GroupQueryAttention (separate or
packed QKV, with or without its own rotary embedding) and ONNX opset 23 Attention.
"""

from __future__ import annotations

import math

import numpy as np

from ...interpret import rope_float
from ..interpreter import Interpreter, Rule, always, fine
from ..onnx_graph import OnnxNode
from ..probe import causal_probs, fit_theta
from ..tags import Const, KVOut, Layout, Lin, Normed, Tag, Unused, View, close


def _opt(node: OnnxNode, i: int) -> str:
    return node.inputs[i] if len(node.inputs) > i and node.inputs[i] else ""


def _const_vec(ip: Interpreter, node: OnnxNode, i: int, what: str) -> np.ndarray | None:
    name = _opt(node, i)
    if not name:
        return None
    if not isinstance(ip.tags[name], Const):
        raise ip.fail(f"the {what} is not a constant")
    return np.asarray(ip.val(name), np.float64).reshape(-1)


def _norm_out(
    ip: Interpreter, node: OnnxNode, x: View, kind: str, gamma_i: int, beta_i: int | None
) -> Normed:
    if node.attrs.get("axis", -1) not in (-1, ip.val(node.inputs[0]).ndim - 1):
        raise ip.fail("a norm over an axis other than the last")
    if x.factor != 1.0:
        raise ip.fail("a norm of a scaled tensor")
    gamma = _const_vec(ip, node, gamma_i, "norm scale")
    beta = _const_vec(ip, node, beta_i, "norm bias") if beta_i is not None else None
    return Normed(
        (node.name,),
        x.t,
        kind,
        float(node.attrs.get("epsilon", 1e-5)),
        gamma,
        0.0 if beta is None else beta,
    )


def _aux(node: OnnxNode, n: int) -> list[Tag]:
    return [Unused((node.name,)) for _ in range(n)]


def LayerNormalization(ip: Interpreter, node: OnnxNode, tags: list) -> list[Tag]:
    x = ip.view(0)
    ip.layout(x, node.inputs[0], ("SF",))
    kind = "layer" if node.op == "LayerNormalization" else "rms"
    out = _norm_out(ip, node, x, kind, 1, 2 if kind == "layer" else None)
    return [out] + _aux(node, len(node.outputs) - 1)


def SkipLayerNormalization(ip: Interpreter, node: OnnxNode, tags: list) -> list[Tag]:
    """``out = norm(input + skip [+ bias])``; output 3 is the sum, the next residual."""
    layer = node.op == "SkipLayerNormalization"
    if _opt(node, 4 if layer else 3):
        raise ip.fail("a skip norm with a bias input is not supported")
    a, b = ip.view(0), ip.view(1)
    for v, name in ((a, node.inputs[0]), (b, node.inputs[1])):
        ip.layout(v, name, ("SF",))
        if v.factor != 1.0:
            raise ip.fail("a skip norm of a scaled tensor")
    names = [o for o in node.outputs]
    total = ip.val(names[3]) if len(names) > 3 and names[3] else (a.t.value + b.t.value)
    s = ip.emit("add", (b.t, a.t), (node.name,), np.asarray(total).reshape(ip.rows, -1))
    normed = _norm_out(
        ip, node, View((node.name,), s, 1.0), "layer" if layer else "rms", 2, 3 if layer else None
    )
    outs: list[Tag] = [normed] + _aux(node, 2)
    return (outs + [View((node.name,), s, 1.0)])[: len(node.outputs)]


def MatMulNBits(ip: Interpreter, node: OnnxNode, tags: list) -> list[Tag]:
    """Block-quantised weight ``[N][K]``: ``(q - zero_point) * scale`` per block of K."""
    at = node.attrs
    k, n, bits, block = int(at["K"]), int(at["N"]), int(at.get("bits", 4)), int(at["block_size"])
    if bits not in (4, 8):
        raise ip.fail(f"MatMulNBits with {bits}-bit weights is not supported (4 or 8)")
    if _opt(node, 4):
        raise ip.fail("MatMulNBits with g_idx (act-order) is not supported")
    for i in (1, 2, 3):
        if _opt(node, i) and not isinstance(ip.tags[node.inputs[i]], Const):
            raise ip.fail(f"MatMulNBits input {i} is not a constant")
    blocks = -(-k // block)
    raw = np.asarray(ip.val(node.inputs[1]), np.uint8).reshape(n, blocks, -1)
    if bits == 4:
        q = np.stack([raw & 0x0F, raw >> 4], axis=-1).reshape(n, blocks, -1)
    else:
        q = raw
    scales = np.asarray(ip.val(node.inputs[2]), np.float64).reshape(n, blocks)
    if _opt(node, 3):
        zp = np.asarray(ip.val(node.inputs[3]))
        if zp.dtype != np.uint8:
            raise ip.fail("MatMulNBits with float zero points is not supported")
        zp = zp.reshape(n, -1)
        if bits == 4:
            zp = np.stack([zp & 0x0F, zp >> 4], axis=-1).reshape(n, -1)
        zp = zp[:, :blocks].astype(np.float64)
    else:
        zp = np.full((n, blocks), 2.0 ** (bits - 1))
    w = ((q[:, :, :block].astype(np.float64) - zp[..., None]) * scales[..., None]).reshape(n, -1)[
        :, :k
    ]
    x = ip.view(0)
    ip.layout(x, node.inputs[0], ("SF",))
    bias = _const_vec(ip, node, 5, "MatMulNBits bias")
    lin = Lin(x.nodes + (node.name,), x.t, w * x.factor, bias)
    want = x.t.value @ lin.w.T + (0 if bias is None else bias)
    if not close(ip.val(node.outputs[0]).reshape(ip.rows, -1), want, 2e-2):
        raise ip.fail(
            "the dequantised weights do not reproduce MatMulNBits' output (unknown packing)"
        )
    return [lin]


def _rope_theta(ip: Interpreter, node: OnnxNode, cos_i: int, sin_i: int, d: int) -> float:
    cos, sin = _rope_tables(ip, node, cos_i), _rope_tables(ip, node, sin_i)
    if cos.shape[-1] * 2 != d:
        raise ip.fail(
            f"rotary tables cover {cos.shape[-1] * 2} of the head's {d} dimensions "
            f"(partial rotary) which is not supported"
        )
    try:
        return fit_theta(cos, sin, d)
    except ValueError as e:
        raise ip.fail(str(e)) from None


def _rope_tables(ip: Interpreter, node: OnnxNode, i: int) -> np.ndarray:
    """A rotary cache as a ``[positions][head_dim/2]`` table: given so, or (ONNX opset 23
    without position ids) as ``[batch][seq][head_dim/2]`` rows of the probe's positions,
    the same for every batch entry."""
    t = np.asarray(ip.val(node.inputs[i]))
    if t.ndim == 3 and not _opt(node, 3) and node.domain != "com.microsoft":
        if not all(close(t[b], t[0]) for b in range(1, t.shape[0])):
            raise ip.fail("rotary caches differ between batch entries")
        t = t[0]
    if t.ndim != 2:
        raise ip.fail("rotary caches must be [positions][head_dim/2] tables")
    return t


def RotaryEmbedding(ip: Interpreter, node: OnnxNode, tags: list) -> list[Tag]:
    """com.microsoft: (input, position_ids, cos_cache, sin_cache), or ONNX opset 23:
    (X, cos_cache, sin_cache, position_ids)."""
    if node.attrs.get("interleaved", 0):
        raise ip.fail("interleaved RoPE is not supported (the decoder rotates halves)")
    if node.attrs.get("rotary_embedding_dim", 0):
        raise ip.fail("partial rotary (rotary_embedding_dim) is not supported")
    ms = node.domain == "com.microsoft"
    cos_i, sin_i = (2, 3) if ms else (1, 2)
    x = ip.view(0)
    lay = ip.layout(x, node.inputs[0], ("SF", "SHD", "HSD"))
    d = lay.d if lay.kind != "SF" else 2 * _rope_tables(ip, node, cos_i).shape[-1]
    theta = _rope_theta(ip, node, cos_i, sin_i, d)
    want = rope_float(x.t.value, 0, d, theta)
    if not close(lay.to_view(x.factor * want), ip.val(node.outputs[0])):
        raise ip.fail(
            f"the output is not rotate-half RoPE with base {theta:g} at positions "
            f"0..{ip.rows - 1} (position ids or scaling not supported)"
        )
    t = ip.emit("rope", (x.t,), x.nodes + (node.name,), want, theta=theta, d=d)
    return [View((node.name,), t, x.factor)]


def GroupQueryAttention(ip: Interpreter, node: OnnxNode, tags: list) -> list[Tag]:
    at = node.attrs
    heads, kv = int(at["num_heads"]), int(at["kv_num_heads"])
    if (
        at.get("local_window_size", -1) != -1
        or at.get("softcap", 0.0)
        or at.get("smooth_softmax", 0)
    ):
        raise ip.fail("sliding-window, soft-capped or smooth-softmax attention is not supported")
    if at.get("rotary_interleaved", 0):
        raise ip.fail("interleaved RoPE is not supported (the decoder rotates halves)")
    for i in (10, 11):
        if _opt(node, i):
            raise ip.fail(f"GroupQueryAttention input {i} (attention bias / sink) is not supported")
    if _opt(node, 1):  # separate q, k, v
        qkv = []
        for i in range(3):
            v = ip.view(i)
            ip.layout(v, node.inputs[i], ("SF",))
            qkv.append(v)
        d = qkv[0].t.features // heads
        factors = [v.factor for v in qkv]
        ts = [v.t for v in qkv]
    else:  # packed [q | k | v] from one projection
        lin = tags[0]
        if not isinstance(lin, Lin):
            raise ip.fail("packed QKV input is not a projection")
        d = lin.w.shape[0] // (heads + 2 * kv)
        cuts = np.cumsum([0, heads * d, kv * d, kv * d])
        ts, factors = [], [1.0, 1.0, 1.0]
        for j in range(3):
            sl = slice(cuts[j], cuts[j + 1])
            b = None if lin.b is None else lin.b[sl]
            val = lin.x.value @ lin.w[sl].T + (0 if b is None else b)
            ts.append(ip.emit("linear", (lin.x,), lin.nodes, val, w=lin.w[sl], b=b))
    q, k, v = ts
    if factors[2] != 1.0:
        raise ip.fail("a scaled value input")
    if at.get("do_rotary", 0):
        theta = _rope_theta(ip, node, 7, 8, d)
        q = ip.emit("rope", (q,), (node.name,), rope_float(q.value, 0, d, theta), theta=theta, d=d)
        k = ip.emit("rope", (k,), (node.name,), rope_float(k.value, 0, d, theta), theta=theta, d=d)
    scale = float(at.get("scale", 0.0)) or 1.0 / math.sqrt(d)
    out = ip.val(node.outputs[0]).reshape(ip.rows, -1)
    t = ip.emit(
        "attention",
        (q, k, v),
        (node.name,),
        out,
        heads=heads,
        kv_heads=kv,
        d=d,
        factor=scale * factors[0] * factors[1],
    )
    outs = [View((node.name,), t, 1.0), KVOut((node.name,), k), KVOut((node.name,), v)]
    return outs[: len(node.outputs)]


def Attention(ip: Interpreter, node: OnnxNode, tags: list) -> list[Tag]:
    """ONNX opset 23 Attention (what torch.onnx writes for scaled_dot_product_attention at
    opset >= 23): Q, K, V as ``[batch][heads][seq][head_dim]``, or ``[batch][seq][features]``
    with ``q_num_heads``/``kv_num_heads``, and a mask. The decoder runs causal attention,
    so the node's output on the probe prompt must be exactly that (which also checks that
    the mask is the causal one and K/V repeat their KV heads in order)."""
    at = node.attrs
    if at.get("softcap", 0.0):
        raise ip.fail("soft-capped attention is not supported")
    for i in (4, 5):
        if _opt(node, i):
            raise ip.fail(
                "Attention with past key/value inputs is not supported (export "
                "without the KV cache: the compiler keeps its own)"
            )
    if len(node.outputs) > 3 and node.outputs[3]:
        raise ip.fail("the QK product output (qk_matmul_output) is not supported")
    q, k, v = ip.view(0), ip.view(1), ip.view(2)
    if ip.val(node.inputs[0]).ndim == 4:
        lq, lk, lv = (ip.layout(t, node.inputs[i], ("HSD",)) for i, t in enumerate((q, k, v)))
        heads, d = lq.heads, lq.d
        kv_heads = (heads, k.t.features // d)  # K/V repeated to every query head, or not
        if (
            lq.group != 1
            or lk.d != d
            or lv.d != d
            or lk.heads not in kv_heads
            or lv.heads not in kv_heads
        ):
            raise ip.fail(
                f"query ({lq.heads}x{lq.d}), key ({lk.heads}x{lk.d}) and value "
                f"({lv.heads}x{lv.d}) heads disagree"
            )
        out_layout = Layout("HSD", heads, d, 1, ip.val(node.outputs[0]).shape)
    else:
        for i, t in enumerate((q, k, v)):
            ip.layout(t, node.inputs[i], ("SF",))
        heads = int(at.get("q_num_heads", 0))
        if not heads:
            raise ip.fail("3-D Attention inputs need q_num_heads")
        d = q.t.features // heads
        out_layout = None
    kv = k.t.features // d
    if v.t.features != kv * d or heads % kv:
        raise ip.fail(f"{heads} query heads cannot share {k.t.features // d} key heads")
    if v.factor != 1.0:
        raise ip.fail("a scaled value input")
    scale = float(at.get("scale", 0.0)) or 1.0 / math.sqrt(d)
    factor = scale * q.factor * k.factor
    out = ip.val(node.outputs[0])
    ctx = (
        out_layout.to_canon(out, ip.rows)
        if out_layout is not None
        else np.asarray(out).reshape(ip.rows, -1)
    )
    probs = causal_probs(q.t.value, k.t.value, heads, kv, d, factor)
    want = (
        (probs @ v.t.value.reshape(ip.rows, kv, d).transpose(1, 0, 2).repeat(heads // kv, axis=0))
        .transpose(1, 0, 2)
        .reshape(ip.rows, heads * d)
    )
    if not close(ctx, want):
        raise ip.fail(
            "the output is not causal attention of the scaled query-key products "
            "(unsupported mask, bias or scaling)"
        )
    t = ip.emit(
        "attention",
        (q.t, k.t, v.t),
        (node.name,),
        ctx,
        heads=heads,
        kv_heads=kv,
        d=d,
        factor=factor,
    )
    outs = [View((node.name,), t, 1.0), KVOut((node.name,), k.t), KVOut((node.name,), v.t)]
    return outs[: len(node.outputs)]


def QDQ(ip: Interpreter, node: OnnxNode, tags: list) -> list[Tag]:
    raise ip.fail(
        "quantise/dequantise of activations is not supported; only weights given as "
        "DequantizeLinear of initialisers are"
    )


#: one rule per fused op: the rewrite validates the attributes and values as it goes
NORMS = ("LayerNormalization", "SimplifiedLayerNormalization", "RMSNormalization")
SKIP_NORMS = ("SkipSimplifiedLayerNormalization", "SkipLayerNormalization")
RULES = [
    Rule("fused norm", NORMS, always, fine, LayerNormalization),
    Rule("fused residual and norm", SKIP_NORMS, always, fine, SkipLayerNormalization),
    Rule("block-quantised projection", ("MatMulNBits",), always, fine, MatMulNBits),
    Rule("fused rotary embedding", ("RotaryEmbedding",), always, fine, RotaryEmbedding),
    Rule("grouped-query attention", ("GroupQueryAttention",), always, fine, GroupQueryAttention),
    Rule("opset-23 attention", ("Attention",), always, fine, Attention),
    Rule("activation quantisation", ("DequantizeLinear", "QuantizeLinear"), always, fine, QDQ),
]
