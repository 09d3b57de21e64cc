"""The MAC operands of the matrix engine (:mod:`.engine`): per-row activation windows,
the per-chain mode multiplexer, and the wiring that feeds every chain (:func:`feed_chains`).

Both are repeated blocks of the MPE (one per tile row, one per chain: 128 each on u280),
written as components of their own so that each distinct block is synthesised once and
counted per instance (benchmarks/rtl_resources.py) instead of inside one flat MPE that
Yosys cannot handle on the large configs.
"""

from __future__ import annotations

from amaranth import Cat, Const, Module, Mux, Signal, Value, signed, unsigned
from amaranth.lib import data, wiring
from amaranth.lib.wiring import In, Out

from flightforge import formats, isa

from .chain import ACT_BITS, LANES, WGT_BITS


def field_bits(name: str) -> int:
    """Width of the MM/MV instruction field ``name`` (the same in both classes)."""
    (w,) = {w for cls in (isa.MM, isa.MV) for n, _, w, _ in isa.layout(cls) if n == name}
    return w


def _lg(v: int) -> int:
    return v.bit_length() - 1


def window_layout(window: int) -> data.ArrayLayout:
    """The ``window`` activations one MAC's sparse MUX picks from (as :class:`DspChain`)."""
    return data.ArrayLayout(signed(ACT_BITS), window)


class RowWindows(wiring.Component):
    """The activation windows of one output row's ``k`` MAC entries.

    A step starts at a multiple of ``k``, so the entry ``i`` a MAC takes (a constant of its
    position) lies in block ``i >> log2(N)`` of the row's span for every N:M mode: its
    window is the constant slice at byte ``(i >> log2(N)) << log2(M)``, chosen by the
    sparse mode (dense: byte ``i`` in slot 0; a sparse-field value that is no mode: the
    window at byte ``i``). One multiplexer per entry, shared by the row's columns and by
    every chain that takes the row.

    ``row`` is the row's span from the activation tile buffer (:mod:`.tile_buffer`, the
    step's first activation at byte 0), ``row_bytes`` (at least the span of ``k``
    entries, ``k * window / 2`` bytes); a slice past its end reads zeros.
    """

    def __init__(self, k: int, window: int, row_bytes: int) -> None:
        if k < 2 or k % 2:
            raise ValueError(f"k must be even and at least 2, not {k!r}")
        if row_bytes < k * window // 2:
            raise ValueError(f"{row_bytes} bytes do not hold the span of {k} entries")
        self.k = k
        self.window = window
        self.row_bytes = row_bytes
        super().__init__(
            {
                "sparse": In(field_bits("sparse")),
                "row": In(8 * self.row_bytes),
                "windows": Out(data.ArrayLayout(window_layout(window), k)),
            }
        )

    def elaborate(self, platform) -> Module:
        m = Module()
        row = self.row
        padded = Cat(row, Const(0, 8 * self.window))
        for i in range(self.k):
            w = self.windows[i]
            by_off = {}
            for mode in isa.SparseMode:
                if mode.is_sparse:
                    by_off.setdefault((i >> _lg(mode.n)) << _lg(mode.m), []).append(mode)
            with m.Switch(self.sparse):
                with m.Case(isa.SparseMode.DENSE):
                    m.d.comb += w.eq(row.word_select(i, 8))
                for off, modes in by_off.items():
                    with m.Case(*modes):
                        m.d.comb += w.eq(padded[8 * off : 8 * (off + self.window)])
                with m.Default():  # no N:M mode: the window at byte i
                    m.d.comb += w.eq(padded[8 * i : 8 * (i + self.window)])
        return m


def operand_layout(groups: int, window: int) -> data.StructLayout:
    """The operands of a chain's ``groups`` slices: two lanes' activation windows, the
    shared weight and index (the shapes of :class:`.chain.DspChain`'s ``act``, ``wgt``
    and ``idx``)."""
    return data.StructLayout(
        {
            "act": data.ArrayLayout(data.ArrayLayout(window_layout(window), LANES), groups),
            "wgt": data.ArrayLayout(signed(WGT_BITS), groups),
            "idx": data.ArrayLayout(unsigned(_lg(window)), groups),
        }
    )


class ChainFeed(wiring.Component):
    """One chain's MAC operands in the instruction's mode.

    A MAC's operands depend on the mode: an MM tile maps a segment of ``k`` MACs to
    another (row, column) pair than an MV tile, so each MAC takes another row's window
    and another column's weight and index. The mappings are wiring; what costs logic is
    the choice, one multiplexer per operand bit of every MAC. ``modes`` are the modes
    whose tile reaches the chain (``("mm", "mv")``, or ``("mm",)`` for the chains an MV
    tile leaves idle): in a mode not listed, and for a MAC a listed mode leaves idle
    (its inputs not driven), the operands are zero.
    """

    MODES = ("mm", "mv")

    def __init__(self, groups: int, window: int, modes: tuple[str, ...]) -> None:
        if not modes or any(nm not in self.MODES for nm in modes) or len(set(modes)) < len(modes):
            raise ValueError(f"modes must be some of {self.MODES}, not {modes!r}")
        self.groups = groups
        self.window = window
        self.modes = tuple(nm for nm in self.MODES if nm in modes)
        layout = operand_layout(groups, window)
        super().__init__(
            {"is_mm": In(1), **{nm: In(layout) for nm in self.modes}, "ops": Out(layout)}
        )

    def elaborate(self, platform) -> Module:
        m = Module()
        for nm in self.modes:
            with m.If(self.is_mm if nm == "mm" else ~self.is_mm):
                m.d.comb += self.ops.eq(getattr(self, nm))
        return m


def feed_chains(
    m: Module, eng, d, staged, tile_rows, f_ent: Value, f_int4: Value, chains: list
) -> None:
    """Give every chain its MACs' operands of the instruction's mode.

    ``sk`` is a multiple of the mode's ``k`` and a MAC's entry ``i < k`` is a constant,
    so a MAC's activation window and index are constant slices, one per sparse mode, not
    shifts (:class:`RowWindows`). Windows depend on (row, entry), indices and weights on
    (column, entry): built once each; each chain's :class:`ChainFeed` picks its MACs'
    operands of the instruction's mode.
    """
    f = d.f
    wst_n, mst_n = staged.wst_n, staged.mst_n
    wins = []
    for w, (k, r) in enumerate(eng.win_rows):
        m.submodules[f"win{w}"] = rw = RowWindows(k, eng.window, eng.span)
        m.d.comb += [rw.sparse.eq(f["sparse"]), rw.row.eq(tile_rows[r])]
        wins.append(rw)
    macw, maci = {}, {}

    def weight(j, i):
        if (j, i) not in macw:
            macw[j, i] = wv = Signal(signed(8), name=f"wv{j}_{i}")
            lo, hi = wst_n[j].word_select(i, 8), wst_n[j].word_select(i >> 1, 8)
            nib = hi[4:8] if i % 2 else hi[0:4]
            m.d.comb += wv.eq(Mux(i < f_ent, Mux(f_int4, nib.as_signed(), lo.as_signed()), 0))
        return macw[j, i]

    def index(j, i):
        if (j, i) not in maci:
            maci[j, i] = iv = Signal(range(eng.window), name=f"iv{j}_{i}")
            with m.Switch(f["sparse"]):
                with m.Case(isa.SparseMode.DENSE):
                    m.d.comb += iv.eq(0)
                for mode in isa.SparseMode:
                    if mode.is_sparse:
                        b = 1 << (formats.index_bits(mode).bit_length() - 1)
                        with m.Case(mode):
                            m.d.comb += iv.eq(mst_n[j][i * b : (i + 1) * b])
                with m.Default():
                    m.d.comb += iv.eq(mst_n[j][i : i + 1])
        return maci[j, i]

    for ch, chain in enumerate(chains):
        if not eng.feed_modes[ch]:
            continue  # no tile reaches the chain: its operands stay zero
        m.submodules[f"feed{ch}"] = fd = ChainFeed(eng.G, eng.window, eng.feed_modes[ch])
        m.d.comb += [
            fd.is_mm.eq(d.is_mm),
            chain.act.eq(fd.ops.act),
            chain.wgt.eq(fd.ops.wgt),
            chain.idx.eq(fd.ops.idx),
        ]
        for g in range(eng.G):
            for nm in fd.modes:
                rm, n, k = eng.modes[nm]
                seg, i = divmod(ch * eng.G + g, k)  # eng.place, inverted
                pair, j = divmod(seg, n)
                rows = [r for r in range(LANES * pair, LANES * pair + LANES) if r < rm]
                if rows:
                    ops = getattr(fd, nm)
                    m.d.comb += [ops.wgt[g].eq(weight(j, i)), ops.idx[g].eq(index(j, i))]
                    for r in rows:
                        m.d.comb += ops.act[g][r % LANES].eq(wins[eng.win_of[nm, r]].windows[i])
