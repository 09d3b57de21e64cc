"""Test-suite options and fixtures shared by every test file.

``--run-slow`` also runs the tests marked ``slow`` (long simulations, Verilog export,
synthesis, torch exports, trained models, the slow README/docs commands) and those marked
``rtl`` (each needs a Verilator build of the core, minutes on a fresh clone): the default
``python -m pytest`` skips them to stay within minutes on a 2-core machine; CI
(``.ci/run``) runs them all.

``tiny`` is the small shipped target most tests run on; ``rtl_tiny`` is the same target
for tests that drive the Verilog under Verilator through cocotb, skipped with the reason
(``rtl_harness.unavailable``) when Verilator or cocotb is missing, never passed silently.
"""

from __future__ import annotations

import ctypes
import json
import shutil
import subprocess
from collections.abc import Callable
from pathlib import Path

import pytest

from flightforge.arch import ArchConfig
from flightforge.mappings import load_target


def pytest_addoption(parser: pytest.Parser) -> None:
    parser.addoption(
        "--run-slow",
        action="store_true",
        help="also run the tests marked slow or rtl (Verilator, export, synthesis); .ci/run does",
    )


def pytest_collection_modifyitems(config: pytest.Config, items: list[pytest.Item]) -> None:
    if config.getoption("--run-slow"):
        return
    for item in items:
        kind = next((k for k in ("slow", "rtl") if k in item.keywords), None)
        if kind is not None:
            item.add_marker(pytest.mark.skip(reason=f"{kind}: run with --run-slow (CI does)"))


@pytest.fixture(scope="session")
def tiny() -> ArchConfig:
    return load_target("tiny")


@pytest.fixture(scope="session")
def rtl_tiny(tiny: ArchConfig) -> ArchConfig:
    from flightforge.sim import rtl_harness

    if reason := rtl_harness.unavailable():
        pytest.skip(reason)
    return tiny


#: A tiny Llama's Hugging Face config.json: what the DSE tests compile shape-only.
TINY_LLAMA = {
    "model_type": "llama",
    "hidden_size": 64,
    "num_attention_heads": 4,
    "num_key_value_heads": 2,
    "num_hidden_layers": 2,
    "intermediate_size": 128,
    "vocab_size": 256,
    "rope_theta": 10000.0,
}


@pytest.fixture
def tiny_llama_json(tmp_path: Path) -> Path:
    p = tmp_path / "tiny-llama.json"
    p.write_text(json.dumps(TINY_LLAMA))
    return p


def _dse_spec_dict(model: Path, **over) -> dict:
    d = {
        "name": "t",
        "model": str(model),
        "target": "tiny",
        "workload": {"prompt_len": 8, "decode_len": 8},
        "quant": {"weight_bits": 4, "group": 32},
        "timing": {"interleave_bytes": 64},
        "parameters": {"clock_mhz": [100, 150, 200], "cores": [1, 2], "sparse_n": [0, 4]},
        "search": {"batch": 1},
    }
    d.update(over)
    return d


@pytest.fixture
def dse_spec_dict() -> Callable[..., dict]:
    """``make(model_json, **fields)``: a small DSE spec on ``tiny``, fields replaced."""
    return _dse_spec_dict


@pytest.fixture(scope="module")
def cpp(tmp_path_factory) -> ctypes.CDLL:
    """flightforge_tb_host.cpp on its own, as a shared library (no Verilator model): one
    per test module, as its channels keep their state (and clock) between calls."""
    from flightforge.sim.cocotb_tests.core_tb import bind
    from flightforge.sim.rtl_harness import TB_DIR, RtlUnavailable, verilator_setup

    cxx = shutil.which("g++") or shutil.which("c++")
    if cxx is None:
        pytest.skip("no C++ compiler")
    try:
        include = verilator_setup() / "include" / "vltstd"
    except RtlUnavailable as e:
        pytest.skip(str(e))
    if not (include / "svdpi.h").exists():
        pytest.skip(f"no svdpi.h under {include}")
    lib = tmp_path_factory.mktemp("host") / "libffhost.so"
    subprocess.run(
        [
            cxx,
            "-std=c++17",
            "-O1",
            "-shared",
            "-fPIC",
            f"-I{include}",
            str(TB_DIR / "flightforge_tb_host.cpp"),
            "-o",
            str(lib),
        ],
        check=True,
    )
    host = bind(ctypes.CDLL(str(lib)))
    u8, i64, vec = ctypes.c_uint8, ctypes.c_longlong, ctypes.POINTER(ctypes.c_uint32)
    host.ff_rd_tick.argtypes = [u8, i64, ctypes.c_int, u8, ctypes.POINTER(u8), vec]
    host.ff_wr_tick.argtypes = [u8, i64, ctypes.c_int, u8, vec, vec, ctypes.POINTER(u8)]
    host.ff_rd_tick.restype = host.ff_wr_tick.restype = None
    return host


@pytest.fixture
def random_traffic(cpp):
    """Drives the Python channels ``rd``, ``wr`` (sim/bus_model.py) and the C++ port in
    ``cpp`` with the same random commands, back-pressure, beats and strobes, edge by edge,
    and asserts that every output of every edge agrees."""

    def drive(rd, wr, rng, *, cycles, addr_beats, cmd_p, ready_p, send_p, max_beats) -> None:
        beat = rd.beat_bytes
        words = beat // 4
        u8 = ctypes.c_uint8
        valid_out, data_out, resp_out = u8(), (ctypes.c_uint32 * words)(), u8()
        rd_valid, to_send = False, 0  # beats of issued write commands not yet sent
        for cycle in range(cycles):
            rd_cmd = rng.random() < cmd_p[0]
            rd_addr = int(rng.integers(0, addr_beats)) * beat
            rd_beats = int(rng.integers(1, max_beats[0] + 1))
            ready = bool(rng.random() < ready_p)
            wr_cmd = rng.random() < cmd_p[1]
            wr_addr = int(rng.integers(0, addr_beats)) * beat
            wr_beats = int(rng.integers(1, max_beats[1] + 1))
            to_send += wr_beats if wr_cmd else 0
            send = to_send > 0 and rng.random() < send_p
            to_send -= send
            data = int(rng.integers(0, 1 << 63)) | int(rng.integers(0, 2)) << 63
            strb = int(rng.integers(0, 1 << beat))
            want_rd = rd.step(rd_cmd, rd_addr, rd_beats, rd_valid and ready)
            cpp.ff_rd_tick(
                rd_cmd, rd_addr, rd_beats, rd_valid and ready, ctypes.byref(valid_out), data_out
            )
            got = int.from_bytes(bytes(data_out), "little") if valid_out.value else 0
            assert (bool(valid_out.value), got) == want_rd, f"read channel, cycle {cycle}"
            rd_valid = want_rd[0]
            want_resp = wr.step(wr_cmd, wr_addr, wr_beats, send, data, strb)
            dvec = (ctypes.c_uint32 * words)(
                *[(data >> (32 * i)) & 0xFFFFFFFF for i in range(words)]
            )
            svec = (ctypes.c_uint32 * 1)(strb)
            cpp.ff_wr_tick(wr_cmd, wr_addr, wr_beats, send, dvec, svec, ctypes.byref(resp_out))
            assert bool(resp_out.value) == want_resp, f"write channel, cycle {cycle}"

    return drive
