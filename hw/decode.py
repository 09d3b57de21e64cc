"""Instruction decode derived from :func:`flightforge.isa.layout`: no field position is
written by hand here. A field's bits are wherever the ISA's layout puts them, so a width
change in isa.py changes the RTL at the next elaboration.
"""

import itertools
from functools import cache

from amaranth import Cat, Const, Module, Mux, Signal, Value, unsigned
from amaranth.lib import data, wiring
from amaranth.lib.wiring import In, Out

from flightforge import isa

UNIT_BITS = max(1, (isa.NUM_UNITS - 1).bit_length())


@cache
def instr_layout(cls: type[isa.Instruction]) -> data.FlexibleLayout:
    """The instruction word of ``cls`` as a layout: every field at its ISA bit offset."""
    return data.FlexibleLayout(
        isa.INSTR_BITS,
        {name: data.Field(unsigned(width), lsb) for name, lsb, width, _ in isa.layout(cls)},
    )


def used_bits(cls: type[isa.Instruction]) -> int:
    """Bits up to the last field of ``cls``; the rest are reserved (zero)."""
    _, lsb, width, _ = isa.layout(cls)[-1]
    return lsb + width


def unit_bits(unit: isa.Unit) -> int:
    """Bits a unit's issue queue keeps of an instruction: the widest of its classes."""
    return max(used_bits(c) for c in isa.INSTRUCTION_TYPES.values() if c.UNIT == unit)


def view(cls: type[isa.Instruction], word: Value) -> data.View:
    """``word`` (at least :func:`used_bits` wide) seen as an instruction of ``cls``."""
    word = Value.cast(word)
    if len(word) < isa.INSTR_BITS:
        word = Cat(word, Const(0, isa.INSTR_BITS - len(word)))
    return data.View(instr_layout(cls), word)


def field(
    word: Value, classes: tuple[type[isa.Instruction], ...], opcode: Value, name: str
) -> Value:
    """Field ``name`` of a word that is one of ``classes`` (chosen by ``opcode``).

    When every class places the field at the same bits this is a plain slice; otherwise
    a multiplexer on the opcode.
    """
    places = {
        cls: next((lsb, w) for n, lsb, w, _ in isa.layout(cls) if n == name) for cls in classes
    }
    first = view(classes[0], word)[name]
    if len(set(places.values())) == 1:
        return first
    out = first
    for cls in classes[1:]:
        out = Mux(opcode == cls.OPCODE, view(cls, word)[name], out)
    return out


#: What the controller's dispatch and start rule need of an instruction, decoded once
#: when the instruction enters the controller (written beside the word into its buffer),
#: so that neither dispatch nor the start rule decodes a word: they compare registers.
#: ``wait``/``release``/``sides`` are 0 for SYS.
PREDECODED = data.StructLayout(
    {
        "legal": 1,
        "is_sys": 1,
        "is_halt": 1,
        "unit": UNIT_BITS,
        "wait": isa.MASK_BITS,
        "release": isa.MASK_BITS,
        "sides": isa.SIDE_BITS,
    }
)


class Decoder(wiring.Component):
    """Classifies an instruction word: opcode, unit, HALT/NOP, whether it is legal, and
    (``info``, :data:`PREDECODED`) what dispatch and the start rule read of it.

    ``legal`` is 0 for an unknown opcode, an enum field holding no member, or reserved
    bits that are not zero: the structural checks of :func:`flightforge.isa.decode_word`.
    (The semantic checks of ``Instruction.check``, like K being a multiple of the sparse
    block, are the compiler's and the encoder's job and are not repeated in hardware.)
    """

    word: In(isa.INSTR_BITS)
    opcode: Out(isa.OPCODE_BITS)
    unit: Out(UNIT_BITS)
    is_sys: Out(1)
    is_halt: Out(1)
    legal: Out(1)
    info: Out(PREDECODED)

    def elaborate(self, platform) -> Module:
        m = Module()
        w = self.word
        m.d.comb += self.opcode.eq(w[: isa.OPCODE_BITS])
        sides = Const(0, isa.SIDE_BITS)
        for u in isa.Unit:  # each unit's table is 0 unless the opcode is one of its classes
            sides |= buffer_sides(u, w)
        m.d.comb += [
            self.info.legal.eq(self.legal),
            self.info.is_sys.eq(self.is_sys),
            self.info.is_halt.eq(self.is_halt),
            self.info.unit.eq(self.unit),
            self.info.sides.eq(sides),
        ]
        with m.Switch(self.opcode):
            for op, cls in isa.INSTRUCTION_TYPES.items():
                with m.Case(op):
                    v = view(cls, w)
                    ok = w[used_bits(cls) :] == 0
                    for name, _, _, spec in isa.layout(cls)[1:]:
                        if spec.enum is not None:
                            members = [int(e) for e in spec.enum]
                            ok &= v[name].matches(*members)
                    m.d.comb += self.legal.eq(ok)
                    if cls.UNIT is None:
                        m.d.comb += [self.is_sys.eq(1), self.is_halt.eq(v.op == isa.SysOp.HALT)]
                    else:
                        m.d.comb += [
                            self.unit.eq(cls.UNIT),
                            self.info.wait.eq(v.wait),
                            self.info.release.eq(v.release),
                        ]
        return m


def unit_classes(unit: isa.Unit) -> tuple[type[isa.Instruction], ...]:
    return tuple(c for c in isa.INSTRUCTION_TYPES.values() if c.UNIT == unit)


def buffer_sides(unit: isa.Unit, word: Value) -> Value:
    """:func:`flightforge.isa.buffer_sides` of ``word``, an instruction of ``unit``.

    A table, not a second statement of the rule: the function is evaluated on every
    combination of the fields it reads (``isa.SIDE_FIELDS``: at most 12 per class), and
    the word's fields select the entry.
    """
    opcode = Value.cast(word)[: isa.OPCODE_BITS]
    out = Const(0, isa.SIDE_BITS)
    for cls in unit_classes(unit):
        names = isa.SIDE_FIELDS[cls]
        specs = {n: spec for n, _, _, spec in isa.layout(cls)}
        choices = [
            list(specs[n].enum) if specs[n].enum else range(1 << specs[n].width) for n in names
        ]
        fields = view(cls, word)
        table = Const(0, isa.SIDE_BITS)
        for combo in itertools.product(*choices):
            mask = isa.buffer_sides(cls(**dict(zip(names, combo, strict=True))))
            hit = Const(1, 1)
            for n, c in zip(names, combo, strict=True):
                hit &= Value.cast(fields[n]) == int(c)
            table = Mux(hit, mask, table)
        out = Mux(opcode == cls.OPCODE, table, out)
    return out


def unit_members(unit: isa.Unit) -> dict[str, wiring.Member]:
    """Ports every execution unit has towards the controller.

    ``start`` (one cycle) hands over ``instr``, which the unit latches; ``done`` pulses
    for one cycle when the instruction's effects are complete. A unit is started only
    when it is idle (the controller tracks this from ``start`` and ``done``).
    """
    return {"instr": In(unit_bits(unit)), "start": In(1), "done": Out(1)}


def _slice(cls: type[isa.Instruction], name: str) -> tuple[int, int]:
    return next((lsb, width) for n, lsb, width, _ in isa.layout(cls) if n == name)


def resolve_dynamic(m: Module, unit: isa.Unit, word: Value, d: Value) -> Value:
    """``word`` (an instruction for ``unit``) with its dynamic fields applied for ``D = d``:
    :data:`flightforge.isa.DYNAMIC_FIELDS` in hardware, the length register's adders.

    A sum past its field's width wraps; the host refuses such a run beforehand
    (:func:`flightforge.isa.resolve` raises).
    """
    word = Value.cast(word)
    classes = [c for c in isa.DYNAMIC_FIELDS if c.UNIT == unit]
    if not classes:
        return word
    # One unit's classes (MM and MV) hold their dynamic fields at the same bits, so one
    # set of adders serves them all.
    cls = classes[0]
    for other in classes[1:]:
        assert isa.DYNAMIC_FIELDS[other] == isa.DYNAMIC_FIELDS[cls] and all(
            _slice(other, f) == _slice(cls, f) for pair in isa.DYNAMIC_FIELDS[cls] for f in pair
        ), f"{other.__name__} and {cls.__name__} place their dynamic fields differently"
    out = Signal(isa.INSTR_BITS, name=f"{unit.name.lower()}_resolved")
    src, dst = view(cls, word), data.View(instr_layout(cls), out)
    m.d.comb += out.eq(word)
    for step, target in isa.DYNAMIC_FIELDS[cls]:
        m.d.comb += [dst[target].eq(src[target] + d * src[step]), dst[step].eq(0)]
    return out[: len(word)]
