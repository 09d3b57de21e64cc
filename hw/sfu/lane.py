"""One SFU lane's arithmetic, shared by every pipeline.

Only one MISC instruction runs in the SFU at a time, so the pipelines
(:mod:`.elementwise`, :mod:`.rope`, :mod:`.softmax`, :mod:`.norm`) do not each keep
multipliers, rounding shifters and saturation per lane: the unit instantiates one
:class:`SfuLane` per lane and hands its operands to the pipeline that runs the
instruction (:class:`.unit.SpecialFunctionUnit`). A lane provides what the most demanding
pipeline needs per element, two multiplies and two variable rounding shifts::

    p1     = a * b                                   (prod,   LANE_PROD cycles later)
    round1 = rnd(p1, shift1)                         (round1, LANE_ROUND1 cycles later)
    p2     = (round1 if chain else c) * d
    w      = (p1 if acc else 0) + (-p2 if sub else p2)
    result = sat(rnd(w, shift2) + bias, dt)          (result, LANE_LATENCY cycles later)

It is a pipeline (:data:`flightforge.sfu_row_ops.LANE_STAGES`) taking one set of
operands a cycle, every operand sampled in the same cycle; a pipeline that needs the
second half for another element than the first (SOFTMAX) just gives ``c`` and ``d`` of
that element with ``a`` and ``b`` of a later one. As each pipeline uses it
(``numerics`` names):

============================  ==================================================
ADD / REQUANT, tables         ``a*m0 + b*m1`` (``c = d = 0`` without ``b``)
MUL                           ``(a*b) * m0``: the product chained into ``c``
ROPE, lanes ``2s``, ``2s+1``  ``x1*cos - x2*sin`` and ``x2*cos + x1*sin``
SOFTMAX                       ``rnd(d*m0, shift)`` (``round1``) of one element and
                              ``sat(rnd(e*recip, 38 - F))`` of one issued
                              earlier (its ``e`` is known only after ``round1``)
RMSNORM / LAYERNORM           statistics ``x*x`` (``prod``); output
                              ``sat(rnd(rnd(xc*inv, 16) * gamma, shift) + beta)``
============================  ==================================================

The widths are those of the widest user of each operand, so every pipeline computes
exactly the integers it computed with its own arithmetic.
"""

from __future__ import annotations

from amaranth import Cat, Const, Module, Mux, Signal, Value, signed, unsigned
from amaranth.lib import wiring
from amaranth.lib.wiring import In, Out

from flightforge import isa, numerics
from flightforge.sfu_row_ops import EXP_BITS, LANE_LATENCY, LANE_STAGES, X_BITS

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
#: ``round1`` as its users take it: the softmax's ``t`` and a chained ``c``.
ROUND1_BITS = max(C_BITS, ELEM_BITS + isa.MULT_BITS)
#: ``v = w + 2**(shift2-1)``, ``shift2`` clamped to ``W_BITS``: one bit more than ``w``.
V_BITS = W_BITS + 1
#: ``v >> shift2`` is kept to these bits: a value that does not fit them saturates
#: whatever ``bias`` is added (``|bias| < 2**15``), one that does is exact with it.
X_KEEP = max(ELEM_BITS, BIAS_BITS) + 2
#: Products are split at this bit of their wide operand: a 26-bit unsigned low part
#: (27-bit signed, a DSP48E2's A port) and a signed high part, each times an 18-bit B.
MUL_SPLIT = 26
#: The longest carry chain of one lane stage (8 CARRY4 / 4 CARRY8).
ADD_CHUNK = 32
#: Control operands that travel down the pipeline with the data.
_CONTROL = ("chain", "acc", "sub", "shift1", "shift2", "bias", "dt")


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
    """A pipeline's view of one lane: operands out, results in (``prod``, ``round1`` and
    ``result`` :data:`~flightforge.sfu_row_ops.LANE_PROD`, ``LANE_ROUND1`` and
    ``LANE_LATENCY`` cycles after the operands they come from)."""

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
                "round1": In(signed(ROUND1_BITS)),
                "result": In(signed(ELEM_BITS)),
            }
        )


def all_equal(bits: Value) -> Value:
    """All bits of ``bits`` are equal (a reduction tree, no carry chain)."""
    return bits.all() | ~bits.any()


def saturate_bits(x: Value, dt: Value) -> Value:
    """``numerics.sat`` of the signed ``x`` to the element type ``dt``, tested on ``x``'s top
    bits (``x`` fits ``n`` bits iff its bits ``n-1`` and up are equal): a few LUT levels
    where a compare with the range's limits is a carry chain as wide as ``x``."""
    out = x
    for d in isa.DType:
        if d.bits >= len(x):
            continue
        lo, hi = numerics.dtype_range(d)
        fits = all_equal(x[d.bits - 1 :])
        out = Mux((dt == d) & ~fits, Mux(x[-1], lo, hi), out)
    return out


class _Stages:
    """The lane's registers, stage by stage in the order of
    :data:`flightforge.sfu_row_ops.LANE_STAGES` (checked as they are built, so the
    latencies the cycle model and the pipelines use are this pipeline's)."""

    def __init__(self, m: Module) -> None:
        self.m, self.done = m, 0

    def stage(self, name: str) -> None:
        want = LANE_STAGES[self.done]
        assert name == want, f"lane stage {self.done + 1} is {want!r}, not {name!r}"
        self.done += 1

    def reg(self, value: Value | int, shape, name: str) -> Signal:
        r = Signal(shape, name=f"{name}_s{self.done}", reset_less=True)
        self.m.d.sync += r.eq(value)
        return r


def carry_select_add(
    m: Module, x: Value, y: Value, width: int, name: str, cin: Value | int = 0
) -> Signal:
    """``x + y + cin`` modulo ``2**width`` (both sign-extended) in carry-select chunks of
    :data:`ADD_CHUNK` bits: each chunk's carry chain is computed for both carries in and
    the lower chunk's carry picks one, so the path is one chunk's chain and a multiplexer
    per further chunk instead of a chain ``width`` bits long."""
    xs, ys = Signal(width, name=f"{name}_x"), Signal(width, name=f"{name}_y")
    m.d.comb += [xs.eq(x), ys.eq(y)]
    parts, carry = [], None
    for lo in range(0, width, ADD_CHUNK):
        hi = min(lo + ADD_CHUNK, width)
        n = hi - lo
        # Cat(c, x) + Cat(c, y) = 2 * (x + y + c): one chain with carry-in c
        s0 = Signal(n + 2, name=f"{name}_c0_{lo}")
        c = cin if carry is None else 0
        m.d.comb += s0.eq(Cat(c, xs[lo:hi]) + Cat(c, ys[lo:hi]))
        if carry is None:
            parts.append(s0[1 : n + 1])
            carry = s0[n + 1]
            continue
        s1 = Signal(n + 2, name=f"{name}_c1_{lo}")
        m.d.comb += s1.eq(Cat(1, xs[lo:hi]) + Cat(1, ys[lo:hi]))
        parts.append(Mux(carry, s1[1 : n + 1], s0[1 : n + 1]))
        carry = Mux(carry, s1[n + 1], s0[n + 1])
    out = Signal(width, name=name)
    m.d.comb += out.eq(Cat(*parts))
    return out


def increment(m: Module, x: Value, inc: Value, name: str) -> Signal:
    """``x + inc`` (``inc`` one bit) modulo ``2**len(x)``: chunks of :data:`ADD_CHUNK` bits
    whose carries in are AND trees of the bits below, not a chain through them."""
    parts = []
    for lo in range(0, len(x), ADD_CHUNK):
        chunk = x[lo : min(lo + ADD_CHUNK, len(x))]
        cin = inc & (x[:lo].all() if lo else 1)
        part = Signal(len(chunk), name=f"{name}_{lo}")
        m.d.comb += part.eq(chunk + cin)
        parts.append(part)
    out = Signal(len(x), name=name)
    m.d.comb += out.eq(Cat(*parts))
    return out


def shift_right(x: Value, s: Value) -> Value:
    """``x >> s`` (arithmetic for a signed ``x``) as two rounds of 8:1 multiplexers, by
    ``8 * s[3:]`` and then by ``s[:3]`` (a LUT6 and a MUXF7 each), not the six rounds of
    2:1 multiplexers (MUXF chains) Yosys builds for a variable shift."""
    for lo in range(0, len(s), 3):
        sel = s[lo : lo + 3]
        x = _mux8(sel, [x >> (k << lo) for k in range(1 << len(sel))])
    return x


def _mux8(sel: Value, values: list[Value]) -> Value:
    """``values[sel]`` as a balanced tree of 2:1 multiplexers on the bits of ``sel``."""
    for bit in range(len(sel)):
        values = [Mux(sel[bit], values[i + 1], values[i]) for i in range(0, len(values), 2)]
    return values[0]


def split_mul(x: Value, y: Value) -> tuple[Value, Value]:
    """The two DSP48E2 products of ``x * y`` (``y`` at most 18 bits, signed): ``low`` of
    ``x``'s :data:`MUL_SPLIT` low bits (unsigned), ``high`` of the rest (signed), so
    ``x * y == (high << MUL_SPLIT) + low``; each fits a 27x18 multiplier."""
    return x[:MUL_SPLIT] * y, x[MUL_SPLIT:].as_signed() * y


class SfuLane(wiring.Component):
    """The multiply / add / round-shift / saturate datapath of one SFU lane (module
    docstring), pipelined over :data:`~flightforge.sfu_row_ops.LANE_STAGES`: every
    register-to-register step is one DSP48E2 (A/B and M registers), one carry chain of at
    most :data:`ADD_CHUNK` bits, one barrel shift or one saturation. One set of operands
    is taken every cycle; ``prod``, ``round1`` and ``result`` follow them
    ``LANE_PROD``, ``LANE_ROUND1`` and ``LANE_LATENCY`` cycles later."""

    def __init__(self) -> None:
        super().__init__(LaneSignature().flip())

    def elaborate(self, platform) -> Module:
        m = Module()
        st = _Stages(m)
        st.stage("operands")  # the DSPs' A/B registers
        a, b = st.reg(self.a, signed(A_BITS), "a"), st.reg(self.b, signed(B_BITS), "b")
        c, d = st.reg(self.c, signed(C_BITS), "c"), st.reg(self.d, signed(D_BITS), "d")
        ctl = {n: st.reg(getattr(self, n), getattr(self, n).shape(), n) for n in _CONTROL}
        # rnd(w, s) is 0 for any s >= W_BITS: clamp s2 so that the rounding bit stays in v
        s2 = Mux(ctl["shift2"] > W_BITS, W_BITS, ctl["shift2"])

        st.stage("products1")  # the DSPs' M registers
        lo, hi = split_mul(a, b)
        pp1_lo = st.reg(lo, signed(MUL_SPLIT + B_BITS + 1), "pp1_lo")
        pp1_hi = st.reg(hi, signed(A_BITS - MUL_SPLIT + B_BITS), "pp1_hi")
        ctl = {n: st.reg(v, v.shape(), n) for n, v in ctl.items()}
        rounding = Const(1, V_BITS) << (s2 - 1)[: isa.SHIFT_BITS]
        rnd2 = st.reg(Mux(s2 == 0, 0, rounding), V_BITS, "rnd2")
        s2 = st.reg(s2, range(W_BITS + 1), "s2")
        c, d = st.reg(c, c.shape(), "c"), st.reg(d, d.shape(), "d")

        st.stage("p1")  # a*b: the high product onto the low one's upper bits
        p1_top = pp1_hi + pp1_lo[MUL_SPLIT:].as_signed()
        p1 = st.reg(Cat(pp1_lo[:MUL_SPLIT], p1_top).as_signed(), signed(P1_BITS), "p1")
        m.d.comb += self.prod.eq(p1)
        ctl, rnd2, s2 = (
            self._carry(st, ctl),
            st.reg(rnd2, V_BITS, "rnd2"),
            st.reg(s2, s2.shape(), "s2"),
        )
        c, d = st.reg(c, c.shape(), "c"), st.reg(d, d.shape(), "d")

        st.stage("shift1")  # rnd(p1, s) = ((2 * p1 >> s) + (s != 0)) >> 1
        q1 = st.reg(
            shift_right(Cat(0, p1).as_signed(), ctl["shift1"])[: ROUND1_BITS + 1],
            ROUND1_BITS + 1,
            "q1",
        )
        up1 = st.reg(ctl["shift1"] != 0, 1, "up1")
        p1acc = st.reg(Mux(ctl["acc"], p1, 0), signed(P1_BITS), "p1acc")
        ctl, rnd2, s2 = (
            self._carry(st, ctl),
            st.reg(rnd2, V_BITS, "rnd2"),
            st.reg(s2, s2.shape(), "s2"),
        )
        c, d = st.reg(c, c.shape(), "c"), st.reg(d, d.shape(), "d")

        st.stage("round1")
        round1 = st.reg(increment(m, q1, up1, "round1_inc")[1:], signed(ROUND1_BITS), "round1")
        m.d.comb += self.round1.eq(round1)
        p1acc = st.reg(p1acc, p1acc.shape(), "p1acc")
        ctl, rnd2, s2 = (
            self._carry(st, ctl),
            st.reg(rnd2, V_BITS, "rnd2"),
            st.reg(s2, s2.shape(), "s2"),
        )
        c, d = st.reg(c, c.shape(), "c"), st.reg(d, d.shape(), "d")

        st.stage("products2")  # (chain ? round1 : c) * d on two more DSP48E2s
        lo, hi = split_mul(Mux(ctl["chain"], round1[:C_BITS].as_signed(), c), d)
        pp2_lo = st.reg(lo, signed(MUL_SPLIT + D_BITS + 1), "pp2_lo")
        pp2_hi = st.reg(hi, signed(C_BITS - MUL_SPLIT + D_BITS), "pp2_hi")
        p1acc = st.reg(p1acc, p1acc.shape(), "p1acc")
        ctl, rnd2, s2 = (
            self._carry(st, ctl),
            st.reg(rnd2, V_BITS, "rnd2"),
            st.reg(s2, s2.shape(), "s2"),
        )

        st.stage("p2")  # +-p2 (one's complement when subtracting: the +1 comes with v)
        p2 = Cat(pp2_lo[:MUL_SPLIT], pp2_hi + pp2_lo[MUL_SPLIT:].as_signed()).as_signed()
        p2s = Signal(signed(P2_BITS))
        m.d.comb += p2s.eq(p2)
        flip = ctl["sub"].replicate(P2_BITS)
        p2x = st.reg((p2s.as_unsigned() ^ flip).as_signed(), signed(P2_BITS), "p2x")
        p1acc = st.reg(p1acc, p1acc.shape(), "p1acc")
        ctl, rnd2, s2 = (
            self._carry(st, ctl),
            st.reg(rnd2, V_BITS, "rnd2"),
            st.reg(s2, s2.shape(), "s2"),
        )

        st.stage("w")  # v = p1acc +- p2 + 2**(s2-1): a carry-save step, then one addition
        xs, ys, zs = (Signal(V_BITS, name=f"v_in{i}") for i in range(3))
        m.d.comb += [xs.eq(p1acc), ys.eq(p2x), zs.eq(rnd2)]
        maj = (xs & ys) | (xs & zs) | (ys & zs)
        v = carry_select_add(m, xs ^ ys ^ zs, Cat(ctl["sub"], maj[:-1]), V_BITS, "v")
        v = st.reg(v.as_signed(), signed(V_BITS), "v")
        ctl, s2 = self._carry(st, ctl), st.reg(s2, s2.shape(), "s2")

        st.stage("align2")  # v >> s2 in two rounds: by 8 * s2[3:], then by s2[:3]
        v = st.reg(shift_right(v, s2 & ~7), signed(V_BITS), "v")
        ctl, s2 = self._carry(st, ctl), st.reg(s2[:3], 3, "s2")

        st.stage("shift2")  # x = v >> s2, kept to X_KEEP bits and whether it fits them
        x = Signal(signed(V_BITS))
        m.d.comb += x.eq(shift_right(v, s2))
        big = st.reg(~all_equal(x[X_KEEP - 1 :]), 1, "big")
        sign = st.reg(x[-1], 1, "sign")
        x = st.reg(x[:X_KEEP].as_signed(), signed(X_KEEP), "x")
        ctl = self._carry(st, ctl)

        st.stage("bias")  # |bias| < 2**15 cannot bring a too-big x back into range
        y = st.reg(x + ctl["bias"], signed(X_KEEP + 1), "y")
        big, sign = st.reg(big, 1, "big"), st.reg(sign, 1, "sign")
        dt = st.reg(ctl["dt"], 2, "dt")

        st.stage("saturate")
        # a too-big x saturates by its sign: a value out of every type's range, then sat
        out = Mux(big, Mux(sign, -(1 << X_KEEP), (1 << X_KEEP) - 1), y)
        result = st.reg(saturate_bits(out, dt), signed(ELEM_BITS), "result")
        m.d.comb += self.result.eq(result)
        assert st.done == LANE_LATENCY
        return m

    @staticmethod
    def _carry(st: _Stages, ctl: dict) -> dict:
        """The control fields one stage later (only those still needed)."""
        return {n: st.reg(v, v.shape(), n) for n, v in ctl.items()}
