"""Decoder structure from a Hugging Face ``config.json``, for shape-only compilation.

Full-size models are compiled for performance work without their weights: the config
gives every dimension, and :func:`flightforge.compiler.quant.qdecoder.shape_only_decoder`
turns the structure into a program with real instructions, addresses and sizes.
Supported ``model_type``: llama (Llama 2, Llama 3 with grouped-query attention),
opt and gpt2. A missing or inconsistent field is an error naming the file and field.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any

from flightforge.files import read_json

from ..errors import CompileError
from ..graph import DecoderShape

SUPPORTED = ("llama", "mistral", "opt", "gpt2")
GPT2_ACTIVATIONS = {
    "gelu_new": "gelu_tanh",
    "gelu_pytorch_tanh": "gelu_tanh",
    "gelu": "gelu_erf",
    "relu": "relu",
}


@dataclass(frozen=True)
class HFStructure:
    """What shape-only compilation needs from a config."""

    name: str
    shape: DecoderShape
    norm: str  #: "rms" or "layer"
    rope_theta: float | None
    n_positions: int  #: learned position rows (0 with RoPE)
    position_offset: int  #: OPT stores position p at row p + 2
    tied_embeddings: bool


def _field(cfg: dict[str, Any], source: str, *names: str, default: Any = None) -> Any:
    for n in names:
        if n in cfg and cfg[n] is not None:
            return cfg[n]
    if default is not None:
        return default
    raise CompileError(f"{source}: field {' or '.join(repr(n) for n in names)} is missing")


def structure_from_config(cfg: dict[str, Any], source: str = "<config>") -> HFStructure:
    kind = _field(cfg, source, "model_type")
    if kind not in SUPPORTED:
        raise CompileError(
            f"{source}: model_type {kind!r} is not supported (" + ", ".join(SUPPORTED) + ")"
        )
    f = lambda *names, default=None: _field(cfg, source, *names, default=default)  # noqa: E731
    hidden = int(f("hidden_size", "n_embd"))
    heads = int(f("num_attention_heads", "n_head"))
    layers = int(f("num_hidden_layers", "n_layer"))
    vocab = int(f("vocab_size"))
    if kind in ("llama", "mistral"):
        kv = int(f("num_key_value_heads", default=heads))
        head_dim = int(f("head_dim", default=hidden // heads))
        act = f("hidden_act", default="silu")
        if act != "silu":
            raise CompileError(f"{source}: field 'hidden_act' is {act!r}; Llama MLPs use 'silu'")
        shape = DecoderShape(
            layers, hidden, heads, kv, head_dim, int(f("intermediate_size")), vocab, "swiglu", True
        )
        result = HFStructure(
            kind,
            shape,
            "rms",
            float(f("rope_theta", default=10000.0)),
            0,
            0,
            bool(f("tie_word_embeddings", default=False)),
        )
    elif kind == "opt":
        if f("word_embed_proj_dim", default=hidden) != hidden:
            raise CompileError(
                f"{source}: field 'word_embed_proj_dim' differs from hidden_size; "
                f"OPT's embedding projection is not supported"
            )
        if not f("do_layer_norm_before", default=True):
            raise CompileError(
                f"{source}: field 'do_layer_norm_before' is false; post-norm OPT "
                f"(350m) is not supported"
            )
        act = f("activation_function", default="relu")
        if act != "relu":
            raise CompileError(f"{source}: field 'activation_function' is {act!r}, not 'relu'")
        shape = DecoderShape(
            layers, hidden, heads, heads, hidden // heads, int(f("ffn_dim")), vocab, "relu", False
        )
        result = HFStructure(
            kind, shape, "layer", None, int(f("max_position_embeddings")) + 2, 2, True
        )
    else:  # gpt2
        act = f("activation_function", default="gelu_new")
        if act not in GPT2_ACTIVATIONS:
            raise CompileError(
                f"{source}: field 'activation_function' is {act!r}, not one of "
                + ", ".join(GPT2_ACTIVATIONS)
            )
        inner = int(f("n_inner", default=4 * hidden))
        shape = DecoderShape(
            layers,
            hidden,
            heads,
            heads,
            hidden // heads,
            inner,
            vocab,
            GPT2_ACTIVATIONS[act],
            False,
        )
        result = HFStructure(
            kind, shape, "layer", None, int(f("n_positions", "max_position_embeddings")), 0, True
        )
    s = result.shape
    if s.heads % s.kv_heads or s.head_dim % 2:
        raise CompileError(
            f"{source}: {s.heads} heads over {s.kv_heads} KV heads with head_dim "
            f"{s.head_dim} is not a valid attention shape"
        )
    return result


def load_structure(path: str | Path) -> HFStructure:
    path = Path(path)
    cfg = read_json(path, CompileError)
    if not isinstance(cfg, dict):
        raise CompileError(f"{path}: expected a JSON object")
    return structure_from_config(cfg, str(path))
