"""Accuracy of the sparse and low-bit weight formats on trained tiny decoders.

Random-weight decoders have no redundancy to lose (docs/compiler.md, "Mixed precision
and sparsity"); this measures the formats on models trained by ``examples/train_tiny.py``
on a synthetic language with attention-dependent structure: a Llama with GQA (hidden
96, 6 heads, 2 KV heads, MLP 200) and a GPT-2 (hidden 96, 6 heads, MLP 192, so that
every projection's K is a multiple of 16), 2 layers, vocabulary 300.

Each row compiles one float ONNX export (torch.onnx dynamo) through the real frontend
(``compile_onnx``) with a weight plan, runs it on the functional simulator (teacher
forced: the prompt as one prefill, then 16 decode steps of onnxruntime's greedy tokens)
and compares the logits with onnxruntime on that float ONNX: the frontend issue's
criterion is a cosine of at least 0.99 at every position and top-1 agreement on at
least 90% of them. Prompts are 16 tokens of the model's language, half of them ending
on ``COPY`` so that the decode steps replay a span (8 prompts, 256 positions); the
activation scales are calibrated on other prompts of the language (and SparseGPT's
Hessians on 1600 rows of it).

- dense rows compile the dense model;
- ``fine-tuned`` rows compile the N:M model (pruned by magnitude, fine-tuned with the
  mask fixed) with the same N:M plan, against that sparse model's own ONNX; the
  benchmark checks that the compiler's pruning of the already-sparse weights changes
  nothing (``lossless``);
- ``one-shot`` rows (for information) let the compiler prune the dense model, against
  the dense model's ONNX;
- ``QAT`` rows compile the INT4 quantisation-aware model (``train_tiny.py``'s QAT of the
  dense or N:M model: every decoder projection trained onto the compiler's INT4 g32
  grid) with the INT4 g32 plan, against that QAT model's own ONNX; the benchmark checks
  that the compiled weights dequantise to exactly the exported ones (``on grid``).

The LM head stays INT8 and dense in every row (as in FlightLLM's mapping); layers whose
K is not a multiple of the block stay dense (the Llama's MLP down projections at n:16).
Every row's simulator logits are checked bit for bit against the integer reference.
A uniformly random prompt set (``compiler/quant/accuracy.py``'s) is scored too, for information,
and the summary gives each format's figures over the seeds.

    python benchmarks/trained_accuracy.py [--family llama,gpt2] [--seeds 3] [--work build/trained]
    python benchmarks/trained_accuracy.py --seeds 3 --match QAT     # only the QAT rows
    python benchmarks/trained_accuracy.py --seeds 3 --weight-study

``--weight-study`` fake-quantises the weights alone (float activations) at 4, 5 and 6
bits and with GPTQ at 4 bits: what precision the criterion needs. Checkpoints and
exports are kept in ``--work`` and reused (missing ones are trained, about three
minutes per family and seed, and two more for the four QAT models). Needs the test extra
(torch, transformers, onnxscript).
Ends with one JSON line.
"""

from __future__ import annotations

import argparse
import contextlib
import dataclasses
import io
import json
import sys
import time
from dataclasses import asdict, dataclass
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
sys.path[:0] = [str(ROOT / "examples")]  # the trainer and its measurement helpers

import train_tiny  # noqa: E402
from export_tiny_hf import export_model  # noqa: E402
from trained_models import EVAL_PROMPTS, Language, lossy_layers, off_grid_layers, plan  # noqa: E402

from flightforge.compiler.frontend.onnx_import import import_onnx  # noqa: E402
from flightforge.compiler.frontend.ort_reference import ort_logits, session  # noqa: E402
from flightforge.compiler.pipeline import CompileOptions, compile_onnx  # noqa: E402
from flightforge.compiler.quant.accuracy import (  # noqa: E402
    COS_MIN,
    DECODE,
    MAX_LEN,
    PROMPT_LEN,
    TOP1_MIN,
    integer_logits,
    measure,
    random_prompts,
)
from flightforge.compiler.quant.plans import parse_plan  # noqa: E402
from flightforge.compiler.quant.prune import inverse_hessian_factor  # noqa: E402
from flightforge.compiler.quant.qdecoder import QuantOptions  # noqa: E402
from flightforge.generate import forced_logits  # noqa: E402
from flightforge.mappings import load_target  # noqa: E402
from flightforge.sim.functional import FunctionalSim  # noqa: E402

FAMILIES = {"llama": 200, "gpt2": 192}  #: family -> MLP width
PATTERNS = ("2:4", "8:16", "4:16")


@dataclass(frozen=True)
class Format:
    """One row: a weight plan applied to one of the trained models."""

    label: str
    bits: int
    group: int = 32
    sparse: str = "dense"  #: N:M of every block projection whose K allows it
    model: str = "dense"  #: the checkpoint compiled and compared with: dense or the N:M model
    prune: str = "magnitude"  #: the compiler's pruning method
    held: bool = True  #: held to the criterion (one-shot rows are for information)


def formats() -> list[Format]:
    rows = [
        Format("INT8", 8, 0),
        Format("INT4 g32", 4),
        Format("3-bit g32", 3),
        Format("2-bit g32", 2),
    ]
    for nm in PATTERNS:
        name = nm.replace(":", "_")
        rows += [
            Format(f"INT8 {nm} fine-tuned", 8, 0, nm, name),
            Format(f"INT4 g32 {nm} fine-tuned", 4, 32, nm, name),
        ]
    rows.append(Format("INT4 g32 QAT", 4, 32, model=train_tiny.qat_name("dense")))
    for nm in PATTERNS:
        rows.append(
            Format(f"INT4 g32 {nm} QAT", 4, 32, nm, train_tiny.qat_name(nm.replace(":", "_")))
        )
    for nm in PATTERNS:
        rows += [
            Format(f"INT4 g32 {nm} one-shot magnitude", 4, 32, nm, held=False),
            Format(f"INT4 g32 {nm} one-shot SparseGPT", 4, 32, nm, prune="sparsegpt", held=False),
        ]
    return rows


@dataclass(frozen=True)
class Score:
    """The criterion's figures over one prompt set."""

    cos_min: float
    cos_mean: float
    top1: float
    passed: bool
    cos_min_no_replay: float  #: worst position outside replays (language prompts only)

    @classmethod
    def of(cls, cos: np.ndarray, top: np.ndarray, replay: np.ndarray) -> Score:
        rest = cos[~replay]
        return cls(
            float(cos.min()),
            float(cos.mean()),
            float(top.mean()),
            bool(cos.min() >= COS_MIN and top.mean() >= TOP1_MIN),
            float(rest.min()) if rest.size else float("nan"),
        )


@dataclass(frozen=True)
class Row:
    family: str
    seed: int
    format: str
    held: bool
    language: Score  #: prompts of the model's language (the measurement)
    random: Score  #: uniformly random prompts, as compiler/quant/accuracy.py uses
    sim_exact: bool  #: simulator logits equal the integer reference's, bit for bit
    lossless: bool | None  #: compiling an already N:M model kept its weights (None: n/a)
    on_grid: bool | None  #: a QAT model's compiled weights dequantise to its own (None: n/a)


def export_quietly(model, path: Path) -> None:
    """torch.onnx prints its progress; keep the table readable."""
    with contextlib.redirect_stdout(io.StringIO()), contextlib.redirect_stderr(io.StringIO()):
        export_model(model, str(path))


def prepare(family: str, seed: int, work: Path, log) -> dict[str, tuple[Path, dict]]:
    """Train (unless already in ``work``) and export the dense and N:M models:
    name -> (ONNX path, checkpoint record)."""
    cfg = train_tiny.TrainConfig(family, FAMILIES[family], seed)
    names = ["dense"] + [p.replace(":", "_") for p in PATTERNS]
    if not all(train_tiny.checkpoint_path(work, family, seed, n).exists() for n in names):
        train_tiny.run(cfg, work, train_tiny.parse_modes(",".join(PATTERNS)), log=log)
    for name in names:  # QAT of each (the QAT fields of TrainConfig are the defaults)
        if not train_tiny.checkpoint_path(work, family, seed, train_tiny.qat_name(name)).exists():
            train_tiny.qat_checkpoint(
                train_tiny.checkpoint_path(work, family, seed, name), cfg, log=log
            )
    out = {}
    for name in names + [train_tiny.qat_name(n) for n in names]:
        ckpt = train_tiny.checkpoint_path(work, family, seed, name)
        model, record = train_tiny.load(ckpt)
        onnx_path = ckpt.with_suffix(".onnx")
        if not onnx_path.exists() or onnx_path.stat().st_mtime < ckpt.stat().st_mtime:
            export_quietly(model, onnx_path)
        out[name] = (onnx_path, record)
    return out


def measure_row(
    fmt: Format, path: Path, lang: Language
) -> tuple[Score, Score, bool, bool | None, bool | None]:
    """Compile ``path`` with ``fmt`` and score it on the language prompts and on random
    ones; also whether the simulator matched the integer reference, for an N:M model
    whether its compile was lossless, and for a QAT model whether its compiled weights
    are exactly its own."""
    tiny = load_target("tiny")
    prog = import_onnx(path).program
    spec = parse_plan(plan(prog, fmt.bits, fmt.group, fmt.sparse), fmt.label)
    c = compile_onnx(
        str(path),
        tiny,
        CompileOptions(
            max_len=MAX_LEN,
            lengths=tuple(range(PROMPT_LEN, MAX_LEN)),
            prune=fmt.prune,
            calibration=lang.calibration,
            quant=QuantOptions(spec=spec),
        ),
    )
    sess = session(path)
    exact, replay = [], []

    def simulated(ids: np.ndarray) -> np.ndarray:
        got = forced_logits(c.program, FunctionalSim(tiny), list(ids), PROMPT_LEN)
        exact.append(np.array_equal(got, integer_logits(c.quantized, ids)))
        replay.append(lang.replayed(ids))
        return got

    def reference(ids: np.ndarray) -> np.ndarray:
        return ort_logits(sess, ids, prog.kv_heads, prog.head_dim)

    language = Score.of(
        *measure(c.quantized, reference, lang.prompts, logits=simulated), np.concatenate(replay)
    )
    rand = measure(c.quantized, reference, random_prompts(prog.vocab), logits=simulated)
    uniform = Score.of(*rand, np.zeros(len(rand[0]), dtype=bool))
    sparse_model = fmt.model.split("-")[0] != "dense"
    keeps = not lossy_layers(c, prog) if sparse_model else None
    grid = not off_grid_layers(c, prog) if fmt.model.endswith("qat") else None
    return language, uniform, all(exact), keeps, grid


def run(families: list[str], seeds: int, work: Path, match: str = "") -> list[Row]:
    lang = Language.make()
    rows = []
    print(
        f"{'family':6s} {'seed':>4s} {'weights':34s} {'cos min':>8s} {'(no replay)':>11s} "
        f"{'cos mean':>8s} {'top-1':>6s}  criterion | random prompts: cos min, top-1  "
        f"(sim = integer ref; pruning lossless; QAT weights on grid)"
    )
    for family in families:
        for seed in range(seeds):
            models = prepare(family, seed, work, log=lambda s: print("  " + s, flush=True))
            for name, (_, record) in models.items():
                loss = record["loss"]
                extra = (
                    f", pruned before fine-tuning {record['pruned_loss']['all']:.3f}"
                    if "pruned_loss" in record
                    else ""
                )
                if "qat" in record:
                    extra = (
                        f", before QAT {record['unquantised_loss']['all']:.3f}, rounded "
                        f"onto the grid without QAT {record['rounded_loss']['all']:.3f}"
                    )
                print(
                    f"{family} seed {seed} {name}: held-out loss {loss['all']:.3f} (replayed "
                    f"tokens {loss['replay']:.3f}, chain {loss['walk']:.3f}){extra}",
                    flush=True,
                )
            for fmt in formats():
                if match not in fmt.label:
                    continue
                score, rand, exact, keeps, grid = measure_row(fmt, models[fmt.model][0], lang)
                rows.append(Row(family, seed, fmt.label, fmt.held, score, rand, exact, keeps, grid))
                verdict = (
                    ("pass" if score.passed else "FAIL")
                    if fmt.held
                    else ("(pass)" if score.passed else "(fail)")
                )
                print(
                    f"{family:6s} {seed:4d} {fmt.label:34s} {score.cos_min:8.4f} "
                    f"{score.cos_min_no_replay:11.4f} {score.cos_mean:8.4f} {score.top1:6.1%}  "
                    f"{verdict:9s} | {rand.cos_min:.4f} {rand.top1:6.1%} "
                    f"{'pass' if rand.passed else 'fail'}  ({'exact' if exact else 'MISMATCH'}"
                    f"{'' if keeps is None else '; lossless' if keeps else '; PRUNED'}"
                    f"{'' if grid is None else '; on grid' if grid else '; OFF GRID'})",
                    flush=True,
                )
    return rows


def summarise(rows: list[Row]) -> dict:
    """Per family and format over the seeds: the range of the worst position's cosine,
    the mean cosine and top-1, and on how many seeds the criterion holds."""
    out: dict = {}
    for family in dict.fromkeys(r.family for r in rows):
        for fmt in dict.fromkeys(r.format for r in rows):
            sel = [r.language for r in rows if r.family == family and r.format == fmt]
            mins = [x.cos_min for x in sel]
            out.setdefault(family, {})[fmt] = {
                "cos_min_worst": min(mins),
                "cos_min_best": max(mins),
                "cos_mean": float(np.mean([x.cos_mean for x in sel])),
                "top1": float(np.mean([x.top1 for x in sel])),
                "met": sum(x.passed for x in sel),
                "seeds": len(sel),
            }
    print(
        f"\nover seeds: {'family':6s} {'weights':34s} {'cos min (range)':>17s} {'cos mean':>8s} "
        f"{'top-1':>6s}  criterion met"
    )
    for family, fmts in out.items():
        for fmt, v in fmts.items():
            print(
                f"            {family:6s} {fmt:34s} "
                f"{v['cos_min_worst']:8.4f}..{v['cos_min_best']:.4f} "
                f"{v['cos_mean']:8.4f} {v['top1']:6.1%}  {v['met']}/{v['seeds']}"
            )
    return out


def group_steps(w: np.ndarray, bits: int, group: int = 32) -> np.ndarray:
    """Per-weight quantisation step of symmetric ``bits`` weights with one scale per
    group of K (16 where 32 does not divide K, as the compiler's plans fall back)."""
    n, k = w.shape
    g = group if k % group == 0 else 16 if k % 16 == 0 else k
    peak = np.abs(w.reshape(n, k // g, g)).max(axis=2)
    return np.repeat(np.where(peak > 0, peak, 1.0) / ((1 << (bits - 1)) - 1), g, axis=1)


def rounded(w: np.ndarray, bits: int) -> np.ndarray:
    """Round-to-nearest onto :func:`group_steps`' grid (float)."""
    step = group_steps(w, bits)
    return np.clip(np.round(w / step), -(1 << (bits - 1)), (1 << (bits - 1)) - 1) * step


def gptq(w: np.ndarray, x: np.ndarray, bits: int, damp: float = 0.01) -> np.ndarray:
    """GPTQ (Frantar et al., 2023) onto the round-to-nearest grid, pruned weights kept at
    zero: each column's rounding error is compensated on the later columns through the
    inverse Hessian's Cholesky factor, as compiler/quant/prune.py does for pruning."""
    step, top = group_steps(w, bits), (1 << (bits - 1)) - 1
    keep = w != 0
    hinv, _ = inverse_hessian_factor(x, damp)
    w, out = w.copy(), np.zeros_like(w)
    for j in range(w.shape[1]):
        out[:, j] = np.where(keep[:, j], np.clip(np.round(w[:, j] / step[:, j]), -top - 1, top), 0)
        out[:, j] *= step[:, j]
        err = (w[:, j] - out[:, j]) / hinv[j, j]
        w[:, j + 1 :] -= err[:, None] * hinv[j, j + 1 :][None, :]
    return out


def weight_study(families: list[str], seeds: int, work: Path) -> dict:
    """Weight-only fake quantisation with float activations: what precision the trained
    models' weights need, and what a second-order rounding (GPTQ) would give at 4 bits.
    The LM head stays float; activations are exact, so this bounds the formats from above."""
    from flightforge.compiler.graph import Linear, LinearParams
    from flightforge.compiler.interpret import FloatState, run_float
    from flightforge.compiler.quant.accuracy import float_reference

    lang = Language.make()
    calib = [np.array(c) for c in lang.calibration]
    out: dict = {}
    print(
        f"{'model':16s} {'weights (float activations)':30s} {'cos min':>8s} {'cos mean':>8s} "
        f"{'top-1':>6s}"
    )
    for family in families:
        for seed in range(seeds):
            models = prepare(family, seed, work, log=lambda s: print("  " + s, flush=True))
            for name in ("dense", "2_4", "8_16"):
                prog = import_onnx(models[name][0]).program
                ref = float_reference(prog)

                def score(
                    linears: dict, label: str, prog=prog, ref=ref, key=f"{family} s{seed} {name}"
                ) -> None:
                    fake = float_reference(dataclasses.replace(prog, linears=linears))
                    cos, top = measure(None, ref, lang.prompts, logits=fake)
                    out.setdefault(key, {})[label] = {
                        "cos_min": float(cos.min()),
                        "cos_mean": float(cos.mean()),
                        "top1": float(top.mean()),
                    }
                    print(
                        f"{key:16s} {label:30s} {cos.min():8.4f} {cos.mean():8.4f} "
                        f"{top.mean():6.1%}",
                        flush=True,
                    )

                for bits in (4, 5, 6):
                    score(
                        {
                            k: v if k == "lm_head" else LinearParams(rounded(v.w, bits), v.b)
                            for k, v in prog.linears.items()
                        },
                        f"{bits}-bit g32 round-to-nearest",
                    )
                linears = dict(prog.linears)
                for op in prog.ops:  # in program order, each on the inputs of the rounded layers
                    if not isinstance(op, Linear) or op.weight == "lm_head":
                        continue
                    current = dataclasses.replace(prog, linears=linears)
                    xs = []
                    for ids in calib:
                        env: dict = {}
                        run_float(current, ids, 0, FloatState(), env=env)
                        xs.append(env[op.x])
                    p = prog.linears[op.weight]
                    linears[op.weight] = LinearParams(gptq(p.w, np.vstack(xs), 4), p.b)
                score(linears, "4-bit g32 GPTQ")
    return out


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--family", default=",".join(FAMILIES))
    ap.add_argument("--seeds", type=int, default=1, help="training seeds per family")
    ap.add_argument(
        "--work",
        type=Path,
        default=ROOT / "build" / "trained",
        help="folder for checkpoints and ONNX exports (reused when present)",
    )
    ap.add_argument(
        "--weight-study",
        action="store_true",
        help="weight-only fake quantisation at 4-6 bits and GPTQ, float activations",
    )
    ap.add_argument("--match", default="", help="only the rows whose label contains this")
    a = ap.parse_args()
    t0 = time.time()
    if a.weight_study:
        print(
            json.dumps(
                {
                    "benchmark": "trained_accuracy",
                    "weight_study": weight_study(a.family.split(","), a.seeds, a.work),
                }
            )
        )
        return
    rows = run(a.family.split(","), a.seeds, a.work, a.match)
    print(
        json.dumps(
            {
                "benchmark": "trained_accuracy",
                "positions": EVAL_PROMPTS * (PROMPT_LEN + DECODE),
                "seconds": round(time.time() - t0),
                "summary": summarise(rows),
                "rows": [asdict(r) for r in rows],
            }
        )
    )


if __name__ == "__main__":
    main()
