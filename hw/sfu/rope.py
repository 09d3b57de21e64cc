"""ROPE at the lane rate, timed as ``Timing.misc`` counts it (one pass, ``elem_bytes`` =
input + result bytes).

Rotate-half works on pairs ``(x1, x2)`` = columns ``(c, c + len/2)`` of a ``len``-column
chunk, so the byte-credit schedule issues an even number of elements a cycle
(``lanes / 2`` pairs at most): every pair slot has its own ACT read ports for ``x1`` and
``x2`` and GLB ports for ``cos`` and ``sin`` (INT16, position ``pos + row``), computes
both rotated values on its two lanes' shared datapaths (:class:`.lane.SfuLane`) from
the cycle after and writes them when they come out,
:data:`~flightforge.sfu_row_ops.LANE_LATENCY` cycles later. Both halves of
a pair are read before either is written, so the operation may run in place.
"""

from __future__ import annotations

from amaranth import Module, Mux, Signal

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
    strobe,
)


class RopeStream(StreamComponent):
    """Ports (one a lane): ``rd`` and ``wr`` on ACT (4 bytes), ``tab`` on GLB (2 bytes);
    pair slot ``s`` uses lanes ``2s`` (``x1``, ``cos``) and ``2s + 1`` (``x2``, ``sin``)."""

    OPS = (isa.MiscOp.ROPE,)

    def __init__(self, arch: ArchConfig) -> None:
        if arch.sfu.lanes % 2:
            raise ValueError("ROPE needs an even number of SFU lanes")
        L = arch.sfu.lanes
        super().__init__(
            arch,
            [
                PortGroup("rd", isa.Buf.ACT, 4, L),
                PortGroup("wr", isa.Buf.ACT, 4, L),
                PortGroup("tab", isa.Buf.GLB, 2, L),
            ],
        )
        self.slots = L // 2

    def elaborate(self, platform) -> Module:
        m = Module()
        ins = self.instr
        L, P, S = self.lanes, self.P, self.slots
        eb = Signal(5)
        m.d.comb += eb.eq(elem_bytes(ins.a_dt, ins.d_dt))
        half = ins.len >> 1
        busy = Signal()
        row = Signal(isa.DIM_BITS)
        base = Signal(isa.DIM_BITS + 1)  # first column of the current chunk
        i = Signal(isa.DIM_BITS)  # pair index within the chunk
        sched = ByteCredit(m, port=P, lanes=L, elem_bytes=eb, cols=ins.cols)
        npairs = Signal(range(S + 1))
        m.d.comb += npairs.eq(sched.issue >> 1)
        row_end = sched.ends(npairs << 1)
        last_row = Signal()  # the current row is the last (registered with row)
        last = busy & row_end & last_row
        # the pairs of this cycle: chunk base and index per slot
        bases, idxs = [base], [i]
        for s in range(1, S + 1):
            wrap = idxs[-1] + 1 >= half
            nb_ = Signal.like(base, name=f"base{s}")
            ni = Signal.like(i, name=f"idx{s}")
            m.d.comb += [
                nb_.eq(Mux(wrap, bases[-1] + ins.len, bases[-1])),
                ni.eq(Mux(wrap, 0, idxs[-1] + 1)),
            ]
            bases.append(nb_)
            idxs.append(ni)
        with m.If(~busy & self.start):
            m.d.sync += [busy.eq(1), row.eq(0), base.eq(0), i.eq(0), *sched.restart()]
            m.d.sync += last_row.eq(ins.rows <= 1)
        with m.If(busy):
            m.d.sync += sched.advance(npairs << 1)
            with m.Switch(npairs):
                for n in range(S + 1):
                    with m.Case(n):
                        m.d.sync += [base.eq(bases[n]), i.eq(idxs[n])]
            with m.If(row_end):
                m.d.sync += [base.eq(0), i.eq(0), row.eq(row + 1), *sched.restart()]
                m.d.sync += last_row.eq(row + 2 >= ins.rows)
                with m.If(last_row):
                    m.d.sync += busy.eq(0)

        # the reads go out ISSUE_STAGES after the issue, with their staged addresses
        tab_row = ((ins.pos + row) * ins.len) << 1
        v1 = [None] * S
        c1 = [None] * S
        r1, last1 = arrived(m, row, "r"), arrived(m, last, "last")
        for s in range(S):
            on = busy & (s < npairs)
            col = bases[s] + idxs[s]
            x1p, x2p = self.port("rd", 2 * s), self.port("rd", 2 * s + 1)
            cp, sp = self.port("tab", 2 * s), self.port("tab", 2 * s + 1)
            x1 = addr_terms(ins.a_addr, ins.a_stride, row, col, ins.a_dt)
            x2 = addr_terms(ins.a_addr, ins.a_stride, row, col + half, ins.a_dt)
            req = issued(m, on, f"req{s}")
            m.d.comb += [
                x1p.addr.eq(staged_sum(m, x1, len(x1p.addr), f"x1_addr{s}")),
                x2p.addr.eq(staged_sum(m, x2, len(x2p.addr), f"x2_addr{s}")),
                cp.addr.eq(
                    staged_sum(m, [ins.p_addr, tab_row, idxs[s] << 1], len(cp.addr), f"cos{s}")
                ),
                sp.addr.eq(
                    staged_sum(
                        m, [ins.p_addr, tab_row, (half + idxs[s]) << 1], len(sp.addr), f"sin{s}"
                    )
                ),
                x1p.req.eq(req),
                x2p.req.eq(req),
                cp.req.eq(req),
                sp.req.eq(req),
            ]
            v1[s], c1[s] = arrived(m, on, f"v1_{s}"), arrived(m, col, f"c1_{s}")
        # stage 1: rotate, lane 2s: x1*cos - x2*sin, lane 2s + 1: x2*cos + x1*sin
        for s in range(S):
            x1 = sext(self.port("rd", 2 * s).rdata, ins.a_dt)
            x2 = sext(self.port("rd", 2 * s + 1).rdata, ins.a_dt)
            cos = self.port("tab", 2 * s).rdata.as_signed()
            sin = self.port("tab", 2 * s + 1).rdata.as_signed()
            for h, (p, q) in enumerate(((x1, x2), (x2, x1))):
                lane = self.lane(2 * s + h)
                m.d.comb += [
                    lane.a.eq(p),
                    lane.b.eq(cos),
                    lane.c.eq(q),
                    lane.d.eq(sin),
                    lane.acc.eq(1),
                    lane.sub.eq(h == 0),
                    lane.shift2.eq(ins.shift),
                    lane.dt.eq(ins.d_dt),
                ]
        # the lanes' results are out LANE_LATENCY cycles after their operands
        v2 = [delay(m, v1[s], LANE_LATENCY, f"v_{s}") for s in range(S)]
        last2 = delay(m, last1, LANE_LATENCY, "last")
        # write both halves (the addresses from ISSUE_STAGES before)
        c2 = [delay(m, c1[s], LANE_LATENCY - ISSUE_STAGES, f"c_{s}") for s in range(S)]
        r2 = delay(m, r1, LANE_LATENCY - ISSUE_STAGES, "r")
        for s in range(S):
            for h in range(2):
                p = self.port("wr", 2 * s + h)
                terms = addr_terms(
                    ins.d_addr, ins.d_stride, r2, c2[s] + (half if h else 0), ins.d_dt
                )
                m.d.comb += [
                    p.addr.eq(staged_sum(m, terms, len(p.addr), f"wr_addr{2 * s + h}")),
                    p.we.eq(1),
                    p.wdata.eq(self.lane(2 * s + h).result),
                    p.strb.eq(strobe(ins.d_dt)),
                    p.req.eq(v2[s]),
                ]
        self.finish(m, last2)
        return m
