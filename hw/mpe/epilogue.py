"""The per-segment accumulators of the matrix engine (:mod:`.engine`).

Every ``(row, column)`` pair of an output tile is one segment, ``k`` entries long, whose
dot product the chains deliver as ``k / 2`` lane sums (one per odd slice). The chains cut
every scale group, every lane run (:data:`~flightforge.mpe.RUN` slices) and every
segment, so the lane sums that count are whole runs or whole groups: within one run at
most one of them belongs to a given scale group. A :class:`SegmentAccumulator` therefore
needs one multiplier, not one per lane sum: it latches a step's lane sums and, one scale
group a cycle (:func:`flightforge.mpe.scale_cycles`: one cycle unless the step holds
several groups), adds the group's runs in a DSP48E2's pre-adder, scales them by the
group's scale in its multiplier and accumulates in its P register; at the tile's last
step its C port adds ``psum + bias``. ``held`` then keeps the total for the shared
requantisers (:mod:`.requant`), which drain a tile's segments while the next tile
accumulates.

One :class:`SegmentAccumulator` per segment (the MPE's ``segs``: 256 on u280): a
component of its own so that it is synthesised once and counted per instance
(benchmarks/rtl_resources.py), not inside one flat MPE. The sequencing of a step's
groups, its scales and the tile's tags are shared by all segments
(:func:`segment_accumulators`).
"""

from __future__ import annotations

from dataclasses import dataclass

from amaranth import Cat, ClockSignal, Const, Instance, Module, Mux, Signal, Value, signed, unsigned
from amaranth.lib import data, wiring
from amaranth.lib.wiring import In, Out

from flightforge import isa
from flightforge.mpe import ACC_STAGES, RUN, SLICE_STAGES

from .chain import P_BITS, DspSlice, delay

HELD_BITS = P_BITS  #: ``acc + psum + bias``: scaled sums < 2**46 plus two 32-bit addends
SCALE_BITS = 8  #: a group scale (unsigned)
PB_BITS = 33  #: ``psum + bias``


def run_terms(terms: int) -> int:
    """Lane sums of a segment that one lane run spans (a run is ``RUN`` slices, a lane
    sum is read every second slice), at most the segment's."""
    return min(terms, RUN // 2)


class SegmentAccumulator(wiring.Component):
    """Scaling and accumulation of one segment on one DSP48E2; its total held for the
    requantisers.

    ``load``: the step's lane sums (``sums[q]``: the sum the segment's chain reads at
    entry ``2q + 1``) are latched. Then, for each of the step's scale groups, one cycle
    each (the sub-cycles, shared by all segments): ``on[r]``/``pick[r]`` select run
    ``r``'s lane sum of the group (the run's lane sums are ``run_terms`` apart; at most
    one counts per group), the two halves of the runs meet in the pre-adder (A + D), the
    multiplier takes the group's ``scale`` (1 without group scales) and the post-adder
    accumulates (``first``: onto 0, not onto P) and, with ``add_pb``, adds ``psum +
    bias`` through the C port. ``psum`` and ``bias`` come with ``load`` of the tile's last
    step; the sub-cycle with ``add_pb`` must be the first after that ``load``.
    ``hold`` (``SLICE_STAGES`` cycles after the tile's last sub-cycle) keeps P in
    ``held``.

    ``primitive=False`` (simulation) builds the DSP48E2 from Amaranth arithmetic in its
    own stages (A/D/B1, AD/B2, M, P, as :class:`.chain.DspSlice`); ``primitive=True``
    (synthesis) instantiates it, with a dynamic OPMODE (W = C or 0, Z = P or 0).
    """

    OPMODE_XY_M = 0b00_000_01_01  #: X = Y = M
    OPMODE_Z_P = 0b00_010_00_00  #: Z = P (accumulate)
    OPMODE_W_C = 0b11_000_00_00  #: W = C (psum + bias)

    def __init__(self, terms: int, sum_bits: int, primitive: bool = False) -> None:
        if terms < 1 or terms & (terms - 1):
            raise ValueError(f"terms must be a power of two, not {terms!r}")
        self.terms = terms
        self.sum_bits = sum_bits
        self.primitive = primitive
        self.rt = run_terms(terms)
        self.runs = terms // self.rt
        super().__init__(
            {
                "load": In(1),
                "sums": In(data.ArrayLayout(signed(sum_bits), terms)),
                "on": In(self.runs),
                "pick": In(
                    data.ArrayLayout(unsigned(max(1, (self.rt - 1).bit_length())), self.runs)
                ),
                "scale": In(unsigned(SCALE_BITS)),
                "first": In(1),
                "add_pb": In(1),
                "psum": In(signed(32)),
                "bias": In(signed(32)),
                "hold": In(1),
                "held": Out(signed(HELD_BITS)),
            }
        )

    def elaborate(self, platform) -> Module:
        m = Module()
        x = Signal.like(self.sums, name="x", reset_less=True)  # the step's lane sums
        with m.If(self.load):
            m.d.sync += x.eq(self.sums)
        # psum + bias of the tile's last step, at the C port two cycles after the load
        pb = Signal(signed(PB_BITS), reset_less=True)
        m.d.sync += pb.eq(self.psum + self.bias)
        c = delay(m, pb, 2, "pb")
        run = []
        for r in range(self.runs):
            lanes = [x[r * self.rt + i] for i in range(self.rt)]
            run.append(
                Mux(self.on[r], Cat(*lanes).word_select(self.pick[r], self.sum_bits).as_signed(), 0)
                if self.rt > 1
                else Mux(self.on[r], lanes[0], 0)
            )
        half = max(1, self.runs // 2)
        a_in, d_in = _total(run[:half]), _total(run[half:])
        first, add_pb = (
            delay(m, v, 2, n) for v, n in ((self.first, "first"), (self.add_pb, "addpb"))
        )
        p = Signal(signed(P_BITS))
        if self.primitive:
            self._dsp(m, a_in, d_in, first, add_pb, c, p)
        else:
            self._model(m, a_in, d_in, first, add_pb, c, p)
        with m.If(self.hold):
            m.d.sync += self.held.eq(p)
        return m

    def _model(self, m, a_in, d_in, first, add_pb, c, p) -> None:
        """The DSP48E2's stages in Amaranth: A/D/B1, AD/B2, M (with the OPMODE and C
        registers), P."""
        a = Signal(signed(27), reset_less=True)
        dd = Signal(signed(27), reset_less=True)
        b1 = Signal(unsigned(SCALE_BITS), reset_less=True)
        b2 = Signal.like(b1)
        ad = Signal(signed(27), reset_less=True)
        mreg = Signal(signed(45), reset_less=True)
        zr, wr = Signal(reset_less=True), Signal(reset_less=True)
        cr = Signal(signed(P_BITS), reset_less=True)
        m.d.sync += [
            a.eq(a_in),
            dd.eq(d_in),
            b1.eq(self.scale),
            ad.eq(a + dd),
            b2.eq(b1),
            mreg.eq(ad * b2),
            zr.eq(first),
            wr.eq(add_pb),
            cr.eq(c),
            p.eq(mreg + Mux(zr, 0, p) + Mux(wr, cr, 0)),
        ]

    def _dsp(self, m, a_in, d_in, first, add_pb, c, p) -> None:
        """The DSP48E2: ``P = (A + D) * B + (first ? 0 : P) + (add_pb ? C : 0)``."""
        opmode = Signal(9)
        m.d.comb += opmode.eq(
            self.OPMODE_XY_M | Mux(first, 0, self.OPMODE_Z_P) | Mux(add_pb, self.OPMODE_W_C, 0)
        )
        a30, d27, b18, c48 = (
            Signal(signed(30)),
            Signal(signed(27)),
            Signal(signed(18)),
            Signal(signed(48)),
        )
        m.d.comb += [a30.eq(a_in), d27.eq(d_in), b18.eq(self.scale), c48.eq(c)]
        dsp48e2(
            m,
            "dsp",
            dict(DspSlice.ATTRS, CREG=1),
            i_A=a30,
            i_B=b18,
            i_C=c48,
            i_D=d27,
            i_INMODE=DspSlice.INMODE_D_PLUS_A2,
            i_OPMODE=opmode,
            o_P=p,
        )


def dsp48e2(m: Module, name: str, attrs: dict, **ports) -> None:
    """A DSP48E2 instance ``name`` with the attributes ``attrs`` (UG579), every clock
    enable on, every reset off and the inputs ``ports`` does not give (``i_*``/``o_*``,
    as :class:`~amaranth.hdl.Instance` takes them) at 0."""
    unused = ("C", "D", "INMODE", "ALUMODE", "CARRYIN", "CARRYINSEL", "PCIN", "ACIN", "BCIN")
    m.submodules[name] = Instance(
        "DSP48E2",
        **{f"p_{k}": v for k, v in attrs.items()},
        i_CLK=ClockSignal(),
        **{f"i_CE{r}": 1 for r in ("A1", "A2", "B1", "B2", "D", "AD", "M", "P")},
        **{f"i_CE{r}": 1 for r in ("C", "CTRL", "INMODE", "ALUMODE", "CARRYIN")},
        **{f"i_RST{r}": 0 for r in ("A", "B", "C", "D", "M", "P", "CTRL")},
        **{f"i_RST{r}": 0 for r in ("INMODE", "ALUMODE", "ALLCARRYIN")},
        **({f"i_{k}": 0 for k in (*unused, "CARRYCASCIN", "MULTSIGNIN")} | ports),
    )


def _total(values: list) -> Value:
    """The sum of ``values`` (0 for none)."""
    out = Const(0, signed(1))
    for v in values:
        out = out + v
    return out


assert ACC_STAGES == 1 + SLICE_STAGES  # the lane sums latched, then the DSP48E2's stages


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
    m: Module, eng, d, chains: list, step: tuple[Value, Value, Value], reads, tags: list[Value]
) -> tuple[list[Value], list[Value], Value, list[Value]]:
    """One :class:`SegmentAccumulator` per segment, given each input of the segment's
    (row, column) pair in the instruction's mode, and the sub-cycles they share.

    ``step`` is ``(ev, first, last)`` of the step whose lane sums the chains give this
    cycle; ``reads`` are the scale, record and partial-sum read data of that step:
    ``(scales, recs, psums)``; ``tags`` the values the drain needs of a tile (taken at
    its last step). Returns the held totals (row-major), per column of the widest mode
    the multiplier, the cycle the totals are held (the drain starts after it) and the
    tags as they were at the tile's last step, all held until the next tile's totals.
    """
    ev, e_first, e_last = step
    scales, recs, psums = reads
    sub = _sub_cycles(m, eng, d, ev, e_first, e_last)
    hold = delay(m, sub.fin, SLICE_STAGES, "hold")
    cur = _scales(m, eng, d, ev, sub.t_next, scales)

    def group_sum(key):
        ch, sl, lane = key
        return chains[ch].sums[sl // 2][lane]

    def record(j):
        return Cat(*recs[j * eng.rec_reads : (j + 1) * eng.rec_reads])

    def psum(key):
        p0, ppr, j = key
        return Mux(d.f["acc_in"], Cat(*psums[p0 : p0 + ppr]).word_select(j, 32), 0)

    def pick(keys, value):
        """``value(key)`` of the instruction's mode (``keys``: per mode; None, a missing
        mode: 0); one source, no multiplexer, where the modes agree."""
        a, b = keys.get("mm"), keys.get("mv")
        if a == b:
            return 0 if a is None else value(a)
        return Mux(d.is_mm, 0 if a is None else value(a), 0 if b is None else value(b))

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
            m.d.comb += ep.sums[q].eq(pick({nm: chain_group(nm, t, q) for nm in live}, group_sum))
        col = {nm: j for nm, (r, j) in at.items()}
        m.d.comb += [
            ep.load.eq(ev),
            ep.on.eq(sub.on),
            ep.pick.eq(sub.pick),
            ep.scale.eq(pick(col, lambda j: cur[j])),
            ep.first.eq(sub.first),
            ep.add_pb.eq(sub.add_pb),
            ep.hold.eq(hold),
            ep.bias.eq(pick(col, lambda j: Mux(d.f["colp"], record(j)[0:32], 0))),
            ep.psum.eq(
                pick({nm: (r * eng.ppr[nm], eng.ppr[nm], j) for nm, (r, j) in at.items()}, psum)
            ),
        ]
        held.append(ep.held)
    # the columns' multipliers (a record's, or the instruction's) and the tile's tags,
    # taken at its last step and held with its totals
    mults = []
    for j in range(eng.nmax):
        col = {nm: j for nm, (_rm, n, _k) in eng.modes.items() if j < n}
        mult = Signal(unsigned(isa.MULT_BITS), name=f"mult{j}")
        with m.If(ev & e_last):
            m.d.sync += mult.eq(
                pick(
                    col, lambda j: Mux(d.f["colp"], record(j)[32 : 32 + isa.MULT_BITS], d.f["mult"])
                )
            )
        mults.append(_held(m, mult, hold, f"mult{j}"))
    held_tags = []
    for v in tags:
        tag = Signal.like(v, name=f"t_{v.name}")
        with m.If(ev & e_last):
            m.d.sync += tag.eq(v)
        held_tags.append(_held(m, tag, hold, f"t_{v.name}"))
    return held, mults, hold, held_tags


@dataclass
class SubCycles:
    """The shared sub-cycle state: the step's scale groups, one a cycle."""

    t_next: Value  #: the group the next cycle takes
    on: Signal  #: per run: its lane sum of the group counts (the accumulators' ``on``)
    pick: Signal  #: per run: which of its lane sums
    first: Signal  #: the tile's first group: accumulate onto 0
    add_pb: Signal  #: the tile's last step's first group: add ``psum + bias``
    fin: Signal  #: the tile's last group


def _sub_cycles(m: Module, eng, d, ev: Value, e_first: Value, e_last: Value) -> SubCycles:
    """From the cycle after ``ev``: the step's ``d.subs`` scale groups, one a cycle, as
    registered controls for the accumulators (the next step's ``ev`` comes ``subs``
    cycles later at the earliest: the fetch loop's steps are that long)."""
    rt = run_terms(eng.terms)
    runs = eng.terms // rt
    lrt = rt.bit_length() - 1
    lt = eng.terms.bit_length() - 1
    on_ = Signal(name="s_on")
    t = Signal(range(eng.terms), name="s_t")
    first, last = Signal(name="s_first"), Signal(name="s_last")
    n_on = ev | (on_ & (t + 1 != d.subs))
    n_t = Signal.like(t, name="s_t_next")
    m.d.comb += n_t.eq(Mux(ev, 0, t + 1))
    n_first, n_last = Mux(ev, e_first, first), Mux(ev, e_last, last)
    m.d.sync += [on_.eq(n_on), t.eq(n_t), first.eq(n_first), last.eq(n_last)]
    # lane sums per scale group, as a power of two (capped at the mode's segment)
    tgl = Signal(range(lt + 1), name="s_tgl")
    for nm, (_rm, _n, k) in eng.modes.items():
        lk = (k // 2).bit_length() - 1
        with m.If(d.is_mm if nm == "mm" else ~d.is_mm):
            m.d.comb += tgl.eq(Mux(d.gsz_on & (d.lge <= lk), d.lge - 1, lk))
    sub = SubCycles(
        t_next=n_t,
        on=Signal(runs, name="s_runs"),
        pick=Signal(runs * max(1, lrt), name="s_pick"),
        first=Signal(name="s_acc_first"),
        add_pb=Signal(name="s_add_pb"),
        fin=Signal(name="s_fin"),
    )
    with m.Switch(tgl):
        for c in range(lt + 1):
            with m.Case(c):
                lo, hi = n_t << c, (n_t + 1) << c  # the group's lane sums: [lo, hi)
                for r in range(runs):
                    hit = (lo < (r + 1) * rt) & (hi > r * rt)
                    idx = rt - 1 if c >= lrt else (hi - 1)[: max(1, lrt)]
                    m.d.sync += [
                        sub.on[r].eq(n_on & hit),
                        sub.pick.word_select(r, max(1, lrt)).eq(idx),
                    ]
    m.d.sync += [
        sub.first.eq(n_on & n_first & (n_t == 0)),
        sub.add_pb.eq(n_on & n_last & (n_t == 0)),
        sub.fin.eq(n_on & n_last & (n_t + 1 == d.subs)),
    ]
    return sub


def _scales(m: Module, eng, d, ev: Value, t_next: Value, scales: list) -> list[Signal]:
    """Per column of the widest mode, the scale of the group the next cycle takes (1
    without group scales), registered: byte ``t`` of the step's scale read, which is
    kept from ``ev`` for the step's sub-cycles."""
    out = []
    for j, word in enumerate(scales):
        kept = Signal.like(word, name=f"sc{j}")
        with m.If(ev):
            m.d.sync += kept.eq(word)
        src = Mux(ev, word, kept)
        nb = len(word) // SCALE_BITS
        byte = (
            src.word_select(t_next[: max(1, (nb - 1).bit_length())], SCALE_BITS) if nb > 1 else src
        )
        cur = Signal(unsigned(SCALE_BITS), name=f"scale{j}")
        m.d.sync += cur.eq(Mux(d.gsz_on, byte, 1))
        out.append(cur)
    return out


def _held(m: Module, v: Value, hold: Value, name: str) -> Signal:
    """``v`` as it was at the tile's last group (``SLICE_STAGES`` cycles before
    ``hold``), kept from ``hold`` like the totals: through a delay line, as the next
    tile's last step may change ``v`` before ``hold``."""
    out = Signal.like(v, name=f"h_{name}")
    late = delay(m, v, SLICE_STAGES, f"d_{name}")  # outside the If: shifts every cycle
    with m.If(hold):
        m.d.sync += out.eq(late)
    return out
