"""The FlightForge instruction set: the single source of truth.

Every layer derives from the declarations in this file: the encoder and decoder below,
the generated table in docs/isa.md, the functional simulator, the cycle model and the
RTL instruction decoder. Change a width here and every layer follows.

The machine is a decoupled access-execute core, as in the FlightLLM artifact: one
instruction stream is dispatched in order to four units (load, store, matrix engine,
special-function unit) that run concurrently. Ordering between units is explicit:
every instruction carries a ``wait`` mask (consume one token from each named unit
before starting) and a ``release`` mask (give one token to each named unit when done).
Each ordered pair of units has its own token counter, whose depth comes from the
architecture config.

Length-adaptive sections: a section serves a range of lengths ``len_lo..len_hi`` (a
length bucket). The host runs it with the actual length ``R`` and the core derives
``D = R - len_lo``; a few fields are *dynamic*: the effective value is the static field
plus ``D`` times a step held in the instruction (``dyn_step`` of LD/ST moves the external
address, ``a_step`` of MISC moves the operand address, ``dyn_pos`` of MISC adds ``D`` to
``pos``, and the context of attention grows with ``D``: ``dyn_rows`` of LD, ``dyn_n`` and
``dyn_k`` of MM/MV and ``dyn_cols`` of MISC add ``D`` to the rows, N, K and columns, so a
bucket's stream computes over the actual context, not the bucket's largest).
:func:`resolve` gives the static instruction for a ``D``; with ``D = 0`` every
instruction is its own resolution, so single-length sections need no dynamic fields.

Encoding: every instruction is ``INSTR_WORDS`` little-endian 32-bit words. Bit 0 of
word 0 is bit 0 of the instruction; fields are packed LSB-first in declaration order,
starting with the 4-bit opcode. Bits beyond the last field are reserved and must be 0,
so decoding is a bijection on valid instructions and most corruptions are caught.
"""

from __future__ import annotations

import dataclasses
import enum
from collections.abc import Iterable, Iterator
from dataclasses import dataclass
from typing import Any, ClassVar

ISA_VERSION = 2
WORD_BITS = 32
INSTR_WORDS = 12
INSTR_BITS = INSTR_WORDS * WORD_BITS
INSTR_BYTES = INSTR_BITS // 8
OPCODE_BITS = 4


class IsaError(ValueError):
    """Base class of encoding and decoding errors."""


class EncodeError(IsaError):
    """An instruction cannot be encoded: a field is out of range or inconsistent."""


class DecodeError(IsaError):
    """A byte stream is not a valid instruction stream."""


class Unit(enum.IntEnum):
    """Decoupled execution units; bit ``u`` of a wait/release mask names unit ``u``."""

    LD = 0
    ST = 1
    MPE = 2
    SFU = 3


NUM_UNITS = len(Unit)


class Opcode(enum.IntEnum):
    SYS = 0
    LD = 1
    ST = 2
    MM = 3
    MV = 4
    MISC = 5


class Buf(enum.IntEnum):
    """On-chip buffers of one core; each is its own byte-addressed space."""

    ACT = 0  #: activations, partial sums, attention scores: always on chip in decode
    WGT = 1  #: weights and KV-cache tiles streamed from external memory
    GLB = 2  #: SFU parameters and tables (norm gains, LUTs, RoPE tables)
    META = 3  #: sparse-weight index metadata
    SCALE = 4  #: per-output-column records: bias, requantisation multiplier, group scales


class DType(enum.IntEnum):
    """Element types in on-chip buffers (two's complement, little-endian)."""

    INT8 = 0
    INT16 = 1
    INT32 = 2

    @property
    def bits(self) -> int:
        return (8, 16, 32)[self]

    @property
    def nbytes(self) -> int:
        return self.bits // 8


class WPrec(enum.IntEnum):
    """Weight precision as the matrix engine reads it from the weight buffer."""

    INT8 = 0
    INT4 = 1

    @property
    def bits(self) -> int:
        return (8, 4)[self]


class Unpack(enum.IntEnum):
    """Dequantisation on load: the memory unit widens low-bit weights to INT8.

    Source rows hold ``row_bytes`` two's-complement values of ``bits`` bits each, packed
    LSB-first into ``ceil(row_bytes * bits / 8)`` bytes; the buffer receives one INT8 per
    value. Storing 2- or 3-bit weights this way halves or more the external traffic
    while the matrix engine runs its INT8 path (FlightLLM's mixed-precision loads).
    """

    NONE = 0
    INT2 = 1
    INT3 = 2
    INT4 = 3

    @property
    def bits(self) -> int:
        return (8, 2, 3, 4)[self]


class SparseMode(enum.IntEnum):
    """Weight sparsity pattern: ``n`` kept weights in every block of ``m`` along K.

    For a sparse mode each kept weight carries the index (0..m-1) of its activation
    within the block; the sparse MUX in front of each MAC uses it, so a row costs n/m
    of the dense cycles.
    """

    DENSE = 0
    S2_4 = 1
    S2_16 = 2
    S4_16 = 3
    S8_16 = 4
    S16_16 = 5

    @property
    def n(self) -> int:
        return (0, 2, 2, 4, 8, 16)[self]

    @property
    def m(self) -> int:
        return (0, 4, 16, 16, 16, 16)[self]

    @property
    def is_sparse(self) -> bool:
        return self is not SparseMode.DENSE

    @classmethod
    def from_nm(cls, n: int, m: int) -> SparseMode:
        for mode in cls:
            if mode.is_sparse and (mode.n, mode.m) == (n, m):
                return mode
        raise ValueError(
            f"sparsity {n}:{m} is not supported; supported: "
            + ", ".join(f"{s.n}:{s.m}" for s in cls if s.is_sparse)
        )


class MiscOp(enum.IntEnum):
    """SFU operations. Exact arithmetic is defined in :mod:`flightforge.numerics`."""

    ADD = 0  #: y = sat(rnd((a*m0 + b*m1) >> shift))
    MUL = 1  #: y = sat(rnd((a*b*m0) >> shift))
    REQUANT = 2  #: y = sat(rnd((a*m0) >> shift))
    SOFTMAX = 3  #: row softmax with optional causal mask, exp2 LUT, probabilities 2^-(bits-1)
    RMSNORM = 4  #: integer mean square, integer square root, gain from GLB
    LAYERNORM = 5  #: as RMSNORM with mean subtraction and a bias from GLB
    SILU = 6  #: 256-entry table in GLB indexed by the INT8 input
    GELU = 7  #: 256-entry table in GLB indexed by the INT8 input
    ROPE = 8  #: rotate-half rotary embedding with a Q14 cos/sin table in GLB
    RELU = 9  #: 256-entry table in GLB indexed by the INT8 input (OPT's MLP)
    #: 256-entry table in GLB indexed by the INT8 input, for any other function: the
    #: compiler's 16-bit activation split uses it to negate (docs/compiler.md)
    LUT = 10

    @property
    def is_table(self) -> bool:
        """Operations computed by a 256-entry table lookup in GLB."""
        return self in (MiscOp.SILU, MiscOp.GELU, MiscOp.RELU, MiscOp.LUT)

    @property
    def reads_glb(self) -> bool:
        """Operations that read parameters from GLB at ``p_addr`` (gains, tables)."""
        return self.is_table or self in (MiscOp.RMSNORM, MiscOp.LAYERNORM, MiscOp.ROPE)


class SysOp(enum.IntEnum):
    NOP = 0
    HALT = 1  #: end of a section: waits until every unit has drained


@dataclass(frozen=True)
class FieldSpec:
    """Width and meaning of one instruction field."""

    width: int
    doc: str
    enum: type[enum.IntEnum] | None = None

    def check(self, owner: str, name: str, value: Any) -> int:
        if self.enum is not None:
            if isinstance(value, self.enum):
                return int(value)
            try:
                return int(self.enum(value))
            except ValueError:
                valid = ", ".join(m.name for m in self.enum)
                raise EncodeError(
                    f"{owner}.{name}: {value!r} is not a {self.enum.__name__} (valid: {valid})"
                ) from None
        if isinstance(value, bool) or not isinstance(value, int):
            raise EncodeError(f"{owner}.{name}: must be an int, not {type(value).__name__}")
        if not 0 <= value < (1 << self.width):
            raise EncodeError(
                f"{owner}.{name}: {value} does not fit in {self.width} unsigned bits "
                f"(0..{(1 << self.width) - 1})"
            )
        return value


def _f(width: int, doc: str, enum: type[enum.IntEnum] | None = None, default: Any = 0) -> Any:
    return dataclasses.field(default=default, metadata={"isa": FieldSpec(width, doc, enum)})


# Field widths shared by several instructions, named once.
BUF_ADDR_BITS = 24  #: byte address inside an on-chip buffer (16 MiB)
EXT_ADDR_BITS = 36  #: byte address in external memory (64 GiB)
DIM_BITS = 16  #: a tensor dimension (rows, columns, M, N, K)
BUF_STRIDE_BITS = 20  #: bytes between rows inside a buffer
EXT_STRIDE_BITS = 28  #: bytes between rows in external memory
ROW_BYTES_BITS = 20  #: bytes per row of a 2D transfer
MULT_BITS = 16  #: unsigned fixed-point multiplier
SHIFT_BITS = 6  #: right shift applied after a multiplier
MASK_BITS = NUM_UNITS
GSZ_BITS = 3  #: weight group size code: 0 none, else 2**(gsz + 3) (16 .. 1024)


def group_size(gsz: int) -> int:
    """Weight group size along K for a ``gsz`` code (0 means no group scales)."""
    return 0 if gsz == 0 else 1 << (gsz + 3)


def gsz_code(group: int) -> int:
    """Inverse of :func:`group_size`."""
    if group == 0:
        return 0
    code = group.bit_length() - 4
    if group & (group - 1) or not 1 <= code < (1 << GSZ_BITS):
        raise ValueError(
            f"group size must be 0 or a power of two from 16 to "
            f"{group_size((1 << GSZ_BITS) - 1)}, not {group}"
        )
    return code


@dataclass(frozen=True)
class Instruction:
    """Base of every instruction: the dependency fields every unit honours."""

    OPCODE: ClassVar[Opcode]
    UNIT: ClassVar[Unit | None]

    wait: int = _f(
        MASK_BITS, "units whose tokens must be consumed before starting (bit u = Unit u)"
    )
    release: int = _f(MASK_BITS, "units given a token on completion (bit u = Unit u)")

    @classmethod
    def field_specs(cls) -> list[tuple[str, FieldSpec]]:
        specs = cls.__dict__.get("_field_specs")
        if specs is None:  # computed once per class: check() runs for every instruction
            specs = [(f.name, f.metadata["isa"]) for f in dataclasses.fields(cls)]
            cls._field_specs = specs
        return specs

    def values(self) -> dict[str, int]:
        return {f.name: getattr(self, f.name) for f in dataclasses.fields(self)}

    def check(self) -> None:
        """Raise :class:`EncodeError` unless every field is in range and consistent."""
        name = type(self).__name__
        for fname, spec in self.field_specs():
            spec.check(name, fname, getattr(self, fname))
        if self.UNIT is None:
            if self.wait or self.release:
                raise EncodeError(f"{name}: wait and release must be 0 on SYS instructions")
        else:
            own = 1 << self.UNIT
            for fname in ("wait", "release"):
                if getattr(self, fname) & own:
                    raise EncodeError(f"{name}.{fname}: names its own unit {self.UNIT.name}")
        self._check()

    def _check(self) -> None:
        """Per-instruction consistency rules beyond field ranges."""

    def __str__(self) -> str:
        return disassemble(self)


def _nonzero(instr: Instruction, *names: str) -> None:
    for n in names:
        if getattr(instr, n) == 0:
            raise EncodeError(f"{type(instr).__name__}.{n}: must be at least 1")


@dataclass(frozen=True)
class SYS(Instruction):
    """Control: sections end with HALT."""

    OPCODE = Opcode.SYS
    UNIT = None
    op: SysOp = _f(4, "system operation", SysOp, SysOp.NOP)


@dataclass(frozen=True)
class LD(Instruction):
    """2D transfer from external memory into an on-chip buffer."""

    OPCODE = Opcode.LD
    UNIT = Unit.LD
    buf: Buf = _f(3, "destination buffer", Buf, Buf.ACT)
    dst: int = _f(BUF_ADDR_BITS, "destination byte address in the buffer")
    src: int = _f(EXT_ADDR_BITS, "source byte address in external memory")
    rows: int = _f(DIM_BITS, "number of rows")
    row_bytes: int = _f(ROW_BYTES_BITS, "contiguous bytes per row")
    src_stride: int = _f(EXT_STRIDE_BITS, "bytes between row starts in external memory")
    dst_stride: int = _f(BUF_STRIDE_BITS, "bytes between row starts in the buffer")
    dyn_step: int = _f(EXT_STRIDE_BITS, "src moves by D * dyn_step (length-adaptive sections)")
    unpack: Unpack = _f(2, "widen packed low-bit values to INT8 on load", Unpack, Unpack.NONE)
    dyn_rows: int = _f(1, "rows grow by D (a KV-cache tile over the actual context)")

    @property
    def src_row_bytes(self) -> int:
        """Bytes read from external memory per row."""
        return -(-self.row_bytes * Unpack(self.unpack).bits // 8)

    def _check(self) -> None:
        _nonzero(self, "rows", "row_bytes")


@dataclass(frozen=True)
class ST(Instruction):
    """2D transfer from an on-chip buffer to external memory."""

    OPCODE = Opcode.ST
    UNIT = Unit.ST
    buf: Buf = _f(3, "source buffer", Buf, Buf.ACT)
    src: int = _f(BUF_ADDR_BITS, "source byte address in the buffer")
    dst: int = _f(EXT_ADDR_BITS, "destination byte address in external memory")
    rows: int = _f(DIM_BITS, "number of rows")
    row_bytes: int = _f(ROW_BYTES_BITS, "contiguous bytes per row")
    src_stride: int = _f(BUF_STRIDE_BITS, "bytes between row starts in the buffer")
    dst_stride: int = _f(EXT_STRIDE_BITS, "bytes between row starts in external memory")
    dyn_step: int = _f(EXT_STRIDE_BITS, "dst moves by D * dyn_step (length-adaptive sections)")

    def _check(self) -> None:
        _nonzero(self, "rows", "row_bytes")


_MATMUL_COMMON_DOC = """
    ``C[m, n] = sat(rnd(((acc[m, n] + bias[n]) * mult[n]) >> shift))`` with
    ``acc[m, n] = sum_g u[n, g] * sum_{k in g} A[m, k] * W[n, k]`` (``u = 1`` without
    groups; ``acc`` starts from the INT32 partial sums at ``p_addr`` when ``acc_in``).
    A is INT8 in ACT (row stride ``a_stride``); W is in WGT in the packed layout of
    :mod:`flightforge.formats` (``[N][K]``, or ``[K][N]`` INT8 dense when ``wkn``);
    sparse indices are in META; per-column records (bias, multiplier, group scales)
    are in SCALE at ``q_addr`` when ``colp``, else bias is 0 and ``mult`` is the
    immediate. C goes to ACT with element type ``odt`` and row stride ``d_stride``.
"""


@dataclass(frozen=True)
class _MatMul(Instruction):
    n: int = _f(DIM_BITS, "output columns N")
    k: int = _f(DIM_BITS, "reduction length K")
    a_addr: int = _f(BUF_ADDR_BITS, "activation A in ACT (INT8)")
    w_addr: int = _f(BUF_ADDR_BITS, "packed weights W in WGT")
    meta_addr: int = _f(BUF_ADDR_BITS, "sparse indices in META (sparse modes only)")
    q_addr: int = _f(BUF_ADDR_BITS, "per-column records in SCALE (when colp)")
    p_addr: int = _f(BUF_ADDR_BITS, "INT32 partial sums in ACT read when acc_in")
    d_addr: int = _f(BUF_ADDR_BITS, "output C in ACT")
    d_stride: int = _f(BUF_STRIDE_BITS, "bytes between rows of C (and of the partial sums)")
    sparse: SparseMode = _f(3, "weight sparsity", SparseMode, SparseMode.DENSE)
    wprec: WPrec = _f(2, "weight precision", WPrec, WPrec.INT8)
    gsz: int = _f(GSZ_BITS, "group-scale size code along K: 0 none, else 2**(gsz+3)")
    wkn: int = _f(1, "W stored [K][N] (dense INT8 only), e.g. a V cache tile")
    colp: int = _f(1, "per-column records at q_addr (bias, multiplier, group scales)")
    acc_in: int = _f(1, "start accumulators from the partial sums at p_addr")
    odt: DType = _f(2, "output element type", DType, DType.INT8)
    mult: int = _f(MULT_BITS, "requantisation multiplier when colp is 0")
    shift: int = _f(SHIFT_BITS, "requantisation right shift")
    dyn_n: int = _f(1, "n grows by D (attention scores over the actual context)")
    dyn_k: int = _f(1, "k grows by D (a PV product over the actual context)")

    @property
    def rows(self) -> int:
        return 1

    def _check(self) -> None:
        _nonzero(self, "n", "k")
        name = type(self).__name__
        mode = SparseMode(self.sparse)
        if self.wkn and (mode.is_sparse or self.wprec != WPrec.INT8 or self.gsz or self.colp):
            raise EncodeError(
                f"{name}.wkn: a [K][N] weight must be dense INT8 with no per-column records"
            )
        if mode.is_sparse and self.k % mode.m:
            raise EncodeError(
                f"{name}.k: {self.k} is not a multiple of the sparse block "
                f"m={mode.m} of {mode.name}"
            )
        if self.gsz:
            g = group_size(self.gsz)
            if not self.colp:
                raise EncodeError(f"{name}.gsz: group scales need per-column records (colp=1)")
            if self.k % g:
                raise EncodeError(f"{name}.gsz: K={self.k} is not a multiple of the group size {g}")
            if mode.is_sparse and g % mode.m:
                raise EncodeError(
                    f"{name}.gsz: group size {g} is not a multiple of the sparse block m={mode.m}"
                )
        if self.wprec == WPrec.INT4 and self.k % 2 and not mode.is_sparse:
            raise EncodeError(f"{name}.k: INT4 dense weights need an even K, not {self.k}")


@dataclass(frozen=True)
class MM(_MatMul):
    __doc__ = (
        "Matrix-matrix product (prefill GEMM/SpMM, attention block GEMMs)." + _MATMUL_COMMON_DOC
    )
    OPCODE = Opcode.MM
    UNIT = Unit.MPE
    m: int = _f(DIM_BITS, "rows M of A and C")
    a_stride: int = _f(BUF_STRIDE_BITS, "bytes between rows of A")

    @property
    def rows(self) -> int:
        return self.m

    def _check(self) -> None:
        _nonzero(self, "m")
        super()._check()


@dataclass(frozen=True)
class MV(_MatMul):
    __doc__ = "Matrix-vector product (decode GEMV/SpMV): MM with a single row." + _MATMUL_COMMON_DOC
    OPCODE = Opcode.MV
    UNIT = Unit.MPE


@dataclass(frozen=True)
class MISC(Instruction):
    """Special-function unit operation on a ``rows x cols`` tile in ACT."""

    OPCODE = Opcode.MISC
    UNIT = Unit.SFU
    op: MiscOp = _f(5, "operation", MiscOp, MiscOp.ADD)
    rows: int = _f(DIM_BITS, "rows")
    cols: int = _f(DIM_BITS, "columns")
    a_addr: int = _f(BUF_ADDR_BITS, "first operand in ACT")
    a_stride: int = _f(BUF_STRIDE_BITS, "bytes between rows of the first operand")
    a_dt: DType = _f(2, "first operand element type", DType, DType.INT8)
    b_addr: int = _f(BUF_ADDR_BITS, "second operand in ACT (ADD, MUL)")
    b_stride: int = _f(BUF_STRIDE_BITS, "bytes between rows of the second operand")
    b_dt: DType = _f(2, "second operand element type", DType, DType.INT8)
    d_addr: int = _f(BUF_ADDR_BITS, "result in ACT")
    d_stride: int = _f(BUF_STRIDE_BITS, "bytes between rows of the result")
    d_dt: DType = _f(2, "result element type", DType, DType.INT8)
    p_addr: int = _f(BUF_ADDR_BITS, "parameters in GLB: gains, biases, tables")
    m0: int = _f(MULT_BITS, "first fixed-point multiplier")
    m1: int = _f(MULT_BITS, "second fixed-point multiplier")
    shift: int = _f(SHIFT_BITS, "right shift after the multipliers")
    pos: int = _f(DIM_BITS, "absolute position of row 0 (causal mask, RoPE)")
    len: int = _f(DIM_BITS, "SOFTMAX: valid columns (0 = all); ROPE: head dimension")
    causal: int = _f(1, "SOFTMAX: mask column j of row r when j > pos + r")
    eps: int = _f(16, "RMSNORM/LAYERNORM: epsilon in squared input units")
    a_step: int = _f(BUF_STRIDE_BITS, "a_addr moves by D * a_step (length-adaptive sections)")
    dyn_pos: int = _f(1, "pos moves by D (length-adaptive sections)")
    dyn_cols: int = _f(1, "cols grow by D (a softmax over the actual context)")

    def _check(self) -> None:
        _nonzero(self, "rows", "cols")
        op = MiscOp(self.op)
        if op.is_table and self.a_dt != DType.INT8:
            raise EncodeError(f"MISC.a_dt: {op.name} reads a 256-entry table and needs INT8 input")
        if op == MiscOp.MUL and DType.INT32 in (self.a_dt, self.b_dt):
            raise EncodeError("MISC.a_dt: MUL takes INT8 or INT16 operands")
        if op in (MiscOp.RMSNORM, MiscOp.LAYERNORM) and self.a_dt == DType.INT32:
            raise EncodeError(f"MISC.a_dt: {op.name} takes INT8 or INT16 input")
        if op == MiscOp.ROPE:
            if self.len == 0 or self.len % 2 or self.cols % self.len:
                raise EncodeError(
                    f"MISC.len: ROPE head dimension {self.len} must be even, "
                    f"nonzero and divide cols={self.cols}"
                )


#: The dynamic fields of each class, as ``(step, target)``: the effective ``target`` is
#: the static field plus ``D * step`` (the functional simulator, the cycle model and the
#: RTL's length register all apply this table).
DYNAMIC_FIELDS: dict[type[Instruction], tuple[tuple[str, str], ...]] = {
    LD: (("dyn_step", "src"), ("dyn_rows", "rows")),
    ST: (("dyn_step", "dst"),),
    MM: (("dyn_n", "n"), ("dyn_k", "k")),
    MV: (("dyn_n", "n"), ("dyn_k", "k")),
    MISC: (("a_step", "a_addr"), ("dyn_pos", "pos"), ("dyn_cols", "cols")),
}


def resolve(instr: Instruction, d: int) -> Instruction:
    """The static instruction a dynamic one performs when ``D = d``.

    Raises :class:`EncodeError` naming the field when an effective value leaves its range.
    """
    fields = DYNAMIC_FIELDS.get(type(instr), ())
    if d == 0 or not any(getattr(instr, step) for step, _ in fields):
        return instr
    new = dataclasses.replace(
        instr,
        **{
            k: v
            for step, target in fields
            for k, v in ((target, getattr(instr, target) + d * getattr(instr, step)), (step, 0))
        },
    )
    try:
        new.check()
    except EncodeError as e:
        raise EncodeError(f"with D={d}: {e}") from None
    return new


def is_dynamic(instr: Instruction) -> bool:
    return any(getattr(instr, step) for step, _ in DYNAMIC_FIELDS.get(type(instr), ()))


class Side(enum.IntEnum):
    """The two sides of a buffer: each is one port of its RAMs (``docs/rtl.md``)."""

    READ = 0
    WRITE = 1


SIDE_BITS = 2 * len(Buf)  #: one bit per (buffer, side): bit ``2 * buf + side``


def side_bit(buf: Buf, side: Side) -> int:
    return 1 << (2 * int(buf) + int(side))


def buffer_sides(instr: Instruction) -> int:
    """The buffer sides ``instr`` holds while it runs, as a mask of :func:`side_bit`.

    Why: a buffer's RAMs have one read and one write port, and a unit that accesses a
    side owns it from its instruction's start to its end. The dispatch rule
    (:mod:`flightforge.sim.dispatch`, the RTL controller) starts an instruction only when
    no other running instruction holds a side it needs, so two units never share a
    port cycle by cycle and no arbiter can make a unit wait mid-instruction: the model
    and the RTL agree by construction. The sides follow from the opcode and the fields
    that select buffers, nothing dynamic (the controller computes them from the issue
    queue's head): LD writes ``buf``, ST reads ``buf``; MM/MV read ACT (activations and
    partial sums) and WGT, META when sparse, SCALE when ``colp``, and write ACT; MISC
    reads and writes ACT and reads GLB when its operation takes parameters."""
    if isinstance(instr, LD):
        return side_bit(Buf(instr.buf), Side.WRITE)
    if isinstance(instr, ST):
        return side_bit(Buf(instr.buf), Side.READ)
    if isinstance(instr, _MatMul):
        mask = side_bit(Buf.ACT, Side.READ) | side_bit(Buf.WGT, Side.READ)
        mask |= side_bit(Buf.ACT, Side.WRITE)
        if SparseMode(instr.sparse).is_sparse:
            mask |= side_bit(Buf.META, Side.READ)
        if instr.colp:
            mask |= side_bit(Buf.SCALE, Side.READ)
        return mask
    if isinstance(instr, MISC):
        mask = side_bit(Buf.ACT, Side.READ) | side_bit(Buf.ACT, Side.WRITE)
        if MiscOp(instr.op).reads_glb:
            mask |= side_bit(Buf.GLB, Side.READ)
        return mask
    return 0


#: The fields :func:`buffer_sides` reads, per class (the RTL controller tabulates the
#: function over every value of these; ``tests/test_isa.py`` checks no other field matters).
SIDE_FIELDS: dict[type[Instruction], tuple[str, ...]] = {
    LD: ("buf",),
    ST: ("buf",),
    MM: ("sparse", "colp"),
    MV: ("sparse", "colp"),
    MISC: ("op",),
}


def sides_str(mask: int) -> str:
    """``ACT.read+WGT.read`` for a :func:`buffer_sides` mask."""
    names = [f"{b.name}.{s.name.lower()}" for b in Buf for s in Side if mask & side_bit(b, s)]
    return "+".join(names) or "none"


INSTRUCTION_TYPES: dict[Opcode, type[Instruction]] = {
    cls.OPCODE: cls for cls in (SYS, LD, ST, MM, MV, MISC)
}


def layout(cls: type[Instruction]) -> list[tuple[str, int, int, FieldSpec]]:
    """Bit layout of an instruction: ``(name, lsb, width, spec)`` for every field.

    The opcode occupies the lowest ``OPCODE_BITS``; the RTL decoder slices the same
    ranges.
    """
    rows = [("opcode", 0, OPCODE_BITS, FieldSpec(OPCODE_BITS, "operation code", Opcode))]
    lsb = OPCODE_BITS
    for name, spec in cls.field_specs():
        rows.append((name, lsb, spec.width, spec))
        lsb += spec.width
    if lsb > INSTR_BITS:  # pragma: no cover - guarded by a test over every type
        raise AssertionError(f"{cls.__name__} needs {lsb} bits, more than {INSTR_BITS}")
    return rows


_LAYOUTS = {op: layout(cls) for op, cls in INSTRUCTION_TYPES.items()}


def encode_word(instr: Instruction) -> int:
    """The instruction as one ``INSTR_BITS``-bit integer."""
    instr.check()
    value = 0
    for name, lsb, _, _ in _LAYOUTS[instr.OPCODE]:
        v = int(instr.OPCODE) if name == "opcode" else int(getattr(instr, name))
        value |= v << lsb
    return value


def encode(instrs: Iterable[Instruction]) -> bytes:
    """Encode a stream; errors name the instruction index and the field."""
    out = bytearray()
    for i, instr in enumerate(instrs):
        try:
            out += encode_word(instr).to_bytes(INSTR_BYTES, "little")
        except EncodeError as e:
            raise EncodeError(f"instruction {i}: {e}") from None
    return bytes(out)


def decode_word(value: int, where: str = "instruction") -> Instruction:
    """Decode one ``INSTR_BITS``-bit integer; ``where`` prefixes error messages."""
    op_val = value & ((1 << OPCODE_BITS) - 1)
    try:
        op = Opcode(op_val)
    except ValueError:
        raise DecodeError(f"{where}: unknown opcode {op_val}") from None
    cls = INSTRUCTION_TYPES[op]
    kwargs: dict[str, Any] = {}
    lsb = OPCODE_BITS
    for name, lsb, width, spec in _LAYOUTS[op][1:]:
        raw = (value >> lsb) & ((1 << width) - 1)
        if spec.enum is not None:
            try:
                raw = spec.enum(raw)
            except ValueError:
                raise DecodeError(
                    f"{where} ({op.name}): field {name} has invalid value {raw}"
                ) from None
        kwargs[name] = raw
    used = _LAYOUTS[op][-1][1] + _LAYOUTS[op][-1][2]
    if value >> used:
        raise DecodeError(
            f"{where} ({op.name}): reserved bits {used}..{INSTR_BITS - 1} are not zero"
        )
    instr = cls(**kwargs)
    try:
        instr.check()
    except EncodeError as e:
        raise DecodeError(f"{where}: {e}") from None
    return instr


def decode(data: bytes) -> list[Instruction]:
    """Decode a whole stream; refuses truncated streams and unknown opcodes."""
    if len(data) % INSTR_BYTES:
        raise DecodeError(
            f"instruction stream of {len(data)} bytes is truncated: not a multiple "
            f"of {INSTR_BYTES} bytes ({len(data) // INSTR_BYTES} whole instructions, "
            f"{len(data) % INSTR_BYTES} bytes left over)"
        )
    return list(iter_decode(data))


def iter_decode(data: bytes) -> Iterator[Instruction]:
    for i in range(len(data) // INSTR_BYTES):
        word = int.from_bytes(data[i * INSTR_BYTES : (i + 1) * INSTR_BYTES], "little")
        yield decode_word(word, f"instruction {i} (byte offset {i * INSTR_BYTES})")


def _mask_str(mask: int) -> str:
    return "|".join(u.name for u in Unit if mask >> u & 1) or "-"


def disassemble(instr: Instruction) -> str:
    """One line of assembly: mnemonic, dependency masks, then non-default fields."""
    parts = []
    for f in dataclasses.fields(instr):
        if f.name in ("wait", "release"):
            continue
        v = getattr(instr, f.name)
        if v == f.default and f.name not in ("op",):
            continue
        parts.append(f"{f.name}={v.name if isinstance(v, enum.Enum) else v}")
    deps = f"[w:{_mask_str(instr.wait)} r:{_mask_str(instr.release)}]"
    return f"{instr.OPCODE.name:<4} {deps:<18} " + " ".join(parts)


def markdown_table() -> str:
    """The ISA reference in Markdown; docs/isa.md is this text (a test keeps it fresh)."""
    lines = [
        "<!-- Generated from flightforge/isa.py by `flightforge isa --markdown`. Do not edit. -->",
        "# FlightForge ISA",
        "",
        f"ISA version {ISA_VERSION}. Every instruction is {INSTR_WORDS} little-endian 32-bit "
        f"words ({INSTR_BITS} bits); fields are packed LSB-first in the order below; "
        "unused high bits are reserved and must be zero.",
        "",
        "Units (bit positions of the wait/release masks): "
        + ", ".join(f"{u.name}={u.value}" for u in Unit)
        + ".",
        "",
        "Buffer sides (`buffer_sides`): each buffer has one read and one write port; an "
        "instruction holds the sides it uses from its start to its end and starts only when "
        "no other unit's running instruction holds one of them. LD writes `buf`; ST reads "
        "`buf`; MM and MV read ACT and WGT, META when sparse, SCALE when `colp`, and write "
        "ACT; MISC reads and writes ACT and reads GLB for RMSNORM, LAYERNORM, ROPE and the "
        "table operations.",
        "",
    ]
    for e in (Buf, DType, WPrec, Unpack, SparseMode, MiscOp, SysOp):
        lines.append(f"- `{e.__name__}`: " + ", ".join(f"{m.name}={m.value}" for m in e))
    for op, cls in INSTRUCTION_TYPES.items():
        doc = " ".join((cls.__doc__ or "").split())
        unit = cls.UNIT.name if cls.UNIT is not None else "controller"
        lines += [
            "",
            f"## {op.name} (opcode {op.value}, unit {unit})",
            "",
            doc,
            "",
            "| field | bits | width | meaning |",
            "|---|---|---|---|",
        ]
        for name, lsb, width, spec in _LAYOUTS[op]:
            meaning = spec.doc + (f" ({spec.enum.__name__})" if spec.enum else "")
            lines.append(f"| `{name}` | {lsb}..{lsb + width - 1} | {width} | {meaning} |")
    return "\n".join(lines) + "\n"
