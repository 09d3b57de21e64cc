"""The host driver of the board SoC (:mod:`flightforge.hw.soc`) and its simulation.

- :class:`Link` speaks :mod:`flightforge.link`'s protocol over any byte stream with
  ``write(bytes)`` and ``read(n)`` (a pyserial port, or the pipes of a simulation);
- :class:`BoardDevice` implements the :class:`~flightforge.sim.device.Device` protocol on
  a link, so the same host code (``flightforge.hostio``, the demo) runs a compiled
  program on the board as on the functional simulator or the RTL harness;
- :func:`open_serial` opens a real board's serial port (pyserial, the ``fpga`` extra);
- :class:`SimulatedBoard` builds the SoC's Verilog with Verilator around
  ``sim/verilator/soc_host.cpp`` (the host end of the serial line) and is a stream on
  the simulated UART.

The board's external memory is the SoC's on-chip memory (see :mod:`flightforge.hw.soc`):
a program's segments must fit in it, and ``load`` zeroes the segments without data, as
the simulators' external memory starts zeroed.
"""

from __future__ import annotations

import hashlib
import os
import select
import shutil
import subprocess
import time
from dataclasses import dataclass
from pathlib import Path

from flightforge import isa, link
from flightforge.arch import ArchConfig
from flightforge.link import DEFAULT_BAUD, Op, Status
from flightforge.program import Program

from .device import DeviceError, RunResult, check_program, loaded_section


class LinkError(DeviceError):
    """The link failed: no reply in time, or the SoC reported an error status."""


class Link:
    """One host end of the byte protocol (one command, then its reply, at a time)."""

    def __init__(self, stream, timeout_s: float = 30.0) -> None:
        self.stream = stream
        self.timeout_s = timeout_s

    def _recv(self, n: int, what: str) -> bytes:
        data = self.stream.read(n) if n else b""
        if len(data) != n:
            raise LinkError(
                f"{what}: {len(data)} of {n} reply bytes within {self.timeout_s} s "
                "(is the board powered and programmed, at the same baud rate?)"
            )
        return data

    def command(self, op: Op, data: bytes = b"", reply: int = 0, **fields: int) -> bytes:
        """Send one command (header ``fields`` and ``data``) and return its reply after
        the status byte; a non-zero status raises :class:`LinkError` naming it."""
        self.stream.write(link.encode(op, **fields) + data)
        status = Status(self._recv(1, op.name)[0])
        if status:
            names = ", ".join(s.name for s in Status if s & status)
            raise LinkError(f"{op.name} {fields}: the SoC replied with status {names}")
        return self._recv(reply, op.name)

    def ident(self) -> tuple[bytes, int]:
        """The SoC's config digest prefix and its on-chip memory size in bytes."""
        r = self.command(Op.IDENT, reply=link.IDENT_BYTES)
        return r[: link.DIGEST_BYTES], 1 << r[link.DIGEST_BYTES]

    def program(self, index: int, code: bytes) -> None:
        self.command(Op.PROGRAM, code, index=index, count=len(code) // isa.INSTR_BYTES)

    def write(self, addr: int, data: bytes) -> None:
        self.command(Op.WRITE, bytes(data), addr=addr, size=len(data))

    def read(self, addr: int, size: int) -> bytes:
        return self.command(Op.READ, reply=size, addr=addr, size=size)

    def run(self, d: int) -> int:
        """Run the loaded section with the length register at ``d``; returns its cycles."""
        return int.from_bytes(self.command(Op.RUN, reply=link.CYCLE_BYTES, d=d), "little")


class BoardDevice:
    """The board SoC as a :class:`~flightforge.sim.device.Device`.

    ``RunResult.cycles`` are the board's cycles (its on-chip memory's timing, not the
    mapping's external-memory model: :mod:`flightforge.hw.soc`).
    """

    def __init__(self, arch: ArchConfig, stream, timeout_s: float = 30.0) -> None:
        self.arch = arch
        self.link = Link(stream, timeout_s)
        digest, self.mem_bytes = self.link.ident()
        if digest != arch.digest()[: link.DIGEST_BYTES]:
            raise DeviceError(
                f"the board's SoC was built for another configuration (digest "
                f"{digest.hex()}, target {arch.name!r} has "
                f"{arch.digest()[: link.DIGEST_BYTES].hex()}): rebuild or pick its target"
            )
        self.program: Program | None = None
        self._code: tuple[str, bytes] | None = None  # the section in the instruction buffer

    def _check(self, addr: int, size: int, what: str) -> None:
        if addr < 0 or size < 0 or addr + size > self.mem_bytes:
            raise DeviceError(
                f"{what}: bytes {addr}..{addr + size - 1} lie outside the board's "
                f"on-chip memory (0..{self.mem_bytes - 1})"
            )

    def load(self, program: Program) -> None:
        check_program(program, self.arch)
        for seg in program.segments:
            self._check(seg.addr, seg.size, f"segment {seg.name!r}")
        self.program, self._code = program, None
        for seg in program.segments:
            self.write(seg.addr, seg.data if seg.data is not None else bytes(seg.size))

    def write(self, addr: int, data: bytes) -> None:
        self._check(addr, len(data), "write")
        self.link.write(addr, data)

    def read(self, addr: int, size: int) -> bytes:
        self._check(addr, size, "read")
        return self.link.read(addr, size)

    def run(self, section: str, length: int | None = None) -> RunResult:
        from flightforge.hw.controller import IMEM_DEPTH

        from .rtl_harness import run_step

        sec = loaded_section(self.program, section)
        _, _, code, d = run_step(self.program, section, length)
        if len(sec) > IMEM_DEPTH:
            raise DeviceError(
                f"section {section!r} has {len(sec)} instructions; the instruction "
                f"buffer holds {IMEM_DEPTH}"
            )
        if self._code != (section, code):
            self.link.program(0, code)
            self._code = (section, code)
        try:
            cycles = self.link.run(d)
        except LinkError as e:
            raise DeviceError(f"section {section!r}: {e}") from None
        return RunResult(section, len(sec), cycles, {"board": True})


def open_serial(port: str, baud: int = DEFAULT_BAUD, timeout_s: float = 30.0):
    """A real board's serial port (pyserial: ``pip install 'flightforge[fpga]'``)."""
    from flightforge import extras

    extras.require("fpga", "run --backend board")
    import serial

    return serial.serial_for_url(port, baudrate=baud, timeout=timeout_s)


# --- the SoC under Verilator, as a byte stream -------------------------------------------

SIM_MAIN = Path(__file__).parent / "verilator" / "soc_host.cpp"
DEFAULT_BUILD_ROOT = Path(os.environ.get("FLIGHTFORGE_BOARD_BUILD", "build/board"))
#: Verilator options of the SoC build (zero for X, as the core's harness builds).
VERILATOR_ARGS = ("--x-assign", "0", "--x-initial", "0", "-Wno-fatal")


@dataclass(frozen=True)
class SocBuild:
    executable: Path
    divisor: int
    mem_bytes: int


def build_soc_sim(
    arch: ArchConfig, mem_bytes: int, divisor: int, build_root: Path | None = None
) -> SocBuild:
    """Verilate the SoC for ``arch`` with ``soc_host.cpp`` as its main (cached on disk by
    a hash of the Verilog, the main and the options)."""
    from flightforge import progress
    from flightforge.hw.export import SOC_TOP, WAIVERS, soc_verilog

    from .rtl_harness import verilator_setup

    verilator_setup()
    with progress.step(f"elaborate {arch.name} SoC, convert to Verilog"):
        text = soc_verilog(arch, mem_bytes, divisor)
    main = SIM_MAIN.read_bytes()
    h = hashlib.sha256(text.encode() + main + repr(VERILATOR_ARGS).encode())
    directory = (
        Path(build_root or DEFAULT_BUILD_ROOT).resolve() / f"{arch.name}-{h.hexdigest()[:12]}"
    )
    exe = directory / "soc_sim"
    if not exe.exists():
        directory.mkdir(parents=True, exist_ok=True)
        (directory / f"{SOC_TOP}.v").write_text(text)
        (directory / f"{SOC_TOP}.vlt").write_text(WAIVERS.format(name=SOC_TOP))
        shutil.copy(SIM_MAIN, directory / SIM_MAIN.name)
        cmd = [
            "verilator", "--cc", "--exe", "--build", "-j", "2", "--top-module", SOC_TOP,
            "--Mdir", str(directory / "obj"), "-o", str(exe), *VERILATOR_ARGS,
            str(directory / f"{SOC_TOP}.vlt"), str(directory / f"{SOC_TOP}.v"),
            str(directory / SIM_MAIN.name),
        ]  # fmt: skip
        # As in rtl_harness.build: the wheel's verilated.mk leaves the PCH flag empty.
        env = dict(os.environ, MAKEFLAGS="CFG_CXXFLAGS_PCH_I=-include")
        with progress.step(f"Verilator build {directory.name}"):
            log = directory / "build.log"
            with log.open("w") as f:
                rc = subprocess.run(cmd, stdout=f, stderr=subprocess.STDOUT, env=env).returncode
        if rc != 0 or not exe.exists():
            raise DeviceError(f"Verilator build of the SoC failed:\n{log.read_text()[-4000:]}")
    return SocBuild(exe, divisor, mem_bytes)


class SimulatedBoard:
    """The SoC under Verilator, a byte stream on its UART (``read``/``write`` as a serial
    port has them); use as a context manager, or call :meth:`close`."""

    def __init__(self, build: SocBuild, timeout_s: float = 60.0) -> None:
        self.timeout_s = timeout_s
        self.proc = subprocess.Popen(
            [str(build.executable), str(build.divisor)],
            stdin=subprocess.PIPE,
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
        )
        self.bytes_sent = self.bytes_received = 0

    def write(self, data: bytes) -> int:
        self.proc.stdin.write(data)
        self.proc.stdin.flush()
        self.bytes_sent += len(data)
        return len(data)

    def read(self, n: int) -> bytes:
        """Up to ``n`` bytes: fewer only when ``timeout_s`` passes first."""
        out = bytearray()
        fd = self.proc.stdout.fileno()
        deadline = time.monotonic() + self.timeout_s
        while len(out) < n:
            left = deadline - time.monotonic()
            if left <= 0 or not select.select([fd], [], [], left)[0]:
                break
            chunk = os.read(fd, n - len(out))
            if not chunk:
                break
            out += chunk
        self.bytes_received += len(out)
        return bytes(out)

    def close(self) -> str:
        """End the simulation; returns its report line (cycles simulated)."""
        if self.proc.stdin and not self.proc.stdin.closed:
            self.proc.stdin.close()
        try:
            self.proc.wait(timeout=60)
        except subprocess.TimeoutExpired:
            self.proc.kill()
            self.proc.wait()
        self.proc.stdout.close()
        err = self.proc.stderr.read()
        self.proc.stderr.close()
        return err.decode(errors="replace").strip()

    def __enter__(self) -> SimulatedBoard:
        return self

    def __exit__(self, *exc) -> None:
        self.close()
