"""Float interpreter of a :class:`DecoderProgram`, used to calibrate activation scales.

Calibration runs the float model on sample prompts (prefill, then greedy decode steps
that continue them, so that decode positions are sampled as well as prompt positions)
and records, for every named tensor, its largest magnitude and a deterministic
subsample of its values. :meth:`TensorStats.scale` then picks the scale: by default the
largest magnitude maps to the top code (32767 for INT16 tensors such as the residual
stream and the logits, 127 for INT8 ones); with ``search`` (``QuantOptions.mse_clip``)
an INT8 tensor takes the clipping point that minimises the mean squared quantisation
error on the samples (searched from 20% to 100% of the largest magnitude). RoPE rotates
in place, so its tensor's statistics cover values before and after rotation.
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


SAMPLES_PER_OBSERVATION = 2048
CLIP_CANDIDATES = np.linspace(0.2, 1.0, 81)


@dataclass
class TensorStats:
    """What calibration saw of one tensor."""

    peak: float = 0.0
    samples: list[np.ndarray] = field(default_factory=list)

    def add(self, x: np.ndarray) -> None:
        flat = np.abs(np.asarray(x, np.float64)).ravel()
        if not flat.size:
            return
        self.peak = max(self.peak, float(flat.max()))
        step = max(1, flat.size // SAMPLES_PER_OBSERVATION)
        self.samples.append(flat[::step])

    def scale(self, top: int, search: bool) -> float:
        """Scale for integer codes up to ``top``: max-based, or MSE-optimal when ``search``."""
        peak = max(self.peak, 1e-6)
        if not search or not self.samples:
            return peak / top
        x = np.concatenate(self.samples)
        best, best_err = peak / top, np.inf
        for r in CLIP_CANDIDATES:
            s = r * peak / top
            err = float(np.mean((np.minimum(np.round(x / s), top) * s - x) ** 2))
            if err < best_err:
                best, best_err = s, err
        return best


@dataclass
class FloatState:
    """KV caches of one sequence, ``[layer] -> (k, v)`` each ``[positions][kv_heads*d]``."""

    kv: dict[int, tuple[np.ndarray, np.ndarray]] = field(default_factory=dict)
    stats: dict[str, TensorStats] = field(default_factory=dict)

    def observe(self, name: str, x: np.ndarray) -> None:
        self.stats.setdefault(name, TensorStats()).add(x)


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


DECODE_STEPS = 16


def calibrate(
    prog: DecoderProgram, prompts: list[np.ndarray], decode_steps: int = DECODE_STEPS
) -> dict[str, TensorStats]:
    """Per-tensor statistics over prefill of each prompt and greedy decode steps.

    With the default prompts (16 tokens) the 16 decode steps sample positions up to 31
    as decode rows. Four steps left the ranges of later positions short: on random test
    decoders, more positions fell below cosine 0.99 (docs/compiler.md, "Accuracy").
    """
    stats: dict[str, TensorStats] = {}
    for ids in prompts:
        state = FloatState(stats=stats)
        logits = run_float(prog, np.asarray(ids), 0, state)
        pos = len(ids)
        for _ in range(decode_steps):
            nxt = int(np.argmax(logits[-1]))
            logits = run_float(prog, np.array([nxt]), pos, state)
            pos += 1
    return stats
