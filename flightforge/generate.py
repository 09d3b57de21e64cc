"""Greedy generation with a compiled decoder on any device.

The host's part is small, as on the FPGA: it gathers the embedding rows of the
tokens (INT16, plus learned positions where the model has them) into the input
segment, runs the section for the current stage and length, reads the INT16 logits
back and picks the next token. Everything else runs on the device.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from flightforge.isa import DType
from flightforge.numerics import sat
from flightforge.program import Program, ProgramError


@dataclass(frozen=True)
class Generation:
    tokens: list[int]  #: generated token ids (not including the prompt)
    logits: np.ndarray  #: float32 [prompt positions + generated steps - 1][vocab]; the prompt
    #: contributes only its last row when the program computes last-row logits only
    cycles: int | None  #: total device cycles when the device is timed


def _segment_array(program: Program, name: str, cols: int) -> np.ndarray:
    seg = program.segment(name)
    if seg.data is None:
        raise ProgramError(f"segment {name!r} has no data: the program was compiled shape-only "
                           f"and cannot be run for values")
    return np.frombuffer(seg.data, dtype="<i2").reshape(-1, cols).astype(np.int64)


@dataclass(frozen=True)
class Run:
    """One device run: a section and the length register it runs with."""

    section: str
    length: int


def chunk_starts(length: int, chunk: int) -> list[int]:
    """Start positions of the full passes that prefill ``length > chunk`` tokens: the
    first at 0, the others ending at the prompt's end."""
    n = -(-length // chunk)
    return [0] + [length - chunk * m for m in range(n - 1, 0, -1)]


def prefill_runs(program: Program, length: int) -> list[Run]:
    """The runs that prefill a prompt of ``length`` tokens.

    A whole-prompt program has one section per prompt-length bucket. A chunked program
    (see ``compiler/buckets.py``) runs prompts of at most one chunk the same way, and
    longer ones as full passes of ``prefill_chunk`` rows whose start positions select
    the ``prefill_chunk`` section (and, for the last pass of a last-row-logits program,
    the ``prefill_final`` section, which also computes the LM head). A prompt one token
    longer than a whole number of chunks ends with a decode step for its last token:
    one row runs on the matrix-vector path instead of a full chunk.
    """
    meta = program.metadata["decoder"]
    chunk = meta.get("prefill_chunk", 0)
    if meta.get("prefill_mode") != "chunked" or length <= chunk:
        return [Run(program.section_for("prefill", length).name, length)]
    if length % chunk == 1:
        head = length - 1
        body = ([Run(program.section_for("prefill", head).name, head)] if head <= chunk else
                [Run(program.section_for("prefill_chunk", p).name, p) for p in chunk_starts(head, chunk)])
        return body + [decode_run(program, length - 1)]
    last_only = meta.get("prefill_logits") == "last"
    starts = chunk_starts(length, chunk)
    return [Run(program.section_for("prefill_final" if last_only and i == len(starts) - 1
                                    else "prefill_chunk", pos0).name, pos0)
            for i, pos0 in enumerate(starts)]


def decode_run(program: Program, position: int) -> Run:
    """The run that decodes the token at ``position``."""
    return Run(program.section_for("decode", position).name, position)


def generate(program: Program, device, prompt: list[int], max_new_tokens: int) -> Generation:
    """Prefill ``prompt`` then decode ``max_new_tokens`` tokens greedily on ``device``."""
    meta = program.metadata.get("decoder")
    if meta is None:
        raise ProgramError("program is not a compiled decoder (no 'decoder' metadata)")
    hidden, vocab, max_len = meta["hidden"], meta["vocab"], meta["max_len"]
    if not prompt:
        raise ValueError("the prompt must hold at least one token id")
    bad = [t for t in prompt if not 0 <= t < vocab]
    if bad:
        raise ValueError(f"token ids {bad} are outside the vocabulary 0..{vocab - 1}")
    total = len(prompt) + max_new_tokens
    if len(prompt) > max_len or total - 1 > max_len:
        raise ValueError(f"prompt of {len(prompt)} tokens plus {max_new_tokens} new tokens needs "
                         f"{total - 1} positions; the program was compiled for {max_len}")
    embed = _segment_array(program, meta["embed_segment"], hidden)
    positions = (_segment_array(program, meta["positions_segment"], hidden)
                 if meta.get("positions_segment") else None)
    in_addr = program.segment(meta["input_segment"]).addr
    out_addr = program.segment(meta["logits_segment"]).addr
    scale = meta["logits_scale"]

    last_only = meta.get("prefill_logits", "all") == "last"

    def write_rows(ids: list[int], pos0: int) -> None:
        # Rows live at their positions in the input segment (chunks need no copies).
        x = embed[ids]
        if positions is not None:
            off = meta["position_offset"] + pos0
            x = x + positions[off:off + len(ids)]
        device.write(in_addr + pos0 * hidden * 2, sat(x, DType.INT16).astype("<i2").tobytes())

    def read_rows(row0: int, rows: int) -> np.ndarray:
        raw = device.read(out_addr + row0 * vocab * 2, rows * vocab * 2)
        return np.frombuffer(raw, dtype="<i2").reshape(rows, vocab)

    def add(c: int | None, total: int | None) -> int | None:
        return None if c is None or total is None else c + total

    device.load(program)
    write_rows(list(prompt), 0)
    cycles: int | None = 0
    runs = prefill_runs(program, len(prompt))
    for run in runs:
        cycles = add(device.run(run.section, run.length).cycles, cycles)
    if program.section(runs[-1].section).stage == "decode":  # the last token ran as a decode step
        logits = read_rows(len(prompt) - 1, 1) if last_only else read_rows(0, len(prompt))
    else:
        logits = read_rows(0, 1 if last_only else len(prompt))
    all_logits = [logits]
    tokens: list[int] = []
    pos = len(prompt)
    for _ in range(max_new_tokens):
        nxt = int(np.argmax(all_logits[-1][-1]))
        tokens.append(nxt)
        if len(tokens) == max_new_tokens:
            break
        write_rows([nxt], pos)
        run = decode_run(program, pos)
        cycles = add(device.run(run.section, run.length).cycles, cycles)
        all_logits.append(read_rows(pos, 1))
        pos += 1
    return Generation(tokens, (np.vstack(all_logits) * scale).astype(np.float32), cycles)
