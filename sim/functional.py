"""The functional simulator: runs instruction streams with the hardware's exact arithmetic.

Every instruction is executed with the integer functions of
:mod:`flightforge.numerics` on operands read from the on-chip buffers and external
memory, in the order the shared control machine of :mod:`.dispatch` starts them, so
wait/release tokens are honoured (a deadlock is an error naming the instruction,
not a hang). The simulator is untimed: it reports no cycles; the cycle model does.

Every operand access is range-checked; an access outside a buffer or outside external
memory is a :class:`DeviceError` naming the section, the instruction and the field.
"""

from __future__ import annotations

from collections import Counter
from collections.abc import Sequence
from dataclasses import dataclass, field

import numpy as np

from flightforge import formats, isa, numerics
from flightforge.arch import ArchConfig
from flightforge.footprint import misc_param_bytes
from flightforge.program import Program

from .device import DeviceError, RunResult, check_program, loaded_section, run_offset
from .dispatch import run_dispatch

_NP_DTYPE = {
    isa.DType.INT8: np.dtype("<i1"),
    isa.DType.INT16: np.dtype("<i2"),
    isa.DType.INT32: np.dtype("<i4"),
}


class ExternalMemory:
    """Sparse byte-addressed external memory of ``capacity`` bytes, zero until written.

    Pages are allocated on first write, so a program for an 8 GB HBM part costs only
    the bytes it touches.
    """

    PAGE_BITS = 20

    def __init__(self, capacity: int) -> None:
        self.capacity = capacity
        self._pages: dict[int, np.ndarray] = {}

    def _check(self, addr: int, size: int, what: str) -> None:
        if addr < 0 or size < 0 or addr + size > self.capacity:
            raise DeviceError(
                f"{what}: bytes {addr}..{addr + size - 1} are outside external memory "
                f"(0..{self.capacity - 1})"
            )

    def read(self, addr: int, size: int, what: str = "read") -> np.ndarray:
        self._check(addr, size, what)
        out = np.zeros(size, dtype=np.uint8)
        page_size = 1 << self.PAGE_BITS
        pos = 0
        while pos < size:
            a = addr + pos
            page, off = a >> self.PAGE_BITS, a & (page_size - 1)
            n = min(size - pos, page_size - off)
            data = self._pages.get(page)
            if data is not None:
                out[pos : pos + n] = data[off : off + n]
            pos += n
        return out

    def write(self, addr: int, data: bytes | np.ndarray, what: str = "write") -> None:
        buf = (
            np.frombuffer(bytes(data), dtype=np.uint8)
            if not isinstance(data, np.ndarray)
            else data.astype(np.uint8, copy=False).ravel()
        )
        self._check(addr, buf.size, what)
        page_size = 1 << self.PAGE_BITS
        pos = 0
        while pos < buf.size:
            a = addr + pos
            page, off = a >> self.PAGE_BITS, a & (page_size - 1)
            n = min(buf.size - pos, page_size - off)
            data_page = self._pages.get(page)
            if data_page is None:
                data_page = self._pages[page] = np.zeros(page_size, dtype=np.uint8)
            data_page[off : off + n] = buf[pos : pos + n]
            pos += n


def _rows_index(addr: int, rows: int, row_bytes: int, stride: int) -> np.ndarray:
    return (
        addr
        + np.arange(rows, dtype=np.int64)[:, None] * stride
        + np.arange(row_bytes, dtype=np.int64)[None, :]
    )


@dataclass
class _Stats:
    by_opcode: Counter = field(default_factory=Counter)
    bytes_loaded: int = 0
    bytes_stored: int = 0
    macs: int = 0
    sfu_elements: int = 0

    def as_dict(self) -> dict:
        return {
            "by_opcode": dict(self.by_opcode),
            "bytes_loaded": self.bytes_loaded,
            "bytes_stored": self.bytes_stored,
            "macs": self.macs,
            "sfu_elements": self.sfu_elements,
        }


class FunctionalSim:
    """A bit-exact, untimed FlightForge core (implements :class:`~.device.Device`)."""

    def __init__(self, arch: ArchConfig) -> None:
        self.arch = arch
        self.program: Program | None = None
        self.reset()

    def reset(self) -> None:
        """Zero external memory and every on-chip buffer."""
        self.ext = ExternalMemory(self.arch.hbm.capacity)
        self.buffers = {b: np.zeros(self.arch.buffers.of(b).size, dtype=np.uint8) for b in isa.Buf}

    # --- Device protocol ------------------------------------------------------------

    def load(self, program: Program) -> None:
        check_program(program, self.arch)
        self.reset()
        self.program = program
        for seg in program.segments:
            if seg.data is not None:
                self.ext.write(seg.addr, seg.data, f"segment {seg.name!r}")

    def write(self, addr: int, data: bytes) -> None:
        self.ext.write(addr, data)

    def read(self, addr: int, size: int) -> bytes:
        return self.ext.read(addr, size).tobytes()

    def run(self, section: str, length: int | None = None) -> RunResult:
        sec = loaded_section(self.program, section)
        return self.execute(sec.instructions, name=section, d=run_offset(sec, length))

    # --- direct access, for tests and tools ---------------------------------------

    def buffer(self, buf: isa.Buf) -> np.ndarray:
        """The live bytes of one on-chip buffer (writable)."""
        return self.buffers[isa.Buf(buf)]

    def execute(
        self, instrs: Sequence[isa.Instruction], name: str = "<stream>", d: int = 0
    ) -> RunResult:
        """Run a stream that ends with HALT; effects happen in token-legal start order.

        ``d`` is the run's offset inside its length bucket (see :func:`isa.resolve`).
        """
        stats = _Stats()

        def on_start(i: int, ins: isa.Instruction) -> None:
            try:
                self._execute_one(isa.resolve(ins, d), stats)
            except (isa.EncodeError, DeviceError) as e:
                raise DeviceError(
                    f"section {name!r}, instruction {i} ({ins.OPCODE.name}): {e}"
                ) from None
            stats.by_opcode[ins.OPCODE.name] += 1

        run_dispatch(
            instrs,
            token_depth=self.arch.token_depth,
            queue_depth=self.arch.queue_depth,
            duration=lambda i, ins: 1,
            on_start=on_start,
            section=name,
        )
        stats.by_opcode["SYS"] = sum(isinstance(x, isa.SYS) for x in instrs)
        return RunResult(name, len(instrs), None, stats.as_dict())

    # --- operand access --------------------------------------------------------------

    def _buf_index(
        self, buf: isa.Buf, field_name: str, addr: int, rows: int, row_bytes: int, stride: int
    ) -> np.ndarray:
        size = self.buffers[buf].size
        last = addr + (rows - 1) * stride + row_bytes
        if last > size:
            raise DeviceError(
                f"{field_name}: bytes {addr}..{last - 1} are outside {buf.name} ({size} bytes)"
            )
        return _rows_index(addr, rows, row_bytes, stride)

    def _read(
        self,
        buf: isa.Buf,
        field_name: str,
        addr: int,
        rows: int,
        cols: int,
        stride: int,
        dt: isa.DType,
    ) -> np.ndarray:
        npdt = _NP_DTYPE[isa.DType(dt)]
        idx = self._buf_index(buf, field_name, addr, rows, cols * npdt.itemsize, stride)
        raw = self.buffers[buf][idx]
        return np.ascontiguousarray(raw).view(npdt).reshape(rows, cols).astype(np.int64)

    def _read_bytes(self, buf: isa.Buf, field_name: str, addr: int, size: int) -> np.ndarray:
        idx = self._buf_index(buf, field_name, addr, 1, size, size)
        return self.buffers[buf][idx[0]]

    def _write(
        self,
        buf: isa.Buf,
        field_name: str,
        addr: int,
        stride: int,
        dt: isa.DType,
        values: np.ndarray,
    ) -> None:
        npdt = _NP_DTYPE[isa.DType(dt)]
        rows, cols = values.shape
        idx = self._buf_index(buf, field_name, addr, rows, cols * npdt.itemsize, stride)
        lo, hi = numerics.dtype_range(dt)
        if values.size and (
            values.min() < lo or values.max() > hi
        ):  # pragma: no cover - numerics saturates
            raise DeviceError(f"{field_name}: result outside {isa.DType(dt).name}")
        self.buffers[buf][idx] = values.astype(npdt).view(np.uint8).reshape(rows, -1)

    # --- instruction semantics --------------------------------------------------------

    def _execute_one(self, ins: isa.Instruction, stats: _Stats) -> None:
        if isinstance(ins, isa.LD):
            buf = isa.Buf(ins.buf)
            src_row = ins.src_row_bytes
            span = (ins.rows - 1) * ins.src_stride + src_row
            src = self.ext.read(ins.src, span, "src")
            data = src[_rows_index(0, ins.rows, src_row, ins.src_stride)]
            if ins.unpack != isa.Unpack.NONE:
                data = (
                    formats.unpack_lowbit(data, isa.Unpack(ins.unpack).bits, ins.row_bytes)
                    .astype(np.int8)
                    .view(np.uint8)
                )
            idx = self._buf_index(buf, "dst", ins.dst, ins.rows, ins.row_bytes, ins.dst_stride)
            self.buffers[buf][idx] = data
            stats.bytes_loaded += ins.rows * ins.row_bytes
        elif isinstance(ins, isa.ST):
            buf = isa.Buf(ins.buf)
            data = self.buffers[buf][
                self._buf_index(buf, "src", ins.src, ins.rows, ins.row_bytes, ins.src_stride)
            ]
            if ins.dst_stride == ins.row_bytes or ins.rows == 1:
                self.ext.write(ins.dst, data.ravel(), "dst")
            else:
                for r in range(ins.rows):
                    self.ext.write(ins.dst + r * ins.dst_stride, data[r], "dst")
            stats.bytes_stored += ins.rows * ins.row_bytes
        elif isinstance(ins, (isa.MM, isa.MV)):
            self._matmul(ins, stats)
        elif isinstance(ins, isa.MISC):
            self._misc(ins)
            stats.sfu_elements += ins.rows * ins.cols

    def _matmul(self, ins: isa.MM | isa.MV, stats: _Stats) -> None:
        tile_k = self.arch.mpe.tile_k
        if ins.k > tile_k:
            raise DeviceError(
                f"k: K={ins.k} exceeds the MPE's activation tile buffer "
                f"(mpe.tile_k = {tile_k} activations per row)"
            )
        rows = ins.rows
        a_stride = ins.a_stride if isinstance(ins, isa.MM) else ins.k
        a = self._read(isa.Buf.ACT, "a_addr", ins.a_addr, rows, ins.k, a_stride, isa.DType.INT8)
        mode, prec = isa.SparseMode(ins.sparse), isa.WPrec(ins.wprec)
        if ins.wkn:
            w = self._read(isa.Buf.WGT, "w_addr", ins.w_addr, ins.k, ins.n, ins.n, isa.DType.INT8).T
        else:
            wrb = formats.weight_row_bytes(ins.k, prec, mode)
            wbytes = self._read_bytes(isa.Buf.WGT, "w_addr", ins.w_addr, ins.n * wrb)
            mrb = formats.meta_row_bytes(ins.k, mode)
            mbytes = (
                self._read_bytes(isa.Buf.META, "meta_addr", ins.meta_addr, ins.n * mrb)
                if mrb
                else np.zeros(0, np.uint8)
            )
            w = formats.unpack_weights(wbytes.tobytes(), mbytes.tobytes(), ins.n, ins.k, prec, mode)
        if ins.colp:
            size = ins.n * formats.column_record_bytes(ins.k, ins.gsz)
            rec = formats.unpack_column_records(
                self._read_bytes(isa.Buf.SCALE, "q_addr", ins.q_addr, size).tobytes(),
                ins.n,
                ins.k,
                ins.gsz,
            )
            bias, mult, scales = rec.bias[None, :], rec.mult[None, :], rec.scales
        else:
            bias, mult, scales = 0, ins.mult, None
        psum = (
            self._read(
                isa.Buf.ACT, "p_addr", ins.p_addr, rows, ins.n, ins.d_stride, isa.DType.INT32
            )
            if ins.acc_in
            else None
        )
        out = numerics.matmul(
            a,
            w,
            scales=scales,
            group=isa.group_size(ins.gsz),
            bias=bias,
            mult=mult,
            shift=ins.shift,
            odt=isa.DType(ins.odt),
            psum=psum,
        )
        self._write(isa.Buf.ACT, "d_addr", ins.d_addr, ins.d_stride, isa.DType(ins.odt), out)
        stats.macs += rows * ins.n * formats.weight_entries(ins.k, mode)

    def _misc(self, ins: isa.MISC) -> None:
        op = isa.MiscOp(ins.op)
        a_dt, b_dt, d_dt = isa.DType(ins.a_dt), isa.DType(ins.b_dt), isa.DType(ins.d_dt)
        a = self._read(isa.Buf.ACT, "a_addr", ins.a_addr, ins.rows, ins.cols, ins.a_stride, a_dt)
        nparam = misc_param_bytes(ins)
        params = (
            self._read_bytes(isa.Buf.GLB, "p_addr", ins.p_addr, nparam)
            if nparam
            else np.zeros(0, np.uint8)
        )
        if op in (isa.MiscOp.ADD, isa.MiscOp.MUL):
            b = self._read(
                isa.Buf.ACT, "b_addr", ins.b_addr, ins.rows, ins.cols, ins.b_stride, b_dt
            )
            y = (
                numerics.add(a, b, ins.m0, ins.m1, ins.shift, d_dt)
                if op == isa.MiscOp.ADD
                else numerics.mul(a, b, ins.m0, ins.shift, d_dt)
            )
        elif op == isa.MiscOp.REQUANT:
            y = numerics.requant(a, ins.m0, ins.shift, d_dt)
        elif op == isa.MiscOp.SOFTMAX:
            y = numerics.softmax(
                a, ins.m0, ins.shift, pos=ins.pos, length=ins.len, causal=bool(ins.causal), odt=d_dt
            )
        elif op in (isa.MiscOp.RMSNORM, isa.MiscOp.LAYERNORM):
            p = params.copy().view("<i2").astype(np.int64)
            if op == isa.MiscOp.RMSNORM:
                y = numerics.rmsnorm(a, p, ins.eps, ins.shift, d_dt)
            else:
                y = numerics.layernorm(a, p[: ins.cols], p[ins.cols :], ins.eps, ins.shift, d_dt)
        elif op.is_table:
            lut = params.copy().view(_NP_DTYPE[d_dt]).astype(np.int64)
            y = numerics.table(a, lut)
        elif op == isa.MiscOp.ROPE:
            half = ins.len // 2
            tab = params.copy().view("<i2").astype(np.int64).reshape(ins.pos + ins.rows, 2, half)
            rows = tab[ins.pos : ins.pos + ins.rows]
            y = numerics.rope(a, rows[:, 0], rows[:, 1], ins.len, ins.shift, d_dt)
        else:  # pragma: no cover - every MiscOp is handled above
            raise DeviceError(f"op: {op.name} is not implemented")
        self._write(isa.Buf.ACT, "d_addr", ins.d_addr, ins.d_stride, d_dt, y)
