"""Calibration: activation scales from the float model's ranges on sample prompts.

Calibration runs the float model (:func:`~flightforge.compiler.interpret.run_float`) on
sample prompts (prefill, then greedy decode steps that continue them, so that decode
positions are sampled as well as prompt positions) and records, for every named tensor,
its largest magnitude and a deterministic subsample of its values.
:meth:`TensorStats.scale` then picks the scale: by default the largest magnitude maps to
the top code (32767 for INT16 tensors such as the residual stream and the logits, 127 for
INT8 ones); with ``search`` (``QuantOptions.mse_clip``) an INT8 tensor takes the clipping
point that minimises the mean squared quantisation error on the samples (searched from
20% to 100% of the largest magnitude). RoPE rotates in place, so its tensor's statistics
cover values before and after rotation.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np

from ..graph import DecoderProgram
from ..interpret import FloatState, run_float

SAMPLES_PER_OBSERVATION = 2048
CLIP_CANDIDATES = np.linspace(0.2, 1.0, 81)


@dataclass
class TensorStats:
    """What calibration saw of one tensor."""

    peak: float = 0.0
    samples: list[np.ndarray] = field(default_factory=list)

    def add(self, x: np.ndarray) -> None:
        flat = np.abs(np.asarray(x, np.float64)).ravel()
        if not flat.size:
            return
        self.peak = max(self.peak, float(flat.max()))
        step = max(1, flat.size // SAMPLES_PER_OBSERVATION)
        self.samples.append(flat[::step])

    def scale(self, top: int, search: bool) -> float:
        """Scale for integer codes up to ``top``: max-based, or MSE-optimal when ``search``."""
        peak = max(self.peak, 1e-6)
        if not search or not self.samples:
            return peak / top
        x = np.concatenate(self.samples)
        best, best_err = peak / top, np.inf
        for r in CLIP_CANDIDATES:
            s = r * peak / top
            err = float(np.mean((np.minimum(np.round(x / s), top) * s - x) ** 2))
            if err < best_err:
                best, best_err = s, err
        return best


DECODE_STEPS = 16


def calibrate(
    prog: DecoderProgram, prompts: list[np.ndarray], decode_steps: int = DECODE_STEPS
) -> dict[str, TensorStats]:
    """Per-tensor statistics over prefill of each prompt and greedy decode steps.

    With the default prompts (16 tokens) the 16 decode steps sample positions up to 31
    as decode rows. Four steps left the ranges of later positions short: on random test
    decoders, more positions fell below cosine 0.99 (docs/compiler.md, "Accuracy").
    """
    stats: dict[str, TensorStats] = {}

    def observe(name: str, x: np.ndarray) -> None:
        stats.setdefault(name, TensorStats()).add(x)

    for ids in prompts:
        state = FloatState(observer=observe)
        logits = run_float(prog, np.asarray(ids), 0, state)
        pos = len(ids)
        for _ in range(decode_steps):
            nxt = int(np.argmax(logits[-1]))
            logits = run_float(prog, np.array([nxt]), pos, state)
            pos += 1
    return stats
