"""Shared pieces of the SFU's lane-parallel pipelines: instruction fields, the issue
schedule, buffer ports and element helpers.

Every pipeline (:mod:`.elementwise`, :mod:`.rope`, :mod:`.softmax`, :mod:`.norm`) moves
up to ``sfu.lanes`` elements a cycle on the byte-credit schedule ``Timing.misc`` counts
(:class:`ByteCredit`), through ports of its own on the ACT and GLB buffers
(:class:`StreamComponent` declares them; the unit connects them), and computes exactly
the integer arithmetic of :mod:`flightforge.numerics` on the lanes' shared datapaths
(:mod:`.lane`). Instruction fields arrive on
``instr``, a struct derived from :class:`flightforge.isa.MISC` that the unit holds
stable from ``start`` until ``done``.
"""

from __future__ import annotations

from dataclasses import dataclass

from amaranth import Const, Module, Mux, Signal, Value, unsigned
from amaranth.hdl import ValueCastable
from amaranth.lib import data, wiring
from amaranth.lib.wiring import In, Out

from flightforge import isa
from flightforge.arch import ArchConfig

from ..buffers import addr_bits
from ..bus import BufPortSignature
from .lane import LaneSignature

#: The fields of a decoded MISC instruction, with the widths isa.py gives them.
MiscFields = data.StructLayout(
    {name: unsigned(spec.width) for name, spec in isa.MISC.field_specs()}
)


@dataclass(frozen=True)
class PortGroup:
    """``count`` ports named ``{name}0``, ``{name}1``, ... of ``width`` bytes on ``buf``;
    ``width=None`` means the buffer's full port (``banks * width`` bytes)."""

    name: str
    buf: isa.Buf
    width: int | None
    count: int


class StreamComponent(wiring.Component):
    """A lane-parallel SFU pipeline: ``instr``/``start``/``done``, its buffer ports and
    ``lane0``, ``lane1``, ...: the operands it gives each lane's shared arithmetic
    (:class:`.lane.SfuLane`) and the results it gets back.

    ``done`` pulses when the last result is written, ``sfu.pipeline_depth`` cycles after
    the last issue counted from the unit's own ``start`` (which precedes the pipeline's
    by one cycle): the term ``Timing.misc`` adds per instruction.
    """

    #: the cycles from an issue to its write that every pipeline has (issue, arrive,
    #: compute, write) plus the unit's start cycle; ``pipeline_depth`` pads the rest
    MIN_DEPTH = 4

    def __init__(self, arch: ArchConfig, groups: list[PortGroup]) -> None:
        self.arch = arch
        self.lanes = arch.sfu.lanes
        act = arch.buffers.of(isa.Buf.ACT)
        self.P = act.banks * act.width
        if arch.sfu.pipeline_depth < self.MIN_DEPTH:
            raise ValueError(f"the SFU pipelines need sfu.pipeline_depth >= {self.MIN_DEPTH}")
        self.groups = groups
        members: dict[str, wiring.Member] = {
            "instr": In(MiscFields),
            "start": In(1),
            "done": Out(1),
        }
        for j in range(self.lanes):
            members[f"lane{j}"] = Out(LaneSignature())
        for g in groups:
            cfg = arch.buffers.of(g.buf)
            width = cfg.banks * cfg.width if g.width is None else g.width
            for j in range(g.count):
                members[f"{g.name}{j}"] = Out(BufPortSignature(addr_bits(cfg.size), width))
        super().__init__(members)

    def port(self, name: str, j: int = 0):
        return getattr(self, f"{name}{j}")

    def lane(self, j: int):
        return getattr(self, f"lane{j}")

    def buffer_ports(self, buf: isa.Buf) -> list:
        """This pipeline's ports on ``buf``, in a fixed order."""
        return [self.port(g.name, j) for g in self.groups if g.buf == buf for j in range(g.count)]

    def finish(self, m: Module, last_write: Value) -> None:
        """Drive ``done`` from the cycle of the last write (``MIN_DEPTH - 1`` after the
        unit's start of a one-element instruction), padded to ``sfu.pipeline_depth``."""
        m.d.comb += self.done.eq(
            delay(m, last_write, self.arch.sfu.pipeline_depth - self.MIN_DEPTH, "done")
        )


class ByteCredit:
    """The issue schedule of one pass over a row: in cycle ``t`` of the pass the elements
    up to ``min(cols, lanes * (t+1), floor(port * (t+1) / elem_bytes))`` are issued, so a
    pass takes ``max(ceil(cols / lanes), ceil(cols * elem_bytes / port))`` cycles.

    ``col`` counts the elements issued in the pass (the caller's register);
    ``issue`` is how many to issue this cycle. Call :meth:`advance` in cycles that issue
    and :meth:`restart` when a pass begins.
    """

    def __init__(
        self, m: Module, *, port: int, lanes: int, elem_bytes: Value, cols: Value, col: Signal
    ) -> None:
        self.q = Signal(isa.DIM_BITS + 8)  # floor(port * t / elem_bytes)
        self.r = Signal(5)  # port * t - q * elem_bytes
        x = self.r + port
        self.q_inc = sum(((x >= i * elem_bytes) for i in range(1, port // 2 + 2)), Const(0, 8))
        self.r_next = Signal(8)
        m.d.comb += self.r_next.eq(x - self.q_inc * elem_bytes)
        avail = Signal(isa.DIM_BITS + 9)
        m.d.comb += avail.eq(self.q + self.q_inc - col)
        left = cols - col
        lim = Mux(left < lanes, left, lanes)
        self.issue = Signal(range(lanes + 1))
        m.d.comb += self.issue.eq(Mux(avail < lim, avail, lim))
        #: this cycle issues the pass's last elements
        self.pass_end = col + self.issue >= cols

    def advance(self) -> list:
        return [self.q.eq(self.q + self.q_inc), self.r.eq(self.r_next)]

    def restart(self) -> list:
        return [self.q.eq(0), self.r.eq(0)]


def elem_bytes(*dts: Value) -> Value:
    """Bytes of one element of each of the types ``dts`` together (the credit per element)."""
    return sum((Const(1, 4) << dt for dt in dts), Const(0, 5))


def elem_addr(base: Value, stride: Value, row: Value, col: Value, dt: Value) -> Value:
    """Byte address of element ``(row, col)`` of a tile at ``base`` with row ``stride``."""
    return base + row * stride + (col << dt)


def sext(raw: Value, dt: Value) -> Value:
    """The element of type ``dt`` in the low bits of ``raw``, sign-extended."""
    out = raw[:32].as_signed()
    for d in reversed(list(isa.DType)[:-1]):
        out = Mux(dt == d, raw[: d.bits].as_signed(), out)
    return out


def strobe(dt: Value) -> Value:
    """Byte strobes of one element of type ``dt`` on a 4-byte port."""
    return ((Const(1, 5) << (Const(1, 4) << dt)) - 1)[:4]


def by_dtype(dt: Value, fn) -> Value:
    """``fn(d)`` (a constant) for the element type ``dt``; the widest type otherwise."""
    types = list(isa.DType)
    out = Const(fn(types[-1]))
    for d in types[:-1]:
        out = Mux(dt == d, fn(d), out)
    return out


def delay(m: Module, value: Value | ValueCastable, cycles: int, name: str) -> Value:
    """``value`` delayed by ``cycles`` registers (reset to 0) in the ``sync`` domain."""
    cur = Value.cast(value)
    for i in range(cycles):
        reg = Signal(cur.shape(), name=f"{name}_d{i + 1}")
        m.d.sync += reg.eq(cur)
        cur = reg
    return cur
