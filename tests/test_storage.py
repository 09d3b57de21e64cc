"""Counting per-length storage: the layer identity holds, and counts equal real compiles."""

from __future__ import annotations

from flightforge.compiler.graph import DecoderShape, random_decoder
from flightforge.compiler.lower import decoder as lower
from flightforge.compiler.lower.builder import Builder
from flightforge.compiler.lower.storage import PassCounter, check_layer_identity, per_length_storage
from flightforge.compiler.pipeline import CompileOptions, compile_decoder
from flightforge.mappings import load_target

TINY = load_target("tiny")


def test_counted_sections_equal_compiled_ones():
    prog = random_decoder(DecoderShape(3, 32, 2, 2, 16, 64, 50, "swiglu", True))
    max_len = 24
    c = compile_decoder(prog, TINY, CompileOptions(max_len=max_len, last_logits_only=True))
    qd = c.quantized
    counter = PassCounter(qd, TINY, max_len)
    check_layer_identity(counter, [(4, 0, "none"), (1, 9, "all"), (3, 20, "last")])
    pl = lower._place(Builder(TINY), qd, max_len, True)
    chunk = lower.prefill_chunk(qd, TINY, pl, max_len, True)
    counted = per_length_storage(counter, chunk, last_only=True)
    real = c.program
    assert counted.prefill == [len(real.section(f"prefill_{n}")) for n in range(1, max_len + 1)]
    assert counted.decode == [len(real.section(f"decode_{p}")) for p in range(1, max_len)]
