"""RTL benchmarks: Verilator build time, simulation speed of Verilator against
Amaranth's Python simulator, RTL cycle counts against the cycle model (sim/timing.py),
Yosys resource counts.

Run: ``python benchmarks/rtl_speed.py [--target tiny] [--synth]``. Every result is one
JSON line on stdout (the last lines); docs/rtl.md quotes them.

Speed is measured fairly: the same design (``flightforge.hw.core.Core``), the same
program (the prefill section of the one-layer decoder of tests/test_rtl_decoder.py, from
the same memory image) and the same memory timing (:mod:`flightforge.sim.bus_model`)
run under (a) Verilator, through the harness, and (b) Amaranth's Python simulator
(:mod:`flightforge.sim.pysim_harness`). Each figure is the wall time of the section's
run alone; building, process start, elaboration and memory loading are printed apart.
Both runs must count the same cycles and leave the same external memory.
"""

from __future__ import annotations

import argparse
import json
import shutil
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

from flightforge import hostio, isa
from flightforge.compiler.demo import DEMO_SECTIONS, build_demo
from flightforge.mappings import load_target
from flightforge.sim import rtl_harness as h
from flightforge.sim.functional import FunctionalSim
from flightforge.sim.memory_check import model_cycles


def bench_build(arch) -> dict:
    with tempfile.TemporaryDirectory() as tmp:
        t = time.perf_counter()
        h.build(arch, build_root=Path(tmp))
        return {
            "bench": "verilator_build",
            "target": arch.name,
            "seconds": round(time.perf_counter() - t, 1),
        }


def bench_demo(arch) -> list[dict]:
    """All demo sections in one simulation; cycles vs the cycle model per section."""
    build = build_demo(arch)
    prog = build.program
    steps = [("write", s.addr, s.data) for s in prog.segments if s.data is not None]
    for tio in prog.inputs:
        q = hostio.quantize(tio, build.inputs[tio.name])
        steps.append(
            ("write", prog.segment(tio.segment).addr, q.astype(hostio.numpy_dtype(tio)).tobytes())
        )
    steps += [("run", name, prog.section(name).code) for name in DEMO_SECTIONS]
    runs = [r for r in h.run_steps(arch, steps) if r and "section" in r]
    out = []
    for r in runs:
        model = model_cycles(arch, prog.section(r["section"]).instructions)
        out.append(
            {
                "bench": "rtl_vs_cycle_model",
                "program": f"demo.{r['section']}",
                "rtl_cycles": r["cycles"],
                "model_cycles": model,
                "error": round(r["cycles"] / model - 1, 3),
            }
        )
    return out


def bench_random(
    arch,
    sections: int = 20,
    seed: int = 7,
    ldst_only: bool = False,
    misc_ops=None,
    name: str | None = None,
) -> dict:
    rng = np.random.default_rng(seed)
    data = rng.integers(0, 256, h.EXT_DATA[1], dtype=np.uint8).tobytes()
    if ldst_only:
        from flightforge.compiler.lower.schedule import TokenScheduler

        secs = []
        for _ in range(sections):
            sched = TokenScheduler(token_depth=arch.token_depth)
            while len(sched.instrs) < 8:
                sched.add(h._random_ld_st(rng, st=rng.random() < 0.4))
            secs.append(sched.finish())
    else:
        secs = [
            h.random_section(arch, rng, **({} if misc_ops is None else {"misc_ops": misc_ops}))
            for _ in range(sections)
        ]
    steps = [("write", h.EXT_DATA[0], data)] + [
        ("run", f"r{i}", isa.encode(s)) for i, s in enumerate(secs)
    ]
    runs = [r for r in h.run_steps(arch, steps) if r and "section" in r]
    errs = []
    for r, s in zip(runs, secs, strict=False):  # runs stop at a section that fails
        try:
            errs.append(r["cycles"] / model_cycles(arch, s) - 1)
        except Exception:  # a stream that deadlocks under the model's timing: skip it
            continue
    name = name or ("random LD/ST" if ldst_only else "random")
    return {
        "bench": "rtl_vs_cycle_model",
        "program": f"{name} x{len(errs)}",
        "mean_error": round(float(np.mean(errs)), 3),
        "min_error": round(float(np.min(errs)), 3),
        "max_error": round(float(np.max(errs)), 3),
    }


class StepRecorder:
    """A Device that records the host's steps for the RTL harness (writes, section runs)
    and answers reads from the functional simulator, so a driver such as ``generate``
    can be replayed step for step on both RTL simulators."""

    def __init__(self, arch) -> None:
        self.arch, self.ref, self.program = arch, FunctionalSim(arch), None
        self.steps: list[tuple] = []

    def load(self, program) -> None:
        self.program = program
        self.ref.load(program)
        self.steps += [("write", s.addr, s.data) for s in program.segments if s.data is not None]

    def write(self, addr: int, data: bytes) -> None:
        self.ref.write(addr, data)
        self.steps.append(("write", addr, bytes(data)))

    def read(self, addr: int, size: int) -> bytes:
        return self.ref.read(addr, size)

    def run(self, section: str, length: int | None = None):
        self.steps.append(h.run_step(self.program, section, length))
        return self.ref.run(section, length)


def decoder_prefill(arch) -> tuple[str, list[tuple[int, bytes]], bytes]:
    """The prefill section of tests/test_rtl_decoder.py's one-layer decoder (same shape,
    seed and prompt): its name, the memory writes before it, and its code."""
    from flightforge.compiler.graph import ONE_LAYER, random_decoder
    from flightforge.compiler.pipeline import CompileOptions, compile_decoder
    from flightforge.generate import generate

    prompt, new_tokens = [3, 17, 42], 2
    shape = ONE_LAYER
    program = compile_decoder(
        random_decoder(shape, seed=1), arch, CompileOptions(max_len=len(prompt) + new_tokens)
    ).program
    rec = StepRecorder(arch)
    generate(program, rec, prompt, 1)  # one token: the prefill run only
    first = next(i for i, st in enumerate(rec.steps) if st[0] == "run")
    return rec.steps[first][1], [st[1:] for st in rec.steps[:first]], rec.steps[first][2]


def _same_memory(a: dict, b: dict) -> bool:
    """Equal images of two page maps (a page missing on one side is all zeros)."""
    for page in set(a) | set(b):
        x, y = a.get(page), b.get(page)
        if x is None or y is None:
            if np.any(x if y is None else y):
                return False
        elif not np.array_equal(x, y):
            return False
    return True


def bench_speed(arch, repeats: int = 5, pysim_cycles: int | None = None) -> list[dict]:
    """Verilator and Amaranth's Python simulator on the same decoder prefill section.

    Verilator runs the section ``repeats`` times in one simulation (the same cycles every
    time: timing does not depend on the data) and reports the median run;
    ``process_and_load_s`` is the rest of that simulation's wall time (process start,
    memory and code loading, results). The Python simulator runs the section once, or
    only its first ``pysim_cycles`` cycles; ``setup_s`` is its elaboration and loading.
    Whole runs must agree on the cycles and the final external memory; a partial one can
    only be checked to be shorter than Verilator's section.
    """
    from flightforge.sim import pysim_harness

    name, writes, code = decoder_prefill(arch)
    program = f"decoder.{name}"
    h.build(arch)  # not timed here: see bench_build
    steps = [("write", a, d) for a, d in writes] + [("run", name, code), ("memory",)]
    steps += [("run", name, code)] * (repeats - 1)
    t = time.perf_counter()
    res = h.run_steps(arch, steps)
    total = time.perf_counter() - t
    runs = [r for r in res if r and "section" in r]
    vl_memory = next(r for r in res if isinstance(r, dict) and "section" not in r)
    cycles = {r["cycles"] for r in runs}
    if len(cycles) != 1:
        raise RuntimeError(f"{program}: Verilator counted different cycles in its runs: {cycles}")
    vl_cycles = runs[0]["cycles"]
    walls = sorted(r["wall_s"] for r in runs)
    vl_wall = walls[len(walls) // 2]
    vl = {
        "bench": "sim_speed",
        "simulator": "verilator",
        "program": program,
        "cycles": vl_cycles,
        "wall_s": round(vl_wall, 4),
        "cycles_per_s": round(vl_cycles / vl_wall),
        "runs": len(runs),
        "process_and_load_s": round(total - sum(walls), 2),
    }
    py = pysim_harness.run_section(arch, writes, code, max_cycles=pysim_cycles)
    ps = {
        "bench": "sim_speed",
        "simulator": "amaranth_pysim",
        "program": program,
        "cycles": py.cycles,
        "whole_section": py.halted,
        "wall_s": round(py.wall_s, 2),
        "cycles_per_s": round(py.cycles / py.wall_s),
        "setup_s": round(py.setup_s, 1),
    }
    cycles_agree = py.cycles == vl_cycles if py.halted else py.cycles < vl_cycles
    same_memory = _same_memory(py.memory._pages, vl_memory) if py.halted else None
    ratio = {
        "bench": "sim_speed_ratio",
        "program": program,
        "verilator_over_pysim": round(vl["cycles_per_s"] / ps["cycles_per_s"], 1),
        "cycles_agree": cycles_agree,
        "same_memory": same_memory,
    }
    if not cycles_agree or same_memory is False:
        raise RuntimeError(f"{program}: the simulators disagree: {vl} {ps} {ratio}")
    return [vl, ps, ratio]


def bench_synth(arch) -> dict:
    """One DSP chain through the project's Yosys runner (:mod:`flightforge.hw.synth`)."""
    from flightforge.hw.mpe import DspChain
    from flightforge.hw.synth import synth

    yosys = shutil.which("yosys")
    if yosys is None:
        return {
            "bench": "yosys_synth_xilinx",
            "skipped": "yosys not on PATH (apt-get install yosys)",
        }
    chain = DspChain(arch.mpe.groups_per_chain, arch.sparse_m, primitive=True)  # as synthesised
    r = synth(chain, "dsp_chain", yosys, flatten=True)
    return {
        "bench": "yosys_synth_xilinx",
        "block": "DspChain",
        "family": "xcup",
        "groups": arch.mpe.groups_per_chain,
        "window": arch.sparse_m,
        "seconds": r["seconds"],
        "ok": r["ok"],
        "depth": r.get("depth"),
        "cells": {
            k: v
            for k, v in r.get("cells", {}).items()
            if k.startswith(("DSP", "LUT", "FD", "CARRY", "RAMB", "MUXF"))
        },
    }


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__)
    ap.add_argument("--target", default="tiny")
    ap.add_argument("--synth", action="store_true", help="also run Yosys synth_xilinx")
    ap.add_argument("--no-build", action="store_true", help="skip the fresh-build timing")
    ap.add_argument(
        "--repeats",
        type=int,
        default=5,
        help="Verilator runs of the section (the median is reported)",
    )
    ap.add_argument(
        "--pysim-cycles",
        type=int,
        default=None,
        help="run only the first N cycles of the section in the Python simulator",
    )
    ap.add_argument(
        "--speed-only",
        action="store_true",
        help="only the build and the simulator speed comparison",
    )
    args = ap.parse_args()
    arch = load_target(args.target)
    lines = []
    if not args.no_build:
        lines.append(bench_build(arch))
    lines += bench_speed(arch, repeats=args.repeats, pysim_cycles=args.pysim_cycles)
    if not args.speed_only:
        lines += bench_demo(arch)
        lines.append(bench_random(arch))
        lines.append(bench_random(arch, ldst_only=True))
    if args.synth:
        lines.append(bench_synth(arch))
    for line in lines:
        print(json.dumps(line))
    sys.stdout.flush()


if __name__ == "__main__":
    main()
