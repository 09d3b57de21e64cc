"""The per-segment epilogue of the matrix engine (:mod:`.engine`).

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

from amaranth import Cat, Const, Module, Mux, Signal, Value, signed, unsigned
from amaranth.lib import data, wiring
from amaranth.lib.wiring import In, Out

from flightforge import isa
from flightforge.mpe import RUN

from ..sfu.lane import rnd_shift, saturate
from .operands import field_bits

ACC_BITS = 50  #: accumulator: scaled sums < 2**46 plus bias and partial sums (numerics)
RESULT_BITS = 32  #: a result before packing: the widest output type


class SegmentEpilogue(wiring.Component):
    """Group scaling, accumulation and requantisation of one segment.

    ``sums[q]``: the lane sum the segment's chain reads at entry ``2q + 1`` (the entries
    since the chain's last cut),
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


def ends(d, group_mask: Value, i: int, k: int) -> Value:
    """Whether entry ``i`` (odd) of a ``k``-entry segment ends the segment, a lane run
    (:data:`~flightforge.mpe.RUN` slices, where the chain cuts itself) or a scale group.
    ``sk`` is a multiple of ``k`` and ``i < k``: ``sk + i + 1`` ends a group of
    ``2**lge`` entries iff ``i + 1`` does (for a group longer than ``k`` only ``i + 1 ==
    k`` can, a segment end anyway); likewise a run, as ``k`` and ``RUN`` are powers of two
    and a segment starts at a multiple of ``k`` in its chain."""
    fixed = i + 1 == k or (i + 1) % RUN == 0
    return Const(int(fixed), 1) | (d.gsz_on & ((Const(i + 1, 32) & group_mask) == 0))


def segment_epilogues(
    m: Module, eng, d, chains: list, group_mask: Value, ev: Value, e_first: Value, reads
) -> list[Value]:
    """One :class:`SegmentEpilogue` per segment, given each input of the segment's
    (row, column) pair in the instruction's mode; returns the results, row-major.

    ``reads`` are the scale, record and partial-sum read data, delayed to the step's
    epilogue cycle: ``(scales, recs, psums)``.
    """
    f, is_mm = d.f, d.is_mm
    scales, recs, psums = reads
    # Per-segment inputs by source: a group sum by (chain, group), a group scale by
    # (column, term), a column's record by column, a partial sum by (first port, ports,
    # column); a mode that leaves the segment idle gives 0.
    ended = Signal(eng.terms)  # term q counts: its group ends a scale group or segment
    for q in range(eng.terms):
        for nm, (_rm, _n, k) in eng.modes.items():
            if 2 * q < k:
                with m.If(is_mm if nm == "mm" else ~is_mm):
                    m.d.comb += ended[q].eq(ends(d, group_mask, 2 * q + 1, k))

    def group_sum(key):
        ch, sl, lane = key
        return chains[ch].sums[sl // 2][lane]

    def group_scale(key):
        j, q = key
        li = Const(2 * q) >> d.lge  # the group of entry 2q in the step's scales
        return (
            scales[j].word_select(li[: max(1, (len(scales[j]) // 8 - 1).bit_length())], 8)
            if len(scales[j]) > 8
            else scales[j]
        )

    def record(j):
        return Cat(*recs[j * eng.rec_reads : (j + 1) * eng.rec_reads])

    def psum(key):
        p0, ppr, j = key
        return Mux(f["acc_in"], Cat(*psums[p0 : p0 + ppr]).word_select(j, 32), 0)

    def pick(keys, value):
        """``value(key)`` of the instruction's mode (``keys``: per mode; None, a missing
        mode: 0); one source, no multiplexer, where the modes agree."""
        a, b = keys.get("mm"), keys.get("mv")
        if a == b:
            return 0 if a is None else value(a)
        return Mux(is_mm, 0 if a is None else value(a), 0 if b is None else value(b))

    def chain_group(nm, t, q):
        r, j = divmod(t, eng.modes[nm][1])
        return eng.place(nm, r, j, 2 * q + 1)

    results = []
    for t in range(eng.segs):
        m.submodules[f"epi{t}"] = ep = SegmentEpilogue(eng.terms, eng.sum_bits)
        at = {}  # mode -> (row, column) of segment t
        for nm, (rm, n, _k) in eng.modes.items():
            if t < rm * n:
                at[nm] = divmod(t, n)
        for q in range(eng.terms):
            live = [nm for nm in at if 2 * q < eng.modes[nm][2]]
            m.d.comb += [
                ep.sums[q].eq(pick({nm: chain_group(nm, t, q) for nm in live}, group_sum)),
                ep.scales[q].eq(pick({nm: (at[nm][1], q) for nm in live}, group_scale)),
            ]
        col = {nm: j for nm, (r, j) in at.items()}
        m.d.comb += [
            ep.valid.eq(ev),
            ep.first.eq(e_first),
            ep.ended.eq(ended),
            ep.gsz_on.eq(d.gsz_on),
            ep.bias.eq(pick(col, lambda j: Mux(f["colp"], record(j)[0:32], 0))),
            ep.mult.eq(pick(col, lambda j: Mux(f["colp"], record(j)[32:48], f["mult"]))),
            ep.psum.eq(
                pick({nm: (r * eng.ppr[nm], eng.ppr[nm], j) for nm, (r, j) in at.items()}, psum)
            ),
            ep.shift.eq(f["shift"]),
            ep.odt.eq(f["odt"]),
        ]
        results.append(ep.result)
    return results
