"""Instruction storage of per-length compilation, counted without storing it.

The length-adaptive compiler is measured against what compiling every prompt length
and decode position separately would cost. Those programs are far too large to build
(hundreds of millions of instructions for LLaMA2-7B), so their size is counted:

- a per-length prefill of ``L`` tokens is a sequence of passes of at most ``chunk``
  rows (whole-prompt lowering, :mod:`.lower`), and a decode step is one pass of one
  row; tokens never add instructions, so a section holds exactly the instructions its
  passes emit, plus its HALT;
- a pass is emitted with the real kernels and allocator into a builder that only
  counts (no token scheduling, no encoding);
- every layer of a decoder has the same shapes, so a pass over ``n`` layers emits
  ``count(1 layer) + (n - 1) * (count(2 layers) - count(1 layer))``.
  :func:`check_layer_identity` verifies that identity by full emission, and the tests
  and the storage benchmark run it.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from functools import lru_cache

from flightforge import isa
from flightforge.arch import ArchConfig

from ..quant.qdecoder import QuantDecoder
from . import decoder as lower
from .builder import Builder


@dataclass
class _CountingScheduler:
    """Stands in for the token scheduler: counts instructions, keeps none."""

    count: int = 0
    d_max: int = 0
    instrs: list = field(default_factory=list)

    def add(self, instr: isa.Instruction) -> int:
        self.count += 1
        return self.count - 1


def _count_pass(
    qd: QuantDecoder,
    arch: ArchConfig,
    pl,
    max_len: int,
    rows: int,
    pos0: int,
    head: str,
    ops: tuple | None,
) -> int:
    b = Builder(arch)  # fresh on-chip allocators; external addresses come from ``pl``
    b.sched = _CountingScheduler()  # type: ignore[assignment]
    lower._emit_stage(b, qd, pl, rows, pos0, max_len, head, ops)
    return b.sched.count


@dataclass
class PassCounter:
    """Instructions of one lowering pass, memoised by ``(rows, pos0, head)``."""

    qd: QuantDecoder
    arch: ArchConfig
    max_len: int

    def __post_init__(self) -> None:
        self._one = lower._one_layer(self.qd, 1)
        self._two = lower._one_layer(self.qd, 2)
        self.layers = self.qd.prog.layers
        self._pl = lower._place(Builder(self.arch), self.qd, self.max_len, False)
        self.count = lru_cache(maxsize=None)(self._count)

    def _count(self, rows: int, pos0: int, head: str) -> int:
        one = _count_pass(self.qd, self.arch, self._pl, self.max_len, rows, pos0, head, self._one)
        if self.layers == 1:
            return one
        two = _count_pass(self.qd, self.arch, self._pl, self.max_len, rows, pos0, head, self._two)
        return one + (self.layers - 1) * (two - one)

    def full(self, rows: int, pos0: int, head: str) -> int:
        """The same count by emitting every layer (slow; for checking the identity)."""
        return _count_pass(self.qd, self.arch, self._pl, self.max_len, rows, pos0, head, None)


def check_layer_identity(counter: PassCounter, samples: list[tuple[int, int, str]]) -> None:
    for rows, pos0, head in samples:
        fast, full = counter.count(rows, pos0, head), counter.full(rows, pos0, head)
        if fast != full:
            raise AssertionError(
                f"pass ({rows} rows at {pos0}, head {head}): layer identity "
                f"gives {fast} instructions, full emission {full}"
            )


@dataclass(frozen=True)
class PerLengthStorage:
    prefill: list[int]  #: instructions of prefill_L for L = 1..max_len
    decode: list[int]  #: instructions of decode_P for P = 1..max_len-1

    @property
    def instructions(self) -> int:
        return sum(self.prefill) + sum(self.decode)

    @property
    def bytes(self) -> int:
        return self.instructions * isa.INSTR_BYTES


def per_length_storage(counter: PassCounter, chunk: int, last_only: bool) -> PerLengthStorage:
    """Exact instruction counts of every per-length section (see the module docstring)."""
    max_len = counter.max_len
    prefill = []
    for length in range(1, max_len + 1):
        total = 1  # HALT
        for pos0 in range(0, length, chunk):
            rows = min(chunk, length - pos0)
            final = pos0 + rows == length
            head = ("last" if final else "none") if last_only else "all"
            total += counter.count(rows, pos0, head)
        prefill.append(total)
    decode = [counter.count(1, pos, "all") + 1 for pos in range(1, max_len)]
    return PerLengthStorage(prefill, decode)
