"""Error of every SFU operation's fixed-point arithmetic against float64.

Each operation is run through flightforge.numerics (what the functional simulator and
the RTL compute) on random inputs at realistic scales, with parameters chosen the way
the compiler chooses them, and compared with the float64 function of the dequantised
inputs. Errors are in units of the output's least significant bit (LSB), so they
separate the arithmetic's own error from the unavoidable output rounding (0.5 LSB).

    python benchmarks/numerics_error.py

prints one row per operation and ends with one JSON line.
"""

from __future__ import annotations

import json
import math

import numpy as np

from flightforge import numerics
from flightforge.isa import DType

RNG = np.random.default_rng(0)
ROWS, COLS = 64, 256


def _row(name: str, err_lsb: np.ndarray, note: str) -> dict:
    return {
        "op": name,
        "max_lsb": float(np.max(err_lsb)),
        "mean_lsb": float(np.mean(err_lsb)),
        "note": note,
    }


def requant() -> dict:
    x = RNG.integers(-(1 << 24), 1 << 24, size=(ROWS, COLS))
    real = 0.000731
    m, s = numerics.quantize_multiplier(real)
    y = numerics.requant(x, m, s, DType.INT16)
    return _row(
        "REQUANT", np.abs(y - np.clip(x * real, -32768, 32767)), f"16-bit multiplier {m}/2^{s}"
    )


def add() -> dict:
    sa, sb, sy = 0.013, 0.0041, 0.02
    a = RNG.integers(-32768, 32768, size=(ROWS, COLS))
    b = RNG.integers(-32768, 32768, size=(ROWS, COLS))
    from flightforge.compiler.quant.fixed_point import add_params

    m0, m1, sh = add_params(sa, sb, sy)
    y = numerics.add(a, b, m0, m1, sh, DType.INT16)
    exact = np.clip((a * sa + b * sb) / sy, -32768, 32767)
    return _row("ADD", np.abs(y - exact), "two aligned multipliers, one rounding")


def mul() -> dict:
    sa, sb, sy = 0.05, 0.03, 0.07
    a = RNG.integers(-128, 128, size=(ROWS, COLS))
    b = RNG.integers(-128, 128, size=(ROWS, COLS))
    m0, sh = numerics.quantize_multiplier(sa * sb / sy)
    y = numerics.mul(a, b, m0, sh, DType.INT8)
    exact = np.clip(a * sa * b * sb / sy, -128, 127)
    return _row("MUL", np.abs(y - exact), "")


def tables() -> list[dict]:
    out = []
    fns = {
        "SILU": lambda v: v / (1 + np.exp(-v)),
        "GELU": lambda v: 0.5 * v * (1 + np.tanh(math.sqrt(2 / math.pi) * (v + 0.044715 * v**3))),
        "RELU": lambda v: np.maximum(v, 0),
    }
    s_in, s_out = 6.0 / 127, 6.0 / 127
    for name, fn in fns.items():
        lut = numerics.lut_for(fn, s_in, s_out)
        i = np.arange(-128, 128)
        y = numerics.table(i, lut)
        exact = np.clip(fn(i * s_in) / s_out, -128, 127)
        out.append(_row(name, np.abs(y - exact), "256-entry table: output rounding only"))
    return out


def softmax() -> dict:
    s_x = 0.002  # score scale (q*k products)
    x = RNG.normal(size=(ROWS, COLS)) * 3.0
    xi = np.round(x / s_x).astype(np.int64)
    from flightforge.compiler.quant.fixed_point import softmax_params

    # softmax_params(s_q, s_k, d) folds 1/sqrt(d); pick s_q*s_k/sqrt(d) = s_x.
    m0, sh = softmax_params(s_x * 4.0, 1.0, 16)
    y = numerics.softmax(xi, m0, sh, odt=DType.INT8)
    xf = xi * s_x
    p = np.exp(xf - xf.max(axis=1, keepdims=True))
    p /= p.sum(axis=1, keepdims=True)
    return _row("SOFTMAX", np.abs(y - np.minimum(p * 128, 127)), "INT8 probabilities, LSB = 2^-7")


def norm(kind: str) -> dict:
    x = RNG.normal(size=(ROWS, COLS)) * 40 + (15 if kind == "LAYERNORM" else 0)
    s_x = float(np.abs(x).max()) / 32767
    xi = np.round(x / s_x).astype(np.int64)
    gamma = 1 + RNG.normal(size=COLS) * 0.2
    beta = RNG.normal(size=COLS) * 0.1
    eps = 1e-5
    from flightforge.compiler.quant.fixed_point import norm_eps, norm_gain

    s_y = 4.0 / 127
    g, shift = norm_gain(gamma, s_y)
    e = norm_eps(eps, s_x)
    xf = xi * s_x
    if kind == "RMSNORM":
        y = numerics.rmsnorm(xi, g, e, shift, DType.INT8)
        ref = xf / np.sqrt((xf**2).mean(axis=1, keepdims=True) + eps) * gamma
    else:
        b = np.round(beta / s_y).astype(np.int64)
        y = numerics.layernorm(xi, g, b, e, shift, DType.INT8)
        xc = xf - xf.mean(axis=1, keepdims=True)
        ref = xc / np.sqrt((xc**2).mean(axis=1, keepdims=True) + eps) * gamma + beta
    return _row(kind, np.abs(y - np.clip(ref / s_y, -128, 127)), "integer sqrt and reciprocal")


def rope() -> dict:
    d, positions = 128, 2048
    cos, sin = numerics.rope_tables(positions, d)
    pos = RNG.integers(0, positions - ROWS)
    x = RNG.integers(-128, 128, size=(ROWS, d * 2))
    y = numerics.rope(
        x, cos[pos : pos + ROWS], sin[pos : pos + ROWS], d, numerics.ROPE_FRAC_BITS, DType.INT8
    )
    h = d // 2
    inv = 1.0 / 10000.0 ** (np.arange(h) * 2 / d)
    ang = (pos + np.arange(ROWS))[:, None] * inv[None, :]
    xr = x.reshape(ROWS, 2, 2, h).astype(np.float64)
    c, s = np.cos(ang)[:, None, :], np.sin(ang)[:, None, :]
    ref = np.stack([xr[:, :, 0] * c - xr[:, :, 1] * s, xr[:, :, 1] * c + xr[:, :, 0] * s], axis=2)
    return _row("ROPE", np.abs(y - np.clip(ref.reshape(ROWS, -1), -128, 127)), "Q14 cos/sin table")


def main() -> None:
    rows = [
        requant(),
        add(),
        mul(),
        *tables(),
        softmax(),
        norm("RMSNORM"),
        norm("LAYERNORM"),
        rope(),
    ]
    print(f"{'op':<10} {'max err (LSB)':>14} {'mean err (LSB)':>15}  note")
    for r in rows:
        print(f"{r['op']:<10} {r['max_lsb']:>14.3f} {r['mean_lsb']:>15.3f}  {r['note']}")
    print(
        json.dumps(
            {
                "benchmark": "numerics_error",
                "ops": {
                    r["op"]: {
                        "max_lsb": round(r["max_lsb"], 4),
                        "mean_lsb": round(r["mean_lsb"], 4),
                    }
                    for r in rows
                },
            }
        )
    )


if __name__ == "__main__":
    main()
