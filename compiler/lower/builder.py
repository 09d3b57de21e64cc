"""The program builder: on-chip tiles, external segments and synchronised sections.

Lowering code asks the builder for tiles (tensors in on-chip buffers), places data in
external memory, and emits instructions; the builder's :class:`TokenScheduler` adds the
wait/release tokens, so lowering code states only what to compute.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

import numpy as np

from flightforge import isa
from flightforge.arch import ArchConfig
from flightforge.program import Program, Section, TensorIO

from ..errors import CompileError
from .memory import BufferAllocator, ExternalLayout, buffer_allocators
from .schedule import TokenScheduler

ROW_BYTES_MAX = (1 << isa.ROW_BYTES_BITS) - 1
ROWS_MAX = (1 << isa.DIM_BITS) - 1


@dataclass(frozen=True)
class Tile:
    """A row-major 2D tensor in an on-chip buffer."""

    buf: isa.Buf
    addr: int
    rows: int
    cols: int
    dtype: isa.DType
    stride: int  #: bytes between rows
    scale: float | None = None  #: real value of one integer unit

    @property
    def nbytes(self) -> int:
        return (self.rows - 1) * self.stride + self.cols * self.dtype.nbytes

    def at(self, row: int = 0, col: int = 0) -> int:
        return self.addr + row * self.stride + col * self.dtype.nbytes

    def view(
        self,
        row: int = 0,
        col: int = 0,
        rows: int | None = None,
        cols: int | None = None,
        scale: float | None = None,
    ) -> Tile:
        """A sub-tile sharing this tile's memory."""
        rows = self.rows - row if rows is None else rows
        cols = self.cols - col if cols is None else cols
        if row + rows > self.rows or col + cols > self.cols:
            raise CompileError(
                f"view {rows}x{cols} at ({row},{col}) exceeds the {self.rows}x"
                f"{self.cols} tile at {self.buf.name}:{self.addr:#x}"
            )
        return Tile(
            self.buf,
            self.at(row, col),
            rows,
            cols,
            self.dtype,
            self.stride,
            self.scale if scale is None else scale,
        )


@dataclass
class Builder:
    """Accumulates sections and segments for one program."""

    arch: ArchConfig
    ext: ExternalLayout = field(init=False)
    bufs: dict[isa.Buf, BufferAllocator] = field(init=False)
    sched: TokenScheduler = field(init=False)
    sections: list[Section] = field(default_factory=list)
    inputs: list[TensorIO] = field(default_factory=list)
    outputs: list[TensorIO] = field(default_factory=list)
    metadata: dict[str, Any] = field(default_factory=dict)
    _readonly: list[tuple[int, int]] = field(default_factory=list)

    def __post_init__(self) -> None:
        self.ext = ExternalLayout(self.arch)
        self.bufs = buffer_allocators(self.arch)
        self.sched = TokenScheduler(self._readonly, self.arch.token_depth)

    # --- memory -------------------------------------------------------------------------

    def tile(
        self,
        buf: isa.Buf,
        rows: int,
        cols: int,
        dtype: isa.DType,
        what: str,
        scale: float | None = None,
        long_lived: bool = False,
    ) -> Tile:
        """A ``rows x cols`` tile of ``buf``. An ACT tile of several rows puts each row on
        an ACT line (its allocator's alignment): the MPE's tile fill reads whole aligned
        lines, so every row then costs ``ceil(K / line)`` fill cycles, whatever the
        tile's width (and a length bucket's wider context tiles cost what an exact
        compile's do)."""
        stride = cols * isa.DType(dtype).nbytes
        if buf == isa.Buf.ACT and rows > 1:
            line = self.bufs[buf].align
            stride = -(-stride // line) * line
        addr = self.bufs[buf].alloc(rows * stride, what, high=long_lived)
        return Tile(buf, addr, rows, cols, isa.DType(dtype), stride, scale)

    def free(self, *tiles: Tile) -> None:
        for t in tiles:
            self.bufs[t.buf].free(t.addr)

    def place(self, name: str, kind: str, size: int, data: bytes | np.ndarray | None = None) -> int:
        """Place a segment in external memory; weights and constants are read-only."""
        addr = self.ext.place(name, kind, size, data)
        if kind in ("weights", "const"):
            self._readonly.append((addr, addr + size))
        return addr

    # --- instructions -------------------------------------------------------------------

    def emit(self, instr: isa.Instruction) -> None:
        try:
            instr.check()
        except isa.EncodeError as e:
            raise CompileError(f"lowering produced an invalid instruction: {e}") from None
        if isinstance(instr, (isa.MM, isa.MV)):
            k = instr.k + (self.sched.d_max if instr.dyn_k else 0)
            if k > self.arch.mpe.tile_k:
                raise CompileError(
                    f"lowering produced an {instr.OPCODE.name} with K={k} (k field), more "
                    f"than the MPE's activation tile buffer holds (mpe.tile_k = "
                    f"{self.arch.mpe.tile_k})"
                )
        self.sched.add(instr)

    def begin_section(self, len_lo: int, len_hi: int) -> None:
        """Open a section for lengths ``len_lo..len_hi``: dynamic fields range over that."""
        if self.sched.instrs:
            raise CompileError("begin_section: the previous section was not ended")
        self.sched.d_max = len_hi - len_lo

    def transfer(
        self,
        load: bool,
        buf: isa.Buf,
        buf_addr: int,
        ext_addr: int,
        rows: int,
        row_bytes: int,
        buf_stride: int,
        ext_stride: int,
        dyn_step: int = 0,
        unpack: int = 0,
    ) -> None:
        """A 2D transfer, split into several instructions when fields would overflow.

        A contiguous transfer longer than one row field is re-shaped into rows.
        """
        if unpack:
            self._unpack_load(
                buf, buf_addr, ext_addr, rows, row_bytes, buf_stride, ext_stride, dyn_step, unpack
            )
            return
        if rows == 1 or (buf_stride == row_bytes and ext_stride == row_bytes):
            total = rows * row_bytes
            if total <= ROW_BYTES_MAX:
                rows, row_bytes, buf_stride, ext_stride = 1, total, total, total
            else:
                for r in range(-(-total // ROW_BYTES_MAX), min(total, ROWS_MAX) + 1):
                    if total % r == 0:
                        rows, row_bytes = r, total // r
                        buf_stride = ext_stride = row_bytes
                        break
        if row_bytes > ROW_BYTES_MAX:
            raise CompileError(
                f"a row of {row_bytes} bytes exceeds the {isa.ROW_BYTES_BITS}-bit row_bytes field"
            )
        for r0 in range(0, rows, ROWS_MAX):
            n = min(ROWS_MAX, rows - r0)
            b, e = buf_addr + r0 * buf_stride, ext_addr + r0 * ext_stride
            if load:
                self.emit(
                    isa.LD(
                        buf=buf,
                        dst=b,
                        src=e,
                        rows=n,
                        row_bytes=row_bytes,
                        src_stride=ext_stride,
                        dst_stride=buf_stride,
                        dyn_step=dyn_step,
                    )
                )
            else:
                self.emit(
                    isa.ST(
                        buf=buf,
                        src=b,
                        dst=e,
                        rows=n,
                        row_bytes=row_bytes,
                        src_stride=buf_stride,
                        dst_stride=ext_stride,
                        dyn_step=dyn_step,
                    )
                )

    def _unpack_load(
        self,
        buf: isa.Buf,
        buf_addr: int,
        ext_addr: int,
        rows: int,
        row_bytes: int,
        buf_stride: int,
        ext_stride: int,
        dyn_step: int,
        bits: int,
    ) -> None:
        """Loads that widen ``bits``-bit packed rows to INT8 rows (``ext_stride`` in packed
        bytes). Whole rows of packed bytes merge into one row when both sides are contiguous."""
        mode = isa.Unpack(bits - 1)
        src_row = -(-row_bytes * bits // 8)
        if (
            rows > 1
            and buf_stride == row_bytes
            and ext_stride == src_row
            and row_bytes * bits % 8 == 0
        ):
            total = rows * row_bytes
            if total <= ROW_BYTES_MAX:
                rows, row_bytes, buf_stride = 1, total, total
                ext_stride = src_row = -(-total * bits // 8)
        if row_bytes > ROW_BYTES_MAX:
            raise CompileError(
                f"a row of {row_bytes} bytes exceeds the {isa.ROW_BYTES_BITS}-bit row_bytes field"
            )
        for r0 in range(0, rows, ROWS_MAX):
            n = min(ROWS_MAX, rows - r0)
            self.emit(
                isa.LD(
                    buf=buf,
                    dst=buf_addr + r0 * buf_stride,
                    src=ext_addr + r0 * ext_stride,
                    rows=n,
                    row_bytes=row_bytes,
                    src_stride=ext_stride,
                    dst_stride=buf_stride,
                    dyn_step=dyn_step,
                    unpack=mode,
                )
            )

    def load(
        self,
        t: Tile,
        ext_addr: int,
        ext_stride: int | None = None,
        dyn_step: int = 0,
        unpack: int = 0,
        dyn_rows: bool = False,
    ) -> None:
        """Load a tile; ``unpack`` 2/3/4: the external rows hold packed values of that many
        bits, widened to INT8 on load; ``dyn_rows``: ``D`` more rows (one instruction, whose
        rows the length register grows)."""
        row = t.cols * t.dtype.nbytes
        if dyn_rows:
            if unpack or dyn_step or t.rows + self.sched.d_max > ROWS_MAX or row > ROW_BYTES_MAX:
                raise CompileError(
                    f"a load of {t.rows}+D rows of {row} bytes cannot be one growing instruction"
                )
            self.emit(
                isa.LD(
                    buf=t.buf,
                    dst=t.addr,
                    src=ext_addr,
                    rows=t.rows,
                    row_bytes=row,
                    src_stride=row if ext_stride is None else ext_stride,
                    dst_stride=t.stride,
                    dyn_rows=1,
                )
            )
            return
        ext_row = -(-row * unpack // 8) if unpack else row
        self.transfer(
            True,
            t.buf,
            t.addr,
            ext_addr,
            t.rows,
            row,
            t.stride,
            ext_row if ext_stride is None else ext_stride,
            dyn_step,
            unpack,
        )

    def store(
        self, t: Tile, ext_addr: int, ext_stride: int | None = None, dyn_step: int = 0
    ) -> None:
        row = t.cols * t.dtype.nbytes
        self.transfer(
            False,
            t.buf,
            t.addr,
            ext_addr,
            t.rows,
            row,
            t.stride,
            row if ext_stride is None else ext_stride,
            dyn_step,
        )

    def end_section(self, name: str, stage: str, len_lo: int, len_hi: int) -> Section:
        """Close the current instruction stream as a section (ending in HALT)."""
        try:
            section = Section.from_instructions(name, stage, len_lo, len_hi, self.sched.finish())
        except ValueError as e:
            raise CompileError(str(e)) from None
        self.sections.append(section)
        self.sched = TokenScheduler(self._readonly, self.arch.token_depth)
        return section

    def io(
        self,
        kind: str,
        name: str,
        segment: str,
        dtype: str,
        shape: tuple[int, ...],
        scale: float | None,
    ) -> None:
        (self.inputs if kind == "input" else self.outputs).append(
            TensorIO(name, segment, dtype, tuple(shape), scale)
        )

    def program(self) -> Program:
        meta = dict(self.metadata)
        meta["inputs"] = [t.to_dict() for t in self.inputs]
        meta["outputs"] = [t.to_dict() for t in self.outputs]
        return Program.for_arch(self.arch, self.sections, self.ext.segments, meta)
