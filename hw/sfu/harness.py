"""Simulation harness: one SFU operation component on element memories.

The core's SFU wrapper turns ``(row, col)`` and GLB element indices into byte addresses;
for unit tests the same ports are served by flat element memories (``row * cols + col``)
with the component's read latency, so a test hands over a MISC instruction, a tile and a
parameter vector and gets back the result tile and the cycle count.
"""

from __future__ import annotations

from typing import Callable

import numpy as np
from amaranth import Elaboratable, Module, Signal, signed
from amaranth.lib import memory, wiring
from amaranth.sim import Simulator

from flightforge import isa

from .common import ELEM_BITS, delay


class ElementMemories(Elaboratable):
    """``dut`` with its ``rd`` (and ``prm``) ports served from initialised memories."""

    def __init__(self, dut: wiring.Component, x: np.ndarray, params: np.ndarray | None) -> None:
        self.dut = dut
        self.cols = int(x.shape[1])
        self.x = [int(v) for v in np.asarray(x).ravel()]
        self.params = None if params is None else [int(v) for v in np.asarray(params).ravel()]

    def _port(self, m: Module, name: str, init: list[int], addr, en, data) -> None:
        mem = memory.Memory(shape=signed(ELEM_BITS), depth=max(len(init), 1), init=init)
        m.submodules[name] = mem
        rp = mem.read_port()
        m.d.comb += [rp.addr.eq(addr), rp.en.eq(en),
                     data.eq(delay(m, rp.data, self.dut.read_latency - 1, name))]

    def elaborate(self, platform) -> Module:
        m = Module()
        m.submodules.dut = dut = self.dut
        self._port(m, "x_mem", self.x, dut.rd.row * self.cols + dut.rd.col, dut.rd.en,
                   dut.rd.data)
        if self.params is not None:
            self._port(m, "p_mem", self.params, dut.prm.index, dut.prm.en, dut.prm.data)
        return m


def simulate(make: Callable[..., wiring.Component], instr: isa.MISC, x: np.ndarray,
             params: np.ndarray | None = None, *, read_latency: int = 1,
             max_cycles: int = 200_000) -> tuple[np.ndarray, int]:
    """Run one instruction; return the result tile and the cycles from ``start`` to ``done``.

    ``cycles`` counts the ``start`` cycle and the ``done`` cycle. Every element must be
    written exactly once; a missing or repeated write raises ``AssertionError``.
    """
    instr.check()
    dut = make(read_latency=read_latency)
    top = ElementMemories(dut, x, params)
    rows, cols = instr.rows, instr.cols
    out = np.zeros((rows, cols), dtype=np.int64)
    seen = np.zeros((rows, cols), dtype=np.int64)
    result = {}

    async def bench(ctx) -> None:
        ctx.set(dut.instr, {name: int(v) for name, v in instr.values().items()}
                | {"op": int(instr.op)})
        ctx.set(dut.start, 1)
        cycles = 1
        while True:
            await ctx.tick()
            ctx.set(dut.start, 0)
            cycles += 1
            if ctx.get(dut.wr.en):
                r, c = ctx.get(dut.wr.row), ctx.get(dut.wr.col)
                assert r < rows and c < cols, f"write outside the tile at ({r}, {c})"
                out[r, c] = ctx.get(dut.wr.data)
                seen[r, c] += 1
            if ctx.get(dut.done):
                break
            assert cycles < max_cycles, f"no done after {cycles} cycles"
        result["cycles"] = cycles

    sim = Simulator(top)
    sim.add_clock(1e-8)
    sim.add_testbench(bench)
    sim.run()
    bad = np.argwhere(seen != 1)
    assert not len(bad), (f"element {tuple(bad[0])} written {seen[tuple(bad[0])]} times "
                          f"({len(bad)} elements not written exactly once)")
    return out, result["cycles"]
