"""Lowering a quantised decoder to a program: one section per stage and length.

Memory plan: weights, norm parameters, activation tables and the RoPE table are
read-only segments; each layer's K and V caches are INT8 ``[kv_head][position][d]``
segments; the input rows (INT16 embeddings, gathered by the host) and the INT16 logits
have one segment each, shared by all sections. Activations stay in the ACT buffer for
the whole section (always-on-chip decode): only weights and KV-cache rows move.

Sections: one per length bucket and stage (see :mod:`.buckets`). ``prefill_L`` runs a
prompt of ``L`` tokens; ``decode_P`` runs one token at position ``P`` against ``P``
cached tokens; a bucket ``prefill_lo_hi`` / ``decode_lo_hi`` serves every length in
``lo..hi`` with one stream, run with the actual length (``D = length - lo``): a prefill
bucket processes ``hi`` rows (causal attention keeps the real rows exact; the padding
rows only write KV-cache positions that decoding overwrites before reading them); a
decode bucket moves its input row, RoPE rows, KV-cache row, causal mask and logits row
with ``D`` and attends over the padded context ``hi + 1`` (the mask zeroes the padding).

A prompt too long for the ACT buffer is processed in chunks of rows (chunked prefill):
each chunk runs every layer with its rows at positions ``pos0..`` and attends to the
KV cache the earlier chunks wrote, exactly as a decode step does for one row. The chunk
is the largest that fits at the longest context, found once per compile.
"""

from __future__ import annotations

import contextlib
import dataclasses
from collections.abc import Iterable
from dataclasses import dataclass

import numpy as np

from flightforge import progress
from flightforge.arch import ArchConfig
from flightforge.generate import prefill_steps
from flightforge.isa import Buf, DType, MiscOp
from flightforge.program import Program

from ..errors import CompileError
from ..graph import Act, Add, Attention, Linear, Mul, Norm, Rope
from ..quant.fixed_point import NEG_TABLE, rope_table_bytes, rope_table_nbytes
from ..quant.qdecoder import QuantDecoder
from . import kernels
from .buckets import BucketPlan, LinearShape, bucket_name, estimate_cycles
from .builder import Builder, Tile

TABLE_OPS = {
    "silu": MiscOp.SILU,
    "gelu_tanh": MiscOp.GELU,
    "gelu_erf": MiscOp.GELU,
    "relu": MiscOp.RELU,
}


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
    positions: int  #: rows of the KV caches, input and logits segments
    neg: kernels.PlacedParams | None  #: the LUT of the 16-bit split (None: 8-bit activations)
    kv_plane: int  #: bytes from a cache's high plane to its low plane (0: INT8 caches)


def _place(b: Builder, qd: QuantDecoder, max_len: int, with_data: bool) -> _Placed:
    """Place every segment for ``max_len`` positions (more than the model's context when
    a padded prefill chunk may run past it)."""
    prog, sc = qd.prog, qd.scales
    linears, norms, tables = {}, {}, {}
    for op in prog.ops:
        if isinstance(op, Linear):
            linears[op.weight] = kernels.place_linear(
                b, op.weight, qd.linear(op.weight), sc[op.x], sc[op.out], op.x in qd.split
            )
        elif isinstance(op, Norm):
            norms[op.params] = kernels.place_params(
                b, f"{op.params}.params", qd.norms[op.params].params(), with_data
            )
        elif isinstance(op, Act):
            if op.fn not in TABLE_OPS:
                raise CompileError(f"activation {op.fn!r} of {op.out!r} has no SFU operation")
            dt = "<i2" if qd.dtype(op.out) == DType.INT16 else np.int8
            tables[op.out] = kernels.place_params(
                b, f"{op.out}.table", qd.tables[op.out].astype(dt), with_data
            )
    rope = 0
    if prog.rope_theta is not None:  # its data is built below, once every segment fits
        rope = b.place("rope_table", "const", rope_table_nbytes(max_len, prog.head_dim))
    if prog.n_positions:
        b.place(
            "embed_positions",
            "const",
            prog.n_positions * prog.hidden * 2,
            None if qd.positions is None or not with_data else qd.positions.astype("<i2"),
        )
    b.place(
        "embed_tokens",
        "const",
        prog.vocab * prog.hidden * 2,
        None if qd.embed is None or not with_data else qd.embed.astype("<i2"),
    )
    cache = prog.kv_heads * max_len * prog.head_dim
    planes = 2 if any(isinstance(op, Attention) and op.k in qd.split for op in prog.ops) else 1
    k_cache = {i: b.place(f"layer{i}.k_cache", "kv", planes * cache) for i in range(prog.layers)}
    v_cache = {i: b.place(f"layer{i}.v_cache", "kv", planes * cache) for i in range(prog.layers)}
    inp = b.place("input", "input", max_len * prog.hidden * 2)
    logits = b.place("logits", "output", max_len * prog.vocab * 2)
    neg = (
        kernels.place_params(b, "split_negate.table", NEG_TABLE.astype(np.int8), with_data)
        if qd.split
        else None
    )
    if prog.rope_theta is not None and with_data:
        b.ext.fill("rope_table", rope_table_bytes(max_len, prog.head_dim, prog.rope_theta))
    return _Placed(
        linears,
        norms,
        tables,
        rope,
        k_cache,
        v_cache,
        inp,
        logits,
        max_len,
        neg,
        cache if planes == 2 else 0,
    )


def _last_uses(ops: tuple, output: str) -> dict[str, int]:
    last: dict[str, int] = {}
    for i, op in enumerate(ops):
        for name in _reads(op):
            last[name] = i
    last[output] = len(ops)
    return last


def _reads(op) -> tuple[str, ...]:
    if isinstance(op, (Linear, Norm, Act)):
        return (op.x,)
    if isinstance(op, Rope):
        return (op.x,)
    if isinstance(op, Attention):
        return (op.q, op.k, op.v)
    return (op.a, op.b)


HEADS = ("all", "last", "none")


def _emit_stage(
    b: Builder,
    qd: QuantDecoder,
    pl: _Placed,
    rows: int,
    pos0: int,
    max_len: int,
    head: str,
    ops: tuple | None = None,
    *,
    dyn: bool = False,
    ctx: int | None = None,
    last_row: int | None = None,
    last_dyn: bool = False,
) -> None:
    """Every layer for ``rows`` tokens at positions ``pos0..``.

    The input rows come from row ``pos0`` of the input segment. ``head`` says which
    logits to compute: ``all`` rows (written from row ``pos0`` of the logits segment),
    the ``last`` row only (row ``last_row``, by
    default the tile's last, written to row 0), or ``none`` (an inner prefill chunk,
    which only fills the KV caches).

    Length buckets: ``dyn`` makes every position ``pos0 + D`` (a decode bucket), with
    attention over the padded context ``ctx``; ``last_dyn`` makes the last row
    ``last_row + D`` (a prefill bucket computing last-row logits only).
    """
    prog, sc = qd.prog, qd.scales
    ops = prog.ops if ops is None else ops
    if head == "none":
        ops = ops[
            : next(
                i
                for i, op in enumerate(ops)
                if isinstance(op, Norm) and op.out == _final_norm_output(qd)
            )
        ]
    last_only = head == "last"
    residual = {prog.input} | {op.out for op in ops if isinstance(op, Add)}
    last = _last_uses(ops, prog.output)
    env: dict[str, Tile] = {}  #: what ops read: a tile, or a row view of one
    owner: dict[str, Tile] = {}  #: the allocation behind each name, for freeing
    halves: dict[str, tuple[Tile, Tile]] = {}  #: INT8 halves of 16-bit engine inputs
    out_rows = rows

    def engine_input(name: str) -> Tile | tuple[Tile, Tile]:
        """The tile the matrix engine reads; a 16-bit one is split once, at first use."""
        if name not in qd.split:
            return env[name]
        if name not in halves:
            halves[name] = kernels.split(b, env[name], pl.neg)
        return halves[name]

    def new(name: str, cols: int) -> Tile:
        t = b.tile(
            Buf.ACT, out_rows, cols, qd.dtype(name), name, sc[name], long_lived=name in residual
        )
        env[name] = owner[name] = t
        return t

    b.load(
        new(prog.input, prog.hidden),
        pl.input + pos0 * prog.hidden * 2,
        dyn_step=prog.hidden * 2 if dyn else 0,
    )
    for i, op in enumerate(ops):
        if last_only and isinstance(op, Norm) and op.out == _final_norm_output(qd) and rows > 1:
            env[op.x] = env[op.x].view(
                row=rows - 1 if last_row is None else last_row, rows=1
            )  # freed through its parent below
            out_rows = 1
        if isinstance(op, Linear):
            p = pl.linears[op.weight]
            kernels.linear(b, engine_input(op.x), p, new(op.out, p.n))
        elif isinstance(op, Norm):
            x = env[op.x]
            nq = qd.norms[op.params]
            a_step = (
                x.stride if last_dyn and out_rows == 1 and op.out == _final_norm_output(qd) else 0
            )
            kernels.norm(
                b,
                x,
                pl.norms[op.params],
                new(op.out, x.cols),
                layer=nq.beta is not None,
                eps=nq.eps,
                shift=nq.shift,
                a_step=a_step,
            )
        elif isinstance(op, Rope):
            if op.x in halves:
                raise CompileError(f"{op.x!r} is rotated after the matrix engine read it")
            kernels.rope(b, env[op.x], pl.rope, pos0, op.head_dim, dyn)
        elif isinstance(op, Attention):
            _attention(
                b,
                qd,
                pl,
                env,
                op,
                new(op.out, op.heads * op.head_dim),
                rows,
                pos0,
                max_len,
                dyn,
                ctx if ctx is not None else pos0 + rows,
                engine_input,
            )
        elif isinstance(op, Add):
            kernels.add(b, env[op.a], env[op.b], new(op.out, env[op.a].cols))
        elif isinstance(op, Mul):
            kernels.mul(b, env[op.a], env[op.b], new(op.out, env[op.a].cols))
        elif isinstance(op, Act):
            x = env[op.x]
            kernels.table_op(b, TABLE_OPS[op.fn], x, pl.tables[op.out], new(op.out, x.cols))
        for name in _reads(op):
            if last[name] == i and name in env:
                del env[name]
                b.free(owner.pop(name), *halves.pop(name, ()))
    if head != "none":
        b.store(
            env[prog.output],
            pl.logits + (0 if last_only else pos0 * prog.vocab * 2),
            dyn_step=prog.vocab * 2 if dyn and not last_only else 0,
        )
    b.free(*owner.values())


def _final_norm_output(qd: QuantDecoder) -> str:
    """The tensor the LM head reads: narrowing starts at the norm that produces it."""
    head = next(
        op for op in reversed(qd.prog.ops) if isinstance(op, Linear) and op.out == qd.prog.output
    )
    return head.x


def _attention(
    b: Builder,
    qd: QuantDecoder,
    pl: _Placed,
    env: dict[str, Tile],
    op: Attention,
    out: Tile,
    rows: int,
    pos0: int,
    max_len: int,
    dyn: bool,
    ctx: int,
    engine_input,
) -> None:
    """Stores this pass's k and v rows into the caches, then attends head by head. With
    16-bit q, k, v (split tensors) the caches hold k and v as high and low INT8 planes,
    ``pl.kv_plane`` bytes apart."""
    d = op.head_dim
    per_head = pl.positions * d
    wide = op.q in qd.split
    q = engine_input(op.q)  # the halves (hi, lo) of a 16-bit q
    planes = {name: engine_input(name) if wide else (env[name],) for name in (op.k, op.v)}
    for j in range(op.kv_heads):
        for name, base in ((op.k, pl.k_cache[op.layer]), (op.v, pl.v_cache[op.layer])):
            for plane, src in enumerate(planes[name]):
                b.transfer(
                    False,
                    Buf.ACT,
                    src.at(0, j * d),
                    base + plane * pl.kv_plane + j * per_head + pos0 * d,
                    rows,
                    d,
                    src.stride,
                    d,
                    dyn_step=d if dyn else 0,
                )
    group = op.heads // op.kv_heads
    for h in range(op.heads):
        k_base, v_base = (c[op.layer] + h // group * per_head for c in (pl.k_cache, pl.v_cache))
        head_out = out.view(col=h * d, cols=d)
        if wide:
            kernels.attention16(
                b,
                tuple(t.view(col=h * d, cols=d) for t in q),
                qd.scales[op.q],
                (k_base, k_base + pl.kv_plane),
                (v_base, v_base + pl.kv_plane),
                ctx,
                pos0,
                qd.scales[op.k],
                qd.scales[op.v],
                head_out,
                pl.neg,
                dyn,
            )
        else:
            kernels.attention(
                b,
                q.view(col=h * d, cols=d),
                k_base,
                v_base,
                ctx,
                pos0,
                qd.scales[op.k],
                qd.scales[op.v],
                head_out,
                dyn,
            )


def prefill_chunk(
    qd: QuantDecoder, arch: ArchConfig, pl: _Placed, max_len: int, last_only: bool
) -> int:
    """The most prompt rows one pass can hold on chip at the longest context.

    Found by lowering trial chunks on scratch builders (bisection), with the very
    allocator and kernels of the real pass. Every layer has the same shapes, so a trial
    runs the first layer and the LM head only. A chunk larger than the MM tile height is
    rounded down to whole tiles.
    """
    ops = _one_layer(qd)

    head = "last" if last_only else "all"

    def fits(rows: int) -> bool:
        try:
            _emit_stage(Builder(arch), qd, pl, rows, max_len - rows, max_len, head, ops)
        except CompileError:
            return False
        return True

    if not fits(1):
        _emit_stage(Builder(arch), qd, pl, 1, max_len - 1, max_len, head)  # raises, naming it
    lo, hi = 1, max_len
    while lo < hi:
        mid = (lo + hi + 1) // 2
        lo, hi = (mid, hi) if fits(mid) else (lo, mid - 1)
    # Whole MM row tiles: a pass of a few rows past a tile costs a whole extra tile.
    tile = arch.mpe.mm.m
    return lo // tile * tile if lo > tile else lo


def _one_layer(qd: QuantDecoder, layers: int = 1) -> tuple:
    """The first ``layers`` layers' ops followed by the final norm and LM head."""
    ops = qd.prog.ops
    starts = [i for i, op in enumerate(ops) if isinstance(op, Norm) and _layer_input(op.x)]
    head = _final_norm_output(qd)
    tail = [
        op
        for op in ops
        if isinstance(op, (Norm, Linear)) and (op.out == head or op.out == qd.prog.output)
    ]
    if len(starts) <= layers:
        return ops
    end = starts[layers]
    return (*ops[:end], dataclasses.replace(tail[0], x=ops[end].x), *tail[1:])


def _layer_input(name: str) -> bool:
    return name.startswith("h") and name[1:].isdigit()


BUCKET_POLICIES = ("per-length", "fixed", "auto")


def make_plan(
    qd: QuantDecoder,
    arch: ArchConfig,
    max_len: int,
    policy: BucketPlan | str,
    bound: float = 0.02,
    chunk: int = 1,
    latency: str = "cycle",
) -> BucketPlan:
    """The bucket plan a policy gives for this model and target (``chunk``: prefill rows
    per pass; ``latency``: the auto policy's model, ``analytical`` or ``cycle``)."""
    if isinstance(policy, BucketPlan):
        return policy
    if policy == "per-length":
        return BucketPlan.per_length(max_len)
    if policy == "fixed":
        return BucketPlan.fixed(max_len, chunk=chunk, tile=arch.mpe.mm.m)
    if policy == "auto":
        model = (
            cycle_latency_model(qd, arch, max_len)
            if latency == "cycle"
            else latency_model(qd, arch)
        )
        return BucketPlan.auto(max_len, model, bound, chunk)
    raise CompileError(
        f"unknown bucket policy {policy!r}; choose one of {', '.join(BUCKET_POLICIES)}"
    )


def latency_model(qd: QuantDecoder, arch: ArchConfig):
    """``latency(rows, ctx)``: the analytical cycles of one pass of ``rows`` rows attending
    over ``ctx`` positions (see :func:`.buckets.estimate_cycles`)."""
    prog = qd.prog
    shapes = []
    for op in prog.ops:
        if isinstance(op, Linear):
            lay = qd.linear(op.weight)
            lay = getattr(lay, "layout", lay)
            shapes.append(
                LinearShape(
                    lay.n,
                    lay.k,
                    lay.n * (lay.ext_row_bytes + lay.meta_row_bytes + lay.record_bytes),
                )
            )
    heads = next(op.heads for op in prog.ops if isinstance(op, Attention))

    def latency(rows: int, ctx: int) -> float:
        return estimate_cycles(
            arch,
            shapes,
            layers=prog.layers,
            heads=heads,
            kv_heads=prog.kv_heads,
            head_dim=prog.head_dim,
            rows=rows,
            ctx=ctx,
            act16=bool(qd.split),
        )

    return latency


LATENCY_MODELS = ("analytical", "cycle")


def cycle_latency_model(qd: QuantDecoder, arch: ArchConfig, max_len: int):
    """``latency(rows, ctx)`` measured by the cycle model: a pass over the first layer and
    over the first two layers are lowered and timed, and the layers in between add the
    difference (every layer has the same shapes and kernels). The LM head, the same at
    every length, is left out, which makes the relative overheads the policy bounds
    slightly larger than they are (the safe side)."""
    import functools

    from flightforge.sim.cycle_model import CycleModel

    model = CycleModel(arch)
    placer = Builder(arch)
    pl = _place(placer, qd, max_len, False)
    stacks = (_one_layer(qd, 1), _one_layer(qd, 2))
    layers = qd.prog.layers

    def timed(rows: int, ctx: int, ops: tuple) -> int:
        b = Builder(arch)
        b.sched.untracked_reads = placer._readonly
        _emit_stage(b, qd, pl, rows, ctx - rows, max_len, "none", ops)
        return model.execute(b.sched.finish()).cycles

    @functools.cache
    def latency(rows: int, ctx: int) -> float:
        one = timed(rows, ctx, stacks[0])
        if layers == 1:
            return float(one)
        return float(one + (layers - 1) * (timed(rows, ctx, stacks[1]) - one))

    return latency


def _wanted_positions(
    lengths: Iterable[int], chunk: int, chunked: bool, last_only: bool
) -> dict[str, set[int]]:
    """The length registers each stage's sections must serve for ``--lengths``: every
    step that prefills each length (the host's own plan, :func:`prefill_steps`, so a
    prompt of a multiple of the chunk plus one finds its shorter prefill and its decode
    step), and the decode step at each length."""
    wanted: dict[str, set[int]] = {"prefill": set(), "prefill_chunk": set(), "decode": set()}
    for n in lengths:
        for stage, at in prefill_steps(n, chunk, chunked, last_only):
            wanted["prefill_chunk" if stage == "prefill_final" else stage].add(at)
        wanted["decode"].add(n)
    return wanted


def lower_decoder(
    qd: QuantDecoder,
    arch: ArchConfig,
    max_len: int,
    *,
    with_data: bool = True,
    last_logits_only: bool = False,
    lengths: list[int] | range | None = None,
    metadata: dict | None = None,
    buckets: BucketPlan | str | None = None,
    bucket_bound: float = 0.02,
    bucket_latency: str = "cycle",
) -> Program:
    """Compile prefill for prompt lengths 1..max_len and decode for positions 1..max_len-1.

    ``buckets`` groups lengths into sections (one per bucket and stage): a
    :class:`BucketPlan`, or a policy name: ``per-length`` (the default), ``fixed``
    (FlightLLM's artifact: prefill by 128, decode by 16) or ``auto`` (the fewest buckets
    within ``bucket_bound`` modelled latency overhead, under ``bucket_latency``).
    ``lengths`` restricts the sections compiled to those that prefill a prompt of each
    length and decode at it (e.g. one length for a quick performance run);
    ``last_logits_only`` computes the LM head for the last prompt row only, as serving
    does (generation then needs no other row).
    """
    if max_len < 1:
        raise CompileError(f"max_len must be at least 1, not {max_len}")
    policy = buckets or "per-length"
    chunked = policy in ("fixed", "auto") or (
        isinstance(policy, BucketPlan) and bool(policy.chunk_starts)
    )
    b = Builder(arch)
    pl = _place(b, qd, max_len, with_data)
    chunk = prefill_chunk(qd, arch, pl, max_len, last_logits_only)
    timing_buckets = policy == "auto"  # the cycle model times candidate buckets: minutes
    with progress.step("plan length buckets") if timing_buckets else contextlib.nullcontext():
        plan = make_plan(qd, arch, max_len, policy, bucket_bound, chunk, bucket_latency)
    plan.check(max_len, chunk if last_logits_only else None, chunk if chunked else None)
    if lengths is not None:
        for length in lengths:
            if not 1 <= length <= max_len:
                raise CompileError(f"length {length} is outside 1..{max_len}")
    wanted = (
        None if lengths is None else _wanted_positions(lengths, chunk, chunked, last_logits_only)
    )

    def chosen(stage: str, lo: int, hi: int) -> bool:
        return wanted is None or any(lo <= n <= hi for n in wanted[stage])

    # Chunked prefill of prompts longer than a chunk: full passes ending at the prompt's
    # end (see chunk_starts), so the last row is always the final pass's last row.
    kinds = (
        (("prefill_chunk", "none"), ("prefill_final", "last"))
        if last_logits_only
        else (("prefill_chunk", "all"),)
    )
    starts = [(lo, hi) for lo, hi in plan.chunk_starts if chosen("prefill_chunk", lo, hi)]
    total = sum(chosen("prefill", lo, hi) for lo, hi in plan.prefill) + sum(
        chosen("decode", lo, hi) for lo, hi in plan.decode
    )
    bar = progress.bar(total + len(starts) * len(kinds), "compile", unit="section")
    for lo, hi in plan.prefill:
        if not chosen("prefill", lo, hi):
            continue
        b.begin_section(lo, hi)
        for pos0 in range(0, hi, chunk):
            rows = min(chunk, hi - pos0)
            holds_last = pos0 <= lo - 1 < pos0 + rows
            if not last_logits_only:
                _emit_stage(b, qd, pl, rows, pos0, max_len, "all")
            elif holds_last:
                _emit_stage(
                    b, qd, pl, rows, pos0, max_len, "last", last_row=lo - 1 - pos0, last_dyn=hi > lo
                )
                break
            else:
                _emit_stage(b, qd, pl, rows, pos0, max_len, "none")
        b.end_section(bucket_name("prefill", lo, hi), "prefill", lo, hi)
        bar.update(1)
    for lo, hi in starts:
        for stage, head in kinds:
            b.begin_section(lo, hi)
            _emit_stage(b, qd, pl, chunk, lo, max_len, head, dyn=hi > lo, ctx=hi + chunk)
            b.end_section(bucket_name(stage, lo, hi), stage, lo, hi)
            bar.update(1)
    for lo, hi in plan.decode:
        if not chosen("decode", lo, hi):
            continue
        b.begin_section(lo, hi)
        _emit_stage(b, qd, pl, 1, lo, max_len, "all", dyn=hi > lo, ctx=hi + 1)
        b.end_section(bucket_name("decode", lo, hi), "decode", lo, hi)
        bar.update(1)
    bar.close()
    prog = qd.prog
    b.metadata.update(metadata or {})
    b.metadata["decoder"] = {
        "max_len": max_len,
        "hidden": prog.hidden,
        "vocab": prog.vocab,
        "input_segment": "input",
        "input_scale": qd.scales[prog.input],
        "logits_segment": "logits",
        "logits_scale": qd.scales[prog.output],
        "prefill_logits": "last" if last_logits_only else "all",
        "prefill_chunk": chunk,
        "prefill_mode": "chunked" if chunked else "whole",
        "positions": pl.positions,
        "buckets": {
            "prefill": [list(x) for x in plan.prefill],
            "decode": [list(x) for x in plan.decode],
            "chunk_starts": [list(x) for x in plan.chunk_starts],
        },
        "embed_segment": "embed_tokens",
        "positions_segment": "embed_positions" if qd.positions is not None else None,
        "position_offset": prog.position_offset,
        "activation_bits": 16 if qd.split else 8,
        "weight_plans": {
            k: {"bits": v.bits, "prec": v.prec.name, "group": v.group, "sparse": v.sparse.name}
            for k, v in qd.plans.items()
        },
    }
    return b.program()
