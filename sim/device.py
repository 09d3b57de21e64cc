"""One driver, three back ends: the interface every simulation level implements.

A program and its memory image are loaded and run through :class:`Device`; the back end
is the functional simulator, the cycle model or the RTL under Verilator, so comparing
levels is the same call with another device (as Glasgow drivers run unchanged against
simulated or real gateware).
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any, Protocol

from flightforge.arch import ArchConfig
from flightforge.program import Program, ProgramError, Section


class DeviceError(RuntimeError):
    """A program misbehaved on a device: deadlock, out-of-range access, bad operands.

    Messages name the section, the instruction index and the field at fault.
    """


@dataclass
class RunResult:
    """What one run of a section reports; ``cycles`` is None on untimed back ends."""

    section: str
    instructions: int
    cycles: int | None = None
    stats: dict[str, Any] = field(default_factory=dict)


class Device(Protocol):
    """A FlightForge core as the host sees it."""

    arch: ArchConfig

    def load(self, program: Program) -> None:
        """Check the program against ``arch`` and write its segments to external memory."""

    def write(self, addr: int, data: bytes) -> None:
        """Write bytes to external memory."""

    def read(self, addr: int, size: int) -> bytes:
        """Read bytes from external memory."""

    def run(self, section: str, length: int | None = None) -> RunResult:
        """Run one section of the loaded program to its HALT.

        ``length`` is the actual prompt length (prefill) or position (decode); it must lie
        in the section's length range and defaults to its low end.
        """


def check_program(program: Program, arch: ArchConfig) -> None:
    """What every back end checks at ``load``: the program is for this architecture."""
    try:
        program.validate(arch)
    except ProgramError as e:
        raise DeviceError(f"cannot load program: {e}") from None


def loaded_section(program: Program | None, name: str) -> Section:
    """The section ``run`` was asked for, as a DeviceError when it cannot be."""
    if program is None:
        raise DeviceError("no program loaded: call load() first")
    try:
        return program.section(name)
    except ProgramError as e:
        raise DeviceError(str(e)) from None


def run_offset(section: Section, length: int | None) -> int:
    """``D``: how far ``length`` lies above the section's low end (its bucket offset)."""
    if length is None:
        return 0
    if not section.len_lo <= length <= section.len_hi:
        raise DeviceError(
            f"section {section.name!r} serves lengths {section.len_lo}..{section.len_hi}, "
            f"not {length}"
        )
    return length - section.len_lo


class TimedDevice:
    """Values from one device and cycles from another, as one :class:`Device`.

    The cycle model carries no data (its ``read`` returns zeros), so on its own it
    would generate meaningless tokens; paired with the functional simulator it gives
    the real tokens and the modelled cycles of the same runs (``flightforge run
    --backend cycle``).
    """

    def __init__(self, values: Device, timing: Device) -> None:
        if values.arch.digest() != timing.arch.digest():
            raise ValueError("the value and timing devices must share one architecture")
        self.arch = values.arch
        self.values, self.timing = values, timing

    def load(self, program: Program) -> None:
        self.values.load(program)
        self.timing.load(program)

    def write(self, addr: int, data: bytes) -> None:
        self.values.write(addr, data)
        self.timing.write(addr, data)

    def read(self, addr: int, size: int) -> bytes:
        return self.values.read(addr, size)

    def run(self, section: str, length: int | None = None) -> RunResult:
        done = self.values.run(section, length)
        timed = self.timing.run(section, length)
        return RunResult(section, done.instructions, timed.cycles, timed.stats)


class RecordingDevice:
    """Forwards the :class:`Device` protocol to ``device`` and keeps every run's result
    (in ``runs``), calling ``on_run`` with each: how a caller sees the runs that
    :func:`flightforge.generate.generate` makes on any back end (a test comparing back
    ends, the command line's progress bar and cycle report)."""

    def __init__(self, device: Device, on_run: Callable[[RunResult], None] | None = None) -> None:
        self.device, self.arch, self.on_run = device, device.arch, on_run
        self.runs: list[RunResult] = []

    def load(self, program: Program) -> None:
        self.device.load(program)

    def write(self, addr: int, data: bytes) -> None:
        self.device.write(addr, data)

    def read(self, addr: int, size: int) -> bytes:
        return self.device.read(addr, size)

    def run(self, section: str, length: int | None = None) -> RunResult:
        result = self.device.run(section, length)
        self.runs.append(result)
        if self.on_run is not None:
            self.on_run(result)
        return result
