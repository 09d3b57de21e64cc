"""Lane-parallel element-wise SFU pipeline: ADD, MUL, REQUANT and the table operations.

Timed exactly as ``Timing.misc`` counts a one-pass operation: a row of ``cols``
elements takes ``max(ceil(cols / lanes), ceil(cols * elem_bytes / port[ACT]))``
cycles, rows back to back, then ``sfu.pipeline_depth`` (4 on tiny) cycles of pipeline.
In cycle ``t`` of a row the unit issues the elements up to ``min(cols, lanes * (t+1),
floor(port * (t+1) / elem_bytes))`` (a byte-credit port: the operand reads and the
result write share ``port[ACT]`` bytes per cycle on average), reading the ``a`` (and
``b``) elements through their own ACT ports. One cycle later the operands arrive and
the ``lanes`` arithmetic units compute ``sat(rnd(wide >> shift))`` (or issue the GLB
table reads, one port per lane); one cycle after that the results are written through
the result port with byte strobes.
"""

from __future__ import annotations

from amaranth import Cat, Const, Module, Mux, Signal, signed
from amaranth.lib import wiring
from amaranth.lib.wiring import In, Out

from flightforge import isa
from flightforge.arch import ArchConfig

from ..buffers import addr_bits
from ..bus import BufPortSignature
from .common import ELEM_BITS, MiscFields, rnd_shift, saturate
from .elementwise import WIDE_BITS

#: The operations this pipeline runs.
STREAM_OPS = (isa.MiscOp.ADD, isa.MiscOp.MUL, isa.MiscOp.REQUANT, isa.MiscOp.SILU,
              isa.MiscOp.GELU, isa.MiscOp.RELU)
#: The MISC operations the RTL times exactly (these and ROPE, :class:`RopeStream`).
EXACT_OPS = STREAM_OPS + (isa.MiscOp.ROPE,)


def _sext(raw, dt):
    out = raw[:32].as_signed()
    for d in reversed(list(isa.DType)[:-1]):
        out = Mux(dt == d, raw[:d.bits].as_signed(), out)
    return out


class ElementStream(wiring.Component):
    def __init__(self, arch: ArchConfig) -> None:
        self.arch = arch
        self.lanes = arch.sfu.lanes
        act, glb = arch.buffers.of(isa.Buf.ACT), arch.buffers.of(isa.Buf.GLB)
        self.P = act.banks * act.width
        self.PG = glb.banks * glb.width
        if self.PG < 4:
            raise ValueError("the SFU table lookups need a GLB port of at least 4 bytes")
        if arch.sfu.pipeline_depth < 4:
            raise ValueError("the SFU stream pipeline needs sfu.pipeline_depth >= 4")
        aw, gw = addr_bits(act.size), addr_bits(glb.size)
        super().__init__({
            "instr": In(MiscFields), "start": In(1), "done": Out(1),
            "port_a": Out(BufPortSignature(aw, self.P)), "port_b": Out(BufPortSignature(aw, self.P)),
            "port_d": Out(BufPortSignature(aw, self.P)),
            **{f"port_t{j}": Out(BufPortSignature(gw, 4)) for j in range(self.lanes)},
        })

    def elaborate(self, platform) -> Module:
        m = Module()
        ins = self.instr
        L, P = self.lanes, self.P
        two = ins.op.matches(isa.MiscOp.ADD, isa.MiscOp.MUL)
        is_table = ins.op.matches(*[o for o in isa.MiscOp if o.is_table])
        nb = lambda dt: Const(1, 4) << dt  # noqa: E731
        eb = Signal(5)
        m.d.comb += eb.eq(nb(ins.a_dt) + nb(ins.d_dt) + Mux(two, nb(ins.b_dt), 0))

        busy = Signal()
        row = Signal(isa.DIM_BITS)
        col = Signal(isa.DIM_BITS + 1)  # elements issued in this row
        q = Signal(isa.DIM_BITS + 8)  # floor(P * t / eb) within the row
        r = Signal(5)  # P * t - q * eb
        # this cycle: floor(P * (t+1) / eb) = q + q_inc
        x = r + P
        q_inc = sum(((x >= i * eb) for i in range(1, P // 2 + 2)), Const(0, 8))
        r_next = Signal(8)
        m.d.comb += r_next.eq(x - q_inc * eb)
        avail = Signal(isa.DIM_BITS + 9)
        m.d.comb += avail.eq(q + q_inc - col)
        left = ins.cols - col
        E = Signal(range(L + 1))
        lim = Mux(left < L, left, L)
        m.d.comb += E.eq(Mux(avail < lim, avail, lim))
        row_end = col + E >= ins.cols
        last = Signal()
        m.d.comb += last.eq(busy & row_end & (row + 1 >= ins.rows))

        with m.If(~busy & self.start):
            m.d.sync += [busy.eq(1), row.eq(0), col.eq(0), q.eq(0), r.eq(0)]
        with m.If(busy):
            m.d.sync += [col.eq(col + E), q.eq(q + q_inc), r.eq(r_next)]
            with m.If(row_end):
                m.d.sync += [col.eq(0), q.eq(0), r.eq(0), row.eq(row + 1)]
                with m.If(row + 1 >= ins.rows):
                    m.d.sync += busy.eq(0)

        def elem(base, stride, rw, c, dt):
            return base + rw * stride + (c << dt)
        issue = busy & (E != 0)
        m.d.comb += [self.port_a.addr.eq(elem(ins.a_addr, ins.a_stride, row, col, ins.a_dt)),
                     self.port_a.req.eq(issue),
                     self.port_b.addr.eq(elem(ins.b_addr, ins.b_stride, row, col, ins.b_dt)),
                     self.port_b.req.eq(issue & two)]
        # stage 1: operands arrive; compute or look up
        v1, e1, r1, c1, last1 = Signal(), Signal.like(E), Signal.like(row), Signal.like(col), Signal()
        m.d.sync += [v1.eq(issue), e1.eq(E), r1.eq(row), c1.eq(col), last1.eq(last)]
        res = [Signal(32, name=f"res{j}") for j in range(L)]
        for j in range(L):
            araw = Cat(self.port_a.rdata, Const(0, 32)).bit_select(j << (ins.a_dt + 3), 32)
            braw = Cat(self.port_b.rdata, Const(0, 32)).bit_select(j << (ins.b_dt + 3), 32)
            a = Signal(signed(ELEM_BITS), name=f"a{j}")
            b = Signal(signed(ELEM_BITS), name=f"b{j}")
            m.d.comb += [a.eq(_sext(araw, ins.a_dt)), b.eq(_sext(braw, ins.b_dt))]
            wide = Signal(signed(WIDE_BITS), name=f"wide{j}")
            with m.Switch(ins.op):
                with m.Case(isa.MiscOp.ADD):
                    m.d.comb += wide.eq(a * ins.m0 + b * ins.m1)
                with m.Case(isa.MiscOp.MUL):
                    m.d.comb += wide.eq(a[:16].as_signed() * b[:16].as_signed() * ins.m0)
                with m.Default():
                    m.d.comb += wide.eq(a * ins.m0)
            m.d.sync += res[j].eq(saturate(rnd_shift(wide, ins.shift), ins.d_dt))
            tp = getattr(self, f"port_t{j}")
            m.d.comb += [tp.addr.eq(ins.p_addr + (a[:8] << ins.d_dt)),
                         tp.req.eq(v1 & is_table & (j < e1))]
        # stage 2: write
        v2, e2, r2, c2, last2 = Signal(), Signal.like(E), Signal.like(row), Signal.like(col), Signal()
        m.d.sync += [v2.eq(v1), e2.eq(e1), r2.eq(r1), c2.eq(c1), last2.eq(last1)]
        outs = [Mux(is_table, getattr(self, f"port_t{j}").rdata, res[j]) for j in range(L)]
        packed = Signal(32 * L)
        with m.Switch(ins.d_dt):
            for d in isa.DType:
                with m.Case(d):
                    m.d.comb += packed.eq(Cat(*(o[:d.bits] for o in outs)))
        nbytes = e2 << ins.d_dt
        m.d.comb += [self.port_d.addr.eq(elem(ins.d_addr, ins.d_stride, r2, c2, ins.d_dt)),
                     self.port_d.we.eq(1), self.port_d.wdata.eq(packed[:8 * P]),
                     self.port_d.strb.eq(((Const(1, P + 1) << nbytes) - 1)[:P]),
                     self.port_d.req.eq(v2 & (e2 != 0))]
        out = last2  # the unit starts this pipeline one cycle after its own start
        for t in range(self.arch.sfu.pipeline_depth - 4):
            reg = Signal(name=f"done_d{t}")
            m.d.sync += reg.eq(out)
            out = reg
        m.d.comb += self.done.eq(out)
        return m


class RopeStream(wiring.Component):
    """ROPE at the lane rate, timed as ``Timing.misc`` counts it (one pass, ``elem_bytes``
    = input + result bytes).

    Rotate-half works on pairs ``(x1, x2)`` = columns ``(c, c + len/2)`` of a
    ``len``-column chunk, so the byte-credit schedule of :class:`ElementStream` issues an
    even number of elements per cycle (``lanes / 2`` pairs at most): every pair slot has
    its own ACT read ports for ``x1`` and ``x2`` and GLB ports for ``cos`` and ``sin``
    (INT16, position ``pos + row``), computes both rotated values one cycle later and
    writes them one cycle after that. Both halves of a pair are read before either is
    written, so the operation may run in place.
    """

    def __init__(self, arch: ArchConfig) -> None:
        self.arch = arch
        self.lanes = arch.sfu.lanes
        if self.lanes % 2:
            raise ValueError("ROPE needs an even number of SFU lanes")
        act, glb = arch.buffers.of(isa.Buf.ACT), arch.buffers.of(isa.Buf.GLB)
        self.P = act.banks * act.width
        aw, gw = addr_bits(act.size), addr_bits(glb.size)
        self.slots = self.lanes // 2
        super().__init__({
            "instr": In(MiscFields), "start": In(1), "done": Out(1),
            **{f"rd{j}": Out(BufPortSignature(aw, 4)) for j in range(self.lanes)},
            **{f"wr{j}": Out(BufPortSignature(aw, 4)) for j in range(self.lanes)},
            **{f"tab{j}": Out(BufPortSignature(gw, 2)) for j in range(self.lanes)},
        })

    def elaborate(self, platform) -> Module:
        m = Module()
        ins = self.instr
        L, P, S = self.lanes, self.P, self.slots
        nb = lambda dt: Const(1, 4) << dt  # noqa: E731
        eb = Signal(5)
        m.d.comb += eb.eq(nb(ins.a_dt) + nb(ins.d_dt))
        half = (ins.len >> 1)
        busy = Signal()
        row = Signal(isa.DIM_BITS)
        done_e = Signal(isa.DIM_BITS + 1)  # elements issued in this row
        base = Signal(isa.DIM_BITS + 1)  # first column of the current chunk
        i = Signal(isa.DIM_BITS)  # pair index within the chunk
        q = Signal(isa.DIM_BITS + 8)
        r = Signal(5)
        x = r + P
        q_inc = sum(((x >= k * eb) for k in range(1, P // 2 + 2)), Const(0, 8))
        r_next = Signal(8)
        m.d.comb += r_next.eq(x - q_inc * eb)
        avail = Signal(isa.DIM_BITS + 9)
        m.d.comb += avail.eq(q + q_inc - done_e)
        left = ins.cols - done_e
        lim = Mux(left < L, left, L)
        ne = Mux(avail < lim, avail, lim)
        npairs = Signal(range(S + 1))
        m.d.comb += npairs.eq(ne >> 1)
        row_end = done_e + (npairs << 1) >= ins.cols
        last = busy & row_end & (row + 1 >= ins.rows)
        # the pairs of this cycle: chunk base and index per slot
        bases, idxs = [base], [i]
        for s in range(1, S + 1):
            wrap = idxs[-1] + 1 >= half
            nb_ = Signal.like(base, name=f"base{s}")
            ni = Signal.like(i, name=f"idx{s}")
            m.d.comb += [nb_.eq(Mux(wrap, bases[-1] + ins.len, bases[-1])),
                         ni.eq(Mux(wrap, 0, idxs[-1] + 1))]
            bases.append(nb_)
            idxs.append(ni)
        with m.If(~busy & self.start):
            m.d.sync += [busy.eq(1), row.eq(0), done_e.eq(0), q.eq(0), r.eq(0), base.eq(0), i.eq(0)]
        with m.If(busy):
            m.d.sync += [done_e.eq(done_e + (npairs << 1)), q.eq(q + q_inc), r.eq(r_next)]
            with m.Switch(npairs):
                for n in range(S + 1):
                    with m.Case(n):
                        m.d.sync += [base.eq(bases[n]), i.eq(idxs[n])]
            with m.If(row_end):
                m.d.sync += [done_e.eq(0), q.eq(0), r.eq(0), base.eq(0), i.eq(0), row.eq(row + 1)]
                with m.If(row + 1 >= ins.rows):
                    m.d.sync += busy.eq(0)

        def elem(b, stride, rw, c, dt):
            return b + rw * stride + (c << dt)
        tab_row = (ins.pos + row) * ins.len
        v1 = [Signal(name=f"v1_{s}") for s in range(S)]
        c1 = [Signal.like(base, name=f"c1_{s}") for s in range(S)]
        r1, last1 = Signal.like(row), Signal()
        m.d.sync += [r1.eq(row), last1.eq(last)]
        for s in range(S):
            on = busy & (s < npairs)
            col = bases[s] + idxs[s]
            x1p, x2p = getattr(self, f"rd{2 * s}"), getattr(self, f"rd{2 * s + 1}")
            cp, sp = getattr(self, f"tab{2 * s}"), getattr(self, f"tab{2 * s + 1}")
            m.d.comb += [x1p.addr.eq(elem(ins.a_addr, ins.a_stride, row, col, ins.a_dt)),
                         x2p.addr.eq(elem(ins.a_addr, ins.a_stride, row, col + half, ins.a_dt)),
                         cp.addr.eq(ins.p_addr + ((tab_row + idxs[s]) << 1)),
                         sp.addr.eq(ins.p_addr + ((tab_row + half + idxs[s]) << 1)),
                         x1p.req.eq(on), x2p.req.eq(on), cp.req.eq(on), sp.req.eq(on)]
            m.d.sync += [v1[s].eq(on), c1[s].eq(col)]
        # stage 1: rotate
        v2 = [Signal(name=f"v2_{s}") for s in range(S)]
        c2 = [Signal.like(base, name=f"c2_{s}") for s in range(S)]
        y = [[Signal(32, name=f"y{s}_{h}") for h in range(2)] for s in range(S)]
        r2, last2 = Signal.like(row), Signal()
        m.d.sync += [r2.eq(r1), last2.eq(last1)]
        for s in range(S):
            x1 = _sext(getattr(self, f"rd{2 * s}").rdata, ins.a_dt)
            x2 = _sext(getattr(self, f"rd{2 * s + 1}").rdata, ins.a_dt)
            cos = getattr(self, f"tab{2 * s}").rdata.as_signed()
            sin = getattr(self, f"tab{2 * s + 1}").rdata.as_signed()
            m.d.sync += [y[s][0].eq(saturate(rnd_shift(x1 * cos - x2 * sin, ins.shift), ins.d_dt)),
                         y[s][1].eq(saturate(rnd_shift(x2 * cos + x1 * sin, ins.shift), ins.d_dt)),
                         v2[s].eq(v1[s]), c2[s].eq(c1[s])]
        # stage 2: write both halves
        strb = ((Const(1, 5) << nb(ins.d_dt)) - 1)[:4]
        for s in range(S):
            for h in range(2):
                p = getattr(self, f"wr{2 * s + h}")
                m.d.comb += [p.addr.eq(elem(ins.d_addr, ins.d_stride, r2, c2[s] + (half if h else 0),
                                            ins.d_dt)),
                             p.we.eq(1), p.wdata.eq(y[s][h]), p.strb.eq(strb), p.req.eq(v2[s])]
        out = last2
        for t in range(self.arch.sfu.pipeline_depth - 4):
            reg = Signal(name=f"done_d{t}")
            m.d.sync += reg.eq(out)
            out = reg
        m.d.comb += self.done.eq(out)
        return m
