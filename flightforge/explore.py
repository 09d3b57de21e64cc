"""Design-space exploration: a spec, its space, point evaluation, search and persistence.

A spec (YAML, :class:`Spec`) names a model (a Hugging Face ``config.json``, compiled
shape-only), a base target, a workload (prompt and decode lengths) and a list of values
per knob (:data:`KNOBS`). :func:`explore` evaluates points of that space, exhaustively
(``grid``) or by Optuna's NSGA-II sampler (``nsga2``), in parallel over local processes or
on a Dask cluster, and stores every result in SQLite (:class:`Store`) as it arrives, keyed
by a canonical hash of the point's parameters: a killed run resumes where it stopped,
and no point is stored twice. Points the device cannot hold (over the resource budget) or
the compiler cannot fit (``CompileError``) or that are not valid architectures
(``ConfigError``) are stored as infeasible with the reason. See docs/dse.md.
"""

from __future__ import annotations

import concurrent.futures as cf
import itertools
import json
import math
import os
import sqlite3
import time
from pathlib import Path
from typing import Any, Literal

import numpy as np
from pydantic import BaseModel, ConfigDict, Field, ValidationError

from . import isa
from .arch import ArchConfig, ConfigError, arch_from_dict
from .evaluate import ProgramCache, canonical_hash, stream_fields, time_stream
from .files import read_yaml
from .resources import KINDS, design_resources, over_budget, utilisation

UNITS = ("LD", "ST", "MPE", "SFU")


class SpecError(ValueError):
    """A DSE spec is malformed; the message names the file and field."""


class _M(BaseModel):
    model_config = ConfigDict(frozen=True, extra="forbid")


class Workload(_M):
    prompt_len: int = Field(default=128, ge=1)
    decode_len: int = Field(default=512, ge=1)
    #: decode positions timed (evenly spaced, first and last included); the others are
    #: interpolated linearly (decode time is affine in the context, docs/cycle_model.md)
    decode_samples: int = Field(default=2, ge=1)
    ttft: bool = True  #: also time the prefill (time to first token)


class QuantSpec(_M):
    weight_bits: int = 4
    group: int = 128
    sparse_n: int = 0  #: N of the N:M pattern of ``sparse_layers`` (0: dense)
    sparse_m: int = 16
    sparse_layers: tuple[str, ...] = ("q", "k")


class TimingSpec(_M):
    interleave_bytes: int = 4096
    hbm_channels: int = 0  #: channels the interleaved map uses (0: all)
    mem_efficiency_pct: int = 100


class SearchSpec(_M):
    method: Literal["grid", "nsga2"] = "grid"
    trials: int = Field(default=200, ge=1, description="nsga2: distinct points to evaluate")
    population: int = Field(default=32, ge=2)
    seed: int = 0
    batch: int = Field(default=4, ge=1, description="points per task sent to a worker")


class Spec(_M):
    name: str
    model: str  #: HF config.json, relative to the spec file
    target: str  #: shipped target name or a YAML path (relative to the spec file)
    workload: Workload = Workload()
    quant: QuantSpec = QuantSpec()
    buckets: Literal["fixed", "auto", "per-length"] = "fixed"
    timing: TimingSpec = TimingSpec()
    parameters: dict[str, list[Any]] = Field(default_factory=dict)
    objectives: dict[str, Literal["min", "max"]] = Field(
        default_factory=lambda: {
            "decode_tokens_per_s": "max",
            "ttft_s": "min",
            "energy_per_token_j": "min",
            "max_utilisation": "min",
        }
    )
    search: SearchSpec = SearchSpec()
    base_dir: str = "."  #: where relative paths resolve (the spec file's folder)

    def path(self, p: str) -> Path:
        q = Path(p)
        return q if q.is_absolute() else Path(self.base_dir) / q

    def fingerprint(self) -> str:
        """What a stored point's metrics depend on besides its parameters."""
        d = self.model_dump(mode="json", exclude={"search", "objectives", "name", "base_dir"})
        d["model_json"] = self.path(self.model).read_text()
        return canonical_hash(d)


#: knob -> what it sets. Arch knobs are paths into the architecture; ``*_kib`` set a
#: buffer's size; the rest set compile or timing options. Any dotted key (``hbm.latency_ns``)
#: is a path into the architecture as well.
ARCH_KNOBS = {
    "cores": ("cores",),
    "clock_mhz": ("clock_mhz",),
    "chains": ("mpe", "chains"),
    "groups_per_chain": ("mpe", "groups_per_chain"),
    "sfu_lanes": ("sfu", "lanes"),
    "hbm_bandwidth_gbs": ("hbm", "bandwidth_gbs"),
    "token_depth": ("token_depth",),
    "queue_depth": ("queue_depth",),
}
ARCH_KNOBS |= {f"{b.name.lower()}_kib": ("buffers", b.name.lower(), "size") for b in isa.Buf}
QUANT_KNOBS = ("weight_bits", "group", "sparse_n", "sparse_m")
TIMING_KNOBS = ("hbm_channels", "mem_efficiency_pct", "interleave_bytes")
KNOBS = (*ARCH_KNOBS, *QUANT_KNOBS, *TIMING_KNOBS, "buckets")


def load_spec(path: str | Path) -> Spec:
    path = Path(path)
    data = read_yaml(path, SpecError)
    if not isinstance(data, dict):
        raise SpecError(f"{path}: expected a mapping at the top level")
    data.setdefault("base_dir", str(path.parent))
    return spec_from_dict(data, str(path))


def spec_from_dict(data: dict, source: str = "<spec>") -> Spec:
    try:
        spec = Spec.model_validate(data)
    except ValidationError as e:
        lines = [f"{source}: invalid DSE spec"]
        for err in e.errors():
            lines.append(f"  {'.'.join(map(str, err['loc']))}: {err['msg']}")
        raise SpecError("\n".join(lines)) from None
    for k, values in spec.parameters.items():
        if k not in KNOBS and "." not in k:
            raise SpecError(
                f"{source}: parameters.{k}: unknown knob; knobs: {', '.join(KNOBS)}, "
                f"or a dotted architecture path such as hbm.latency_ns"
            )
        if not isinstance(values, list) or not values:
            raise SpecError(f"{source}: parameters.{k}: expected a non-empty list of values")
    if not spec.path(spec.model).is_file():
        raise SpecError(f"{source}: model: no such file {spec.path(spec.model)}")
    return spec


# --- points ---------------------------------------------------------------------------------


def point_key(params: dict[str, Any]) -> str:
    """Canonical hash of a point's parameters (the store's primary key)."""
    return canonical_hash(params)


def grid(spec: Spec) -> list[dict[str, Any]]:
    names = sorted(spec.parameters)
    return [
        dict(zip(names, combo)) for combo in itertools.product(*(spec.parameters[n] for n in names))
    ]


def _base_arch(spec: Spec) -> ArchConfig:
    from .mappings import load_target

    t = spec.target
    return load_target(spec.path(t) if t.endswith((".yaml", ".yml")) else t)


def _set(d: dict, path: tuple[str, ...], value: Any) -> None:
    for p in path[:-1]:
        if not isinstance(d.get(p), dict):
            raise ConfigError(f"architecture has no field {'.'.join(path)}")
        d = d[p]
    if path[-1] not in d and len(path) > 1:
        raise ConfigError(f"architecture has no field {'.'.join(path)}")
    d[path[-1]] = value


def build_point(spec: Spec, params: dict[str, Any], base: ArchConfig | None = None):
    """(arch, QuantOptions, buckets, TimingParams) of a point; ConfigError if invalid.

    Changing ``chains`` or ``groups_per_chain`` rescales the base target's MM and MV
    parallel shapes by the same ratio (the chain dimension is MM's ``m`` and MV's ``n``,
    the group dimension their ``k``), unless the point sets ``mpe.mm``/``mpe.mv`` itself.
    """
    from .compiler.qdecoder import QuantOptions, WeightPlan
    from .sim.timing import Timing, TimingParams

    base = base or _base_arch(spec)
    d = base.model_dump(mode="json")
    q = spec.quant.model_dump()
    tm = spec.timing.model_dump()
    buckets = spec.buckets
    for k, v in params.items():
        if k in ARCH_KNOBS:
            _set(d, ARCH_KNOBS[k], int(v) * 1024 if k.endswith("_kib") else v)
        elif k in QUANT_KNOBS:
            q[k] = v
        elif k in TIMING_KNOBS:
            tm[k] = v
        elif k == "buckets":
            buckets = v
        else:
            _set(d, tuple(k.split(".")), v)
    rc = d["mpe"]["chains"] / base.mpe.chains
    rg = d["mpe"]["groups_per_chain"] / base.mpe.groups_per_chain
    if (rc, rg) != (1, 1) and "mpe.mm" not in params and "mpe.mv" not in params:
        mm, mv = d["mpe"]["mm"], d["mpe"]["mv"]
        mm["m"], mm["k"] = max(1, round(mm["m"] * rc)), max(1, round(mm["k"] * rg))
        mv["n"], mv["k"] = max(1, round(mv["n"] * rc)), max(1, round(mv["k"] * rg))
    m, n = int(q["sparse_m"]), int(q["sparse_n"])
    d["sparse_m"] = m
    d["sparse_n"] = [mode.n for mode in isa.SparseMode if mode.is_sparse and mode.m == m]
    if not d["sparse_n"]:
        raise ConfigError(f"sparse_m: the ISA has no N:M mode with M={m}")
    arch = arch_from_dict(d, f"point {json.dumps(params, sort_keys=True)}")
    plans = {}
    if n:
        try:
            mode = isa.SparseMode.from_nm(n, m)
        except ValueError as e:
            raise ConfigError(f"sparse_n: {e}") from None
        bits = int(q["weight_bits"])
        prec = isa.WPrec.INT4 if bits == 4 else isa.WPrec.INT8
        layers = _model_layers(spec)
        plans = {
            f"l{i}.{w}": WeightPlan(prec, int(q["group"]) if bits == 4 else 0, mode)
            for i in range(layers)
            for w in spec.quant.sparse_layers
        }
    quant = QuantOptions(weight_bits=int(q["weight_bits"]), group=int(q["group"]), plans=plans)
    try:
        tparams = TimingParams(
            interleave_bytes=int(tm["interleave_bytes"]),
            channels=int(tm["hbm_channels"]),
            mem_efficiency_pct=int(tm["mem_efficiency_pct"]),
        )
        Timing(arch, tparams)
    except ValueError as e:
        raise ConfigError(f"timing: {e}") from None
    return arch, quant, buckets, tparams


def _model_layers(spec: Spec) -> int:
    from .compiler.hf_config import load_structure

    return load_structure(spec.path(spec.model)).shape.layers


def decode_positions(w: Workload) -> tuple[np.ndarray, list[int]]:
    """All decode positions of the request and the sampled ones."""
    pos = np.arange(w.prompt_len, w.prompt_len + w.decode_len)
    k = min(w.decode_samples, len(pos))
    samples = sorted({int(round(x)) for x in np.linspace(pos[0], pos[-1], k)})
    return pos, samples


# --- evaluation (runs in worker processes) ---------------------------------------------------

_CACHES: dict[str, ProgramCache] = {}


def _cache(cache_dir: str | None) -> ProgramCache:
    key = cache_dir or ""
    if key not in _CACHES:
        _CACHES[key] = ProgramCache(cache_dir)
    return _CACHES[key]


def evaluate_point(spec: Spec, params: dict[str, Any], cache_dir: str | None = None) -> dict:
    """Evaluate one point: a row for the store (status ok or infeasible with a reason)."""
    from .compiler.memory import CompileError
    from .compiler.pipeline import CompileOptions, compile_shape_only
    from .evaluate import DispatchError
    from .generate import prefill_runs
    from .power import power
    from .program import ProgramError
    from .sim.device import DeviceError

    t0 = time.perf_counter()
    row = {"key": point_key(params), "params": params, "status": "ok", "reason": "", "metrics": {}}

    def done(status: str = "ok", reason: str = "") -> dict:
        row["status"], row["reason"] = status, reason
        row["seconds"] = time.perf_counter() - t0
        return row

    try:
        arch, quant, buckets, tparams = build_point(spec, params)
    except (ConfigError, CompileError) as e:
        return done("infeasible", f"config: {e}")
    m = row["metrics"]
    res = design_resources(arch)
    util = utilisation(res, arch)
    m.update({k: getattr(res, k) for k in KINDS})
    m.update({f"{k}_util": v for k, v in util.items()})
    m["max_utilisation"] = max(util.values()) if util else 0.0
    over = over_budget(res, arch)
    w = spec.workload
    positions, samples = decode_positions(w)
    lengths = tuple(sorted({w.prompt_len, *samples}))
    skey = canonical_hash(
        {
            "model": spec.path(spec.model).read_text(),
            "quant": repr(quant),
            "buckets": buckets,
            "lengths": lengths,
            "max_len": int(positions[-1]) + 1,
            "arch": stream_fields(arch, buckets),
        }
    )
    m["stream_key"] = skey
    cache = _cache(cache_dir)
    options = CompileOptions(
        with_data=False,
        lengths=lengths,
        max_len=int(positions[-1]) + 1,
        last_logits_only=True,
        buckets=buckets,
        quant=quant,
    )
    try:
        program = cache.program(
            skey, arch, lambda a: compile_shape_only(str(spec.path(spec.model)), a, options)
        )
    except (CompileError, ConfigError) as e:
        return done("infeasible", f"compile: {e}")
    try:
        clock = arch.clock_mhz * 1e6
        cycles, busy, moved, macs = [], np.zeros(4), 0, 0
        for p in samples:
            sec = program.section_for("decode", p)
            st = time_stream(cache.stream(skey, program, sec.name, p), arch, tparams)
            cycles.append(st.cycles)
            busy += np.array(st.busy) / st.cycles / len(samples)
            moved += st.bytes_moved / len(samples)
            macs += st.macs / len(samples)
        step = (
            float(np.interp(positions, samples, cycles).mean())
            if len(samples) > 1
            else float(cycles[0])
        )
        m["decode_step_cycles"] = step
        m["decode_step_s"] = step / clock
        m["decode_tokens_per_s"] = clock / step
        m["bytes_per_step"] = moved
        m["macs_per_step"] = macs
        m.update({f"busy_{u}": float(b) for u, b in zip(UNITS, busy)})
        bw = moved / m["decode_step_s"]
        m["hbm_utilisation"] = bw / (arch.hbm.bandwidth_gbs * 1e9)
        used = (tparams.channels or arch.hbm.channels) if tparams.interleave_bytes else 1
        m["bw_gbs"] = (
            arch.hbm.bandwidth_gbs * used / arch.hbm.channels * tparams.mem_efficiency_pct / 100
        )
        m["peak_gops"] = 2 * arch.mpe.mv.macs * arch.cores * arch.clock_mhz / 1e3
        pw = power(arch, dict(zip(UNITS, busy)), bw)
        m.update(
            power_w=pw.total_w,
            static_w=pw.static_w,
            logic_w=pw.logic_w,
            memory_w=pw.memory_w,
            energy_per_token_j=pw.total_w * m["decode_step_s"],
        )
        if w.ttft:
            pre = 0
            for r in prefill_runs(program, w.prompt_len):
                pre += time_stream(
                    cache.stream(skey, program, r.section, r.length), arch, tparams
                ).cycles
            m["prefill_cycles"] = pre
            m["ttft_s"] = pre / clock
    except (ProgramError, DeviceError, DispatchError, KeyError, ValueError, isa.IsaError) as e:
        return done("infeasible", f"timing: {type(e).__name__}: {e}")
    if over:
        return done("infeasible", "over budget: " + "; ".join(over))
    return done()


def evaluate_batch(spec_json: str, points: list[dict], cache_dir: str | None) -> list[dict]:
    """Worker entry point: evaluate several points (sent as JSON so any worker can run it)."""
    spec = Spec.model_validate_json(spec_json)
    return [evaluate_point(spec, p, cache_dir) for p in points]


# --- persistence -----------------------------------------------------------------------------


class Store:
    """Every evaluated point, in SQLite, written (and committed) as it arrives.

    ``points.key`` is the canonical hash of the parameters, so a point is stored at most
    once; ``meta.spec`` holds the spec fingerprint, so a store is never resumed with a
    spec whose results would differ.
    """

    def __init__(self, path: str | Path) -> None:
        self.path = Path(path)
        self.path.parent.mkdir(parents=True, exist_ok=True)
        self.db = sqlite3.connect(str(self.path), timeout=60)
        self.db.execute("PRAGMA journal_mode=WAL")
        self.db.execute("CREATE TABLE IF NOT EXISTS meta (k TEXT PRIMARY KEY, v TEXT)")
        self.db.execute(
            "CREATE TABLE IF NOT EXISTS points (key TEXT PRIMARY KEY, seq INTEGER, "
            "params TEXT, status TEXT, reason TEXT, metrics TEXT, extra TEXT, "
            "seconds REAL, created REAL)"
        )
        self.db.commit()

    def bind(self, fingerprint: str) -> None:
        row = self.db.execute("SELECT v FROM meta WHERE k='spec'").fetchone()
        if row is None:
            self.db.execute("INSERT INTO meta VALUES ('spec', ?)", (fingerprint,))
            self.db.commit()
        elif row[0] != fingerprint:
            raise SpecError(
                f"{self.path} holds points of another spec (fingerprint {row[0]}, "
                f"not {fingerprint}); give another --store or --out"
            )

    def keys(self) -> set[str]:
        return {r[0] for r in self.db.execute("SELECT key FROM points")}

    def __len__(self) -> int:
        return self.db.execute("SELECT COUNT(*) FROM points").fetchone()[0]

    def put(self, row: dict, extra: dict | None = None) -> bool:
        """Store a result; False if its key was already stored (it is then ignored)."""
        cur = self.db.execute(
            "INSERT OR IGNORE INTO points VALUES (?, (SELECT COALESCE(MAX(seq), 0) + 1 FROM points),"
            " ?, ?, ?, ?, ?, ?, ?)",
            (
                row["key"],
                json.dumps(row["params"], sort_keys=True),
                row["status"],
                row["reason"],
                json.dumps(row["metrics"], sort_keys=True),
                json.dumps(extra or {}),
                row.get("seconds", 0.0),
                time.time(),
            ),
        )
        self.db.commit()
        return cur.rowcount == 1

    def get(self, key: str) -> dict | None:
        r = self.db.execute(
            "SELECT key, params, status, reason, metrics, extra, seconds FROM points WHERE key=?",
            (key,),
        ).fetchone()
        return None if r is None else self._row(r)

    def rows(self) -> list[dict]:
        return [
            self._row(r)
            for r in self.db.execute(
                "SELECT key, params, status, reason, metrics, extra, seconds FROM points ORDER BY seq"
            )
        ]

    @staticmethod
    def _row(r) -> dict:
        return {
            "key": r[0],
            "params": json.loads(r[1]),
            "status": r[2],
            "reason": r[3],
            "metrics": json.loads(r[4]),
            "extra": json.loads(r[5]),
            "seconds": r[6],
        }

    def close(self) -> None:
        self.db.close()


# --- execution backends ----------------------------------------------------------------------


def make_executor(jobs: int, scheduler: str | None):
    """A ``concurrent.futures`` executor: local processes, or a Dask cluster's."""
    if scheduler:
        from dask.distributed import Client

        client = Client(scheduler)
        return client.get_executor(), client
    if jobs <= 1:
        return None, None
    import multiprocessing

    return cf.ProcessPoolExecutor(
        max_workers=jobs, mp_context=multiprocessing.get_context("spawn")
    ), None


def _progress(total: int, initial: int, enabled: bool, desc: str):
    if not enabled:
        return None
    from tqdm import tqdm

    return tqdm(total=total, initial=initial, desc=desc, unit="pt", dynamic_ncols=True)


def _batches(points: list[dict], size: int, stream_of) -> list[list[dict]]:
    """Batches of points sharing a compiled stream where possible (one compile per worker)."""
    points = sorted(points, key=stream_of)
    return [points[i : i + size] for i in range(0, len(points), size)]


def _run(spec: Spec, points: list[dict], executor, cache_dir: str | None, on_row) -> None:
    spec_json = spec.model_dump_json()
    stream_params = [k for k in spec.parameters if k not in ARCH_KNOBS or k.endswith("_kib")]
    batches = _batches(
        points,
        spec.search.batch,
        lambda p: json.dumps([p.get(k) for k in sorted(stream_params)], default=str),
    )
    if executor is None:
        for b in batches:
            for row in evaluate_batch(spec_json, b, cache_dir):
                on_row(row)
        return
    futures = [executor.submit(evaluate_batch, spec_json, b, cache_dir) for b in batches]
    try:
        for f in cf.as_completed(futures):
            for row in f.result():
                on_row(row)
    finally:
        for f in futures:
            f.cancel()


def explore(
    spec: Spec,
    store: Store,
    *,
    jobs: int | None = None,
    scheduler: str | None = None,
    cache_dir: str | None = None,
    progress: bool = True,
    method: str | None = None,
    trials: int | None = None,
) -> dict[str, int]:
    """Evaluate the spec's space into ``store`` (resuming whatever it already holds)."""
    store.bind(spec.fingerprint())
    jobs = jobs or min(os.cpu_count() or 1, 2)
    method = method or spec.search.method
    executor, client = make_executor(jobs, scheduler)
    try:
        if method == "grid":
            return _explore_grid(spec, store, executor, cache_dir, progress)
        return _explore_nsga2(
            spec, store, executor, cache_dir, progress, trials or spec.search.trials, jobs
        )
    finally:
        if isinstance(executor, cf.ProcessPoolExecutor):
            executor.shutdown(wait=False, cancel_futures=True)
        elif executor is not None:
            executor.shutdown(wait=False)
        if client is not None:
            client.close()


def _explore_grid(spec, store, executor, cache_dir, progress) -> dict[str, int]:
    points = grid(spec)
    have = store.keys()
    todo = [p for p in points if point_key(p) not in have]
    bar = _progress(len(points), len(points) - len(todo), progress, spec.name)
    new = 0

    def on_row(row):
        nonlocal new
        new += store.put(row)
        if bar is not None:
            bar.update(1)

    _run(spec, todo, executor, cache_dir, on_row)
    if bar is not None:
        bar.close()
    return {"points": len(points), "evaluated": new, "resumed": len(points) - len(todo)}


def _constraints(trial) -> list[float]:
    return trial.user_attrs.get("constraint", [0.0])


def objective_values(spec: Spec, metrics: dict) -> list[float] | None:
    vals = [metrics.get(k) for k in spec.objectives]
    return (
        None if any(v is None or not math.isfinite(v) for v in vals) else [float(v) for v in vals]
    )


def _explore_nsga2(spec, store, executor, cache_dir, progress, trials, jobs) -> dict[str, int]:
    import optuna
    from optuna.distributions import CategoricalDistribution
    from optuna.trial import TrialState, create_trial

    optuna.logging.set_verbosity(optuna.logging.WARNING)
    dists = {k: CategoricalDistribution(v) for k, v in sorted(spec.parameters.items())}
    sampler = optuna.samplers.NSGAIISampler(
        population_size=spec.search.population, seed=spec.search.seed, constraints_func=_constraints
    )
    study = optuna.create_study(
        directions=["minimize" if d == "min" else "maximize" for d in spec.objectives.values()],
        sampler=sampler,
    )

    def frozen(row: dict, system_attrs: dict):
        vals = objective_values(spec, row["metrics"])
        params = {k: row["params"][k] for k in dists if k in row["params"]}
        if len(params) != len(dists):
            return None
        if vals is None:
            return create_trial(
                params=params, distributions=dists, state=TrialState.FAIL, system_attrs=system_attrs
            )
        return create_trial(
            params=params,
            distributions=dists,
            values=vals,
            system_attrs=system_attrs,
            user_attrs={"constraint": [0.0 if row["status"] == "ok" else 1.0]},
        )

    start = len(store)
    for row in store.rows():  # resume: the sampler sees every stored point, in order
        ft = frozen(row, row["extra"].get("system_attrs", {}))
        if ft is not None:
            study.add_trial(ft)
    bar = _progress(trials, min(start, trials), progress, spec.name)
    asks = 0
    while len(store) < trials and asks < 20 * trials:
        want = min(trials - len(store), max(jobs * spec.search.batch, 1))
        pending, todo = [], {}
        for _ in range(want):
            t = study.ask(dists)
            asks += 1
            key = point_key(t.params)
            pending.append((t, key))
            if store.get(key) is None and key not in todo:
                todo[key] = dict(t.params)

        def on_row(row):
            if store.put(row, {"system_attrs": _system_attrs(study, pending, row["key"])}) and bar:
                bar.update(1)

        _run(spec, list(todo.values()), executor, cache_dir, on_row)
        for t, key in pending:
            row = store.get(key)
            vals = objective_values(spec, row["metrics"]) if row else None
            if vals is None:
                study.tell(t, state=TrialState.FAIL)
            else:
                t.set_user_attr("constraint", [0.0 if row["status"] == "ok" else 1.0])
                study.tell(t, vals)
    if bar is not None:
        bar.close()
    return {"points": len(store), "evaluated": len(store) - start, "resumed": start}


def _system_attrs(study, pending, key) -> dict:
    for t, k in pending:
        if k == key:
            return dict(study._storage.get_trial_system_attrs(t._trial_id))
    return {}
