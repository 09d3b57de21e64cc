"""The compiler's demo program (Linear + attention prefill and decode) through the one
driver, :func:`flightforge.compiler.demo.run_demo`, on the RTL and on the functional
simulator: every output equals bit for bit, and equals the quantised reference. Each
section's RTL cycle count is compared with the cycle model's (a strict xfail until the
MPE and SFU datapaths match sim/timing.py; docs/rtl.md)."""

import pytest

from flightforge import hostio, isa
from flightforge.compiler.demo import build_demo, run_demo
from flightforge.mappings import load_target
from flightforge.sim import rtl_harness as h
from flightforge.sim.functional import FunctionalSim

pytestmark = [pytest.mark.rtl, pytest.mark.slow]


@pytest.fixture(scope="module")
def arch():
    try:
        h.verilator_setup()
        import cocotb_tools.runner  # noqa: F401
    except (h.RtlUnavailable, ImportError) as e:
        pytest.skip(f"RTL simulation unavailable: {e}")
    return load_target("tiny")


@pytest.fixture(scope="module")
def demo(arch):
    build = build_demo(arch)
    rtl, ref = h.RtlDevice(arch), FunctionalSim(arch)
    return build, rtl, ref, run_demo(arch, rtl, build), run_demo(arch, ref, build)


def test_demo_on_rtl_equals_functional_sim(arch, demo) -> None:
    build, rtl, ref, report, ref_report = demo
    assert ref_report.bit_exact
    for a in report.outputs:
        assert a.bit_exact, f"{a.name}: RTL differs from the quantised reference by {a.max_abs_diff}"
    for tio in build.program.outputs:
        got = hostio.read_output(rtl, build.program, tio)
        want = hostio.read_output(ref, build.program, tio)
        assert (got == want).all(), f"{tio.name}: RTL and functional simulator differ"
    assert all(r.cycles and r.cycles > 0 for r in report.runs)


def _cycles(arch, build, report):
    """(section, RTL cycles, model cycles, whether the RTL times every instruction of the
    section exactly: no SOFTMAX/RMSNORM/LAYERNORM) for every run of the demo."""
    from flightforge.hw.sfu.stream import EXACT_OPS
    from flightforge.sim.dispatch import run_dispatch
    from flightforge.sim.timing import duration

    out = []
    for r in report.runs:
        instrs = build.program.section(r.section).instructions
        model = run_dispatch(instrs, token_depth=arch.token_depth, queue_depth=arch.queue_depth,
                             duration=lambda i, ins: duration(arch, ins)).cycles
        exact = not any(isinstance(x, isa.MISC) and x.op not in EXACT_OPS for x in instrs)
        out.append((r.section, r.cycles, model, exact))
    return out


def test_demo_cycles_exact_without_softmax_norm(arch, demo) -> None:
    """Sections of LD/ST/MM/MV/element-wise MISC/ROPE (demo.linear): RTL cycles equal
    the cycle model's."""
    build, _, _, report, _ = demo
    rows = [x for x in _cycles(arch, build, report) if x[3]]
    assert rows, "the demo has no section without softmax/norms"
    for sec, rtl, model, _ in rows:
        print(f"demo.{sec}: rtl {rtl} model {model} error {rtl / model - 1:+.2%}")
        assert rtl == model, f"demo.{sec}: RTL {rtl} cycles, cycle model {model}"


@pytest.mark.xfail(strict=True, reason="SOFTMAX/RMSNORM/LAYERNORM wait per row for the "
                                        "sequential divide/square root, which Timing.misc "
                                        "does not charge (docs/rtl.md)")
def test_demo_cycles_match_cycle_model(arch, demo) -> None:
    """Sections with softmax/norms (strict xfail until those are cycle-accurate)."""
    build, _, _, report, _ = demo
    lines, bad = [], []
    for sec, rtl, model, exact in _cycles(arch, build, report):
        if exact:
            continue
        err = rtl / model - 1
        lines.append(f"demo.{sec}: rtl {rtl} model {model} error {err:+.2%}")
        if abs(err) > 0.02:
            bad.append(lines[-1])
    print("\n".join(lines))
    assert not bad, "\n".join(bad)
