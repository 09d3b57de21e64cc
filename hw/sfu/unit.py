"""The SFU unit: hands each MISC instruction to the lane-parallel pipeline that runs it.

Four pipelines (:class:`.elementwise.ElementStream`, :class:`.rope.RopeStream`,
:class:`.softmax.SoftmaxStream`, :class:`.norm.NormStream`) each own their buffer ports,
so the unit only latches the instruction, starts the right pipeline one cycle later and
reports its ``done``. The core gives every port the unit lists (:meth:`port_widths`,
:meth:`ports`) a port of its own on the buffer.
"""

from __future__ import annotations

from amaranth import Module, Signal
from amaranth.lib import wiring
from amaranth.lib.wiring import Out

from flightforge import isa
from flightforge.arch import ArchConfig

from ..decode import unit_members, view
from .common import StreamComponent
from .elementwise import ElementStream
from .norm import NormStream
from .rope import RopeStream
from .softmax import SoftmaxStream

#: The SFU's buffers: operands and results on ACT, parameters and tables on GLB.
SFU_BUFFERS = (isa.Buf.ACT, isa.Buf.GLB)


class SpecialFunctionUnit(wiring.Component):
    """MISC unit; one buffer port (``buf_act_s0``, ``buf_glb_s0``, ...) per pipeline port."""

    def __init__(self, arch: ArchConfig) -> None:
        self.arch = arch
        self.streams: dict[str, StreamComponent] = {
            "elementwise": ElementStream(arch), "rope": RopeStream(arch),
            "softmax": SoftmaxStream(arch), "norm": NormStream(arch)}
        covered = [op for s in self.streams.values() for op in s.OPS]
        assert sorted(covered) == sorted(isa.MiscOp), "every MiscOp needs exactly one pipeline"
        self._inner = {b: [p for s in self.streams.values() for p in s.buffer_ports(b)]
                       for b in SFU_BUFFERS}
        super().__init__({**unit_members(isa.Unit.SFU), **{
            f"buf_{b.name.lower()}_s{i}": Out(p.signature)
            for b, ports in self._inner.items() for i, p in enumerate(ports)}})

    def ports(self, buf: isa.Buf) -> list:
        """The unit's ports on ``buf``, in a fixed order."""
        return [getattr(self, f"buf_{buf.name.lower()}_s{i}")
                for i in range(len(self._inner.get(buf, [])))]

    def port_widths(self, buf: isa.Buf) -> list[int]:
        """Byte widths of :meth:`ports`."""
        return [len(p.wdata) // 8 for p in self._inner.get(buf, [])]

    def elaborate(self, platform) -> Module:
        m = Module()
        word = Signal.like(self.instr)
        ins = view(isa.MISC, word)
        for name, stream in self.streams.items():
            m.submodules[name] = stream
            for fname, _ in isa.MISC.field_specs():
                m.d.comb += stream.instr[fname].eq(ins[fname])
        for b, inner in self._inner.items():
            for outer, port in zip(self.ports(b), inner):
                wiring.connect(m, port, wiring.flipped(outer))
        with m.FSM():
            with m.State("IDLE"):
                with m.If(self.start):
                    m.d.sync += word.eq(self.instr)
                    m.next = "GO"
            with m.State("GO"):
                for stream in self.streams.values():
                    with m.If(ins.op.matches(*stream.OPS)):
                        m.d.comb += stream.start.eq(1)
                m.next = "RUN"
            with m.State("RUN"):
                with m.If(sum(s.done for s in self.streams.values()) != 0):
                    m.d.comb += self.done.eq(1)
                    m.next = "IDLE"
        return m
