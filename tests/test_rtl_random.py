"""Differential test: seeded random instruction streams on the RTL (Verilator) and on
the functional simulator agree bit for bit in every buffer window and in memory.

All sections run back to back in ONE simulation of ONE Verilator build (buffers carry
over from section to section on both sides), so the test costs one build and one run.
"""

from collections import Counter

import numpy as np
import pytest

from flightforge import isa
from flightforge.mappings import load_target
from flightforge.sim import rtl_harness as h
from flightforge.sim.device import DeviceError
from flightforge.sim.functional import FunctionalSim

pytestmark = pytest.mark.rtl

SECTIONS = 56
SEED = 2024


@pytest.fixture(scope="module")
def arch():
    try:
        h.verilator_setup()
        import cocotb_tools.runner  # noqa: F401
    except (h.RtlUnavailable, ImportError) as e:
        pytest.skip(f"RTL simulation unavailable: {e}")
    return load_target("tiny")


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
            seen["wait"] += bool(ins.wait)
    return seen


def test_random_streams_match_functional_sim(arch) -> None:
    rng = np.random.default_rng(SEED)
    data = rng.integers(0, 256, h.EXT_DATA[1], dtype=np.uint8).tobytes()
    ref = FunctionalSim(arch)
    ref.write(h.EXT_DATA[0], data)
    steps, sections, expected = [("write", h.EXT_DATA[0], data)], [], []
    while len(sections) < SECTIONS:
        sec = h.random_section(arch, rng, length=10)
        before = ({b: ref.buffer(b).copy() for b in isa.Buf}, dict(ref.ext._pages))
        try:
            ref.execute(sec, name=f"random{len(sections)}")
        except DeviceError:  # e.g. a queue/token deadlock: not a valid program; undo it
            ref.buffers, ref.ext._pages = before[0], {p: a.copy() for p, a in before[1].items()}
            continue
        sections.append(sec)
        steps += [("run", f"random{len(sections) - 1}", isa.encode(sec)), h.dump_step()]
        expected.append(({b: ref.buffer(b)[:n].tobytes() for b, n in h.WINDOWS.items()},
                         ref.read(*h.EXT_OUT)))
    seen = _coverage(sections)
    for feature in ("LD", "ST", "MM", "MV", "MISC", "S2_4", "S2_16", "S4_16", "S8_16",
                    "S16_16", "wINT4", "gsz", "wkn", "acc_in", "wait", *(
                        o.name for o in h.RANDOM_MISC_OPS)):
        assert seen[feature], f"the random streams never exercise {feature}: {dict(seen)}"

    results = h.run_steps(arch, steps, max_cycles=300_000)
    runs = [r for r in results if r and "section" in r]
    dumps = [r for r in results if r and "buffers" in r]
    assert len(runs) == SECTIONS, f"replay stopped after {runs[-1]}"
    for i, (run, dump, (bufs, ext)) in enumerate(zip(runs, dumps, expected)):
        h.check_run(run, run["section"])
        listing = "\n".join(f"  {j}: {ins}" for j, ins in enumerate(sections[i]))
        for b, n in h.WINDOWS.items():
            got = np.frombuffer(dump["buffers"][(b, 0)], np.uint8)
            want = np.frombuffer(bufs[b], np.uint8)
            bad = np.nonzero(got != want)[0]
            assert not len(bad), (f"section {i}: {b.name} differs at bytes {bad[:16].tolist()}: "
                                  f"RTL {got[bad[:8]].tolist()}, functional {want[bad[:8]].tolist()}"
                                  f"\n{listing}")
        got, want = np.frombuffer(dump["ext"][h.EXT_OUT], np.uint8), np.frombuffer(ext, np.uint8)
        bad = np.nonzero(got != want)[0]
        assert not len(bad), (f"section {i}: external memory differs at "
                              f"{[h.EXT_OUT[0] + int(x) for x in bad[:16]]}\n{listing}")
