"""RTL building blocks in Amaranth's Python simulator: the sparse DSP chain, parameter checks."""

import numpy as np
import pytest
from amaranth.sim import Simulator

from flightforge.hw.buffers import Buffer
from flightforge.hw.bus import BufPortSignature
from flightforge.hw.dsp_chain import DspChain


@pytest.mark.parametrize("groups,window,seed", [(4, 16, 0), (2, 4, 1), (1, 2, 2)])
def test_dsp_chain_segments_match_numpy(groups: int, window: int, seed: int) -> None:
    rng = np.random.default_rng(seed)
    dut = DspChain(groups, window)
    macs = 2 * groups
    cases = []
    for _ in range(20):
        act = rng.integers(-128, 128, size=(macs, window))
        wgt = rng.integers(-128, 128, size=macs)
        idx = rng.integers(0, window, size=macs)
        cut = int(rng.integers(0, 1 << groups))
        prods = act[np.arange(macs), idx] * wgt
        want, run = [], 0
        for g in range(groups):
            run += prods[2 * g] + prods[2 * g + 1]
            want.append(int(run))
            if cut >> g & 1:
                run = 0
        cases.append((act, wgt, idx, cut, want))

    async def bench(ctx) -> None:
        for act, wgt, idx, cut, want in cases:
            ctx.set(dut.act, [[int(x) for x in row] for row in act])
            ctx.set(dut.wgt, [int(x) for x in wgt])
            ctx.set(dut.idx, [int(x) for x in idx])
            ctx.set(dut.cut, cut)
            ctx.set(dut.valid, 1)
            await ctx.tick()
            ctx.set(dut.valid, 0)
            assert not ctx.get(dut.out_valid)
            await ctx.tick()
            assert ctx.get(dut.out_valid)
            got = [ctx.get(dut.sums[g]) for g in range(groups)]
            assert got == want, f"cut={cut:b}: got {got}, want {want}"

    sim = Simulator(dut)
    sim.add_clock(1e-8)
    sim.add_testbench(bench)
    sim.run()


@pytest.mark.parametrize("make,exc,message", [
    (lambda: DspChain(0, 16), ValueError, "groups must be at least 1, not 0"),
    (lambda: DspChain(2.0, 16), TypeError, "groups must be an integer, not 2.0"),
    (lambda: DspChain(2, 12), ValueError, "window must be a power of two of at least 2, not 12"),
    (lambda: Buffer(0, 2), ValueError, "size must be at least 1, not 0"),
    (lambda: Buffer(64, "2"), TypeError, "ports must be an integer, not '2'"),
    (lambda: BufPortSignature(0), ValueError, "addr_bits must be at least 1, not 0"),
    (lambda: BufPortSignature(None), TypeError, "addr_bits must be an integer, not None"),
])
def test_parameter_checks(make, exc, message: str) -> None:
    with pytest.raises(exc, match=f"^{message}$"):
        make()
