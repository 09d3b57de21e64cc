"""The MPE's shared requantisers: ``sat(rnd(held * mult >> shift))``, pipelined.

A tile's segments hold ``acc + psum + bias`` (:class:`.epilogue.SegmentAccumulator`);
``requantisers`` units (:func:`flightforge.mpe.requantisers`: one per column of the
widest tile row) drain them row by row, ``requantisers // n`` rows of an ``n``-column
tile per cycle, starting the cycle after the tile's last step is accumulated. A unit
registers its operands, multiplies in two registered stages (a DSP48E2's M and P) and
registers the rounded, saturated result: the rows leave ``REQUANT_STAGES`` cycles after
their drain cycle, into the rows' write ports. The fetch loop keeps tiles
``drain_cycles`` apart, so a drain ends before the next tile's totals are held.
"""

from __future__ import annotations

from amaranth import Module, Mux, Signal, Value, signed, unsigned
from amaranth.lib import wiring
from amaranth.lib.wiring import In, Out

from flightforge import isa
from flightforge import mpe as sched

from ..sfu.lane import saturate
from .epilogue import HELD_BITS
from .operands import field_bits

RESULT_BITS = 32  #: a result before packing: the widest output type


class Requantiser(wiring.Component):
    """One shared requantisation pipeline: ``result`` is ``sat(rnd(x * mult >> shift))``
    (``numerics``' round half up) of the operands ``REQUANT_STAGES`` cycles before.

    Stages: the operands; the product's M and P (a DSP48E2's registers, three slices for
    52 x 16 bits); the product shifted by ``shift - 1``; rounded (``+ 1 >> 1``);
    saturated to the output type. Each is one shift, one carry chain or one compare deep.
    """

    def __init__(self) -> None:
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
        x = Signal.like(self.x, name="x_r")
        mult = Signal.like(self.mult, name="mult_r")
        prod_m = Signal(signed(HELD_BITS + isa.MULT_BITS + 1))
        prod_p = Signal.like(prod_m)
        shifted = Signal.like(prod_m)
        keep = Signal()  # shift 0: no rounding
        rounded = Signal.like(prod_m)
        s = self.shift
        m.d.sync += [
            x.eq(self.x),
            mult.eq(self.mult),
            prod_m.eq(x * mult),
            prod_p.eq(prod_m),
            shifted.eq(Mux(s == 0, prod_p, prod_p >> (s - 1)[: len(s)])),
            keep.eq(s == 0),
            rounded.eq(Mux(keep, shifted, (shifted + 1) >> 1)),
            self.result.eq(saturate(rounded, self.odt)),
        ]
        return m


assert sched.REQUANT_STAGES == 6  # operands, M, P, shifted, rounded, result


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
