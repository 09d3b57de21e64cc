"""Per-layer weight plans from YAML: resolution, errors, and their effect on a compile."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

from flightforge.compiler.errors import CompileError
from flightforge.compiler.graph import DecoderShape, random_decoder
from flightforge.compiler.pipeline import CompileOptions, compile_decoder
from flightforge.compiler.quant.plans import load_plan, parse_plan
from flightforge.compiler.quant.qdecoder import QuantOptions
from flightforge.generate import generate
from flightforge.isa import SparseMode, WPrec
from flightforge.mappings import load_target
from flightforge.sim.functional import FunctionalSim

ROOT = Path(__file__).resolve().parents[1]
PLAN = {
    "default": {"bits": 4, "group": 32},
    "layers": [
        {"match": "l*.q", "sparse": "8:16"},
        {"match": "l0.*", "bits": 8},
        {"match": "l1.down", "bits": 3},
        {"match": "lm_head", "bits": 8, "group": 0},
    ],
}


def test_later_rules_refine_earlier_ones():
    opts = QuantOptions(spec=parse_plan(PLAN))
    q0, q1 = opts.plan_for("l0.q", 96), opts.plan_for("l1.q", 96)
    assert (q0.prec, q0.sparse, q0.group) == (WPrec.INT8, SparseMode.S8_16, 32)
    assert (q1.prec, q1.sparse, q1.group) == (WPrec.INT4, SparseMode.S8_16, 32)
    down = opts.plan_for("l1.down", 200)
    assert (down.bits, down.prec, down.store_bits, down.group) == (3, WPrec.INT8, 3, 0)  # 200 % 16
    assert opts.plan_for("lm_head", 96).bits == 8 and opts.plan_for("l1.v", 96).bits == 4


@pytest.mark.parametrize(
    "data,message",
    [
        ({"default": {"bitz": 4}}, r"default: unknown field 'bitz'"),
        ({"layers": [{"match": "l*.q", "bits": 5}]}, r"layers\[0\]: bits must be 2, 3, 4 or 8"),
        ({"layers": [{"match": "l*.q", "sparse": "3:16"}]}, r"layers\[0\]: sparse '3:16'"),
        ({"layers": [{"bits": 4}]}, r"layers\[0\]: each entry needs a 'match'"),
        ({"defaults": {}}, r"unknown key 'defaults'"),
    ],
)
def test_bad_plans_name_the_entry(data, message):
    with pytest.raises(CompileError, match=message):
        parse_plan(data, "plan.yaml")


def test_a_pattern_matching_nothing_is_an_error_and_the_shipped_plan_loads():
    prog = random_decoder(DecoderShape(1, 32, 2, 2, 16, 64, 50, "swiglu", True))
    spec = parse_plan({"layers": [{"match": "l*.qproj", "bits": 8}]}, "plan.yaml")
    with pytest.raises(
        CompileError, match=r"plan.yaml: layers\[0\] match 'l\*.qproj' matches no layer"
    ):
        compile_decoder(
            prog, load_target("tiny"), CompileOptions(max_len=8, quant=QuantOptions(spec=spec))
        )
    shipped = load_plan(ROOT / "examples/plans/llama2-7b-flightllm.yaml")
    assert shipped.resolve("l3.k") == {"bits": 4, "group": 128, "sparse": "4:16"}


def test_a_mixed_plan_compiles_and_runs_bit_exactly_with_its_layers_as_planned():
    from flightforge.compiler.quant.accuracy import reference_logits

    prog = random_decoder(DecoderShape(2, 96, 6, 2, 16, 200, 300, "swiglu", True))
    c = compile_decoder(
        prog,
        load_target("tiny"),
        CompileOptions(max_len=16, quant=QuantOptions(spec=parse_plan(PLAN))),
    )
    plans = c.program.metadata["decoder"]["weight_plans"]
    assert plans["l0.q"] == {"bits": 8, "prec": "INT8", "group": 32, "sparse": "S8_16"}
    assert plans["l1.down"]["bits"] == 3 and plans["l1.up"]["bits"] == 4
    prompt = [3, 1, 4, 1, 5, 9, 2]
    gen = generate(c.program, FunctionalSim(load_target("tiny")), prompt, 4)
    assert np.array_equal(gen.logits, reference_logits(c.quantized, prompt, gen.tokens, 16))
