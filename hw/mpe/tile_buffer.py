"""The MPE's activation tile buffer: ``rows`` two-port RAM banks of ``word``-byte words.

Before this buffer every tile row read its own activation span from ACT through a
private port in every step (tiny: 16 of ACT's 34 ports, kv260: 32 ports of 128 B), so no
ACT lane RAM could be an FPGA RAM. Now the MPE reads ACT through ONE port of one aligned
line (``banks * width`` bytes) per cycle: when a row tile starts, the fill copies each
row's ``K`` activations into the buffer (:func:`flightforge.mpe.fill_lines` lines a
row), and the steps of every column tile of the row tile read their spans from it
(``Timing.matmul``'s fill term, docs/cycle_model.md).

**Banks that are FPGA RAMs.** A bank's word is ``word`` bytes, what one row of a dense
MM step needs (``mpe.mm.k``), so a bank is a ``capacity / word``-deep memory of
``8 * word`` bits with one write port and one synchronous read port: the
simple-dual-port shape of RAMB36E2s side by side (kv260 and u280: 512 x 128 bits, two
RAMB36E2 of 512 x 72) or, when small, LUT RAM (tiny). The ACT line is ``P = line / word``
words; to write a whole line a cycle and still read every row's word of a step in one
cycle, row ``r``'s word ``w`` lives in bank ``r XOR (w mod P)`` (its group of ``P``
banks), at address ``w`` (:func:`flightforge.mpe.tile_bank`):

- the fill writes tile line ``j`` of row ``r`` as one word into each bank of the row's
  group (word ``jP + q`` into bank ``r XOR q``, address ``jP + q``): one permutation of the
  line (by ``r mod P``) shared by all groups, a low address per bank;
- an MM step reads word ``w`` of every row at one address ``w``; row ``r`` takes bank
  ``r XOR (w mod P)``'s word (a ``P``-input multiplexer per row);
- an MV (one row, row 0) reads its span's words from banks ``0 .. P - 1`` in one cycle,
  each bank at its own address (``P`` words per cycle).

A span wider than a cycle's read (N:M: ``max(1, k / N) * M`` bytes; MM reads one word a
row a cycle, MV ``P``) is read in ``parts`` over several cycles of the step
(:func:`flightforge.mpe.tile_read_cycles`, charged as a term of the step): the
engine reads part ``j`` in cycle ``j`` of the step and the last part in the step's last
cycle; the buffer keeps the earlier parts in registers (``hold``).

**Realignment, once.** A row's activations may start at any byte of ACT (the compiler
views attention heads as column slices of a row, ``head_dim`` bytes apart, which is not
a multiple of kv260's or u280's line). The fill reads every aligned line the row touches
and the buffer writes tile line ``j`` one cycle after ACT line ``j`` arrived, as the
bytes ``[offset, offset + line)`` of that line and the next one (a funnel shift, one
per MPE, shared by all rows); bytes past the row's ``K`` are don't-cares (their weights
are zero). So a row costs ``ceil((offset + K) / line)`` fill cycles, and a tile row
always starts at word 0.
"""

from __future__ import annotations

from amaranth import Array, Cat, Const, Module, Mux, Signal, unsigned
from amaranth.lib import data, wiring
from amaranth.lib.memory import Memory
from amaranth.lib.wiring import In, Out


def _lg(v: int) -> int:
    return v.bit_length() - 1


def _pow2(v: int) -> bool:
    return v >= 1 and not v & (v - 1)


class TileBuffer(wiring.Component):
    """``rows`` tile rows of ``capacity`` bytes (rounded up to whole lines and words) in
    ``banks`` banks of ``word``-byte words: ``rows`` rounded up to whole groups of ``P``
    (a line's words) banks. A word wider than a line (``P`` = 1) takes a line a cycle in
    byte lanes of its row's bank.

    Fill side: ``fill_valid`` says an ACT line arrived in ``fill_data`` this cycle: line
    ``fill_index`` of tile row ``fill_row``, whose activations start ``fill_offset`` bytes
    into its first line and fill ``fill_count`` tile lines (``ceil(K / line)``); lines at
    or past that count are read only for their bytes of the previous line.
    Read side: ``rd_en`` with ``rd_addr`` (the step's first byte in the row, a multiple
    of the span), ``rd_part`` (which cycle's part of the span) and ``rd_mv`` (one row,
    ``P`` words a cycle); ``rdata[r]`` the next cycle holds parts ``0 .. rd_part`` of the
    span (the earlier ones from ``hold``), ``span`` bytes wide.
    """

    def __init__(self, rows: int, capacity: int, line: int, word: int, span: int) -> None:
        for name, v in (("line", line), ("word", word), ("span", span)):
            if not _pow2(v):
                raise ValueError(f"tile buffer {name} must be a power of two, not {v!r}")
        self.rows = rows
        self.line = line
        self.word = word
        self.span = max(span, word)
        #: P: words of a line, banks of a group (1 when a word holds whole lines)
        self.stripe = max(1, line // word)
        self.per_word = max(1, word // line)  #: lines a word holds
        self.banks = -(-rows // self.stripe) * self.stripe  #: whole groups
        unit = max(line, word)
        self.capacity = -(-capacity // unit) * unit
        self.lines = self.capacity // line  #: tile lines per row
        self.depth = self.capacity // word
        #: cycles of the widest span: MM one word a cycle
        self.parts = self.span // word
        super().__init__(
            {
                "fill_valid": In(1),
                "fill_row": In(range(max(rows, 2))),
                "fill_index": In(range(self.lines + 2)),
                "fill_offset": In(range(max(line, 2))),
                "fill_count": In(range(self.lines + 1)),
                "fill_data": In(8 * line),
                "rd_en": In(1),
                "rd_addr": In(range(self.capacity)),
                "rd_part": In(range(max(self.parts, 2))),
                "rd_mv": In(1),
                "rdata": Out(data.ArrayLayout(unsigned(8 * self.span), rows)),
            }
        )

    def elaborate(self, platform) -> Module:
        m = Module()
        line, word, P = self.line, self.word, self.stripe
        lp, W = _lg(P), 8 * word
        # the previous arrival: its data and where it goes
        p_valid, p_data = Signal(), Signal(8 * line)
        p_row, p_index = Signal.like(self.fill_row), Signal.like(self.fill_index)
        p_off, p_count = Signal.like(self.fill_offset), Signal.like(self.fill_count)
        m.d.sync += [
            p_valid.eq(self.fill_valid),
            p_data.eq(self.fill_data),
            p_row.eq(self.fill_row),
            p_index.eq(self.fill_index),
            p_off.eq(self.fill_offset),
            p_count.eq(self.fill_count),
        ]
        # tile line p_index: bytes [off, off + line) of (previous line, this cycle's line)
        # as log2(line) stages of 2:1 multiplexers (a shift by 2^i bytes each), not one
        # flat multiplexer of line inputs per bit (kv260: 15 levels of muxf cells)
        aligned = Signal(8 * line)
        x = Cat(p_data, self.fill_data)
        for i in reversed(range(_lg(line))):
            x = Mux(p_off[i], x[8 << i :], x[: len(x) - (8 << i)])
        m.d.comb += aligned.eq(x[: 8 * line])
        write = p_valid & (p_index < p_count)
        # bank b of the row's group takes word q = (b XOR row) mod P of the line
        rq = p_row[:lp] if lp else Const(0, 1)
        perm = (
            [aligned.word_select(Const(i, max(lp, 1)) ^ rq, W) for i in range(P)]
            if lp
            else [aligned[:W]]
        )
        # the read: word w of the part; MM: every bank at w, MV: bank b at its word of w's
        # line ((w & ~(P - 1)) | b)
        base = self.rd_addr >> _lg(word)
        rw = Signal(range(self.depth + self.parts * P + 1))
        m.d.comb += rw.eq(Mux(self.rd_mv, base + (self.rd_part << lp), base + self.rd_part))
        r_valid, r_mv = Signal(), Signal()
        r_part, r_low = Signal.like(self.rd_part), Signal(max(lp, 1))
        m.d.sync += r_valid.eq(self.rd_en)
        with m.If(self.rd_en):
            m.d.sync += [
                r_mv.eq(self.rd_mv),
                r_part.eq(self.rd_part),
                r_low.eq(rw[:lp] if lp else 0),
            ]
        outs = []
        pw = self.per_word
        for b in range(self.banks):
            m.submodules[f"bank{b}"] = mem = Memory(shape=unsigned(W), depth=self.depth, init=[])
            rp = mem.read_port()
            q = b % P
            hit = write & ((p_row >> lp) == (b >> lp))
            if pw > 1:  # a word of several lines: the row's own bank, a line's byte lanes
                wp = mem.write_port(granularity=8 * line)
                lane = p_index & (pw - 1)
                m.d.comb += [
                    wp.addr.eq(p_index >> _lg(pw)),
                    wp.data.eq(Cat(*([aligned] * pw))),
                    wp.en.eq(Cat(*(hit & (lane == g) for g in range(pw)))),
                ]
            else:
                wp = mem.write_port()
                m.d.comb += [
                    wp.addr.eq(Cat(Const(0, lp), p_index) | (Const(q, max(lp, 1)) ^ rq)[:lp])
                    if lp
                    else wp.addr.eq(p_index),
                    wp.data.eq(perm[q]),
                    wp.en.eq(hit),
                ]
            m.d.comb += [
                rp.addr.eq(Mux(self.rd_mv, (rw >> lp << lp) | q, rw) if lp else rw),
                rp.en.eq(self.rd_en),
            ]
            outs.append(rp.data)
        self._rows(m, outs, r_valid, r_mv, r_part, r_low)
        return m

    def _rows(self, m, outs, r_valid, r_mv, r_part, r_low) -> None:
        """Each row's span: the part read last cycle from the banks (MM: row ``r``'s
        word from bank ``r XOR (w mod P)``; MV: row 0's ``P`` words from banks ``0 ..
        P - 1``), the earlier parts from ``hold``."""
        P, W, lp = self.stripe, 8 * self.word, _lg(self.stripe)
        nw = self.span // self.word
        # MV: word i of the part from bank (w mod P) | i (w is aligned to the part)
        mv_live = [Array(outs[:P])[r_low | i] if lp else outs[0] for i in range(min(P, nw))]
        for r in range(self.rows):
            group = Array(outs[r >> lp << lp : (r >> lp << lp) + P])
            live = group[(r_low ^ (r % P))[:lp]] if lp else outs[r]
            # the last word is always in a span's last part: never held
            hold = Signal(W * (nw - 1) or 1, name=f"hold{r}")
            out = self.rdata[r]
            for i in range(nw):
                held = hold.word_select(i, W) if i < nw - 1 else live
                mm_w = Mux(r_part == i, live, held) if i < nw - 1 else live
                if r == 0:
                    held = held if i < nw - 1 else mv_live[i % P]
                    mv_w = Mux(r_part == i >> lp, mv_live[i % P], held)
                    mm_w = Mux(r_mv, mv_w, mm_w)
                m.d.comb += out.word_select(i, W).eq(mm_w)
            with m.If(r_valid):
                m.d.sync += hold.eq(out[: len(hold)])
