"""The SFU unit: hands each MISC instruction to the lane-parallel pipeline that runs it.

Four pipelines (:class:`.elementwise.ElementStream`, :class:`.rope.RopeStream`,
:class:`.softmax.SoftmaxStream`, :class:`.norm.NormStream`) each own their buffer ports
and share the unit's ``sfu.lanes`` arithmetic datapaths (:class:`.lane.SfuLane`, one per
lane), so the unit latches the instruction, starts the right pipeline one cycle later,
gives the lanes that pipeline's operands and reports its ``done``. The core gives every port the unit lists (:meth:`port_widths`,
:meth:`ports`) a port of its own on the buffer.
"""

from __future__ import annotations

from amaranth import Module, Mux, Signal, Value
from amaranth.lib import wiring
from amaranth.lib.wiring import In, Out

from flightforge import isa
from flightforge.arch import ArchConfig

from ..decode import unit_members, view
from .common import StreamComponent
from .elementwise import ElementStream
from .lane import LaneSignature, SfuLane
from .norm import NormStream
from .rope import RopeStream
from .softmax import SoftmaxStream

#: The SFU's buffers: operands and results on ACT, parameters and tables on GLB.
SFU_BUFFERS = (isa.Buf.ACT, isa.Buf.GLB)


def _mux_tree(sel: Value, values: list) -> Value:
    """``values[sel]`` as a binary tree of 2:1 multiplexers on the bits of ``sel`` (a
    4:1 multiplexer, one LUT6 a bit, for the four pipelines)."""
    for bit in range(len(sel)):
        values = [
            Mux(sel[bit], values[i + 1], values[i]) if i + 1 < len(values) else values[i]
            for i in range(0, len(values), 2)
        ]
    return values[0]


class SpecialFunctionUnit(wiring.Component):
    """MISC unit; one buffer port (``buf_act_s0``, ``buf_glb_s0``, ...) per pipeline port."""

    def __init__(self, arch: ArchConfig) -> None:
        self.arch = arch
        self.streams: dict[str, StreamComponent] = {
            "elementwise": ElementStream(arch),
            "rope": RopeStream(arch),
            "softmax": SoftmaxStream(arch),
            "norm": NormStream(arch),
        }
        covered = [op for s in self.streams.values() for op in s.OPS]
        assert sorted(covered) == sorted(isa.MiscOp), "every MiscOp needs exactly one pipeline"
        self._inner = {
            b: [p for s in self.streams.values() for p in s.buffer_ports(b)] for b in SFU_BUFFERS
        }
        super().__init__(
            {
                **unit_members(isa.Unit.SFU),
                **{
                    f"buf_{b.name.lower()}_s{i}": Out(p.signature)
                    for b, ports in self._inner.items()
                    for i, p in enumerate(ports)
                },
            }
        )

    def ports(self, buf: isa.Buf) -> list:
        """The unit's ports on ``buf``, in a fixed order."""
        return [
            getattr(self, f"buf_{buf.name.lower()}_s{i}")
            for i in range(len(self._inner.get(buf, [])))
        ]

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
        # One arithmetic datapath per lane, its operands from the pipeline that runs the
        # instruction (`which`, set with `word` at start), its results to every pipeline.
        which = Signal(range(len(self.streams)))
        streams = list(self.streams.values())
        members = LaneSignature().members
        for j in range(self.arch.sfu.lanes):
            m.submodules[f"lane{j}"] = lane = SfuLane()
            for name, member in members.items():
                if member.flow == In:
                    for stream in streams:
                        m.d.comb += getattr(stream.lane(j), name).eq(getattr(lane, name))
                else:
                    m.d.comb += getattr(lane, name).eq(
                        _mux_tree(which, [getattr(s.lane(j), name) for s in streams])
                    )
        with m.FSM():
            with m.State("IDLE"):
                with m.If(self.start):
                    m.d.sync += word.eq(self.instr)
                    start_op = view(isa.MISC, self.instr).op
                    for i, stream in enumerate(streams):
                        with m.If(start_op.matches(*stream.OPS)):
                            m.d.sync += which.eq(i)
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
