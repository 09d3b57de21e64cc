"""Recognising decoder operations in an ONNX graph by what each tensor *means*.

Every ONNX tensor gets a tag saying what it is in decoder terms, computed from its
producer's op and its inputs' tags, in topological order:

- ``Const`` (from initialisers only), ``Plumb`` (shape, mask, position and rotary-table
  plumbing computed from the model inputs other than the tokens), ``Ids`` (the tokens);
- ``View(t, factor)``: the tensor holds ``factor * t`` for a decoder tensor ``t``, in some
  arrangement (heads split, transposed, repeated for grouped-query attention);
- partial results that become one decoder op when something else consumes them:
  ``Lin`` (a projection, possibly with bias, scale and a slice of a fused QKV weight),
  ``Elem`` (an elementwise function of one tensor: SiLU, GELU tanh/erf, ReLU in any
  decomposition), the stages of a decomposed norm (``Mean``, ``MeanSq``, ``VarEps``,
  ``Std``, ``InvStd``, ``Normed``), ``RopePart`` (rotate-half RoPE pieces), ``Scores`` and
  ``Probs`` (attention).

A hypothesis about layout or semantics is checked against the probe values (see
:mod:`.onnx_graph`): a head arrangement must reproduce the tensor, a softmax must equal
the causal softmax of the scaled scores, a RoPE must equal the rotary embedding with
the fitted theta. Handlers are named after ONNX ops; a node whose op has no handler, or
whose inputs no handler rule accepts, is an error naming the node, its op, its opset and
its layer. Recognised decoder ops are recorded as :class:`Event` for the assembler.
"""

from __future__ import annotations

import math
from collections.abc import Callable
from dataclasses import dataclass, replace

import numpy as np

from ..interpret import ACT_FNS, rope_float
from .onnx_graph import FrontendError, OnnxGraph, OnnxNode

# ------------------------------------------------------------------------ tensors & events


@dataclass(eq=False)
class Tensor:
    """A decoder tensor, canonical ``[rows][features]`` on the probe prompt."""

    id: int
    value: np.ndarray
    event: Event | None
    depth: int  #: residual adds upstream; the layer is ``depth // 2``

    @property
    def features(self) -> int:
        return self.value.shape[1]


@dataclass(eq=False)
class Event:
    """One recognised decoder op: embed, norm, linear, rope, attention, add, mul, act."""

    kind: str
    ins: tuple[Tensor, ...]
    nodes: tuple[str, ...]
    params: dict
    out: Tensor | None = None


# -------------------------------------------------------------------------------- tags


@dataclass(eq=False)
class Tag:
    nodes: tuple[str, ...] = ()

    def describe(self) -> str:
        return type(self).__name__.lower()


@dataclass(eq=False)
class Const(Tag):
    def describe(self) -> str:
        return "a constant"


@dataclass(eq=False)
class Plumb(Tag):
    def describe(self) -> str:
        return "shape/mask plumbing"


@dataclass(eq=False)
class Ids(Plumb):
    def describe(self) -> str:
        return "the token ids"


@dataclass(eq=False)
class PosRows(Plumb):
    """Rows of a learned position table gathered at run-time positions."""

    table: np.ndarray = None
    index: np.ndarray = None


@dataclass(eq=False)
class View(Tag):
    t: Tensor = None
    factor: float = 1.0

    def describe(self) -> str:
        ev = self.t.event
        return f"the {ev.kind} output of layer {self.t.depth // 2}" if ev else "a tensor"


@dataclass(eq=False)
class Lin(Tag):
    x: Tensor = None
    w: np.ndarray = None  #: [out][in]
    b: np.ndarray | None = None

    def describe(self) -> str:
        return f"a projection ({self.w.shape[1]} -> {self.w.shape[0]}) in layer {self.x.depth // 2}"


@dataclass(frozen=True)
class Layout:
    """How a view arranges a canonical ``[S][N*D]`` tensor: kind SF, SHD, HSD or HDS."""

    kind: str
    heads: int  #: heads in the view (``group`` times the tensor's heads)
    d: int
    group: int
    shape: tuple[int, ...]

    def to_view(self, c: np.ndarray) -> np.ndarray:
        if self.kind == "SF":
            return c.reshape(self.shape)
        s = c.shape[0]
        x = c.reshape(s, -1, self.d)
        if self.group > 1:
            x = np.repeat(x, self.group, axis=1)
        x = {"SHD": x, "HSD": x.transpose(1, 0, 2), "HDS": x.transpose(1, 2, 0)}[self.kind]
        return x.reshape(self.shape)

    def to_canon(self, a: np.ndarray, rows: int) -> np.ndarray:
        if self.kind == "SF":
            return a.reshape(rows, -1)
        h, d = self.heads, self.d
        x = {
            "SHD": lambda: a.reshape(rows, h, d),
            "HSD": lambda: a.reshape(h, rows, d).transpose(1, 0, 2),
            "HDS": lambda: a.reshape(h, d, rows).transpose(2, 0, 1),
        }[self.kind]()
        return x[:, :: self.group].reshape(rows, -1)


@dataclass(eq=False)
class Elem(Tag):
    """``f(base)`` elementwise; ``base`` is a Tensor or a Centered tag."""

    base: object = None
    f: Callable = None
    layout: Layout = None

    def describe(self) -> str:
        base = self.base if isinstance(self.base, Tensor) else self.base.t
        kind = base.event.kind if base.event else "decoder"
        return f"an elementwise function of the {kind} output of layer {base.depth // 2}"


@dataclass(eq=False)
class Centered(Tag):
    t: Tensor = None
    layout: Layout = None


@dataclass(eq=False)
class Mean(Tag):
    t: Tensor = None


@dataclass(eq=False)
class MeanSq(Tag):
    base: object = None


@dataclass(eq=False)
class VarEps(Tag):
    base: object = None
    eps: float = 0.0


@dataclass(eq=False)
class Std(VarEps):
    pass


@dataclass(eq=False)
class InvStd(VarEps):
    pass


@dataclass(eq=False)
class Normed(Tag):
    t: Tensor = None
    kind: str = "rms"
    eps: float = 0.0
    gamma: np.ndarray | float = 1.0
    beta: np.ndarray | float = 0.0

    def describe(self) -> str:
        return f"a {self.kind} norm in layer {self.t.depth // 2}"


@dataclass(eq=False)
class RopePart(Tag):
    t: Tensor = None
    factor: float = 1.0
    layout: Layout = None
    tables: tuple[np.ndarray, ...] = ()

    def describe(self) -> str:
        return f"part of a rotary embedding in layer {self.t.depth // 2}"


@dataclass(eq=False)
class Scores(Tag):
    q: Tensor = None
    k: Tensor = None
    factor: float = 1.0
    heads: int = 0
    kv_heads: int = 0
    d: int = 0

    def describe(self) -> str:
        return f"attention scores in layer {self.q.depth // 2}"


@dataclass(eq=False)
class Probs(Tag):
    s: Scores = None

    def describe(self) -> str:
        return f"attention probabilities in layer {self.s.q.depth // 2}"


@dataclass(eq=False)
class NaNFlag(Tag):
    p: Probs = None


@dataclass(eq=False)
class KVOut(Tag):
    t: Tensor = None


@dataclass(eq=False)
class Unused(Tag):
    def describe(self) -> str:
        return "an auxiliary output (mean or inverse deviation) the decoder does not use"


STATIC = (Const, Plumb)

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


def _close(a: np.ndarray, b: np.ndarray, tol: float = 2e-3) -> bool:
    a, b = np.asarray(a, np.float64), np.asarray(b, np.float64)
    if a.shape != b.shape:
        return False
    scale = max(float(np.abs(b).max(initial=0.0)), 1e-30)
    return float(np.abs(a - b).max(initial=0.0)) <= tol * scale


def find_layout(arr: np.ndarray, canon: np.ndarray, factor: float) -> Layout | None:
    """The arrangement under which ``arr`` holds ``factor * canon``, or None."""
    s, f = canon.shape
    core = list(arr.shape)
    while len(core) > 2 and core[0] == 1:
        core.pop(0)
    cands: list[tuple[str, int, int]] = []
    if core == [s, f]:
        cands.append(("SF", 1, f))
    if len(core) == 4:  # [kv, group, ...] while repeat_kv expands
        core = [core[0] * core[1]] + core[2:]
    if len(core) == 3:
        a, b, c = core
        if a == s:
            cands.append(("SHD", b, c))
        if b == s:
            cands.append(("HSD", a, c))
        if c == s:
            cands.append(("HDS", a, b))
    want = factor * canon
    for kind, h, d in cands:
        if kind != "SF" and (f % d or (h * d) % f):
            continue
        lay = Layout(kind, h, d, 1 if kind == "SF" else h * d // f, tuple(arr.shape))
        if _close(lay.to_view(want), arr):
            return lay
    return None


def _scalar(tag: Tag, val: np.ndarray | None) -> float | None:
    if isinstance(tag, Const) and val is not None and np.size(val) == 1:
        return float(np.asarray(val, np.float64).reshape(-1)[0])
    return None


def _erf(x: np.ndarray) -> np.ndarray:
    return np.vectorize(math.erf)(x)


UNARY: dict[str, Callable[[np.ndarray], np.ndarray]] = {
    "Tanh": np.tanh,
    "Sigmoid": lambda x: 1.0 / (1.0 + np.exp(-x)),
    "Erf": _erf,
    "Relu": lambda x: np.maximum(x, 0.0),
    "Neg": np.negative,
    "Exp": np.exp,
    "Abs": np.abs,
    "Sqrt": np.sqrt,
    "Reciprocal": lambda x: 1.0 / x,
    "Softplus": lambda x: np.log1p(np.exp(x)),
    "Identity": lambda x: x,
}
BINARY: dict[str, Callable] = {
    "Add": np.add,
    "Sub": np.subtract,
    "Mul": np.multiply,
    "Div": np.divide,
    "Pow": np.power,
    "Max": np.maximum,
    "Min": np.minimum,
}
ACT_GRID = np.linspace(-6.0, 6.0, 1201)


def identify_act(f: Callable) -> str | None:
    """Which supported activation ``f`` is, by its values on a grid."""
    with np.errstate(all="ignore"):
        y = f(ACT_GRID)
    for name in ("silu", "gelu_tanh", "gelu_erf", "relu"):
        ref = ACT_FNS[name](ACT_GRID)
        if np.all(np.isfinite(y)) and np.abs(y - ref).max() < 2e-5 * np.abs(ref).max():
            return name
    return None


def _is_square(f: Callable) -> bool:
    x = np.linspace(-3, 3, 61)
    return bool(np.allclose(f(x), x * x, rtol=1e-6, atol=1e-9))


def fit_theta(cos: np.ndarray, sin: np.ndarray, d: int) -> float:
    """RoPE base from cos/sin rows for positions 0, 1, ...: ``inv_freq[1] = theta^(-2/d)``."""
    cos = np.asarray(cos, np.float64).reshape(-1, cos.shape[-1])
    sin = np.asarray(sin, np.float64).reshape(-1, sin.shape[-1])
    if cos.shape[0] < 2 or d < 4:
        raise ValueError("too few positions or frequencies to determine the RoPE base")
    ang = np.arctan2(sin[1], cos[1])
    theta = float(ang[1]) ** (-d / 2)
    r = round(theta)
    return float(r) if abs(theta - r) <= 1e-4 * theta else theta


# --------------------------------------------------------------------------- interpreter

Handler = Callable[["Interpreter", OnnxNode, list], list]
HANDLERS: dict[str, Handler] = {}


def handles(*ops: str):
    def deco(fn: Handler) -> Handler:
        for op in ops:
            HANDLERS[op] = fn
        return fn

    return deco


class Interpreter:
    """Walks the graph once, tagging every tensor and recording decoder events."""

    def __init__(self, g: OnnxGraph, values: dict[str, np.ndarray], rows: int):
        self.g, self.values, self.rows = g, values, rows
        self.tags: dict[str, Tag] = {}
        self.events: list[Event] = []
        self.roles: dict[str, str] = {}
        self._ids = 0
        self.node: OnnxNode | None = None
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
                handler = HANDLERS.get(node.op)
                if handler is None:
                    raise self.fail("no pattern uses this operator on the decoder's tensors")
                for k, t in enumerate(tags):  # a shared partial result is final
                    if isinstance(t, (Lin, Normed)) and len(self.g.consumers[node.inputs[k]]) > 1:
                        tags[k] = self.view(k)
                outs, role = handler(self, node, tags), "decoder"
            self.roles[node.name] = role
            for name, tag in zip(node.outputs, outs, strict=True):
                if name:
                    self.tags[name] = tag

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


# ------------------------------------------------------------------------------ handlers


@handles("Gather")
def Gather(ip: Interpreter, node: OnnxNode, tags: list) -> list[Tag]:
    table = ip.val(node.inputs[0])
    if not (
        isinstance(tags[0], Const)
        and isinstance(tags[1], Ids)
        and table.ndim == 2
        and node.attrs.get("axis", 0) == 0
    ):
        raise ip.fail("a Gather is only recognised as the token embedding (a 2-D table by ids)")
    out = ip.val(node.outputs[0])
    t = ip.emit("embed", (), (node.name,), out.reshape(ip.rows, -1), table=table.astype(np.float64))
    return [View((node.name,), t, 1.0)]


@handles(*VIEW_OPS)
def view_op(ip: Interpreter, node: OnnxNode, tags: list) -> list[Tag]:
    tag = tags[0]
    nodes = tag.nodes + (node.name,)
    out = ip.val(node.outputs[0])
    extra = [Plumb((node.name,))] * (len(node.outputs) - 1)  # Dropout's mask
    if isinstance(tag, Lin) and node.op in SHAPE_KEEPING and out.shape[-1] == tag.w.shape[0]:
        return [replace(tag, nodes=nodes)] + extra
    if isinstance(tag, (Scores, Probs)) and node.op in SHAPE_KEEPING:
        return [replace(tag, nodes=nodes)] + extra
    if isinstance(tag, (View, Lin, Normed, Elem)):
        v = ip.view(0)
        return [View(nodes, v.t, v.factor)] + extra
    raise ip.fail(f"cannot rearrange {tag.describe()}")


@handles("Cast", "CastLike")
def Cast(ip: Interpreter, node: OnnxNode, tags: list) -> list[Tag]:
    if ip.val(node.outputs[0]).dtype.kind != "f":
        raise ip.fail("a cast of a decoder tensor to a non-float type")
    return [replace(tags[0], nodes=tags[0].nodes + (node.name,))]


@handles("MatMul", "Gemm")
def MatMul(ip: Interpreter, node: OnnxNode, tags: list) -> list[Tag]:
    a, b = tags[0], tags[1]
    bval = ip.val(node.inputs[1])
    if isinstance(b, Const) and bval.ndim == 2:
        x = ip.view(0)
        ip.layout(x, node.inputs[0], ("SF",))
        w = np.asarray(bval, np.float64)
        bias = None
        if node.op == "Gemm":
            if node.attrs.get("transA", 0):
                raise ip.fail("Gemm with transA=1 is not a projection")
            w = w if node.attrs.get("transB", 0) else w.T
            w = w * node.attrs.get("alpha", 1.0)
            if len(node.inputs) > 2 and node.inputs[2]:
                if not isinstance(tags[2], Const):
                    raise ip.fail("Gemm bias is not a constant")
                bias = np.broadcast_to(
                    np.asarray(ip.val(node.inputs[2]), np.float64).reshape(-1)
                    * node.attrs.get("beta", 1.0),
                    (w.shape[0],),
                ).copy()
        else:
            w = w.T
        return [Lin(x.nodes + (node.name,), x.t, w * x.factor, bias)]
    if isinstance(a, Probs) and isinstance(b, (View, Lin)):
        return [_context(ip, node, a)]
    if (
        isinstance(a, (View, Lin, Elem, Normed))
        and isinstance(b, (View, Lin, Elem, Normed))
        and node.op == "MatMul"
    ):
        q, k = ip.view(0), ip.view(1)
        ql = ip.layout(q, node.inputs[0], ("HSD",))
        kl = ip.layout(k, node.inputs[1], ("HDS",))
        if ql.group != 1 or ql.heads != kl.heads or ql.d != kl.d:
            raise ip.fail(f"query heads {ql.heads}x{ql.d} and key heads {kl.heads}x{kl.d} disagree")
        return [
            Scores(
                q.nodes + k.nodes + (node.name,),
                q.t,
                k.t,
                q.factor * k.factor,
                ql.heads,
                k.t.features // kl.d,
                ql.d,
            )
        ]
    raise ip.fail(
        "a MatMul is recognised as a projection by a constant weight, as query x key, "
        "or as probabilities x value"
    )


def _context(ip: Interpreter, node: OnnxNode, p: Probs) -> View:
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
    t_nodes = (node.name,)
    return View(t_nodes, t, v.factor)


def causal_probs(
    q: np.ndarray, k: np.ndarray, heads: int, kv: int, d: int, factor: float
) -> np.ndarray:
    """``[heads][rows][rows]`` causal softmax of ``factor * q k^T`` on canonical q, k."""
    s = q.shape[0]
    qh = q.reshape(s, heads, d).transpose(1, 0, 2)
    kh = np.repeat(k.reshape(s, kv, d).transpose(1, 0, 2), heads // kv, axis=0)
    sc = factor * qh @ kh.transpose(0, 2, 1)
    sc = np.where(np.triu(np.ones((s, s), bool), 1)[None], -np.inf, sc)
    e = np.exp(sc - sc.max(-1, keepdims=True))
    return e / e.sum(-1, keepdims=True)


@handles("Softmax")
def Softmax(ip: Interpreter, node: OnnxNode, tags: list) -> list[Tag]:
    s = tags[0]
    out = ip.val(node.outputs[0])
    if not isinstance(s, Scores) or node.attrs.get("axis", -1) not in (-1, out.ndim - 1):
        raise ip.fail("a Softmax is recognised only over the key axis of attention scores")
    want = causal_probs(s.q.value, s.k.value, s.heads, s.kv_heads, s.d, s.factor)
    if out.size != want.size or not _close(out.reshape(-1), want.reshape(-1)):
        raise ip.fail(
            "the attention probabilities are not a causal softmax of the scaled "
            "query-key products (unsupported mask, bias or scaling)"
        )
    return [Probs(s.nodes + (node.name,), s)]


@handles("IsNaN")
def IsNaN(ip: Interpreter, node: OnnxNode, tags: list) -> list[Tag]:
    if not isinstance(tags[0], Probs):
        raise ip.fail("IsNaN is recognised only on attention probabilities")
    return [NaNFlag(tags[0].nodes + (node.name,), tags[0])]


@handles("Where")
def Where(ip: Interpreter, node: OnnxNode, tags: list) -> list[Tag]:
    c, x, y = tags
    if isinstance(c, STATIC):
        for s, o in ((x, y), (y, x)):
            if isinstance(s, Scores) and isinstance(o, STATIC):
                return [replace(s, nodes=s.nodes + (node.name,))]
    if isinstance(c, NaNFlag):
        for p, o, name in ((x, y, node.inputs[2]), (y, x, node.inputs[1])):
            if p is c.p and isinstance(o, Const) and not np.any(ip.val(name)):
                return [replace(p, nodes=p.nodes + (node.name,))]
    raise ip.fail("a Where is recognised only as an attention mask or a NaN guard on probabilities")


@handles("Split")
def Split(ip: Interpreter, node: OnnxNode, tags: list) -> list[Tag]:
    lin = tags[0]
    outs = [ip.val(o) for o in node.outputs]
    axis = node.attrs.get("axis", 0)
    if not isinstance(lin, Lin) or axis not in (-1, outs[0].ndim - 1):
        raise ip.fail("a Split is recognised only across the outputs of a fused projection")
    res, start = [], 0
    for o in outs:
        n = o.shape[-1]
        res.append(
            Lin(
                lin.nodes + (node.name,),
                lin.x,
                lin.w[start : start + n],
                None if lin.b is None else lin.b[start : start + n],
            )
        )
        start += n
    return res


@handles("Slice")
def Slice(ip: Interpreter, node: OnnxNode, tags: list) -> list[Tag]:
    tag = tags[0]
    data = ip.val(node.inputs[0])
    if isinstance(tag, Lin):
        starts, ends = ip.val(node.inputs[1]), ip.val(node.inputs[2])
        axes = ip.val(node.inputs[3]) if len(node.inputs) > 3 and node.inputs[3] else [0]
        steps = ip.val(node.inputs[4]) if len(node.inputs) > 4 and node.inputs[4] else [1]
        if len(starts) == 1 and int(axes[0]) % data.ndim == data.ndim - 1 and int(steps[0]) == 1:
            sl = slice(*slice(int(starts[0]), int(ends[0])).indices(tag.w.shape[0])[:2])
            return [
                Lin(
                    tag.nodes + (node.name,), tag.x, tag.w[sl], None if tag.b is None else tag.b[sl]
                )
            ]
        raise ip.fail("a Slice of a projection is recognised only along its output features")
    if isinstance(tag, (View, RopePart)):
        return [_rope_part(ip, node, 0, ())]
    raise ip.fail("a Slice is recognised on a fused projection or as half of a rotary embedding")


def _rope_part(ip: Interpreter, node: OnnxNode, i: int, tables: tuple) -> RopePart:
    tag = ip.tags[node.inputs[i]]
    if isinstance(tag, RopePart):
        return replace(tag, nodes=tag.nodes + (node.name,), tables=tag.tables + tables)
    v = ip.view(i)
    lay = ip.layout(v, node.inputs[i], ("HSD", "SHD", "SF"))
    return RopePart(v.nodes + (node.name,), v.t, v.factor, lay, tables)


@handles("Concat")
def Concat(ip: Interpreter, node: OnnxNode, tags: list) -> list[Tag]:
    stream = [(k, t) for k, t in enumerate(tags) if not isinstance(t, STATIC)]
    static_empty = all(
        ip.val(n).size == 0 for n, t in zip(node.inputs, tags, strict=True) if isinstance(t, STATIC)
    )
    if len(stream) == 1 and static_empty:  # past key/value (empty in the probe) + new rows
        k, t = stream[0]
        v = ip.view(k)
        return [View(v.nodes + (node.name,), v.t, v.factor)]
    if all(isinstance(t, (RopePart, View)) for t in tags):
        parts = [_rope_part(ip, node, k, ()) for k in range(len(tags))]
        if len({id(p.t) for p in parts}) == 1:
            tables = sum((p.tables for p in parts), ())
            return [replace(parts[0], nodes=sum((p.nodes for p in parts), ()), tables=tables)]
    raise ip.fail("a Concat is recognised as rotate-half or as past + new key/value rows")


def _base(tag: Tag):
    if isinstance(tag, View):
        return tag.t
    if isinstance(tag, (Elem,)):
        return tag.base
    if isinstance(tag, Centered):
        return tag
    return None


def _as_elem(ip: Interpreter, tag: Tag, name: str) -> Elem:
    if isinstance(tag, Elem):
        return tag
    if isinstance(tag, Centered):
        return Elem(tag.nodes, tag, lambda x: x, tag.layout)
    lay = ip.layout(tag, name, ("SF", "SHD", "HSD", "HDS"))
    c = tag.factor
    return Elem(tag.nodes, tag.t, lambda x, c=c: c * x, lay)


@handles(
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
def unary(ip: Interpreter, node: OnnxNode, tags: list) -> list[Tag]:
    tag = tags[0]
    nodes = tag.nodes + (node.name,)
    if node.op == "Sqrt" and type(tag) is VarEps:
        return [Std(nodes, tag.base, tag.eps)]
    if node.op == "Reciprocal" and type(tag) is Std:
        return [InvStd(nodes, tag.base, tag.eps)]
    if node.op == "Neg":
        if isinstance(tag, RopePart):
            return [replace(tag, nodes=nodes)]
        if isinstance(tag, View):
            return [View(nodes, tag.t, -tag.factor)]
    if node.op in ("FastGelu", "BiasGelu") and len(node.inputs) > 1 and node.inputs[1]:
        if not isinstance(tag, Lin) or not isinstance(tags[1], Const):
            raise ip.fail(f"{node.op} with a bias is recognised only after a projection")
        b = np.asarray(ip.val(node.inputs[1]), np.float64).reshape(-1)
        tag = replace(tag, b=b if tag.b is None else tag.b + b)
    if isinstance(tag, (Lin, Normed)):
        tag = ip.materialise(tag, node.inputs[0])
        ip.tags[node.inputs[0]] = tag
    if not isinstance(tag, (View, Elem, Centered)):
        raise ip.fail(f"{node.op} of {tag.describe()} is not part of a recognised pattern")
    e = _as_elem(ip, tag, node.inputs[0])
    if node.op in UNARY:
        fn = UNARY[node.op]
    elif (
        node.op == "Gelu"
        and node.domain in ("", "ai.onnx")
        and node.attrs.get("approximate", b"none") in ("tanh", b"tanh")
    ):
        fn = ACT_FNS["gelu_tanh"]
    elif node.op in ("Gelu", "BiasGelu"):
        fn = ACT_FNS["gelu_erf"]
    else:  # FastGelu
        fn = ACT_FNS["gelu_tanh"]
    return [Elem(nodes, e.base, lambda x, f=e.f, g=fn: g(f(x)), e.layout)]


@handles("ReduceMean")
def ReduceMean(ip: Interpreter, node: OnnxNode, tags: list) -> list[Tag]:
    tag = tags[0]
    data = ip.val(node.inputs[0])
    axes = node.attrs.get("axes")
    if axes is None and len(node.inputs) > 1 and node.inputs[1]:
        axes = ip.val(node.inputs[1]).tolist()
    if (
        axes is None
        or [a % data.ndim for a in axes] != [data.ndim - 1]
        or not node.attrs.get("keepdims", 1)
    ):
        raise ip.fail("a ReduceMean is recognised only over the last axis with keepdims (a norm)")
    nodes = tag.nodes + (node.name,)
    if isinstance(tag, (Lin, Normed)):
        tag = ip.view(0)
    if isinstance(tag, View) and tag.factor == 1.0:
        ip.layout(tag, node.inputs[0], ("SF",))
        return [Mean(nodes, tag.t)]
    if isinstance(tag, Elem) and _is_square(tag.f):
        return [MeanSq(nodes, tag.base)]
    raise ip.fail("the mean is not of a tensor or of its square, as a norm computes")


@handles("Add", "Sub", "Mul", "Div", "Pow", "Max", "Min")
def binary(ip: Interpreter, node: OnnxNode, tags: list) -> list[Tag]:
    a, b = tags
    na, nb = node.inputs
    op = node.op
    nodes = a.nodes + b.nodes + (node.name,)
    ca, cb = _scalar(a, ip.val(na)), _scalar(b, ip.val(nb))
    # attention scores: mask and scale
    for s, o, c in ((a, b, cb), (b, a, ca)):
        if isinstance(s, Scores):
            if op == "Add" and isinstance(o, STATIC):
                return [replace(s, nodes=nodes)]
            if op == "Mul" and c is not None:
                return [replace(s, nodes=nodes, factor=s.factor * c)]
    if isinstance(a, Scores) and op == "Div" and cb is not None:
        return [replace(a, nodes=nodes, factor=a.factor / cb)]
    # projection: bias and scale
    for lin, o, name, c in ((a, b, nb, cb), (b, a, na, ca)):
        if isinstance(lin, Lin) and isinstance(o, Const):
            vec = np.asarray(ip.val(name), np.float64)
            if op == "Add" and vec.size == lin.w.shape[0]:
                vec = vec.reshape(-1)
                return [replace(lin, nodes=nodes, b=vec if lin.b is None else lin.b + vec)]
            if op == "Mul" and c is not None:
                return [
                    replace(lin, nodes=nodes, w=lin.w * c, b=None if lin.b is None else lin.b * c)
                ]
    if isinstance(a, Lin) and op == "Div" and cb is not None:
        return [replace(a, nodes=nodes, w=a.w / cb, b=None if a.b is None else a.b / cb)]
    # norms
    norm = _norm_rule(ip, op, a, b, na, nb, ca, cb, nodes)
    if norm is not None:
        return [norm]
    # rotary embedding: x * cos + rotate_half(x) * sin
    if op == "Mul":
        for r, o, k in ((a, b, 0), (b, a, 1)):
            table = ip.val(node.inputs[1 - k])
            if (
                isinstance(r, (RopePart, View))
                and isinstance(o, STATIC)
                and _scalar(o, table) is None
            ):
                return [_rope_part(ip, node, k, (np.asarray(table, np.float64),))]
    if op in ("Add", "Sub") and isinstance(a, RopePart) and isinstance(b, RopePart) and a.t is b.t:
        return [_finish_rope(ip, node, a, b)]
    # learned positions
    for e, p in ((a, b), (b, a)):
        if (
            op == "Add"
            and isinstance(e, View)
            and isinstance(p, PosRows)
            and e.t.event.kind == "embed"
        ):
            return [_positions(ip, node, e, p)]
    # materialise pending projections and norms, then elementwise functions of one tensor
    for k, tag in enumerate((a, b)):
        if isinstance(tag, (Lin, Normed)):
            tags[k] = ip.view(k)
    a, b = tags
    ba, bb = _base(a), _base(b)
    if (ba is not None and (ba is bb or cb is not None)) or (bb is not None and ca is not None):
        ea = _as_elem(ip, a, na) if ba is not None else None
        eb = _as_elem(ip, b, nb) if bb is not None else None
        fa = ea.f if ea else (lambda x, c=ca: c)
        fb = eb.f if eb else (lambda x, c=cb: c)
        fn = BINARY[op]
        e = ea or eb
        if (
            op == "Mul"
            and isinstance(a, View)
            and isinstance(b, Const)
            or op == "Mul"
            and isinstance(b, View)
            and isinstance(a, Const)
        ):
            v, c = (a, cb) if isinstance(a, View) else (b, ca)
            return [View(nodes, v.t, v.factor * c)]
        if op == "Div" and isinstance(a, View) and cb is not None:
            return [View(nodes, a.t, a.factor / cb)]
        return [Elem(nodes, e.base, lambda x, f=fa, g=fb, h=fn: h(f(x), g(x)), e.layout)]
    # two different decoder tensors: the residual add or the gated product
    if op in ("Add", "Mul") and not isinstance(a, STATIC) and not isinstance(b, STATIC):
        va, vb = ip.view(0), ip.view(1)
        la = ip.layout(va, na, ("SF",))
        lb = ip.layout(vb, nb, ("SF",))
        if va.factor != 1.0 or vb.factor != 1.0 or la.shape != lb.shape:
            raise ip.fail("a scaled or broadcast sum/product of two decoder tensors")
        out = ip.val(node.outputs[0])
        kind = "add" if op == "Add" else "mul"
        t = ip.emit(kind, (va.t, vb.t), (node.name,), out.reshape(ip.rows, -1))
        return [View((node.name,), t, 1.0)]
    raise ip.fail(f"{op} of {a.describe()} and {b.describe()} is not part of a recognised pattern")


def _norm_rule(ip, op, a, b, na, nb, ca, cb, nodes) -> Tag | None:
    if isinstance(a, MeanSq) and op == "Add" and cb is not None:
        return VarEps(nodes, a.base, cb)
    if isinstance(b, MeanSq) and op == "Add" and ca is not None:
        return VarEps(nodes, b.base, ca)
    if type(a) is VarEps and op == "Pow" and cb in (0.5, -0.5):
        return (Std if cb == 0.5 else InvStd)(nodes, a.base, a.eps)
    if type(b) is Std and op == "Div" and ca == 1.0:
        return InvStd(nodes, b.base, b.eps)
    if (
        op == "Sub"
        and isinstance(b, Mean)
        and isinstance(a, View)
        and a.t is b.t
        and a.factor == 1.0
    ):
        return Centered(nodes, a.t, ip.layout(a, na, ("SF",)))
    for x, s in ((a, b), (b, a)):
        if op == "Mul" and type(s) is InvStd or op == "Div" and x is a and type(s) is Std:
            base = s.base
            if isinstance(base, Centered) and x is base:
                return Normed(nodes, base.t, "layer", s.eps)
            if isinstance(base, Tensor) and isinstance(x, View) and x.t is base and x.factor == 1.0:
                return Normed(nodes, base, "rms", s.eps)
    for n, o, name in ((a, b, nb), (b, a, na)):
        if isinstance(n, Normed) and isinstance(o, Const):
            v = np.asarray(ip.val(name), np.float64).reshape(-1)
            if v.size not in (1, n.t.features):
                return None
            if op == "Mul":
                return replace(n, nodes=nodes, gamma=n.gamma * v, beta=n.beta * v)
            if op == "Add":
                return replace(n, nodes=nodes, beta=n.beta + v)
            if op == "Div" and n is a:
                return replace(n, nodes=nodes, gamma=n.gamma / v, beta=n.beta / v)
    return None


def _finish_rope(ip: Interpreter, node: OnnxNode, a: RopePart, b: RopePart) -> View:
    if a.factor != b.factor or a.layout != b.layout:
        raise ip.fail("the two halves of the rotary embedding disagree in scale or layout")
    tables = a.tables + b.tables
    d = a.layout.d
    cos = [t for t in tables if _close(t.reshape(-1, t.shape[-1])[0], np.ones(t.shape[-1]))]
    sin = [t for t in tables if not np.any(np.abs(t.reshape(-1, t.shape[-1])[0]) > 1e-6)]
    if len(cos) != 1 or len(sin) != 1:
        raise ip.fail("cannot tell the cosine and sine tables of the rotary embedding apart")
    try:
        theta = fit_theta(cos[0], sin[0], d)
    except ValueError as e:
        raise ip.fail(str(e)) from None
    want = rope_float(a.t.value, 0, d, theta)
    out = ip.val(node.outputs[0])
    if node.op == "Sub" or not _close(a.layout.to_view(a.factor * want), out):
        raise ip.fail(
            f"the rotary embedding is not rotate-half RoPE with base {theta:g} over "
            f"head_dim {d} (interleaved RoPE and RoPE scaling are not supported)"
        )
    t = ip.emit("rope", (a.t,), a.nodes + b.nodes + (node.name,), want, theta=theta, d=d)
    return View((node.name,), t, a.factor)


def _positions(ip: Interpreter, node: OnnxNode, e: View, p: PosRows) -> View:
    idx = np.asarray(p.index).reshape(-1)
    off = int(idx[0])
    if not np.array_equal(idx, np.arange(off, off + ip.rows)):
        raise ip.fail(f"learned positions gathered at {idx.tolist()}, not consecutive positions")
    ev = e.t.event
    if e.factor != 1.0 or "positions" in ev.params:
        raise ip.fail("learned positions added to a scaled embedding or added twice")
    ev.params.update(
        positions=np.asarray(p.table, np.float64), offset=off, position_nodes=p.nodes + (node.name,)
    )
    e.t.value = ip.val(node.outputs[0]).reshape(ip.rows, -1).astype(np.float64)
    ev.nodes = ev.nodes + p.nodes + (node.name,)
    return View((node.name,), e.t, 1.0)
