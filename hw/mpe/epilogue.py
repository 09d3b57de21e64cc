"""The per-segment accumulators of the matrix engine (:mod:`.engine`).

Every ``(row, column)`` pair of an output tile is one segment, ``k`` entries long, whose
dot product the chains deliver as ``k / 2`` lane sums (one per odd slice). A chain
latency behind a step's operands its :class:`SegmentAccumulator` scales each scale
group's sum and accumulates the step into the segment's 50-bit accumulator; at the
tile's last step it holds ``acc + psum + bias`` for the shared requantisers
(:mod:`.requant`), which drain a tile's segments while the next tile accumulates.

One :class:`SegmentAccumulator` per segment (the MPE's ``segs``: 256 on u280): a
component of its own so that it is synthesised once and counted per instance
(benchmarks/rtl_resources.py), not inside one flat MPE.
"""

from __future__ import annotations

from amaranth import Cat, Const, Module, Mux, Signal, Value, signed, unsigned
from amaranth.lib import data, wiring
from amaranth.lib.wiring import In, Out

from flightforge import isa
from flightforge.mpe import RUN

ACC_BITS = 50  #: accumulator: scaled sums < 2**46 plus bias and partial sums (numerics)
HELD_BITS = ACC_BITS + 2  #: ``acc + psum + bias``, two 32-bit addends more


class SegmentAccumulator(wiring.Component):
    """Group scaling and accumulation of one segment; its total held for requantisation.

    ``sums[q]``: the lane sum the segment's chain reads at entry ``2q + 1`` (the entries
    since the chain's last cut), counted when ``ended[q]`` (the entry closes a scale
    group, a lane run or the segment) with weight ``scales[q]`` (1 without group scales,
    ``gsz_on`` = 0). ``valid`` accumulates the step (``first``: onto 0, not onto the
    accumulator); with ``last`` (the tile's last step) ``held`` takes ``acc + psum +
    bias`` in the same cycle, and keeps it until the next tile's last step. The
    instruction's mode is the MPE's business: it gives each input of the segment's
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
                "last": In(1),
                "sums": In(data.ArrayLayout(signed(sum_bits), terms)),
                "ended": In(terms),
                "scales": In(data.ArrayLayout(unsigned(8), terms)),
                "gsz_on": In(1),
                "psum": In(signed(32)),
                "bias": In(signed(32)),
                "held": Out(signed(HELD_BITS)),
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
            with m.If(self.last):
                m.d.sync += self.held.eq(total + self.psum + self.bias)
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


def segment_accumulators(
    m: Module, eng, d, chains: list, group_mask: Value, ev: Value, e_first: Value, e_last, reads
) -> tuple[list[Value], list[Value]]:
    """One :class:`SegmentAccumulator` per segment, given each input of the segment's
    (row, column) pair in the instruction's mode; returns the held totals (row-major)
    and, per column of the widest mode, the multiplier, held alike.

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

    held = []
    for t in range(eng.segs):
        m.submodules[f"acc{t}"] = ep = SegmentAccumulator(eng.terms, eng.sum_bits)
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
            ep.last.eq(e_last),
            ep.ended.eq(ended),
            ep.gsz_on.eq(d.gsz_on),
            ep.bias.eq(pick(col, lambda j: Mux(f["colp"], record(j)[0:32], 0))),
            ep.psum.eq(
                pick({nm: (r * eng.ppr[nm], eng.ppr[nm], j) for nm, (r, j) in at.items()}, psum)
            ),
        ]
        held.append(ep.held)
    # the columns' multipliers (a record's, or the instruction's), held like the totals
    mults = []
    for j in range(eng.nmax):
        col = {nm: j for nm, (_rm, n, _k) in eng.modes.items() if j < n}
        mult = Signal(unsigned(isa.MULT_BITS), name=f"mult{j}")
        with m.If(ev & e_last):
            m.d.sync += mult.eq(
                pick(col, lambda j: Mux(f["colp"], record(j)[32 : 32 + isa.MULT_BITS], f["mult"]))
            )
        mults.append(mult)
    return held, mults
