"""Length buckets: which prompt lengths and decode positions share one instruction stream.

Compiling every length separately costs storage linear in the number of lengths (the
FlightLLM paper: terabytes for a 7B model); one stream per bucket, run with the actual
length, costs only the bucket's padding (see :mod:`.lower` for how a stream is made
length-adaptive). A plan has three parts:

- ``prefill``: whole-prompt sections, one per bucket of prompt lengths (the per-length
  policy, or an explicit plan);
- ``chunk_starts``: chunked prefill of prompts longer than one chunk: a prompt of ``L``
  tokens runs as ``n = ceil(L / chunk)`` full passes of ``chunk`` rows, the first at
  position 0 and the others ending at the prompt's end (:func:`chunk_starts`; the host
  loops over them); one stream serves every start of a bucket, attending over the
  bucket's padded context, so prefill storage no longer grows with the prompt. Passes
  are always full, and the last prompt row is always the final pass's last row, so
  neither the rows nor the logits row need to move at run time; the first two passes
  overlap, and the overlap is recomputed to identical values. Prompts of at most one
  chunk use ``prefill`` buckets: one for a single token (the matrix-vector path) and
  one for the rest;
- ``decode``: one section per bucket of decode positions.

Policies:

- ``per_length``: one whole-prompt section per length and one decode section per
  position (no padding);
- ``fixed``: FlightLLM's artifact granularity: chunk starts grouped by 128 positions,
  decode positions by 16;
- ``auto``: the fewest buckets whose modelled latency stays within a bound (default 2%)
  of per-length compilation at every length. Decode steps and chunk passes attend over
  the actual context (the length register grows the context's rows, columns and
  reductions, see :func:`.kernels.attention`), so a run of a bucket costs what a run of
  an exact compile does: one bucket serves every decode position, one every chunk
  start. Whole-prompt buckets process their top length's rows; they grow greedily to
  the bound under a latency model of one pass (the cycle model, or the analytical
  :func:`estimate_cycles`).
"""

from __future__ import annotations

import math
from collections.abc import Callable
from dataclasses import dataclass

from flightforge.arch import ArchConfig
from flightforge.generate import chunk_starts  # noqa: F401 - the host's pass plan, re-exported

from ..errors import CompileError

Bucket = tuple[int, int]  #: inclusive ``(lo, hi)``


def bucket_name(stage: str, lo: int, hi: int) -> str:
    return f"{stage}_{lo}" if lo == hi else f"{stage}_{lo}_{hi}"


def _fixed(first: int, last: int, step: int) -> list[Bucket]:
    return [(lo, min(lo + step - 1, last)) for lo in range(first, last + 1, step)] if step else []


def _short_prompts(max_len: int, chunk: int, tile: int = 0) -> tuple[tuple[Bucket, ...], int]:
    """Whole-prompt buckets for prompts of at most one chunk (split at multiples of the
    MM tile height ``tile``, past which padded rows cost another row tile), and the last
    chunk start."""
    top = min(chunk, max_len)
    short = [(1, 1)]
    lo = 2
    while lo <= top:
        hi = min(top, (lo - 1) // tile * tile + tile) if tile else top
        short.append((lo, hi))
        lo = hi + 1
    return tuple(short), (max_len - chunk if max_len > chunk else -1)


def _greedy(first: int, last: int, cost: Callable[[int], float], bound: float) -> list[Bucket]:
    """Buckets grown to the bound. For a cost that grows with length the widest bucket
    from ``lo`` ends at the last ``hi`` with ``cost(hi) <= (1 + bound) cost(lo)``, found by
    galloping then bisecting, so an expensive cost (the cycle model) is called
    O(log width) times per bucket."""
    out = []
    lo = first
    while lo <= last:
        limit = cost(lo) * (1 + bound)
        ok, step = lo, 1
        bad = None
        while True:  # gallop: ok is within the bound, bad (if any) is not
            probe = min(ok + step, last)
            if probe == ok:
                break
            if cost(probe) <= limit:
                ok = probe
                step *= 2
            else:
                bad = probe
                break
        if bad is not None:
            while bad - ok > 1:
                mid = (ok + bad) // 2
                ok, bad = (mid, bad) if cost(mid) <= limit else (ok, mid)
        out.append((lo, ok))
        lo = ok + 1
    return out


@dataclass(frozen=True)
class BucketPlan:
    prefill: tuple[Bucket, ...]  #: whole-prompt sections by prompt length
    decode: tuple[Bucket, ...]  #: decode sections by position
    chunk_starts: tuple[Bucket, ...] = ()  #: chunked prefill: buckets of chunk start positions

    @classmethod
    def per_length(cls, max_len: int) -> BucketPlan:
        return cls(
            tuple((n, n) for n in range(1, max_len + 1)), tuple((p, p) for p in range(1, max_len))
        )

    @classmethod
    def fixed(
        cls, max_len: int, chunk: int, prefill_step: int = 128, decode_step: int = 16, tile: int = 0
    ) -> BucketPlan:
        """Chunk starts grouped by ``prefill_step`` positions, decode by ``decode_step``;
        short prompts split at multiples of the MM tile height ``tile``."""
        short, last_start = _short_prompts(max_len, chunk, tile)
        return cls(
            short,
            tuple(_fixed(1, max_len - 1, decode_step)),
            tuple(_fixed(0, last_start, prefill_step)) if last_start >= 0 else (),
        )

    @classmethod
    def auto(
        cls, max_len: int, latency: Callable[[int, int], float], bound: float, chunk: int
    ) -> BucketPlan:
        """Whole-prompt buckets whose pass at the top costs at most ``1 + bound`` times
        the pass at the bottom (``latency(rows, ctx)`` models one pass); one bucket for
        all decode positions and one for all chunk starts, whose runs cost no padding."""
        short = ((1, 1),) + (
            tuple(_greedy(2, min(chunk, max_len), lambda n: latency(n, n), bound))
            if min(chunk, max_len) >= 2
            else ()
        )
        starts = ((0, max_len - chunk),) if max_len > chunk else ()
        return cls(short, ((1, max_len - 1),) if max_len > 1 else (), starts)

    def check(self, max_len: int, last_chunk: int | None = None, chunk: int | None = None) -> None:
        """Every length covered exactly once; last-row buckets inside one prefill chunk;
        chunk-start buckets on multiples of the chunk."""
        parts = [("decode", self.decode, 1, max_len - 1, 1)]
        top = max_len
        if self.chunk_starts or chunk is not None:
            if chunk is None:
                raise CompileError("chunk-start buckets need a chunked prefill")
            top = min(chunk, max_len)
            if max_len > chunk:
                parts.append(("chunk start", self.chunk_starts, 0, max_len - chunk, 1))
        parts.append(("prefill", self.prefill, 1, top, 1))
        for stage, buckets, first, last, _step in parts:
            expect = first
            for lo, hi in buckets:
                if lo != expect or hi < lo:
                    raise CompileError(
                        f"{stage} buckets must cover {first}..{last} without "
                        f"gaps or overlaps; bucket {lo}..{hi} follows {expect - 1}"
                    )
                expect = hi + 1
            if expect != last + 1:
                raise CompileError(f"{stage} buckets end at {expect - 1}, not at {last}")
        if last_chunk is not None:
            for lo, hi in self.prefill:
                if (lo - 1) // last_chunk != (hi - 1) // last_chunk:
                    raise CompileError(
                        f"prefill bucket {lo}..{hi} spans a prefill chunk boundary "
                        f"(chunk {last_chunk}): with last-row logits its last row "
                        f"would move between chunks; split it at multiples of "
                        f"{last_chunk}"
                    )

    def bucket_of(self, stage: str, length: int) -> Bucket:
        for lo, hi in getattr(self, stage):
            if lo <= length <= hi:
                return lo, hi
        raise KeyError(f"no {stage} bucket holds length {length}")


def run_latency(
    latency: Callable[[int, int], float], stage: str, hi: int, at: int, chunk: int
) -> float:
    """Modelled latency of one run of a section of ``stage`` whose bucket ends at ``hi``,
    run at ``at`` (the prompt length, decode position or chunk start): a whole-prompt
    bucket processes its top length's rows; decode steps and chunk passes attend over
    their actual context (dynamic fields), so they cost what an exact compile's run does."""
    if stage == "prefill":
        return latency(hi, hi)
    if stage == "decode":
        return latency(1, at + 1)
    return latency(chunk, at + chunk)


@dataclass(frozen=True)
class LinearShape:
    n: int  #: output columns
    k: int  #: reduction length
    weight_bytes: int


def estimate_cycles(
    arch: ArchConfig,
    linears: list[LinearShape],
    *,
    layers: int,
    heads: int,
    kv_heads: int,
    head_dim: int,
    rows: int,
    ctx: int,
    act16: bool = False,
) -> float:
    """Analytical latency of one pass of ``rows`` rows attending over ``ctx`` positions.

    Each Linear costs the larger of its compute time on the MPE (output tiles of the MM
    parallel shape ``n x k x m``, or the MV shape for one row, divided over the cores)
    and its weight traffic at HBM bandwidth; attention costs the larger of its score and
    PV products and its KV-cache traffic. Rows are padded to the MM tile height ``m``,
    which is why padding a chunk's rows costs nothing while it stays within a tile.
    With 16-bit activations (``act16``) a Linear takes two engine passes, a score or PV
    product three, and the KV cache holds two planes (docs/compiler.md).
    The auto policy's fast alternative to the cycle model (``bucket_latency="analytical"``).
    """
    cores = arch.cores
    bytes_per_cycle = arch.hbm.bandwidth_gbs * 1e9 / arch.clock_hz
    shape = arch.mpe.mm if rows > 1 else arch.mpe.mv

    def mm_cycles(m: int, n: int, k: int) -> float:
        return (math.ceil(m / shape.m) * math.ceil(n / shape.n) * math.ceil(k / shape.k)) / cores

    linear_passes, product_passes, kv_planes = (2, 3, 2) if act16 else (1, 1, 1)
    total = 0.0
    for lin in linears:
        total += max(
            linear_passes * mm_cycles(rows, lin.n, lin.k), lin.weight_bytes / bytes_per_cycle
        )
    attn_compute = (
        product_passes * heads * (mm_cycles(rows, ctx, head_dim) + mm_cycles(rows, head_dim, ctx))
    )
    kv_bytes = 2 * kv_planes * kv_heads * ctx * head_dim
    total += layers * max(attn_compute, kv_bytes / bytes_per_cycle)
    return total
