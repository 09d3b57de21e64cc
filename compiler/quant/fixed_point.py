"""Fixed-point parameters of the hardware's integer arithmetic, shared by the quantiser,
its numpy reference and the lowering kernels.

Each helper turns float scales into the integer multipliers, shifts and tables that the
MPE epilogue and the SFU apply (see :mod:`flightforge.numerics` for the arithmetic
itself). They live with the quantiser, below lowering, so that the quantiser and its
reference (:mod:`.qref`) use them without importing the lowering kernels.
"""

from __future__ import annotations

import math

import numpy as np

from flightforge import numerics
from flightforge.isa import DType

from ..errors import CompileError

PROB_FRAC_BITS = DType.INT8.bits - 1  #: softmax probabilities are INT8 with scale 2**-7

# --- 16-bit activations as two INT8 halves ----------------------------------------------
#
# The matrix engine multiplies INT8 activations. A 16-bit operand ``x`` runs as two INT8
# halves, ``x = 2**s * (256 * hi + lo)``: ``hi = REQUANT(x, 1, 8 + s)`` rounds ``x`` to
# its top byte, a LUT negates it, and ``lo = ADD(x, -hi, 1, 2**(8+s), s)`` keeps the rest
# (exact for s = 0 while |x| <= SPLIT_MAX). A product then takes two engine passes
# (``256 * W.hi`` into INT32 partial sums, then ``W.lo`` accumulated on them through
# ``acc_in``), and a product of two split operands three (the lo*lo term, 2**-16 of the
# total, is left out). See docs/compiler.md, "16-bit activations".

SPLIT_BITS = 8  #: weight of the high half: x = 2**SPLIT_BITS * hi + lo
SPLIT_MAX = 127 * (1 << SPLIT_BITS) + 127  #: largest |x| the two halves hold exactly
HI_MULT = 1 << SPLIT_BITS  #: the high half's pass multiplies its INT32 partial sums by this
#: The LUT that negates the high half (entry i is -int8(i), saturated).
NEG_TABLE = numerics.sat(
    -np.where(np.arange(256) >= 128, np.arange(256) - 256, np.arange(256)), DType.INT8
)
PROB16_SPLIT_SHIFT = 1  #: INT16 probabilities (up to 2**15 - 1) split with s = 1


def split_params(s: int) -> tuple[int, int, int]:
    """``(hi_shift, lo_m1, lo_shift)`` of the split ``x = 2**s * (256*hi + lo)``."""
    return SPLIT_BITS + s, 1 << (SPLIT_BITS + s), s


def softmax_params(s_q: float, s_k: float, head_dim: int) -> tuple[int, int]:
    """``(m0, shift)`` turning INT32 scores into the u.8 log2-domain softmax argument."""
    real = s_q * s_k / math.sqrt(head_dim) * math.log2(math.e) * (1 << numerics.FRAC_BITS_EXP)
    return numerics.quantize_multiplier(real)


def pv_params(s_v: float, s_o: float) -> tuple[int, int]:
    return numerics.quantize_multiplier(2.0**-PROB_FRAC_BITS * s_v / s_o)


def pv16_params(s_v: float, s_o: float) -> tuple[int, int]:
    """``(mult, shift)`` of the 16-bit PV product: its partial sums carry
    ``p.v / 2**(8 + PROB16_SPLIT_SHIFT)`` with ``p`` in units of 2**-15."""
    frac = DType.INT16.bits - 1
    return numerics.quantize_multiplier(2.0 ** (SPLIT_BITS + PROB16_SPLIT_SHIFT - frac) * s_v / s_o)


def norm_gain(gamma: np.ndarray, s_y: float) -> tuple[np.ndarray, int]:
    """INT16 gains with the output scale folded in, and the MISC shift that goes with them.

    ``gamma_q = round(gamma / s_y * 2**k)`` with the largest ``k`` keeping ``|gamma_q|``
    within INT16; the instruction shift is ``14 + k`` (see numerics.rmsnorm).
    """
    peak = max(float(np.max(np.abs(gamma))) / s_y, 1e-12)
    k = int(np.floor(np.log2(32767 / peak)))
    k = min(k, 63 - numerics.NORM_T_FRAC)
    if numerics.NORM_T_FRAC + k < 0:
        raise CompileError(f"norm gain {peak * s_y:.3g} is too large for output scale {s_y:.3g}")
    g = np.round(np.asarray(gamma, np.float64) / s_y * 2.0**k).astype(np.int64)
    return np.clip(g, -32768, 32767), numerics.NORM_T_FRAC + k


def norm_eps(eps: float, s_x: float) -> int:
    """Epsilon in squared input units, saturated to the 16-bit field."""
    return int(min(round(eps / (s_x * s_x)), (1 << 16) - 1))


def add_params(s_a: float, s_b: float, s_y: float) -> tuple[int, int, int]:
    """``(m0, m1, shift)`` for ``y = a*s_a/s_y + b*s_b/s_y`` with one shared shift."""
    ra, rb = s_a / s_y, s_b / s_y
    _, shift = numerics.quantize_multiplier(max(ra, rb))
    m0, m1 = round(ra * 2.0**shift), round(rb * 2.0**shift)
    if min(m0, m1) == 0:
        raise CompileError(
            f"residual scales {s_a:.3g} and {s_b:.3g} are too far apart for one "
            f"16-bit multiplier pair"
        )
    return m0, m1, shift


def rope_table_bytes(positions: int, head_dim: int, theta: float) -> np.ndarray:
    """The RoPE constant segment: per position, cos INT16[d/2] then sin INT16[d/2]."""
    cos, sin = numerics.rope_tables(positions, head_dim, theta)
    return np.concatenate([cos, sin], axis=1).astype("<i2")


def rope_table_nbytes(positions: int, head_dim: int) -> int:
    """The size of :func:`rope_table_bytes`, known before (and without) building it."""
    return positions * 2 * (head_dim // 2) * 2
