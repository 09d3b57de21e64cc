"""The Verilator harness itself: what names a build, and how a run reports programs that
leave external memory or never halt (the RTL tests cover the cycle-level behaviour)."""

from __future__ import annotations

import pytest

from flightforge import isa
from flightforge.sim import rtl_harness as h
from flightforge.sim.device import DeviceError


def test_build_tag_covers_every_source_and_parameter() -> None:
    tb = {name: (h.TB_DIR / name).read_bytes() for name in h.TB_SOURCES}
    params = {"BEAT_BYTES": 8}
    base = h.build_tag("module m; endmodule", tb, params)
    assert h.build_tag("module m; endmodule", dict(tb), dict(params)) == base
    assert h.build_tag("module n; endmodule", tb, params) != base
    for name in tb:
        assert h.build_tag("module m; endmodule", {**tb, name: tb[name] + b"\n"}, params) != base
    assert h.build_tag("module m; endmodule", tb, {"BEAT_BYTES": 16}) != base


def _transfer(kind: type, cap: int) -> bytes:
    """A section whose one 16-byte transfer runs 8 bytes past external memory."""
    ext = {"src": cap - 8} if kind is isa.LD else {"dst": cap - 8}
    ins = kind(
        buf=isa.Buf.ACT,
        rows=1,
        row_bytes=16,
        src_stride=16,
        dst_stride=16,
        **{"dst" if kind is isa.LD else "src": 0},
        **ext,
    )
    return isa.encode([ins, isa.SYS(op=isa.SysOp.HALT)])


@pytest.mark.rtl
@pytest.mark.parametrize(
    "kind, message",
    [
        (
            isa.LD,
            r"^section 'oob': LD command: bytes 67108856\.\.67108871 are outside external "
            r"memory \(0\.\.67108863\)$",
        ),
        (
            isa.ST,
            r"^section 'oob': ST beat: bytes 67108864\.\.67108864 are outside external "
            r"memory \(0\.\.67108863\)$",
        ),
    ],
)
def test_transfer_outside_memory_is_an_error(rtl_tiny, kind, message) -> None:
    with pytest.raises(DeviceError, match=message):
        h.run_steps(rtl_tiny, [("run", "oob", _transfer(kind, rtl_tiny.hbm.capacity))])


@pytest.mark.rtl
def test_host_write_outside_memory_is_an_error(rtl_tiny) -> None:
    cap = rtl_tiny.hbm.capacity
    with pytest.raises(
        DeviceError,
        match=rf"^write: bytes {cap - 4}\.\.{cap + 3} are outside "
        rf"external memory \(0\.\.{cap - 1}\)$",
    ):
        h.run_steps(rtl_tiny, [("write", cap - 4, bytes(8))])


@pytest.mark.rtl
def test_cycle_limit_stops_the_section(rtl_tiny) -> None:
    code = isa.encode(
        [
            isa.LD(
                buf=isa.Buf.ACT, dst=0, src=0, rows=1, row_bytes=64, src_stride=64, dst_stride=64
            ),
            isa.SYS(op=isa.SysOp.HALT),
        ]
    )
    results = h.run_steps(rtl_tiny, [("run", "slow", code), ("run", "never", code)], max_cycles=10)
    assert [(r["section"], r["timeout"], r["cycles"]) for r in results] == [("slow", True, 10)]


@pytest.mark.rtl
def test_run_step_sets_the_length_register(rtl_tiny) -> None:
    """``("run", name, code, d)`` holds ``run_d`` at ``d``: a LD with ``dyn_step`` reads
    ``d`` steps further on, as ``isa.resolve`` says."""
    data = bytes(range(256))
    ld = isa.LD(
        buf=isa.Buf.ACT,
        dst=0,
        src=16,
        rows=1,
        row_bytes=16,
        src_stride=16,
        dst_stride=16,
        dyn_step=32,
    )
    code = isa.encode([ld, isa.SYS(op=isa.SysOp.HALT)])
    dump = ("dump", [(isa.Buf.ACT, 0, 16)], [])
    results = h.run_steps(
        rtl_tiny, [("write", 0, data), ("run", "d0", code), dump, ("run", "d3", code, 3), dump]
    )
    assert results[2]["buffers"][(isa.Buf.ACT, 0)] == data[16:32]
    assert results[4]["buffers"][(isa.Buf.ACT, 0)] == data[112:128]
    assert isa.resolve(ld, 3).src == 112
