"""Element-by-element SFU operations: ADD, MUL, REQUANT, table lookups and ROPE.

Both components use the element ports of :mod:`.common` (latency 1, served by the SFU
unit's memory adapter) and compute exactly :mod:`flightforge.numerics`' ``add``,
``mul``, ``requant``, ``table`` and ``rope``.
"""

from __future__ import annotations

from amaranth import Module, Signal, signed
from amaranth.lib import wiring
from amaranth.lib.wiring import Out

from flightforge import isa

from .common import ELEM_BITS, ElemReadSignature, op_signature, rnd_shift, saturate

#: Widest intermediate: an INT32 operand times a 16-bit multiplier, plus another one.
WIDE_BITS = ELEM_BITS + isa.MULT_BITS + 3


def _walk(m: Module, row: Signal, col: Signal, ins, step: int = 1):
    """Advance ``(row, col)`` by ``step`` columns; returns the 'last element' condition."""
    last_col = col + step >= ins.cols
    last = last_col & (row == ins.rows - 1)
    with m.If(last_col):
        m.d.sync += [col.eq(0), row.eq(row + 1)]
    with m.Else():
        m.d.sync += col.eq(col + step)
    return last


class Elementwise(wiring.Component):
    """ADD, MUL, REQUANT and the 256-entry tables (SILU, GELU, RELU): one element at a time."""

    read_latency = 1

    def __init__(self) -> None:
        super().__init__({**op_signature(params=True), "rdb": Out(ElemReadSignature())})

    def elaborate(self, platform) -> Module:
        m = Module()
        ins = self.instr
        row, col = Signal(isa.DIM_BITS), Signal(isa.DIM_BITS)
        is_table = ins.op.matches(*[op for op in isa.MiscOp if op.is_table])
        two = ins.op.matches(isa.MiscOp.ADD, isa.MiscOp.MUL)
        a, b = self.rd.data, self.rdb.data
        wide = Signal(signed(WIDE_BITS))
        with m.Switch(ins.op):
            with m.Case(isa.MiscOp.ADD):
                m.d.comb += wide.eq(a * ins.m0 + b * ins.m1)
            with m.Case(isa.MiscOp.MUL):
                m.d.comb += wide.eq(a[:16].as_signed() * b[:16].as_signed() * ins.m0)
            with m.Default():
                m.d.comb += wide.eq(a * ins.m0)
        for port in (self.rd, self.rdb):
            m.d.comb += [port.row.eq(row), port.col.eq(col)]
        m.d.comb += [self.wr.row.eq(row), self.wr.col.eq(col), self.prm.index.eq(a[:8])]
        with m.FSM() as fsm:
            with m.State("IDLE"):
                with m.If(self.start):
                    m.d.sync += [row.eq(0), col.eq(0)]
                    m.next = "READ"
            with m.State("READ"):
                m.d.comb += [self.rd.en.eq(1), self.rdb.en.eq(two)]
                m.next = "CALC"
            with m.State("CALC"):
                with m.If(is_table):
                    m.d.comb += self.prm.en.eq(1)
                    m.next = "LUT"
                with m.Else():
                    m.d.comb += [self.wr.en.eq(1),
                                 self.wr.data.eq(saturate(rnd_shift(wide, ins.shift), ins.d_dt))]
                    self._advance(m, row, col)
            with m.State("LUT"):
                m.d.comb += [self.wr.en.eq(1), self.wr.data.eq(self.prm.data)]
                self._advance(m, row, col)
        m.d.comb += self.busy.eq(~fsm.ongoing("IDLE"))
        return m

    def _advance(self, m: Module, row: Signal, col: Signal) -> None:
        with m.If(_walk(m, row, col, self.instr)):
            m.d.comb += self.done.eq(1)
            m.next = "IDLE"
        with m.Else():
            m.next = "READ"


class Rope(wiring.Component):
    """ROPE: rotate-half of every ``len``-column chunk with the Q14 table in GLB.

    GLB holds INT16 ``[pos + rows][2][len / 2]`` (cos then sin per position); row ``r``
    uses position ``pos + r``. Both halves are read before either is written, so the
    operation may run in place.
    """

    read_latency = 1

    def __init__(self) -> None:
        super().__init__(op_signature(params=True))

    def elaborate(self, platform) -> Module:
        m = Module()
        ins = self.instr
        half = ins.len >> 1
        row, col = Signal(isa.DIM_BITS), Signal(isa.DIM_BITS)  # col: first-half column
        i = Signal(isa.DIM_BITS)  # index within the half
        x1, cos = Signal(signed(ELEM_BITS)), Signal(signed(16))
        y2 = Signal(signed(ELEM_BITS))
        tab_row = (ins.pos + row) * ins.len
        x2, sin = self.rd.data, self.prm.data[:16].as_signed()
        m.d.comb += self.rd.row.eq(row)
        with m.FSM() as fsm:
            with m.State("IDLE"):
                with m.If(self.start):
                    m.d.sync += [row.eq(0), col.eq(0), i.eq(0)]
                    m.next = "X1"
            with m.State("X1"):
                m.d.comb += [self.rd.en.eq(1), self.rd.col.eq(col),
                             self.prm.en.eq(1), self.prm.index.eq(tab_row + i)]
                m.next = "X2"
            with m.State("X2"):
                m.d.sync += [x1.eq(self.rd.data), cos.eq(self.prm.data[:16].as_signed())]
                m.d.comb += [self.rd.en.eq(1), self.rd.col.eq(col + half),
                             self.prm.en.eq(1), self.prm.index.eq(tab_row + half + i)]
                m.next = "Y1"
            with m.State("Y1"):
                y1 = rnd_shift(x1 * cos - x2 * sin, ins.shift)
                m.d.sync += y2.eq(saturate(rnd_shift(x2 * cos + x1 * sin, ins.shift), ins.d_dt))
                m.d.comb += [self.wr.en.eq(1), self.wr.row.eq(row), self.wr.col.eq(col),
                             self.wr.data.eq(saturate(y1, ins.d_dt))]
                m.next = "Y2"
            with m.State("Y2"):
                m.d.comb += [self.wr.en.eq(1), self.wr.row.eq(row), self.wr.col.eq(col + half),
                             self.wr.data.eq(y2)]
                end_half = i == half - 1
                last_chunk = col + half + 1 >= ins.cols
                m.d.sync += [i.eq(i + 1), col.eq(col + 1)]
                with m.If(end_half):
                    m.d.sync += [i.eq(0), col.eq(col + half + 1)]
                    with m.If(last_chunk):
                        m.d.sync += [col.eq(0), row.eq(row + 1)]
                        with m.If(row == ins.rows - 1):
                            m.d.comb += self.done.eq(1)
                            m.next = "IDLE"
                        with m.Else():
                            m.next = "X1"
                    with m.Else():
                        m.next = "X1"
                with m.Else():
                    m.next = "X1"
        m.d.comb += self.busy.eq(~fsm.ongoing("IDLE"))
        return m
