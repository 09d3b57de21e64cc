"""Generated documentation stays in step with its source, and the README with the tree."""

from __future__ import annotations

import os
import re
import stat
import subprocess
import sys
import time
from dataclasses import dataclass
from pathlib import Path

import pytest

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


def test_ci_runs_the_readme_test_command_after_the_linter():
    """.ci/run runs the README's test command, step by step, with ruff's lint and format
    check after the install and before the tests (set -e: a finding fails the run)."""
    ci = ROOT / ".ci" / "run"
    assert ci.stat().st_mode & stat.S_IXUSR, ".ci/run must be executable"
    lines = [ln.strip() for ln in ci.read_text().splitlines()]
    assert "set -euo pipefail" in lines
    # CI runs every test: the README's command with the slow ones, as the last line, so
    # that pytest's exit status (5 when no test ran) is the script's, unmasked.
    assert lines[-1] == _setup_commands()[1] + " --run-slow"
    # ruff's lint and format check run before the tests (set -e: a finding fails the run)
    for step in ("ruff check .", "ruff format --check ."):
        assert step in lines[:-1], f".ci/run does not run {step!r} before the tests"


def test_readme_shows_every_cli_command():
    for name in main.commands:
        assert f"flightforge {name}" in README, f"README.md does not show `flightforge {name}`"


def test_readme_layout_names_only_existing_folders():
    for folder in re.findall(r"^- `(\w+)/`", README, re.MULTILINE):
        assert (ROOT / folder).is_dir(), f"README.md describes {folder}/, which does not exist"


# --- the shell blocks of README.md and docs/ run as written ---------------------------------

#: A code block is a shell block when its first line starts with one of these commands.
SHELL_COMMANDS = ("flightforge", "python", "pip", "printf")
#: The files whose shell blocks the tests run; docs/isa.md is generated and has none.
DOCUMENTS = ["README.md", *sorted(p.relative_to(ROOT).as_posix() for p in ROOT.glob("docs/*.md"))]
#: ``<!-- docs-test: slow -->`` on the line before a block: it runs only with --run-slow.
MARKER = re.compile(r"<!--\s*docs-test:\s*(\w+)\s*-->")


@dataclass(frozen=True)
class ShellBlock:
    """An indented code block of shell commands in a document."""

    document: str
    line: int  #: 1-based line of the block's first command
    commands: tuple[str, ...]
    slow: bool

    def __str__(self) -> str:
        return f"{self.document}:{self.line}"


def shell_blocks(document: str) -> list[ShellBlock]:
    """The shell blocks of ``document``: indented blocks after a blank line whose first
    line is a command of :data:`SHELL_COMMANDS`; ``#`` lines are comments."""
    lines = (ROOT / document).read_text().splitlines()
    blocks, i = [], 0
    while i < len(lines):
        starts = lines[i].startswith("    ") and (i == 0 or not lines[i - 1].strip())
        if not starts or lines[i].split()[0] not in SHELL_COMMANDS:
            i += 1
            continue
        j = i
        while j < len(lines) and lines[j].startswith("    "):
            j += 1
        above = [ln for ln in lines[max(0, i - 3) : i] if ln.strip()]
        marks = [m.group(1) for ln in above for m in MARKER.finditer(ln)]
        for mark in marks:
            assert mark == "slow", f"{document}:{i + 1}: unknown docs-test marker {mark!r}"
        commands = tuple(ln.strip() for ln in lines[i:j] if not ln.strip().startswith("#"))
        blocks.append(ShellBlock(document, i + 1, commands, "slow" in marks))
        i = j
    return blocks


def _runnable(command: str) -> str | None:
    """What the docs test runs of ``command``: set-up commands install (CI's set-up does
    that), so only what follows their ``&&`` runs, and the test command is CI's own."""
    if not command.startswith("pip install"):
        return command
    _, sep, rest = command.partition(" && ")
    if not sep or rest.startswith("python -m pytest"):
        return None
    return rest


def _workspace(tmp: Path) -> dict[str, str]:
    """A folder holding the repository's inputs (examples/, tests/ as links) and the
    environment of a shell in this virtualenv; `run --backend rtl` finds the RTL tests'
    Verilator builds (the cache is keyed by content, so it is shared, not rebuilt)."""
    from flightforge.sim.rtl_harness import DEFAULT_BUILD_ROOT

    for name in ("examples", "tests"):
        (tmp / name).symlink_to(ROOT / name)
    env = dict(os.environ)
    env["PATH"] = os.pathsep.join([str(Path(sys.executable).parent), env.get("PATH", "")])
    env["FLIGHTFORGE_RTL_BUILD"] = str(DEFAULT_BUILD_ROOT.resolve())
    env.pop("VERILATOR_ROOT", None)
    return env


def run_blocks(document: str, tmp: Path, slow: bool) -> list[tuple[str, float]]:
    """Run the document's shell blocks (all of them, or only those not marked slow) in
    order in ``tmp``; return each command's wall time. Fails on the first non-zero exit
    status, naming the document line, and if anything is written outside out/."""
    env = _workspace(tmp)
    times = []
    for block in shell_blocks(document):
        if block.slow and not slow:
            continue
        for command in filter(None, map(_runnable, block.commands)):
            start = time.perf_counter()
            done = subprocess.run(
                ["bash", "-euo", "pipefail", "-c", command],
                cwd=tmp,
                env=env,
                capture_output=True,
                text=True,
                stdin=subprocess.DEVNULL,
            )
            assert done.returncode == 0, (
                f"{block}: `{command}` exited with {done.returncode}:\n"
                f"{done.stdout[-2000:]}\n{done.stderr[-3000:]}"
            )
            times.append((command, time.perf_counter() - start))
    stray = sorted(p.name for p in tmp.iterdir() if p.name not in ("examples", "tests", "out"))
    assert not stray, f"{document}'s commands wrote outside out/: {stray}"
    return times


@pytest.mark.parametrize("document", DOCUMENTS)
def test_fast_shell_blocks_run(document, tmp_path):
    if document == "README.md" or any(not b.slow for b in shell_blocks(document)):
        run_blocks(document, tmp_path, slow=False)


@pytest.mark.slow
@pytest.mark.parametrize("document", [d for d in DOCUMENTS if any(b.slow for b in shell_blocks(d))])
def test_every_shell_block_runs(document, tmp_path):
    times = run_blocks(document, tmp_path, slow=True)
    print("\n".join(f"{t:7.1f} s  {c}" for c, t in times))


def test_shell_blocks_are_found():
    readme = shell_blocks("README.md")
    assert [b.commands[0].split()[1] for b in readme][:4] == [
        "install",
        "install",
        "isa",
        "targets",
    ]
    assert all(c.split()[0] in SHELL_COMMANDS for b in readme for c in b.commands)


def test_pip_lines_name_existing_extras():
    import tomllib

    extras = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"][
        "optional-dependencies"
    ]
    for document in DOCUMENTS:
        text = (ROOT / document).read_text()
        for names in re.findall(r"pip install -e '\.\[([\w,]+)\]'", text):
            for name in names.split(","):
                assert name in extras, f"{document} installs the unknown extra {name!r}"


INLINE = re.compile(r"`flightforge (\w+)((?: [^`]*)?)`")


def test_inline_commands_use_existing_options():
    """Every `flightforge CMD --opt ...` the docs quote in running text names a command and
    options that exist (the blocks above are run; these are checked against --help)."""
    for document in DOCUMENTS:
        for name, rest in INLINE.findall((ROOT / document).read_text()):
            assert name in main.commands, f"{document}: `flightforge {name}` is no command"
            params = {o for p in main.commands[name].params for o in p.opts}
            for opt in re.findall(r"(?<!\S)(--?[a-z][\w-]*)", rest):
                assert opt in params, f"{document}: `flightforge {name}` has no option {opt}"


GENERATED = re.compile(
    r"<!-- generated: flightforge ([^>]*?) -->\n(.*?)<!-- end generated -->", re.DOTALL
)


def test_generated_tables_are_fresh():
    """Every ``<!-- generated: flightforge ARGS -->`` block in the docs is exactly what
    that command prints now (docs/dse.md's target table, ...)."""
    from click.testing import CliRunner

    found = 0
    for document in DOCUMENTS:
        for args, text in GENERATED.findall((ROOT / document).read_text()):
            found += 1
            result = CliRunner().invoke(main, args.split())
            assert result.exit_code == 0, result.output
            assert text == result.output, (
                f"{document}: the table generated by `flightforge {args}` is stale: "
                "paste the command's output between its markers"
            )
    assert found


def test_numerics_states_the_rtl_accumulator_width():
    from flightforge.hw.mpe.epilogue import HELD_BITS

    text = (ROOT / "docs" / "numerics.md").read_text()
    assert re.findall(r"(\d+)-bit accumulator", text) == [str(HELD_BITS)]
