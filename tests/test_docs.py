"""Generated documentation stays in step with its source, and the README with the tree."""

from __future__ import annotations

import re
import stat
from pathlib import Path

from flightforge import isa
from flightforge.cli import main

ROOT = Path(__file__).parent.parent
README = (ROOT / "README.md").read_text()


def test_isa_reference_is_fresh():
    assert (ROOT / "docs" / "isa.md").read_text() == isa.markdown_table(), (
        "docs/isa.md is stale: regenerate it with `flightforge isa --markdown > docs/isa.md`"
    )


def _setup_commands() -> list[str]:
    return re.findall(r"^    (pip install .*)$", README, re.MULTILINE)


def test_readme_gives_exactly_two_setup_commands():
    assert _setup_commands() == [
        "pip install -e . && flightforge demo --target tiny",
        "pip install -e '.[test]' && python -m pytest",
    ]


def test_ci_runs_the_readme_test_command():
    ci = ROOT / ".ci" / "run"
    assert ci.stat().st_mode & stat.S_IXUSR, ".ci/run must be executable"
    lines = [l.strip() for l in ci.read_text().splitlines()]
    assert "set -euo pipefail" in lines
    assert _setup_commands()[1] in lines


def test_readme_shows_every_cli_command():
    for name in main.commands:
        assert f"flightforge {name}" in README, f"README.md does not show `flightforge {name}`"


def test_readme_layout_names_only_existing_folders():
    for folder in re.findall(r"^- `(\w+)/`", README, re.MULTILINE):
        assert (ROOT / folder).is_dir(), f"README.md describes {folder}/, which does not exist"
