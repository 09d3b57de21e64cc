"""The per-segment epilogue of the matrix engine (:mod:`.mpe`).

Every ``(row, column)`` pair of an output tile is one segment, ``k`` MACs long, whose
dot product the chains deliver as ``k / 2`` DSP-group sums. Two cycles behind a step's
MACs its epilogue scales each scale group's sum, accumulates the step into the
segment's 50-bit accumulator and, at the tile's last step, computes the result
``sat(rnd((acc + psum + bias) * mult >> shift))`` the MPE writes in the same cycle.

One :class:`SegmentEpilogue` per segment (the MPE's ``segs``: 256 on u280, each with its
multipliers): a component of its own so that it is synthesised once and counted per
instance (benchmarks/rtl_resources.py), not inside one flat MPE.
"""

from __future__ import annotations

from amaranth import Module, Mux, Signal, signed, unsigned
from amaranth.lib import data, wiring
from amaranth.lib.wiring import In, Out

from flightforge import isa

from .mpe_operands import field_bits
from .sfu.lane import rnd_shift, saturate

ACC_BITS = 50  #: accumulator: scaled sums < 2**46 plus bias and partial sums (numerics)
RESULT_BITS = 32  #: a result before packing: the widest output type


class SegmentEpilogue(wiring.Component):
    """Group scaling, accumulation and requantisation of one segment.

    ``sums[q]``: the sum of DSP group ``q`` of the segment (entries ``2q``, ``2q + 1``),
    counted when ``ended[q]`` (the group closes a scale group or the segment) with weight
    ``scales[q]`` (1 without group scales, ``gsz_on`` = 0): a cut at a group that ends
    nothing passes the running sum down the cascade instead. ``valid`` accumulates the
    step (``first``: onto 0, not onto the accumulator); ``result`` is combinational from
    this step's total, ``psum``, ``bias``, ``mult``, ``shift`` and the output type ``odt``.
    The instruction's mode is the MPE's business: it gives each input of the segment's
    (row, column) pair in that mode, zeros in a mode that leaves the segment idle.
    """

    def __init__(self, terms: int, sum_bits: int) -> None:
        if terms < 1:
            raise ValueError(f"terms must be at least 1, not {terms!r}")
        self.terms = terms
        self.sum_bits = sum_bits
        super().__init__(
            {
                "valid": In(1),
                "first": In(1),
                "sums": In(data.ArrayLayout(signed(sum_bits), terms)),
                "ended": In(terms),
                "scales": In(data.ArrayLayout(unsigned(8), terms)),
                "gsz_on": In(1),
                "psum": In(signed(32)),
                "bias": In(signed(32)),
                "mult": In(unsigned(isa.MULT_BITS)),
                "shift": In(field_bits("shift")),
                "odt": In(field_bits("odt")),
                "result": Out(RESULT_BITS),
            }
        )

    def elaborate(self, platform) -> Module:
        m = Module()
        tot = None
        for q in range(self.terms):
            term = Mux(self.ended[q], self.sums[q] * Mux(self.gsz_on, self.scales[q], 1), 0)
            tot = term if tot is None else tot + term
        contrib = Signal(signed(ACC_BITS))
        m.d.comb += contrib.eq(tot)
        acc = Signal(signed(ACC_BITS))
        total = Signal(signed(ACC_BITS))
        m.d.comb += total.eq(Mux(self.first, 0, acc) + contrib)
        with m.If(self.valid):
            m.d.sync += acc.eq(total)
        scaled = (total + self.psum + self.bias) * self.mult
        m.d.comb += self.result.eq(saturate(rnd_shift(scaled, self.shift), self.odt))
        return m
