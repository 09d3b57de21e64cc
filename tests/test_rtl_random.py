"""Differential test: seeded random instruction streams on the RTL (Verilator) and on
the functional simulator agree bit for bit in every buffer window and in memory, and
the RTL's cycle count is compared with the cycle model's (sim/timing.py on
sim/dispatch.py) per section.

All sections run back to back in ONE simulation of ONE Verilator build (buffers carry
over from section to section on both sides), so the module costs one build and one run.

Cycles: every section (control, tokens, queues, pipelined bursts, memory latency, LD
``unpack`` of 2/3/4-bit values, the tiled MPE, every SFU pipeline) must match the model
exactly.
"""

from collections import Counter

import numpy as np
import pytest

from flightforge import isa
from flightforge.sim import rtl_harness as h
from flightforge.sim.cycle_model import stall_breakdown
from flightforge.sim.device import DeviceError
from flightforge.sim.dispatch import run_dispatch
from flightforge.sim.functional import FunctionalSim
from flightforge.sim.memory_check import model_cycles
from flightforge.sim.timing import duration

pytestmark = pytest.mark.rtl

SECTIONS = 56
MPE_SECTIONS = 24  #: LD/ST/MM/MV sections (no MISC)
LDST_SECTIONS = 24
SEED = 2024


def _coverage(sections) -> Counter:
    seen = Counter()
    for sec in sections:
        for ins in sec:
            seen[ins.OPCODE.name] += 1
            if isinstance(ins, (isa.MM, isa.MV)):
                seen[isa.SparseMode(ins.sparse).name] += 1
                seen[f"w{isa.WPrec(ins.wprec).name}"] += 1
                for flag in ("gsz", "wkn", "colp", "acc_in"):
                    seen[flag] += bool(getattr(ins, flag))
            if isinstance(ins, isa.MISC):
                seen[isa.MiscOp(ins.op).name] += 1
            if isinstance(ins, isa.LD) and ins.unpack != isa.Unpack.NONE:
                u = isa.Unpack(ins.unpack)
                seen[f"unpack {u.name}"] += 1
                seen["unpack odd row_bytes"] += ins.row_bytes % 2
                seen["unpack unaligned src"] += bool(ins.src % 8)
                seen["unpack odd src_stride"] += ins.rows > 1 and ins.src_stride % 2
                seen["unpack rows back to back"] += (
                    ins.rows > 1 and ins.src_stride == ins.src_row_bytes
                )
                seen["unpack into a narrow port"] += isa.Buf(ins.buf) in (
                    isa.Buf.GLB,
                    isa.Buf.META,
                    isa.Buf.SCALE,
                )
            seen["wait"] += bool(ins.wait)
    return seen


@pytest.fixture(scope="module")
def replay(rtl_tiny):
    """Build the mixed and LD/ST-only sections, run them on the functional simulator and
    the cycle model, then all in one RTL simulation."""
    rng = np.random.default_rng(SEED)
    data = rng.integers(0, 256, h.EXT_DATA[1], dtype=np.uint8).tobytes()
    ref = FunctionalSim(rtl_tiny)
    ref.write(h.EXT_DATA[0], data)
    steps, sections, expected = [("write", h.EXT_DATA[0], data)], [], []
    while len(sections) < SECTIONS + MPE_SECTIONS + LDST_SECTIONS:
        if len(sections) < SECTIONS:
            sec = h.random_section(rtl_tiny, rng, length=10)
        elif len(sections) < SECTIONS + MPE_SECTIONS:
            sec = h.random_section(rtl_tiny, rng, length=10, misc_ops=())
        else:
            sec = h.random_ldst_section(rtl_tiny, rng)
        before = ({b: ref.buffer(b).copy() for b in isa.Buf}, dict(ref.ext._pages))
        try:
            ref.execute(sec, name=f"random{len(sections)}")
        except DeviceError:  # e.g. a queue/token deadlock: not a valid program; undo it
            ref.buffers, ref.ext._pages = before[0], {p: a.copy() for p, a in before[1].items()}
            continue
        sections.append(sec)
        steps += [("run", f"random{len(sections) - 1}", isa.encode(sec)), h.dump_step()]
        expected.append(
            ({b: ref.buffer(b)[:n].tobytes() for b, n in h.WINDOWS.items()}, ref.read(*h.EXT_OUT))
        )
    results = h.run_steps(rtl_tiny, steps, max_cycles=300_000)
    runs = [r for r in results if r and "section" in r]
    dumps = [r for r in results if r and "buffers" in r]
    model = [model_cycles(rtl_tiny, sec) for sec in sections]
    return sections, expected, runs, dumps, model


def test_random_streams_match_functional_sim(rtl_tiny, replay) -> None:
    sections, expected, runs, dumps, _ = replay
    seen = _coverage(sections)
    for feature in (
        "LD",
        "ST",
        "MM",
        "MV",
        "MISC",
        "S2_4",
        "S2_16",
        "S4_16",
        "S8_16",
        "S16_16",
        "wINT4",
        "gsz",
        "wkn",
        "acc_in",
        "wait",
        *(o.name for o in h.RANDOM_MISC_OPS),
        *(f"unpack {u.name}" for u in isa.Unpack if u != isa.Unpack.NONE),
        "unpack odd row_bytes",
        "unpack unaligned src",
        "unpack odd src_stride",
        "unpack rows back to back",
        "unpack into a narrow port",
    ):
        assert seen[feature], f"the random streams never exercise {feature}: {dict(seen)}"
    assert len(runs) == len(sections), f"replay stopped after {runs[-1]}"
    for i, (run, dump, (bufs, ext)) in enumerate(zip(runs, dumps, expected, strict=True)):
        h.check_run(run, run["section"])
        listing = "\n".join(f"  {j}: {ins}" for j, ins in enumerate(sections[i]))
        for b in h.WINDOWS:
            got = np.frombuffer(dump["buffers"][(b, 0)], np.uint8)
            want = np.frombuffer(bufs[b], np.uint8)
            bad = np.nonzero(got != want)[0]
            assert not len(bad), (
                f"section {i}: {b.name} differs at bytes {bad[:16].tolist()}: "
                f"RTL {got[bad[:8]].tolist()}, functional {want[bad[:8]].tolist()}"
                f"\n{listing}"
            )
        got, want = np.frombuffer(dump["ext"][h.EXT_OUT], np.uint8), np.frombuffer(ext, np.uint8)
        bad = np.nonzero(got != want)[0]
        assert not len(bad), (
            f"section {i}: external memory differs at "
            f"{[h.EXT_OUT[0] + int(x) for x in bad[:16]]}\n{listing}"
        )


def _report(sections, runs, model, idx) -> list[str]:
    lines = []
    for i in idx:
        ops = "".join(type(x).__name__[0] for x in sections[i] if not isinstance(x, isa.SYS))
        err = runs[i]["cycles"] / model[i] - 1
        lines.append(
            f"random{i}: rtl {runs[i]['cycles']} model {model[i]} error {err:+.2%} ({ops})"
        )
    return lines


def test_ldst_streams_cycle_exact(replay) -> None:
    """LD/ST/SYS sections: the RTL's cycles equal the cycle model's exactly."""
    sections, _, runs, _, model = replay
    idx = range(SECTIONS + MPE_SECTIONS, len(sections))
    assert sum(
        isinstance(x, isa.SYS) and x.op == isa.SysOp.NOP for i in idx for x in sections[i]
    ), "no NOP in the LD/ST streams"
    bad = [
        line
        for i, line in zip(idx, _report(sections, runs, model, idx), strict=True)
        if runs[i]["cycles"] != model[i]
    ]
    print("\n".join(_report(sections, runs, model, idx)))
    assert not bad, "RTL and cycle model differ:\n" + "\n".join(bad)


def test_mixed_streams_cycle_exact(rtl_tiny, replay) -> None:
    """Sections of LD/ST/MM/MV (every sparse mode, INT4/INT8, groups, records, partial
    sums, ``wkn``) and every MISC operation: the RTL's cycles equal the cycle model's."""
    sections, _, runs, _, model = replay
    idx = list(range(SECTIONS + MPE_SECTIONS))
    assert sum(isinstance(x, (isa.MM, isa.MV)) for i in idx for x in sections[i]) > 100
    assert (
        sum(
            isinstance(x, isa.MISC) and x.op == isa.MiscOp.SOFTMAX for i in idx for x in sections[i]
        )
        >= 5
    )
    # The buffer-side rule (isa.buffer_sides) must be exercised: heads held back because
    # another unit's running instruction owns a side they need.
    arch = rtl_tiny
    held_back = 0
    for i in idx:
        sched = run_dispatch(
            sections[i],
            token_depth=arch.token_depth,
            queue_depth=arch.queue_depth,
            duration=lambda _, ins: duration(arch, ins),
        )
        held_back += any(v["buffer_side"] for v in stall_breakdown(sections[i], sched).values())
    assert held_back >= len(idx) // 2
    lines = _report(sections, runs, model, idx)
    print("\n".join(lines))
    bad = [line for i, line in zip(idx, lines, strict=True) if runs[i]["cycles"] != model[i]]
    assert not bad, "RTL and cycle model differ:\n" + "\n".join(bad)
