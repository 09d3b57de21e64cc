"""The ONNX path through the command line: compile an export, generate with the
functional simulator, dump the logits, and compare them with onnxruntime."""

from __future__ import annotations

import numpy as np
import onnx_builders as ob
import pytest
from click.testing import CliRunner

from flightforge.cli import main
from flightforge.compiler.frontend.ort_reference import ort_logits, session
from flightforge.compiler.graph import DecoderShape, random_decoder

LLAMA = DecoderShape(2, 96, 6, 2, 16, 200, 300, "swiglu", True)


def invoke(*args):
    return CliRunner().invoke(main, [str(a) for a in args])


@pytest.mark.parametrize("buckets,act_bits", [("per-length", 8), ("auto", 8), ("per-length", 16)])
def test_compile_and_run_an_onnx_export(tmp_path, buckets, act_bits):
    prog = random_decoder(LLAMA, seed=3)
    model = ob.llama(prog, 6, tmp_path / "llama.onnx")
    out = tmp_path / "llama.ffb"
    r = invoke(
        "compile",
        model,
        "--target",
        "tiny",
        "--out",
        out,
        "--max-len",
        "24",
        "--buckets",
        buckets,
        "--act-bits",
        act_bits,
    )
    assert r.exit_code == 0, r.output
    prompt = [5, 17, 250, 3, 99, 42]
    dump = tmp_path / "logits.npy"
    r = invoke(
        "run",
        out,
        "--target",
        "tiny",
        "--prompt-ids",
        ",".join(map(str, prompt)),
        "--max-new-tokens",
        "8",
        "--dump-logits",
        dump,
    )
    assert r.exit_code == 0, r.output
    logits = np.load(dump)
    assert logits.shape == (len(prompt) + 8 - 1, 300) and logits.dtype == np.float32
    line = next(x for x in r.output.splitlines() if x.startswith("generated: "))
    tokens = [int(t) for t in line.removeprefix("generated: ").split(",")]
    assert len(tokens) == 8
    assert tokens[:-1] == [int(np.argmax(row)) for row in logits[len(prompt) - 1 : -1]]
    # The float model on the same sequence (prompt plus the generated tokens).
    seq = np.array(prompt + tokens[:-1])
    ref = ort_logits(session(model), seq, prog.kv_heads, prog.head_dim)
    cos = (ref * logits).sum(1) / np.linalg.norm(ref, axis=1) / np.linalg.norm(logits, axis=1)
    # Quantisation tolerance; the accuracy criteria themselves are tested in test_onnx_import.
    assert cos.mean() > 0.98 and cos.min() > (0.99 if act_bits == 16 else 0.95), cos


def test_a_broken_onnx_file_is_a_clean_error(tmp_path):
    bad = tmp_path / "broken.onnx"
    bad.write_bytes(b"\x08\x07garbage")
    r = invoke("compile", bad, "--target", "tiny", "--out", tmp_path / "x.ffb")
    assert r.exit_code == 1 and "broken.onnx" in r.output and "Traceback" not in r.output


def test_calibration_prompts_from_a_file(tmp_path):
    """--calibration: the scales come from the given prompts (the program differs from a
    random-id calibration), and a bad file or token id is a clean error naming it."""
    prog = random_decoder(LLAMA, seed=3)
    model = ob.llama(prog, 6, tmp_path / "llama.onnx")
    prompts = tmp_path / "calib.txt"
    prompts.write_text("5, 17, 250, 3, 99, 42\n\n1 2 3 4 5 6 7 8\n")
    outs = []
    for extra in ([], ["--calibration", prompts]):
        out = tmp_path / f"llama{len(extra)}.ffb"
        r = invoke("compile", model, "--target", "tiny", "--out", out, "--max-len", "12", *extra)
        assert r.exit_code == 0, r.output
        outs.append(out.read_bytes())
    assert outs[0] != outs[1]
    bad = tmp_path / "bad.txt"
    bad.write_text("1 2 3\n4 five 6\n")
    r = invoke(
        "compile",
        model,
        "--target",
        "tiny",
        "--out",
        tmp_path / "x.ffb",
        "--max-len",
        "12",
        "--calibration",
        bad,
    )
    assert r.exit_code == 1 and "bad.txt:2" in r.output  # the file is at fault: exit 1
    bad.write_text("1 2 300\n")
    r = invoke(
        "compile",
        model,
        "--target",
        "tiny",
        "--out",
        tmp_path / "x.ffb",
        "--max-len",
        "12",
        "--calibration",
        bad,
    )
    assert r.exit_code == 1 and "token id 300 is outside the vocabulary 0..299" in r.output
