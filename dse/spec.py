"""A DSE spec: the model, target, workload, knobs and search of one exploration.

A spec (YAML, :class:`Spec`) names a model (a Hugging Face ``config.json``, compiled
shape-only), a base target, a workload (prompt and decode lengths) and a list of values
per knob (:data:`KNOBS`). See docs/dse.md.
"""

from __future__ import annotations

import hashlib
import json
from pathlib import Path
from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field, ValidationError, model_validator

from flightforge import isa
from flightforge.arch import Int
from flightforge.files import read_text, read_yaml


def canonical_hash(obj: Any) -> str:
    """SHA-256 (hex, 24 digits) of the canonical JSON of ``obj``."""
    text = json.dumps(obj, sort_keys=True, separators=(",", ":"), default=str)
    return hashlib.sha256(text.encode()).hexdigest()[:24]


class SpecError(ValueError):
    """A DSE spec is malformed; the message names the file and field."""


class _M(BaseModel):
    model_config = ConfigDict(frozen=True, extra="forbid")


# Integer fields are strict (``Int``, as in the architecture): a knob value of 4.5 or
# "4" is a spec error, refused before any point runs, never a coerced or failed point.
class Workload(_M):
    prompt_len: Int = Field(default=128, ge=1)
    decode_len: Int = Field(default=512, ge=1)
    #: decode positions timed (evenly spaced, first and last included); the others are
    #: interpolated linearly (decode time is affine in the context, docs/cycle_model.md)
    decode_samples: Int = Field(default=2, ge=1)
    ttft: bool = True  #: also time the prefill (time to first token)


class QuantSpec(_M):
    weight_bits: Int = 4
    group: Int = 128
    sparse_n: Int = Field(default=0, ge=0)  #: N of the N:M pattern of ``sparse_layers`` (0: dense)
    sparse_m: Int = Field(default=16, ge=2)
    sparse_layers: tuple[str, ...] = ("q", "k")


class TimingSpec(_M):
    interleave_bytes: Int = Field(default=4096, ge=0)
    hbm_channels: Int = Field(default=0, ge=0)  #: channels the interleaved map uses (0: all)
    mem_efficiency_pct: Int = Field(default=100, ge=1, le=100)


class SearchSpec(_M):
    method: Literal["grid", "nsga2"] = "grid"
    trials: int = Field(default=200, ge=1, description="nsga2: distinct points to evaluate")
    population: int = Field(default=32, ge=2)
    seed: int = 0
    batch: int = Field(default=4, ge=1, description="points per task sent to a worker")


#: The objectives of a spec that names none (``ttft_s`` only when the prefill is timed).
DEFAULT_OBJECTIVES: dict[str, Literal["min", "max"]] = {
    "decode_tokens_per_s": "max",
    "ttft_s": "min",
    "energy_per_token_j": "min",
    "max_utilisation": "min",
}


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
        default_factory=lambda: dict(DEFAULT_OBJECTIVES)
    )
    search: SearchSpec = SearchSpec()
    base_dir: str = "."  #: where relative paths resolve (the spec file's folder)
    source: str = "<spec>"  #: the spec file, named in error messages

    @model_validator(mode="before")
    @classmethod
    def _default_objectives(cls, data: Any) -> Any:
        """Without ``workload.ttft`` no point has a ``ttft_s``: drop it from the defaults."""
        if isinstance(data, dict) and "objectives" not in data:
            wl = data.get("workload")
            if isinstance(wl, dict) and wl.get("ttft") is False:
                data = {
                    **data,
                    "objectives": {k: v for k, v in DEFAULT_OBJECTIVES.items() if k != "ttft_s"},
                }
        return data

    def path(self, p: str) -> Path:
        q = Path(p)
        return q if q.is_absolute() else Path(self.base_dir) / q

    def fingerprint(self) -> str:
        """What a stored point's metrics depend on besides its parameters."""
        d = self.model_dump(
            mode="json", exclude={"search", "objectives", "name", "base_dir", "source"}
        )
        d["model_json"] = read_text(self.path(self.model), SpecError)
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
    data.setdefault("source", str(path))
    return spec_from_dict(data, str(path))


def spec_from_dict(data: dict, source: str = "<spec>") -> Spec:
    try:
        spec = Spec.model_validate(data)
    except ValidationError as e:
        errs = [f"{'.'.join(map(str, err['loc']))}: {err['msg']}" for err in e.errors()]
        if len(errs) == 1:  # one line naming the field
            raise SpecError(f"{source}: {errs[0]}") from None
        lines = [f"{source}: invalid DSE spec", *(f"  {x}" for x in errs)]
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
