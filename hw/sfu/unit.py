"""The SFU unit: hands each MISC instruction to the lane-parallel pipeline that runs it.

Four pipelines (:class:`.elementwise.ElementStream`, :class:`.rope.RopeStream`,
:class:`.softmax.SoftmaxStream`, :class:`.norm.NormStream`) share the unit's
``sfu.lanes`` arithmetic datapaths (:class:`.lane.SfuLane`, one per lane) and its buffer
ports, so the unit latches the instruction, starts the right pipeline one cycle later,
gives the lanes and the ports that pipeline's operands and requests, and reports its
``done``. One MISC instruction runs at a time, so the pipelines' ports are never busy
together: slot ``i`` of the unit's read (or write) ports on a buffer serves the ``i``-th
read (or write) port of every pipeline (as wide as the widest of them), chosen by the
same pipeline index as the lanes; read data go to every pipeline. The core gives every
port the unit lists (:meth:`port_widths`, :meth:`ports`) a port on the buffer.
"""

from __future__ import annotations

from amaranth import Const, Module, Mux, Signal, Value
from amaranth.lib import wiring
from amaranth.lib.wiring import In, Out

from flightforge import isa
from flightforge.arch import ArchConfig

from ..buffers import addr_bits
from ..bus import BufPortSignature
from ..decode import unit_members, view
from .common import StreamComponent
from .elementwise import ElementStream
from .lane import LaneSignature, SfuLane
from .norm import NormStream
from .rope import RopeStream
from .softmax import SoftmaxStream

#: The SFU's buffers: operands and results on ACT, parameters and tables on GLB.
SFU_BUFFERS = (isa.Buf.ACT, isa.Buf.GLB)
#: A buffer's two sides, as the pipelines' port groups name them (``write``).
SIDES = (False, True)


def _slot_name(buf: isa.Buf, write: bool, i: int) -> str:
    return f"buf_{buf.name.lower()}_{'w' if write else 'r'}{i}"


def _mux_tree(sel: Value, values: list) -> Value:
    """``values[sel]`` as a binary tree of 2:1 multiplexers on the bits of ``sel`` (a
    4:1 multiplexer, one LUT6 a bit, for the four pipelines)."""
    for bit in range(len(sel)):
        values = [
            Mux(sel[bit], values[i + 1], values[i]) if i + 1 < len(values) else values[i]
            for i in range(0, len(values), 2)
        ]
    return values[0]


def _slot_widths(per_pipeline: list[list]) -> list[int]:
    """Widths of the shared port slots: slot ``i`` is as wide as the widest ``i``-th port
    of any pipeline."""
    slots = max((len(ports) for ports in per_pipeline), default=0)
    return [
        max(len(ports[i].wdata) // 8 for ports in per_pipeline if i < len(ports))
        for i in range(slots)
    ]


class SpecialFunctionUnit(wiring.Component):
    """MISC unit; shared buffer ports ``buf_act_r0``, ``buf_act_w0``, ``buf_glb_r0``, ...:
    slot ``i`` of a buffer's read (``r``) or write (``w``) side serves the ``i``-th port
    on that side of every pipeline."""

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
        #: per (buffer, side), per pipeline: its ports on that side, in slot order
        self._inner = {
            (b, w): [s.buffer_ports(b, write=w) for s in self.streams.values()]
            for b in SFU_BUFFERS
            for w in SIDES
        }
        #: per (buffer, side): the byte width of each shared slot (its widest pipeline port)
        self._slots = {key: _slot_widths(inner) for key, inner in self._inner.items()}
        super().__init__(
            {
                **unit_members(isa.Unit.SFU),
                **{
                    _slot_name(b, w, i): Out(
                        BufPortSignature(addr_bits(arch.buffers.of(b).size), width)
                    )
                    for (b, w), widths in self._slots.items()
                    for i, width in enumerate(widths)
                },
            }
        )

    def ports(self, buf: isa.Buf) -> list:
        """The unit's ports on ``buf``, in a fixed order: its read ports, then its write
        ports."""
        return [
            getattr(self, _slot_name(buf, w, i))
            for w in SIDES
            for i in range(len(self._slots.get((buf, w), [])))
        ]

    def port_widths(self, buf: isa.Buf) -> list[int]:
        """Byte widths of :meth:`ports`."""
        return [x for w in SIDES for x in self._slots.get((buf, w), [])]

    def _share_ports(self, m: Module, which: Value) -> None:
        """Drive each slot from pipeline ``which``'s port in it (zero-extended), and give
        every pipeline's port the slot's read data and grant."""
        for (b, w), inner in self._inner.items():
            for i in range(len(self._slots[b, w])):
                outer = getattr(self, _slot_name(b, w, i))
                users = [(k, ports[i]) for k, ports in enumerate(inner) if i < len(ports)]
                for _, p in users:
                    m.d.comb += [
                        p.rdata.eq(outer.rdata[: len(p.rdata)]),
                        p.grant.eq(outer.grant),
                    ]
                names = ["req", "we", "addr", "wdata"] + (
                    ["strb"] if hasattr(outer, "strb") else []
                )
                for name in names:
                    by_pipe = [Const(0, len(getattr(outer, name)))] * len(self.streams)
                    for k, p in users:
                        by_pipe[k] = getattr(p, name) if hasattr(p, name) else Const(1, 1)
                    m.d.comb += getattr(outer, name).eq(_mux_tree(which, by_pipe))

    def elaborate(self, platform) -> Module:
        m = Module()
        word = Signal.like(self.instr)
        ins = view(isa.MISC, word)
        for name, stream in self.streams.items():
            m.submodules[name] = stream
            for fname, _ in isa.MISC.field_specs():
                m.d.comb += stream.instr[fname].eq(ins[fname])
        # One arithmetic datapath per lane and one set of buffer ports, their operands and
        # requests from the pipeline that runs the instruction (`which`, set with `word`
        # at start), their results and read data to every pipeline.
        which = Signal(range(len(self.streams)))
        self._share_ports(m, which)
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
