"""On-chip buffers: ``banks * width`` byte lanes, one independent port per user.

A buffer of ``size`` bytes is cut into ``lanes = banks * width`` byte-wide RAMs
(``amaranth.lib.memory``), byte address ``a`` in lane ``a % lanes``, row ``a // lanes``.
Every lane computes its own row, so a port moves up to ``lanes`` bytes at ANY byte
address in one cycle (a rotate network in front of and behind the lanes): this is the
``banks * width`` bytes per cycle the cycle model charges (``port[buf]`` in
sim/timing.py), without alignment restrictions.

Every user (debug port, LD, ST, MPE, SFU) has its own port (a :class:`BufferPort`: the
port's rotate networks, one per user, in front of the shared lanes) and is granted at once
(``grant = req``): the cycle model lets the decoupled units use a buffer concurrently
at their full rates, and the wait/release tokens, not an arbiter, order accesses that
overlap. (On an FPGA this is a multi-ported RAM: BRAM true dual port plus replication or
multi-pumping; the simulation models the ports directly.) A read returns its bytes on
``rdata`` in the next cycle; ``strb`` (ports wider than one byte) enables the bytes of a
write.
"""

from __future__ import annotations

from amaranth import Cat, Const, Module, Signal
from amaranth.lib import data, memory, wiring
from amaranth.lib.wiring import In, Out

from .bus import BufPortSignature


def addr_bits(size: int) -> int:
    """Address bits of a buffer of ``size`` bytes."""
    return max(1, (size - 1).bit_length())


def _pow2(name: str, v: int) -> int:
    if isinstance(v, bool) or not isinstance(v, int):
        raise TypeError(f"{name} must be an integer, not {v!r}")
    if v < 1 or v & (v - 1):
        raise ValueError(f"{name} must be a power of two, not {v!r}")
    return v


class BufferPort(wiring.Component):
    """One user's ``width``-byte port on ``lanes`` byte lanes: for each lane the row it
    accesses (``lane_row``; one row further on for the lanes before the byte offset), the
    byte it writes (``lane_wdata``, ``lane_we``), and the read data rotated back from the
    lanes' outputs (``lane_rdata``, the cycle after the address).

    A block of its own so that its cost, which grows as ``width * lanes`` and is repeated
    for every user, can be synthesised and counted apart from the RAMs
    (benchmarks/rtl_resources.py)."""

    def __init__(self, addr_bits: int, rows_bits: int, width: int, lanes: int) -> None:
        self.lanes = _pow2("lanes", lanes)
        self.width = width
        self.rows_bits = rows_bits
        super().__init__(
            {
                "port": In(BufPortSignature(addr_bits, width)),
                "lane_row": Out(data.ArrayLayout(rows_bits, lanes)),
                "lane_wdata": Out(data.ArrayLayout(8, lanes)),
                "lane_we": Out(lanes),
                "lane_rdata": In(data.ArrayLayout(8, lanes)),
            }
        )

    def elaborate(self, platform) -> Module:
        m = Module()
        L, w, p = self.lanes, self.width, self.port
        lb = L.bit_length() - 1
        m.d.comb += p.grant.eq(p.req)
        off = p.addr[:lb] if lb else Const(0, 1)
        row = p.addr[lb:] if lb else p.addr
        strb = p.strb if w > 1 else Const(1, 1)
        off_q = Signal.like(off, name="off_q")
        m.d.sync += off_q.eq(off)
        # Byte i of the port lands in lane (off + i) % L, one row further on in the lanes
        # before the offset. The write data of a port of 4 bytes or more is ONE rotation
        # of the L-byte vector by the offset (a log2(L)-stage barrel shifter), not a w:1
        # multiplexer per lane: in Yosys 3 401 instead of 23 355 LUT at w = L = 64
        # (read side included). Ports of 1 to 3 bytes keep the per-lane multiplexer,
        # then the smaller one (1 B x 8 lanes: 48 LUT, rotated 109; 4 B: 240 vs 209).
        for j in range(L):
            later = (off > j) if lb and j < L - 1 else 0  # (the last lane never is)
            m.d.comb += self.lane_row[j].eq(row + later)
        if lb and w >= 4:
            back = Signal(lb, name="back")  # (L - off) mod L: lane j takes byte j + back
            m.d.comb += back.eq(-off)
            wdata = Cat(p.wdata, Const(0, 8 * (L - w)))
            wmask = Cat(strb, Const(0, L - w))  # lanes beyond the port's bytes: disabled
            lanes_data = Signal(8 * L, name="lanes_wdata")
            lanes_en = Signal(L, name="lanes_en")
            m.d.comb += [
                lanes_data.eq(Cat(wdata, wdata).bit_select(back * 8, 8 * L)),
                lanes_en.eq(Cat(wmask, wmask).bit_select(back, L)),
            ]
            for j in range(L):
                m.d.comb += [
                    self.lane_wdata[j].eq(lanes_data.word_select(j, 8)),
                    self.lane_we[j].eq(p.req & p.we & lanes_en[j]),
                ]
        else:
            for j in range(L):  # lane j takes byte (j - off) % L, if the port has it
                i_sel = Signal(max(1, lb), name=f"i{j}") if lb else Const(0, 1)
                if lb:
                    m.d.comb += i_sel.eq(j - off)
                in_port = i_sel < w if w < L else Const(1, 1)
                byte = p.wdata.word_select(i_sel, 8) if w > 1 else p.wdata
                en = strb.bit_select(i_sel, 1) if w > 1 else Const(1, 1)
                m.d.comb += [
                    self.lane_wdata[j].eq(byte),
                    self.lane_we[j].eq(p.req & p.we & in_port & en),
                ]
        # Read: byte k comes from lane (off + k) % L of the row read last cycle; one
        # rotation again, of which synthesis keeps the port's w bytes.
        rd = Cat(*self.lane_rdata)
        m.d.comb += p.rdata.eq(Cat(rd, rd).bit_select(off_q * 8, 8 * w) if lb else rd[: 8 * w])
        return m


class Buffer(wiring.Component):
    """A ``size``-byte buffer of ``lanes`` byte lanes with ports ``p0``, ``p1``, ... of
    ``widths[i]`` bytes each (every width at most ``lanes``)."""

    def __init__(self, size: int, widths, lanes: int = 1) -> None:
        if isinstance(size, bool) or not isinstance(size, int):
            raise TypeError(f"size must be an integer, not {size!r}")
        if size < 1:
            raise ValueError(f"size must be at least 1, not {size!r}")
        if isinstance(widths, bool) or not isinstance(widths, (int, list, tuple)):
            raise TypeError(f"ports must be an integer, not {widths!r}")
        if isinstance(widths, int):  # that many byte ports
            if widths < 1:
                raise ValueError(f"ports must be at least 1, not {widths!r}")
            widths = [1] * widths
        widths = list(widths)
        if not widths:
            raise ValueError("a buffer needs at least one port")
        self.lanes = _pow2("lanes", lanes)
        for w in widths:
            if isinstance(w, bool) or not isinstance(w, int) or not 1 <= w <= lanes:
                raise ValueError(f"port width {w!r} must be 1..lanes ({lanes})")
        if size % lanes:
            raise ValueError(f"size {size} is not a multiple of the {lanes} lanes")
        self.size = size
        self.widths = widths
        self.ports = len(widths)
        self.addr_bits = addr_bits(size)
        self.rows_bits = max(1, (size // lanes - 1).bit_length())
        super().__init__(
            {f"p{i}": In(BufPortSignature(self.addr_bits, w)) for i, w in enumerate(widths)}
        )

    def port_network(self, i: int) -> BufferPort:
        """The network of port ``i`` (a new component: one per port in a design)."""
        return BufferPort(self.addr_bits, self.rows_bits, self.widths[i], self.lanes)

    def elaborate(self, platform) -> Module:
        m = Module()
        mems = []
        for j in range(self.lanes):
            mem = memory.Memory(shape=8, depth=self.size // self.lanes, init=[])
            m.submodules[f"lane{j}"] = mem
            mems.append(mem)
        for i in range(self.ports):
            m.submodules[f"port{i}"] = net = self.port_network(i)
            wiring.connect(m, wiring.flipped(getattr(self, f"p{i}")), net.port)
            for j, mem in enumerate(mems):
                rd = mem.read_port()
                wr = mem.write_port()
                m.d.comb += [
                    rd.addr.eq(net.lane_row[j]),
                    wr.addr.eq(net.lane_row[j]),
                    wr.data.eq(net.lane_wdata[j]),
                    wr.en.eq(net.lane_we[j]),
                    net.lane_rdata[j].eq(rd.data),
                ]
        return m
