"""The ONNX path through the command line: compile an export, generate with the
functional simulator, dump the logits, and compare them with onnxruntime."""

from __future__ import annotations

import numpy as np
import pytest
from click.testing import CliRunner

import onnx_builders as ob
from flightforge.cli import main
from flightforge.compiler.graph import DecoderShape, random_decoder
from test_onnx_import import ort_logits, session

LLAMA = DecoderShape(2, 96, 6, 2, 16, 200, 300, "swiglu", True)


def invoke(*args):
    return CliRunner().invoke(main, [str(a) for a in args])


@pytest.mark.parametrize("buckets", ["per-length", "auto"])
def test_compile_and_run_an_onnx_export(tmp_path, buckets):
    prog = random_decoder(LLAMA, seed=3)
    model = ob.llama(prog, 6, tmp_path / "llama.onnx")
    out = tmp_path / "llama.ffb"
    r = invoke("compile", model, "--target", "tiny", "--out", out, "--max-len", "24",
               "--buckets", buckets)
    assert r.exit_code == 0, r.output
    prompt = [5, 17, 250, 3, 99, 42]
    dump = tmp_path / "logits.npy"
    r = invoke("run", out, "--target", "tiny", "--prompt-ids", ",".join(map(str, prompt)),
               "--max-new-tokens", "8", "--dump-logits", dump)
    assert r.exit_code == 0, r.output
    logits = np.load(dump)
    assert logits.shape == (len(prompt) + 8 - 1, 300) and logits.dtype == np.float32
    line = next(x for x in r.output.splitlines() if x.startswith("generated: "))
    tokens = [int(t) for t in line.removeprefix("generated: ").split(",")]
    assert len(tokens) == 8
    assert tokens[:-1] == [int(np.argmax(row)) for row in logits[len(prompt) - 1:-1]]
    # The float model on the same sequence (prompt plus the generated tokens).
    seq = np.array(prompt + tokens[:-1])
    ref = ort_logits(session(model), seq, prog.kv_heads, prog.head_dim)
    cos = (ref * logits).sum(1) / np.linalg.norm(ref, axis=1) / np.linalg.norm(logits, axis=1)
    # Quantisation tolerance; the accuracy criteria themselves are tested in test_onnx_import.
    assert cos.mean() > 0.98 and cos.min() > 0.95, cos


def test_a_broken_onnx_file_is_a_clean_error(tmp_path):
    bad = tmp_path / "broken.onnx"
    bad.write_bytes(b"\x08\x07garbage")
    r = invoke("compile", bad, "--target", "tiny", "--out", tmp_path / "x.ffb")
    assert r.exit_code == 1 and "broken.onnx" in r.output and "Traceback" not in r.output
