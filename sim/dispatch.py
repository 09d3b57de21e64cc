"""In-order dispatch and wait/release tokens: the control semantics every level shares.

The functional simulator, the cycle model and the RTL implement exactly this machine,
so a program that deadlocks, or that is correctly synchronised, is so on all of them:

- One instruction stream is dispatched in order, at most one instruction per cycle,
  into the issue queue of its unit (``queue_depth`` entries each). ``NOP`` is
  dispatched and retired at once. ``HALT`` is dispatched only when every queue is
  empty and every unit idle: it ends the section.
- The head of a unit's queue starts when, for every unit ``v`` in its ``wait`` mask,
  the token counter ``v -> u`` is non-zero, and, for every unit ``v`` in its
  ``release`` mask, the counter ``u -> v`` is below ``token_depth``. Starting consumes
  one token from each waited counter; the instruction leaves the queue and occupies
  its unit for ``duration`` cycles (at least one). An instruction dispatched in a
  cycle may start in that same cycle.
- A head also starts only when no other running instruction holds a buffer side it
  needs (:func:`flightforge.isa.buffer_sides`: each buffer has one read and one write
  port; an instruction owns the sides it uses from its start to its end), again seeing
  the sides claimed by units started earlier in the same cycle, in unit order.
- Completion adds one token to each released counter (a room check at start
  guarantees the counter cannot overflow, because a unit runs one instruction at a
  time and nothing else releases into its counters) and frees the instruction's sides.
- If nothing can dispatch, start or complete, the section is deadlocked: a
  :class:`DeviceError` names each blocked head instruction and the token it lacks.
- At ``HALT`` every counter must be back at zero: a token left over would silently
  reorder the next section, so it is reported as an error naming the releasing unit.

The engine is event-driven (time jumps to the next completion while dispatch is
blocked), so a timed run costs O(instructions x log units), not O(cycles). It runs on a
stream decoded once into integers (:func:`decode`: each instruction's unit, or SYS or
HALT, the units of its masks and its buffer sides); the design-space exploration times a
decoded stream many times with other durations (:func:`dispatch_cycles`), through this same engine.
"""

from __future__ import annotations

import heapq
from collections import deque
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import NamedTuple

import numpy as np

from flightforge import isa

from .device import DeviceError

UNITS = tuple(isa.Unit)


@dataclass(frozen=True)
class Schedule:
    """When every instruction of a run was dispatched, started and completed.

    ``start``/``end`` are -1 for SYS instructions, which occupy no unit.
    """

    dispatch: np.ndarray
    start: np.ndarray
    end: np.ndarray
    cycles: int  #: cycle at which HALT retired: the section's latency


#: The units of every wait/release mask value, so a mask is decoded by one lookup.
MASK_UNITS: tuple[tuple[isa.Unit, ...], ...] = tuple(
    tuple(u for u in UNITS if mask >> u & 1) for mask in range(1 << len(UNITS))
)
N_UNITS = len(UNITS)
#: :func:`decode`'s kind of an instruction that occupies no unit, and of the final HALT
SYS_KIND, HALT_KIND = N_UNITS, N_UNITS + 1
_MASK_INTS = tuple(tuple(int(u) for u in units) for units in MASK_UNITS)
_NONE = np.empty(0, dtype=np.int64)  #: the schedule of a run that keeps none


def check_section_code(instrs: Sequence[isa.Instruction], section: str) -> None:
    """A section is a stream that ends with its only HALT."""
    if not instrs:
        raise DeviceError(f"section {section!r} is empty: it must end with SYS HALT")
    for i, ins in enumerate(instrs):
        is_halt = isinstance(ins, isa.SYS) and ins.op == isa.SysOp.HALT
        if is_halt and i != len(instrs) - 1:
            raise DeviceError(
                f"section {section!r}: instruction {i} is a HALT before the end "
                f"({len(instrs) - 1 - i} instructions after it would never run)"
            )
        if not is_halt and i == len(instrs) - 1:
            raise DeviceError(
                f"section {section!r}: the last instruction ({i}, {ins.OPCODE.name}) "
                f"is not SYS HALT"
            )


class Decoded(NamedTuple):
    """A stream as the dispatch engine reads it, one entry per instruction."""

    kind: list[int]  #: unit index, ``SYS_KIND`` for SYS or ``HALT_KIND`` for SYS HALT
    waits: list[tuple[int, ...]]  #: units of the wait mask (empty for SYS)
    releases: list[tuple[int, ...]]  #: units of the release mask (empty for SYS)
    sides: list[int]  #: :func:`flightforge.isa.buffer_sides` (0 for SYS)


def decode(instrs: Sequence[isa.Instruction]) -> Decoded:
    """The stream as integers, decoded once for any number of timed runs."""
    kind, waits, releases, sides = [], [], [], []
    for ins in instrs:
        u = ins.UNIT
        if u is None:
            kind.append(HALT_KIND if ins.op == isa.SysOp.HALT else SYS_KIND)
            waits.append(())
            releases.append(())
            sides.append(0)
        else:
            kind.append(int(u))
            waits.append(_MASK_INTS[ins.wait])
            releases.append(_MASK_INTS[ins.release])
            sides.append(isa.buffer_sides(ins))
    return Decoded(kind, waits, releases, sides)


def run_dispatch(
    instrs: Sequence[isa.Instruction],
    *,
    token_depth: int,
    queue_depth: int,
    duration: Callable[[int, isa.Instruction], int],
    on_start: Callable[[int, isa.Instruction], None] | None = None,
    section: str = "<stream>",
) -> Schedule:
    """Run the control machine over one section.

    ``duration(i, instr)`` gives the cycles instruction ``i`` occupies its unit;
    ``on_start(i, instr)`` is called when it starts, which is where the functional
    simulator performs its effect (every instruction ordered before it by tokens or
    by its unit's order has already performed its own).
    """
    check_section_code(instrs, section)
    return _machine(
        instrs, decode(instrs), duration, token_depth, queue_depth, on_start, section, True
    )


def dispatch_cycles(
    instrs: Sequence[isa.Instruction],
    decoded: Decoded,
    durations: Sequence[int],
    *,
    token_depth: int,
    queue_depth: int,
    section: str = "<stream>",
) -> int:
    """The cycles of :func:`run_dispatch` for a stream already :func:`decode`-d (and
    checked), with precomputed durations: the same machine, keeping no schedule."""
    return _machine(
        instrs,
        decoded,
        lambda i, _: durations[i],
        token_depth,
        queue_depth,
        None,
        section,
        False,
    ).cycles


def _machine(
    instrs: Sequence[isa.Instruction],
    decoded: Decoded,
    duration: Callable[[int, isa.Instruction], int],
    token_depth: int,
    queue_depth: int,
    on_start: Callable[[int, isa.Instruction], None] | None,
    section: str,
    record: bool,
) -> Schedule:
    """The machine of the module docstring, cycle by cycle; the schedule if ``record``."""
    kind, waits, releases, sides = decoded
    n, nu = len(kind), N_UNITS
    dispatch = [-1] * n if record else []
    start = [-1] * n if record else []
    end = [-1] * n if record else []
    queues: list[deque[int]] = [deque() for _ in range(nu)]
    busy = [False] * nu
    tokens = [0] * (nu * nu)  # tokens[src * nu + dst]
    held = 0  # buffer sides held by running instructions (isa.side_bit mask)
    queued = running = 0
    completions: list[tuple[int, int, int]] = []  # (time, unit, instr)
    pc = 0
    t = 0
    last_dispatch = -1

    def can_start(i: int, u: int) -> bool:
        for v in waits[i]:
            if tokens[v * nu + u] <= 0:
                return False
        for v in releases[i]:
            if tokens[u * nu + v] >= token_depth:
                return False
        return not sides[i] & held

    def can_dispatch(i: int) -> bool:
        k = kind[i]
        if k == HALT_KIND:
            return queued == 0 and running == 0
        return k == SYS_KIND or len(queues[k]) < queue_depth

    while True:
        # Retire everything that completes now.
        while completions and completions[0][0] <= t:
            _, u, i = heapq.heappop(completions)
            for v in releases[i]:
                tokens[u * nu + v] += 1
            held &= ~sides[i]
            busy[u] = False
            running -= 1
        # Dispatch at most one instruction this cycle.
        if pc < n and last_dispatch < t and can_dispatch(pc):
            if record:
                dispatch[pc] = t
            k = kind[pc]
            if k == HALT_KIND:
                if any(tokens):
                    raise DeviceError(_leftover_message(tokens, pc, section))
                if not record:
                    return Schedule(_NONE, _NONE, _NONE, t + 1)
                return Schedule(
                    np.array(dispatch, dtype=np.int64),
                    np.array(start, dtype=np.int64),
                    np.array(end, dtype=np.int64),
                    t + 1,
                )
            if k != SYS_KIND:
                queues[k].append(pc)
                queued += 1
            last_dispatch = t
            pc += 1
        # Start every head that can start.
        consumed = False
        for u in range(nu):
            q = queues[u]
            if not busy[u] and q and can_start(q[0], u):
                i = q.popleft()
                queued -= 1
                for v in waits[i]:
                    tokens[v * nu + u] -= 1
                    consumed = True
                ins = instrs[i]
                if on_start is not None:
                    on_start(i, ins)
                d = int(duration(i, ins))
                d = d if d > 1 else 1
                held |= sides[i]
                if record:
                    start[i] = t
                    end[i] = t + d
                busy[u] = True
                running += 1
                heapq.heappush(completions, (t + d, u, i))
        # Advance time. A head the loop passed over can start next cycle only if a later
        # unit's start consumed a token into room it was waiting for.
        startable = consumed and any(
            not busy[u] and queues[u] and can_start(queues[u][0], u) for u in range(nu)
        )
        if (pc < n and can_dispatch(pc)) or startable:
            t += 1
        elif completions:
            t = max(t + 1, completions[0][0])
        else:
            raise DeviceError(_deadlock_message(instrs, queues, tokens, token_depth, pc, section))


def _leftover_message(tokens: list[int], pc: int, section: str) -> str:
    leftover = [
        (UNITS[s].name, UNITS[d].name, tokens[s * N_UNITS + d])
        for s in range(N_UNITS)
        for d in range(N_UNITS)
        if tokens[s * N_UNITS + d]
    ]
    desc = ", ".join(f"{c} from {s} to {d}" for s, d, c in leftover)
    return f"section {section!r} reached HALT (instruction {pc}) with unconsumed tokens: {desc}"


def _deadlock_message(
    instrs: Sequence[isa.Instruction],
    queues: list[deque[int]],
    tokens: list[int],
    token_depth: int,
    pc: int,
    section: str,
) -> str:
    lines = []
    for u in UNITS:
        if not queues[u]:
            continue
        i = queues[u][0]
        ins = instrs[i]
        lacks = [
            f"a token from {v.name} (none released)"
            for v in MASK_UNITS[ins.wait]
            if tokens[v * N_UNITS + u] == 0
        ]
        full = [
            f"room to release to {v.name} ({token_depth} tokens already waiting)"
            for v in MASK_UNITS[ins.release]
            if tokens[u * N_UNITS + v] >= token_depth
        ]
        lines.append(
            f"instruction {i} ({ins.OPCODE.name} on {u.name}) waits for "
            + " and ".join(lacks + full)
        )
    if pc < len(instrs) and not lines:
        lines.append(f"dispatch is stuck at instruction {pc} ({instrs[pc].OPCODE.name})")
    return f"deadlock in section {section!r}: " + "; ".join(lines)
