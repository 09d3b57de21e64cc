"""The matrix processing engine: MM and MV, dense and N:M sparse, INT8/INT4 weights.

Tiled as :func:`sim.timing.Timing.matmul` counts: the instruction is cut into output
tiles of the mode's shape (``mpe.mm`` or ``mpe.mv``: ``m`` rows x ``n`` columns), and a
tile into steps of ``k`` stored weight entries. Every ``(row, column)`` pair of a tile is
one segment of ``k`` MACs on the chains (reduction-node cuts end segments and
group-scale groups), all chains in parallel. A step lasts ``max(1, ceil(n * wbytes /
port[WGT]), ceil(n * mbytes / port[META]))`` cycles: the WGT (META) port is split over
the tile's ``n`` columns (``[K][N]`` weights: into row reads), and the bytes are staged
per column. Each row tile starts with the fill of the activation tile buffer
(:mod:`.tile_buffer`: every ACT line its rows' ``K`` activations touch, one a cycle
through the MPE's one ACT line port, then ``FILL_TAIL`` cycles), which all its column
tiles then read. In the step's last fetch cycle the unit reads the rows' activation
spans from the tile buffer (the ``k`` activations, or the sparse blocks the step's
entries index), the step's group scales and, at a tile's last step, the column records
and partial sums.
Then, pipelined behind the fetch of the next step: MACs (one cycle), reduction nodes
(one cycle), group scaling and accumulation into one 50-bit accumulator per segment
and, at the tile's last step, the epilogue ``sat(rnd((acc + psum + bias) * mult >>
shift))`` written in the same cycle. An instruction of ``T`` fetch cycles is done
``T + 4`` cycles after it started (tiny's ``pipeline_depth``).

The repeated parts are components of their own (:meth:`MatrixEngine.parts`), so that
each distinct one is synthesised once and counted per instance
(benchmarks/rtl_resources.py; the flat MPE of u280 was beyond Yosys in 10 GB): the
``chains`` x :class:`.chain.DspChain`, the :class:`.tile_buffer.TileBuffer`, one
:class:`.operands.RowWindows` per tile row, one :class:`.operands.ChainFeed` per chain and one
:class:`.epilogue.SegmentAccumulator` per segment and ``requantisers`` shared
:class:`.requant.Requantiser` units. The fetch loop is :mod:`.control`'s, the
addressing, the staging of weights and indices and the writes :mod:`.fetch`'s; this
module holds the parameters and ports and wires the parts.
"""

from __future__ import annotations

from amaranth import Cat, Const, Module, Mux, Signal
from amaranth.lib import wiring
from amaranth.lib.wiring import Out

from flightforge import formats, isa
from flightforge.arch import ArchConfig
from flightforge.mpe import (
    LANE_SUM_BITS,
    REQUANT_STAGES,
    chain_latency,
    tile_access,
    tile_read_cycles,
    tile_span,
    tile_stripe,
)

from ..buffers import addr_bits
from ..bus import BufPortSignature
from ..decode import unit_members
from .chain import LANES, DspChain
from .control import decode, sequence
from .epilogue import SegmentAccumulator, ends, segment_accumulators
from .fetch import issue_reads, stage, write_results
from .operands import ChainFeed, RowWindows, feed_chains
from .requant import Requantiser, drain
from .tile_buffer import TileBuffer

#: bits of a sparse index at most (the ISA's widest N:M block: 1 of 16 positions)
INDEX_BITS_MAX = max(formats.index_bits(md) for md in isa.SparseMode if md.is_sparse)
#: bytes of a column record the MPE reads: the INT32 bias and the 16-bit multiplier
REC_BYTES = 6


def _cdiv(a, b):
    return -(-a // b)


def row_port_widths(modes: dict[str, tuple[int, int]], port: int) -> list[int]:
    """Byte widths of ports that move, per mode, ``(rows, bytes per row)``: each row's
    bytes in chunks of ``port`` (port ``i``: row ``i // chunks``, chunk ``i % chunks``).
    Port ``i`` is as wide as the widest chunk any mode gives it; only a row's last chunk
    can be narrower than ``port``, so concatenating a row's ports keeps every byte at
    its place."""
    out: list[int] = []
    for rows, need in modes.values():
        chunks = _cdiv(need, port)
        for i in range(rows * chunks):
            w = min(port, need - i % chunks * port)
            if i < len(out):
                out[i] = max(out[i], w)
            else:
                out.append(w)
    return out


class MatrixEngine(wiring.Component):
    """MM/MV unit; ports ``buf_<buffer><i>`` (see :meth:`port_widths`)."""

    BUFFERS = (isa.Buf.ACT, isa.Buf.WGT, isa.Buf.META, isa.Buf.SCALE)

    def __init__(self, arch: ArchConfig) -> None:
        self.arch = arch
        mp = arch.mpe
        self.G = mp.groups_per_chain  # DSP48E2 slices per chain, two MACs (lanes) each
        self.macs = LANES * self.G
        self.window = arch.sparse_m
        self.modes = {"mm": (mp.mm.m, mp.mm.n, mp.mm.k), "mv": (1, mp.mv.n, mp.mv.k)}
        self.shapes = {"mm": mp.mm, "mv": mp.mv}
        self.requantisers = mp.requantisers
        P = {b: arch.buffers.of(b).banks * arch.buffers.of(b).width for b in isa.Buf}
        self.P = P
        if self.G % 2:
            raise ValueError(f"mpe.groups_per_chain must be even, not {self.G!r}")
        for name, (rm, n, k) in self.modes.items():
            # a segment's k entries on k slices of one chain, two rows in the two lanes
            if _cdiv(rm, LANES) * n * k > mp.chains * self.G or self.G % k or k % 2:
                raise ValueError(
                    f"mpe.{name} {rm}x{n}x{k} does not map onto {mp.chains} chains of "
                    f"{self.G} slices (k even, dividing the slices; ceil(m/2)*n*k slices)"
                )
            if P[isa.Buf.WGT] % n or P[isa.Buf.META] % n or self.window % 2:
                raise ValueError(f"mpe.{name}: n={n} must divide the WGT and META ports")
        nmax = max(n for _, n, _ in self.modes.values())
        self.nmax = nmax
        self.segs = max(rm * n for rm, n, _ in self.modes.values())
        self.wb = max(k for _, _, k in self.modes.values())  # staged weight bytes/column
        self.mb = _cdiv(self.wb * INDEX_BITS_MAX, 8)
        self.terms = self.wb // 2  # lane sums per segment, one per odd slice (longest mode)
        self.sum_bits = LANE_SUM_BITS
        # Ports: WGT one per column (or [K][N] row), META one per column, SCALE scales and
        # records per column, ACT: the tile fill's line, partial sums, results.
        self.n_wgt = max(max(n, min(k, P[isa.Buf.WGT] // n)) for _, n, k in self.modes.values())
        pa = P[isa.Buf.ACT]
        self.ppr = {nm: _cdiv(4 * n, pa) for nm, (_, n, _) in self.modes.items()}
        self.n_psum = max(rm * self.ppr[nm] for nm, (rm, _, _) in self.modes.items())
        # The activation tile buffer: a bank per tile row, read in spans whose size is the
        # mode's k (dense) or max(1, k / N) sparse blocks of M (N:M)
        self.span = tile_span(max(k for _, _, k in self.modes.values()), self.window)
        self.access = {
            (nm, sm): tile_access(k, sm.n if sm.is_sparse else 0, sm.m)
            for nm, (_, _, k) in self.modes.items()
            for sm in isa.SparseMode
            if sm.m <= self.window or not sm.is_sparse
        }
        self.tile_rows = max(rm for rm, _, _ in self.modes.values())
        # its banks' word: one row of a dense MM step; an MV row reads a line's words
        self.tile_word = self.modes["mm"][2]
        stripe = tile_stripe(P[isa.Buf.ACT], self.tile_word)
        self.tile_cycles = {
            (nm, sm): tile_read_cycles(a, self.tile_word, 1 if nm == "mm" else stripe)
            for (nm, sm), a in self.access.items()
        }
        # Repeated blocks: one RowWindows per distinct (k, tile row) (the modes share a
        # row's windows when their k agree), one ChainFeed per chain that some mode's
        # tile reaches, with the modes that reach it.
        self.win_rows: list[tuple[int, int]] = []  # (k, tile row)
        self.win_of: dict[tuple[str, int], int] = {}  # (mode, row) -> RowWindows
        for nm, (rm, _n, k) in self.modes.items():
            for r in range(rm):
                if (k, r) not in self.win_rows:
                    self.win_rows.append((k, r))
                self.win_of[nm, r] = self.win_rows.index((k, r))
        self.feed_modes = [
            tuple(nm for nm, (rm, n, k) in self.modes.items() if c * self.G < self.slices(nm))
            for c in range(mp.chains)
        ]
        ps = P[isa.Buf.SCALE]
        self.rec_reads = _cdiv(REC_BYTES, ps)
        # Each port as wide as the bytes its widest mode moves through it (4 bytes per
        # column of partial sums or results, a record's REC_BYTES), not a full buffer
        # line: port cost grows with the width. The tile fill reads whole lines.
        psum_w = row_port_widths({nm: (rm, 4 * n) for nm, (rm, n, _) in self.modes.items()}, pa)
        widths = {
            isa.Buf.WGT: self._weight_port_widths(),
            isa.Buf.META: self._index_port_widths(),
            isa.Buf.SCALE: [min(ps, max(k // 2 for _, _, k in self.modes.values()))] * nmax
            + row_port_widths({"rec": (nmax, REC_BYTES)}, ps),
            isa.Buf.ACT: [pa]  # the tile fill: one aligned line a cycle
            + psum_w  # partial-sum reads
            + psum_w,  # result writes
        }
        self.widths = widths
        members = {}
        for b in self.BUFFERS:
            for i, w in enumerate(widths[b]):
                members[f"buf_{b.name.lower()}{i}"] = Out(
                    BufPortSignature(addr_bits(arch.buffers.of(b).size), w)
                )
        super().__init__({**unit_members(isa.Unit.MPE), **members})

    def _weight_port_widths(self) -> list[int]:
        """WGT port ``p``: in a mode of ``n`` columns, column ``p``'s bytes of a step
        (``min(port / n, k)``: one cycle's share of the port, at most the step's ``k``
        INT8 weights) or, for ``[K][N]`` weights, row ``p``'s ``n`` bytes (rows
        ``p < min(k, port / n)`` per cycle); as wide as its widest use."""
        pw = self.P[isa.Buf.WGT]
        widths = [0] * self.n_wgt
        for _, n, k in self.modes.values():
            for p in range(self.n_wgt):
                col = min(pw // n, k) if p < n else 0
                row = n if p < min(k, pw // n) else 0
                widths[p] = max(widths[p], col, row)
        return widths

    def _index_port_widths(self) -> list[int]:
        """META port ``j``: column ``j``'s index bytes of a step in the modes with more
        than ``j`` columns (``min(port / n, k * INDEX_BITS_MAX / 8)``)."""
        pm = self.P[isa.Buf.META]
        widths = [0] * self.nmax
        for _, n, k in self.modes.values():
            for j in range(n):
                widths[j] = max(widths[j], min(pm // n, _cdiv(k * INDEX_BITS_MAX, 8)))
        return widths

    def slices(self, mode: str) -> int:
        """Slices a tile of ``mode`` occupies (row pairs x columns x entries)."""
        rm, n, k = self.modes[mode]
        return _cdiv(rm, LANES) * n * k

    def place(self, mode: str, row: int, col: int, entry: int) -> tuple[int, int, int]:
        """``(chain, slice, lane)`` of a MAC: rows ``2p`` and ``2p + 1`` of a tile share
        their slices (the weight: WP487 packing), a segment's ``k`` entries are ``k``
        consecutive slices of one chain."""
        rm, n, k = self.modes[mode]
        x = ((row // LANES) * n + col) * k + entry
        return x // self.G, x % self.G, row % LANES

    #: Submodules synthesised as blocks of their own (names in :meth:`elaborate`): chains,
    #: feeds, row windows, segment epilogues, requantisers and the tile buffer.
    REPEATED = r"chain\d+|feed\d+|win\d+|acc\d+|rq\d+|tiles"

    def parts(self) -> list[tuple[str, wiring.Component, int]]:
        """The repeated blocks but the chains: ``(label, a new instance, instances)`` per
        distinct block, as :meth:`elaborate` instantiates them (so that each is synthesised
        once and counted per instance, benchmarks/rtl_resources.py)."""
        out = [
            (
                f"TileBuffer ({self.tile_rows} rows x {self.arch.mpe.tile_k} B)",
                self.tile_buffer(),
                1,
            )
        ]
        for k in sorted({k for k, _ in self.win_rows}):
            count = sum(kk == k for kk, _ in self.win_rows)
            out.append(
                (f"RowWindows (k={k}, {self.span} B)", RowWindows(k, self.window, self.span), count)
            )
        for modes in sorted({fm for fm in self.feed_modes if fm}, key=len, reverse=True):
            out.append(
                (
                    f"ChainFeed ({', '.join(modes)})",
                    ChainFeed(self.G, self.window, modes),
                    self.feed_modes.count(modes),
                )
            )
        # the accumulators as synthesis takes them: DSP48E2 instances (as the chains)
        acc = SegmentAccumulator(self.terms, self.sum_bits, primitive=True)
        out.append(("SegmentAccumulator", acc, self.segs))
        out.append(("Requantiser", Requantiser(primitive=True), self.requantisers))
        return out

    def tile_buffer(self) -> TileBuffer:
        """A new activation tile buffer of this engine's shape."""
        return TileBuffer(
            self.tile_rows, self.arch.mpe.tile_k, self.P[isa.Buf.ACT], self.tile_word, self.span
        )

    def port_widths(self, buf: isa.Buf) -> list[int]:
        return self.widths.get(buf, [])

    def ports(self, buf: isa.Buf):
        return [getattr(self, f"buf_{buf.name.lower()}{i}") for i in range(len(self.widths[buf]))]

    def tile_reads(self, m: Module, d, lp, fill_port) -> TileBuffer:
        """The tile buffer, filled from ``fill_port`` (:attr:`.control.Loop.fill`, the
        line arriving a cycle after its read) and read at the step's first activation
        (``sk`` dense, its sparse block's first byte ``(sk / N) * M`` for N:M): part
        ``j`` of the span in the step's cycle ``j``, the last part (``d.tcyc - 1``) in
        every later cycle, so in the step's last fetch cycle."""
        m.submodules.tiles = tb = self.tile_buffer()
        fl = lp.fill
        m.d.sync += [
            tb.fill_valid.eq(fl.req),
            tb.fill_row.eq(fl.row),
            tb.fill_index.eq(fl.index),
            tb.fill_offset.eq(fl.offset),
            tb.fill_count.eq(fl.count),
        ]
        m.d.comb += tb.fill_data.eq(fill_port.rdata)
        m.d.comb += [
            tb.rd_en.eq(lp.fetching),
            tb.rd_addr.eq(Mux(d.sparse, (lp.sk >> d.ln) << d.lm, lp.sk)),
            tb.rd_part.eq(Mux(lp.cyc + 1 < d.tcyc, lp.cyc, d.tcyc - 1)),
            tb.rd_mv.eq(~d.is_mm),
        ]
        return tb

    def elaborate(self, platform) -> Module:
        m = Module()
        chains = []
        for c in range(self.arch.mpe.chains):
            m.submodules[f"chain{c}"] = ch = DspChain(self.G, self.window)
            chains.append(ch)
        d = decode(m, self)  # the latched instruction's fields and sizes
        lp = sequence(m, self, d)  # tiles, steps, fetch cycles
        lat = chain_latency(self.G)
        rd = issue_reads(m, self, d, lp, lat - 2)  # every read port's address and request
        staged = stage(m, self, d, lp, rd)  # weights and indices per column
        # stage F: the fired step's tags, its operands into the chains
        A = isa.BUF_ADDR_BITS + 2
        fv, f_done, f_last, f_first = Signal(), Signal(), Signal(), Signal()
        f_ent = Signal.like(lp.ent)
        f_c0, f_r0, f_d = Signal.like(lp.c0), Signal.like(lp.rt_row), Signal(A)
        m.d.sync += [
            fv.eq(lp.fire),
            f_done.eq(lp.last_issue),
            f_ent.eq(lp.ent),
            f_last.eq(lp.last_step),
            f_first.eq(lp.s == 0),
            f_c0.eq(lp.c0),
            f_r0.eq(lp.rt_row),
            f_d.eq(lp.d_base),
        ]
        tiles = self.tile_reads(m, d, lp, rd.fill)
        feed_chains(m, self, d, staged, tiles.rdata, f_ent, d.int4 & ~d.wkn, chains)
        # cuts: segment and scale-group ends; a chain starts at a multiple of ``k``, so
        # its cuts are the same for every chain
        group_mask = Signal(32)
        m.d.comb += group_mask.eq((Const(1, 32) << d.lge) - 1)
        odd_cut = Signal(self.G // 2)  # after slice 2h + 1: only odd slices end anything
        for h in range(self.G // 2):
            for nm, (_rm, _n, k) in self.modes.items():
                with m.If(d.is_mm if nm == "mm" else ~d.is_mm):
                    m.d.comb += odd_cut[h].eq(ends(d, group_mask, (2 * h + 1) % k, k))
        cut = Cat(*(b for h in range(self.G // 2) for b in (Const(0, 1), odd_cut[h])))
        for chain in chains:
            m.d.comb += [chain.valid.eq(fv), chain.cut.eq(cut)]

        # stage E = F + the chain's latency: scale, accumulate, requantise, write
        def dl(v, name, cycles=lat):
            for t in range(cycles):
                r = Signal.like(v, name=f"{name}_d{t}")
                m.d.sync += r.eq(v)
                v = r
            return v

        ev = dl(fv, "ev")
        e_last, e_first = dl(f_last, "elast"), dl(f_first, "efirst")
        e_c0, e_r0, e_d = dl(f_c0, "ec0"), dl(f_r0, "er0"), dl(f_d, "ed")
        delayed = tuple(
            [dl(p.rdata, f"{tag}{j}", 2) for j, p in enumerate(ports)]
            for tag, ports in (("sc", rd.scale), ("rec", rd.rec), ("ps", rd.psum))
        )
        held, mults, hold, (w_c0, w_r0, w_d, w_done) = segment_accumulators(
            m,
            self,
            d,
            chains,
            (ev, e_first, e_last),
            delayed,
            [e_c0, e_r0, e_d, dl(f_done, "edone")],
        )
        results, w_valid, w_c, w_last = drain(m, self, d, held, mults, hold)
        w_c0, w_r0, w_d, w_done = (
            dl(v, f"w_{i}", REQUANT_STAGES) for i, v in enumerate([w_c0, w_r0, w_d, w_done])
        )
        R = self.requantisers

        def row_results(nm: str, r: int) -> list:
            n = self.modes[nm][1]
            return [results[(r % (R // n)) * n + j] for j in range(n)]

        def row_valid(nm: str, r: int):
            return w_valid & (w_c == r // (R // self.modes[nm][1]))

        write_results(m, self, d, rd.wr, row_results, row_valid, w_c0, w_r0, w_d)
        m.d.comb += self.done.eq(w_valid & w_last & w_done)  # the last write
        return m
