"""Calibrate the analytical resource model against Yosys synthesis of the RTL.

Synthesises the blocks of one core (``hw/``) with Yosys ``synth_xilinx -family xcup``
(UltraScale+) at small configurations, counts LUT, FF, DSP48E2 and block-RAM cells, fits
the per-block coefficients of :mod:`flightforge.dse.resources` and writes them, with every
synthesis result and the model's error on each, to ``dse/resource_calibration.json``
(committed: tests and the DSE read it and never need Yosys).

What is synthesised, and what each gives:

- ``DspChain(groups, window)`` for groups in 2, 4, 8 and window (the sparse MUX width,
  ``sparse_m``) in 4, 16: LUT and FF per MAC as ``a + b * window`` (a least-squares fit);
  ``groups=16, window=8`` is held out and only checked.
- ``Controller``, ``LoadUnit``, ``StoreUnit``, ``SpecialFunctionUnit`` and
  ``MatrixEngine`` (one chain instantiated, see docs/rtl.md) of the ``tiny`` target:
  per-block constants; the MPE's cost beyond its one chain is the per-chain epilogue.
- ``Buffer(size, 1)`` at 4 and 16 KiB: checks the block-RAM mapping rule.

Needs Debian's ``yosys`` (``apt-get install yosys``); takes several minutes.

The power model (``dse/power.py``) is not calibrated here: its figures are published or
stated assumptions, checked against published FPGA LLM power figures by
``benchmarks/dse_power_check.py``.

    python benchmarks/calibrate_resources.py [--out dse/resource_calibration.json]
"""

from __future__ import annotations

import argparse
import json
import subprocess
from pathlib import Path

import numpy as np

from flightforge.dse.resources import sfu_copies
from flightforge.hw.synth import synth, yosys_binary
from flightforge.mappings import load_target

OUT = Path(__file__).resolve().parent.parent / "dse" / "resource_calibration.json"
CHAIN_FIT = [(g, w) for g in (2, 4, 8) for w in (4, 16)]
CHAIN_HOLDOUT = [(16, 8)]


def model_errors(runs: list[dict], coef: dict) -> list[dict]:
    """The model's relative error on each chain and buffer run (held-out runs marked)."""
    from flightforge.arch import BufferConfig
    from flightforge.dse.resources import bank_memories

    out = []
    for r in runs:
        p = r["params"]
        if r["block"] == "DspChain":
            macs, w = 2 * p["groups"], p["window"]
            model = {
                "lut": macs * (coef["lut_per_mac"] + coef["lut_per_mac_per_window"] * w),
                "ff": macs * (coef["ff_per_mac"] + coef["ff_per_mac_per_window"] * w),
                "dsp": macs,
            }  # the RTL maps one MAC per DSP48E2 (docs/rtl.md)
        elif r["block"] == "Buffer":
            model = {
                "bram": bank_memories(BufferConfig(size=p["size"], banks=1, width=1), False)[0]
            }
        else:
            continue
        out.append(
            {
                "block": r["block"],
                "params": p,
                "held_out": (p.get("groups"), p.get("window")) in CHAIN_HOLDOUT,
                **{
                    k: {
                        "yosys": r[k],
                        "model": round(v, 1),
                        "rel_error": round((v - r[k]) / r[k], 4) if r[k] else None,
                    }
                    for k, v in model.items()
                },
            }
        )
    return out


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--out", type=Path, default=OUT)
    args = ap.parse_args()
    yosys = yosys_binary()
    version = subprocess.run([yosys, "-V"], capture_output=True, text=True).stdout.strip()
    from flightforge.hw.buffers import Buffer
    from flightforge.hw.controller import Controller
    from flightforge.hw.memory_units import LoadUnit, StoreUnit
    from flightforge.hw.mpe import DspChain, MatrixEngine
    from flightforge.hw.sfu.unit import SpecialFunctionUnit

    arch = load_target("tiny")
    runs: list[dict] = []

    def record(block: str, params: dict, component, flags: str = "") -> dict:
        r = {"block": block, "params": params, **synth(component, block.lower(), yosys, flags)}
        runs.append(r)
        print(json.dumps({k: v for k, v in r.items() if k != "cells"}), flush=True)
        return r

    for g, w in CHAIN_FIT + CHAIN_HOLDOUT:
        record("DspChain", {"groups": g, "window": w}, DspChain(g, w))
    for block, make in (
        ("Controller", Controller),
        ("LoadUnit", LoadUnit),
        ("StoreUnit", StoreUnit),
        ("SpecialFunctionUnit", SpecialFunctionUnit),
        ("MatrixEngine", MatrixEngine),
    ):
        record(block, {"target": arch.name}, make(arch))
    for size in (4096, 16384):
        # Yosys 0.23 cannot map the byte RAM to LUT RAM (invalid ABITS/WIDTH): block RAM only.
        record("Buffer", {"size": size, "ports": 2}, Buffer(size, 2), "-nolutram")

    # Fit LUT and FF per MAC as a + b * window on the chain runs (MACs = 2 * groups).
    fit = [
        r
        for r in runs
        if r["block"] == "DspChain" and (r["params"]["groups"], r["params"]["window"]) in CHAIN_FIT
    ]
    a = np.array(
        [
            [2 * r["params"]["groups"], 2 * r["params"]["groups"] * r["params"]["window"]]
            for r in fit
        ],
        dtype=float,
    )
    coef = {}
    for what in ("lut", "ff"):
        y = np.array([r[what] for r in fit], dtype=float)
        (base, per_window), *_ = np.linalg.lstsq(a, y, rcond=None)
        coef[f"{what}_per_mac"] = round(float(base), 3)
        coef[f"{what}_per_mac_per_window"] = round(float(per_window), 4)
    by = {r["block"]: r for r in runs if r["block"] not in ("DspChain", "Buffer")}
    chain_tiny = (
        coef["lut_per_mac"] * 2 * arch.mpe.groups_per_chain
        + coef["lut_per_mac_per_window"] * 2 * arch.mpe.groups_per_chain * arch.sparse_m
    )
    chain_tiny_ff = (
        coef["ff_per_mac"] * 2 * arch.mpe.groups_per_chain
        + coef["ff_per_mac_per_window"] * 2 * arch.mpe.groups_per_chain * arch.sparse_m
    )
    coef["lut_mpe_epilogue"] = round(max(0.0, by["MatrixEngine"]["lut"] - chain_tiny), 1)
    coef["ff_mpe_epilogue"] = round(max(0.0, by["MatrixEngine"]["ff"] - chain_tiny_ff), 1)
    coef["dsp_mpe_epilogue"] = by["MatrixEngine"]["dsp"] - 2 * arch.mpe.groups_per_chain
    for key, block in (
        ("controller", "Controller"),
        ("load_unit", "LoadUnit"),
        ("store_unit", "StoreUnit"),
    ):
        for what in ("lut", "ff", "dsp"):
            coef[f"{what}_{key}"] = by[block][what]
    # The model prices an SFU of n lanes as sfu_copies(n) single-lane SFUs: fit the unit
    # so that tiny's SFU, synthesised with its lanes, is reproduced.
    for what in ("lut", "ff", "dsp"):
        coef[f"{what}_sfu_lane"] = round(
            by["SpecialFunctionUnit"][what] / sfu_copies(arch.sfu.lanes), 1
        )
    errors = model_errors(runs, coef)
    out = {
        "generated_by": "benchmarks/calibrate_resources.py",
        "yosys": version,
        "family": "xcup",
        "calibration_target": arch.name,
        "coefficients": coef,
        "runs": runs,
        "errors": errors,
    }
    args.out.write_text(json.dumps(out, indent=1, sort_keys=True) + "\n")
    for e in errors:
        print(json.dumps(e))
    print(
        json.dumps({"benchmark": "calibrate_resources", "out": str(args.out), "coefficients": coef})
    )


if __name__ == "__main__":
    main()
