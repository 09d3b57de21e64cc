"""A reduction longer than the MPE's activation tile buffer (``mpe.tile_k``) is split by
the compiler into K chunks chained through INT32 partial sums (``acc_in``), and the
program still computes the integer reference's logits bit for bit."""

from __future__ import annotations

import numpy as np
import pytest

from flightforge import isa
from flightforge.arch import arch_from_dict
from flightforge.compiler.errors import CompileError
from flightforge.compiler.graph import FAMILIES, random_decoder
from flightforge.compiler.lower.kernels import k_chunks
from flightforge.compiler.pipeline import CompileOptions, compile_decoder
from flightforge.compiler.quant.accuracy import reference_logits
from flightforge.compiler.quant.qdecoder import QuantOptions
from flightforge.compiler.quant.quantize import LinearLayout
from flightforge.generate import generate
from flightforge.mappings import load_target
from flightforge.sim.functional import FunctionalSim

TINY = load_target("tiny")


def _tile_k(k: int):
    d = TINY.model_dump(mode="json")
    d["mpe"]["tile_k"] = k
    return arch_from_dict(d, f"tile_k={k}")


@pytest.mark.parametrize(
    "quant",
    [
        QuantOptions(),  # INT8 weights, per-column scales
        QuantOptions(weight_bits=4, group=32),  # INT4 with group scales: chunks of groups
        QuantOptions(weight_bits=3, group=32),  # 3-bit values packed externally
        QuantOptions(act_bits=16),  # 16-bit inputs: high-half chunks, then low-half ones
    ],
    ids=["int8", "int4-g32", "int3-g32", "a16"],
)
def test_a_split_k_is_bit_exact(quant):
    """The test decoder's projections reduce over K = 96 (hidden) and 200 (its down
    projection); with ``tile_k`` 32 they run as 3 and 7 chained passes."""
    shape, kw = FAMILIES["llama-gqa"]
    prog = random_decoder(shape, **kw)
    arch = _tile_k(32)
    c = compile_decoder(prog, arch, CompileOptions(max_len=12, quant=quant))
    mm = [i for s in c.program.sections for i in s.instructions if isinstance(i, (isa.MM, isa.MV))]
    assert max(i.k for i in mm) <= 32
    assert any(i.acc_in and i.k == 32 and i.odt == isa.DType.INT32 for i in mm)
    prompt = [int(t) for t in np.random.default_rng(3).integers(0, prog.vocab, size=6)]
    gen = generate(c.program, FunctionalSim(arch), prompt, 3)
    assert np.array_equal(gen.logits, reference_logits(c.quantized, prompt, gen.tokens, 12))


def test_chunks_start_on_whole_bytes_and_groups():
    lay = LinearLayout(8, 200, isa.WPrec.INT4, isa.SparseMode.S2_4, 0)
    assert k_chunks(100, lay, "x") == [(0, 96), (96, 192), (192, 200)]
    assert k_chunks(200, lay, "x") == [(0, 200)]
    grouped = LinearLayout(8, 256, isa.WPrec.INT4, isa.SparseMode.DENSE, 64)
    assert k_chunks(100, grouped, "x") == [(0, 64), (64, 128), (128, 192), (192, 256)]
    with pytest.raises(CompileError, match=r"x: K=256 exceeds mpe\.tile_k = 32"):
        k_chunks(32, grouped, "x")


def test_attention_longer_than_the_tile_buffer_is_refused_naming_k():
    """The PV product reduces over the context; its K is not split (it grows with D in
    a length-adaptive section), so a context past ``tile_k`` is a compile error."""
    shape, kw = FAMILIES["llama-gqa"]
    with pytest.raises(CompileError, match=r"M[MV] with K=40 \(k field\).*mpe\.tile_k = 32"):
        compile_decoder(
            random_decoder(shape, **kw), _tile_k(32), CompileOptions(max_len=40, lengths=(40,))
        )
