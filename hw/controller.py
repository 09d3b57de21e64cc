"""Instruction buffer, decode, in-order dispatch and the wait/release scoreboard.

This is the control machine of :mod:`flightforge.sim.dispatch` in hardware, cycle for
cycle (model time ``t`` is the ``t``-th cycle after the one in which ``start`` is seen):

- the section's code sits in an on-chip instruction buffer of ``IMEM_DEPTH`` whole
  instructions (written by the host through ``imem_we``/``imem_addr``/``imem_wdata``
  while the core is idle) with a one-cycle read: the buffer is read one instruction
  ahead, so dispatch can take one instruction every cycle;
- dispatch moves at most one instruction per cycle, in order, into its unit's issue
  queue (``queue_depth`` entries); NOP retires at dispatch; HALT waits until every
  queue is empty and every unit idle, then ends the section (``halted``), flagging
  ``token_error`` if any token counter is not back at zero;
- a head starts when its unit is idle, every counter it waits on is non-zero and every
  counter it releases into is below ``token_depth`` (after the consumption of units
  started earlier in the same cycle, in unit order, as the model's start loop); an
  instruction dispatched into an empty queue is itself the head and may start in the
  same cycle. A head also waits while another unit's running instruction holds a buffer
  side it needs (:func:`flightforge.isa.buffer_sides`, computed from the head's fields by
  :func:`.decode.buffer_sides`; sides claimed by units started earlier in the cycle
  count). Starting consumes the waited tokens and claims the sides; completion (the
  unit's ``done``, in its last busy cycle) adds the released tokens and frees the sides
  for the next cycle.

An unknown opcode, an enum field out of range or non-zero reserved bits stop the
section with ``illegal`` set. A deadlocked program simply stops making progress; the
simulation harness reports it by its cycle limit.
"""

from __future__ import annotations

from amaranth import Const, Module, Mux, Signal
from amaranth.lib import memory, wiring
from amaranth.lib.wiring import In, Out

from flightforge import isa
from flightforge.arch import ArchConfig

from .decode import Decoder, buffer_sides, field, unit_bits, unit_classes, unit_members

IMEM_DEPTH = 4096  #: instructions the on-chip instruction buffer holds (one section)
IMEM_ADDR_BITS = (IMEM_DEPTH - 1).bit_length()
UNITS = tuple(isa.Unit)


class Controller(wiring.Component):
    """Dispatch and scoreboard; ``unit_<name>`` drive the four units."""

    def __init__(self, arch: ArchConfig) -> None:
        self.arch = arch
        members = {
            "start": In(1),
            "halted": Out(1),
            "illegal": Out(1),
            "token_error": Out(1),
            "pc": Out(IMEM_ADDR_BITS + 1),
            "imem_we": In(1),
            "imem_addr": In(IMEM_ADDR_BITS),
            "imem_wdata": In(isa.INSTR_BITS),
        }
        for u in UNITS:
            members[f"unit_{u.name.lower()}"] = In(wiring.Signature(unit_members(u)))
        super().__init__(members)

    def elaborate(self, platform) -> Module:
        m = Module()
        depth = self.arch.token_depth
        qd = self.arch.queue_depth
        m.submodules.decoder = dec = Decoder()
        m.submodules.imem = imem = memory.Memory(shape=isa.INSTR_BITS, depth=IMEM_DEPTH, init=[])
        wr, rd = imem.write_port(), imem.read_port()
        m.d.comb += [
            wr.en.eq(self.imem_we),
            wr.addr.eq(self.imem_addr),
            wr.data.eq(self.imem_wdata),
        ]
        word = rd.data
        m.d.comb += dec.word.eq(word)
        ports = {u: getattr(self, f"unit_{u.name.lower()}") for u in UNITS}
        run = Signal()  # a section is running: ``word`` is the instruction at ``pc``
        pc = self.pc

        # --- dispatch decision (before this cycle's starts, as in the model) ------------
        cnt = {u: Signal(range(qd + 1), name=f"cnt_{u.name}") for u in UNITS}
        ents = {u: [Signal(unit_bits(u), name=f"q_{u.name}_{i}") for i in range(qd)] for u in UNITS}
        running = {u: Signal(name=f"running_{u.name}") for u in UNITS}
        released = {u: Signal(isa.MASK_BITS, name=f"release_{u.name}") for u in UNITS}
        holds = {u: Signal(isa.SIDE_BITS, name=f"holds_{u.name}") for u in UNITS}
        idle = 1
        for u in UNITS:
            idle &= (cnt[u] == 0) & ~running[u]
        disp = {u: Signal(name=f"disp_{u.name}") for u in UNITS}
        advance = Signal()
        is_unit = run & dec.legal & ~dec.is_sys
        for u in UNITS:
            m.d.comb += disp[u].eq(is_unit & (dec.unit == u) & (cnt[u] < qd))
            with m.If(disp[u]):
                m.d.comb += advance.eq(1)
        with m.If(run & dec.legal & dec.is_sys & ~dec.is_halt):
            m.d.comb += advance.eq(1)

        # --- scoreboard: heads, start rule in unit order --------------------------------
        tok = {
            (v, u): Signal(range(depth + 1), name=f"tok_{v.name}_{u.name}")
            for v in UNITS
            for u in UNITS
            if v != u
        }
        start = {u: Signal(name=f"start_{u.name}") for u in UNITS}
        heads, waits, needs = {}, {}, {}
        for u in UNITS:
            head = Signal(unit_bits(u), name=f"head_{u.name}")
            m.d.comb += head.eq(Mux(cnt[u] != 0, ents[u][0], word[: unit_bits(u)]))
            heads[u] = head
            waits[u] = field(head, unit_classes(u), head[: isa.OPCODE_BITS], "wait")
            needs[u] = Signal(isa.SIDE_BITS, name=f"needs_{u.name}")
            m.d.comb += needs[u].eq(buffer_sides(u, head))
        for k, u in enumerate(UNITS):
            head = heads[u]
            rel = field(head, unit_classes(u), head[: isa.OPCODE_BITS], "release")
            ok = ~running[u] & ((cnt[u] != 0) | disp[u])
            for v in UNITS:
                if v == u:
                    continue
                ok &= ~waits[u][v] | (tok[v, u] != 0)
                level = tok[u, v]
                if UNITS.index(v) < k:  # v started earlier in this cycle's loop
                    level = level - (start[v] & waits[v][u])
                ok &= ~rel[v] | (level < depth)
                taken = Mux(running[v], holds[v], 0)
                if UNITS.index(v) < k:
                    taken |= Mux(start[v], needs[v], 0)
                ok &= (needs[u] & taken) == 0
            m.d.comb += [start[u].eq(ok), ports[u].start.eq(ok), ports[u].instr.eq(head)]
            with m.If(ok):
                m.d.sync += [running[u].eq(1), released[u].eq(rel), holds[u].eq(needs[u])]
            with m.Elif(ports[u].done):
                m.d.sync += running[u].eq(0)
            # Queue update: pop the head if it started from the queue; push the dispatched
            # instruction unless it started directly.
            pop = ok & (cnt[u] != 0)
            push = disp[u] & ~(ok & (cnt[u] == 0))
            tail = cnt[u] - pop
            for i in range(qd):
                nxt = ents[u][i + 1] if i + 1 < qd else Const(0, unit_bits(u))
                with m.If(push & (tail == i)):
                    m.d.sync += ents[u][i].eq(word[: unit_bits(u)])
                with m.Elif(pop):
                    m.d.sync += ents[u][i].eq(nxt)
            m.d.sync += cnt[u].eq(cnt[u] + push - pop)
        for (v, u), t in tok.items():
            inc = ports[v].done & released[v][u]
            dec_ = start[u] & waits[u][v]
            m.d.sync += t.eq(t + inc - dec_)

        # --- instruction buffer read and section control ----------------------------------
        tokens_left = 0
        for t in tok.values():
            tokens_left |= t != 0
        m.d.comb += rd.addr.eq(Mux(run, pc + advance, 0))
        with m.If(run):
            m.d.sync += pc.eq(pc + advance)
            with m.If(~dec.legal):
                m.d.sync += [self.illegal.eq(1), self.halted.eq(1), run.eq(0)]
            with m.Elif(dec.is_halt & idle):
                m.d.sync += [self.halted.eq(1), self.token_error.eq(tokens_left), run.eq(0)]
        with m.Elif(self.start):
            m.d.sync += [
                pc.eq(0),
                run.eq(1),
                self.halted.eq(0),
                self.illegal.eq(0),
                self.token_error.eq(0),
            ]
        return m
