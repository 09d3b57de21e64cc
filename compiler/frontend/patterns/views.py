"""Rearrangements of one decoder tensor: reshapes, transposes, repeats for grouped-query
attention, casts, and the concatenation of an (empty on the probe) past with the new
key/value rows. None of them is a decoder op: the tensor's tag becomes a ``View``, whose
arrangement (:class:`~.tags.Layout`) is recovered from the probe values where it matters.
"""

from __future__ import annotations

from dataclasses import replace

from ..interpreter import NO_MATCH, VIEW_OPS, Interpreter, Rule, always, fine
from ..onnx_graph import OnnxNode
from ..tags import STATIC, Elem, Lin, Normed, Plumb, Tag, View


def view_pattern(ip: Interpreter, node: OnnxNode, tags: list) -> bool:
    return isinstance(tags[0], (View, Lin, Normed, Elem))


def view_rewrite(ip: Interpreter, node: OnnxNode, tags: list) -> list[Tag]:
    nodes = tags[0].nodes + (node.name,)
    v = ip.view(0)
    extra = [Plumb((node.name,))] * (len(node.outputs) - 1)  # Dropout's mask
    return [View(nodes, v.t, v.factor)] + extra


def _cannot_rearrange(ip: Interpreter, node: OnnxNode, tags: list) -> str:
    return f"cannot rearrange {tags[0].describe()}"


def cast_check(ip: Interpreter, node: OnnxNode, tags: list) -> str | None:
    if ip.val(node.outputs[0]).dtype.kind != "f":
        return "a cast of a decoder tensor to a non-float type"
    return None


def cast_rewrite(ip: Interpreter, node: OnnxNode, tags: list) -> list[Tag]:
    return [replace(tags[0], nodes=tags[0].nodes + (node.name,))]


def past_pattern(ip: Interpreter, node: OnnxNode, tags: list) -> bool:
    """One decoder input, the others static and empty on the probe: past + new rows."""
    stream = [t for t in tags if not isinstance(t, STATIC)]
    static_empty = all(
        ip.val(n).size == 0 for n, t in zip(node.inputs, tags, strict=True) if isinstance(t, STATIC)
    )
    return len(stream) == 1 and static_empty


def past_rewrite(ip: Interpreter, node: OnnxNode, tags: list) -> list[Tag]:
    k = next(k for k, t in enumerate(tags) if not isinstance(t, STATIC))
    v = ip.view(k)
    return [View(v.nodes + (node.name,), v.t, v.factor)]


RULES = [
    Rule("view", tuple(sorted(VIEW_OPS)), view_pattern, fine, view_rewrite),
    Rule("cast", ("Cast", "CastLike"), always, cast_check, cast_rewrite),
    Rule("past and new rows", ("Concat",), past_pattern, fine, past_rewrite),
]
for _op in VIEW_OPS:
    NO_MATCH[_op] = _cannot_rearrange
NO_MATCH["Concat"] = "a Concat is recognised as rotate-half or as past + new key/value rows"
