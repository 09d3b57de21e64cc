"""The cycle model's Perfetto trace (`flightforge simulate --trace`) covers the whole request.

Perfetto's own trace processor (the `perfetto` package's ``TraceProcessor``) downloads its
``trace_processor_shell`` binary at run time, which cannot work where only package
registries are reachable (tried with perfetto 0.59.1: curl exit 6). So the trace is checked
here against the rules of the JSON importer it would go through: every complete event
(``ph: X``) has numeric ``ts``/``dur`` >= 0 and integer ``pid``/``tid``; every thread has a
``thread_name`` (the unit tracks LD, ST, MPE, SFU and ``sections``); slices on one track
nest or follow each other (a partial overlap is an import error there). On top of that:
the sections track tiles the request's modelled time end to end, every decode position
appears once, either timed (with its instructions on the unit tracks) or inside a
labelled ``(interpolated)`` span that has no unit detail.
"""

import json

import pytest

from flightforge.compiler.graph import DecoderShape, random_decoder
from flightforge.compiler.lower.buckets import BucketPlan
from flightforge.compiler.pipeline import CompileOptions, compile_decoder
from flightforge.isa import Unit
from flightforge.mappings import load_target
from flightforge.sim.cycle_model import simulate


def _events_by_track(trace: dict) -> tuple[dict[int, str], dict[int, list[dict]]]:
    names, slices = {}, {}
    assert trace["displayTimeUnit"] in ("ns", "ms")
    for ev in trace["traceEvents"]:
        assert isinstance(ev["name"], str) and ev["ph"] in ("X", "M"), ev
        assert isinstance(ev["pid"], int) and isinstance(ev["tid"], int), ev
        if ev["ph"] == "M":
            if ev["name"] == "thread_name":
                names[ev["tid"]] = ev["args"]["name"]
            continue
        assert isinstance(ev["ts"], int | float) and ev["ts"] >= 0, ev
        assert isinstance(ev["dur"], int | float) and ev["dur"] >= 0, ev
        slices.setdefault(ev["tid"], []).append(ev)
    return names, slices


def _assert_nested(track: str, events: list[dict]) -> None:
    """Slices on one track nest or are disjoint (1e-6 us slack for float sums)."""
    open_ends: list[float] = []
    for ev in sorted(events, key=lambda e: (e["ts"], -e["dur"])):
        while open_ends and open_ends[-1] <= ev["ts"] + 1e-6:
            open_ends.pop()
        end = ev["ts"] + ev["dur"]
        assert not open_ends or end <= open_ends[-1] + 1e-6, f"{track}: {ev} overlaps its parent"
        open_ends.append(end)


@pytest.fixture(scope="module")
def bucketed():
    prog = random_decoder(DecoderShape(1, 32, 2, 2, 16, 64, 50, "swiglu", True), seed=3)
    plan = BucketPlan(prefill=tuple((n, n) for n in range(1, 61)), decode=((1, 59),))
    return compile_decoder(
        prog, load_target("tiny"), CompileOptions(max_len=60, buckets=plan, lengths=(4,))
    ).program


def test_trace_covers_every_decode_step_and_labels_the_interpolated_ones(bucketed):
    report = simulate(bucketed, load_target("tiny"), prompt_len=4, decode_steps=40)
    assert report.decode_method == "sampled"
    trace = json.loads(json.dumps(report.trace()))  # as written to the file
    names, slices = _events_by_track(trace)
    assert set(names.values()) == {u.name for u in Unit} | {"sections"}
    assert set(slices) <= set(names)
    for tid, events in slices.items():
        _assert_nested(names[tid], events)
    us = 1 / report.clock_mhz
    sections = sorted(slices[0], key=lambda e: e["ts"])
    for a, b in zip(sections, sections[1:], strict=False):
        assert b["ts"] == pytest.approx(a["ts"] + a["dur"])  # end to end
    end = sections[-1]["ts"] + sections[-1]["dur"]
    # the report rounds its (interpolated, fractional) decode cycles to a whole cycle; the
    # trace keeps the fractions, so the two ends agree to half a cycle
    assert end == pytest.approx(report.total_cycles * us, abs=0.5 * us + 1e-9)
    covered = []
    units = [e for tid, evs in slices.items() if tid != 0 for e in evs]
    for span in sections:
        if span["args"]["stage"] != "decode":
            continue
        if span["args"]["timed"]:
            covered.append(span["args"]["position"])
            continue
        lo, hi = span["args"]["positions"]
        assert span["name"] == f"decode {lo}..{hi} (interpolated)"
        covered += range(lo, hi + 1)
        inside = [
            e
            for e in units
            if span["ts"] + 1e-6 < e["ts"] + e["dur"] and e["ts"] < span["ts"] + span["dur"] - 1e-6
        ]
        assert inside == [], "an interpolated span has unit detail"
    assert covered == list(range(4, 44))
    timed = [s for s in sections if s["args"]["stage"] == "decode" and s["args"]["timed"]]
    assert [s["args"]["position"] for s in timed] == [4, 36, 43]
