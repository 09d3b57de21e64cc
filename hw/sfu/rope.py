"""ROPE at the lane rate in two-cycle beats, one read port per buffer, timed as
``Timing.misc`` counts it (:func:`flightforge.sfu_row_ops.rope_pass_cycles`).

Rotate-half works on pairs ``(x1, x2)`` = columns ``(c, c + len/2)`` of a ``len``-column
chunk (a head). A beat takes the next ``n`` pairs of a chunk (``n`` at most
:func:`flightforge.sfu_row_ops.rope_pairs`, fewer at the chunk's end): in its first cycle
it reads the ``x1`` run (ACT) and the ``cos`` run (GLB, INT16, position ``pos + row``), in
its second the ``x2`` and ``sin`` runs, ``len/2`` columns on; each is one run of
consecutive elements through the pipeline's one ACT and one GLB read port. When the
``x2`` run arrives, lane ``j`` computes ``y1 = x1*cos - x2*sin`` of pair ``j`` on its
shared datapath (:class:`.lane.SfuLane`), the cycle after ``y2 = x2*cos + x1*sin``; each
half is written as one run through the one ACT write port when it comes out, so every
run is written :data:`~flightforge.sfu_row_ops.BEAT_COMPUTE` cycles after its data
arrive, at its read's columns. Both halves of a pair are read before either is written,
so the operation may run in place.
"""

from __future__ import annotations

from amaranth import Cat, Const, Module, Mux, Signal

from flightforge import isa
from flightforge import sfu_row_ops as row_ops
from flightforge.arch import ArchConfig
from flightforge.sfu_row_ops import BEAT_COMPUTE, ISSUE_STAGES

from .common import (
    PortGroup,
    StreamComponent,
    addr_terms,
    arrived,
    delay,
    element,
    issued,
    pack_run,
    run_width,
    staged_sum,
)


def _glb_line(arch: ArchConfig) -> int:
    glb = arch.buffers.of(isa.Buf.GLB)
    return glb.banks * glb.width


class RopeStream(StreamComponent):
    """Ports: ``rd`` and ``wr`` on ACT (:func:`.common.run_width` bytes), ``tab`` on GLB
    (``cos`` or ``sin`` of a beat's pairs: ``min(line, 2 * lanes)`` bytes)."""

    OPS = (isa.MiscOp.ROPE,)

    def __init__(self, arch: ArchConfig) -> None:
        L = arch.sfu.lanes
        super().__init__(
            arch,
            [
                PortGroup("rd", isa.Buf.ACT, run_width(arch), 1),
                PortGroup("wr", isa.Buf.ACT, run_width(arch), 1, write=True),
                PortGroup("tab", isa.Buf.GLB, min(_glb_line(arch), 2 * L), 1),
            ],
        )

    def _beat_pairs(self, m: Module) -> Signal:
        """The most pairs of a beat for the instruction's element types (a table of
        :func:`flightforge.sfu_row_ops.rope_pairs`)."""
        ins = self.instr
        g = Signal(range(self.lanes + 1))
        with m.Switch(ins.a_dt):
            for a in isa.DType:
                with m.Case(a):
                    with m.Switch(ins.d_dt):
                        for d in isa.DType:
                            with m.Case(d):
                                m.d.comb += g.eq(
                                    row_ops.rope_pairs(
                                        self.lanes, self.P, _glb_line(self.arch), a.nbytes, d.nbytes
                                    )
                                )
        return g

    def elaborate(self, platform) -> Module:
        m = Module()
        ins = self.instr
        L = self.lanes
        half = Signal(isa.DIM_BITS)
        m.d.comb += half.eq(ins.len >> 1)
        busy = Signal()
        second = Signal()  # the beat's second cycle (the x2 / sin runs)
        row = Signal(isa.DIM_BITS)
        base = Signal(isa.DIM_BITS + 1)  # first column of the current chunk
        i = Signal(isa.DIM_BITS)  # first pair of the beat within the chunk
        # decided in the beat's first cycle, used in its second
        n = Signal(range(L + 1))  # pairs of the beat
        chunk_end, row_end, last_row = Signal(), Signal(), Signal()
        g = self._beat_pairs(m)
        left = Signal(isa.DIM_BITS)
        m.d.comb += left.eq(half - i)
        with m.If(~busy & self.start):
            m.d.sync += [busy.eq(1), second.eq(0), row.eq(0), base.eq(0), i.eq(0)]
            m.d.sync += last_row.eq(ins.rows <= 1)
        with m.If(busy & ~second):
            m.d.sync += [
                second.eq(1),
                n.eq(Mux(left > g, g, left)),
                chunk_end.eq(left <= g),
                row_end.eq(base + ins.len >= ins.cols),
            ]
        with m.If(busy & second):
            m.d.sync += [second.eq(0), i.eq(i + n)]
            with m.If(chunk_end):
                m.d.sync += [i.eq(0), base.eq(base + ins.len)]
                with m.If(row_end):
                    m.d.sync += [base.eq(0), row.eq(row + 1), last_row.eq(row + 2 >= ins.rows)]
                    with m.If(last_row):
                        m.d.sync += busy.eq(0)
        last = busy & second & chunk_end & row_end & last_row

        # A cycle's runs: x1 and cos in the first, x2 and sin (len/2 on) in the second;
        # the requests go out ISSUE_STAGES after, with their staged addresses.
        pair = Signal(isa.DIM_BITS + 1)  # the run's first pair index in its chunk's table row
        m.d.comb += pair.eq(i + Mux(second, half, 0))
        col = Signal(isa.DIM_BITS + 1)
        m.d.comb += col.eq(base + pair)
        on = busy & second  # both runs of the beat carry n pairs
        count = Signal.like(n)  # pairs of this cycle's runs
        m.d.comb += count.eq(Mux(on, n, Mux(left > g, g, left)))
        rd, wr, tab = self.port("rd"), self.port("wr"), self.port("tab")
        tab_row = ((ins.pos + row) * ins.len) << 1
        req = issued(m, busy, "req")
        m.d.comb += [
            rd.addr.eq(
                staged_sum(
                    m, addr_terms(ins.a_addr, ins.a_stride, row, col, ins.a_dt), len(rd.addr), "rd"
                )
            ),
            tab.addr.eq(staged_sum(m, [ins.p_addr, tab_row, pair << 1], len(tab.addr), "tab")),
            rd.req.eq(req),
            tab.req.eq(req),
        ]
        # the x2 / sin runs arrive a cycle after the x1 / cos runs: lane j takes pair j's
        # y1 operands then (phase A), its y2 operands the cycle after (phase B)
        phase_a = arrived(m, busy & second, "phase_a")
        phase_b = delay(m, phase_a, 1, "phase_b")
        r1, r2 = delay(m, rd.rdata, 1, "x_d1"), delay(m, rd.rdata, 2, "x_d2")
        t1, t2 = delay(m, tab.rdata, 1, "t_d1"), delay(m, tab.rdata, 2, "t_d2")
        zeros = Const(0, 16 * L)  # lanes beyond the GLB run: never valid
        cos_run, sin_run = Cat(Mux(phase_b, t2, t1), zeros), Cat(Mux(phase_b, t1, tab.rdata), zeros)
        for j in range(L):
            lane = self.lane(j)
            m.d.comb += [
                lane.a.eq(element(r1, j, ins.a_dt)),  # x1 (A) or x2 (B)
                lane.b.eq(cos_run.word_select(j, 16).as_signed()),
                lane.c.eq(Mux(phase_b, element(r2, j, ins.a_dt), element(rd.rdata, j, ins.a_dt))),
                lane.d.eq(sin_run.word_select(j, 16).as_signed()),
                lane.acc.eq(1),
                lane.sub.eq(~phase_b),
                lane.shift2.eq(ins.shift),
                lane.dt.eq(ins.d_dt),
            ]
        # each run is written BEAT_COMPUTE after its data arrive, at its read's columns
        out = ISSUE_STAGES + 1 + BEAT_COMPUTE  # from the run's issue to its write
        v2, c2 = delay(m, busy, out, "v_out"), delay(m, count, out, "n_out")
        row_w, col_w = (delay(m, s, out - ISSUE_STAGES, f"{s.name}_w") for s in (row, col))
        results = [self.lane(j).result for j in range(L)]
        valid = [c2 > j for j in range(L)]
        wdata, strb = pack_run(m, results, valid, ins.d_dt, len(wr.strb), "wr")
        terms = addr_terms(ins.d_addr, ins.d_stride, row_w, col_w, ins.d_dt)
        m.d.comb += [
            wr.addr.eq(staged_sum(m, terms, len(wr.addr), "wr")),
            wr.we.eq(1),
            wr.wdata.eq(wdata),
            wr.strb.eq(strb),
            wr.req.eq(v2 & (c2 != 0)),
        ]
        self.finish(m, delay(m, last, out, "last"))
        return m
