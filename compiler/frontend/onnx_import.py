"""The ONNX frontend: an exported decoder-only LLM to a :class:`DecoderProgram`.

    read_model -> build_graph -> probe run -> tag every tensor (interpreter, patterns)
               -> assemble the decoder by following the residual stream -> verify

The assembler starts at the token embedding and follows the dataflow through each
layer (norm -> q, k, v projections -> [RoPE] -> attention -> output projection ->
residual add -> norm -> MLP -> residual add) to the final norm and the LM head; names
in the file are never relied on. Every recognised op must be used by this walk, every
node must be classified (decoder op, constant, or shape/mask/position plumbing), and the
recovered program must reproduce onnxruntime's logits on the probe prompt; anything
else is a :class:`FrontendError` naming the node, op and layer.
"""

from __future__ import annotations

import math
from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np

from ..graph import (
    DecoderProgram,
    DecoderShape,
    LinearParams,
    NormParams,
    decoder_ops,
    wide_tensors,
)
from ..interpret import FloatState, run_float
from . import patterns  # noqa: F401  (registers the rules of every pattern family)
from .interpreter import Interpreter
from .onnx_graph import (
    FrontendError,
    build_graph,
    probe_feeds,
    probe_rows,
    probe_values,
    read_model,
)
from .tags import Elem, Event, KVOut, Lin, Normed, Tensor, View

if TYPE_CHECKING:
    import onnx

#: largest relative difference between the recovered program's logits and onnxruntime's
VERIFY_TOLERANCE = 5e-3


@dataclass
class ImportSummary:
    """What the frontend recognised, for reports and for the reader of an error."""

    path: str
    shape: DecoderShape
    norm: str
    rope_theta: float | None
    position_offset: int
    roles: Counter  #: node count per role: decoder, constant, plumbing
    ops: Counter  #: decoder op kinds recognised
    kv_outputs: list[str] = field(default_factory=list)
    unused_nodes: list[str] = field(default_factory=list)  #: plumbing whose result nothing reads
    max_logit_error: float = 0.0  #: relative, recovered program vs onnxruntime on the probe

    def __str__(self) -> str:
        s = self.shape
        lines = [
            f"{self.path}: {s.layers} layers, hidden {s.hidden}, {s.heads} heads "
            f"({s.kv_heads} KV) of {s.head_dim}, {s.mlp} MLP {s.intermediate}, vocab {s.vocab}, "
            f"{self.norm} norm, "
            + (
                f"RoPE theta {self.rope_theta:g}"
                if s.rope
                else f"learned positions (offset {self.position_offset})"
            ),
            "nodes: " + ", ".join(f"{n} {k}" for k, n in sorted(self.roles.items())),
            "recognised: " + ", ".join(f"{n} {k}" for k, n in sorted(self.ops.items())),
            f"logits match onnxruntime to {self.max_logit_error:.1e} (relative)",
        ]
        if self.kv_outputs:
            lines.append(f"KV-cache outputs: {len(self.kv_outputs)}")
        if self.unused_nodes:
            lines.append(f"unused plumbing nodes: {', '.join(self.unused_nodes)}")
        return "\n".join(lines)


@dataclass(frozen=True)
class OnnxImport:
    program: DecoderProgram
    summary: ImportSummary


def load_onnx(path: str | Path) -> DecoderProgram:
    """The decoder an ONNX export computes, with float weights (quantised ones dequantised)."""
    return import_onnx(path).program


def import_onnx(path: str | Path, model: onnx.ModelProto | None = None) -> OnnxImport:
    """``model``: the file already parsed and checked by :func:`.onnx_file.read_checked`."""
    path = Path(path)
    # Parse, refuse unsafe external data, shape-infer and index the graph.
    g = build_graph(read_model(path, model), path)
    # Run it once on a short random prompt, keeping every intermediate value.
    rows = probe_rows(g)
    feeds, ids = probe_feeds(g, rows, _vocab_hint(g))
    values = probe_values(g, feeds)
    # Tag every tensor with its decoder meaning; record the decoder ops found.
    ip = Interpreter(g, values, rows)
    ip.run()
    logits, kv_outputs = _outputs(ip)
    unused = _dead_nodes(ip)
    # Follow the residual stream from the embedding to the LM head.
    prog, shape, info = assemble(ip.events, logits, str(path))
    # The recovered program must reproduce the model.
    want = np.asarray(values[logits.name], np.float64).reshape(rows, -1)
    got = run_float(prog, ids, 0, FloatState())
    err = float(np.abs(got - want).max() / max(np.abs(want).max(), 1e-30))
    if not err <= VERIFY_TOLERANCE:
        raise FrontendError(
            f"{path}: the recognised decoder's logits differ from onnxruntime's "
            f"by {err:.2e} (relative) on a probe prompt; a pattern was misread"
        )
    summary = ImportSummary(
        str(path),
        shape,
        info["norm"],
        prog.rope_theta,
        prog.position_offset,
        Counter(ip.roles.values()),
        Counter(e.kind for e in ip.events),
        kv_outputs,
        unused,
        err,
    )
    return OnnxImport(prog, summary)


def _vocab_hint(g) -> int:
    for name in g.consumers.get("input_ids", []):
        node = g.nodes[name]
        if node.op == "Gather" and node.inputs[0] in g.initializers:
            return int(g.initializers[node.inputs[0]].shape[0])
    return 32


@dataclass(frozen=True)
class _Out:
    name: str
    t: Tensor


def _outputs(ip: Interpreter) -> tuple[_Out, list[str]]:
    """The logits output and the KV-cache outputs; any other output is an error."""
    logits: list[_Out] = []
    kv: list[str] = []
    for name in ip.g.outputs:
        tag = ip.tags.get(name)
        ip.node = ip.g.nodes[ip.g.producer[name]] if name in ip.g.producer else None
        if isinstance(tag, (Lin, Normed, Elem)):
            tag = ip.materialise(tag, name)
            ip.tags[name] = tag
        if isinstance(tag, KVOut) or isinstance(tag, View) and _feeds_attention_kv(ip, tag.t):
            kv.append(name)
            continue
        if isinstance(tag, View) and tag.t.event.kind == "linear" and tag.factor == 1.0:
            logits.append(_Out(name, tag.t))
            continue
        raise FrontendError(
            f"{ip.g.path}: graph output {name!r} holds "
            f"{tag.describe() if tag else 'nothing recognised'}; only the logits "
            f"and key/value caches are supported outputs"
        )
    if len(logits) != 1:
        raise FrontendError(
            f"{ip.g.path}: expected one logits output, found {[o.name for o in logits] or 'none'}"
        )
    return logits[0], kv


def _feeds_attention_kv(ip: Interpreter, t: Tensor) -> bool:
    return any(e.kind == "attention" and (e.ins[1] is t or e.ins[2] is t) for e in ip.events)


def _dead_nodes(ip: Interpreter) -> list[str]:
    g, dead = ip.g, []
    outs = set(g.outputs)
    for node in g.nodes.values():
        if any(o and (o in outs or g.consumers.get(o)) for o in node.outputs):
            continue
        if ip.roles.get(node.name) == "decoder":
            raise FrontendError(
                f"{g.path}: node {node.name!r} ({node.op}) computes a decoder "
                f"value that no other node or output uses"
            )
        dead.append(node.name)
    return dead


# ------------------------------------------------------------------------------ assembler


class _Walk:
    """The residual-stream walk; every event it takes is marked used."""

    def __init__(self, events: list[Event], path: str):
        self.events, self.path = events, path
        self.users: dict[int, list[Event]] = {}
        for e in events:
            for t in e.ins:
                self.users.setdefault(t.id, []).append(e)
        self.used: set[int] = set()
        self.layer = -1

    def fail(self, what: str, e: Event | None = None) -> FrontendError:
        where = f"layer {self.layer}" if self.layer >= 0 else "embedding"
        nodes = f" (nodes {', '.join(e.nodes[-3:])})" if e is not None and e.nodes else ""
        return FrontendError(f"{self.path}: {where}: {what}{nodes}")

    def of(self, t: Tensor, kind: str) -> list[Event]:
        return [e for e in self.users.get(t.id, []) if e.kind == kind and id(e) not in self.used]

    def one(self, t: Tensor, kind: str, what: str, ins: set[int] | None = None) -> Event:
        found = [e for e in self.of(t, kind) if ins is None or {x.id for x in e.ins} == ins]
        if len(found) != 1:
            raise self.fail(f"expected one {what}, found {len(found)}", t.event)
        return self.take(found[0])

    def take(self, e: Event) -> Event:
        self.used.add(id(e))
        return e

    def projection(self, t: Tensor, x: Tensor, what: str) -> tuple[Event, Event | None]:
        """The linear (and RoPE after it) that computes ``t`` from ``x``."""
        ev, rope = t.event, None
        if ev.kind == "rope":
            rope, ev = self.take(ev), ev.ins[0].event
        if ev.kind != "linear" or ev.ins[0] is not x:
            raise self.fail(f"the attention {what} is not a projection of the attention norm", ev)
        if len(self.users.get(ev.out.id, [])) != 1:
            raise self.fail(f"the {what} projection is used by more than the attention", ev)
        return self.take(ev), rope


def assemble(
    events: list[Event], logits: _Out, path: str
) -> tuple[DecoderProgram, DecoderShape, dict]:
    w = _Walk(events, path)
    embeds = [e for e in events if e.kind == "embed"]
    if len(embeds) != 1:
        raise w.fail(f"expected one token embedding, found {len(embeds)}")
    embed = w.take(embeds[0])
    h = embed.out
    linears: dict[str, LinearParams] = {}
    norms: dict[str, NormParams] = {}
    dims: list[tuple] = []
    thetas: set[float] = set()
    mlps: set[str] = set()
    norm_kinds: set[str] = set()

    def norm(e: Event, key: str) -> None:
        p = e.params
        norms[key] = NormParams(p["norm"], p["gamma"], p["beta"], float(p["eps"]))
        norm_kinds.add(p["norm"])

    def lin(e: Event, key: str, scale: float = 1.0) -> None:
        b = e.params["b"]
        linears[key] = LinearParams(e.params["w"] * scale, None if b is None else b * scale)

    while True:
        w.layer += 1
        ln = w.one(h, "norm", "norm reading the residual stream")
        if not w.of(h, "add"):  # the final norm and the LM head
            head = w.one(ln.out, "linear", "LM head after the final norm")
            if head.out is not logits.t:
                raise w.fail(
                    f"the projection after the final norm is not the logits output {logits.name!r}",
                    head,
                )
            norm(ln, "final_norm")
            lin(head, "lm_head")
            break
        p = f"l{w.layer}."
        atts = [
            e
            for e in events
            if e.kind == "attention" and id(e) not in w.used and _reads(e.ins[2], ln.out)
        ]
        if len(atts) != 1:
            raise w.fail(
                f"expected one attention reading the attention norm, found {len(atts)}", ln
            )
        att = w.take(atts[0])
        (q, rq), (k, rk), (v, rv) = (
            w.projection(t, ln.out, n)
            for t, n in zip(att.ins, ("query", "key", "value"), strict=True)
        )
        if rv is not None or (rq is None) != (rk is None):
            raise w.fail("RoPE must rotate the query and the key and nothing else", att)
        a = att.params
        scale = a["factor"] * math.sqrt(a["d"])
        for r in (rq, rk):
            if r is not None:
                thetas.add(r.params["theta"])
                if r.params["d"] != a["d"]:
                    raise w.fail(
                        f"RoPE over {r.params['d']} of the head's {a['d']} dimensions "
                        f"(partial rotary) is not supported",
                        r,
                    )
        o = w.one(att.out, "linear", "output projection after the attention")
        add1 = w.one(h, "add", "residual add after the attention", {h.id, o.out.id})
        ln2 = w.one(add1.out, "norm", "norm before the MLP")
        ups = w.of(ln2.out, "linear")
        if len(ups) == 2:
            acts = [(u, w.of(u.out, "act")) for u in ups]
            gates = [(u, x[0]) for u, x in acts if len(x) == 1 and x[0].params["fn"] == "silu"]
            if len(gates) != 1:
                raise w.fail("a two-projection MLP whose gate is not SiLU", ups[0])
            gate, act = gates[0]
            up = ups[1] if gate is ups[0] else ups[0]
            w.take(gate), w.take(up), w.take(act)
            mul = w.one(act.out, "mul", "gated product of the MLP", {act.out.id, up.out.id})
            down = w.one(mul.out, "linear", "down projection of the MLP")
            mlp = "swiglu"
            mlp_w = {"gate": gate, "up": up, "down": down}
        elif len(ups) == 1:
            fc1 = w.take(ups[0])
            act = w.one(fc1.out, "act", "activation of the MLP")
            fc2 = w.one(act.out, "linear", "second projection of the MLP")
            mlp = act.params["fn"]
            mlp_w = {"fc1": fc1, "fc2": fc2}
        else:
            raise w.fail(f"the MLP norm feeds {len(ups)} projections, expected 1 or 2", ln2)
        add2 = w.one(
            add1.out,
            "add",
            "residual add after the MLP",
            {add1.out.id, (mlp_w.get("down") or mlp_w.get("fc2")).out.id},
        )
        norm(ln, p + "ln1")
        norm(ln2, p + "ln2")
        lin(q, p + "q", scale)
        lin(k, p + "k")
        lin(v, p + "v")
        lin(o, p + "o")
        for key, e in mlp_w.items():
            lin(e, p + key)
        dims.append(
            (
                a["heads"],
                a["kv_heads"],
                a["d"],
                rq is not None,
                mlp_w.get("gate", mlp_w.get("fc1")).params["w"].shape[0],
            )
        )
        mlps.add(mlp)
        h = add2.out
    left = [e for e in events if id(e) not in w.used]
    if left:
        e = left[0]
        raise FrontendError(
            f"{path}: {len(left)} recognised op(s) are not part of the decoder "
            f"structure, first a {e.kind} from nodes {list(e.nodes[-3:])}"
        )
    if not dims:
        raise FrontendError(f"{path}: no decoder layer found between the embedding and the LM head")
    if len(set(dims)) != 1 or len(mlps) != 1 or len(thetas) > 1:
        raise FrontendError(
            f"{path}: layers differ in shape ({sorted(set(dims))}, MLPs "
            f"{sorted(mlps)}, RoPE bases {sorted(thetas)}); all must be alike"
        )
    heads, kv, d, rope, inter = dims[0]
    table = embed.params["table"]
    vocab, hidden = linears["lm_head"].w.shape
    if table.shape != (vocab, hidden):
        raise FrontendError(
            f"{path}: the embedding table is {table.shape} but the LM head is {(vocab, hidden)}"
        )
    shape = DecoderShape(len(dims), hidden, heads, kv, d, inter, vocab, mlps.pop(), rope)
    positions = embed.params.get("positions")
    ops = decoder_ops(shape)
    prog = DecoderProgram(
        ops,
        linears,
        norms,
        table,
        positions,
        embed.params.get("offset", 0),
        thetas.pop() if rope else None,
        shape.layers,
        kv,
        d,
        vocab,
        hidden,
        wide=wide_tensors(ops, "h0"),
        n_positions=0 if positions is None else positions.shape[0],
    )
    return prog, shape, {"norm": "/".join(sorted(norm_kinds))}


def _reads(t: Tensor, x: Tensor) -> bool:
    ev = t.event
    if ev.kind == "rope":
        ev = ev.ins[0].event
    return ev.kind == "linear" and ev.ins[0] is x
