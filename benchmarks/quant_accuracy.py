"""Accuracy of the compiler's quantisation on random-weight decoders of each family.

The integer reference (``qref.run_decoder``, bit-exact with every simulator) is compared
with the float model (``interpret.run_float``, equal to onnxruntime on the ONNX exports)
on 4 random prompts of 16 tokens, each followed by 16 greedy decode steps (the float
model's tokens are fed to both, so every position compares the same context): 128
positions per decoder. The acceptance criterion is a cosine of at least 0.99 at every
position and top-1 agreement on at least 90% of them.

    python benchmarks/quant_accuracy.py [--seeds 16] [--family llama-gqa,gpt2,opt] [--act-bits 16]
    python benchmarks/quant_accuracy.py --ops llama-gqa --seed 0   # per-tensor analysis
    python benchmarks/quant_accuracy.py --bits llama-gqa            # precision needed

``--ops`` prints, per tensor, the relative error of the dequantised integer tensor
against the float one (teacher forced over the same sequences) and how much 1% of
Gaussian noise added to that tensor alone moves the logits (the model's gain from that
point on). ``--bits`` fake-quantises every INT8 activation of the float model at 8 to 11
bits with clip-free scales (the evaluation data's own peaks), with INT8 or float weights,
to show what precision the criterion needs (probabilities and the SFU stay exact there).
Every mode ends with one JSON line.
"""

from __future__ import annotations

import argparse
import dataclasses
import json

import numpy as np

from flightforge.compiler.graph import FAMILIES, LinearParams, random_decoder
from flightforge.compiler.interpret import FloatState, run_float
from flightforge.compiler.pipeline import CompileOptions, calibration_prompts
from flightforge.compiler.quant import qref
from flightforge.compiler.quant.accuracy import COS_MIN, DECODE, PROMPT_LEN, PROMPTS, TOP1_MIN
from flightforge.compiler.quant.calibrate import calibrate
from flightforge.compiler.quant.fixed_point import rope_table_bytes
from flightforge.compiler.quant.qdecoder import (
    ACT_BITS,
    QuantDecoder,
    QuantOptions,
    quantize_decoder,
)


def quantize(prog, quant: QuantOptions = QuantOptions()) -> QuantDecoder:
    """What ``compile_decoder`` does before lowering."""
    options = CompileOptions(max_len=PROMPT_LEN + DECODE, quant=quant)
    return quantize_decoder(prog, calibrate(prog, calibration_prompts(prog, options)), quant)


def sequences(prog) -> list[np.ndarray]:
    """Each prompt followed by the float model's greedy continuation."""
    out = []
    for s in range(PROMPTS):
        ids = list(np.random.default_rng(100 + s).integers(0, prog.vocab, size=PROMPT_LEN))
        state = FloatState()
        logits = run_float(prog, np.array(ids), 0, state)
        for _ in range(DECODE):
            ids.append(int(np.argmax(logits[-1])))
            logits = run_float(prog, np.array(ids[-1:]), len(ids) - 1, state)
        out.append(np.array(ids[: PROMPT_LEN + DECODE]))
    return out


def integer_logits(qd: QuantDecoder, ids: np.ndarray, envs: list | None = None) -> np.ndarray:
    """Prefill of the prompt, then one decode step per further token."""
    prog = qd.prog
    theta = prog.rope_theta or 1.0
    table = rope_table_bytes(len(ids), prog.head_dim, theta).astype(np.int64)
    state = qref.IntState()
    rows = []
    steps = [(0, ids[:PROMPT_LEN])] + [(p, ids[p : p + 1]) for p in range(PROMPT_LEN, len(ids))]
    for pos0, chunk in steps:
        env: dict = {}
        logits = qref.run_decoder(qd, chunk, pos0, state, table, env=env)
        rows.append(logits * qd.scales[prog.output])
        if envs is not None:
            envs.append(env)
    return np.vstack(rows)


def cosines(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    return (a * b).sum(1) / np.linalg.norm(a, axis=1) / np.linalg.norm(b, axis=1)


def accuracy(prog, qd: QuantDecoder) -> tuple[np.ndarray, np.ndarray]:
    cos, top = [], []
    for ids in sequences(prog):
        want = run_float(prog, ids, 0, FloatState())
        got = integer_logits(qd, ids)
        cos.append(cosines(want, got))
        top.append(want.argmax(1) == got.argmax(1))
    return np.concatenate(cos), np.concatenate(top)


def table(families: list[str], seeds: int, act_bits: int = 8) -> dict:
    result = {}
    quant = QuantOptions(act_bits=act_bits)
    print(f"{'family':10s} {'seed':>4s} {'cos min':>8s} {'cos mean':>8s} {'top-1':>6s}  criterion")
    for fam in families:
        shape, kw = FAMILIES[fam]
        rows = []
        for seed in range(seeds):
            prog = random_decoder(shape, seed=seed, **kw)
            cos, top = accuracy(prog, quantize(prog, quant))
            ok = cos.min() >= COS_MIN and top.mean() >= TOP1_MIN
            rows.append(
                {
                    "seed": seed,
                    "cos_min": float(cos.min()),
                    "cos_mean": float(cos.mean()),
                    "top1": float(top.mean()),
                    "pass": bool(ok),
                }
            )
            print(
                f"{fam:10s} {seed:4d} {cos.min():8.4f} {cos.mean():8.4f} {top.mean():6.1%}  "
                f"{'pass' if ok else 'FAIL'}",
                flush=True,
            )
        r = {k: np.array([row[k] for row in rows]) for k in ("cos_min", "cos_mean", "top1")}
        passed = sum(row["pass"] for row in rows)
        print(
            f"{fam:10s}  all: cos min worst {r['cos_min'].min():.4f} (mean of seeds "
            f"{r['cos_min'].mean():.4f}), cos mean {r['cos_mean'].mean():.4f}, top-1 "
            f"{r['top1'].mean():.1%} (worst {r['top1'].min():.1%}), criterion met on "
            f"{passed}/{seeds} seeds"
        )
        result[fam] = {"seeds": rows, "passed": passed, "act_bits": act_bits}
    return result


def ops(fam: str, seed: int) -> dict:
    shape, kw = FAMILIES[fam]
    prog = random_decoder(shape, seed=seed, **kw)
    qd = quantize(prog)
    seqs = sequences(prog)
    err: dict[str, list[float]] = {}
    for ids in seqs:
        envs: list[dict] = []
        integer_logits(qd, ids, envs)
        fe: dict = {}
        run_float(prog, ids, 0, FloatState(), env=fe)
        for name in envs[0]:
            q = np.vstack([e[name] for e in envs]) * qd.scales[name]
            e = err.setdefault(name, [0.0, 0.0])
            e[0] += float(((fe[name] - q) ** 2).sum())
            e[1] += float((fe[name] ** 2).sum())
    rng = np.random.default_rng(7)
    out = {}
    print(
        f"{fam} seed {seed}: per-tensor relative error (integer vs float) and the logits' "
        f"relative error caused by 1% noise on that tensor alone"
    )
    for name, (num, den) in err.items():

        def noisy(n, x, target=name):
            if n != target:
                return x
            return x + rng.normal(size=x.shape) * 0.01 * np.sqrt(np.mean(x * x))

        gain = []
        for ids in seqs:
            want = run_float(prog, ids, 0, FloatState())
            got = run_float(prog, ids, 0, FloatState(), fake=noisy)
            gain.append(np.sqrt(np.mean(2 * (1 - cosines(want, got)))))
        out[name] = {
            "rel_err": float(np.sqrt(num / den)),
            "logit_err_per_1pct": float(np.mean(gain)),
        }
        dt = "INT16" if name in prog.wide else "INT8"
        print(
            f"  {name:12s} {dt:5s} rel err {out[name]['rel_err']:.4f}   1% noise -> logits "
            f"{out[name]['logit_err_per_1pct']:.4f}"
        )
    return out


def bits(fam: str, seeds: int) -> dict:
    shape, kw = FAMILIES[fam]
    configs = [(8, True), (9, True), (10, True), (11, True), (None, True), (10, False)]
    out = {}
    for act_bits, int8_weights in configs:
        rows = []
        for seed in range(seeds):
            prog = random_decoder(shape, seed=seed, **kw)
            qd = quantize(prog)
            seqs = sequences(prog)
            peak: dict[str, float] = {}
            for ids in seqs:
                env: dict = {}
                run_float(prog, ids, 0, FloatState(), env=env)
                for n, v in env.items():
                    peak[n] = max(peak.get(n, 0.0), float(np.abs(v).max()))

            def fake(n, x, act_bits=act_bits, prog=prog, qd=qd, peak=peak):
                if act_bits is None:
                    return x
                if n in prog.wide:
                    s = qd.scales[n]
                    return np.clip(np.round(x / s), -32768, 32767) * s
                top = (1 << (act_bits - 1)) - 1
                s = max(peak[n], 1e-9) / top
                return np.clip(np.round(x / s), -top - 1, top) * s

            model = prog
            if int8_weights:
                model = dataclasses.replace(
                    prog,
                    linears={
                        k: LinearParams(qd.linears[k].dequantized(), p.b)
                        for k, p in prog.linears.items()
                    },
                )
            cos, agree = [], []
            for ids in seqs:
                want = run_float(prog, ids, 0, FloatState())
                got = run_float(model, ids, 0, FloatState(), fake=fake)
                cos.append(cosines(want, got))
                agree.append(want.argmax(1) == got.argmax(1))
            cos, agree = np.concatenate(cos), np.concatenate(agree)
            rows.append((cos.min(), cos.mean(), agree.mean()))
        r = np.array(rows)
        passed = int(sum(1 for a in rows if a[0] >= COS_MIN and a[2] >= TOP1_MIN))
        label = (f"INT{act_bits} activations (clip-free)" if act_bits else "float activations") + (
            ", INT8 weights" if int8_weights else ", float weights"
        )
        print(
            f"{fam}: {label:45s} cos min worst {r[:, 0].min():.4f} (mean of seeds "
            f"{r[:, 0].mean():.4f}), cos mean {r[:, 1].mean():.4f}, top-1 {r[:, 2].mean():.1%}, "
            f"criterion met on {passed}/{seeds}",
            flush=True,
        )
        out[label] = {
            "cos_min": float(r[:, 0].min()),
            "cos_mean": float(r[:, 1].mean()),
            "top1": float(r[:, 2].mean()),
            "passed": passed,
        }
    return out


#: Weight formats of the mixed-precision and sparsity study: (label, plan file dict, prune).
WEIGHT_CONFIGS = [
    ("INT8 dense", {"default": {"bits": 8}}, "magnitude"),
    ("INT4 g32", {"default": {"bits": 4, "group": 32}}, "magnitude"),
    ("INT4 g32 2:4", {"default": {"bits": 4, "group": 32, "sparse": "2:4"}}, "magnitude"),
    ("INT4 g32 2:4 sgpt", {"default": {"bits": 4, "group": 32, "sparse": "2:4"}}, "sparsegpt"),
    ("INT4 g32 8:16", {"default": {"bits": 4, "group": 32, "sparse": "8:16"}}, "magnitude"),
    ("INT4 g32 8:16 sgpt", {"default": {"bits": 4, "group": 32, "sparse": "8:16"}}, "sparsegpt"),
    ("INT4 g32 4:16 sgpt", {"default": {"bits": 4, "group": 32, "sparse": "4:16"}}, "sparsegpt"),
    ("3-bit g32", {"default": {"bits": 3, "group": 32}}, "magnitude"),
    ("2-bit g32", {"default": {"bits": 2, "group": 32}}, "magnitude"),
]


def weights(families: list[str], seeds: int) -> dict:
    """Accuracy of each weight format against the dense float model (the LM head stays
    INT8; layers whose K is not a multiple of the sparse block stay dense)."""
    from flightforge.compiler.graph import linear_shapes
    from flightforge.compiler.pipeline import compile_decoder
    from flightforge.compiler.quant.plans import parse_plan
    from flightforge.mappings import load_target

    tiny = load_target("tiny")
    result: dict = {}
    print(
        f"{'family':10s} {'weights':20s} {'cos min':>8s} {'cos mean':>8s} {'top-1':>6s}  (over "
        f"{seeds} seeds)"
    )
    for fam in families:
        shape, kw = FAMILIES[fam]
        for label, plan, prune in WEIGHT_CONFIGS:
            sparse = plan["default"].get("sparse")
            mins, means, tops = [], [], []
            for seed in range(seeds):
                prog = random_decoder(shape, seed=seed, **kw)
                layers = [{"match": "lm_head", "bits": 8, "group": 0, "sparse": "dense"}]
                if sparse:
                    m = int(sparse.split(":")[1])
                    layers += [
                        {"match": n, "sparse": "dense"}
                        for n, (_, k) in linear_shapes(shape).items()
                        if k % m
                    ]
                spec = parse_plan({**plan, "layers": layers})
                c = compile_decoder(
                    prog,
                    tiny,
                    CompileOptions(
                        max_len=PROMPT_LEN + DECODE,
                        lengths=(1,),
                        prune=prune,
                        quant=QuantOptions(spec=spec),
                    ),
                )
                cos, top = accuracy(prog, c.quantized)
                mins.append(cos.min())
                means.append(cos.mean())
                tops.append(top.mean())
            row = {
                "cos_min": float(min(mins)),
                "cos_mean": float(np.mean(means)),
                "top1": float(np.mean(tops)),
            }
            result.setdefault(fam, {})[label] = row
            print(
                f"{fam:10s} {label:20s} {row['cos_min']:8.4f} {row['cos_mean']:8.4f} "
                f"{row['top1']:6.1%}",
                flush=True,
            )
    return result


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--seeds", type=int, default=16)
    ap.add_argument("--family", default=",".join(FAMILIES))
    ap.add_argument("--ops", metavar="FAMILY", help="per-tensor error analysis of one decoder")
    ap.add_argument("--seed", type=int, default=0, help="the decoder --ops analyses")
    ap.add_argument("--bits", metavar="FAMILY", help="activation precision the criterion needs")
    ap.add_argument(
        "--act-bits",
        type=int,
        choices=ACT_BITS,
        default=8,
        help="activation precision of the table (16: INT16 as two INT8 halves)",
    )
    ap.add_argument(
        "--weights",
        action="store_true",
        help="accuracy of mixed-precision and N:M-sparse weight formats",
    )
    a = ap.parse_args()
    if a.weights:
        res = weights(a.family.split(","), a.seeds)
    elif a.ops:
        res = ops(a.ops, a.seed)
    elif a.bits:
        res = bits(a.bits, min(a.seeds, 8))
    else:
        res = table(a.family.split(","), a.seeds, a.act_bits)
    print(json.dumps(res, default=float))


if __name__ == "__main__":
    main()
