"""Design points evaluated per minute: LLaMA2-7B decode steps on U280 variants, 2 workers.

Each point is one decode step (position 128, ``decode_samples: 1``, no prefill) of a U280
variant differing in clock, HBM channels used, cores, chains and DSP groups, which share
one compiled stream (docs/dse.md): the compile is paid once per worker (it is cached on
disk), every other point costs the duration vector and one dispatch run. The target is
1000 evaluations per minute on 2 cores. ``--check N`` re-times N random points with the
full cycle model (``CycleModel.execute``) and reports any cycle difference. Ends with one
JSON line.

    python benchmarks/dse_throughput.py [--jobs 2] [--check 3]
"""

from __future__ import annotations

import argparse
import json
import random
import tempfile
import time
from pathlib import Path

from flightforge.dse.points import build_point
from flightforge.dse.search import explore
from flightforge.dse.spec import spec_from_dict
from flightforge.dse.store import Store

CONFIG = Path(__file__).resolve().parent.parent / "examples" / "configs" / "llama2-7b.json"
SPEC = {
    "name": "dse-throughput",
    "model": str(CONFIG),
    "target": "u280",
    "workload": {"prompt_len": 128, "decode_len": 1, "decode_samples": 1, "ttft": False},
    "quant": {"weight_bits": 4, "group": 128, "sparse_n": 4},
    "timing": {"interleave_bytes": 4096, "mem_efficiency_pct": 70},
    "parameters": {
        "clock_mhz": [150, 175, 200, 225, 250, 275, 300, 325],
        "hbm_channels": [8, 16, 24, 32],
        "cores": [1, 2, 3, 4],
        "chains": [64, 96, 128],
        "groups_per_chain": [8, 16],
    },
    "search": {"method": "grid", "batch": 16},
}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--jobs", type=int, default=2)
    ap.add_argument("--check", type=int, default=3)
    args = ap.parse_args()
    spec = spec_from_dict(SPEC)
    with tempfile.TemporaryDirectory() as tmp:
        store = Store(Path(tmp) / "points.sqlite")
        t0 = time.perf_counter()
        stats = explore(
            spec, store, jobs=args.jobs, cache_dir=str(Path(tmp) / "programs"), progress=False
        )
        wall = time.perf_counter() - t0
        rows = store.rows()
        compile_s = max((r["seconds"] for r in rows), default=0.0)
        mismatches = []
        if args.check:
            from flightforge.program import Program
            from flightforge.sim.cycle_model import CycleModel

            prog = Program.from_bytes(next((Path(tmp) / "programs").glob("*.ffb")).read_bytes())
            sec = prog.section_for("decode", 128)
            for r in random.Random(0).sample(
                [r for r in rows if "decode_step_cycles" in r["metrics"]], args.check
            ):
                arch, _, _, tp = build_point(spec, r["params"])
                ref = CycleModel(arch, tp).execute(sec.instructions, sec.name, 128 - sec.len_lo)
                if ref.cycles != r["metrics"]["decode_step_cycles"]:
                    mismatches.append([r["params"], ref.cycles, r["metrics"]["decode_step_cycles"]])
    per_min = len(rows) / wall * 60
    ok = sum(r["status"] == "ok" for r in rows)
    print(
        f"{len(rows)} LLaMA2-7B decode-step points ({ok} within budget) in {wall:.1f} s on "
        f"{args.jobs} workers: {per_min:.0f} per minute (slowest point, incl. its compile: "
        f"{compile_s:.1f} s); cycle-model check: {args.check - len(mismatches)}/{args.check} equal"
    )
    print(
        json.dumps(
            {
                "benchmark": "dse_throughput",
                "points": len(rows),
                "jobs": args.jobs,
                "wall_s": round(wall, 1),
                "points_per_min": round(per_min),
                "target_per_min": 1000,
                "meets_target": per_min >= 1000,
                "checked": args.check,
                "mismatches": mismatches,
                "evaluated": stats["evaluated"],
            }
        )
    )


if __name__ == "__main__":
    main()
