"""Measuring compiled trained models (``examples/train_tiny.py``), shared by the tests and
``benchmarks/trained_accuracy.py`` (beside the trainer, which it builds on).

A trained model is measured on prompts of its own language (random token ids are far
outside what it learned), calibrated on other text of that language, and compiled
through the real frontend with a weight plan that applies one format to every decoder
projection: the LM head stays INT8 and dense, and a layer whose K is not a multiple of
the sparse block stays dense.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import numpy as np
import train_tiny

from flightforge.compiler.graph import DecoderProgram
from flightforge.compiler.pipeline import Compiled
from flightforge.compiler.quant.accuracy import PROMPT_LEN
from flightforge.compiler.quant.quantize import quantize_linear
from flightforge.isa import SparseMode

FIXTURES = Path(__file__).resolve().parent.parent / "tests" / "fixtures"  #: trained checkpoints
EVAL_PROMPTS = 8  #: half of them end on COPY, so their decode steps replay a span
#: 50 x 32 = 1600 calibration rows: SparseGPT's 8 rows per input feature of K = 200.
CALIBRATION_SEQUENCES, CALIBRATION_LEN = 50, 32


@dataclass(frozen=True)
class Language:
    """The evaluation prompts and calibration text of the trained models' language."""

    corpus: train_tiny.Corpus
    prompts: list[list[int]]
    calibration: tuple[tuple[int, ...], ...]

    @classmethod
    def make(cls) -> Language:
        corpus = train_tiny.Corpus.make()
        rng = np.random.default_rng(7)
        prompts = [corpus.prompt(rng, PROMPT_LEN, i % 2 == 1) for i in range(EVAL_PROMPTS)]
        crng = np.random.default_rng(8)
        calibration = tuple(
            tuple(corpus.sequence(crng, CALIBRATION_LEN)) for _ in range(CALIBRATION_SEQUENCES)
        )
        return cls(corpus, prompts, calibration)

    def replayed(self, ids: np.ndarray) -> np.ndarray:
        """Positions whose next token is a replay (only attention predicts it)."""
        return np.append(self.corpus.replay_mask(np.asarray(ids)[None])[0, 1:], False)


def plan(prog: DecoderProgram, bits: int, group: int = 32, sparse: str = "dense") -> dict:
    """A plan file's content (compiler/quant/plans.py) applying one format to the decoder."""
    layers = [{"match": "lm_head", "bits": 8, "group": 0, "sparse": "dense"}]
    if sparse != "dense":
        m = int(sparse.split(":")[1])
        layers += [
            {"match": n, "sparse": "dense"}
            for n, p in prog.linears.items()
            if n != "lm_head" and p.w.shape[1] % m
        ]
    return {"default": {"bits": bits, "group": group, "sparse": sparse}, "layers": layers}


def off_grid_layers(c: Compiled, prog: DecoderProgram) -> list[str]:
    """The decoder projections whose compiled weights, dequantised, are not exactly the
    model's: none for a model trained onto the compiler's grid (``train_tiny.on_grid``)."""
    return [
        name
        for name, ql in c.quantized.linears.items()
        if name != "lm_head" and not np.array_equal(ql.dequantized(), prog.linears[name].w)
    ]


def lossy_layers(c: Compiled, prog: DecoderProgram) -> list[str]:
    """The N:M layers whose compile changed an already N:M model's weights: the pruning
    pass must leave them alone, and quantising with the sparse plan must give the
    integers a dense plan gives."""
    bad = []
    for name, wp in c.quantized.plans.items():
        if not SparseMode(wp.sparse).is_sparse:
            continue
        w, b = prog.linears[name].w, prog.linears[name].b
        dense = quantize_linear(w, b, prec=wp.prec, group=wp.group, store_bits=wp.store_bits)
        if not (
            np.array_equal(c.quantized.prog.linears[name].w, w)
            and np.array_equal(dense.q, c.quantized.linears[name].q)
        ):
            bad.append(name)
    return bad
