"""The matrix processing engine: MM and MV, dense and N:M sparse, INT8/INT4 weights.

Tiled as :func:`sim.timing.Timing.matmul` counts: the instruction is cut into output
tiles of the mode's shape (``mpe.mm`` or ``mpe.mv``: ``m`` rows x ``n`` columns), and a
tile into steps of ``k`` stored weight entries. Every ``(row, column)`` pair of a tile is
one segment of ``k`` MACs on the chains (reduction-node cuts end segments and
group-scale groups), all chains in parallel. A step lasts ``max(1, ceil(n * wbytes /
port[WGT]), ceil(n * mbytes / port[META]))`` cycles: the WGT (META) port is split over
the tile's ``n`` columns (``[K][N]`` weights: into row reads), and the bytes are staged
per column. In the step's last fetch cycle the unit also reads the rows' activation
spans (the ``k`` activations, or the sparse blocks the step's entries index), the
step's group scales and, at a tile's last step, the column records and partial sums.
Then, pipelined behind the fetch of the next step: MACs (one cycle), reduction nodes
(one cycle), group scaling and accumulation into one 50-bit accumulator per segment
and, at the tile's last step, the epilogue ``sat(rnd((acc + psum + bias) * mult >>
shift))`` written in the same cycle. An instruction of ``T`` fetch cycles is done
``T + 4`` cycles after it started (tiny's ``pipeline_depth``).

The repeated parts are components of their own (:meth:`MatrixEngine.parts`), so that
each distinct one is synthesised once and counted per instance
(benchmarks/rtl_resources.py; the flat MPE of u280 was beyond Yosys in 10 GB): the
``chains`` x :class:`.dsp_chain.DspChain`, one :class:`.mpe_operands.RowWindows` per tile
row, one :class:`.mpe_operands.ChainFeed` per chain and one
:class:`.mpe_epilogue.SegmentEpilogue` per segment. This module keeps the fetch loop,
the addressing, the staging of weights and indices, and the wiring that gives each
block its inputs of the instruction's mode.
"""

from __future__ import annotations

from amaranth import Cat, Const, Module, Mux, Signal, signed
from amaranth.lib import wiring
from amaranth.lib.wiring import Out

from flightforge import formats, isa
from flightforge.arch import ArchConfig

from .buffers import addr_bits
from .bus import BufPortSignature
from .decode import field, unit_members
from .dsp_chain import PROD_BITS, DspChain
from .mpe_epilogue import SegmentEpilogue
from .mpe_operands import ChainFeed, RowWindows
from .sfu.common import by_dtype

HDR = formats.RECORD_HEADER_BYTES


def _cdiv(a, b):
    return -(-a // b)


class MatrixEngine(wiring.Component):
    """MM/MV unit; ports ``buf_<buffer><i>`` (see :meth:`port_widths`)."""

    BUFFERS = (isa.Buf.ACT, isa.Buf.WGT, isa.Buf.META, isa.Buf.SCALE)

    def __init__(self, arch: ArchConfig) -> None:
        self.arch = arch
        mp = arch.mpe
        self.G = mp.groups_per_chain
        self.macs = 2 * self.G
        self.window = arch.sparse_m
        self.modes = {"mm": (mp.mm.m, mp.mm.n, mp.mm.k), "mv": (1, mp.mv.n, mp.mv.k)}
        P = {b: arch.buffers.of(b).banks * arch.buffers.of(b).width for b in isa.Buf}
        self.P = P
        for name, (rm, n, k) in self.modes.items():
            if rm * n * k > mp.chains * self.macs or self.macs % k or k % 2:
                raise ValueError(f"mpe.{name} {rm}x{n}x{k} does not map onto the chains")
            if mp.pipeline_depth < 4:
                raise ValueError("the MPE pipeline needs mpe.pipeline_depth >= 4")
            if P[isa.Buf.WGT] % n or P[isa.Buf.META] % n or self.window % 2:
                raise ValueError(f"mpe.{name}: n={n} must divide the WGT and META ports")
        nmax = max(n for _, n, _ in self.modes.values())
        self.nmax = nmax
        self.segs = max(rm * n for rm, n, _ in self.modes.values())
        self.wb = max(k for _, _, k in self.modes.values())  # staged weight bytes/column
        self.mb = _cdiv(self.wb * 4, 8)
        self.terms = self.wb // 2  # DSP-group sums per segment (the longest mode's)
        self.sum_bits = PROD_BITS + self.macs.bit_length()  # a chain's group sum
        # Ports: WGT one per column (or [K][N] row), META one per column, SCALE scales and
        # records per column, ACT: activation spans per row, partial sums, results.
        wgt_w = max(max(P[isa.Buf.WGT] // n, n) for _, n, _ in self.modes.values())
        self.n_wgt = max(max(n, min(k, P[isa.Buf.WGT] // n)) for _, n, k in self.modes.values())
        self.wgt_w = min(wgt_w, P[isa.Buf.WGT])
        self.meta_w = max(P[isa.Buf.META] // n for _, n, _ in self.modes.values())
        pa = P[isa.Buf.ACT]
        self.span = max(k * self.window // 2 for _, _, k in self.modes.values())
        self.apr = {nm: _cdiv(k * self.window // 2, pa) for nm, (_, _, k) in self.modes.items()}
        self.n_act = max(rm * self.apr[nm] for nm, (rm, _, _) in self.modes.items())
        self.ppr = {nm: _cdiv(4 * n, pa) for nm, (_, n, _) in self.modes.items()}
        self.n_psum = max(rm * self.ppr[nm] for nm, (rm, _, _) in self.modes.items())
        # Repeated blocks: one RowWindows per distinct (k, row ports) of a tile row (the
        # modes share a row's windows when they agree), one ChainFeed per chain that some
        # mode's tile reaches, with the modes that reach it.
        self.win_rows: list[tuple[int, int, int]] = []  # (k, first ACT read port, ports)
        self.win_of: dict[tuple[str, int], int] = {}  # (mode, row) -> RowWindows
        for nm, (rm, n, k) in self.modes.items():
            for r in range(rm):
                key = (k, r * self.apr[nm], self.apr[nm])
                if key not in self.win_rows:
                    self.win_rows.append(key)
                self.win_of[nm, r] = self.win_rows.index(key)
        self.feed_modes = [
            tuple(nm for nm, (rm, n, k) in self.modes.items() if c * self.macs < rm * n * k)
            for c in range(mp.chains)
        ]
        ps = P[isa.Buf.SCALE]
        self.rec_reads = _cdiv(6, ps)
        widths = {
            isa.Buf.WGT: [self.wgt_w] * self.n_wgt,
            isa.Buf.META: [self.meta_w] * nmax,
            isa.Buf.SCALE: [min(ps, max(k // 2 for _, _, k in self.modes.values()))] * nmax
            + [ps] * (nmax * self.rec_reads),
            isa.Buf.ACT: [pa] * self.n_act + [pa] * (2 * self.n_psum),  # reads, psum, writes
        }
        self.widths = widths
        members = {}
        for b in self.BUFFERS:
            for i, w in enumerate(widths[b]):
                members[f"buf_{b.name.lower()}{i}"] = Out(
                    BufPortSignature(addr_bits(arch.buffers.of(b).size), w)
                )
        super().__init__({**unit_members(isa.Unit.MPE), **members})

    #: Submodules that are repeated blocks (names in :meth:`elaborate`): chains, feeds,
    #: row windows, segment epilogues.
    REPEATED = r"chain\d+|feed\d+|win\d+|epi\d+"

    def parts(self) -> list[tuple[str, wiring.Component, int]]:
        """The repeated blocks but the chains: ``(label, a new instance, instances)`` per
        distinct block, as :meth:`elaborate` instantiates them (so that each is synthesised
        once and counted per instance, benchmarks/rtl_resources.py)."""
        out = []
        for k, apr in sorted({(k, apr) for k, _, apr in self.win_rows}):
            count = sum((kk, a) == (k, apr) for kk, _, a in self.win_rows)
            row = apr * self.P[isa.Buf.ACT]
            out.append((f"RowWindows (k={k}, {row} B)", RowWindows(k, self.window, row), count))
        for modes in sorted({fm for fm in self.feed_modes if fm}, key=len, reverse=True):
            out.append(
                (
                    f"ChainFeed ({', '.join(modes)})",
                    ChainFeed(self.G, self.window, modes),
                    self.feed_modes.count(modes),
                )
            )
        out.append(("SegmentEpilogue", SegmentEpilogue(self.terms, self.sum_bits), self.segs))
        return out

    def port_widths(self, buf: isa.Buf) -> list[int]:
        return self.widths.get(buf, [])

    def ports(self, buf: isa.Buf):
        return [getattr(self, f"buf_{buf.name.lower()}{i}") for i in range(len(self.widths[buf]))]

    def elaborate(self, platform) -> Module:
        m = Module()
        chains = []
        for c in range(self.arch.mpe.chains):
            ch = DspChain(self.G, self.window)
            m.submodules[f"chain{c}"] = ch
            chains.append(ch)
        P = self.P
        pw, pm, pa = P[isa.Buf.WGT], P[isa.Buf.META], P[isa.Buf.ACT]
        word = Signal.like(self.instr)
        opcode = word[: isa.OPCODE_BITS]
        f = {
            name: field(word, (isa.MM, isa.MV), opcode, name) for name, *_ in isa.layout(isa.MV)[1:]
        }
        is_mm = opcode == isa.Opcode.MM
        mmf = field(word, (isa.MM,), opcode, "m"), field(word, (isa.MM,), opcode, "a_stride")
        rows = Mux(is_mm, mmf[0], 1)
        a_stride = mmf[1]

        def sel(fn):
            """``fn(mode)`` of the instruction's mode (MM or MV)."""
            return Mux(is_mm, fn("mm"), fn("mv"))

        lg = lambda v: v.bit_length() - 1  # noqa: E731
        tm, tn, tk = (sel(lambda nm, i=i: self.modes[nm][i]) for i in range(3))
        ltn = sel(lambda nm: lg(self.modes[nm][1]))
        ltk = sel(lambda nm: lg(self.modes[nm][2]))

        # --- derived sizes (formats.py's layout, computed from the fields) ---------------
        lm = Signal(range(8))
        ln = Signal(range(8))
        lib = Signal(range(4))
        with m.Switch(f["sparse"]):
            for mode in isa.SparseMode:
                if mode.is_sparse:
                    with m.Case(mode):
                        ib = formats.index_bits(mode)
                        m.d.comb += [
                            lm.eq(mode.m.bit_length() - 1),
                            ln.eq(mode.n.bit_length() - 1),
                            lib.eq(ib.bit_length() - 1),
                        ]
        sparse = f["sparse"] != isa.SparseMode.DENSE
        int4 = f["wprec"] == isa.WPrec.INT4
        wkn = f["wkn"]
        entries = Signal(isa.DIM_BITS + 1)
        m.d.comb += entries.eq((f["k"] >> lm) << ln)
        gsz_on = f["gsz"] != 0
        lge = Signal(range(32))  # log2 of the stored entries per scale group
        m.d.comb += lge.eq(f["gsz"] + 3 - lm + ln)
        wrb = Mux(int4, (entries + 1) >> 1, entries)
        mrb = Mux(sparse, ((entries << lib) + 7) >> 3, 0)
        ngroups = Mux(gsz_on, f["k"] >> (f["gsz"] + 3), 0)
        recb = HDR + (((ngroups + 3) >> 2) << 2)
        obytes = by_dtype(f["odt"], lambda d: d.nbytes)
        steps = Signal(isa.DIM_BITS + 1)
        m.d.comb += steps.eq((entries + tk - 1) >> ltk)

        # --- fetch loop state ------------------------------------------------------------
        A = isa.BUF_ADDR_BITS + 2
        busy = Signal()
        rt_row = Signal(isa.DIM_BITS + 1)  # first row of the tile
        c0 = Signal(isa.DIM_BITS + 1)  # first column of the tile
        s = Signal(isa.DIM_BITS + 1)  # step
        cyc = Signal(8)
        a_base, d_base, p_base = Signal(A), Signal(A), Signal(A)
        w_tile, m_tile, q_tile = Signal(A), Signal(A), Signal(A)
        sk = Signal(isa.DIM_BITS + 8)
        m.d.comb += sk.eq(s << ltk)
        rem = Signal(isa.DIM_BITS + 1)
        m.d.comb += rem.eq(entries - sk)
        ent = Signal(isa.DIM_BITS + 1)
        m.d.comb += ent.eq(Mux(rem < tk, rem, tk))
        wbytes = Mux(int4 & ~wkn, (ent + 1) >> 1, ent)
        mbytes = Mux(sparse, ((ent << lib) + 7) >> 3, 0)
        lpw, lpm = lg(pw), lg(pm)
        wcyc = Signal(16)
        mcyc = Signal(16)
        m.d.comb += [
            wcyc.eq(((wbytes << ltn) + pw - 1) >> lpw),
            mcyc.eq(((mbytes << ltn) + pm - 1) >> lpm),
        ]
        ccyc = Signal(16)
        m.d.comb += ccyc.eq(Mux(wcyc > mcyc, wcyc, mcyc))
        last_cyc = cyc + 1 >= ccyc
        last_step = s + 1 == steps
        last_ctile = c0 + tn >= f["n"]
        last_rtile = rt_row + tm >= rows
        wcol = sel(lambda nm: pw // self.modes[nm][1])
        wrows = sel(lambda nm: pw // self.modes[nm][1])  # [K][N] rows per cycle
        mcol = sel(lambda nm: pm // self.modes[nm][1])

        with m.If(~busy):
            with m.If(self.start):
                m.d.sync += [word.eq(self.instr), busy.eq(1)]
                ins = self.instr
                fi = {
                    name: field(ins, (isa.MM, isa.MV), ins[: isa.OPCODE_BITS], name)
                    for name in ("a_addr", "d_addr", "p_addr", "w_addr", "meta_addr", "q_addr")
                }
                m.d.sync += [
                    rt_row.eq(0),
                    c0.eq(0),
                    s.eq(0),
                    cyc.eq(0),
                    a_base.eq(fi["a_addr"]),
                    d_base.eq(fi["d_addr"]),
                    p_base.eq(fi["p_addr"]),
                    w_tile.eq(fi["w_addr"]),
                    m_tile.eq(fi["meta_addr"]),
                    q_tile.eq(fi["q_addr"]),
                ]
        issue = Signal()
        last_issue = Signal()
        m.d.comb += issue.eq(busy)
        with m.If(busy):
            m.d.sync += cyc.eq(cyc + 1)
            with m.If(last_cyc):
                m.d.sync += [cyc.eq(0), s.eq(s + 1)]
                with m.If(last_step):
                    m.d.sync += [
                        s.eq(0),
                        c0.eq(c0 + tn),
                        w_tile.eq(w_tile + Mux(wkn, tn, wrb << ltn)),
                        m_tile.eq(m_tile + (mrb << ltn)),
                        q_tile.eq(q_tile + (recb << ltn)),
                    ]
                    with m.If(last_ctile):
                        m.d.sync += [
                            c0.eq(0),
                            w_tile.eq(f["w_addr"]),
                            m_tile.eq(f["meta_addr"]),
                            q_tile.eq(f["q_addr"]),
                            rt_row.eq(rt_row + tm),
                            a_base.eq(a_base + (a_stride << sel(lambda nm: lg(self.modes[nm][0])))),
                            d_base.eq(
                                d_base + (f["d_stride"] << sel(lambda nm: lg(self.modes[nm][0])))
                            ),
                            p_base.eq(
                                p_base + (f["d_stride"] << sel(lambda nm: lg(self.modes[nm][0])))
                            ),
                        ]
                        with m.If(last_rtile):
                            m.d.sync += busy.eq(0)
                            m.d.comb += last_issue.eq(1)

        # --- issue: weights and indices (every cycle of a step) ---------------------------
        wp = self.ports(isa.Buf.WGT)
        w_step = Mux(int4, sk >> 1, sk)
        for p, port in enumerate(wp):
            nk_addr = (
                w_tile + (sk + (cyc << sel(lambda nm: lg(pw // self.modes[nm][1]))) + p) * f["n"]
            )
            col_addr = w_tile + p * wrb + w_step + cyc * wcol
            m.d.comb += [
                port.addr.eq(Mux(wkn, nk_addr, col_addr)),
                port.req.eq(busy & (cyc < wcyc) & Mux(wkn, p < wrows, p < tn)),
            ]
        mp_ = self.ports(isa.Buf.META)
        for j, port in enumerate(mp_):
            m.d.comb += [
                port.addr.eq(m_tile + j * mrb + ((sk << lib) >> 3) + cyc * mcol),
                port.req.eq(busy & (cyc < mcyc) & (j < tn)),
            ]
        fire = busy & last_cyc
        # --- issue at the step's last cycle: activations, scales, records, psums -------------
        ap = self.ports(isa.Buf.ACT)
        act_ports, psum_ports, wr_ports = (
            ap[: self.n_act],
            ap[self.n_act : self.n_act + self.n_psum],
            ap[self.n_act + self.n_psum :],
        )
        a_off = Mux(sparse, (sk >> ln) << lm, sk)
        for i, port in enumerate(act_ports):
            for nm, (rm, n, k) in self.modes.items():
                apr = self.apr[nm]
                r, q = divmod(i, apr)
                if r < rm:
                    with m.If(is_mm if nm == "mm" else ~is_mm):
                        m.d.comb += [
                            port.addr.eq(a_base + r * a_stride + a_off + q * pa),
                            port.req.eq(fire),
                        ]
        sp = self.ports(isa.Buf.SCALE)
        scale_ports, rec_ports = sp[: self.nmax], sp[self.nmax :]
        gi0 = Signal(isa.DIM_BITS + 8)
        m.d.comb += gi0.eq(sk >> lge)
        for j, port in enumerate(scale_ports):
            m.d.comb += [
                port.addr.eq(q_tile + j * recb + HDR + gi0),
                port.req.eq(fire & gsz_on & (j < tn)),
            ]
        ps = P[isa.Buf.SCALE]
        for i, port in enumerate(rec_ports):
            j, h = divmod(i, self.rec_reads)
            m.d.comb += [
                port.addr.eq(q_tile + j * recb + h * ps),
                port.req.eq(fire & last_step & f["colp"] & (j < tn)),
            ]
        for i, port in enumerate(psum_ports):
            for nm, (rm, n, k) in self.modes.items():
                r, h = divmod(i, self.ppr[nm])
                if r < rm:
                    with m.If(is_mm if nm == "mm" else ~is_mm):
                        m.d.comb += [
                            port.addr.eq(p_base + r * f["d_stride"] + (c0 << 2) + h * pa),
                            port.req.eq(fire & last_step & f["acc_in"]),
                        ]

        # --- stage F: staged data arrives -------------------------------------------------
        cyc_q = Signal.like(cyc)
        wvalid_q = Signal()
        mvalid_q = Signal()
        m.d.sync += [
            cyc_q.eq(cyc),
            wvalid_q.eq(busy & (cyc < wcyc)),
            mvalid_q.eq(busy & (cyc < mcyc)),
        ]
        wst = [Signal(8 * self.wb, name=f"wst{j}") for j in range(self.nmax)]
        wst_n = [Signal(8 * self.wb, name=f"wstn{j}") for j in range(self.nmax)]
        mst = [Signal(8 * self.mb, name=f"mst{j}") for j in range(self.nmax)]
        mst_n = [Signal(8 * self.mb, name=f"mstn{j}") for j in range(self.nmax)]
        wkn_q = Signal()
        m.d.sync += wkn_q.eq(wkn)
        for j in range(self.nmax):
            m.d.comb += [wst_n[j].eq(wst[j]), mst_n[j].eq(mst[j])]
            m.d.sync += [wst[j].eq(wst_n[j]), mst[j].eq(mst_n[j])]
        with m.If(wvalid_q):
            for nm, (rm, n, k) in self.modes.items():
                wc = pw // n
                with m.If(is_mm if nm == "mm" else ~is_mm):
                    for c in range(_cdiv(self.wb, min(wc, self.wb))):
                        with m.If(cyc_q == c):
                            with m.If(~wkn):
                                for j in range(n):
                                    for b in range(wc):
                                        if c * wc + b < self.wb:
                                            m.d.comb += (
                                                wst_n[j]
                                                .word_select(c * wc + b, 8)
                                                .eq(wp[j].rdata.word_select(b, 8))
                                            )
                            with m.Else():  # rows of n bytes
                                for p in range(min(pw // n, len(wp))):
                                    row = c * (pw // n) + p
                                    if row < self.wb:
                                        for j in range(n):
                                            m.d.comb += (
                                                wst_n[j]
                                                .word_select(row, 8)
                                                .eq(wp[p].rdata.word_select(j, 8))
                                            )
        with m.If(mvalid_q):
            for nm, (rm, n, k) in self.modes.items():
                mc = pm // n
                with m.If(is_mm if nm == "mm" else ~is_mm):
                    for c in range(_cdiv(self.mb, mc)):
                        with m.If(cyc_q == c):
                            for j in range(n):
                                for b in range(mc):
                                    if c * mc + b < self.mb:
                                        m.d.comb += (
                                            mst_n[j]
                                            .word_select(c * mc + b, 8)
                                            .eq(mp_[j].rdata.word_select(b, 8))
                                        )
        # tags of the fired step
        fv = Signal()
        f_ent = Signal.like(ent)
        f_last = Signal()
        f_first = Signal()
        f_c0, f_r0 = Signal.like(c0), Signal.like(rt_row)
        f_d = Signal(A)
        f_done = Signal()
        m.d.sync += [
            fv.eq(fire),
            f_done.eq(last_issue),
            f_ent.eq(ent),
            f_last.eq(last_step),
            f_first.eq(s == 0),
            f_c0.eq(c0),
            f_r0.eq(rt_row),
            f_d.eq(d_base),
        ]
        f_int4 = int4 & ~wkn
        # MAC inputs. ``sk`` is a multiple of the mode's ``k`` and a MAC's entry ``i < k`` is
        # a constant, so a MAC's activation window and index are constant slices, one per
        # sparse mode, not shifts (:class:`RowWindows`). Windows depend on (row, entry),
        # indices and weights on (column, entry): built once each; each chain's
        # :class:`ChainFeed` picks its MACs' operands of the instruction's mode.
        wins = []
        for w, (k, p0, apr) in enumerate(self.win_rows):
            m.submodules[f"win{w}"] = rw = RowWindows(k, self.window, apr * pa)
            m.d.comb += [
                rw.sparse.eq(f["sparse"]),
                rw.row.eq(Cat(*(p.rdata for p in act_ports[p0 : p0 + apr]))),
            ]
            wins.append(rw)
        macw, maci = {}, {}

        def weight(j, i):
            if (j, i) not in macw:
                macw[j, i] = wv = Signal(signed(8), name=f"wv{j}_{i}")
                lo, hi = wst_n[j].word_select(i, 8), wst_n[j].word_select(i >> 1, 8)
                nib = hi[4:8] if i % 2 else hi[0:4]
                m.d.comb += wv.eq(Mux(i < f_ent, Mux(f_int4, nib.as_signed(), lo.as_signed()), 0))
            return macw[j, i]

        def index(j, i):
            if (j, i) not in maci:
                maci[j, i] = iv = Signal(range(self.window), name=f"iv{j}_{i}")
                with m.Switch(f["sparse"]):
                    with m.Case(isa.SparseMode.DENSE):
                        m.d.comb += iv.eq(0)
                    for mode in isa.SparseMode:
                        if mode.is_sparse:
                            b = 1 << (formats.index_bits(mode).bit_length() - 1)
                            with m.Case(mode):
                                m.d.comb += iv.eq(mst_n[j][i * b : (i + 1) * b])
                    with m.Default():
                        m.d.comb += iv.eq(mst_n[j][i : i + 1])
            return maci[j, i]

        for ch, chain in enumerate(chains):
            m.d.comb += chain.valid.eq(fv)
            if not self.feed_modes[ch]:
                continue  # no tile reaches the chain: its operands stay zero
            m.submodules[f"feed{ch}"] = fd = ChainFeed(self.G, self.window, self.feed_modes[ch])
            m.d.comb += [
                fd.is_mm.eq(is_mm),
                chain.act.eq(fd.ops.act),
                chain.wgt.eq(fd.ops.wgt),
                chain.idx.eq(fd.ops.idx),
            ]
            for mac in range(self.macs):
                for nm in fd.modes:
                    rm, n, k = self.modes[nm]
                    seg, i = divmod(ch * self.macs + mac, k)
                    r, j = divmod(seg, n)
                    if r < rm:
                        ops = getattr(fd, nm)
                        m.d.comb += [
                            ops.act[mac].eq(wins[self.win_of[nm, r]].windows[i]),
                            ops.wgt[mac].eq(weight(j, i)),
                            ops.idx[mac].eq(index(j, i)),
                        ]
        # cuts: segment ends and scale-group ends. ``sk`` is a multiple of ``k`` and
        # ``i + 2 <= k``: ``sk + i + 2`` ends a group of ``2**lge`` entries iff ``i + 2`` does
        # (for a group longer than ``k`` only ``i + 2 == k`` can, a segment end anyway).
        # A chain starts at a multiple of ``k``: its cuts are the same for every chain.
        group_mask = Signal(32)
        m.d.comb += group_mask.eq((Const(1, 32) << lge) - 1)

        def ends(i, k):
            return Const(int(i + 2 == k), 1) | (gsz_on & ((Const(i + 2, 32) & group_mask) == 0))

        cut = Signal(self.G)
        for gg in range(self.G):
            for nm, (rm, n, k) in self.modes.items():
                with m.If(is_mm if nm == "mm" else ~is_mm):
                    m.d.comb += cut[gg].eq(ends((2 * gg) % k, k))
        for chain in chains:
            m.d.comb += chain.cut.eq(cut)
        # --- stage F+2: scale, accumulate, epilogue (SegmentEpilogue), write -------------
        D = 2

        def dl(v, name):
            cur = v
            for t in range(D):
                r = Signal.like(cur, name=f"{name}_d{t}")
                m.d.sync += r.eq(cur)
                cur = r
            return cur

        ev = dl(fv, "ev")
        e_last, e_first = dl(f_last, "elast"), dl(f_first, "efirst")
        e_c0, e_r0, e_d = dl(f_c0, "ec0"), dl(f_r0, "er0"), dl(f_d, "ed")
        scales = [dl(p.rdata, f"sc{j}") for j, p in enumerate(scale_ports)]
        recs = [dl(p.rdata, f"rec{i}") for i, p in enumerate(rec_ports)]
        psums = [dl(p.rdata, f"ps{i}") for i, p in enumerate(psum_ports)]
        # Per-segment inputs by source: a group sum by (chain, group), a group scale by
        # (column, term), a column's record by column, a partial sum by (first port, ports,
        # column); a mode that leaves the segment idle gives 0.
        ended = Signal(self.terms)  # term q counts: its group ends a scale group or segment
        for q in range(self.terms):
            for nm, (rm, n, k) in self.modes.items():
                if 2 * q < k:
                    with m.If(is_mm if nm == "mm" else ~is_mm):
                        m.d.comb += ended[q].eq(ends(2 * q, k))

        def group_sum(key):
            ch, gg = key
            return chains[ch].sums[gg]

        def group_scale(key):
            j, q = key
            li = Const(2 * q) >> lge  # the group of entry 2q in the step's scales
            return (
                scales[j].word_select(li[: max(1, (len(scales[j]) // 8 - 1).bit_length())], 8)
                if len(scales[j]) > 8
                else scales[j]
            )

        def record(j):
            return Cat(*recs[j * self.rec_reads : (j + 1) * self.rec_reads])

        def psum(key):
            p0, ppr, j = key
            return Mux(f["acc_in"], Cat(*psums[p0 : p0 + ppr]).word_select(j, 32), 0)

        def pick(keys, value):
            """``value(key)`` of the instruction's mode (``keys``: per mode; None, a missing
            mode: 0); one source, no multiplexer, where the modes agree."""
            a, b = keys.get("mm"), keys.get("mv")
            if a == b:
                return 0 if a is None else value(a)
            return Mux(is_mm, 0 if a is None else value(a), 0 if b is None else value(b))

        results = []
        for t in range(self.segs):
            m.submodules[f"epi{t}"] = ep = SegmentEpilogue(self.terms, self.sum_bits)
            at = {}  # mode -> (row, column) of segment t
            for nm, (rm, n, k) in self.modes.items():
                if t < rm * n:
                    at[nm] = divmod(t, n)
            for q in range(self.terms):
                m.d.comb += [
                    ep.sums[q].eq(
                        pick(
                            {
                                nm: (
                                    divmod(t * self.modes[nm][2] + 2 * q, self.macs)[0],
                                    (t * self.modes[nm][2] + 2 * q) % self.macs // 2,
                                )
                                for nm in at
                                if 2 * q < self.modes[nm][2]
                            },
                            group_sum,
                        )
                    ),
                    ep.scales[q].eq(
                        pick(
                            {nm: (at[nm][1], q) for nm in at if 2 * q < self.modes[nm][2]},
                            group_scale,
                        )
                    ),
                ]
            col = {nm: j for nm, (r, j) in at.items()}
            m.d.comb += [
                ep.valid.eq(ev),
                ep.first.eq(e_first),
                ep.ended.eq(ended),
                ep.gsz_on.eq(gsz_on),
                ep.bias.eq(pick(col, lambda j: Mux(f["colp"], record(j)[0:32], 0))),
                ep.mult.eq(pick(col, lambda j: Mux(f["colp"], record(j)[32:48], f["mult"]))),
                ep.psum.eq(
                    pick(
                        {nm: (r * self.ppr[nm], self.ppr[nm], j) for nm, (r, j) in at.items()}, psum
                    )
                ),
                ep.shift.eq(f["shift"]),
                ep.odt.eq(f["odt"]),
            ]
            results.append(ep.result)
        # writes: one port per output row (and per port width of the row)
        for i, port in enumerate(wr_ports):
            for nm, (rm, n, k) in self.modes.items():
                r, h = divmod(i, self.ppr[nm])
                if r >= rm:
                    continue
                with m.If(is_mm if nm == "mm" else ~is_mm):
                    # the row's n results packed at obytes each, bytes h*pa .. h*pa+pa
                    packed = Signal(8 * 4 * n, name=f"pk{i}_{nm}")
                    with m.Switch(f["odt"]):
                        for d in isa.DType:
                            with m.Case(d):
                                m.d.comb += packed.eq(
                                    Cat(*(results[r * n + j][: 8 * d.nbytes] for j in range(n)))
                                )
                    strb = Signal(4 * n, name=f"strb{i}_{nm}")
                    ncols = f["n"] - e_c0
                    with m.Switch(f["odt"]):
                        for d in isa.DType:
                            with m.Case(d):
                                m.d.comb += strb.eq(
                                    Cat(
                                        *(
                                            Mux(j < ncols, (1 << d.nbytes) - 1, 0)[: d.nbytes]
                                            for j in range(n)
                                        )
                                    )
                                )
                    m.d.comb += [
                        port.addr.eq(e_d + r * f["d_stride"] + e_c0 * obytes + h * pa),
                        port.we.eq(1),
                        port.wdata.eq(
                            packed.word_select(h, 8 * pa) if len(packed) > 8 * pa else packed
                        ),
                        port.strb.eq(strb.word_select(h, pa) if len(strb) > pa else strb),
                        port.req.eq(ev & e_last & (e_r0 + r < rows) & (h * pa < (obytes << ltn))),
                    ]
        # done: the last write (the cycle of the last step's epilogue)
        done = ev & e_last & dl(f_done, "edone")
        for t in range(self.arch.mpe.pipeline_depth - 4):
            r = Signal(name=f"done_d{t}")
            m.d.sync += r.eq(done)
            done = r
        m.d.comb += self.done.eq(done)
        return m
