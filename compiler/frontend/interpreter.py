"""The frontend's walk: every ONNX node in topological order, its outputs tagged by rules.

Plumbing (shapes, masks, positions, rotary tables) and constants are tagged without
rules. A node on the decoder's tensors is rewritten by the first :class:`Rule` of its
op whose ``pattern`` matches its input tags; the rule's ``check`` says why a node of
that shape is still not the pattern (the error then names the node, its op, its opset
and its layer), and its ``rewrite`` gives the output tags, recording recognised decoder
ops as events. The rules live one module per pattern family in :mod:`.patterns`; an op
without rules, or a node no rule matches, is an error too.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, replace

import numpy as np

from .onnx_graph import FrontendError, OnnxGraph, OnnxNode
from .probe import identify_act
from .tags import (
    STATIC,
    Centered,
    Const,
    Elem,
    Event,
    Ids,
    Layout,
    Lin,
    Normed,
    Plumb,
    PosRows,
    Probs,
    Tag,
    Tensor,
    View,
    find_layout,
)

#: ops allowed in shape, mask, position and rotary-table plumbing
PLUMBING_OPS = frozenset(
    "Shape Size Gather GatherND GatherElements Range CumSum Where IsNaN IsInf Expand Equal Less "
    "LessOrEqual Greater GreaterOrEqual Not And Or Xor Cast CastLike Reshape Unsqueeze Squeeze "
    "Concat Slice Split Sub Add Mul Div Neg Abs ConstantOfShape Trilu Transpose MatMul Cos Sin "
    "Min Max ReduceMax ReduceMin ReduceSum Mod Floor Ceil Identity Tile Pow Sqrt Exp Sign Clip "
    "ScatterND ScatterElements Flatten Einsum".split()
)
VIEW_OPS = frozenset(
    "Reshape Transpose Unsqueeze Squeeze Flatten Identity Expand Tile Dropout".split()
)
SHAPE_KEEPING = frozenset("Reshape Unsqueeze Squeeze Flatten Identity Dropout".split())
KNOWN_DOMAINS = ("", "ai.onnx", "com.microsoft")

#: (interpreter, node, input tags) -> bool, a reason or None, or the output tags
Pattern = Callable[["Interpreter", OnnxNode, list], bool]
Check = Callable[["Interpreter", OnnxNode, list], "str | None"]
Rewrite = Callable[["Interpreter", OnnxNode, list], list]


def always(ip: Interpreter, node: OnnxNode, tags: list) -> bool:
    return True


def fine(ip: Interpreter, node: OnnxNode, tags: list) -> str | None:
    return None


@dataclass(frozen=True)
class Rule:
    """One rewrite of a pattern family, for the ONNX ops in ``ops``.

    ``views``: before its pattern is tried, pending projections and norms among the
    inputs are finished (emitted as decoder ops), as an elementwise consumer needs them.
    """

    name: str
    ops: tuple[str, ...]
    pattern: Pattern
    check: Check
    rewrite: Rewrite
    views: bool = False


#: op -> its rules, in the order they are tried (patterns.FAMILIES order)
RULES: dict[str, list[Rule]] = {}
#: op -> the error when no rule's pattern matches (a message, or one built from the node)
NO_MATCH: dict[str, str | Check] = {}


def found(name: str, ops: tuple[str, ...], find: Callable) -> Rule:
    """A rule whose pattern and rewrite are one function ``find(ip, node, tags)``: the
    output tag if the node is the pattern, else None (nothing left to check)."""
    return Rule(
        name,
        ops,
        lambda ip, node, tags: find(ip, node, tags) is not None,
        fine,
        lambda ip, node, tags: [find(ip, node, tags)],
    )


def register(rules: list[Rule]) -> None:
    for r in rules:
        for op in r.ops:
            RULES.setdefault(op, []).append(r)


class Interpreter:
    """Walks the graph once, tagging every tensor and recording decoder events."""

    def __init__(self, g: OnnxGraph, values: dict[str, np.ndarray], rows: int):
        self.g, self.values, self.rows = g, values, rows
        self.tags: dict[str, Tag] = {}
        self.events: list[Event] = []
        self.roles: dict[str, str] = {}
        self._ids = 0
        self.node: OnnxNode | None = None
        self.given: list = []
        for name in g.initializers:
            self.tags[name] = Const()
        for inp in g.inputs:
            self.tags[inp.name] = Ids() if inp.name == "input_ids" else Plumb()

    # -- helpers used by handlers
    def val(self, name: str) -> np.ndarray | None:
        return self.values.get(name) if name else None

    def fail(self, reason: str, node: OnnxNode | None = None) -> FrontendError:
        node = node or self.node
        depths = [t.depth for t in self._tensors_of(node)]
        where = f" in layer {max(depths) // 2}" if depths else ""
        ins = ", ".join(
            self.tags[t].describe() if t in self.tags else "nothing" for t in node.inputs if t
        )
        return FrontendError(
            f"{self.g.path}: node {node.name!r} ({node.op}, domain "
            f"{node.domain or 'ai.onnx'!r}, opset {self.g.opset(node)}){where}: "
            f"{reason} (inputs: {ins})"
        )

    def _tensors_of(self, node: OnnxNode) -> list[Tensor]:
        out = []
        for t in node.inputs:
            tag = self.tags.get(t)
            for attr in ("t", "x", "q", "base"):
                v = getattr(tag, attr, None)
                v = v.t if isinstance(v, Centered) else v
                if isinstance(v, Tensor):
                    out.append(v)
            if isinstance(tag, Probs):
                out.append(tag.s.q)
        return out

    def tensor(self, value: np.ndarray, event: Event, depth: int) -> Tensor:
        self._ids += 1
        t = Tensor(self._ids, np.asarray(value, np.float64).reshape(self.rows, -1), event, depth)
        event.out = t
        self.events.append(event)
        return t

    def emit(self, kind: str, ins: tuple[Tensor, ...], nodes, value, /, **params) -> Tensor:
        depth = max((t.depth for t in ins), default=0) + (1 if kind == "add" else 0)
        return self.tensor(value, Event(kind, ins, tuple(nodes), params), depth)

    def view(self, i: int) -> View:
        """Input ``i`` of the current node as a View, materialising a pending partial result."""
        name = self.node.inputs[i]
        tag = self.tags[name]
        if isinstance(tag, View):
            return tag
        v = self.materialise(tag, name)
        self.tags[name] = v
        return v

    def materialise(self, tag: Tag, name: str) -> View:
        arr = self.val(name)
        nodes = tag.nodes + (self.node.name,)
        if isinstance(tag, Lin):
            if arr.shape[-1] != tag.w.shape[0] or arr.size != self.rows * tag.w.shape[0]:
                raise self.fail(f"projection output {name!r} has shape {arr.shape}")
            t = self.emit("linear", (tag.x,), tag.nodes, arr, w=tag.w, b=tag.b)
            return View(nodes, t, 1.0)
        if isinstance(tag, Normed):
            f = tag.t.features
            if arr.shape[-1] != f or arr.size != self.rows * f:
                raise self.fail(f"norm output {name!r} has shape {arr.shape}, not rows x {f}")
            gamma = np.broadcast_to(np.asarray(tag.gamma, np.float64).reshape(-1), (f,)).copy()
            beta = np.broadcast_to(np.asarray(tag.beta, np.float64).reshape(-1), (f,)).copy()
            t = self.emit(
                "norm",
                (tag.t,),
                tag.nodes,
                arr,
                norm=tag.kind,
                eps=tag.eps,
                gamma=gamma,
                beta=beta if tag.kind == "layer" else None,
            )
            if tag.kind == "rms" and np.any(beta):
                raise self.fail("an RMS norm with an added bias is not a supported norm")
            return View(nodes, t, 1.0)
        if isinstance(tag, Elem) and isinstance(tag.base, Tensor):
            fn = identify_act(tag.f)
            if fn is None:
                raise self.fail(
                    f"the elementwise function computed by nodes {list(tag.nodes)} "
                    f"is not SiLU, GELU (tanh or erf) or ReLU"
                )
            t = self.emit("act", (tag.base,), tag.nodes, tag.layout.to_canon(arr, self.rows), fn=fn)
            return View(nodes, t, 1.0)
        raise self.fail(f"{tag.describe()} ({name!r}) is used where a decoder tensor is expected")

    def layout(self, v: View, name: str, kinds: tuple[str, ...]) -> Layout:
        lay = find_layout(self.val(name), v.t.value, v.factor)
        if lay is None or lay.kind not in kinds:
            got = "no arrangement" if lay is None else f"arrangement {lay.kind}"
            raise self.fail(
                f"tensor {name!r} of shape {self.val(name).shape} holds {v.describe()} "
                f"in {got}, expected {' or '.join(kinds)}"
            )
        return lay

    # -- the walk
    def run(self) -> None:
        for node in self.g.order():
            self.node = node
            if node.domain not in KNOWN_DOMAINS:
                raise self.fail(f"operator domain {node.domain!r} is not supported")
            tags = [self.tags.get(t) if t else None for t in node.inputs]
            present = [t for t in tags if t is not None]
            if node.op == "Constant" or all(isinstance(t, Const) for t in present) and present:
                outs, role = [Const((node.name,)) for _ in node.outputs], "constant"
            elif node.op in ("Shape", "Size"):
                outs, role = [Plumb((node.name,))], "plumbing"
            elif all(isinstance(t, STATIC) for t in present) and not self._starts_stream(
                node, tags
            ):
                outs, role = self._plumbing(node, tags), "plumbing"
            else:
                rules = RULES.get(node.op)
                if not rules:
                    raise self.fail("no pattern uses this operator on the decoder's tensors")
                for k, t in enumerate(tags):  # a shared partial result is final
                    if isinstance(t, (Lin, Normed)) and len(self.g.consumers[node.inputs[k]]) > 1:
                        tags[k] = self.view(k)
                outs, role = self.rewrite(node, tags, rules), "decoder"
            self.roles[node.name] = role
            for name, tag in zip(node.outputs, outs, strict=True):
                if name:
                    self.tags[name] = tag

    def rewrite(self, node: OnnxNode, tags: list, rules: list[Rule]) -> list[Tag]:
        """The first rule whose pattern matches rewrites the node; if its check finds a
        reason the node is not that pattern after all, the reason is the error.

        ``given`` keeps the input tags as the node received them: a rule that sees them
        finished (``views``) still names the nodes of the pending results it finished.
        """
        self.given = list(tags)
        for r in rules:
            if r.views:  # the rule sees pending projections and norms as finished tensors
                for k, t in enumerate(tags):
                    if isinstance(t, (Lin, Normed)):
                        tags[k] = self.view(k)
            if not r.pattern(self, node, tags):
                continue
            reason = r.check(self, node, tags)
            if reason is not None:
                raise self.fail(reason)
            return r.rewrite(self, node, tags)
        miss = NO_MATCH.get(node.op, "no pattern matches this operator's inputs")
        raise self.fail(miss if isinstance(miss, str) else miss(self, node, tags))

    def _starts_stream(self, node: OnnxNode, tags: list) -> bool:
        return node.op == "Gather" and isinstance(tags[0], Const) and isinstance(tags[1], Ids)

    def _plumbing(self, node: OnnxNode, tags: list) -> list[Tag]:
        if node.op not in PLUMBING_OPS:
            raise self.fail("operator is not one of the recognised shape/mask/position operators")
        data = self.val(node.inputs[0])
        if (
            node.op == "Gather"
            and isinstance(tags[0], Const)
            and data is not None
            and data.ndim == 2
            and data.dtype.kind == "f"
            and node.attrs.get("axis", 0) == 0
        ):
            return [PosRows((node.name,), data, self.val(node.inputs[1]))]
        if isinstance(tags[0], (PosRows, Ids)) and node.op in SHAPE_KEEPING | {"Cast"}:
            return [replace(tags[0], nodes=tags[0].nodes + (node.name,))]
        return [Plumb((node.name,)) for _ in node.outputs]
