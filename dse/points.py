"""Points of a spec's space: their parameters, their architecture, their evaluation.

:func:`build_point` turns a point's parameters into an architecture, compile options and
timing parameters; :func:`evaluate_point` compiles (through the program cache), times
and prices it, and returns a row for the store. Points the device cannot hold (over the
resource budget) or the compiler cannot fit (``CompileError``) or that are not valid
architectures (``ConfigError``) are rows with status ``infeasible`` and the reason.
"""

from __future__ import annotations

import itertools
import json
import time
import types
import typing
from typing import Annotated, Any

import numpy as np
from pydantic import BaseModel, TypeAdapter, ValidationError

from flightforge import isa, progress
from flightforge.arch import ArchConfig, ConfigError, arch_from_dict
from flightforge.compiler.errors import CompileError
from flightforge.compiler.frontend.hf_config import load_structure
from flightforge.compiler.pipeline import CompileOptions, compile_shape_only
from flightforge.compiler.quant.qdecoder import QuantOptions, WeightPlan
from flightforge.files import read_text
from flightforge.generate import prefill_runs
from flightforge.mappings import load_target
from flightforge.program import ProgramError
from flightforge.sim.device import DeviceError
from flightforge.sim.timing import Timing, TimingParams

from .power import power
from .resources import KINDS, design_resources, over_budget, utilisation
from .spec import (
    ARCH_KNOBS,
    QUANT_KNOBS,
    TIMING_KNOBS,
    QuantSpec,
    Spec,
    SpecError,
    TimingSpec,
    Workload,
    canonical_hash,
)
from .timing import ProgramCache, stream_fields, time_stream

#: unit names in mask-bit order, for the per-unit metrics (``busy_LD``, ...)
UNITS = tuple(u.name for u in isa.Unit)
#: the metrics of a timed point (:func:`evaluate_point`), which objectives may name
METRICS = (
    *KINDS,
    *(f"{k}_util" for k in KINDS),
    "max_utilisation",
    "decode_step_cycles",
    "decode_step_s",
    "decode_tokens_per_s",
    "bytes_per_step",
    "macs_per_step",
    *(f"busy_{u}" for u in UNITS),
    "hbm_utilisation",
    "bw_gbs",
    "peak_gops",
    "power_w",
    "power_w_lo",  # the power model's uncertainty band (dse/power.py)
    "power_w_hi",
    "static_w",
    "logic_w",
    "memory_w",
    "energy_per_token_j",
    "energy_per_token_j_lo",
    "energy_per_token_j_hi",
)
#: the metrics only a spec with ``workload.ttft`` gets
PREFILL_METRICS = ("prefill_cycles", "ttft_s")


def point_key(params: dict[str, Any]) -> str:
    """Canonical hash of a point's parameters (the store's primary key)."""
    return canonical_hash(params)


def grid(spec: Spec) -> list[dict[str, Any]]:
    names = sorted(spec.parameters)
    return [
        dict(zip(names, combo, strict=True))
        for combo in itertools.product(*(spec.parameters[n] for n in names))
    ]


def _base_arch(spec: Spec) -> ArchConfig:
    t = spec.target
    return load_target(spec.path(t) if t.endswith((".yaml", ".yml")) else t)


def check_spec(spec: Spec) -> ArchConfig:
    """Refuse a spec that no point of could run, before any point runs; its base target.

    An unknown target, a model file that cannot be read as a model, no objective or one no
    point reports, a knob value of the wrong type (checked against the field the knob
    sets, so the types stay those of the architecture and spec models) or listed twice,
    or two knobs setting one field is a :class:`SpecError` naming the spec file and field.
    A value of the right type that makes an invalid architecture (a shape that does not
    divide a port) stays a point, infeasible.
    """
    src = spec.source
    try:
        base = _base_arch(spec)
    except ConfigError as e:
        raise SpecError(f"{src}: target: {e}") from None
    try:
        _model_layers(spec)
    except (CompileError, ConfigError, OSError) as e:
        raise SpecError(f"{src}: model: {e}") from None
    _check_objectives(spec)
    _check_parameters(spec)
    return base


def _check_objectives(spec: Spec) -> None:
    """At least one objective, each a metric the spec's points report."""
    src = spec.source
    if not spec.objectives:
        raise SpecError(f"{src}: objectives: name at least one metric to minimise or maximise")
    known = METRICS + (PREFILL_METRICS if spec.workload.ttft else ())
    for k in spec.objectives:
        if k not in known:
            why = "needs workload.ttft: true" if k in PREFILL_METRICS else "no point reports it"
            raise SpecError(f"{src}: objectives.{k}: {why}; metrics: {', '.join(known)}")


def _check_parameters(spec: Spec) -> None:
    """Each knob's values of the type of the field it sets, none listed twice, and no two
    knobs setting one field (``chains`` and ``mpe.chains``: one would silently win)."""
    src = spec.source
    owner: dict[tuple[str, ...], str] = {}
    for k, values in spec.parameters.items():
        adapter, scale = _knob_adapter(spec, k)
        path = ARCH_KNOBS.get(k) or (tuple(k.split(".")) if "." in k else (k,))
        if path in owner:
            raise SpecError(
                f"{src}: parameters.{owner[path]} and parameters.{k} set the same field "
                f"{'.'.join(path)}; keep one"
            )
        owner[path] = k
        for i, v in enumerate(values):
            try:
                exact = isinstance(v, int) and not isinstance(v, bool)
                adapter.validate_python(v * scale if exact else v)
            except ValidationError as e:
                msg = e.errors()[0]["msg"]
                raise SpecError(f"{src}: parameters.{k}: {v!r}: {msg}") from None
            same = [w for w in values[:i] if w == v]
            if same:
                raise SpecError(
                    f"{src}: parameters.{k}: {v!r} is listed twice (as {same[0]!r} and {v!r})"
                )


def _knob_adapter(spec: Spec, knob: str) -> tuple[TypeAdapter, int]:
    """The validator of one knob's values (and the factor a value is scaled by first)."""
    if knob in QUANT_KNOBS:
        return _field_adapter(QuantSpec, knob), 1
    if knob in TIMING_KNOBS:
        return _field_adapter(TimingSpec, knob), 1
    if knob == "buckets":
        return _field_adapter(Spec, knob), 1
    path = ARCH_KNOBS.get(knob) or tuple(knob.split("."))
    model: Any = ArchConfig
    for name in path[:-1]:
        model = _model_of(model, name)
        if model is None:
            raise SpecError(
                f"{spec.source}: parameters.{knob}: the architecture has no field {'.'.join(path)}"
            )
    if path[-1] not in model.model_fields:
        raise SpecError(
            f"{spec.source}: parameters.{knob}: the architecture has no field {'.'.join(path)}"
        )
    if knob.endswith("_kib") and knob in ARCH_KNOBS:  # KiB: an integer, times 1024
        return _field_adapter(model, path[-1]), 1024
    return _field_adapter(model, path[-1]), 1


def _model_of(model: type[BaseModel], name: str) -> type[BaseModel] | None:
    """The model class of field ``name`` of ``model`` (through ``X | None``), or None."""
    field = model.model_fields.get(name)
    if field is None:
        return None
    ann = field.annotation
    members = typing.get_args(ann) if isinstance(ann, types.UnionType) else (ann,)
    for m in members:
        if isinstance(m, type) and issubclass(m, BaseModel):
            return m
    return None


def _field_adapter(model: type[BaseModel], name: str) -> TypeAdapter:
    """A validator of one field of ``model``: its type and its own constraints."""
    field = model.model_fields[name]
    if not field.metadata:
        return TypeAdapter(field.annotation)
    return TypeAdapter(Annotated[field.annotation, *field.metadata])


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
    return load_structure(spec.path(spec.model)).shape.layers


def decode_positions(w: Workload) -> tuple[np.ndarray, list[int]]:
    """All decode positions of the request and the sampled ones."""
    pos = np.arange(w.prompt_len, w.prompt_len + w.decode_len)
    k = min(w.decode_samples, len(pos))
    samples = sorted({int(round(x)) for x in np.linspace(pos[0], pos[-1], k)})
    return pos, samples


_CACHES: dict[str, ProgramCache] = {}


def program_cache(cache_dir: str | None) -> ProgramCache:
    key = cache_dir or ""
    if key not in _CACHES:
        _CACHES[key] = ProgramCache(cache_dir)
    return _CACHES[key]


def evaluate_point(spec: Spec, params: dict[str, Any], cache_dir: str | None = None) -> dict:
    """Evaluate one point: a row for the store (status ok or infeasible with a reason)."""
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
            "model": read_text(spec.path(spec.model), SpecError),
            "quant": repr(quant),
            "buckets": buckets,
            "lengths": lengths,
            "max_len": int(positions[-1]) + 1,
            "arch": stream_fields(arch, buckets),
        }
    )
    m["stream_key"] = skey
    cache = program_cache(cache_dir)
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
        m.update({f"busy_{u}": float(b) for u, b in zip(UNITS, busy, strict=True)})
        bw = moved / m["decode_step_s"]
        m["hbm_utilisation"] = bw / (arch.hbm.bandwidth_gbs * 1e9)
        used = (tparams.channels or arch.hbm.channels) if tparams.interleave_bytes else 1
        m["bw_gbs"] = (
            arch.hbm.bandwidth_gbs * used / arch.hbm.channels * tparams.mem_efficiency_pct / 100
        )
        m["peak_gops"] = 2 * arch.mpe.mv.macs * arch.cores * arch.clock_mhz / 1e3
        pw = power(arch, dict(zip(UNITS, busy, strict=True)), bw)
        m.update(
            power_w=pw.total_w,
            power_w_lo=pw.lo_w,
            power_w_hi=pw.hi_w,
            static_w=pw.static_w,
            logic_w=pw.logic_w,
            memory_w=pw.memory_w,
            energy_per_token_j=pw.total_w * m["decode_step_s"],
            energy_per_token_j_lo=pw.lo_w * m["decode_step_s"],
            energy_per_token_j_hi=pw.hi_w * m["decode_step_s"],
        )
        if w.ttft:
            pre = 0
            for r in prefill_runs(program, w.prompt_len):
                pre += time_stream(
                    cache.stream(skey, program, r.section, r.length), arch, tparams
                ).cycles
            m["prefill_cycles"] = pre
            m["ttft_s"] = pre / clock
    except (ProgramError, DeviceError, KeyError, ValueError, isa.IsaError) as e:
        return done("infeasible", f"timing: {type(e).__name__}: {e}")
    if over:
        return done("infeasible", "over budget: " + "; ".join(over))
    return done()


def evaluate_batch(
    spec_json: str, points: list[dict], cache_dir: str | None, done=None
) -> list[dict]:
    """Worker entry point: evaluate several points (sent as JSON so any worker can run it).

    ``done`` (a queue, or anything with ``put``) gets a 1 after each point, so that the
    parent's bar moves point by point while a batch runs. Without progress bars of its
    own: the DSE's bar counts the points.
    """
    spec = Spec.model_validate_json(spec_json)
    rows = []
    with progress.quiet():
        for p in points:
            rows.append(evaluate_point(spec, p, cache_dir))
            if done is not None:
                done.put(1)
    return rows
