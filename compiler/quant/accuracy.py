"""The acceptance measurement of a compiled decoder's accuracy (tests and benchmarks).

Each of ``PROMPTS`` random prompts of ``PROMPT_LEN`` tokens is extended by ``DECODE``
greedy steps of the float reference; the integer reference (``qref.run_decoder``, which
every simulator matches bit for bit) runs the prompt as one prefill and then one decode
step per further token, and every position's logits are compared with the float ones:
the cosine, and whether the top-1 token agrees. The criterion: cosine at least
``COS_MIN`` at every position, top-1 agreement on at least ``TOP1_MIN`` of them.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence

import numpy as np

from ..graph import DecoderProgram
from ..interpret import FloatState, run_float
from . import qref
from .fixed_point import rope_table_bytes
from .qdecoder import QuantDecoder

PROMPTS, PROMPT_LEN, DECODE = 4, 16, 16
MAX_LEN = PROMPT_LEN + DECODE
COS_MIN, TOP1_MIN = 0.99, 0.90


def integer_logits(qd: QuantDecoder, ids: np.ndarray, prompt_len: int = PROMPT_LEN) -> np.ndarray:
    """Dequantised logits of every position: a prefill of the prompt, then decode steps."""
    prog = qd.prog
    theta = prog.rope_theta or 1.0
    table = rope_table_bytes(len(ids), prog.head_dim, theta).astype(np.int64)
    state = qref.IntState()
    rows = [qref.run_decoder(qd, ids[:prompt_len], 0, state, table)]
    for pos in range(prompt_len, len(ids)):
        rows.append(qref.run_decoder(qd, ids[pos : pos + 1], pos, state, table))
    return np.vstack(rows) * qd.scales[prog.output]


def float_reference(prog: DecoderProgram) -> Callable[[np.ndarray], np.ndarray]:
    """``ids -> logits`` of the float model; a sequence that extends the previous call's by
    tokens runs only the new rows (a decode step), so greedy continuation stays cheap."""
    last = {
        "ids": np.zeros(0, np.int64),
        "logits": np.zeros((0, prog.vocab)),
        "state": FloatState(),
    }

    def logits(ids: np.ndarray) -> np.ndarray:
        ids = np.asarray(ids)
        n = len(last["ids"])
        if not (len(ids) > n and np.array_equal(ids[:n], last["ids"])):
            last.update(ids=ids[:0], logits=np.zeros((0, prog.vocab)), state=FloatState())
            n = 0
        new = run_float(prog, ids[n:], n, last["state"])
        last.update(ids=ids.copy(), logits=np.vstack([last["logits"], new]))
        return last["logits"]

    return logits


def random_prompts(vocab: int, count: int = PROMPTS) -> list[np.ndarray]:
    """The default prompts: ``count`` of ``PROMPT_LEN`` uniformly random token ids."""
    return [
        np.random.default_rng(100 + seed).integers(0, vocab, size=PROMPT_LEN)
        for seed in range(count)
    ]


def measure(
    qd: QuantDecoder | None,
    float_logits: Callable[[np.ndarray], np.ndarray],
    prompts: Sequence[Sequence[int]] | None = None,
    logits: Callable[[np.ndarray], np.ndarray] | None = None,
) -> tuple[np.ndarray, np.ndarray]:
    """Per-position cosine and top-1 agreement against ``float_logits(ids) -> [len][vocab]``.

    ``prompts`` (``PROMPT_LEN`` tokens each) default to :func:`random_prompts`; a trained
    model is measured on prompts of its own language. ``logits(ids)`` computes the
    compiled model's logits (default :func:`integer_logits` of ``qd``; a device's
    :func:`flightforge.generate.forced_logits` is the same bit for bit); ``qd`` is not
    needed when both are given.
    """
    if prompts is None:
        prompts = random_prompts(qd.prog.vocab)
    logits = logits or (lambda ids: integer_logits(qd, ids))
    cos, top = [], []
    for prompt in prompts:
        ids = [int(t) for t in prompt]
        for _ in range(DECODE):
            ids.append(int(np.argmax(float_logits(np.array(ids))[-1])))
        ids = np.array(ids)
        want = float_logits(ids)
        got = logits(ids)
        cos.append((want * got).sum(1) / np.linalg.norm(want, axis=1) / np.linalg.norm(got, axis=1))
        top.append(want.argmax(1) == got.argmax(1))
    return np.concatenate(cos), np.concatenate(top)


def summary(name: str, cos: np.ndarray, top: np.ndarray) -> str:
    prompts = len(cos) // (PROMPT_LEN + DECODE)
    return (
        f"{name}: cosine min {cos.min():.4f} mean {cos.mean():.4f}, top-1 {top.mean():.1%} "
        f"({len(cos)} positions: {prompts} prompts x ({PROMPT_LEN} prefill + {DECODE} decode))"
    )


def meets_criterion(cos: np.ndarray, top: np.ndarray) -> bool:
    return bool(cos.min() >= COS_MIN and top.mean() >= TOP1_MIN)


def reference_logits(
    qd: QuantDecoder, prompt: Sequence[int], tokens: Sequence[int], max_len: int
) -> np.ndarray:
    """What a compiled program's greedy generation must return, bit for bit: the integer
    reference's dequantised logits for a prefill of ``prompt``, then one decode step per
    token of ``tokens`` but the last (float32, as the device's host reads them)."""
    prog = qd.prog
    table = rope_table_bytes(max_len, prog.head_dim, prog.rope_theta or 1.0).astype(np.int64)
    state = qref.IntState()
    rows = [qref.run_decoder(qd, np.asarray(prompt), 0, state, table)]
    pos = len(prompt)
    for t in tokens[:-1]:
        rows.append(qref.run_decoder(qd, np.asarray([t]), pos, state, table))
        pos += 1
    return (np.vstack(rows) * qd.scales["logits"]).astype(np.float32)
