"""Target descriptions: architecture YAML files shipped as package data, and their loader.

A target is named by its file stem (``tiny``, ``u280``, ``vhk158``) or given as a path.
"""

from __future__ import annotations

from importlib import resources
from pathlib import Path

from flightforge.arch import ArchConfig, ConfigError, load_arch


def available_targets() -> list[str]:
    """Names of the targets shipped with FlightForge."""
    return sorted(
        p.name.removesuffix(".yaml")
        for p in resources.files(__name__).iterdir()
        if p.name.endswith(".yaml")
    )


def target_path(name_or_path: str | Path) -> Path:
    """Resolve a target name or a YAML path to a file path."""
    candidate = Path(name_or_path)
    if candidate.suffix in (".yaml", ".yml") or candidate.exists():
        if not candidate.is_file():
            raise ConfigError(f"{candidate}: no such target file")
        return candidate
    name = str(name_or_path)
    ref = resources.files(__name__) / f"{name}.yaml"
    if not ref.is_file():
        raise ConfigError(
            f"unknown target {name!r}; shipped targets: "
            + ", ".join(available_targets())
            + " (or give a YAML path)"
        )
    return Path(str(ref))


def load_target(name_or_path: str | Path) -> ArchConfig:
    """Load a shipped target by name or any architecture YAML by path."""
    return load_arch(target_path(name_or_path))
