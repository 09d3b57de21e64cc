"""The RTL decoder against isa.decode on random words (Amaranth's Python simulator)."""

import dataclasses

import numpy as np
import pytest
from amaranth.sim import Simulator

from flightforge import isa
from flightforge.hw.decode import Decoder, used_bits, view


def _random_field(rng: np.random.Generator, spec: isa.FieldSpec) -> int:
    if spec.enum is not None and rng.random() < 0.9:
        return int(rng.choice([int(e) for e in spec.enum]))
    return int(rng.integers(0, 1 << spec.width, dtype=np.uint64))


def _random_valid(rng: np.random.Generator, cls: type[isa.Instruction]) -> isa.Instruction:
    """Random fields until the instruction passes ``check``; small dims for MM/MV rules."""
    while True:
        kw = {name: _random_field(rng, spec) for name, spec in cls.field_specs()}
        if cls.UNIT is None:
            kw["wait"] = kw["release"] = 0
        else:
            own = ~(1 << cls.UNIT)
            kw["wait"] &= own
            kw["release"] &= own
        if issubclass(cls, (isa.MM, isa.MV)):
            kw.update(
                k=16 * int(rng.integers(1, 64)),
                gsz=int(rng.integers(0, 3)),
                wkn=int(rng.random() < 0.2),
            )
            if kw["gsz"]:
                kw["colp"] = 1
        if cls is isa.MISC and kw["op"] == isa.MiscOp.ROPE:
            kw["len"] = 2
        try:
            ins = cls(
                **{
                    k: (spec.enum(v) if spec.enum and v in set(spec.enum) else v)
                    for (k, spec), v in zip(cls.field_specs(), kw.values(), strict=True)
                }
            )
            ins.check()
            return ins
        except (isa.EncodeError, ValueError):
            continue


def _words(seed: int) -> list[tuple[int, isa.Instruction | None]]:
    rng = np.random.default_rng(seed)
    out = []
    for cls in isa.INSTRUCTION_TYPES.values():
        for _ in range(12):
            ins = _random_valid(rng, cls)
            out.append((isa.encode_word(ins), ins))
    for _ in range(120):  # raw words: any opcode, any fields, sometimes reserved bits set
        word = int.from_bytes(rng.bytes(isa.INSTR_BYTES), "little")
        cls = isa.INSTRUCTION_TYPES.get(isa.Opcode(word & 15)) if word & 15 < 6 else None
        if cls is not None and rng.random() < 0.7:
            word &= (1 << used_bits(cls)) - 1
        try:
            ins = isa.decode_word(word)
        except isa.DecodeError:
            ins = None
        out.append((word, ins))
    return out


@pytest.mark.parametrize("seed", [0, 1])
def test_decoder_matches_isa(seed: int) -> None:
    dut = Decoder()
    cases = _words(seed)

    async def bench(ctx) -> None:
        structural_rejects = 0
        for word, ins in cases:
            ctx.set(dut.word, word)
            legal = ctx.get(dut.legal)
            if ins is None:
                # isa.decode also applies semantic checks the hardware leaves to the
                # encoder; the decoder must reject whatever fails structurally.
                try:
                    isa.INSTRUCTION_TYPES[isa.Opcode(word & 15)]
                    op_known = True
                except ValueError:
                    op_known = False
                if not op_known:
                    assert not legal, f"unknown opcode {word & 15} accepted"
                structural_rejects += not legal
                continue
            assert legal, f"legal {ins} rejected (word {word:#x})"
            assert ctx.get(dut.opcode) == ins.OPCODE
            assert ctx.get(dut.is_sys) == (ins.UNIT is None)
            if ins.UNIT is not None:
                assert ctx.get(dut.unit) == ins.UNIT
            assert ctx.get(dut.is_halt) == (isinstance(ins, isa.SYS) and ins.op == isa.SysOp.HALT)
            info = ctx.get(dut.info)  # the record the controller keeps beside the word
            assert (info.legal, info.is_sys, info.is_halt) == (
                1,
                ins.UNIT is None,
                ctx.get(dut.is_halt),
            )
            if ins.UNIT is not None:
                assert info.unit == ins.UNIT
            assert info.wait == getattr(ins, "wait", 0) and info.release == getattr(
                ins, "release", 0
            )
            assert info.sides == isa.buffer_sides(ins), f"{ins}: sides {info.sides:#x}"
            v = view(type(ins), dut.word)
            for f in dataclasses.fields(ins):
                got, want = ctx.get(v[f.name]), int(getattr(ins, f.name))
                assert got == want, f"{type(ins).__name__}.{f.name}: got {got}, want {want}"
        assert structural_rejects > 0

    sim = Simulator(dut)
    sim.add_testbench(bench)
    sim.run()


def test_reserved_bits_are_illegal() -> None:
    dut = Decoder()
    good = isa.encode_word(isa.LD(rows=1, row_bytes=1))

    async def bench(ctx) -> None:
        ctx.set(dut.word, good)
        assert ctx.get(dut.legal)
        ctx.set(dut.word, good | 1 << (isa.INSTR_BITS - 1))
        assert not ctx.get(dut.legal)
        ctx.set(
            dut.word, good | 7 << next(lsb for n, lsb, _, _ in isa.layout(isa.LD) if n == "buf")
        )
        assert not ctx.get(dut.legal), "buf=7 is no Buf member"

    sim = Simulator(dut)
    sim.add_testbench(bench)
    sim.run()


def test_length_register_applies_the_dynamic_fields() -> None:
    """``resolve_dynamic`` (the core's length register adders) gives the same word as
    :func:`flightforge.isa.resolve` for random dynamic LD, ST and MISC instructions."""
    from amaranth import Module, Signal

    from flightforge.hw.decode import resolve_dynamic, unit_bits

    rng = np.random.default_rng(5)
    cases = {
        isa.Unit.LD: isa.LD(
            buf=isa.Buf.ACT,
            dst=64,
            src=4096,
            rows=2,
            row_bytes=96,
            src_stride=128,
            dst_stride=96,
            dyn_step=96,
        ),
        isa.Unit.ST: isa.ST(buf=isa.Buf.ACT, src=0, dst=1 << 20, rows=1, row_bytes=64, dyn_step=64),
        isa.Unit.SFU: isa.MISC(
            op=isa.MiscOp.ROPE,
            rows=1,
            cols=32,
            a_addr=256,
            d_addr=512,
            len=16,
            a_step=32,
            pos=3,
            dyn_pos=1,
        ),
    }
    for unit, ins in cases.items():
        m = Module()
        word = Signal(unit_bits(unit))
        d = Signal(isa.DIM_BITS)
        out = resolve_dynamic(m, unit, word, d)

        async def bench(ctx, ins=ins, word=word, d=d, out=out) -> None:
            for dv in [0, 1, *rng.integers(2, 200, 4).tolist()]:
                ctx.set(word, int.from_bytes(isa.encode([ins]), "little") & ((1 << len(word)) - 1))
                ctx.set(d, dv)
                # the hardware always clears the steps (the units never read them)
                res = dataclasses.replace(
                    isa.resolve(ins, dv), **{step: 0 for step, _ in isa.DYNAMIC_FIELDS[type(ins)]}
                )
                want = int.from_bytes(isa.encode([res]), "little")
                assert ctx.get(out) == want & ((1 << len(out)) - 1), f"{ins} with D={dv}"

        sim = Simulator(m)
        sim.add_testbench(bench)
        sim.run()


def test_buffer_sides_table_matches_isa() -> None:
    """The controller's table of the buffer sides a head needs (``hw.decode.buffer_sides``)
    gives ``isa.buffer_sides`` for random valid instructions of every unit."""
    from amaranth import Module, Signal

    from flightforge.hw.decode import buffer_sides, unit_bits

    rng = np.random.default_rng(11)
    for unit in isa.Unit:
        m = Module()
        word = Signal(unit_bits(unit))
        out = Signal(isa.SIDE_BITS)
        m.d.comb += out.eq(buffer_sides(unit, word))
        classes = [c for c in isa.INSTRUCTION_TYPES.values() if c.UNIT == unit]
        cases = [_random_valid(rng, cls) for cls in classes for _ in range(40)]

        async def bench(ctx, word=word, out=out, cases=cases) -> None:
            for ins in cases:
                ctx.set(word, isa.encode_word(ins) & ((1 << len(word)) - 1))
                got, want = ctx.get(out), isa.buffer_sides(ins)
                assert got == want, f"{ins}: {isa.sides_str(got)} != {isa.sides_str(want)}"

        sim = Simulator(m)
        sim.add_testbench(bench)
        sim.run()
