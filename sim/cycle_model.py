"""The cycle model: the shared dispatch/token machine timed by :mod:`.timing`.

Each section runs through :func:`.dispatch.run_dispatch`, the very machine the
functional simulator uses, with ``duration`` from :class:`.timing.Timing`; so the
decoupled units (LD, ST, MPE, SFU) overlap exactly as far as the wait/release tokens,
the issue queues and in-order dispatch let them. The model carries no data.

:class:`CycleModel` is a :class:`~.device.Device` (load/write/read/run). :func:`simulate`
runs a whole request (a prefill and ``decode_steps`` decode steps) and returns a
:class:`Report`: latency, throughput, per-unit busy and stall cycles, memory traffic,
and a timeline exportable as Chrome/Perfetto trace JSON. How decode positions map onto
sections (exact, one run per bucket, or interpolated between compiled positions) is
stated in the report; see docs/cycle_model.md.
"""

from __future__ import annotations

import bisect
import itertools
import json
from collections import Counter, defaultdict
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from flightforge import formats, isa, progress
from flightforge.arch import ArchConfig
from flightforge.files import write_text
from flightforge.generate import decode_run, prefill_runs
from flightforge.program import Program, ProgramError

from .device import DeviceError, RunResult, check_program, loaded_section, run_offset
from .dispatch import MASK_UNITS, Schedule, run_dispatch
from .timing import Timing, TimingParams, timing_for

UNITS = tuple(isa.Unit)
STALL_KINDS = (
    "dispatch",
    *(f"wait_{u.name}" for u in UNITS),
    "buffer_side",
    "release_room",
    "drain",
)


@dataclass
class SectionRun:
    """One timed run of a section: its schedule and statistics."""

    section: str
    d: int  #: offset inside the section's length bucket
    cycles: int
    instrs: Sequence[isa.Instruction]
    schedule: Schedule
    durations: np.ndarray
    busy: dict[str, int]  #: per unit: cycles occupied by instructions
    stalls: dict[str, dict[str, int]]  #: per unit: idle cycles by cause
    bytes_loaded: int
    bytes_stored: int
    channel_bytes: int  #: bytes moved in whole bursts
    macs: int
    sfu_elements: int
    by_opcode: dict[str, int]

    def stats(self, timing: Timing) -> dict[str, Any]:
        peak = float(timing.peak_bytes_per_cycle)
        return {
            "cycles": self.cycles,
            "busy": self.busy,
            "stalls": self.stalls,
            "bytes_loaded": self.bytes_loaded,
            "bytes_stored": self.bytes_stored,
            "channel_bytes": self.channel_bytes,
            "macs": self.macs,
            "sfu_elements": self.sfu_elements,
            "by_opcode": self.by_opcode,
            "hbm_utilisation": (self.bytes_loaded + self.bytes_stored) / (self.cycles * peak),
        }


def stall_breakdown(
    instrs: Sequence[isa.Instruction], sched: Schedule
) -> dict[str, dict[str, int]]:
    """Why each unit was idle, from a finished schedule.

    For every instruction, the idle gap on its unit before it started is split, in time
    order, into ``dispatch`` (it had not been dispatched yet: in-order dispatch was held
    up behind another unit's full queue or earlier instructions), ``wait_V`` (it was
    waiting for the token from unit V that arrived last; tokens between a pair of units
    are first-in first-out, so the k-th wait consumes the k-th release), ``buffer_side``
    (another unit's running instruction held a buffer side it needs,
    :func:`flightforge.isa.buffer_sides`) and ``release_room`` (a counter it releases to
    was full). Idle time after a unit's last instruction is ``drain``. Busy plus stalls
    equals the section's cycles on every unit.
    """
    end, start, disp = sched.end.tolist(), sched.start.tolist(), sched.dispatch.tolist()
    sides = [isa.buffer_sides(ins) for ins in instrs]
    # Per side bit, its holders' (start, end) in start order: one holder at a time.
    holders: dict[int, list[tuple[int, int]]] = defaultdict(list)
    for i, mask in enumerate(sides):
        for b in range(isa.SIDE_BITS):
            if mask >> b & 1:
                holders[b].append((start[i], end[i]))
    for spans in holders.values():
        spans.sort()
    starts = {b: [a for a, _ in spans] for b, spans in holders.items()}
    releases: dict[tuple[int, int], list[int]] = defaultdict(list)
    for i, ins in enumerate(instrs):
        if ins.UNIT is not None:
            for v in MASK_UNITS[ins.release]:
                releases[(ins.UNIT, v)].append(end[i])
    consumed: Counter = Counter()
    free = {u: 0 for u in UNITS}
    out = {u.name: dict.fromkeys(STALL_KINDS, 0) for u in UNITS}
    wait_key = {v: f"wait_{v.name}" for v in UNITS}
    for i, ins in enumerate(instrs):
        u = ins.UNIT
        if u is None:
            continue
        s = start[i]
        t = free[u]
        row = out[u.name]
        d = min(max(disp[i], t), s)
        row["dispatch"] += d - t
        t = d
        tok, who = -1, None
        for v in MASK_UNITS[ins.wait]:
            k = consumed[(v, u)]
            consumed[(v, u)] = k + 1
            arrival = releases[(v, u)][k]
            if arrival > tok:
                tok, who = arrival, v
        if who is not None and tok > t:
            w = min(tok, s)
            row[wait_key[who]] += w - t
            t = w
        if s > t and sides[i]:
            freed = t  # when the last holder of a side it needs let go
            for b in range(isa.SIDE_BITS):
                if sides[i] >> b & 1:
                    k = bisect.bisect_left(starts[b], s) - 1  # the holder before it
                    if k >= 0:
                        freed = max(freed, min(holders[b][k][1], s))
            row["buffer_side"] += freed - t
            t = freed
        row["release_room"] += s - t
        free[u] = end[i]
    for u in UNITS:
        out[u.name]["drain"] += sched.cycles - free[u]
    return out


class CycleModel:
    """A timing-only FlightForge device (implements :class:`~.device.Device`).

    ``write`` is accepted and discarded and ``read`` returns zeros: the model carries
    no data, so the same driver code runs against it and against the functional
    simulator (generation then produces meaningless tokens but real timings).
    """

    def __init__(self, arch: ArchConfig, params: TimingParams = TimingParams()) -> None:
        self.arch = arch
        self.params = params
        self.timing = timing_for(arch, params)
        self.program: Program | None = None
        self.runs: list[SectionRun] = []
        # What each distinct instruction costs: the buckets of one program repeat most
        # of their instructions (weights, projections), so a request times each once.
        self._costs: dict[isa.Instruction, tuple[int, int, int, int, int, int]] = {}

    # --- Device protocol ------------------------------------------------------------

    def load(self, program: Program) -> None:
        check_program(program, self.arch)
        self.program = program
        self.runs = []

    def _check_range(self, addr: int, size: int) -> None:
        if addr < 0 or size < 0 or addr + size > self.arch.hbm.capacity:
            raise DeviceError(
                f"bytes {addr}..{addr + size - 1} are outside external memory "
                f"(0..{self.arch.hbm.capacity - 1})"
            )

    def write(self, addr: int, data: bytes) -> None:
        self._check_range(addr, len(data))

    def read(self, addr: int, size: int) -> bytes:
        self._check_range(addr, size)
        return bytes(size)

    def run(self, section: str, length: int | None = None) -> RunResult:
        sec = loaded_section(self.program, section)
        r = self.execute(sec.instructions, name=section, d=run_offset(sec, length))
        self.runs.append(r)
        return RunResult(section, len(sec), r.cycles, r.stats(self.timing))

    # --- timing ------------------------------------------------------------------------

    def _cost(self, ins: isa.Instruction) -> tuple[int, int, int, int, int, int]:
        """(duration, bytes loaded, bytes stored, burst bytes moved, MACs, SFU elements)."""
        cost = self._costs.get(ins)
        if cost is None:
            timing = self.timing
            if isinstance(ins, isa.LD):
                t = timing.ld(ins)
                cost = (t.cycles, t.bytes, 0, t.burst_bytes, 0, 0)
            elif isinstance(ins, isa.ST):
                t = timing.st(ins)
                cost = (t.cycles, 0, t.bytes, t.burst_bytes, 0, 0)
            elif isinstance(ins, (isa.MM, isa.MV)):
                cost = (
                    timing.matmul(ins),
                    0,
                    0,
                    0,
                    ins.rows * ins.n * formats.weight_entries(ins.k, isa.SparseMode(ins.sparse)),
                    0,
                )
            elif isinstance(ins, isa.MISC):
                cost = (timing.misc(ins), 0, 0, 0, 0, ins.rows * ins.cols)
            else:
                cost = (0, 0, 0, 0, 0, 0)
            self._costs[ins] = cost
        return cost

    def execute(
        self, instrs: Sequence[isa.Instruction], name: str = "<stream>", d: int = 0
    ) -> SectionRun:
        """Time one stream ending in HALT, with bucket offset ``d``."""
        if d:
            try:
                instrs = [isa.resolve(ins, d) if isa.is_dynamic(ins) else ins for ins in instrs]
            except isa.EncodeError as e:
                raise DeviceError(f"section {name!r}: {e}") from None
        n = len(instrs)
        costs = [self._cost(ins) for ins in instrs]
        durations = np.fromiter((c[0] for c in costs), dtype=np.int64, count=n)
        loaded, stored, moved, macs, elems = (sum(c[k] for c in costs) for k in range(1, 6))
        by_op = Counter(ins.OPCODE.name for ins in instrs)
        dur = durations.tolist()
        sched = run_dispatch(
            instrs,
            token_depth=self.arch.token_depth,
            queue_depth=self.arch.queue_depth,
            duration=lambda i, ins: dur[i],
            section=name,
        )
        busy = {u.name: 0 for u in UNITS}
        for i, ins in enumerate(instrs):
            if ins.UNIT is not None:
                busy[ins.UNIT.name] += int(sched.end[i] - sched.start[i])
        return SectionRun(
            name,
            d,
            sched.cycles,
            instrs,
            sched,
            durations,
            busy,
            stall_breakdown(instrs, sched),
            loaded,
            stored,
            moved,
            macs,
            elems,
            dict(by_op),
        )


# --- whole requests ------------------------------------------------------------------


class UncompiledPositions(DeviceError):
    """Decode positions of a request that the program has no section for (and that
    interpolation, if asked for, cannot reach). The fields let a front end (the command
    line) say what to do in its own terms."""

    def __init__(
        self,
        positions: list[int],
        steps: int,
        compiled: list[tuple[int, int]],
        interpolating: bool,
    ) -> None:
        self.positions = positions  #: the positions at fault, ascending
        self.steps = steps  #: decode steps the request asked for
        self.compiled = compiled  #: the decode positions with a section, as merged ranges
        self.interpolating = interpolating
        have = self.compiled_text()
        if interpolating:
            text = (
                f"decode position {positions[0]} lies outside the compiled decode positions "
                f"({have}); interpolation never extrapolates"
            )
        else:
            text = (
                f"the program has no decode section for {len(positions)} of the {steps} "
                f"positions (first {positions[0]}; compiled: {have}); compile them, or "
                f"interpolate between compiled positions (interpolate=True)"
            )
        super().__init__(text)

    def compiled_text(self) -> str:
        """The compiled decode positions as text, e.g. ``4..6, 8`` (or ``none``)."""
        return ", ".join(f"{a}..{b}" if b > a else f"{a}" for a, b in self.compiled) or "none"


def _merged_ranges(spans: list[tuple[int, int]]) -> list[tuple[int, int]]:
    """Sorted inclusive ranges with touching or overlapping ones merged."""
    out: list[tuple[int, int]] = []
    for lo, hi in sorted(spans):
        if out and lo <= out[-1][1] + 1:
            out[-1] = (out[-1][0], max(out[-1][1], hi))
        else:
            out.append((lo, hi))
    return out


@dataclass(frozen=True)
class DecodeStep:
    """One decode step of a request: timed by running its section, or interpolated."""

    position: int
    cycles: float
    timed: bool  #: False: interpolated between timed neighbours (no per-unit schedule)


@dataclass
class Report:
    """A request of ``prompt_len`` tokens followed by ``decode_steps`` generated ones."""

    arch: str
    cores: int
    clock_mhz: float
    prompt_len: int
    decode_steps: int
    prefill_cycles: int
    decode_cycles: int
    decode_method: str  #: exact | sampled | interpolated (see docs/cycle_model.md)
    decode_samples: list[dict[str, Any]]  #: position, section, d, cycles of every run
    busy: dict[str, int]
    stalls: dict[str, dict[str, int]]
    bytes_loaded: int
    bytes_stored: int
    peak_bytes_per_cycle: float
    prefill_runs: list[SectionRun] = field(default_factory=list, repr=False)
    decode_runs: list[SectionRun] = field(default_factory=list, repr=False)
    #: Every decode step of the request, in order (the trace lays them all out).
    decode_timeline: list[DecodeStep] = field(default_factory=list, repr=False)

    @property
    def total_cycles(self) -> int:
        return self.prefill_cycles + self.decode_cycles

    def seconds(self, cycles: int | float) -> float:
        return cycles / (self.clock_mhz * 1e6)

    @property
    def prefill_seconds(self) -> float:
        """Time to first token."""
        return self.seconds(self.prefill_cycles)

    @property
    def decode_seconds(self) -> float:
        return self.seconds(self.decode_cycles)

    @property
    def total_seconds(self) -> float:
        return self.seconds(self.total_cycles)

    @property
    def decode_tokens_per_s(self) -> float:
        return self.decode_steps / self.decode_seconds if self.decode_cycles else 0.0

    @property
    def hbm_utilisation(self) -> float:
        """Bytes moved over the whole request / (time x peak bandwidth)."""
        return (self.bytes_loaded + self.bytes_stored) / (
            self.total_cycles * self.peak_bytes_per_cycle
        )

    def summary(self) -> dict[str, Any]:
        return {
            "arch": self.arch,
            "cores": self.cores,
            "prompt_len": self.prompt_len,
            "decode_steps": self.decode_steps,
            "total_cycles": self.total_cycles,
            "total_seconds": self.total_seconds,
            "prefill_cycles": self.prefill_cycles,
            "prefill_seconds": self.prefill_seconds,
            "decode_cycles": self.decode_cycles,
            "decode_seconds": self.decode_seconds,
            "decode_tokens_per_s": self.decode_tokens_per_s,
            "decode_method": self.decode_method,
            "hbm_utilisation": self.hbm_utilisation,
            "bytes_loaded": self.bytes_loaded,
            "bytes_stored": self.bytes_stored,
            "busy": self.busy,
            "stalls": self.stalls,
            "decode_samples": self.decode_samples,
        }

    def trace(self) -> dict[str, Any]:
        """Chrome/Perfetto trace-event JSON: one track per unit, sections end to end.

        Times are microseconds at the target clock. The prefill runs and every decode
        step follow each other on the ``sections`` track. A step that was timed by running
        its section also has its instructions on the unit tracks; a run of steps whose
        cycles were interpolated (``sampled`` or ``interpolated`` decode) is one span named
        ``decode P..Q (interpolated)`` with ``args.timed = false`` and no unit detail, so
        the timeline's length is the request's whole modelled time.
        """
        events: list[dict[str, Any]] = [
            {
                "name": "process_name",
                "ph": "M",
                "pid": 0,
                "tid": 0,
                "args": {"name": f"{self.arch} ({self.cores} cores)"},
            }
        ]
        for u in UNITS:
            events.append(
                {
                    "name": "thread_name",
                    "ph": "M",
                    "pid": 0,
                    "tid": int(u) + 1,
                    "args": {"name": u.name},
                }
            )
        events.append(
            {"name": "thread_name", "ph": "M", "pid": 0, "tid": 0, "args": {"name": "sections"}}
        )
        us = 1.0 / self.clock_mhz
        offset = 0.0
        for run in self.prefill_runs:
            events += _run_events(run, offset, us, {"stage": "prefill", "timed": True})
            offset += run.cycles
        runs = {
            row["position"]: run
            for row, run in zip(self.decode_samples, self.decode_runs, strict=True)
        }
        pending: list[DecodeStep] = []
        for step in [*self.decode_timeline, None]:
            if pending and (step is None or step.timed):
                cycles = sum(p.cycles for p in pending)
                lo, hi = pending[0].position, pending[-1].position
                events.append(
                    {
                        "name": f"decode {lo}..{hi} (interpolated)",
                        "ph": "X",
                        "pid": 0,
                        "tid": 0,
                        "ts": offset * us,
                        "dur": cycles * us,
                        "args": {"stage": "decode", "timed": False, "positions": [lo, hi]},
                    }
                )
                offset += cycles
                pending = []
            if step is None:
                break
            if not step.timed:
                pending.append(step)
                continue
            run = runs[step.position]
            args = {"stage": "decode", "timed": True, "position": step.position}
            events += _run_events(run, offset, us, args)
            offset += run.cycles
        return {"traceEvents": events, "displayTimeUnit": "ns"}

    def write_trace(self, path: str) -> None:
        """Write :meth:`trace` as JSON, atomically (:func:`flightforge.files.write_text`)."""
        write_text(Path(path), json.dumps(self.trace()))


def _run_events(run: SectionRun, offset: float, us: float, args: dict) -> list[dict[str, Any]]:
    """A section run as trace events: its span on the sections track, its instructions
    on their units' tracks, from ``offset`` cycles on."""
    events: list[dict[str, Any]] = [
        {
            "name": run.section,
            "ph": "X",
            "pid": 0,
            "tid": 0,
            "ts": offset * us,
            "dur": run.cycles * us,
            "args": {"D": run.d, **args},
        }
    ]
    s, e = run.schedule.start, run.schedule.end
    for i, ins in enumerate(run.instrs):
        if ins.UNIT is None:
            continue
        events.append(
            {
                "name": ins.OPCODE.name,
                "ph": "X",
                "pid": 0,
                "tid": int(ins.UNIT) + 1,
                "ts": (offset + int(s[i])) * us,
                "dur": int(e[i] - s[i]) * us,
                "args": {"i": i, "asm": isa.disassemble(ins)},
            }
        )
    return events


def _accumulate(total: dict, part: dict, weight: float) -> None:
    for k, v in part.items():
        if isinstance(v, dict):
            _accumulate(total.setdefault(k, {}), v, weight)
        else:
            total[k] = total.get(k, 0) + v * weight


#: Of the decode positions that run a length bucket, the cycle model times every
#: ``DECODE_SAMPLE_STRIDE``-th and the last; the rest are interpolated between them.
DECODE_SAMPLE_STRIDE = 32


def simulate(
    program: Program,
    arch: ArchConfig,
    prompt_len: int,
    decode_steps: int,
    *,
    params: TimingParams = TimingParams(),
    interpolate: bool = False,
    sample_stride: int = DECODE_SAMPLE_STRIDE,
) -> Report:
    """Time a request: prefill of ``prompt_len`` tokens, then ``decode_steps`` steps.

    The prefill is the runs :func:`flightforge.generate.prefill_runs` gives (one section,
    or the chunk passes of a chunked program), exactly as a host would issue them.

    Decode step ``j`` runs at position ``prompt_len + j``. A position the program has a
    section for runs that section with ``D`` for that position. A bucket's stream
    attends over the actual context, so its cycles grow with the position as an exact
    compile's do: of the positions that run a bucket, the model times every
    ``sample_stride``-th and the last, each with its own section, and gives the others
    the linear interpolation of their timed neighbours (``sampled``; decode time is
    affine in the context up to tile rounding). Positions with a section of their own,
    or every position with ``sample_stride=1``, are all timed (``exact``). Positions
    with no section are an error, unless ``interpolate``: their cycles are then
    interpolated between the nearest simulated positions below and above (never
    extrapolated).
    """
    if sample_stride < 1:
        raise DeviceError(f"sample_stride must be at least 1, not {sample_stride}")
    if prompt_len < 1 or decode_steps < 0:
        raise DeviceError(
            f"prompt_len must be >= 1 and decode_steps >= 0, not {prompt_len} and {decode_steps}"
        )
    model = CycleModel(arch, params)
    model.load(program)
    try:
        runs = prefill_runs(program, prompt_len)
    except (ProgramError, KeyError) as e:
        raise DeviceError(f"cannot prefill {prompt_len} tokens: {e}") from None
    decode_secs = [s for s in program.sections if s.stage == "decode"]
    compiled = _merged_ranges([(s.len_lo, s.len_hi) for s in decode_secs])
    positions = range(prompt_len, prompt_len + decode_steps)
    by_section: dict[str, list[int]] = defaultdict(list)
    missing = []
    for p in positions:
        try:
            by_section[decode_run(program, p).section].append(p)
        except ProgramError:
            missing.append(p)
    if missing and not interpolate:
        raise UncompiledPositions(missing, decode_steps, compiled, False)
    samples: dict[int, SectionRun] = {}
    between: dict[int, tuple[int, int]] = {}  #: untimed position -> its timed neighbours
    counts: dict[int, float] = defaultdict(float)
    section_of = {p: name for name, ps in by_section.items() for p in ps}
    bucketed = [
        p
        for p in sorted(section_of)
        if program.section(section_of[p]).len_hi > program.section(section_of[p]).len_lo
    ]
    timed = sorted(
        set(section_of) - set(bucketed) | set(bucketed[::sample_stride]) | set(bucketed[-1:])
    )
    # Interpolation needs simulated positions on both sides of every missing one.
    extra = [s for s in decode_secs if s.name not in by_section] if missing else []
    known = sorted({*timed, *(s.len_lo for s in extra)})
    outside = [p for p in missing if not known or not known[0] < p < known[-1]]
    if outside:
        raise UncompiledPositions(outside, decode_steps, compiled, True)
    bar = progress.bar(len(runs) + len(timed) + len(extra), "cycle model", unit="run")
    prefill = []
    for r in runs:
        model.run(r.section, r.length)
        prefill.append(model.runs[-1])
        bar.update(1)
    for p in timed:
        model.run(section_of[p], p)
        samples[p] = model.runs[-1]
        counts[p] += 1
        bar.update(1)
    for s in extra:
        model.run(s.name, s.len_lo)
        samples[s.len_lo] = model.runs[-1]
        bar.update(1)
    bar.close()
    for lo, hi in itertools.pairwise(timed):
        for p in range(lo + 1, hi):
            if p in section_of:
                between[p] = (lo, hi)
    for p in missing:
        between[p] = (max(k for k in known if k < p), min(k for k in known if k > p))
    for p, (lo, hi) in between.items():
        w = (p - lo) / (hi - lo)
        counts[lo] += 1 - w
        counts[hi] += w
    decode_cycles = 0.0
    busy: dict = {}
    stalls: dict = {}
    loaded = stored = 0.0
    for run in prefill:
        _accumulate(busy, run.busy, 1)
        _accumulate(stalls, run.stalls, 1)
        loaded += run.bytes_loaded
        stored += run.bytes_stored
    for p, run in samples.items():
        w = counts.get(p, 0.0)
        decode_cycles += run.cycles * w
        _accumulate(busy, run.busy, w)
        _accumulate(stalls, run.stalls, w)
        loaded += run.bytes_loaded * w
        stored += run.bytes_stored * w
    if missing:
        method = "interpolated"
    elif len(samples) == sum(len(ps) for ps in by_section.values()):
        method = "exact"
    else:
        method = "sampled"
    timing = model.timing
    timeline = []
    for p in positions:
        if p in between:
            lo, hi = between[p]
            w = (p - lo) / (hi - lo)
            cycles = (1 - w) * samples[lo].cycles + w * samples[hi].cycles
            timeline.append(DecodeStep(p, cycles, False))
        else:
            timeline.append(DecodeStep(p, float(samples[p].cycles), True))
    sample_rows = [
        {
            "position": p,
            "section": r.section,
            "d": r.d,
            "cycles": r.cycles,
            "weight": counts.get(p, 0.0),
        }
        for p, r in sorted(samples.items())
    ]
    return Report(
        arch.name,
        timing.cores,
        arch.clock_mhz,
        prompt_len,
        decode_steps,
        sum(r.cycles for r in prefill),
        int(round(decode_cycles)),
        method,
        sample_rows,
        {k: int(round(v)) for k, v in busy.items()},
        {u: {k: int(round(v)) for k, v in d.items()} for u, d in stalls.items()},
        int(round(loaded)),
        int(round(stored)),
        float(timing.peak_bytes_per_cycle),
        prefill,
        [samples[p] for p in sorted(samples)],
        timeline,
    )


def report_lines(rep: Report) -> list[str]:
    """A human-readable summary of a report (the ``flightforge simulate`` output)."""
    lines = [
        f"{rep.arch} ({rep.cores} core{'s' * (rep.cores > 1)} @ {rep.clock_mhz:g} MHz): prompt "
        f"{rep.prompt_len} tokens, {rep.decode_steps} decode steps ({rep.decode_method})",
        f"  prefill (time to first token): {rep.prefill_cycles} cycles = "
        f"{rep.prefill_seconds * 1e3:.3f} ms",
    ]
    if rep.decode_steps:
        lines.append(
            f"  decode: {rep.decode_cycles} cycles = {rep.decode_seconds * 1e3:.3f} ms, "
            f"{rep.decode_tokens_per_s:.2f} token/s"
        )
    lines.append(
        f"  total: {rep.total_cycles} cycles = {rep.total_seconds * 1e3:.3f} ms; "
        f"external memory {rep.bytes_loaded + rep.bytes_stored} bytes, "
        f"{rep.hbm_utilisation:.1%} of peak bandwidth"
    )
    lines.append(f"  {'unit':<5} {'busy':>7}  stalls (share of total cycles)")
    for u in UNITS:
        busy = rep.busy.get(u.name, 0) / rep.total_cycles
        stalls = ", ".join(
            f"{k} {v / rep.total_cycles:.1%}" for k, v in rep.stalls.get(u.name, {}).items() if v
        )
        lines.append(f"  {u.name:<5} {busy:>7.1%}  {stalls or '-'}")
    return lines
