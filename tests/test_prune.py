"""N:M pruning: the pattern holds, the second-order pass loses less than magnitude, and an
already N:M-sparse model compiles without loss."""

from __future__ import annotations

import dataclasses

import numpy as np
import pytest

from flightforge.compiler.graph import DecoderShape, LinearParams, random_decoder
from flightforge.compiler.pipeline import CompileOptions, compile_decoder
from flightforge.compiler.plans import parse_plan
from flightforge.compiler.prune import PRUNE_METHODS, sparsegpt_nm
from flightforge.compiler.qdecoder import QuantOptions
from flightforge.compiler.quantize import prune_nm
from flightforge.isa import SparseMode
from flightforge.mappings import load_target
from trained_models import lossy_layers, plan

SPARSE = [m for m in SparseMode if m.is_sparse and m.n < m.m]


@pytest.mark.parametrize("mode", SPARSE, ids=[m.name for m in SPARSE])
def test_sparsegpt_keeps_the_pattern_and_beats_magnitude_on_correlated_inputs(mode):
    rng = np.random.default_rng(int(mode))
    x = rng.normal(size=(768, 96)) @ rng.normal(size=(96, 96)) * 0.3
    w = rng.normal(size=(40, 96))
    pruned = sparsegpt_nm(w, x, mode)
    blocks = (pruned.reshape(40, -1, mode.m) != 0).sum(axis=2)
    assert blocks.max() <= mode.n

    def err(a):
        return np.linalg.norm(x @ (a - w).T) / np.linalg.norm(x @ w.T)

    assert err(pruned) < 0.95 * err(prune_nm(w, mode))


def test_dense_inputs_columns_that_never_fire_are_dropped_first():
    rng = np.random.default_rng(0)
    x = rng.normal(size=(200, 16))
    x[:, 3] = 0.0  # an input that is always zero: its weights cost nothing to remove
    w = rng.normal(size=(4, 16)) + 10.0
    pruned = sparsegpt_nm(w, x, SparseMode.S8_16)
    assert (pruned[:, 3] == 0).all()


@pytest.mark.parametrize("method", PRUNE_METHODS)
@pytest.mark.parametrize("mode", [SparseMode.S2_4, SparseMode.S8_16, SparseMode.S4_16],
                         ids=["2:4", "8:16", "4:16"])
def test_an_already_nm_sparse_model_compiles_without_loss(mode, method):
    """A model pruned and fine-tuned before export is compiled with its own pattern: the
    compiler's pruning must then change nothing (blocks with fewer than n weights left
    included), or it would silently drop trained weights."""
    prog = random_decoder(DecoderShape(1, 32, 2, 2, 16, 64, 50, "swiglu", True), seed=1)
    rng = np.random.default_rng(2)
    sparse = dataclasses.replace(prog, linears={
        name: p if name == "lm_head" else
        LinearParams(prune_nm(p.w, mode) * (rng.random(p.w.shape) > 0.3), p.b)
        for name, p in prog.linears.items()})

    def compiled(model):
        spec = parse_plan(plan(model, 4, 32, f"{mode.n}:{mode.m}"))
        return compile_decoder(model, load_target("tiny"), CompileOptions(
            max_len=8, lengths=(8,), prune=method, quant=QuantOptions(spec=spec)))

    assert lossy_layers(compiled(sparse), sparse) == []
    # The check is not vacuous: the dense model's layers are all pruned.
    assert len(lossy_layers(compiled(prog), prog)) == len(prog.linears) - 1
