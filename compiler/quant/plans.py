"""Per-layer weight plans from a YAML file: mixed precision and sparsity by layer name.

    default: {bits: 4, group: 128}        # every Linear not matched below
    layers:
      - match: "l*.q"                      # fnmatch over weight names
        sparse: "8:16"
      - match: "l*.k"
        sparse: "8:16"
      - match: "l0.*"                      # later entries refine earlier ones
        bits: 8
      - match: lm_head
        bits: 8
        group: 0

Weight names are those of the decoder program: ``l{i}.q``, ``l{i}.k``, ``l{i}.v``,
``l{i}.o``, ``l{i}.gate``/``up``/``down`` (SwiGLU) or ``l{i}.fc1``/``fc2``, and
``lm_head``. Fields: ``bits`` (2, 3, 4 or 8), ``group`` (group size along K for the
weight scales; the largest valid size up to it that divides K, 0 for one scale per
column), ``sparse`` (``dense`` or ``n:m``). A pattern that matches no layer, an unknown
field or a bad value is an error naming the file and the entry.
"""

from __future__ import annotations

import fnmatch
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from flightforge.files import read_yaml, short_repr
from flightforge.isa import SparseMode

from ..errors import CompileError

FIELDS = ("bits", "group", "sparse")


@dataclass(frozen=True)
class PlanRule:
    match: str
    values: dict[str, Any]


@dataclass(frozen=True)
class PlanSpec:
    """A parsed plan file; :meth:`resolve` gives one layer's fields."""

    default: dict[str, Any] = field(default_factory=dict)
    rules: tuple[PlanRule, ...] = ()
    source: str = "<plan>"

    def resolve(self, name: str) -> dict[str, Any]:
        out = dict(self.default)
        for rule in self.rules:
            if fnmatch.fnmatchcase(name, rule.match):
                out.update(rule.values)
        return out

    def check_names(self, names: list[str]) -> None:
        """Every pattern must match some layer: a typo must not silently change nothing."""
        for i, rule in enumerate(self.rules):
            if not any(fnmatch.fnmatchcase(n, rule.match) for n in names):
                raise CompileError(
                    f"{self.source}: layers[{i}] match {rule.match!r} matches no "
                    f"layer (layers: {', '.join(sorted(names)[:8])}, ...)"
                )


def _values(entry: Any, where: str) -> dict[str, Any]:
    if not isinstance(entry, dict):
        raise CompileError(
            f"{where}: expected a mapping of {', '.join(FIELDS)}, not {short_repr(entry)}"
        )
    out = {}
    for key, value in entry.items():
        if key not in FIELDS:
            raise CompileError(
                f"{where}: unknown field {short_repr(key)} (fields: {', '.join(FIELDS)})"
            )
        if key == "bits" and (_not_int(value) or value not in (2, 3, 4, 8)):
            raise CompileError(f"{where}: bits must be 2, 3, 4 or 8, not {short_repr(value)}")
        if key == "group" and (_not_int(value) or value < 0):
            raise CompileError(
                f"{where}: group must be a non-negative integer, not {short_repr(value)}"
            )
        if key == "sparse":
            if not isinstance(value, str):
                raise CompileError(
                    f"{where}: sparse must be 'dense' or 'n:m', not {short_repr(value)}"
                )
            if value != "dense":
                try:
                    n, m = (int(x) for x in value.split(":"))
                    SparseMode.from_nm(n, m)
                except ValueError as e:
                    raise CompileError(f"{where}: sparse {short_repr(value)}: {e}") from None
        out[key] = value
    return out


def _not_int(value: Any) -> bool:
    return not isinstance(value, int) or isinstance(value, bool)


def parse_plan(data: Any, source: str = "<plan>") -> PlanSpec:
    if not isinstance(data, dict):
        raise CompileError(f"{source}: a plan is a mapping with 'default' and 'layers'")
    extra = set(map(str, data)) - {"default", "layers"}
    if extra:
        raise CompileError(
            f"{source}: unknown key {short_repr(sorted(extra)[0])} (keys: default, layers)"
        )
    default = _values(data.get("default") or {}, f"{source}: default")
    layers = data.get("layers") or []
    if not isinstance(layers, list):
        raise CompileError(f"{source}: layers must be a list of entries, not {short_repr(layers)}")
    rules = []
    for i, entry in enumerate(layers):
        where = f"{source}: layers[{i}]"
        if not isinstance(entry, dict) or not isinstance(entry.get("match"), str):
            raise CompileError(f"{where}: each entry needs a 'match' pattern (a string)")
        entry = dict(entry)
        rules.append(PlanRule(entry.pop("match"), _values(entry, where)))
    return PlanSpec(default, tuple(rules), source)


def load_plan(path: str | Path) -> PlanSpec:
    path = Path(path)
    return parse_plan(read_yaml(path, CompileError), str(path))


def sparse_mode(value: str) -> SparseMode:
    if value == "dense":
        return SparseMode.DENSE
    n, m = (int(x) for x in value.split(":"))
    return SparseMode.from_nm(n, m)
