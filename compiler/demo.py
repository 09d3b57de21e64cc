"""The built-in example: one quantised Linear layer and one attention head.

It exercises the whole stack before the ONNX frontend is involved: quantisation,
packing, memory planning, tiling, token scheduling, the binary format and a device.
Sections:

- ``linear``: ``y = x W^T + b`` with INT4 weights in groups of 32;
- ``attn_prefill``: a Llama-style head (Q/K/V projections, RoPE, causal softmax,
  output projection) over a prompt of ``length`` tokens, filling the KV cache;
- ``attn_decode``: one new token at position ``length`` against that KV cache.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from flightforge.arch import ArchConfig
from flightforge.isa import Buf, DType, WPrec

from .lower import kernels
from .lower.builder import Builder
from .quant import qref
from .quant.fixed_point import rope_table_bytes
from .quant.quantize import act_scale, quantize_act, quantize_linear

ROPE_THETA = 10000.0


@dataclass(frozen=True)
class DemoSpec:
    length: int = 12  #: prompt length of the prefill section
    d_model: int = 64
    head_dim: int = 16
    linear_out: int = 48
    linear_group: int = 32
    seed: int = 0


@dataclass(frozen=True)
class DemoBuild:
    """The compiled demo with its inputs and both references."""

    program: object  #: flightforge.program.Program
    inputs: dict[str, np.ndarray]  #: float inputs by TensorIO name
    expected_int: dict[str, np.ndarray]  #: quantised reference outputs (bit-exact target)
    expected_float: dict[str, np.ndarray]  #: float outputs (quantisation tolerance)


def _rope_float(x: np.ndarray, pos0: int, theta: float) -> np.ndarray:
    d = x.shape[1]
    h = d // 2
    inv = 1.0 / theta ** (np.arange(h) * 2 / d)
    ang = (pos0 + np.arange(x.shape[0]))[:, None] * inv[None, :]
    c, s = np.cos(ang), np.sin(ang)
    return np.concatenate([x[:, :h] * c - x[:, h:] * s, x[:, h:] * c + x[:, :h] * s], axis=1)


def _attention_float(q, k, v, pos0):
    d = q.shape[1]
    sc = q @ k.T / np.sqrt(d)
    mask = np.arange(k.shape[0])[None, :] > (pos0 + np.arange(q.shape[0]))[:, None]
    sc = np.where(mask, -np.inf, sc)
    p = np.exp(sc - sc.max(axis=1, keepdims=True))
    return (p / p.sum(axis=1, keepdims=True)) @ v


def build_demo(arch: ArchConfig, spec: DemoSpec = DemoSpec()) -> DemoBuild:
    rng = np.random.default_rng(spec.seed)
    L, D, d = spec.length, spec.d_model, spec.head_dim
    x = rng.normal(size=(L, D))
    x_new = rng.normal(size=(1, D))
    w1, b1 = rng.normal(size=(spec.linear_out, D)) * 0.2, rng.normal(size=spec.linear_out) * 0.1
    wq, wk, wv = (rng.normal(size=(d, D)) * 0.25 for _ in range(3))
    wo = rng.normal(size=(D, d)) * 0.25

    # Float model, which also calibrates the static activation scales.
    y1 = x @ w1.T + b1
    q, k, v = _rope_float(x @ wq.T, 0, ROPE_THETA), _rope_float(x @ wk.T, 0, ROPE_THETA), x @ wv.T
    qn = _rope_float(x_new @ wq.T, L, ROPE_THETA)
    kn, vn = _rope_float(x_new @ wk.T, L, ROPE_THETA), x_new @ wv.T
    o = _attention_float(q, k, v, 0)
    on = _attention_float(qn, np.vstack([k, kn]), np.vstack([v, vn]), L)
    y, yn = o @ wo.T, on @ wo.T
    pre_q = np.vstack([x @ wq.T, x_new @ wq.T])
    pre_k = np.vstack([x @ wk.T, x_new @ wk.T])
    s = {
        "x": act_scale(np.vstack([x, x_new])),
        "y1": act_scale(y1),
        "q": act_scale(np.vstack([pre_q, q, qn])),
        "k": act_scale(np.vstack([pre_k, k, kn])),
        "v": act_scale(np.vstack([v, vn])),
        "o": act_scale(np.vstack([o, on])),
        "y": act_scale(np.vstack([y, yn])),
    }

    b = Builder(arch)
    b.metadata["model"] = "demo: Linear + attention head"
    ql = {
        "linear": quantize_linear(w1, b1, prec=WPrec.INT4, group=spec.linear_group),
        "q": quantize_linear(wq),
        "k": quantize_linear(wk),
        "v": quantize_linear(wv),
        "o": quantize_linear(wo),
    }
    io_scales = {
        "linear": (s["x"], s["y1"]),
        "q": (s["x"], s["q"]),
        "k": (s["x"], s["k"]),
        "v": (s["x"], s["v"]),
        "o": (s["o"], s["y"]),
    }
    placed = {name: kernels.place_linear(b, name, q, *io_scales[name]) for name, q in ql.items()}
    lin, pq, pk, pv, po = (placed[n] for n in ("linear", "q", "k", "v", "o"))
    table = rope_table_bytes(L + 1, d, ROPE_THETA)
    rope_addr = b.place("rope_table", "const", table.nbytes, table)
    kc = b.place("attn.k_cache", "kv", (L + 1) * d)
    vc = b.place("attn.v_cache", "kv", (L + 1) * d)
    io = {}
    for name, kind, rows, cols, scale in (
        ("x", "input", L, D, s["x"]),
        ("x_new", "input", 1, D, s["x"]),
        ("y_linear", "output", L, spec.linear_out, s["y1"]),
        ("y_prefill", "output", L, D, s["y"]),
        ("y_decode", "output", 1, D, s["y"]),
    ):
        io[name] = b.place(name, kind, rows * cols)
        b.io(kind, name, name, "int8", (rows, cols), scale)

    # Section 1: the Linear layer.
    xt = b.tile(Buf.ACT, L, D, DType.INT8, "x", s["x"])
    b.load(xt, io["x"])
    yt = b.tile(Buf.ACT, L, spec.linear_out, DType.INT8, "y_linear", s["y1"])
    kernels.linear(b, xt, lin, yt)
    b.store(yt, io["y_linear"])
    b.free(xt, yt)
    b.end_section("linear", "main", L, L)

    # Sections 2 and 3: the attention head, prefill then one decode step.
    for stage, rows, pos0, src, dst in (
        ("prefill", L, 0, "x", "y_prefill"),
        ("decode", 1, L, "x_new", "y_decode"),
    ):
        xt = b.tile(Buf.ACT, rows, D, DType.INT8, src, s["x"])
        b.load(xt, io[src])
        qkv = {}
        for name, pl in (("q", pq), ("k", pk), ("v", pv)):
            qkv[name] = b.tile(Buf.ACT, rows, d, DType.INT8, name, s[name])
            kernels.linear(b, xt, pl, qkv[name])
        b.free(xt)
        kernels.rope(b, qkv["q"], rope_addr, pos0, d)
        kernels.rope(b, qkv["k"], rope_addr, pos0, d)
        b.store(qkv["k"], kc + pos0 * d)
        b.store(qkv["v"], vc + pos0 * d)
        ot = b.tile(Buf.ACT, rows, d, DType.INT8, "attention output", s["o"])
        kernels.attention(b, qkv["q"], kc, vc, pos0 + rows, pos0, s["k"], s["v"], ot)
        b.free(*qkv.values())
        yt = b.tile(Buf.ACT, rows, D, DType.INT8, dst, s["y"])
        kernels.linear(b, ot, po, yt)
        b.store(yt, io[dst])
        b.free(ot, yt)
        b.end_section(f"attn_{stage}", stage, pos0 + rows, pos0 + rows)
    program = b.program()

    # Quantised reference, whole tensors.
    xq, xnq = quantize_act(x, s["x"]), quantize_act(x_new, s["x"])

    def ref_linear(x: np.ndarray, name: str) -> np.ndarray:
        return qref.linear(x, ql[name], *io_scales[name])

    ref = {"y_linear": ref_linear(xq, "linear")}
    tab = table.astype(np.int64)
    k_cache = np.zeros((L + 1, d), np.int64)
    v_cache = np.zeros((L + 1, d), np.int64)
    for name, xin, pos0 in (("y_prefill", xq, 0), ("y_decode", xnq, L)):
        rq = qref.rope(ref_linear(xin, "q"), tab, pos0, d)
        rk = qref.rope(ref_linear(xin, "k"), tab, pos0, d)
        rows = xin.shape[0]
        k_cache[pos0 : pos0 + rows] = rk
        v_cache[pos0 : pos0 + rows] = ref_linear(xin, "v")
        oq = qref.attention(rq, k_cache, v_cache, pos0 + rows, pos0, s["q"], s["k"], s["v"], s["o"])
        ref[name] = ref_linear(oq, "o")
    return DemoBuild(
        program, {"x": x, "x_new": x_new}, ref, {"y_linear": y1, "y_prefill": y, "y_decode": yn}
    )


DEMO_SECTIONS = ("linear", "attn_prefill", "attn_decode")


@dataclass(frozen=True)
class DemoReport:
    """What :func:`run_demo` measured: each section's run and each output's agreement."""

    runs: tuple  #: flightforge.sim.device.RunResult per section, in run order
    outputs: tuple  #: flightforge.hostio.Agreement per output TensorIO

    @property
    def bit_exact(self) -> bool:
        return all(a.bit_exact for a in self.outputs)


def run_demo(arch: ArchConfig, device, build: DemoBuild | None = None) -> DemoReport:
    """Run the demo on ``device`` and compare its outputs with both references.

    Inputs are quantised with their TensorIO scales and written after the program is
    loaded; the sections run in order (decode reads the KV cache prefill wrote).
    """
    from flightforge import hostio

    build = build_demo(arch) if build is None else build
    program = build.program
    device.load(program)
    for tio in program.inputs:
        hostio.write_input(device, program, tio, build.inputs[tio.name])
    runs = tuple(device.run(name) for name in DEMO_SECTIONS)
    outputs = tuple(
        hostio.compare(
            tio,
            hostio.read_output(device, program, tio),
            build.expected_int[tio.name],
            build.expected_float[tio.name],
        )
        for tio in program.outputs
    )
    return DemoReport(runs, outputs)
