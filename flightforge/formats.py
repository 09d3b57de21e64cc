"""On-chip data layouts: how weights, sparse indices and per-column records are packed.

The compiler packs with these functions, the functional simulator and the RTL harness
unpack with them, and the cycle model sizes transfers with them, so a layout is defined
exactly once.

Weights are stored output-column major, ``[N][K]`` (PyTorch's Linear layout), each
column padded to whole bytes:

- dense INT8: one byte per weight; dense INT4: two's-complement nibbles, low nibble
  first, K must be even;
- N:M sparse: per block of ``m`` along K, ``n`` kept weights in ascending index order,
  at the weight precision; their indices (``log2 m`` bits each, LSB-first) go in META
  with the same column-major order.

A per-column record in SCALE is ``bias:int32, mult:uint16, reserved:uint16 (0),
scales:uint8[K / group]``, padded to a multiple of 4 bytes.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from .isa import SparseMode, WPrec, group_size

RECORD_HEADER_BYTES = 8


class FormatError(ValueError):
    """Data does not fit the layout it is packed into."""


def weight_entries(k: int, mode: SparseMode) -> int:
    """Stored weights per output column."""
    mode = SparseMode(mode)
    return k if not mode.is_sparse else k // mode.m * mode.n


def weight_row_bytes(k: int, prec: WPrec, mode: SparseMode) -> int:
    return -(-weight_entries(k, mode) * WPrec(prec).bits // 8)


def meta_row_bytes(k: int, mode: SparseMode) -> int:
    mode = SparseMode(mode)
    if not mode.is_sparse:
        return 0
    return -(-weight_entries(k, mode) * index_bits(mode) // 8)


def index_bits(mode: SparseMode) -> int:
    return SparseMode(mode).m.bit_length() - 1


def column_record_bytes(k: int, gsz: int) -> int:
    g = group_size(gsz)
    groups = k // g if g else 0
    return RECORD_HEADER_BYTES + -(-groups // 4) * 4


def _pack_bits(values: np.ndarray, bits: int) -> np.ndarray:
    """Pack unsigned ``values`` [rows, n] of ``bits`` each, LSB-first, into bytes per row."""
    rows, n = values.shape
    if bits == 8:
        return values.astype(np.uint8)
    per = 8 // bits
    pad = (-n) % per
    v = np.pad(values.astype(np.uint8), ((0, 0), (0, pad))).reshape(rows, -1, per)
    shifts = np.arange(per, dtype=np.uint8) * bits
    return np.bitwise_or.reduce(v << shifts, axis=2).astype(np.uint8)


def _unpack_bits(data: np.ndarray, bits: int, n: int) -> np.ndarray:
    """Inverse of :func:`_pack_bits`: ``data`` [rows, bytes] -> unsigned [rows, n]."""
    if bits == 8:
        return data[:, :n].astype(np.int64)
    per = 8 // bits
    shifts = np.arange(per, dtype=np.uint8) * bits
    v = (data[:, :, None] >> shifts) & ((1 << bits) - 1)
    return v.reshape(data.shape[0], -1)[:, :n].astype(np.int64)


def _to_signed(v: np.ndarray, bits: int) -> np.ndarray:
    return np.where(v >= 1 << (bits - 1), v - (1 << bits), v)


def pack_lowbit(values: np.ndarray, bits: int) -> np.ndarray:
    """Signed ``values[rows][n]`` as ``bits``-bit fields, LSB-first, ``ceil(n*bits/8)`` bytes
    per row: the external layout that an LD with ``unpack`` widens to INT8."""
    v = np.asarray(values, dtype=np.int64)
    lo, hi = -(1 << (bits - 1)), (1 << (bits - 1)) - 1
    if v.size and (v.min() < lo or v.max() > hi):
        raise FormatError(
            f"values span {int(v.min())}..{int(v.max())}, outside {bits}-bit range {lo}..{hi}"
        )
    rows, n = v.shape
    field_bits = ((v[:, :, None] & ((1 << bits) - 1)) >> np.arange(bits)) & 1
    stream = field_bits.reshape(rows, n * bits).astype(np.uint8)
    pad = (-n * bits) % 8
    stream = np.pad(stream, ((0, 0), (0, pad)))
    return np.packbits(stream, axis=1, bitorder="little")


def unpack_lowbit(data: np.ndarray, bits: int, n: int) -> np.ndarray:
    """Inverse of :func:`pack_lowbit`: ``data[rows][bytes]`` to signed int64 ``[rows][n]``."""
    data = np.asarray(data, dtype=np.uint8)
    stream = np.unpackbits(data, axis=1, bitorder="little")[:, : n * bits]
    fields = stream.reshape(data.shape[0], n, bits).astype(np.int64)
    v = (fields << np.arange(bits)).sum(axis=2)
    return _to_signed(v, bits)


def lowbit_values_per_burst(burst_bytes: int, bits: int) -> int:
    """The most values of a :func:`pack_lowbit` row that can END in one burst of
    ``burst_bytes`` (the first may have begun ``bits - 1`` bits before it; ``bits`` 8: the
    burst's bytes). A load unit that writes this many INT8 per cycle unpacks a burst per
    cycle; the cycle model (sim/timing.py) and the RTL load unit both size their unpacker
    with it."""
    return (8 * burst_bytes + bits - 1) // bits


def lowbit_burst_values(offset: int, n: int, bits: int, burst_bytes: int) -> np.ndarray:
    """How many of a packed row's ``n`` ``bits``-bit values end in each burst it spans,
    the row starting at byte ``offset`` of its first burst: the INT8 values a load unit
    can write once that burst has arrived (a value split over two bursts is complete
    with the second)."""
    if not 0 <= offset < burst_bytes:
        raise ValueError(f"offset {offset} is not within a {burst_bytes}-byte burst")
    start, beat = 8 * offset, 8 * burst_bytes
    edges = np.arange(1, (start + n * bits - 1) // beat + 2, dtype=np.int64) * beat
    done = np.minimum(n, (edges - start) // bits)
    return np.diff(done, prepend=0)


@dataclass(frozen=True)
class PackedWeights:
    """A weight matrix in the matrix engine's layout."""

    weights: bytes  #: WGT image, ``n * weight_row_bytes`` bytes
    meta: bytes  #: META image, ``n * meta_row_bytes`` bytes (empty when dense)


def pack_weights(w: np.ndarray, prec: WPrec, mode: SparseMode) -> PackedWeights:
    """Pack integer weights ``w[N][K]``; a sparse mode requires ``w`` to follow it.

    Blocks with fewer than ``n`` nonzeros are filled with zero weights at the lowest
    unused indices, so packing is deterministic.
    """
    prec, mode = WPrec(prec), SparseMode(mode)
    w = np.asarray(w)
    if w.ndim != 2:
        raise FormatError(f"weights must be 2-D [N][K], not shape {w.shape}")
    n_out, k = w.shape
    lo, hi = -(1 << (prec.bits - 1)), (1 << (prec.bits - 1)) - 1
    if w.size and (w.min() < lo or w.max() > hi):
        raise FormatError(
            f"weights span {int(w.min())}..{int(w.max())}, outside {prec.name} range {lo}..{hi}"
        )
    if not mode.is_sparse:
        if prec == WPrec.INT4 and k % 2:
            raise FormatError(f"dense INT4 weights need an even K, not {k}")
        vals = w.astype(np.int64) & ((1 << prec.bits) - 1)
        return PackedWeights(_pack_bits(vals, prec.bits).tobytes(), b"")
    if k % mode.m:
        raise FormatError(f"K={k} is not a multiple of the sparse block m={mode.m}")
    blocks = w.reshape(n_out, k // mode.m, mode.m)
    nnz = (blocks != 0).sum(axis=2)
    if (nnz > mode.n).any():
        c, b = np.argwhere(nnz > mode.n)[0]
        raise FormatError(
            f"column {c}, block {b} (K {b * mode.m}..{(b + 1) * mode.m - 1}) has "
            f"{nnz[c, b]} nonzeros, more than {mode.n}:{mode.m} allows"
        )
    # Stable sort puts nonzeros first (by index), then the lowest zero positions.
    order = np.argsort(blocks == 0, axis=2, kind="stable")[:, :, : mode.n]
    idx = np.sort(order, axis=2)
    vals = np.take_along_axis(blocks, idx, axis=2).reshape(n_out, -1).astype(np.int64)
    vals &= (1 << prec.bits) - 1
    packed = _pack_bits(vals, prec.bits)
    meta = _pack_bits(idx.reshape(n_out, -1), index_bits(mode))
    return PackedWeights(packed.tobytes(), meta.tobytes())


def unpack_weights(
    weights: bytes | np.ndarray,
    meta: bytes | np.ndarray,
    n_out: int,
    k: int,
    prec: WPrec,
    mode: SparseMode,
) -> np.ndarray:
    """Dense ``int64 [N][K]`` equivalent of packed weights.

    Sparse entries are scattered with addition, which is exactly what the sparse MUX
    computes even if two entries of a block carry the same index.
    """
    prec, mode = WPrec(prec), SparseMode(mode)
    rb = weight_row_bytes(k, prec, mode)
    wb = np.frombuffer(bytes(weights), dtype=np.uint8)[: n_out * rb].reshape(n_out, rb)
    entries = weight_entries(k, mode)
    vals = _to_signed(_unpack_bits(wb, prec.bits, entries), prec.bits)
    if not mode.is_sparse:
        return vals
    mb = meta_row_bytes(k, mode)
    mbytes = np.frombuffer(bytes(meta), dtype=np.uint8)[: n_out * mb].reshape(n_out, mb)
    idx = _unpack_bits(mbytes, index_bits(mode), entries)
    nblk = k // mode.m
    cols = idx.reshape(n_out, nblk, mode.n) + (np.arange(nblk) * mode.m)[None, :, None]
    dense = np.zeros((n_out, k), dtype=np.int64)
    rows = np.broadcast_to(np.arange(n_out)[:, None, None], cols.shape)
    np.add.at(dense, (rows.ravel(), cols.ravel()), vals.ravel())
    return dense


@dataclass(frozen=True)
class ColumnRecords:
    """Per-output-column parameters of a matrix instruction."""

    bias: np.ndarray  #: int32 [N], in accumulator units
    mult: np.ndarray  #: uint16 [N], requantisation multiplier
    scales: np.ndarray  #: uint8 [N][K / group] group scales ([N][0] without groups)


def pack_column_records(rec: ColumnRecords, k: int, gsz: int) -> bytes:
    n_out = len(rec.bias)
    size = column_record_bytes(k, gsz)
    g = group_size(gsz)
    groups = k // g if g else 0
    scales = np.asarray(rec.scales).reshape(n_out, -1)
    if scales.shape[1] != groups:
        raise FormatError(f"expected {groups} group scales per column, got {scales.shape[1]}")
    for name, arr, lo, hi in (
        ("bias", rec.bias, -(1 << 31), (1 << 31) - 1),
        ("mult", rec.mult, 0, (1 << 16) - 1),
        ("scales", scales, 0, 255),
    ):
        a = np.asarray(arr)
        if a.size and (a.min() < lo or a.max() > hi):
            raise FormatError(
                f"column record {name} spans {int(a.min())}..{int(a.max())}, outside {lo}..{hi}"
            )
    out = np.zeros((n_out, size), dtype=np.uint8)
    out[:, 0:4] = np.asarray(rec.bias, dtype="<i4").reshape(n_out, 1).view(np.uint8)
    out[:, 4:6] = np.asarray(rec.mult, dtype="<u2").reshape(n_out, 1).view(np.uint8)
    out[:, 8 : 8 + groups] = scales.astype(np.uint8)
    return out.tobytes()


def unpack_column_records(data: bytes | np.ndarray, n_out: int, k: int, gsz: int) -> ColumnRecords:
    size = column_record_bytes(k, gsz)
    g = group_size(gsz)
    groups = k // g if g else 0
    raw = np.frombuffer(bytes(data), dtype=np.uint8)[: n_out * size].reshape(n_out, size)
    bias = raw[:, 0:4].copy().view("<i4").reshape(n_out).astype(np.int64)
    mult = raw[:, 4:6].copy().view("<u2").reshape(n_out).astype(np.int64)
    scales = raw[:, 8 : 8 + groups].astype(np.int64)
    return ColumnRecords(bias, mult, scales)
