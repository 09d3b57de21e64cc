"""Properties of the ISA encoding: a bijection on valid instructions, loud on anything else.

The strategies build valid instructions of every type from the field specs in
``isa.layout`` and the consistency rules of each ``_check``, so almost every draw is
valid; ``assume`` only guards the rare combination they do not construct.
"""

from __future__ import annotations

import dataclasses
import itertools
import re

import pytest
from hypothesis import assume, given, settings
from hypothesis import strategies as st

from flightforge import isa
from flightforge.isa import (
    INSTR_BITS,
    INSTR_BYTES,
    INSTRUCTION_TYPES,
    OPCODE_BITS,
    DecodeError,
    DType,
    EncodeError,
    MiscOp,
    SparseMode,
    WPrec,
)

TYPES = list(INSTRUCTION_TYPES.values())


def _specs(cls: type[isa.Instruction]) -> dict[str, isa.FieldSpec]:
    return {name: spec for name, _, _, spec in isa.layout(cls)[1:]}


def _field(spec: isa.FieldSpec, lo: int = 0) -> st.SearchStrategy:
    if spec.enum is not None:
        return st.sampled_from(list(spec.enum))
    # Bias towards the edges of the range, where packing bugs show.
    top = (1 << spec.width) - 1
    return st.one_of(st.sampled_from([lo, top]), st.integers(lo, top))


def _mask(cls: type[isa.Instruction]) -> st.SearchStrategy[int]:
    if cls.UNIT is None:
        return st.just(0)
    other = ((1 << isa.NUM_UNITS) - 1) & ~(1 << cls.UNIT)
    return st.integers(0, other).map(lambda m: m & other)


@st.composite
def _plain(draw, cls, **fixed):
    """Every field drawn from its range, then ``fixed`` overrides, masks respected."""
    kw = {name: draw(_field(spec)) for name, spec in _specs(cls).items()}
    kw["wait"], kw["release"] = draw(_mask(cls)), draw(_mask(cls))
    kw.update(fixed)
    return cls(**kw)


@st.composite
def transfers(draw, cls):
    specs = _specs(cls)
    return draw(
        _plain(
            cls, rows=draw(_field(specs["rows"], 1)), row_bytes=draw(_field(specs["row_bytes"], 1))
        )
    )


@st.composite
def matmuls(draw, cls):
    specs = _specs(cls)
    wkn = draw(st.integers(0, 1))
    if wkn:
        sparse, wprec, gsz, colp = SparseMode.DENSE, WPrec.INT8, 0, 0
    else:
        sparse = draw(st.sampled_from(list(SparseMode)))
        wprec = draw(st.sampled_from(list(WPrec)))
        gsz = draw(st.integers(0, (1 << isa.GSZ_BITS) - 1))
        colp = 1 if gsz else draw(st.integers(0, 1))
    # K must be a multiple of the group size, the sparse block and, for dense INT4, of 2.
    unit = max(isa.group_size(gsz), sparse.m, 2 if wprec == WPrec.INT4 else 1)
    k = unit * draw(st.integers(1, ((1 << isa.DIM_BITS) - 1) // unit))
    fixed = dict(
        n=draw(_field(specs["n"], 1)), k=k, sparse=sparse, wprec=wprec, gsz=gsz, wkn=wkn, colp=colp
    )
    if cls is isa.MM:
        fixed["m"] = draw(_field(specs["m"], 1))
    return draw(_plain(cls, **fixed))


@st.composite
def miscs(draw):
    specs = _specs(isa.MISC)
    op = draw(st.sampled_from(list(MiscOp)))
    fixed = {
        "op": op,
        "rows": draw(_field(specs["rows"], 1)),
        "cols": draw(_field(specs["cols"], 1)),
    }
    if op.is_table:
        fixed["a_dt"] = DType.INT8
    elif op == MiscOp.MUL:
        fixed["a_dt"] = draw(st.sampled_from([DType.INT8, DType.INT16]))
        fixed["b_dt"] = draw(st.sampled_from([DType.INT8, DType.INT16]))
    elif op in (MiscOp.RMSNORM, MiscOp.LAYERNORM):
        fixed["a_dt"] = draw(st.sampled_from([DType.INT8, DType.INT16]))
    elif op == MiscOp.ROPE:
        head = 2 * draw(st.integers(1, 512))
        fixed["len"] = head
        fixed["cols"] = head * draw(st.integers(1, ((1 << isa.DIM_BITS) - 1) // head))
    return draw(_plain(isa.MISC, **fixed))


def systems():
    return st.builds(isa.SYS, op=st.sampled_from(list(isa.SysOp)))


STRATEGIES = {
    isa.SYS: systems(),
    isa.LD: transfers(isa.LD),
    isa.ST: transfers(isa.ST),
    isa.MM: matmuls(isa.MM),
    isa.MV: matmuls(isa.MV),
    isa.MISC: miscs(),
}
instructions = st.one_of(*STRATEGIES.values())


def test_strategies_cover_every_type():
    assert set(STRATEGIES) == set(TYPES)


@pytest.mark.parametrize("cls", TYPES, ids=lambda c: c.__name__)
@given(data=st.data())
def test_round_trip_of_every_type(cls, data):
    instr = data.draw(STRATEGIES[cls])
    instr.check()
    code = isa.encode([instr])
    assert len(code) == INSTR_BYTES
    back = isa.decode(code)
    assert back == [instr]
    assert isa.encode(back) == code  # stable: re-encoding gives the same bytes
    assert isa.disassemble(instr).startswith(cls.OPCODE.name)


@given(st.lists(instructions, max_size=12))
def test_round_trip_of_streams(instrs):
    code = isa.encode(instrs)
    assert len(code) == len(instrs) * INSTR_BYTES
    assert isa.decode(code) == instrs


@settings(max_examples=200)
@given(st.sampled_from(TYPES).flatmap(lambda cls: _plain(cls)))
def test_arbitrary_fields_encode_or_are_refused_cleanly(instr):
    """Unconstrained draws either encode and round-trip or raise EncodeError."""
    try:
        code = isa.encode([instr])
    except EncodeError as e:
        assert re.match(r"instruction 0: \w+", str(e))
        return
    assert isa.decode(code) == [instr]


def _int_fields(cls):
    return [(cls, name, spec) for name, spec in _specs(cls).items() if spec.enum is None]


INT_FIELDS = [f for cls in TYPES for f in _int_fields(cls)]


@pytest.mark.parametrize(
    "cls,name,spec", INT_FIELDS, ids=[f"{cls.__name__}.{name}" for cls, name, _ in INT_FIELDS]
)
@settings(max_examples=15)
@given(data=st.data())
def test_out_of_range_field_is_refused_naming_index_and_field(cls, name, spec, data):
    good = data.draw(st.lists(instructions, max_size=3))
    instr = data.draw(STRATEGIES[cls])
    bad_value = data.draw(
        st.one_of(st.integers(1 << spec.width, 1 << (spec.width + 8)), st.integers(-(1 << 20), -1))
    )
    bad = dataclasses.replace(instr, **{name: bad_value})
    with pytest.raises(EncodeError, match=rf"^instruction {len(good)}: {cls.__name__}\.{name}: "):
        isa.encode([*good, bad])


@pytest.mark.parametrize("cls", TYPES, ids=lambda c: c.__name__)
def test_invalid_enum_value_is_refused_naming_field(cls):
    for name, spec in _specs(cls).items():
        if spec.enum is None:
            continue
        instr = dataclasses.replace(_example(cls), **{name: max(spec.enum) + 1})
        match = rf"^instruction 0: {cls.__name__}\.{name}: .* is not a "
        with pytest.raises(EncodeError, match=match):
            isa.encode([instr])


@pytest.mark.parametrize("cls", [c for c in TYPES if c.UNIT is not None], ids=lambda c: c.__name__)
@pytest.mark.parametrize("field", ["wait", "release"])
def test_mask_naming_its_own_unit_is_refused(cls, field):
    instr = dataclasses.replace(_example(cls), **{field: 1 << cls.UNIT})
    with pytest.raises(EncodeError, match=rf"{cls.__name__}\.{field}: names its own unit"):
        isa.encode([instr])


def test_sys_with_masks_is_refused():
    with pytest.raises(EncodeError, match="SYS: wait and release must be 0"):
        isa.encode([isa.SYS(wait=1)])


@pytest.mark.parametrize(
    "instr,match",
    [
        (isa.LD(rows=0, row_bytes=4), r"LD\.rows: must be at least 1"),
        (
            isa.MM(m=1, n=1, k=24, sparse=SparseMode.S4_16),
            r"MM\.k: 24 is not a multiple of the sparse block m=16",
        ),
        (isa.MV(n=1, k=32, gsz=1), r"MV\.gsz: group scales need per-column records"),
        (isa.MV(n=1, k=24, gsz=1, colp=1), r"MV\.gsz: K=24 is not a multiple of the group size 16"),
        (isa.MV(n=1, k=3, wprec=WPrec.INT4), r"MV\.k: INT4 dense weights need an even K"),
        (
            isa.MV(n=1, k=16, wkn=1, wprec=WPrec.INT4),
            r"MV\.wkn: a \[K\]\[N\] weight must be dense INT8",
        ),
        (
            isa.MISC(op=MiscOp.SILU, rows=1, cols=1, a_dt=DType.INT16),
            r"MISC\.a_dt: SILU .* needs INT8",
        ),
        (isa.MISC(op=MiscOp.ROPE, rows=1, cols=12, len=8), r"MISC\.len: ROPE head dimension 8"),
    ],
)
def test_inconsistent_fields_are_refused(instr, match):
    with pytest.raises(EncodeError, match=match):
        isa.encode([instr])


def _example(cls):
    return {
        isa.SYS: isa.SYS(op=isa.SysOp.HALT),
        isa.LD: isa.LD(rows=1, row_bytes=1),
        isa.ST: isa.ST(rows=1, row_bytes=1),
        isa.MM: isa.MM(m=1, n=1, k=1),
        isa.MV: isa.MV(n=1, k=1),
        isa.MISC: isa.MISC(rows=1, cols=1),
    }[cls]


@pytest.mark.parametrize("cls", TYPES, ids=lambda c: c.__name__)
def test_layout_is_contiguous_and_fits(cls):
    rows = isa.layout(cls)
    assert rows[0][:3] == ("opcode", 0, OPCODE_BITS)
    for (_, lsb, width, _), (_, nxt, _, _) in itertools.pairwise(rows):
        assert lsb + width == nxt
    assert rows[-1][1] + rows[-1][2] <= INSTR_BITS
    assert [r[0] for r in rows[1:]] == [f.name for f in dataclasses.fields(cls)]


@given(
    st.integers(max(isa.Opcode) + 1, (1 << OPCODE_BITS) - 1),
    st.integers(0, 3),
    st.integers(0, (1 << (INSTR_BITS - OPCODE_BITS)) - 1),
)
def test_unknown_opcode_is_refused(op, index, rest):
    word = (rest << OPCODE_BITS | op).to_bytes(INSTR_BYTES, "little")
    code = isa.encode([isa.SYS()] * index) + word
    where = rf"^instruction {index} \(byte offset {index * INSTR_BYTES}\)"
    with pytest.raises(DecodeError, match=rf"{where}: unknown opcode {op}$"):
        isa.decode(code)


@given(st.lists(instructions, min_size=1, max_size=4), st.data())
def test_truncated_stream_is_refused(instrs, data):
    code = isa.encode(instrs)
    cut = data.draw(st.integers(1, len(code) - 1).filter(lambda c: c % INSTR_BYTES))
    with pytest.raises(DecodeError, match="is truncated: not a multiple of"):
        isa.decode(code[:cut])


@given(instructions, st.data())
def test_nonzero_reserved_bits_are_refused(instr, data):
    rows = isa.layout(type(instr))
    used = rows[-1][1] + rows[-1][2]
    assume(used < INSTR_BITS)
    bit = data.draw(st.integers(used, INSTR_BITS - 1))
    word = isa.encode_word(instr) | 1 << bit
    match = rf"^instruction 0 .*reserved bits {used}\.\.{INSTR_BITS - 1} are not zero"
    with pytest.raises(DecodeError, match=match):
        isa.decode(word.to_bytes(INSTR_BYTES, "little"))


def test_every_type_leaves_reserved_bits():
    """Reserved bits are what catches most corruptions; every type must have some."""
    for cls in TYPES:
        rows = isa.layout(cls)
        assert rows[-1][1] + rows[-1][2] < INSTR_BITS, cls.__name__


@given(STRATEGIES[isa.LD])
def test_decoding_refuses_words_that_break_a_rule(instr):
    """A corrupted field that breaks a consistency rule is caught at decode, with its index."""
    rows_lsb = next(lsb for name, lsb, _, _ in isa.layout(isa.LD) if name == "rows")
    word = isa.encode_word(instr) & ~(((1 << isa.DIM_BITS) - 1) << rows_lsb)  # rows = 0
    code = isa.encode([isa.SYS()]) + word.to_bytes(INSTR_BYTES, "little")
    with pytest.raises(DecodeError, match=r"^instruction 1 .*LD\.rows: must be at least 1"):
        isa.decode(code)


def test_invalid_enum_value_in_a_word_is_refused():
    _, lsb, _, _ = next(r for r in isa.layout(isa.SYS) if r[0] == "op")
    word = int(isa.Opcode.SYS) | (max(isa.SysOp) + 1) << lsb
    with pytest.raises(DecodeError, match=r"\(SYS\): field op has invalid value 2"):
        isa.decode(word.to_bytes(INSTR_BYTES, "little"))


def test_group_size_codes():
    for code in range(1 << isa.GSZ_BITS):
        assert isa.gsz_code(isa.group_size(code)) == code
    with pytest.raises(ValueError, match="group size must be 0 or a power of two"):
        isa.gsz_code(48)


@settings(max_examples=300, deadline=None)
@given(data=st.data())
def test_buffer_sides_read_only_the_fields_the_rtl_tabulates(data):
    """hw.decode.buffer_sides tabulates isa.buffer_sides over isa.SIDE_FIELDS only: any
    other field must not change an instruction's sides."""
    cls = data.draw(st.sampled_from(list(isa.SIDE_FIELDS)))
    ins = data.draw(STRATEGIES[cls])
    kept = {n: getattr(ins, n) for n in isa.SIDE_FIELDS[cls]}
    assert isa.buffer_sides(ins) == isa.buffer_sides(cls(**kept))
