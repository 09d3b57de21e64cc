"""The MPE's activation tile buffer (hw/mpe/tile_buffer.py) under Amaranth's simulator:
rows filled from unaligned ACT rows one line per cycle read back, span by span, as the
bytes the rows hold; and its banks are memories of one write and one read port."""

import shutil

import numpy as np
import pytest
from amaranth.sim import Simulator

from flightforge.hw import synth
from flightforge.hw.mpe.tile_buffer import TileBuffer
from flightforge.mpe import FILL_TAIL, fill_lines, tile_bank


def _fill_schedule(starts, k, line):
    """(row, line index, ACT line address, offset, tile lines) per fill cycle, back to back."""
    out = []
    for r, a in enumerate(starts):
        for j in range(fill_lines(a % line, k, line)):
            out.append((r, j, (a // line + j) * line, a % line, -(-k // line)))
    return out


def _spans(dut, sizes, k, mv):
    """(size, offset, parts) of every aligned span a step may read, as the engine reads
    them: parts of one word a row (MM) or of a line's words (MV)."""
    per = dut.word * (dut.stripe if mv else 1)
    return [
        (s, o, max(1, s // per)) for s in sizes for o in range(0, min(k, dut.capacity - s) + 1, s)
    ]


@pytest.mark.parametrize(
    "rows, capacity, line, word, sizes, k",
    [
        (4, 512, 8, 4, (4, 16, 32), 44),  # tiny's shape: a line is 2 words
        (2, 256, 32, 16, (16, 32), 40),  # parts of a word (MM), of 2 words (MV)
        (8, 256, 32, 4, (4, 16, 32), 72),  # 8 words a line over all 8 banks
        (4, 256, 4, 4, (4, 8, 16), 33),  # word = line: one bank a row
        (3, 256, 8, 4, (4, 8, 16), 30),  # 3 rows in 2 groups of 2 banks (4 banks)
        (1, 256, 16, 4, (4, 16), 50),  # one row, a group of 4 banks
        (2, 256, 4, 16, (16, 32), 40),  # a word of 4 lines: byte lanes of the row's bank
    ],
)
def test_fill_then_read_spans(rows, capacity, line, word, sizes, k) -> None:
    rng = np.random.default_rng(rows * line + k)
    act = rng.integers(0, 256, 4096, dtype=np.uint8)
    starts = [int(rng.integers(0, 1024)) for _ in range(rows)]
    dut = TileBuffer(rows, capacity, line, word, max(sizes))
    sched = _fill_schedule(starts, k, line)
    reads = [(mv, *sp) for mv in (0, 1) for sp in _spans(dut, sizes, k, mv)]
    got = []

    async def bench(ctx) -> None:
        # the fill: one ACT line arrives per cycle (the read was issued a cycle earlier)
        for r, j, addr, off, count in sched:
            ctx.set(dut.fill_valid, 1)
            ctx.set(dut.fill_row, r)
            ctx.set(dut.fill_index, j)
            ctx.set(dut.fill_offset, off)
            ctx.set(dut.fill_count, count)
            ctx.set(dut.fill_data, int.from_bytes(act[addr : addr + line].tobytes(), "little"))
            await ctx.tick()
        ctx.set(dut.fill_valid, 0)
        ctx.set(dut.fill_data, 0)
        # the last line's write lands FILL_TAIL - 1 cycles after its arrival
        for _ in range(FILL_TAIL - 1):
            await ctx.tick()
        for mv, _s, o, parts in reads:
            # part j in cycle j of the step, the last part in its last cycle (here: an
            # idle cycle between the parts, as in a step longer than its reads)
            for j in range(parts):
                ctx.set(dut.rd_en, 1)
                ctx.set(dut.rd_addr, o)
                ctx.set(dut.rd_part, j)
                ctx.set(dut.rd_mv, mv)
                await ctx.tick()
                if j == parts - 2:
                    ctx.set(dut.rd_en, 0)
                    await ctx.tick()
            ctx.set(dut.rd_en, 0)
            got.append([ctx.get(dut.rdata[r]) for r in range(rows)])

    sim = Simulator(dut)
    sim.add_clock(1e-6)
    sim.add_testbench(bench)
    sim.run()
    for (mv, s, o, _parts), vals in zip(reads, got, strict=True):
        for r, a in enumerate(starts[:1] if mv else starts):
            want = act[a + o : a + o + min(s, k - o)]
            have = (vals[r] & ((1 << 8 * s) - 1)).to_bytes(s, "little")[: len(want)]
            assert have == want.tobytes(), (mv, s, o, r)


def test_a_row_word_lives_in_its_group_by_xor() -> None:
    """Row ``r``'s word ``w`` in bank ``r XOR (w mod P)``: the ``P`` words of a line go
    to ``P`` distinct banks, and every row's word ``w`` to a distinct bank."""
    P, rows = 4, 8
    for r in range(rows):
        assert sorted(tile_bank(r, w, P)[0] for w in range(8, 8 + P)) == list(
            range(r & ~(P - 1), (r & ~(P - 1)) + P)
        )
    for w in range(2 * P):
        assert sorted(tile_bank(r, w, P)[0] for r in range(rows)) == list(range(rows))


@pytest.mark.skipif(shutil.which("yosys") is None, reason="needs yosys")
def test_banks_are_two_port_rams() -> None:
    """One memory per tile row (tiny: 4 rows, 2-word lines), ``depth`` words of
    ``word`` bytes, one registered read port and one write port: the shape Yosys maps
    to RAMB18E2 / RAMB36E2."""
    dut = TileBuffer(4, 512, 8, 4, 32)
    assert (dut.word, dut.depth, dut.lines, dut.stripe, dut.parts) == (4, 128, 64, 2, 8)
    mems = synth.memory_ports(dut, "tile", synth.yosys_binary())
    assert len(mems) == 4
    for mem in mems:
        assert (mem.words, mem.width) == (128, 32)
        assert (mem.read_ports, mem.write_ports, mem.ports, mem.async_reads) == (1, 1, 2, 0)


def test_refuses_a_line_that_is_no_power_of_two() -> None:
    with pytest.raises(ValueError, match="line must be a power of two"):
        TileBuffer(2, 64, 12, 4, 4)


def test_banks_are_whole_groups_of_a_line() -> None:
    """A line is written as one word into each bank of a group: 3 rows of 2-word lines
    need 2 groups, 4 banks; one row of 4-word lines a group of 4; a word of 4 lines one
    bank a row."""
    assert TileBuffer(3, 64, 8, 4, 4).banks == 4
    assert TileBuffer(1, 64, 16, 4, 4).banks == 4
    assert TileBuffer(3, 64, 4, 16, 16).banks == 3
