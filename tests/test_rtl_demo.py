"""The compiler's demo program (Linear + attention prefill and decode) through the one
driver, :func:`flightforge.compiler.demo.run_demo`, on the RTL and on the functional
simulator: every output equals bit for bit, and equals the quantised reference. Each
section's RTL cycle count equals the cycle model's."""

import pytest

from flightforge import hostio
from flightforge.compiler.demo import build_demo, run_demo
from flightforge.sim import rtl_harness as h
from flightforge.sim.functional import FunctionalSim

pytestmark = [pytest.mark.rtl, pytest.mark.slow]


@pytest.fixture(scope="module")
def demo(rtl_tiny):
    build = build_demo(rtl_tiny)
    rtl, ref = h.RtlDevice(rtl_tiny), FunctionalSim(rtl_tiny)
    return build, rtl, ref, run_demo(rtl_tiny, rtl, build), run_demo(rtl_tiny, ref, build)


def test_demo_on_rtl_equals_functional_sim(rtl_tiny, demo) -> None:
    build, rtl, ref, report, ref_report = demo
    assert ref_report.bit_exact
    for a in report.outputs:
        assert a.bit_exact, (
            f"{a.name}: RTL differs from the quantised reference by {a.max_abs_diff}"
        )
    for tio in build.program.outputs:
        got = hostio.read_output(rtl, build.program, tio)
        want = hostio.read_output(ref, build.program, tio)
        assert (got == want).all(), f"{tio.name}: RTL and functional simulator differ"
    assert all(r.cycles and r.cycles > 0 for r in report.runs)


def test_demo_cycles_match_cycle_model(rtl_tiny, demo) -> None:
    """Every demo section (linear, attention prefill and decode): RTL cycles equal the
    cycle model's."""
    from flightforge.sim.dispatch import run_dispatch
    from flightforge.sim.timing import duration

    build, _, _, report, _ = demo
    lines, bad = [], []
    for r in report.runs:
        instrs = build.program.section(r.section).instructions
        model = run_dispatch(
            instrs,
            token_depth=rtl_tiny.token_depth,
            queue_depth=rtl_tiny.queue_depth,
            duration=lambda i, ins: duration(rtl_tiny, ins),
        ).cycles
        lines.append(
            f"demo.{r.section}: rtl {r.cycles} model {model} error {r.cycles / model - 1:+.2%}"
        )
        if r.cycles != model:
            bad.append(lines[-1])
    print("\n".join(lines))
    assert not bad, "RTL and cycle model differ:\n" + "\n".join(bad)
