"""The MPE's shared requantisers: ``sat(rnd(held * mult >> shift))``, pipelined.

A tile's segments hold ``acc + psum + bias`` (:class:`.epilogue.SegmentAccumulator`);
``requantisers`` units (:func:`flightforge.mpe.requantisers`: one per column of the
widest tile row) drain them row by row, ``requantisers // n`` rows of an ``n``-column
tile per cycle, starting the cycle after the tile's totals are held. A unit multiplies
on three cascaded DSP48E2s with all their registers, 17 bits of ``held`` each, the
rounding constant entering through a C port; then shifts and saturates, one register
each: the rows leave ``REQUANT_STAGES`` cycles after their drain cycle, into the rows'
write ports. The fetch loop keeps tiles ``drain_cycles`` apart, so a drain ends before
the next tile's totals are held.
"""

from __future__ import annotations

from amaranth import Cat, Const, Module, Mux, Signal, Value, signed, unsigned
from amaranth.lib import wiring
from amaranth.lib.wiring import In, Out

from flightforge import isa
from flightforge import mpe as sched

from .chain import P_BITS, DspSlice, delay
from .epilogue import HELD_BITS, dsp48e2
from .operands import field_bits

RESULT_BITS = 32  #: a result before packing: the widest output type
PART = 17  #: bits of ``held`` per DSP48E2: the cascade's shift (PCIN >> 17)
PARTS = -(-HELD_BITS // PART)  #: DSP48E2s per requantiser
PROD_BITS = HELD_BITS + isa.MULT_BITS + 1  #: the product, signed


def saturate(x: Value, dt: Value) -> Value:
    """``numerics.sat`` to the element type ``dt`` (run time) without comparators: ``x``
    fits ``b`` bits iff its bits from ``b - 1`` up are all equal (a reduction, a few LUT
    levels where a compare is a carry chain as wide as ``x``)."""
    neg = x[-1]

    def sat(b: int) -> Value:
        top = x[b - 1 :]
        fits = (top == 0) | (top == (1 << len(top)) - 1)
        return Mux(fits, x[:b].as_signed(), Mux(neg, -(1 << (b - 1)), (1 << (b - 1)) - 1))

    types = list(isa.DType)
    out = sat(types[-1].bits)  # the widest type, as ``lane.saturate``, for any other code
    for d in types[:-1]:
        out = Mux(dt == d, sat(d.bits), out)
    return out


class Requantiser(wiring.Component):
    """One shared requantisation pipeline: ``result`` is ``sat(rnd(x * mult >> shift))``
    (``numerics``' round half up) of the operands ``REQUANT_STAGES`` cycles before.

    The product: ``x`` in ``PARTS`` slices of 17 bits (the last signed), slice ``i`` on
    DSP48E2 ``i``, which adds DSP ``i - 1``'s P shifted right 17 bits (the PCIN cascade)
    a cycle later: registers A/B, M, P each, so the product's top is ready ``PARTS + 2``
    cycles after the operands, its lower slices delayed to meet it. ``2**(shift - 1)``
    (rounding) enters through the C port of the first DSP whose P still holds that bit.
    Then the shift (a barrel of LUT levels) and the saturation, one register each.

    ``primitive=False`` (simulation) computes each DSP48E2 in Amaranth arithmetic in its
    own stages; ``primitive=True`` (synthesis) instantiates them.
    """

    def __init__(self, primitive: bool = False) -> None:
        self.primitive = primitive
        super().__init__(
            {
                "x": In(signed(HELD_BITS)),
                "mult": In(unsigned(isa.MULT_BITS)),
                "shift": In(field_bits("shift")),
                "odt": In(field_bits("odt")),
                "result": Out(RESULT_BITS),
            }
        )

    def elaborate(self, platform) -> Module:
        m = Module()
        s = self.shift
        pcin = None
        lows = []
        for i in range(PARTS):
            part = self.x[i * PART : (i + 1) * PART]
            a = delay(m, part.as_signed() if i == PARTS - 1 else part, i, f"x{i}")
            b = delay(m, self.mult, i, f"m{i}")
            # the rounding bit shift - 1, if it lies in this DSP's P (and no lower one's)
            bit = s - 1 - i * PART
            here = (s != 0) & (s - 1 >= i * PART) & ((s - 1 < (i + 1) * PART) | (i == PARTS - 1))
            rnd = Signal(signed(P_BITS), name=f"rnd{i}")
            m.d.comb += rnd.eq(Mux(here, Const(1, P_BITS) << bit[: (P_BITS - 1).bit_length()], 0))
            c = delay(m, rnd, i + 1, f"c{i}")  # at the C register, a cycle after A/B
            p = Signal(signed(P_BITS), name=f"p{i}")
            self._dsp(m, i, a, b, c, pcin, p)
            pcin = p
            if i < PARTS - 1:
                lows.append(delay(m, p[:PART], PARTS - 1 - i, f"lo{i}"))
        prod = Signal(signed(PROD_BITS))
        m.d.comb += prod.eq(Cat(*lows, pcin))
        ready = PARTS + 2  # cycles from the operands to the product
        shifted = Signal.like(prod)
        m.d.sync += shifted.eq(prod >> delay(m, s, ready, "s"))
        m.d.sync += self.result.eq(saturate(shifted, delay(m, self.odt, ready + 1, "odt")))
        return m

    def _dsp(self, m: Module, i: int, a: Value, b: Value, c: Value, pcin, p: Signal) -> None:
        """DSP ``i``: ``P = A * B + C + (PCIN >> 17)`` (no PCIN for the first), with the
        A/B, C, M and P registers."""
        if not self.primitive:
            ar, br = (
                Signal(signed(PART + 1), reset_less=True),
                Signal.like(self.mult, reset_less=True),
            )
            mr = Signal(signed(P_BITS), reset_less=True)
            cr = Signal(signed(P_BITS), reset_less=True)
            m.d.sync += [ar.eq(a), br.eq(b), mr.eq(ar * br), cr.eq(c)]
            m.d.sync += p.eq(mr + cr + (0 if pcin is None else pcin >> PART))
            return
        z = 0b000 if pcin is None else 0b101  # Z = 0, or PCIN >> 17
        a30, b18 = Signal(signed(30)), Signal(signed(18))
        m.d.comb += [a30.eq(a), b18.eq(b)]
        ports = dict(i_A=a30, i_B=b18, i_C=c, o_P=p)
        if pcin is not None:
            ports["i_PCIN"] = pcin
        # W = C, Z = 0 or PCIN >> 17, Y = X = M
        dsp48e2(m, f"dsp{i}", self.ATTRS, i_OPMODE=0b11_000_01_01 | (z << 4), **ports)

    #: DSP48E2 attributes (UG579): the chain slice's, but the multiplier on A x B (no
    #: pre-adder: no D, AD), one B register, C registered, a constant OPMODE.
    ATTRS = dict(
        DspSlice.ATTRS, AMULTSEL="A", BREG=1, BCASCREG=1, DREG=0, ADREG=0, CREG=1, OPMODEREG=0
    )


assert sched.REQUANT_STAGES == PARTS + 4  # A/B, M, P x PARTS (cascade), shifted, result


def drain(
    m: Module, eng, d, held: list[Value], mults: list[Value], start: Value
) -> tuple[list[Value], Signal, Signal, Value]:
    """The requantisers and their schedule: from ``start`` (the cycle after a tile's
    totals are held) drain cycle ``c`` feeds unit ``u`` segment ``c * R + u``.

    Returns the units' results, whether a drain cycle's results are out this cycle, its
    drain cycle number, and whether it is the tile's last drain cycle."""
    R = eng.requantisers
    cycles = {nm: eng.arch.mpe.drain(eng.shapes[nm]) for nm in eng.modes}
    dmax = max(cycles.values())
    c = Signal(range(max(dmax, 2)), name="drain_c")
    busy = Signal(name="draining")
    last = Mux(d.is_mm, cycles["mm"] - 1, cycles["mv"] - 1) == c
    with m.If(start):
        m.d.sync += [busy.eq(1), c.eq(0)]
    with m.If(busy):
        m.d.sync += c.eq(c + 1)
        with m.If(last):
            m.d.sync += [busy.eq(start), c.eq(0)]
    results = []
    for u in range(R):
        m.submodules[f"rq{u}"] = rq = Requantiser()
        for nm, (rm, n, _k) in eng.modes.items():
            with m.If(d.is_mm if nm == "mm" else ~d.is_mm):
                with m.Switch(c):
                    for cc in range(cycles[nm]):
                        if cc * R + u < rm * n:
                            with m.Case(cc):
                                m.d.comb += rq.x.eq(held[cc * R + u])
                m.d.comb += rq.mult.eq(mults[u % n])
        m.d.comb += [rq.shift.eq(d.f["shift"]), rq.odt.eq(d.f["odt"])]
        results.append(rq.result)
    out_valid, out_c, out_last = (
        _delay(m, v, sched.REQUANT_STAGES, name)
        for v, name in ((busy, "rqv"), (c, "rqc"), (last, "rql"))
    )
    return results, out_valid, out_c, out_last


def _delay(m: Module, v: Value, cycles: int, name: str) -> Value:
    for t in range(cycles):
        r = Signal(len(v), name=f"{name}{t}")
        m.d.sync += r.eq(v)
        v = r
    return v
