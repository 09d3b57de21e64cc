"""The external-memory model of the RTL testbenches (sim/bus_model.py): its timing is
the cycle model's, and the C++ port the Verilator wrapper runs
(sim/verilator/flightforge_tb_host.cpp) does exactly what the Python reference does,
edge for edge, on random traffic."""

from __future__ import annotations

import ctypes

import numpy as np
import pytest

from flightforge.sim.bus_model import MemoryTiming, ReadChannel, WriteChannel
from flightforge.sim.device import DeviceError
from flightforge.sim.functional import ExternalMemory

BEAT = 8
TIMING = MemoryTiming(rd_latency=5, wr_latency=4, penalty=2, channel_bytes=256)
CAPACITY = 1024


def _memory() -> ExternalMemory:
    mem = ExternalMemory(CAPACITY)
    mem.write(0, np.arange(CAPACITY, dtype=np.uint32).astype(np.uint8))
    return mem


def _read_trace(commands: dict[int, tuple[int, int]], cycles: int, ready=lambda c: True):
    """Cycles in which a beat is driven, and its data, for commands ``{cycle: (addr, beats)}``."""
    ch = ReadChannel(_memory(), BEAT, TIMING)
    out, valid = [], False
    for c in range(cycles):
        addr, beats = commands.get(c, (0, 0))
        taken = valid and ready(c)
        valid, data = ch.step(c in commands, addr, beats, taken)
        if valid:
            out.append((c + 1, data))
    return out


def test_read_first_beat_after_latency_then_one_per_cycle() -> None:
    beats = _read_trace({0: (16, 3)}, 20)
    assert [c for c, _ in beats] == [5, 6, 7]
    assert beats[0][1] == int.from_bytes(bytes(range(16, 24)), "little")


def test_read_commands_back_to_back_pay_latency_once() -> None:
    assert [c for c, _ in _read_trace({0: (0, 2), 1: (64, 2)}, 20)] == [5, 6, 7, 8]


def test_read_beat_held_until_taken() -> None:
    beats = _read_trace({0: (0, 2)}, 20, ready=lambda c: c != 5)
    assert [c for c, _ in beats] == [5, 6, 7]  # beat 0 driven again in cycle 6
    assert beats[0][1] == beats[1][1]


def test_read_over_a_channel_boundary_pays_the_penalty() -> None:
    assert [c for c, _ in _read_trace({0: (248, 2)}, 20)] == [7, 8]


def test_read_outside_memory_names_the_bytes() -> None:
    ch = ReadChannel(_memory(), BEAT, TIMING)
    with pytest.raises(
        DeviceError,
        match=r"^LD command: bytes 1016\.\.1031 are outside "
        r"external memory \(0\.\.1023\)$",
    ):
        ch.step(True, 1016, 2, False)


def test_write_response_after_last_beat_and_strobes() -> None:
    mem = ExternalMemory(CAPACITY)
    ch = WriteChannel(mem, BEAT, TIMING)
    word = int.from_bytes(bytes(range(1, 9)), "little")
    resp = [ch.step(c == 0, 248, 2, c in (0, 1), word, 0x0F if c == 0 else 0xFF) for c in range(12)]
    # last beat in cycle 1; response due 1 + 4 + 2 (one boundary), driven in that cycle
    assert [c + 1 for c, r in enumerate(resp) if r] == [7]
    assert mem.read(248, 16).tolist() == [1, 2, 3, 4, 0, 0, 0, 0] + list(range(1, 9))


def test_write_beat_without_command_is_an_error() -> None:
    ch = WriteChannel(ExternalMemory(CAPACITY), BEAT, TIMING)
    with pytest.raises(DeviceError, match=r"^cycle 0: a write beat without a command$"):
        ch.step(False, 0, 0, True, 0, 0xFF)


# --- the C++ port (the ``cpp`` fixture: tests/conftest.py) ---------------------------------


def test_cpp_channels_equal_python_reference(cpp, random_traffic) -> None:
    """Random commands (over channel boundaries too), random back-pressure, random
    strobes: every output of every edge and the final memory agree."""
    rng = np.random.default_rng(5)
    u8 = ctypes.c_uint8
    cpp.ff_configure(
        CAPACITY,
        ExternalMemory.PAGE_BITS,
        BEAT,
        48,
        TIMING.rd_latency,
        TIMING.wr_latency,
        TIMING.penalty,
        TIMING.channel_bytes,
    )
    init = _memory().read(0, CAPACITY).tobytes()
    assert cpp.ff_mem_write(0, init, CAPACITY) == 0
    py_mem = _memory()
    rd, wr = ReadChannel(py_mem, BEAT, TIMING), WriteChannel(py_mem, BEAT, TIMING)
    random_traffic(
        rd,
        wr,
        rng,
        cycles=3000,
        addr_beats=120,
        cmd_p=(0.08, 0.05),
        ready_p=0.7,
        send_p=0.8,
        max_beats=(4, 3),
    )
    out = np.zeros(CAPACITY, np.uint8)
    assert cpp.ff_mem_read(0, out.ctypes.data_as(ctypes.POINTER(u8)), CAPACITY) == 0
    assert out.tobytes() == py_mem.read(0, CAPACITY).tobytes()
    assert cpp.ff_error() == b""


@pytest.mark.slow
def test_python_simulator_with_reference_memory_is_cycle_exact() -> None:
    """The Amaranth core under its Python simulator with these channels (the speed
    reference of benchmarks/rtl_speed.py) counts the cycle model's cycles and stores
    what the functional simulator stores."""
    from flightforge import isa
    from flightforge.mappings import load_target
    from flightforge.sim import pysim_harness
    from flightforge.sim import rtl_harness as h
    from flightforge.sim.dispatch import run_dispatch
    from flightforge.sim.functional import FunctionalSim
    from flightforge.sim.timing import duration

    arch = load_target("tiny")
    rng = np.random.default_rng(11)
    data = rng.integers(0, 256, h.EXT_DATA[1], dtype=np.uint8).tobytes()
    sec = h.random_section(arch, rng, length=6, misc_ops=())
    run = pysim_harness.run_section(arch, [(h.EXT_DATA[0], data)], isa.encode(sec))
    model = run_dispatch(
        sec,
        token_depth=arch.token_depth,
        queue_depth=arch.queue_depth,
        duration=lambda i, ins: duration(arch, ins),
    ).cycles
    ref = FunctionalSim(arch)
    ref.write(h.EXT_DATA[0], data)
    ref.execute(sec, name="pysim")
    assert run.halted and run.cycles == model, (run.cycles, model)
    assert run.memory.read(*h.EXT_OUT).tobytes() == ref.read(*h.EXT_OUT)
