"""Progress reports for steps that take more than a few seconds, on a terminal only.

FlightForge reports progress with one library, tqdm, everywhere: compile (per section and
per pass), RTL elaboration, Verilog conversion and Verilator builds, the DSE and its
report writing, and cycle-model simulation. Bars go to stderr, and only when stderr is a
terminal: output piped to a file or captured by a test stays free of control characters.
The command line's ``-q`` turns them off with :func:`set_enabled`.

Library code calls :func:`bar` around a loop with a known length and :func:`step` around
one long call whose length is unknown (a spinner-like line that shows the elapsed time,
refreshed by a background thread, so a 60-second Verilator build does not look hung).
"""

from __future__ import annotations

import contextlib
import sys
import threading
from collections.abc import Iterator
from typing import Any

#: None: show progress when stderr is a terminal; False: never (``-q``); True: always.
_enabled: bool | None = None

#: How often a :func:`step` line redraws its elapsed time, in seconds.
REFRESH_SECONDS = 0.5


def set_enabled(value: bool | None) -> None:
    """Force progress on (True), off (False, the CLI's ``-q``) or back to automatic (None)."""
    global _enabled
    _enabled = value


def enabled() -> bool:
    """Whether progress is shown: forced, or else when stderr is an interactive terminal."""
    if _enabled is not None:
        return _enabled
    return bool(getattr(sys.stderr, "isatty", lambda: False)())


class _Off:
    """What :func:`bar` returns when progress is off: the same calls, doing nothing."""

    n = 0
    disable = True  #: as tqdm's attribute: nothing is drawn

    def update(self, n: int = 1) -> None:
        self.n += n

    def set_description_str(self, desc: str) -> None:
        pass

    def set_postfix_str(self, text: str) -> None:
        pass

    def close(self) -> None:
        pass


def bar(total: int | None, desc: str, unit: str = "it", *, show: bool = True, **kwargs: Any):
    """A progress bar on stderr (tqdm), or a silent stand-in when progress is off (or
    ``show`` is False: a caller's own switch).

    ``smoothing=0`` makes the rate (and so the ETA) the average since the start rather
    than an average of the last few updates: work that arrives in lumps (a DSE batch, a
    section that needs a new stream) otherwise swings the ETA by an order of magnitude.
    """
    if not (show and enabled()):
        return _Off()
    from tqdm import tqdm

    kwargs.setdefault("smoothing", 0)
    return tqdm(total=total, desc=desc, unit=unit, dynamic_ncols=True, file=sys.stderr, **kwargs)


@contextlib.contextmanager
def quiet() -> Iterator[None]:
    """No progress inside the block: work nested in a step with its own bar (a DSE
    point's compile), or in a worker process whose bars would cut into the parent's."""
    global _enabled
    before = _enabled
    _enabled = False
    try:
        yield
    finally:
        _enabled = before


@contextlib.contextmanager
def step(desc: str) -> Iterator[None]:
    """Show ``desc`` with a running elapsed time while the block runs (one long call)."""
    if not enabled():
        yield
        return
    from tqdm import tqdm

    line = tqdm(total=None, desc=desc, bar_format="{desc}: {elapsed}", file=sys.stderr)
    done = threading.Event()

    def tick() -> None:
        while not done.wait(REFRESH_SECONDS):
            line.refresh()

    thread = threading.Thread(target=tick, daemon=True)
    thread.start()
    try:
        yield
    finally:
        done.set()
        thread.join()
        line.close()
