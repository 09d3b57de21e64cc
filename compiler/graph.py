"""The quantisable decoder program: a straight list of tensor operations.

One list of :class:`Op` describes a decoder stage. Three interpreters walk the same
list, so they cannot drift apart:

- :mod:`.calibrate` runs it in float64 and records every tensor's range;
- :mod:`.qref` runs it in the hardware's integer arithmetic on whole tensors;
- :mod:`.lower` emits instructions for it.

Tensors are named; each op reads and writes names. ``rows`` (prompt length in prefill,
1 in decode) and ``pos0`` (position of the first row) are supplied by the interpreter.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Literal

import numpy as np


@dataclass(frozen=True)
class Linear:
    x: str
    weight: str  #: key into DecoderWeights.linears
    out: str
    wide: bool = False  #: INT16 output (feeds the residual stream or the logits)


@dataclass(frozen=True)
class Norm:
    x: str
    params: str  #: key into DecoderWeights.norms
    out: str


@dataclass(frozen=True)
class Rope:
    x: str  #: rotated in place, every head_dim chunk of each row
    head_dim: int


@dataclass(frozen=True)
class Attention:
    q: str
    k: str
    v: str
    out: str
    layer: int
    heads: int
    kv_heads: int
    head_dim: int


@dataclass(frozen=True)
class Add:
    a: str
    b: str
    out: str
    wide: bool = True


@dataclass(frozen=True)
class Mul:
    a: str
    b: str
    out: str


@dataclass(frozen=True)
class Act:
    x: str
    fn: Literal["silu", "gelu_tanh", "gelu_erf", "relu"]
    out: str


Op = Linear | Norm | Rope | Attention | Add | Mul | Act


@dataclass(frozen=True)
class NormParams:
    kind: Literal["rms", "layer"]
    gamma: np.ndarray
    beta: np.ndarray | None
    eps: float


@dataclass(frozen=True)
class LinearParams:
    w: np.ndarray  #: float [out][in]
    b: np.ndarray | None


@dataclass(frozen=True)
class DecoderProgram:
    """Everything the three interpreters need, independent of any ONNX detail."""

    ops: tuple[Op, ...]
    linears: dict[str, LinearParams]
    norms: dict[str, NormParams]
    embed: np.ndarray  #: float [vocab][hidden]
    positions: np.ndarray | None  #: float [max_positions][hidden] learned positions
    position_offset: int  #: row of position 0 in ``positions`` (OPT: 2)
    rope_theta: float | None
    layers: int
    kv_heads: int
    head_dim: int
    vocab: int
    hidden: int
    input: str = "h0"
    output: str = "logits"
    wide: frozenset[str] = field(default_factory=frozenset)  #: INT16 tensors
    n_positions: int = 0  #: rows of the learned position table (0: none)

    def embed_rows(self, ids: np.ndarray, pos0: int) -> np.ndarray:
        """Float input rows: token embeddings plus learned positions if any."""
        x = self.embed[np.asarray(ids)]
        if self.positions is not None:
            x = (
                x
                + self.positions[
                    self.position_offset + pos0 : self.position_offset + pos0 + len(ids)
                ]
            )
        return x


def wide_tensors(ops: tuple[Op, ...], input_name: str) -> frozenset[str]:
    """Tensors carried as INT16: the residual stream and wide linear outputs."""
    wide = {input_name}
    for op in ops:
        if isinstance(op, (Linear, Add)) and op.wide:
            wide.add(op.out)
    return frozenset(wide)


@dataclass(frozen=True)
class DecoderShape:
    """The structure of a decoder-only transformer, as the frontend recognises it."""

    layers: int
    hidden: int
    heads: int
    kv_heads: int
    head_dim: int
    intermediate: int
    vocab: int
    mlp: Literal["swiglu", "gelu_tanh", "gelu_erf", "relu"]
    rope: bool


def decoder_ops(shape: DecoderShape) -> tuple[Op, ...]:
    """The op list of a pre-norm decoder: the same for Llama, OPT and GPT-2 families.

    Weight keys: ``l{i}.{q,k,v,o}``, ``l{i}.{gate,up,down}`` (SwiGLU) or
    ``l{i}.{fc1,fc2}``, ``lm_head``; norm keys ``l{i}.ln1``, ``l{i}.ln2``, ``final_norm``.
    """
    ops: list[Op] = []
    h = "h0"
    d = shape.head_dim
    for i in range(shape.layers):
        p = f"l{i}."
        ops.append(Norm(h, p + "ln1", p + "attn_in"))
        for w in ("q", "k", "v"):
            ops.append(Linear(p + "attn_in", p + w, p + w))
        if shape.rope:
            ops += [Rope(p + "q", d), Rope(p + "k", d)]
        ops.append(
            Attention(p + "q", p + "k", p + "v", p + "ctx", i, shape.heads, shape.kv_heads, d)
        )
        ops.append(Linear(p + "ctx", p + "o", p + "attn_out", wide=True))
        ops.append(Add(h, p + "attn_out", p + "h_mid"))
        ops.append(Norm(p + "h_mid", p + "ln2", p + "mlp_in"))
        if shape.mlp == "swiglu":
            ops += [
                Linear(p + "mlp_in", p + "gate", p + "gate"),
                Linear(p + "mlp_in", p + "up", p + "up"),
                Act(p + "gate", "silu", p + "act"),
                Mul(p + "act", p + "up", p + "prod"),
                Linear(p + "prod", p + "down", p + "mlp_out", wide=True),
            ]
        else:
            ops += [
                Linear(p + "mlp_in", p + "fc1", p + "fc1"),
                Act(p + "fc1", shape.mlp, p + "act"),
                Linear(p + "act", p + "fc2", p + "mlp_out", wide=True),
            ]
        nxt = f"h{i + 1}"
        ops.append(Add(p + "h_mid", p + "mlp_out", nxt))
        h = nxt
    ops.append(Norm(h, "final_norm", "final"))
    ops.append(Linear("final", "lm_head", "logits", wide=True))
    return tuple(ops)


def linear_shapes(shape: DecoderShape) -> dict[str, tuple[int, int]]:
    """``[out][in]`` of every Linear weight key that :func:`decoder_ops` uses."""
    d, hd = shape.hidden, shape.head_dim
    per_layer = {
        "q": (shape.heads * hd, d),
        "k": (shape.kv_heads * hd, d),
        "v": (shape.kv_heads * hd, d),
        "o": (d, shape.heads * hd),
    }
    if shape.mlp == "swiglu":
        per_layer |= {
            "gate": (shape.intermediate, d),
            "up": (shape.intermediate, d),
            "down": (d, shape.intermediate),
        }
    else:
        per_layer |= {"fc1": (shape.intermediate, d), "fc2": (d, shape.intermediate)}
    out = {f"l{i}.{name}": dims for i in range(shape.layers) for name, dims in per_layer.items()}
    out["lm_head"] = (shape.vocab, d)
    return out


def shape_program(
    shape: DecoderShape,
    *,
    rope_theta: float | None = 10000.0,
    n_positions: int = 0,
    position_offset: int = 0,
) -> DecoderProgram:
    """A DecoderProgram with structure but no weights, for shape-only compilation."""
    ops = decoder_ops(shape)
    return DecoderProgram(
        ops,
        {},
        {},
        np.zeros((0, shape.hidden)),
        None,
        position_offset,
        rope_theta if shape.rope else None,
        shape.layers,
        shape.kv_heads,
        shape.head_dim,
        shape.vocab,
        shape.hidden,
        wide=wide_tensors(ops, "h0"),
        n_positions=n_positions,
    )


def random_decoder(
    shape: DecoderShape,
    *,
    norm: Literal["rms", "layer"] = "rms",
    bias: bool = False,
    learned_positions: int = 0,
    scale: float = 0.2,
    seed: int = 0,
) -> DecoderProgram:
    """A decoder with random weights, for tests and examples that need no ONNX file."""
    rng = np.random.default_rng(seed)
    ops = decoder_ops(shape)
    d, hd = shape.hidden, shape.head_dim
    dims = linear_shapes(shape)
    linears = {}
    norms = {}
    for op in ops:
        if isinstance(op, Linear):
            shp = dims[op.weight]
            linears[op.weight] = LinearParams(
                rng.normal(size=shp) * scale,
                rng.normal(size=shp[0]) * scale if bias and op.weight != "lm_head" else None,
            )
        elif isinstance(op, Norm):
            norms[op.params] = NormParams(
                norm,
                1.0 + rng.normal(size=d) * 0.1,
                rng.normal(size=d) * 0.1 if norm == "layer" else None,
                1e-5,
            )
    positions = rng.normal(size=(learned_positions, d)) * scale if learned_positions else None
    return DecoderProgram(
        ops,
        linears,
        norms,
        rng.normal(size=(shape.vocab, d)) * 1.0,
        positions,
        0,
        10000.0 if shape.rope else None,
        shape.layers,
        shape.kv_heads,
        hd,
        shape.vocab,
        d,
        wide=wide_tensors(ops, "h0"),
        n_positions=learned_positions,
    )


#: Random decoders of the three families the tests and benchmarks compile, at one small
#: shape: family -> (shape, keyword arguments of :func:`random_decoder`).
#: The one-layer Llama-style decoder the RTL tests, the cycle-model checks and the RTL
#: speed benchmark share: small enough that tiny's Verilated core runs both stages of it
#: in seconds, with every decoder op (RMSNorm, RoPE, attention, SwiGLU) present.
ONE_LAYER = DecoderShape(
    layers=1,
    hidden=32,
    heads=2,
    kv_heads=2,
    head_dim=16,
    intermediate=64,
    vocab=64,
    mlp="swiglu",
    rope=True,
)

FAMILIES: dict[str, tuple[DecoderShape, dict]] = {
    "llama-gqa": (DecoderShape(2, 96, 6, 2, 16, 200, 300, "swiglu", True), {}),
    "gpt2": (
        DecoderShape(2, 96, 6, 6, 16, 200, 300, "gelu_tanh", False),
        dict(norm="layer", bias=True, learned_positions=64),
    ),
    "opt": (
        DecoderShape(2, 96, 6, 6, 16, 200, 300, "relu", False),
        dict(norm="layer", bias=True, learned_positions=64),
    ),
}
