"""Probe maths: how the frontend tests a hypothesis against the probe run's values.

A pattern is accepted only if the values it implies equal the values onnxruntime
computed on the probe prompt (:mod:`.onnx_graph`): an elementwise function must be a
supported activation on a grid, a softmax the causal softmax of the scaled scores, a
rotary embedding the rotate-half RoPE with the fitted base.
"""

from __future__ import annotations

import math
from collections.abc import Callable

import numpy as np

from ..interpret import ACT_FNS
from .tags import Const, Tag


def scalar(tag: Tag, val: np.ndarray | None) -> float | None:
    """The value of a one-element constant, else None."""
    if isinstance(tag, Const) and val is not None and np.size(val) == 1:
        return float(np.asarray(val, np.float64).reshape(-1)[0])
    return None


def _erf(x: np.ndarray) -> np.ndarray:
    return np.vectorize(math.erf)(x)


UNARY: dict[str, Callable[[np.ndarray], np.ndarray]] = {
    "Tanh": np.tanh,
    "Sigmoid": lambda x: 1.0 / (1.0 + np.exp(-x)),
    "Erf": _erf,
    "Relu": lambda x: np.maximum(x, 0.0),
    "Neg": np.negative,
    "Exp": np.exp,
    "Abs": np.abs,
    "Sqrt": np.sqrt,
    "Reciprocal": lambda x: 1.0 / x,
    "Softplus": lambda x: np.log1p(np.exp(x)),
    "Identity": lambda x: x,
}
BINARY: dict[str, Callable] = {
    "Add": np.add,
    "Sub": np.subtract,
    "Mul": np.multiply,
    "Div": np.divide,
    "Pow": np.power,
    "Max": np.maximum,
    "Min": np.minimum,
}
ACT_GRID = np.linspace(-6.0, 6.0, 1201)


def identify_act(f: Callable) -> str | None:
    """Which supported activation ``f`` is, by its values on a grid."""
    with np.errstate(all="ignore"):
        y = f(ACT_GRID)
    for name in ("silu", "gelu_tanh", "gelu_erf", "relu"):
        ref = ACT_FNS[name](ACT_GRID)
        if np.all(np.isfinite(y)) and np.abs(y - ref).max() < 2e-5 * np.abs(ref).max():
            return name
    return None


def is_square(f: Callable) -> bool:
    """Whether ``f`` squares its argument (a norm's mean square, in any decomposition)."""
    x = np.linspace(-3, 3, 61)
    return bool(np.allclose(f(x), x * x, rtol=1e-6, atol=1e-9))


def fit_theta(cos: np.ndarray, sin: np.ndarray, d: int) -> float:
    """RoPE base from cos/sin rows for positions 0, 1, ...: ``inv_freq[1] = theta^(-2/d)``."""
    cos = np.asarray(cos, np.float64).reshape(-1, cos.shape[-1])
    sin = np.asarray(sin, np.float64).reshape(-1, sin.shape[-1])
    if cos.shape[0] < 2 or d < 4:
        raise ValueError("too few positions or frequencies to determine the RoPE base")
    ang = np.arctan2(sin[1], cos[1])
    theta = float(ang[1]) ** (-d / 2)
    r = round(theta)
    return float(r) if abs(theta - r) <= 1e-4 * theta else theta


def causal_probs(
    q: np.ndarray, k: np.ndarray, heads: int, kv: int, d: int, factor: float
) -> np.ndarray:
    """``[heads][rows][rows]`` causal softmax of ``factor * q k^T`` on canonical q, k."""
    s = q.shape[0]
    qh = q.reshape(s, heads, d).transpose(1, 0, 2)
    kh = np.repeat(k.reshape(s, kv, d).transpose(1, 0, 2), heads // kv, axis=0)
    sc = factor * qh @ kh.transpose(0, 2, 1)
    sc = np.where(np.triu(np.ones((s, s), bool), 1)[None], -np.inf, sc)
    e = np.exp(sc - sc.max(-1, keepdims=True))
    return e / e.sum(-1, keepdims=True)
