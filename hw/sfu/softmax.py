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
    ISSUE_STAGES,
    LANE_LATENCY,
    LANE_ROUND1,
    RECIP_DIVIDEND_BITS,
    SOFTMAX_ROW_GAP,
    SOFTMAX_SUM_STAGES,
    SUM_BITS,
    max_tree_stages,
)

from .common import (
    ByteCredit,
    PortGroup,
    StreamComponent,
    addr_terms,
    arrived,
    by_dtype,
    csa_sum,
    delay,
    elem_bytes,
    element,
    issued,
    pack_run,
    registered_csa,
    run_width,
    staged_sum,
)
from .divider import Divider
from .lane import ELEM_BITS

MAX, SUM, WAIT, OUT = range(4)


class SoftmaxStream(StreamComponent):
    """SOFTMAX on the byte-credit schedule (``elem_bytes`` = input + result bytes in every
    pass), bit-exact with :func:`flightforge.numerics.softmax`.

    A cycle's elements are consecutive columns: one ACT read port and one ACT write port
    (:func:`.common.run_width` bytes) carry them, lane ``j`` the ``j``-th; every lane has
    its own exp2 ROM read port (a ROM per lane pair). An element issued in cycle ``t``
    arrives in ``t + 1``: MAX folds it into its row's maximum; SUM and OUT compute
    ``d = max - x`` and give it to the lane's first multiplier, whose
    ``t = rnd(d * m0 >> shift)`` (``round1``) is out
    :data:`~flightforge.sfu_row_ops.LANE_ROUND1` cycles later and addresses the ROM; the
    ROM answers the cycle after (``at_e``), where SUM adds ``e`` to the row sum and OUT
    gives ``e`` with the row's reciprocal to the same lane's second multiplier (with the
    first operands of a later element; the probabilities are not negative, so saturating
    is ``min(y_max, .)``), whose ``y`` is written
    :data:`~flightforge.sfu_row_ops.LANE_LATENCY` cycles later
    (:func:`~flightforge.sfu_row_ops.softmax_compute` after the arrival, which also
    counts the :func:`~flightforge.sfu_row_ops.max_tree_stages` that SUM and OUT wait
    for the row's maximum: MAX takes each cycle's elements on a pipelined tree).
    The divider starts when SUM's last ``e`` is summed; OUT may issue from
    :data:`~flightforge.sfu_row_ops.SOFTMAX_ROW_GAP` + 1 cycles after SUM's last issue,
    so that its first ``e`` meets the quotient (both are ``at_e`` after their issue).
    """

    OPS = (isa.MiscOp.SOFTMAX,)

    def __init__(self, arch: ArchConfig) -> None:
        w = run_width(arch)
        super().__init__(
            arch,
            [PortGroup("rd", isa.Buf.ACT, w, 1), PortGroup("wr", isa.Buf.ACT, w, 1, write=True)],
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
        sched = ByteCredit(m, port=P, lanes=L, elem_bytes=eb, cols=ins.cols)
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
            m.d.sync += [col.eq(sched.count(col, E, "col")), *sched.advance(E)]
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

        # the reads go out ISSUE_STAGES after the issue, with their staged addresses; whether
        # a column counts (len, causal mask) is found on the way
        limit = Mux(ins.len == 0, ins.cols, ins.len)
        on = [issuing & (j < E) for j in range(L)]
        rd = self.port("rd")  # the cycle's elements: one run of consecutive columns
        terms = addr_terms(ins.a_addr, ins.a_stride, row, col, ins.a_dt)
        m.d.comb += [
            rd.addr.eq(staged_sum(m, terms, len(rd.addr), "rd_addr")),
            rd.req.eq(issued(m, issuing & (E != 0), "rd_req")),
        ]
        counts = [(col + j < limit) & (~ins.causal | (col + j <= ins.pos + row)) for j in range(L)]
        # arrival
        v1, vcs, ph1, r1, c1, last1, first1 = (
            arrived(m, sig, name)
            for sig, name in (
                (Cat(*on), "v"),
                (Cat(*(o & k for o, k in zip(on, counts, strict=True))), "vc"),
                (phase, "ph"),
                (row, "r"),
                (col, "c"),
                (last, "last"),
                (col == 0, "first"),  # the pass's first issue restarts the maximum or sum
            )
        )
        xs, vc = [], [vcs[j] for j in range(L)]
        for j in range(L):
            xj = Signal(signed(ELEM_BITS), name=f"x{j}")
            m.d.comb += xj.eq(element(rd.rdata, j, ins.a_dt))
            xs.append(xj)
        # MAX: the maximum of the cycle's valid elements on a tree of two-input maxima, a
        # level a stage, then folded into the row's maximum (one register per row parity)
        low = -(1 << (ELEM_BITS - 1))
        level = [Mux(vc[j], xs[j], low) for j in range(L)]
        stages = max_tree_stages(L)
        for s in range(stages):
            pairs = [level[i : i + 2] for i in range(0, len(level), 2)]
            level = [
                delay(m, Mux(p[1] > p[0], p[1], p[0]) if len(p) == 2 else p[0], 1, f"mx_t{s}_{i}")
                for i, p in enumerate(pairs)
            ]
        vt, pht, rt, firstt = (
            delay(m, sig, stages, f"{name}_max")
            for sig, name in ((v1, "v"), (ph1, "ph"), (r1, "r"), (first1, "first"))
        )
        mx_bank = [Signal(signed(ELEM_BITS), name=f"mx{b}") for b in range(2)]
        run = Mux(firstt, low, Mux(rt[0], mx_bank[1], mx_bank[0]))
        with m.If(vt.any() & (pht == MAX)):
            for b in range(2):
                with m.If(rt[0] == b):
                    m.d.sync += mx_bank[b].eq(Mux(level[0] > run, level[0], run))
        # SUM and OUT take their elements when the row's maximum is final, `stages` later
        xs = [delay(m, x, stages, f"x_sum{j}") for j, x in enumerate(xs)]
        v1, vcs, ph1, r1, c1, last1, first1 = (
            delay(m, sig, stages, f"{name}_sum")
            for sig, name in (
                (v1, "v"),
                (vcs, "vc"),
                (ph1, "ph"),
                (r1, "r"),
                (c1, "c"),
                (last1, "last"),
                (first1, "first"),
            )
        )
        vc = [vcs[j] for j in range(L)]
        mx = Mux(r1[0], mx_bank[1], mx_bank[0])
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
        # e of an element is out of the ROM at_e cycles after its arrival: the maximum's
        # stages, the lane's round1, the ROM
        at_e = stages + LANE_ROUND1 + 1
        v2, vc2, ph2, r2, c2, last2, first2 = (
            delay(m, sig, at_e - stages, name)
            for sig, name in (
                (v1, "v"),
                (Cat(*vc), "vc"),
                (ph1, "ph"),
                (r1, "r"),
                (c1, "c"),
                (last1, "last"),
                (first1, "first"),
            )
        )
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
        # the cycle's e reduced over the lanes to two carry-save terms and registered
        # (SOFTMAX_SUM_STAGES), then added to the row's sum with them: one carry chain a
        # stage (the lanes' e are below 2**EXP_BITS each)
        assert SOFTMAX_SUM_STAGES == 1
        lanes_sum = registered_csa(m, es, EXP_BITS + (L - 1).bit_length(), "esum")
        vs, phs, firsts = (
            delay(m, sig, SOFTMAX_SUM_STAGES, f"{name}_esum")
            for sig, name in ((v2, "v"), (ph2, "ph"), (first2, "first"))
        )
        total = Signal(SUM_BITS)
        with m.If(vs.any() & (phs == SUM)):
            m.d.sync += total.eq(csa_sum(m, [Mux(firsts, 0, total), *lanes_sum], SUM_BITS, "tot"))
        m.submodules.divider = div = Divider(RECIP_DIVIDEND_BITS, SUM_BITS)
        # the last e of the pass is in the row's sum SOFTMAX_SUM_STAGES + at_e + 1 cycles
        # after its arrival: start then
        sum_end = delay(
            m,
            row_end & (phase == SUM),
            ISSUE_STAGES + at_e + 2 + SOFTMAX_SUM_STAGES,
            "sum_end",
        )
        m.d.comb += [
            div.start.eq(sum_end),
            div.dividend.eq(1 << numerics.SOFTMAX_RECIP_BITS),
            div.divisor.eq(total),
        ]
        zero = Signal()  # the row's sum was 0 (every column masked): y = 0
        with m.If(sum_end):
            m.d.sync += zero.eq(total == 0)
        recip = Mux(zero, 0, div.quotient)
        frac_shift = by_dtype(ins.d_dt, lambda dt: numerics.SOFTMAX_RECIP_BITS - (dt.bits - 1))
        # y of an element is out of the lane LANE_LATENCY cycles after its e went in
        v3, ph3, last3 = (
            delay(m, sig, LANE_LATENCY, name)
            for sig, name in ((v2, "v_y"), (ph2, "ph_y"), (last2, "last_y"))
        )
        # the write addresses from ISSUE_STAGES before the write
        r3a, c3a = (
            delay(m, sig, LANE_LATENCY - ISSUE_STAGES, n) for sig, n in ((r2, "r_y"), (c2, "c_y"))
        )
        for j in range(L):  # the element at_e cycles behind, on the lane's second multiplier
            lane = self.lane(j)
            m.d.comb += [
                lane.c.eq(recip),
                lane.d.eq(es[j]),
                lane.shift2.eq(frac_shift),
                lane.dt.eq(ins.d_dt),
            ]  # y = min(y_max, rnd(e * recip >> frac_shift))
        # the lanes' results, one run of consecutive columns, through the one write port
        wr = self.port("wr")
        terms = addr_terms(ins.d_addr, ins.d_stride, r3a, c3a, ins.d_dt)
        results = [self.lane(j).result for j in range(L)]
        wdata, strb = pack_run(m, results, list(v3), ins.d_dt, len(wr.strb), "wr")
        m.d.comb += [
            wr.addr.eq(staged_sum(m, terms, len(wr.addr), "wr_addr")),
            wr.we.eq(1),
            wr.wdata.eq(wdata),
            wr.strb.eq(strb),
            wr.req.eq(v3.any() & (ph3 == OUT)),
        ]
        self.finish(m, last3)
        return m
