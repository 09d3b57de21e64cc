"""Quantisation: weights to the matrix engine's formats, activations to static INT8 scales.

Weights (per output column ``n``):

- without groups, ``s_n = max|W[n]| / qmax`` and ``q = round(W / s_n)``;
- with groups of ``G`` along K, each group's ideal scale ``s[n, g] = max|W[n, g]| / qmax``
  is expressed as ``S_n * u[n, g] / 255`` with ``S_n = max_g s[n, g]`` and ``u`` a uint8
  rounded up (so no weight clips); ``q = round(W / (S_n * u / 255))``. The engine sums
  products per group, multiplies by ``u`` and accumulates, so one per-column multiplier
  finishes the dequantisation.

Activations use symmetric per-tensor scales calibrated by the maximum absolute value
over sample inputs run through the float graph (``scale = max|x| / 127``), the
simplest method that never clips calibration data; it is documented in docs/compiler.md.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from flightforge import formats, numerics
from flightforge.isa import SparseMode, WPrec, gsz_code

from ..errors import CompileError

INT8_MAX = 127


def act_scale(x: np.ndarray, bits: int = 8) -> float:
    """Symmetric scale that maps the largest calibration magnitude to the top code."""
    peak = float(np.max(np.abs(x))) if np.size(x) else 0.0
    return max(peak, 1e-8) / ((1 << (bits - 1)) - 1)


def quantize_act(x: np.ndarray, scale: float, bits: int = 8) -> np.ndarray:
    hi = (1 << (bits - 1)) - 1
    return np.clip(np.round(np.asarray(x, np.float64) / scale), -hi - 1, hi).astype(np.int64)


def prune_nm(w: np.ndarray, mode: SparseMode) -> np.ndarray:
    """Keep the ``n`` largest-magnitude weights of every block of ``m`` along K."""
    mode = SparseMode(mode)
    if not mode.is_sparse:
        return w
    n_out, k = w.shape
    if k % mode.m:
        raise CompileError(f"K={k} is not a multiple of the sparse block m={mode.m}")
    blocks = w.reshape(n_out, k // mode.m, mode.m)
    keep = np.argsort(-np.abs(blocks), axis=2, kind="stable")[:, :, : mode.n]
    mask = np.zeros(blocks.shape, dtype=bool)
    np.put_along_axis(mask, keep, True, axis=2)
    return (blocks * mask).reshape(n_out, k)


@dataclass(frozen=True)
class LinearLayout:
    """How a Linear layer is stored, without its values: all that sizes and lowering need."""

    n: int
    k: int
    prec: WPrec
    sparse: SparseMode
    group: int
    store_bits: int = 0  #: 2 or 3: stored packed in external memory, widened to INT8 on load

    @property
    def gsz(self) -> int:
        return gsz_code(self.group)

    @property
    def weight_row_bytes(self) -> int:
        """Bytes of one column in the weight buffer."""
        return formats.weight_row_bytes(self.k, self.prec, self.sparse)

    @property
    def ext_row_bytes(self) -> int:
        """Bytes of one column in external memory."""
        if self.store_bits:
            return -(-self.k * self.store_bits // 8)
        return self.weight_row_bytes

    @property
    def meta_row_bytes(self) -> int:
        return formats.meta_row_bytes(self.k, self.sparse)

    @property
    def record_bytes(self) -> int:
        return formats.column_record_bytes(self.k, self.gsz)


@dataclass(frozen=True)
class QuantLinear:
    """A Linear layer ``y = x W^T + b`` in the engine's weight format."""

    q: np.ndarray  #: int64 [N][K], dense-equivalent (zeros where pruned)
    prec: WPrec
    sparse: SparseMode
    group: int  #: 0 for per-column scales
    col_unit: np.ndarray  #: float64 [N]: real value of one accumulator unit per unit input
    gscale: np.ndarray  #: int64 [N][K/group] uint8 group scales ([N][0] without groups)
    bias: np.ndarray | None  #: float64 [N]
    store_bits: int = 0  #: 2 or 3: values in that range, stored packed (see LinearLayout)

    @property
    def shape(self) -> tuple[int, int]:
        return self.q.shape

    @property
    def gsz(self) -> int:
        return gsz_code(self.group)

    @property
    def layout(self) -> LinearLayout:
        return LinearLayout(*self.shape, self.prec, self.sparse, self.group, self.store_bits)

    def dequantized(self) -> np.ndarray:
        """The float weights the integer weights represent."""
        if not self.group:
            return self.q * self.col_unit[:, None]
        u = np.repeat(self.gscale, self.group, axis=1)
        return self.q * u * self.col_unit[:, None]

    def packed(self) -> formats.PackedWeights:
        """The external-memory image: the engine's layout, or packed low-bit columns."""
        if self.store_bits:
            return formats.PackedWeights(
                formats.pack_lowbit(self.q, self.store_bits).tobytes(), b""
            )
        return formats.pack_weights(self.q, self.prec, self.sparse)

    def requant(self, s_x: float, s_y: float) -> tuple[np.ndarray, np.ndarray, int]:
        """``(bias_q, mult, shift)`` taking INT8 inputs of scale ``s_x`` to outputs of ``s_y``."""
        real = self.col_unit * s_x / s_y
        _, shift = numerics.quantize_multiplier(float(real.max()))
        mult = np.round(real * 2.0**shift).astype(np.int64)
        if (mult == 0).any():
            n = int(np.argmin(mult))
            raise CompileError(
                f"column {n}: requantisation multiplier {real[n]:.3g} underflows "
                f"16 bits next to the largest column's {real.max():.3g}"
            )
        bias_q = np.zeros(self.shape[0], dtype=np.int64)
        if self.bias is not None:
            bias_q = np.round(self.bias / (self.col_unit * s_x)).astype(np.int64)
            if np.abs(bias_q).max() >= 1 << 31:
                raise CompileError("bias does not fit INT32 in accumulator units")
        return bias_q, mult, shift

    def records(self, s_x: float, s_y: float) -> formats.ColumnRecords:
        bias_q, mult, _ = self.requant(s_x, s_y)
        return formats.ColumnRecords(bias_q, mult, self.gscale)


def _zero_columns_borrow(peak: np.ndarray) -> np.ndarray:
    """Column peaks with zeros replaced by the largest peak.

    An all-zero column (OPT's padding token in a tied LM head) quantises to zeros at any
    scale; a tiny scale would make its requantisation multiplier underflow next to the
    other columns', so it borrows the largest column's scale instead.
    """
    top = float(peak.max()) if peak.size and peak.max() > 0 else 1.0
    return np.where(peak > 0, peak, top)


def quantize_linear(
    w: np.ndarray,
    bias: np.ndarray | None = None,
    *,
    prec: WPrec = WPrec.INT8,
    group: int = 0,
    sparse: SparseMode = SparseMode.DENSE,
    store_bits: int = 0,
) -> QuantLinear:
    """Quantise float weights ``w[N][K]`` (PyTorch Linear layout).

    ``store_bits`` 2 or 3 quantises to that many bits for packed storage; the engine
    then reads INT8 (``prec`` must be INT8 and the layer dense).
    """
    if store_bits:
        if store_bits not in (2, 3) or WPrec(prec) != WPrec.INT8 or SparseMode(sparse).is_sparse:
            raise CompileError(
                f"{store_bits}-bit storage needs dense weights on the INT8 engine "
                f"path (store_bits 2 or 3)"
            )
    w = prune_nm(np.asarray(w, dtype=np.float64), sparse)
    n_out, k = w.shape
    qmax = (1 << ((store_bits or WPrec(prec).bits) - 1)) - 1
    tiny = 1e-12
    if group:
        gsz_code(group)  # validates the size
        if k % group:
            raise CompileError(f"K={k} is not a multiple of the weight group size {group}")
        g = w.reshape(n_out, k // group, group)
        s = np.abs(g).max(axis=2)
        s = (
            np.where(
                s.max(axis=1, keepdims=True) > 0,
                np.maximum(s, tiny),
                _zero_columns_borrow(s.max(axis=1))[:, None],
            )
            / qmax
        )
        big = s.max(axis=1)
        u = np.clip(np.ceil(s / big[:, None] * 255 - 1e-9), 1, 255).astype(np.int64)
        unit = big / 255
        eff = np.repeat(u * unit[:, None], group, axis=1)
        q = np.clip(np.round(w / eff), -qmax - 1, qmax).astype(np.int64)
        return QuantLinear(q, WPrec(prec), SparseMode(sparse), group, unit, u, bias, store_bits)
    s = _zero_columns_borrow(np.abs(w).max(axis=1)) / qmax
    q = np.clip(np.round(w / s[:, None]), -qmax - 1, qmax).astype(np.int64)
    return QuantLinear(
        q,
        WPrec(prec),
        SparseMode(sparse),
        0,
        s,
        np.zeros((n_out, 0), dtype=np.int64),
        bias,
        store_bits,
    )
