"""Shared pieces of the SFU operation components: ports, instruction fields, arithmetic.

Every operation component talks to the core through the same three element ports, so
the core's SFU wrapper (address generation, byte lanes, sign extension) is written once
and the operations stay free of buffer layouts:

- ``rd``: element reads of the first operand. The component drives ``en`` with an
  element coordinate ``(row, col)``; the wrapper returns the element, sign-extended to
  32 bits, on ``data`` exactly ``read_latency`` cycles later (a synchronous buffer
  read port has latency 1). There is no back-pressure: one read per cycle at most.
- ``prm``: element reads of the GLB parameters at an element index from ``p_addr``
  (the wrapper knows the element type: INT16 gains, biases and RoPE tables; ``d_dt``
  entries for SILU/GELU tables), with the same fixed latency.
- ``wr``: element writes of the result ``(row, col, data)``; ``data`` is already
  saturated to ``d_dt``, and the wrapper truncates it to the element type.

Instruction fields arrive on ``instr``, a struct derived from :class:`flightforge.isa.MISC`;
the core holds it stable from the ``start`` pulse until ``done``.
"""

from __future__ import annotations

from amaranth import Const, Module, Mux, Signal, Value, signed, unsigned
from amaranth.hdl import ValueCastable
from amaranth.lib import data, wiring
from amaranth.lib.wiring import In, Out

from flightforge import isa, numerics

#: Width of an element value on the ports: the widest :class:`~flightforge.isa.DType`.
ELEM_BITS = max(d.bits for d in isa.DType)
#: Width of a GLB element index: a byte address is never wider than the buffer space.
PRM_INDEX_BITS = isa.BUF_ADDR_BITS

#: The fields of a decoded MISC instruction, with the widths isa.py gives them.
MiscFields = data.StructLayout({name: unsigned(spec.width)
                                for name, spec in isa.MISC.field_specs()})


class ElemReadSignature(wiring.Signature):
    """A fixed-latency element read port (component side: ``Out``)."""

    def __init__(self) -> None:
        super().__init__({
            "en": Out(1),
            "row": Out(isa.DIM_BITS),
            "col": Out(isa.DIM_BITS),
            "data": In(signed(ELEM_BITS)),
        })


class ParamReadSignature(wiring.Signature):
    """A fixed-latency GLB element read port (component side: ``Out``)."""

    def __init__(self) -> None:
        super().__init__({
            "en": Out(1),
            "index": Out(PRM_INDEX_BITS),
            "data": In(signed(ELEM_BITS)),
        })


class ElemWriteSignature(wiring.Signature):
    """An element write port without back-pressure (component side: ``Out``)."""

    def __init__(self) -> None:
        super().__init__({
            "en": Out(1),
            "row": Out(isa.DIM_BITS),
            "col": Out(isa.DIM_BITS),
            "data": Out(signed(ELEM_BITS)),
        })


def op_signature(*, params: bool) -> dict[str, wiring.Member]:
    """Members every operation component has; ``params`` adds the GLB read port."""
    members = {
        "instr": In(MiscFields),
        "start": In(1),
        "busy": Out(1),
        "done": Out(1),
        "rd": Out(ElemReadSignature()),
        "wr": Out(ElemWriteSignature()),
    }
    if params:
        members["prm"] = Out(ParamReadSignature())
    return members


def check_latency(read_latency: object) -> int:
    """Validate the read latency of the element and parameter ports."""
    if isinstance(read_latency, bool) or not isinstance(read_latency, int):
        raise TypeError(f"read_latency must be an integer, not {read_latency!r}")
    if read_latency < 1:
        raise ValueError(f"read_latency must be at least 1, not {read_latency!r}")
    return read_latency


def rnd_shift(x: Value, s: Value | int) -> Value:
    """``numerics.rnd_shift``: round half up, ``floor((x + 2**(s-1)) / 2**s)``.

    Written as ``((x >> (s-1)) + 1) >> 1``, which is the same floor for ``s > 0`` and
    needs no wide rounding constant.
    """
    if isinstance(s, int):
        return x if s == 0 else ((x >> (s - 1)) + 1) >> 1
    s = Value.cast(s)
    return Mux(s == 0, x, ((x >> (s - 1)[:len(s)]) + 1) >> 1)


def clamp(x: Value, lo: int, hi: int) -> Value:
    return Mux(x < lo, lo, Mux(x > hi, hi, x))


def saturate(x: Value, dt: Value) -> Value:
    """``numerics.sat`` with the element type ``dt`` chosen at run time."""
    types = list(isa.DType)
    out = clamp(x, *numerics.dtype_range(types[-1]))
    for d in types[:-1]:
        out = Mux(dt == d, clamp(x, *numerics.dtype_range(d)), out)
    return out


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
