"""N:M pruning: the pattern holds, and the second-order pass loses less than magnitude."""

from __future__ import annotations

import numpy as np
import pytest

from flightforge.compiler.prune import sparsegpt_nm
from flightforge.compiler.quantize import prune_nm
from flightforge.isa import SparseMode

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
