"""N:M pruning of a decoder's Linear weights before quantisation.

Two methods, chosen per compile (``CompileOptions.prune``); the N:M pattern of each
layer comes from its weight plan:

- ``magnitude`` (the default): keep the ``n`` largest magnitudes of every block of ``m``
  along K (:func:`.quantize.prune_nm`, applied when the layer is quantised);
- ``sparsegpt``: a second-order pass after SparseGPT (Frantar & Alistarh, 2023). With
  ``H = X^T X`` the Gram matrix of the layer's calibration inputs, the columns of W are
  visited in order; in each block of ``m`` columns every row keeps the ``n`` weights
  with the largest saliency ``w^2 / [H^-1]_jj^2``, and the error of each removed weight
  is compensated on the columns not yet visited through the row of the inverse
  Hessian's Cholesky factor (the optimal brain surgeon update). Layers are pruned in
  program order, each on inputs produced by the layers already pruned, so later layers
  compensate earlier ones' error.
"""

from __future__ import annotations

import dataclasses

import numpy as np

from flightforge.isa import SparseMode

from ..errors import CompileError
from ..graph import DecoderProgram, Linear, LinearParams
from ..interpret import FloatState, run_float

PRUNE_METHODS = ("magnitude", "sparsegpt")


def inverse_hessian_factor(x: np.ndarray, damp: float = 0.01) -> tuple[np.ndarray, np.ndarray]:
    """``(U, dead)`` for calibration inputs ``x[rows][K]``: ``U`` is the upper Cholesky
    factor of ``(X^T X + damp * mean(diag) * I)^-1`` (row j gives the update of the
    columns after j when column j changes), ``dead`` the inputs that are always zero
    (their weights cost nothing to remove)."""
    h = x.T @ x
    dead = np.diag(h) == 0
    h[dead, dead] = 1.0
    h += np.eye(len(h)) * damp * np.mean(np.diag(h))
    return np.linalg.cholesky(np.linalg.inv(h)).T, dead


def sparsegpt_nm(w: np.ndarray, x: np.ndarray, mode: SparseMode, damp: float = 0.01) -> np.ndarray:
    """Prune ``w[N][K]`` to ``mode`` given calibration inputs ``x[rows][K]``."""
    mode = SparseMode(mode)
    w = np.array(w, dtype=np.float64)
    n_out, k = w.shape
    if k % mode.m:
        raise CompileError(f"K={k} is not a multiple of the sparse block m={mode.m}")
    hinv, dead = inverse_hessian_factor(x, damp)
    w[:, dead] = 0.0
    for b0 in range(0, k, mode.m):
        cols = slice(b0, b0 + mode.m)
        d = np.diag(hinv)[cols]
        saliency = w[:, cols] ** 2 / d[None, :] ** 2
        keep = np.argsort(-saliency, axis=1, kind="stable")[:, : mode.n]
        mask = np.zeros((n_out, mode.m), dtype=bool)
        np.put_along_axis(mask, keep, True, axis=1)
        for j in range(b0, b0 + mode.m):
            removed = ~mask[:, j - b0]
            err = np.where(removed, w[:, j] / hinv[j, j], 0.0)
            w[:, j] = np.where(removed, 0.0, w[:, j])
            w[:, j + 1 :] -= err[:, None] * hinv[j, j + 1 :][None, :]
    return w


def prune_decoder(
    prog: DecoderProgram, prompts: list[np.ndarray], modes: dict[str, SparseMode], method: str
) -> DecoderProgram:
    """The program with every sparse layer's weights pruned by ``method``.

    ``modes`` gives each Linear weight's pattern; dense layers are left as they are.
    Magnitude pruning needs no pass here (quantisation applies it).
    """
    if method not in PRUNE_METHODS:
        raise CompileError(
            f"unknown pruning method {method!r}; choose one of {', '.join(PRUNE_METHODS)}"
        )
    if method == "magnitude" or not any(SparseMode(m).is_sparse for m in modes.values()):
        return prog
    linears = dict(prog.linears)
    for op in prog.ops:
        if not isinstance(op, Linear) or not SparseMode(modes.get(op.weight, 0)).is_sparse:
            continue
        current = dataclasses.replace(prog, linears=linears)
        inputs = []
        for ids in prompts:
            env: dict[str, np.ndarray] = {}
            run_float(current, ids, 0, FloatState(), env=env)
            inputs.append(env[op.x])
        p = linears[op.weight]
        linears[op.weight] = LinearParams(
            sparsegpt_nm(p.w, np.vstack(inputs), modes[op.weight]), p.b
        )
    return dataclasses.replace(prog, linears=linears)
