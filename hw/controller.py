"""Instruction fetch, decode, in-order dispatch and the wait/release scoreboard.

This is the control machine of :mod:`flightforge.sim.dispatch` in hardware:

- fetch reads one instruction (``INSTR_WORDS`` 32-bit words) at a time over the
  instruction port, from byte address ``pc * INSTR_BYTES``;
- dispatch moves at most one instruction per cycle, in order, into its unit's issue
  queue (``queue_depth`` entries); NOP retires at dispatch; HALT waits until every
  queue is empty and every unit idle, then ends the section (``halted``), flagging
  ``token_error`` if any token counter is not back at zero;
- a queue head starts when its unit is idle, every counter it waits on is non-zero and
  every counter it releases into is below ``token_depth``; starting consumes the waited
  tokens, completion (the unit's ``done``) adds the released ones.

An unknown opcode, an enum field out of range or non-zero reserved bits stop fetch with
``illegal`` set. A deadlocked program simply stops making progress; the simulation
harness reports it with the queue heads and counters it reads from this block.
"""

from __future__ import annotations

from amaranth import Module, Signal
from amaranth.lib import fifo, wiring
from amaranth.lib.wiring import In, Out

from flightforge import isa
from flightforge.arch import ArchConfig

from .bus import MemReadSignature
from .decode import Decoder, field, unit_bits, unit_members

IMEM_ADDR_BITS = 32
UNITS = tuple(isa.Unit)


def _classes(unit: isa.Unit) -> tuple[type[isa.Instruction], ...]:
    return tuple(c for c in isa.INSTRUCTION_TYPES.values() if c.UNIT == unit)


class Controller(wiring.Component):
    """Fetch/decode/dispatch and scoreboard; ``unit_<name>`` drive the four units."""

    def __init__(self, arch: ArchConfig) -> None:
        self.arch = arch
        members = {
            "start": In(1), "halted": Out(1), "illegal": Out(1), "token_error": Out(1),
            "pc": Out(isa.DIM_BITS * 2),
            "imem": Out(MemReadSignature(IMEM_ADDR_BITS, isa.WORD_BITS // 8)),
        }
        for u in UNITS:
            members[f"unit_{u.name.lower()}"] = In(wiring.Signature(unit_members(u)))
        super().__init__(members)

    def elaborate(self, platform) -> Module:
        m = Module()
        depth = self.arch.token_depth
        m.submodules.decoder = dec = Decoder()
        word = Signal(isa.INSTR_BITS)
        m.d.comb += dec.word.eq(word)
        ports = {u: getattr(self, f"unit_{u.name.lower()}") for u in UNITS}
        queues = {}
        for u in UNITS:
            queues[u] = q = fifo.SyncFIFOBuffered(width=unit_bits(u), depth=self.arch.queue_depth)
            m.submodules[f"queue_{u.name.lower()}"] = q
            m.d.comb += q.w_data.eq(word)

        # --- scoreboard -------------------------------------------------------------------
        tok = {(v, u): Signal(range(depth + 1), name=f"tok_{v.name}_{u.name}")
               for v in UNITS for u in UNITS if v != u}
        running = {u: Signal(name=f"running_{u.name}") for u in UNITS}
        released = {u: Signal(isa.MASK_BITS, name=f"release_{u.name}") for u in UNITS}
        start = {u: Signal(name=f"start_{u.name}") for u in UNITS}
        for u in UNITS:
            q = queues[u]
            head = q.r_data
            wait = field(head, _classes(u), head[:isa.OPCODE_BITS], "wait")
            rel = field(head, _classes(u), head[:isa.OPCODE_BITS], "release")
            ok = ~running[u] & q.r_rdy
            for v in UNITS:
                if v != u:
                    ok &= ~wait[v] | (tok[v, u] != 0)
                    ok &= ~rel[v] | (tok[u, v] < depth)
            m.d.comb += [start[u].eq(ok), q.r_en.eq(ok), ports[u].start.eq(ok),
                         ports[u].instr.eq(head)]
            with m.If(ok):
                m.d.sync += [running[u].eq(1), released[u].eq(rel)]
            with m.Elif(ports[u].done):
                m.d.sync += running[u].eq(0)
        for (v, u), t in tok.items():
            head = queues[u].r_data
            waits = field(head, _classes(u), head[:isa.OPCODE_BITS], "wait")[v]
            inc = ports[v].done & released[v][u]
            dec_ = start[u] & waits
            m.d.sync += t.eq(t + inc - dec_)

        # --- fetch and dispatch -------------------------------------------------------------
        idle = 1
        for u in UNITS:
            idle &= (queues[u].level == 0) & ~running[u]
        tokens_left = 0
        for t in tok.values():
            tokens_left |= t != 0
        wcnt = Signal(range(isa.INSTR_WORDS))
        pc = self.pc
        with m.FSM():
            with m.State("IDLE"):
                with m.If(self.start):
                    m.d.sync += [pc.eq(0), self.halted.eq(0), self.illegal.eq(0),
                                 self.token_error.eq(0)]
                    m.next = "FETCH"
            with m.State("FETCH"):
                m.d.comb += [self.imem.cmd_valid.eq(1), self.imem.cmd_addr.eq(pc * isa.INSTR_BYTES),
                             self.imem.cmd_beats.eq(isa.INSTR_WORDS)]
                with m.If(self.imem.cmd_ready):
                    m.d.sync += wcnt.eq(0)
                    m.next = "RECV"
            with m.State("RECV"):
                m.d.comb += self.imem.data_ready.eq(1)
                with m.If(self.imem.data_valid):
                    m.d.sync += [word.word_select(wcnt, isa.WORD_BITS).eq(self.imem.data),
                                 wcnt.eq(wcnt + 1)]
                    with m.If(wcnt == isa.INSTR_WORDS - 1):
                        m.next = "DISPATCH"
            with m.State("DISPATCH"):
                with m.If(~dec.legal):
                    m.d.sync += [self.illegal.eq(1), self.halted.eq(1)]
                    m.next = "IDLE"
                with m.Elif(dec.is_halt):
                    with m.If(idle):
                        m.d.sync += [self.halted.eq(1), self.token_error.eq(tokens_left)]
                        m.next = "IDLE"
                with m.Elif(dec.is_sys):
                    m.d.sync += pc.eq(pc + 1)
                    m.next = "FETCH"
                with m.Else():
                    with m.Switch(dec.unit):
                        for u in UNITS:
                            with m.Case(u):
                                with m.If(queues[u].w_rdy):
                                    m.d.comb += queues[u].w_en.eq(1)
                                    m.d.sync += pc.eq(pc + 1)
                                    m.next = "FETCH"
        return m
