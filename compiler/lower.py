"""Lowering a quantised decoder to a program: one section per stage and length.

Memory plan: weights, norm parameters, activation tables and the RoPE table are
read-only segments; each layer's K and V caches are INT8 ``[kv_head][position][d]``
segments; the input rows (INT16 embeddings, gathered by the host) and the INT16 logits
have one segment each, shared by all sections. Activations stay in the ACT buffer for
the whole section (always-on-chip decode): only weights and KV-cache rows move.

Sections: ``prefill_L`` runs a prompt of ``L`` tokens (stage ``prefill``, length L);
``decode_P`` runs one token at position ``P`` against ``P`` cached tokens (stage
``decode``, length P). Length buckets that share one parameterised stream are the
length-adaptive compiler's job (issue 4); here every length has its own section.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from flightforge.arch import ArchConfig
from flightforge.isa import Buf, MiscOp
from flightforge.program import Program

from . import kernels
from .builder import Builder, Tile
from .graph import Act, Add, Attention, Linear, Mul, Norm, Rope
from .memory import CompileError
from .qdecoder import QuantDecoder

TABLE_OPS = {"silu": MiscOp.SILU, "gelu_tanh": MiscOp.GELU, "gelu_erf": MiscOp.GELU,
             "relu": MiscOp.RELU}


@dataclass(frozen=True)
class _Placed:
    linears: dict[str, kernels.PlacedLinear]
    norms: dict[str, kernels.PlacedParams]
    tables: dict[str, kernels.PlacedParams]
    rope: int
    k_cache: dict[int, int]
    v_cache: dict[int, int]
    input: int
    logits: int


def _place(b: Builder, qd: QuantDecoder, max_len: int, with_data: bool) -> _Placed:
    prog, sc = qd.prog, qd.scales
    linears, norms, tables = {}, {}, {}
    for op in prog.ops:
        if isinstance(op, Linear):
            linears[op.weight] = kernels.place_linear(b, op.weight, qd.linears[op.weight],
                                                      sc[op.x], sc[op.out], with_data)
        elif isinstance(op, Norm):
            norms[op.params] = kernels.place_params(b, f"{op.params}.params", qd.norms[op.params].params())
        elif isinstance(op, Act):
            if op.fn not in TABLE_OPS:
                raise CompileError(f"activation {op.fn!r} of {op.out!r} has no SFU operation")
            tables[op.out] = kernels.place_params(b, f"{op.out}.table",
                                                  qd.tables[op.out].astype(np.int8))
    rope = 0
    if prog.rope_theta is not None:
        table = kernels.rope_table_bytes(max_len, prog.head_dim, prog.rope_theta)
        rope = b.place("rope_table", "const", table.nbytes, table)
    if qd.positions is not None:
        b.place("embed_positions", "const", qd.positions.size * 2,
                qd.positions.astype("<i2") if with_data else None)
    b.place("embed_tokens", "const", qd.embed.size * 2, qd.embed.astype("<i2") if with_data else None)
    cache = prog.kv_heads * max_len * prog.head_dim
    k_cache = {l: b.place(f"layer{l}.k_cache", "kv", cache) for l in range(prog.layers)}
    v_cache = {l: b.place(f"layer{l}.v_cache", "kv", cache) for l in range(prog.layers)}
    inp = b.place("input", "input", max_len * prog.hidden * 2)
    logits = b.place("logits", "output", max_len * prog.vocab * 2)
    return _Placed(linears, norms, tables, rope, k_cache, v_cache, inp, logits)


def _last_uses(qd: QuantDecoder) -> dict[str, int]:
    last: dict[str, int] = {}
    for i, op in enumerate(qd.prog.ops):
        for name in _reads(op):
            last[name] = i
    last[qd.prog.output] = len(qd.prog.ops)
    return last


def _reads(op) -> tuple[str, ...]:
    if isinstance(op, (Linear, Norm, Act)):
        return (op.x,)
    if isinstance(op, Rope):
        return (op.x,)
    if isinstance(op, Attention):
        return (op.q, op.k, op.v)
    return (op.a, op.b)


def _emit_stage(b: Builder, qd: QuantDecoder, pl: _Placed, rows: int, pos0: int, max_len: int) -> None:
    prog, sc = qd.prog, qd.scales
    last = _last_uses(qd)
    env: dict[str, Tile] = {}

    def new(name: str, cols: int) -> Tile:
        t = b.tile(Buf.ACT, rows, cols, qd.dtype(name), name, sc[name])
        env[name] = t
        return t

    b.load(new(prog.input, prog.hidden), pl.input)
    for i, op in enumerate(prog.ops):
        if isinstance(op, Linear):
            p = pl.linears[op.weight]
            kernels.linear(b, env[op.x], p, new(op.out, p.n))
        elif isinstance(op, Norm):
            x = env[op.x]
            nq = qd.norms[op.params]
            kernels.norm(b, x, pl.norms[op.params], new(op.out, x.cols), layer=nq.beta is not None,
                         eps=nq.eps, shift=nq.shift)
        elif isinstance(op, Rope):
            kernels.rope(b, env[op.x], pl.rope, pos0, op.head_dim)
        elif isinstance(op, Attention):
            _attention(b, qd, pl, env, op, new(op.out, op.heads * op.head_dim), rows, pos0, max_len)
        elif isinstance(op, Add):
            kernels.add(b, env[op.a], env[op.b], new(op.out, env[op.a].cols))
        elif isinstance(op, Mul):
            kernels.mul(b, env[op.a], env[op.b], new(op.out, env[op.a].cols))
        elif isinstance(op, Act):
            x = env[op.x]
            kernels.table_op(b, TABLE_OPS[op.fn], x, pl.tables[op.out], new(op.out, x.cols))
        for name in _reads(op):
            if last[name] == i and name in env:
                b.free(env.pop(name))
    out = env.pop(prog.output)
    b.store(out, pl.logits)
    b.free(out, *env.values())


def _attention(b: Builder, qd: QuantDecoder, pl: _Placed, env: dict[str, Tile], op: Attention,
               out: Tile, rows: int, pos0: int, max_len: int) -> None:
    d = op.head_dim
    q, k, v = env[op.q], env[op.k], env[op.v]
    per_head = max_len * d
    for j in range(op.kv_heads):
        for src, base in ((k, pl.k_cache[op.layer]), (v, pl.v_cache[op.layer])):
            b.transfer(False, Buf.ACT, src.at(0, j * d), base + j * per_head + pos0 * d,
                       rows, d, src.stride, d)
    group = op.heads // op.kv_heads
    for h in range(op.heads):
        j = h // group
        kernels.attention(b, q.view(col=h * d, cols=d), pl.k_cache[op.layer] + j * per_head,
                          pl.v_cache[op.layer] + j * per_head, pos0 + rows, pos0,
                          qd.scales[op.k], qd.scales[op.v], out.view(col=h * d, cols=d))


def lower_decoder(qd: QuantDecoder, arch: ArchConfig, max_len: int, *, with_data: bool = True,
                  metadata: dict | None = None) -> Program:
    """Compile every prefill length 1..max_len and decode position 1..max_len-1."""
    if max_len < 1:
        raise CompileError(f"max_len must be at least 1, not {max_len}")
    b = Builder(arch)
    pl = _place(b, qd, max_len, with_data)
    for length in range(1, max_len + 1):
        _emit_stage(b, qd, pl, length, 0, max_len)
        b.end_section(f"prefill_{length}", "prefill", length, length)
    for pos in range(1, max_len):
        _emit_stage(b, qd, pl, 1, pos, max_len)
        b.end_section(f"decode_{pos}", "decode", pos, pos)
    prog = qd.prog
    b.metadata.update(metadata or {})
    b.metadata["decoder"] = {
        "max_len": max_len, "hidden": prog.hidden, "vocab": prog.vocab,
        "input_segment": "input", "input_scale": qd.scales[prog.input],
        "logits_segment": "logits", "logits_scale": qd.scales[prog.output],
        "embed_segment": "embed_tokens",
        "positions_segment": "embed_positions" if qd.positions is not None else None,
        "position_offset": prog.position_offset,
        "weight_plans": {k: {"prec": v.prec.name, "group": v.group, "sparse": v.sparse.name}
                         for k, v in qd.plans.items()},
    }
    return b.program()
