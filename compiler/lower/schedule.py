"""Token insertion: turn a list of instructions into a correctly synchronised stream.

Each unit executes its own instructions in order, so only cross-unit hazards need
tokens. For every read-after-write, write-after-read and write-after-write between an
instruction ``i`` on unit U and an earlier instruction ``j`` on unit V, ``j`` must
release a token to U and ``i`` must wait for it. Tokens between a pair of units are
consumed first-in first-out, so releases are only ever added at increasing positions
of V's stream: if an earlier instruction of U already waited on a V instruction at or
after ``j``, the hazard is covered by U's in-order execution and no token is added.
This gives the fewest tokens that still order every hazard, and never over-orders a
prefetch behind an unrelated later load (which double buffering relies on).

Token counters hold at most ``token_depth`` tokens, and a releasing instruction waits
for room (see :mod:`flightforge.sim.dispatch`). A release whose counter, at that point
of the stream, could already hold ``token_depth`` tokens that are consumed only later
in program order would block dispatch for good: in-order dispatch never reaches the
consumer. So when a new token would be the ``token_depth + 1``-th outstanding one, the
newest outstanding token is moved to the new producer instead: its consumer, which
precedes the new consumer on the same unit, then also orders the new hazard.
"""

from __future__ import annotations

import bisect
import dataclasses
from dataclasses import dataclass, field

from flightforge import isa
from flightforge.footprint import Access, footprint

PAGE_BITS = 14  #: access logs are indexed by 16 KiB pages


@dataclass
class _Record:
    lo: int
    hi: int
    pos: int  #: position of the instruction in its unit's stream


@dataclass
class _UnitSpaceLog:
    """Accesses of one unit to one space, indexed by page, newest last on every page.

    A record is listed on every page it touches; one contained in a newer record is
    dropped from the pages they share (the newer one answers every query it would).
    """

    pages: dict[int, list[_Record]] = field(default_factory=dict)

    def add(self, lo: int, hi: int, pos: int) -> None:
        rec = _Record(lo, hi, pos)
        for page in range(lo >> PAGE_BITS, ((hi - 1) >> PAGE_BITS) + 1):
            entries = self.pages.setdefault(page, [])
            entries[:] = [r for r in entries if not (lo <= r.lo and r.hi <= hi)]
            entries.append(rec)

    def latest_overlap(self, lo: int, hi: int) -> int:
        """Highest stream position among records overlapping ``[lo, hi)``, or -1."""
        best = -1
        for page in range(lo >> PAGE_BITS, ((hi - 1) >> PAGE_BITS) + 1):
            for r in reversed(self.pages.get(page, ())):
                if r.pos <= best:
                    break  # older records on this page cannot raise the answer
                if r.lo < hi and lo < r.hi:
                    best = r.pos
                    break
        return best


@dataclass
class TokenScheduler:
    """Accumulates instructions and inserts the wait/release masks they need.

    ``untracked_reads`` are external-memory ranges that are never written while the
    program runs (weights, constants): reads there cannot be hazards, and not logging
    them keeps scheduling fast for full-size models.
    """

    untracked_reads: list[tuple[int, int]] = field(default_factory=list)
    token_depth: int = 8
    d_max: int = 0  #: the section's bucket width: dynamic fields range over D in 0..d_max
    instrs: list[isa.Instruction] = field(default_factory=list)
    _unit_index: dict[isa.Unit, list[int]] = field(default_factory=dict)
    _reads: dict[tuple[isa.Unit, str], _UnitSpaceLog] = field(default_factory=dict)
    _writes: dict[tuple[isa.Unit, str], _UnitSpaceLog] = field(default_factory=dict)
    _released_upto: dict[tuple[isa.Unit, isa.Unit], int] = field(default_factory=dict)
    #: per (producer unit, consumer unit): stream indices of releases and of their waits
    _pair_release: dict[tuple[isa.Unit, isa.Unit], list[int]] = field(default_factory=dict)
    _pair_wait: dict[tuple[isa.Unit, isa.Unit], list[int]] = field(default_factory=dict)
    _merged_from: int = -1  #: len(untracked_reads) when the merged ranges were built
    _merged_lo: list[int] = field(default_factory=list)
    _merged_hi: list[int] = field(default_factory=list)

    def _untracked(self, a: Access) -> bool:
        if a.space != "EXT" or not self.untracked_reads:
            return False
        if self._merged_from != len(self.untracked_reads):  # ranges were added: re-merge
            merged: list[list[int]] = []
            for lo, hi in sorted(self.untracked_reads):
                if merged and lo <= merged[-1][1]:
                    merged[-1][1] = max(merged[-1][1], hi)
                else:
                    merged.append([lo, hi])
            self._merged_lo = [m[0] for m in merged]
            self._merged_hi = [m[1] for m in merged]
            self._merged_from = len(self.untracked_reads)
        i = bisect.bisect_right(self._merged_lo, a.lo) - 1
        return i >= 0 and a.hi <= self._merged_hi[i]

    def add(self, instr: isa.Instruction) -> int:
        """Append ``instr`` with the tokens its hazards need; returns its stream index."""
        unit = instr.UNIT
        if unit is None:
            self.instrs.append(instr)
            return len(self.instrs) - 1
        reads, writes = footprint(instr, self.d_max)
        # Latest conflicting instruction on every other unit.
        need: dict[isa.Unit, int] = {}
        for other in isa.Unit:
            if other == unit:
                continue
            latest = -1
            for acc in reads:
                log = self._writes.get((other, acc.space))
                if log:
                    latest = max(latest, log.latest_overlap(acc.lo, acc.hi))
            for acc in writes:
                for table in (self._writes, self._reads):
                    log = table.get((other, acc.space))
                    if log:
                        latest = max(latest, log.latest_overlap(acc.lo, acc.hi))
            if latest >= 0:
                need[other] = latest
        wait = 0
        for other, pos in need.items():
            if pos <= self._released_upto.get((other, unit), -1):
                continue  # covered: an earlier instruction of this unit waited on a later one
            j = self._unit_index[other][pos]
            self._set_release(j, unit, True)
            self._released_upto[(other, unit)] = pos
            rel = self._pair_release.setdefault((other, unit), [])
            waits = self._pair_wait.setdefault((other, unit), [])
            outstanding = len(waits) - bisect.bisect_right(waits, j)
            if outstanding >= self.token_depth:
                # Full at j: move the newest token here; its consumer covers this one.
                self._set_release(rel[-1], unit, False)
                rel[-1] = j
            else:
                rel.append(j)
                waits.append(len(self.instrs))
                wait |= 1 << other
        instr = dataclasses.replace(instr, wait=instr.wait | wait)
        positions = self._unit_index.setdefault(unit, [])
        pos = len(positions)
        positions.append(len(self.instrs))
        self.instrs.append(instr)
        for acc in reads:
            if not self._untracked(acc):
                self._reads.setdefault((unit, acc.space), _UnitSpaceLog()).add(acc.lo, acc.hi, pos)
        for acc in writes:
            self._writes.setdefault((unit, acc.space), _UnitSpaceLog()).add(acc.lo, acc.hi, pos)
        return len(self.instrs) - 1

    def _set_release(self, j: int, unit: isa.Unit, on: bool) -> None:
        ins = self.instrs[j]
        mask = ins.release | (1 << unit) if on else ins.release & ~(1 << unit)
        self.instrs[j] = dataclasses.replace(ins, release=mask)

    def finish(self) -> list[isa.Instruction]:
        """The stream, ended by HALT (which drains every unit)."""
        return [*self.instrs, isa.SYS(op=isa.SysOp.HALT)]


def unordered_hazards(instrs: list[isa.Instruction], d_max: int = 0) -> list[tuple[int, int]]:
    """Pairs ``(j, i)`` of conflicting instructions on different units that the token
    graph does not order: an empty list proves every hazard is synchronised.

    Happens-before edges: program order within a unit, and the k-th release from V to U
    before the k-th wait of U on V (tokens are first-in first-out). A hazard is ordered
    when the later instruction is reachable from the earlier one.
    """
    import networkx as nx

    graph = nx.DiGraph()
    last_on: dict[isa.Unit, int] = {}
    releases: dict[tuple[isa.Unit, isa.Unit], list[int]] = {}
    waits: dict[tuple[isa.Unit, isa.Unit], list[int]] = {}
    for idx, ins in enumerate(instrs):
        graph.add_node(idx)
        u = ins.UNIT
        if u is None:
            continue
        if u in last_on:
            graph.add_edge(last_on[u], idx)
        last_on[u] = idx
        for other in isa.Unit:
            if ins.wait >> other & 1:
                waits.setdefault((other, u), []).append(idx)
            if ins.release >> other & 1:
                releases.setdefault((u, other), []).append(idx)
    for pair, rel in releases.items():
        # a release with no later wait (or a wait with no release) pairs with nothing
        for r, w in zip(rel, waits.get(pair, []), strict=False):
            graph.add_edge(r, w)
    prints = [
        (idx, ins.UNIT, *footprint(ins, d_max))
        for idx, ins in enumerate(instrs)
        if ins.UNIT is not None
    ]
    bad = []
    for a, (j, uj, rj, wj) in enumerate(prints):
        later = None
        for i, ui, ri, wi in prints[a + 1 :]:
            if ui == uj:
                continue
            conflict = any(x.overlaps(y) for x in wj for y in ri + wi) or any(
                x.overlaps(y) for x in rj for y in wi
            )
            if conflict:
                if later is None:
                    later = nx.descendants(graph, j)
                if i not in later:
                    bad.append((j, i))
    return bad
