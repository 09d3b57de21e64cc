"""DSE spec and run hygiene: bad specs refused before any point runs, one run per store,
Ctrl-C with two workers stops at once and leaves the store resumable (issue 19, item 5).

Every case here was tried against the DSE before these checks existed: bad knob values,
an unknown target or objective and an unreadable model each ran every point and stored
it as infeasible (or died with a traceback); a second run on the same folder evaluated
every point again and reported "0 points evaluated"; Ctrl-C with ``--jobs 2`` printed
"Aborted!" and then waited for the workers' batches (over two minutes on LLaMA-3.2-1B).
"""

from __future__ import annotations

import os
import signal
import sqlite3
import subprocess
import sys
import time
import warnings
from pathlib import Path

import pytest
import yaml
from click.testing import CliRunner

from flightforge.cli import main
from flightforge.dse.points import METRICS, PREFILL_METRICS, check_spec, evaluate_point, grid
from flightforge.dse.search import explore
from flightforge.dse.spec import load_spec, spec_from_dict
from flightforge.dse.store import Store, StoreError


def _write_spec(tmp_path: Path, spec: dict) -> Path:
    path = tmp_path / "spec.yaml"
    path.write_text(yaml.safe_dump(spec))
    return path


def _refused(path: Path, out: Path, fragment: str) -> None:
    """The CLI exits 1 with one ``Error:`` line naming the spec file and ``fragment``,
    without a traceback and before any point ran (no output folder, no store)."""
    result = CliRunner().invoke(main, ["dse", str(path), "--out", str(out), "-q"])
    assert result.exit_code == 1, result.output
    lines = result.output.strip().splitlines()
    assert len(lines) == 1, result.output
    assert lines[0].startswith(f"Error: {path}: "), result.output
    assert fragment in lines[0], result.output
    assert not out.exists(), "points ran (or a store was made) for a refused spec"


BAD_PARAMETERS = [
    ({"clock_mhz": ["fast", 200]}, "parameters.clock_mhz: 'fast': Input should be a valid number"),
    ({"cores": [1.5, 2]}, "parameters.cores: 1.5: Input should be a valid integer"),
    ({"cores": [True]}, "parameters.cores: True: Input should be a valid integer"),
    ({"wgt_kib": ["big"]}, "parameters.wgt_kib: 'big': Input should be a valid integer"),
    ({"sparse_n": ["two"]}, "parameters.sparse_n: 'two': Input should be a valid integer"),
    ({"hbm_channels": ["x"]}, "parameters.hbm_channels: 'x': Input should be a valid integer"),
    (
        {"buckets": ["sometimes"]},
        "parameters.buckets: 'sometimes': Input should be 'fixed', 'auto' or 'per-length'",
    ),
    ({"hbm.latency_ns": ["abc"]}, "parameters.hbm.latency_ns: 'abc': Input should be a valid"),
    ({"foo.bar": [1]}, "parameters.foo.bar: the architecture has no field foo.bar"),
    ({"mpe.chain": [4]}, "parameters.mpe.chain: the architecture has no field mpe.chain"),
    ({"clock_mhz": [150, 200, 150.0]}, "parameters.clock_mhz: 150.0 is listed twice (as 150 and"),
    (
        {"chains": [8, 16], "mpe.chains": [32]},
        "parameters.chains and parameters.mpe.chains set the same field mpe.chains; keep one",
    ),
    (
        {"act_kib": [64], "buffers.act.size": [65536]},
        "parameters.act_kib and parameters.buffers.act.size set the same field buffers.act.size",
    ),
]


@pytest.mark.parametrize(("parameters", "fragment"), BAD_PARAMETERS)
def test_a_knob_value_of_the_wrong_type_is_refused_before_any_point_runs(
    tiny_llama_json, dse_spec_dict, tmp_path, parameters, fragment
):
    path = _write_spec(tmp_path, dse_spec_dict(tiny_llama_json, parameters=parameters))
    _refused(path, tmp_path / "out", fragment)


def test_an_unknown_target_is_refused(tiny_llama_json, dse_spec_dict, tmp_path):
    path = _write_spec(tmp_path, dse_spec_dict(tiny_llama_json, target="kv999"))
    _refused(path, tmp_path / "out", "target: unknown target 'kv999'; shipped targets: ")
    path = _write_spec(tmp_path, dse_spec_dict(tiny_llama_json, target="nothere.yaml"))
    _refused(path, tmp_path / "out", "nothere.yaml: no such target file")


@pytest.mark.parametrize(
    ("text", "fragment"),
    [
        ("{not json", "not valid JSON"),
        ('{"hidden_size": 64}', "field 'model_type' is missing"),
        ("[1, 2]", "expected a JSON object"),
    ],
)
def test_an_unreadable_model_is_refused(dse_spec_dict, tmp_path, text, fragment):
    model = tmp_path / "broken.json"
    model.write_text(text)
    path = _write_spec(tmp_path, dse_spec_dict(model))
    _refused(path, tmp_path / "out", f"model: {model}: {fragment}")


def test_an_unknown_objective_is_refused(tiny_llama_json, dse_spec_dict, tmp_path):
    spec = dse_spec_dict(tiny_llama_json, objectives={})
    _refused(_write_spec(tmp_path, spec), tmp_path / "out", "objectives: name at least one")
    spec = dse_spec_dict(tiny_llama_json, objectives={"tokens_per_s": "max"})
    _refused(_write_spec(tmp_path, spec), tmp_path / "out", "objectives.tokens_per_s: no point")
    spec = dse_spec_dict(
        tiny_llama_json,
        workload={"prompt_len": 8, "decode_len": 8, "ttft": False},
        objectives={"ttft_s": "min", "power_w": "min"},
    )
    _refused(
        _write_spec(tmp_path, spec),
        tmp_path / "out",
        "objectives.ttft_s: needs workload.ttft: true",
    )


@pytest.mark.parametrize(
    "example", sorted((Path(__file__).resolve().parent.parent / "examples").glob("dse_*.yaml"))
)
def test_the_example_specs_pass_the_checks(example):
    spec = load_spec(example)
    check_spec(spec)
    assert spec.source == str(example)


def test_the_default_objectives_leave_out_ttft_when_the_prefill_is_not_timed(
    tiny_llama_json, dse_spec_dict
):
    spec = spec_from_dict(
        dse_spec_dict(tiny_llama_json, workload={"prompt_len": 8, "decode_len": 8, "ttft": False})
    )
    assert "ttft_s" not in spec.objectives and "decode_tokens_per_s" in spec.objectives


def test_the_metrics_objectives_may_name_are_those_a_point_reports(tiny_llama_json, dse_spec_dict):
    spec = spec_from_dict(dse_spec_dict(tiny_llama_json))
    row = evaluate_point(spec, {})
    assert row["status"] == "ok", row["reason"]
    reported = set(row["metrics"]) - {"stream_key"}
    assert reported == set(METRICS) | set(PREFILL_METRICS)


def test_a_second_run_on_a_store_in_use_is_refused(tiny_llama_json, dse_spec_dict, tmp_path):
    out = tmp_path / "out"
    holder = Store(out / "points.sqlite")  # a run in progress
    path = _write_spec(tmp_path, dse_spec_dict(tiny_llama_json))
    result = CliRunner().invoke(main, ["dse", str(path), "--out", str(out), "-q"])
    assert result.exit_code == 1, result.output
    assert result.output.startswith(
        f"Error: {out / 'points.sqlite'}: in use by another DSE run (pid {os.getpid()}, started "
    ), result.output
    assert len(holder) == 0, "the refused run stored points"
    with pytest.raises(StoreError, match="in use by another DSE run"):
        Store(out / "points.sqlite")
    # reading a running exploration's store (a report of it) needs no lock
    assert Store(out / "points.sqlite", readonly=True).rows() == []
    holder.close()
    Store(out / "points.sqlite").close()  # free again once the run is over


def test_an_nsga2_run_prints_no_deprecation_notice(tiny_llama_json, dse_spec_dict, tmp_path):
    spec = spec_from_dict(
        dse_spec_dict(
            tiny_llama_json,
            parameters={"clock_mhz": [100, 200]},
            search={"method": "nsga2", "trials": 2, "population": 2},
        )
    )
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        store = Store(tmp_path / "s.sqlite")
        explore(spec, store, jobs=1, progress=False)
        store.close()
    assert not [w for w in caught if issubclass(w.category, FutureWarning)], caught


def test_a_report_of_another_spec_s_store_is_refused(tiny_llama_json, dse_spec_dict, tmp_path):
    out = tmp_path / "out"
    store = Store(out / "points.sqlite")
    store.bind(spec_from_dict(dse_spec_dict(tiny_llama_json)).fingerprint())
    store.close()
    other = dse_spec_dict(tiny_llama_json, workload={"prompt_len": 9, "decode_len": 8})
    path = _write_spec(tmp_path, other)
    result = CliRunner().invoke(main, ["dse", str(path), "--out", str(out), "--report-only"])
    assert result.exit_code == 1, result.output
    assert result.output.startswith(f"Error: {out / 'points.sqlite'} holds points of another spec")
    assert not (out / "report.html").exists()


def test_a_file_that_is_not_a_store_is_refused_in_one_line(tmp_path):
    path = tmp_path / "notes.sqlite"
    path.write_text("not a database\n")
    with pytest.raises(StoreError, match=r"notes.sqlite: not a usable DSE store: file is not a"):
        Store(path)


def _count(db: Path) -> int:
    try:
        return sqlite3.connect(str(db)).execute("SELECT COUNT(*) FROM points").fetchone()[0]
    except sqlite3.Error:
        return 0


def _group_gone(pgid: int, within_s: float) -> bool:
    """Whether every process of group ``pgid`` (the run and its workers) has exited."""
    deadline = time.monotonic() + within_s
    while time.monotonic() < deadline:
        try:
            os.killpg(pgid, 0)
        except ProcessLookupError:
            return True
        time.sleep(0.05)
    return False


CTRL_C_GRID = {"clock_mhz": [100, 125, 150, 175, 200, 225], "cores": [1, 2, 3], "sparse_n": [0, 4]}


def _interrupt_and_resume(spec: dict, tmp_path: Path, workers: list[str]) -> None:
    """Start ``flightforge dse`` on ``workers``, Ctrl-C it once two points are stored:
    it must be gone within 5 s (its local workers too), exit 130 without a traceback, and
    a second run must complete the grid with no point lost or stored twice."""
    path = _write_spec(tmp_path, spec)
    out = tmp_path / "out"
    db = out / "points.sqlite"
    cmd = [sys.executable, "-m", "flightforge.cli", "dse", str(path), "--out", str(out)]
    proc = subprocess.Popen(
        [*cmd, *workers, "-q"],
        start_new_session=True,  # its own process group, as a terminal's foreground job
        # a shell's background job starts with SIGINT ignored; a terminal's does not
        preexec_fn=lambda: signal.signal(signal.SIGINT, signal.SIG_DFL),
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )
    deadline = time.monotonic() + 180
    while _count(db) < 2 and time.monotonic() < deadline and proc.poll() is None:
        time.sleep(0.05)
    assert proc.poll() is None, "the run ended before it could be interrupted"
    t0 = time.monotonic()
    os.killpg(proc.pid, signal.SIGINT)  # Ctrl-C: the run and its workers get SIGINT
    try:
        _, err = proc.communicate(timeout=30)
    except subprocess.TimeoutExpired:
        os.killpg(proc.pid, signal.SIGKILL)
        pytest.fail("the run did not stop within 30 s of Ctrl-C")
    stopped_s = time.monotonic() - t0
    assert _group_gone(proc.pid, 5.0), "worker processes outlived the interrupted run"
    assert proc.returncode == 130, err
    assert "Traceback" not in err, err
    stored = Store(db).rows()
    assert f"Interrupted: {len(stored)} points stored in {db}" in err, err
    assert stopped_s < 5.0, f"took {stopped_s:.1f} s to stop after Ctrl-C"
    total = len(grid(spec_from_dict(spec)))
    assert 2 <= len(stored) < total
    subprocess.run([*cmd, "--jobs", "2", "-q"], check=True, capture_output=True, timeout=300)
    after = Store(db).rows()
    keys = [r["key"] for r in after]
    assert len(keys) == len(set(keys)) == total
    assert keys[: len(stored)] == [r["key"] for r in stored]


def test_ctrl_c_with_two_workers_stops_promptly_and_the_run_resumes(
    tiny_llama_json, dse_spec_dict, tmp_path
):
    spec = dse_spec_dict(tiny_llama_json, parameters=CTRL_C_GRID, search={"batch": 2})
    _interrupt_and_resume(spec, tmp_path, ["--jobs", "2"])


CLUSTER = """
import sys
from dask.distributed import LocalCluster
with LocalCluster(n_workers=2, threads_per_worker=1, processes=True, dashboard_address=None) as c:
    print(c.scheduler_address, flush=True)
    sys.stdin.read()  # until the test closes our stdin
"""


@pytest.mark.slow
def test_ctrl_c_on_a_dask_cluster_of_two_workers_stops_promptly(
    tiny_llama_json, dse_spec_dict, tmp_path
):
    pytest.importorskip("dask.distributed")
    cluster = subprocess.Popen(
        [sys.executable, "-c", CLUSTER],
        stdin=subprocess.PIPE,
        stdout=subprocess.PIPE,
        stderr=subprocess.DEVNULL,
        text=True,
        start_new_session=True,
    )
    try:
        address = cluster.stdout.readline().strip()
        assert address.startswith("tcp://"), address
        spec = dse_spec_dict(tiny_llama_json, parameters=CTRL_C_GRID, search={"batch": 2})
        _interrupt_and_resume(spec, tmp_path, ["--scheduler", address])
    finally:
        cluster.stdin.close()
        try:
            cluster.wait(timeout=30)
        except subprocess.TimeoutExpired:
            os.killpg(cluster.pid, signal.SIGKILL)
            cluster.wait()


def test_an_aborted_dask_runs_cancelled_tasks_are_not_reported_as_errors() -> None:
    """The event loop's report of a task the abort cancelled is dropped (it printed a
    traceback after Ctrl-C in a CI run); any other error on that loop is still logged."""
    import logging

    from distributed.client import FutureCancelledError

    from dse.executors import _CancelledTasksUnlogged

    def record(exc: BaseException) -> logging.LogRecord:
        try:
            raise exc
        except BaseException:
            return logging.LogRecord(
                "tornado.application",
                logging.ERROR,
                __file__,
                1,
                "Exception in callback",
                None,
                sys.exc_info(),
            )

    quiet = _CancelledTasksUnlogged()
    assert not quiet.filter(record(FutureCancelledError("k", reason="unknown")))
    assert quiet.filter(record(ValueError("a real failure")))
    assert quiet.filter(
        logging.LogRecord("tornado.application", logging.ERROR, "", 1, "m", None, None)
    )
