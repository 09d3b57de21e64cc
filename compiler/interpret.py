"""The float interpreter of a :class:`DecoderProgram`: what every op of the IR means.

:func:`run_float` runs a program in float64, one op at a time, with a KV cache per
sequence (:class:`FloatState`). It is the reference every stage is checked against: the
frontend verifies an imported program against onnxruntime with it, pruning measures its
error with it, and calibration (:mod:`.quant.calibrate`) records every tensor's range
through its observer. ``ACT_FNS`` and :func:`rope_float` are the float semantics of the
activation and RoPE ops, which the frontend also uses to recognise them.
"""

from __future__ import annotations

import math
from collections.abc import Callable
from dataclasses import dataclass, field

import numpy as np

from .graph import Act, Add, Attention, DecoderProgram, Linear, Mul, Norm, Rope

ACT_FNS = {
    "silu": lambda x: x / (1.0 + np.exp(-x)),
    "relu": lambda x: np.maximum(x, 0.0),
    "gelu_tanh": lambda x: (
        0.5 * x * (1.0 + np.tanh(math.sqrt(2.0 / math.pi) * (x + 0.044715 * x**3)))
    ),
    "gelu_erf": lambda x: 0.5 * x * (1.0 + np.vectorize(math.erf)(x / math.sqrt(2.0))),
}


def rope_float(x: np.ndarray, pos0: int, head_dim: int, theta: float) -> np.ndarray:
    h = head_dim // 2
    inv = 1.0 / theta ** (np.arange(h) * 2 / head_dim)
    ang = (pos0 + np.arange(x.shape[0]))[:, None] * inv[None, :]
    c, s = np.cos(ang)[:, None, :], np.sin(ang)[:, None, :]
    xr = x.reshape(x.shape[0], -1, 2, h)
    y1 = xr[:, :, 0] * c - xr[:, :, 1] * s
    y2 = xr[:, :, 1] * c + xr[:, :, 0] * s
    return np.stack([y1, y2], axis=2).reshape(x.shape)


@dataclass
class FloatState:
    """KV caches of one sequence, ``[layer] -> (k, v)`` each ``[positions][kv_heads*d]``,
    and who watches the tensors as they are written (calibration records their ranges)."""

    kv: dict[int, tuple[np.ndarray, np.ndarray]] = field(default_factory=dict)
    observer: Callable[[str, np.ndarray], None] | None = None

    def observe(self, name: str, x: np.ndarray) -> None:
        if self.observer is not None:
            self.observer(name, x)


def run_float(
    prog: DecoderProgram,
    ids: np.ndarray,
    pos0: int,
    state: FloatState,
    env: dict[str, np.ndarray] | None = None,
    fake: Callable[[str, np.ndarray], np.ndarray] | None = None,
) -> np.ndarray:
    """Logits ``[len(ids)][vocab]`` for tokens at positions ``pos0..``; updates ``state``.

    ``env``, if given, receives every named tensor (for per-op error analysis).
    ``fake``, if given, replaces every tensor as it is written by ``fake(name, x)``: fake
    quantisation, to measure what rounding a tensor to a given precision costs.
    """
    env = {} if env is None else env
    env.update({prog.input: prog.embed_rows(ids, pos0).astype(np.float64)})
    if fake is not None:
        env[prog.input] = fake(prog.input, env[prog.input])
    state.observe(prog.input, env[prog.input])
    for op in prog.ops:
        if isinstance(op, Linear):
            p = prog.linears[op.weight]
            y = env[op.x] @ p.w.T.astype(np.float64)
            env[op.out] = y + p.b if p.b is not None else y
        elif isinstance(op, Norm):
            n = prog.norms[op.params]
            x = env[op.x]
            if n.kind == "layer":
                x = x - x.mean(axis=1, keepdims=True)
            y = x / np.sqrt((x * x).mean(axis=1, keepdims=True) + n.eps) * n.gamma
            env[op.out] = y + n.beta if n.beta is not None else y
        elif isinstance(op, Rope):
            env[op.x] = rope_float(env[op.x], pos0, op.head_dim, prog.rope_theta)
        elif isinstance(op, Attention):
            env[op.out] = _attention(env, op, pos0, state)
        elif isinstance(op, Add):
            env[op.out] = env[op.a] + env[op.b]
        elif isinstance(op, Mul):
            env[op.out] = env[op.a] * env[op.b]
        elif isinstance(op, Act):
            env[op.out] = ACT_FNS[op.fn](env[op.x])
        else:  # pragma: no cover - the Op union is closed
            raise TypeError(f"unknown op {op!r}")
        for name in _writes(op):
            if fake is not None:
                env[name] = fake(name, env[name])
            state.observe(name, env[name])
    return env[prog.output]


def _writes(op) -> tuple[str, ...]:
    return (op.x,) if isinstance(op, Rope) else (op.out,)


def _attention(env, op: Attention, pos0: int, state: FloatState) -> np.ndarray:
    q, k, v = env[op.q], env[op.k], env[op.v]
    rows, d = q.shape[0], op.head_dim
    kc, vc = state.kv.get(op.layer, (np.zeros((0, k.shape[1])), np.zeros((0, v.shape[1]))))
    kc, vc = np.vstack([kc[:pos0], k]), np.vstack([vc[:pos0], v])
    state.kv[op.layer] = (kc, vc)
    group = op.heads // op.kv_heads
    out = np.zeros((rows, op.heads * d))
    mask = np.arange(kc.shape[0])[None, :] > (pos0 + np.arange(rows))[:, None]
    for h in range(op.heads):
        j = h // group
        sc = q[:, h * d : (h + 1) * d] @ kc[:, j * d : (j + 1) * d].T / math.sqrt(d)
        sc = np.where(mask, -np.inf, sc)
        p = np.exp(sc - sc.max(axis=1, keepdims=True))
        out[:, h * d : (h + 1) * d] = (p / p.sum(axis=1, keepdims=True)) @ vc[
            :, j * d : (j + 1) * d
        ]
    return out
