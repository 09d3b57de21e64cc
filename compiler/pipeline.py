"""The compiler pipeline, as one straight list of named steps.

    DecoderProgram --calibrate--> ranges --quantize--> QuantDecoder --lower--> Program

The ONNX frontend produces the DecoderProgram (see :func:`compile_onnx`); tests and
examples may build one directly.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np

from flightforge import progress
from flightforge.arch import ArchConfig
from flightforge.program import Program

from .errors import CompileError
from .graph import DecoderProgram
from .lower.buckets import BucketPlan
from .lower.decoder import lower_decoder
from .lower.schedule import unordered_hazards
from .quant.calibrate import calibrate
from .quant.prune import prune_decoder
from .quant.qdecoder import QuantDecoder, QuantOptions, quantize_decoder

DEFAULT_CALIBRATION_PROMPTS = 4
DEFAULT_CALIBRATION_LENGTH = 16


@dataclass(frozen=True)
class CompileOptions:
    max_len: int = 32  #: longest prompt plus generated tokens the program supports
    quant: QuantOptions = field(default_factory=QuantOptions)
    calibration: tuple[tuple[int, ...], ...] = ()  #: sample prompts; random ids when empty
    seed: int = 0
    with_data: bool = True  #: False compiles addresses and sizes only (shape-only)
    lengths: tuple[int, ...] | None = None  #: compile only these lengths (default: all)
    last_logits_only: bool = False  #: prefill computes the LM head for its last row only
    verify: bool = False  #: prove every section's tokens order all hazards (slow on big models)
    prune: str = "magnitude"  #: N:M pruning of sparse layers: magnitude or sparsegpt
    buckets: str | BucketPlan = "per-length"  #: per-length, fixed (FlightLLM's), auto, or a plan
    bucket_bound: float = 0.02  #: auto buckets: modelled latency overhead allowed per length
    bucket_latency: str = "cycle"  #: auto buckets' latency model: cycle or analytical


@dataclass(frozen=True)
class Compiled:
    program: Program
    quantized: QuantDecoder


def calibration_prompts(prog: DecoderProgram, options: CompileOptions) -> list[np.ndarray]:
    """The prompts activation scales are calibrated on: the given ones (text of the
    model's language calibrates far better than random ids), else random ids."""
    if options.calibration:
        for i, p in enumerate(options.calibration):
            if not len(p):
                raise CompileError(f"calibration prompt {i} is empty")
            if len(p) > options.max_len:
                raise CompileError(
                    f"calibration prompt {i} has {len(p)} tokens; max_len is {options.max_len}"
                )
            bad = [t for t in p if not 0 <= t < prog.vocab]
            if bad:
                raise CompileError(
                    f"calibration prompt {i}: token id {bad[0]} is outside the "
                    f"vocabulary 0..{prog.vocab - 1}"
                )
        return [np.asarray(p) for p in options.calibration]
    rng = np.random.default_rng(options.seed)
    length = min(DEFAULT_CALIBRATION_LENGTH, options.max_len)
    return [rng.integers(0, prog.vocab, size=length) for _ in range(DEFAULT_CALIBRATION_PROMPTS)]


PRUNE_ROWS_PER_INPUT = 8  #: calibration rows per input feature for second-order pruning


def pruning_prompts(
    prog: DecoderProgram, options: CompileOptions, prompts: list[np.ndarray]
) -> list[np.ndarray]:
    """Calibration prompts for second-order pruning: with fewer rows than input features
    the Hessian is singular and the compensation fits the samples, not the layer."""
    if options.prune == "magnitude":
        return prompts
    need = PRUNE_ROWS_PER_INPUT * max(p.w.shape[1] for p in prog.linears.values())
    rng = np.random.default_rng(options.seed + 1)
    out = list(prompts)
    length = min(DEFAULT_CALIBRATION_LENGTH, options.max_len)
    while sum(len(p) for p in out) < need:
        out.append(rng.integers(0, prog.vocab, size=length))
    return out


def compile_decoder(
    prog: DecoderProgram,
    arch: ArchConfig,
    options: CompileOptions = CompileOptions(),
    metadata: dict | None = None,
) -> Compiled:
    if options.quant.spec is not None:
        options.quant.spec.check_names(list(prog.linears))
    prompts = calibration_prompts(prog, options)
    # Prune the layers whose weight plans are N:M sparse (second-order methods need data).
    modes = {
        name: options.quant.plan_for(name, p.w.shape[1]).sparse for name, p in prog.linears.items()
    }
    with progress.step("prune, calibrate and quantise"):
        prog = prune_decoder(prog, pruning_prompts(prog, options, prompts), modes, options.prune)
        # Record every activation's range on sample prompts run through the float model.
        stats = calibrate(prog, prompts)
        # Fix scales, integer weights, norm gains and activation tables.
        qd = quantize_decoder(prog, stats, options.quant)
    # Emit one synchronised section per prefill length and decode position.
    program = lower_decoder(
        qd,
        arch,
        options.max_len,
        with_data=options.with_data,
        last_logits_only=options.last_logits_only,
        lengths=None if options.lengths is None else list(options.lengths),
        metadata=metadata,
        buckets=options.buckets,
        bucket_bound=options.bucket_bound,
        bucket_latency=options.bucket_latency,
    )
    # Optionally prove every section synchronised on its happens-before graph.
    if options.verify:
        verify_program(program)
    return Compiled(program, qd)


def verify_program(program: Program) -> None:
    """Raise CompileError naming the first unordered hazard of any section."""
    for section in program.sections:
        bad = unordered_hazards(section.instructions, section.len_hi - section.len_lo)
        if bad:
            j, i = bad[0]
            ins = section.instructions
            raise CompileError(
                f"section {section.name!r}: instruction {i} ({ins[i].OPCODE.name}) "
                f"conflicts with instruction {j} ({ins[j].OPCODE.name}) of another "
                f"unit without a token between them ({len(bad)} such pairs)"
            )


def compile_shape_only(
    config_path: str, arch: ArchConfig, options: CompileOptions = CompileOptions(with_data=False)
) -> Program:
    """Compile a full-size model from its Hugging Face config.json, without weights."""
    from .frontend.hf_config import load_structure
    from .graph import linear_shapes, shape_program
    from .quant.qdecoder import shape_only_decoder

    st = load_structure(config_path)
    prog = shape_program(
        st.shape,
        rope_theta=st.rope_theta,
        n_positions=st.n_positions,
        position_offset=st.position_offset,
    )
    if options.quant.spec is not None:
        options.quant.spec.check_names(list(linear_shapes(st.shape)))
    qd = shape_only_decoder(
        prog, linear_shapes(st.shape), options.quant, layer_norm=st.norm == "layer"
    )
    return lower_decoder(
        qd,
        arch,
        options.max_len,
        with_data=False,
        last_logits_only=options.last_logits_only,
        lengths=None if options.lengths is None else list(options.lengths),
        metadata={"model": st.name, "config": str(config_path), "shape_only": True},
        buckets=options.buckets,
        bucket_bound=options.bucket_bound,
        bucket_latency=options.bucket_latency,
    )


def compile_onnx(
    path: str, arch: ArchConfig, options: CompileOptions = CompileOptions()
) -> Compiled:
    """Compile an ONNX export of a decoder-only LLM (see ``docs/frontend.md``)."""
    # The file is parsed and its declared sizes checked before the frontend (and with it
    # ``onnx``, 0.7 s of imports) loads, so a small bad file is refused within a second.
    from .frontend.onnx_file import read_checked

    model = read_checked(path)
    from .frontend.onnx_import import import_onnx

    with progress.step(f"import {path}"):
        imported = import_onnx(path, model)
    s = imported.summary
    return compile_decoder(
        imported.program,
        arch,
        options,
        metadata={
            "model": str(path),
            "frontend": {
                "layers": s.shape.layers,
                "hidden": s.shape.hidden,
                "heads": s.shape.heads,
                "kv_heads": s.shape.kv_heads,
                "head_dim": s.shape.head_dim,
                "intermediate": s.shape.intermediate,
                "vocab": s.shape.vocab,
                "mlp": s.shape.mlp,
                "norm": s.norm,
                "rope_theta": s.rope_theta,
                "position_offset": s.position_offset,
                "max_logit_error": s.max_logit_error,
            },
        },
    )
