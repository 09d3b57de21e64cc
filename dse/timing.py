"""Fast, exact timing of design points for design-space exploration.

A design point is an :class:`~flightforge.arch.ArchConfig`, compile options and
:class:`~flightforge.sim.timing.TimingParams`. Timing it with the cycle model costs a
shape-only compile (seconds for LLaMA2-7B) and a cycle-model run per section (a few
tenths of a second). Most of the space changes neither the instruction stream nor most
instruction durations, so this module splits the work and caches every part by exactly
what it depends on (docs/dse.md, "What is cached and why it is exact"):

1. **Programs** by :func:`stream_key`: the model, the quantisation and bucket options,
   the compiled lengths and the only architecture fields the compiler reads (buffer
   sizes, ``token_depth``, the external memory's burst and capacity; with ``auto``
   buckets, whose plan comes from a latency estimate, the whole architecture). Clock,
   cores, chains, DSP groups, SFU lanes, bandwidth, latency and channel use only change
   durations. ``tests/test_dse.py`` compiles one model under two architectures
   that differ in every other field and checks that the streams are identical.
2. **Prepared streams** (:class:`Stream`): a section resolved at its bucket offset,
   reduced to per-instruction integer arrays (unit, wait and release masks).
3. **Durations**: matrix and SFU durations come from :class:`~flightforge.sim.timing.Timing`
   itself, cached by the fields they read. Transfers are split into a geometry part
   (worst per-channel bursts, channel crossings: depends on the address map only), which
   :class:`~flightforge.sim.timing.Timing` computes on a unit-rate copy of the
   architecture, and the rate part of ``docs/cycle_model.md``'s LD/ST formula, evaluated
   for all transfers at once with numpy (except the buffer side of the few transfers
   counted burst by burst, ``Timing.beatwise``, which Timing gives).
4. **Dispatch**: :func:`flightforge.sim.dispatch.dispatch_cycles`, the very machine every
   simulator runs, on the stream decoded once and the duration vector (no schedule
   kept); results are memoised by the duration vector.

Tests check durations against ``Timing.duration`` and cycles against ``run_dispatch``
instruction for instruction.
"""

from __future__ import annotations

import hashlib
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from flightforge import formats, isa
from flightforge.arch import ArchConfig
from flightforge.compiler.errors import CompileError
from flightforge.files import prepare_output_dir, write_bytes
from flightforge.program import Program
from flightforge.sim import dispatch
from flightforge.sim.timing import SPLIT_BUFFERS, Q, Timing, TimingParams

N_UNITS = len(isa.Unit)


# --- stream keys ---------------------------------------------------------------------------


def stream_fields(arch: ArchConfig, buckets: str) -> dict[str, Any]:
    """The architecture fields the compiler reads (all of them under ``auto`` buckets)."""
    if buckets == "auto":
        d = arch.model_dump(mode="json")
        for k in ("name", "description", "device"):
            d.pop(k, None)
        return d
    return {
        "buffers": {b.name.lower(): arch.buffers.of(b).size for b in isa.Buf},
        "token_depth": arch.token_depth,
        "burst_bytes": arch.hbm.burst_bytes,
        "capacity": arch.hbm.capacity,
        # prefill chunks and short-prompt buckets come in whole MM row tiles
        "mm_rows": arch.mpe.mm.m,
        # ACT tiles start on, and pad their rows to, an ACT line; K splits at tile_k
        "act_line": arch.buffers.act.banks * arch.buffers.act.width,
        "tile_k": arch.mpe.tile_k,
    }


# --- prepared streams ------------------------------------------------------------------------


@dataclass
class Stream:
    """One section at one bucket offset, as integer arrays for timing."""

    name: str
    d: int
    instrs: list[isa.Instruction]
    decoded: dispatch.Decoded  #: units, masks and buffer sides (``dispatch.decode``)
    mm_idx: np.ndarray  #: indices of MM/MV instructions
    misc_idx: np.ndarray
    xfer_idx: np.ndarray  #: LD and ST
    xfer_bytes: np.ndarray
    xfer_split: np.ndarray  #: bool: each core moves its share
    xfer_buf: np.ndarray
    xfer_bits: np.ndarray  #: bits per external value: 8, or a LD's unpack width
    xfer_store: np.ndarray  #: bool: a ST (else a LD)
    bytes_moved: int  #: bytes loaded and stored
    macs: int
    _geometry: dict = field(default_factory=dict, repr=False)
    _compute: dict = field(default_factory=dict, repr=False)
    _memo: dict = field(default_factory=dict, repr=False)


def prepare(program: Program, section: str, length: int | None = None) -> Stream:
    """The section ``section`` of ``program`` run with ``length`` (its bucket offset)."""
    sec = program.section(section)
    d = 0 if length is None else length - sec.len_lo
    instrs = [isa.resolve(i, d) if d and isa.is_dynamic(i) else i for i in sec.instructions]
    dispatch.check_section_code(instrs, section)
    decoded = dispatch.decode(instrs)
    mm, misc, xfer, xbytes, xsplit, xbuf, xbits, xstore = [], [], [], [], [], [], [], []
    macs = 0
    for i, ins in enumerate(instrs):
        if isinstance(ins, isa.SYS):
            continue
        if isinstance(ins, (isa.MM, isa.MV)):
            mm.append(i)
            macs += ins.rows * ins.n * formats.weight_entries(ins.k, isa.SparseMode(ins.sparse))
        elif isinstance(ins, isa.MISC):
            misc.append(i)
        else:
            xfer.append(i)
            xbytes.append(ins.rows * ins.row_bytes)
            buf = isa.Buf(ins.buf)
            xsplit.append(isinstance(ins, isa.ST) or buf in SPLIT_BUFFERS)
            xbuf.append(int(buf))
            xbits.append(isa.Unpack(ins.unpack).bits if isinstance(ins, isa.LD) else 8)
            xstore.append(isinstance(ins, isa.ST))
    return Stream(
        section,
        d,
        instrs,
        decoded,
        np.array(mm, dtype=np.int64),
        np.array(misc, dtype=np.int64),
        np.array(xfer, dtype=np.int64),
        np.array(xbytes, dtype=np.int64),
        np.array(xsplit, dtype=bool),
        np.array(xbuf, dtype=np.int64),
        np.array(xbits, dtype=np.int64),
        np.array(xstore, dtype=bool),
        int(sum(xbytes)),
        macs,
    )


# --- durations -------------------------------------------------------------------------------


def _unit_rate_arch(arch: ArchConfig) -> ArchConfig:
    """``arch`` with 1 byte per cycle per channel, no latency, no crossing penalty and
    unbounded buffer ports: a transfer then lasts exactly ``worst_bursts * burst`` cycles
    after its unit's fixed pipeline (``Timing.ld_latency`` / ``st_latency``).

    A device for the timing model only, not a core anyone could build (its ports are
    2^30 bytes wide), so it is copied from the validated ``arch`` without validation."""
    hbm = arch.hbm.model_copy(
        update={
            "bandwidth_gbs": float(arch.hbm.channels),
            "latency_ns": 0.0,
            "cross_channel_penalty_cycles": 0,
        }
    )
    wide = {
        b.name.lower(): arch.buffers.of(b).model_copy(update={"width": 1 << 30}) for b in isa.Buf
    }
    return arch.model_copy(
        update={"clock_mhz": 1000.0, "hbm": hbm, "buffers": arch.buffers.model_copy(update=wide)}
    )


def _geometry(stream: Stream, arch: ArchConfig, params) -> tuple[np.ndarray, np.ndarray]:
    """Worst per-channel bursts and channel crossings of every transfer (cached by map)."""
    mem = arch.hbm
    key = (mem.burst_bytes, mem.capacity, mem.channels, params.interleave_bytes, params.channels)
    hit = stream._geometry.get(key)
    if hit is not None:
        return hit
    unit = Timing(
        _unit_rate_arch(arch),
        TimingParams(interleave_bytes=params.interleave_bytes, channels=params.channels),
    )
    worst = np.empty(len(stream.xfer_idx), dtype=np.int64)
    cross = np.empty(len(stream.xfer_idx), dtype=np.int64)
    for j, i in enumerate(stream.xfer_idx):
        ins = stream.instrs[i]
        if isinstance(ins, isa.LD):
            c, fixed = unit.ld(ins), unit.ld_latency  # (the unit's pipeline: latency is 0)
        else:
            c, fixed = unit.st(ins), unit.st_latency
        worst[j] = (c.cycles - fixed) // mem.burst_bytes
        cross[j] = c.crossings
    stream._geometry[key] = worst, cross
    return worst, cross


def _port_cycles(timing, ins: isa.Instruction) -> int:
    return (timing.ld(ins) if isinstance(ins, isa.LD) else timing.st(ins)).port_cycles


def durations(stream: Stream, arch: ArchConfig, params) -> np.ndarray:
    """Cycles every instruction occupies its unit (``Timing.duration``, 0 for SYS)."""
    timing = Timing(arch, params)
    out = np.zeros(len(stream.instrs), dtype=np.int64)
    ckey = (
        arch.mpe,
        arch.sfu,
        tuple(sorted(timing.port.items())),
        timing.cores,
        params.sync_latency_cycles,
        params.link_bytes_per_cycle,
    )
    comp = stream._compute.get(ckey)
    if comp is None:
        comp = (
            np.array([timing.matmul(stream.instrs[i]) for i in stream.mm_idx], dtype=np.int64),
            np.array([timing.misc(stream.instrs[i]) for i in stream.misc_idx], dtype=np.int64),
        )
        stream._compute[ckey] = comp
    out[stream.mm_idx] = comp[0]
    out[stream.misc_idx] = comp[1]
    if len(stream.xfer_idx):
        worst, cross = _geometry(stream, arch, params)
        cores = timing.cores
        share = np.where(stream.xfer_split, -(-stream.xfer_bytes // cores), stream.xfer_bytes)
        port = np.array([timing.port[isa.Buf(b)] for b in range(len(isa.Buf))], dtype=np.int64)
        port_cycles = -(-share // port[stream.xfer_buf])
        # Transfers whose buffer side Timing counts burst by burst (Timing.beatwise: a
        # narrow port, or an unpacking LD whose bursts hold more values than the port
        # writes per cycle) take their port cycles from Timing itself.
        bkey = ("beatwise", timing.burst, tuple(sorted(timing.port.items())), cores)
        beat = stream._compute.get(bkey)
        if beat is None:
            pairs = list(zip(stream.xfer_buf.tolist(), stream.xfer_bits.tolist(), strict=True))
            slow = {p: timing.beatwise(isa.Buf(p[0]), p[1]) for p in set(pairs)}
            idx = [j for j, p in enumerate(pairs) if slow[p]]
            beat = stream._compute[bkey] = (
                np.array(idx, dtype=np.int64),
                np.array(
                    [_port_cycles(timing, stream.instrs[stream.xfer_idx[j]]) for j in idx],
                    dtype=np.int64,
                ),
            )
        port_cycles[beat[0]] = beat[1]
        channel_cycles = -(-(worst * timing.burst * Q) // timing.rate_q8)
        # the LD and ST units' own pipelines differ (Timing.ld_latency / st_latency)
        latency = np.where(stream.xfer_store, timing.st_latency, timing.ld_latency)
        out[stream.xfer_idx] = (
            latency + np.maximum(channel_cycles, port_cycles) + timing.penalty * cross
        )
    return out


# --- timing ---------------------------------------------------------------------------------


@dataclass(frozen=True)
class StreamTiming:
    """One timed run of a prepared stream."""

    cycles: int
    busy: tuple[int, ...]  #: cycles each unit is occupied (LD, ST, MPE, SFU)
    bytes_moved: int
    macs: int


def time_stream(stream: Stream, arch: ArchConfig, params) -> StreamTiming:
    """Time ``stream`` on ``arch`` with timing ``params`` (exactly the cycle model's cycles)."""
    dur = durations(stream, arch, params)
    dur1 = np.maximum(dur, 1)
    kinds = np.asarray(stream.decoded.kind)
    busy = tuple(int(dur1[kinds == u].sum()) for u in range(N_UNITS))
    key = (
        hashlib.blake2b(dur.tobytes(), digest_size=16).digest(),
        arch.token_depth,
        arch.queue_depth,
    )
    cycles = stream._memo.get(key)
    if cycles is None:
        cycles = dispatch.dispatch_cycles(
            stream.instrs,
            stream.decoded,
            dur.tolist(),
            token_depth=arch.token_depth,
            queue_depth=arch.queue_depth,
            section=stream.name,
        )
        stream._memo[key] = cycles
    return StreamTiming(cycles, busy, stream.bytes_moved, stream.macs)


# --- program cache ---------------------------------------------------------------------------


class ProgramCache:
    """Compiled programs by stream key, in memory and (optionally) on disk.

    The disk copy lets worker processes share compiles; a file is written under a
    temporary name and renamed, so a reader never sees a partial program.
    """

    def __init__(self, directory: str | Path | None = None, max_streams: int = 64) -> None:
        self.dir = Path(directory) if directory else None
        self.programs: dict[str, Program | Exception] = {}
        self.streams: dict[tuple, Stream] = {}
        self.max_streams = max_streams
        self.compiles = 0

    def program(self, key: str, arch: ArchConfig, compile_fn) -> Program:
        hit = self.programs.get(key)
        if isinstance(hit, Exception):
            raise hit
        if hit is not None:
            return hit
        path = self.dir / f"{key}.ffb" if self.dir else None
        err = self.dir / f"{key}.err" if self.dir else None
        if err is not None and err.exists():
            e = CompileError(err.read_text())
            self.programs[key] = e
            raise e
        if path is not None and path.exists():
            prog = Program.from_bytes(path.read_bytes())
        else:
            try:
                prog = compile_fn(arch)
                self.compiles += 1
            except Exception as e:
                self.programs[key] = e
                if err is not None and type(e).__name__ == "CompileError":
                    _atomic_write(err, str(e).encode())
                raise
            if path is not None:
                _atomic_write(path, prog.to_bytes())
        self.programs[key] = prog
        return prog

    def stream(self, key: str, program: Program, section: str, length: int) -> Stream:
        skey = (key, section, length - program.section(section).len_lo)
        s = self.streams.get(skey)
        if s is None:
            if len(self.streams) >= self.max_streams:
                self.streams.pop(next(iter(self.streams)))
            s = self.streams[skey] = prepare(program, section, length)
        return s


def _atomic_write(path: Path, data: bytes) -> None:
    prepare_output_dir(path.parent)
    write_bytes(path, data)
