"""Projections: a MatMul or Gemm by a constant weight, with bias, scale and slices.

A projection stays pending (``Lin``) while its bias is added, it is scaled, or a fused
QKV weight is split or sliced along its outputs; its first other consumer makes it a
``linear`` decoder op (:meth:`Interpreter.materialise`).
"""

from __future__ import annotations

from dataclasses import replace

import numpy as np

from ..interpreter import NO_MATCH, SHAPE_KEEPING, VIEW_OPS, Interpreter, Rule, always, fine
from ..onnx_graph import OnnxNode
from ..probe import scalar
from ..tags import Const, Lin, Plumb, Tag

# -- MatMul / Gemm by a constant weight


def matmul_pattern(ip: Interpreter, node: OnnxNode, tags: list) -> bool:
    return isinstance(tags[1], Const) and ip.val(node.inputs[1]).ndim == 2


def matmul_check(ip: Interpreter, node: OnnxNode, tags: list) -> str | None:
    if node.op != "Gemm":
        return None
    if node.attrs.get("transA", 0):
        return "Gemm with transA=1 is not a projection"
    if len(node.inputs) > 2 and node.inputs[2] and not isinstance(tags[2], Const):
        return "Gemm bias is not a constant"
    return None


def matmul_rewrite(ip: Interpreter, node: OnnxNode, tags: list) -> list[Tag]:
    x = ip.view(0)
    ip.layout(x, node.inputs[0], ("SF",))
    w = np.asarray(ip.val(node.inputs[1]), np.float64)
    bias = None
    if node.op == "Gemm":
        w = w if node.attrs.get("transB", 0) else w.T
        w = w * node.attrs.get("alpha", 1.0)
        if len(node.inputs) > 2 and node.inputs[2]:
            bias = np.broadcast_to(
                np.asarray(ip.val(node.inputs[2]), np.float64).reshape(-1)
                * node.attrs.get("beta", 1.0),
                (w.shape[0],),
            ).copy()
    else:
        w = w.T
    return [Lin(x.nodes + (node.name,), x.t, w * x.factor, bias)]


# -- bias and scale (Add, Mul, Div with a constant)


def _bias_or_scale(ip: Interpreter, node: OnnxNode, tags: list):
    """The first operand order in which ``Lin + vector`` or ``Lin * scalar`` applies."""
    a, b = tags
    na, nb = node.inputs
    for lin, o, name in ((a, b, nb), (b, a, na)):
        if isinstance(lin, Lin) and isinstance(o, Const):
            vec = np.asarray(ip.val(name), np.float64)
            if node.op == "Add" and vec.size == lin.w.shape[0]:
                return lin, vec.reshape(-1), None
            c = scalar(o, ip.val(name))
            if node.op == "Mul" and c is not None:
                return lin, None, c
    return None


def bias_scale_pattern(ip: Interpreter, node: OnnxNode, tags: list) -> bool:
    return _bias_or_scale(ip, node, tags) is not None


def bias_scale_rewrite(ip: Interpreter, node: OnnxNode, tags: list) -> list[Tag]:
    lin, vec, c = _bias_or_scale(ip, node, tags)
    nodes = tags[0].nodes + tags[1].nodes + (node.name,)
    if vec is not None:
        return [replace(lin, nodes=nodes, b=vec if lin.b is None else lin.b + vec)]
    return [replace(lin, nodes=nodes, w=lin.w * c, b=None if lin.b is None else lin.b * c)]


def divide_pattern(ip: Interpreter, node: OnnxNode, tags: list) -> bool:
    return isinstance(tags[0], Lin) and scalar(tags[1], ip.val(node.inputs[1])) is not None


def divide_rewrite(ip: Interpreter, node: OnnxNode, tags: list) -> list[Tag]:
    a, b = tags
    c = scalar(b, ip.val(node.inputs[1]))
    nodes = a.nodes + b.nodes + (node.name,)
    return [replace(a, nodes=nodes, w=a.w / c, b=None if a.b is None else a.b / c)]


# -- a fused QKV weight split or sliced along its outputs


def split_check(ip: Interpreter, node: OnnxNode, tags: list) -> str | None:
    axis = node.attrs.get("axis", 0)
    if not isinstance(tags[0], Lin) or axis not in (-1, ip.val(node.outputs[0]).ndim - 1):
        return "a Split is recognised only across the outputs of a fused projection"
    return None


def split_rewrite(ip: Interpreter, node: OnnxNode, tags: list) -> list[Tag]:
    lin = tags[0]
    res, start = [], 0
    for o in node.outputs:
        n = ip.val(o).shape[-1]
        b = None if lin.b is None else lin.b[start : start + n]
        res.append(Lin(lin.nodes + (node.name,), lin.x, lin.w[start : start + n], b))
        start += n
    return res


def _slice_args(ip: Interpreter, node: OnnxNode):
    starts, ends = ip.val(node.inputs[1]), ip.val(node.inputs[2])
    axes = ip.val(node.inputs[3]) if len(node.inputs) > 3 and node.inputs[3] else [0]
    steps = ip.val(node.inputs[4]) if len(node.inputs) > 4 and node.inputs[4] else [1]
    return starts, ends, axes, steps


def slice_check(ip: Interpreter, node: OnnxNode, tags: list) -> str | None:
    starts, _, axes, steps = _slice_args(ip, node)
    ndim = ip.val(node.inputs[0]).ndim
    if len(starts) == 1 and int(axes[0]) % ndim == ndim - 1 and int(steps[0]) == 1:
        return None
    return "a Slice of a projection is recognised only along its output features"


def slice_rewrite(ip: Interpreter, node: OnnxNode, tags: list) -> list[Tag]:
    tag = tags[0]
    starts, ends, _, _ = _slice_args(ip, node)
    sl = slice(*slice(int(starts[0]), int(ends[0])).indices(tag.w.shape[0])[:2])
    return [Lin(tag.nodes + (node.name,), tag.x, tag.w[sl], None if tag.b is None else tag.b[sl])]


# -- a reshape that keeps the output features keeps the projection pending


def keep_pattern(ip: Interpreter, node: OnnxNode, tags: list) -> bool:
    tag = tags[0]
    return (
        isinstance(tag, Lin)
        and node.op in SHAPE_KEEPING
        and ip.val(node.outputs[0]).shape[-1] == tag.w.shape[0]
    )


def keep_rewrite(ip: Interpreter, node: OnnxNode, tags: list) -> list[Tag]:
    extra = [Plumb((node.name,))] * (len(node.outputs) - 1)  # Dropout's mask
    return [replace(tags[0], nodes=tags[0].nodes + (node.name,))] + extra


def _is_lin(ip: Interpreter, node: OnnxNode, tags: list) -> bool:
    return isinstance(tags[0], Lin)


RULES = [
    Rule("projection", ("MatMul", "Gemm"), matmul_pattern, matmul_check, matmul_rewrite),
    Rule("bias or scale", ("Add", "Mul"), bias_scale_pattern, fine, bias_scale_rewrite),
    Rule("divided projection", ("Div",), divide_pattern, fine, divide_rewrite),
    Rule("split projection", ("Split",), always, split_check, split_rewrite),
    Rule("sliced projection", ("Slice",), _is_lin, slice_check, slice_rewrite),
    Rule("reshaped projection", tuple(sorted(VIEW_OPS)), keep_pattern, fine, keep_rewrite),
]
NO_MATCH.update(
    MatMul="a MatMul is recognised as a projection by a constant weight, as query x key, "
    "or as probabilities x value",
    Gemm="a MatMul is recognised as a projection by a constant weight, as query x key, "
    "or as probabilities x value",
)
