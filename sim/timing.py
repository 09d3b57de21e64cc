"""Per-instruction timing: how many cycles an instruction occupies its unit.

``duration(arch, instr)`` is a pure function of the architecture config, the
instruction and a few :class:`TimingParams` the config does not carry. It is written
to be implemented again, cycle for cycle, by the RTL and its memory model: every
formula is integer arithmetic on the instruction's fields and on constants derived once
from the config (:class:`Timing`); the only floating-point step is that derivation
(e.g. GB/s to bytes per cycle, rounded down to a Q8 fixed-point rate). The formulas are
listed, with their reasons, in docs/cycle_model.md; in short:

- **LD/ST**: ``latency + overhead + max(channel_cycles, port_cycles) + penalty *
  crossings``; ``overhead`` is the load or store unit's own pipeline
  (:data:`flightforge.ldst.LD_OVERHEAD` / ``ST_OVERHEAD``: setup, issue, drain).
  Every row of a 2-D transfer is rounded out to whole bursts; each burst belongs to one
  external-memory channel (``address // channel_bytes``, or an interleaved map);
  channels stream in parallel at ``rate_q8 / 256`` bytes per cycle each, so
  ``channel_cycles = ceil(max_bursts_per_channel * burst * 256 / rate_q8)``. The on-chip
  side moves at most ``banks * width`` bytes per cycle per core (``port_cycles``). A
  row that runs over a channel boundary pays ``cross_channel_penalty_cycles`` per
  boundary (linear map only). A transfer is one span only when it is contiguous on both
  sides (one row, or both strides equal to the row; an unpacking LD also needs its
  packed rows to end on whole bytes). When one burst can hold more values than the port
  writes per cycle (a port narrower than a burst, or a LD that unpacks 2/3/4-bit values
  into INT8: ``formats.lowbit_values_per_burst``), each burst costs
  ``ceil(values ending in it / port)`` cycles (not re-packed).
- **MM/MV**: ``tile + (tiles - 1) * max(tile, drain) + depth`` with ``tiles =
  ceil(M / m) * ceil(N / n)`` for the mode's parallel shape ``n x k x m`` (``drain``,
  ``depth``: the DSP48E2 datapath's and shared requantisers', ``flightforge.mpe``; a
  tile shorter than its drain waits for the requantisers): an output tile runs
  ``ceil(K_eff / k)`` steps (``K_eff = K * N_keep / M_block`` stored entries for N:M-sparse
  weights), each lasting
  ``max(1, ceil(n * weight_bytes / wgt_port), ceil(n * index_bytes / meta_port))``
  cycles for one column's bytes of the step: the compute bound
  ``ceil(M/m) * ceil(N/n) * ceil(K_eff/k)`` or the weight/index port bound, whichever
  is larger step by step (precision matters only through the bytes the port delivers).
- **MISC**: ``passes * rows * max(ceil(cols / lanes), ceil(cols * elem_bytes / act_port))
  + depth``; softmax makes 3 passes over a row (max, exp-sum, normalise),
  RMSNorm/LayerNorm 2 (statistics, scale), everything else 1; ROPE instead takes every
  ``len``-column head in beats of two cycles (``x1``/``cos`` runs, then ``x2``/``sin``
  runs, each through the one ACT or GLB read port), ``sfu_row_ops.rope_pairs`` pairs a
  beat: ``rows * heads * 2 * ceil(len / 2 / pairs)``; ``depth`` is the SFU
  pipeline's latency after the last issue (``sfu_row_ops.misc_depth``: the pipelined
  lanes', or ``sfu.pipeline_depth`` if that is more).
- **Several cores** (``cores > 1``): the one instruction stream runs on all cores in
  lock step, each taking ``ceil(N / cores)`` output columns of every matrix
  instruction, the same share of every weight/KV load and of every store, and
  ``ceil(cols / cores)`` columns of element-wise SFU operations; row reductions
  (softmax, norms) are replicated on every core. Every matrix instruction then
  all-gathers its output across cores: ``sync_latency + ceil(out_bytes * (cores - 1) /
  (cores * link_bytes))`` cycles, charged to the instruction.
"""

from __future__ import annotations

import dataclasses
import math
from dataclasses import dataclass
from fractions import Fraction

from flightforge import formats, isa, ldst
from flightforge import mpe as mpe_datapath
from flightforge import sfu_row_ops as row_ops
from flightforge.arch import ArchConfig

Q = 256  #: fixed-point scale of memory rates (Q8: rate_q8 / 256 bytes per cycle)

#: SFU operations that reduce along a row: replicated, not split, across cores
ROW_REDUCTIONS = frozenset({isa.MiscOp.SOFTMAX, isa.MiscOp.RMSNORM, isa.MiscOp.LAYERNORM})
#: buffers whose loads are split across cores (each core holds its share of the columns)
SPLIT_BUFFERS = frozenset({isa.Buf.WGT, isa.Buf.META, isa.Buf.SCALE})


def cdiv(a: int, b: int) -> int:
    """Ceiling division of non-negative integers."""
    return -(-a // b)


@dataclass(frozen=True)
class TimingParams:
    """Timing parameters the architecture config does not (yet) carry.

    Every default is the physically neutral choice; the reproduction benchmark states
    which values it uses and why (docs/cycle_model.md).
    """

    cores: int | None = None  #: override of ``arch.cores`` (None: the config's)
    interleave_bytes: int = 0  #: 0: linear channel map; else bytes per channel in turn
    channels: int = 0  #: channels the interleaved map spreads over (0: all)
    mem_efficiency_pct: int = 100  #: sustained share of each channel's peak rate
    sync_latency_cycles: int = 32  #: fixed cost of one cross-core all-gather
    link_bytes_per_cycle: int = 64  #: bytes per cycle into each core during an all-gather

    def __post_init__(self) -> None:
        for name in ("interleave_bytes", "channels", "sync_latency_cycles"):
            if getattr(self, name) < 0:
                raise ValueError(f"{name} must be non-negative, not {getattr(self, name)!r}")
        if self.cores is not None and self.cores < 1:
            raise ValueError(f"cores must be at least 1, not {self.cores!r}")
        if not 1 <= self.mem_efficiency_pct <= 100:
            raise ValueError(f"mem_efficiency_pct must be 1..100, not {self.mem_efficiency_pct!r}")
        if self.link_bytes_per_cycle < 1:
            raise ValueError(
                f"link_bytes_per_cycle must be at least 1, not {self.link_bytes_per_cycle!r}"
            )


@dataclass
class TransferCost:
    """The parts of a LD/ST duration, for statistics."""

    cycles: int
    bytes: int  #: bytes the instruction asked for
    burst_bytes: int  #: bytes moved on the channels (whole bursts)
    crossings: int
    port_cycles: int  #: cycles of the buffer side alone (one core's share)


class Timing:
    """Integer constants derived once from an architecture config, and the formulas.

    ``Timing(arch).duration(instr)`` is what :func:`duration` computes; a cycle model
    builds one ``Timing`` and calls it for every instruction.
    """

    def __init__(self, arch: ArchConfig, params: TimingParams = TimingParams()) -> None:
        mem = arch.hbm
        self.arch = arch
        self.params = params
        self.cores = params.cores or arch.cores
        self.burst = mem.burst_bytes
        self.channel_bytes = mem.channel_bytes
        self.n_channels = mem.channels
        if params.channels > mem.channels:
            raise ValueError(
                f"channels {params.channels} exceeds the {mem.channels} channels of {arch.name}"
            )
        self.interleave = (
            params.interleave_bytes or mem.interleave_bytes
        )  #: the config's map by default
        if self.interleave and self.interleave % self.burst:
            raise ValueError(
                f"interleave_bytes {self.interleave} must be a multiple of the "
                f"burst size {self.burst}"
            )
        self.ways = params.channels or mem.channels  #: channels of the interleaved map
        # Config conversion (the only non-integer step): exact rationals, rounded down.
        clock = Fraction(str(arch.clock_mhz)) * 10**6
        per_channel = Fraction(str(mem.bandwidth_gbs)) * 10**9 / mem.channels / clock
        self.rate_q8 = max(1, int(per_channel * Q * params.mem_efficiency_pct / 100))
        self.latency = int(
            -(-Fraction(str(mem.latency_ns)) * Fraction(str(arch.clock_mhz)) // 1000)
        )
        #: cycles a LD / ST takes beyond the memory's latency and its beats: the units'
        #: pipeline (setup, command issue, drain), built to the same constants
        self.ld_latency = self.latency + ldst.LD_OVERHEAD
        self.st_latency = self.latency + ldst.ST_OVERHEAD
        self.penalty = mem.cross_channel_penalty_cycles
        self.port = {b: arch.buffers.of(b).banks * arch.buffers.of(b).width for b in isa.Buf}
        self.peak_bytes_per_cycle = Fraction(str(mem.bandwidth_gbs)) * 10**9 / clock
        self._lowbit_memo: dict[tuple[int, int, int, int], int] = {}
        self._fill_memo: dict[tuple[int, int, int], list[int]] = {}

    # --- external memory -----------------------------------------------------------

    def _span_bursts(self, lo: int, hi: int, loads: dict[int, int]) -> int:
        """Add the bursts of the byte span ``[lo, hi)`` to per-channel ``loads``;
        returns the channel boundaries the span crosses (linear map)."""
        b = self.burst
        first, last = lo // b, (hi - 1) // b
        if self.interleave:
            per = self.interleave // b  # bursts per interleave unit
            u0, u1 = first // per, last // per
            if u0 == u1:
                c = u0 % self.ways
                loads[c] = loads.get(c, 0) + last - first + 1
                return 0
            c0, c1 = u0 % self.ways, u1 % self.ways
            loads[c0] = loads.get(c0, 0) + per - first % per
            loads[c1] = loads.get(c1, 0) + last % per + 1
            mid = u1 - u0 - 1
            if mid:
                full, extra = divmod(mid, self.ways)
                for j in range(min(mid, self.ways)):
                    c = (u0 + 1 + j) % self.ways
                    loads[c] = loads.get(c, 0) + per * (full + (1 if j < extra else 0))
            return 0
        per = self.channel_bytes // b  # bursts per channel
        c0, c1 = first // per, last // per
        for c in range(c0, c1 + 1):
            lo_b = max(first, c * per)
            hi_b = min(last, (c + 1) * per - 1)
            loads[c] = loads.get(c, 0) + hi_b - lo_b + 1
        return c1 - c0

    def beatwise(self, buf: isa.Buf, bits: int = 8) -> bool:
        """Whether a transfer's buffer side is counted burst by burst: one burst can hold
        more values of ``bits`` bits (8: bytes) than ``buf``'s port writes per cycle."""
        return self.port[buf] < formats.lowbit_values_per_burst(self.burst, bits)

    def _span_port(self, lo: int, n: int, port: int, bits: int = 8) -> int:
        """Buffer-port cycles of a span at external byte ``lo`` holding ``n`` values of
        ``bits`` bits (8: bytes), burst by burst: every burst's values that END in it
        (are complete once it has arrived) in ``ceil(values / port)`` cycles; bursts are
        not re-packed, as the RTL load and store units do it."""
        b = self.burst
        if bits == 8:
            first = min(n, b - lo % b)
            full, tail = divmod(n - first, b)
            return cdiv(first, port) + full * cdiv(b, port) + cdiv(tail, port)
        key = (lo % b, n, port, bits)
        hit = self._lowbit_memo.get(key)
        if hit is None:
            v = formats.lowbit_burst_values(lo % b, n, bits, b)
            hit = self._lowbit_memo[key] = int((-(-v // port)).sum())
        return hit

    def transfer(
        self,
        ext: int,
        rows: int,
        row_bytes: int,
        ext_stride: int,
        buf: isa.Buf,
        split: bool,
        buf_stride: int | None = None,
        bits: int = 8,
        store: bool = False,
    ) -> TransferCost:
        """Cycles of a 2-D transfer between external memory and buffer ``buf``.

        ``bits`` < 8: a LD that unpacks; each external row holds ``row_bytes`` values of
        that many bits in ``ceil(row_bytes * bits / 8)`` bytes (:func:`formats.pack_lowbit`)
        and the buffer receives ``row_bytes`` INT8 per row. ``store``: a ST (its unit's
        pipeline, ``st_latency``), else a LD (``ld_latency``).
        """
        loads: dict[int, int] = {}
        crossings = 0
        if buf_stride is None:
            buf_stride = row_bytes
        ext_row = cdiv(row_bytes * bits, 8)
        port = self.port[buf]
        beatwise = self.beatwise(buf, bits)
        port_sum = 0
        whole = row_bytes * bits % 8 == 0  # packed rows join without padding bits
        if rows == 1 or (ext_stride == ext_row and buf_stride == row_bytes and whole):
            crossings += self._span_bursts(ext, ext + rows * ext_row, loads)
            if beatwise:
                port_sum = self._span_port(ext, rows * row_bytes, port, bits)
        else:
            for r in range(rows):
                a = ext + r * ext_stride
                crossings += self._span_bursts(a, a + ext_row, loads)
                if beatwise:
                    port_sum += self._span_port(a, row_bytes, port, bits)
        worst = max(loads.values())
        channel_cycles = cdiv(worst * self.burst * Q, self.rate_q8)
        nbytes = rows * row_bytes
        if beatwise:
            port_cycles = cdiv(port_sum, self.cores) if split else port_sum
        else:
            share = cdiv(nbytes, self.cores) if split else nbytes
            port_cycles = cdiv(share, port)
        latency = self.st_latency if store else self.ld_latency
        cycles = latency + max(channel_cycles, port_cycles) + self.penalty * crossings
        return TransferCost(
            cycles, nbytes, sum(loads.values()) * self.burst, crossings, port_cycles
        )

    def ld(self, i: isa.LD) -> TransferCost:
        return self.transfer(
            i.src,
            i.rows,
            i.row_bytes,
            i.src_stride,
            isa.Buf(i.buf),
            isa.Buf(i.buf) in SPLIT_BUFFERS,
            i.dst_stride,
            isa.Unpack(i.unpack).bits,
        )

    def st(self, i: isa.ST) -> TransferCost:
        return self.transfer(
            i.dst, i.rows, i.row_bytes, i.dst_stride, isa.Buf(i.buf), True, i.src_stride, store=True
        )

    # --- matrix engine -------------------------------------------------------------

    def matmul_compute(self, i: isa.MM | isa.MV) -> int:
        """Cycles of the MACs alone (no port, pipeline or synchronisation terms)."""
        shape = self.arch.mpe.mm if isinstance(i, isa.MM) else self.arch.mpe.mv
        k_eff = formats.weight_entries(i.k, isa.SparseMode(i.sparse))
        n_c = cdiv(i.n, self.cores)
        return cdiv(i.rows, shape.m) * cdiv(n_c, shape.n) * cdiv(k_eff, shape.k)

    def matmul_tile(self, i: isa.MM | isa.MV) -> int:
        """Cycles of one output tile (``s.m`` rows x ``s.n`` columns, all of K).

        The tile runs ``S = ceil(K_eff / s.k)`` steps of ``s.k`` stored entries; a step
        lasts ``max(1, ceil(n * wbytes / port[WGT]), ceil(n * mbytes / port[META]))``
        cycles, where ``wbytes``/``mbytes`` are one column's weight and index bytes of the
        step (the ports are split evenly over the tile's ``n`` columns), and at least one
        cycle per scale group in the step (:meth:`scale_cycles`). Only the last step can
        be short."""
        shape = self.arch.mpe.mm if isinstance(i, isa.MM) else self.arch.mpe.mv
        mode = isa.SparseMode(i.sparse)
        k_eff = formats.weight_entries(i.k, mode)
        steps = cdiv(k_eff, shape.k)
        bits = 8 if i.wkn else isa.WPrec(i.wprec).bits
        ib = formats.index_bits(mode) if mode.is_sparse else 0
        pw, pm = self.port[isa.Buf.WGT], self.port[isa.Buf.META]

        sc, rc = self.scale_cycles(i), self.tile_read_cycles(i)

        def step(entries: int) -> int:
            w = cdiv(shape.n * cdiv(entries * bits, 8), pw)
            mt = cdiv(shape.n * cdiv(entries * ib, 8), pm)
            return max(1, w, mt, sc, rc)

        last = k_eff - (steps - 1) * shape.k
        return (steps - 1) * step(shape.k) + step(last)

    def tile_read_cycles(self, i: isa.MM | isa.MV) -> int:
        """Cycles a step reads its rows' activation spans from the tile buffer, whose
        banks hold words of ``mpe.mm.k`` bytes: an MM row reads one word a cycle, an MV
        row the ``port[ACT] / mm.k`` words of a line (flightforge.mpe.tile_read_cycles).
        Dense steps take one cycle; an N:M span of ``max(1, k / N) * M`` bytes more."""
        shape = self.arch.mpe.mm if isinstance(i, isa.MM) else self.arch.mpe.mv
        mode = isa.SparseMode(i.sparse)
        access = mpe_datapath.tile_access(shape.k, mode.n if mode.is_sparse else 0, mode.m)
        word = self.arch.mpe.mm.k
        per = 1 if isinstance(i, isa.MM) else mpe_datapath.tile_stripe(self.port[isa.Buf.ACT], word)
        return mpe_datapath.tile_read_cycles(access, word, per)

    def fill_lines(self, a_addr: int, a_stride: int, k: int, rows: int) -> int:
        """ACT lines the tile fills of rows ``0 .. rows - 1`` read: row ``r``'s ``k``
        activations at ``a_addr + r * a_stride`` touch
        ``mpe_datapath.fill_lines(offset, k, line)`` aligned lines. The offsets repeat
        with period ``line / gcd(a_stride, line)``, so this sums one period."""
        line = self.port[isa.Buf.ACT]
        key = (a_addr % line, a_stride % line, k)
        per = self._fill_memo.get(key)
        if per is None:
            period = line // math.gcd(key[1], line)
            per = [0]
            for r in range(period):
                off = (key[0] + r * key[1]) % line
                per.append(per[-1] + mpe_datapath.fill_lines(off, k, line))
            self._fill_memo[key] = per
        period = len(per) - 1
        return rows // period * per[-1] + per[rows % period]

    def matmul(self, i: isa.MM | isa.MV) -> int:
        shape = self.arch.mpe.mm if isinstance(i, isa.MM) else self.arch.mpe.mv
        n_c = cdiv(i.n, self.cores)
        col_tiles, row_tiles = cdiv(n_c, shape.n), cdiv(i.rows, shape.m)
        tile, mp = self.matmul_tile(i), self.arch.mpe
        drain = mp.drain(shape)
        # Every row tile starts by filling the activation tile buffer (its rows' lines,
        # then FILL_TAIL); the shared requantisers drain a tile in ``drain`` cycles, so
        # tiles' last steps are at least that far apart (the fetch loop waits, the fill
        # counting towards it); the last drain ends the work.
        stride = i.a_stride if isinstance(i, isa.MM) else 0
        tail, cols = mpe_datapath.FILL_TAIL, (col_tiles - 1) * max(tile, drain)
        if tail + 1 + tile >= drain:  # no fill + tile is shorter than a drain
            lines = self.fill_lines(i.a_addr, stride, i.k, i.rows)
            cycles = lines + row_tiles * (tail + tile + cols)
        else:
            cycles = 0
            for t in range(row_tiles):
                r0 = t * shape.m
                rows = min(shape.m, i.rows - r0)
                fill = tail + self.fill_lines(i.a_addr + r0 * stride, stride, i.k, rows)
                cycles += (fill + tile if t == 0 else max(fill + tile, drain)) + cols
        cycles += mp.depth(shape)
        # the accumulators take the last step's scale groups one a cycle
        cycles += self.scale_cycles(i) - 1
        return cycles + self.sync(i.rows * i.n * isa.DType(i.odt).nbytes)

    def scale_cycles(self, i: isa.MM | isa.MV) -> int:
        """Cycles a segment accumulator (one multiplier) spends on a step: one per scale
        group of stored entries the step holds (flightforge.mpe.scale_cycles)."""
        shape = self.arch.mpe.mm if isinstance(i, isa.MM) else self.arch.mpe.mv
        group = isa.group_size(i.gsz)
        stored = formats.weight_entries(group, isa.SparseMode(i.sparse)) if group else 0
        return mpe_datapath.scale_cycles(shape.k, stored)

    def sync(self, out_bytes: int) -> int:
        """All-gather of a matrix result across cores (0 on one core)."""
        if self.cores == 1:
            return 0
        p = self.params
        return p.sync_latency_cycles + cdiv(
            out_bytes * (self.cores - 1), self.cores * p.link_bytes_per_cycle
        )

    # --- special-function unit -------------------------------------------------------

    def misc(self, i: isa.MISC) -> int:
        op = isa.MiscOp(i.op)
        cols = i.cols if op in ROW_REDUCTIONS else cdiv(i.cols, self.cores)
        elem = isa.DType(i.a_dt).nbytes + isa.DType(i.d_dt).nbytes
        sfu = self.arch.sfu
        per_row = max(cdiv(cols, sfu.lanes), cdiv(cols * elem, self.port[isa.Buf.ACT]))
        if op == isa.MiscOp.ROPE:  # whole heads per core, in two-cycle beats
            pairs = row_ops.rope_pairs(
                sfu.lanes,
                self.port[isa.Buf.ACT],
                self.port[isa.Buf.GLB],
                isa.DType(i.a_dt).nbytes,
                isa.DType(i.d_dt).nbytes,
            )
            heads = cdiv(i.cols // i.len, self.cores)
            issue = i.rows * row_ops.rope_pass_cycles(heads * i.len, i.len, pairs)
        elif op in (isa.MiscOp.ADD, isa.MiscOp.MUL):  # a then b runs, in two-cycle beats
            per_beat = row_ops.operand_beat_elements(
                sfu.lanes,
                self.port[isa.Buf.ACT],
                isa.DType(i.a_dt).nbytes,
                isa.DType(i.b_dt).nbytes,
                isa.DType(i.d_dt).nbytes,
            )
            issue = i.rows * row_ops.beat_pass_cycles(cols, per_beat)
        elif op == isa.MiscOp.SOFTMAX:
            issue = row_ops.softmax_cycles(i.rows, per_row)
        elif op in (isa.MiscOp.RMSNORM, isa.MiscOp.LAYERNORM):
            issue = row_ops.norm_cycles(
                i.rows, per_row, row_ops.norm_row_gap(op == isa.MiscOp.LAYERNORM)
            )
        else:
            issue = i.rows * per_row
        return issue + row_ops.misc_depth(op, sfu.pipeline_depth, sfu.lanes)

    # --- dispatch --------------------------------------------------------------------

    def duration(self, i: isa.Instruction) -> int:
        """Cycles ``i`` occupies its unit (0 for SYS, which occupies none)."""
        if isinstance(i, isa.LD):
            return self.ld(i).cycles
        if isinstance(i, isa.ST):
            return self.st(i).cycles
        if isinstance(i, (isa.MM, isa.MV)):
            return self.matmul(i)
        if isinstance(i, isa.MISC):
            return self.misc(i)
        return 0


_CACHE: dict[tuple[ArchConfig, TimingParams], Timing] = {}


def timing_for(arch: ArchConfig, params: TimingParams = TimingParams()) -> Timing:
    """The (cached) :class:`Timing` of a config and parameters."""
    key = (arch, params)
    t = _CACHE.get(key)
    if t is None:
        t = _CACHE[key] = Timing(arch, params)
    return t


def duration(
    arch: ArchConfig, instr: isa.Instruction, params: TimingParams = TimingParams()
) -> int:
    """Cycles ``instr`` occupies its unit on ``arch``: the cycle model's only timing input."""
    return timing_for(arch, params).duration(instr)


def with_cores(params: TimingParams, cores: int) -> TimingParams:
    return dataclasses.replace(params, cores=cores)
