"""Shape-only compilation of full-size models from Hugging Face config.json files."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from flightforge.compiler.errors import CompileError
from flightforge.compiler.frontend.hf_config import load_structure, structure_from_config
from flightforge.compiler.lower.schedule import unordered_hazards
from flightforge.compiler.pipeline import CompileOptions, compile_shape_only
from flightforge.compiler.quant.qdecoder import QuantOptions
from flightforge.isa import MM, MV
from flightforge.mappings import load_target

CONFIGS = Path(__file__).parent.parent / "examples" / "configs"


@pytest.mark.parametrize(
    "name,layers,kv,inter,vocab,mlp",
    [
        ("llama2-7b", 32, 32, 11008, 32000, "swiglu"),
        ("llama-3-8b", 32, 8, 14336, 128256, "swiglu"),
        ("llama-3.2-1b", 16, 8, 8192, 128256, "swiglu"),
        ("opt-6.7b", 32, 32, 16384, 50272, "relu"),
    ],
)
def test_shipped_configs_parse(name, layers, kv, inter, vocab, mlp):
    s = load_structure(CONFIGS / f"{name}.json").shape
    assert (s.layers, s.kv_heads, s.intermediate, s.vocab, s.mlp) == (layers, kv, inter, vocab, mlp)


@pytest.mark.slow  # every length up to 256 of a full-size model: over a minute
def test_llama_3_2_1b_compiles_shape_only_for_u280():
    program = compile_shape_only(
        str(CONFIGS / "llama-3.2-1b.json"),
        load_target("u280"),
        CompileOptions(
            max_len=256,
            with_data=False,
            lengths=(16,),
            last_logits_only=True,
            quant=QuantOptions(weight_bits=4, group=128),
        ),
    )
    assert all(s.data is None for s in program.segments)
    weights = sum(s.size for s in program.segments if s.kind == "weights")
    # 1.24e9 parameters at 4 bits plus uint8 group scales and column records.
    assert 0.60e9 < weights < 0.70e9
    decode = program.section("decode_16").instructions
    macs = sum(i.n * i.k * i.rows for i in decode if isinstance(i, (MM, MV)))
    # Every weight is used once per token (the tied LM head included), plus attention.
    assert 1.2e9 < macs < 1.3e9
    assert unordered_hazards(decode) == []


def test_config_errors_name_the_file_and_field(tmp_path):
    with pytest.raises(CompileError, match=r"x\.json: field 'vocab_size' is missing"):
        structure_from_config(
            {
                "model_type": "llama",
                "hidden_size": 8,
                "num_attention_heads": 2,
                "num_hidden_layers": 1,
            },
            "x.json",
        )
    bad = tmp_path / "c.json"
    bad.write_text(json.dumps({"model_type": "bert"}))
    with pytest.raises(CompileError, match="model_type 'bert' is not supported"):
        load_structure(bad)


def test_16_bit_activations_compile_shape_only_with_twice_the_engine_work():
    """Every weight is read by two engine passes and the KV caches hold two planes (the
    split sections' synchronisation is proven on tiny, tests/test_act16.py)."""

    def compiled(act_bits: int):
        return compile_shape_only(
            str(CONFIGS / "llama-3.2-1b.json"),
            load_target("u280"),
            CompileOptions(
                max_len=64,
                with_data=False,
                lengths=(16,),
                last_logits_only=True,
                quant=QuantOptions(weight_bits=4, group=128, act_bits=act_bits),
            ),
        )

    a8, a16 = compiled(8), compiled(16)
    assert a16.metadata["decoder"]["activation_bits"] == 16

    def macs(program):
        return sum(
            i.n * i.k * i.rows
            for i in program.section("decode_16").instructions
            if isinstance(i, (MM, MV))
        )

    def kv(program):
        return sum(s.size for s in program.segments if s.kind == "kv")

    assert kv(a16) == 2 * kv(a8)
    # Linears twice; attention products three times (a small share at 17 positions).
    assert 2.0 < macs(a16) / macs(a8) < 2.05
