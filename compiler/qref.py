"""The compiler's quantised numpy reference: the same integer arithmetic as the
hardware, applied to whole tensors without tiling, packing, transfers or tokens.

Bit-exact agreement between this reference and a simulator running the compiled
binary shows the lowering is right; the gap between this reference and the float
model is quantisation error alone.
"""

from __future__ import annotations

import numpy as np

from flightforge import numerics
from flightforge.isa import DType

from .kernels import PlacedLinear, pv_params, softmax_params


def linear(xq: np.ndarray, pl: PlacedLinear, odt: DType = DType.INT8) -> np.ndarray:
    ql = pl.ql
    bias_q, mult, shift = ql.requant(pl.s_x, pl.s_y)
    return numerics.matmul(xq, ql.q, scales=ql.gscale if ql.group else None, group=ql.group,
                           bias=bias_q, mult=mult, shift=shift, odt=odt)


def rope(xq: np.ndarray, table: np.ndarray, pos0: int, head_dim: int) -> np.ndarray:
    """``table`` is the constant segment: per position cos then sin, INT16."""
    h = head_dim // 2
    rows = table[pos0:pos0 + xq.shape[0]].astype(np.int64)
    return numerics.rope(xq, rows[:, :h], rows[:, h:], head_dim, numerics.ROPE_FRAC_BITS, DType.INT8)


def attention(q: np.ndarray, k_cache: np.ndarray, v_cache: np.ndarray, ctx: int, pos0: int,
              s_q: float, s_k: float, s_v: float, s_o: float, odt: DType = DType.INT8) -> np.ndarray:
    d = q.shape[1]
    scores = numerics.matmul(q, k_cache[:ctx], odt=DType.INT32)
    m0, sh = softmax_params(s_q, s_k, d)
    probs = numerics.softmax(scores, m0, sh, pos=pos0, causal=True, odt=DType.INT8)
    mult, sh = pv_params(s_v, s_o)
    return numerics.matmul(probs, v_cache[:ctx].T, mult=mult, shift=sh, odt=odt)
