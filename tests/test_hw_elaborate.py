"""The matrix engine of the shipped configs elaborates and converts to RTLIL.

Only tiny is simulated; the larger configs' MPE must still be emitted for the resource
estimate (benchmarks/rtl_resources.py, through flightforge.hw.synth). Amaranth 0.5
numbers a design's top-level input bits in 16 bits, so the MPE (u280: 487 194 input
bits before the activation tile buffer, 46 811 since) is converted inside
``flightforge.hw.synth.PortBoxes``, as the benchmark does.
kv260 takes ~30 s; u280/vhk158 (the same core, ten times the ports) are left to the
benchmark.
"""

import math
import re

import pytest
from amaranth import Value
from amaranth.hdl import Fragment
from amaranth.lib.wiring import In

from flightforge import isa
from flightforge.hw.mpe import MatrixEngine
from flightforge.hw.mpe.engine import INDEX_BITS_MAX, row_port_widths
from flightforge.hw.sfu.elementwise import ElementStream
from flightforge.hw.sfu.unit import SFU_BUFFERS, SpecialFunctionUnit
from flightforge.hw.synth import convert_boxed
from flightforge.mappings import load_target


def _input_bits(component) -> int:
    return sum(
        len(Value.cast(v))
        for _, member, v in component.signature.flatten(component)
        if member.flow == In
    )


@pytest.mark.parametrize("target", ["tiny", pytest.param("kv260", marks=pytest.mark.slow)])
def test_mpe_converts_to_rtlil(target) -> None:
    mpe = MatrixEngine(load_target(target))
    text, widths = convert_boxed(mpe, "mpe")
    assert "module \\mpe.dut\n" in text
    assert "module \\mpe.dut.chain0\n" in text
    for sub in ("feed0", "win0", "acc0", "rq0", "tiles"):
        assert f"module \\mpe.dut.{sub}\n" in text
    top = text[text.index("module \\mpe\n") :]
    top = top[: top.index("\nend\n")]
    assert [ln.split()[-1] for ln in top.splitlines() if " input " in ln] == ["\\clk", "\\rst"]
    assert 8 * max(mpe.port_widths(MatrixEngine.BUFFERS[0])) in widths


@pytest.mark.parametrize("target, bits", [("tiny", 1287), ("kv260", 10331), ("u280", 46811)])
def test_mpe_input_bits(target, bits) -> None:
    """The MPE's top-level input bits (read data of its ports and the unit's inputs):
    with the activation tile buffer (one ACT line port instead of a span port per tile
    row) even u280's 46 811 are under Amaranth's 2**16 - 2 (487 194 before; the boxed
    conversion stays, for the blocks' own ports)."""
    mpe = MatrixEngine(load_target(target))
    mpe._MustUse__silence = True  # only its signature is looked at
    assert _input_bits(mpe) == bits


def test_mpe_submodules_are_the_parts_the_benchmark_counts() -> None:
    """Every submodule of tiny's MPE is a chain or one of :meth:`MatrixEngine.parts` (the
    same component: type and signature), as many times as the part says."""
    arch = load_target("tiny")
    mpe = MatrixEngine(arch)
    mpe._MustUse__silence = True
    subs = {n: s for n, (s, _) in mpe.elaborate(None)._named_submodules.items()}
    for s in subs.values():
        s._MustUse__silence = True
    assert all(re.fullmatch(MatrixEngine.REPEATED, n) for n in subs)
    for label, comp, count in mpe.parts():
        comp._MustUse__silence = True
        assert (
            sum(type(s) is type(comp) and s.signature == comp.signature for s in subs.values())
            == count
        ), label
    chains = [s for n, s in subs.items() if n.startswith("chain")]
    assert len(chains) == arch.mpe.chains
    assert len(subs) == len(chains) + sum(count for _, _, count in mpe.parts())


@pytest.mark.parametrize("target", ["tiny", "kv260", "u280", "vhk158"])
def test_mpe_part_counts(target) -> None:
    """One accumulator per segment of the larger tile, one requantiser per column of the
    widest tile row (lcm of the modes' n), one window block per tile row (a row
    the modes read alike shared), one feed per chain; a chain an MV tile does not reach
    gets the MM-only feed."""
    arch = load_target(target)
    mpe = MatrixEngine(arch)
    mpe._MustUse__silence = True
    counts: dict[str, int] = {}
    for label, comp, count in mpe.parts():
        comp._MustUse__silence = True
        key = label.split()[0] + (" mm-only" if label == "ChainFeed (mm)" else "")
        counts[key] = counts.get(key, 0) + count
    mm, mv, slices = arch.mpe.mm, arch.mpe.mv, arch.mpe.groups_per_chain
    assert counts["SegmentAccumulator"] == max(mm.m * mm.n, mv.n)
    assert counts["Requantiser"] == math.lcm(mm.n, mv.n)
    assert counts["RowWindows"] == mm.m + (0 if mm.k == mv.k else 1)
    assert counts["TileBuffer"] == 1
    mv_chains = -(-mv.n * mv.k // slices)  # one row: the high lanes idle
    assert counts["ChainFeed"] == min(mv_chains, arch.mpe.chains)
    assert counts.get("ChainFeed mm-only", 0) == arch.mpe.chains - mv_chains
    if target in ("u280", "vhk158"):
        assert counts == {
            "TileBuffer": 1,
            "RowWindows": 128,
            "ChainFeed": 64,
            "ChainFeed mm-only": 64,
            "SegmentAccumulator": 256,
            "Requantiser": 64,
        }


@pytest.mark.parametrize(
    "modes, port, widths",
    [
        ({"mm": (4, 8), "mv": (1, 16)}, 8, [8] * 4),  # tiny's partial sums
        ({"mm": (32, 8), "mv": (1, 64)}, 128, [64] + [8] * 31),  # kv260's partial sums
        ({"mm": (2, 300)}, 128, [128, 128, 44] * 2),  # rows of several chunks
        ({"rec": (2, 6)}, 4, [4, 2, 4, 2]),
    ],
)
def test_row_ports_are_as_wide_as_their_widest_mode(modes, port, widths) -> None:
    assert row_port_widths(modes, port) == widths


@pytest.mark.parametrize("target", ["tiny", "kv260", "u280"])
def test_mpe_ports_carry_every_byte_of_every_mode(target) -> None:
    """Sized ports still hold what each mode moves through them in one cycle: an ACT
    line for the tile fill, a row's partial sums and results (``4 * n`` bytes), a
    column's weight and index bytes of a step (or ``[K][N]`` rows of ``n`` bytes)."""
    arch = load_target(target)
    mpe = MatrixEngine(arch)
    mpe._MustUse__silence = True  # only its port widths are looked at
    pw, pm = mpe.P[isa.Buf.WGT], mpe.P[isa.Buf.META]
    act = mpe.port_widths(isa.Buf.ACT)
    wgt, meta = mpe.port_widths(isa.Buf.WGT), mpe.port_widths(isa.Buf.META)
    assert act[0] == mpe.P[isa.Buf.ACT]  # the tile fill: one aligned line a cycle
    for nm, (rows, n, k) in mpe.modes.items():
        ppr = mpe.ppr[nm]
        for r in range(rows):
            for base in (1, 1 + mpe.n_psum):  # partial sums, results
                assert sum(act[base + r * ppr : base + (r + 1) * ppr]) >= 4 * n, (nm, r)
        assert all(wgt[j] >= min(pw // n, k) for j in range(n)), nm
        assert all(wgt[p] >= n for p in range(min(k, pw // n))), nm
        assert all(meta[j] >= min(pm // n, -(-k * INDEX_BITS_MAX // 8)) for j in range(n)), nm
    assert max(act) <= mpe.P[isa.Buf.ACT] and max(wgt) <= pw and max(meta) <= pm


@pytest.mark.parametrize("target", ["tiny", "kv260", "u280"])
def test_sfu_elementwise_ports_carry_a_cycle_of_lanes(target) -> None:
    """An element-wise operand or result port holds the ``lanes`` elements of up to 4
    bytes that one cycle issues (or the whole line, if narrower), and the element
    stream elaborates with it."""
    arch = load_target(target)
    stream = ElementStream(arch)
    act = arch.buffers.of(isa.Buf.ACT)
    want = min(act.banks * act.width, 4 * arch.sfu.lanes)
    for name in ("rd", "d"):
        assert len(stream.port(name).wdata) == 8 * want, name
    Fragment.get(stream, None)


@pytest.mark.parametrize("target", ["tiny", "kv260"])
def test_sfu_pipelines_share_one_set_of_ports(target) -> None:
    """One MISC runs at a time, so the unit has as many read (write) ports on a buffer as
    its most demanding pipeline has read (write) ports there, slot ``i`` of a side as wide
    as the widest pipeline port ``i`` of that side; reads first, then writes."""
    unit = SpecialFunctionUnit(load_target(target))
    unit._MustUse__silence = True  # only its ports are looked at
    for b in SFU_BUFFERS:
        want = []
        for write in (False, True):
            per_pipe = [
                [len(p.wdata) // 8 for p in s.buffer_ports(b, write=write)]
                for s in unit.streams.values()
            ]
            slots = max(map(len, per_pipe))
            want += [max(w[i] for w in per_pipe if i < len(w)) for i in range(slots)]
        assert unit.port_widths(b) == want, b
        assert len(unit.ports(b)) == len(want), b


@pytest.mark.parametrize("target", ["tiny", "kv260", "u280"])
def test_sfu_act_has_one_write_port_and_rope_softmax_norms_one_read_port(target) -> None:
    """Every pipeline moves a cycle's ACT results as one run through one write port; ROPE,
    SOFTMAX and the norms read theirs as one run through one read port (ROPE its x1 and
    x2 halves in alternate cycles), ROPE its cos/sin table through one GLB port."""
    unit = SpecialFunctionUnit(load_target(target))
    unit._MustUse__silence = True
    for name, stream in unit.streams.items():
        assert len(stream.buffer_ports(isa.Buf.ACT, write=True)) == 1, name
        if name != "elementwise":
            assert len(stream.buffer_ports(isa.Buf.ACT, write=False)) == 1, name
    assert len(unit.streams["rope"].buffer_ports(isa.Buf.GLB)) == 1
