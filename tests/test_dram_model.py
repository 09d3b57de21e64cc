"""The independent memory (sim/dram_model.py): its published-timing terms each show in
the cycles a read or write takes, and the testbench's C++ port
(sim/verilator/flightforge_tb_host.cpp) does what the Python reference does, edge for
edge, on random traffic."""

from __future__ import annotations

import ctypes

import numpy as np
import pytest

from flightforge.mappings import load_target
from flightforge.sim.bus_model import MemoryTiming, ReadChannel, WriteChannel
from flightforge.sim.dram_model import DDR4, HBM2, Dram, channel_rate_mts, dram_timing
from flightforge.sim.functional import ExternalMemory


@pytest.fixture(scope="module")
def tiny_dram():
    return dram_timing(load_target("tiny"))


def test_parts_match_the_real_targets_rates() -> None:
    """The U280 and KV260 mappings' channel rates are their parts' published rates."""
    assert channel_rate_mts(load_target("u280"), HBM2) == HBM2.data_rate_mts == 1800
    assert channel_rate_mts(load_target("kv260"), DDR4) == DDR4.data_rate_mts == 2400
    assert HBM2.atom_bytes == 32 and DDR4.atom_bytes == 64
    assert channel_rate_mts(load_target("tiny"), HBM2) == 100  # a scaled link


def test_idle_closed_bank_read_takes_the_stated_latency(tiny_dram) -> None:
    """The mapping's latency_ns is the idle first-beat latency to a closed bank."""
    arch = load_target("tiny")
    d = Dram(tiny_dram)
    first = d.read_beats(0, 0, 1, arch.hbm.burst_bytes)[0]
    assert first == 1 + round(arch.hbm.latency_ns * arch.clock_mhz / 1000)


def test_row_hit_is_faster_than_a_conflict(tiny_dram) -> None:
    t = tiny_dram
    d = Dram(t)
    d.read_beats(0, 0, 1, 8)
    hit = d.read_beats(40, 64, 1, 8)[0] - 40  # before the first refresh
    other_row = t.page_bytes * t.banks  # same bank, next row
    conflict = d.read_beats(80, other_row, 1, 8)[0] - 80
    assert (d.stats.misses, d.stats.hits, d.stats.conflicts) == (1, 1, 1)
    assert conflict * d.cycle_ps(1) >= hit * d.cycle_ps(1) + t.rp_ps + t.rcd_ps - d.cycle_ps(1)


def test_bursts_stream_at_the_channel_rate(tiny_dram) -> None:
    """tiny: 0.8 GB/s per channel at 100 MHz is 8 bytes (one beat) per cycle."""
    beats = Dram(tiny_dram).read_beats(0, 0, 16, 8)
    assert np.diff(beats).tolist() == [1] * 15


def test_refresh_holds_the_channel(tiny_dram) -> None:
    t = tiny_dram
    d = Dram(t)
    cyc = -(-t.refi_ps // d.cycle_ps(1))  # first cycle at or after the first refresh
    before = d.read_beats(cyc - 100, 0, 1, 8)[0] - (cyc - 100)
    during = d.read_beats(cyc, 0, 1, 8)[0] - cyc
    assert d.stats.refreshes == 1
    assert during >= before + t.rfc_ps // d.cycle_ps(1)


def test_read_after_write_turns_the_bus_around(tiny_dram) -> None:
    d = Dram(tiny_dram)
    d.read_beats(0, 0, 1, 8)
    d.write_atom(40, 32)
    d.read_beats(40, 64, 1, 8)
    assert d.stats.turnarounds == 1


def test_unknown_memory_is_refused() -> None:
    from flightforge.sim.rtl_harness import RtlDevice

    with pytest.raises(ValueError, match=r"^memory must be one of model, dram, not 'ddr'$"):
        RtlDevice(load_target("tiny"), memory="ddr")


# --- the C++ port -----------------------------------------------------------------------


def test_cpp_dram_channels_equal_python_reference(cpp, random_traffic) -> None:
    """Random reads and writes on tiny's independent memory (over rows, banks, a refresh,
    with back-pressure): every output of every edge and the final memory agree."""
    arch = load_target("tiny")
    t = dram_timing(arch)
    rng = np.random.default_rng(7)
    beat, capacity = arch.hbm.burst_bytes, 1 << 16
    u8, i64 = ctypes.c_uint8, ctypes.c_int64
    cpp.ff_configure(capacity, ExternalMemory.PAGE_BITS, beat, 48, 0, 0, 0, t.channel_bytes)
    values = (i64 * len(t.as_list()))(*t.as_list())
    assert cpp.ff_configure_dram(values, len(t.as_list())) == 0
    init = rng.integers(0, 256, capacity, dtype=np.uint8)
    assert cpp.ff_mem_write(0, init.tobytes(), capacity) == 0
    mem = ExternalMemory(capacity)
    mem.write(0, init)
    dram, none = Dram(t), MemoryTiming(0, 0, 0, t.channel_bytes)
    rd = ReadChannel(mem, beat, none, dram=dram)
    wr = WriteChannel(mem, beat, none, dram=dram)
    random_traffic(  # past tiny's refresh interval (3.9 us = 390 cycles) often
        rd,
        wr,
        rng,
        cycles=12_000,
        addr_beats=capacity // beat - 8,
        cmd_p=(0.03, 0.02),
        ready_p=0.8,
        send_p=0.9,
        max_beats=(8, 6),
    )
    assert dram.stats.refreshes > 20 and dram.stats.conflicts and dram.stats.turnarounds
    out = np.zeros(capacity, np.uint8)
    assert cpp.ff_mem_read(0, out.ctypes.data_as(ctypes.POINTER(u8)), capacity) == 0
    assert out.tobytes() == mem.read(0, capacity).tobytes()
    assert cpp.ff_error() == b""
