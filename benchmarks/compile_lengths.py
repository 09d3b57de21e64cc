"""Length-adaptive compilation of a full-size model for every length: time and storage.

Compiles LLaMA2-7B (shape-only, INT4 weights in groups of 128, last-row logits as
serving does) for U280 for every prompt length 1..2048 and every decode position
1..2047 with length buckets, and prints:

- the compile time and the instruction bytes of the bucketed program;
- the exact instruction bytes of compiling every length separately (counted pass by pass
  with the real kernels, see compiler/lower/storage.py; not extrapolated from sampled lengths);
- the reduction ratio;
- the modelled latency overhead of bucketing at every length (the analytical model of
  compiler/lower/buckets.py: bucketed runs against per-length runs; decode steps and chunk
  passes attend over their actual context, so they cost what per-length runs do), and,
  with ``--latency cycle`` (the default, the policy's model), the cycle model's overhead
  of each whole-prompt bucket at every length it serves.

    python benchmarks/compile_lengths.py [--policy auto|fixed] [--bound 0.02] [--latency cycle]

It ends with one JSON line holding these figures.
"""

from __future__ import annotations

import argparse
import json
import time
from pathlib import Path

from flightforge import isa
from flightforge.compiler.frontend.hf_config import load_structure
from flightforge.compiler.graph import linear_shapes, shape_program
from flightforge.compiler.lower import decoder as lower
from flightforge.compiler.lower.buckets import run_latency
from flightforge.compiler.lower.builder import Builder
from flightforge.compiler.lower.storage import PassCounter, check_layer_identity, per_length_storage
from flightforge.compiler.pipeline import CompileOptions, compile_shape_only
from flightforge.compiler.quant.qdecoder import QuantOptions, shape_only_decoder
from flightforge.generate import decode_run, prefill_runs
from flightforge.mappings import load_target

ROOT = Path(__file__).resolve().parents[1]


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--config", default=str(ROOT / "examples/configs/llama2-7b.json"))
    ap.add_argument("--target", default="u280")
    ap.add_argument("--max-len", type=int, default=2048)
    ap.add_argument("--policy", default="auto", choices=["auto", "fixed"])
    ap.add_argument("--bound", type=float, default=0.02)
    ap.add_argument(
        "--latency",
        default="cycle",
        choices=["analytical", "cycle"],
        help="the auto policy's latency model of a whole-prompt pass",
    )
    args = ap.parse_args()

    arch = load_target(args.target)
    quant = QuantOptions(weight_bits=4, group=128)
    opts = CompileOptions(
        max_len=args.max_len,
        quant=quant,
        with_data=False,
        last_logits_only=True,
        buckets=args.policy,
        bucket_bound=args.bound,
        bucket_latency=args.latency,
    )
    t0 = time.perf_counter()
    program = compile_shape_only(args.config, arch, opts)
    compile_s = time.perf_counter() - t0
    bucketed_instr = sum(len(s) for s in program.sections)
    meta = program.metadata["decoder"]
    print(
        f"model {program.metadata['model']} on {arch.name}, lengths 1..{args.max_len}, "
        f"policy {args.policy} (bound {args.bound:.0%})"
    )
    print(
        f"bucketed compile: {compile_s:.1f} s, {len(program.sections)} sections, "
        f"{bucketed_instr} instructions, {bucketed_instr * isa.INSTR_BYTES / 1e6:.2f} MB "
        f"(prefill chunk {meta['prefill_chunk']} rows)"
    )

    # The same model as the compiler saw it, for counting and for the latency model.
    st = load_structure(args.config)
    prog = shape_program(
        st.shape,
        rope_theta=st.rope_theta,
        n_positions=st.n_positions,
        position_offset=st.position_offset,
    )
    qd = shape_only_decoder(prog, linear_shapes(st.shape), quant, layer_norm=st.norm == "layer")
    t1 = time.perf_counter()
    pl = lower._place(Builder(arch), qd, args.max_len, False)
    chunk_pl = lower.prefill_chunk(qd, arch, pl, args.max_len, True)
    counter = PassCounter(qd, arch, args.max_len)
    check_layer_identity(
        counter,
        [(chunk_pl, 0, "none"), (5, args.max_len - 5, "last"), (1, args.max_len - 1, "all")],
    )
    naive = per_length_storage(counter, chunk_pl, last_only=True)
    count_s = time.perf_counter() - t1
    ratio = naive.instructions / bucketed_instr
    print(
        f"per-length compile (counted exactly in {count_s:.1f} s): {naive.instructions} "
        f"instructions, {naive.bytes / 1e9:.2f} GB (prefill {sum(naive.prefill)}, "
        f"decode {sum(naive.decode)}; prefill chunk {chunk_pl} rows)"
    )
    print(f"reduction: {ratio:.0f}x")

    latency = lower.latency_model(qd, arch)
    chunk_b = meta["prefill_chunk"]
    sections = {s.name: s for s in program.sections}

    def cost(run) -> float:
        sec = sections[run.section]
        return run_latency(latency, sec.stage, sec.len_hi, run.length, chunk_b)

    pre_over, dec_over = [], []
    for length in range(1, args.max_len + 1):
        exact = sum(
            latency(min(chunk_pl, length - p), p + min(chunk_pl, length - p))
            for p in range(0, length, chunk_pl)
        )
        padded = sum(cost(r) for r in prefill_runs(program, length))
        pre_over.append(padded / exact - 1)
    for pos in range(1, args.max_len):
        dec_over.append(cost(decode_run(program, pos)) / latency(1, pos + 1) - 1)
    worst_len = 1 + max(range(len(pre_over)), key=pre_over.__getitem__)
    print(
        f"modelled latency overhead of bucketing: prefill max {max(pre_over):.2%} "
        f"mean {sum(pre_over) / len(pre_over):.2%} (worst at length {worst_len}); decode max "
        f"{max(dec_over):.2%} "
        f"mean {sum(dec_over) / len(dec_over):.2%}"
    )
    short = []
    if args.latency == "cycle":  # the whole-prompt buckets under the model that chose them
        cyc = lower.cycle_latency_model(qd, arch, args.max_len)
        short = [
            cyc(sec.len_hi, sec.len_hi) / cyc(n, n) - 1
            for n in range(1, min(chunk_b, args.max_len) + 1)
            for sec in [program.section_for("prefill", n)]
        ]
        print(f"cycle-model latency overhead of the whole-prompt buckets: max {max(short):.2%}")
    prefill_max = max(pre_over + short)
    worst = max(prefill_max, max(dec_over))
    print(
        json.dumps(
            {
                "benchmark": "compile_lengths",
                "model": program.metadata["model"],
                "target": arch.name,
                "max_len": args.max_len,
                "policy": args.policy,
                "bound": args.bound,
                "latency": args.latency,
                "compile_s": round(compile_s, 2),
                "sections": len(program.sections),
                "bucketed_instructions": bucketed_instr,
                "bucketed_bytes": bucketed_instr * isa.INSTR_BYTES,
                "naive_instructions": naive.instructions,
                "naive_bytes": naive.bytes,
                "reduction": round(ratio, 1),
                "count_s": round(count_s, 2),
                "prefill_overhead_max": round(prefill_max, 5),
                "decode_overhead_max": round(max(dec_over), 5),
                "latency_overhead_max": round(worst, 5),
            }
        )
    )


if __name__ == "__main__":
    main()
