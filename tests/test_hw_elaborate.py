"""The matrix engine of the shipped configs elaborates and converts to RTLIL.

Only tiny is simulated; the larger configs' MPE must still be emitted for the resource
estimate (benchmarks/rtl_resources.py). Amaranth 0.5 numbers a design's top-level input
bits in 16 bits, so the MPE (kv260: 116 154 input bits) is converted inside
``PortBoxes``, as the benchmark does. kv260 takes ~30 s; u280/vhk158 (the same core, ten
times the ports) are left to the benchmark.
"""

import importlib.util
from pathlib import Path

import pytest
from amaranth import Value
from amaranth.lib.wiring import In

from flightforge.hw.mpe import MatrixEngine
from flightforge.mappings import load_target


def _rtl_resources():
    path = Path(__file__).resolve().parents[1] / "benchmarks" / "rtl_resources.py"
    spec = importlib.util.spec_from_file_location("rtl_resources", path)
    mod = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(mod)
    return mod


def _input_bits(component) -> int:
    return sum(len(Value.cast(v)) for _, member, v in component.signature.flatten(component)
               if member.flow == In)


@pytest.mark.parametrize("target", ["tiny", pytest.param("kv260", marks=pytest.mark.slow)])
def test_mpe_converts_to_rtlil(target) -> None:
    mpe = MatrixEngine(load_target(target))
    text, widths = _rtl_resources().convert_boxed(mpe, "mpe")
    assert "module \\mpe.dut\n" in text
    assert "module \\mpe.dut.chain0\n" in text
    top = text[text.index("module \\mpe\n"):]
    top = top[:top.index("\nend\n")]
    assert [ln.split()[-1] for ln in top.splitlines() if " input " in ln] == ["\\clk", "\\rst"]
    assert 8 * max(mpe.port_widths(MatrixEngine.BUFFERS[0])) in widths


@pytest.mark.parametrize("target", ["kv260", "u280", "vhk158"])
def test_mpe_ports_exceed_amaranths_top_level_limit(target) -> None:
    """Why the wrapper is needed: more than 2**16 - 2 input bits at the top."""
    mpe = MatrixEngine(load_target(target))
    mpe._MustUse__silence = True  # only its signature is looked at
    assert _input_bits(mpe) > (1 << 16) - 2
