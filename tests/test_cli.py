"""The ``flightforge`` command line, through click's CliRunner.

``run`` and ``demo`` drive the functional simulator (and ``run --backend cycle`` the
cycle model beside it); the rest needs none. ``run --backend rtl`` is tested in
test_rtl_run.py.
"""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
from click.testing import CliRunner

from flightforge import isa
from flightforge.cli import main
from flightforge.compiler.demo import build_demo
from flightforge.compiler.graph import DecoderShape, random_decoder
from flightforge.compiler.pipeline import CompileOptions, compile_decoder
from flightforge.mappings import available_targets, load_target
from flightforge.program import Program, Section

ROOT = Path(__file__).parent.parent
LLAMA_1B = ROOT / "examples" / "configs" / "llama-3.2-1b.json"
COMMANDS = ["isa", "targets", "inspect", "run", "demo", "compile"]


def invoke(*args: str):
    return CliRunner().invoke(main, [str(a) for a in args])


def assert_clean_error(result, *fragments: str) -> str:
    """Exit status 1 and one ``Error: ...`` line holding every fragment, no traceback."""
    assert result.exit_code == 1, result.output
    assert result.exception is None or isinstance(result.exception, SystemExit), result.exception
    assert "Traceback" not in result.output
    lines = result.output.strip().splitlines()
    assert lines[-1].startswith("Error: "), result.output
    for f in fragments:
        assert f in lines[-1], (f, result.output)
    return lines[-1]


@pytest.fixture(scope="module")
def demo():
    return build_demo(load_target("tiny"))


@pytest.fixture
def demo_file(demo, tmp_path):
    path = tmp_path / "demo.ffb"
    demo.program.save(path)
    return path


@pytest.mark.parametrize("command", [None, *COMMANDS])
def test_help(command):
    result = invoke(*([command] if command else []), "--help")
    assert result.exit_code == 0, result.output
    assert "Usage: " in result.output
    if command is None:
        for c in COMMANDS:
            assert f"  {c} " in result.output


def test_isa_lists_every_instruction_and_field():
    result = invoke("isa")
    assert result.exit_code == 0
    for op, cls in isa.INSTRUCTION_TYPES.items():
        assert f"{op.name} (opcode {op.value}," in result.output
        for name, lsb, width, _ in isa.layout(cls):
            assert f"{lsb}..{lsb + width - 1}" in result.output and name in result.output


def test_isa_markdown_is_the_reference_table():
    result = invoke("isa", "--markdown")
    assert result.exit_code == 0
    assert result.output == isa.markdown_table()


def test_targets_lists_every_mapping_with_a_summary():
    result = invoke("targets")
    assert result.exit_code == 0
    for name in available_targets():
        line = next(ln for ln in result.output.splitlines() if ln.startswith(name + " "))
        assert "MACs" in line and "MHz" in line and "GB/s" in line
    assert "3 cores x 4096 MACs @ 225 MHz, HBM 460 GB/s" in result.output


def test_inspect_summarises_and_disassembles(demo, demo_file):
    result = invoke("inspect", demo_file, "--target", "tiny")
    assert result.exit_code == 0, result.output
    out = result.output
    assert "arch:     tiny" in out
    assert "instructions per opcode:" in out
    for s in demo.program.sections:
        assert f"section {s.name} ({s.stage}," in out
        for i, ins in enumerate(s.instructions):
            assert f"{i:>2}  {isa.disassemble(ins)}" in out
    for g in demo.program.segments:
        assert g.name in out


def test_inspect_one_section_with_a_limit(demo_file):
    result = invoke("inspect", demo_file, "--section", "attn_decode", "--limit", "3")
    assert result.exit_code == 0, result.output
    assert "section attn_decode" in result.output and "section linear (" not in result.output
    assert "... 23 more (use --limit 0 for all)" in result.output


def test_inspect_refuses_a_byte_flipped_file(demo_file):
    data = bytearray(demo_file.read_bytes())
    data[len(data) // 2] ^= 0x10
    bad = demo_file.with_name("flipped.ffb")
    bad.write_bytes(bytes(data))
    line = assert_clean_error(invoke("inspect", bad), str(bad), "corrupt")
    assert len(invoke("inspect", bad).output.strip().splitlines()) == 1, line


def test_inspect_refuses_another_target(demo_file):
    assert_clean_error(
        invoke("inspect", demo_file, "--target", "u280"), str(demo_file), "'tiny'", "'u280'"
    )


@pytest.mark.parametrize(
    "args,fragments",
    [
        (["inspect", "missing.ffb"], ["missing.ffb", "cannot read"]),
        (["inspect", "{demo}", "--section", "nope"], ["no section 'nope'"]),
        (["inspect", "{demo}", "--target", "u281"], ["unknown target 'u281'"]),
        (["inspect", "{demo}", "--target", "nowhere.yaml"], ["nowhere.yaml"]),
    ],
)
def test_inspect_errors_are_clean(demo_file, args, fragments):
    assert_clean_error(invoke(*(a.format(demo=demo_file) for a in args)), *fragments)


def test_compile_shape_only_then_inspect(tmp_path):
    """--lengths 16 compiles the prefill of a 16-token prompt and the decode step at
    position 16 (max-len defaults to 17); an explicit --max-len 16 has no such step and
    says so."""
    out = tmp_path / "llama.ffb"
    result = invoke(
        "compile",
        "--config",
        LLAMA_1B,
        "--target",
        "u280",
        "--out",
        out,
        "--lengths",
        "16",
        "--weight-bits",
        "4",
        "--group",
        "128",
        "--last-logits-only",
    )
    assert result.exit_code == 0, result.output
    assert f"wrote {out}: 2 sections," in result.output and "(shape-only)" in result.output
    shown = invoke("inspect", out, "--target", "u280", "--limit", "2")
    assert shown.exit_code == 0, shown.output
    assert "prefill_16" in shown.output and "decode_16" in shown.output
    assert "... " in shown.output
    result = invoke(
        "compile", "--config", LLAMA_1B, "--target", "u280", "--out", out, "--lengths", "16",
        "--max-len", "16", "--weight-bits", "4", "--group", "128",
    )  # fmt: skip
    assert result.exit_code == 0, result.output
    assert result.output.startswith(
        "note: --max-len 16 has decode positions up to 15: no decode section for length 16 "
        "(give --max-len 17 for one)\n"
    )
    assert f"wrote {out}: 1 section," in result.output


def test_compile_with_fixed_buckets(tmp_path):
    """FlightLLM's buckets: one section serves many decode positions."""
    config = json.loads(LLAMA_1B.read_text())
    config.update(
        hidden_size=32,
        head_dim=16,
        num_attention_heads=2,
        num_key_value_heads=2,
        intermediate_size=64,
        num_hidden_layers=1,
        vocab_size=50,
    )
    small = tmp_path / "small.json"
    small.write_text(json.dumps(config))
    out = tmp_path / "small.ffb"
    result = invoke(
        "compile",
        "--config",
        small,
        "--target",
        "tiny",
        "--max-len",
        "40",
        "--buckets",
        "fixed",
        "--out",
        out,
    )
    assert result.exit_code == 0, result.output
    program = Program.load(out, load_target("tiny"))
    decode = [(s.len_lo, s.len_hi) for s in program.sections if s.stage == "decode"]
    assert decode == [(1, 16), (17, 32), (33, 39)]


def test_compile_errors_are_clean(tmp_path):
    out = tmp_path / "x.ffb"
    assert_clean_error(
        invoke(
            "compile", "--config", LLAMA_1B, "--target", "tiny", "--out", out, "--lengths", "16"
        ),
        "does not fit",
    )
    assert_clean_error(
        invoke("compile", "--config", tmp_path / "none.json", "--target", "u280", "--out", out),
        "none.json",
    )
    assert not out.exists()


@pytest.mark.parametrize(
    "args",
    [
        ["--target", "u280"],  # neither MODEL nor --config
        ["m.onnx", "--config", str(LLAMA_1B), "--target", "u280"],  # both
        ["--config", str(LLAMA_1B), "--target", "u280", "--weight-bits", "5"],
        ["--config", str(LLAMA_1B), "--target", "u280", "--lengths", "16,x"],
    ],
)
def test_compile_usage_errors(args, tmp_path):
    result = invoke("compile", *args, "--out", tmp_path / "x.ffb")
    assert result.exit_code == 2, result.output


@pytest.mark.parametrize(
    "value,fragments",
    [
        (np.zeros((3, 64)), ["input 'x'", "shape [3, 64]", "[12, 64]"]),
        (np.full((12, 64), 300), ["input 'x'", "exceed the int8 range"]),
    ],
)
def test_run_refuses_bad_inputs_naming_them(demo_file, tmp_path, value, fragments):
    np.save(tmp_path / "x.npy", value)
    assert_clean_error(
        invoke("run", demo_file, "--target", "tiny", "--input", f"x={tmp_path / 'x.npy'}"),
        *fragments,
    )


def test_run_refuses_unknown_inputs_and_files(demo_file, tmp_path):
    assert_clean_error(
        invoke("run", demo_file, "--target", "tiny", "--input", "z=z.npy"),
        "no input 'z'",
        "x, x_new",
    )
    assert_clean_error(
        invoke("run", demo_file, "--target", "tiny", "--input", "x=none.npy"),
        "input 'x'",
        "none.npy",
    )
    assert invoke("run", demo_file, "--target", "tiny", "--input", "x").exit_code == 2


def test_run_and_simulate_take_the_target_from_the_binary(demo_file, tmp_path):
    """Without --target the binary's recorded config is the target; a given --target
    must be the one the program was compiled for (one error naming both)."""
    result = invoke("run", demo_file, "--section", "linear", "--out-dir", tmp_path)
    assert result.exit_code == 0, result.output
    assert "section linear:" in result.output
    assert_clean_error(invoke("run", demo_file, "--target", "u280"), "'tiny'", "'u280'")
    assert_clean_error(
        invoke("simulate", demo_file, "--target", "u280", "--prompt-len", "1"), "'tiny'", "'u280'"
    )


def test_a_version_1_binary_runs_on_its_shipped_target(demo, tmp_path):
    """Binaries written before the target config was recorded (format version 1) still
    run: a shipped target of their name and digest stands in; another name needs
    --target, said in one line."""
    import dataclasses

    old = tmp_path / "old.ffb"
    dataclasses.replace(demo.program, arch_config=None).save(old)
    assert Program.load(old).arch_config is None
    result = invoke("run", old, "--section", "linear", "--out-dir", tmp_path)
    assert result.exit_code == 0, result.output
    mine = tmp_path / "mine.ffb"
    dataclasses.replace(demo.program, arch_config=None, arch_name="mine").save(mine)
    assert_clean_error(invoke("run", mine), "mine.ffb", "'mine'", "give --target")


@pytest.mark.parametrize(
    "args,fragment",
    [
        (["--waves", "w.vcd"], "--waves needs --backend rtl"),
        (["--backend", "rtl", "--waves", "w.txt"], ".fst"),
        (["--backend", "gpu"], "'gpu'"),
        (["--build-dir", "b"], "--build-dir needs --backend rtl"),
    ],
)
def test_run_backend_usage_errors(demo_file, args, fragment):
    result = invoke("run", demo_file, *args)
    assert result.exit_code == 2 and fragment in result.output, result.output


def test_run_on_the_cycle_backend_gives_the_values_and_the_model_cycles(demo, demo_file, tmp_path):
    """--backend cycle: the functional simulator's outputs, the cycle model's cycles per
    section and their total latency at the target's clock."""
    from flightforge.sim.cycle_model import CycleModel

    np.save(tmp_path / "x.npy", demo.inputs["x"])
    out = tmp_path / "out"
    args = ["--section", "linear", "--input", f"x={tmp_path / 'x.npy'}", "--out-dir", out]
    result = invoke("run", demo_file, "--backend", "cycle", *args)
    assert result.exit_code == 0, result.output
    arch = load_target("tiny")
    model = CycleModel(arch)
    model.load(demo.program)
    cycles = model.run("linear").cycles
    assert (
        f"section linear: {len(demo.program.section('linear'))} instructions, {cycles} cycles"
        in (result.output)
    )
    ms = cycles / arch.clock_hz * 1e3
    assert f"total: {cycles} cycles, {ms:.4g} ms at {arch.clock_mhz:g} MHz" in result.output
    np.testing.assert_array_equal(np.load(out / "y_linear.npy"), demo.expected_int["y_linear"])


def test_a_section_longer_than_the_rtls_instruction_buffer_is_refused_first(tmp_path):
    """--backend rtl refuses a section the core cannot hold before building anything
    (so also where Verilator is not installed)."""
    from flightforge.hw.controller import IMEM_DEPTH

    code = [isa.SYS(op=isa.SysOp.NOP)] * IMEM_DEPTH + [isa.SYS(op=isa.SysOp.HALT)]
    path = tmp_path / "long.ffb"
    Program.for_arch(
        load_target("tiny"), [Section.from_instructions("long", "main", 1, 1, code)]
    ).save(path)
    assert_clean_error(
        invoke("run", path, "--backend", "rtl"), "'long'", f"{IMEM_DEPTH + 1} instructions"
    )


def test_run_prompt_ids_needs_a_decoder(demo_file):
    result = invoke("run", demo_file, "--target", "tiny", "--prompt-ids", "1,2")
    assert result.exit_code == 2 and "compiled decoder" in result.output


# --- these run the functional simulator ------------------------------------------------------


def test_run_writes_inputs_and_saves_outputs(demo, demo_file, tmp_path):
    np.save(tmp_path / "x.npy", demo.inputs["x"])  # float: quantised by the CLI
    xq = np.round(demo.inputs["x_new"] / demo.program.inputs[1].scale).clip(-128, 127)
    np.save(tmp_path / "x_new.npy", xq.astype(np.int8))  # integer: written as is
    out = tmp_path / "out"
    result = invoke(
        "run",
        demo_file,
        "--target",
        "tiny",
        "--input",
        f"x={tmp_path / 'x.npy'}",
        "--input",
        f"x_new={tmp_path / 'x_new.npy'}",
        "--out-dir",
        out,
    )
    assert result.exit_code == 0, result.output
    for s in demo.program.sections:
        assert f"section {s.name}: {len(s)} instructions" in result.output
    for t in demo.program.outputs:
        got = np.load(out / f"{t.name}.npy")
        assert got.dtype == np.dtype(t.dtype), f"{t.name} saved as {got.dtype}, not {t.dtype}"
        assert f"output {t.name}: {t.dtype}{list(t.shape)}" in result.output
        np.testing.assert_array_equal(got, demo.expected_int[t.name], err_msg=t.name)
        np.testing.assert_allclose(np.load(out / f"{t.name}.float.npy"), got * t.scale)


def test_run_selected_sections_in_order(demo, demo_file, tmp_path):
    np.save(tmp_path / "x.npy", demo.inputs["x"])
    result = invoke(
        "run",
        demo_file,
        "--target",
        "tiny",
        "--section",
        "linear",
        "--input",
        f"x={tmp_path / 'x.npy'}",
        "--out-dir",
        tmp_path,
    )
    assert result.exit_code == 0, result.output
    assert "section linear:" in result.output and "section attn_prefill" not in result.output
    assert "input 'x_new' not given" in result.output
    np.testing.assert_array_equal(np.load(tmp_path / "y_linear.npy"), demo.expected_int["y_linear"])


def test_run_generates_with_a_compiled_decoder(tmp_path):
    shape = DecoderShape(1, 32, 2, 2, 16, 64, 50, "swiglu", True)
    compiled = compile_decoder(
        random_decoder(shape), load_target("tiny"), CompileOptions(max_len=8, lengths=(4,))
    )
    path = tmp_path / "dec.ffb"
    compiled.program.save(path)
    logits = tmp_path / "logits.npy"
    result = invoke(
        "run",
        path,
        "--target",
        "tiny",
        "--prompt-ids",
        "1,2,3,4",
        "--max-new-tokens",
        "2",
        "--dump-logits",
        logits,
    )
    assert result.exit_code == 0, result.output
    line = next(ln for ln in result.output.splitlines() if ln.startswith("generated: "))
    tokens = [int(t) for t in line.removeprefix("generated: ").split(",")]
    assert len(tokens) == 2 and all(0 <= t < 50 for t in tokens)
    assert np.load(logits).shape == (5, 50)
    timed = invoke(
        "run", path, "--backend", "cycle", "--prompt-ids", "1,2,3,4", "--max-new-tokens", "2"
    )
    assert timed.exit_code == 0, timed.output
    assert line in timed.output.splitlines()  # the same tokens, computed functionally
    assert "section prefill_4: " in timed.output and "total: " in timed.output
    assert_clean_error(
        invoke("run", path, "--target", "tiny", "--prompt-ids", "1,99"), "outside the vocabulary"
    )


def test_demo_is_bit_exact_and_saves_what_run_needs(tmp_path):
    result = invoke("demo", "--target", "tiny", "--save", tmp_path)
    assert result.exit_code == 0, result.output
    for name in ("y_linear", "y_prefill", "y_decode"):
        row = next(ln for ln in result.output.splitlines() if ln.startswith(name))
        assert row.split()[1:3] == ["yes", "0"], row
    assert "all 3 outputs bit-exact on tiny" in result.output
    # The README's tour: the saved program and inputs run again through `run`.
    again = invoke(
        "run",
        tmp_path / "demo.ffb",
        "--target",
        "tiny",
        "--input",
        f"x={tmp_path / 'x.npy'}",
        "--input",
        f"x_new={tmp_path / 'x_new.npy'}",
        "--out-dir",
        tmp_path / "out",
    )
    assert again.exit_code == 0, again.output
    assert sorted(p.name for p in (tmp_path / "out").iterdir()) == sorted(
        f"{n}{ext}" for n in ("y_linear", "y_prefill", "y_decode") for ext in (".npy", ".float.npy")
    )


def test_run_length_outside_a_section_is_a_clean_error(demo_file):
    assert_clean_error(
        invoke("run", demo_file, "--target", "tiny", "--section", "linear", "--length", "5"),
        "'linear'",
        "12..12",
        "not 5",
    )
