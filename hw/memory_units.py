"""LD and ST: 2D transfers between external memory and the on-chip buffers.

Both walk ``rows`` rows; each row is one burst covering the row's bytes (the first
and last beat may be partial: the address is rounded down to a beat, and ST writes
with byte strobes). Buffer bytes move one per cycle through the buffers' byte ports.
The external bus is described in :mod:`flightforge.hw.bus`.
"""

from __future__ import annotations

from amaranth import Cat, Const, Module, Signal
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


def _buffer_ports(arch: ArchConfig) -> dict[str, wiring.Member]:
    return {f"buf_{b.name.lower()}": Out(BufPortSignature(addr_bits(arch.buffers.of(b).size)))
            for b in isa.Buf}


class _Transfer(wiring.Component):
    """Row walking shared by LD and ST: ``ext`` is the external side, ``buf`` the buffer."""

    def __init__(self, arch: ArchConfig, unit: isa.Unit, bus: wiring.Signature) -> None:
        self.arch = arch
        self.beat = _beat_bytes(arch)
        self.lw = self.beat.bit_length() - 1
        super().__init__({**unit_members(unit), "mem": Out(bus), **_buffer_ports(arch)})

    def _buf(self, m: Module, sel, *, req, addr, we=0, wdata=0):
        """Drive the byte port of buffer ``sel``; returns (grant, rdata) of that buffer."""
        grant, rdata = Signal(), Signal(8)
        with m.Switch(sel):
            for b in isa.Buf:
                port = getattr(self, f"buf_{b.name.lower()}")
                with m.Case(b):
                    m.d.comb += [port.req.eq(req), port.addr.eq(addr), port.we.eq(we),
                                 port.wdata.eq(wdata), grant.eq(port.grant),
                                 rdata.eq(port.rdata)]
        return grant, rdata

    def _burst(self, ext_addr, row_bytes):
        """(beat-aligned address, beats, first byte lane) of one row."""
        off = ext_addr[:self.lw] if self.lw else Const(0, 1)
        aligned = Cat(Const(0, self.lw), ext_addr[self.lw:]) if self.lw else ext_addr
        beats = (off + row_bytes + (self.beat - 1)) >> self.lw
        return aligned, beats[:BEATS_BITS], off


class LoadUnit(_Transfer):
    """LD: external memory -> buffer, one burst per row."""

    def __init__(self, arch: ArchConfig) -> None:
        super().__init__(arch, isa.Unit.LD, MemReadSignature(isa.EXT_ADDR_BITS, _beat_bytes(arch)))

    def elaborate(self, platform) -> Module:
        m = Module()
        word = Signal.like(self.instr)
        ins = view(isa.LD, word)
        row = Signal(isa.DIM_BITS)
        src = Signal(isa.EXT_ADDR_BITS + 1)
        dst = Signal(isa.BUF_ADDR_BITS + 1)
        ptr = Signal(isa.BUF_ADDR_BITS)
        left = Signal(isa.ROW_BYTES_BITS + 1)
        lane = Signal(max(1, self.lw))
        beat = Signal(8 * self.beat)
        aligned, beats, off = self._burst(src[:isa.EXT_ADDR_BITS], ins.row_bytes)
        with m.FSM():
            with m.State("IDLE"):
                with m.If(self.start):
                    m.d.sync += word.eq(self.instr)
                    m.next = "INIT"
            with m.State("INIT"):
                m.d.sync += [row.eq(0), src.eq(ins.src), dst.eq(ins.dst)]
                m.next = "CMD"
            with m.State("CMD"):
                m.d.comb += [self.mem.cmd_valid.eq(1), self.mem.cmd_addr.eq(aligned),
                             self.mem.cmd_beats.eq(beats)]
                with m.If(self.mem.cmd_ready):
                    m.d.sync += [lane.eq(off), left.eq(ins.row_bytes), ptr.eq(dst)]
                    m.next = "BEAT"
            with m.State("BEAT"):
                m.d.comb += self.mem.data_ready.eq(1)
                with m.If(self.mem.data_valid):
                    m.d.sync += beat.eq(self.mem.data)
                    m.next = "WRITE"
            with m.State("WRITE"):
                grant, _ = self._buf(m, ins.buf, req=1, addr=ptr, we=1,
                                     wdata=beat.word_select(lane, 8))
                with m.If(grant):
                    m.d.sync += [ptr.eq(ptr + 1), left.eq(left - 1), lane.eq(lane + 1)]
                    with m.If(left == 1):
                        m.next = "ROW"
                    with m.Elif(lane == self.beat - 1):
                        m.next = "BEAT"
            with m.State("ROW"):
                m.d.sync += [row.eq(row + 1), src.eq(src + ins.src_stride),
                             dst.eq(dst + ins.dst_stride)]
                with m.If(row == ins.rows - 1):
                    m.d.comb += self.done.eq(1)
                    m.next = "IDLE"
                with m.Else():
                    m.next = "CMD"
        return m


class StoreUnit(_Transfer):
    """ST: buffer -> external memory, one burst per row, partial beats strobed."""

    def __init__(self, arch: ArchConfig) -> None:
        super().__init__(arch, isa.Unit.ST, MemWriteSignature(isa.EXT_ADDR_BITS, _beat_bytes(arch)))

    def elaborate(self, platform) -> Module:
        m = Module()
        word = Signal.like(self.instr)
        ins = view(isa.ST, word)
        row = Signal(isa.DIM_BITS)
        src = Signal(isa.BUF_ADDR_BITS + 1)
        dst = Signal(isa.EXT_ADDR_BITS + 1)
        ptr = Signal(isa.BUF_ADDR_BITS)
        left = Signal(isa.ROW_BYTES_BITS + 1)
        lane = Signal(max(1, self.lw))
        beat = Signal(8 * self.beat)
        strb = Signal(self.beat)
        aligned, beats, off = self._burst(dst[:isa.EXT_ADDR_BITS], ins.row_bytes)
        m.d.comb += [self.mem.data.eq(beat), self.mem.strb.eq(strb)]
        with m.FSM():
            with m.State("IDLE"):
                self._buf(m, ins.buf, req=0, addr=ptr)
                with m.If(self.start):
                    m.d.sync += word.eq(self.instr)
                    m.next = "INIT"
            with m.State("INIT"):
                m.d.sync += [row.eq(0), src.eq(ins.src), dst.eq(ins.dst)]
                m.next = "CMD"
            with m.State("CMD"):
                m.d.comb += [self.mem.cmd_valid.eq(1), self.mem.cmd_addr.eq(aligned),
                             self.mem.cmd_beats.eq(beats)]
                with m.If(self.mem.cmd_ready):
                    m.d.sync += [lane.eq(off), left.eq(ins.row_bytes), ptr.eq(src),
                                 beat.eq(0), strb.eq(0)]
                    m.next = "READ"
            with m.State("READ"):
                grant, _ = self._buf(m, ins.buf, req=1, addr=ptr)
                with m.If(grant):
                    m.next = "LATCH"
            with m.State("LATCH"):
                _, rdata = self._buf(m, ins.buf, req=0, addr=ptr)
                m.d.sync += [beat.word_select(lane, 8).eq(rdata), strb.bit_select(lane, 1).eq(1),
                             ptr.eq(ptr + 1), left.eq(left - 1), lane.eq(lane + 1)]
                with m.If((left == 1) | (lane == self.beat - 1)):
                    m.next = "SEND"
                with m.Else():
                    m.next = "READ"
            with m.State("SEND"):
                m.d.comb += self.mem.data_valid.eq(1)
                with m.If(self.mem.data_ready):
                    m.d.sync += [beat.eq(0), strb.eq(0), lane.eq(0)]
                    with m.If(left == 0):
                        m.next = "ROW"
                    with m.Else():
                        m.next = "READ"
            with m.State("ROW"):
                m.d.sync += [row.eq(row + 1), src.eq(src + ins.src_stride),
                             dst.eq(dst + ins.dst_stride)]
                with m.If(row == ins.rows - 1):
                    m.d.comb += self.done.eq(1)
                    m.next = "IDLE"
                with m.Else():
                    m.next = "CMD"
        return m
