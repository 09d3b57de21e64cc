"""The MPE's DSP48E2 datapath: lane packing, pipeline depths and the chain's latency.

The RTL (``hw/mpe``) builds the chain to these numbers and the cycle model
(``sim/timing.py``) charges them, so the two agree by construction (as
:mod:`flightforge.sfu_row_ops` does for the SFU).

A chain is ``groups_per_chain`` DSP48E2 slices in one PCOUT->PCIN cascade. Each slice
makes two INT8 multiplies that share the weight (AMD WP487): its pre-adder forms
``(a_hi << LANE_SHIFT) + a_lo`` from two rows' activations, its 27x18 multiplier takes
the weight, and the post-adder adds the cascade (or zero, where a reduction node cuts it).
The low lane's sum occupies the low ``LANE_SHIFT`` bits of P, the high lane's the rest;
reading the lanes back undoes the borrow the low lane's sign left in the high one.

Behind the chains, each segment accumulates on one DSP48E2 (a scale group a cycle,
:func:`scale_cycles`); a tile's totals are requantised by a few
shared pipelined units (:func:`requantisers`) over :func:`drain_cycles` cycles.
"""

from __future__ import annotations

import math

#: Bit position of the high lane in the packed 27-bit pre-adder operand and in P.
LANE_SHIFT = 18
#: Products a lane accumulates along the cascade before the chain cuts it: a lane sum of
#: ``RUN`` INT8 products lies in ``[-RUN * 128 * 127, RUN * 128 * 128]``, a span below
#: ``2**LANE_SHIFT``, so the low lane is recovered exactly (:data:`LANE_MAX`).
RUN = 8
#: The largest low-lane sum: above it, the low field's value is a negative sum.
LANE_MAX = RUN * 128 * 128
#: Width of a lane sum (``LANE_MAX`` = 2**17 needs 19 signed bits).
LANE_SUM_BITS = LANE_MAX.bit_length() + 1
#: Register stages of one slice from its operands to P: A/D/B1, AD/B2, M, P.
SLICE_STAGES = 4
#: The lane sums, read from P and registered once before the de-skew.
DECODE_STAGES = 1
#: Register stages of a segment accumulator from a step's lane sums to its accumulated
#: group: the lane sums latched, then its DSP48E2's A/D/B1, AD/B2, M and P.
ACC_STAGES = 1 + SLICE_STAGES
#: Register stages of a shared requantiser from the choice of its operands to the
#: written result: three cascaded DSP48E2s (A/B, M, P, the cascade adding a cycle per
#: DSP: the product with its rounding bit 5 cycles after the operands), shifted,
#: saturated.
REQUANT_STAGES = 7
#: Cycles the MPE spends before the chains (start, fetch to staged operands) and after
#: them (the epilogue's write, ``done``) on an instruction of one fetch cycle: the
#: original MPE's pipeline without its two-cycle chain.
FRAME_CYCLES = 2

assert (RUN * 128 * 127) + LANE_MAX < 1 << LANE_SHIFT


def chain_latency(groups: int) -> int:
    """Cycles from a step's operands at the chain inputs to its de-skewed lane sums.

    Slice ``g`` sees its operands ``g`` cycles late (the systolic skew the cascade
    implies: slice ``g`` adds slice ``g - 1``'s P one cycle after that P was made), its P
    comes ``SLICE_STAGES`` cycles after that, and every output is delayed to the last
    slice's time."""
    return (groups - 1) + SLICE_STAGES + DECODE_STAGES


def requantisers(ns: list[int]) -> int:
    """Shared requantisers per core: one per column of the widest tile row (the least
    common multiple of the modes' ``n``, so each drains whole rows)."""
    return math.lcm(*ns)


def drain_cycles(units: int, rows: int, n: int) -> int:
    """Cycles ``units`` requantisers take to drain a tile of ``rows`` x ``n`` held
    totals, ``units // n`` rows a cycle. The fetch loop keeps tiles' last steps at least
    this many cycles apart."""
    return -(-rows // (units // n))


def scale_cycles(k: int, group_entries: int) -> int:
    """Cycles a segment accumulator spends on a step of ``k`` stored entries: one per
    scale group of ``group_entries`` stored entries the step holds (it has one
    multiplier), at least one (0: no group scales). A step lasts at least this long; the
    tile's last step adds all but one of them to the depth."""
    return max(1, k // group_entries) if group_entries else 1


def depth(groups: int, drain: int, scale: int = 1) -> int:
    """Cycles an MM/MV adds to its fetch cycles (``Timing.matmul``): the frame, the
    chain, the accumulators (with the last step's ``scale`` cycles,
    :func:`scale_cycles`), the last tile's drain and the requantisers' stages."""
    return FRAME_CYCLES + chain_latency(groups) + ACC_STAGES + scale - 1 + drain + REQUANT_STAGES


# --- the activation tile buffer (hw/mpe/tile_buffer.py) ----------------------------------

#: Cycles a tile fill spends after its last ACT line read before the first step may read
#: the tile buffer: the line's read data (one cycle), then its realigned write (one).
FILL_TAIL = 2


def tile_span(k: int, sparse_m: int) -> int:
    """Bytes of one tile row a step reads: the span of ``k`` stored entries, at most
    ``k / 2`` sparse blocks of ``sparse_m`` activations (2:M; dense reads ``k``)."""
    return k * sparse_m // 2


def tile_access(k: int, sparse_n: int, sparse_m: int) -> int:
    """Bytes of one tile row a step of ``k`` stored entries reads: ``k`` dense
    (``sparse_n == 0``), ``max(1, k / N)`` blocks of ``M`` activations for N:M."""
    return max(1, k // sparse_n) * sparse_m if sparse_n else k


def tile_stripe(line: int, word: int) -> int:
    """``P``: the words of a ``word``-byte tile-buffer bank an ACT line of ``line`` bytes
    holds, so the banks of a group that one fill cycle writes (row ``r``'s word ``w`` in
    bank ``r XOR (w mod P)``, :func:`tile_bank`) and the words an MV reads a cycle; 1
    when a word holds whole lines."""
    return max(1, line // word)


def tile_bank(row: int, w: int, stripe: int) -> tuple[int, int]:
    """``(bank, address)`` of word ``w`` of tile row ``row``: the bank of the row's group
    of ``stripe`` banks chosen by ``w mod stripe`` (XOR), at address ``w``."""
    return row ^ (w % stripe), w


def tile_read_cycles(access: int, word: int, words_per_cycle: int) -> int:
    """Cycles a step reads its activation span of ``access`` bytes from the tile buffer:
    a row reads ``words_per_cycle`` words of ``word`` bytes a cycle (MM: one, from its
    own bank; MV: the row's :func:`tile_stripe`, from its group). A step lasts at least
    this long (``Timing.matmul_tile``)."""
    return max(1, access // (word * words_per_cycle))


def fill_lines(offset: int, k: int, line: int) -> int:
    """Aligned ACT lines the fill reads for one tile row of ``k`` activations that start
    ``offset`` bytes into a line: every line the row touches, one per cycle (the fill
    realigns them once, so rows may start at any byte)."""
    return -(-(offset + k) // line)
