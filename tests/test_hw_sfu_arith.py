"""Sequential divider and integer square root of the SFU against Python's exact integers."""

from __future__ import annotations

import numpy as np
import pytest
from amaranth.sim import Simulator

from flightforge import numerics
from flightforge.hw.sfu import Divider, ISqrt


def _run(dut, bench) -> None:
    sim = Simulator(dut)
    sim.add_clock(1e-8)
    sim.add_testbench(bench)
    sim.run()


@pytest.mark.parametrize("nw,dw,seed", [(39, 32, 0), (48, 16, 1), (8, 8, 2)])
def test_divider_matches_floor_division(nw: int, dw: int, seed: int) -> None:
    rng = np.random.default_rng(seed)
    cases = [(1 << (nw - 1), 1), ((1 << nw) - 1, (1 << dw) - 1), (5, 7)]
    cases += [(int(rng.integers(0, 1 << nw, dtype=np.uint64)),
               int(rng.integers(1, 1 << dw, dtype=np.uint64))) for _ in range(6)]
    dut = Divider(nw, dw)

    async def bench(ctx) -> None:
        for n, d in cases:
            ctx.set(dut.dividend, n)
            ctx.set(dut.divisor, d)
            ctx.set(dut.start, 1)
            await ctx.tick()
            ctx.set(dut.start, 0)
            cycles = 1
            while not ctx.get(dut.done):
                await ctx.tick()
                cycles += 1
            assert cycles == dut.latency, f"latency {cycles}, documented {dut.latency}"
            q, r = ctx.get(dut.quotient), ctx.get(dut.remainder)
            assert (q, r) == divmod(n, d), f"{n} // {d}: got q={q} r={r}, want {divmod(n, d)}"

    _run(dut, bench)


@pytest.mark.parametrize("width,seed", [(49, 0), (8, 1), (7, 2)])
def test_isqrt_matches_numerics(width: int, seed: int) -> None:
    rng = np.random.default_rng(seed)
    top = (1 << width) - 1
    values = [0, 1, 2, 3, 4, top, top - 1]
    values += [int(rng.integers(0, top + 1, dtype=np.uint64)) for _ in range(6)]
    r = int(rng.integers(1, 1 << (width // 2)))
    values += [r * r, r * r - 1]
    dut = ISqrt(width)

    async def bench(ctx) -> None:
        for v in values:
            ctx.set(dut.value, v)
            ctx.set(dut.start, 1)
            await ctx.tick()
            ctx.set(dut.start, 0)
            cycles = 1
            while not ctx.get(dut.done):
                await ctx.tick()
                cycles += 1
            assert cycles == dut.latency, f"latency {cycles}, documented {dut.latency}"
            got, want = ctx.get(dut.root), int(numerics.isqrt(np.int64(v)))
            assert got == want, f"isqrt({v}): got {got}, want {want}"

    _run(dut, bench)


@pytest.mark.parametrize("make,message,exc", [
    (lambda: Divider(0, 4), "dividend_width must be at least 1, not 0", ValueError),
    (lambda: Divider(8, "4"), "divisor_width must be an integer, not '4'", TypeError),
    (lambda: ISqrt(True), "width must be an integer, not True", TypeError),
    (lambda: ISqrt(-2), "width must be at least 1, not -2", ValueError),
])
def test_parameter_checks(make, message: str, exc: type[Exception]) -> None:
    with pytest.raises(exc, match=f"^{message}$"):
        make()


def test_sfu_row_gaps() -> None:
    """The per-row waits of SOFTMAX and the norms (flightforge.sfu), from the latencies
    of the divider and square root measured above."""
    from flightforge import sfu

    assert sfu.SOFTMAX_ROW_GAP == Divider.latency_of(39) == 40
    # mean square, square root, inverse root, latch; LAYERNORM first its mean and centring
    assert sfu.norm_row_gap(False) == 2 + 2 * Divider.latency_of(48) + ISqrt.latency_of(50) == 126
    assert sfu.norm_row_gap(True) == sfu.norm_row_gap(False) + Divider.latency_of(48) + 3 == 178
