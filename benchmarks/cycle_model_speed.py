"""How fast the cycle model times LLaMA2-7B on U280: one decode step (target: under
1 s) and a whole request of prefill 512 + decode 1536 with length buckets (target:
under 30 s).

Compiles LLaMA2-7B shape-only (INT4 weights, FlightLLM's fixed buckets: prefill by 128,
decode by 16), then times, on one host core, the cycle model on the decode section that
serves ``--length`` (``model_s``: the wall time of ``CycleModel.run`` on an already
decoded section) and :func:`flightforge.sim.cycle_model.simulate` of the whole request
(``request_s``: every prefill chunk pass and one run per decode bucket the request
reaches). Compilation is reported separately. Ends with one JSON line.

    python benchmarks/cycle_model_speed.py [--target u280] [--length 128] [--repeat 3]
        [--prompt 512 --decode 1536]
"""

from __future__ import annotations

import argparse
import json
import time
from pathlib import Path

from flightforge.compiler.pipeline import CompileOptions, compile_shape_only
from flightforge.compiler.quant.qdecoder import QuantOptions
from flightforge.mappings import load_target
from flightforge.sim.cycle_model import CycleModel, simulate

CONFIG = Path(__file__).resolve().parent.parent / "examples" / "configs" / "llama2-7b.json"


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--target", default="u280")
    ap.add_argument("--length", type=int, default=128)
    ap.add_argument("--repeat", type=int, default=3)
    ap.add_argument("--prompt", type=int, default=512, help="prompt length of the whole request")
    ap.add_argument("--decode", type=int, default=1536, help="decode steps of the whole request")
    args = ap.parse_args()
    arch = load_target(args.target)
    t0 = time.perf_counter()
    request = range(args.prompt, args.prompt + args.decode)
    program = compile_shape_only(
        str(CONFIG),
        arch,
        CompileOptions(
            with_data=False,
            lengths=tuple(sorted({args.length, *request})),
            max_len=args.prompt + args.decode + 1,
            last_logits_only=True,
            buckets="fixed",
            quant=QuantOptions(weight_bits=4, group=128),
        ),
    )
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
    print(
        f"LLaMA2-7B decode step at position {args.length} on {arch.name}: {section.name}, "
        f"{n} instructions"
    )
    print(f"  compile (shape-only, one bucket per stage): {compile_s:.2f} s")
    print(f"  decode instruction stream:                  {decode_s:.3f} s")
    print(
        f"  cycle model run (best of {args.repeat}):              {best:.3f} s "
        f"({n / best / 1e3:.0f} k instructions/s)"
    )
    print(f"  modelled step: {result.cycles} cycles = {result.cycles / arch.clock_hz * 1e3:.2f} ms")
    t0 = time.perf_counter()
    report = simulate(program, arch, args.prompt, args.decode)
    request_s = time.perf_counter() - t0
    runs = len(report.prefill_runs) + len(report.decode_samples)
    print(
        f"  whole request (prefill {args.prompt}, decode {args.decode}; "
        f"{len(program.sections)} sections compiled, {runs} section runs): {request_s:.2f} s; "
        f"modelled TTFT {report.prefill_seconds * 1e3:.1f} ms, {report.decode_tokens_per_s:.1f} "
        f"token/s"
    )
    print(
        json.dumps(
            {
                "benchmark": "cycle_model_speed",
                "target": arch.name,
                "position": args.length,
                "instructions": n,
                "model_s": round(best, 4),
                "compile_s": round(compile_s, 2),
                "decode_s": round(decode_s, 4),
                "cycles": result.cycles,
                "under_1s": best < 1.0,
                "request": [args.prompt, args.decode],
                "request_runs": runs,
                "request_s": round(request_s, 2),
                "request_under_30s": request_s < 30.0,
            }
        )
    )


if __name__ == "__main__":
    main()
