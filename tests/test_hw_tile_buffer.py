"""The MPE's activation tile buffer (hw/mpe/tile_buffer.py) under Amaranth's simulator:
rows filled from unaligned ACT rows one line per cycle read back, span by span, as the
bytes the rows hold; and its banks are memories of one write and one read port."""

import shutil

import numpy as np
import pytest
from amaranth.sim import Simulator

from flightforge.hw import synth
from flightforge.hw.mpe.tile_buffer import TileBuffer
from flightforge.mpe import FILL_TAIL, fill_lines


def _fill_schedule(starts, k, line):
    """(row, line index, ACT line address, offset, tile lines) per fill cycle, back to back."""
    out = []
    for r, a in enumerate(starts):
        for j in range(fill_lines(a % line, k, line)):
            out.append((r, j, (a // line + j) * line, a % line, -(-k // line)))
    return out


@pytest.mark.parametrize(
    "rows, capacity, line, sizes, k",
    [
        (4, 512, 8, (4, 16, 32), 44),  # tiny's shape: word 32 B > line 8 B
        (2, 256, 32, (8, 16), 40),  # word = line
        (3, 256, 64, (16, 32), 72),  # line wider than the widest access
    ],
)
def test_fill_then_read_spans(rows, capacity, line, sizes, k) -> None:
    rng = np.random.default_rng(rows * line + k)
    act = rng.integers(0, 256, 4096, dtype=np.uint8)
    starts = [int(rng.integers(0, 1024)) for _ in range(rows)]
    dut = TileBuffer(rows, capacity, line, sizes)
    sched = _fill_schedule(starts, k, line)
    reads = [(s, o) for s in sizes for o in range(0, min(k, dut.capacity - s) + 1, s)]
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
        for s, o in reads:
            ctx.set(dut.rd_en, 1)
            ctx.set(dut.rd_addr, o)
            ctx.set(dut.rd_lsize, s.bit_length() - 1)
            await ctx.tick()
            ctx.set(dut.rd_en, 0)
            got.append([ctx.get(dut.rdata[r]) for r in range(rows)])

    sim = Simulator(dut)
    sim.add_clock(1e-6)
    sim.add_testbench(bench)
    sim.run()
    for (s, o), vals in zip(reads, got, strict=True):
        for r, a in enumerate(starts):
            want = act[a + o : a + o + min(s, k - o)]
            have = (vals[r] & ((1 << 8 * s) - 1)).to_bytes(s, "little")[: len(want)]
            assert have == want.tobytes(), (s, o, r)


@pytest.mark.skipif(shutil.which("yosys") is None, reason="needs yosys")
def test_banks_are_two_port_rams() -> None:
    """One memory per tile row, ``depth`` words of ``word`` bytes, one registered read
    port and one write port: the shape Yosys maps to RAMB36E2 / URAM288."""
    dut = TileBuffer(4, 512, 8, (4, 16, 32))
    assert (dut.word, dut.depth, dut.lines) == (32, 16, 64)
    mems = synth.memory_ports(dut, "tile", synth.yosys_binary())
    assert len(mems) == 4
    for mem in mems:
        assert (mem.words, mem.width) == (16, 256)
        assert (mem.read_ports, mem.write_ports, mem.ports, mem.async_reads) == (1, 1, 2, 0)


def test_refuses_a_line_that_is_no_power_of_two() -> None:
    with pytest.raises(ValueError, match="line must be a power of two"):
        TileBuffer(2, 64, 12, (4,))
