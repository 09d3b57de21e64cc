"""Bad input, as a careless user or an attacker would give it, ends in one ``Error:`` line
naming the file or field, exit status 1, nothing half-written, and no hang.

Classes (issue 16): small inputs that declare or expand to huge ones; writes that fail
part-way (a file-size limit stands in for a full disk); files whose contents are of the
wrong encoding, structure or type; and a seeded fuzz of the binary loader and the
YAML and ONNX readers. The architecture config's own limits are tested in
test_arch.py and test_arch_limits.py.

Each case runs under :func:`bounded`: a hang guard (an alarm, far above the time any of
these takes) and a cap on the memory Python and numpy allocate (tracemalloc), so a
regression fails instead of hanging the suite or exhausting the machine.
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import random
import resource
import signal
import subprocess
import sys
import tracemalloc
from pathlib import Path

import numpy as np
import pytest
import yaml
from bad_inputs import big_initializer, huge_npy, laughs, onnx_with
from click.testing import CliRunner
from onnx import TensorProto, helper

from flightforge import program as ffb
from flightforge.cli import main
from flightforge.compiler.demo import build_demo
from flightforge.compiler.graph import DecoderShape, random_decoder
from flightforge.compiler.pipeline import CompileOptions, compile_decoder
from flightforge.mappings import load_target, target_path

HANG_SECONDS = 20  #: a guard against hangs, not a speed target
MEMORY_CAP = 100 * 2**20  #: bytes a refusal may allocate (issue 16's bound for 1 KB inputs)

TINY_HF_CONFIG = {
    "architectures": ["LlamaForCausalLM"],
    "model_type": "llama",
    "hidden_size": 64,
    "intermediate_size": 128,
    "num_attention_heads": 4,
    "num_key_value_heads": 2,
    "num_hidden_layers": 1,
    "vocab_size": 100,
    "hidden_act": "silu",
    "rms_norm_eps": 1e-5,
    "rope_theta": 10000.0,
    "max_position_embeddings": 64,
    "tie_word_embeddings": False,
}


@contextlib.contextmanager
def bounded():
    """Fail, rather than hang or swap, if the block runs away."""

    def alarm(signum, frame):
        raise TimeoutError(f"still running after {HANG_SECONDS} s")

    old = signal.signal(signal.SIGALRM, alarm)
    signal.alarm(HANG_SECONDS)
    tracemalloc.start()
    try:
        yield
        _, peak = tracemalloc.get_traced_memory()
        assert peak < MEMORY_CAP, f"allocated {peak / 2**20:.0f} MiB"
    finally:
        tracemalloc.stop()
        signal.alarm(0)
        signal.signal(signal.SIGALRM, old)


def invoke(*args):
    return CliRunner().invoke(main, [str(a) for a in args])


def clean_error(result, *fragments: str) -> str:
    """Exit status 1, no traceback, exactly one ``Error:`` line; the error (that line and
    any indented detail lines after it) holds every fragment. Returns the error."""
    out = result.output
    assert result.exit_code == 1, out
    assert result.exception is None or isinstance(result.exception, SystemExit), result.exception
    assert "Traceback" not in out, out
    starts = [i for i, ln in enumerate(out.splitlines()) if ln.startswith("Error:")]
    assert len(starts) == 1, out
    error = "\n".join(out.splitlines()[starts[0] :])
    for f in fragments:
        assert f in error, (f, out)
    return error


def refused(*args, fragments=()) -> str:
    """Run the CLI bounded; it must end in one clean error holding ``fragments``."""
    with bounded():
        result = invoke(*args)
    return clean_error(result, *fragments)


@pytest.fixture(scope="module")
def demo_file(tmp_path_factory) -> Path:
    path = tmp_path_factory.mktemp("demo") / "demo.ffb"
    build_demo(load_target("tiny")).program.save(path)
    return path


@pytest.fixture(scope="module")
def decoder_file(tmp_path_factory) -> Path:
    path = tmp_path_factory.mktemp("decoder") / "decoder.ffb"
    prog = random_decoder(DecoderShape(1, 32, 2, 1, 16, 64, 300, "swiglu", True), seed=3)
    compile_decoder(prog, load_target("tiny"), CompileOptions(max_len=8)).program.save(path)
    return path


@pytest.fixture
def hf_config(tmp_path) -> Path:
    path = tmp_path / "config.json"
    path.write_text(json.dumps(TINY_HF_CONFIG))
    return path


# --- small inputs that declare or expand to huge ones ------------------------------------------


def test_nested_yaml_aliases_are_refused_as_a_target_a_plan_and_a_dse_spec(
    tmp_path, demo_file, hf_config
):
    bomb = laughs(tmp_path / "bomb.yaml")
    assert bomb.stat().st_size < 1024
    out = tmp_path / "x.ffb"
    refused("inspect", demo_file, "--target", bomb, fragments=[str(bomb), "aliases"])
    refused(
        "compile", "--config", hf_config, "--target", "tiny", "--plan", bomb, "--out", out,
        fragments=[str(bomb), "aliases"],
    )  # fmt: skip
    refused("dse", bomb, "--out", tmp_path / "dse", fragments=[str(bomb), "aliases"])
    assert not out.exists()


def test_an_npy_header_declaring_more_than_the_file_holds_is_refused(tmp_path, demo_file):
    path = huge_npy(tmp_path / "huge.npy")
    refused(
        "run", demo_file, "--target", "tiny", "--input", f"x={path}",
        fragments=[str(path), "declares", "16 bytes of data"],
    )  # fmt: skip


def _onnx_with(tmp_path: Path, tensor: TensorProto) -> Path:
    return onnx_with(tmp_path / "model.onnx", tensor)


def test_an_onnx_initialiser_declaring_more_than_it_holds_is_refused(tmp_path):
    model = _onnx_with(tmp_path, big_initializer())
    refused(
        "compile", model, "--target", "tiny", "--out", tmp_path / "x.ffb",
        fragments=[str(model), "'big'", "declares dims [100000, 100000]"],
    )  # fmt: skip


def test_a_bad_onnx_file_is_refused_before_onnx_is_imported(tmp_path):
    """The README's one-second promise: the refusal must not pay for ``import onnx``
    (0.7-0.9 s of CPU, most of it ml_dtypes). In a fresh interpreter, the compile command
    refuses the file with neither ``onnx`` nor ``ml_dtypes`` loaded; importing ``onnx``
    afterwards still works and parses with the same message classes."""
    model = _onnx_with(tmp_path, big_initializer())
    code = f"""
import sys
from flightforge.cli import main
try:
    main(["compile", {str(model)!r}, "--target", "tiny", "--out", {str(tmp_path / "x.ffb")!r}])
except SystemExit as e:
    assert e.code == 1, e.code
loaded = sorted(m for m in ("onnx", "ml_dtypes", "onnxruntime") if m in sys.modules)
assert not loaded, loaded
from flightforge.compiler.frontend.onnx_file import read_checked
import onnx
assert type(read_checked({str(model)!r}.replace("model.onnx", "ok.onnx"))) is onnx.ModelProto
"""
    onnx_with(tmp_path / "ok.onnx", helper.make_tensor("w", TensorProto.FLOAT, [2], [1.0, 2.0]))
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120)
    assert out.returncode == 0, out.stderr
    assert "declares dims [100000, 100000]" in out.stderr + out.stdout


def test_devices_and_endless_files_are_refused(tmp_path, demo_file, hf_config):
    refused("inspect", "/dev/zero", fragments=["/dev/zero", "not a regular file"])
    refused(
        "compile", "--config", hf_config, "--target", "tiny", "--plan", "/dev/zero",
        "--out", tmp_path / "x.ffb", fragments=["/dev/zero", "more than the limit"],
    )  # fmt: skip
    refused(
        "run", demo_file, "--target", "tiny", "--input", "x=/dev/zero",
        fragments=["/dev/zero", "not a regular file"],
    )  # fmt: skip


def test_a_huge_max_len_is_refused_before_tables_grow_with_it(tmp_path, hf_config):
    refused(
        "compile", "--config", hf_config, "--target", "tiny", "--max-len", "10000000",
        "--out", tmp_path / "x.ffb", fragments=["does not fit in external memory"],
    )  # fmt: skip


# --- writes that fail part-way -------------------------------------------------------------------


def _cli_with_file_limit(limit: int, *args) -> subprocess.CompletedProcess:
    """The CLI in a child process that may write files of at most ``limit`` bytes (as a
    full disk would stop it; Python ignores SIGXFSZ, so writes fail with EFBIG)."""

    def cap() -> None:
        resource.setrlimit(resource.RLIMIT_FSIZE, (limit, limit))

    return subprocess.run(
        [sys.executable, "-m", "flightforge.cli", *map(str, args)],
        preexec_fn=cap,
        capture_output=True,
        text=True,
        timeout=300,
    )


def _one_error(proc: subprocess.CompletedProcess, *fragments: str) -> None:
    assert proc.returncode == 1, proc.stdout + proc.stderr
    assert "Traceback" not in proc.stderr, proc.stderr
    errors = [ln for ln in proc.stderr.splitlines() if ln.startswith("Error:")]
    assert len(errors) == 1, proc.stderr
    for f in fragments:
        assert f in errors[0], (f, errors[0])


def test_a_failed_compile_write_keeps_the_earlier_binary(tmp_path, hf_config, demo_file):
    out = tmp_path / "model.ffb"
    out.write_bytes(demo_file.read_bytes())  # an earlier, good binary
    proc = _cli_with_file_limit(
        4096, "compile", "--config", hf_config, "--target", "tiny", "--out", out, "--max-len", "4"
    )
    _one_error(proc, str(out), "cannot write")
    assert out.read_bytes() == demo_file.read_bytes()
    assert [p.name for p in tmp_path.iterdir() if p.name.startswith(".")] == []


def test_a_failed_logits_dump_leaves_no_partial_npy(tmp_path, decoder_file):
    dump = tmp_path / "logits.npy"
    proc = _cli_with_file_limit(
        1024, "run", decoder_file, "--target", "tiny", "--prompt-ids", "1,2,3",
        "--max-new-tokens", "2", "--dump-logits", dump,
    )  # fmt: skip
    _one_error(proc, str(dump), "cannot write")
    assert not dump.exists()


def test_a_failed_demo_save_leaves_no_empty_file(tmp_path):
    proc = _cli_with_file_limit(1024, "demo", "--save", tmp_path / "saved")
    _one_error(proc, str(tmp_path / "saved" / "demo.ffb"), "cannot write")
    assert list((tmp_path / "saved").iterdir()) == []


@pytest.mark.parametrize("made", [True, False], ids=["missing-folder", "unmakeable-folder"])
def test_the_output_folder_is_made_or_refused_before_compiling(
    tmp_path, hf_config, monkeypatch, made
):
    from flightforge.compiler import pipeline

    def compiled(*args, **kwargs):
        assert out.parent.is_dir(), "compiled before making the --out folder"
        raise pipeline.CompileError("stop here")

    monkeypatch.setattr(pipeline, "compile_shape_only", compiled)
    blocker = tmp_path / "a-file"
    blocker.write_text("")
    out = (tmp_path / "new" if made else blocker) / "sub" / "x.ffb"
    args = ("compile", "--config", hf_config, "--target", "tiny", "--out", out)
    if made:
        refused(*args, fragments=["stop here"])
    else:
        refused(*args, fragments=[str(blocker), "cannot create the output folder"])


def test_a_device_as_output_is_written_in_place_not_replaced():
    import stat

    from flightforge.files import write_bytes

    write_bytes(Path("/dev/null"), b"discarded")
    assert stat.S_ISCHR(Path("/dev/null").stat().st_mode)


# --- wrong encoding, structure or type -----------------------------------------------------------


def test_non_utf8_inputs_are_named(tmp_path, demo_file, hf_config):
    target = tmp_path / "latin1.yaml"
    target.write_bytes(b"name: caf\xe9\n")
    refused("inspect", demo_file, "--target", target, fragments=[str(target), "not UTF-8"])
    config = tmp_path / "latin1.json"
    config.write_bytes(b'{"model_type": "caf\xe9"}')
    refused(
        "compile", "--config", config, "--target", "tiny", "--out", tmp_path / "x.ffb",
        fragments=[str(config), "not UTF-8", "offset 19"],
    )  # fmt: skip
    prompts = tmp_path / "prompts.txt"
    prompts.write_bytes(b"1 2 3\n4 \xff 6\n")
    model = _onnx_with(tmp_path, helper.make_tensor("w", TensorProto.FLOAT, [1], [0.0]))
    refused(
        "compile", model, "--target", "tiny", "--out", tmp_path / "x.ffb",
        "--calibration", prompts, fragments=[str(prompts), "not UTF-8", "line 2"],
    )  # fmt: skip


def test_bad_calibration_contents_are_exit_1_not_a_usage_error(tmp_path):
    prompts = tmp_path / "prompts.txt"
    prompts.write_text("1 2 3\n4 five 6\n")
    model = _onnx_with(tmp_path, helper.make_tensor("w", TensorProto.FLOAT, [1], [0.0]))
    refused(
        "compile", model, "--target", "tiny", "--out", tmp_path / "x.ffb",
        "--calibration", prompts, fragments=[f"{prompts}:2", "expected token ids"],
    )  # fmt: skip


@pytest.mark.parametrize(
    "plan,fragment",
    [
        ({"default": [4, 8]}, "default: expected a mapping"),
        ({"layers": 5}, "layers must be a list"),
        ({"layers": [{"match": 1, "bits": 4}]}, "layers[0]: each entry needs a 'match'"),
        ({"default": {"bits": 4.0}}, "bits must be 2, 3, 4 or 8, not 4.0"),
        ({"default": {"group": True}}, "group must be a non-negative integer, not True"),
        ({"default": {"sparse": [2, 4]}}, "sparse must be 'dense' or 'n:m'"),
    ],
)
def test_a_plan_of_the_wrong_structure_is_named(tmp_path, hf_config, plan, fragment):
    path = tmp_path / "plan.yaml"
    path.write_text(yaml.safe_dump(plan))
    refused(
        "compile", "--config", hf_config, "--target", "tiny", "--plan", path,
        "--out", tmp_path / "x.ffb", fragments=[str(path), fragment],
    )  # fmt: skip


def _with_manifest(data: bytes, edit) -> bytes:
    """``data`` with its manifest edited by ``edit`` and a valid checksum again."""
    head = ffb._HEADER.unpack_from(data)
    mlen, plen = head[3], head[5]
    start = ffb._HEADER.size
    manifest = json.loads(data[start : start + mlen])
    edit(manifest)
    text = json.dumps(manifest).encode()
    payload = data[start + mlen : start + mlen + plen]
    body = ffb._HEADER.pack(*head[:3], len(text), head[4], plen) + text + payload
    return body + hashlib.sha256(body).digest()


@pytest.mark.parametrize(
    "edit,fragment",
    [
        (lambda m: m["sections"][0].update(len_lo="1"), "sections.0.len_lo"),
        (lambda m: m["segments"][0].update(addr=None), "segments.0.addr"),
        (lambda m: m.update(sections={}), "manifest field sections"),
        (lambda m: m["metadata"].update(inputs=[{"name": 1}]), "metadata.inputs.0"),
        (lambda m: m["metadata"].update(decoder={"max_len": True}), "metadata.decoder"),
    ],
)
def test_a_manifest_of_wrong_types_behind_a_valid_checksum_is_named(
    tmp_path, demo_file, edit, fragment
):
    path = tmp_path / "edited.ffb"
    path.write_bytes(_with_manifest(demo_file.read_bytes(), edit))
    refused("inspect", path, fragments=[str(path), fragment])


def test_an_empty_npy_is_named(tmp_path, demo_file):
    empty = tmp_path / "empty.npy"
    empty.write_bytes(b"")
    refused(
        "run", demo_file, "--target", "tiny", "--input", f"x={empty}",
        fragments=["input 'x'", str(empty), "not a readable .npy file"],
    )  # fmt: skip


def test_a_pickled_npy_is_refused(tmp_path, demo_file):
    path = tmp_path / "objects.npy"
    np.save(path, np.array([{"a": 1}], dtype=object), allow_pickle=True)
    refused(
        "run", demo_file, "--target", "tiny", "--input", f"x={path}",
        fragments=[str(path), "Python objects"],
    )  # fmt: skip


def test_simulating_a_program_that_is_not_a_decoder_says_so(demo_file):
    refused(
        "simulate", demo_file, "--target", "tiny", "--prompt-len", "4",
        fragments=["not a compiled decoder"],
    )  # fmt: skip


@pytest.mark.parametrize(
    "path,value,fragment",
    [
        ("cores", True, "cores: Input should be a valid integer"),
        ("buffers.act.size", 65537, "size 65537 is not a multiple of the 8 byte lanes"),
        ("sfu.lanes", 3, "sfu.lanes: Input should be a multiple of 2"),
        ("hbm.burst_bytes", 24, "burst_bytes must be a power of two, not 24"),
        ("clock_mhz", float("inf"), "clock_mhz: Input should be a finite number"),
        ("hbm.latency_ns", 1e12, "latency_ns: Input should be less than or equal to"),
    ],
)
def test_a_config_later_stages_cannot_build_is_refused_by_rtl_and_simulate(
    tmp_path, decoder_file, path, value, fragment
):
    data = yaml.safe_load(target_path("tiny").read_text())
    *parents, last = path.split(".")
    node = data
    for p in parents:
        node = node[p]
    node[last] = value
    target = tmp_path / "bad.yaml"
    target.write_text(yaml.safe_dump(data))
    refused("rtl", "--target", target, "--out", tmp_path / "rtl", fragments=[str(target), fragment])
    refused(
        "simulate", decoder_file, "--target", target, "--prompt-len", "2",
        fragments=[f"{target}: invalid architecture config", fragment],
    )  # fmt: skip
    assert not (tmp_path / "rtl").exists()


# --- the fuzz ----------------------------------------------------------------------------------


def _mutate(data: bytes, rng: random.Random) -> bytes:
    """One of: flip a byte, drop a span, duplicate a span, truncate."""
    data = bytearray(data)
    at = rng.randrange(len(data))
    kind = rng.randrange(4)
    if kind == 0:
        data[at] ^= 1 << rng.randrange(8)
    elif kind == 1:
        del data[at : at + rng.randrange(1, 64)]
    elif kind == 2:
        data[at:at] = data[at : at + rng.randrange(1, 64)]
    else:
        del data[at:]
    return bytes(data)


def _fuzz_onnx() -> bytes:
    w = helper.make_tensor("w", TensorProto.FLOAT, [4, 4], np.ones(16, np.float32).tobytes(), True)
    x = helper.make_tensor_value_info("x", TensorProto.FLOAT, [1, 4])
    y = helper.make_tensor_value_info("y", TensorProto.FLOAT, [1, 4])
    graph = helper.make_graph([helper.make_node("MatMul", ["x", "w"], ["y"])], "g", [x], [y], [w])
    return helper.make_model(graph).SerializeToString()


FUZZ_CASES = 40  #: per format; seeded, so every run tries the same inputs


@pytest.mark.parametrize("kind", ["ffb", "yaml", "onnx"])
def test_fuzzed_inputs_end_in_one_error_line(tmp_path, demo_file, kind):
    """Mutated binaries, targets and ONNX models: exit 1 with one ``Error:`` line (or
    exit 0 where a mutation leaves a valid target), never a traceback or a hang."""
    rng = random.Random(f"issue-16-{kind}")
    seed = {
        "ffb": demo_file.read_bytes(),
        "yaml": target_path("tiny").read_bytes(),
        "onnx": _fuzz_onnx(),
    }[kind]
    path = tmp_path / f"fuzzed.{kind}"
    for case in range(FUZZ_CASES):
        path.write_bytes(_mutate(seed, rng))
        args = {
            "ffb": ["inspect", path, "--target", "tiny"],
            "yaml": ["inspect", demo_file, "--target", path],
            "onnx": ["compile", path, "--target", "tiny", "--out", tmp_path / "x.ffb"],
        }[kind]
        with bounded():
            result = invoke(*args)
        if result.exit_code == 0 and kind == "yaml":
            continue
        try:
            error = clean_error(result)
        except AssertionError:
            raise AssertionError(f"case {case}: {result.output}") from result.exception
        assert str(path) in error or kind == "yaml", (case, error)
