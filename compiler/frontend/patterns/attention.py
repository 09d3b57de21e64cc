"""Attention: query x key scores, their scale and mask, the causal softmax, and the
probabilities x value context, which becomes one ``attention`` decoder op.

The softmax is accepted only if onnxruntime's probabilities on the probe equal the
causal softmax of the scaled query-key products (:func:`.probe.causal_probs`), which
also checks the mask.
"""

from __future__ import annotations

from dataclasses import replace

import numpy as np

from ..interpreter import (
    NO_MATCH,
    SHAPE_KEEPING,
    VIEW_OPS,
    Interpreter,
    Rule,
    always,
    fine,
    found,
)
from ..onnx_graph import OnnxNode
from ..probe import causal_probs, scalar
from ..tags import (
    STATIC,
    Const,
    Elem,
    Layout,
    Lin,
    NaNFlag,
    Normed,
    Plumb,
    Probs,
    Scores,
    Tag,
    View,
    close,
)

DECODER = (View, Lin, Elem, Normed)


def _nodes(node: OnnxNode, tags: list) -> tuple[str, ...]:
    return sum((t.nodes for t in tags if t is not None), ()) + (node.name,)


# -- query x key


def scores_pattern(ip: Interpreter, node: OnnxNode, tags: list) -> bool:
    return node.op == "MatMul" and isinstance(tags[0], DECODER) and isinstance(tags[1], DECODER)


def scores_rewrite(ip: Interpreter, node: OnnxNode, tags: list) -> list[Tag]:
    q, k = ip.view(0), ip.view(1)
    ql = ip.layout(q, node.inputs[0], ("HSD",))
    kl = ip.layout(k, node.inputs[1], ("HDS",))
    if ql.group != 1 or ql.heads != kl.heads or ql.d != kl.d:
        raise ip.fail(f"query heads {ql.heads}x{ql.d} and key heads {kl.heads}x{kl.d} disagree")
    nodes = q.nodes + k.nodes + (node.name,)
    return [Scores(nodes, q.t, k.t, q.factor * k.factor, ql.heads, k.t.features // kl.d, ql.d)]


# -- scale and mask of the scores


def _scaled(ip: Interpreter, node: OnnxNode, tags: list) -> Scores | None:
    """The scores with this node's mask or scale applied, or None if it is neither."""
    a, b = tags
    ca, cb = scalar(a, ip.val(node.inputs[0])), scalar(b, ip.val(node.inputs[1]))
    nodes = _nodes(node, tags)
    for s, o, c in ((a, b, cb), (b, a, ca)):
        if isinstance(s, Scores):
            if node.op == "Add" and isinstance(o, STATIC):
                return replace(s, nodes=nodes)
            if node.op == "Mul" and c is not None:
                return replace(s, nodes=nodes, factor=s.factor * c)
    if isinstance(a, Scores) and node.op == "Div" and cb is not None:
        return replace(a, nodes=nodes, factor=a.factor / cb)
    return None


# -- softmax, its NaN guard, and a Where mask


def softmax_check(ip: Interpreter, node: OnnxNode, tags: list) -> str | None:
    s, out = tags[0], ip.val(node.outputs[0])
    if not isinstance(s, Scores) or node.attrs.get("axis", -1) not in (-1, out.ndim - 1):
        return "a Softmax is recognised only over the key axis of attention scores"
    want = causal_probs(s.q.value, s.k.value, s.heads, s.kv_heads, s.d, s.factor)
    if out.size != want.size or not close(out.reshape(-1), want.reshape(-1)):
        return (
            "the attention probabilities are not a causal softmax of the scaled "
            "query-key products (unsupported mask, bias or scaling)"
        )
    return None


def softmax_rewrite(ip: Interpreter, node: OnnxNode, tags: list) -> list[Tag]:
    return [Probs(tags[0].nodes + (node.name,), tags[0])]


def isnan_check(ip: Interpreter, node: OnnxNode, tags: list) -> str | None:
    return (
        None
        if isinstance(tags[0], Probs)
        else "IsNaN is recognised only on attention probabilities"
    )


def isnan_rewrite(ip: Interpreter, node: OnnxNode, tags: list) -> list[Tag]:
    return [NaNFlag(tags[0].nodes + (node.name,), tags[0])]


def _where(ip: Interpreter, node: OnnxNode, tags: list) -> Tag | None:
    c, x, y = tags
    if isinstance(c, STATIC):
        for s, o in ((x, y), (y, x)):
            if isinstance(s, Scores) and isinstance(o, STATIC):
                return replace(s, nodes=s.nodes + (node.name,))
    if isinstance(c, NaNFlag):
        for p, o, name in ((x, y, node.inputs[2]), (y, x, node.inputs[1])):
            if p is c.p and isinstance(o, Const) and not np.any(ip.val(name)):
                return replace(p, nodes=p.nodes + (node.name,))
    return None


# -- probabilities x value: the attention op


def context_pattern(ip: Interpreter, node: OnnxNode, tags: list) -> bool:
    return isinstance(tags[0], Probs) and isinstance(tags[1], (View, Lin))


def context_rewrite(ip: Interpreter, node: OnnxNode, tags: list) -> list[Tag]:
    p = tags[0]
    s = p.s
    v = ip.view(1)
    vl = ip.layout(v, node.inputs[1], ("HSD",))
    if vl.heads != s.heads or vl.d != s.d or v.t.features != s.kv_heads * s.d:
        raise ip.fail(
            f"value heads ({vl.heads} of {vl.d}) do not match the scores "
            f"({s.heads} heads, {s.kv_heads} KV heads of {s.d})"
        )
    out = ip.val(node.outputs[0])
    ctx = Layout("HSD", s.heads, s.d, 1, out.shape).to_canon(out, ip.rows) / v.factor
    t = ip.emit(
        "attention",
        (s.q, s.k, v.t),
        p.nodes + v.nodes + (node.name,),
        ctx,
        heads=s.heads,
        kv_heads=s.kv_heads,
        d=s.d,
        factor=s.factor,
    )
    return [View((node.name,), t, v.factor)]


# -- reshapes keep scores and probabilities


def keep_pattern(ip: Interpreter, node: OnnxNode, tags: list) -> bool:
    return isinstance(tags[0], (Scores, Probs)) and node.op in SHAPE_KEEPING


def keep_rewrite(ip: Interpreter, node: OnnxNode, tags: list) -> list[Tag]:
    extra = [Plumb((node.name,))] * (len(node.outputs) - 1)  # Dropout's mask
    return [replace(tags[0], nodes=tags[0].nodes + (node.name,))] + extra


RULES = [
    Rule("attention context", ("MatMul", "Gemm"), context_pattern, fine, context_rewrite),
    Rule("attention scores", ("MatMul",), scores_pattern, fine, scores_rewrite),
    found("score scale or mask", ("Add", "Mul", "Div"), _scaled),
    Rule("attention softmax", ("Softmax",), always, softmax_check, softmax_rewrite),
    Rule("softmax NaN test", ("IsNaN",), always, isnan_check, isnan_rewrite),
    found("mask or NaN guard", ("Where",), _where),
    Rule("reshaped scores", tuple(sorted(VIEW_OPS)), keep_pattern, fine, keep_rewrite),
]
NO_MATCH["Where"] = (
    "a Where is recognised only as an attention mask or a NaN guard on probabilities"
)
