"""Amaranth's Python simulator on the whole core, with :mod:`.bus_model`'s memory.

The Verilator testbench (:mod:`.rtl_harness`) runs the core's exported Verilog with a
C++ port of :mod:`.bus_model`; this runs the same :class:`~flightforge.hw.core.Core`
from its Amaranth source under ``amaranth.sim``, with the Python channels stepped by an
async testbench at every edge. It is the fair reference for the Verilator speed figure
(``benchmarks/rtl_speed.py``: same design, same section, same memory timing) and an
independent check of the testbench: both must count the same cycles and leave the same
external memory.
"""

from __future__ import annotations

import time
from collections.abc import Sequence
from dataclasses import dataclass

from flightforge import isa
from flightforge.arch import ArchConfig

from .bus_model import ReadChannel, WriteChannel, memory_timing
from .functional import ExternalMemory


@dataclass(frozen=True)
class PysimRun:
    """One section on the Python simulator."""

    cycles: int  #: the section's cycles, counted as the Verilator wrapper counts them
    halted: bool  #: False when ``max_cycles`` stopped the run first
    wall_s: float  #: wall time of the section's run alone (from ``start`` to its end)
    setup_s: float  #: building the simulator (elaboration) and loading the code
    memory: ExternalMemory  #: external memory after the run


def run_section(
    arch: ArchConfig,
    writes: Sequence[tuple[int, bytes]],
    code: bytes,
    *,
    max_cycles: int | None = None,
) -> PysimRun:
    """Write ``writes`` to external memory, load ``code`` and run it from ``start``.

    Cycles are counted from the edge that takes ``start`` to the edge at which ``halted``
    rises, like ``flightforge_tb.sv`` (and the cycle model's ``HALT dispatch + 1``);
    with ``max_cycles``, the run stops after that many cycles if it has not halted.
    """
    from amaranth.sim import Simulator

    from flightforge.hw.core import Core

    t_setup = time.perf_counter()
    memory = ExternalMemory(arch.hbm.capacity)
    for addr, data in writes:
        memory.write(addr, data)
    timing, beat = memory_timing(arch), arch.hbm.burst_bytes
    rd, wr = ReadChannel(memory, beat, timing), WriteChannel(memory, beat, timing)
    dut = Core(arch)
    out: dict = {}

    async def edge(ctx) -> bool:
        """Step both channels with the values before this edge; returns ``halted``."""
        r, w = dut.mem_rd, dut.mem_wr
        valid, data = rd.step(
            ctx.get(r.cmd_valid), ctx.get(r.cmd_addr), ctx.get(r.cmd_beats), ctx.get(r.data_ready)
        )
        resp = wr.step(
            ctx.get(w.cmd_valid),
            ctx.get(w.cmd_addr),
            ctx.get(w.cmd_beats),
            ctx.get(w.data_valid),
            ctx.get(w.data),
            ctx.get(w.strb),
        )
        halted = bool(ctx.get(dut.halted))
        await ctx.tick()
        ctx.set(r.data_valid, valid)
        ctx.set(r.data, data)
        ctx.set(w.resp_valid, resp)
        return halted

    async def testbench(ctx) -> None:
        ctx.set(dut.mem_rd.cmd_ready, 1)
        ctx.set(dut.mem_wr.cmd_ready, 1)
        ctx.set(dut.mem_wr.data_ready, 1)
        n = len(code) // isa.INSTR_BYTES
        for i in range(n):
            ctx.set(dut.imem_we, 1)
            ctx.set(dut.imem_addr, i)
            ctx.set(
                dut.imem_wdata,
                int.from_bytes(code[i * isa.INSTR_BYTES : (i + 1) * isa.INSTR_BYTES], "little"),
            )
            await edge(ctx)
        ctx.set(dut.imem_we, 0)
        ctx.set(dut.start, 1)
        out["t0"] = time.perf_counter()
        await edge(ctx)  # the core takes `start` at this edge: model time 0
        ctx.set(dut.start, 0)
        count = 0
        while True:
            if await edge(ctx):
                out["halted"] = True
                break
            if max_cycles is not None and count >= max_cycles:
                out["halted"] = False
                break
            count += 1
        out["t1"], out["cycles"] = time.perf_counter(), count

    sim = Simulator(dut)
    sim.add_clock(1e-8)
    sim.add_testbench(testbench)
    sim.run()
    wall = out["t1"] - out["t0"]
    return PysimRun(
        out["cycles"], out["halted"], wall, time.perf_counter() - t_setup - wall, memory
    )
