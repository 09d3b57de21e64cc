"""Rotate-half RoPE: ``x * cos + rotate_half(x) * sin``, where ``rotate_half`` slices the
head in two halves, negates one and concatenates them swapped.

The pieces are tagged ``RopePart`` (carrying the tables they were multiplied by); the
final Add is accepted only if the probe output equals the rotary embedding with the base
fitted from the cosine and sine tables (:func:`.probe.fit_theta`).
"""

from __future__ import annotations

from dataclasses import replace

import numpy as np

from ...interpret import rope_float
from ..interpreter import NO_MATCH, Interpreter, Rule, fine
from ..onnx_graph import OnnxNode
from ..probe import fit_theta, scalar
from ..tags import STATIC, RopePart, Tag, View, close


def rope_part(ip: Interpreter, node: OnnxNode, i: int, tables: tuple) -> RopePart:
    """Input ``i`` as a piece of a rotary embedding, with ``tables`` added."""
    tag = ip.tags[node.inputs[i]]
    if isinstance(tag, RopePart):
        return replace(tag, nodes=tag.nodes + (node.name,), tables=tag.tables + tables)
    v = ip.view(i)
    lay = ip.layout(v, node.inputs[i], ("HSD", "SHD", "SF"))
    return RopePart(v.nodes + (node.name,), v.t, v.factor, lay, tables)


def _is_piece(ip: Interpreter, node: OnnxNode, tags: list) -> bool:
    return isinstance(tags[0], (View, RopePart))


def half_rewrite(ip: Interpreter, node: OnnxNode, tags: list) -> list[Tag]:
    return [rope_part(ip, node, 0, ())]


def neg_pattern(ip: Interpreter, node: OnnxNode, tags: list) -> bool:
    return node.op == "Neg" and isinstance(tags[0], RopePart)


def neg_rewrite(ip: Interpreter, node: OnnxNode, tags: list) -> list[Tag]:
    return [replace(tags[0], nodes=tags[0].nodes + (node.name,))]


def swap_pattern(ip: Interpreter, node: OnnxNode, tags: list) -> bool:
    """The halves concatenated (swapped) from one tensor."""
    if not all(isinstance(t, (RopePart, View)) for t in tags):
        return False
    return len({id(ip.tags[n].t) for n in node.inputs}) == 1


def swap_rewrite(ip: Interpreter, node: OnnxNode, tags: list) -> list[Tag]:
    parts = [rope_part(ip, node, k, ()) for k in range(len(tags))]
    tables = sum((p.tables for p in parts), ())
    return [replace(parts[0], nodes=sum((p.nodes for p in parts), ()), tables=tables)]


def _table_side(ip: Interpreter, node: OnnxNode, tags: list) -> int | None:
    """Which input of a Mul is the piece multiplied by a (non-scalar) static table."""
    for r, o, k in ((tags[0], tags[1], 0), (tags[1], tags[0], 1)):
        table = ip.val(node.inputs[1 - k])
        if isinstance(r, (RopePart, View)) and isinstance(o, STATIC) and scalar(o, table) is None:
            return k
    return None


def table_pattern(ip: Interpreter, node: OnnxNode, tags: list) -> bool:
    return node.op == "Mul" and _table_side(ip, node, tags) is not None


def table_rewrite(ip: Interpreter, node: OnnxNode, tags: list) -> list[Tag]:
    k = _table_side(ip, node, tags)
    return [rope_part(ip, node, k, (np.asarray(ip.val(node.inputs[1 - k]), np.float64),))]


def finish_pattern(ip: Interpreter, node: OnnxNode, tags: list) -> bool:
    a, b = tags
    return isinstance(a, RopePart) and isinstance(b, RopePart) and a.t is b.t


def finish_check(ip: Interpreter, node: OnnxNode, tags: list) -> str | None:
    a, b = tags
    if a.factor != b.factor or a.layout != b.layout:
        return "the two halves of the rotary embedding disagree in scale or layout"
    if len(_cos(a.tables + b.tables)) != 1 or len(_sin(a.tables + b.tables)) != 1:
        return "cannot tell the cosine and sine tables of the rotary embedding apart"
    return None


def _cos(tables: tuple) -> list[np.ndarray]:
    return [t for t in tables if close(t.reshape(-1, t.shape[-1])[0], np.ones(t.shape[-1]))]


def _sin(tables: tuple) -> list[np.ndarray]:
    return [t for t in tables if not np.any(np.abs(t.reshape(-1, t.shape[-1])[0]) > 1e-6)]


def finish_rewrite(ip: Interpreter, node: OnnxNode, tags: list) -> list[Tag]:
    a, b = tags
    tables = a.tables + b.tables
    d = a.layout.d
    try:
        theta = fit_theta(_cos(tables)[0], _sin(tables)[0], d)
    except ValueError as e:
        raise ip.fail(str(e)) from None
    want = rope_float(a.t.value, 0, d, theta)
    out = ip.val(node.outputs[0])
    if node.op == "Sub" or not close(a.layout.to_view(a.factor * want), out):
        raise ip.fail(
            f"the rotary embedding is not rotate-half RoPE with base {theta:g} over "
            f"head_dim {d} (interleaved RoPE and RoPE scaling are not supported)"
        )
    t = ip.emit("rope", (a.t,), a.nodes + b.nodes + (node.name,), want, theta=theta, d=d)
    return [View((node.name,), t, a.factor)]


RULES = [
    Rule("rotary half", ("Slice",), _is_piece, fine, half_rewrite),
    Rule("negated rotary half", ("Neg",), neg_pattern, fine, neg_rewrite),
    Rule("rotate-half", ("Concat",), swap_pattern, fine, swap_rewrite),
    Rule("rotary table product", ("Mul",), table_pattern, fine, table_rewrite),
    Rule("rotary sum", ("Add", "Sub"), finish_pattern, finish_check, finish_rewrite),
]
NO_MATCH["Slice"] = "a Slice is recognised on a fused projection or as half of a rotary embedding"
