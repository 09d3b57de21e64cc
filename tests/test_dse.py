"""Design-space exploration: exact fast evaluation, resume after a kill, infeasible points,
Pareto front. Small models on the tiny target; no Yosys (the committed calibration)."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest

from flightforge import isa
from flightforge.compiler.pipeline import CompileOptions, compile_shape_only
from flightforge.compiler.quant.qdecoder import QuantOptions
from flightforge.dse.points import build_point, evaluate_point, grid, point_key
from flightforge.dse.report import pareto_mask, write_outputs
from flightforge.dse.resources import design_resources
from flightforge.dse.search import explore
from flightforge.dse.spec import spec_from_dict
from flightforge.dse.store import Store
from flightforge.dse.timing import durations, prepare, time_stream
from flightforge.mappings import load_target
from flightforge.sim.cycle_model import CycleModel
from flightforge.sim.dispatch import dispatch_cycles, run_dispatch
from flightforge.sim.timing import Timing, TimingParams


def _compile(model: Path, arch):
    return compile_shape_only(
        str(model),
        arch,
        CompileOptions(
            with_data=False,
            lengths=(8,),
            max_len=16,
            last_logits_only=True,
            buckets="fixed",
            quant=QuantOptions(weight_bits=4, group=32),
        ),
    )


def _variant(arch, **timing_only):
    d = arch.model_dump(mode="json")
    d.update(clock_mhz=173, cores=3, token_depth=d["token_depth"])
    d["mpe"].update(
        chains=8,
        groups_per_chain=2,
        mm={"n": 2, "k": 2, "m": d["mpe"]["mm"]["m"]},
        mv={"n": 4, "k": 2, "m": 1},  # k divides the 2 slices of a chain
    )
    d["sfu"].update(lanes=2, pipeline_depth=5)
    d["hbm"].update(bandwidth_gbs=3.3, latency_ns=90, cross_channel_penalty_cycles=5)
    for name, b in d["buffers"].items():
        if name != "act":  # ACT's line is a stream field: tiles start on, and pad to, it
            b.update(banks=b["banks"] * 2, width=b["width"] * 2)
    from flightforge.arch import arch_from_dict

    return arch_from_dict(d)


def test_stream_cache_key_is_exact(tiny_llama_json):
    """Every field outside stream_fields leaves the instruction streams unchanged."""
    arch = load_target("tiny")
    a, b = _compile(tiny_llama_json, arch), _compile(tiny_llama_json, _variant(arch))
    assert [s.name for s in a.sections] == [s.name for s in b.sections]
    for sa, sb in zip(a.sections, b.sections, strict=True):
        assert sa.instructions == sb.instructions, (
            f"section {sa.name} differs: update stream_fields"
        )


@pytest.mark.parametrize(
    "params",
    [
        TimingParams(),
        TimingParams(interleave_bytes=16, channels=1),
        TimingParams(interleave_bytes=64, mem_efficiency_pct=70, cores=2),
    ],
)
def test_fast_timing_equals_cycle_model(tiny_llama_json, params):
    arch = load_target("tiny")
    prog = _compile(tiny_llama_json, arch)
    for sec in prog.sections:
        length = sec.len_hi
        s = prepare(prog, sec.name, length)
        d = durations(s, arch, params)
        t = Timing(arch, params)
        assert [int(x) for x in d] == [t.duration(i) for i in s.instrs]
        ref = CycleModel(arch, params).execute(
            sec.instructions, name=sec.name, d=length - sec.len_lo
        )
        st = time_stream(s, arch, params)
        assert st.cycles == ref.cycles
        assert dict(zip((u.name for u in isa.Unit), st.busy, strict=True)) == ref.busy


def test_dispatch_cycles_matches_run_dispatch_on_random_durations(tiny_llama_json):
    arch = load_target("tiny")
    prog = _compile(tiny_llama_json, arch)
    s = prepare(prog, prog.sections[-1].name, prog.sections[-1].len_lo)
    rng = np.random.default_rng(0)
    for _ in range(5):
        dur = rng.integers(0, 50, size=len(s.instrs)).tolist()
        ref = run_dispatch(
            s.instrs, token_depth=2, queue_depth=2, duration=lambda i, _, dur=dur: dur[i]
        )
        assert dispatch_cycles(s.instrs, s.decoded, dur, token_depth=2, queue_depth=2) == ref.cycles


def test_infeasible_points_are_recorded_with_reasons(tiny_llama_json, dse_spec_dict, tmp_path):
    spec = spec_from_dict(
        dse_spec_dict(
            tiny_llama_json,
            target="kv260",
            parameters={
                "sparse_m": [8],  # no N:M mode with M = 8: ConfigError
                "chains": [32, 128],  # 128 chains: over the KV260's DSP budget
                # 128 B of activations (one row of the 128 byte lanes): too few to compile
                "buffers.act.size": [524288, 128],
            },
            workload={"prompt_len": 8, "decode_len": 8, "ttft": False},
        )
    )
    store = Store(tmp_path / "s.sqlite")
    explore(spec, store, jobs=1, progress=False)
    rows = store.rows()
    assert len(rows) == 4 and all(r["status"] == "infeasible" for r in rows)
    assert all("no N:M mode with M=8" in r["reason"] for r in rows)
    spec = spec_from_dict(
        dse_spec_dict(
            tiny_llama_json,
            target="kv260",
            parameters={"chains": [32, 128], "buffers.act.size": [524288, 128]},
            workload={"prompt_len": 8, "decode_len": 8, "ttft": False},
        )
    )
    rows = {
        json.dumps(r["params"], sort_keys=True): r
        for r in (evaluate_point(spec, p) for p in grid(spec))
    }
    ok = rows['{"buffers.act.size": 524288, "chains": 32}']
    assert ok["status"] == "ok", ok["reason"]
    assert rows['{"buffers.act.size": 524288, "chains": 128}']["reason"].startswith(
        "over budget: DSP"
    )
    assert rows['{"buffers.act.size": 524288, "chains": 128}']["metrics"]["decode_tokens_per_s"] > 0
    assert rows['{"buffers.act.size": 128, "chains": 32}']["reason"].startswith("compile: ")


def test_pareto_front_on_a_synthetic_objective():
    rng = np.random.default_rng(1)
    v = rng.random((300, 2))
    mask = pareto_mask(v, ["min", "max"])
    for i in range(len(v)):
        dominated = any(
            (v[j, 0] <= v[i, 0])
            and (v[j, 1] >= v[i, 1])
            and ((v[j, 0] < v[i, 0]) or (v[j, 1] > v[i, 1]))
            for j in range(len(v))
        )
        assert mask[i] == (not dominated)
    # the points on x + y = 1 (minimise x, minimise y) are all on the front, others are not
    pts = np.array([[x, 1 - x] for x in np.linspace(0, 1, 11)] + [[0.6, 0.6], [1, 1]])
    assert pareto_mask(pts, ["min", "min"]).tolist() == [True] * 11 + [False, False]
    assert not pareto_mask(np.array([[np.nan, 0.0], [1.0, 1.0]]), ["min", "min"])[0]


def test_grid_run_writes_outputs(tiny_llama_json, dse_spec_dict, tmp_path):
    spec = spec_from_dict(dse_spec_dict(tiny_llama_json))
    store = Store(tmp_path / "s.sqlite")
    stats = explore(spec, store, jobs=1, progress=False)
    assert stats == {"points": 12, "evaluated": 12, "resumed": 0}
    assert explore(spec, store, jobs=1, progress=False)["evaluated"] == 0
    files = write_outputs(spec, store.rows(), tmp_path / "out")
    for k in (
        "points_csv",
        "pareto_csv",
        "pareto_png",
        "roofline_png",
        "utilisation_png",
        "timeline_png",
        "report_html",
    ):
        assert files[k].stat().st_size > 0, k
    assert "Pareto front" in files["report_html"].read_text()


def test_store_refuses_another_spec(tiny_llama_json, dse_spec_dict, tmp_path):
    from flightforge.dse.spec import SpecError

    store = Store(tmp_path / "s.sqlite")
    store.bind(spec_from_dict(dse_spec_dict(tiny_llama_json)).fingerprint())
    other = spec_from_dict(
        dse_spec_dict(tiny_llama_json, workload={"prompt_len": 9, "decode_len": 8})
    )
    with pytest.raises(SpecError, match="another spec"):
        store.bind(other.fingerprint())


def _count(db: Path) -> int:
    import sqlite3

    if not db.exists():
        return 0
    try:
        return sqlite3.connect(str(db)).execute("SELECT COUNT(*) FROM points").fetchone()[0]
    except sqlite3.OperationalError:
        return 0


@pytest.mark.parametrize("method", ["grid", "nsga2"])
def test_killed_run_resumes_without_lost_or_duplicated_points(
    tiny_llama_json, dse_spec_dict, tmp_path, method
):
    params = {
        "clock_mhz": [100, 125, 150, 175, 200, 225],
        "cores": [1, 2, 3],
        "sparse_n": [0, 4],
        "wgt_kib": [16, 32, 64],
    }
    spec = dse_spec_dict(
        tiny_llama_json,
        parameters=params,
        search={"method": method, "trials": 40, "population": 8, "batch": 1},
    )
    spec_path = tmp_path / "spec.yaml"
    import yaml

    spec_path.write_text(yaml.safe_dump(spec))
    out = tmp_path / "out"
    db = out / "points.sqlite"
    cmd = [
        sys.executable,
        "-m",
        "flightforge.cli",
        "dse",
        str(spec_path),
        "--out",
        str(out),
        "--jobs",
        "1",
        "-q",
    ]
    proc = subprocess.Popen(
        cmd, start_new_session=True, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL
    )
    deadline = time.time() + 120
    while _count(db) < 5 and time.time() < deadline and proc.poll() is None:
        time.sleep(0.05)
    os.killpg(proc.pid, signal.SIGKILL)
    proc.wait()
    before = Store(db).rows()
    total = 108 if method == "grid" else 40
    assert 5 <= len(before) < total
    subprocess.run(cmd, check=True, capture_output=True, timeout=300)
    after = Store(db).rows()
    keys = [r["key"] for r in after]
    assert len(keys) == len(set(keys)) == total
    assert [r["key"] for r in after[: len(before)]] == [r["key"] for r in before]
    for r in after:
        assert r["key"] == point_key(r["params"])
    if method == "grid":
        assert {point_key(p) for p in grid(spec_from_dict(spec))} == set(keys)


def test_resources_reproduce_their_calibration():
    from flightforge.dse.resources import calibration

    cal = calibration()
    for e in cal["errors"]:
        for k in ("lut", "ff", "dsp", "bram"):
            if k in e and e[k]["yosys"]:
                assert abs(e[k]["rel_error"]) < 0.35, e
    u280 = load_target("u280")
    res = design_resources(u280)
    assert res.dsp >= u280.cores * u280.mpe.macs / 2
    assert "power" not in cal  # the power model is not fitted (dse/power.py)


def test_build_point_rescales_the_mpe(tiny_llama_json, dse_spec_dict):
    spec = spec_from_dict(dse_spec_dict(tiny_llama_json, target="u280"))
    arch, *_ = build_point(spec, {"chains": 64, "groups_per_chain": 8})
    assert (arch.mpe.mm.m, arch.mpe.mm.k, arch.mpe.mv.n, arch.mpe.mv.k) == (64, 8, 32, 8)


class _Recorder:
    """A live progress bar that records its updates."""

    disable = False

    def __init__(self) -> None:
        self.updates: list[int] = []

    def update(self, n: int = 1) -> None:
        self.updates.append(n)


@pytest.mark.parametrize("jobs", [1, 2])
def test_the_bar_counts_points_as_they_finish_inside_a_batch(tiny_llama_json, dse_spec_dict, jobs):
    """A batch's rows arrive at once; the bar still moves per point (here and in local
    worker processes), so its rate and ETA see both workers' progress."""
    from flightforge.dse.executors import make_executor, run_points

    params = {"clock_mhz": [100, 200], "cores": [1, 2]}
    spec = spec_from_dict(dse_spec_dict(tiny_llama_json, parameters=params, search={"batch": 2}))
    rows, bar = [], _Recorder()
    executor, _ = make_executor(jobs, None)
    try:
        run_points(spec, grid(spec), executor, None, lambda r: rows.append(r) or True, bar)
    finally:
        if executor is not None:
            executor.shutdown()
    assert len(rows) == 4 and bar.updates == [1, 1, 1, 1]
