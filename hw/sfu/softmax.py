"""SOFTMAX: three passes over each row, one element per cycle, one reciprocal per row.

``numerics.softmax`` needs the row maximum before any exponent and the row sum before
any output, so the component reads the row three times from the ACT buffer (max,
exponent sum, output) and recomputes the exponent in the last pass rather than storing
it: recomputing costs a ROM read, storing would cost a row buffer of 2**16 entries.
"""

from __future__ import annotations

from amaranth import Module, Mux, Signal, signed, unsigned
from amaranth.lib import data, memory, wiring

from flightforge import isa, numerics

from .common import (ELEM_BITS, by_dtype, check_latency, delay, op_signature, rnd_shift)
from .divider import Divider

#: Width of one exp2 value (the ROM entries); 2**0 needs 16 bits.
EXP_BITS = int(numerics.EXP2_LUT.max()).bit_length()
#: Width of the row sum of exponents: at most 2**16 columns of at most 2**15.
SUM_BITS = isa.DIM_BITS + EXP_BITS
#: The dividend ``2**38`` of the reciprocal.
RECIP_DIVIDEND_BITS = numerics.SOFTMAX_RECIP_BITS + 1
#: Exponent shift is clamped here (``min(t >> 8, 16)``) by numerics.
EXP_MAX_SHIFT = 16

#: What travels with each element down the pipeline: which pass issued it and where.
Tag = data.StructLayout({"valid": 1, "exp": 1, "out": 1, "last": 1, "vcol": 1,
                         "col": isa.DIM_BITS})


class Softmax(wiring.Component):
    """Row softmax, bit-exact with :func:`flightforge.numerics.softmax`.

    Passes per row: MAX (``max`` over valid columns), SUM (``e`` and its sum), RECIP
    (``2**38 // sum`` on the restoring divider), OUT (``y`` written for every column,
    0 on masked ones). Pipeline after a read returns: d, t, ROM, e/y, write.

    Cycles per row (:meth:`row_cycles`): ``3 * cols + 3 * read_latency + 48`` with the
    39-bit reciprocal divider (40 cycles), 3 drain cycles before it, one to latch its
    quotient and 4 write-pipeline cycles; the instruction takes ``1 + rows * row_cycles``
    from ``start`` to ``done`` (:meth:`cycles`). ``done`` coincides with the last write.
    """

    #: stages after the read data of the SUM pass before the divider starts, plus the
    #: divider, plus the OUT pass write stages (see row_cycles).
    PIPE_SUM = 3
    PIPE_OUT = 4

    def __init__(self, *, read_latency: int = 1) -> None:
        self.read_latency = check_latency(read_latency)
        super().__init__(op_signature(params=False))

    def row_cycles(self, cols: int) -> int:
        """Cycles one row takes: three passes of ``cols`` reads, drains and the divider."""
        lat = self.read_latency
        recip = Divider.latency_of(RECIP_DIVIDEND_BITS)
        return (cols + lat) + (cols + lat + self.PIPE_SUM + recip + 1) + (cols + lat + self.PIPE_OUT)

    def cycles(self, rows: int, cols: int) -> int:
        """Cycles from ``start`` to ``done`` (both counted) of a ``rows x cols`` tile."""
        return 1 + rows * self.row_cycles(cols)

    def elaborate(self, platform) -> Module:
        m = Module()
        m.submodules.divider = div = Divider(RECIP_DIVIDEND_BITS, SUM_BITS)
        rom = memory.Memory(shape=unsigned(EXP_BITS), depth=len(numerics.EXP2_LUT),
                            init=[int(v) for v in numerics.EXP2_LUT])
        m.submodules.exp2_rom = rom
        rom_rd = rom.read_port()
        ins = self.instr

        row = Signal(isa.DIM_BITS)
        col = Signal(isa.DIM_BITS)
        issuing = Signal()
        mx = Signal(signed(ELEM_BITS))
        total = Signal(SUM_BITS)
        recip = Signal(len(div.quotient))
        exp_pass = Signal()  # the pass issuing now computes exponents (SUM, OUT)
        out_pass = Signal()  # ... and writes them (OUT)

        # Issue: one read per cycle while a pass walks the row.
        limit = Mux(ins.len == 0, ins.cols, ins.len)
        issue = Signal(Tag)
        m.d.comb += [
            issue.valid.eq(issuing), issue.col.eq(col),
            issue.exp.eq(exp_pass), issue.out.eq(out_pass),
            issue.last.eq(col == ins.cols - 1),
            issue.vcol.eq((col < limit) & (~ins.causal | (col <= ins.pos + row))),
            self.rd.en.eq(issuing), self.rd.row.eq(row), self.rd.col.eq(col),
        ]
        with m.If(issuing):
            m.d.sync += col.eq(col + 1)
            with m.If(issue.last):
                m.d.sync += issuing.eq(0)
        arrive = Tag(delay(m, issue, self.read_latency, "arrive"))
        x = self.rd.data

        # Exponent pipeline shared by SUM and OUT: d -> t -> ROM -> e -> (y, write).
        tag_b, tag_c, tag_d, tag_e = (Signal(Tag, name=f"tag_{s}") for s in "bcde")
        d_b = Signal(ELEM_BITS)
        t_c = Signal(len(d_b) + isa.MULT_BITS)
        sh_d = Signal(range(EXP_MAX_SHIFT + 1))
        e_d = Signal(EXP_BITS)
        y_e = Signal(signed(ELEM_BITS))
        frac_shift = by_dtype(ins.d_dt, lambda d: numerics.SOFTMAX_RECIP_BITS - (d.bits - 1))
        y_max = by_dtype(ins.d_dt, lambda d: (1 << (d.bits - 1)) - 1)
        y_full = Signal(len(recip) + EXP_BITS)
        m.d.comb += [
            rom_rd.addr.eq(t_c[:8]),
            e_d.eq(Mux(tag_d.vcol, rom_rd.data >> sh_d, 0)),
            y_full.eq(rnd_shift(e_d * recip, frac_shift)),
        ]
        m.d.sync += [
            tag_b.eq(arrive), tag_c.eq(tag_b), tag_d.eq(tag_c), tag_e.eq(tag_d),
            d_b.eq(Mux(arrive.vcol, mx - x, 0)),
            t_c.eq(rnd_shift(d_b * ins.m0, ins.shift)),
            sh_d.eq(Mux(t_c >> numerics.FRAC_BITS_EXP > EXP_MAX_SHIFT, EXP_MAX_SHIFT,
                        t_c >> numerics.FRAC_BITS_EXP)),
            y_e.eq(Mux(y_full > y_max, y_max, y_full)),
        ]
        m.d.comb += [
            self.wr.en.eq(tag_e.valid & tag_e.out), self.wr.row.eq(row),
            self.wr.col.eq(tag_e.col), self.wr.data.eq(y_e),
        ]

        def begin_pass() -> list:
            return [col.eq(0), issuing.eq(1)]

        with m.FSM():
            with m.State("IDLE"):
                with m.If(self.start):
                    m.d.sync += [row.eq(0), mx.eq(-(1 << (ELEM_BITS - 1))), exp_pass.eq(0),
                                 *begin_pass()]
                    m.next = "MAX"
            with m.State("MAX"):
                m.d.comb += self.busy.eq(1)
                with m.If(arrive.valid & arrive.vcol & (x > mx)):
                    m.d.sync += mx.eq(x)
                with m.If(arrive.valid & arrive.last):
                    m.d.sync += [total.eq(0), exp_pass.eq(1), *begin_pass()]
                    m.next = "SUM"
            with m.State("SUM"):
                m.d.comb += self.busy.eq(1)
                with m.If(tag_d.valid & tag_d.exp):
                    m.d.sync += total.eq(total + e_d)
                    with m.If(tag_d.last):
                        m.next = "RECIP"
            with m.State("RECIP"):
                m.d.comb += [self.busy.eq(1), div.start.eq(1),
                             div.dividend.eq(1 << numerics.SOFTMAX_RECIP_BITS),
                             div.divisor.eq(total)]
                m.next = "RECIP_WAIT"
            with m.State("RECIP_WAIT"):
                m.d.comb += self.busy.eq(1)
                with m.If(div.done):
                    m.d.sync += [recip.eq(Mux(total == 0, 0, div.quotient)), out_pass.eq(1),
                                 *begin_pass()]
                    m.next = "OUT"
            with m.State("OUT"):
                m.d.comb += self.busy.eq(1)
                with m.If(tag_e.valid & tag_e.out & tag_e.last):
                    m.d.sync += [out_pass.eq(0), exp_pass.eq(0), row.eq(row + 1),
                                 mx.eq(-(1 << (ELEM_BITS - 1)))]
                    with m.If(row == self.instr.rows - 1):
                        m.d.comb += self.done.eq(1)
                        m.next = "IDLE"
                    with m.Else():
                        m.d.sync += begin_pass()
                        m.next = "MAX"
        return m
