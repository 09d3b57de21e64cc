"""Memory planning: on-chip buffer allocation and the external-memory layout.

Allocation failures are compile errors that say what did not fit where, with the
sizes involved; nothing is truncated or silently spilled.
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass, field

import numpy as np

from flightforge import isa
from flightforge.arch import ArchConfig
from flightforge.program import Segment

from ..errors import CompileError


def _align(x: int, a: int) -> int:
    return -(-x // a) * a


@dataclass
class BufferAllocator:
    """Two-ended allocator over one on-chip buffer, with coalescing frees.

    Short-lived tensors are placed first-fit from the bottom, long-lived ones (the
    residual stream) last-fit from the top, so each layer of a decoder leaves the
    buffer as it found it and fragmentation does not build up from layer to layer.
    """

    name: str
    size: int
    align: int = 4
    _free: list[tuple[int, int]] = field(default_factory=list)  #: (addr, size), sorted
    _live: dict[int, tuple[int, str]] = field(default_factory=dict)

    def __post_init__(self) -> None:
        self._free = [(0, self.size)]

    @property
    def free_bytes(self) -> int:
        return sum(s for _, s in self._free)

    def alloc(self, nbytes: int, what: str, high: bool = False) -> int:
        need = _align(max(nbytes, 1), self.align)
        order = range(len(self._free) - 1, -1, -1) if high else range(len(self._free))
        for i in order:
            addr, size = self._free[i]
            if size >= need:
                if high:
                    self._free[i : i + 1] = [(addr, size - need)] if size > need else []
                    addr += size - need
                else:
                    self._free[i : i + 1] = [(addr + need, size - need)] if size > need else []
                self._live[addr] = (need, what)
                return addr
        largest = max((s for _, s in self._free), default=0)
        live = ", ".join(f"{w} ({s} B)" for s, w in sorted(self._live.values(), reverse=True)[:4])
        raise CompileError(
            f"{what} needs {nbytes} bytes of {self.name} but the buffer "
            f"({self.size} bytes) has {self.free_bytes} free, largest free block "
            f"{largest}; largest live: {live or 'none'}"
        )

    def free(self, addr: int) -> None:
        size, _ = self._live.pop(addr)
        self._free.append((addr, size))
        self._free.sort()
        merged: list[tuple[int, int]] = []
        for a, s in self._free:
            if merged and merged[-1][0] + merged[-1][1] == a:
                merged[-1] = (merged[-1][0], merged[-1][1] + s)
            else:
                merged.append((a, s))
        self._free = merged


@dataclass
class ExternalLayout:
    """Segments placed in external memory in order, aligned to the burst size."""

    arch: ArchConfig
    segments: list[Segment] = field(default_factory=list)
    _next: int = 0

    def place(self, name: str, kind: str, size: int, data: bytes | np.ndarray | None = None) -> int:
        align = max(64, self.arch.hbm.burst_bytes)
        addr = _align(self._next, align)
        if addr + size > self.arch.hbm.capacity:
            raise CompileError(
                f"segment {name!r} ({size} bytes) does not fit in external memory: "
                f"{addr} bytes already placed of {self.arch.hbm.capacity}"
            )
        if data is not None and not isinstance(data, bytes):
            data = np.ascontiguousarray(data).tobytes()
        self.segments.append(Segment(name, kind, addr, size, data))
        self._next = addr + size
        return addr

    def fill(self, name: str, data: bytes | np.ndarray) -> None:
        """Give the placed segment ``name`` its data: a large table whose size grows with
        the length is built only once every segment is known to fit."""
        if not isinstance(data, bytes):
            data = np.ascontiguousarray(data).tobytes()
        for i, seg in enumerate(self.segments):
            if seg.name == name:
                self.segments[i] = dataclasses.replace(seg, data=data)
                return
        raise CompileError(f"no segment {name!r} to fill")


def buffer_allocators(arch: ArchConfig) -> dict[isa.Buf, BufferAllocator]:
    """One allocator per buffer. ACT tiles start on an ACT line (``banks * width``
    bytes): the MPE's tile fill reads whole aligned lines, so a row that starts on one
    costs ``ceil(K / line)`` fill cycles, not one more (docs/cycle_model.md)."""
    act = arch.buffers.act
    return {
        b: BufferAllocator(
            b.name,
            arch.buffers.of(b).size,
            max(4, act.banks * act.width) if b == isa.Buf.ACT else 4,
        )
        for b in isa.Buf
    }
