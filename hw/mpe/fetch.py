"""The MPE's buffer side: the reads it issues, the staging of weights and indices, and
the result writes.

Weights and indices are read in every fetch cycle of a step and staged per column;
group scales, column records and partial sums are read in the step's last fetch cycle
(:attr:`.control.Loop.fire`), the activation spans from the tile buffer then too
(:mod:`.tile_buffer`, filled through the one ACT line port here). Results are written
one port per output row at a tile's last step. The addresses follow formats.py's
layouts.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

from amaranth import Cat, Module, Mux, Signal, Value

from flightforge import isa

from .control import HDR, Decoded, Loop, lg


def _cdiv(a: int, b: int) -> int:
    return -(-a // b)


@dataclass
class Reads:
    """The MPE's read ports by stream (each a list of buffer ports)."""

    wgt: list
    meta: list
    fill: object  #: the tile fill's ACT line port
    scale: list  #: group scales, one per column
    rec: list  #: column records, ``rec_reads`` per column
    psum: list  #: partial sums, ``ppr`` per tile row
    wr: list  #: result writes, ``ppr`` per tile row


def _late(m: Module, lp: Loop, cycles: int) -> dict[str, Value]:
    """The loop values the epilogue's reads use, ``cycles`` cycles late."""
    out = {}
    for name in ("fire", "last_step", "sk", "q_tile", "p_base", "c0"):
        v = getattr(lp, name)
        for t in range(cycles):
            r = Signal(len(v), name=f"late_{name}{t}")
            m.d.sync += r.eq(v)
            v = r
        out[name] = v
    return out


def issue_reads(m: Module, eng, d: Decoded, lp: Loop, late: int = 0) -> Reads:
    """Addresses and requests of every read port (the write ports: :func:`write_results`).

    The reads the epilogue uses (group scales, records, partial sums) are issued ``late``
    cycles after the step's last fetch cycle, so that their data meets the chains' sums
    without a delay line as wide as the data."""
    P = eng.P
    pw, pm, pa = P[isa.Buf.WGT], P[isa.Buf.META], P[isa.Buf.ACT]
    f, sel = d.f, d.sel
    wp = eng.ports(isa.Buf.WGT)
    w_step = Mux(d.int4, lp.sk >> 1, lp.sk)
    wcol = sel(lambda nm: pw // eng.modes[nm][1])
    wrows = sel(lambda nm: pw // eng.modes[nm][1])  # [K][N] rows per cycle
    mcol = sel(lambda nm: pm // eng.modes[nm][1])
    for p, port in enumerate(wp):
        nk_addr = (
            lp.w_tile
            + (lp.sk + (lp.cyc << sel(lambda nm: lg(pw // eng.modes[nm][1]))) + p) * f["n"]
        )
        col_addr = lp.w_tile + p * d.wrb + w_step + lp.cyc * wcol
        m.d.comb += [
            port.addr.eq(Mux(d.wkn, nk_addr, col_addr)),
            port.req.eq(lp.fetching & (lp.cyc < lp.wcyc) & Mux(d.wkn, p < wrows, p < d.tn)),
        ]
    mp_ = eng.ports(isa.Buf.META)
    for j, port in enumerate(mp_):
        m.d.comb += [
            port.addr.eq(lp.m_tile + j * d.mrb + ((lp.sk << d.lib) >> 3) + lp.cyc * mcol),
            port.req.eq(lp.fetching & (lp.cyc < lp.mcyc) & (j < d.tn)),
        ]
    ap = eng.ports(isa.Buf.ACT)
    fill_port, psum_ports, wr_ports = ap[0], ap[1 : 1 + eng.n_psum], ap[1 + eng.n_psum :]
    m.d.comb += [fill_port.addr.eq(lp.fill.addr), fill_port.req.eq(lp.fill.req)]
    lt = _late(m, lp, late)
    fire = lt["fire"]
    sp = eng.ports(isa.Buf.SCALE)
    scale_ports, rec_ports = sp[: eng.nmax], sp[eng.nmax :]
    gi0 = Signal(isa.DIM_BITS + 8)
    m.d.comb += gi0.eq(lt["sk"] >> d.lge)
    for j, port in enumerate(scale_ports):
        m.d.comb += [
            port.addr.eq(lt["q_tile"] + j * d.recb + HDR + gi0),
            port.req.eq(fire & d.gsz_on & (j < d.tn)),
        ]
    ps = P[isa.Buf.SCALE]
    for i, port in enumerate(rec_ports):
        j, h = divmod(i, eng.rec_reads)
        m.d.comb += [
            port.addr.eq(lt["q_tile"] + j * d.recb + h * ps),
            port.req.eq(fire & lt["last_step"] & f["colp"] & (j < d.tn)),
        ]
    for i, port in enumerate(psum_ports):
        for nm, (rm, _n, _k) in eng.modes.items():
            r, h = divmod(i, eng.ppr[nm])
            if r < rm:
                with m.If(d.is_mm if nm == "mm" else ~d.is_mm):
                    m.d.comb += [
                        port.addr.eq(lt["p_base"] + r * f["d_stride"] + (lt["c0"] << 2) + h * pa),
                        port.req.eq(fire & lt["last_step"] & f["acc_in"]),
                    ]
    return Reads(wp, mp_, fill_port, scale_ports, rec_ports, psum_ports, wr_ports)


@dataclass
class Staged:
    """A step's weights and indices per column, valid in the cycle after its last fetch."""

    wst_n: list[Signal]  #: per column, ``wb`` weight bytes
    mst_n: list[Signal]  #: per column, ``mb`` index bytes


def stage(m: Module, eng, d: Decoded, lp: Loop, rd: Reads) -> Staged:
    """Collect each column's weight and index bytes over the step's fetch cycles."""
    pw, pm = eng.P[isa.Buf.WGT], eng.P[isa.Buf.META]
    cyc_q = Signal.like(lp.cyc)
    wvalid_q = Signal()
    mvalid_q = Signal()
    m.d.sync += [
        cyc_q.eq(lp.cyc),
        wvalid_q.eq(lp.fetching & (lp.cyc < lp.wcyc)),
        mvalid_q.eq(lp.fetching & (lp.cyc < lp.mcyc)),
    ]
    wst = [Signal(8 * eng.wb, name=f"wst{j}") for j in range(eng.nmax)]
    wst_n = [Signal(8 * eng.wb, name=f"wstn{j}") for j in range(eng.nmax)]
    mst = [Signal(8 * eng.mb, name=f"mst{j}") for j in range(eng.nmax)]
    mst_n = [Signal(8 * eng.mb, name=f"mstn{j}") for j in range(eng.nmax)]
    for j in range(eng.nmax):
        m.d.comb += [wst_n[j].eq(wst[j]), mst_n[j].eq(mst[j])]
        m.d.sync += [wst[j].eq(wst_n[j]), mst[j].eq(mst_n[j])]
    wp, mp_ = rd.wgt, rd.meta
    with m.If(wvalid_q):
        for nm, (_rm, n, _k) in eng.modes.items():
            wc = pw // n
            with m.If(d.is_mm if nm == "mm" else ~d.is_mm):
                for c in range(_cdiv(eng.wb, min(wc, eng.wb))):
                    with m.If(cyc_q == c):
                        with m.If(~d.wkn):
                            for j in range(n):
                                # bytes past the port (its modes' k) are not staged
                                for b in range(min(wc, len(wp[j].rdata) // 8)):
                                    if c * wc + b < eng.wb:
                                        m.d.comb += (
                                            wst_n[j]
                                            .word_select(c * wc + b, 8)
                                            .eq(wp[j].rdata.word_select(b, 8))
                                        )
                        with m.Else():  # rows of n bytes
                            for p in range(min(pw // n, len(wp))):
                                row = c * (pw // n) + p
                                if row < eng.wb:
                                    for j in range(min(n, len(wp[p].rdata) // 8)):
                                        m.d.comb += (
                                            wst_n[j]
                                            .word_select(row, 8)
                                            .eq(wp[p].rdata.word_select(j, 8))
                                        )
    with m.If(mvalid_q):
        for nm, (_rm, n, _k) in eng.modes.items():
            mc = pm // n
            with m.If(d.is_mm if nm == "mm" else ~d.is_mm):
                for c in range(_cdiv(eng.mb, mc)):
                    with m.If(cyc_q == c):
                        for j in range(n):
                            for b in range(min(mc, len(mp_[j].rdata) // 8)):
                                if c * mc + b < eng.mb:
                                    m.d.comb += (
                                        mst_n[j]
                                        .word_select(c * mc + b, 8)
                                        .eq(mp_[j].rdata.word_select(b, 8))
                                    )
    return Staged(wst_n, mst_n)


def write_results(
    m: Module,
    eng,
    d: Decoded,
    wr_ports: list,
    row_results: Callable[[str, int], list[Value]],
    row_valid: Callable[[str, int], Value],
    c0: Value,
    r0: Value,
    d_base: Value,
) -> None:
    """Write row ``r``'s results (``row_results(mode, r)``) through its ports (one per
    port width of the row) when ``row_valid(mode, r)``, packed at the output type's
    bytes, columns past ``N`` and rows past ``M`` masked."""
    pa = eng.P[isa.Buf.ACT]
    f = d.f
    for i, port in enumerate(wr_ports):
        for nm, (rm, n, _k) in eng.modes.items():
            r, h = divmod(i, eng.ppr[nm])
            if r >= rm:
                continue
            with m.If(d.is_mm if nm == "mm" else ~d.is_mm):
                # the row's n results packed at obytes each, bytes h*pa .. h*pa+pa
                packed = Signal(8 * 4 * n, name=f"pk{i}_{nm}")
                with m.Switch(f["odt"]):
                    for dt in isa.DType:
                        with m.Case(dt):
                            m.d.comb += packed.eq(
                                Cat(*(v[: 8 * dt.nbytes] for v in row_results(nm, r)))
                            )
                strb = Signal(4 * n, name=f"strb{i}_{nm}")
                ncols = f["n"] - c0
                with m.Switch(f["odt"]):
                    for dt in isa.DType:
                        with m.Case(dt):
                            m.d.comb += strb.eq(
                                Cat(
                                    *(
                                        Mux(j < ncols, (1 << dt.nbytes) - 1, 0)[: dt.nbytes]
                                        for j in range(n)
                                    )
                                )
                            )
                m.d.comb += [
                    port.addr.eq(d_base + r * f["d_stride"] + c0 * d.obytes + h * pa),
                    port.we.eq(1),
                    port.wdata.eq(
                        packed.word_select(h, 8 * pa) if len(packed) > 8 * pa else packed
                    ),
                    port.strb.eq(strb.word_select(h, pa) if len(strb) > pa else strb),
                    port.req.eq(
                        row_valid(nm, r) & (r0 + r < d.rows) & (h * pa < (d.obytes << d.ltn))
                    ),
                ]
