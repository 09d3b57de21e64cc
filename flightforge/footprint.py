"""Which bytes an instruction reads and writes: its memory footprint.

Derived from the instruction semantics in :mod:`flightforge.isa` and the layouts in
:mod:`flightforge.formats`. The compiler uses footprints to insert wait/release tokens
(every cross-unit read-after-write, write-after-read and write-after-write is ordered);
checkers use them to find unsynchronised programs. Footprints are conservative
rectangles: a strided 2D access covers from its first to its last byte.
"""

from __future__ import annotations

from dataclasses import dataclass

from . import formats, isa

EXT = "EXT"  #: the space name of external memory; buffers use their isa.Buf name


@dataclass(frozen=True)
class Access:
    space: str
    lo: int
    hi: int  #: exclusive

    def overlaps(self, other: Access) -> bool:
        return self.space == other.space and self.lo < other.hi and other.lo < self.hi


def _span(space: str, addr: int, rows: int, row_bytes: int, stride: int) -> Access:
    return Access(space, addr, addr + (rows - 1) * stride + row_bytes)


def footprint(instr: isa.Instruction, d_max: int = 0) -> tuple[list[Access], list[Access]]:
    """``(reads, writes)`` of one instruction, for every ``D`` in ``0..d_max``.

    Dynamic fields only ever move an access upwards with ``D``, so the union over the
    range is the span from the ``D = 0`` access to the ``D = d_max`` one.
    """
    if d_max and isa.is_dynamic(instr):
        lo_r, lo_w = footprint(isa.resolve(instr, 0))
        hi_r, hi_w = footprint(isa.resolve(instr, d_max))
        return (
            [Access(a.space, a.lo, b.hi) for a, b in zip(lo_r, hi_r, strict=True)],
            [Access(a.space, a.lo, b.hi) for a, b in zip(lo_w, hi_w, strict=True)],
        )
    if isinstance(instr, isa.LD):
        return (
            [_span(EXT, instr.src, instr.rows, instr.src_row_bytes, instr.src_stride)],
            [
                _span(
                    isa.Buf(instr.buf).name,
                    instr.dst,
                    instr.rows,
                    instr.row_bytes,
                    instr.dst_stride,
                )
            ],
        )
    if isinstance(instr, isa.ST):
        return (
            [
                _span(
                    isa.Buf(instr.buf).name,
                    instr.src,
                    instr.rows,
                    instr.row_bytes,
                    instr.src_stride,
                )
            ],
            [_span(EXT, instr.dst, instr.rows, instr.row_bytes, instr.dst_stride)],
        )
    if isinstance(instr, (isa.MM, isa.MV)):
        return _matmul_footprint(instr)
    if isinstance(instr, isa.MISC):
        return _misc_footprint(instr)
    return [], []


def _matmul_footprint(i: isa.MM | isa.MV) -> tuple[list[Access], list[Access]]:
    rows = i.rows
    a_stride = i.a_stride if isinstance(i, isa.MM) else 0
    odt = isa.DType(i.odt)
    reads = [_span("ACT", i.a_addr, rows, i.k, a_stride)]
    if i.wkn:
        reads.append(Access("WGT", i.w_addr, i.w_addr + i.k * i.n))
    else:
        wrb = formats.weight_row_bytes(i.k, i.wprec, i.sparse)
        reads.append(Access("WGT", i.w_addr, i.w_addr + i.n * wrb))
        mrb = formats.meta_row_bytes(i.k, i.sparse)
        if mrb:
            reads.append(Access("META", i.meta_addr, i.meta_addr + i.n * mrb))
    if i.colp:
        reads.append(
            Access("SCALE", i.q_addr, i.q_addr + i.n * formats.column_record_bytes(i.k, i.gsz))
        )
    if i.acc_in:
        reads.append(_span("ACT", i.p_addr, rows, i.n * 4, i.d_stride))
    writes = [_span("ACT", i.d_addr, rows, i.n * odt.nbytes, i.d_stride)]
    return reads, writes


def misc_param_bytes(i: isa.MISC) -> int:
    """Bytes of GLB parameters a MISC instruction reads (from ``p_addr``)."""
    op = isa.MiscOp(i.op)
    if op == isa.MiscOp.RMSNORM:
        return 2 * i.cols
    if op == isa.MiscOp.LAYERNORM:
        return 4 * i.cols
    if op.is_table:
        return 256 * isa.DType(i.d_dt).nbytes
    if op == isa.MiscOp.ROPE:
        return (i.pos + i.rows) * 2 * i.len
    return 0


def _misc_footprint(i: isa.MISC) -> tuple[list[Access], list[Access]]:
    op = isa.MiscOp(i.op)
    a_dt, b_dt, d_dt = isa.DType(i.a_dt), isa.DType(i.b_dt), isa.DType(i.d_dt)
    reads = [_span("ACT", i.a_addr, i.rows, i.cols * a_dt.nbytes, i.a_stride)]
    if op in (isa.MiscOp.ADD, isa.MiscOp.MUL):
        reads.append(_span("ACT", i.b_addr, i.rows, i.cols * b_dt.nbytes, i.b_stride))
    nparam = misc_param_bytes(i)
    if nparam:
        lo = i.p_addr + (i.pos * 2 * i.len if op == isa.MiscOp.ROPE else 0)
        reads.append(Access("GLB", lo, i.p_addr + nparam))
    writes = [_span("ACT", i.d_addr, i.rows, i.cols * d_dt.nbytes, i.d_stride)]
    return reads, writes
