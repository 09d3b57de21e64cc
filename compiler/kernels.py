"""Lowering of the decoder's building blocks into instructions.

Each function states what to compute on tiles; the builder allocates memory and the
token scheduler orders the units. Weight tiles are double-buffered: two slots in WGT,
META and SCALE alternate, so the load of tile ``t+1`` overlaps the matrix product of
tile ``t`` (the scheduler orders the load of tile ``t+2`` after the product of ``t``).
The quantised reference of every function here is in :mod:`flightforge.compiler.qref`.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np

from flightforge import formats, isa, numerics
from flightforge.isa import Buf, DType

from .builder import ROWS_MAX, Builder, Tile
from .memory import CompileError
from .quantize import LinearLayout, QuantLinear

PROB_FRAC_BITS = DType.INT8.bits - 1  #: softmax probabilities are INT8 with scale 2**-7


@dataclass(frozen=True)
class PlacedLinear:
    """A Linear layer whose packed weights sit in external memory."""

    name: str
    layout: LinearLayout
    shift: int  #: requantisation shift shared by the layer's columns
    w_addr: int
    meta_addr: int
    rec_addr: int

    @property
    def n(self) -> int:
        return self.layout.n

    @property
    def k(self) -> int:
        return self.layout.k

    @property
    def wrb(self) -> int:
        return self.layout.weight_row_bytes

    @property
    def ext_wrb(self) -> int:
        return self.layout.ext_row_bytes

    @property
    def mrb(self) -> int:
        return self.layout.meta_row_bytes

    @property
    def recb(self) -> int:
        return self.layout.record_bytes


def place_linear(b: Builder, name: str, ql: QuantLinear | LinearLayout, s_x: float,
                 s_y: float) -> PlacedLinear:
    """Place a layer for inputs of scale ``s_x`` and outputs of scale ``s_y``.

    Given only a :class:`LinearLayout` (shape-only compilation), the segments get their
    addresses and sizes but no data, and the shift is that of a unit multiplier.
    """
    if isinstance(ql, QuantLinear):
        lay = ql.layout
        packed = ql.packed()
        rec = formats.pack_column_records(ql.records(s_x, s_y), lay.k, lay.gsz)
        _, _, shift = ql.requant(s_x, s_y)
        data = (packed.weights, packed.meta, rec)
    else:
        lay = ql
        _, shift = numerics.quantize_multiplier(s_x / s_y)
        data = (None, None, None)
    sizes = (lay.n * lay.ext_row_bytes, lay.n * lay.meta_row_bytes, lay.n * lay.record_bytes)
    w = b.place(f"{name}.weight", "weights", sizes[0], data[0])
    m = b.place(f"{name}.meta", "weights", sizes[1], data[1]) if sizes[1] else 0
    r = b.place(f"{name}.records", "weights", sizes[2], data[2])
    return PlacedLinear(name, lay, shift, w, m, r)


def _column_tile(b: Builder, pl: PlacedLinear) -> int:
    """Columns per weight tile: as many as two slots of every buffer allow."""
    limits = [pl.n, ROWS_MAX]
    for buf, per_col in ((Buf.WGT, pl.wrb), (Buf.META, pl.mrb), (Buf.SCALE, pl.recb)):
        if per_col:
            limits.append(b.bufs[buf].free_bytes // 2 // per_col)
    nt = min(limits)
    if nt < 1:
        raise CompileError(f"{pl.name}: one weight column (K={pl.k}: {pl.wrb} B weights, "
                           f"{pl.mrb} B indices, {pl.recb} B record) does not fit twice in the "
                           f"free WGT/META/SCALE space")
    return nt


def linear(b: Builder, x: Tile, pl: PlacedLinear, out: Tile) -> None:
    """``out = requant(x @ W^T + bias)`` with double-buffered weight tiles."""
    if x.cols != pl.k or out.cols != pl.n or out.rows != x.rows or x.dtype != DType.INT8:
        raise CompileError(f"{pl.name}: input {x.rows}x{x.cols} {x.dtype.name} and output "
                           f"{out.rows}x{out.cols} do not match weights {pl.n}x{pl.k}")
    nt = _column_tile(b, pl)
    slots = []
    for s in range(2 if nt < pl.n else 1):
        slots.append((b.tile(Buf.WGT, nt, pl.wrb, DType.INT8, f"{pl.name} weight slot {s}"),
                      b.tile(Buf.META, nt, pl.mrb, DType.INT8, f"{pl.name} index slot {s}")
                      if pl.mrb else None,
                      b.tile(Buf.SCALE, nt, pl.recb, DType.INT8, f"{pl.name} record slot {s}")))
    for t, n0 in enumerate(range(0, pl.n, nt)):
        cols = min(nt, pl.n - n0)
        w_t, m_t, r_t = slots[t % len(slots)]
        b.load(w_t.view(rows=cols), pl.w_addr + n0 * pl.ext_wrb, unpack=pl.layout.store_bits)
        if m_t is not None:
            b.load(m_t.view(rows=cols), pl.meta_addr + n0 * pl.mrb)
        b.load(r_t.view(rows=cols), pl.rec_addr + n0 * pl.recb)
        common = dict(n=cols, k=pl.k, a_addr=x.addr, w_addr=w_t.addr,
                      meta_addr=m_t.addr if m_t is not None else 0, q_addr=r_t.addr,
                      d_addr=out.at(0, n0), d_stride=out.stride, sparse=pl.layout.sparse,
                      wprec=pl.layout.prec, gsz=pl.layout.gsz, colp=1, odt=out.dtype,
                      shift=pl.shift)
        if x.rows == 1:
            b.emit(isa.MV(**common))
        else:
            b.emit(isa.MM(m=x.rows, a_stride=x.stride, **common))
    for slot in slots:
        b.free(*[t for t in slot if t is not None])


def rope(b: Builder, x: Tile, table_addr: int, pos0: int, head_dim: int, dyn: bool = False) -> None:
    """Rotate ``x`` (INT8, rows at positions ``pos0..``) in place with a Q14 table.

    The table rows for the tile's positions are loaded into GLB for the duration;
    ``dyn``: the rows are at ``pos0 + D`` (a length-adaptive section).
    """
    row = 2 * head_dim  # bytes per position: cos INT16[d/2] then sin INT16[d/2]
    glb = b.tile(Buf.GLB, x.rows, row, DType.INT8, "rope table rows")
    b.load(glb, table_addr + pos0 * row, dyn_step=row if dyn else 0)
    b.emit(isa.MISC(op=isa.MiscOp.ROPE, rows=x.rows, cols=x.cols, a_addr=x.addr,
                    a_stride=x.stride, a_dt=x.dtype, d_addr=x.addr, d_stride=x.stride,
                    d_dt=x.dtype, p_addr=glb.addr, pos=0, len=head_dim,
                    shift=numerics.ROPE_FRAC_BITS))
    b.free(glb)


def softmax_params(s_q: float, s_k: float, head_dim: int) -> tuple[int, int]:
    """``(m0, shift)`` turning INT32 scores into the u.8 log2-domain softmax argument."""
    real = s_q * s_k / math.sqrt(head_dim) * math.log2(math.e) * (1 << numerics.FRAC_BITS_EXP)
    return numerics.quantize_multiplier(real)


def pv_params(s_v: float, s_o: float) -> tuple[int, int]:
    return numerics.quantize_multiplier(2.0 ** -PROB_FRAC_BITS * s_v / s_o)


ATTENTION_BLOCK_MIN = 16  #: fewest query rows per attention block (fewer: more instructions than skipped work)


def attention(b: Builder, q: Tile, k_cache: int, v_cache: int, ctx: int, pos0: int,
              s_k: float, s_v: float, out: Tile, dyn: bool = False) -> None:
    """Causal attention of ``q`` (rows at positions ``pos0..``) over cache rows ``0..ctx``.

    The caches are INT8 ``[position][head_dim]`` in external memory; K is read as an
    ``[N][K]`` weight tile, V as a ``[K][N]`` one (``wkn``). ``dyn``: the rows are at
    ``pos0 + D``; ``ctx`` is then the bucket's padded context, and the causal mask, which
    moves with ``D``, gives the columns beyond the real context probability 0, so the
    padded products add exact zeros.

    Block-sparse causal attention: the query rows run in blocks of the MM tile height
    (at least ``ATTENTION_BLOCK_MIN``), and each block's score, softmax and PV products
    stop at its last row's causal limit, so the key blocks above the diagonal, all
    masked, are never computed. Masked columns contribute exact zeros, so every block
    gives the same bits as the full product.
    """
    d = q.cols
    rows = q.rows
    kt = b.tile(Buf.WGT, ctx, d, DType.INT8, "K cache tile")
    b.load(kt, k_cache)
    vt = b.tile(Buf.WGT, ctx, d, DType.INT8, "V cache tile")
    b.load(vt, v_cache)
    m0, sh = softmax_params(q.scale, s_k, d)
    mult, psh = pv_params(s_v, out.scale)
    block = max(b.arch.mpe.mm.m, ATTENTION_BLOCK_MIN)
    for r0 in range(0, rows, block):
        br = min(block, rows - r0)
        n = ctx - rows + r0 + br  # columns up to the block's last row's causal limit
        mm_or_mv = isa.MV if br == 1 else isa.MM
        scores = b.tile(Buf.ACT, br, n, DType.INT32, "attention scores")
        extra = {} if br == 1 else {"m": br, "a_stride": q.stride}
        b.emit(mm_or_mv(n=n, k=d, a_addr=q.at(r0), w_addr=kt.addr, d_addr=scores.addr,
                        d_stride=scores.stride, odt=DType.INT32, mult=1, shift=0, **extra))
        probs = b.tile(Buf.ACT, br, n, DType.INT8, "attention probabilities")
        b.emit(isa.MISC(op=isa.MiscOp.SOFTMAX, rows=br, cols=n, a_addr=scores.addr,
                        a_stride=scores.stride, a_dt=DType.INT32, d_addr=probs.addr,
                        d_stride=probs.stride, d_dt=DType.INT8, m0=m0, shift=sh, pos=pos0 + r0,
                        causal=1, dyn_pos=int(dyn)))
        b.free(scores)
        extra = {} if br == 1 else {"m": br, "a_stride": probs.stride}
        b.emit(mm_or_mv(n=d, k=n, a_addr=probs.addr, w_addr=vt.addr, wkn=1, d_addr=out.at(r0),
                        d_stride=out.stride, odt=out.dtype, mult=mult, shift=psh, **extra))
        b.free(probs)
    b.free(kt, vt)


def rope_table_bytes(positions: int, head_dim: int, theta: float) -> np.ndarray:
    """The RoPE constant segment: per position, cos INT16[d/2] then sin INT16[d/2]."""
    cos, sin = numerics.rope_tables(positions, head_dim, theta)
    return np.concatenate([cos, sin], axis=1).astype("<i2")


@dataclass(frozen=True)
class PlacedParams:
    """An SFU parameter block (norm gains/biases, activation table) in external memory."""

    name: str
    addr: int
    nbytes: int


def place_params(b: Builder, name: str, data: np.ndarray, with_data: bool = True) -> PlacedParams:
    raw = np.ascontiguousarray(data)
    return PlacedParams(name, b.place(name, "const", raw.nbytes, raw if with_data else None), raw.nbytes)


def _with_params(b: Builder, params: PlacedParams) -> Tile:
    glb = b.tile(Buf.GLB, 1, params.nbytes, DType.INT8, f"{params.name} parameters")
    b.load(glb, params.addr)
    return glb


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
    g = np.round(np.asarray(gamma, np.float64) / s_y * 2.0 ** k).astype(np.int64)
    return np.clip(g, -32768, 32767), numerics.NORM_T_FRAC + k


def norm_eps(eps: float, s_x: float) -> int:
    """Epsilon in squared input units, saturated to the 16-bit field."""
    return int(min(round(eps / (s_x * s_x)), (1 << 16) - 1))


def norm(b: Builder, x: Tile, params: PlacedParams, out: Tile, *, layer: bool, eps: int,
         shift: int, a_step: int = 0) -> None:
    """RMSNorm (``layer=False``) or LayerNorm of every row of ``x`` into ``out``.

    ``a_step``: the input moves by ``D * a_step`` (the last prompt row of a bucket).
    """
    glb = _with_params(b, params)
    b.emit(isa.MISC(op=isa.MiscOp.LAYERNORM if layer else isa.MiscOp.RMSNORM, rows=x.rows,
                    cols=x.cols, a_addr=x.addr, a_stride=x.stride, a_dt=x.dtype,
                    d_addr=out.addr, d_stride=out.stride, d_dt=out.dtype, p_addr=glb.addr,
                    eps=eps, shift=shift, a_step=a_step))
    b.free(glb)


def table_op(b: Builder, op: isa.MiscOp, x: Tile, params: PlacedParams, out: Tile) -> None:
    """SILU or GELU through a 256-entry table of the output type."""
    glb = _with_params(b, params)
    b.emit(isa.MISC(op=op, rows=x.rows, cols=x.cols, a_addr=x.addr, a_stride=x.stride,
                    a_dt=x.dtype, d_addr=out.addr, d_stride=out.stride, d_dt=out.dtype,
                    p_addr=glb.addr))
    b.free(glb)


def add_params(s_a: float, s_b: float, s_y: float) -> tuple[int, int, int]:
    """``(m0, m1, shift)`` for ``y = a*s_a/s_y + b*s_b/s_y`` with one shared shift."""
    ra, rb = s_a / s_y, s_b / s_y
    _, shift = numerics.quantize_multiplier(max(ra, rb))
    m0, m1 = round(ra * 2.0 ** shift), round(rb * 2.0 ** shift)
    if min(m0, m1) == 0:
        raise CompileError(f"residual scales {s_a:.3g} and {s_b:.3g} are too far apart for one "
                           f"16-bit multiplier pair")
    return m0, m1, shift


def add(b: Builder, x: Tile, y: Tile, out: Tile) -> None:
    m0, m1, shift = add_params(x.scale, y.scale, out.scale)
    b.emit(isa.MISC(op=isa.MiscOp.ADD, rows=x.rows, cols=x.cols, a_addr=x.addr,
                    a_stride=x.stride, a_dt=x.dtype, b_addr=y.addr, b_stride=y.stride,
                    b_dt=y.dtype, d_addr=out.addr, d_stride=out.stride, d_dt=out.dtype,
                    m0=m0, m1=m1, shift=shift))


def mul(b: Builder, x: Tile, y: Tile, out: Tile) -> None:
    m0, shift = numerics.quantize_multiplier(x.scale * y.scale / out.scale)
    b.emit(isa.MISC(op=isa.MiscOp.MUL, rows=x.rows, cols=x.cols, a_addr=x.addr,
                    a_stride=x.stride, a_dt=x.dtype, b_addr=y.addr, b_stride=y.stride,
                    b_dt=y.dtype, d_addr=out.addr, d_stride=out.stride, d_dt=out.dtype,
                    m0=m0, shift=shift))
