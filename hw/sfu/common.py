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

from amaranth import Cat, Const, Module, Mux, Signal, Value, unsigned
from amaranth.hdl import ValueCastable
from amaranth.lib import data, wiring
from amaranth.lib.wiring import In, Out

from flightforge import isa
from flightforge import sfu_row_ops as row_ops
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
    ``width=None`` means the buffer's full port (``banks * width`` bytes). ``write``: the
    ports write (their ``we`` is 1), else they read: the unit gives each side of a buffer
    its own shared ports (a buffer has one read side and one write side)."""

    name: str
    buf: isa.Buf
    width: int | None
    count: int
    write: bool = False


class StreamComponent(wiring.Component):
    """A lane-parallel SFU pipeline: ``instr``/``start``/``done``, its buffer ports and
    ``lane0``, ``lane1``, ...: the operands it gives each lane's shared arithmetic
    (:class:`.lane.SfuLane`) and the results it gets back.

    ``done`` pulses :func:`flightforge.sfu_row_ops.misc_depth` cycles after the last
    issue counted from the unit's own ``start`` (which precedes the pipeline's by one
    cycle): the term ``Timing.misc`` adds per instruction. A pipeline's own depth is
    ``MISC_OVERHEAD + compute`` (issue, arrive, ``compute`` cycles of arithmetic to the
    write, plus the unit's start cycle); ``sfu.pipeline_depth`` may pad it.
    """

    OPS: tuple[isa.MiscOp, ...] = ()

    def __init__(self, arch: ArchConfig, groups: list[PortGroup]) -> None:
        self.arch = arch
        self.lanes = arch.sfu.lanes
        act = arch.buffers.of(isa.Buf.ACT)
        self.P = act.banks * act.width
        #: per operation: cycles from an element's operands to its write
        #: (``sfu_row_ops.compute_cycles``)
        self.compute = {op: row_ops.compute_cycles(op, self.lanes) for op in self.OPS}
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

    def buffer_ports(self, buf: isa.Buf, write: bool | None = None) -> list:
        """This pipeline's ports on ``buf`` (only its write or only its read ports if
        ``write`` says which), in a fixed order."""
        return [
            self.port(g.name, j)
            for g in self.groups
            if g.buf == buf and write in (None, g.write)
            for j in range(g.count)
        ]

    def finish(self, m: Module, last_write: Value) -> None:
        """Drive ``done`` from the cycle of the last write (``MISC_OVERHEAD + compute - 1``
        after the unit's start of a one-element instruction), padded to ``misc_depth``
        (per operation, if the pads differ)."""
        pads = {
            op: row_ops.misc_depth(op, self.arch.sfu.pipeline_depth, self.lanes)
            - row_ops.MISC_OVERHEAD
            - c
            for op, c in self.compute.items()
        }
        done = Const(0, 1)
        for pad in sorted(set(pads.values())):
            ops = [op for op, p in pads.items() if p == pad]
            late = delay(m, last_write, pad, f"done{pad}")
            done = late if len(pads) == len(ops) else Mux(self.instr.op.matches(*ops), late, done)
        m.d.comb += self.done.eq(done)


#: The most bytes one element moves over its operands and result (ADD: ``a``, ``b``, ``d``).
MAX_ELEM_BYTES = 3 * max(d.nbytes for d in isa.DType)


class ByteCredit:
    """The issue schedule of one pass over a row: in cycle ``t`` of the pass the elements
    up to ``min(cols, lanes * (t+1), floor(port * (t+1) / elem_bytes))`` are issued, so a
    pass takes ``max(ceil(cols / lanes), ceil(cols * elem_bytes / port))`` cycles.

    Built shallow (a few LUT levels and short carry chains, not the pass's column
    counter): the port's credit for a cycle, ``floor((r + port) / elem_bytes)`` with
    ``r`` the bytes left over from earlier cycles, is a table of the few ``(elem_bytes,
    r)`` pairs; the unused credit is kept only up to ``lanes`` (more never changes the
    issue: a port that gives ``lanes`` elements a cycle or more issues ``lanes`` every
    cycle); and ``left``, the elements still to issue, is compared with at most
    ``lanes`` on its low bits.

    ``issue`` is how many elements may be issued this cycle; a caller issuing ``used``
    of them (``issue``, or fewer, e.g. ROPE's whole pairs) calls :meth:`advance` with it
    in cycles that may issue, and :meth:`restart` when a pass begins.
    """

    def __init__(self, m: Module, *, port: int, lanes: int, elem_bytes: Value, cols: Value):
        self.lanes, self.cols = lanes, cols
        self.lb = lanes.bit_length()  # bits of 0..lanes
        self.r = Signal(range(MAX_ELEM_BYTES))  # bytes of credit left over
        self.credit = Signal(range(lanes + 1))  # elements of credit unused, at most lanes
        self.left = Signal(isa.DIM_BITS + 1)  # elements of the pass not issued yet
        # the instruction is held from the pipeline's start, the first issue a cycle later
        eb = Signal.like(elem_bytes, name="eb_q")
        m.d.sync += eb.eq(elem_bytes)
        q_inc = Signal(range(lanes + 1))
        self.r_next = Signal.like(self.r)
        with m.Switch(eb):
            for e in range(1, MAX_ELEM_BYTES + 1):
                with m.Case(e):
                    with m.Switch(self.r):
                        for r in range(e):
                            with m.Case(r):
                                m.d.comb += [
                                    q_inc.eq(min((r + port) // e, lanes)),
                                    self.r_next.eq((r + port) % e),
                                ]
        self.avail = Signal(range(2 * lanes + 1))
        m.d.comb += self.avail.eq(self.credit + q_inc)
        small = (self.left[self.lb :] == 0) & (self.left[: self.lb] < lanes)
        lim = Mux(small, self.left[: self.lb], lanes)
        self.issue = Signal(range(lanes + 1))
        m.d.comb += self.issue.eq(Mux(self.avail < lim, self.avail, lim))
        #: this cycle issues the pass's last elements
        self.pass_end = self.ends(self.issue)
        self.m = m

    def ends(self, used: Value) -> Value:
        """Issuing ``used`` elements this cycle ends the pass."""
        return (self.left[self.lb :] == 0) & (self.left[: self.lb] == used)

    def count(self, counter: Value, used: Value, name: str) -> Value:
        """``counter + used`` (``used`` at most ``lanes``, e.g. the pass's column after this
        cycle's issue), as :func:`add_small`."""
        return add_small(self.m, counter, used, self.lanes, name)

    def advance(self, used: Value) -> list:
        rest = self.avail - used
        return [
            self.r.eq(self.r_next),
            self.credit.eq(Mux(rest > self.lanes, self.lanes, rest)),
            self.left.eq(add_small(self.m, self.left, used, self.lanes, "left", -1)),
        ]

    def restart(self) -> list:
        return [self.r.eq(0), self.credit.eq(0), self.left.eq(self.cols)]


def add_small(m: Module, x: Value, k: Value, kmax: int, name: str, sign: int = 1) -> Signal:
    """``x + sign * k`` for a small ``k`` (``0..kmax``) that is computed late in the cycle:
    ``x + sign * i`` for every ``i`` beside whatever computes ``k``, then ``k`` picks one,
    so the carry chain does not wait for ``k``."""
    out = Signal.like(x, name=f"{name}_next")
    with m.Switch(k):
        for i in range(kmax + 1):
            with m.Case(i):
                m.d.comb += out.eq(x + sign * i)
    return out


def elem_bytes(*dts: Value) -> Value:
    """Bytes of one element of each of the types ``dts`` together (the credit per element)."""
    return sum((Const(1, 4) << dt for dt in dts), Const(0, 5))


def addr_terms(base: Value, stride: Value, row: Value, col: Value, dt: Value) -> list:
    """The terms of the byte address of element ``(row, col)`` of a tile at ``base`` with
    row ``stride``, for :func:`staged_sum`."""
    return [base, row * stride, col << dt]


def csa_reduce(m: Module, terms: list, width: int, name: str) -> list:
    """Carry-save steps (one LUT level each) from ``terms`` down to two terms of the same
    sum modulo ``2**width``."""
    terms = [Value.cast(t) for t in terms]
    while len(terms) > 2:
        x, y, z, *rest = terms
        xs, ys, zs = (Signal(width, name=f"{name}_csa{len(terms)}_{k}") for k in range(3))
        m.d.comb += [xs.eq(x), ys.eq(y), zs.eq(z)]
        maj = (xs & ys) | (xs & zs) | (ys & zs)
        terms = [*rest, xs ^ ys ^ zs, Cat(0, maj[:-1])]
    return terms


def csa_sum(m: Module, terms: list, width: int, name: str) -> Value:
    """``sum(terms)`` modulo ``2**width``: :func:`csa_reduce`, then one carry chain."""
    return sum(csa_reduce(m, terms, width, name), Const(0, width))[:width]


def registered_csa(m: Module, terms: list, width: int, name: str) -> list:
    """:func:`csa_reduce` of ``terms`` into two registers (a cycle later): the carry chain
    that adds them goes into the next cycle's path instead of this one's."""
    out = []
    for k, t in enumerate(csa_reduce(m, terms, width, name)):
        r = Signal(width, name=f"{name}_q{k}")
        m.d.sync += r.eq(t)
        out.append(r)
    return out


def staged_sum(m: Module, terms: list, width: int, name: str) -> Signal:
    """``sum(terms)`` modulo ``2**width``, :data:`~flightforge.sfu_row_ops.ISSUE_STAGES`
    cycles later: every term registered (a product on its DSP48E2, a column's byte offset),
    then their sum (:func:`csa_sum`) registered. The pipelines' buffer addresses go this way
    instead of through a multiplier and two adders in the cycle that issues them."""
    assert row_ops.ISSUE_STAGES == 2
    regs = []
    for k, t in enumerate(terms):
        r = Signal(width, name=f"{name}_t{k}")
        m.d.sync += r.eq(t)
        regs.append(r)
    out = Signal(width, name=name)
    m.d.sync += out.eq(csa_sum(m, regs, width, name))
    return out


def issued(m: Module, value: Value, name: str) -> Value:
    """``value`` of an issue cycle in the cycle its request goes out (``ISSUE_STAGES``
    later, with the address from :func:`staged_sum`)."""
    return delay(m, value, row_ops.ISSUE_STAGES, name)


def arrived(m: Module, value: Value, name: str) -> Value:
    """``value`` of an issue cycle in the cycle its read data arrive."""
    return delay(m, value, row_ops.ISSUE_STAGES + 1, name)


def run_width(arch: ArchConfig) -> int:
    """Bytes of a pipeline's ACT run port (:func:`flightforge.sfu_row_ops.run_bytes`): the
    byte-credit schedule never issues more bytes of one operand in a cycle."""
    act = arch.buffers.of(isa.Buf.ACT)
    return row_ops.run_bytes(act.banks * act.width, arch.sfu.lanes)


def element(rdata: Value, j: int, dt: Value) -> Value:
    """Element ``j`` of type ``dt`` of a run read on ``rdata``, sign-extended: one fixed
    slice per type and a multiplexer on ``dt`` (not a shifter over the run)."""
    padded = Cat(rdata, Const(0, 32))
    types = list(isa.DType)
    out = padded[32 * j : 32 * j + 32].as_signed() if 32 * j < len(rdata) else Const(0, 32)
    for d in reversed(types[:-1]):
        lo = j * d.bits
        part = padded[lo : lo + d.bits].as_signed() if lo < len(rdata) else Const(0, d.bits)
        out = Mux(dt == d, part, out)
    return out


def pack_run(m: Module, values: list, valid: list, dt: Value, width: int, name: str) -> tuple:
    """``(wdata, strb)`` of a ``width``-byte write of ``values[j]`` of type ``dt`` at
    consecutive element slots, byte strobes on the elements whose ``valid[j]`` is set."""
    data_ = Signal(8 * width, name=f"{name}_wdata")
    strb = Signal(width, name=f"{name}_strb")
    with m.Switch(dt):
        for d in isa.DType:
            with m.Case(d):
                m.d.comb += [
                    data_.eq(Cat(*(v[: d.bits] for v in values))[: 8 * width]),
                    strb.eq(Cat(*(v.replicate(d.nbytes) for v in valid))[:width]),
                ]
    return data_, strb


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
