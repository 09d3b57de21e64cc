"""A decoder program with every scale, integer weight and table fixed.

:func:`quantize_decoder` turns a float :class:`DecoderProgram` plus calibrated ranges
into a :class:`QuantDecoder`; the integer reference (:mod:`.qref`) and the lowering
(:mod:`.lower`) both read it, so they use identical parameters.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np

from flightforge import numerics
from flightforge.isa import DType, SparseMode, WPrec

from ..errors import CompileError
from ..graph import Act, Attention, DecoderProgram, Linear, Norm, Rope
from ..interpret import ACT_FNS
from . import fixed_point
from .calibrate import TensorStats
from .fixed_point import SPLIT_MAX
from .plans import PlanSpec, sparse_mode
from .quantize import LinearLayout, QuantLinear, quantize_linear

INT16_MAX = 32767
INT8_MAX = 127
MIN_RANGE = 1e-6


@dataclass(frozen=True)
class WeightPlan:
    """How one Linear layer's weights are stored: engine precision, group scales, N:M
    sparsity, and ``store_bits`` 2 or 3 for weights kept packed in external memory and
    widened to INT8 as they are loaded (the engine then runs its INT8 path)."""

    prec: WPrec = WPrec.INT8
    group: int = 0
    sparse: SparseMode = SparseMode.DENSE
    store_bits: int = 0

    @property
    def bits(self) -> int:
        """Bits per stored weight."""
        return self.store_bits or WPrec(self.prec).bits

    @classmethod
    def for_bits(cls, bits: int, group: int, sparse: SparseMode = SparseMode.DENSE) -> WeightPlan:
        if bits == 8:
            return cls(WPrec.INT8, group, sparse)
        if bits == 4:
            return cls(WPrec.INT4, group, sparse)
        if bits in (2, 3):
            if SparseMode(sparse).is_sparse:
                raise CompileError(
                    f"{bits}-bit weights are stored dense (packed); N:M sparsity needs 4 or 8 bits"
                )
            return cls(WPrec.INT8, group, sparse, bits)
        raise CompileError(f"weight bits must be 2, 3, 4 or 8, not {bits}")


@dataclass(frozen=True)
class QuantOptions:
    weight_bits: int = 8
    group: int = 32  #: used for INT4 weights; the largest valid size dividing K otherwise
    plans: dict[str, WeightPlan] = field(default_factory=dict)  #: per-layer overrides
    mse_clip: bool = False  #: INT8 activation scales by MSE-optimal clipping (else max)
    #: Room above the calibrated peak (see docs/compiler.md, "Quantisation"). The attention's
    #: q and k get some: a clipped q or k outlier is the largest term of the winning score,
    #: so clipping it changes which key wins. INT16 tensors get a factor that costs one of
    #: their 15 bits, so that later positions and other prompts do not clip them.
    qk_headroom: float = 1.15
    wide_headroom: float = 2.0
    spec: PlanSpec | None = None  #: per-layer rules from a plan file (compiler/quant/plans.py)
    #: Bits of the matrix engine's activations: 8, or 16 run as two INT8 halves per
    #: operand (docs/compiler.md, "16-bit activations"): every Linear input and the
    #: attention's q, k and v become INT16, at twice the engine passes.
    act_bits: int = 8

    def __post_init__(self) -> None:
        if self.act_bits not in ACT_BITS:
            raise CompileError(
                f"activation bits must be one of {', '.join(map(str, ACT_BITS))}, "
                f"not {self.act_bits}"
            )

    def plan_for(self, name: str, k: int) -> WeightPlan:
        if name in self.plans:
            return self.plans[name]
        rule = self.spec.resolve(name) if self.spec is not None else {}
        bits = rule.get("bits", self.weight_bits)
        sparse = sparse_mode(rule.get("sparse", "dense"))
        if bits == 8 and "group" not in rule:
            return WeightPlan(WPrec.INT8, 0, sparse)
        return WeightPlan.for_bits(bits, _fit_group(rule.get("group", self.group), k), sparse)


ACT_BITS = (8, 16)


def split_tensors(prog: DecoderProgram) -> frozenset[str]:
    """The matrix engine's inputs carried as INT16 and split into two INT8 halves.

    Every Linear input and the attention's q, k, v, except a tensor a 256-entry table
    also reads (its input must be INT8).
    """
    mpe_inputs = set()
    table_inputs = set()
    for op in prog.ops:
        if isinstance(op, Linear):
            mpe_inputs.add(op.x)
        elif isinstance(op, Attention):
            mpe_inputs.update((op.q, op.k, op.v))
        elif isinstance(op, Act):
            table_inputs.add(op.x)
    split = mpe_inputs - table_inputs - prog.wide
    for op in prog.ops:  # an attention's three operands are all split, or none
        if isinstance(op, Attention) and not {op.q, op.k, op.v} <= split:
            split -= {op.q, op.k, op.v}
    return frozenset(split)


def _top_code(name: str, prog: DecoderProgram, split: frozenset[str]) -> int:
    """The integer code a tensor's scale maps its (calibrated) peak to: INT8's, INT16's,
    or, for a split tensor, the largest its two halves hold exactly."""
    return SPLIT_MAX if name in split else INT16_MAX if name in prog.wide else INT8_MAX


def _fit_group(group: int, k: int) -> int:
    """The largest allowed group size <= ``group`` dividing K (0: one scale per column)."""
    g = group
    while g >= 16:
        if k % g == 0:
            return g
        g //= 2
    return 0


@dataclass(frozen=True)
class NormQ:
    gamma: np.ndarray  #: INT16 gains with the output scale folded in
    beta: np.ndarray | None  #: INT16 biases in output units (LayerNorm)
    shift: int
    eps: int

    def params(self) -> np.ndarray:
        g = self.gamma.astype("<i2")
        return g if self.beta is None else np.concatenate([g, self.beta.astype("<i2")])


@dataclass(frozen=True)
class QuantDecoder:
    prog: DecoderProgram
    scales: dict[str, float]
    linears: dict[str, QuantLinear]
    norms: dict[str, NormQ]
    tables: dict[str, np.ndarray]  #: Act output name -> 256-entry INT8 table
    embed: np.ndarray | None  #: INT16 [vocab][hidden] at the input scale (None: shape-only)
    positions: np.ndarray | None  #: INT16 learned positions at the input scale
    plans: dict[str, WeightPlan]
    linears_shape_only: dict[str, LinearLayout] = field(default_factory=dict)
    #: INT16 engine inputs run as two INT8 halves (empty with 8-bit activations)
    split: frozenset[str] = frozenset()

    @property
    def shape_only(self) -> bool:
        return self.embed is None

    def linear(self, name: str) -> QuantLinear | LinearLayout:
        return self.linears[name] if name in self.linears else self.linears_shape_only[name]

    def dtype(self, name: str) -> DType:
        return DType.INT16 if name in self.prog.wide or name in self.split else DType.INT8

    def input_rows(self, ids: np.ndarray, pos0: int) -> np.ndarray:
        """The host's embedding gather: INT16 rows, saturating when positions are added."""
        x = self.embed[np.asarray(ids)].astype(np.int64)
        if self.positions is not None:
            off = self.prog.position_offset + pos0
            x = x + self.positions[off : off + len(ids)]
        return numerics.sat(x, DType.INT16)


def quantize_decoder(
    prog: DecoderProgram, stats: dict[str, TensorStats], options: QuantOptions = QuantOptions()
) -> QuantDecoder:
    emb_peak = float(np.abs(prog.embed).max())
    if prog.positions is not None:
        emb_peak += float(np.abs(prog.positions).max())
    for what in ("qk_headroom", "wide_headroom"):
        value = getattr(options, what)
        if not value >= 1.0:
            raise CompileError(f"QuantOptions.{what} must be at least 1, not {value}")
    split = split_tensors(prog) if options.act_bits == 16 else frozenset()
    scales: dict[str, float] = {}
    for name, st in stats.items():
        wide = name in prog.wide or name in split
        scales[name] = st.scale(_top_code(name, prog, split), search=options.mse_clip and not wide)
        if wide:
            scales[name] *= options.wide_headroom
    scales[prog.input] = max(emb_peak, MIN_RANGE) / INT16_MAX  # the table's own range: exact
    for op in prog.ops:
        if isinstance(op, Attention):
            for name in {op.q, op.k} - split:
                scales[name] *= options.qk_headroom
    linears, plans, norms, tables = {}, {}, {}, {}
    for op in prog.ops:
        if isinstance(op, Linear):
            p = prog.linears[op.weight]
            plan = options.plan_for(op.weight, p.w.shape[1])
            plans[op.weight] = plan
            linears[op.weight] = quantize_linear(
                p.w,
                p.b,
                prec=plan.prec,
                group=plan.group,
                sparse=plan.sparse,
                store_bits=plan.store_bits,
            )
        elif isinstance(op, Norm):
            n = prog.norms[op.params]
            gamma, shift = fixed_point.norm_gain(n.gamma, scales[op.out])
            beta = None
            if n.beta is not None:
                beta = np.clip(np.round(n.beta / scales[op.out]), -32768, 32767).astype(np.int64)
            norms[op.params] = NormQ(gamma, beta, shift, fixed_point.norm_eps(n.eps, scales[op.x]))
        elif isinstance(op, Act):
            tables[op.out] = numerics.lut_for(
                ACT_FNS[op.fn],
                scales[op.x],
                scales[op.out],
                DType.INT16 if op.out in split else DType.INT8,
            )
    s_in = scales[prog.input]
    embed = np.clip(np.round(prog.embed / s_in), -INT16_MAX - 1, INT16_MAX).astype(np.int64)
    positions = None
    if prog.positions is not None:
        positions = np.clip(np.round(prog.positions / s_in), -INT16_MAX - 1, INT16_MAX).astype(
            np.int64
        )
    return QuantDecoder(prog, scales, linears, norms, tables, embed, positions, plans, split=split)


def shape_only_decoder(
    prog: DecoderProgram,
    shapes: dict[str, tuple[int, int]],
    options: QuantOptions = QuantOptions(),
    *,
    layer_norm: bool = False,
) -> QuantDecoder:
    """A QuantDecoder with layouts but no values, for performance work on full-size models.

    Scales are nominal (one integer step per unit); the program it lowers to has every
    instruction, address and size of a real compile, and no weight data.
    """
    split = split_tensors(prog) if options.act_bits == 16 else frozenset()
    scales: dict[str, float] = {prog.input: 1.0 / INT16_MAX}
    for op in prog.ops:
        out = op.x if isinstance(op, Rope) else op.out
        scales[out] = 1.0 / _top_code(out, prog, split)
    layouts, plans, norms, tables = {}, {}, {}, {}
    for op in prog.ops:
        if isinstance(op, Linear):
            n, k = shapes[op.weight]
            plan = options.plan_for(op.weight, k)
            plans[op.weight] = plan
            layouts[op.weight] = LinearLayout(
                n, k, plan.prec, plan.sparse, plan.group, plan.store_bits
            )
        elif isinstance(op, Norm):
            zeros = np.zeros(prog.hidden, dtype=np.int64)
            norms[op.params] = NormQ(zeros, zeros if layer_norm else None, 0, 0)
        elif isinstance(op, Act):
            tables[op.out] = np.zeros(256, dtype=np.int64)
    return QuantDecoder(prog, scales, {}, norms, tables, None, None, plans, layouts, split)
