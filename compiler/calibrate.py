"""Float interpreter of a :class:`DecoderProgram`, used to calibrate activation scales.

Calibration runs the float model on sample prompts (prefill, then decode steps that
continue them) and records the largest magnitude every named tensor takes; a tensor's
scale maps that magnitude to the top integer code (127 for INT8, 32767 for INT16).
RoPE rotates in place, so its tensor's range covers values before and after rotation.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field

import numpy as np

from .graph import Act, Add, Attention, DecoderProgram, Linear, Mul, Norm, Rope

ACT_FNS = {
    "silu": lambda x: x / (1.0 + np.exp(-x)),
    "relu": lambda x: np.maximum(x, 0.0),
    "gelu_tanh": lambda x: 0.5 * x * (1.0 + np.tanh(math.sqrt(2.0 / math.pi) * (x + 0.044715 * x ** 3))),
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
    """KV caches of one sequence, ``[layer] -> (k, v)`` each ``[positions][kv_heads*d]``."""

    kv: dict[int, tuple[np.ndarray, np.ndarray]] = field(default_factory=dict)
    ranges: dict[str, float] = field(default_factory=dict)

    def observe(self, name: str, x: np.ndarray) -> None:
        peak = float(np.max(np.abs(x))) if x.size else 0.0
        self.ranges[name] = max(self.ranges.get(name, 0.0), peak)


def run_float(prog: DecoderProgram, ids: np.ndarray, pos0: int, state: FloatState) -> np.ndarray:
    """Logits ``[len(ids)][vocab]`` for tokens at positions ``pos0..``; updates ``state``."""
    env: dict[str, np.ndarray] = {prog.input: prog.embed_rows(ids, pos0).astype(np.float64)}
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
        sc = q[:, h * d:(h + 1) * d] @ kc[:, j * d:(j + 1) * d].T / math.sqrt(d)
        sc = np.where(mask, -np.inf, sc)
        p = np.exp(sc - sc.max(axis=1, keepdims=True))
        out[:, h * d:(h + 1) * d] = (p / p.sum(axis=1, keepdims=True)) @ vc[:, j * d:(j + 1) * d]
    return out


def calibrate(prog: DecoderProgram, prompts: list[np.ndarray], decode_steps: int = 4) -> dict[str, float]:
    """Per-tensor maximum magnitudes over prefill of each prompt and greedy decode steps."""
    ranges: dict[str, float] = {}
    for ids in prompts:
        state = FloatState(ranges=ranges)
        logits = run_float(prog, np.asarray(ids), 0, state)
        pos = len(ids)
        for _ in range(decode_steps):
            nxt = int(np.argmax(logits[-1]))
            logits = run_float(prog, np.array([nxt]), pos, state)
            pos += 1
    return ranges
