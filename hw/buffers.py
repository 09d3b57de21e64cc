"""On-chip buffers: single-ported byte RAMs (amaranth.lib.memory) with an arbiter.

Each buffer serves one byte per cycle to whichever requester has priority (the lowest
port index). Requesters hold their request until granted, so a unit that loses
arbitration simply waits: units never need to know who else uses the buffer, and the
wait/release tokens (not the arbiter) order accesses that overlap.
"""

from __future__ import annotations

from amaranth import Module, Mux, Signal
from amaranth.lib import memory, wiring
from amaranth.lib.wiring import In

from .bus import BufPortSignature


def addr_bits(size: int) -> int:
    """Address bits of a buffer of ``size`` bytes."""
    return max(1, (size - 1).bit_length())


class Buffer(wiring.Component):
    """A ``size``-byte buffer with ``ports`` arbitrated byte ports ``p0``, ``p1``, ..."""

    def __init__(self, size: int, ports: int) -> None:
        for name, v in (("size", size), ("ports", ports)):
            if isinstance(v, bool) or not isinstance(v, int):
                raise TypeError(f"{name} must be an integer, not {v!r}")
            if v < 1:
                raise ValueError(f"{name} must be at least 1, not {v!r}")
        self.size = size
        self.ports = ports
        self.addr_bits = addr_bits(size)
        super().__init__({f"p{i}": In(BufPortSignature(self.addr_bits)) for i in range(ports)})

    def elaborate(self, platform) -> Module:
        m = Module()
        m.submodules.mem = mem = memory.Memory(shape=8, depth=self.size, init=[])
        rd = mem.read_port()
        wr = mem.write_port()
        ports = [getattr(self, f"p{i}") for i in range(self.ports)]
        # taken[i]: a port before i requests (separate signals, not one vector, so
        # Verilator sees no self-dependent vector: UNOPTFLAT).
        taken = [Signal(name=f"taken{i}") for i in range(self.ports + 1)]
        addr, we, wdata = Signal(self.addr_bits), Signal(), Signal(8)
        for i in range(self.ports):
            p = ports[i]
            m.d.comb += [taken[i + 1].eq(taken[i] | p.req), p.grant.eq(p.req & ~taken[i]),
                         p.rdata.eq(rd.data)]
        # Priority mux: the last assignment in the loop (lowest index) wins.
        sel_addr, sel_we, sel_wdata = 0, 0, 0
        for p in reversed(ports):
            sel_addr = Mux(p.req, p.addr, sel_addr)
            sel_we = Mux(p.req, p.we, sel_we)
            sel_wdata = Mux(p.req, p.wdata, sel_wdata)
        m.d.comb += [addr.eq(sel_addr), we.eq(sel_we), wdata.eq(sel_wdata),
                     rd.addr.eq(addr), wr.addr.eq(addr), wr.data.eq(wdata),
                     wr.en.eq(taken[self.ports] & we)]
        return m
