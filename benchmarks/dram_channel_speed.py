"""Why the testbench runs a C++ port of the independent memory (sim/dram_model.py)
rather than calling the Python model: edges per second of the read channel with the
DRAM model, in Python, against the Verilated core's speed (docs/rtl.md: ~219 k cycles
per second on tiny). A Python call per edge would bound the simulation near the Python
figure (before the core's own work and the call's overhead).

Run: ``python benchmarks/dram_channel_speed.py [--edges N]``; prints one JSON line.
"""

from __future__ import annotations

import argparse
import json
import time

import numpy as np

from flightforge.mappings import load_target
from flightforge.sim.bus_model import MemoryTiming, ReadChannel, WriteChannel
from flightforge.sim.dram_model import Dram, dram_timing
from flightforge.sim.functional import ExternalMemory


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--edges", type=int, default=50_000)
    ap.add_argument("--target", default="tiny")
    args = ap.parse_args()
    arch = load_target(args.target)
    t, beat, capacity = dram_timing(arch), arch.hbm.burst_bytes, 1 << 20
    rng = np.random.default_rng(1)
    rd_cmds = [
        (rng.random() < 0.05, int(rng.integers(0, capacity // beat - 8)) * beat)
        for _ in range(args.edges)
    ]
    wr_cmds = [rng.random() < 0.02 for _ in range(args.edges)]
    memory, dram = ExternalMemory(capacity), Dram(t)
    unused = MemoryTiming(0, 0, 0, arch.hbm.channel_bytes)
    rd = ReadChannel(memory, beat, unused, dram=dram)
    wr = WriteChannel(memory, beat, unused, dram=dram)
    valid, to_send = False, 0
    start = time.perf_counter()
    for (rd_cmd, addr), wr_cmd in zip(rd_cmds, wr_cmds, strict=True):
        valid, _ = rd.step(rd_cmd, addr, 4, valid)
        to_send += 4 * wr_cmd
        wr.step(wr_cmd, addr, 4, to_send > 0, 0, (1 << beat) - 1)
        to_send -= to_send > 0
    wall = time.perf_counter() - start
    print(
        json.dumps(
            {
                "bench": "dram_channels_python",
                "target": arch.name,
                "edges": args.edges,
                "edges_per_s": round(args.edges / wall),
                "accesses": dram.stats.hits + dram.stats.misses + dram.stats.conflicts,
            }
        )
    )


if __name__ == "__main__":
    main()
