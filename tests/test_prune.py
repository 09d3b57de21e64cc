"""N:M pruning: the pattern holds, the second-order pass loses less than magnitude, and an
already N:M-sparse model, or one trained onto the compiler's INT4 grid, compiles without
loss."""

from __future__ import annotations

import dataclasses

import numpy as np
import pytest
from train_tiny import on_grid
from trained_models import lossy_layers, off_grid_layers, plan

from flightforge.compiler.graph import DecoderShape, LinearParams, random_decoder
from flightforge.compiler.pipeline import CompileOptions, compile_decoder
from flightforge.compiler.quant.plans import parse_plan
from flightforge.compiler.quant.prune import PRUNE_METHODS, sparsegpt_nm
from flightforge.compiler.quant.qdecoder import QuantOptions
from flightforge.compiler.quant.quantize import prune_nm
from flightforge.isa import SparseMode
from flightforge.mappings import load_target

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
@pytest.mark.parametrize(
    "mode", [SparseMode.S2_4, SparseMode.S8_16, SparseMode.S4_16], ids=["2:4", "8:16", "4:16"]
)
def test_an_already_nm_sparse_model_compiles_without_loss(mode, method):
    """A model pruned and fine-tuned before export is compiled with its own pattern: the
    compiler's pruning must then change nothing (blocks with fewer than n weights left
    included), or it would silently drop trained weights."""
    prog = random_decoder(DecoderShape(1, 32, 2, 2, 16, 64, 50, "swiglu", True), seed=1)
    rng = np.random.default_rng(2)
    sparse = dataclasses.replace(
        prog,
        linears={
            name: p
            if name == "lm_head"
            else LinearParams(prune_nm(p.w, mode) * (rng.random(p.w.shape) > 0.3), p.b)
            for name, p in prog.linears.items()
        },
    )

    def compiled(model):
        spec = parse_plan(plan(model, 4, 32, f"{mode.n}:{mode.m}"))
        return compile_decoder(
            model,
            load_target("tiny"),
            CompileOptions(max_len=8, lengths=(8,), prune=method, quant=QuantOptions(spec=spec)),
        )

    assert lossy_layers(compiled(sparse), sparse) == []
    # The check is not vacuous: the dense model's layers are all pruned.
    assert len(lossy_layers(compiled(prog), prog)) == len(prog.linears) - 1


@pytest.mark.parametrize("sparse", ["dense", "2:4", "8:16"])
def test_weights_on_the_int4_grid_compile_without_loss(sparse):
    """Weights moved onto the compiler's INT4 g32 grid, as quantisation-aware training
    (examples/train_tiny.py) exports them, are float32 values that the compiler's own
    quantiser dequantises to themselves: compiling them loses nothing. K = 64 takes
    groups of 32, K = 40 (the MLP's down projection) one scale per column."""
    prog = random_decoder(DecoderShape(1, 32, 2, 2, 16, 40, 50, "swiglu", True), seed=3)
    spec = parse_plan(plan(prog, 4, 32, sparse))
    options = QuantOptions(spec=spec)
    grid = {}
    for name, p in prog.linears.items():
        wp = options.plan_for(name, p.w.shape[1])
        w = prune_nm(p.w, wp.sparse)
        grid[name] = (
            p if name == "lm_head" else LinearParams(on_grid(w, wp).astype(np.float64), p.b)
        )
    on = dataclasses.replace(prog, linears=grid)

    def compiled(model):
        return compile_decoder(
            model,
            load_target("tiny"),
            CompileOptions(max_len=8, lengths=(8,), quant=QuantOptions(spec=spec)),
        )

    assert off_grid_layers(compiled(on), on) == []
    # Not vacuous: the float weights themselves are rounded in every layer.
    assert len(off_grid_layers(compiled(prog), prog)) == len(prog.linears) - 1
