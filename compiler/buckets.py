"""Length buckets: which prompt lengths and decode positions share one instruction stream.

Compiling every length separately costs storage linear in the number of lengths (the
FlightLLM paper: terabytes for a 7B model); one stream per bucket, run with the actual
length, costs only the bucket's padding (see :mod:`.lower` for how a stream is made
length-adaptive). Three policies:

- ``per_length``: one section per length (no padding);
- ``fixed``: FlightLLM's artifact, prefill rounded up to multiples of 128 and decode to
  multiples of 16;
- ``auto``: the widest buckets whose modelled latency overhead stays within a bound
  (default 2%) at every length, given a latency model of one run (the analytical
  estimate :func:`estimate_cycles` until a cycle model is plugged in). Growing each
  bucket greedily to the bound gives the fewest buckets for any latency that grows with
  length, and so the least instruction storage.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Callable

from flightforge.arch import ArchConfig

from .memory import CompileError

Bucket = tuple[int, int]  #: inclusive ``(lo, hi)``


def bucket_name(stage: str, lo: int, hi: int) -> str:
    return f"{stage}_{lo}" if lo == hi else f"{stage}_{lo}_{hi}"


def _fixed(first: int, last: int, step: int) -> list[Bucket]:
    return [(lo, min(lo + step - 1, last)) for lo in range(first, last + 1, step)] if step else []


def _greedy(first: int, last: int, cost: Callable[[int], float], bound: float,
            split_every: int | None = None) -> list[Bucket]:
    out = []
    lo = first
    while lo <= last:
        hi = lo
        base = cost(lo)
        # Latency grows with length, so the bucket's worst case is its shortest length.
        while hi < last and cost(hi + 1) <= base * (1 + bound) and \
                (split_every is None or (lo - 1) // split_every == hi // split_every):
            hi += 1
        out.append((lo, hi))
        lo = hi + 1
    return out


@dataclass(frozen=True)
class BucketPlan:
    prefill: tuple[Bucket, ...]
    decode: tuple[Bucket, ...]

    @classmethod
    def per_length(cls, max_len: int) -> BucketPlan:
        return cls(tuple((n, n) for n in range(1, max_len + 1)),
                   tuple((p, p) for p in range(1, max_len)))

    @classmethod
    def fixed(cls, max_len: int, prefill_step: int = 128, decode_step: int = 16,
              chunk: int | None = None) -> BucketPlan:
        """Buckets of ``prefill_step`` prompt lengths and ``decode_step`` positions.

        ``chunk`` (the prefill chunk of a last-row-logits program) splits prefill buckets
        at chunk boundaries, where the chunk holding the last row changes.
        """
        prefill = _fixed(1, max_len, prefill_step)
        if chunk is not None:
            prefill = [piece for lo, hi in prefill for piece in _split(lo, hi, chunk)]
        return cls(tuple(prefill), tuple(_fixed(1, max_len - 1, decode_step)))

    @classmethod
    def auto(cls, max_len: int, latency: Callable[[str, int], float], bound: float = 0.02,
             chunk: int | None = None) -> BucketPlan:
        """Widest buckets with ``latency(stage, hi) <= (1 + bound) * latency(stage, lo)``."""
        return cls(tuple(_greedy(1, max_len, lambda n: latency("prefill", n), bound, chunk)),
                   tuple(_greedy(1, max_len - 1, lambda n: latency("decode", n), bound)))

    def check(self, max_len: int, chunk: int | None) -> None:
        """Every length covered exactly once; last-row buckets inside one prefill chunk."""
        for stage, buckets, last in (("prefill", self.prefill, max_len),
                                     ("decode", self.decode, max_len - 1)):
            expect = 1
            for lo, hi in buckets:
                if lo != expect or hi < lo:
                    raise CompileError(f"{stage} buckets must cover 1..{last} in order without "
                                       f"gaps or overlaps; bucket {lo}..{hi} follows {expect - 1}")
                expect = hi + 1
            if expect != last + 1:
                raise CompileError(f"{stage} buckets end at {expect - 1}, not at {last}")
        if chunk is not None:
            for lo, hi in self.prefill:
                if (lo - 1) // chunk != (hi - 1) // chunk:
                    raise CompileError(f"prefill bucket {lo}..{hi} spans a prefill chunk boundary "
                                       f"(chunk {chunk}): with last-row logits its last row would "
                                       f"move between chunks; split it at multiples of {chunk}")

    def bucket_of(self, stage: str, length: int) -> Bucket:
        for lo, hi in getattr(self, stage):
            if lo <= length <= hi:
                return lo, hi
        raise KeyError(f"no {stage} bucket holds length {length}")


def _split(lo: int, hi: int, chunk: int) -> list[Bucket]:
    out = []
    while lo <= hi:
        end = min(hi, ((lo - 1) // chunk + 1) * chunk)
        out.append((lo, end))
        lo = end + 1
    return out


@dataclass(frozen=True)
class LinearShape:
    n: int  #: output columns
    k: int  #: reduction length
    weight_bytes: int


def estimate_cycles(arch: ArchConfig, linears: list[LinearShape], *, layers: int, heads: int,
                    kv_heads: int, head_dim: int, stage: str, length: int) -> float:
    """Analytical latency of one run, the roofline of every matrix operation.

    Each Linear costs the larger of its compute time on the MPE (output tiles of the MM
    or MV parallel shape ``n x k x m``, summed over all cores) and its weight traffic at
    HBM bandwidth; attention costs its score and PV products and its KV-cache traffic.
    A prefill of ``L`` rows pads rows to the MM tile height ``m``, which is why prefill
    buckets of the tile height cost nothing. This is the bucketing policy's model until
    the cycle model is used in its place.
    """
    cores = arch.cores
    bytes_per_cycle = arch.hbm.bandwidth_gbs * 1e9 / arch.clock_hz
    rows = length if stage == "prefill" else 1
    ctx = length if stage == "prefill" else length + 1
    shape = arch.mpe.mm if stage == "prefill" else arch.mpe.mv

    def mm_cycles(m: int, n: int, k: int) -> float:
        return (math.ceil(m / shape.m) * math.ceil(n / shape.n) * math.ceil(k / shape.k)) / cores

    total = 0.0
    for lin in linears:
        total += max(mm_cycles(rows, lin.n, lin.k), lin.weight_bytes / bytes_per_cycle)
    attn_compute = heads * (mm_cycles(rows, ctx, head_dim) + mm_cycles(rows, head_dim, ctx))
    kv_bytes = 2 * kv_heads * ctx * head_dim
    total += layers * max(attn_compute, kv_bytes / bytes_per_cycle)
    return total
