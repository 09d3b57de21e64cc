"""RMSNORM and LAYERNORM at the lane rate: a statistics pass and an output pass per row,
with the row's sequential divisions and square root hidden behind the passes of its
neighbours.

The two norms share everything but the mean, so one pipeline runs both (``instr.op``
chooses). LAYERNORM needs ``sum (x - mean)**2`` with the floor mean, which would take a
second pass over the row; the exact identity ``sum (x - m)**2 = S2 - m * (2*S1 - n*m)``
(``S1 = sum x``, ``S2 = sum x**2``, any integer ``m``) gives it from the statistics of
the single pass, with two multiplications once per row.

Between a row's statistics and its output the row's sequence runs
(:func:`flightforge.sfu_row_ops.norm_steps`: mean, mean square, square root, inverse root, on
one divider and one square-root unit). The passes are ordered STATS0 STATS1 OUT0 STATS2
OUT1 ...: row ``r + 1``'s statistics are gathered while row ``r``'s sequence runs, and
row ``r + 1``'s sequence starts as row ``r``'s output pass does, so rows follow every
``max(2p, gap)`` cycles (:func:`flightforge.sfu_row_ops.norm_cycles`, which the cycle model
charges). The statistics, the mean and the inverse root are kept per row parity.
"""

from __future__ import annotations

from amaranth import Cat, Module, Mux, Signal, signed, unsigned

from flightforge import isa, numerics
from flightforge.arch import ArchConfig
from flightforge.sfu_row_ops import (
    DIV_DIVIDEND_BITS,
    DIV_DIVISOR_BITS,
    ISSUE_STAGES,
    LANE_LATENCY,
    LANE_PROD,
    MS_BITS,
    NORM_STATS_DELAY,
    RADICAND_BITS,
    S1_BITS,
    S2_BITS,
    X_BITS,
    divider_latency,
    norm_row_gap,
    norm_steps,
)

from .common import (
    ByteCredit,
    PortGroup,
    StreamComponent,
    addr_terms,
    arrived,
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
from .divider import Divider, ISqrt
from .lane import carry_select_add

STATS, WAIT, OUT = range(3)


class NormStream(StreamComponent):
    """RMSNORM / LAYERNORM on the byte-credit schedule (``elem_bytes`` = input + result
    bytes), bit-exact with :func:`flightforge.numerics.rmsnorm` / ``layernorm``.

    A cycle's elements are consecutive columns, read and written as one run through one
    ACT read port and one ACT write port (:func:`.common.run_width` bytes); every lane has
    GLB ports for ``gamma`` and ``beta`` (INT16 at ``p_addr``, ``beta`` after ``cols``
    gains). Statistics: the lanes'
    ``x`` and ``x**2`` are summed when ``x**2`` is out of the lane
    (:data:`~flightforge.sfu_row_ops.NORM_STATS_DELAY` after the arrival in ``t + 1``).
    Output: on arrival the lanes take the operands of ``y`` =
    ``sat(rnd(rnd((x - mean) * inv, 16) * gamma, shift) + beta)``, written
    :data:`~flightforge.sfu_row_ops.LANE_LATENCY` cycles later. Both use the lanes' shared
    datapaths (:class:`.lane.SfuLane`): ``x**2`` on the first multiplier, ``y`` on both,
    chained.
    """

    OPS = (isa.MiscOp.RMSNORM, isa.MiscOp.LAYERNORM)

    def __init__(self, arch: ArchConfig) -> None:
        L = arch.sfu.lanes
        super().__init__(
            arch,
            [
                PortGroup("rd", isa.Buf.ACT, run_width(arch), 1),
                PortGroup("wr", isa.Buf.ACT, run_width(arch), 1, write=True),
                PortGroup("g", isa.Buf.GLB, 2, L),
                PortGroup("b", isa.Buf.GLB, 2, L),
            ],
        )

    def elaborate(self, platform) -> Module:
        m = Module()
        ins = self.instr
        L, P = self.lanes, self.P
        layer = ins.op == isa.MiscOp.LAYERNORM
        eb = Signal(5)
        m.d.comb += eb.eq(elem_bytes(ins.a_dt, ins.d_dt))
        steps_r, steps_l = norm_steps(False), norm_steps(True)
        gap = Mux(layer, norm_row_gap(True), norm_row_gap(False))

        busy = Signal()
        phase = Signal(2)
        row = Signal(isa.DIM_BITS)  # the row of the current pass
        seq_row = Signal(isa.DIM_BITS)  # the row whose sequence runs
        k = Signal(range(norm_row_gap(True) + 1))  # cycles into the sequence (0: none yet)
        col = Signal(isa.DIM_BITS + 1)
        sched = ByteCredit(m, port=P, lanes=L, elem_bytes=eb, cols=ins.cols)
        E = sched.issue
        issuing = busy & (phase != WAIT)
        row_end = issuing & sched.pass_end
        last = Signal()
        m.d.comb += last.eq(row_end & (phase == OUT) & (row + 1 >= ins.rows))
        seq_done = k >= gap

        # The pass after this one, and whether it is an output pass (which waits for its
        # row's sequence, and starts the next row's).
        nxt_row, nxt_out = Signal.like(row), Signal()
        with m.If(phase == STATS):
            with m.If((row == 0) & (ins.rows > 1)):
                m.d.comb += [nxt_row.eq(1), nxt_out.eq(0)]
            with m.Else():  # the look-ahead statistics of row + 1: OUT of the row before
                m.d.comb += [nxt_row.eq(Mux(row == 0, 0, row - 1)), nxt_out.eq(1)]
        with m.Else():
            with m.If(row + 2 < ins.rows):
                m.d.comb += [nxt_row.eq(row + 2), nxt_out.eq(0)]
            with m.Else():
                m.d.comb += [nxt_row.eq(row + 1), nxt_out.eq(1)]
        go_out = Signal()  # this cycle decides that OUT issues next cycle

        with m.If((k != 0) & (k < gap)):
            m.d.sync += k.eq(k + 1)
        with m.If(~busy & self.start):
            m.d.sync += [
                busy.eq(1),
                phase.eq(STATS),
                row.eq(0),
                col.eq(0),
                k.eq(0),
                *sched.restart(),
            ]
        with m.If(issuing):
            m.d.sync += [col.eq(sched.count(col, E, "col")), *sched.advance(E)]
        with m.If(row_end):
            m.d.sync += [col.eq(0), *sched.restart()]
            with m.If((phase == STATS) & (row == 0)):  # row 0's sequence starts
                m.d.sync += [k.eq(1), seq_row.eq(0)]
            with m.If(last):
                m.d.sync += busy.eq(0)
            with m.Elif(nxt_out):
                m.d.sync += [row.eq(nxt_row), phase.eq(WAIT)]
                m.d.comb += go_out.eq(seq_done)
            with m.Else():
                m.d.sync += [row.eq(nxt_row), phase.eq(STATS)]
        with m.If(busy & (phase == WAIT)):
            m.d.comb += go_out.eq(seq_done)
        with m.If(go_out):
            m.d.sync += phase.eq(OUT)
            with m.If(seq_row + 1 < ins.rows):  # the next row's sequence starts with OUT
                m.d.sync += [k.eq(1), seq_row.eq(seq_row + 1)]

        # the reads go out ISSUE_STAGES after the issue, with their staged addresses
        on = [issuing & (j < E) for j in range(L)]
        out = phase == OUT
        rd = self.port("rd")  # the cycle's elements: one run of consecutive columns
        terms = addr_terms(ins.a_addr, ins.a_stride, row, col, ins.a_dt)
        m.d.comb += [
            rd.addr.eq(staged_sum(m, terms, len(rd.addr), "rd_addr")),
            rd.req.eq(issued(m, issuing & (E != 0), "rd_req")),
        ]
        for j in range(L):
            g, b = (self.port(n, j) for n in ("g", "b"))
            m.d.comb += [
                g.addr.eq(staged_sum(m, [ins.p_addr, (col + j) << 1], len(g.addr), f"g_addr{j}")),
                b.addr.eq(
                    staged_sum(
                        m, [ins.p_addr, ins.cols << 1, (col + j) << 1], len(b.addr), f"b_addr{j}"
                    )
                ),
                g.req.eq(issued(m, on[j] & out, f"g_req{j}")),
                b.req.eq(issued(m, on[j] & out & layer, f"b_req{j}")),
            ]
        # arrival
        v1, ph1, r1, c1, last1, first1 = (
            arrived(m, sig, name)
            for sig, name in (
                (Cat(*on), "v"),
                (phase, "ph"),
                (row, "r"),
                (col, "c"),
                (last, "last"),
                (col == 0, "first"),
            )
        )
        xs = [Signal(signed(X_BITS), name=f"x{j}") for j in range(L)]
        for j in range(L):
            m.d.comb += xs[j].eq(element(rd.rdata, j, ins.a_dt))
        # statistics, per row parity; the first arrival of a pass restarts them
        s1 = [Signal(signed(S1_BITS), name=f"s1_{b}") for b in range(2)]
        s2 = [Signal(unsigned(S2_BITS), name=f"s2_{b}") for b in range(2)]
        # x * x comes out of the lanes' first multipliers LANE_PROD cycles after x, and the
        # lanes' sums are registered before they are accumulated (NORM_STATS_DELAY): the
        # sum of the x waits for them (x * x below 2**30: the low 2*X_BITS bits)
        # (the lanes' x reduced to two carry-save terms and registered, their carry chain
        # the next cycle: the sum waits for x * x anyway)
        xsum = registered_csa(m, [Mux(v1[j], xs[j], 0) for j in range(L)], S1_BITS, "xsum")
        add1 = delay(m, (xsum[0] + xsum[1])[:S1_BITS], NORM_STATS_DELAY - 1, "add1")
        vs, phs, rs, firsts = (
            delay(m, sig, NORM_STATS_DELAY, f"{name}_stats")
            for sig, name in ((v1, "v"), (ph1, "ph"), (r1, "r"), (first1, "first"))
        )
        vp = delay(m, v1, LANE_PROD, "v_prod")
        sq = [Mux(vp[j], self.lane(j).prod[: 2 * X_BITS], 0) for j in range(L)]
        add2 = delay(m, csa_sum(m, sq, S2_BITS, "sqsum"), NORM_STATS_DELAY - LANE_PROD, "add2")
        with m.If(vs.any() & (phs == STATS)):
            for b in range(2):
                new1 = carry_select_add(m, Mux(firsts, 0, s1[b]), add1, S1_BITS, f"s1_next{b}")
                new2 = carry_select_add(m, Mux(firsts, 0, s2[b]), add2, S2_BITS, f"s2_next{b}")
                with m.If(rs[0] == b):
                    m.d.sync += [s1[b].eq(new1.as_signed()), s2[b].eq(new2)]

        # the sequence of row seq_row, at fixed k
        m.submodules.divider = div = Divider(DIV_DIVIDEND_BITS, DIV_DIVISOR_BITS)
        m.submodules.isqrt = sqrt = ISqrt(RADICAND_BITS)
        par = seq_row[0]
        S1 = Mux(par, s1[1], s1[0])
        S2 = Mux(par, s2[1], s2[0])
        mean = [Signal(signed(X_BITS + 1), name=f"mean{b}") for b in range(2)]
        inv = [Signal(numerics.NORM_RSQRT_BITS + 1, name=f"inv{b}") for b in range(2)]
        centre = Signal(signed(S1_BITS + X_BITS + 3))
        centred = Signal(signed(S2_BITS + 2))  # mean * centre, registered before S2 takes it
        minus = Signal(S2_BITS)
        m.d.comb += minus.eq(~centred)
        centred_s2 = carry_select_add(m, S2, minus, S2_BITS, "centred_s2", cin=1)
        ms = Signal(MS_BITS)
        m.d.comb += ms.eq(div.quotient + ins.eps)

        def at(step: str):
            return Mux(layer, k == steps_l[step], k == steps_r[step])

        with m.If(layer & (k == steps_l["mean"])):
            m.d.comb += [div.start.eq(1), div.dividend.eq(abs(S1)), div.divisor.eq(ins.cols)]
        dl = divider_latency(DIV_DIVIDEND_BITS)
        for b in range(2):
            with m.If(par == b):
                with m.If(layer & (k == steps_l["mean"] + dl)):
                    m.d.sync += mean[b].eq(
                        Mux(S1 >= 0, div.quotient, -div.quotient - (div.remainder != 0))
                    )
                with m.If(layer & (k == steps_l["mean"] + dl + 1)):
                    m.d.sync += centre.eq(2 * S1 - ins.cols * mean[b])
                with m.If(layer & (k == steps_l["mean"] + dl + 2)):
                    m.d.sync += centred.eq(mean[b] * centre)
                with m.If(layer & (k == steps_l["mean"] + dl + 3)):
                    m.d.sync += s2[b].eq(centred_s2)
                with m.If(at("latch")):
                    m.d.sync += inv[b].eq(div.quotient)
        with m.If(at("mean_square")):
            m.d.comb += [div.start.eq(1), div.dividend.eq(S2), div.divisor.eq(ins.cols)]
        with m.If(at("sqrt")):
            m.d.comb += [sqrt.start.eq(1), sqrt.value.eq(ms << 16)]
        with m.If(at("inverse")):
            m.d.comb += [
                div.start.eq(1),
                div.dividend.eq(1 << numerics.NORM_RSQRT_BITS),
                div.divisor.eq(Mux(sqrt.root == 0, 1, sqrt.root)),
            ]

        # output: given to the lanes on arrival with the row's mean and inverse root,
        # written when the lanes' results are out
        v2, last2, ph2 = (
            delay(m, sig, LANE_LATENCY, f"{name}_out")
            for sig, name in ((v1, "v"), (last1, "last"), (ph1, "ph"))
        )
        # the write addresses from ISSUE_STAGES before the write
        r2, c2 = (
            delay(m, sig, LANE_LATENCY - ISSUE_STAGES, f"{n}_out")
            for sig, n in ((r1, "r"), (c1, "c"))
        )
        stats = ph1 == STATS  # the lanes' first multiplier squares x for the statistics
        row_mean = Mux(layer & ~stats, Mux(r1[0], mean[1], mean[0]), 0)
        row_inv = Mux(r1[0], inv[1], inv[0])
        for j in range(L):
            xc = Signal(signed(X_BITS + 2), name=f"xc{j}")
            lane = self.lane(j)
            m.d.comb += [
                xc.eq(xs[j] - row_mean),
                # rnd(rnd(xc * inv, 16) * gamma, shift) + beta, saturated
                lane.a.eq(Mux(stats, xs[j], row_inv)),
                lane.b.eq(xc),
                lane.shift1.eq(numerics.NORM_T_SHIFT),
                lane.chain.eq(1),
                lane.d.eq(self.port("g", j).rdata.as_signed()),
                lane.shift2.eq(ins.shift),
                lane.bias.eq(Mux(layer, self.port("b", j).rdata.as_signed(), 0)),
                lane.dt.eq(ins.d_dt),
            ]
        # the lanes' results, one run of consecutive columns, through the one write port
        wr = self.port("wr")
        terms = addr_terms(ins.d_addr, ins.d_stride, r2, c2, ins.d_dt)
        results = [self.lane(j).result for j in range(L)]
        wdata, strb = pack_run(m, results, list(v2), ins.d_dt, len(wr.strb), "wr")
        m.d.comb += [
            wr.addr.eq(staged_sum(m, terms, len(wr.addr), "wr_addr")),
            wr.we.eq(1),
            wr.wdata.eq(wdata),
            wr.strb.eq(strb),
            wr.req.eq(v2.any() & (ph2 == OUT)),
        ]
        self.finish(m, last2)
        return m
