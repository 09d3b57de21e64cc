"""A one-layer decoder compiled by the real compiler for ``tiny`` (prefill and decode
sections) through :func:`flightforge.generate.generate` on the RTL and on the
functional simulator: the generated tokens and the final external memory are identical.
Every section's RTL cycles equal the cycle model's.

Compiled four times: one section per length, FlightLLM's fixed length buckets, whose
sections run with ``D = length - len_lo`` in the core's length register, a
mixed-precision plan of packed 2- and 3-bit weights, which the load unit widens to INT8
(LD ``unpack``), and 16-bit activations (each engine input split into two INT8 halves by
the SFU, products chained through ``acc_in``, INT16 probabilities)."""

import numpy as np
import pytest

from flightforge import isa
from flightforge.compiler.graph import ONE_LAYER, random_decoder
from flightforge.compiler.pipeline import CompileOptions, compile_decoder
from flightforge.compiler.quant.plans import parse_plan
from flightforge.compiler.quant.qdecoder import QuantOptions
from flightforge.generate import decode_run, generate
from flightforge.sim import rtl_harness as h
from flightforge.sim.cycle_model import CycleModel
from flightforge.sim.device import RecordingDevice
from flightforge.sim.functional import FunctionalSim

pytestmark = [pytest.mark.rtl, pytest.mark.slow]

PROMPT = [3, 17, 42]
NEW_TOKENS = 2


#: 3-bit weights with 2-bit attention output and MLP down projection, as a
#: mixed-precision plan file would give them (compiler/quant/plans.py).
MIXED_2_3_BIT = {
    "default": {"bits": 3, "group": 16},
    "layers": [{"match": "l*.o", "bits": 2}, {"match": "l*.down", "bits": 2}],
}


@pytest.fixture(scope="module", params=["per-length", "fixed", "mixed-2/3-bit", "act16"])
def decoder(rtl_tiny, request):
    shape = ONE_LAYER
    buckets, quant = request.param, QuantOptions()
    if request.param == "mixed-2/3-bit":
        buckets, quant = "per-length", QuantOptions(spec=parse_plan(MIXED_2_3_BIT))
    if request.param == "act16":
        buckets, quant = "per-length", QuantOptions(act_bits=16)
    program = compile_decoder(
        random_decoder(shape, seed=1),
        rtl_tiny,
        CompileOptions(max_len=len(PROMPT) + NEW_TOKENS, buckets=buckets, quant=quant),
    ).program
    if request.param == "mixed-2/3-bit":
        widths = {
            isa.Unpack(i.unpack).bits
            for s in program.sections
            for i in s.instructions
            if isinstance(i, isa.LD) and i.unpack != isa.Unpack.NONE
        }
        assert widths == {2, 3}, f"the plan should load 2- and 3-bit weights, not {widths}"
    if request.param == "act16":
        assert any(
            isinstance(i, isa.MISC) and i.op == isa.MiscOp.LUT and i.d_dt == isa.DType.INT8
            for s in program.sections
            for i in s.instructions
        ), "no 16-bit split"
    rtl, ref = RecordingDevice(h.RtlDevice(rtl_tiny)), FunctionalSim(rtl_tiny)
    got = generate(program, rtl, PROMPT, NEW_TOKENS)
    want = generate(program, ref, PROMPT, NEW_TOKENS)
    model = RecordingDevice(CycleModel(rtl_tiny))
    generate(program, model, PROMPT, NEW_TOKENS)  # timing does not depend on the data
    return program, rtl, ref, got, want, model


def test_decoder_layer_on_rtl_equals_functional_sim(decoder) -> None:
    program, rtl, ref, got, want, _ = decoder
    if any(s.len_hi > s.len_lo for s in program.sections):  # length-adaptive sections
        runs = [decode_run(program, len(PROMPT) + j) for j in range(NEW_TOKENS)]
        assert any(r.length > program.section(r.section).len_lo for r in runs), (
            "no decode run with D > 0: the length register is not exercised"
        )
    assert got.tokens == want.tokens
    for seg in program.segments:
        a = np.frombuffer(rtl.read(seg.addr, seg.size), np.uint8)
        b = np.frombuffer(ref.read(seg.addr, seg.size), np.uint8)
        bad = np.nonzero(a != b)[0]
        assert not len(bad), f"segment {seg.name}: RTL and functional simulator differ at {bad[:8]}"


def test_decoder_layer_cycles_match_cycle_model(decoder) -> None:
    _, rtl, _, _, _, model = decoder
    assert [r.section for r in rtl.runs] == [r.section for r in model.runs]
    lines, bad = [], []
    for a, b in zip(rtl.runs, model.runs, strict=True):
        err = a.cycles / b.cycles - 1
        lines.append(f"decoder.{a.section}: rtl {a.cycles} model {b.cycles} error {err:+.2%}")
        if a.cycles != b.cycles:
            bad.append(lines[-1])
    print("\n".join(lines))
    assert not bad, "RTL and cycle model differ:\n" + "\n".join(bad)
