"""Compiled programs on the functional simulator equal the compiler's integer reference
bit for bit: the demo (Linear + attention head) and whole decoders of each family,
prefill and decode, including chunked prefill and last-row-only logits."""

from __future__ import annotations

import numpy as np
import pytest

from flightforge.compiler.demo import build_demo
from flightforge.compiler.graph import FAMILIES, DecoderShape, random_decoder
from flightforge.compiler.pipeline import CompileOptions, compile_decoder
from flightforge.compiler.quant.accuracy import reference_logits
from flightforge.compiler.quant.quantize import quantize_act
from flightforge.generate import forced_logits, generate
from flightforge.mappings import load_target
from flightforge.program import ProgramError
from flightforge.sim.functional import FunctionalSim

TINY = load_target("tiny")


def test_demo_sections_are_bit_exact():
    demo = build_demo(TINY)
    prog = demo.program
    sim = FunctionalSim(TINY)
    sim.load(prog)
    tensors = {t.name: t for t in prog.inputs + prog.outputs}
    for name, x in demo.inputs.items():
        io = tensors[name]
        sim.write(
            prog.segment(io.segment).addr, quantize_act(x, io.scale).astype(np.int8).tobytes()
        )
    for section in ("linear", "attn_prefill", "attn_decode"):
        sim.run(section)
    for name, expect in demo.expected_int.items():
        io = tensors[name]
        raw = sim.read(prog.segment(io.segment).addr, int(np.prod(io.shape)))
        got = np.frombuffer(raw, np.int8).reshape(io.shape)
        assert np.array_equal(got, expect), name


@pytest.mark.parametrize("family", sorted(FAMILIES))
def test_decoder_generation_is_bit_exact_with_the_integer_reference(family):
    shape, kw = FAMILIES[family]
    prog = random_decoder(shape, **kw)
    max_len = 20
    c = compile_decoder(prog, TINY, CompileOptions(max_len=max_len))
    prompt = [int(t) for t in np.random.default_rng(5).integers(0, prog.vocab, size=9)]
    gen = generate(c.program, FunctionalSim(TINY), prompt, 8)
    expect = reference_logits(c.quantized, prompt, gen.tokens, max_len)
    assert np.array_equal(gen.logits, expect)
    # Greedy tokens follow the logits (the last generated token has no logits row).
    assert gen.tokens[:-1] == [int(np.argmax(r)) for r in expect[len(prompt) - 1 : -1]]


def test_forced_logits_run_a_given_continuation_bit_exactly():
    """Teacher forcing, as accuracy measurement needs: the device runs the tokens it is
    given (here not its own greedy choices) and matches the integer reference."""
    shape, kw = FAMILIES["gpt2"]
    prog = random_decoder(shape, **kw)
    c = compile_decoder(prog, TINY, CompileOptions(max_len=12, lengths=tuple(range(5, 12))))
    ids = [int(t) for t in np.random.default_rng(4).integers(0, prog.vocab, size=12)]
    got = forced_logits(c.program, FunctionalSim(TINY), ids, 5)
    assert got.shape == (12, prog.vocab)
    assert np.array_equal(
        got.astype(np.float32), reference_logits(c.quantized, ids[:5], ids[5:] + [0], 12)
    )
    with pytest.raises(
        ValueError,
        match="a sequence of 13 tokens needs 13 positions; the program was compiled for 12",
    ):
        forced_logits(c.program, FunctionalSim(TINY), ids + [1], 5)
    last = compile_decoder(
        prog, TINY, CompileOptions(max_len=12, lengths=(5,), last_logits_only=True)
    )
    with pytest.raises(ProgramError, match="last-row logits only"):
        forced_logits(last.program, FunctionalSim(TINY), ids, 5)


def test_chunked_prefill_and_last_row_logits_are_bit_exact():
    shape = DecoderShape(1, 96, 6, 2, 16, 200, 50, "swiglu", True)
    prog = random_decoder(shape, seed=3)
    max_len = 160
    c = compile_decoder(
        prog, TINY, CompileOptions(max_len=max_len, lengths=(150, 151), last_logits_only=True)
    )
    chunk = c.program.metadata["decoder"]["prefill_chunk"]
    assert chunk < 150  # the prompt really runs in several chunks
    prompt = [int(t) for t in np.random.default_rng(1).integers(0, prog.vocab, size=150)]
    gen = generate(c.program, FunctionalSim(TINY), prompt, 2)
    full = reference_logits(c.quantized, prompt, gen.tokens, max_len)
    assert np.array_equal(gen.logits, full[len(prompt) - 1 :])


@pytest.mark.parametrize(
    "mode,prune", [("S2_4", "magnitude"), ("S8_16", "magnitude"), ("S8_16", "sparsegpt")]
)
def test_sparse_int4_decoder_is_bit_exact(mode, prune):
    """N:M-sparse INT4 weights with group scales, through packing, META and the MPE."""
    from flightforge.compiler.graph import linear_shapes
    from flightforge.compiler.quant.qdecoder import QuantOptions, WeightPlan
    from flightforge.isa import SparseMode, WPrec

    shape, _ = FAMILIES["llama-gqa"]
    prog = random_decoder(shape)
    sparse = SparseMode[mode]
    plans = {
        name: WeightPlan(WPrec.INT4, 16, sparse)
        for name, (_, k) in linear_shapes(shape).items()
        if name != "lm_head" and k % 16 == 0
    }
    c = compile_decoder(
        prog,
        TINY,
        CompileOptions(max_len=16, prune=prune, quant=QuantOptions(weight_bits=4, plans=plans)),
    )
    assert mode in {p["sparse"] for p in c.program.metadata["decoder"]["weight_plans"].values()}
    prompt = [int(t) for t in np.random.default_rng(2).integers(0, prog.vocab, size=7)]
    gen = generate(c.program, FunctionalSim(TINY), prompt, 4)
    assert np.array_equal(gen.logits, reference_logits(c.quantized, prompt, gen.tokens, 16))


@pytest.mark.parametrize("bits", [2, 3])
def test_low_bit_weights_widened_on_load_are_bit_exact(bits):
    """2- and 3-bit weights stored packed, widened to INT8 by LD unpack, with group scales."""
    from flightforge.compiler.quant.qdecoder import QuantOptions
    from flightforge.isa import Unpack

    shape, _ = FAMILIES["llama-gqa"]
    prog = random_decoder(shape)
    c = compile_decoder(
        prog, TINY, CompileOptions(max_len=16, quant=QuantOptions(weight_bits=bits, group=32))
    )
    loads = [
        i
        for s in c.program.sections
        for i in s.instructions
        if getattr(i, "unpack", Unpack.NONE) != Unpack.NONE
    ]
    assert loads and all(i.unpack == Unpack(bits - 1) for i in loads)
    dense = compile_decoder(prog, TINY, CompileOptions(max_len=16)).program
    weights = lambda p: sum(s.size for s in p.segments if s.name.endswith(".weight"))  # noqa: E731
    assert weights(c.program) * 8 < weights(dense) * (bits + 1)
    prompt = [int(t) for t in np.random.default_rng(2).integers(0, prog.vocab, size=7)]
    gen = generate(c.program, FunctionalSim(TINY), prompt, 4)
    assert np.array_equal(gen.logits, reference_logits(c.quantized, prompt, gen.tokens, 16))
