"""Exact integer arithmetic of the accelerator: the specification every level follows.

The functional simulator executes instructions with these functions, the compiler's
quantised reference uses them at whole-tensor level, and the RTL implements the same
operations bit for bit (its tests compare against the functional simulator). All
values are Python ``int`` or ``numpy.int64`` arrays; every intermediate is shown to fit
in 63 bits by the bounds in the comments, so numpy gives the exact result.

Rounding: ``rnd_shift(x, s) = floor((x + 2**(s-1)) / 2**s)`` for ``s > 0`` (round half
up) and ``x`` for ``s = 0``. Saturation clamps to the signed range of the result type.

The fixed-point error of each SFU operation against float64 is measured by
``benchmarks/numerics_error.py`` and recorded in docs/numerics.md.
"""

from __future__ import annotations

import math

import numpy as np

from .isa import DType

FRAC_BITS_EXP = 8  #: fractional bits of the log2-domain softmax argument
EXP2_ONE = 1 << 15  #: 2**0 in the exp2 table
ROPE_FRAC_BITS = 14  #: cos/sin tables are Q14
NORM_RSQRT_BITS = 38  #: inv = 2**38 // isqrt(ms << 16) = 2**30 / sqrt(ms)
NORM_T_SHIFT = 16  #: t = rnd_shift(x * inv, 16) = x / sqrt(ms) * 2**14
NORM_T_FRAC = NORM_RSQRT_BITS - 8 - NORM_T_SHIFT  #: fractional bits of t (14)
SOFTMAX_RECIP_BITS = 38  #: recip = 2**38 // sum

#: EXP2_LUT[f] = round(2**15 * 2**(-f/256)); the SFU's 256-entry exp2 ROM.
EXP2_LUT = np.array([round(EXP2_ONE * 2.0 ** (-f / 256)) for f in range(256)], dtype=np.int64)

MULT_MAX = (1 << 16) - 1
SHIFT_MAX = 63


def dtype_range(dt: DType) -> tuple[int, int]:
    b = DType(dt).bits
    return -(1 << (b - 1)), (1 << (b - 1)) - 1


def sat(x: np.ndarray, dt: DType) -> np.ndarray:
    lo, hi = dtype_range(dt)
    return np.clip(x, lo, hi)


def rnd_shift(x: np.ndarray | int, s: int) -> np.ndarray:
    x = np.asarray(x, dtype=np.int64)
    if s == 0:
        return x
    return (x + (np.int64(1) << np.int64(s - 1))) >> np.int64(s)


def isqrt(v: np.ndarray) -> np.ndarray:
    """Exact floor square root of non-negative int64 values below 2**62."""
    v = np.asarray(v, dtype=np.int64)
    r = np.floor(np.sqrt(v.astype(np.float64))).astype(np.int64)
    for _ in range(2):  # float64 is within one of the true root for v < 2**62
        r = np.where(r * r > v, r - 1, r)
        r = np.where((r + 1) * (r + 1) <= v, r + 1, r)
    return r


# --- matrix engine --------------------------------------------------------------------


def matmul(
    a: np.ndarray,
    w: np.ndarray,
    *,
    scales: np.ndarray | None = None,
    group: int = 0,
    bias: np.ndarray | int = 0,
    mult: np.ndarray | int = 1,
    shift: int = 0,
    odt: DType = DType.INT32,
    psum: np.ndarray | None = None,
) -> np.ndarray:
    """MM/MV result for INT8 ``a[M][K]`` and dense-equivalent ``w[N][K]``.

    Products are summed in INT32 within each group of ``group`` along K (the whole row
    without groups), scaled by the uint8 group scale and summed in the 50-bit
    accumulator; bounds: |a*w| <= 2**14, a group sum < 2**31 for K < 2**16, the scaled
    sum < 2**46, times a 16-bit multiplier < 2**62.
    """
    a = np.asarray(a, dtype=np.int64)
    w = np.asarray(w, dtype=np.int64)
    if group:
        m_, k = a.shape
        g = k // group
        parts = np.einsum("mgk,ngk->mng", a.reshape(m_, g, group), w.reshape(w.shape[0], g, group))
        acc = (parts * np.asarray(scales, dtype=np.int64)[None, :, :]).sum(axis=2)
    else:
        acc = a @ w.T
    if psum is not None:
        acc = acc + np.asarray(psum, dtype=np.int64)
    acc = acc + np.asarray(bias, dtype=np.int64)
    return sat(rnd_shift(acc * np.asarray(mult, dtype=np.int64), shift), odt)


# --- special-function unit -------------------------------------------------------------


def add(a: np.ndarray, b: np.ndarray, m0: int, m1: int, shift: int, odt: DType) -> np.ndarray:
    """Residual add with scale alignment: ``sat(rnd((a*m0 + b*m1) >> shift))``."""
    a, b = np.asarray(a, np.int64), np.asarray(b, np.int64)
    return sat(rnd_shift(a * m0 + b * m1, shift), odt)


def mul(a: np.ndarray, b: np.ndarray, m0: int, shift: int, odt: DType) -> np.ndarray:
    """Elementwise product (INT8/INT16 operands): ``sat(rnd((a*b*m0) >> shift))``."""
    a, b = np.asarray(a, np.int64), np.asarray(b, np.int64)
    return sat(rnd_shift(a * b * m0, shift), odt)


def requant(a: np.ndarray, m0: int, shift: int, odt: DType) -> np.ndarray:
    return sat(rnd_shift(np.asarray(a, np.int64) * m0, shift), odt)


def table(a: np.ndarray, lut: np.ndarray) -> np.ndarray:
    """SILU/GELU: ``lut[a & 0xFF]`` for INT8 ``a`` (entry i is the value at int8(i))."""
    return np.asarray(lut, np.int64)[np.asarray(a, np.int64) & 0xFF]


def softmax(
    x: np.ndarray,
    m0: int,
    shift: int,
    *,
    pos: int = 0,
    length: int = 0,
    causal: bool = False,
    odt: DType = DType.INT8,
) -> np.ndarray:
    """Row softmax in the exp2 domain.

    Column ``j`` of row ``r`` is valid when ``j < length`` (all columns when 0) and,
    if causal, ``j <= pos + r``. With ``d = max - x`` over valid columns,
    ``t = rnd((d*m0) >> shift)`` is ``(max - x) * scale * log2(e)`` in u.8 fixed point;
    ``e = EXP2_LUT[t & 255] >> min(t >> 8, 16)``; ``recip = 2**38 // sum(e)``;
    ``y = min(2**F - 1, rnd((e*recip) >> (38 - F)))`` with ``F = bits(odt) - 1``, i.e.
    probabilities with scale ``2**-F``. Invalid columns give 0. Bounds: d < 2**33,
    d*m0 < 2**49, sum(e) in [2**15, 2**31], e*recip <= 2**38.
    """
    x = np.asarray(x, dtype=np.int64)
    rows, cols = x.shape
    limit = length or cols
    j = np.arange(cols)[None, :]
    valid = np.broadcast_to(j < limit, (rows, cols))
    if causal:
        valid = valid & (j <= pos + np.arange(rows)[:, None])
    big = np.int64(-(1 << 62))
    mx = np.where(valid, x, big).max(axis=1, keepdims=True)
    d = np.where(valid, mx - x, 0)
    t = rnd_shift(d * np.int64(m0), shift)
    e = EXP2_LUT[t & 0xFF] >> np.minimum(t >> FRAC_BITS_EXP, 16)
    e = np.where(valid, e, 0)
    total = e.sum(axis=1, keepdims=True)
    recip = np.where(total > 0, (np.int64(1) << SOFTMAX_RECIP_BITS) // np.maximum(total, 1), 0)
    frac = DType(odt).bits - 1
    y = rnd_shift(e * recip, SOFTMAX_RECIP_BITS - frac)
    return np.minimum(y, (1 << frac) - 1)


def _normalise(xc: np.ndarray, sumsq: np.ndarray, cols: int, eps: int) -> np.ndarray:
    """``t = x / sqrt(mean square + eps) * 2**14``, exactly as the SFU computes it."""
    ms = sumsq // cols + eps
    r = np.maximum(isqrt(ms << 16), 1)
    inv = (np.int64(1) << NORM_RSQRT_BITS) // r
    return rnd_shift(xc * inv, NORM_T_SHIFT)


def rmsnorm(x: np.ndarray, gamma: np.ndarray, eps: int, shift: int, odt: DType) -> np.ndarray:
    """``y = sat(rnd((t * gamma) >> shift))`` with ``t`` from :func:`_normalise`.

    ``gamma`` is INT16 with the output scale folded in: ``gamma_q = g / s_y * 2**k``, and
    the compiler sets ``shift = 14 + k``. Bounds: x <= 2**15, sum x^2 < 2**46,
    inv <= 2**30, x*inv < 2**45, t*gamma < 2**45.
    """
    x = np.asarray(x, dtype=np.int64)
    t = _normalise(x, (x * x).sum(axis=1, keepdims=True), x.shape[1], eps)
    return sat(rnd_shift(t * np.asarray(gamma, np.int64)[None, :], shift), odt)


def layernorm(
    x: np.ndarray, gamma: np.ndarray, beta: np.ndarray, eps: int, shift: int, odt: DType
) -> np.ndarray:
    """As :func:`rmsnorm` on ``x - floor(mean(x))``, plus ``beta`` in output units."""
    x = np.asarray(x, dtype=np.int64)
    cols = x.shape[1]
    mean = x.sum(axis=1, keepdims=True) // cols
    xc = x - mean
    t = _normalise(xc, (xc * xc).sum(axis=1, keepdims=True), cols, eps)
    y = (
        rnd_shift(t * np.asarray(gamma, np.int64)[None, :], shift)
        + np.asarray(beta, np.int64)[None, :]
    )
    return sat(y, odt)


def rope(
    x: np.ndarray, cos: np.ndarray, sin: np.ndarray, head_dim: int, shift: int, odt: DType
) -> np.ndarray:
    """Rotate-half rotary embedding of every ``head_dim`` chunk of each row.

    ``cos``/``sin`` are Q14 ``[rows][head_dim/2]`` already selected for each row's
    position. ``y1 = rnd((x1*c - x2*s) >> shift)``, ``y2 = rnd((x2*c + x1*s) >> shift)``.
    """
    x = np.asarray(x, dtype=np.int64)
    rows, cols = x.shape
    h = head_dim // 2
    xr = x.reshape(rows, cols // head_dim, 2, h)
    c = np.asarray(cos, np.int64)[:, None, :]
    s = np.asarray(sin, np.int64)[:, None, :]
    y1 = rnd_shift(xr[:, :, 0] * c - xr[:, :, 1] * s, shift)
    y2 = rnd_shift(xr[:, :, 1] * c + xr[:, :, 0] * s, shift)
    return sat(np.stack([y1, y2], axis=2).reshape(rows, cols), odt)


# --- helpers the compiler uses to choose parameters ----------------------------------------


def quantize_multiplier(
    real: float, mult_bits: int = 16, max_shift: int = SHIFT_MAX
) -> tuple[int, int]:
    """``(mult, shift)`` with ``mult < 2**mult_bits`` and ``mult / 2**shift ~= real``.

    The largest usable shift is chosen so the multiplier keeps as many bits as possible.
    """
    if not real > 0 or not math.isfinite(real):
        raise ValueError(f"multiplier must be a positive finite number, not {real!r}")
    limit = (1 << mult_bits) - 1
    shift = min(max_shift, math.floor(math.log2(limit / real)))
    if shift < 0:
        raise ValueError(f"multiplier {real!r} needs more than {mult_bits} bits")
    mult = round(real * 2.0**shift)
    if mult > limit:
        shift -= 1
        mult = round(real * 2.0**shift)
    if mult == 0:
        raise ValueError(f"multiplier {real!r} underflows {mult_bits} bits with shift {max_shift}")
    return mult, shift


def lut_for(fn, s_in: float, s_out: float, odt: DType = DType.INT8) -> np.ndarray:
    """256-entry table of ``sat(round(fn(int8(i) * s_in) / s_out))``, indexed by ``i``."""
    i = np.arange(256)
    x = np.where(i >= 128, i - 256, i).astype(np.float64) * s_in
    return sat(np.round(fn(x) / s_out).astype(np.int64), odt)


def rope_tables(
    positions: int, head_dim: int, theta: float = 10000.0
) -> tuple[np.ndarray, np.ndarray]:
    """Q14 ``cos``/``sin`` tables ``[positions][head_dim/2]`` (Llama's frequencies)."""
    h = head_dim // 2
    inv_freq = 1.0 / theta ** (np.arange(h, dtype=np.float64) * 2 / head_dim)
    ang = np.arange(positions, dtype=np.float64)[:, None] * inv_freq[None, :]
    one = 1 << ROPE_FRAC_BITS
    return (
        np.round(np.cos(ang) * one).astype(np.int64),
        np.round(np.sin(ang) * one).astype(np.int64),
    )
