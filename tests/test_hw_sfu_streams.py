"""The SFU unit under Amaranth's simulator: every MISC operation on seeded random tiles,
bit-exact with the functional simulator and exactly as many cycles as ``Timing.misc``.

A fast check of the lane pipelines (no Verilator): the unit's buffer ports are served
by a Python model of the core's buffers (a read answers in the next cycle).
"""

from __future__ import annotations

import numpy as np
import pytest
from amaranth.sim import Simulator

from flightforge import isa
from flightforge.hw.sfu.unit import SFU_BUFFERS, SpecialFunctionUnit
from flightforge.sim import rtl_harness as h
from flightforge.sim.functional import FunctionalSim
from flightforge.sim.timing import duration


def run_unit(arch, unit, instr: isa.MISC, act: np.ndarray, glb: np.ndarray):
    """Run ``instr`` on ``unit`` with these buffer contents: (ACT after, cycles from
    ``start`` to ``done``)."""
    mem = {isa.Buf.ACT: act.copy(), isa.Buf.GLB: glb.copy()}
    ports = [(b, p) for b in SFU_BUFFERS for p in unit.ports(b)]
    word = int.from_bytes(isa.encode([instr])[: isa.INSTR_BYTES], "little")
    result = {}

    async def bench(ctx) -> None:
        for _, p in ports:
            ctx.set(p.grant, 1)
        ctx.set(unit.instr, word & ((1 << len(unit.instr)) - 1))
        ctx.set(unit.start, 1)
        cycles = 0
        sample = [
            s
            for _, p in ports
            for s in (p.req, p.we, p.addr, p.wdata, *((p.strb,) if hasattr(p, "strb") else ()))
        ]
        done = False
        while not done:
            _, _, *vals, done = await ctx.tick().sample(*sample, unit.done)
            ctx.set(unit.start, 0)
            cycles += 1
            it = iter(vals)
            reads, writes = [], []
            for b, p in ports:
                req, we, addr, wdata = next(it), next(it), next(it), next(it)
                width = len(p.wdata) // 8
                strb = next(it) if hasattr(p, "strb") else 1
                if req and we:
                    writes.append((b, addr, wdata, strb, width))
                elif req:
                    reads.append(
                        (p, bytes(mem[b][addr : addr + width].tobytes()).ljust(width, b"\0"))
                    )
            for p, data in reads:
                ctx.set(p.rdata, int.from_bytes(data, "little"))
            for b, addr, wdata, strb, width in writes:
                for i in range(width):
                    if strb >> i & 1:
                        mem[b][addr + i] = wdata >> (8 * i) & 0xFF
            assert cycles < 20_000, "the SFU did not finish"
        result["cycles"] = cycles

    sim = Simulator(unit)
    sim.add_clock(1e-8)
    sim.add_testbench(bench)
    sim.run()
    return mem[isa.Buf.ACT], result["cycles"]


def _instructions(seed: int, ops, count: int) -> list[isa.MISC]:
    """The random MISC instructions of the RTL differential test (1-3 rows)."""
    rng = np.random.default_rng(seed)
    out = []
    while len(out) < count:
        ins = h._random_misc(rng, ops)
        if ins is not None:
            out.append(ins)
    return out


def check_against_reference(
    arch, unit, ins: isa.MISC, act_bytes: np.ndarray, glb_bytes: np.ndarray
) -> int:
    """Run ``ins`` on the unit and on the functional simulator from buffers starting with
    these bytes (zeros after); assert equal ACT contents and ``Timing.misc``'s cycles.
    Returns the cycles."""
    act = np.zeros(arch.buffers.of(isa.Buf.ACT).size, np.uint8)
    glb = np.zeros(arch.buffers.of(isa.Buf.GLB).size, np.uint8)
    act[: len(act_bytes)] = act_bytes
    glb[: len(glb_bytes)] = glb_bytes
    ref = FunctionalSim(arch)
    ref.buffer(isa.Buf.ACT)[:] = act
    ref.buffer(isa.Buf.GLB)[:] = glb
    ref.execute([ins, isa.SYS(op=isa.SysOp.HALT)])
    got, cycles = run_unit(arch, unit, ins, act, glb)
    bad = np.nonzero(got != ref.buffer(isa.Buf.ACT))[0]
    assert not len(bad), f"{ins}: ACT differs at {bad[:8].tolist()}"
    assert cycles == duration(arch, ins), f"{ins}: {cycles} cycles, model {duration(arch, ins)}"
    return cycles


@pytest.mark.parametrize(
    "ops,seed",
    [
        ((isa.MiscOp.SOFTMAX,), 1),
        ((isa.MiscOp.RMSNORM, isa.MiscOp.LAYERNORM), 2),
        (h.RANDOM_MISC_OPS, 3),
    ],
)
def test_sfu_matches_functional_sim_and_timing(tiny, ops, seed) -> None:
    unit = SpecialFunctionUnit(tiny)
    rng = np.random.default_rng(seed + 100)
    for ins in _instructions(seed, ops, 8):
        check_against_reference(
            tiny,
            unit,
            ins,
            rng.integers(0, 256, h.WINDOWS[isa.Buf.ACT]),
            rng.integers(0, 256, h.WINDOWS[isa.Buf.GLB]),
        )


@pytest.mark.parametrize(
    "op,rows,cols",
    [
        (isa.MiscOp.SOFTMAX, 3, 30),  # p < gap: each row waits gap - p
        (isa.MiscOp.SOFTMAX, 3, 180),  # p > gap: the reciprocal hides behind the next MAX
        (isa.MiscOp.RMSNORM, 4, 120),  # p < gap < 2p: the sequence hides behind OUT + STATS
        (isa.MiscOp.LAYERNORM, 4, 120),  # 2p < gap: rows every gap cycles
        (isa.MiscOp.LAYERNORM, 3, 400),  # p > gap: nothing exposed but row 0's
    ],
)
def test_row_reductions_hide_their_per_row_wait(tiny, op, rows, cols) -> None:
    """Long rows: the per-row divide / square root overlaps the neighbouring rows'
    passes, the result stays bit-exact and the cycles are ``Timing.misc``'s."""
    from flightforge import sfu_row_ops as sfu

    rng = np.random.default_rng(cols)
    a_addr, d_addr = 0, rows * cols
    ins = isa.MISC(
        op=op,
        rows=rows,
        cols=cols,
        a_addr=a_addr,
        a_stride=cols,
        d_addr=d_addr,
        d_stride=cols,
        m0=int(rng.integers(1, 1 << 12)),
        shift=int(rng.integers(8, 16)),
        eps=int(rng.integers(0, 1 << 16)) if op != isa.MiscOp.SOFTMAX else 0,
    )
    cycles = check_against_reference(
        tiny,
        SpecialFunctionUnit(tiny),
        ins,
        rng.integers(0, 256, rows * cols),
        rng.integers(0, 256, 4 * cols),
    )
    unhidden = {
        isa.MiscOp.SOFTMAX: 3 * rows,
        isa.MiscOp.RMSNORM: 2 * rows,
        isa.MiscOp.LAYERNORM: 2 * rows,
    }[op] * -(-cols // tiny.sfu.lanes)
    gap = (
        sfu.SOFTMAX_ROW_GAP
        if op == isa.MiscOp.SOFTMAX
        else sfu.norm_row_gap(op == isa.MiscOp.LAYERNORM)
    )
    print(
        f"{op.name} {rows}x{cols}: {cycles} cycles, passes {unhidden}, "
        f"serial waits would add {rows * gap}"
    )
    assert cycles < unhidden + rows * gap + sfu.misc_depth(
        op, tiny.sfu.pipeline_depth, tiny.sfu.lanes
    )
