"""An accepted architecture config is one every later stage can build: the compiler
compiles a small decoder for it, the cycle model times the program, and the RTL
generator's core elaborates under Amaranth. Configs are drawn near the limits the
validation sets (the smallest lane counts, pipeline depths, bursts and parallel shapes
it allows, odd mixes of them), and anything the validation refuses must have been
refused with a :class:`ConfigError`, never a crash later.

Buffer sizes are the one exception to "near the limit": how much a buffer must hold
depends on the model, so they are drawn from sizes the small decoder fits (at least
16 KiB), and too small a buffer is a compile error naming it (tested below).
"""

from __future__ import annotations

import pytest
from amaranth.hdl import Fragment
from hypothesis import HealthCheck, assume, given, settings
from hypothesis import strategies as st

from flightforge.arch import ArchConfig, ConfigError, arch_from_dict
from flightforge.compiler.errors import CompileError
from flightforge.compiler.graph import DecoderShape, random_decoder
from flightforge.compiler.pipeline import CompileOptions, compile_decoder
from flightforge.hw.core import Core
from flightforge.mappings import target_path
from flightforge.sim.cycle_model import simulate

SHAPE = DecoderShape(1, 32, 2, 1, 16, 64, 48, "swiglu", True)
MAX_LEN = 6

POW2 = [1, 2, 4, 8]


@st.composite
def buffers(draw, min_lanes: int = 1) -> dict:
    banks = draw(st.sampled_from(POW2))
    width = draw(st.sampled_from([w for w in [1, 2, 4, 8, 16] if banks * w >= min_lanes]))
    lanes = banks * width
    size = lanes * draw(st.integers(-(-16384 // lanes), 65536 // lanes))
    return {"size": size, "banks": banks, "width": width}


def _shape(draw, chains: int, groups: int, lanes: int, rows: int | None) -> dict:
    """A parallel shape hw/mpe can map: k even and dividing the chain's slices,
    ceil(m/2) x n x k slices at most, n dividing the WGT/META lanes."""
    k = draw(st.sampled_from([k for k in range(2, groups + 1, 2) if groups % k == 0]))
    room = chains * groups // k
    m = 1 if rows == 1 else draw(st.integers(1, 2 * room))
    ns = [n for n in range(1, room // -(-m // 2) + 1) if lanes % n == 0]
    return {"n": draw(st.sampled_from(ns)), "k": k, "m": m}


@st.composite
def configs(draw) -> dict:
    """An architecture dict near the validation's limits."""
    chains = draw(st.integers(1, 6))
    groups = 2 * draw(st.integers(1, 4))
    bufs = {b: draw(buffers()) for b in ("wgt", "meta", "scale")}
    bufs |= {b: draw(buffers(min_lanes=4)) for b in ("act", "glb")}
    lanes = min(
        bufs["wgt"]["banks"] * bufs["wgt"]["width"], bufs["meta"]["banks"] * bufs["meta"]["width"]
    )
    burst = draw(st.sampled_from([2, 4, 8, 16, 64]))
    channels = draw(st.sampled_from([1, 2, 4]))
    sparse_m = draw(st.sampled_from([4, 16]))
    return {
        "name": "limits",
        "clock_mhz": draw(st.floats(1, 2000)),
        "cores": draw(st.integers(1, 3)),
        "sparse_m": sparse_m,
        "sparse_n": [2],
        "token_depth": draw(st.integers(1, 8)),
        "queue_depth": draw(st.integers(1, 4)),
        "mpe": {
            "chains": chains,
            "groups_per_chain": groups,
            "mm": _shape(draw, chains, groups, lanes, None),
            "mv": _shape(draw, chains, groups, lanes, 1),
            "tile_k": draw(st.sampled_from([256, 1024, 4096])),
        },
        "sfu": {
            "lanes": draw(st.integers(1, 6)) * 2,
            "pipeline_depth": draw(st.integers(4, 8)),
        },
        "buffers": bufs,
        "hbm": {
            "kind": "hbm",
            "channels": channels,
            "capacity": channels * 2**24,
            "bandwidth_gbs": draw(st.floats(0.1, 1e5)),
            "latency_ns": draw(st.floats(0, 1e6)),
            "burst_bytes": burst,
            "cross_channel_penalty_cycles": draw(st.integers(0, 1000)),
            "interleave_bytes": draw(st.sampled_from([0, burst, 4 * burst])),
        },
    }


def _builds(arch: ArchConfig) -> None:
    prog = random_decoder(SHAPE, seed=1)
    program = compile_decoder(prog, arch, CompileOptions(max_len=MAX_LEN)).program
    report = simulate(program, arch, prompt_len=3, decode_steps=2)
    assert report.prefill_cycles > 0
    Fragment.get(Core(arch), None)


@settings(
    max_examples=5, deadline=None, derandomize=True, suppress_health_check=[HealthCheck.too_slow]
)
@given(configs())
def test_an_accepted_config_compiles_simulates_and_elaborates(data):
    try:
        arch = arch_from_dict(data, "limits.yaml")
    except ConfigError:
        assume(False)  # refused up front, naming the field: what the validation is for
    _builds(arch)


def test_too_small_a_buffer_is_a_compile_error_naming_it():
    import yaml

    data = yaml.safe_load(target_path("tiny").read_text())
    data["buffers"]["act"]["size"] = 256
    with pytest.raises(CompileError, match="ACT"):
        compile_decoder(
            random_decoder(SHAPE, seed=1),
            arch_from_dict(data, "small.yaml"),
            CompileOptions(max_len=MAX_LEN),
        )
