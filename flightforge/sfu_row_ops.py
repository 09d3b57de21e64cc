"""The SFU's row operations (SOFTMAX, RMSNORM, LAYERNORM): datapath widths and timing.

The RTL (``hw/sfu``) builds these operations and the cycle model (``sim/timing.py``)
charges them; both take the widths, latencies and the per-instruction cycle count from
here, so the model stays cycle-exact with the hardware by construction, not by copy.

A row reduction makes two or three passes over each row at the lane rate (``p``
cycles a pass, the byte-credit schedule of ``Timing.misc``) and, between its
statistics and its output pass, waits for sequential arithmetic that runs once per row:
the softmax reciprocal ``2**38 // sum`` (a restoring divider, one quotient bit a cycle)
or the norms' mean, mean square, integer square root and inverse root. The hardware
hides that wait behind the next row's first pass (see :func:`softmax_cycles` and
:func:`norm_cycles`); only what does not fit behind it is exposed.
"""

from __future__ import annotations

from . import isa, numerics

# --- widths of the per-row arithmetic -----------------------------------------------------

#: Width of one exp2 value (the softmax ROM entries); 2**0 needs 16 bits.
EXP_BITS = int(numerics.EXP2_LUT.max()).bit_length()
#: Width of the row sum of exponents: at most 2**16 columns of at most 2**15.
SUM_BITS = isa.DIM_BITS + EXP_BITS
#: The dividend ``2**38`` of the softmax reciprocal.
RECIP_DIVIDEND_BITS = numerics.SOFTMAX_RECIP_BITS + 1
#: The softmax exponent shift is clamped here (``min(t >> 8, 16)``) by numerics.
EXP_MAX_SHIFT = 16

#: Norm input bits: norms take INT8 or INT16 (isa.MISC refuses INT32).
X_BITS = isa.DType.INT16.bits
#: |sum x| < 2**(X_BITS - 1 + DIM_BITS); one more bit for the sign.
S1_BITS = X_BITS + isa.DIM_BITS
#: sum x**2 (or of the centred values) < 2**(2 * X_BITS + DIM_BITS).
S2_BITS = 2 * X_BITS + isa.DIM_BITS
#: mean square + eps <= (2**X_BITS)**2 + 2**16: the centred values span 2**X_BITS.
MS_BITS = 2 * X_BITS + 2
#: isqrt(ms << 16), then inv = 2**38 // r.
RADICAND_BITS = MS_BITS + 16
INV_DIVIDEND_BITS = numerics.NORM_RSQRT_BITS + 1
DIV_DIVIDEND_BITS = max(S1_BITS, S2_BITS, INV_DIVIDEND_BITS)
ROOT_BITS = (RADICAND_BITS + 1) // 2
DIV_DIVISOR_BITS = max(isa.DIM_BITS, ROOT_BITS)
#: LAYERNORM's centring after its mean: ``2*S1 - n*mean``, then ``mean*centre`` (on
#: DSP48E2s, registered), then ``S2 - mean*centre``.
CENTRE_STEPS = 3


# --- latencies ------------------------------------------------------------------------

#: The register stages of an SFU lane (``hw/sfu/lane.py``, which checks its stages against
#: this list as it builds them): operand registers (the DSP48E2s' A/B), the two DSP
#: products of ``a*b`` (M), their sum ``p1``, the rounding shift and the rounding
#: increment of ``round1``, the products of ``c*d`` or ``round1*d``, their sum ``p2``, ``w``
#: with its rounding bit, the rounding shift of ``w`` (by multiples of 8, then the rest),
#: the bias, the saturation. Each is at
#: most one DSP48E2, one carry chain of 32 bits, one barrel shift or one saturation deep.
LANE_STAGES = (
    "operands",
    "products1",
    "p1",
    "shift1",
    "round1",
    "products2",
    "p2",
    "w",
    "align2",
    "shift2",
    "bias",
    "saturate",
)
#: Cycles from a lane's operands to ``prod`` (``a*b``), ``round1`` and ``result``.
LANE_PROD = LANE_STAGES.index("p1") + 1
LANE_ROUND1 = LANE_STAGES.index("round1") + 1
LANE_LATENCY = len(LANE_STAGES)

#: Cycles from a pipeline's decision to issue elements to their read requests: the
#: address's terms registered (the row's offset on a DSP48E2, the column's byte offset),
#: then their sum (``hw/sfu/common.py`` ``staged_sum``).
ISSUE_STAGES = 2
#: Cycles every MISC instruction has after its last issue besides its arithmetic: the
#: unit's start cycle (it starts the pipeline a cycle after its own start), the
#: :data:`ISSUE_STAGES`, the cycle from a read request to its data, and the write.
MISC_OVERHEAD = 3 + ISSUE_STAGES
#: Cycles from an element's operands to its result's write through one lane (element-wise,
#: tables, ROPE, the norms' output).
LANE_COMPUTE = LANE_LATENCY


#: Cycles from a beat's data to its writes, for the operations that read two runs in a
#: two-cycle beat through one read port (ROPE: ``x1`` then ``x2``; ADD, MUL: ``a`` then
#: ``b``): the first run waits a cycle for the second, and the lanes' second phase (ROPE's
#: ``y2``, the beat's elements after the first ``lanes``) goes through them the cycle
#: after the first, so every run is written ``LANE_COMPUTE + 1`` after its read data.
BEAT_COMPUTE = LANE_COMPUTE + 1
#: The operations that run in two-cycle beats.
BEAT_OPS = (isa.MiscOp.ROPE, isa.MiscOp.ADD, isa.MiscOp.MUL)


def run_bytes(act_line: int, lanes: int) -> int:
    """Bytes of an SFU pipeline's ACT port: one cycle's ``lanes`` elements of up to 4
    bytes at consecutive columns, or the whole line (``act_line`` bytes) if narrower."""
    return min(act_line, lanes * max(d.nbytes for d in isa.DType))


def rope_pairs(lanes: int, act_line: int, glb_line: int, a_bytes: int, d_bytes: int) -> int:
    """Pairs a ROPE beat rotates: as many as the lanes, one ACT run of inputs (``x1`` or
    ``x2``), one ACT run of results and one GLB run of INT16 ``cos`` or ``sin`` hold."""
    run = run_bytes(act_line, lanes)
    return max(1, min(lanes, run // a_bytes, run // d_bytes, glb_line // 2))


def operand_beat_elements(
    lanes: int, act_line: int, a_bytes: int, b_bytes: int, d_bytes: int
) -> int:
    """Elements an ADD/MUL beat takes: one ACT run of ``a`` and one of ``b`` hold them, and
    the lanes compute them in two phases (the first ``lanes``, then the rest), each phase's
    results one ACT run (all in the first phase if ``lanes`` results do not fit a run)."""
    run = run_bytes(act_line, lanes)
    phases = 2 * lanes if lanes * d_bytes <= run else run // d_bytes
    return max(1, min(run // a_bytes, run // b_bytes, phases))


def beat_pass_cycles(cols: int, per_beat: int) -> int:
    """Cycles of one ADD/MUL row of ``cols`` elements in two-cycle beats of ``per_beat``."""
    return 2 * -(-cols // per_beat)


def rope_pass_cycles(cols: int, head: int, pairs: int) -> int:
    """Cycles of one ROPE row of ``cols`` columns (``head``-column chunks): every chunk's
    ``head / 2`` pairs in beats of ``pairs`` (fewer in a chunk's last), two cycles a beat
    (the ``x1``/``cos`` runs, then the ``x2``/``sin`` runs, through one read port each)."""
    return (cols // head) * 2 * -(-(head // 2) // pairs)


def max_tree_stages(lanes: int) -> int:
    """Register stages of SOFTMAX's maximum over one cycle's ``lanes`` elements: a tree of
    two-input maxima (a compare and a multiplexer), one level a stage."""
    return (lanes - 1).bit_length()


def softmax_compute(lanes: int) -> int:
    """Cycles from a SOFTMAX element's operands to its write: its row's maximum is final
    :func:`max_tree_stages` after the pass's last element, then ``d * m0`` through the
    lane's ``round1``, the exp2 ROM (a synchronous read) and ``e * recip`` through the lane
    again."""
    return max_tree_stages(lanes) + LANE_ROUND1 + 1 + LANE_LATENCY


#: Cycles from an element's operands to its ``x*x`` in a norm's statistics pass: out of
#: the lane, then the lanes' sum registered before it is accumulated.
NORM_STATS_DELAY = LANE_PROD + 1


def compute_cycles(op: isa.MiscOp, lanes: int) -> int:
    """:data:`LANE_COMPUTE`, :data:`BEAT_COMPUTE` or :func:`softmax_compute`: the
    arithmetic of ``op``'s pipeline."""
    if op == isa.MiscOp.SOFTMAX:
        return softmax_compute(lanes)
    return BEAT_COMPUTE if op in BEAT_OPS else LANE_COMPUTE


def misc_depth(op: isa.MiscOp, floor: int, lanes: int) -> int:
    """Cycles from a MISC instruction's last issue to its ``done`` on ``lanes`` lanes: its
    pipeline's :data:`MISC_OVERHEAD` and arithmetic, or the configured
    ``sfu.pipeline_depth`` (``floor``) if that is more (the pipelines pad to it)."""
    return max(floor, MISC_OVERHEAD + compute_cycles(op, lanes))


def divider_latency(dividend_bits: int) -> int:
    """Cycles from ``start`` to a valid quotient: one quotient bit a cycle, plus the start."""
    return dividend_bits + 1


def isqrt_latency(radicand_bits: int) -> int:
    """Cycles from ``start`` to a valid root: two radicand bits a cycle, plus the start."""
    return (radicand_bits + 1) // 2 + 1


#: Register stages of SOFTMAX's row sum before the accumulator: a cycle's exponents are
#: summed over the lanes (carry-save, one carry chain) and registered, then added to the
#: row's sum (a short path each instead of both in one cycle).
SOFTMAX_SUM_STAGES = 1

#: Cycles between the end of a softmax row's SUM pass and the first cycle its OUT pass may
#: issue: the reciprocal on the divider, after the row sum's :data:`SOFTMAX_SUM_STAGES`.
#: The divider's start waits for the last exponent to be accumulated; the first OUT
#: element's exponent meets the quotient ``at_e`` after its arrival, as SUM's did, so the
#: two offsets cancel but the sum's stages.
SOFTMAX_ROW_GAP = divider_latency(RECIP_DIVIDEND_BITS) + SOFTMAX_SUM_STAGES


def norm_steps(layer: bool) -> dict[str, int]:
    """When each step of a norm row's sequence happens: ``k`` cycles after it starts.

    ``k = 1`` is the first cycle of the sequence, and the row's statistics (S1, S2) are
    registered from ``k = 2 + ISSUE_STAGES + NORM_STATS_DELAY`` (the last element's read
    goes out :data:`ISSUE_STAGES` after its issue, its ``x*x`` comes out of its lane
    :data:`NORM_STATS_DELAY` cycles after its data). LAYERNORM first divides S1 by
    ``cols`` for its mean and centres S2 (:data:`CENTRE_STEPS`); both norms then divide
    for the mean square, take the square root and divide ``2**38`` by it; ``latch``
    registers the inverse root for the output pass, which may issue from ``k = latch + 1``.
    """
    div, sqrt = divider_latency(DIV_DIVIDEND_BITS), isqrt_latency(RADICAND_BITS)
    first = 2 + ISSUE_STAGES + NORM_STATS_DELAY
    steps = {"mean": first} if layer else {}
    ms = first + (div + 1 + CENTRE_STEPS if layer else 0)
    steps.update({"mean_square": ms, "sqrt": ms + div, "inverse": ms + div + sqrt})
    steps["latch"] = steps["inverse"] + div
    return steps


def norm_row_gap(layer: bool) -> int:
    """Cycles a norm row's sequence takes from its start to its output pass's first issue."""
    return norm_steps(layer)["latch"]


# --- cycles of one instruction -----------------------------------------------------------


def softmax_cycles(rows: int, p: int, gap: int = SOFTMAX_ROW_GAP) -> int:
    """Issue cycles of a SOFTMAX over ``rows`` rows of ``p``-cycle passes.

    Pass order: MAX0 SUM0 MAX1 OUT0 SUM1 MAX2 OUT1 ... SUM(n-1) OUT(n-1). The reciprocal of
    row ``r`` runs while MAX of row ``r + 1`` issues, so OUT of row ``r`` waits
    ``max(0, gap - p)`` extra cycles, and the last row the whole ``gap``.
    """
    if rows <= 0:
        return 0
    return 3 * p * rows + (rows - 1) * max(0, gap - p) + gap


def norm_cycles(rows: int, p: int, gap: int) -> int:
    """Issue cycles of RMSNORM/LAYERNORM over ``rows`` rows of ``p``-cycle passes.

    Pass order: STATS0 STATS1 OUT0 STATS2 OUT1 STATS3 ... OUT(n-2) OUT(n-1). Row 0's
    sequence starts when STATS0 ends; row ``r + 1``'s when OUT of row ``r`` starts (its
    statistics are in by then and the divider is free). OUT of row ``r`` issues when
    its sequence is done and the pass before it has ended: rows then follow each other
    every ``max(2p, gap)`` cycles.
    """
    if rows <= 0:
        return 0
    if rows == 1:
        return 2 * p + gap
    return 2 * p + 2 * max(p, gap) + (rows - 2) * max(2 * p, gap)
