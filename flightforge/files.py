"""Reading the YAML and JSON files users hand in (architecture configs, weight plans, DSE
specs, Hugging Face configs), so that an unreadable or malformed file is one error that
names it, in the caller's own error type."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any


def read_yaml(path: Path, error: type[Exception]) -> Any:
    """The parsed contents of the YAML file ``path``; ``error`` names it on failure."""
    import yaml

    try:
        return yaml.safe_load(path.read_text())
    except OSError as e:
        raise error(f"{path}: cannot read: {e.strerror}") from None
    except yaml.YAMLError as e:
        raise error(f"{path}: not valid YAML: {e}") from None


def read_json(path: Path, error: type[Exception]) -> Any:
    """The parsed contents of the JSON file ``path``; ``error`` names it on failure."""
    try:
        return json.loads(path.read_text())
    except OSError as e:
        raise error(f"{path}: cannot read: {e.strerror}") from None
    except json.JSONDecodeError as e:
        raise error(f"{path}: not valid JSON: {e}") from None
