"""Length-adaptive sections: every length inside a bucket gives exactly the logits of a
program compiled for that length alone."""

from __future__ import annotations

import numpy as np
import pytest
from hypothesis import given
from hypothesis import strategies as st

from flightforge import isa
from flightforge.compiler.errors import CompileError
from flightforge.compiler.graph import DecoderShape, random_decoder
from flightforge.compiler.lower.buckets import BucketPlan
from flightforge.compiler.lower.decoder import LATENCY_MODELS, lower_decoder, make_plan
from flightforge.compiler.pipeline import CompileOptions, compile_decoder
from flightforge.generate import decode_run, generate, prefill_runs
from flightforge.mappings import load_target
from flightforge.sim.cycle_model import CycleModel
from flightforge.sim.device import DeviceError
from flightforge.sim.functional import FunctionalSim

TINY = load_target("tiny")
MAX_LEN = 20


@pytest.fixture(scope="module")
def programs():
    prog = random_decoder(DecoderShape(2, 96, 6, 2, 16, 200, 300, "swiglu", True), seed=11)
    plan = BucketPlan(prefill=((1, 8), (9, 16), (17, 20)), decode=((1, 5), (6, 12), (13, 19)))
    exact = compile_decoder(prog, TINY, CompileOptions(max_len=MAX_LEN)).program
    bucketed = compile_decoder(
        prog, TINY, CompileOptions(max_len=MAX_LEN, buckets=plan, verify=True)
    ).program
    return prog, exact, bucketed


@pytest.mark.parametrize("length", [1, 3, 8, 9, 13, 17])
def test_every_length_in_a_bucket_matches_its_own_compile(programs, length):
    prog, exact, bucketed = programs
    assert len(bucketed.sections) == 6 < len(exact.sections)
    prompt = [int(t) for t in np.random.default_rng(length).integers(0, prog.vocab, size=length)]
    new = min(MAX_LEN - length + 1, 6)
    ref = generate(exact, FunctionalSim(TINY), prompt, new)
    got = generate(bucketed, FunctionalSim(TINY), prompt, new)
    assert got.tokens == ref.tokens
    assert np.array_equal(got.logits, ref.logits)


def test_bucket_streams_are_dynamic_and_run_only_inside_their_range(programs):
    _, _, bucketed = programs
    sec = bucketed.section("decode_6_12")
    assert any(isa.is_dynamic(i) for i in sec.instructions)
    sim = FunctionalSim(TINY)
    sim.load(bucketed)
    with pytest.raises(DeviceError, match="serves lengths 6..12, not 13"):
        sim.run("decode_6_12", 13)


@pytest.mark.parametrize("last_only", [True, False], ids=["last-row", "all-rows"])
@pytest.mark.parametrize("policy", ["fixed", "auto"])
def test_chunked_prefill_buckets_match_exact_lengths(policy, last_only):
    """Host-looped chunk streams, padded context and padded final chunk, bit for bit."""
    prog = random_decoder(DecoderShape(1, 96, 6, 2, 16, 200, 50, "swiglu", True), seed=4)
    opts = dict(max_len=160, last_logits_only=last_only)
    bucketed = compile_decoder(
        prog, TINY, CompileOptions(**opts, buckets=policy, verify=True)
    ).program
    meta = bucketed.metadata["decoder"]
    chunk = meta["prefill_chunk"]
    assert meta["prefill_mode"] == "chunked" and chunk < 70
    stages = {s.stage for s in bucketed.sections}
    assert stages == (
        {"prefill", "prefill_chunk", "prefill_final", "decode"}
        if last_only
        else {"prefill", "prefill_chunk", "decode"}
    )
    # Short prompts, a multiple of the chunk plus one (its last token runs as a decode
    # step), and long ones.
    lengths = (1, 7, chunk + 1, 2 * chunk + 1, 100, 137)
    exact = compile_decoder(
        prog,
        TINY,
        CompileOptions(**opts, lengths=tuple(sorted({n + i for n in lengths for i in range(3)}))),
    ).program
    for length in lengths:
        prompt = [
            int(t) for t in np.random.default_rng(length).integers(0, prog.vocab, size=length)
        ]
        ref = generate(exact, FunctionalSim(TINY), prompt, 3)
        got = generate(bucketed, FunctionalSim(TINY), prompt, 3)
        assert got.tokens == ref.tokens
        assert np.array_equal(got.logits, ref.logits)


def test_plans_cover_every_length_once():
    with pytest.raises(CompileError, match="bucket 5..9 follows 3"):
        BucketPlan(((1, 3), (5, 9)), ((1, 8),)).check(9, None)
    with pytest.raises(CompileError, match="spans a prefill chunk boundary"):
        BucketPlan(((1, 9),), ((1, 8),)).check(9, 4)
    with pytest.raises(CompileError, match="chunk start buckets must cover 0..2038"):
        BucketPlan(((1, 1), (2, 10)), ((1, 2047),), ((0, 120), (140, 2038))).check(2048, chunk=10)
    fixed = BucketPlan.fixed(2048, chunk=40)
    fixed.check(2048, chunk=40)
    assert fixed.prefill == ((1, 1), (2, 40))
    assert fixed.chunk_starts[:2] == ((0, 127), (128, 255)) and len(fixed.decode) == 128


def test_auto_policy_grows_buckets_to_the_latency_bound():
    """Whole-prompt buckets grow to the bound; decode positions and chunk starts, whose
    runs attend over their actual context, share one bucket each."""
    prog = random_decoder(DecoderShape(2, 96, 6, 2, 16, 200, 300, "swiglu", True))
    c = compile_decoder(prog, load_target("u280"), CompileOptions(max_len=64, lengths=(1,)))
    for latency in LATENCY_MODELS:
        plan = make_plan(
            c.quantized, load_target("u280"), 64, "auto", 0.2, chunk=40, latency=latency
        )
        plan.check(64, 40, chunk=40)
        assert plan.decode == ((1, 63),) and plan.chunk_starts == ((0, 24),)
        tight = make_plan(
            c.quantized, load_target("u280"), 64, "auto", 0.0, chunk=40, latency=latency
        )
        assert len(plan.prefill) < len(tight.prefill), latency


def test_a_bucketed_run_costs_what_the_exact_compile_does():
    """The context grows with D, so a decode bucket's run at position p takes the cycles
    of the section compiled for p alone (the cycle model, prefill chunks too)."""
    prog = random_decoder(DecoderShape(1, 96, 6, 2, 16, 200, 50, "swiglu", True), seed=5)
    opts = dict(max_len=100, last_logits_only=True)
    bucketed = compile_decoder(prog, TINY, CompileOptions(**opts, buckets="auto")).program
    meta = bucketed.metadata["decoder"]
    chunk, top = meta["prefill_chunk"], opts["max_len"] - meta["prefill_chunk"]
    assert meta["buckets"]["decode"] == [[1, 99]] and meta["buckets"]["chunk_starts"] == [[0, top]]
    per_start = BucketPlan(
        prefill=tuple(map(tuple, meta["buckets"]["prefill"])),
        decode=tuple((p, p) for p in range(1, 100)),
        chunk_starts=tuple((p, p) for p in range(top + 1)),
    )
    exact = compile_decoder(
        prog, TINY, CompileOptions(**opts, buckets=per_start, lengths=(3, 50, 99, 100, chunk + 3))
    ).program
    runs = [
        ("decode", 3),
        ("decode", 50),
        ("decode", 99),
        ("prefill_chunk", 3),
        ("prefill_chunk", top),
        ("prefill_final", top),
    ]
    for stage, at in runs:
        got, want = CycleModel(TINY), CycleModel(TINY)
        got.load(bucketed)
        want.load(exact)
        lo = 1 if stage == "decode" else 0
        hi = 99 if stage == "decode" else top
        assert got.run(f"{stage}_{lo}_{hi}", at).cycles == want.run(f"{stage}_{at}", at).cycles, (
            stage,
            at,
        )


@given(length=st.integers(2, 5000), chunk=st.integers(1, 300))
def test_chunk_passes_cover_the_prompt_and_end_at_its_last_row(length, chunk):
    from flightforge.generate import chunk_starts

    if length <= chunk:
        return
    starts = chunk_starts(length, chunk)
    assert len(starts) == -(-length // chunk) and starts[0] == 0
    assert starts[-1] + chunk == length and starts == sorted(starts)
    covered = set()
    for s in starts:
        covered |= set(range(s, s + chunk))
    assert covered == set(range(length))


def test_auto_buckets_from_the_cycle_model_run_bit_exactly():
    """The cycle model as the auto policy's latency model: its buckets are exact too."""
    prog = random_decoder(DecoderShape(1, 96, 6, 2, 16, 200, 50, "swiglu", True), seed=2)
    opts = dict(max_len=40, last_logits_only=True)
    cyc = compile_decoder(
        prog,
        TINY,
        CompileOptions(**opts, buckets="auto", bucket_latency="cycle", bucket_bound=0.05),
    ).program
    exact = compile_decoder(
        prog, TINY, CompileOptions(**opts, lengths=(9, 10, 11, 31, 32, 33))
    ).program
    assert len(cyc.sections) < 2 * 40 - 1  # fewer than one section per length and stage
    for length in (9, 31):
        prompt = [
            int(t) for t in np.random.default_rng(length).integers(0, prog.vocab, size=length)
        ]
        got = generate(cyc, FunctionalSim(TINY), prompt, 3)
        ref = generate(exact, FunctionalSim(TINY), prompt, 3)
        assert np.array_equal(got.logits, ref.logits)


@pytest.mark.parametrize(("target", "vocab", "max_len"), [("tiny", 2000, 48), ("kv260", 12000, 46)])
def test_fixed_buckets_compiled_for_one_length_serve_that_length(target, vocab, max_len):
    """``--buckets fixed --lengths L`` compiles every section the host runs for L, at
    every L: also a multiple of the prefill chunk plus one, whose last token runs as a
    decode step after a shorter prefill (a large vocabulary keeps the chunk short)."""
    arch = load_target(target)
    prog = random_decoder(DecoderShape(1, 64, 2, 1, 32, 128, vocab, "swiglu", True), seed=4)
    opts = CompileOptions(max_len=max_len, buckets="fixed", lengths=(1,), with_data=False)
    qd = compile_decoder(prog, arch, opts).quantized
    chunks = set()
    for length in range(1, max_len + 1):
        program = lower_decoder(
            qd, arch, max_len, with_data=False, lengths=[length], buckets="fixed"
        )
        chunks.add(program.metadata["decoder"]["prefill_chunk"])
        prefill_runs(program, length)  # raises if a section it runs was not compiled
        if length < max_len:
            decode_run(program, length)
    (chunk,) = chunks
    assert 2 * chunk + 1 <= max_len, "the lengths must reach two chunks plus one"
