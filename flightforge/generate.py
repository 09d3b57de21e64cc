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

    def run(stage: str, ids: list[int], pos0: int) -> tuple[np.ndarray, int | None]:
        # Rows live at their positions in the input and logits segments (so chunked
        # prefill needs no copies); a last-row-only prefill writes its one row at row 0.
        x = embed[ids]
        if positions is not None:
            off = meta["position_offset"] + pos0
            x = x + positions[off:off + len(ids)]
        device.write(in_addr + pos0 * hidden * 2, sat(x, DType.INT16).astype("<i2").tobytes())
        length = len(ids) if stage == "prefill" else pos0
        result = device.run(program.section_for(stage, length).name, length)
        rows = 1 if last_only and pos0 == 0 else len(ids)
        row0 = 0 if last_only and pos0 == 0 else pos0
        raw = device.read(out_addr + row0 * vocab * 2, rows * vocab * 2)
        return np.frombuffer(raw, dtype="<i2").reshape(rows, vocab), result.cycles

    device.load(program)
    logits, cycles = run("prefill", list(prompt), 0)
    all_logits = [logits]
    tokens: list[int] = []
    pos = len(prompt)
    for _ in range(max_new_tokens):
        nxt = int(np.argmax(all_logits[-1][-1]))
        tokens.append(nxt)
        if len(tokens) == max_new_tokens:
            break
        step, c = run("decode", [nxt], pos)
        all_logits.append(step)
        cycles = None if cycles is None or c is None else cycles + c
        pos += 1
    return Generation(tokens, (np.vstack(all_logits) * scale).astype(np.float32), cycles)
