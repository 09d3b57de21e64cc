"""Sequential divider, integer square root and the shared lane datapath of the SFU
against Python's exact integers."""

from __future__ import annotations

import numpy as np
import pytest
from amaranth.sim import Simulator

from flightforge import isa, numerics
from flightforge.hw.sfu import Divider, ISqrt
from flightforge.hw.sfu import lane as sfu_lane


def _run(dut, bench) -> None:
    sim = Simulator(dut)
    sim.add_clock(1e-8)
    sim.add_testbench(bench)
    sim.run()


@pytest.mark.parametrize("nw,dw,seed", [(39, 32, 0), (48, 16, 1), (8, 8, 2)])
def test_divider_matches_floor_division(nw: int, dw: int, seed: int) -> None:
    rng = np.random.default_rng(seed)
    cases = [(1 << (nw - 1), 1), ((1 << nw) - 1, (1 << dw) - 1), (5, 7)]
    cases += [
        (
            int(rng.integers(0, 1 << nw, dtype=np.uint64)),
            int(rng.integers(1, 1 << dw, dtype=np.uint64)),
        )
        for _ in range(6)
    ]
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


def _rnd(x: int, s: int) -> int:
    return x if s == 0 else (x + (1 << (s - 1))) >> s


def _wrap(x: int, bits: int) -> int:
    x &= (1 << bits) - 1
    return x - (1 << bits) if x >> (bits - 1) else x


@pytest.mark.parametrize("seed", [0, 1])
def test_sfu_lane_matches_its_formula(seed: int) -> None:
    """``SfuLane`` on random operands of full width in every mode (chain, acc, sub), a new
    set every cycle: ``sat(rnd((acc ? p1 : 0) +- (chain ? rnd(p1, s1) : c) * d, s2) +
    bias)``, with ``prod``, ``round1`` and ``result`` exactly ``LANE_PROD``,
    ``LANE_ROUND1`` and ``LANE_LATENCY`` cycles after their operands."""
    from flightforge.sfu_row_ops import LANE_LATENCY, LANE_PROD, LANE_ROUND1

    rng = np.random.default_rng(seed)
    dut = sfu_lane.SfuLane()

    def rand(bits: int) -> int:
        return int(rng.integers(-(1 << (bits - 1)), 1 << (bits - 1), dtype=np.int64))

    def operands(i: int) -> dict:
        op = {
            "a": rand(sfu_lane.A_BITS),
            "b": rand(sfu_lane.B_BITS),
            "c": rand(sfu_lane.C_BITS),
            "d": rand(sfu_lane.D_BITS),
            "chain": int(rng.integers(2)),
            "acc": int(rng.integers(2)),
            "sub": int(rng.integers(2)),
            "bias": rand(sfu_lane.BIAS_BITS),
            "shift1": int(rng.integers(0, 1 << isa.SHIFT_BITS)),
            "shift2": int(rng.integers(0, 1 << isa.SHIFT_BITS)),
            "dt": int(rng.integers(0, len(isa.DType))),
        }
        if i % 3 == 0:  # small values, so that the saturation does not always clip
            op.update(a=rand(12), b=rand(8), c=rand(12), d=rand(8), shift2=op["shift2"] % 8)
        if i % 7 == 0:  # large products and shifts near the widths
            op.update(shift1=int(rng.integers(40, 64)), shift2=int(rng.integers(50, 64)))
        return op

    def expected(op: dict) -> tuple[int, int, int]:
        p1 = op["a"] * op["b"]
        r1 = _rnd(p1, op["shift1"])
        p2 = (_wrap(r1, sfu_lane.C_BITS) if op["chain"] else op["c"]) * op["d"]
        w = (p1 if op["acc"] else 0) + (-p2 if op["sub"] else p2)
        lo, hi = numerics.dtype_range(isa.DType(op["dt"]))
        return (
            p1,
            _wrap(r1, sfu_lane.ROUND1_BITS),
            min(hi, max(lo, _rnd(w, op["shift2"]) + op["bias"])),
        )

    async def bench(ctx) -> None:
        sent = []
        for i in range(300 + LANE_LATENCY):
            op = operands(i)
            for k, v in op.items():
                ctx.set(getattr(dut, k), v)
            sent.append((op, expected(op)))
            await ctx.tick()
            for port, lat in ((dut.prod, LANE_PROD), (dut.round1, LANE_ROUND1)):
                if len(sent) >= lat:
                    o, want = sent[-lat]
                    k = 0 if port is dut.prod else 1
                    assert ctx.get(port) == want[k], (
                        f"{o}: {port.name} {ctx.get(port)}, want {want[k]}"
                    )
            if len(sent) >= LANE_LATENCY:
                o, want = sent[-LANE_LATENCY]
                assert ctx.get(dut.result) == want[2], (
                    f"{o}: result {ctx.get(dut.result)}, want {want[2]}"
                )

    _run(dut, bench)


@pytest.mark.parametrize(
    "make,message,exc",
    [
        (lambda: Divider(0, 4), "dividend_width must be at least 1, not 0", ValueError),
        (lambda: Divider(8, "4"), "divisor_width must be an integer, not '4'", TypeError),
        (lambda: ISqrt(True), "width must be an integer, not True", TypeError),
        (lambda: ISqrt(-2), "width must be at least 1, not -2", ValueError),
    ],
)
def test_parameter_checks(make, message: str, exc: type[Exception]) -> None:
    with pytest.raises(exc, match=f"^{message}$"):
        make()


def test_sfu_row_gaps() -> None:
    """The per-row waits of SOFTMAX and the norms (flightforge.sfu_row_ops), from the latencies
    of the divider and square root measured above."""
    from flightforge import sfu_row_ops as sfu

    # the row sum's register stage, then the divider
    assert sfu.SOFTMAX_ROW_GAP == sfu.SOFTMAX_SUM_STAGES + Divider.latency_of(39) == 41
    # the statistics (registered NORM_STATS_DELAY + 1 cycles after the last arrival,
    # ISSUE_STAGES + 1 after the last issue), mean square, square root, inverse root, latch;
    # LAYERNORM first its mean (a division) and centring (CENTRE_STEPS = 3, and one)
    stats = 2 + sfu.ISSUE_STAGES + sfu.NORM_STATS_DELAY
    assert sfu.norm_row_gap(False) == stats + 2 * Divider.latency_of(48) + ISqrt.latency_of(50)
    assert sfu.norm_row_gap(False) == 132
    assert sfu.norm_row_gap(True) == sfu.norm_row_gap(False) + Divider.latency_of(48) + 4 == 185
