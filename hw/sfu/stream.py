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

from amaranth import Cat, Const, Module, Mux, Signal, signed, unsigned
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


#: Cycles the SOFTMAX stream waits per row between the exponent-sum pass and the output
#: pass: the reciprocal ``2**38 // sum`` on the restoring divider (one quotient bit per
#: cycle, 39 bits, plus its start cycle). ``Timing.misc`` does not charge it (yet): see
#: docs/rtl.md.
SOFTMAX_ROW_GAP = 40


class SoftmaxStream(wiring.Component):
    """SOFTMAX at the lane rate: three passes per row (MAX, SUM, OUT) on the byte-credit
    schedule of :class:`ElementStream` (``elem_bytes`` = input + result bytes), with
    :data:`SOFTMAX_ROW_GAP` cycles between SUM and OUT for the reciprocal.

    Every lane has its own ACT read and write port (4 bytes) and exp2 ROM read port. An
    element issued in cycle ``t`` arrives in ``t + 1``: MAX folds it into the row maximum
    (registered, ready for the SUM pass issued from ``t + 1``); SUM and OUT compute
    ``d = max - x``, ``t = rnd(d * m0 >> shift)`` and the ROM address, the ROM answers in
    ``t + 2``, where SUM adds ``e`` to the row sum and OUT writes ``y``. The divider starts
    when the last ``e`` is summed and its quotient is valid when the first OUT ``y`` is
    computed. Bit-exact with :func:`flightforge.numerics.softmax`.
    """

    def __init__(self, arch: ArchConfig) -> None:
        self.arch = arch
        self.lanes = arch.sfu.lanes
        act = arch.buffers.of(isa.Buf.ACT)
        self.P = act.banks * act.width
        if arch.sfu.pipeline_depth < 4:
            raise ValueError("the SFU stream pipeline needs sfu.pipeline_depth >= 4")
        aw = addr_bits(act.size)
        super().__init__({
            "instr": In(MiscFields), "start": In(1), "done": Out(1),
            **{f"rd{j}": Out(BufPortSignature(aw, 4)) for j in range(self.lanes)},
            **{f"wr{j}": Out(BufPortSignature(aw, 4)) for j in range(self.lanes)},
        })

    def elaborate(self, platform) -> Module:
        from amaranth.lib import memory
        from flightforge import numerics
        from .divider import Divider
        from .softmax import EXP_BITS, EXP_MAX_SHIFT, RECIP_DIVIDEND_BITS, SUM_BITS
        from .common import by_dtype
        assert Divider.latency_of(RECIP_DIVIDEND_BITS) == SOFTMAX_ROW_GAP
        m = Module()
        ins = self.instr
        L, P = self.lanes, self.P
        nb = lambda dt: Const(1, 4) << dt  # noqa: E731
        eb = Signal(5)
        m.d.comb += eb.eq(nb(ins.a_dt) + nb(ins.d_dt))

        busy = Signal()
        phase = Signal(2)  # 0 MAX, 1 SUM, 2 WAIT, 3 OUT
        wait = Signal(range(SOFTMAX_ROW_GAP + 1))
        row = Signal(isa.DIM_BITS)
        col = Signal(isa.DIM_BITS + 1)
        q = Signal(isa.DIM_BITS + 8)
        r = Signal(5)
        x_ = r + P
        q_inc = sum(((x_ >= i * eb) for i in range(1, P // 2 + 2)), Const(0, 8))
        r_next = Signal(8)
        m.d.comb += r_next.eq(x_ - q_inc * eb)
        avail = Signal(isa.DIM_BITS + 9)
        m.d.comb += avail.eq(q + q_inc - col)
        left = ins.cols - col
        E = Signal(range(L + 1))
        lim = Mux(left < L, left, L)
        m.d.comb += E.eq(Mux(avail < lim, avail, lim))
        issuing = busy & (phase != 2)
        row_end = issuing & (col + E >= ins.cols)
        last = Signal()
        m.d.comb += last.eq(row_end & (phase == 3) & (row + 1 >= ins.rows))

        with m.If(~busy & self.start):
            m.d.sync += [busy.eq(1), phase.eq(0), row.eq(0), col.eq(0), q.eq(0), r.eq(0)]
        with m.If(issuing):
            m.d.sync += [col.eq(col + E), q.eq(q + q_inc), r.eq(r_next)]
            with m.If(row_end):
                m.d.sync += [col.eq(0), q.eq(0), r.eq(0)]
                with m.Switch(phase):
                    with m.Case(0):
                        m.d.sync += phase.eq(1)
                    with m.Case(1):
                        m.d.sync += [phase.eq(2), wait.eq(SOFTMAX_ROW_GAP - 1)]
                    with m.Case(3):
                        m.d.sync += [phase.eq(0), row.eq(row + 1)]
                        with m.If(row + 1 >= ins.rows):
                            m.d.sync += busy.eq(0)
        with m.If(busy & (phase == 2)):
            m.d.sync += wait.eq(wait - 1)
            with m.If(wait == 0):
                m.d.sync += phase.eq(3)

        def elem(b, stride, rw, c, dt):
            return b + rw * stride + (c << dt)
        limit = Mux(ins.len == 0, ins.cols, ins.len)
        for j in range(L):
            p = getattr(self, f"rd{j}")
            m.d.comb += [p.addr.eq(elem(ins.a_addr, ins.a_stride, row, col + j, ins.a_dt)),
                         p.req.eq(issuing & (j < E))]
        # stage 1: arrival
        v1 = Signal(L)
        ph1, r1, c1, last1 = Signal(2), Signal.like(row), Signal.like(col), Signal()
        first1 = Signal()
        m.d.sync += [ph1.eq(phase), r1.eq(row), c1.eq(col), last1.eq(last),
                     first1.eq(col == 0)]
        m.d.sync += v1.eq(Cat(*(issuing & (j < E) for j in range(L))))
        mx = Signal(signed(ELEM_BITS))
        xs, vc = [], []
        for j in range(L):
            xj = Signal(signed(ELEM_BITS), name=f"x{j}")
            cj = c1 + j
            vj = Signal(name=f"vc{j}")
            m.d.comb += [xj.eq(_sext(getattr(self, f"rd{j}").rdata, ins.a_dt)),
                         vj.eq(v1[j] & (cj < limit) & (~ins.causal | (cj <= ins.pos + r1)))]
            xs.append(xj)
            vc.append(vj)
        # MAX: fold the lanes into the running maximum (restarted at a row's first cycle)
        run = Mux(first1, -(1 << (ELEM_BITS - 1)), mx)
        for j in range(L):
            nxt = Signal(signed(ELEM_BITS), name=f"mx{j}")
            m.d.comb += nxt.eq(Mux(vc[j] & (xs[j] > run), xs[j], run))
            run = nxt
        with m.If(v1.any() & (ph1 == 0)):
            m.d.sync += mx.eq(run)
        # SUM / OUT: d, t, ROM address (combinational on arrival), ROM data next cycle
        rom = memory.Memory(shape=unsigned(EXP_BITS), depth=len(numerics.EXP2_LUT),
                            init=[int(v) for v in numerics.EXP2_LUT])
        m.submodules.exp2_rom = rom
        v2 = Signal(L)
        vc2 = Signal(L)
        ph2, r2, c2, last2 = Signal(2), Signal.like(row), Signal.like(col), Signal()
        m.d.sync += [v2.eq(v1), vc2.eq(Cat(*vc)), ph2.eq(ph1), r2.eq(r1), c2.eq(c1),
                     last2.eq(last1)]
        es = []
        for j in range(L):
            rp = rom.read_port()
            d = Signal(ELEM_BITS, name=f"d{j}")
            t = Signal(ELEM_BITS + isa.MULT_BITS, name=f"t{j}")
            sh = Signal(range(EXP_MAX_SHIFT + 1), name=f"sh{j}")
            m.d.comb += [d.eq(Mux(vc[j], mx - xs[j], 0)),
                         t.eq(rnd_shift(d * ins.m0, ins.shift)),
                         rp.addr.eq(t[:8])]
            m.d.sync += sh.eq(Mux(t >> numerics.FRAC_BITS_EXP > EXP_MAX_SHIFT, EXP_MAX_SHIFT,
                                  t >> numerics.FRAC_BITS_EXP))
            e = Signal(EXP_BITS, name=f"e{j}")
            m.d.comb += e.eq(Mux(vc2[j], rp.data >> sh, 0))
            es.append(e)
        total = Signal(SUM_BITS)
        with m.If(busy & (phase == 0)):
            m.d.sync += total.eq(0)
        with m.Elif(v2.any() & (ph2 == 1)):
            m.d.sync += total.eq(total + sum(es))
        m.submodules.divider = div = Divider(RECIP_DIVIDEND_BITS, SUM_BITS)
        sum_end2 = Signal()
        m.d.sync += sum_end2.eq(row_end & (phase == 1))
        sum_end3, sum_end4 = Signal(), Signal()
        # the last e of the pass is summed two cycles after its issue: start then
        m.d.sync += [sum_end3.eq(sum_end2), sum_end4.eq(sum_end3)]
        m.d.comb += [div.start.eq(sum_end4), div.dividend.eq(1 << numerics.SOFTMAX_RECIP_BITS),
                     div.divisor.eq(total)]
        zero = Signal()  # the row's sum was 0 (every column masked): y = 0
        with m.If(sum_end4):
            m.d.sync += zero.eq(total == 0)
        recip = Mux(zero, 0, div.quotient)
        frac_shift = by_dtype(ins.d_dt, lambda dt: numerics.SOFTMAX_RECIP_BITS - (dt.bits - 1))
        y_max = by_dtype(ins.d_dt, lambda dt: (1 << (dt.bits - 1)) - 1)
        strb = ((Const(1, 5) << nb(ins.d_dt)) - 1)[:4]
        for j in range(L):
            yf = Signal(len(div.quotient) + EXP_BITS, name=f"yf{j}")
            m.d.comb += yf.eq(rnd_shift(es[j] * recip, frac_shift))
            p = getattr(self, f"wr{j}")
            m.d.comb += [p.addr.eq(elem(ins.d_addr, ins.d_stride, r2, c2 + j, ins.d_dt)),
                         p.we.eq(1), p.wdata.eq(Mux(yf > y_max, y_max, yf)), p.strb.eq(strb),
                         p.req.eq(v2[j] & (ph2 == 3))]
        out = last2
        for k in range(self.arch.sfu.pipeline_depth - 4):
            reg = Signal(name=f"done_d{k}")
            m.d.sync += reg.eq(out)
            out = reg
        m.d.comb += self.done.eq(out)
        return m


def norm_row_gap(layer: bool) -> int:
    """Cycles the norm stream waits per row between the statistics and the output pass:
    LAYERNORM's mean (a division) and centring (2 steps), the mean square (a division),
    the integer square root and the inverse root (a division), all sequential; see
    :class:`NormStream`. ``Timing.misc`` does not charge them (yet): see docs/rtl.md."""
    from .divider import Divider, ISqrt
    from .norm import DIV_DIVIDEND_BITS, RADICAND_BITS
    div, sq = Divider.latency_of(DIV_DIVIDEND_BITS), ISqrt.latency_of(RADICAND_BITS)
    base = 2 + (div + 3 if layer else 0)
    return base + div + sq + div - 2


class NormStream(wiring.Component):
    """RMSNORM / LAYERNORM at the lane rate: a statistics pass and an output pass per row
    on the byte-credit schedule of :class:`ElementStream` (``elem_bytes`` = input + result
    bytes), with :func:`norm_row_gap` cycles between them for the sequential divisions
    and square root (the arithmetic of :class:`.norm.Norm`).

    Every lane has its own ACT read and write port and GLB ports for ``gamma`` and
    ``beta`` (INT16 at ``p_addr``, ``beta`` after ``cols`` gains). Statistics: the lanes'
    ``x`` and ``x**2`` are summed on arrival (``t + 1``). Output: on arrival ``y`` =
    ``sat(rnd(rnd((x - mean) * inv, 16) * gamma, shift) + beta)`` is computed and written
    in ``t + 2``. Bit-exact with :func:`flightforge.numerics.rmsnorm` / ``layernorm``.
    """

    def __init__(self, arch: ArchConfig) -> None:
        self.arch = arch
        self.lanes = arch.sfu.lanes
        act, glb = arch.buffers.of(isa.Buf.ACT), arch.buffers.of(isa.Buf.GLB)
        self.P = act.banks * act.width
        if arch.sfu.pipeline_depth < 4:
            raise ValueError("the SFU stream pipeline needs sfu.pipeline_depth >= 4")
        aw, gw = addr_bits(act.size), addr_bits(glb.size)
        super().__init__({
            "instr": In(MiscFields), "start": In(1), "done": Out(1),
            **{f"rd{j}": Out(BufPortSignature(aw, 4)) for j in range(self.lanes)},
            **{f"wr{j}": Out(BufPortSignature(aw, 4)) for j in range(self.lanes)},
            **{f"g{j}": Out(BufPortSignature(gw, 2)) for j in range(self.lanes)},
            **{f"b{j}": Out(BufPortSignature(gw, 2)) for j in range(self.lanes)},
        })

    def elaborate(self, platform) -> Module:
        from flightforge import numerics
        from .divider import Divider, ISqrt
        from .norm import (DIV_DIVIDEND_BITS, DIV_DIVISOR_BITS, MS_BITS, RADICAND_BITS,
                           S1_BITS, S2_BITS, X_BITS)
        m = Module()
        ins = self.instr
        L, P = self.lanes, self.P
        layer = ins.op == isa.MiscOp.LAYERNORM
        nb = lambda dt: Const(1, 4) << dt  # noqa: E731
        eb = Signal(5)
        m.d.comb += eb.eq(nb(ins.a_dt) + nb(ins.d_dt))
        gap_r, gap_l = norm_row_gap(False), norm_row_gap(True)
        dl = Divider.latency_of(DIV_DIVIDEND_BITS)
        sl = ISqrt.latency_of(RADICAND_BITS)

        busy = Signal()
        phase = Signal(2)  # 0 STATS, 1 WAIT, 2 OUT
        k = Signal(range(gap_l + 2))  # cycles since the statistics pass ended (1 first)
        row = Signal(isa.DIM_BITS)
        col = Signal(isa.DIM_BITS + 1)
        q = Signal(isa.DIM_BITS + 8)
        r = Signal(5)
        x_ = r + P
        q_inc = sum(((x_ >= i * eb) for i in range(1, P // 2 + 2)), Const(0, 8))
        r_next = Signal(8)
        m.d.comb += r_next.eq(x_ - q_inc * eb)
        avail = Signal(isa.DIM_BITS + 9)
        m.d.comb += avail.eq(q + q_inc - col)
        left = ins.cols - col
        E = Signal(range(L + 1))
        lim = Mux(left < L, left, L)
        m.d.comb += E.eq(Mux(avail < lim, avail, lim))
        issuing = busy & (phase != 1)
        row_end = issuing & (col + E >= ins.cols)
        last = Signal()
        m.d.comb += last.eq(row_end & (phase == 2) & (row + 1 >= ins.rows))
        gap = Mux(layer, gap_l, gap_r)

        with m.If(~busy & self.start):
            m.d.sync += [busy.eq(1), phase.eq(0), row.eq(0), col.eq(0), q.eq(0), r.eq(0)]
        with m.If(issuing):
            m.d.sync += [col.eq(col + E), q.eq(q + q_inc), r.eq(r_next)]
            with m.If(row_end):
                m.d.sync += [col.eq(0), q.eq(0), r.eq(0)]
                with m.If(phase == 0):
                    m.d.sync += [phase.eq(1), k.eq(1)]
                with m.Else():
                    m.d.sync += [phase.eq(0), row.eq(row + 1)]
                    with m.If(row + 1 >= ins.rows):
                        m.d.sync += busy.eq(0)
        with m.If(busy & (phase == 1)):
            m.d.sync += k.eq(k + 1)
            with m.If(k == gap):
                m.d.sync += phase.eq(2)

        def elem(b, stride, rw, c, dt):
            return b + rw * stride + (c << dt)
        for j in range(L):
            on = issuing & (j < E)
            p, g, b = (getattr(self, f"{n}{j}") for n in ("rd", "g", "b"))
            m.d.comb += [p.addr.eq(elem(ins.a_addr, ins.a_stride, row, col + j, ins.a_dt)),
                         p.req.eq(on),
                         g.addr.eq(ins.p_addr + ((col + j) << 1)),
                         b.addr.eq(ins.p_addr + ((ins.cols + col + j) << 1)),
                         g.req.eq(on & (phase == 2)), b.req.eq(on & (phase == 2) & layer)]
        # stage 1: arrival
        v1 = Signal(L)
        ph1, r1, c1, last1 = Signal(2), Signal.like(row), Signal.like(col), Signal()
        m.d.sync += [v1.eq(Cat(*(issuing & (j < E) for j in range(L)))), ph1.eq(phase),
                     r1.eq(row), c1.eq(col), last1.eq(last)]
        xs = [Signal(signed(X_BITS), name=f"x{j}") for j in range(L)]
        for j in range(L):
            m.d.comb += xs[j].eq(_sext(getattr(self, f"rd{j}").rdata, ins.a_dt))
        s1 = Signal(signed(S1_BITS))
        s2 = Signal(unsigned(S2_BITS))
        add1 = sum((Mux(v1[j], xs[j], 0) for j in range(L)), Const(0, signed(S1_BITS)))
        add2 = sum((Mux(v1[j], xs[j] * xs[j], 0) for j in range(L)), Const(0, unsigned(S2_BITS)))
        # the first arrival of a row's statistics pass restarts the sums
        first1 = Signal()
        m.d.sync += first1.eq(busy & (phase == 0) & (col == 0))
        with m.If(v1.any() & (ph1 == 0)):
            m.d.sync += [s1.eq(Mux(first1, 0, s1) + add1), s2.eq(Mux(first1, 0, s2) + add2)]

        # the per-row sequence, at fixed cycles k after the statistics pass
        m.submodules.divider = div = Divider(DIV_DIVIDEND_BITS, DIV_DIVISOR_BITS)
        m.submodules.isqrt = sqrt = ISqrt(RADICAND_BITS)
        mean = Signal(signed(X_BITS + 1))
        centre = Signal(signed(S1_BITS + X_BITS + 3))
        waiting = busy & (phase == 1)
        b0 = Mux(layer, 2 + dl + 3, 2)  # k of the mean-square division's start
        ms = Signal(MS_BITS)
        m.d.comb += ms.eq(div.quotient + ins.eps)
        with m.If(waiting & (k == 2) & layer):
            m.d.comb += [div.start.eq(1), div.dividend.eq(abs(s1)), div.divisor.eq(ins.cols)]
        with m.If(waiting & (k == 2) & ~layer):
            m.d.sync += mean.eq(0)
        with m.If(waiting & (k == 2 + dl) & layer):
            m.d.sync += mean.eq(Mux(s1 >= 0, div.quotient, -div.quotient - (div.remainder != 0)))
        with m.If(waiting & (k == 3 + dl) & layer):
            m.d.sync += centre.eq(2 * s1 - ins.cols * mean)
        with m.If(waiting & (k == 4 + dl) & layer):
            m.d.sync += s2.eq(s2 - mean * centre)
        with m.If(waiting & (k == b0)):
            m.d.comb += [div.start.eq(1), div.dividend.eq(s2), div.divisor.eq(ins.cols)]
        with m.If(waiting & (k == b0 + dl)):
            m.d.comb += [sqrt.start.eq(1), sqrt.value.eq(ms << 16)]
        with m.If(waiting & (k == b0 + dl + sl)):
            m.d.comb += [div.start.eq(1), div.dividend.eq(1 << numerics.NORM_RSQRT_BITS),
                         div.divisor.eq(Mux(sqrt.root == 0, 1, sqrt.root))]
        inv = div.quotient[:numerics.NORM_RSQRT_BITS + 1]  # valid from k = b0 + 2*dl + sl

        # output: computed on arrival, written next cycle
        v2 = Signal(L)
        r2, c2, last2, ph2 = Signal.like(row), Signal.like(col), Signal(), Signal(2)
        m.d.sync += [v2.eq(v1), r2.eq(r1), c2.eq(c1), last2.eq(last1), ph2.eq(ph1)]
        strb = ((Const(1, 5) << nb(ins.d_dt)) - 1)[:4]
        for j in range(L):
            gam = getattr(self, f"g{j}").rdata.as_signed()
            bet = getattr(self, f"b{j}").rdata.as_signed()
            xc = Signal(signed(X_BITS + 2), name=f"xc{j}")
            t = Signal(signed(len(xc) + len(inv) - numerics.NORM_T_SHIFT + 1), name=f"t{j}")
            u = Signal(signed(len(t) + X_BITS), name=f"u{j}")
            y = Signal(32, name=f"y{j}")
            m.d.comb += [xc.eq(xs[j] - mean), t.eq(rnd_shift(xc * inv, numerics.NORM_T_SHIFT)),
                         u.eq(rnd_shift(t * gam, ins.shift))]
            m.d.sync += y.eq(saturate(u + Mux(layer, bet, 0), ins.d_dt))
            p = getattr(self, f"wr{j}")
            m.d.comb += [p.addr.eq(elem(ins.d_addr, ins.d_stride, r2, c2 + j, ins.d_dt)),
                         p.we.eq(1), p.wdata.eq(y), p.strb.eq(strb),
                         p.req.eq(v2[j] & (ph2 == 2))]
        out = last2
        for n in range(self.arch.sfu.pipeline_depth - 4):
            reg = Signal(name=f"done_d{n}")
            m.d.sync += reg.eq(out)
            out = reg
        m.d.comb += self.done.eq(out)
        return m

