"""ADD, MUL, REQUANT and the 256-entry tables (SILU, GELU, RELU) at the lane rate, through
one ACT read port and one ACT write port.

REQUANT and the tables: one pass per row on the :class:`.common.ByteCredit` schedule
(``elem_bytes`` = the operand's and the result's bytes): a row of ``cols`` elements takes
``max(ceil(cols / lanes), ceil(cols * elem_bytes / port[ACT]))`` cycles, rows back to
back. Elements issued in cycle ``t`` arrive in ``t + 1 + ISSUE_STAGES`` as one run on the
read port, where the ``lanes`` shared lane datapaths (:class:`.lane.SfuLane`, pipelined)
take ``sat(rnd(wide >> shift))`` or the GLB table reads are issued (one port a lane,
:data:`~flightforge.sfu_row_ops.LANE_LATENCY` - 1 cycles later, so that the table's
answer meets the lanes' results); the results are written
:data:`~flightforge.sfu_row_ops.LANE_LATENCY` after the arrival as one run through the
write port with byte strobes.

ADD and MUL read two operands through the same port: in two-cycle beats of up to
:func:`flightforge.sfu_row_ops.operand_beat_elements` elements, the ``a`` run in the
first cycle and the ``b`` run of the same columns in the second. When the ``b`` run
arrives lane ``j`` takes element ``j`` (phase A), the cycle after element ``lanes + j``
(phase B); each phase's results are one run, written
:data:`~flightforge.sfu_row_ops.BEAT_COMPUTE` after its read's data arrive. A row takes
:func:`flightforge.sfu_row_ops.beat_pass_cycles`.
"""

from __future__ import annotations

import itertools

from amaranth import Cat, Module, Mux, Signal, signed

from flightforge import isa
from flightforge.arch import ArchConfig
from flightforge.sfu_row_ops import (
    BEAT_COMPUTE,
    ISSUE_STAGES,
    LANE_LATENCY,
    operand_beat_elements,
)

from .common import (
    ByteCredit,
    PortGroup,
    StreamComponent,
    addr_terms,
    arrived,
    delay,
    elem_bytes,
    element,
    issued,
    pack_run,
    run_width,
    staged_sum,
)
from .lane import ELEM_BITS

#: The operations this pipeline runs.
ELEMENTWISE_OPS = (
    isa.MiscOp.ADD,
    isa.MiscOp.MUL,
    isa.MiscOp.REQUANT,
    *(op for op in isa.MiscOp if op.is_table),
)


class ElementStream(StreamComponent):
    """Ports: ``rd`` (operands) and ``d`` (results) on ACT, :func:`.common.run_width`
    bytes each; ``t0`` .. one 4-byte GLB port a lane for the tables."""

    OPS = ELEMENTWISE_OPS

    def __init__(self, arch: ArchConfig) -> None:
        glb = arch.buffers.of(isa.Buf.GLB)
        if glb.banks * glb.width < 4:
            raise ValueError("the SFU table lookups need a GLB port of at least 4 bytes")
        # An operand run or a result run holds at most `lanes` elements of at most 4 bytes
        # (the byte-credit schedule issues no more a cycle, a beat no more a run).
        row = run_width(arch)
        super().__init__(
            arch,
            [
                PortGroup("rd", isa.Buf.ACT, row, 1),
                PortGroup("d", isa.Buf.ACT, row, 1, write=True),
                PortGroup("t", isa.Buf.GLB, 4, arch.sfu.lanes),
            ],
        )

    def _beat_elements(self, m: Module) -> Signal:
        """The most elements of an ADD/MUL beat for the instruction's element types (a
        table of :func:`flightforge.sfu_row_ops.operand_beat_elements`)."""
        ins = self.instr
        g = Signal(range(2 * self.lanes + 1))
        with m.Switch(Cat(ins.a_dt, ins.b_dt, ins.d_dt)):
            for a, b, d in itertools.product(isa.DType, repeat=3):
                with m.Case(a | b << 2 | d << 4):
                    m.d.comb += g.eq(
                        operand_beat_elements(self.lanes, self.P, a.nbytes, b.nbytes, d.nbytes)
                    )
        return g

    def _credit(self, m: Module, busy: Signal) -> dict:
        """REQUANT and the tables: one run of ``a`` a cycle on the byte-credit schedule.
        The cycle's run (``row``, ``col``, elements ``e``, ``issue``) and ``last``."""
        ins = self.instr
        row = Signal(isa.DIM_BITS, name="c_row")
        col = Signal(isa.DIM_BITS + 1, name="c_col")  # elements issued in this row
        eb = Signal(5)
        m.d.comb += eb.eq(elem_bytes(ins.a_dt, ins.d_dt))
        sched = ByteCredit(m, port=self.P, lanes=self.lanes, elem_bytes=eb, cols=ins.cols)
        E = sched.issue
        last_row = Signal(name="c_last_row")  # the current row is the last
        with m.If(~busy & self.start):
            m.d.sync += [row.eq(0), col.eq(0), *sched.restart()]
            m.d.sync += last_row.eq(ins.rows <= 1)
        with m.If(busy):
            m.d.sync += [col.eq(sched.count(col, E, "col")), *sched.advance(E)]
            with m.If(sched.pass_end):
                m.d.sync += [col.eq(0), row.eq(row + 1), *sched.restart()]
                m.d.sync += last_row.eq(row + 2 >= ins.rows)
        return {
            "row": row,
            "col": col,
            "e": E,
            "issue": busy & (E != 0),
            "last": busy & sched.pass_end & last_row,
            "end": sched.pass_end & last_row,
        }

    def _beats(self, m: Module, busy: Signal) -> dict:
        """ADD and MUL: two-cycle beats, the ``a`` run in the first cycle, the ``b`` run
        of the same columns in the second, through the one read port."""
        ins = self.instr
        L = self.lanes
        row = Signal(isa.DIM_BITS, name="b_row")
        col = Signal(isa.DIM_BITS + 1, name="b_col")  # the beat's first column
        second = Signal()
        n = Signal(range(2 * L + 1))  # elements of the beat (decided in its first cycle)
        row_end, last_row = Signal(name="b_row_end"), Signal(name="b_last_row")
        g = self._beat_elements(m)
        left = Signal(isa.DIM_BITS + 1)
        m.d.comb += left.eq(ins.cols - col)
        with m.If(~busy & self.start):
            m.d.sync += [row.eq(0), col.eq(0), second.eq(0), last_row.eq(ins.rows <= 1)]
        with m.If(busy & ~second):
            m.d.sync += [second.eq(1), n.eq(Mux(left > g, g, left)), row_end.eq(left <= g)]
        with m.If(busy & second):
            m.d.sync += [second.eq(0), col.eq(col + n)]
            with m.If(row_end):
                m.d.sync += [col.eq(0), row.eq(row + 1), last_row.eq(row + 2 >= ins.rows)]
        first_n = Mux(left > g, g, left)  # the first cycle's n, before it is registered
        phase_a = Mux(first_n > L, L, first_n)  # results of the lanes' first phase
        phase_b = Mux(n > L, n - L, 0)
        return {
            "row": row,
            "col": col,
            "second": second,
            "issue": busy,
            # the results: the first phase's run at col, the second's at col + lanes
            "w_col": col + Mux(second, L, 0),
            "w_e": Mux(second, phase_b, phase_a),
            "last": busy & second & row_end & last_row,
            "end": second & row_end & last_row,
        }

    def elaborate(self, platform) -> Module:
        m = Module()
        ins = self.instr
        L = self.lanes
        two = Signal()
        m.d.comb += two.eq(ins.op.matches(isa.MiscOp.ADD, isa.MiscOp.MUL))
        is_table = ins.op.matches(*[o for o in isa.MiscOp if o.is_table])

        busy = Signal()
        cr, bt = self._credit(m, busy), self._beats(m, busy)
        with m.If(~busy & self.start):
            m.d.sync += busy.eq(1)
        with m.If(busy & Mux(two, bt["end"], cr["end"])):
            m.d.sync += busy.eq(0)

        # the cycle's run: a (credit, or a beat's first cycle) or b (a beat's second)
        rd, d_port = self.port("rd"), self.port("d")
        sel_b = two & bt["second"]
        run_row = Mux(two, bt["row"], cr["row"])
        run_col = Mux(two, bt["col"], cr["col"])
        terms = addr_terms(
            Mux(sel_b, ins.b_addr, ins.a_addr),
            Mux(sel_b, ins.b_stride, ins.a_stride),
            run_row,
            run_col,
            Mux(sel_b, ins.b_dt, ins.a_dt),
        )
        m.d.comb += [
            rd.addr.eq(staged_sum(m, terms, len(rd.addr), "rd_addr")),
            rd.req.eq(issued(m, Mux(two, bt["issue"], cr["issue"]), "rd_req")),
        ]
        # a run arrives ISSUE_STAGES + 1 after its issue. REQUANT and the tables: the
        # lanes take it on arrival. ADD/MUL: when the b run arrives (phase A) lane j
        # takes element j of a and b, the cycle after (phase B) element lanes + j.
        v1, e1, last1 = (
            arrived(m, sig, name)
            for sig, name in ((cr["issue"], "v"), (cr["e"], "e"), (cr["last"], "last"))
        )
        phase_b = delay(m, arrived(m, bt["second"], "phase_a"), 1, "phase_b")
        r1, r2 = delay(m, rd.rdata, 1, "rd_d1"), delay(m, rd.rdata, 2, "rd_d2")
        for j in range(L):
            a = Signal(signed(ELEM_BITS), name=f"a{j}")
            b = Signal(signed(ELEM_BITS), name=f"b{j}")
            a_two = Mux(phase_b, element(r2, L + j, ins.a_dt), element(r1, j, ins.a_dt))
            b_two = Mux(phase_b, element(r1, L + j, ins.b_dt), element(rd.rdata, j, ins.b_dt))
            m.d.comb += [
                a.eq(Mux(two, a_two, element(rd.rdata, j, ins.a_dt))),
                b.eq(b_two),
            ]
            lane = self.lane(j)
            m.d.comb += [lane.shift2.eq(ins.shift), lane.dt.eq(ins.d_dt), lane.acc.eq(1)]
            with m.Switch(ins.op):
                with m.Case(isa.MiscOp.ADD):  # a*m0 + b*m1
                    m.d.comb += [lane.a.eq(a), lane.b.eq(ins.m0), lane.c.eq(b), lane.d.eq(ins.m1)]
                with m.Case(isa.MiscOp.MUL):  # (a*b) * m0
                    m.d.comb += [
                        lane.a.eq(a[:16].as_signed()),
                        lane.b.eq(b[:16].as_signed()),
                        lane.chain.eq(1),
                        lane.d.eq(ins.m0),
                        lane.acc.eq(0),
                    ]
                with m.Default():  # a*m0
                    m.d.comb += [lane.a.eq(a), lane.b.eq(ins.m0)]
            # the table is read a cycle before the lane's result is out
            tp = self.port("t", j)
            look = delay(m, Cat(a[:8], v1 & is_table & (j < e1)), LANE_LATENCY - 1, f"look{j}")
            m.d.comb += [tp.addr.eq(ins.p_addr + (look[:8] << ins.d_dt)), tp.req.eq(look[8])]
        # write, when the lanes' results are out (the address from ISSUE_STAGES before):
        # REQUANT and the tables LANE_LATENCY after the arrival, ADD/MUL BEAT_COMPUTE
        one_out = ISSUE_STAGES + 1 + LANE_LATENCY
        two_out = ISSUE_STAGES + 1 + BEAT_COMPUTE
        w = {
            key: Mux(two, delay(m, bt[key], two_out, f"{key}_2"), delay(m, cr[key], one_out, key))
            for key in ("issue", "last")
        }
        w["e"] = Mux(two, delay(m, bt["w_e"], two_out, "e_2"), delay(m, cr["e"], one_out, "e"))
        w_row, w_col = (
            Mux(
                two,
                delay(m, bt_sig, two_out - ISSUE_STAGES, f"{n}_2w"),
                delay(m, cr_sig, one_out - ISSUE_STAGES, f"{n}_w"),
            )
            for n, bt_sig, cr_sig in (("r", bt["row"], cr["row"]), ("c", bt["w_col"], cr["col"]))
        )
        d_terms = addr_terms(ins.d_addr, ins.d_stride, w_row, w_col, ins.d_dt)
        outs = [Mux(is_table, self.port("t", j).rdata, self.lane(j).result) for j in range(L)]
        valid = [w["e"] > j for j in range(L)]
        wdata, strb = pack_run(m, outs, valid, ins.d_dt, len(d_port.strb), "d")
        m.d.comb += [
            d_port.addr.eq(staged_sum(m, d_terms, len(d_port.addr), "d_addr")),
            d_port.we.eq(1),
            d_port.wdata.eq(wdata),
            d_port.strb.eq(strb),
            d_port.req.eq(w["issue"] & (w["e"] != 0)),
        ]
        self.finish(m, w["last"])
        return m
