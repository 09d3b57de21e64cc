"""Weight quantisation: error bounds, group scales, pruning, requantisation parameters."""

from __future__ import annotations

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from flightforge import numerics
from flightforge.compiler.errors import CompileError
from flightforge.compiler.quant.quantize import prune_nm, quantize_linear
from flightforge.isa import DType, SparseMode, WPrec


@settings(max_examples=40, deadline=None)
@given(
    st.integers(1, 8),
    st.sampled_from([16, 32, 64]),
    st.sampled_from([0, 16, 32]),
    st.sampled_from(list(WPrec)),
    st.integers(0, 2**31),
)
def test_dequantised_error_within_half_a_step(n, k, group, prec, seed):
    if group and k % group:
        return
    w = np.random.default_rng(seed).normal(size=(n, k))
    ql = quantize_linear(w, prec=prec, group=group)
    qmax = (1 << (prec.bits - 1)) - 1
    assert ql.q.min() >= -qmax - 1 and ql.q.max() <= qmax
    step = ql.col_unit[:, None] * (np.repeat(ql.gscale, group, axis=1) if group else 1)
    assert np.all(np.abs(ql.dequantized() - w) <= step / 2 + 1e-12)


def test_groups_reduce_int4_error_on_uneven_columns():
    rng = np.random.default_rng(0)
    w = rng.normal(size=(8, 64)) * np.repeat([0.05, 1.0], 32)[None, :]
    # The small-magnitude half gets its own scale with groups; without, it shares the
    # large half's coarse step.
    err = {
        g: np.abs(quantize_linear(w, prec=WPrec.INT4, group=g).dequantized() - w)[:, :32].mean()
        for g in (0, 32)
    }
    assert err[32] < err[0] / 4


@pytest.mark.parametrize("mode", [m for m in SparseMode if m.is_sparse])
def test_pruning_keeps_the_largest_n_of_every_block(mode):
    w = np.random.default_rng(1).normal(size=(4, 32))
    p = prune_nm(w, mode)
    blocks, orig = p.reshape(4, -1, mode.m), w.reshape(4, -1, mode.m)
    assert ((blocks != 0).sum(axis=2) == mode.n).all()
    kept_min = np.where(blocks != 0, np.abs(orig), np.inf).min(axis=2)
    dropped_max = np.where(blocks == 0, np.abs(orig), -np.inf).max(axis=2)
    assert (kept_min >= dropped_max).all()


def test_requantised_matmul_matches_float():
    rng = np.random.default_rng(2)
    w, b = rng.normal(size=(16, 64)) * 0.1, rng.normal(size=16) * 0.1
    x = rng.normal(size=(5, 64))
    s_x, s_y = np.abs(x).max() / 127, np.abs(x @ w.T + b).max() / 127
    ql = quantize_linear(w, b, prec=WPrec.INT8)
    bias_q, mult, shift = ql.requant(s_x, s_y)
    xq = np.round(x / s_x).astype(np.int64)
    y = numerics.matmul(xq, ql.q, bias=bias_q, mult=mult, shift=shift, odt=DType.INT8) * s_y
    assert np.abs(y - (x @ w.T + b)).max() < 3 * s_y


def test_group_size_must_divide_k():
    with pytest.raises(CompileError, match="K=40 is not a multiple of the weight group size 32"):
        quantize_linear(np.ones((2, 40)), prec=WPrec.INT4, group=32)
