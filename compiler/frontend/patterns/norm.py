"""Norms in any decomposition: RMSNorm and LayerNorm built from ReduceMean, Sub, Pow or
Mul, Add, Sqrt, Reciprocal or Div, then a gain and a bias.

The stages are tagged as they appear (``Mean``, ``Centered``, ``MeanSq``, ``VarEps``,
``Std``, ``InvStd``, ``Normed``); the normalised tensor stays pending (``Normed``) while
its gain and bias are applied, and its first other consumer makes it a ``norm`` op.
"""

from __future__ import annotations

from dataclasses import replace

import numpy as np

from ..interpreter import NO_MATCH, Interpreter, Rule, fine, found
from ..onnx_graph import OnnxNode
from ..probe import is_square, scalar
from ..tags import (
    Centered,
    Const,
    Elem,
    InvStd,
    Mean,
    MeanSq,
    Normed,
    Std,
    Tag,
    Tensor,
    VarEps,
    View,
)

# -- the mean over features, of a tensor or of its square


def _axes_reason(ip: Interpreter, node: OnnxNode) -> str | None:
    data = ip.val(node.inputs[0])
    axes = node.attrs.get("axes")
    if axes is None and len(node.inputs) > 1 and node.inputs[1]:
        axes = ip.val(node.inputs[1]).tolist()
    if (
        axes is None
        or [a % data.ndim for a in axes] != [data.ndim - 1]
        or not node.attrs.get("keepdims", 1)
    ):
        return "a ReduceMean is recognised only over the last axis with keepdims (a norm)"
    return None


def mean_check(ip: Interpreter, node: OnnxNode, tags: list) -> str | None:
    return _axes_reason(ip, node)


def mean_pattern(ip: Interpreter, node: OnnxNode, tags: list) -> bool:
    return isinstance(tags[0], View) and tags[0].factor == 1.0


def mean_rewrite(ip: Interpreter, node: OnnxNode, tags: list) -> list[Tag]:
    ip.layout(tags[0], node.inputs[0], ("SF",))
    return [Mean(ip.given[0].nodes + (node.name,), tags[0].t)]


def mean_square_pattern(ip: Interpreter, node: OnnxNode, tags: list) -> bool:
    return isinstance(tags[0], Elem) and is_square(tags[0].f)


def mean_square_rewrite(ip: Interpreter, node: OnnxNode, tags: list) -> list[Tag]:
    return [MeanSq(tags[0].nodes + (node.name,), tags[0].base)]


def _mean_miss(ip: Interpreter, node: OnnxNode, tags: list) -> str:
    return (
        _axes_reason(ip, node) or "the mean is not of a tensor or of its square, as a norm computes"
    )


# -- epsilon, square root, reciprocal, centring and normalising (binary ops)


def _stage(ip: Interpreter, node: OnnxNode, tags: list) -> Tag | None:
    """The norm stage this binary node computes, or None."""
    a, b = tags
    na, nb = node.inputs
    op = node.op
    ca, cb = scalar(a, ip.val(na)), scalar(b, ip.val(nb))
    nodes = a.nodes + b.nodes + (node.name,)
    if isinstance(a, MeanSq) and op == "Add" and cb is not None:
        return VarEps(nodes, a.base, cb)
    if isinstance(b, MeanSq) and op == "Add" and ca is not None:
        return VarEps(nodes, b.base, ca)
    if type(a) is VarEps and op == "Pow" and cb in (0.5, -0.5):
        return (Std if cb == 0.5 else InvStd)(nodes, a.base, a.eps)
    if type(b) is Std and op == "Div" and ca == 1.0:
        return InvStd(nodes, b.base, b.eps)
    if op == "Sub" and isinstance(b, Mean) and isinstance(a, View) and a.t is b.t:
        if a.factor == 1.0:
            return Centered(nodes, a.t, ip.layout(a, na, ("SF",)))
    for x, s in ((a, b), (b, a)):
        if op == "Mul" and type(s) is InvStd or op == "Div" and x is a and type(s) is Std:
            base = s.base
            if isinstance(base, Centered) and x is base:
                return Normed(nodes, base.t, "layer", s.eps)
            if isinstance(base, Tensor) and isinstance(x, View) and x.t is base and x.factor == 1.0:
                return Normed(nodes, base, "rms", s.eps)
    return None


# -- gain and bias of the normalised tensor


def _affine(ip: Interpreter, node: OnnxNode, tags: list) -> Tag | None:
    """The first ``Normed op Const`` order this node matches, with the gain or bias
    applied; a vector of the wrong size ends the search (original order)."""
    a, b = tags
    na, nb = node.inputs
    nodes = a.nodes + b.nodes + (node.name,)
    for n, o, name in ((a, b, nb), (b, a, na)):
        if isinstance(n, Normed) and isinstance(o, Const):
            v = np.asarray(ip.val(name), np.float64).reshape(-1)
            if v.size not in (1, n.t.features):
                return None
            if node.op == "Mul":
                return replace(n, nodes=nodes, gamma=n.gamma * v, beta=n.beta * v)
            if node.op == "Add":
                return replace(n, nodes=nodes, beta=n.beta + v)
            if node.op == "Div" and n is a:
                return replace(n, nodes=nodes, gamma=n.gamma / v, beta=n.beta / v)
    return None


# -- square root and reciprocal as unary ops


def sqrt_pattern(ip: Interpreter, node: OnnxNode, tags: list) -> bool:
    return node.op == "Sqrt" and type(tags[0]) is VarEps


def sqrt_rewrite(ip: Interpreter, node: OnnxNode, tags: list) -> list[Tag]:
    return [Std(tags[0].nodes + (node.name,), tags[0].base, tags[0].eps)]


def reciprocal_pattern(ip: Interpreter, node: OnnxNode, tags: list) -> bool:
    return node.op == "Reciprocal" and type(tags[0]) is Std


def reciprocal_rewrite(ip: Interpreter, node: OnnxNode, tags: list) -> list[Tag]:
    return [InvStd(tags[0].nodes + (node.name,), tags[0].base, tags[0].eps)]


BINARY = ("Add", "Sub", "Mul", "Div", "Pow", "Max", "Min")
RULES = [
    Rule("mean", ("ReduceMean",), mean_pattern, mean_check, mean_rewrite, views=True),
    Rule("mean square", ("ReduceMean",), mean_square_pattern, mean_check, mean_square_rewrite),
    found("norm stage", BINARY, _stage),
    found("norm gain or bias", BINARY, _affine),
    Rule("standard deviation", ("Sqrt",), sqrt_pattern, fine, sqrt_rewrite),
    Rule("inverse deviation", ("Reciprocal",), reciprocal_pattern, fine, reciprocal_rewrite),
]
NO_MATCH["ReduceMean"] = _mean_miss
