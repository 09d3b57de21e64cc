"""Accuracy of compiled real exports: tiny random Hugging Face models (Llama with GQA,
OPT, GPT-2) exported by torch.onnx at a given init range, compiled for ``tiny``, against
onnxruntime on the original float ONNX: prefill of 16 tokens plus 16 decode steps over 4
prompts (the frontend issue's criterion: cosine >= 0.99 at every position, top-1 >= 90%).

    python benchmarks/onnx_accuracy.py [--init-range 0.2] [--seeds 3] [--act-bits 8 16]

Needs the test extra (torch, transformers, onnxscript). Ends with one JSON line.
"""

from __future__ import annotations

import argparse
import json
import sys
import tempfile
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path[:0] = [str(ROOT / "examples")]  # the exporter

from export_tiny_hf import export  # noqa: E402

from flightforge.compiler.frontend.onnx_import import import_onnx  # noqa: E402
from flightforge.compiler.frontend.ort_reference import ort_logits, session  # noqa: E402
from flightforge.compiler.pipeline import CompileOptions, compile_decoder  # noqa: E402
from flightforge.compiler.quant.accuracy import COS_MIN, TOP1_MIN, measure  # noqa: E402
from flightforge.compiler.quant.qdecoder import ACT_BITS, QuantOptions  # noqa: E402
from flightforge.mappings import load_target  # noqa: E402


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--init-range", type=float, default=0.2)
    ap.add_argument("--seeds", type=int, default=3)
    ap.add_argument(
        "--act-bits",
        type=int,
        nargs="+",
        choices=ACT_BITS,
        default=[8],
        help="activation precisions to measure (16: INT16 as two INT8 halves)",
    )
    args = ap.parse_args()
    rows = []
    with tempfile.TemporaryDirectory() as tmp:
        for family in ("llama", "opt", "gpt2"):
            for seed in range(args.seeds):
                path = f"{tmp}/{family}{seed}.onnx"
                export(family, path, args.init_range, seed)
                prog = import_onnx(path).program
                sess = session(path)
                for bits in args.act_bits:
                    options = CompileOptions(max_len=32, quant=QuantOptions(act_bits=bits))
                    c = compile_decoder(prog, load_target("tiny"), options)
                    kv, d = prog.kv_heads, prog.head_dim
                    cos, top = measure(
                        c.quantized, lambda ids, sess=sess, kv=kv, d=d: ort_logits(sess, ids, kv, d)
                    )
                    ok = cos.min() >= COS_MIN and top.mean() >= TOP1_MIN
                    rows.append(
                        {
                            "family": family,
                            "seed": seed,
                            "act_bits": bits,
                            "cos_min": float(cos.min()),
                            "cos_mean": float(cos.mean()),
                            "top1": float(top.mean()),
                            "pass": bool(ok),
                        }
                    )
                    print(
                        f"{family:6s} seed {seed} A{bits}: cosine min {cos.min():.4f} mean "
                        f"{cos.mean():.4f}, top-1 {top.mean():.1%}  {'pass' if ok else 'FAIL'}",
                        flush=True,
                    )
    print(json.dumps({"benchmark": "onnx_accuracy", "init_range": args.init_range, "rows": rows}))


if __name__ == "__main__":
    main()
