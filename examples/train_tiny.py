"""Train tiny Hugging Face decoders on a synthetic language, dense and N:M-sparse.

Random-weight decoders have no redundancy, so they say nothing about how a trained
model tolerates pruning and low-bit weights (docs/compiler.md, "Mixed precision and
sparsity"). This trains the issue's tiny shapes on a corpus with real structure, on
one CPU core in about three minutes per family (dense, then three N:M fine-tunes),
reproducibly on a given machine and torch build (fixed seeds, one torch thread):

- a sparse Markov chain: every ordinary token has three successors, with probabilities
  0.8, 0.15 and 0.05 (so a trained model is confident, as a real LM is on most tokens);
- copy segments that need attention: ``BEG`` opens a span of the walk and ``END``
  closes it; later ``COPY`` replays the span token for token, then ``END``. The replay
  deviates from the chain wherever the span took a less likely successor, so it can
  only be predicted by finding the span again (an induction head over two layers).

A sparse model is the trained dense model with every decoder-block Linear pruned to
N:M by magnitude along K (the compiler's own ``prune_nm``, on the ``[N][K]`` weight),
then fine-tuned with the mask fixed.

A QAT model (``--qat``, or ``qat`` on existing checkpoints) is a trained model, dense or
N:M, fine-tuned with quantisation-aware training for the compiler's INT4 weights with
groups of 32 (the benchmark's plan; the LM head stays INT8 and dense): every forward
pass sees each decoder projection as the compiler's own ``quantize_linear`` would
dequantise it (:func:`on_grid`), and the gradient passes straight through to the float
weights (a straight-through estimator). Its exported projections lie on the compiler's
grid, exactly in float32, so compiling them with that plan loses nothing.

Checkpoints are ``.npz`` files of float16 weights (the model is rounded to float16
before saving, so a loaded checkpoint is exactly the model that was evaluated; a QAT
model's projections are kept in float32, where their grid values are exact) with a
JSON record of how they were made:

    python examples/train_tiny.py llama build/trained                # dense + 2:4, 8:16, 4:16
    python examples/train_tiny.py gpt2 build/trained --intermediate 192   # every K % 16 == 0
    python examples/train_tiny.py llama build/trained --qat          # and an INT4 QAT of each
    python examples/train_tiny.py llama tests/fixtures --sparse 2:4,8:16 --sparse-only
    python examples/train_tiny.py qat tests/fixtures/llama-s0-{2_4,8_16}.npz   # QAT of these

Needs the test extra (torch, transformers).
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import math
import sys
import time
from dataclasses import asdict, dataclass
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent))
from export_tiny_hf import build  # noqa: E402

from flightforge.compiler.quant.qdecoder import QuantOptions, WeightPlan  # noqa: E402
from flightforge.compiler.quant.quantize import prune_nm, quantize_linear  # noqa: E402
from flightforge.isa import SparseMode  # noqa: E402

BEG, END, COPY = 0, 1, 2  #: marker tokens; every other id is a state of the chain
SUCCESSOR_P = (0.8, 0.15, 0.05)
SEQ_LEN = 64  #: training length (GPT-2 and OPT have 64 learned positions)
SPAN = (4, 10)  #: length of a copied span
GAP = (1, 10)  #: walk tokens between a span's END and the next COPY


@dataclass(frozen=True)
class Corpus:
    """The synthetic language: ``successors[t]`` are the three next states of token ``t``."""

    successors: np.ndarray  #: int64 [vocab][3]; rows of the marker tokens are unused

    @classmethod
    def make(cls, vocab: int = 300, seed: int = 0) -> Corpus:
        rng = np.random.default_rng(seed)
        states = np.arange(3, vocab)
        succ = np.zeros((vocab, len(SUCCESSOR_P)), dtype=np.int64)
        for t in range(vocab):
            succ[t] = rng.choice(states[states != t], size=len(SUCCESSOR_P), replace=False)
        return cls(succ)

    @property
    def vocab(self) -> int:
        return len(self.successors)

    def walk(self, rng: np.random.Generator, last: int, n: int) -> list[int]:
        """``n`` steps of the chain after state ``last``."""
        out = []
        for _ in range(n):
            last = int(self.successors[last, rng.choice(len(SUCCESSOR_P), p=SUCCESSOR_P)])
            out.append(last)
        return out

    def sequence(self, rng: np.random.Generator, length: int = SEQ_LEN) -> list[int]:
        """A walk with one ``BEG span END`` and replays ``COPY span END`` after gaps."""
        toks = self.walk(rng, int(rng.integers(3, self.vocab)), int(rng.integers(1, 12)))
        span = self.walk(rng, toks[-1], int(rng.integers(SPAN[0], SPAN[1] + 1)))
        toks += [BEG, *span, END]
        while len(toks) < length:
            toks += self.walk(
                rng,
                span[-1] if toks[-1] == END else toks[-1],
                int(rng.integers(GAP[0], GAP[1] + 1)),
            )
            toks += [COPY, *span, END]
        return toks[:length]

    def prompt(self, rng: np.random.Generator, length: int, copy_at_end: bool) -> list[int]:
        """A prompt of the language; with ``copy_at_end`` it ends on ``COPY``, so the
        continuation is a replay that only attention can produce."""
        if not copy_at_end:
            return self.sequence(rng, length)
        span_len = int(rng.integers(SPAN[0], min(SPAN[1], length - 5) + 1))
        gap = int(rng.integers(1, length - span_len - 3))
        lead = length - span_len - gap - 3
        toks = self.walk(rng, int(rng.integers(3, self.vocab)), lead)
        span = self.walk(rng, toks[-1], span_len)
        toks += [BEG, *span, END, *self.walk(rng, span[-1], gap), COPY]
        assert len(toks) == length
        return toks

    def batch(self, rng: np.random.Generator, n: int) -> np.ndarray:
        return np.array([self.sequence(rng) for _ in range(n)], dtype=np.int64)

    def replay_mask(self, ids: np.ndarray) -> np.ndarray:
        """Positions whose token is predicted by a replay (the token after COPY onwards,
        to the END that closes it): where the next-token loss needs attention."""
        out = np.zeros(ids.shape, dtype=bool)
        for r, row in enumerate(ids):
            inside = False
            for i, t in enumerate(row):
                if inside:
                    out[r, i] = True
                    inside = t != END
                elif t == COPY:
                    inside = True
        return out


@dataclass(frozen=True)
class TrainConfig:
    family: str = "llama"
    intermediate: int = 200
    seed: int = 0
    steps: int = 1500
    finetune_steps: int = 400
    batch: int = 32
    lr: float = 3e-3
    finetune_lr: float = 1e-3
    corpus_seed: int = 0
    qat_steps: int = 400
    qat_lr: float = 3e-4


@dataclass(frozen=True)
class EvalLoss:
    """Held-out next-token loss in nats: all tokens, replayed tokens, chain tokens."""

    all: float
    replay: float
    walk: float


def block_linears(model) -> dict[str, tuple[object, bool]]:
    """The decoder blocks' projection weights: name -> (parameter, stored as [K][N]).

    The LM head and embeddings are left out: the plans keep the LM head dense INT8
    (FlightLLM's mapping does too), and GPT-2 and OPT tie it to the embedding.
    """
    out = {}
    for name, module in model.named_modules():
        if ".layers." not in name and ".h." not in name:
            continue
        kind = type(module).__name__
        if kind in ("Linear", "Conv1D"):
            out[name] = (module.weight, kind == "Conv1D")  # GPT-2's Conv1D is [in][out]
    return out


def nm_masks(model, mode: SparseMode) -> dict[str, object]:
    """Magnitude N:M masks along K of every block Linear whose K is a multiple of m
    (the others stay dense, as the compiler's plans leave them)."""
    import torch

    masks = {}
    for name, (w, k_first) in block_linears(model).items():
        nk = w.detach().double().numpy()
        nk = nk.T if k_first else nk
        if nk.shape[1] % mode.m:
            continue
        keep = prune_nm(nk, mode) != 0
        masks[name] = torch.from_numpy((keep.T if k_first else keep).copy()).to(w.dtype)
    return masks


def apply_masks(model, masks: dict[str, object]) -> None:
    import torch

    weights = block_linears(model)
    with torch.no_grad():
        for name, mask in masks.items():
            weights[name][0].mul_(mask)


QAT_BITS, QAT_GROUP = 4, 32  #: the weight format QAT trains for (the benchmark's INT4 g32)


def qat_plans(model, mode: SparseMode) -> dict[str, WeightPlan]:
    """The compiler's weight plan for every decoder projection under INT4 g32 with N:M
    ``mode`` (dense where K is not a multiple of m, as the benchmark's plan leaves them):
    ``QuantOptions.plan_for`` picks the group size that fits K, as compiling does."""
    options = QuantOptions(weight_bits=QAT_BITS, group=QAT_GROUP)
    out = {}
    for name, (w, k_first) in block_linears(model).items():
        k = w.shape[0] if k_first else w.shape[1]
        sparse = mode if mode.is_sparse and k % mode.m == 0 else SparseMode.DENSE
        out[name] = dataclasses.replace(options.plan_for(name, k), sparse=sparse)
    return out


def _quantized(w: np.ndarray, plan: WeightPlan):
    return quantize_linear(
        w, prec=plan.prec, group=plan.group, sparse=plan.sparse, store_bits=plan.store_bits
    )


def on_grid(w: np.ndarray, plan: WeightPlan, rounds: int = 8) -> np.ndarray:
    """Float weights ``w[N][K]`` moved onto the compiler's grid for ``plan``: float32
    values ``v`` with ``quantize_linear(v).dequantized() == v`` exactly, so compiling
    them loses nothing.

    The grid is the compiler's own: ``quantize_linear`` gives the codes and scales and
    :meth:`QuantLinear.dequantized` the values. Two things make it a fixed point:

    - each column's unit (``col_unit``, the real value of one code times one group-scale
      step) is rounded up to as many significant bits as float32 leaves beside the
      column's largest ``|code x group scale|`` (its peak over its unit, 1785 = 7 x 255
      with INT4 groups), by moving the column's peak weights to that product: a relative
      change below 2^-12; every dequantised value is then exact in float32;
    - a group whose largest code is not the top one gets a smaller scale when its
      dequantised weights are quantised again, so quantising and dequantising repeats
      until nothing moves (scales only shrink, so it ends, in one or two rounds).
    """
    w = np.array(w, dtype=np.float64)
    ql = _quantized(w, plan)
    peak = np.abs(w).max(axis=1)
    for n in np.flatnonzero(peak > 0):
        top = int(round(peak[n] / ql.col_unit[n]))  # largest |code x group scale| of the column
        mant, exp = np.frexp(ql.col_unit[n])
        bits = 24 - top.bit_length()
        unit = float(np.ldexp(np.ceil(np.ldexp(mant, bits)), int(exp) - bits))
        at_peak = np.abs(w[n]) == peak[n]
        w[n, at_peak] = np.sign(w[n, at_peak]) * top * unit
    for _ in range(rounds):
        v = _quantized(w, plan).dequantized()
        if np.array_equal(v, w):
            out = w.astype(np.float32)
            if not np.array_equal(out, w):
                raise ArithmeticError("grid values are not exact in float32")
            return out
        w = v
    raise ArithmeticError(f"the grid did not settle in {rounds} rounds")


def grid_weights(model, plans: dict[str, WeightPlan]) -> dict[str, object]:
    """:func:`on_grid` of every planned projection, in the parameter's own layout."""
    import torch

    weights = block_linears(model)
    out = {}
    for name, plan in plans.items():
        w, k_first = weights[name]
        nk = w.detach().double().numpy()
        g = on_grid(nk.T if k_first else nk, plan)
        out[name] = torch.from_numpy(np.ascontiguousarray(g.T if k_first else g)).to(w.dtype)
    return out


def set_weights(model, values: dict[str, object]) -> None:
    import torch

    weights = block_linears(model)
    with torch.no_grad():
        for name, v in values.items():
            weights[name][0].copy_(v)


def train(
    model,
    corpus: Corpus,
    steps: int,
    lr: float,
    batch: int,
    seed: int,
    masks: dict[str, object] | None = None,
    log=print,
    fake_quant: dict[str, WeightPlan] | None = None,
) -> None:
    """AdamW with warm-up and cosine decay on fresh batches; with ``masks`` the pruned
    weights are put back to zero after every step, so the pattern stays fixed. With
    ``fake_quant`` each step's forward and backward pass run with those projections on
    the compiler's grid (:func:`on_grid`) and the float weights take the gradient
    (straight-through estimator)."""
    import torch

    torch.manual_seed(seed)
    rng = np.random.default_rng(seed)
    opt = torch.optim.AdamW(model.parameters(), lr=lr, betas=(0.9, 0.98), weight_decay=0.1)
    warm = max(1, steps // 20)
    sched = torch.optim.lr_scheduler.LambdaLR(
        opt,
        lambda s: min(1.0, (s + 1) / warm) * 0.5 * (1 + math.cos(math.pi * min(s, steps) / steps)),
    )
    model.train()
    t0 = time.time()
    for step in range(steps):
        ids = torch.from_numpy(corpus.batch(rng, batch))
        latent = {}
        if fake_quant:
            latent = {
                n: w.detach().clone()
                for n, (w, _) in block_linears(model).items()
                if n in fake_quant
            }
            set_weights(model, grid_weights(model, fake_quant))
        loss = model(input_ids=ids, labels=ids).loss
        opt.zero_grad()
        loss.backward()
        set_weights(model, latent)  # the gradient at the grid values updates the float weights
        torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
        opt.step()
        sched.step()
        if masks:
            apply_masks(model, masks)
        if step % 250 == 0 or step == steps - 1:
            log(f"  step {step:5d}  loss {loss.item():.3f}  ({time.time() - t0:.0f} s)")
    model.eval()


def evaluate(model, corpus: Corpus, n: int = 256, seed: int = 12345) -> EvalLoss:
    import torch

    ids = corpus.batch(np.random.default_rng(seed), n)
    with torch.no_grad():
        logits = model(input_ids=torch.from_numpy(ids)).logits[:, :-1]
    nll = (
        torch.nn.functional.cross_entropy(
            logits.reshape(-1, logits.shape[-1]),
            torch.from_numpy(ids[:, 1:]).reshape(-1),
            reduction="none",
        )
        .numpy()
        .reshape(n, -1)
    )
    replay = corpus.replay_mask(ids)[:, 1:]
    walk = ~replay & (ids[:, 1:] > COPY)
    return EvalLoss(float(nll.mean()), float(nll[replay].mean()), float(nll[walk].mean()))


def round_to_half(model) -> None:
    """Round every weight to float16 in place: the saved checkpoint is then exact."""
    import torch

    with torch.no_grad():
        for p in model.parameters():
            p.copy_(p.half().float())


def save(model, path: Path, record: dict) -> None:
    """Every tensor as float16, or float32 where float16 would round it (a QAT model's
    projections, whose grid values need float32)."""
    import torch

    arrays = {}
    for k, v in model.state_dict().items():
        v = v.detach().float()
        arrays[k] = (v.half() if torch.equal(v.half().float(), v) else v).numpy()
    np.savez_compressed(path, __record__=np.array(json.dumps(record)), **arrays)


def load(path: str | Path):
    """``(model, record)`` from a checkpoint written by :func:`save`."""
    import torch

    with np.load(path) as data:
        record = json.loads(str(data["__record__"]))
        state = {
            k: torch.from_numpy(data[k].astype(np.float32)) for k in data.files if k != "__record__"
        }
    model = untrained(record["config"]["family"], record["config"]["intermediate"], 0)
    model.load_state_dict(state)
    return model.eval(), record


def untrained(family: str, intermediate: int, seed: int):
    """The tiny model of ``family`` at Hugging Face's initialisation, without dropout
    (a few minutes of training on fresh data does not need it; GPT-2's is 0.1)."""
    model = build(family, 0.02, seed, intermediate)
    for m in model.modules():
        if type(m).__name__ == "Dropout":
            m.p = 0.0
    return model


def sparsity_name(mode: SparseMode) -> str:
    return f"{mode.n}_{mode.m}"


def checkpoint_path(out: Path, family: str, seed: int, name: str) -> Path:
    """Where :func:`run` writes a checkpoint (``name``: ``dense`` or e.g. ``2_4``)."""
    return out / f"{family}-s{seed}-{name}.npz"


def run(
    cfg: TrainConfig,
    out: Path,
    sparse: list[SparseMode],
    write_dense: bool = True,
    log=print,
    qat: bool = False,
) -> dict[str, Path]:
    """Train the dense model, then one fine-tuned sparse model per mode, and with ``qat``
    an INT4 QAT model of each (:func:`qat_checkpoint`); returns the checkpoint of each
    (``dense``, ``2_4``, ``2_4-int4qat``, ...; see :func:`checkpoint_path`)."""
    import torch

    torch.set_num_threads(1)  # reproducible sums, and a shared machine
    out.mkdir(parents=True, exist_ok=True)
    corpus = Corpus.make(seed=cfg.corpus_seed)
    model = untrained(cfg.family, cfg.intermediate, cfg.seed)
    log(f"{cfg.family}: training dense ({sum(p.numel() for p in model.parameters())} parameters)")
    t0 = time.time()
    train(model, corpus, cfg.steps, cfg.lr, cfg.batch, cfg.seed, log=log)
    round_to_half(model)
    dense_state = {k: v.clone() for k, v in model.state_dict().items()}
    loss = evaluate(model, corpus)
    log(
        f"{cfg.family} dense: held-out loss {loss.all:.3f} (replay {loss.replay:.3f}, chain "
        f"{loss.walk:.3f}; the chain's entropy is "
        f"{-sum(p * math.log(p) for p in SUCCESSOR_P):.3f}), {time.time() - t0:.0f} s"
    )
    paths = {}
    if write_dense:
        paths["dense"] = checkpoint_path(out, cfg.family, cfg.seed, "dense")
        save(
            model, paths["dense"], {"config": asdict(cfg), "sparse": "dense", "loss": asdict(loss)}
        )
    for mode in sparse:
        model.load_state_dict(dense_state)
        masks = nm_masks(model, mode)
        apply_masks(model, masks)
        oneshot = evaluate(model, corpus)
        t0 = time.time()
        train(
            model,
            corpus,
            cfg.finetune_steps,
            cfg.finetune_lr,
            cfg.batch,
            cfg.seed + 1,
            masks,
            log=log,
        )
        round_to_half(model)
        loss = evaluate(model, corpus)
        dense_layers = sorted(set(block_linears(model)) - set(masks))
        log(
            f"{cfg.family} {mode.n}:{mode.m}: held-out loss pruned {oneshot.all:.3f}, fine-tuned "
            f"{loss.all:.3f} (replay {loss.replay:.3f}), {time.time() - t0:.0f} s; dense "
            f"(K not a multiple of {mode.m}): {', '.join(dense_layers) or 'none'}"
        )
        name = sparsity_name(mode)
        paths[name] = checkpoint_path(out, cfg.family, cfg.seed, name)
        save(
            model,
            paths[name],
            {
                "config": asdict(cfg),
                "sparse": f"{mode.n}:{mode.m}",
                "loss": asdict(loss),
                "pruned_loss": asdict(oneshot),
                "dense_layers": dense_layers,
            },
        )
    if qat:
        for name in list(paths):
            paths[qat_name(name)] = qat_checkpoint(paths[name], cfg, log)
    return paths


def quantisation_aware(model, cfg: TrainConfig, sparse: str, corpus: Corpus, log=print) -> dict:
    """Fine-tune a trained model (dense, or N:M with its pattern kept) in place for the
    compiler's INT4 g32 weights (:func:`on_grid` on every decoder projection, LM head
    excluded), ending on the grid; returns the checkpoint record's fields."""
    mode = SparseMode.DENSE if sparse == "dense" else parse_modes(sparse)[0]
    masks = nm_masks(model, mode) if mode.is_sparse else None
    plans = qat_plans(model, mode)
    before = evaluate(model, corpus)
    state = {k: v.clone() for k, v in model.state_dict().items()}
    set_weights(model, grid_weights(model, plans))
    rounded = evaluate(model, corpus)  # post-training rounding onto the grid, for comparison
    model.load_state_dict(state)
    t0 = time.time()
    train(
        model,
        corpus,
        cfg.qat_steps,
        cfg.qat_lr,
        cfg.batch,
        cfg.seed + 2,
        masks,
        log=log,
        fake_quant=plans,
    )
    grid = grid_weights(model, plans)
    round_to_half(model)  # everything else, as the other checkpoints
    set_weights(model, grid)
    loss = evaluate(model, corpus)
    log(
        f"{cfg.family} {sparse} INT{QAT_BITS} g{QAT_GROUP} QAT: held-out loss before "
        f"{before.all:.3f}, rounded to the grid {rounded.all:.3f}, after {cfg.qat_steps} QAT steps "
        f"{loss.all:.3f} (replay {loss.replay:.3f}), {time.time() - t0:.0f} s"
    )
    return {
        "sparse": sparse,
        "loss": asdict(loss),
        "unquantised_loss": asdict(before),
        "rounded_loss": asdict(rounded),
        "qat": {
            "bits": QAT_BITS,
            "group": QAT_GROUP,
            "steps": cfg.qat_steps,
            "lr": cfg.qat_lr,
            "plans": {
                n: [
                    int(p.prec.bits),
                    p.group,
                    f"{p.sparse.n}:{p.sparse.m}" if p.sparse.is_sparse else "dense",
                ]
                for n, p in plans.items()
            },
        },
    }


def qat_name(name: str) -> str:
    """The QAT checkpoint's name for a trained one (``2_4`` -> ``2_4-int4qat``)."""
    return f"{name}-int{QAT_BITS}qat"


def qat_checkpoint(src: Path, cfg: TrainConfig | None = None, log=print) -> Path:
    """QAT of the checkpoint ``src`` (:func:`quantisation_aware`), written next to it as
    ``<stem>-int4qat.npz``; ``cfg`` overrides the QAT fields of the recorded config."""
    import torch

    torch.set_num_threads(1)
    model, record = load(src)
    cfg = cfg or TrainConfig(**record["config"])
    corpus = Corpus.make(seed=cfg.corpus_seed)
    fields = quantisation_aware(model, cfg, record["sparse"], corpus, log)
    out = src.with_name(f"{qat_name(src.stem)}.npz")
    save(
        model,
        out,
        {"config": asdict(cfg), **fields, "from": {"checkpoint": src.name, "loss": record["loss"]}},
    )
    return out


def parse_modes(text: str) -> list[SparseMode]:
    return [SparseMode.from_nm(*(int(x) for x in s.split(":"))) for s in text.split(",") if s]


def qat_main(argv: list[str]) -> None:
    ap = argparse.ArgumentParser(
        prog="train_tiny.py qat",
        description=(
            "INT4 g32 quantisation-aware fine-tuning of trained checkpoints; each is written "
            "next to its source as <name>-int4qat.npz"
        ),
    )
    ap.add_argument("checkpoints", type=Path, nargs="+")
    ap.add_argument("--steps", type=int, help="QAT steps (default: the recorded config's)")
    ap.add_argument("--lr", type=float, help="QAT peak learning rate (default: the config's)")
    a = ap.parse_args(argv)
    for src in a.checkpoints:
        with np.load(src) as data:
            cfg = TrainConfig(**json.loads(str(data["__record__"]))["config"])
        cfg = dataclasses.replace(
            cfg, qat_steps=a.steps or cfg.qat_steps, qat_lr=a.lr or cfg.qat_lr
        )
        path = qat_checkpoint(src, cfg)
        print(f"wrote {path} ({path.stat().st_size / 1e3:.0f} kB)")


def main() -> None:
    if sys.argv[1:2] == ["qat"]:
        return qat_main(sys.argv[2:])
    ap = argparse.ArgumentParser(
        description=__doc__.splitlines()[0],
        epilog="QAT of existing checkpoints: train_tiny.py qat --help",
    )
    ap.add_argument("family", choices=["llama", "gpt2", "opt"])
    ap.add_argument("out", type=Path, help="folder for the checkpoints")
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--intermediate", type=int, default=200)
    ap.add_argument("--steps", type=int, default=TrainConfig.steps)
    ap.add_argument("--finetune-steps", type=int, default=TrainConfig.finetune_steps)
    ap.add_argument("--sparse", default="2:4,8:16,4:16", help="N:M patterns to fine-tune")
    ap.add_argument("--sparse-only", action="store_true", help="do not write the dense checkpoint")
    ap.add_argument(
        "--qat", action="store_true", help="also write an INT4 g32 QAT model of each checkpoint"
    )
    ap.add_argument("--qat-steps", type=int, default=TrainConfig.qat_steps)
    a = ap.parse_args()
    cfg = TrainConfig(
        a.family, a.intermediate, a.seed, a.steps, a.finetune_steps, qat_steps=a.qat_steps
    )
    for path in run(cfg, a.out, parse_modes(a.sparse), not a.sparse_only, qat=a.qat).values():
        print(f"wrote {path} ({path.stat().st_size / 1e3:.0f} kB)")


if __name__ == "__main__":
    main()
