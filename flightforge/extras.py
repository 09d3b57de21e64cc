"""The optional dependency groups ("extras") of pyproject.toml, checked before a command
that needs one starts work, so a missing extra ends with the ``pip install`` line that
fixes it rather than a ``ModuleNotFoundError`` half-way (with files left behind).

The requirements are read from the installed package's metadata: pyproject.toml stays
the one place that lists them.
"""

from __future__ import annotations

import re
from importlib import metadata

DIST = "flightforge"


class MissingExtra(RuntimeError):
    """An extra that a command needs is not (completely) installed."""


def install_line(extra: str) -> str:
    """The command that installs ``extra`` into a checkout's environment."""
    return f"pip install -e '.[{extra}]'"


def missing(extra: str) -> list[str]:
    """The distributions that ``extra`` requires and that are not installed.

    Empty when flightforge itself is not installed (running from a source tree without
    metadata): the command's own imports then tell.
    """
    try:
        requires = metadata.requires(DIST) or []
    except metadata.PackageNotFoundError:
        return []
    marker = re.compile(rf"""extra\s*==\s*["']{re.escape(extra)}["']""")
    gone = []
    for req in requires:
        spec, _, env = req.partition(";")
        if not marker.search(env):
            continue
        name = re.match(r"\s*([A-Za-z0-9._-]+)", spec).group(1)
        try:
            metadata.version(name)
        except metadata.PackageNotFoundError:
            gone.append(name)
    return gone


def require(extra: str, command: str) -> None:
    """Raise :class:`MissingExtra` naming the install line unless ``extra`` is installed."""
    gone = missing(extra)
    if gone:
        raise MissingExtra(missing_message(extra, command, f"{', '.join(gone)} not installed"))


def missing_message(extra: str, command: str, why: str) -> str:
    """``flightforge COMMAND`` needs the EXTRA extra (WHY), and the line that installs it."""
    return (
        f"`flightforge {command}` needs the {extra} extra ({why}); "
        f"install it from the repository root with: {install_line(extra)}"
    )
