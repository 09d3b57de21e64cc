"""The MPE's activation tile buffer: one two-port RAM bank per tile row.

Before this buffer every tile row read its own activation span from ACT through a
private port in every step (tiny: 16 of ACT's 34 ports, kv260: 32 ports of 128 B), so no
ACT lane RAM could be an FPGA RAM. Now the MPE reads ACT through ONE port of one aligned
line (``banks * width`` bytes) per cycle: when a row tile starts, the fill copies each
row's ``K`` activations into that row's bank (:func:`flightforge.mpe.fill_lines` lines a
row), and the steps of every column tile of the row tile read their spans from the
banks (``Timing.matmul``'s fill term, docs/cycle_model.md).

Each bank is an ``amaranth.lib.memory.Memory`` of ``word``-byte words with one write
port (the fill, a line at a time: byte-lane groups of ``line`` bytes) and one
synchronous read port (the steps), the simple-dual-port shape of a RAMB36E2 or URAM288.

**Realignment, once.** A row's activations may start at any byte of ACT (the compiler
views attention heads as column slices of a row, ``head_dim`` bytes apart, which is not
a multiple of kv260's or u280's line). The fill reads every aligned line the row touches
and the buffer writes tile line ``j`` one cycle after ACT line ``j`` arrived, as the
bytes ``[offset, offset + line)`` of that line and the next one (a funnel shift, one
per MPE, shared by all rows); bytes past the row's ``K`` are don't-cares (their weights
are zero). So a row costs ``ceil((offset + K) / line)`` fill cycles, and a tile row
always starts at byte 0 of its bank.

**Reads.** All rows of a step read the same byte offset (a multiple of the access size:
``k`` dense, ``max(1, k / N) * M`` for N:M), so the banks share one address; one cycle
later each row's ``rdata`` holds the span at byte 0 (the word's aligned slice chosen by
the access size, a multiplexer of ``word / size`` inputs per byte).
"""

from __future__ import annotations

from amaranth import Cat, Const, Module, Signal, unsigned
from amaranth.lib import data, wiring
from amaranth.lib.memory import Memory
from amaranth.lib.wiring import In, Out


def _lg(v: int) -> int:
    return v.bit_length() - 1


def _pow2(v: int) -> bool:
    return v >= 1 and not v & (v - 1)


class TileBuffer(wiring.Component):
    """``rows`` banks of ``capacity`` bytes (rounded up to whole ``word``-byte words).

    Fill side: ``fill_valid`` says an ACT line arrived in ``fill_data`` this cycle: line
    ``fill_index`` of tile row ``fill_row``, whose activations start ``fill_offset`` bytes
    into its first line and fill ``fill_lines_out`` tile lines (``ceil(K / line)``);
    lines at or past that count are read only for their bytes of the previous line.
    Read side: ``rd_en`` with ``rd_addr`` (byte offset in the row) and ``rd_lsize``
    (log2 of the access size, one of ``sizes``); ``rdata[r]`` the next cycle.
    """

    def __init__(self, rows: int, capacity: int, line: int, sizes: tuple[int, ...]) -> None:
        if not _pow2(line):
            raise ValueError(f"line must be a power of two, not {line!r}")
        if not sizes or any(not _pow2(s) for s in sizes):
            raise ValueError(f"access sizes must be powers of two, not {sizes!r}")
        self.rows = rows
        self.line = line
        self.sizes = tuple(sorted(set(sizes)))
        self.span = max(self.sizes)
        self.word = max(self.span, line)
        self.depth = -(-capacity // self.word)
        self.capacity = self.depth * self.word
        self.lines = self.capacity // line  #: tile lines per row
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
                "rd_lsize": In(range(_lg(self.span) + 1)),
                "rdata": Out(data.ArrayLayout(unsigned(8 * self.span), rows)),
            }
        )

    def elaborate(self, platform) -> Module:
        m = Module()
        line, word = self.line, self.word
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
        aligned = Signal(8 * line)
        m.d.comb += aligned.eq(
            Cat(p_data, self.fill_data).bit_select(Cat(Const(0, 3), p_off), 8 * line)
        )
        write = p_valid & (p_index < p_count)
        per_word = word // line
        w_addr = p_index >> _lg(per_word)
        r_addr = self.rd_addr >> _lg(word)
        # the read's slice of the word, registered with the read
        r_off, r_lsize = Signal(range(max(word, 2))), Signal.like(self.rd_lsize)
        with m.If(self.rd_en):
            m.d.sync += [r_off.eq(self.rd_addr & (word - 1)), r_lsize.eq(self.rd_lsize)]
        for r in range(self.rows):
            m.submodules[f"bank{r}"] = mem = Memory(
                shape=unsigned(8 * word), depth=self.depth, init=[]
            )
            wp = mem.write_port(granularity=8 * line) if per_word > 1 else mem.write_port()
            rp = mem.read_port()
            m.d.comb += [
                wp.addr.eq(w_addr),
                wp.data.eq(Cat(*([aligned] * per_word))),
                rp.addr.eq(r_addr),
                rp.en.eq(self.rd_en),
            ]
            hit = write & (p_row == r)
            if per_word > 1:
                lane = p_index & (per_word - 1)
                m.d.comb += wp.en.eq(Cat(*(hit & (lane == g) for g in range(per_word))))
            else:
                m.d.comb += wp.en.eq(hit)
            out = self.rdata[r]
            with m.Switch(r_lsize):
                for s in self.sizes:
                    with m.Case(_lg(s)):
                        m.d.comb += out.eq(rp.data.word_select(r_off >> _lg(s), 8 * s))
        return m
