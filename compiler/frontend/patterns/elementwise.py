"""Elementwise functions of one decoder tensor (an activation in any decomposition:
SiLU, GELU tanh or erf, ReLU) and the two ops of two decoder tensors: the residual add
and the gated product.

An elementwise chain is composed as a Python function of its base tensor (``Elem``) and
becomes an ``act`` decoder op when something else consumes it, if it equals a supported
activation on a grid (:func:`.probe.identify_act`).
"""

from __future__ import annotations

from dataclasses import replace

import numpy as np

from ...interpret import ACT_FNS
from ..interpreter import NO_MATCH, Interpreter, Rule, always, fine
from ..onnx_graph import OnnxNode
from ..probe import BINARY, UNARY, scalar
from ..tags import STATIC, Centered, Const, Elem, Lin, Normed, Tag, View

ACTIVATION_OPS = (
    "Tanh",
    "Sigmoid",
    "Erf",
    "Relu",
    "Exp",
    "Abs",
    "Softplus",
    "Reciprocal",
    "Sqrt",
    "Neg",
    "Gelu",
    "FastGelu",
    "BiasGelu",
)


def _base(tag: Tag):
    """The decoder tensor (or centred tensor) an elementwise chain starts from, or None."""
    if isinstance(tag, View):
        return tag.t
    if isinstance(tag, Elem):
        return tag.base
    if isinstance(tag, Centered):
        return tag
    return None


def as_elem(ip: Interpreter, tag: Tag, name: str) -> Elem:
    """``tag`` as an elementwise function of its base."""
    if isinstance(tag, Elem):
        return tag
    if isinstance(tag, Centered):
        return Elem(tag.nodes, tag, lambda x: x, tag.layout)
    lay = ip.layout(tag, name, ("SF", "SHD", "HSD", "HDS"))
    c = tag.factor
    return Elem(tag.nodes, tag.t, lambda x, c=c: c * x, lay)


# -- unary


def neg_pattern(ip: Interpreter, node: OnnxNode, tags: list) -> bool:
    return node.op == "Neg" and isinstance(tags[0], View)


def neg_rewrite(ip: Interpreter, node: OnnxNode, tags: list) -> list[Tag]:
    return [View(tags[0].nodes + (node.name,), tags[0].t, -tags[0].factor)]


def _has_bias(node: OnnxNode) -> bool:
    return node.op in ("FastGelu", "BiasGelu") and len(node.inputs) > 1 and bool(node.inputs[1])


def act_check(ip: Interpreter, node: OnnxNode, tags: list) -> str | None:
    tag = tags[0]
    if _has_bias(node) and (not isinstance(tag, Lin) or not isinstance(tags[1], Const)):
        return f"{node.op} with a bias is recognised only after a projection"
    if not isinstance(tag, (View, Elem, Centered, Lin, Normed)):
        return f"{node.op} of {tag.describe()} is not part of a recognised pattern"
    return None


def _act_fn(node: OnnxNode):
    if node.op in UNARY:
        return UNARY[node.op]
    if (
        node.op == "Gelu"
        and node.domain in ("", "ai.onnx")
        and node.attrs.get("approximate", b"none") in ("tanh", b"tanh")
    ):
        return ACT_FNS["gelu_tanh"]
    if node.op in ("Gelu", "BiasGelu"):
        return ACT_FNS["gelu_erf"]
    return ACT_FNS["gelu_tanh"]  # FastGelu


def act_rewrite(ip: Interpreter, node: OnnxNode, tags: list) -> list[Tag]:
    tag = tags[0]
    nodes = tag.nodes + (node.name,)
    if _has_bias(node):  # FastGelu/BiasGelu fold their bias into the projection
        b = np.asarray(ip.val(node.inputs[1]), np.float64).reshape(-1)
        tag = replace(tag, b=b if tag.b is None else tag.b + b)
    if isinstance(tag, (Lin, Normed)):
        tag = ip.materialise(tag, node.inputs[0])
        ip.tags[node.inputs[0]] = tag
    e = as_elem(ip, tag, node.inputs[0])
    fn = _act_fn(node)
    return [Elem(nodes, e.base, lambda x, f=e.f, g=fn: g(f(x)), e.layout)]


# -- binary: elementwise functions of one tensor


def _consts(ip: Interpreter, node: OnnxNode, tags: list) -> tuple[float | None, float | None]:
    return scalar(tags[0], ip.val(node.inputs[0])), scalar(tags[1], ip.val(node.inputs[1]))


def elem_pattern(ip: Interpreter, node: OnnxNode, tags: list) -> bool:
    """Both operands are functions of one tensor, or one is and the other a scalar."""
    ca, cb = _consts(ip, node, tags)
    ba, bb = _base(tags[0]), _base(tags[1])
    return (ba is not None and (ba is bb or cb is not None)) or (bb is not None and ca is not None)


def elem_rewrite(ip: Interpreter, node: OnnxNode, tags: list) -> list[Tag]:
    a, b = tags
    na, nb = node.inputs
    op = node.op
    nodes = ip.given[0].nodes + ip.given[1].nodes + (node.name,)
    ca, cb = _consts(ip, node, tags)
    ea = as_elem(ip, a, na) if _base(a) is not None else None  # checks each view's layout
    eb = as_elem(ip, b, nb) if _base(b) is not None else None
    if op == "Mul" and (
        isinstance(a, View) and isinstance(b, Const) or isinstance(b, View) and isinstance(a, Const)
    ):  # a scaled view stays a view
        v, c = (a, cb) if isinstance(a, View) else (b, ca)
        return [View(nodes, v.t, v.factor * c)]
    if op == "Div" and isinstance(a, View) and cb is not None:
        return [View(nodes, a.t, a.factor / cb)]
    fa = ea.f if ea else (lambda x, c=ca: c)
    fb = eb.f if eb else (lambda x, c=cb: c)
    e = ea or eb
    fn = BINARY[op]
    return [Elem(nodes, e.base, lambda x, f=fa, g=fb, h=fn: h(f(x), g(x)), e.layout)]


# -- binary: two different decoder tensors


def pair_pattern(ip: Interpreter, node: OnnxNode, tags: list) -> bool:
    return node.op in ("Add", "Mul") and not any(isinstance(t, STATIC) for t in tags)


def pair_rewrite(ip: Interpreter, node: OnnxNode, tags: list) -> list[Tag]:
    """The residual add or the gated product: one ``add`` or ``mul`` decoder op."""
    na, nb = node.inputs
    va, vb = ip.view(0), ip.view(1)
    la = ip.layout(va, na, ("SF",))
    lb = ip.layout(vb, nb, ("SF",))
    if va.factor != 1.0 or vb.factor != 1.0 or la.shape != lb.shape:
        raise ip.fail("a scaled or broadcast sum/product of two decoder tensors")
    out = ip.val(node.outputs[0])
    kind = "add" if node.op == "Add" else "mul"
    t = ip.emit(kind, (va.t, vb.t), (node.name,), out.reshape(ip.rows, -1))
    return [View((node.name,), t, 1.0)]


def _binary_miss(ip: Interpreter, node: OnnxNode, tags: list) -> str:
    a, b = tags
    return f"{node.op} of {a.describe()} and {b.describe()} is not part of a recognised pattern"


BINARY_OPS = tuple(BINARY)
RULES = [
    Rule("negated view", ("Neg",), neg_pattern, fine, neg_rewrite),
    Rule("activation", ACTIVATION_OPS, always, act_check, act_rewrite),
    Rule("elementwise", BINARY_OPS, elem_pattern, fine, elem_rewrite, views=True),
    Rule("residual or gate", BINARY_OPS, pair_pattern, fine, pair_rewrite, views=True),
]
for _op in BINARY_OPS:
    NO_MATCH[_op] = _binary_miss
