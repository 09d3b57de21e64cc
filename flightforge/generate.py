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
        raise ProgramError(
            f"segment {name!r} has no data: the program was compiled shape-only "
            f"and cannot be run for values"
        )
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


def prefill_steps(length: int, chunk: int, chunked: bool, last_only: bool) -> list[tuple[str, int]]:
    """The ``(stage, length register)`` pairs that prefill a prompt of ``length`` tokens.

    A whole-prompt program has one section per prompt-length bucket. A chunked program
    (see ``compiler/lower/buckets.py``) runs prompts of at most one chunk the same way, and
    longer ones as full passes of ``chunk`` rows whose start positions select the
    ``prefill_chunk`` section (and, for the last pass of a last-row-logits program, the
    ``prefill_final`` section, which also computes the LM head). A prompt one token
    longer than a whole number of chunks ends with a decode step for its last token:
    one row runs on the matrix-vector path instead of a full chunk.

    The host runs these steps and the compiler compiles the sections they need (for
    ``--lengths``) from this one function, so the two cannot disagree.
    """
    if not chunked or length <= chunk:
        return [("prefill", length)]
    if length % chunk == 1:
        head = length - 1
        body = (
            [("prefill", head)]
            if head <= chunk
            else [("prefill_chunk", p) for p in chunk_starts(head, chunk)]
        )
        return body + [("decode", length - 1)]
    starts = chunk_starts(length, chunk)
    return [
        ("prefill_final" if last_only and i == len(starts) - 1 else "prefill_chunk", pos0)
        for i, pos0 in enumerate(starts)
    ]


def decoder_metadata(program: Program) -> dict:
    """The program's ``decoder`` metadata; a program compiled from anything but a decoder
    (``flightforge demo``'s, say) cannot be prefilled or generated with."""
    meta = program.metadata.get("decoder")
    if meta is None:
        raise ProgramError("program is not a compiled decoder (no 'decoder' metadata)")
    return meta


def prefill_runs(program: Program, length: int) -> list[Run]:
    """The runs that prefill a prompt of ``length`` tokens (see :func:`prefill_steps`)."""
    meta = decoder_metadata(program)
    steps = prefill_steps(
        length,
        meta.get("prefill_chunk", 0),
        meta.get("prefill_mode") == "chunked",
        meta.get("prefill_logits") == "last",
    )
    return [Run(program.section_for(stage, at).name, at) for stage, at in steps]


def decode_run(program: Program, position: int) -> Run:
    """The run that decodes the token at ``position``."""
    return Run(program.section_for("decode", position).name, position)


def generation_runs(program: Program, prompt_len: int, max_new_tokens: int) -> list[Run]:
    """Every run :func:`generate` makes: the prefill, then one decode step per new token
    after the first (which the prefill's logits give)."""
    decodes = [decode_run(program, prompt_len + j) for j in range(max_new_tokens - 1)]
    return prefill_runs(program, prompt_len) + decodes


class _Host:
    """The host's side of a compiled decoder on a device: it gathers embedding rows into
    the input segment, runs sections, and reads INT16 logits back."""

    def __init__(self, program: Program, device) -> None:
        meta = decoder_metadata(program)
        self.program, self.device, self.meta = program, device, meta
        self.last_only = meta.get("prefill_logits", "all") == "last"
        self.cycles: int | None = 0

    def check(self, ids: list[int], positions: int, what: str) -> None:
        """Token ids inside the vocabulary; ``positions`` (``what`` needs) within max_len."""
        vocab, max_len = self.meta["vocab"], self.meta["max_len"]
        if not ids:
            raise ValueError("the prompt must hold at least one token id")
        bad = [t for t in ids if not 0 <= t < vocab]
        if bad:
            raise ValueError(f"token ids {bad} are outside the vocabulary 0..{vocab - 1}")
        if positions > max_len:
            raise ValueError(
                f"{what} needs {positions} positions; the program was compiled for {max_len}"
            )

    def load(self) -> None:
        hidden = self.meta["hidden"]
        self.embed = _segment_array(self.program, self.meta["embed_segment"], hidden)
        self.positions = (
            _segment_array(self.program, self.meta["positions_segment"], hidden)
            if self.meta.get("positions_segment")
            else None
        )
        self.in_addr = self.program.segment(self.meta["input_segment"]).addr
        self.out_addr = self.program.segment(self.meta["logits_segment"]).addr
        self.device.load(self.program)

    def write_rows(self, ids: list[int], pos0: int) -> None:
        # Rows live at their positions in the input segment (chunks need no copies).
        x = self.embed[ids]
        if self.positions is not None:
            off = self.meta["position_offset"] + pos0
            x = x + self.positions[off : off + len(ids)]
        self.device.write(
            self.in_addr + pos0 * self.meta["hidden"] * 2,
            sat(x, DType.INT16).astype("<i2").tobytes(),
        )

    def read_rows(self, row0: int, rows: int) -> np.ndarray:
        vocab = self.meta["vocab"]
        raw = self.device.read(self.out_addr + row0 * vocab * 2, rows * vocab * 2)
        return np.frombuffer(raw, dtype="<i2").reshape(rows, vocab)

    def run(self, run: Run) -> None:
        c = self.device.run(run.section, run.length).cycles
        self.cycles = None if c is None or self.cycles is None else c + self.cycles

    def prefill(self, prompt: list[int]) -> np.ndarray:
        """Runs the prompt; its INT16 logits (the last row only with last-row logits)."""
        self.write_rows(list(prompt), 0)
        runs = prefill_runs(self.program, len(prompt))
        for run in runs:
            self.run(run)
        if (
            self.program.section(runs[-1].section).stage == "decode"
        ):  # the last token ran as a decode step
            return (
                self.read_rows(len(prompt) - 1, 1)
                if self.last_only
                else self.read_rows(0, len(prompt))
            )
        return self.read_rows(0, 1 if self.last_only else len(prompt))

    def decode(self, token: int, pos: int) -> np.ndarray:
        """Runs one token at ``pos``; its INT16 logits row."""
        self.write_rows([token], pos)
        self.run(decode_run(self.program, pos))
        return self.read_rows(pos, 1)


def generate(program: Program, device, prompt: list[int], max_new_tokens: int) -> Generation:
    """Prefill ``prompt`` then decode ``max_new_tokens`` tokens greedily on ``device``."""
    host = _Host(program, device)
    host.check(
        list(prompt),
        max(len(prompt), len(prompt) + max_new_tokens - 1),
        f"a prompt of {len(prompt)} tokens plus {max_new_tokens} new tokens",
    )
    host.load()
    all_logits = [host.prefill(prompt)]
    tokens: list[int] = []
    pos = len(prompt)
    for _ in range(max_new_tokens):
        nxt = int(np.argmax(all_logits[-1][-1]))
        tokens.append(nxt)
        if len(tokens) == max_new_tokens:
            break
        all_logits.append(host.decode(nxt, pos))
        pos += 1
    return Generation(
        tokens, (np.vstack(all_logits) * host.meta["logits_scale"]).astype(np.float32), host.cycles
    )


def forced_logits(program: Program, device, ids: list[int], prompt_len: int) -> np.ndarray:
    """Logits of every position of ``ids`` on ``device``: the first ``prompt_len`` tokens
    as one prefill, then each further token as a decode step (teacher forcing).

    This is how accuracy is measured against a float model: both see the same tokens,
    so a position's logits compare like with like even where greedy choices would part.
    Float64 ``[len(ids)][vocab]``; needs a program with logits for every prompt row.
    """
    if not 1 <= prompt_len <= len(ids):
        raise ValueError(f"prompt_len must be in 1..{len(ids)}, not {prompt_len}")
    host = _Host(program, device)
    if host.last_only:
        raise ProgramError(
            "the program computes last-row logits only; compile it with logits for every prompt row"
        )
    host.check(list(ids), len(ids), f"a sequence of {len(ids)} tokens")
    host.load()
    rows = [host.prefill(list(ids[:prompt_len]))]
    rows += [host.decode(int(t), pos) for pos, t in enumerate(ids[prompt_len:], prompt_len)]
    return np.vstack(rows) * host.meta["logits_scale"]
