"""onnxruntime as the float reference of an ONNX decoder (tests and benchmarks).

The frontend's imported program is checked against these logits, and the compiled
integer model is measured against them. onnxruntime comes with the test extra; it is
imported when this module is.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import onnxruntime as ort


def session(path: str | Path) -> ort.InferenceSession:
    """onnxruntime without graph optimisations: its QDQ fusions quantise activations."""
    opts = ort.SessionOptions()
    opts.graph_optimization_level = ort.GraphOptimizationLevel.ORT_DISABLE_ALL
    return ort.InferenceSession(str(path), opts, providers=["CPUExecutionProvider"])


def ort_logits(sess: ort.InferenceSession, ids: np.ndarray, kv: int, d: int) -> np.ndarray:
    """Logits ``[len(ids)][vocab]`` of one prompt, with an empty past of ``kv`` heads of
    ``d`` when the model takes past key/value inputs."""
    feeds = {}
    for i in sess.get_inputs():
        if i.name == "input_ids":
            feeds[i.name] = ids[None].astype(np.int64)
        elif i.name == "attention_mask":
            feeds[i.name] = np.ones((1, len(ids)), np.int64)
        elif i.name.startswith("past"):
            feeds[i.name] = np.zeros((1, kv, 0, d), np.float32)
    return sess.run([sess.get_outputs()[0].name], feeds)[0][0].astype(np.float64)
