"""RTL building blocks in Amaranth's Python simulator: the sparse DSP chain, the buffers'
unaligned ports, parameter checks, the shared requantiser."""

import numpy as np
import pytest
from amaranth.sim import Simulator

from flightforge import isa
from flightforge.hw.buffers import Buffer
from flightforge.hw.bus import BufPortSignature
from flightforge.hw.mpe import DspChain
from flightforge.hw.mpe.epilogue import HELD_BITS
from flightforge.hw.mpe.requant import Requantiser
from flightforge.mpe import REQUANT_STAGES, RUN


def chain_reference(act, wgt, idx, cut, groups: int) -> list[list[int]]:
    """The lane sums a chain reads at its odd slices: per lane, the products since the
    last cut (``cut`` bit ``g`` ends a segment after slice ``g``) or run start."""
    want, run = [], [0, 0]
    for g in range(groups):
        if g and (cut >> (g - 1) & 1 or g % RUN == 0):
            run = [0, 0]
        run = [run[lane] + int(act[g][lane][idx[g]]) * int(wgt[g]) for lane in range(2)]
        if g % 2:
            want.append(list(run))
    return want


@pytest.mark.parametrize(
    "groups,window,seed,extreme",
    [(4, 16, 0, False), (2, 4, 1, False), (16, 16, 2, False), (16, 2, 3, True)],
)
def test_dsp_chain_lane_sums_match_numpy(groups: int, window: int, seed: int, extreme) -> None:
    """Steps enter every cycle (the systolic pipeline full) and leave ``latency`` later;
    ``extreme``: every operand -128 or 127, the lane fields' limits (WP487 packing)."""
    rng = np.random.default_rng(seed)
    dut = DspChain(groups, window)
    lo, hi = (-128, 128) if not extreme else (-128, -127)
    cases = []
    for _ in range(24):
        act = rng.integers(lo, hi, size=(groups, 2, window))
        wgt = rng.integers(lo, hi, size=groups)
        if extreme:
            act = np.where(rng.integers(0, 4, size=act.shape) == 0, 127, act)
            wgt = np.where(rng.integers(0, 4, size=wgt.shape) == 0, 127, wgt)
        idx = rng.integers(0, window, size=groups)
        cut = int(rng.integers(0, 1 << groups)) if not extreme else 0
        cases.append((act, wgt, idx, cut, chain_reference(act, wgt, idx, cut, groups)))

    async def bench(ctx) -> None:
        got = []
        for t in range(len(cases) + dut.latency):
            if t < len(cases):
                act, wgt, idx, cut, _ = cases[t]
                ctx.set(dut.act, [[[int(x) for x in w] for w in lanes] for lanes in act])
                ctx.set(dut.wgt, [int(x) for x in wgt])
                ctx.set(dut.idx, [int(x) for x in idx])
                ctx.set(dut.cut, cut)
            ctx.set(dut.valid, t < len(cases))
            if ctx.get(dut.out_valid):
                got.append(
                    [[ctx.get(dut.sums[h][lane]) for lane in range(2)] for h in range(groups // 2)]
                )
            await ctx.tick()
        assert len(got) == len(cases), f"{len(got)} outputs for {len(cases)} steps"
        for t, sums in enumerate(got):
            assert sums == cases[t][4], (
                f"step {t} cut={cases[t][3]:b}: got {sums}, want {cases[t][4]}"
            )

    sim = Simulator(dut)
    sim.add_clock(1e-8)
    sim.add_testbench(bench)
    sim.run()


@pytest.mark.parametrize(
    "size,widths,lanes,seed",
    [
        (256, [1, 4, 8, 8], 8, 0),
        (128, [2, 4, 3], 4, 1),
        (64, [1, 1], 1, 2),
        (512, [16, 5, 32], 32, 3),
    ],
)
def test_buffer_ports_unaligned_match_bytes(
    size: int, widths: list[int], lanes: int, seed: int
) -> None:
    """Every port of a Buffer reads and writes ``width`` bytes at ANY byte address (rows
    crossed, strobes honoured, concurrent ports on different bytes), as a bytearray does:
    the rotate networks of :class:`hw.buffers.BufferPort` against the plain model."""
    rng = np.random.default_rng(seed)
    dut = Buffer(size, widths, lanes)
    ports = [getattr(dut, f"p{i}") for i in range(len(widths))]
    model = bytearray(size)

    async def bench(ctx) -> None:
        for _ in range(150):
            # each cycle: ports on disjoint byte ranges, some writing, some reading
            starts = rng.permutation(size // max(widths))[: len(ports)] * max(widths)
            ops = []
            for p, w, a in zip(ports, widths, starts, strict=True):
                a = int(a + rng.integers(0, max(widths) - w + 1))
                we, req = bool(rng.integers(2)), bool(rng.integers(4))
                data = rng.integers(0, 256, w, dtype=np.uint8)
                strb = int(rng.integers(0, 1 << w))
                ctx.set(p.req, req)
                ctx.set(p.we, we)
                ctx.set(p.addr, a)
                ctx.set(p.wdata, int.from_bytes(data.tobytes(), "little"))
                if w > 1:
                    ctx.set(p.strb, strb)
                ops.append((p, w, a, req, we, data, strb if w > 1 else 1))
            want = [bytes(model[a : a + w]) for _, w, a, *_ in ops]
            await ctx.tick()
            for (p, w, a, req, we, data, strb), before in zip(ops, want, strict=True):
                if req and not we:
                    got = ctx.get(p.rdata).to_bytes(w, "little")
                    assert got == before, f"read {w} B at {a}: {got.hex()} != {before.hex()}"
                if req and we:
                    for i in range(w):
                        if strb >> i & 1:
                            model[a + i] = int(data[i])

    sim = Simulator(dut)
    sim.add_clock(1e-8)
    sim.add_testbench(bench)
    sim.run()


@pytest.mark.parametrize(
    "make,exc,message",
    [
        (lambda: DspChain(0, 16), ValueError, "groups must be even and at least 2, not 0"),
        (lambda: DspChain(3, 16), ValueError, "groups must be even and at least 2, not 3"),
        (lambda: DspChain(2.0, 16), TypeError, "groups must be an integer, not 2.0"),
        (
            lambda: DspChain(2, 12),
            ValueError,
            "window must be a power of two of at least 2, not 12",
        ),
        (lambda: Buffer(0, 2), ValueError, "size must be at least 1, not 0"),
        (lambda: Buffer(64, "2"), TypeError, "ports must be an integer, not '2'"),
        (lambda: BufPortSignature(0), ValueError, "addr_bits must be at least 1, not 0"),
        (lambda: BufPortSignature(None), TypeError, "addr_bits must be an integer, not None"),
    ],
)
def test_parameter_checks(make, exc, message: str) -> None:
    with pytest.raises(exc, match=f"^{message}$"):
        make()


def _random_unpack_loads(rng: np.random.Generator, count: int) -> list:
    """LDs of every unpack width (and plain ones), odd row lengths, strides and addresses,
    contiguous spans with and without padding bits, into every buffer (tiny's GLB, META
    and SCALE ports are narrower than a burst)."""
    from flightforge import isa

    out = []
    for j in range(count):
        unpack = isa.Unpack(j % len(isa.Unpack))
        bits = unpack.bits
        rows, row_bytes = int(rng.integers(1, 4)), int(rng.integers(1, 40))
        ext_row = -(-row_bytes * bits // 8)
        contiguous = rng.random() < 0.25
        estride = ext_row if contiguous else ext_row + int(rng.integers(0, 12))
        bstride = row_bytes if contiguous else row_bytes + int(rng.integers(0, 9))
        buf = isa.Buf(int(rng.integers(0, len(isa.Buf))))
        out.append(
            isa.LD(
                buf=buf,
                dst=int(rng.integers(0, 200)),
                src=int(rng.integers(0, 300)),
                rows=rows,
                row_bytes=row_bytes,
                src_stride=estride,
                dst_stride=bstride,
                unpack=unpack,
            )
        )
    return out


def test_load_unit_unpacks_bit_exact_and_cycle_exact() -> None:
    """The LoadUnit alone under Amaranth's simulator, with ``bus_model``'s read channel:
    what it writes through its buffer ports equals the functional simulator's buffers
    (2/3/4-bit values split over bytes and beats, sign-extended), and every LD lasts
    exactly ``Timing.ld`` cycles, from the cycle that starts it to the one of its
    ``done``."""
    from flightforge import isa
    from flightforge.hw.decode import unit_bits
    from flightforge.hw.memory_units import LoadUnit
    from flightforge.mappings import load_target
    from flightforge.sim.bus_model import ReadChannel, memory_timing
    from flightforge.sim.functional import ExternalMemory, FunctionalSim
    from flightforge.sim.timing import Timing

    arch = load_target("tiny")
    rng = np.random.default_rng(7)
    loads = _random_unpack_loads(rng, 48)
    assert {isa.Unpack(i.unpack) for i in loads} == set(isa.Unpack)
    data = rng.integers(0, 256, 1024, dtype=np.uint8).tobytes()
    memory = ExternalMemory(arch.hbm.capacity)
    memory.write(0, data)
    ref = FunctionalSim(arch)
    ref.write(0, data)
    timing = Timing(arch)
    rd = ReadChannel(memory, arch.hbm.burst_bytes, memory_timing(arch))
    dut = LoadUnit(arch)
    bufs = {b: np.zeros(512, np.uint8) for b in isa.Buf}
    results: list[tuple[isa.LD, int, dict]] = []
    mask = (1 << unit_bits(isa.Unit.LD)) - 1

    async def edge(ctx) -> bool:
        r = dut.mem
        for b in isa.Buf:
            p = getattr(dut, f"buf_{b.name.lower()}")
            if ctx.get(p.req) and ctx.get(p.we):
                w, addr = dut.buffer_width(b), ctx.get(p.addr)
                word, strb = ctx.get(p.wdata), ctx.get(p.strb) if w > 1 else 1
                for i in range(w):
                    if strb >> i & 1:
                        bufs[b][addr + i] = word >> 8 * i & 0xFF
        valid, beat = rd.step(
            ctx.get(r.cmd_valid), ctx.get(r.cmd_addr), ctx.get(r.cmd_beats), ctx.get(r.data_ready)
        )
        done = bool(ctx.get(dut.done))
        await ctx.tick()
        ctx.set(r.data_valid, valid)
        ctx.set(r.data, beat)
        return done

    async def bench(ctx) -> None:
        ctx.set(dut.mem.cmd_ready, 1)
        for ld in loads:
            for b in isa.Buf:
                bufs[b][:] = 0
            ctx.set(dut.instr, int.from_bytes(isa.encode([ld]), "little") & mask)
            ctx.set(dut.start, 1)
            done = await edge(ctx)
            ctx.set(dut.start, 0)
            cycles = 1  # from the cycle that drives start to the one with done, inclusive
            while not done:
                done = await edge(ctx)
                cycles += 1
                assert cycles < 1000, f"{ld}: no done"
            results.append((ld, cycles, {b: a.copy() for b, a in bufs.items()}))

    sim = Simulator(dut)
    sim.add_clock(1e-8)
    sim.add_testbench(bench)
    sim.run()
    for ld, cycles, got in results:
        ref.buffers = {b: np.zeros_like(a) for b, a in ref.buffers.items()}
        ref.execute([ld, isa.SYS(op=isa.SysOp.HALT)])
        for b in isa.Buf:
            want = ref.buffer(b)[:512]
            bad = np.nonzero(got[b] != want)[0]
            assert not len(bad), (
                f"{ld}: {b.name} differs at {bad[:8].tolist()}: "
                f"unit {got[b][bad[:8]].tolist()}, functional "
                f"{want[bad[:8]].tolist()}"
            )
        assert cycles == timing.ld(ld).cycles, (
            f"{ld}: {cycles} cycles, model {timing.ld(ld).cycles}"
        )


def requant_reference(x: int, mult: int, shift: int, odt: isa.DType) -> int:
    """``numerics``' requantisation in Python integers: round half up, then saturate."""
    v = x * mult
    if shift:
        v = (v + (1 << (shift - 1))) >> shift
    lo, hi = -(1 << (odt.bits - 1)), (1 << (odt.bits - 1)) - 1
    return min(max(v, lo), hi)


def test_requantiser_matches_numerics_every_cycle() -> None:
    """Operands enter every cycle and leave ``REQUANT_STAGES`` later, bit-exact with the
    reference: random totals across the 48-bit range (and its ends), every shift (0: no
    rounding; the rounding bit in each of the three DSP48E2s' slices), every output
    type, saturating and not."""
    rng = np.random.default_rng(7)
    dut = Requantiser()
    top = 1 << (HELD_BITS - 1)
    cases = []
    for t in range(400):
        mult = int(rng.integers(1, 1 << isa.MULT_BITS)) if t % 5 else (1 << isa.MULT_BITS) - 1
        shift = t % 64 if t < 256 else int(rng.integers(0, 64))
        odt = isa.DType(int(rng.integers(0, len(isa.DType))))
        if t % 4:  # a total whose result lies in the type's range, at any rounding point
            v = int(rng.integers(-(1 << (odt.bits - 1)), 1 << (odt.bits - 1)))
            x = ((v << shift) + int(rng.integers(-(1 << shift), 1 << shift))) // mult
        else:  # anywhere in the 48 bits, mostly saturating
            x = int(rng.integers(-top, top)) >> int(rng.integers(0, HELD_BITS))
        x = (-top, top - 1, 0, -1)[t] if t < 4 else max(-top, min(top - 1, x))
        cases.append((x, mult, shift, odt, requant_reference(x, mult, shift, odt)))
    inside = sum(abs(c[4]) < (1 << (c[3].bits - 1)) - 1 for c in cases)
    assert inside > 200, inside  # most results are not saturated: rounding shows

    async def bench(ctx) -> None:
        got = []
        for t in range(len(cases) + REQUANT_STAGES):
            if t < len(cases):
                x, mult, shift, odt, _ = cases[t]
                ctx.set(dut.x, x)
                ctx.set(dut.mult, mult)
                ctx.set(dut.shift, shift)
                ctx.set(dut.odt, odt)
            if t >= REQUANT_STAGES:
                r = ctx.get(dut.result)
                got.append(r - (1 << 32) if r >> 31 else r)
            await ctx.tick()
        for (x, mult, shift, odt, want), r in zip(cases, got, strict=True):
            assert r == want, f"x={x} mult={mult} shift={shift} {odt.name}: {r} != {want}"

    sim = Simulator(dut)
    sim.add_clock(1e-8)
    sim.add_testbench(bench)
    sim.run()
