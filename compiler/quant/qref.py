"""The compiler's quantised numpy reference: the same integer arithmetic as the
hardware, applied to whole tensors without tiling, packing, transfers or tokens.

Bit-exact agreement between this reference and a simulator running the compiled
binary shows the lowering is right; the gap between this reference and the float
model is quantisation error alone.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np

from flightforge import numerics
from flightforge.isa import DType

from ..graph import Act, Add, Attention, Linear, Mul, Norm, Rope
from . import fixed_point as fx
from .qdecoder import QuantDecoder
from .quantize import QuantLinear


def linear(
    xq: np.ndarray, ql: QuantLinear, s_x: float, s_y: float, odt: DType = DType.INT8
) -> np.ndarray:
    bias_q, mult, shift = ql.requant(s_x, s_y)
    return numerics.matmul(
        xq,
        ql.q,
        scales=ql.gscale if ql.group else None,
        group=ql.group,
        bias=bias_q,
        mult=mult,
        shift=shift,
        odt=odt,
    )


def split(x: np.ndarray, s: int = 0) -> tuple[np.ndarray, np.ndarray]:
    """The INT8 halves of a 16-bit tensor, by the SFU operations of ``kernels.split``."""
    hi_shift, lo_m1, lo_shift = fx.split_params(s)
    hi = numerics.requant(x, 1, hi_shift, DType.INT8)
    return hi, numerics.add(x, numerics.table(hi, fx.NEG_TABLE), 1, lo_m1, lo_shift, DType.INT8)


def linear16(
    x: np.ndarray, ql: QuantLinear, s_x: float, s_y: float, odt: DType = DType.INT8
) -> np.ndarray:
    """:func:`linear` of a 16-bit input: the high half's pass, then the low half's on its
    partial sums."""
    hi, lo = split(x)
    bias_q, mult, shift = ql.requant(s_x, s_y)
    groups = dict(scales=ql.gscale if ql.group else None, group=ql.group)
    psum = numerics.matmul(hi, ql.q, mult=fx.HI_MULT, odt=DType.INT32, **groups)
    return numerics.matmul(
        lo, ql.q, bias=bias_q, mult=mult, shift=shift, odt=odt, psum=psum, **groups
    )


def rope(
    xq: np.ndarray, table: np.ndarray, pos0: int, head_dim: int, dt: DType = DType.INT8
) -> np.ndarray:
    """``table`` is the constant segment: per position cos then sin, INT16."""
    h = head_dim // 2
    rows = table[pos0 : pos0 + xq.shape[0]].astype(np.int64)
    return numerics.rope(xq, rows[:, :h], rows[:, h:], head_dim, numerics.ROPE_FRAC_BITS, dt)


def attention(
    q: np.ndarray,
    k_cache: np.ndarray,
    v_cache: np.ndarray,
    ctx: int,
    pos0: int,
    s_q: float,
    s_k: float,
    s_v: float,
    s_o: float,
    odt: DType = DType.INT8,
) -> np.ndarray:
    d = q.shape[1]
    scores = numerics.matmul(q, k_cache[:ctx], odt=DType.INT32)
    m0, sh = fx.softmax_params(s_q, s_k, d)
    probs = numerics.softmax(scores, m0, sh, pos=pos0, causal=True, odt=DType.INT8)
    mult, sh = fx.pv_params(s_v, s_o)
    return numerics.matmul(probs, v_cache[:ctx].T, mult=mult, shift=sh, odt=odt)


def _split_product(a: np.ndarray, w: np.ndarray, s_a: int = 0, **requant) -> np.ndarray:
    """``256*a_hi.w_hi + a_hi.w_lo + a_lo.w_hi`` (``w`` as ``[N][K]``), as
    ``kernels._split_product`` chains it."""
    (ah, al), (wh, wl) = split(a, s_a), split(w)
    p = numerics.matmul(ah, wh, mult=fx.HI_MULT, odt=DType.INT32)
    p = numerics.matmul(ah, wl, odt=DType.INT32, psum=p)
    return numerics.matmul(al, wh, psum=p, **requant)


def attention16(
    q: np.ndarray,
    k_cache: np.ndarray,
    v_cache: np.ndarray,
    ctx: int,
    pos0: int,
    s_q: float,
    s_k: float,
    s_v: float,
    s_o: float,
    odt: DType = DType.INT8,
) -> np.ndarray:
    """:func:`attention` with 16-bit q, K, V and probabilities (``kernels.attention16``)."""
    d = q.shape[1]
    scores = _split_product(q, k_cache[:ctx], odt=DType.INT32)
    m0, sh = fx.softmax_params(s_q * fx.HI_MULT, s_k, d)
    probs = numerics.softmax(scores, m0, sh, pos=pos0, causal=True, odt=DType.INT16)
    mult, sh = fx.pv16_params(s_v, s_o)
    return _split_product(
        probs, v_cache[:ctx].T, fx.PROB16_SPLIT_SHIFT, mult=mult, shift=sh, odt=odt
    )


@dataclass
class IntState:
    """Integer KV caches of one sequence: ``[layer] -> (k, v)``, ``[pos][kv*d]`` (INT8, or
    INT16 with 16-bit activations)."""

    kv: dict[int, tuple[np.ndarray, np.ndarray]] = field(default_factory=dict)


def run_decoder(
    qd: QuantDecoder,
    ids: np.ndarray,
    pos0: int,
    state: IntState,
    rope_table: np.ndarray | None = None,
    env: dict[str, np.ndarray] | None = None,
) -> np.ndarray:
    """INT16 logits ``[len(ids)][vocab]`` exactly as the accelerator computes them.

    ``env``, if given, receives every named integer tensor (for per-op error analysis).
    """
    prog, sc = qd.prog, qd.scales
    env = {} if env is None else env
    env[prog.input] = qd.input_rows(ids, pos0)
    for op in prog.ops:
        if isinstance(op, Linear):
            fn = linear16 if op.x in qd.split else linear
            env[op.out] = fn(
                env[op.x], qd.linears[op.weight], sc[op.x], sc[op.out], qd.dtype(op.out)
            )
        elif isinstance(op, Norm):
            n = qd.norms[op.params]
            if n.beta is None:
                env[op.out] = numerics.rmsnorm(env[op.x], n.gamma, n.eps, n.shift, qd.dtype(op.out))
            else:
                env[op.out] = numerics.layernorm(
                    env[op.x], n.gamma, n.beta, n.eps, n.shift, qd.dtype(op.out)
                )
        elif isinstance(op, Rope):
            env[op.x] = rope(env[op.x], rope_table, pos0, op.head_dim, qd.dtype(op.x))
        elif isinstance(op, Attention):
            env[op.out] = _attention(qd, env, op, pos0, state)
        elif isinstance(op, Add):
            m0, m1, shift = fx.add_params(sc[op.a], sc[op.b], sc[op.out])
            env[op.out] = numerics.add(env[op.a], env[op.b], m0, m1, shift, qd.dtype(op.out))
        elif isinstance(op, Mul):
            m0, shift = numerics.quantize_multiplier(sc[op.a] * sc[op.b] / sc[op.out])
            env[op.out] = numerics.mul(env[op.a], env[op.b], m0, shift, qd.dtype(op.out))
        elif isinstance(op, Act):
            env[op.out] = numerics.table(env[op.x], qd.tables[op.out])
    return env[prog.output]


def _attention(qd: QuantDecoder, env, op: Attention, pos0: int, state: IntState) -> np.ndarray:
    sc = qd.scales
    q, k, v = env[op.q], env[op.k], env[op.v]
    rows, d = q.shape[0], op.head_dim
    kc, vc = state.kv.get(
        op.layer, (np.zeros((0, k.shape[1]), np.int64), np.zeros((0, v.shape[1]), np.int64))
    )
    kc, vc = np.vstack([kc[:pos0], k]), np.vstack([vc[:pos0], v])
    state.kv[op.layer] = (kc, vc)
    group = op.heads // op.kv_heads
    ctx = pos0 + rows
    out = np.zeros((rows, op.heads * d), np.int64)
    fn = attention16 if op.q in qd.split else attention
    for h in range(op.heads):
        j = h // group
        out[:, h * d : (h + 1) * d] = fn(
            q[:, h * d : (h + 1) * d],
            kc[:, j * d : (j + 1) * d],
            vc[:, j * d : (j + 1) * d],
            ctx,
            pos0,
            sc[op.q],
            sc[op.k],
            sc[op.v],
            sc[op.out],
            qd.dtype(op.out),
        )
    return out
