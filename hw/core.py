"""One FlightForge core: controller, LD/ST units, MPE, SFU and the five on-chip buffers.

Top-level ports (see :mod:`.bus` for the channel protocols):

- ``start`` runs the section held by the instruction port from instruction 0;
  ``halted`` rises when its HALT retires (``illegal``, ``token_error`` report faults);
- ``run_d``: the length register, ``D = length - len_lo`` of a length-adaptive section,
  held by the host while the section runs; every LD, ST and MISC has its dynamic fields
  (``isa.DYNAMIC_FIELDS``) applied on its way from the issue queue to its unit;
- ``imem_we``/``imem_addr``/``imem_wdata``: host writes into the instruction buffer
  (one instruction per cycle, while idle);
- ``mem_rd``/``mem_wr``: external memory, ``hbm.burst_bytes`` per beat;
- ``dbg_*``: host access to any buffer byte through the LD unit's buffer port, which it
  takes over while ``dbg_en`` selects the buffer (meant for use while the core is halted,
  when LD is idle): ``dbg_en`` with ``dbg_buf``/``dbg_addr`` (and
  ``dbg_we``/``dbg_wdata``) reads the byte onto ``dbg_rdata`` in the next cycle.
"""

from __future__ import annotations

from amaranth import Module, Mux, Signal
from amaranth.lib import wiring
from amaranth.lib.wiring import In, Out

from flightforge import isa
from flightforge.arch import ArchConfig

from .buffers import Buffer
from .bus import MemReadSignature, MemWriteSignature
from .controller import IMEM_ADDR_BITS, Controller
from .decode import resolve_dynamic
from .memory_units import LoadUnit, StoreUnit, _beat_bytes
from .mpe import MatrixEngine
from .sfu.unit import SpecialFunctionUnit


def buffer_port_widths(arch: ArchConfig, buf: isa.Buf, units) -> list[int]:
    """Byte widths of ``buf``'s ports in the order :class:`Core` connects them: LD (shared
    with the debug port), ST, then every port of the MPE and the SFU (``units``: the
    core's LD, ST, MPE and SFU)."""
    users = [u for u in units if hasattr(u, f"buf_{buf.name.lower()}")]
    return [u.buffer_width(buf) for u in users] + [
        w for u in units if hasattr(u, "port_widths") for w in u.port_widths(buf)
    ]


class Core(wiring.Component):
    """A core generated from ``arch`` (one core of ``arch.cores``)."""

    def __init__(self, arch: ArchConfig) -> None:
        if not isinstance(arch, ArchConfig):
            raise TypeError(f"arch must be an ArchConfig, not {arch!r}")
        self.arch = arch
        beat = _beat_bytes(arch)
        super().__init__(
            {
                "start": In(1),
                "run_d": In(isa.DIM_BITS),
                "halted": Out(1),
                "illegal": Out(1),
                "token_error": Out(1),
                "imem_we": In(1),
                "imem_addr": In(IMEM_ADDR_BITS),
                "imem_wdata": In(isa.INSTR_BITS),
                "mem_rd": Out(MemReadSignature(isa.EXT_ADDR_BITS, beat)),
                "mem_wr": Out(MemWriteSignature(isa.EXT_ADDR_BITS, beat)),
                "dbg_en": In(1),
                "dbg_we": In(1),
                "dbg_buf": In(3),
                "dbg_addr": In(isa.BUF_ADDR_BITS),
                "dbg_wdata": In(8),
                "dbg_rdata": Out(8),
            }
        )

    def _debug_shared(self, m: Module, b: isa.Buf, port, ld_port) -> None:
        """Buffer port ``port`` serves the debug access when ``dbg_en`` selects ``b`` (the
        host uses it while the core is halted, when LD is idle), else the LD unit's
        ``ld_port``: one port on the RAM for both."""
        dbg = self.dbg_en & (self.dbg_buf == b)
        fields = ["req", "we", "addr", "wdata"] + (["strb"] if hasattr(port, "strb") else [])
        mine = {"req": 1, "we": self.dbg_we, "addr": self.dbg_addr, "wdata": self.dbg_wdata}
        for name in fields:
            m.d.comb += getattr(port, name).eq(Mux(dbg, mine.get(name, 1), getattr(ld_port, name)))
        m.d.comb += [ld_port.rdata.eq(port.rdata), ld_port.grant.eq(port.grant & ~dbg)]

    def elaborate(self, platform) -> Module:
        m = Module()
        arch = self.arch
        m.submodules.controller = ctrl = Controller(arch)
        units = {
            isa.Unit.LD: LoadUnit(arch),
            isa.Unit.ST: StoreUnit(arch),
            isa.Unit.MPE: MatrixEngine(arch),
            isa.Unit.SFU: SpecialFunctionUnit(arch),
        }
        for u, unit in units.items():
            m.submodules[u.name.lower()] = unit
            port = getattr(ctrl, f"unit_{u.name.lower()}")
            m.d.comb += [
                unit.instr.eq(resolve_dynamic(m, u, port.instr, self.run_d)),
                unit.start.eq(port.start),
                port.done.eq(unit.done),
            ]
        m.d.comb += [
            ctrl.imem_we.eq(self.imem_we),
            ctrl.imem_addr.eq(self.imem_addr),
            ctrl.imem_wdata.eq(self.imem_wdata),
        ]
        wiring.connect(m, wiring.flipped(self.mem_rd), units[isa.Unit.LD].mem)
        wiring.connect(m, wiring.flipped(self.mem_wr), units[isa.Unit.ST].mem)
        m.d.comb += [
            ctrl.start.eq(self.start),
            self.halted.eq(ctrl.halted),
            self.illegal.eq(ctrl.illegal),
            self.token_error.eq(ctrl.token_error),
        ]

        # Buffers: LD's port first (the debug port shares it), then ST, MPE, SFU.
        dbg_was = {}
        for b in isa.Buf:
            users = [u for u in units.values() if hasattr(u, f"buf_{b.name.lower()}")]
            assert isinstance(users[0], LoadUnit), "the debug port shares the LD port"
            cfg = arch.buffers.of(b)
            widths = buffer_port_widths(arch, b, units.values())
            buf = Buffer(cfg.size, widths, cfg.banks * cfg.width)
            m.submodules[f"buf_{b.name.lower()}"] = buf
            self._debug_shared(m, b, buf.p0, getattr(users[0], f"buf_{b.name.lower()}"))
            for i, user in enumerate(users[1:], 1):
                wiring.connect(m, getattr(user, f"buf_{b.name.lower()}"), getattr(buf, f"p{i}"))
            xports = [
                p
                for u in units.values()
                if hasattr(u, "port_widths") and u.port_widths(b)
                for p in u.ports(b)
            ]
            for i, port in enumerate(xports):
                wiring.connect(m, port, getattr(buf, f"p{len(users) + i}"))
            dbg_was[b] = buf.p0.rdata[:8]
        sel = Signal(3)  # the buffer read in the previous cycle
        m.d.sync += sel.eq(self.dbg_buf)
        with m.Switch(sel):
            for b in isa.Buf:
                with m.Case(b):
                    m.d.comb += self.dbg_rdata.eq(dbg_was[b])
        return m
