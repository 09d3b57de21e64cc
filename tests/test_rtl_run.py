"""``flightforge run --backend rtl``: a whole decoder, compiled from an ONNX export by the
command line, generates on the core's RTL under Verilator exactly as on the functional
simulator (the same tokens, bit-identical logits), in the cycles the cycle model gives
(``--backend cycle``); and ``--waves`` writes the run's waveform.

The binaries are run without ``--target``: each records the target it was compiled for.
"""

from __future__ import annotations

import re

import numpy as np
import onnx_builders as ob
import pytest
from click.testing import CliRunner

from flightforge import isa
from flightforge.cli import main
from flightforge.compiler.graph import DecoderShape, random_decoder
from flightforge.hw.controller import IMEM_DEPTH
from flightforge.program import Program, Section, Segment

pytestmark = [pytest.mark.rtl, pytest.mark.slow]

#: Two layers (every layer of the model runs), GQA-free Llama with RoPE and SwiGLU.
SHAPE = DecoderShape(2, 32, 2, 2, 16, 64, 64, "swiglu", True)
PROMPT = [5, 17, 3, 9]
NEW_TOKENS = 8


def invoke(*args):
    result = CliRunner().invoke(main, [str(a) for a in args])
    assert result.exit_code == 0, result.output
    return result.output


@pytest.fixture(scope="module")
def decoder(rtl_tiny, tmp_path_factory):
    """The ONNX export compiled by ``flightforge compile`` for every length the
    generation needs (prompt plus new tokens)."""
    tmp = tmp_path_factory.mktemp("rtl-run")
    model = ob.llama(random_decoder(SHAPE, seed=3), SHAPE.heads, tmp / "llama.onnx")
    out = tmp / "llama.ffb"
    invoke("compile", model, "--target", rtl_tiny.name, "--out", out, "--max-len", 16)
    return out


def _generate(path, backend: str, logits) -> tuple[str, list[str]]:
    """The ``generated:`` line and the per-section lines of one back end's run."""
    out = invoke(
        "run",
        path,
        "--backend",
        backend,
        "--prompt-ids",
        ",".join(map(str, PROMPT)),
        "--max-new-tokens",
        NEW_TOKENS,
        "--dump-logits",
        logits,
    )
    lines = out.splitlines()
    return next(x for x in lines if x.startswith("generated: ")), [
        x for x in lines if x.startswith(("section ", "total: "))
    ]


def test_a_whole_onnx_decoder_generates_on_the_rtl_as_on_the_functional_sim(decoder, tmp_path):
    program = Program.load(decoder)
    longest = max(len(s) for s in program.sections)
    assert longest <= IMEM_DEPTH, f"a section of {longest} instructions: not held on chip"
    want, _ = _generate(decoder, "functional", tmp_path / "f.npy")
    got, rtl_runs = _generate(decoder, "rtl", tmp_path / "r.npy")
    _, model_runs = _generate(decoder, "cycle", tmp_path / "c.npy")
    assert len(want.split(",")) == NEW_TOKENS
    assert got == want
    f, r = np.load(tmp_path / "f.npy"), np.load(tmp_path / "r.npy")
    assert f.shape == (len(PROMPT) + NEW_TOKENS - 1, SHAPE.vocab)
    assert np.array_equal(f, r), "the RTL's logits differ from the functional simulator's"
    # One prefill and a decode step per further token, every one in the model's cycles.
    assert len(rtl_runs) == 1 + (NEW_TOKENS - 1) + 1
    assert re.fullmatch(r"section prefill_4: \d+ instructions, \d+ cycles", rtl_runs[0])
    assert rtl_runs == model_runs


def test_waves_writes_the_runs_waveform(rtl_tiny, tmp_path):
    """``--waves`` on a short hand-built section (a VCD of every signal of a decode step
    is hundreds of MB): the core's signals over the cycles the run reports. VCD, since
    FST needs the lz4 headers, which not every machine has."""
    code = [
        isa.LD(rows=2, row_bytes=8, src_stride=8, dst_stride=8, release=1 << isa.Unit.ST),
        isa.ST(rows=2, row_bytes=8, src_stride=8, dst_stride=8, dst=64, wait=1 << isa.Unit.LD),
        isa.SYS(op=isa.SysOp.HALT),
    ]
    path = tmp_path / "copy.ffb"
    Program.for_arch(
        rtl_tiny,
        [Section.from_instructions("copy", "main", 1, 1, code)],
        [Segment("src", "input", 0, 16, bytes(range(16))), Segment("dst", "output", 64, 16)],
    ).save(path)
    waves = tmp_path / "run.vcd"
    out = invoke("run", path, "--backend", "rtl", "--waves", waves)
    assert f"wrote {waves}" in out
    text = waves.read_text()
    assert "$enddefinitions" in text and " halted $end" in text and " run_d " in text
    cycles = int(re.search(r"section copy: 3 instructions, (\d+) cycles", out).group(1))
    assert text.count("\n#") > 2 * cycles  # both clock edges of every cycle of the run
