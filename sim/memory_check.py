"""The cycle model's error per CI program against the RTL running with another memory
(the independent DRAM/HBM model of :mod:`.dram_model`, or a variant of it).

The programs are those the RTL tests run on ``tiny``: random LD/ST-only and mixed
streams (:func:`.rtl_harness.random_section`, :func:`.rtl_harness.random_ldst_section`),
the compiler's demo (linear, attention prefill and decode) and the one-layer decoder's
prefill and decode sections under greedy generation. Each program's data must stay
bit-exact with the functional simulator (timing does not change data); its cycles are
summed over its sections and compared with the cycle model's
(``tests/test_rtl_memory.py``, ``benchmarks/memory_model_error.py``).
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from flightforge import isa
from flightforge.arch import ArchConfig

from .device import DeviceError, RecordingDevice
from .dram_model import DramTiming
from .functional import FunctionalSim

STREAMS = 16  #: random sections of each kind
SEED = 18
PROMPT = [3, 17, 42]
NEW_TOKENS = 2


@dataclass(frozen=True)
class ProgramError:
    """One row of the table: a program's cycles on the RTL and in the cycle model."""

    program: str
    rtl_cycles: int
    model_cycles: int

    @property
    def error(self) -> float:
        """The cycle model's error: ``model / RTL - 1``."""
        return self.model_cycles / self.rtl_cycles - 1


def model_cycles(arch: ArchConfig, instrs) -> int:
    """The cycle model's cycles of one section (sim/dispatch.py on sim/timing.py)."""
    from .dispatch import run_dispatch
    from .timing import duration

    return run_dispatch(
        instrs,
        token_depth=arch.token_depth,
        queue_depth=arch.queue_depth,
        duration=lambda i, ins: duration(arch, ins),
    ).cycles


def _streams(arch: ArchConfig, kind: str, memory) -> ProgramError:
    """Random sections of ``kind`` (``"ldst"`` or ``"mixed"``) in one simulation."""
    from . import rtl_harness as h

    rng = np.random.default_rng(SEED + (kind == "mixed"))
    data = rng.integers(0, 256, h.EXT_DATA[1], dtype=np.uint8).tobytes()
    ref = FunctionalSim(arch)
    ref.write(h.EXT_DATA[0], data)
    steps, sections, expected = [("write", h.EXT_DATA[0], data)], [], []
    while len(sections) < STREAMS:
        if kind == "ldst":
            sec = h.random_ldst_section(arch, rng)
        else:
            sec = h.random_section(arch, rng, length=10)
        before = ({b: ref.buffer(b).copy() for b in isa.Buf}, dict(ref.ext._pages))
        try:
            ref.execute(sec, name=f"{kind}{len(sections)}")
        except DeviceError:  # not a valid program (a deadlock): undo it
            ref.buffers, ref.ext._pages = before[0], {p: a.copy() for p, a in before[1].items()}
            continue
        sections.append(sec)
        steps += [("run", f"{kind}{len(sections) - 1}", isa.encode(sec)), h.dump_step()]
        expected.append(ref.read(*h.EXT_OUT))
    results = h.run_steps(arch, steps, max_cycles=300_000, memory=memory)
    runs = [r for r in results if r and "section" in r]
    dumps = [r for r in results if r and "buffers" in r]
    for run, dump, want in zip(runs, dumps, expected, strict=True):
        h.check_run(run, run["section"])
        if dump["ext"][h.EXT_OUT] != want:
            raise DeviceError(f"{run['section']}: the RTL's stores differ from the reference")
    return ProgramError(
        f"random {kind} ({len(runs)} sections)",
        sum(r["cycles"] for r in runs),
        sum(model_cycles(arch, s) for s in sections),
    )


def _by_stage(
    name: str, rtl: RecordingDevice, model: RecordingDevice, stages
) -> list[ProgramError]:
    out = []
    for stage in stages:
        pairs = [
            (a.cycles, b.cycles)
            for a, b in zip(rtl.runs, model.runs, strict=True)
            if stage in a.section
        ]
        if pairs:
            out.append(ProgramError(f"{name} {stage}", *map(sum, zip(*pairs, strict=True))))
    return out


def program_errors(arch: ArchConfig, memory: str | DramTiming = "dram") -> list[ProgramError]:
    """Run every CI program on the RTL with ``memory`` (see
    :func:`.rtl_harness.run_steps`) and on the cycle model; one row per program (the
    demo and the decoder one per stage). Raises :class:`DeviceError` when the RTL's data
    differ from the functional simulator's."""
    from flightforge.compiler.demo import build_demo, run_demo
    from flightforge.compiler.graph import ONE_LAYER, random_decoder
    from flightforge.compiler.pipeline import CompileOptions, compile_decoder
    from flightforge.generate import generate

    from . import rtl_harness as h
    from .cycle_model import CycleModel

    rows = [_streams(arch, "ldst", memory), _streams(arch, "mixed", memory)]
    build = build_demo(arch)
    rtl, model = (
        RecordingDevice(h.RtlDevice(arch, memory=memory)),
        RecordingDevice(CycleModel(arch)),
    )
    report = run_demo(arch, rtl, build)
    if not all(a.bit_exact for a in report.outputs):
        raise DeviceError("demo: the RTL's outputs differ from the quantised reference")
    run_demo(arch, model, build)
    rows += _by_stage("demo", rtl, model, ("linear", "prefill", "decode"))
    program = compile_decoder(
        random_decoder(ONE_LAYER, seed=1),
        arch,
        CompileOptions(max_len=len(PROMPT) + NEW_TOKENS),
    ).program
    rtl, model = (
        RecordingDevice(h.RtlDevice(arch, memory=memory)),
        RecordingDevice(CycleModel(arch)),
    )
    got = generate(program, rtl, PROMPT, NEW_TOKENS)
    if got.tokens != generate(program, FunctionalSim(arch), PROMPT, NEW_TOKENS).tokens:
        raise DeviceError("decoder layer: the RTL's tokens differ from the functional simulator's")
    generate(program, model, PROMPT, NEW_TOKENS)
    rows += _by_stage("decoder layer", rtl, model, ("prefill", "decode"))
    return rows


def format_table(rows: list[ProgramError]) -> str:
    lines = ["| program | RTL + memory | cycle model | model error |", "|---|---:|---:|---:|"]
    lines += [f"| {r.program} | {r.rtl_cycles} | {r.model_cycles} | {r.error:+.2%} |" for r in rows]
    return "\n".join(lines)
