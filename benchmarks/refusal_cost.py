"""What refusing a small bad input costs: wall time and peak memory of the whole CLI
process, per input class of issue 16 (the README promises that a 1 KB input never takes
more than a second or 100 MB to refuse).

Each case runs ``python -m flightforge.cli`` in a fresh process; its CPU time and peak
resident set come from ``wait4`` (CPU time, unlike wall time, does not grow when other
work shares the machine). ``isa`` (print the instruction set) is the baseline: the cost of
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

ROOT = Path(__file__).resolve().parent.parent
sys.path[:0] = [str(ROOT / "examples")]

from bad_inputs import big_initializer, huge_npy, laughs, onnx_with  # noqa: E402


def _run(args: list[str]) -> tuple[float, float, float, int]:
    """Wall seconds, CPU seconds, peak MiB and exit status of the CLI with ``args``."""
    start = time.perf_counter()
    proc = subprocess.Popen(
        [sys.executable, "-m", "flightforge.cli", *args],
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    _, status, usage = os.wait4(proc.pid, 0)
    proc.returncode = os.waitstatus_to_exitcode(status)
    cpu = usage.ru_utime + usage.ru_stime
    return time.perf_counter() - start, cpu, usage.ru_maxrss / 1024, proc.returncode


def main() -> None:
    with tempfile.TemporaryDirectory() as tmp:
        d = Path(tmp)
        demo = d / "demo"
        subprocess.run(
            [sys.executable, "-m", "flightforge.cli", "demo", "--save", demo],
            check=True,
            capture_output=True,
        )
        bomb = laughs(d / "bomb.yaml")
        model = onnx_with(d / "m.onnx", big_initializer())
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
                "--input", f"x={huge_npy(d / 'huge.npy')}",
            ],
            "ONNX initialiser of 10^10 floats": [
                "compile", str(model), "--target", "tiny", "--out", out,
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
        print(f"{'case':<34} {'wall s':>6} {'CPU s':>6} {'peak MiB':>9} {'exit':>5}")
        for name, args in cases.items():
            secs, cpu, mib, code = _run(args)
            results[name] = {
                "seconds": round(secs, 3),
                "cpu_seconds": round(cpu, 3),
                "peak_mib": round(mib, 1),
                "exit": code,
            }
            print(f"{name:<34} {secs:>6.2f} {cpu:>6.2f} {mib:>9.1f} {code:>5}")
    print(json.dumps({"benchmark": "refusal_cost", "input_bytes": sizes, "cases": results}))


if __name__ == "__main__":
    main()
