"""The token embedding (a Gather of a 2-D constant table by the token ids) and learned
absolute positions added to it (GPT-2, OPT: a position table gathered at consecutive
run-time positions)."""

from __future__ import annotations

import numpy as np

from ..interpreter import Interpreter, Rule, always
from ..onnx_graph import OnnxNode
from ..tags import Const, Ids, PosRows, Tag, View


def gather_check(ip: Interpreter, node: OnnxNode, tags: list) -> str | None:
    table = ip.val(node.inputs[0])
    if (
        isinstance(tags[0], Const)
        and isinstance(tags[1], Ids)
        and table.ndim == 2
        and node.attrs.get("axis", 0) == 0
    ):
        return None
    return "a Gather is only recognised as the token embedding (a 2-D table by ids)"


def gather_rewrite(ip: Interpreter, node: OnnxNode, tags: list) -> list[Tag]:
    table = ip.val(node.inputs[0])
    out = ip.val(node.outputs[0])
    t = ip.emit("embed", (), (node.name,), out.reshape(ip.rows, -1), table=table.astype(np.float64))
    return [View((node.name,), t, 1.0)]


def _embedding_and_positions(tags: list) -> tuple[View, PosRows] | None:
    for e, p in ((tags[0], tags[1]), (tags[1], tags[0])):
        if isinstance(e, View) and isinstance(p, PosRows) and e.t.event.kind == "embed":
            return e, p
    return None


def positions_pattern(ip: Interpreter, node: OnnxNode, tags: list) -> bool:
    return _embedding_and_positions(tags) is not None


def positions_check(ip: Interpreter, node: OnnxNode, tags: list) -> str | None:
    e, p = _embedding_and_positions(tags)
    idx = np.asarray(p.index).reshape(-1)
    off = int(idx[0])
    if not np.array_equal(idx, np.arange(off, off + ip.rows)):
        return f"learned positions gathered at {idx.tolist()}, not consecutive positions"
    if e.factor != 1.0 or "positions" in e.t.event.params:
        return "learned positions added to a scaled embedding or added twice"
    return None


def positions_rewrite(ip: Interpreter, node: OnnxNode, tags: list) -> list[Tag]:
    e, p = _embedding_and_positions(tags)
    off = int(np.asarray(p.index).reshape(-1)[0])
    ev = e.t.event
    ev.params.update(
        positions=np.asarray(p.table, np.float64), offset=off, position_nodes=p.nodes + (node.name,)
    )
    e.t.value = ip.val(node.outputs[0]).reshape(ip.rows, -1).astype(np.float64)
    ev.nodes = ev.nodes + p.nodes + (node.name,)
    return [View((node.name,), e.t, 1.0)]


RULES = [
    Rule("token embedding", ("Gather",), always, gather_check, gather_rewrite),
    Rule("learned positions", ("Add",), positions_pattern, positions_check, positions_rewrite),
]
