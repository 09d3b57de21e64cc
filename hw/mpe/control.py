"""The MPE's control: the instruction's fields and derived sizes, and the fetch loop.

:func:`decode` turns the latched MM/MV word into the sizes of formats.py's layout
(entries, bytes per column, record bytes, steps); :func:`sequence` is the loop over
row tiles, column tiles, steps and fetch cycles of :func:`sim.timing.Timing.matmul`,
with the tile base addresses it advances, and the fill of the activation tile buffer
(:mod:`.tile_buffer`) that starts every row tile: one aligned ACT line a cycle, every
line each of the tile's rows touches, then ``FILL_TAIL`` cycles until the last line is
written.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

from amaranth import Module, Mux, Signal, Value

from flightforge import formats, isa
from flightforge.mpe import FILL_TAIL

from ..decode import field
from ..sfu.common import by_dtype

HDR = formats.RECORD_HEADER_BYTES


def lg(v: int) -> int:
    """log2 of a power of two."""
    return v.bit_length() - 1


@dataclass
class Decoded:
    """The latched instruction and the sizes derived from its fields."""

    word: Signal
    f: dict[str, Value]  #: the MM/MV fields by name
    is_mm: Value
    sel: Callable  #: ``sel(fn)``: ``fn(mode)`` of the instruction's mode
    rows: Value
    a_stride: Value
    tm: Value
    tn: Value
    tk: Value
    ltn: Value
    ltk: Value
    lm: Signal
    ln: Signal
    lib: Signal
    sparse: Value
    int4: Value
    wkn: Value
    entries: Signal
    gsz_on: Value
    lge: Signal  #: log2 of the stored entries per scale group
    subs: Signal  #: scale groups per step, at least 1 (flightforge.mpe.scale_cycles)
    tcyc: Signal  #: cycles a step reads its span from the tile buffer (tile_read_cycles)
    wrb: Value
    mrb: Value
    recb: Value
    obytes: Value
    steps: Signal


def decode(m: Module, eng) -> Decoded:
    """The fields of the MM/MV word the engine latched, and formats.py's sizes from them."""
    word = Signal.like(eng.instr)
    opcode = word[: isa.OPCODE_BITS]
    f = {name: field(word, (isa.MM, isa.MV), opcode, name) for name, *_ in isa.layout(isa.MV)[1:]}
    is_mm = opcode == isa.Opcode.MM
    mmf = field(word, (isa.MM,), opcode, "m"), field(word, (isa.MM,), opcode, "a_stride")

    def sel(fn):
        """``fn(mode)`` of the instruction's mode (MM or MV)."""
        return Mux(is_mm, fn("mm"), fn("mv"))

    tm, tn, tk = (sel(lambda nm, i=i: eng.modes[nm][i]) for i in range(3))
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
    entries = Signal(isa.DIM_BITS + 1)
    m.d.comb += entries.eq((f["k"] >> lm) << ln)
    gsz_on = f["gsz"] != 0
    lge = Signal(range(32))
    m.d.comb += lge.eq(f["gsz"] + 3 - lm + ln)
    ngroups = Mux(gsz_on, f["k"] >> (f["gsz"] + 3), 0)
    ltk = sel(lambda nm: lg(eng.modes[nm][2]))
    subs = Signal(range(max(k for _, _, k in eng.modes.values()) + 1))
    m.d.comb += subs.eq(Mux(gsz_on & (lge < ltk), 1 << (ltk - lge)[:5], 1))
    steps = Signal(isa.DIM_BITS + 1)
    m.d.comb += steps.eq((entries + tk - 1) >> ltk)
    tcyc = Signal(range(max(eng.tile_cycles.values()) + 1))
    m.d.comb += tcyc.eq(1)
    for (nm, sm), c in eng.tile_cycles.items():
        with m.If((is_mm if nm == "mm" else ~is_mm) & (f["sparse"] == sm)):
            m.d.comb += tcyc.eq(c)
    return Decoded(
        word=word,
        f=f,
        is_mm=is_mm,
        sel=sel,
        rows=Mux(is_mm, mmf[0], 1),
        a_stride=mmf[1],
        tm=tm,
        tn=tn,
        tk=tk,
        ltn=sel(lambda nm: lg(eng.modes[nm][1])),
        ltk=ltk,
        lm=lm,
        ln=ln,
        lib=lib,
        sparse=sparse,
        int4=int4,
        wkn=f["wkn"],
        entries=entries,
        gsz_on=gsz_on,
        lge=lge,
        subs=subs,
        tcyc=tcyc,
        wrb=Mux(int4, (entries + 1) >> 1, entries),
        mrb=Mux(sparse, ((entries << lib) + 7) >> 3, 0),
        recb=HDR + (((ngroups + 3) >> 2) << 2),
        obytes=by_dtype(f["odt"], lambda d: d.nbytes),
        steps=steps,
    )


@dataclass
class Loop:
    """The fetch loop's state: where the current step of the current tile is."""

    busy: Signal
    rt_row: Signal  #: first row of the tile
    c0: Signal  #: first column of the tile
    s: Signal  #: step
    cyc: Signal  #: fetch cycle of the step
    a_base: Signal
    d_base: Signal
    p_base: Signal
    w_tile: Signal
    m_tile: Signal
    q_tile: Signal
    sk: Signal  #: the step's first stored entry
    ent: Signal  #: the step's entries (the last step's can be fewer)
    wcyc: Signal  #: cycles the step's weights take on the WGT ports
    mcyc: Signal  #: ... and its indices on the META ports
    last_step: Value
    fire: Value  #: the step's last fetch cycle
    last_issue: Signal  #: the instruction's last fetch cycle
    fetching: Value  #: the step loop runs (busy, not filling the tile buffer)
    fill: Fill  #: the tile fill's ACT line read of this cycle


@dataclass
class Fill:
    """The activation tile fill: this cycle's ACT line read and where it goes."""

    req: Signal  #: a line is read this cycle
    addr: Value  #: its ACT byte address (a multiple of the line)
    row: Signal  #: the tile row it is for
    index: Signal  #: its place among the lines the row touches
    offset: Value  #: the row's first byte in its first line
    count: Value  #: tile lines a row holds: ceil(K / line)


def sequence(m: Module, eng, d: Decoded) -> Loop:
    """Row tiles, column tiles, steps and fetch cycles, as ``Timing.matmul`` counts them."""
    pw, pm = eng.P[isa.Buf.WGT], eng.P[isa.Buf.META]
    f, sel = d.f, d.sel
    A = isa.BUF_ADDR_BITS + 2
    busy = Signal()
    rt_row = Signal(isa.DIM_BITS + 1)
    c0 = Signal(isa.DIM_BITS + 1)
    s = Signal(isa.DIM_BITS + 1)
    cyc = Signal(8)
    a_base, d_base, p_base = Signal(A), Signal(A), Signal(A)
    w_tile, m_tile, q_tile = Signal(A), Signal(A), Signal(A)
    sk = Signal(isa.DIM_BITS + 8)
    m.d.comb += sk.eq(s << d.ltk)
    rem = Signal(isa.DIM_BITS + 1)
    m.d.comb += rem.eq(d.entries - sk)
    ent = Signal(isa.DIM_BITS + 1)
    m.d.comb += ent.eq(Mux(rem < d.tk, rem, d.tk))
    wbytes = Mux(d.int4 & ~d.wkn, (ent + 1) >> 1, ent)
    mbytes = Mux(d.sparse, ((ent << d.lib) + 7) >> 3, 0)
    wcyc = Signal(16)
    mcyc = Signal(16)
    m.d.comb += [
        wcyc.eq(((wbytes << d.ltn) + pw - 1) >> lg(pw)),
        mcyc.eq(((mbytes << d.ltn) + pm - 1) >> lg(pm)),
    ]
    # a step lasts its WGT and META port cycles, one cycle per scale group (the
    # accumulators', d.subs) and its tile-buffer reads (d.tcyc): compares side by side,
    # not a maximum and a compare
    more = Signal()  # the step has a fetch cycle after this one
    m.d.comb += more.eq(
        (cyc + 1 < wcyc) | (cyc + 1 < mcyc) | (cyc + 1 < d.subs) | (cyc + 1 < d.tcyc)
    )
    last_step = s + 1 == d.steps
    # the tile fill (row tile start): row ``f_row`` of the tile, its line ``f_j``
    pa = eng.P[isa.Buf.ACT]
    lgl = lg(pa)
    filling = Signal()
    tail = Signal(range(FILL_TAIL + 1))
    f_row = Signal(range(max(eng.modes[nm][0] for nm in eng.modes) + 1))
    f_j = Signal(isa.DIM_BITS + 1)
    f_raddr = Signal(A)  #: the row's first byte in ACT
    f_off = Signal(lgl or 1)
    m.d.comb += f_off.eq(f_raddr[:lgl] if lgl else 0)
    f_lines = Signal(isa.DIM_BITS + 1)  #: lines the row touches
    m.d.comb += f_lines.eq((f_off + f["k"] + pa - 1) >> lgl)
    stall = filling | (tail != 0)
    # a tile's last step waits until the requantisers can take its totals: at least
    # ``drain`` cycles after the previous tile's (flightforge.mpe.drain_cycles)
    drain = {nm: eng.arch.mpe.drain(eng.shapes[nm]) for nm in eng.modes}
    gap = Signal(range(max(drain.values()) + 1))
    hold = last_step & (gap != 0)
    last_cyc = ~more & ~hold
    last_ctile = c0 + d.tn >= f["n"]
    last_rtile = rt_row + d.tm >= d.rows

    with m.If(~busy):
        with m.If(eng.start):
            m.d.sync += [d.word.eq(eng.instr), busy.eq(1), filling.eq(1), f_row.eq(0), f_j.eq(0)]
            ins = eng.instr
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
                f_raddr.eq(fi["a_addr"]),
            ]
    last_issue = Signal()
    rows_log = sel(lambda nm: lg(eng.modes[nm][0]))
    with m.If(gap != 0):
        m.d.sync += gap.eq(gap - 1)
    with m.If(tail != 0):
        m.d.sync += tail.eq(tail - 1)
    with m.If(filling):
        last_line = f_j + 1 >= f_lines
        last_row = (f_row + 1 >= d.tm) | (rt_row + f_row + 1 >= d.rows)
        m.d.sync += f_j.eq(f_j + 1)
        with m.If(last_line):
            m.d.sync += [f_j.eq(0), f_row.eq(f_row + 1), f_raddr.eq(f_raddr + d.a_stride)]
            with m.If(last_row):
                m.d.sync += [filling.eq(0), tail.eq(FILL_TAIL)]
    with m.If(busy & ~stall):
        with m.If(~hold | more):  # only a held step's last cycle waits
            m.d.sync += cyc.eq(cyc + 1)
        with m.If(last_cyc & last_step):
            m.d.sync += gap.eq(sel(lambda nm: drain[nm] - 1))
        with m.If(last_cyc):
            m.d.sync += [cyc.eq(0), s.eq(s + 1)]
            with m.If(last_step):
                m.d.sync += [
                    s.eq(0),
                    c0.eq(c0 + d.tn),
                    w_tile.eq(w_tile + Mux(d.wkn, d.tn, d.wrb << d.ltn)),
                    m_tile.eq(m_tile + (d.mrb << d.ltn)),
                    q_tile.eq(q_tile + (d.recb << d.ltn)),
                ]
                with m.If(last_ctile):
                    m.d.sync += [
                        c0.eq(0),
                        w_tile.eq(f["w_addr"]),
                        m_tile.eq(f["meta_addr"]),
                        q_tile.eq(f["q_addr"]),
                        rt_row.eq(rt_row + d.tm),
                        a_base.eq(a_base + (d.a_stride << rows_log)),
                        # the next row tile starts with its fill
                        filling.eq(1),
                        f_row.eq(0),
                        f_j.eq(0),
                        f_raddr.eq(a_base + (d.a_stride << rows_log)),
                        d_base.eq(d_base + (f["d_stride"] << rows_log)),
                        p_base.eq(p_base + (f["d_stride"] << rows_log)),
                    ]
                    with m.If(last_rtile):
                        m.d.sync += busy.eq(0)
                        m.d.comb += last_issue.eq(1)
    return Loop(
        busy=busy,
        rt_row=rt_row,
        c0=c0,
        s=s,
        cyc=cyc,
        a_base=a_base,
        d_base=d_base,
        p_base=p_base,
        w_tile=w_tile,
        m_tile=m_tile,
        q_tile=q_tile,
        sk=sk,
        ent=ent,
        wcyc=wcyc,
        mcyc=mcyc,
        last_step=last_step,
        fire=busy & ~stall & last_cyc,
        last_issue=last_issue,
        fetching=busy & ~stall,
        fill=Fill(
            req=filling,
            addr=((f_raddr >> lgl) + f_j) << lgl,
            row=f_row,
            index=f_j,
            offset=f_off,
            count=(f["k"] + pa - 1) >> lgl,
        ),
    )
