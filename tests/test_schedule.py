"""Token insertion orders every cross-unit hazard, and adds no needless tokens."""

from __future__ import annotations

from hypothesis import given, settings
from hypothesis import strategies as st

from flightforge import isa
from flightforge.compiler.lower.schedule import TokenScheduler, unordered_hazards
from flightforge.isa import Buf, DType, MiscOp

REGION = 8  # bytes per region slot; small address spaces make conflicts frequent


def _ld(slot: int, ext: int) -> isa.Instruction:
    return isa.LD(buf=Buf.ACT, dst=slot * REGION, src=ext * REGION, rows=1, row_bytes=REGION)


def _st(slot: int, ext: int) -> isa.Instruction:
    return isa.ST(buf=Buf.ACT, src=slot * REGION, dst=ext * REGION, rows=1, row_bytes=REGION)


def _add(a: int, b: int, d: int) -> isa.Instruction:
    return isa.MISC(
        op=MiscOp.ADD,
        rows=1,
        cols=REGION,
        a_addr=a * REGION,
        b_addr=b * REGION,
        d_addr=d * REGION,
        m0=1,
        m1=1,
    )


def _mv(a: int, d: int) -> isa.Instruction:
    return isa.MV(
        n=2,
        k=REGION,
        a_addr=a * REGION,
        w_addr=0,
        d_addr=d * REGION,
        d_stride=2 * 4,
        odt=DType.INT8,
        mult=1,
    )


slot = st.integers(0, 5)
instruction = st.one_of(
    st.builds(_ld, slot, st.integers(0, 5)),
    st.builds(_st, slot, st.integers(0, 5)),
    st.builds(_add, slot, slot, slot),
    st.builds(_mv, slot, slot),
)


@settings(max_examples=300, deadline=None)
@given(st.lists(instruction, min_size=1, max_size=30))
def test_every_hazard_is_ordered(instrs):
    sched = TokenScheduler()
    for ins in instrs:
        sched.add(ins)
    out = sched.finish()
    assert unordered_hazards(out) == []
    for ins in out:
        ins.check()  # masks never name the instruction's own unit


def test_checker_detects_a_missing_token():
    prog = [_ld(0, 0), _add(0, 0, 1), isa.SYS(op=isa.SysOp.HALT)]
    assert unordered_hazards(prog) == [(0, 1)]


def test_independent_work_gets_no_tokens():
    sched = TokenScheduler()
    sched.add(_ld(0, 0))
    sched.add(_add(1, 2, 3))
    sched.add(_st(4, 1))
    assert all(i.wait == 0 and i.release == 0 for i in sched.finish())


def test_covered_hazard_adds_no_second_token():
    """A second reader on the same unit is ordered by the first reader's wait."""
    sched = TokenScheduler()
    sched.add(_ld(0, 0))
    sched.add(_add(0, 0, 1))
    sched.add(_add(0, 0, 2))
    ld, first, second, _ = sched.finish()
    assert ld.release == 1 << isa.Unit.SFU
    assert first.wait == 1 << isa.Unit.LD
    assert second.wait == 0


def test_untracked_reads_are_not_hazards():
    sched = TokenScheduler(untracked_reads=[(0, 64)])
    sched.add(_ld(0, 0))  # reads EXT 0..8 (read-only weights)
    sched.add(_st(1, 20))  # writes EXT 160..168: no conflict either way
    assert all(i.wait == 0 for i in sched.finish())
