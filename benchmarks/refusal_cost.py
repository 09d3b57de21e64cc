"""What refusing a small bad input costs: wall time and peak memory of the whole CLI
process, per input class of issue 16 (the README promises that a 1 KB input never takes
more than a second or 100 MB to refuse).

Each case runs ``python -m flightforge.cli`` in a fresh process; its peak resident set
comes from ``wait4``. ``isa`` (print the instruction set) is the baseline: the cost of
starting Python and importing the CLI, which every case pays too.

    python benchmarks/refusal_cost.py

Prints a table and a final JSON line. Results are recorded in docs/files.md.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import onnx
from onnx import TensorProto, helper

ROOT = Path(__file__).resolve().parent.parent


def _laughs(path: Path) -> Path:
    lines = ['a: &a ["lol","lol","lol","lol","lol","lol","lol","lol","lol","lol"]']
    for i in range(1, 9):
        prev, cur = chr(ord("a") + i - 1), chr(ord("a") + i)
        lines.append(f"{cur}: &{cur} [" + ",".join([f"*{prev}"] * 10) + "]")
    lines.append("name: *i\nparameters: {chains: *i}\nlayers: *i")
    path.write_text("\n".join(lines) + "\n")
    return path


def _huge_npy(path: Path) -> Path:
    with path.open("wb") as f:
        np.lib.format.write_array_header_1_0(
            f, {"descr": "<f4", "fortran_order": False, "shape": (10**11,)}
        )
        f.write(bytes(16))
    return path


def _big_initializer(path: Path) -> Path:
    x = helper.make_tensor_value_info("x", TensorProto.FLOAT, [1])
    y = helper.make_tensor_value_info("y", TensorProto.FLOAT, [1])
    big = TensorProto(name="big", data_type=TensorProto.FLOAT, dims=[100000, 100000])
    graph = helper.make_graph([helper.make_node("Identity", ["x"], ["y"])], "g", [x], [y], [big])
    onnx.save(helper.make_model(graph), path)
    return path


def _run(args: list[str]) -> tuple[float, float, int]:
    """Wall seconds, peak MiB and exit status of the CLI with ``args``."""
    start = time.perf_counter()
    proc = subprocess.Popen(
        [sys.executable, "-m", "flightforge.cli", *args],
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    _, status, usage = os.wait4(proc.pid, 0)
    proc.returncode = os.waitstatus_to_exitcode(status)
    return time.perf_counter() - start, usage.ru_maxrss / 1024, proc.returncode


def main() -> None:
    with tempfile.TemporaryDirectory() as tmp:
        d = Path(tmp)
        demo = d / "demo"
        subprocess.run(
            [sys.executable, "-m", "flightforge.cli", "demo", "--save", demo],
            check=True,
            capture_output=True,
        )
        bomb = _laughs(d / "bomb.yaml")
        config = ROOT / "examples" / "configs" / "llama-3.2-1b.json"
        out = str(d / "x.ffb")
        cases = {
            "baseline: isa": ["isa"],
            "YAML aliases as --target": ["inspect", str(demo / "demo.ffb"), "--target", str(bomb)],
            "YAML aliases as --plan": [
                "compile", "--config", str(config), "--target", "tiny", "--plan", str(bomb),
                "--out", out,
            ],
            "YAML aliases as a DSE spec": ["dse", str(bomb), "--out", str(d / "dse")],
            ".npy declaring 10^11 floats": [
                "run", str(demo / "demo.ffb"), "--target", "tiny",
                "--input", f"x={_huge_npy(d / 'huge.npy')}",
            ],
            "ONNX initialiser of 10^10 floats": [
                "compile", str(_big_initializer(d / "m.onnx")), "--target", "tiny", "--out", out,
            ],
            "/dev/zero as --plan": [
                "compile", "--config", str(config), "--target", "tiny", "--plan", "/dev/zero",
                "--out", out,
            ],
            "compile --max-len 10000000": [
                "compile", "--config", str(config), "--target", "kv260",
                "--max-len", "10000000", "--out", out,
            ],
        }  # fmt: skip
        sizes = {"YAML aliases": bomb.stat().st_size, ".npy": (d / "huge.npy").stat().st_size}
        results = {}
        print(f"{'case':<34} {'s':>6} {'peak MiB':>9} {'exit':>5}")
        for name, args in cases.items():
            secs, mib, code = _run(args)
            results[name] = {"seconds": round(secs, 3), "peak_mib": round(mib, 1), "exit": code}
            print(f"{name:<34} {secs:>6.2f} {mib:>9.1f} {code:>5}")
    print(json.dumps({"benchmark": "refusal_cost", "input_bytes": sizes, "cases": results}))


if __name__ == "__main__":
    main()
