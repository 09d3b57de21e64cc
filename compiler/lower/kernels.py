"""Lowering of the decoder's building blocks into instructions.

Each function states what to compute on tiles; the builder allocates memory and the
token scheduler orders the units. Weight tiles are double-buffered: two slots in WGT,
META and SCALE alternate, so the load of tile ``t+1`` overlaps the matrix product of
tile ``t`` (the scheduler orders the load of tile ``t+2`` after the product of ``t``).
The quantised reference of every function here is in :mod:`flightforge.compiler.quant.qref`.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, replace

import numpy as np

from flightforge import formats, isa, numerics
from flightforge.isa import Buf, DType

from ..errors import CompileError
from ..quant.fixed_point import (
    HI_MULT,
    PROB16_SPLIT_SHIFT,
    add_params,
    pv16_params,
    pv_params,
    softmax_params,
    split_params,
)
from ..quant.quantize import LinearLayout, QuantLinear
from .builder import ROWS_MAX, Builder, Tile


def hi_records(ql: QuantLinear) -> formats.ColumnRecords:
    """Column records of a layer's high-half pass: no bias, multiplier 256, the layer's
    own group scales (the INT32 partial sums then carry ``256 * W.hi``)."""
    n = ql.shape[0]
    return formats.ColumnRecords(np.zeros(n, np.int64), np.full(n, HI_MULT, np.int64), ql.gscale)


@dataclass(frozen=True)
class PlacedLinear:
    """A Linear layer whose packed weights sit in external memory."""

    name: str
    layout: LinearLayout
    shift: int  #: requantisation shift shared by the layer's columns
    w_addr: int
    meta_addr: int
    rec_addr: int
    hi_rec_addr: int | None = None  #: column records of the high-half pass (16-bit input)
    #: K split for the MPE's tile buffer (:func:`k_chunks`): per chunk ``(k0, k1,
    #: records, high-half records)``; empty when K fits in one pass
    chunks: tuple[tuple[int, int, int, int | None], ...] = ()

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


def k_chunks(tile_k: int, lay: LinearLayout, name: str) -> list[tuple[int, int]]:
    """The K ranges of a layer's passes: all of K when it fits the MPE's activation tile
    buffer (``mpe.tile_k``), else chunks of at most ``tile_k`` that start on a byte of
    every packed stream (weights, 2/3-bit external values, sparse indices: a multiple of
    8 weights and of 4 sparse blocks) and on a group-scale group."""
    if lay.k <= tile_k:
        return [(0, lay.k)]
    unit = math.lcm(16, lay.group or 1, 4 * lay.sparse.m if lay.sparse.is_sparse else 1)
    step = tile_k // unit * unit
    if step == 0:
        raise CompileError(
            f"{name}: K={lay.k} exceeds mpe.tile_k = {tile_k} and cannot be split into "
            f"chunks of a multiple of {unit} that fit"
        )
    return [(k0, min(k0 + step, lay.k)) for k0 in range(0, lay.k, step)]


def _chunk_records(
    ql: QuantLinear | None, rec: formats.ColumnRecords | None, k0: int, k1: int, group: int
) -> formats.ColumnRecords | None:
    """Records of the K chunk ``k0..k1``: ``rec``'s bias and multipliers with the chunk's
    group scales, or (``rec`` None) bias 0 and multiplier 1: an INT32 partial sum."""
    if ql is None:
        return None
    n = ql.shape[0]
    scales = ql.gscale[:, k0 // group : k1 // group] if group else ql.gscale
    if rec is None:
        return formats.ColumnRecords(np.zeros(n, np.int64), np.ones(n, np.int64), scales)
    return formats.ColumnRecords(rec.bias, rec.mult, scales)


def _place_chunks(
    b: Builder,
    name: str,
    ql: QuantLinear | None,
    lay: LinearLayout,
    s_x: float,
    s_y: float,
    split: bool,
) -> tuple[tuple[int, int, int, int | None], ...]:
    """Place the column records of every K chunk of a layer that the tile buffer cannot
    hold whole: partial-sum records (bias 0, multiplier 1) for all but the last chunk,
    whose records are the layer's own (and, for a 16-bit input, the high half's)."""
    ranges = k_chunks(b.arch.mpe.tile_k, lay, name)
    if len(ranges) == 1:
        return ()
    final = ql.records(s_x, s_y) if ql is not None else None
    hi = hi_records(ql) if ql is not None and split else None
    out = []
    for c, (k0, k1) in enumerate(ranges):

        def put(what: str, rec, k0: int = k0, k1: int = k1) -> int:
            data = _chunk_records(ql, rec, k0, k1, lay.group)
            size = lay.n * formats.column_record_bytes(k1 - k0, lay.gsz)
            packed = formats.pack_column_records(data, k1 - k0, lay.gsz) if data else None
            return b.place(f"{name}.records_k{k0}{what}", "weights", size, packed)

        if c == len(ranges) - 1:
            r = put("", final)
            h = put("_hi", hi) if split else None
        else:
            r = put("_psum", None)
            h = r if split else None
        out.append((k0, k1, r, h))
    return tuple(out)


def place_linear(
    b: Builder,
    name: str,
    ql: QuantLinear | LinearLayout,
    s_x: float,
    s_y: float,
    split: bool = False,
) -> PlacedLinear:
    """Place a layer for inputs of scale ``s_x`` and outputs of scale ``s_y``; ``split``:
    its input is 16-bit, so the high-half pass gets column records of its own.

    Given only a :class:`LinearLayout` (shape-only compilation), the segments get their
    addresses and sizes but no data, and the shift is that of a unit multiplier.
    """
    if isinstance(ql, QuantLinear):
        lay = ql.layout
        packed = ql.packed()
        rec = formats.pack_column_records(ql.records(s_x, s_y), lay.k, lay.gsz)
        hi_rec = formats.pack_column_records(hi_records(ql), lay.k, lay.gsz) if split else None
        _, _, shift = ql.requant(s_x, s_y)
        data = (packed.weights, packed.meta, rec)
    else:
        lay = ql
        _, shift = numerics.quantize_multiplier(s_x / s_y)
        data, hi_rec = (None, None, None), None
    sizes = (lay.n * lay.ext_row_bytes, lay.n * lay.meta_row_bytes, lay.n * lay.record_bytes)
    w = b.place(f"{name}.weight", "weights", sizes[0], data[0])
    m = b.place(f"{name}.meta", "weights", sizes[1], data[1]) if sizes[1] else 0
    chunks = _place_chunks(
        b, name, ql if isinstance(ql, QuantLinear) else None, lay, s_x, s_y, split
    )
    if chunks:  # the passes read the chunks' records only
        r, hr = chunks[-1][2], chunks[-1][3]
    else:
        r = b.place(f"{name}.records", "weights", sizes[2], data[2])
        hr = b.place(f"{name}.records_hi", "weights", sizes[2], hi_rec) if split else None
    return PlacedLinear(name, lay, shift, w, m, r, hr, chunks)


def _column_tile(b: Builder, pl: PlacedLinear, psum_stride: int | None = None) -> int:
    """Columns per weight tile: as many as two slots of every buffer allow, and, for a
    16-bit input of several rows, as many INT32 partial sums as fit in a row of the
    output (the passes share the output's row stride)."""
    limits = [pl.n, ROWS_MAX]
    if psum_stride is not None:
        limits.append(psum_stride // DType.INT32.nbytes)
    recb = pl.recb * (2 if pl.hi_rec_addr is not None else 1)
    for buf, per_col in ((Buf.WGT, pl.wrb), (Buf.META, pl.mrb), (Buf.SCALE, recb)):
        if per_col:
            limits.append(b.bufs[buf].free_bytes // 2 // per_col)
    nt = min(limits)
    if nt < 1:
        if psum_stride is not None and psum_stride < DType.INT32.nbytes:
            raise CompileError(
                f"{pl.name}: an output row of {psum_stride} B cannot hold the "
                f"INT32 partial sums of a 16-bit input"
            )
        raise CompileError(
            f"{pl.name}: one weight column (K={pl.k}: {pl.wrb} B weights, "
            f"{pl.mrb} B indices, {recb} B records) does not fit twice in the "
            f"free WGT/META/SCALE space"
        )
    return nt


def _psum_tile(b: Builder, rows: int, cols: int, out: Tile, what: str) -> Tile:
    """INT32 partial sums of ``cols`` columns that a chained pass reads back at the row
    stride of the output ``out`` (MM/MV share ``d_stride`` between C and the partial
    sums; a single row has no stride, so it takes just ``4 * cols`` bytes)."""
    if rows == 1:
        return b.tile(Buf.ACT, 1, cols * DType.INT32.nbytes, DType.INT8, what)
    if out.stride < cols * DType.INT32.nbytes:
        raise CompileError(
            f"output rows of {out.stride} B cannot hold the INT32 partial "
            f"sums of {cols} columns ({what})"
        )
    return b.tile(Buf.ACT, rows, out.stride, DType.INT8, what)


def _matmul(b: Builder, a: Tile, **fields) -> None:
    """MV for one row of ``a``, else MM."""
    if a.rows == 1:
        b.emit(isa.MV(a_addr=a.addr, **fields))
    else:
        b.emit(isa.MM(m=a.rows, a_addr=a.addr, a_stride=a.stride, **fields))


def linear(b: Builder, x: Tile | tuple[Tile, Tile], pl: PlacedLinear, out: Tile) -> None:
    """``out = requant(x @ W^T + bias)`` with double-buffered weight tiles.

    ``x`` is an INT8 tile, or the ``(hi, lo)`` halves of a 16-bit one (:func:`split`):
    each weight tile then runs the high half into INT32 partial sums and the low half
    on top of them.
    """
    halves = x if isinstance(x, tuple) else None
    x = halves[0] if halves else x
    if x.cols != pl.k or out.cols != pl.n or out.rows != x.rows or x.dtype != DType.INT8:
        raise CompileError(
            f"{pl.name}: input {x.rows}x{x.cols} {x.dtype.name} and output "
            f"{out.rows}x{out.cols} do not match weights {pl.n}x{pl.k}"
        )
    if halves and pl.hi_rec_addr is None:
        raise CompileError(f"{pl.name}: a 16-bit input needs the layer placed with split=True")
    if pl.chunks:
        _linear_chunked(b, x, halves, pl, out)
        return
    nt = _column_tile(b, pl, out.stride if halves and x.rows > 1 else None)
    slots = []
    for s in range(2 if nt < pl.n else 1):
        slots.append(
            (
                b.tile(Buf.WGT, nt, pl.wrb, DType.INT8, f"{pl.name} weight slot {s}"),
                b.tile(Buf.META, nt, pl.mrb, DType.INT8, f"{pl.name} index slot {s}")
                if pl.mrb
                else None,
                b.tile(Buf.SCALE, nt, pl.recb, DType.INT8, f"{pl.name} record slot {s}"),
                b.tile(Buf.SCALE, nt, pl.recb, DType.INT8, f"{pl.name} high-half record slot {s}")
                if halves
                else None,
            )
        )
    psum = _psum_tile(b, x.rows, nt, out, f"{pl.name} high-half partial sums") if halves else None
    for t, n0 in enumerate(range(0, pl.n, nt)):
        cols = min(nt, pl.n - n0)
        w_t, m_t, r_t, h_t = slots[t % len(slots)]
        b.load(w_t.view(rows=cols), pl.w_addr + n0 * pl.ext_wrb, unpack=pl.layout.store_bits)
        if m_t is not None:
            b.load(m_t.view(rows=cols), pl.meta_addr + n0 * pl.mrb)
        b.load(r_t.view(rows=cols), pl.rec_addr + n0 * pl.recb)
        common = dict(
            n=cols,
            k=pl.k,
            w_addr=w_t.addr,
            meta_addr=m_t.addr if m_t is not None else 0,
            d_stride=out.stride,
            sparse=pl.layout.sparse,
            wprec=pl.layout.prec,
            gsz=pl.layout.gsz,
            colp=1,
        )
        if halves:
            b.load(h_t.view(rows=cols), pl.hi_rec_addr + n0 * pl.recb)
            _matmul(
                b, halves[0], q_addr=h_t.addr, d_addr=psum.addr, odt=DType.INT32, shift=0, **common
            )
            _matmul(
                b,
                halves[1],
                q_addr=r_t.addr,
                d_addr=out.at(0, n0),
                odt=out.dtype,
                shift=pl.shift,
                acc_in=1,
                p_addr=psum.addr,
                **common,
            )
        else:
            _matmul(
                b, x, q_addr=r_t.addr, d_addr=out.at(0, n0), odt=out.dtype, shift=pl.shift, **common
            )
    if psum is not None:
        b.free(psum)
    for slot in slots:
        b.free(*[t for t in slot if t is not None])


def _packed(slot: Tile, rows: int, row_bytes: int) -> Tile:
    """``rows`` rows of ``row_bytes`` packed back to back at the start of ``slot``."""
    return Tile(slot.buf, slot.addr, rows, row_bytes, DType.INT8, row_bytes)


def _linear_chunked(
    b: Builder, x: Tile, halves: tuple[Tile, Tile] | None, pl: PlacedLinear, out: Tile
) -> None:
    """:func:`linear` of a layer whose K is split (``pl.chunks``): per column tile, one
    pass per K chunk (per half and chunk for a 16-bit input: the high half's chunks,
    the last scaled by 256, then the low half's), chained through INT32 partial sums;
    the last pass requantises into ``out``. Every pass loads its chunk of the columns'
    weights, indices and records into the next double-buffered slot."""
    widest = max(k1 - k0 for k0, k1, _, _ in pl.chunks)
    lay = replace(pl.layout, k=widest)
    sub = replace(pl, layout=lay, chunks=())
    nt = _column_tile(b, sub, out.stride if x.rows > 1 else None)
    slots = [
        (
            b.tile(Buf.WGT, nt, lay.weight_row_bytes, DType.INT8, f"{pl.name} weight slot {s}"),
            b.tile(Buf.META, nt, lay.meta_row_bytes, DType.INT8, f"{pl.name} index slot {s}")
            if lay.meta_row_bytes
            else None,
            b.tile(Buf.SCALE, nt, lay.record_bytes, DType.INT8, f"{pl.name} record slot {s}"),
        )
        for s in range(2)
    ]
    psum = _psum_tile(b, x.rows, nt, out, f"{pl.name} K-chunk partial sums")
    sweeps = [(halves[0], True), (halves[1], False)] if halves else [(x, False)]
    passes = [(a, hi, c) for a, hi in sweeps for c in range(len(pl.chunks))]
    bits = pl.layout.store_bits
    t = 0
    for n0 in range(0, pl.n, nt):
        cols = min(nt, pl.n - n0)
        for p, (a, hi, c) in enumerate(passes):
            k0, k1, rec, hi_rec = pl.chunks[c]
            kc = replace(pl.layout, k=k1 - k0)
            w_t, m_t, r_t = slots[t % 2]
            t += 1
            # the chunk's columns packed at its own row bytes (the MPE's column stride)
            w_off = k0 * bits // 8 if bits else formats.weight_row_bytes(k0, kc.prec, kc.sparse)
            b.load(
                _packed(w_t, cols, kc.weight_row_bytes),
                pl.w_addr + n0 * pl.ext_wrb + w_off,
                ext_stride=pl.ext_wrb,
                unpack=bits,
            )
            if m_t is not None:
                m_off = formats.meta_row_bytes(k0, kc.sparse)
                b.load(
                    _packed(m_t, cols, kc.meta_row_bytes),
                    pl.meta_addr + n0 * pl.mrb + m_off,
                    ext_stride=pl.mrb,
                )
            recb = kc.record_bytes
            b.load(_packed(r_t, cols, recb), (hi_rec if hi else rec) + n0 * recb, recb)
            final = p == len(passes) - 1
            _matmul(
                b,
                a.view(col=k0, cols=k1 - k0),
                n=cols,
                k=k1 - k0,
                w_addr=w_t.addr,
                meta_addr=m_t.addr if m_t is not None else 0,
                q_addr=r_t.addr,
                d_addr=out.at(0, n0) if final else psum.addr,
                d_stride=out.stride,
                sparse=kc.sparse,
                wprec=kc.prec,
                gsz=kc.gsz,
                colp=1,
                acc_in=int(p > 0),
                p_addr=psum.addr if p > 0 else 0,
                odt=out.dtype if final else DType.INT32,
                shift=pl.shift if final else 0,
            )
    b.free(psum)
    for slot in slots:
        b.free(*[t for t in slot if t is not None])


def split(b: Builder, x: Tile, neg: PlacedParams, s: int = 0, grow: int = 0) -> tuple[Tile, Tile]:
    """The INT8 halves ``(hi, lo)`` of a 16-bit tile (see ``SPLIT_BITS``): three SFU
    passes, REQUANT, the negating LUT and ADD. ``grow``: the columns grow by ``D`` up
    to that many more (probabilities over a bucket's actual context)."""
    hi_shift, lo_m1, lo_shift = split_params(s)
    dyn = dict(dyn_cols=int(grow > 0))
    hi, lo, neg_hi = (
        _context_tile(b, x.rows, x.cols, grow, DType.INT8, what)
        for what in ("high half", "low half", "negated high half")
    )
    b.emit(
        isa.MISC(
            op=isa.MiscOp.REQUANT,
            rows=x.rows,
            cols=x.cols,
            a_addr=x.addr,
            a_stride=x.stride,
            a_dt=x.dtype,
            d_addr=hi.addr,
            d_stride=hi.stride,
            d_dt=DType.INT8,
            m0=1,
            shift=hi_shift,
            **dyn,
        )
    )
    table_op(b, isa.MiscOp.LUT, hi, neg, neg_hi, **dyn)
    b.emit(
        isa.MISC(
            op=isa.MiscOp.ADD,
            rows=x.rows,
            cols=x.cols,
            a_addr=x.addr,
            a_stride=x.stride,
            a_dt=x.dtype,
            b_addr=neg_hi.addr,
            b_stride=neg_hi.stride,
            b_dt=DType.INT8,
            d_addr=lo.addr,
            d_stride=lo.stride,
            d_dt=DType.INT8,
            m0=1,
            m1=lo_m1,
            shift=lo_shift,
            **dyn,
        )
    )
    b.free(neg_hi)
    return hi, lo


def rope(b: Builder, x: Tile, table_addr: int, pos0: int, head_dim: int, dyn: bool = False) -> None:
    """Rotate ``x`` (INT8, rows at positions ``pos0..``) in place with a Q14 table.

    The table rows for the tile's positions are loaded into GLB for the duration;
    ``dyn``: the rows are at ``pos0 + D`` (a length-adaptive section).
    """
    row = 2 * head_dim  # bytes per position: cos INT16[d/2] then sin INT16[d/2]
    glb = b.tile(Buf.GLB, x.rows, row, DType.INT8, "rope table rows")
    b.load(glb, table_addr + pos0 * row, dyn_step=row if dyn else 0)
    b.emit(
        isa.MISC(
            op=isa.MiscOp.ROPE,
            rows=x.rows,
            cols=x.cols,
            a_addr=x.addr,
            a_stride=x.stride,
            a_dt=x.dtype,
            d_addr=x.addr,
            d_stride=x.stride,
            d_dt=x.dtype,
            p_addr=glb.addr,
            pos=0,
            len=head_dim,
            shift=numerics.ROPE_FRAC_BITS,
        )
    )
    b.free(glb)


ATTENTION_BLOCK_MIN = (
    16  #: fewest query rows per attention block (fewer: more instructions than skipped work)
)


def attention(
    b: Builder,
    q: Tile,
    k_cache: int,
    v_cache: int,
    ctx: int,
    pos0: int,
    s_k: float,
    s_v: float,
    out: Tile,
    dyn: bool = False,
) -> None:
    """Causal attention of ``q`` (rows at positions ``pos0..``) over cache rows ``0..ctx``.

    The caches are INT8 ``[position][head_dim]`` in external memory; K is read as an
    ``[N][K]`` weight tile, V as a ``[K][N]`` one (``wkn``). ``dyn``: the rows are at
    ``pos0 + D`` and ``ctx`` is the bucket's largest context; the context grows with
    ``D`` from ``ctx - d_max`` (``dyn_rows`` of the cache loads, ``dyn_n``/``dyn_k`` of
    the products, ``dyn_cols`` of the softmax), so a run computes over its actual
    context and costs what an exact-length compile does. Buffers are sized for ``ctx``.

    Block-sparse causal attention: the query rows run in blocks of the MM tile height
    (at least ``ATTENTION_BLOCK_MIN``), and each block's score, softmax and PV products
    stop at its last row's causal limit, so the key blocks above the diagonal, all
    masked, are never computed. Masked columns contribute exact zeros, so every block
    gives the same bits as the full product.
    """
    d = q.cols
    rows = q.rows
    grow = b.sched.d_max if dyn else 0  # context columns the largest D adds
    dctx = dict(dyn_n=int(dyn), dyn_k=0), dict(dyn_n=0, dyn_k=int(dyn))
    kt, vt = (
        _cache_tile(b, base, ctx, grow, d, what)
        for base, what in ((k_cache, "K cache tile"), (v_cache, "V cache tile"))
    )
    m0, sh = softmax_params(q.scale, s_k, d)
    mult, psh = pv_params(s_v, out.scale)
    block = max(b.arch.mpe.mm.m, ATTENTION_BLOCK_MIN)
    for r0 in range(0, rows, block):
        br = min(block, rows - r0)
        n = ctx - grow - rows + r0 + br  # columns up to the block's last row's causal limit
        scores = _context_tile(b, br, n, grow, DType.INT32, "attention scores")
        _matmul(
            b,
            q.view(row=r0, rows=br),
            n=n,
            k=d,
            w_addr=kt.addr,
            d_addr=scores.addr,
            d_stride=scores.stride,
            odt=DType.INT32,
            mult=1,
            shift=0,
            **dctx[0],
        )
        probs = _softmax(b, scores, DType.INT8, m0, sh, pos0 + r0, dyn, grow)
        _matmul(
            b,
            probs,
            n=d,
            k=n,
            w_addr=vt.addr,
            wkn=1,
            d_addr=out.at(r0),
            d_stride=out.stride,
            odt=out.dtype,
            mult=mult,
            shift=psh,
            **dctx[1],
        )
        b.free(probs)
    b.free(kt, vt)


def _cache_tile(b: Builder, base: int, ctx: int, grow: int, d: int, what: str) -> Tile:
    """A KV-cache tile sized for ``ctx`` positions, loaded for ``ctx - grow + D``."""
    t = b.tile(Buf.WGT, ctx, d, DType.INT8, what)
    b.load(t.view(rows=ctx - grow), base, dyn_rows=grow > 0)
    return t


def _context_tile(b: Builder, rows: int, cols: int, grow: int, dt: DType, what: str) -> Tile:
    """A ``rows x cols`` view of a tile with room for ``grow`` more columns."""
    return b.tile(Buf.ACT, rows, cols + grow, dt, what).view(cols=cols)


def _softmax(
    b: Builder, scores: Tile, dt: DType, m0: int, shift: int, pos: int, dyn: bool, grow: int = 0
) -> Tile:
    """Causal softmax of a block of INT32 scores (rows at ``pos..``, ``grow`` more
    columns at the largest D) into probabilities of type ``dt``; frees the scores."""
    probs = _context_tile(b, scores.rows, scores.cols, grow, dt, "attention probabilities")
    b.emit(
        isa.MISC(
            op=isa.MiscOp.SOFTMAX,
            rows=scores.rows,
            cols=scores.cols,
            a_addr=scores.addr,
            a_stride=scores.stride,
            a_dt=DType.INT32,
            d_addr=probs.addr,
            d_stride=probs.stride,
            d_dt=dt,
            m0=m0,
            shift=shift,
            pos=pos,
            causal=1,
            dyn_pos=int(dyn),
            dyn_cols=int(grow > 0),
        )
    )
    b.free(scores)
    return probs


def _split_product(
    b: Builder,
    a: tuple[Tile, Tile],
    w: tuple[int, int],
    out_addr: int,
    out_stride: int,
    odt: DType,
    mult: int,
    shift: int,
    scratch: tuple[Tile, Tile],
    **fields,
) -> None:
    """``256*a_hi.w_hi + a_hi.w_lo + a_lo.w_hi`` in three passes chained through INT32
    partial sums (two scratch tiles at ``out_stride``), requantised by the last."""
    (a_hi, a_lo), (w_hi, w_lo) = a, w
    s0, s1 = scratch
    common = dict(d_stride=out_stride, **fields)
    _matmul(b, a_hi, w_addr=w_hi, d_addr=s0.addr, odt=DType.INT32, mult=HI_MULT, shift=0, **common)
    _matmul(
        b,
        a_hi,
        w_addr=w_lo,
        d_addr=s1.addr,
        odt=DType.INT32,
        mult=1,
        shift=0,
        acc_in=1,
        p_addr=s0.addr,
        **common,
    )
    _matmul(
        b,
        a_lo,
        w_addr=w_hi,
        d_addr=out_addr,
        odt=odt,
        mult=mult,
        shift=shift,
        acc_in=1,
        p_addr=s1.addr,
        **common,
    )


def attention16(
    b: Builder,
    q: tuple[Tile, Tile],
    s_q: float,
    k_planes: tuple[int, int],
    v_planes: tuple[int, int],
    ctx: int,
    pos0: int,
    s_k: float,
    s_v: float,
    out: Tile,
    neg: PlacedParams,
    dyn: bool = False,
) -> None:
    """:func:`attention` with 16-bit q, K, V and probabilities, each as two INT8 halves.

    The caches hold each 16-bit value as two INT8 planes (high, low) at ``k_planes`` and
    ``v_planes``. Scores ``q.k / 256`` and ``p.v / 512`` take three engine passes each
    (:func:`_split_product`); the softmax writes INT16 probabilities (scale 2**-15),
    split with s = 1 before the PV product. Block-sparse causal blocks as in
    :func:`attention`.
    """
    qh, ql = q
    d = qh.cols
    rows = qh.rows
    grow = b.sched.d_max if dyn else 0
    caches = [
        _cache_tile(b, base, ctx, grow, d, "KV cache plane") for base in (*k_planes, *v_planes)
    ]
    kh, kl, vh, vl = caches
    m0, sh = softmax_params(s_q * HI_MULT, s_k, d)
    mult, psh = pv16_params(s_v, out.scale)
    block = max(b.arch.mpe.mm.m, ATTENTION_BLOCK_MIN)
    for r0 in range(0, rows, block):
        br = min(block, rows - r0)
        n = ctx - grow - rows + r0 + br
        q_rows = (qh.view(row=r0, rows=br), ql.view(row=r0, rows=br))
        scratch = tuple(
            _context_tile(b, br, n, grow, DType.INT32, f"attention score partial sums {i}")
            for i in range(2)
        )
        scores = _context_tile(b, br, n, grow, DType.INT32, "attention scores")
        _split_product(
            b,
            q_rows,
            (kh.addr, kl.addr),
            scores.addr,
            scores.stride,
            DType.INT32,
            1,
            0,
            scratch,
            n=n,
            k=d,
            dyn_n=int(dyn),
        )
        b.free(*scratch)
        probs = _softmax(b, scores, DType.INT16, m0, sh, pos0 + r0, dyn, grow)
        p_halves = split(b, probs, neg, PROB16_SPLIT_SHIFT, grow)
        b.free(probs)
        scratch = tuple(
            _psum_tile(b, br, d, out, f"attention PV partial sums {i}") for i in range(2)
        )
        _split_product(
            b,
            p_halves,
            (vh.addr, vl.addr),
            out.at(r0),
            out.stride,
            out.dtype,
            mult,
            psh,
            scratch,
            n=d,
            k=n,
            wkn=1,
            dyn_k=int(dyn),
        )
        b.free(*scratch, *p_halves)
    b.free(*caches)


@dataclass(frozen=True)
class PlacedParams:
    """An SFU parameter block (norm gains/biases, activation table) in external memory."""

    name: str
    addr: int
    nbytes: int


def place_params(b: Builder, name: str, data: np.ndarray, with_data: bool = True) -> PlacedParams:
    raw = np.ascontiguousarray(data)
    return PlacedParams(
        name, b.place(name, "const", raw.nbytes, raw if with_data else None), raw.nbytes
    )


def _with_params(b: Builder, params: PlacedParams) -> Tile:
    glb = b.tile(Buf.GLB, 1, params.nbytes, DType.INT8, f"{params.name} parameters")
    b.load(glb, params.addr)
    return glb


def norm(
    b: Builder,
    x: Tile,
    params: PlacedParams,
    out: Tile,
    *,
    layer: bool,
    eps: int,
    shift: int,
    a_step: int = 0,
) -> None:
    """RMSNorm (``layer=False``) or LayerNorm of every row of ``x`` into ``out``.

    ``a_step``: the input moves by ``D * a_step`` (the last prompt row of a bucket).
    """
    glb = _with_params(b, params)
    b.emit(
        isa.MISC(
            op=isa.MiscOp.LAYERNORM if layer else isa.MiscOp.RMSNORM,
            rows=x.rows,
            cols=x.cols,
            a_addr=x.addr,
            a_stride=x.stride,
            a_dt=x.dtype,
            d_addr=out.addr,
            d_stride=out.stride,
            d_dt=out.dtype,
            p_addr=glb.addr,
            eps=eps,
            shift=shift,
            a_step=a_step,
        )
    )
    b.free(glb)


def table_op(
    b: Builder, op: isa.MiscOp, x: Tile, params: PlacedParams, out: Tile, dyn_cols: int = 0
) -> None:
    """A 256-entry table (SILU, GELU, RELU, LUT) of the output type."""
    glb = _with_params(b, params)
    b.emit(
        isa.MISC(
            op=op,
            rows=x.rows,
            cols=x.cols,
            a_addr=x.addr,
            a_stride=x.stride,
            a_dt=x.dtype,
            d_addr=out.addr,
            d_stride=out.stride,
            d_dt=out.dtype,
            p_addr=glb.addr,
            dyn_cols=dyn_cols,
        )
    )
    b.free(glb)


def add(b: Builder, x: Tile, y: Tile, out: Tile) -> None:
    m0, m1, shift = add_params(x.scale, y.scale, out.scale)
    b.emit(
        isa.MISC(
            op=isa.MiscOp.ADD,
            rows=x.rows,
            cols=x.cols,
            a_addr=x.addr,
            a_stride=x.stride,
            a_dt=x.dtype,
            b_addr=y.addr,
            b_stride=y.stride,
            b_dt=y.dtype,
            d_addr=out.addr,
            d_stride=out.stride,
            d_dt=out.dtype,
            m0=m0,
            m1=m1,
            shift=shift,
        )
    )


def mul(b: Builder, x: Tile, y: Tile, out: Tile) -> None:
    m0, shift = numerics.quantize_multiplier(x.scale * y.scale / out.scale)
    b.emit(
        isa.MISC(
            op=isa.MiscOp.MUL,
            rows=x.rows,
            cols=x.cols,
            a_addr=x.addr,
            a_stride=x.stride,
            a_dt=x.dtype,
            b_addr=y.addr,
            b_stride=y.stride,
            b_dt=y.dtype,
            d_addr=out.addr,
            d_stride=out.stride,
            d_dt=out.dtype,
            m0=m0,
            shift=shift,
        )
    )
