"""The decoder compiler on random-weight decoders of each family (no ONNX needed).

The integer reference is the bit-exact target of every simulator; here it is checked
against the float model (prefill and decode, see compiler/quant/accuracy.py), and the lowered
sections are checked for synchronisation.
"""

from __future__ import annotations

import dataclasses

import pytest

from flightforge.compiler.errors import CompileError
from flightforge.compiler.graph import FAMILIES, DecoderShape, random_decoder
from flightforge.compiler.lower.schedule import unordered_hazards
from flightforge.compiler.pipeline import CompileOptions, calibration_prompts, compile_decoder
from flightforge.compiler.quant import accuracy
from flightforge.compiler.quant.calibrate import calibrate
from flightforge.compiler.quant.qdecoder import quantize_decoder
from flightforge.mappings import load_target

#: (worst position's cosine, mean cosine, top-1) that every seed of FLOORS_SEEDS stays
#: above: the weakest seed's figures (``python benchmarks/quant_accuracy.py --seeds 5``)
#: less a margin of a few near-tie positions. A lowering or arithmetic bug, or a clipped
#: outlier, gives far lower figures.
FLOORS = {
    "llama-gqa": (0.93, 0.990, 0.78),
    "gpt2": (0.985, 0.997, 0.85),
    "opt": (0.98, 0.997, 0.85),
}
FLOORS_SEEDS = range(5)
#: The families whose test decoder (seed 0) meets the acceptance criterion. Random
#: Llama-style decoders do not with INT8 activations; random GPT-2 and OPT ones average
#: 91% top-1, so about half of their seeds do (docs/compiler.md, "Accuracy").
MEETS_CRITERION = {"gpt2", "opt"}


@pytest.fixture(scope="module", params=sorted(FAMILIES))
def compiled(request):
    shape, kw = FAMILIES[request.param]
    prog = random_decoder(shape, **kw)
    options = CompileOptions(max_len=accuracy.MAX_LEN, verify=True)
    return request.param, prog, compile_decoder(prog, load_target("tiny"), options)


def test_integer_reference_meets_the_acceptance_criterion(compiled, request):
    """Cosine >= 0.99 at every position and top-1 >= 90%, prefill and 16 decode steps."""
    name, prog, c = compiled
    if name not in MEETS_CRITERION:
        request.applymarker(
            pytest.mark.xfail(
                strict=True,
                reason=(
                    "random Llama-style decoders amplify INT8 activation noise through nearly "
                    "one-hot "
                    "attention beyond the criterion with INT8 activations; 16-bit ones meet it "
                    "(tests/test_act16.py, docs/compiler.md)"
                ),
            )
        )
    cos, top = accuracy.measure(c.quantized, accuracy.float_reference(prog))
    print("\n" + accuracy.summary(name, cos, top))
    assert accuracy.meets_criterion(cos, top), accuracy.summary(name, cos, top)


@pytest.mark.parametrize("family", sorted(FAMILIES))
def test_integer_reference_accuracy_over_seeds(family):
    """Every seed's decoder stays above the family's measured floors (quantisation only)."""
    shape, kw = FAMILIES[family]
    cos_min, cos_mean, top1 = FLOORS[family]
    options = CompileOptions(max_len=accuracy.MAX_LEN)
    for seed in FLOORS_SEEDS:
        prog = random_decoder(shape, seed=seed, **kw)
        stats = calibrate(prog, calibration_prompts(prog, options))
        qd = quantize_decoder(prog, stats, options.quant)
        cos, top = accuracy.measure(qd, accuracy.float_reference(prog))
        msg = accuracy.summary(f"{family} seed {seed}", cos, top)
        print("\n" + msg)
        assert cos.min() >= cos_min and cos.mean() >= cos_mean and top.mean() >= top1, msg


def test_every_section_is_synchronised(compiled):
    """compile_decoder(verify=True) proved all sections; check the proof is not vacuous."""
    _, _, c = compiled
    section = c.program.section("decode_5").instructions
    assert unordered_hazards(section) == []
    stripped = [dataclasses.replace(i, wait=0, release=0) for i in section]
    assert unordered_hazards(stripped)


def test_sections_cover_every_length(compiled):
    _, _, c = compiled
    prog = c.program
    assert [prog.section_for("prefill", n).name for n in (1, 24)] == ["prefill_1", "prefill_24"]
    assert prog.section_for("decode", 23).name == "decode_23"


def test_model_too_large_for_buffers_is_refused_with_what_did_not_fit():
    # One row of INT16 logits over a 40000-token vocabulary needs 80000 bytes; ACT has 65536.
    shape = DecoderShape(1, 32, 2, 2, 16, 64, 40000, "swiglu", True)
    with pytest.raises(CompileError, match="logits needs 80000 bytes of ACT"):
        compile_decoder(random_decoder(shape), load_target("tiny"), CompileOptions(max_len=8))


def test_long_prompts_run_in_chunks_with_the_same_logits():
    """Chunked prefill (forced by a long context on tiny) is chosen and synchronised."""
    shape = DecoderShape(1, 32, 2, 2, 16, 64, 50, "swiglu", True)
    prog = random_decoder(shape)
    c = compile_decoder(prog, load_target("tiny"), CompileOptions(max_len=400, lengths=(400,)))
    chunk = c.program.metadata["decoder"]["prefill_chunk"]
    assert 1 < chunk < 400
    section = c.program.section("prefill_400").instructions
    assert unordered_hazards(section) == []
    assert [s.name for s in c.program.sections] == ["prefill_400"]  # decode_400 > max_len - 1
