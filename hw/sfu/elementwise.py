"""ADD, MUL, REQUANT and the 256-entry tables (SILU, GELU, RELU) at the lane rate.

One pass per row on the :class:`.common.ByteCredit` schedule (``elem_bytes`` = the
operands' and the result's bytes, so operand reads and the result write share
``port[ACT]`` bytes a cycle on average): a row of ``cols`` elements takes
``max(ceil(cols / lanes), ceil(cols * elem_bytes / port[ACT]))`` cycles, rows back to
back, then ``sfu.pipeline_depth`` cycles. Elements issued in cycle ``t`` arrive in
``t + 1`` on the ``a`` (and ``b``) ports, where the ``lanes`` shared lane datapaths
(:class:`.lane.SfuLane`, pipelined) take ``sat(rnd(wide >> shift))`` or the GLB table reads are
issued (one port a lane, :data:`~flightforge.sfu_row_ops.LANE_LATENCY` - 1 cycles
later, so that the table's answer meets the lanes' results); the results are written in
``t + 1 + LANE_LATENCY`` through the ``d`` port with byte strobes.
"""

from __future__ import annotations

from amaranth import Cat, Const, Module, Mux, Signal, signed

from flightforge import isa
from flightforge.arch import ArchConfig
from flightforge.sfu_row_ops import ISSUE_STAGES, LANE_LATENCY

from .common import (
    ByteCredit,
    PortGroup,
    StreamComponent,
    addr_terms,
    arrived,
    delay,
    elem_bytes,
    issued,
    sext,
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
    """Ports: ``a0``, ``b0`` (operands) and ``d0`` (result), full ACT ports; ``t0`` ..
    one 4-byte GLB port a lane for the tables."""

    OPS = ELEMENTWISE_OPS

    def __init__(self, arch: ArchConfig) -> None:
        glb = arch.buffers.of(isa.Buf.GLB)
        if glb.banks * glb.width < 4:
            raise ValueError("the SFU table lookups need a GLB port of at least 4 bytes")
        # An operand or the result moves at most `lanes` elements of at most 4 bytes a
        # cycle (the byte-credit schedule issues no more), so its port needs no more.
        act = arch.buffers.of(isa.Buf.ACT)
        row = min(act.banks * act.width, arch.sfu.lanes * max(d.nbytes for d in isa.DType))
        super().__init__(
            arch,
            [
                PortGroup("a", isa.Buf.ACT, row, 1),
                PortGroup("b", isa.Buf.ACT, row, 1),
                PortGroup("d", isa.Buf.ACT, row, 1),
                PortGroup("t", isa.Buf.GLB, 4, arch.sfu.lanes),
            ],
        )

    def elaborate(self, platform) -> Module:
        m = Module()
        ins = self.instr
        L, P = self.lanes, self.P
        two = ins.op.matches(isa.MiscOp.ADD, isa.MiscOp.MUL)
        is_table = ins.op.matches(*[o for o in isa.MiscOp if o.is_table])
        eb = Signal(5)
        m.d.comb += eb.eq(elem_bytes(ins.a_dt, ins.d_dt) + Mux(two, Const(1, 4) << ins.b_dt, 0))

        busy = Signal()
        row = Signal(isa.DIM_BITS)
        col = Signal(isa.DIM_BITS + 1)  # elements issued in this row
        sched = ByteCredit(m, port=P, lanes=L, elem_bytes=eb, cols=ins.cols)
        E = sched.issue
        last_row = Signal()  # the current row is the last (registered with row)
        last = Signal()
        m.d.comb += last.eq(busy & sched.pass_end & last_row)

        with m.If(~busy & self.start):
            m.d.sync += [busy.eq(1), row.eq(0), col.eq(0), *sched.restart()]
            m.d.sync += last_row.eq(ins.rows <= 1)
        with m.If(busy):
            m.d.sync += [col.eq(sched.count(col, E, "col")), *sched.advance(E)]
            with m.If(sched.pass_end):
                m.d.sync += [col.eq(0), row.eq(row + 1), *sched.restart()]
                m.d.sync += last_row.eq(row + 2 >= ins.rows)
                with m.If(last_row):
                    m.d.sync += busy.eq(0)

        a_port, b_port, d_port = self.port("a"), self.port("b"), self.port("d")
        issue = busy & (E != 0)
        aw, bw = len(a_port.addr), len(b_port.addr)
        a_terms = addr_terms(ins.a_addr, ins.a_stride, row, col, ins.a_dt)
        b_terms = addr_terms(ins.b_addr, ins.b_stride, row, col, ins.b_dt)
        m.d.comb += [
            a_port.addr.eq(staged_sum(m, a_terms, aw, "a_addr")),
            a_port.req.eq(issued(m, issue, "a_req")),
            b_port.addr.eq(staged_sum(m, b_terms, bw, "b_addr")),
            b_port.req.eq(issued(m, issue & two, "b_req")),
        ]
        # operands arrive; compute or look up
        v1, e1, r1, c1, last1 = (
            arrived(m, sig, name)
            for sig, name in ((issue, "v"), (E, "e"), (row, "r"), (col, "c"), (last, "last"))
        )
        for j in range(L):
            araw = Cat(a_port.rdata, Const(0, 32)).bit_select(j << (ins.a_dt + 3), 32)
            braw = Cat(b_port.rdata, Const(0, 32)).bit_select(j << (ins.b_dt + 3), 32)
            a = Signal(signed(ELEM_BITS), name=f"a{j}")
            b = Signal(signed(ELEM_BITS), name=f"b{j}")
            m.d.comb += [a.eq(sext(araw, ins.a_dt)), b.eq(sext(braw, ins.b_dt))]
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
        # write, when the lanes' results are out (the address from ISSUE_STAGES before)
        v2, e2, last2 = (
            delay(m, sig, LANE_LATENCY, name)
            for sig, name in ((v1, "v"), (e1, "e"), (last1, "last"))
        )
        r2, c2 = (
            delay(m, sig, LANE_LATENCY - ISSUE_STAGES, n) for sig, n in ((r1, "r"), (c1, "c"))
        )
        d_terms = addr_terms(ins.d_addr, ins.d_stride, r2, c2, ins.d_dt)
        outs = [Mux(is_table, self.port("t", j).rdata, self.lane(j).result) for j in range(L)]
        packed = Signal(32 * L)
        with m.Switch(ins.d_dt):
            for d in isa.DType:
                with m.Case(d):
                    m.d.comb += packed.eq(Cat(*(o[: d.bits] for o in outs)))
        nbytes = e2 << ins.d_dt
        m.d.comb += [
            d_port.addr.eq(staged_sum(m, d_terms, len(d_port.addr), "d_addr")),
            d_port.we.eq(1),
            d_port.wdata.eq(packed[: len(d_port.wdata)]),
            d_port.strb.eq(((Const(1, P + 1) << nbytes) - 1)[: len(d_port.strb)]),
            d_port.req.eq(v2 & (e2 != 0)),
        ]
        self.finish(m, last2)
        return m
