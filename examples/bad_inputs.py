"""Examples of bad input: small files that declare or expand to huge ones, which the
CLI must refuse at once (tests/test_hardening.py checks that it does,
benchmarks/refusal_cost.py measures what refusing costs; docs/files.md)."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import onnx
from onnx import TensorProto, helper


def laughs(path: Path) -> Path:
    """A ~0.4 KB YAML whose nested aliases expand to 10^9 strings ("billion laughs"),
    usable as a target, a plan (``layers``) and a DSE spec (``parameters``)."""
    lines = ['a: &a ["lol","lol","lol","lol","lol","lol","lol","lol","lol","lol"]']
    for i in range(1, 9):
        prev, cur = chr(ord("a") + i - 1), chr(ord("a") + i)
        lines.append(f"{cur}: &{cur} [" + ",".join([f"*{prev}"] * 10) + "]")
    lines.append("name: *i\nparameters: {chains: *i}\nlayers: *i")
    path.write_text("\n".join(lines) + "\n")
    return path


def huge_npy(path: Path) -> Path:
    """An .npy header declaring 10^11 float32 values, followed by 16 bytes."""
    with path.open("wb") as f:
        np.lib.format.write_array_header_1_0(
            f, {"descr": "<f4", "fortran_order": False, "shape": (10**11,)}
        )
        f.write(bytes(16))
    return path


def onnx_with(path: Path, tensor: TensorProto) -> Path:
    """An Identity model carrying ``tensor`` as an unused initialiser."""
    x = helper.make_tensor_value_info("x", TensorProto.FLOAT, [1])
    y = helper.make_tensor_value_info("y", TensorProto.FLOAT, [1])
    graph = helper.make_graph([helper.make_node("Identity", ["x"], ["y"])], "g", [x], [y], [tensor])
    onnx.save(helper.make_model(graph), path)
    return path


def big_initializer() -> TensorProto:
    """A float tensor declaring 100000 x 100000 elements and holding none."""
    return TensorProto(name="big", data_type=TensorProto.FLOAT, dims=[100000, 100000])
