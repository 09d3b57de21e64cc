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
  side it needs (:func:`flightforge.isa.buffer_sides`; sides claimed by units started
  earlier in the cycle count). Starting consumes the waited tokens and claims the sides;
  completion (the unit's ``done``, in its last busy cycle) adds the released tokens and
  frees the sides for the next cycle;
- nothing in the dispatch decision or the start rule decodes an instruction word: the
  host's write into the buffer passes the word through the :class:`.decode.Decoder`, and
  the buffer keeps its :data:`.decode.PREDECODED` record (legal, SYS, HALT, unit, wait and
  release masks, buffer sides) beside it; an issue-queue entry keeps the masks and sides
  with the word. The start rule then compares registers (the head entry, token counters,
  ``holds_*``), which keeps the Controller's register-to-register paths short.

An unknown opcode, an enum field out of range or non-zero reserved bits stop the
section with ``illegal`` set. A deadlocked program simply stops making progress; the
simulation harness reports it by its cycle limit.
"""

from __future__ import annotations

from amaranth import Cat, Const, Module, Mux, Signal
from amaranth.lib import data, memory, wiring
from amaranth.lib.wiring import In, Out

from flightforge import isa
from flightforge.arch import ArchConfig

from .decode import PREDECODED, Decoder, unit_bits, unit_members

IMEM_DEPTH = 4096  #: instructions the on-chip instruction buffer holds (one section)
IMEM_ADDR_BITS = (IMEM_DEPTH - 1).bit_length()
UNITS = tuple(isa.Unit)


def _entry_bits(unit: isa.Unit) -> int:
    """An issue-queue entry: the instruction's bits for its unit, then its wait and
    release masks and buffer sides (from :data:`.decode.PREDECODED`)."""
    return unit_bits(unit) + 2 * isa.MASK_BITS + isa.SIDE_BITS


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
        # The buffer keeps each instruction's :data:`.decode.PREDECODED` record beside it,
        # decoded on its way in, so dispatch and the start rule read registers only.
        m.submodules.decoder = dec = Decoder()
        m.submodules.imem = imem = memory.Memory(
            shape=isa.INSTR_BITS + PREDECODED.size, depth=IMEM_DEPTH, init=[]
        )
        wr, rd = imem.write_port(), imem.read_port()
        m.d.comb += [
            dec.word.eq(self.imem_wdata),
            wr.en.eq(self.imem_we),
            wr.addr.eq(self.imem_addr),
            wr.data.eq(Cat(self.imem_wdata, dec.info)),
        ]
        word = rd.data[: isa.INSTR_BITS]
        info = data.View(PREDECODED, rd.data[isa.INSTR_BITS :])
        ports = {u: getattr(self, f"unit_{u.name.lower()}") for u in UNITS}
        run = Signal()  # a section is running: ``word`` is the instruction at ``pc``
        pc = self.pc

        # --- dispatch decision (before this cycle's starts, as in the model) ------------
        cnt = {u: Signal(range(qd + 1), name=f"cnt_{u.name}") for u in UNITS}
        ents = {
            u: [Signal(_entry_bits(u), name=f"q_{u.name}_{i}") for i in range(qd)] for u in UNITS
        }
        running = {u: Signal(name=f"running_{u.name}") for u in UNITS}
        released = {u: Signal(isa.MASK_BITS, name=f"release_{u.name}") for u in UNITS}
        holds = {u: Signal(isa.SIDE_BITS, name=f"holds_{u.name}") for u in UNITS}
        idle = 1
        for u in UNITS:
            idle &= (cnt[u] == 0) & ~running[u]
        disp = {u: Signal(name=f"disp_{u.name}") for u in UNITS}
        advance = Signal()
        is_unit = run & info.legal & ~info.is_sys
        for u in UNITS:
            m.d.comb += disp[u].eq(is_unit & (info.unit == u) & (cnt[u] < qd))
            with m.If(disp[u]):
                m.d.comb += advance.eq(1)
        with m.If(run & info.legal & info.is_sys & ~info.is_halt):
            m.d.comb += advance.eq(1)

        # --- scoreboard: heads, start rule in unit order --------------------------------
        tok = {
            (v, u): Signal(range(depth + 1), name=f"tok_{v.name}_{u.name}")
            for v in UNITS
            for u in UNITS
            if v != u
        }
        start = {u: Signal(name=f"start_{u.name}") for u in UNITS}
        heads, waits, rels, needs, incoming = {}, {}, {}, {}, {}
        for u in UNITS:
            # The entry a dispatched instruction makes: its word and its start-rule fields.
            incoming[u] = Cat(word[: unit_bits(u)], info.wait, info.release, info.sides)
            head = Signal(_entry_bits(u), name=f"head_{u.name}")
            m.d.comb += head.eq(Mux(cnt[u] != 0, ents[u][0], incoming[u]))
            ub = unit_bits(u)
            heads[u] = head[:ub]
            waits[u] = head[ub : ub + isa.MASK_BITS]
            rels[u] = head[ub + isa.MASK_BITS : ub + 2 * isa.MASK_BITS]
            needs[u] = head[ub + 2 * isa.MASK_BITS :]
        for k, u in enumerate(UNITS):
            rel = rels[u]
            # What does not depend on this cycle's other starts (``base``), then, per unit
            # v started earlier in the loop, a multiplexer on v's start between the
            # condition if v starts (``if_v``) and if it does not: the chain through the
            # earlier units' starts is one multiplexer per unit.
            base = ~running[u] & ((cnt[u] != 0) | disp[u])
            base_sig = Signal(name=f"base_{u.name}")
            ok = base_sig
            for v in UNITS:
                if v == u:
                    continue
                base &= ~waits[u][v] | (tok[v, u] != 0)
                full = rel[v] & (tok[u, v] >= depth)  # no room to release into v ...
                base &= (needs[u] & Mux(running[v], holds[v], 0)) == 0
                if UNITS.index(v) > k:
                    base &= ~full
                    continue
                # ... unless v's start in this cycle consumes one of those tokens; and v's
                # start claims its sides.
                if_v = Signal(name=f"if_{v.name}_{u.name}")
                m.d.comb += if_v.eq(((needs[u] & needs[v]) == 0) & (~full | waits[v][u]))
                ok = Mux(start[v], if_v, ~full) & ok
            m.d.comb += base_sig.eq(base)
            m.d.comb += [start[u].eq(ok), ports[u].start.eq(ok), ports[u].instr.eq(heads[u])]
            with m.If(ok):
                m.d.sync += [running[u].eq(1), released[u].eq(rel), holds[u].eq(needs[u])]
            with m.Elif(ports[u].done):
                m.d.sync += running[u].eq(0)
            # Queue update: pop the head if it started from the queue; push the dispatched
            # instruction unless it started directly, into the first free entry after the
            # pop (``cnt - pop``, compared without a subtractor).
            pop = ok & (cnt[u] != 0)
            push = disp[u] & ~(ok & (cnt[u] == 0))
            for i in range(qd):
                nxt = ents[u][i + 1] if i + 1 < qd else Const(0, _entry_bits(u))
                tail_here = Mux(pop, cnt[u] == i + 1, cnt[u] == i)
                with m.If(push & tail_here):
                    m.d.sync += ents[u][i].eq(incoming[u])
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
            with m.If(~info.legal):
                m.d.sync += [self.illegal.eq(1), self.halted.eq(1), run.eq(0)]
            with m.Elif(info.is_halt & idle):
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
