"""How fast the cycle model times a LLaMA2-7B decode step on U280 (target: under 1 s).

Compiles LLaMA2-7B shape-only (INT4 weights, FlightLLM's fixed buckets) for one prompt
length, then times the cycle model on the decode section that serves it, on one host
core. Compilation and instruction decoding are reported separately; the figure that
counts is ``model_s``: the wall time of ``CycleModel.run`` on an already decoded section.
Ends with one JSON line.

    python benchmarks/cycle_model_speed.py [--target u280] [--length 128] [--repeat 3]
"""

from __future__ import annotations

import argparse
import json
import time
from pathlib import Path

from flightforge.compiler.pipeline import CompileOptions, compile_shape_only
from flightforge.compiler.qdecoder import QuantOptions
from flightforge.mappings import load_target
from flightforge.sim.cycle_model import CycleModel

CONFIG = Path(__file__).resolve().parent.parent / "examples" / "configs" / "llama2-7b.json"


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--target", default="u280")
    ap.add_argument("--length", type=int, default=128)
    ap.add_argument("--repeat", type=int, default=3)
    args = ap.parse_args()
    arch = load_target(args.target)
    t0 = time.perf_counter()
    program = compile_shape_only(str(CONFIG), arch, CompileOptions(
        with_data=False, lengths=(args.length,), max_len=2049, last_logits_only=True,
        buckets="fixed", quant=QuantOptions(weight_bits=4, group=128)))
    compile_s = time.perf_counter() - t0
    section = program.section_for("decode", args.length)
    t0 = time.perf_counter()
    n = len(section.instructions)
    decode_s = time.perf_counter() - t0
    model = CycleModel(arch)
    model.load(program)
    times = []
    for _ in range(args.repeat):
        t0 = time.perf_counter()
        result = model.run(section.name, args.length)
        times.append(time.perf_counter() - t0)
    best = min(times)
    print(f"LLaMA2-7B decode step at position {args.length} on {arch.name}: {section.name}, "
          f"{n} instructions")
    print(f"  compile (shape-only, one bucket per stage): {compile_s:.2f} s")
    print(f"  decode instruction stream:                  {decode_s:.3f} s")
    print(f"  cycle model run (best of {args.repeat}):              {best:.3f} s "
          f"({n / best / 1e3:.0f} k instructions/s)")
    print(f"  modelled step: {result.cycles} cycles = {result.cycles / arch.clock_hz * 1e3:.2f} ms")
    print(json.dumps({"benchmark": "cycle_model_speed", "target": arch.name, "position": args.length,
                      "instructions": n, "model_s": round(best, 4), "compile_s": round(compile_s, 2),
                      "decode_s": round(decode_s, 4), "cycles": result.cycles,
                      "under_1s": best < 1.0}))


if __name__ == "__main__":
    main()
