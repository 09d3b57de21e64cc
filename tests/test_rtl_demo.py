"""The compiler's demo program (Linear + attention prefill and decode) through the one
driver, :func:`flightforge.compiler.demo.run_demo`, on the RTL and on the functional
simulator: every output equals bit for bit, and equals the quantised reference."""

import pytest

from flightforge import hostio
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


def test_demo_on_rtl_equals_functional_sim(arch) -> None:
    build = build_demo(arch)
    rtl, ref = h.RtlDevice(arch), FunctionalSim(arch)
    report = run_demo(arch, rtl, build)
    ref_report = run_demo(arch, ref, build)
    assert ref_report.bit_exact
    for a in report.outputs:
        assert a.bit_exact, f"{a.name}: RTL differs from the quantised reference by {a.max_abs_diff}"
    for tio in build.program.outputs:
        got = hostio.read_output(rtl, build.program, tio)
        want = hostio.read_output(ref, build.program, tio)
        assert (got == want).all(), f"{tio.name}: RTL and functional simulator differ"
    assert all(r.cycles and r.cycles > 0 for r in report.runs)
