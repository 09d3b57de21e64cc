"""LD and ST: pipelined 2-D transfers between external memory and the on-chip buffers.

The timing contract is sim/timing.py's ``Timing.transfer``: ``latency + overhead +
beats`` on one channel, where ``beats`` counts every row rounded out to whole bursts (one
span when the transfer is contiguous on both sides) and, when a burst can hold more
values than the buffer port writes per cycle, ``ceil(values ending in the burst /
port)`` cycles per burst; ``overhead`` is these units' own pipeline, built to the
constants of :mod:`flightforge.ldst` (``LD_OVERHEAD``, ``ST_OVERHEAD``). The units
realise it like this (docs/rtl.md, "LD and ST: the pipeline"):

- a setup of :data:`flightforge.ldst.SETUP_STAGES` registered steps computes the
  transfer's shape (one span or rows, burst counts, the walk's counters), so that no
  step is a long carry chain;
- a command side then issues one burst command per row (one for a contiguous
  transfer), one command per cycle, without waiting for data: requests are pipelined,
  so the memory's latency is paid once per instruction;
- a data side walks the values in chunks, one per cycle (LD: while a beat is on the
  bus, holding the beat until its last value is taken), each chunk decided by comparing
  registers; the chunk's position and buffer address follow one stage later, its data
  in further stages: LD realigns the beat's values into the buffer port's registers
  (up to the LD port width per cycle at any address: the buffer's byte lanes rotate)
  and writes them; ST reads the buffer, realigns the bytes into a beat register and
  sends one beat per cycle with byte strobes, then waits for the write responses (one
  per command).

These two units are the only ones that realign external data (which sits at any byte,
for ``unpack`` any bit, of a beat); no other unit sees an external address.

LD ``unpack`` (2/3/4-bit two's-complement values packed LSB-first,
:func:`flightforge.formats.pack_lowbit`) runs on the same walk: the data side keeps the
previous beat's last 8 bits, so the window ``those bits | current beat`` holds every
value that ends in the current beat, even one that began in the previous beat; each
cycle it takes up to ``port`` values at the chunk's bit of the window and writes them
sign-extended to INT8. A plain LD is the case of 8-bit values. The LD port is
``min(banks * width, formats.lowbit_values_per_burst(burst, 2))`` bytes wide (at most the
values one burst of 2-bit weights yields), so a burst costs
``ceil(values ending in it / port)`` cycles, as the cycle model charges.

The external bus is described in :mod:`flightforge.hw.bus`. The length-adaptive
``dyn_step`` is applied before the unit (:func:`flightforge.hw.decode.resolve_dynamic`).
"""

from __future__ import annotations

from amaranth import Array, Cat, Const, Module, Mux, Signal, Value
from amaranth.lib import wiring
from amaranth.lib.wiring import Out

from flightforge import formats, isa, ldst
from flightforge.arch import ArchConfig

from .buffers import addr_bits
from .bus import BEATS_BITS, BufPortSignature, MemReadSignature, MemWriteSignature
from .decode import unit_members, view


def _beat_bytes(arch: ArchConfig) -> int:
    w = arch.hbm.burst_bytes
    if w & (w - 1) or w < 2:
        raise ValueError(f"hbm.burst_bytes must be a power of two of at least 2, not {w!r}")
    return w


def port_width(arch: ArchConfig, buf: isa.Buf) -> int:
    """Bytes per cycle the ST unit reads from buffer ``buf`` (a beat's bytes at most)."""
    b = arch.buffers.of(buf)
    return min(b.banks * b.width, _beat_bytes(arch))


def ld_port_width(arch: ArchConfig, buf: isa.Buf) -> int:
    """INT8 values per cycle the LD unit writes into buffer ``buf``: the port's
    ``banks * width``, but no more than one burst of 2-bit values yields (wider would
    never be used). Where the port is narrower, a burst takes several cycles, as
    ``Timing.beatwise`` charges."""
    b = arch.buffers.of(buf)
    most = max(formats.lowbit_values_per_burst(_beat_bytes(arch), u.bits) for u in isa.Unpack)
    return min(b.banks * b.width, most)


def _times(x: Value, k: int) -> Value:
    """``x * k`` for a small constant ``k`` as shifts and adds (no multiplier)."""
    terms = [x << b for b in range(k.bit_length()) if k >> b & 1]
    return sum(terms[1:], terms[0])


def _mask(n: Value, width: int) -> Value:
    """``width`` bits with the low ``n`` set: a thermometer of constant comparisons (bit
    ``i`` is ``n > i``), not ``(1 << n) - 1``, whose subtraction is a carry chain as long
    as the port."""
    return Cat(*[n > i for i in range(width)])


class _LdView:
    def __init__(self, v):
        self.v = v


class _StView:
    def __init__(self, v):
        self.v = v


class _Transfer(wiring.Component):
    """What LD and ST share: the instruction's setup, the command side and the walk.

    The walk moves a segment (a row, or the whole transfer when it is one span) in
    chunks, one per cycle: ``n = min(port, values ending in this beat, values left)``.
    Its state is kept so that each step is a few short comparisons and subtractions:
    ``avail`` (values of this beat from the current position, looked up in a table by
    the row's byte offset or by the bits a straddling value left in the previous beat),
    and ``left`` split as ``hi * 2**L + lo`` with ``hi - 1`` kept ready, so the borrow
    of ``lo - n`` never ripples through the whole count. The bit position of a chunk and
    its buffer address follow one stage later (:meth:`_positions`).
    """

    def __init__(
        self, arch: ArchConfig, unit: isa.Unit, bus: wiring.Signature, widths: dict[isa.Buf, int]
    ) -> None:
        self.arch = arch
        self.beat = _beat_bytes(arch)
        self.lw = self.beat.bit_length() - 1
        self.widths = widths  #: bytes of the port on each buffer
        self.max_width = max(self.widths.values())
        #: bits of ``lo``: ``2**L >= 2 * max_width``, so ``lo - n`` borrows at most every
        #: other chunk (``hi - 1``, recomputed every cycle, is then ready again)
        self.L = (2 * self.max_width).bit_length()
        ports = {
            f"buf_{b.name.lower()}": Out(BufPortSignature(addr_bits(arch.buffers.of(b).size), w))
            for b, w in self.widths.items()
        }
        super().__init__({**unit_members(unit), "mem": Out(bus), **ports})

    def buffer_width(self, buf: isa.Buf) -> int:
        """Bytes of this unit's port on buffer ``buf``."""
        return self.widths[buf]

    def _kinds(self) -> list[tuple[isa.Unpack | None, int]]:
        """(unpack code, bits per external value) of the values this unit walks."""
        return [(None, 8)]

    def _per_kind(self, m: Module, ins, body) -> None:
        """``body(k)`` for the instruction's value width ``k`` (a switch when several)."""
        kinds = self._kinds()
        if len(kinds) == 1:
            body(kinds[0][1])
            return
        with m.Switch(ins.v.unpack):
            for u, k in kinds:
                with m.Case(u):
                    body(k)

    def _table(self, m: Module, ins, index: Value, fn, width: int, name: str) -> Signal:
        """``fn(k, index)`` for the instruction's value width ``k``: a constant table."""
        out = Signal(width, name=name)

        def body(k: int) -> None:
            rows = [Const(fn(k, i), width) for i in range(1 << len(index))]
            m.d.comb += out.eq(Array(rows)[index])

        self._per_kind(m, ins, body)
        return out

    def _buf(self, m: Module, sel, *, req, addr, we=0, wdata=0, strb=0):
        """Drive the port of buffer ``sel``; returns its ``rdata`` (``max_width`` bytes)."""
        rdata = Signal(8 * self.max_width)
        with m.Switch(sel):
            for b in isa.Buf:
                port = getattr(self, f"buf_{b.name.lower()}")
                with m.Case(b):
                    m.d.comb += [
                        port.req.eq(req),
                        port.addr.eq(addr),
                        port.we.eq(we),
                        port.wdata.eq(wdata),
                        rdata.eq(port.rdata),
                    ]
                    if self.widths[b] > 1:
                        m.d.comb += port.strb.eq(strb)
        return rdata

    @staticmethod
    def _sides(v):
        """(external address, external stride, buffer address, buffer stride) of ``v``."""
        if isinstance(v, _LdView):
            return v.v.src, v.v.src_stride, v.v.dst, v.v.dst_stride
        return v.v.dst, v.v.dst_stride, v.v.src, v.v.src_stride

    def _setup(self, m: Module) -> dict:
        """Latch the instruction and compute its transfer shape in
        :data:`flightforge.ldst.SETUP_STAGES` registered steps; returns the view ``ins``,
        the ``init`` pulse (the last setup cycle, in which the walk and the command side
        load their first row) and the shape's registers and last-step values."""
        B, lw, L = self.beat, self.lw, self.L
        word = Signal.like(self.instr)
        with m.If(self.start):
            m.d.sync += word.eq(self.instr)
        ins = self._view(word)
        ext, es, _, bs = self._sides(ins)
        rows, rb = ins.v.rows, ins.v.row_bytes
        pulse = Signal(ldst.SETUP_STAGES, name="setup")  # bit i: the cycle i + 1 after start
        m.d.sync += pulse.eq(Cat(self.start, pulse[:-1]))
        # step 1: packed bits of a row, rows * row_bytes (a registered DSP multiply), flags
        kbits = Signal(isa.ROW_BYTES_BITS + 3)

        def packed(k: int) -> None:
            m.d.sync += kbits.eq(_times(rb, k))

        self._per_kind(m, ins, packed)
        vals = Signal(isa.DIM_BITS + isa.ROW_BYTES_BITS)  # values of a one-span transfer
        rows1, bs_eq = Signal(), Signal()
        rows_m1 = Signal(isa.DIM_BITS)
        width = Signal(range(self.max_width + 1))  # the port width on the instruction's buffer
        with m.Switch(ins.v.buf):
            for b in isa.Buf:
                with m.Case(b):
                    m.d.sync += width.eq(self.widths[b])
        cut = isa.EXT_ADDR_BITS // 2  # the command address adds in two halves
        off_next = Signal(lw)  # the byte offset of row 1 in its first beat
        m.d.sync += [
            vals.eq(rows * rb),
            rows1.eq(rows == 1),
            bs_eq.eq(bs == rb),
            rows_m1.eq(rows - 1),
            off_next.eq(ext[:lw] + es[:lw]),
        ]
        # the walk's count of values left, ``hi * 2**L + lo``, needs ``hi - 1``, ``hi == 0``
        # and ``hi == 1`` of both candidates (a row, or the one span)
        hb = len(vals) - L
        row_h, vals_h = Signal(3 * hb + 2), Signal(3 * hb + 2)

        def high(v: Value) -> Value:
            return Cat(v[L:], (v[L:] - 1)[:hb], v[L:] == 0, v[L:] == 1)

        rb_wide = Signal(len(vals))
        m.d.comb += rb_wide.eq(rb)
        m.d.sync += row_h.eq(high(rb_wide))
        # step 2: packed bytes of a row, whether rows end on whole bytes
        ext_row = Signal(isa.ROW_BYTES_BITS + 1)
        whole = Signal()
        m.d.sync += [
            ext_row.eq((kbits + 7) >> 3),
            whole.eq(kbits[:3] == 0),
            vals_h.eq(high(vals)),
        ]
        # step 3: one span when contiguous on both sides (and packed rows end on whole
        # bytes); its packed bytes rows * ext_row (a registered DSP multiply; only the bits
        # a burst count needs)
        contig = Signal()
        ext_all = Signal(lw + BEATS_BITS)
        m.d.sync += [
            contig.eq(rows1 | ((es == ext_row) & bs_eq & whole)),
            ext_all.eq(rows * ext_row),
        ]
        # step 4: per command: values, packed bytes split as bursts + offset; counters
        seg = Signal(len(vals))
        ext_seg = Signal(lw + BEATS_BITS)
        ncmd_m1 = Signal(isa.DIM_BITS)
        m.d.comb += [
            seg.eq(Mux(contig, vals, rb)),
            ext_seg.eq(Mux(contig, ext_all, ext_row)),
            ncmd_m1.eq(Mux(contig, 0, rows_m1)),
        ]
        h = Signal(3 * hb + 2)
        m.d.comb += h.eq(Mux(contig, vals_h, row_h))
        shape = {
            "lo": seg[:L],
            "hi": h[:hb],
            "hm1": h[hb : 2 * hb],
            "hz": h[2 * hb],
            "hm1z": h[2 * hb + 1],
            "e_lob": ext_seg[:lw] + (B - 1),
            "e_hi0": ext_seg[lw:],
            "e_hi1": ext_seg[lw:] + 1,
            "e_hi2": ext_seg[lw:] + 2,
        }
        widths = {"lo": L, "hi": hb, "hm1": hb, "hz": 1, "hm1z": 1, "e_lob": lw + 1}
        regs = {}
        for name, value in shape.items():
            r = regs[name] = Signal(widths.get(name, BEATS_BITS), name=f"seg_{name}")
            m.d.sync += r.eq(value)
        return {
            "ins": ins,
            "init": pulse[-1],
            "width": width,
            "es": es,
            "cut": cut,
            "bs": bs,
            "off_next": off_next,
            "ncmd_m1": ncmd_m1,
            "now": shape,
            "seg": regs,
        }

    def _commands(self, m: Module, s: dict) -> None:
        """One burst command per segment, one per cycle from the cycle after ``init``:
        the address of the segment's first beat and its bursts ``ceil((offset + bytes) /
        burst)``, chosen among the three precomputed counts by a short add of offsets."""
        lw, cut = self.lw, s["cut"]
        ext, es, _, _ = self._sides(s["ins"])
        E = isa.EXT_ADDR_BITS
        on, last = Signal(), Signal()
        # the row's external address as two halves: the high half lags by the low half's
        # carry (``carry``), added when the address is driven, so that each step is two
        # short adds side by side instead of one add as long as the address
        src_lo, src_hi, cy = Signal(cut), Signal(E - cut), Signal()
        rem = Signal(isa.DIM_BITS)
        carry = Signal(2)
        m.d.comb += carry.eq((s["seg"]["e_lob"] + src_lo[:lw]) >> lw)
        beats = Array([s["seg"]["e_hi0"], s["seg"]["e_hi1"], s["seg"]["e_hi2"]])[carry]
        with m.If(on):
            m.d.comb += [
                self.mem.cmd_valid.eq(1),
                self.mem.cmd_addr.eq(Cat(Const(0, lw), src_lo[lw:], src_hi + cy)),
                self.mem.cmd_beats.eq(beats[:BEATS_BITS]),
            ]
            with m.If(self.mem.cmd_ready):
                low = Signal(cut + 1)
                m.d.comb += low.eq(src_lo + es[:cut])
                m.d.sync += [
                    src_lo.eq(low[:cut]),
                    cy.eq(low[cut]),
                    src_hi.eq(src_hi + es[cut:] + cy),
                    rem.eq(rem - 1),
                    last.eq(rem == 1),
                ]
                with m.If(last):
                    m.d.sync += on.eq(0)
        with m.If(s["init"]):
            m.d.sync += [
                on.eq(1),
                src_lo.eq(ext[:cut]),
                src_hi.eq(ext[cut:]),
                cy.eq(0),
                rem.eq(s["ncmd_m1"]),
                last.eq(s["ncmd_m1"] == 0),
            ]

    def _walk(self, m: Module, s: dict, move: Value) -> dict:
        """The chunks of the transfer, one per cycle in which ``move`` holds: returns the
        chunk of this cycle (``n``, flags) and ``go`` (a chunk is moved in this cycle)."""
        B, BB, lw, L = self.beat, 8 * self.beat, self.lw, self.L
        ins, width = s["ins"], s["width"]
        vmax = max(formats.lowbit_values_per_burst(B, k) for _, k in self._kinds())
        active = Signal()
        avail = Signal(range(vmax + 1))  # values ending in this beat from the position
        rr = Signal(2)  # bits of the value straddling into the next beat
        s0 = Signal(range(BB + 9))  # the beat's first position (+ 8: prev's 8 bits)
        fresh, first = Signal(), Signal()  # the chunk is its beat's / its row's first
        lo = Signal(L)
        hi, hm1 = Signal(len(s["seg"]["hi"])), Signal(len(s["seg"]["hi"]))
        hz, hm1z = Signal(), Signal()
        rows_left = Signal(isa.DIM_BITS)
        last_row = Signal()
        off_nx = Signal(lw)
        go = Signal()
        m.d.comb += go.eq(active & move)
        # the step: compare registers, no arithmetic before the decision
        fits_beat = avail <= width  # the rest of the beat fits the port
        seg_end = hz & (lo <= avail) & (lo <= width)  # the segment ends in this chunk
        n = Signal(range(self.max_width + 1))
        m.d.comb += n.eq(Mux(seg_end, lo, Mux(fits_beat, avail, width)))
        beat_end = seg_end | fits_beat
        last = seg_end & last_row
        # tables: a row starting at byte offset o, a beat after one that left rr bits
        ext = self._sides(ins)[0]
        row_off = Signal(lw)  # the byte offset of the row that starts next
        m.d.comb += row_off.eq(Mux(s["init"], ext[:lw], off_nx))
        row_avail = self._table(m, ins, row_off, lambda k, o: (BB - 8 * o) // k, len(avail), "ra")
        row_rr = self._table(m, ins, row_off, lambda k, o: (BB - 8 * o) % k, 2, "rr_row")
        beat_avail = self._table(m, ins, rr, lambda k, r: (BB + r) // k, len(avail), "ba")
        beat_rr = self._table(m, ins, rr, lambda k, r: (BB + r) % k, 2, "rr_beat")
        d_avail, d_width = Signal(L + 1), Signal(L + 1)
        m.d.comb += [d_avail.eq(lo - avail), d_width.eq(lo - width)]
        diff = Mux(fits_beat, d_avail, d_width)
        m.d.sync += [hm1.eq(hi - 1), hm1z.eq(hi == 1)]
        es_lo = s["es"][:lw]

        def start_row(seg: dict) -> list:
            return [
                avail.eq(row_avail),
                rr.eq(row_rr),
                s0.eq(Cat(Const(0, 3), row_off) + 8),
                fresh.eq(1),
                first.eq(1),
                lo.eq(seg["lo"]),
                hi.eq(seg["hi"]),
                hm1.eq(seg["hm1"]),
                hz.eq(seg["hz"]),
                hm1z.eq(seg["hm1z"]),
            ]

        with m.If(go):
            m.d.sync += [fresh.eq(beat_end), first.eq(0)]
            with m.If(seg_end):
                m.d.sync += start_row(s["seg"])
                m.d.sync += [
                    off_nx.eq(off_nx + es_lo),
                    rows_left.eq(rows_left - 1),
                    last_row.eq(rows_left == 1),
                ]
                with m.If(last_row):
                    m.d.sync += active.eq(0)
            with m.Else():
                m.d.sync += [lo.eq(diff[:L])]
                with m.If(diff[L]):  # borrow: hi - 1 is ready (no borrow in the last cycle)
                    m.d.sync += [hi.eq(hm1), hz.eq(hm1z)]
                with m.If(fits_beat):
                    m.d.sync += [
                        avail.eq(beat_avail),
                        rr.eq(beat_rr),
                        s0.eq(8 - rr),
                    ]
                with m.Else():
                    m.d.sync += avail.eq(avail - width)
        with m.If(s["init"]):
            m.d.sync += start_row(s["now"])
            m.d.sync += [
                active.eq(1),
                off_nx.eq(s["off_next"]),
                rows_left.eq(s["ncmd_m1"]),
                last_row.eq(s["ncmd_m1"] == 0),
            ]
        return {
            "go": go,
            "n": n,
            "fresh": fresh,
            "first": first,
            "s0": s0,
            "seg_end": seg_end,
            "beat_end": beat_end,
            "last": last,
        }

    def _positions(self, m: Module, s: dict, w: dict, extra: dict) -> dict:
        """Stage B: the chunk's bit position ``s`` in the window ``previous beat's top 8
        bits | beat`` and its buffer address, from the previous chunk's (or the beat's or
        row's first); returns stage C's registers (``extra``: more of the chunk, carried
        along)."""
        BB = 8 * self.beat
        ins = s["ins"]
        b_valid, b_n, b_fresh, b_first = Signal(), Signal.like(w["n"]), Signal(), Signal()
        b_s0, b_seg_end, b_beat_end, b_last = Signal.like(w["s0"]), Signal(), Signal(), Signal()
        m.d.sync += [
            b_valid.eq(w["go"]),
            b_n.eq(w["n"]),
            b_fresh.eq(w["fresh"]),
            b_first.eq(w["first"]),
            b_s0.eq(w["s0"]),
            b_seg_end.eq(w["seg_end"]),
            b_beat_end.eq(w["beat_end"]),
            b_last.eq(w["go"] & w["last"]),
        ]
        b_extra = {k: Signal.like(v, name=f"b_{k}") for k, v in extra.items()}
        m.d.sync += [b_extra[k].eq(v) for k, v in extra.items()]
        pos_after = Signal(range(2 * BB + 16))  # position after the previous chunk
        ptr_after = Signal(isa.BUF_ADDR_BITS + 1)
        base = Signal(isa.BUF_ADDR_BITS + 1)  # the row's first buffer address
        pos, ptr = Signal.like(pos_after), Signal.like(ptr_after)
        m.d.comb += [pos.eq(Mux(b_fresh, b_s0, pos_after)), ptr.eq(Mux(b_first, base, ptr_after))]
        nk = Signal(len(b_n) + 3)

        def advance(k: int) -> None:
            m.d.comb += nk.eq(_times(b_n, k))

        self._per_kind(m, ins, advance)
        with m.If(b_valid):
            m.d.sync += [pos_after.eq(pos + nk), ptr_after.eq(ptr + b_n)]
            with m.If(b_seg_end):
                m.d.sync += base.eq(base + s["bs"])
        with m.If(s["init"]):
            m.d.sync += base.eq(self._sides(ins)[2])
        c = {
            "valid": Signal(name="c_valid"),
            "n": Signal.like(b_n, name="c_n"),
            "pos": Signal.like(pos, name="c_pos"),
            "ptr": Signal.like(ptr, name="c_ptr"),
            "beat_end": Signal(name="c_beat_end"),
            "last": Signal(name="c_last"),
        }
        m.d.sync += [
            c["valid"].eq(b_valid),
            c["n"].eq(b_n),
            c["pos"].eq(pos),
            c["ptr"].eq(ptr),
            c["beat_end"].eq(b_beat_end),
            c["last"].eq(b_last),
        ]
        for k, v in b_extra.items():
            c[k] = Signal.like(v, name=f"c_{k}")
            m.d.sync += c[k].eq(v)
        return c


class LoadUnit(_Transfer):
    """LD: external memory -> buffer, widening packed 2/3/4-bit values when ``unpack``."""

    def __init__(self, arch: ArchConfig) -> None:
        super().__init__(
            arch,
            isa.Unit.LD,
            MemReadSignature(isa.EXT_ADDR_BITS, _beat_bytes(arch)),
            {b: ld_port_width(arch, b) for b in isa.Buf},
        )

    def _view(self, word):
        return _LdView(view(isa.LD, word))

    def _kinds(self) -> list[tuple[isa.Unpack | None, int]]:
        return [(u, u.bits) for u in isa.Unpack]

    def elaborate(self, platform) -> Module:
        m = Module()
        W, BB = self.max_width, 8 * self.beat
        s = self._setup(m)
        self._commands(m, s)
        ins = s["ins"]
        w = self._walk(m, s, self.mem.data_valid)
        m.d.comb += self.mem.data_ready.eq(w["go"] & w["beat_end"])
        # a value that began in the previous beat began in its last 8 bits
        prev = Signal(8)
        with m.If(w["go"] & w["beat_end"]):
            m.d.sync += prev.eq(self.mem.data[BB - 8 :])
        c = self._positions(m, s, w, {"window": Cat(prev, self.mem.data)})
        # stage C: the window shifted down by the position's multiple of 32 bits
        coarse = Signal(BB + 8)
        x = {k: Signal.like(c[k], name=f"x_{k}") for k in ("valid", "last", "ptr", "n")}
        fine = Signal(5)
        m.d.sync += [coarse.eq(c["window"] >> Cat(Const(0, 5), c["pos"][5:])), fine.eq(c["pos"])]
        m.d.sync += [x[k].eq(c[k]) for k in x]
        # stage D: the rest of the shift; the chunk's values widened to INT8
        window = Signal(BB + 8)
        m.d.comb += window.eq(coarse >> fine)
        wdata = Signal(8 * W)

        def widen(k: int) -> None:
            for i in range(min(W, (BB + 8) // k)):
                v = window[i * k : (i + 1) * k]
                m.d.comb += wdata.word_select(i, 8).eq(
                    v if k == 8 else Cat(v, v[k - 1].replicate(8 - k))
                )

        self._per_kind(m, ins, widen)
        d_valid, d_last = Signal(), Signal()
        d_addr, d_wdata, d_strb = Signal.like(x["ptr"]), Signal(8 * W), Signal(W)
        m.d.sync += [
            d_valid.eq(x["valid"]),
            d_last.eq(x["last"]),
            d_addr.eq(x["ptr"]),
            d_wdata.eq(wdata),
            d_strb.eq(_mask(x["n"], W)),
        ]
        # stage E: the write, from registers
        self._buf(m, ins.v.buf, req=d_valid, addr=d_addr, we=1, wdata=d_wdata, strb=d_strb)
        m.d.comb += self.done.eq(d_last)
        return m


class StoreUnit(_Transfer):
    """ST: buffer -> external memory, partial beats strobed; done at the last write
    response."""

    def __init__(self, arch: ArchConfig) -> None:
        super().__init__(
            arch,
            isa.Unit.ST,
            MemWriteSignature(isa.EXT_ADDR_BITS, _beat_bytes(arch)),
            {b: port_width(arch, b) for b in isa.Buf},
        )

    def _view(self, word):
        return _StView(view(isa.ST, word))

    def elaborate(self, platform) -> Module:
        m = Module()
        B, lw = self.beat, self.lw
        s = self._setup(m)
        self._commands(m, s)
        ins = s["ins"]
        w = self._walk(m, s, Const(1))
        c = self._positions(m, s, w, {})
        # stage C: the chunk is read (from registers); its bytes arrive in stage D
        rdata = self._buf(m, ins.v.buf, req=c["valid"], addr=c["ptr"])
        # ... and the beat's bytes it fills: n bytes from its byte of the beat
        cur = Signal(lw)
        m.d.comb += cur.eq((c["pos"] >> 3) - 1)  # (pos: 8 + the bit position)
        d_valid, d_end = Signal(), Signal()
        d_cur, d_strb = Signal(lw), Signal(B)
        m.d.sync += [
            d_valid.eq(c["valid"]),
            d_end.eq(c["beat_end"]),
            d_cur.eq(cur),
            d_strb.eq((_mask(c["n"], B) << cur)[:B]),
        ]
        # stage D: the read bytes registered as they leave the buffer's port
        e = {"valid": d_valid, "end": d_end, "cur": d_cur, "strb": d_strb}
        e = {k: Signal.like(v, name=f"e_{k}") for k, v in e.items()}
        got = Signal(8 * min(B, self.max_width))
        m.d.sync += [got.eq(rdata), e["valid"].eq(d_valid), e["end"].eq(d_end)]
        m.d.sync += [e["cur"].eq(d_cur), e["strb"].eq(d_strb)]
        # stage E: the bytes placed at their byte of the beat, merged with the beat's
        # earlier chunks; a finished beat goes to the beat register
        acc, acc_strb = Signal(8 * B), Signal(B)
        shifted = Signal(8 * B)
        m.d.comb += shifted.eq(got << Cat(Const(0, 3), e["cur"]))
        placed = Cat(*[Mux(e["strb"][i], shifted.word_select(i, 8), 0) for i in range(B)])
        merged, mstrb = Signal(8 * B), Signal(B)
        m.d.comb += [merged.eq(acc | placed), mstrb.eq(acc_strb | e["strb"])]
        f_valid, f_data, f_strb = Signal(), Signal(8 * B), Signal(B)
        m.d.sync += f_valid.eq(e["valid"] & e["end"])
        with m.If(e["valid"]):
            with m.If(e["end"]):
                m.d.sync += [f_data.eq(merged), f_strb.eq(mstrb), acc.eq(0), acc_strb.eq(0)]
            with m.Else():
                m.d.sync += [acc.eq(merged), acc_strb.eq(mstrb)]
        # stage F: the beat on the bus
        m.d.comb += [
            self.mem.data_valid.eq(f_valid),
            self.mem.data.eq(f_data),
            self.mem.strb.eq(f_strb),
        ]
        # Write responses: one per command; the last one completes the instruction.
        rem = Signal(isa.DIM_BITS)
        waiting = Signal()
        with m.If(s["init"]):
            m.d.sync += [rem.eq(s["ncmd_m1"]), waiting.eq(1)]
        with m.Elif(waiting & self.mem.resp_valid):
            m.d.sync += rem.eq(rem - 1)
            with m.If(rem == 0):
                m.d.sync += waiting.eq(0)
                m.d.comb += self.done.eq(1)
        return m
