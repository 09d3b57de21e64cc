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
- Completion adds one token to each released counter (a room check at start
  guarantees the counter cannot overflow, because a unit runs one instruction at a
  time and nothing else releases into its counters).
- If nothing can dispatch, start or complete, the section is deadlocked: a
  :class:`DeviceError` names each blocked head instruction and the token it lacks.
- At ``HALT`` every counter must be back at zero: a token left over would silently
  reorder the next section, so it is reported as an error naming the releasing unit.

The engine is event-driven (time jumps to the next completion while dispatch is
blocked), so a timed run costs O(instructions x log units), not O(cycles).
"""

from __future__ import annotations

import heapq
from collections import deque
from collections.abc import Callable, Sequence
from dataclasses import dataclass

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
    n = len(instrs)
    dispatch = np.full(n, -1, dtype=np.int64)
    start = np.full(n, -1, dtype=np.int64)
    end = np.full(n, -1, dtype=np.int64)
    # Per instruction, once: its unit (None for SYS) and the units of its masks.
    unit_of = [ins.UNIT for ins in instrs]
    waits = [
        MASK_UNITS[ins.wait] if u is not None else ()
        for ins, u in zip(instrs, unit_of, strict=True)
    ]
    releases = [
        MASK_UNITS[ins.release] if u is not None else ()
        for ins, u in zip(instrs, unit_of, strict=True)
    ]
    halt_at = n - 1  # check_section_code: the last instruction is the only HALT
    queues: dict[isa.Unit, deque[int]] = {u: deque() for u in UNITS}
    busy: dict[isa.Unit, int | None] = {u: None for u in UNITS}  # running instruction
    tokens = [[0] * len(UNITS) for _ in UNITS]  # tokens[src][dst]
    queued = running = 0
    completions: list[tuple[int, int, int]] = []  # (time, unit, instr)
    pc = 0
    t = 0
    last_dispatch = -1

    def can_start(i: int, u: isa.Unit) -> bool:
        return all(tokens[v][u] > 0 for v in waits[i]) and all(
            tokens[u][v] < token_depth for v in releases[i]
        )

    def can_dispatch(i: int) -> bool:
        u = unit_of[i]
        if u is None:
            return i != halt_at or (queued == 0 and running == 0)
        return len(queues[u]) < queue_depth

    while True:
        # Retire everything that completes now.
        while completions and completions[0][0] <= t:
            _, u_val, i = heapq.heappop(completions)
            u = UNITS[u_val]
            for v in releases[i]:
                tokens[u][v] += 1
            busy[u] = None
            running -= 1
        # Dispatch at most one instruction this cycle.
        if pc < n and last_dispatch < t and can_dispatch(pc):
            dispatch[pc] = t
            u = unit_of[pc]
            if pc == halt_at:
                leftover = [
                    (UNITS[s].name, UNITS[d].name, tokens[s][d])
                    for s in range(len(UNITS))
                    for d in range(len(UNITS))
                    if tokens[s][d]
                ]
                if leftover:
                    desc = ", ".join(f"{c} from {s} to {d}" for s, d, c in leftover)
                    raise DeviceError(
                        f"section {section!r} reached HALT (instruction {pc}) "
                        f"with unconsumed tokens: {desc}"
                    )
                return Schedule(dispatch, start, end, t + 1)
            if u is not None:
                queues[u].append(pc)
                queued += 1
            last_dispatch = t
            pc += 1
        # Start every head that can start.
        consumed = False
        for u in UNITS:
            q = queues[u]
            if busy[u] is None and q and can_start(q[0], u):
                i = q.popleft()
                queued -= 1
                ins = instrs[i]
                for v in waits[i]:
                    tokens[v][u] -= 1
                    consumed = True
                start[i] = t
                if on_start is not None:
                    on_start(i, ins)
                d = max(1, int(duration(i, ins)))
                end[i] = t + d
                busy[u] = i
                running += 1
                heapq.heappush(completions, (t + d, int(u), i))
        # Advance time. A head the loop passed over can start next cycle only if a later
        # unit's start consumed a token into room it was waiting for.
        startable = consumed and any(
            busy[u] is None and queues[u] and can_start(queues[u][0], u) for u in UNITS
        )
        if (pc < n and can_dispatch(pc)) or startable:
            t += 1
        elif completions:
            t = max(t + 1, completions[0][0])
        else:
            raise DeviceError(_deadlock_message(instrs, queues, tokens, token_depth, pc, section))


def _deadlock_message(
    instrs: Sequence[isa.Instruction],
    queues: dict[isa.Unit, deque[int]],
    tokens: list[list[int]],
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
            if tokens[v][u] == 0
        ]
        full = [
            f"room to release to {v.name} ({token_depth} tokens already waiting)"
            for v in MASK_UNITS[ins.release]
            if tokens[u][v] >= token_depth
        ]
        lines.append(
            f"instruction {i} ({ins.OPCODE.name} on {u.name}) waits for "
            + " and ".join(lacks + full)
        )
    if pc < len(instrs) and not lines:
        lines.append(f"dispatch is stuck at instruction {pc} ({instrs[pc].OPCODE.name})")
    return f"deadlock in section {section!r}: " + "; ".join(lines)
