"""SOFTMAX at the lane rate: three passes per row, one reciprocal per row, hidden behind
the next row's first pass.

``numerics.softmax`` needs the row maximum before any exponent and the row sum before
any output, so each row is read three times (MAX, SUM, OUT) and the exponent is
recomputed in OUT rather than stored (recomputing costs a ROM read, storing a row
buffer). Between SUM and OUT the row waits for ``2**38 // sum`` on the restoring
divider (:data:`flightforge.sfu_row_ops.SOFTMAX_ROW_GAP` cycles); the passes are ordered
MAX0 SUM0 MAX1 OUT0 SUM1 MAX2 OUT1 ... so that the next row's MAX runs meanwhile, and
OUT waits only for what is left (:func:`flightforge.sfu_row_ops.softmax_cycles`, which the
cycle model charges). Two maximum registers, one per row parity, keep a row's maximum
while the next row's is being found.
"""

from __future__ import annotations

from amaranth import Cat, Module, Mux, Signal, signed, unsigned
from amaranth.lib import memory

from flightforge import isa, numerics
from flightforge.arch import ArchConfig
from flightforge.sfu_row_ops import (
    EXP_BITS,
    EXP_MAX_SHIFT,
    RECIP_DIVIDEND_BITS,
    SOFTMAX_ROW_GAP,
    SUM_BITS,
)

from .common import (
    ByteCredit,
    PortGroup,
    StreamComponent,
    by_dtype,
    elem_addr,
    elem_bytes,
    sext,
    strobe,
)
from .divider import Divider
from .lane import ELEM_BITS

MAX, SUM, WAIT, OUT = range(4)


class SoftmaxStream(StreamComponent):
    """SOFTMAX on the byte-credit schedule (``elem_bytes`` = input + result bytes in every
    pass), bit-exact with :func:`flightforge.numerics.softmax`.

    Every lane has its own ACT read and write port (4 bytes) and exp2 ROM read port (a
    ROM per lane pair). An element issued in cycle ``t`` arrives in ``t + 1``: MAX folds
    it into its row's maximum; SUM and OUT compute ``d = max - x``, ``t = rnd(d * m0 >>
    shift)`` (the lane's first multiplier) and the ROM address, the ROM answers in ``t +
    2``, where SUM adds ``e`` to the row sum and OUT writes ``y`` (the lane's second
    multiplier and saturation: the probabilities are not negative, so saturating is
    ``min(y_max, .)``).
    The divider starts three cycles after SUM's last issue (when its last ``e`` is
    summed); OUT may issue from :data:`~flightforge.sfu_row_ops.SOFTMAX_ROW_GAP` + 1
    cycles after that last issue, so that its first ``y`` meets the quotient.
    """

    OPS = (isa.MiscOp.SOFTMAX,)

    def __init__(self, arch: ArchConfig) -> None:
        L = arch.sfu.lanes
        super().__init__(
            arch, [PortGroup("rd", isa.Buf.ACT, 4, L), PortGroup("wr", isa.Buf.ACT, 4, L)]
        )

    def elaborate(self, platform) -> Module:
        m = Module()
        ins = self.instr
        L, P = self.lanes, self.P
        eb = Signal(5)
        m.d.comb += eb.eq(elem_bytes(ins.a_dt, ins.d_dt))

        busy = Signal()
        phase = Signal(2)
        row = Signal(isa.DIM_BITS)  # the row of the current pass
        wait = Signal(range(SOFTMAX_ROW_GAP + 1))  # cycles until OUT may issue, plus one
        col = Signal(isa.DIM_BITS + 1)
        sched = ByteCredit(m, port=P, lanes=L, elem_bytes=eb, cols=ins.cols, col=col)
        E = sched.issue
        issuing = busy & (phase != WAIT)
        row_end = issuing & sched.pass_end
        more = row + 1 < ins.rows
        last = Signal()
        m.d.comb += last.eq(row_end & (phase == OUT) & ~more)
        ready = wait <= 1  # OUT may issue next cycle

        with m.If(wait != 0):
            m.d.sync += wait.eq(wait - 1)
        with m.If(~busy & self.start):
            m.d.sync += [busy.eq(1), phase.eq(MAX), row.eq(0), col.eq(0), *sched.restart()]
        with m.If(issuing):
            m.d.sync += [col.eq(col + E), *sched.advance()]
        with m.If(row_end):
            m.d.sync += [col.eq(0), *sched.restart()]
            with m.Switch(phase):
                with m.Case(MAX):  # row 0's MAX, or the look-ahead MAX of row + 1
                    with m.If(row == 0):
                        m.d.sync += phase.eq(SUM)
                    with m.Else():
                        m.d.sync += [row.eq(row - 1), phase.eq(Mux(ready, OUT, WAIT))]
                with m.Case(SUM):
                    m.d.sync += wait.eq(SOFTMAX_ROW_GAP)
                    with m.If(more):
                        m.d.sync += [phase.eq(MAX), row.eq(row + 1)]
                    with m.Else():
                        m.d.sync += phase.eq(WAIT)
                with m.Case(OUT):
                    with m.If(more):
                        m.d.sync += [phase.eq(SUM), row.eq(row + 1)]
                    with m.Else():
                        m.d.sync += busy.eq(0)
        with m.If(busy & (phase == WAIT) & ready):
            m.d.sync += phase.eq(OUT)

        limit = Mux(ins.len == 0, ins.cols, ins.len)
        for j in range(L):
            p = self.port("rd", j)
            m.d.comb += [
                p.addr.eq(elem_addr(ins.a_addr, ins.a_stride, row, col + j, ins.a_dt)),
                p.req.eq(issuing & (j < E)),
            ]
        # stage 1: arrival
        v1 = Signal(L)
        ph1, r1, c1, last1 = Signal(2), Signal.like(row), Signal.like(col), Signal()
        first1 = Signal()  # the pass's first issue (restarts the maximum or the sum)
        m.d.sync += [
            ph1.eq(phase),
            r1.eq(row),
            c1.eq(col),
            last1.eq(last),
            first1.eq(col == 0),
            v1.eq(Cat(*(issuing & (j < E) for j in range(L)))),
        ]
        xs, vc = [], []
        for j in range(L):
            xj = Signal(signed(ELEM_BITS), name=f"x{j}")
            cj = c1 + j
            vj = Signal(name=f"vc{j}")
            m.d.comb += [
                xj.eq(sext(self.port("rd", j).rdata, ins.a_dt)),
                vj.eq(v1[j] & (cj < limit) & (~ins.causal | (cj <= ins.pos + r1))),
            ]
            xs.append(xj)
            vc.append(vj)
        # MAX: fold the lanes into the row's maximum, one register per row parity
        mx_bank = [Signal(signed(ELEM_BITS), name=f"mx{b}") for b in range(2)]
        mx = Mux(r1[0], mx_bank[1], mx_bank[0])
        run = Mux(first1, -(1 << (ELEM_BITS - 1)), mx)
        for j in range(L):
            nxt = Signal(signed(ELEM_BITS), name=f"mx_fold{j}")
            m.d.comb += nxt.eq(Mux(vc[j] & (xs[j] > run), xs[j], run))
            run = nxt
        with m.If(v1.any() & (ph1 == MAX)):
            for b in range(2):
                with m.If(r1[0] == b):
                    m.d.sync += mx_bank[b].eq(run)
        # SUM / OUT: d, t, ROM address (combinational on arrival), ROM data next cycle
        # One exp2 ROM per lane pair, two read ports each (a dual-port block RAM), not one
        # ROM with a port per lane: Yosys 0.23's memory mapper runs out of 10 GB on
        # u280's 16-port ROM, and an FPGA build would replicate it this way anyway.
        roms = []
        for h in range(-(-L // 2)):
            roms.append(
                rom := memory.Memory(
                    shape=unsigned(EXP_BITS),
                    depth=len(numerics.EXP2_LUT),
                    init=[int(v) for v in numerics.EXP2_LUT],
                )
            )
            m.submodules[f"exp2_rom{h}"] = rom
        v2, vc2 = Signal(L), Signal(L)
        ph2, r2, c2, last2, first2 = (
            Signal(2),
            Signal.like(row),
            Signal.like(col),
            Signal(),
            Signal(),
        )
        m.d.sync += [
            v2.eq(v1),
            vc2.eq(Cat(*vc)),
            ph2.eq(ph1),
            r2.eq(r1),
            c2.eq(c1),
            last2.eq(last1),
            first2.eq(first1),
        ]
        es = []
        for j in range(L):
            rp = roms[j // 2].read_port()
            lane = self.lane(j)
            d = Signal(ELEM_BITS, name=f"d{j}")
            t = Signal(ELEM_BITS + isa.MULT_BITS, name=f"t{j}")
            sh = Signal(range(EXP_MAX_SHIFT + 1), name=f"sh{j}")
            m.d.comb += [
                d.eq(Mux(vc[j], mx - xs[j], 0)),
                lane.a.eq(d),
                lane.b.eq(ins.m0),
                lane.shift1.eq(ins.shift),
                t.eq(lane.round1),  # rnd(d * m0 >> shift)
                rp.addr.eq(t[:8]),
            ]
            m.d.sync += sh.eq(
                Mux(
                    t >> numerics.FRAC_BITS_EXP > EXP_MAX_SHIFT,
                    EXP_MAX_SHIFT,
                    t >> numerics.FRAC_BITS_EXP,
                )
            )
            e = Signal(EXP_BITS, name=f"e{j}")
            m.d.comb += e.eq(Mux(vc2[j], rp.data >> sh, 0))
            es.append(e)
        total = Signal(SUM_BITS)
        with m.If(v2.any() & (ph2 == SUM)):
            m.d.sync += total.eq(Mux(first2, 0, total) + sum(es))
        m.submodules.divider = div = Divider(RECIP_DIVIDEND_BITS, SUM_BITS)
        # the last e of the pass is summed two cycles after its issue: start then
        sum_end = Signal(3)
        m.d.sync += sum_end.eq(Cat(row_end & (phase == SUM), sum_end[:2]))
        m.d.comb += [
            div.start.eq(sum_end[2]),
            div.dividend.eq(1 << numerics.SOFTMAX_RECIP_BITS),
            div.divisor.eq(total),
        ]
        zero = Signal()  # the row's sum was 0 (every column masked): y = 0
        with m.If(sum_end[2]):
            m.d.sync += zero.eq(total == 0)
        recip = Mux(zero, 0, div.quotient)
        frac_shift = by_dtype(ins.d_dt, lambda dt: numerics.SOFTMAX_RECIP_BITS - (dt.bits - 1))
        for j in range(L):  # the element a stage behind, on the lane's second multiplier
            lane = self.lane(j)
            m.d.comb += [
                lane.c.eq(recip),
                lane.d.eq(es[j]),
                lane.shift2.eq(frac_shift),
                lane.dt.eq(ins.d_dt),
            ]  # y = min(y_max, rnd(e * recip >> frac_shift))
            p = self.port("wr", j)
            m.d.comb += [
                p.addr.eq(elem_addr(ins.d_addr, ins.d_stride, r2, c2 + j, ins.d_dt)),
                p.we.eq(1),
                p.wdata.eq(lane.result),
                p.strb.eq(strobe(ins.d_dt)),
                p.req.eq(v2[j] & (ph2 == OUT)),
            ]
        self.finish(m, last2)
        return m
