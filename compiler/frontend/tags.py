"""The tag vocabulary of the ONNX frontend: what each ONNX tensor *means* in decoder terms.

Every ONNX tensor gets a tag, computed from its producer's op and its inputs' tags, in
topological order (:mod:`.interpreter`):

- ``Const`` (from initialisers only), ``Plumb`` (shape, mask, position and rotary-table
  plumbing computed from the model inputs other than the tokens), ``Ids`` (the tokens);
- ``View(t, factor)``: the tensor holds ``factor * t`` for a decoder tensor ``t``, in some
  arrangement (:class:`Layout`: heads split, transposed, repeated for grouped-query
  attention);
- partial results that become one decoder op when something else consumes them:
  ``Lin`` (a projection, possibly with bias, scale and a slice of a fused QKV weight),
  ``Elem`` (an elementwise function of one tensor: SiLU, GELU tanh/erf, ReLU in any
  decomposition), the stages of a decomposed norm (``Mean``, ``MeanSq``, ``VarEps``,
  ``Std``, ``InvStd``, ``Normed``), ``RopePart`` (rotate-half RoPE pieces), ``Scores`` and
  ``Probs`` (attention).

Recognised decoder ops are :class:`Event` records, each producing one :class:`Tensor`.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

import numpy as np

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


#: tags of values that do not depend on the tokens
STATIC = (Const, Plumb)


def close(a: np.ndarray, b: np.ndarray, tol: float = 2e-3) -> bool:
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
        if close(lay.to_view(want), arr):
            return lay
    return None
