"""LD and ST: pipelined 2-D transfers between external memory and the on-chip buffers.

The timing contract is sim/timing.py's ``Timing.transfer``: ``latency + beats`` on one
channel, where ``beats`` counts every row rounded out to whole bursts (one span when the
transfer is contiguous on both sides) and, for a buffer port narrower than a burst,
``ceil(valid bytes / port)`` cycles per burst. The units realise it like this:

- a command side issues one burst command per row (one for a contiguous transfer), one
  command per cycle, without waiting for data: requests are pipelined, so the memory's
  latency is paid once per instruction;
- a data side moves the beats: LD writes each beat's valid bytes into the buffer in the
  cycle it arrives (``min(port, burst)`` bytes per cycle at any address: the buffer's
  byte lanes rotate); ST reads them from the buffer one cycle ahead and sends one beat
  per cycle with byte strobes, then waits for the write responses (one per command).

The external bus is described in :mod:`flightforge.hw.bus`. ``unpack`` and the
length-adaptive ``dyn_step`` are not implemented in the RTL (docs/rtl.md).
"""

from __future__ import annotations

from amaranth import Cat, Const, Module, Mux, Signal
from amaranth.lib import wiring
from amaranth.lib.wiring import Out

from flightforge import isa
from flightforge.arch import ArchConfig

from .buffers import addr_bits
from .bus import BEATS_BITS, BufPortSignature, MemReadSignature, MemWriteSignature
from .decode import unit_members, view


def _beat_bytes(arch: ArchConfig) -> int:
    w = arch.hbm.burst_bytes
    if w & (w - 1) or w < 2:
        raise ValueError(f"hbm.burst_bytes must be a power of two of at least 2, not {w!r}")
    return w


def port_width(arch: ArchConfig, buf: isa.Buf) -> int:
    """Bytes per cycle a LD/ST unit moves through buffer ``buf``'s port."""
    b = arch.buffers.of(buf)
    return min(b.banks * b.width, _beat_bytes(arch))


def _buffer_ports(arch: ArchConfig) -> dict[str, wiring.Member]:
    return {f"buf_{b.name.lower()}": Out(BufPortSignature(addr_bits(arch.buffers.of(b).size),
                                                          port_width(arch, b)))
            for b in isa.Buf}


class _Transfer(wiring.Component):
    """Row walking shared by LD and ST: ``ext`` is the external side, ``buf`` the buffer."""

    CLS: type[isa.Instruction]

    def __init__(self, arch: ArchConfig, unit: isa.Unit, bus: wiring.Signature) -> None:
        self.arch = arch
        self.beat = _beat_bytes(arch)
        self.lw = self.beat.bit_length() - 1
        super().__init__({**unit_members(unit), "mem": Out(bus), **_buffer_ports(arch)})

    def _buf(self, m: Module, sel, *, req, addr, we=0, wdata=0, strb=0):
        """Drive the port of buffer ``sel``; returns its ``rdata`` (``beat`` bytes wide)."""
        rdata = Signal(8 * self.beat)
        with m.Switch(sel):
            for b in isa.Buf:
                port = getattr(self, f"buf_{b.name.lower()}")
                w = port_width(self.arch, b)
                with m.Case(b):
                    m.d.comb += [port.req.eq(req), port.addr.eq(addr), port.we.eq(we),
                                 port.wdata.eq(wdata), rdata.eq(port.rdata)]
                    if w > 1:
                        m.d.comb += port.strb.eq(strb)
        return rdata

    def _width(self, m: Module, sel) -> Signal:
        w = Signal(range(self.beat + 1))
        with m.Switch(sel):
            for b in isa.Buf:
                with m.Case(b):
                    m.d.comb += w.eq(port_width(self.arch, b))
        return w

    @staticmethod
    def _sides(v):
        """(external address, external stride, buffer address, buffer stride) of ``v``."""
        if isinstance(v, _LdView):
            return v.v.src, v.v.src_stride, v.v.dst, v.v.dst_stride
        return v.v.dst, v.v.dst_stride, v.v.src, v.v.src_stride

    def _plan(self, v):
        """(commands, bytes per command) of an instruction view: one span when both
        sides are contiguous."""
        _, es, _, bs = self._sides(v)
        contig = (v.v.rows == 1) | ((es == v.v.row_bytes) & (bs == v.v.row_bytes))
        return Mux(contig, 1, v.v.rows), Mux(contig, v.v.rows * v.v.row_bytes, v.v.row_bytes)

    def _walker(self, m: Module, *, move: Signal):
        """Command side and buffer-address walk shared by LD and ST.

        Returns a dict of signals: ``busy``, ``first`` (the start cycle), the chunk
        ``n``/``cur``/``ptr``/``beat_end``/``last`` of the current cycle, and ``ins``.
        ``move`` is asserted by the caller in a cycle whose chunk is moved.
        """
        word = Signal.like(self.instr)
        now = self._view(self.instr)
        ins = self._view(word)
        e_now, es_now, b_now, bs_now = self._sides(now)
        e_ins, es, b_ins, bs = self._sides(ins)
        ncmd_now, seg_now = self._plan(now)
        ncmd, seg = self._plan(ins)
        E = isa.EXT_ADDR_BITS
        busy, cmd_on = Signal(), Signal()
        crow, drow = Signal(isa.DIM_BITS + 1), Signal(isa.DIM_BITS + 1)
        csrc, dsrc = Signal(E + 1), Signal(E + 1)
        ptr, base = Signal(isa.BUF_ADDR_BITS + 1), Signal(isa.BUF_ADDR_BITS + 1)
        left = Signal(isa.DIM_BITS + isa.ROW_BYTES_BITS + 1)
        cur = Signal(max(1, self.lw))
        # --- command side: one burst per segment, one command per cycle --------------------
        off = csrc[:self.lw]
        aligned = Cat(Const(0, self.lw), csrc[self.lw:E])
        beats = (off + seg + (self.beat - 1)) >> self.lw
        with m.If(cmd_on):
            m.d.comb += [self.mem.cmd_valid.eq(1), self.mem.cmd_addr.eq(aligned),
                         self.mem.cmd_beats.eq(beats[:BEATS_BITS])]
            with m.If(self.mem.cmd_ready):
                m.d.sync += [crow.eq(crow + 1), csrc.eq(csrc + es)]
                with m.If(crow == ncmd - 1):
                    m.d.sync += cmd_on.eq(0)
        # --- data side: chunks of min(left, rest of the beat, port width) bytes ----------
        width = self._width(m, ins.v.buf)
        avail = Signal(range(self.beat + 1))
        m.d.comb += avail.eq(self.beat - cur)
        n, n0 = Signal(range(self.beat + 1)), Signal(range(self.beat + 1))
        m.d.comb += [n0.eq(Mux(left < avail, left, avail)), n.eq(Mux(width < n0, width, n0))]
        seg_end = n == left
        beat_end = (n == avail) | seg_end
        last = seg_end & (drow == ncmd - 1)
        with m.If(busy & move):
            m.d.sync += [ptr.eq(ptr + n), left.eq(left - n), cur.eq(cur + n)]
            with m.If(seg_end):
                nxt = dsrc + es
                m.d.sync += [drow.eq(drow + 1), dsrc.eq(nxt), cur.eq(nxt[:self.lw]),
                             base.eq(base + bs), ptr.eq(base + bs), left.eq(seg)]
                with m.If(last):
                    m.d.sync += busy.eq(0)
        with m.If(self.start):
            m.d.sync += [word.eq(self.instr), busy.eq(1), cmd_on.eq(1), crow.eq(0), drow.eq(0),
                         csrc.eq(e_now), dsrc.eq(e_now), cur.eq(e_now[:self.lw]),
                         ptr.eq(b_now), base.eq(b_now), left.eq(seg_now)]
        return {"busy": busy, "n": n, "cur": cur, "ptr": ptr, "beat_end": beat_end,
                "last": last, "ins": ins, "ncmd": ncmd}


class _LdView:
    def __init__(self, v):
        self.v = v


class _StView:
    def __init__(self, v):
        self.v = v


def _mask(n, width: int):
    """``width`` bits with the low ``n`` set."""
    return ((Const(1, width + 1) << n) - 1)[:width]


class LoadUnit(_Transfer):
    """LD: external memory -> buffer."""

    def __init__(self, arch: ArchConfig) -> None:
        super().__init__(arch, isa.Unit.LD, MemReadSignature(isa.EXT_ADDR_BITS, _beat_bytes(arch)))

    def _view(self, word):
        return _LdView(view(isa.LD, word))

    def elaborate(self, platform) -> Module:
        m = Module()
        move = Signal()
        w = self._walker(m, move=move)
        busy, n, cur = w["busy"], w["n"], w["cur"]
        m.d.comb += move.eq(self.mem.data_valid)
        shifted = self.mem.data >> Cat(Const(0, 3), cur)
        with m.If(busy & self.mem.data_valid):
            self._buf(m, w["ins"].v.buf, req=1, addr=w["ptr"], we=1, wdata=shifted,
                      strb=_mask(n, self.beat))
            m.d.comb += self.mem.data_ready.eq(w["beat_end"])
            with m.If(w["last"]):
                m.d.comb += self.done.eq(1)
        return m


class StoreUnit(_Transfer):
    """ST: buffer -> external memory, partial beats strobed; done at the last write
    response."""

    def __init__(self, arch: ArchConfig) -> None:
        super().__init__(arch, isa.Unit.ST, MemWriteSignature(isa.EXT_ADDR_BITS, _beat_bytes(arch)))

    def _view(self, word):
        return _StView(view(isa.ST, word))

    def elaborate(self, platform) -> Module:
        m = Module()
        B = self.beat
        move = Signal()
        w = self._walker(m, move=move)
        busy, n, cur = w["busy"], w["n"], w["cur"]
        # Read side: the chunk of this cycle is read; it arrives (rdata) next cycle.
        m.d.comb += move.eq(1)
        q_valid, q_last = Signal(), Signal()
        q_cur, q_n = Signal.like(cur), Signal.like(n)
        rdata = self._buf(m, w["ins"].v.buf, req=busy, addr=w["ptr"])
        m.d.sync += [q_valid.eq(busy), q_cur.eq(cur), q_n.eq(n), q_last.eq(w["beat_end"])]
        # Beat assembly: earlier chunks of the beat in acc, the arriving one merged in.
        acc, acc_strb = Signal(8 * B), Signal(B)
        qmask = _mask(q_n, B)
        data_bits = Signal(8 * B)
        for i in range(B):
            m.d.comb += data_bits.word_select(i, 8).eq(Mux(qmask[i], rdata.word_select(i, 8), 0))
        placed = data_bits << Cat(Const(0, 3), q_cur)
        pstrb = qmask << q_cur
        merged, mstrb = Signal(8 * B), Signal(B)
        m.d.comb += [merged.eq(acc | placed), mstrb.eq(acc_strb | pstrb)]
        with m.If(q_valid):
            with m.If(q_last):
                m.d.comb += [self.mem.data_valid.eq(1), self.mem.data.eq(merged),
                             self.mem.strb.eq(mstrb)]
                m.d.sync += [acc.eq(0), acc_strb.eq(0)]
            with m.Else():
                m.d.sync += [acc.eq(merged), acc_strb.eq(mstrb)]
        # Write responses: one per command; the last one completes the instruction.
        resp = Signal(isa.DIM_BITS + 1)
        waiting = Signal()
        with m.If(self.start):
            m.d.sync += [resp.eq(0), waiting.eq(1)]
        with m.Elif(waiting & self.mem.resp_valid):
            m.d.sync += resp.eq(resp + 1)
            with m.If(resp == w["ncmd"] - 1):
                m.d.sync += waiting.eq(0)
                m.d.comb += self.done.eq(1)
        return m
