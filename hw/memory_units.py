"""LD and ST: pipelined 2-D transfers between external memory and the on-chip buffers.

The timing contract is sim/timing.py's ``Timing.transfer``: ``latency + beats`` on one
channel, where ``beats`` counts every row rounded out to whole bursts (one span when the
transfer is contiguous on both sides) and, when a burst can hold more values than the
buffer port writes per cycle, ``ceil(values ending in the burst / port)`` cycles per
burst. The units realise it like this:

- a command side issues one burst command per row (one for a contiguous transfer), one
  command per cycle, without waiting for data: requests are pipelined, so the memory's
  latency is paid once per instruction;
- a data side moves the beats: LD writes each beat's values into the buffer as it
  arrives (up to the LD port width per cycle at any address: the buffer's byte lanes
  rotate), holding the beat until its last value is written; ST reads them from the
  buffer one cycle ahead and sends one beat per cycle with byte strobes, then waits for
  the write responses (one per command).

LD ``unpack`` (2/3/4-bit two's-complement values packed LSB-first,
:func:`flightforge.formats.pack_lowbit`) runs on the same walk: the data side keeps the
previous beat, so the window ``previous beat | current beat`` holds every value that
ends in the current beat, even one that began in the previous beat; each cycle it takes
up to ``port`` values at bit ``q`` of the window and writes them sign-extended to INT8.
A plain LD is the case of 8-bit values. The LD port is
``min(banks * width, formats.lowbit_values_per_burst(burst, 2))`` bytes wide (at most the
values one burst of 2-bit weights yields), so a burst costs
``ceil(values ending in it / port)`` cycles, as the cycle model charges.

The external bus is described in :mod:`flightforge.hw.bus`. The length-adaptive
``dyn_step`` is applied before the unit (:func:`flightforge.hw.decode.resolve_dynamic`).
"""

from __future__ import annotations

from amaranth import Cat, Const, Module, Mux, Signal, Value
from amaranth.lib import wiring
from amaranth.lib.wiring import Out

from flightforge import formats, isa
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
    """Bytes per cycle the ST unit reads from buffer ``buf`` (a beat's bytes at most)."""
    b = arch.buffers.of(buf)
    return min(b.banks * b.width, _beat_bytes(arch))


def ld_port_width(arch: ArchConfig, buf: isa.Buf) -> int:
    """INT8 values per cycle the LD unit writes into buffer ``buf``: the port's
    ``banks * width``, but no more than one burst of 2-bit values yields (wider would
    never be used). Where the port is narrower, a burst takes several cycles, as
    ``Timing.beatwise`` charges."""
    b = arch.buffers.of(buf)
    most = max(formats.lowbit_values_per_burst(_beat_bytes(arch), u.bits) for u in isa.Unpack)
    return min(b.banks * b.width, most)


class _Transfer(wiring.Component):
    """Row walking shared by LD and ST: ``ext`` is the external side, ``buf`` the buffer.

    The data side walks values of ``bits`` bits (8 for ST and a plain LD): ``q`` is the
    bit at which the next value starts in the window ``previous beat | current beat``
    (``[beat_bits, 2 * beat_bits)`` is the current beat; a value that began in the
    previous beat starts below ``beat_bits``), ``left`` the values left in the segment.
    """

    CLS: type[isa.Instruction]

    def __init__(
        self, arch: ArchConfig, unit: isa.Unit, bus: wiring.Signature, widths: dict[isa.Buf, int]
    ) -> None:
        self.arch = arch
        self.beat = _beat_bytes(arch)
        self.lw = self.beat.bit_length() - 1
        self.widths = widths  #: bytes of the port on each buffer
        self.max_width = max(self.widths.values())
        ports = {
            f"buf_{b.name.lower()}": Out(BufPortSignature(addr_bits(arch.buffers.of(b).size), w))
            for b, w in self.widths.items()
        }
        super().__init__({**unit_members(unit), "mem": Out(bus), **ports})

    def buffer_width(self, buf: isa.Buf) -> int:
        """Bytes of this unit's port on buffer ``buf``."""
        return self.widths[buf]

    def _buf(self, m: Module, sel, *, req, addr, we=0, wdata=0, strb=0):
        """Drive the port of buffer ``sel``; returns its ``rdata`` (``max_width`` bytes)."""
        rdata = Signal(8 * self.max_width)
        with m.Switch(sel):
            for b in isa.Buf:
                port = getattr(self, f"buf_{b.name.lower()}")
                with m.Case(b):
                    m.d.comb += [
                        port.req.eq(req),
                        port.addr.eq(addr),
                        port.we.eq(we),
                        port.wdata.eq(wdata),
                        rdata.eq(port.rdata),
                    ]
                    if self.widths[b] > 1:
                        m.d.comb += port.strb.eq(strb)
        return rdata

    def _width(self, m: Module, sel) -> Signal:
        w = Signal(range(self.max_width + 1))
        with m.Switch(sel):
            for b in isa.Buf:
                with m.Case(b):
                    m.d.comb += w.eq(self.widths[b])
        return w

    @staticmethod
    def _sides(v):
        """(external address, external stride, buffer address, buffer stride) of ``v``."""
        if isinstance(v, _LdView):
            return v.v.src, v.v.src_stride, v.v.dst, v.v.dst_stride
        return v.v.dst, v.v.dst_stride, v.v.src, v.v.src_stride

    def _times_bits(self, m: Module, v, count: Value) -> Value | None:
        """The external bits of ``count`` values of ``v``, or None when its values are
        bytes (ST)."""
        return None

    def _plan(self, m: Module, v):
        """(commands, values per command) of an instruction view: one span when both
        sides are contiguous (and packed rows end on whole bytes)."""
        _, es, _, bs = self._sides(v)
        same = (es == v.v.row_bytes) & (bs == v.v.row_bytes)
        packed = self._times_bits(m, v, v.v.row_bytes)
        if packed is not None:
            same = (es == (packed + 7) >> 3) & (bs == v.v.row_bytes) & (packed[:3] == 0)
        contig = (v.v.rows == 1) | same
        return Mux(contig, 1, v.v.rows), Mux(contig, v.v.rows * v.v.row_bytes, v.v.row_bytes)

    def _chunk(self, m: Module, ins, rem: Value, left: Value, width: Value):
        """This cycle's values: (``n``, bits ``adv`` they span, whether the next value
        also ends in this beat), for ``rem`` bits from ``q`` to the beat's end."""
        avail = rem >> 3
        n0, n = Signal(range(self.max_width + 1)), Signal(range(self.max_width + 1))
        m.d.comb += [n0.eq(Mux(width < avail, width, avail)), n.eq(Mux(left < n0, left, n0))]
        return n, n << 3, n < avail

    def _walker(self, m: Module, *, move: Signal):
        """Command side and value walk shared by LD and ST.

        Returns a dict of signals: ``busy``, the chunk ``n``/``q``/``ptr``/``beat_end``/
        ``last`` of the current cycle, ``ins`` and ``ncmd``. ``move`` is asserted by the
        caller in a cycle whose chunk is moved.
        """
        B, BB = self.beat, 8 * self.beat
        word = Signal.like(self.instr)
        now = self._view(self.instr)
        ins = self._view(word)
        e_now, _, b_now, _ = self._sides(now)
        _, es, _, bs = self._sides(ins)
        ncmd_now, seg_now = self._plan(m, now)
        ncmd, seg = self._plan(m, ins)
        E = isa.EXT_ADDR_BITS
        busy, cmd_on = Signal(), Signal()
        crow, drow = Signal(isa.DIM_BITS + 1), Signal(isa.DIM_BITS + 1)
        csrc, dsrc = Signal(E + 1), Signal(E + 1)
        ptr, base = Signal(isa.BUF_ADDR_BITS + 1), Signal(isa.BUF_ADDR_BITS + 1)
        left = Signal(isa.DIM_BITS + isa.ROW_BYTES_BITS + 1)
        q = Signal(range(2 * BB))
        # --- command side: one burst per segment, one command per cycle --------------------
        off = csrc[: self.lw]
        aligned = Cat(Const(0, self.lw), csrc[self.lw : E])
        seg_bits = self._times_bits(m, ins, seg)
        ext_bytes = seg if seg_bits is None else (seg_bits + 7) >> 3
        beats = (off + ext_bytes + (B - 1)) >> self.lw
        with m.If(cmd_on):
            m.d.comb += [
                self.mem.cmd_valid.eq(1),
                self.mem.cmd_addr.eq(aligned),
                self.mem.cmd_beats.eq(beats[:BEATS_BITS]),
            ]
            with m.If(self.mem.cmd_ready):
                m.d.sync += [crow.eq(crow + 1), csrc.eq(csrc + es)]
                with m.If(crow == ncmd - 1):
                    m.d.sync += cmd_on.eq(0)
        # --- data side: up to `width` values of this beat per cycle -------------------------
        rem = Signal(range(BB + 8))  # bits from q to the end of the current beat
        m.d.comb += rem.eq(2 * BB - q)
        n, adv, more = self._chunk(m, ins, rem, left, self._width(m, ins.v.buf))
        seg_end = n == left
        beat_end = ~more | seg_end
        last = seg_end & (drow == ncmd - 1)
        with m.If(busy & move):
            m.d.sync += [
                ptr.eq(ptr + n),
                left.eq(left - n),
                q.eq(Mux(beat_end, q + adv - BB, q + adv)),
            ]
            with m.If(seg_end):
                nxt = dsrc + es
                m.d.sync += [
                    drow.eq(drow + 1),
                    dsrc.eq(nxt),
                    q.eq(BB + Cat(Const(0, 3), nxt[: self.lw])),
                    base.eq(base + bs),
                    ptr.eq(base + bs),
                    left.eq(seg),
                ]
                with m.If(last):
                    m.d.sync += busy.eq(0)
        with m.If(self.start):
            m.d.sync += [
                word.eq(self.instr),
                busy.eq(1),
                cmd_on.eq(1),
                crow.eq(0),
                drow.eq(0),
                csrc.eq(e_now),
                dsrc.eq(e_now),
                q.eq(BB + Cat(Const(0, 3), e_now[: self.lw])),
                ptr.eq(b_now),
                base.eq(b_now),
                left.eq(seg_now),
            ]
        return {
            "busy": busy,
            "n": n,
            "q": q,
            "ptr": ptr,
            "beat_end": beat_end,
            "last": last,
            "ins": ins,
            "ncmd": ncmd,
        }


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
    """LD: external memory -> buffer, widening packed 2/3/4-bit values when ``unpack``."""

    def __init__(self, arch: ArchConfig) -> None:
        super().__init__(
            arch,
            isa.Unit.LD,
            MemReadSignature(isa.EXT_ADDR_BITS, _beat_bytes(arch)),
            {b: ld_port_width(arch, b) for b in isa.Buf},
        )

    def _view(self, word):
        return _LdView(view(isa.LD, word))

    def _times_bits(self, m: Module, v, count: Value) -> Value:
        """``count * bits`` for the unpack width of ``v`` (``isa.Unpack.bits``): a
        multiplexer of constant multiples (shifts and adds, no multiplier)."""
        out = Signal(len(count) + 4)
        with m.Switch(v.v.unpack):
            for u in isa.Unpack:
                with m.Case(u):
                    terms = [count << b for b in range(4) if u.bits >> b & 1]
                    m.d.comb += out.eq(sum(terms[1:], terms[0]))
        return out

    def _chunk(self, m: Module, ins, rem: Value, left: Value, width: Value):
        """Per unpack width ``k``: ``n = min(left, width, rem // k)`` (a thermometer of
        constant comparisons, no divider), the ``n * k`` bits they span, and whether one
        more value ends in this beat."""
        n_fit = Signal(range(self.max_width + 1))
        n = Signal(range(self.max_width + 1))
        adv = Signal(range(8 * self.max_width + 1))
        more = Signal()
        with m.Switch(ins.v.unpack):
            for u in isa.Unpack:
                k = u.bits
                with m.Case(u):
                    top = min(self.max_width, formats.lowbit_values_per_burst(self.beat, k))
                    for i in range(1, top + 1):
                        with m.If((rem >= i * k) & (width >= i)):
                            m.d.comb += n_fit.eq(i)
        m.d.comb += n.eq(Mux(left < n_fit, left, n_fit))
        with m.Switch(ins.v.unpack):
            for u in isa.Unpack:
                with m.Case(u):
                    m.d.comb += [adv.eq(n * u.bits), more.eq(rem >= adv + u.bits)]
        return n, adv, more

    def elaborate(self, platform) -> Module:
        m = Module()
        move = Signal()
        w = self._walker(m, move=move)
        busy, n, q, ins = w["busy"], w["n"], w["q"], w["ins"]
        W, BB = self.max_width, 8 * self.beat
        m.d.comb += move.eq(self.mem.data_valid)
        prev = Signal(BB)  # the previous beat: the low bits of a value split over two beats
        with m.If(self.mem.data_valid & self.mem.data_ready):
            m.d.sync += prev.eq(self.mem.data)
        window = Signal(2 * BB)
        m.d.comb += window.eq(Cat(prev, self.mem.data) >> q)
        wdata = Signal(8 * W)
        with m.Switch(ins.v.unpack):
            for u in isa.Unpack:
                k = u.bits
                with m.Case(u):
                    for i in range(min(W, 2 * BB // k)):
                        v = window[i * k : (i + 1) * k]
                        m.d.comb += wdata.word_select(i, 8).eq(
                            v if k == 8 else Cat(v, v[k - 1].replicate(8 - k))
                        )
        with m.If(busy & self.mem.data_valid):
            self._buf(m, ins.v.buf, req=1, addr=w["ptr"], we=1, wdata=wdata, strb=_mask(n, W))
            m.d.comb += self.mem.data_ready.eq(w["beat_end"])
            with m.If(w["last"]):
                m.d.comb += self.done.eq(1)
        return m


class StoreUnit(_Transfer):
    """ST: buffer -> external memory, partial beats strobed; done at the last write
    response."""

    def __init__(self, arch: ArchConfig) -> None:
        super().__init__(
            arch,
            isa.Unit.ST,
            MemWriteSignature(isa.EXT_ADDR_BITS, _beat_bytes(arch)),
            {b: port_width(arch, b) for b in isa.Buf},
        )

    def _view(self, word):
        return _StView(view(isa.ST, word))

    def elaborate(self, platform) -> Module:
        m = Module()
        B = self.beat
        move = Signal()
        w = self._walker(m, move=move)
        busy, n = w["busy"], w["n"]
        cur = w["q"][3 : 3 + self.lw]  # byte of the beat (q is in the current beat for bytes)
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
                m.d.comb += [
                    self.mem.data_valid.eq(1),
                    self.mem.data.eq(merged),
                    self.mem.strb.eq(mstrb),
                ]
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
