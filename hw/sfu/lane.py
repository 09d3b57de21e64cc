"""One SFU lane's arithmetic, shared by every pipeline.

Only one MISC instruction runs in the SFU at a time, so the pipelines
(:mod:`.elementwise`, :mod:`.rope`, :mod:`.softmax`, :mod:`.norm`) do not each keep
multipliers, rounding shifters and saturation per lane: the unit instantiates one
:class:`SfuLane` per lane and hands its operands to the pipeline that runs the
instruction (:class:`.unit.SpecialFunctionUnit`). A lane provides what the most demanding
pipeline needs in one cycle, two multiplies and two variable rounding shifts::

    p1     = a * b
    round1 = rnd(p1, shift1)
    p2     = (round1 if chain else c) * d
    w      = (p1 if acc else 0) + (-p2 if sub else p2)
    result = sat(rnd(w, shift2) + bias, dt)        (result_q: the same, one cycle later)

as each pipeline uses it (``numerics`` names):

============================  ==================================================
ADD / REQUANT, tables         ``a*m0 + b*m1`` (``c = d = 0`` without ``b``)
MUL                           ``(a*b) * m0``: the product chained into ``c``
ROPE, lanes ``2s``, ``2s+1``  ``x1*cos - x2*sin`` and ``x2*cos + x1*sin``
SOFTMAX                       ``rnd(d*m0, shift)`` (``round1``) of one element and
                              ``sat(rnd(e*recip, 38 - F))`` of the one issued a cycle
                              before it (two pipeline stages, one multiplier each)
RMSNORM / LAYERNORM           statistics ``x*x`` (``prod``); output
                              ``sat(rnd(rnd(xc*inv, 16) * gamma, shift) + beta)``
============================  ==================================================

The widths are those of the widest user of each operand, so every pipeline computes
exactly the integers it computed with its own arithmetic.
"""

from __future__ import annotations

from amaranth import Module, Mux, Signal, Value, signed, unsigned
from amaranth.lib import wiring
from amaranth.lib.wiring import In, Out

from flightforge import isa, numerics
from flightforge.sfu_row_ops import EXP_BITS, X_BITS

#: Width of an element value in the pipelines: the widest :class:`~flightforge.isa.DType`.
ELEM_BITS = max(d.bits for d in isa.DType)
#: ``a``: an element (ELEM_BITS, or the softmax's unsigned ``max - x``, one more bit) or
#: the norms' inverse root (``2**38 // r``, unsigned).
A_BITS = max(ELEM_BITS + 1, numerics.NORM_RSQRT_BITS + 2)
#: ``b``: a 16-bit multiplier (unsigned), ``cos``, a 16-bit operand or the centred norm
#: input ``x - mean``.
B_BITS = max(isa.MULT_BITS + 1, X_BITS + 2)
#: ``round1`` as the norms feed it on: ``rnd(xc * inv, 16)``.
T_BITS = (X_BITS + 2) + (numerics.NORM_RSQRT_BITS + 1) - numerics.NORM_T_SHIFT + 1
#: ``c``: an element, the softmax reciprocal (unsigned) or a chained ``round1``.
C_BITS = max(ELEM_BITS, numerics.SOFTMAX_RECIP_BITS + 2, T_BITS)
#: ``d``: a 16-bit multiplier (unsigned), ``sin``, ``gamma`` or an exponent (unsigned).
D_BITS = max(isa.MULT_BITS + 1, EXP_BITS + 1)
P1_BITS = A_BITS + B_BITS
P2_BITS = C_BITS + D_BITS
W_BITS = max(P1_BITS, P2_BITS) + 1
#: ``bias``: LAYERNORM's ``beta`` (INT16).
BIAS_BITS = 16


def rnd_shift(x: Value, s: Value | int) -> Value:
    """``numerics.rnd_shift``: round half up, ``floor((x + 2**(s-1)) / 2**s)``.

    Written as ``((x >> (s-1)) + 1) >> 1``, which is the same floor for ``s > 0`` and
    needs no wide rounding constant.
    """
    if isinstance(s, int):
        return x if s == 0 else ((x >> (s - 1)) + 1) >> 1
    s = Value.cast(s)
    return Mux(s == 0, x, ((x >> (s - 1)[: len(s)]) + 1) >> 1)


def clamp(x: Value, lo: int, hi: int) -> Value:
    return Mux(x < lo, lo, Mux(x > hi, hi, x))


def saturate(x: Value, dt: Value) -> Value:
    """``numerics.sat`` with the element type ``dt`` chosen at run time."""
    types = list(isa.DType)
    out = clamp(x, *numerics.dtype_range(types[-1]))
    for d in types[:-1]:
        out = Mux(dt == d, clamp(x, *numerics.dtype_range(d)), out)
    return out


class LaneSignature(wiring.Signature):
    """A pipeline's view of one lane: operands out, results in."""

    def __init__(self) -> None:
        super().__init__(
            {
                "a": Out(signed(A_BITS)),
                "b": Out(signed(B_BITS)),
                "c": Out(signed(C_BITS)),
                "d": Out(signed(D_BITS)),
                "chain": Out(1),
                "acc": Out(1),
                "sub": Out(1),
                "shift1": Out(unsigned(isa.SHIFT_BITS)),
                "shift2": Out(unsigned(isa.SHIFT_BITS)),
                "bias": Out(signed(BIAS_BITS)),
                "dt": Out(unsigned(2)),
                "prod": In(signed(P1_BITS)),
                "round1": In(signed(P1_BITS)),
                "result": In(signed(ELEM_BITS)),
                "result_q": In(signed(ELEM_BITS)),
            }
        )


class SfuLane(wiring.Component):
    """The multiply / add / round-shift / saturate datapath of one SFU lane
    (module docstring); combinational but for ``result_q``."""

    def __init__(self) -> None:
        super().__init__(LaneSignature().flip())

    def elaborate(self, platform) -> Module:
        m = Module()
        m.d.comb += [
            self.prod.eq(self.a * self.b),
            self.round1.eq(rnd_shift(self.prod, self.shift1)),
        ]
        p2 = Signal(signed(P2_BITS))
        m.d.comb += p2.eq(Mux(self.chain, self.round1[:C_BITS].as_signed(), self.c) * self.d)
        w = Signal(signed(W_BITS))
        m.d.comb += w.eq(Mux(self.acc, self.prod, 0) + Mux(self.sub, -p2, p2))
        m.d.comb += self.result.eq(saturate(rnd_shift(w, self.shift2) + self.bias, self.dt))
        m.d.sync += self.result_q.eq(self.result)
        return m
