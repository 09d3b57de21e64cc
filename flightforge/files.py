"""Reading the YAML and JSON files users hand in (architecture configs, weight plans, DSE
specs, Hugging Face configs), so that an unreadable or malformed file is one error that
names it, in the caller's own error type."""

from __future__ import annotations

import json
from collections.abc import Callable
from pathlib import Path
from typing import Any


def read_yaml(path: Path, error: type[Exception]) -> Any:
    """The parsed contents of the YAML file ``path``; ``error`` names it on failure."""
    import yaml

    return _read(path, error, yaml.safe_load, yaml.YAMLError, "YAML")


def read_json(path: Path, error: type[Exception]) -> Any:
    """The parsed contents of the JSON file ``path``; ``error`` names it on failure."""
    return _read(path, error, json.loads, json.JSONDecodeError, "JSON")


def _read(
    path: Path,
    error: type[Exception],
    parse: Callable[[str], Any],
    invalid: type[Exception],
    kind: str,
) -> Any:
    try:
        return parse(path.read_text())
    except OSError as e:
        raise error(f"{path}: cannot read: {e.strerror}") from None
    except invalid as e:
        raise error(f"{path}: not valid {kind}: {e}") from None
