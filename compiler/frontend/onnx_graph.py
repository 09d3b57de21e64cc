"""Reading an ONNX file safely, as a networkx graph, with one concrete probe run.

The file itself is parsed and checked by :mod:`.onnx_file` (before ``onnx`` is
imported); here its external data is loaded and the graph indexed. A model whose nodes
read tensors nothing defines (a truncated file) is an error naming the file.

The probe: recognising a decoder needs the shape of every intermediate tensor and the
values of the shape, mask and rotary-table plumbing, which exporters compute at run time
from the input shapes. Rather than re-implement shape arithmetic, the graph is run once
by onnxruntime on a short random prompt (batch 1, no past) with every intermediate
tensor made an output. Pattern matchers then check their hypotheses (which axis holds
the heads, which table is the cosine, what the mask allows) against these values.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import networkx as nx
import numpy as np
import onnx
from onnx import external_data_helper, helper, numpy_helper

from .onnx_file import FrontendError, read_checked

PROBE_ROWS = 7  #: prompt length of the probe run: prime, unlike any head count or width


@dataclass(frozen=True)
class OnnxNode:
    name: str
    op: str
    domain: str
    inputs: tuple[str, ...]
    outputs: tuple[str, ...]
    attrs: dict[str, Any]
    index: int  #: position in the file's node list


@dataclass
class OnnxGraph:
    """The model as a dataflow graph: networkx nodes are ONNX node names."""

    path: Path
    model: onnx.ModelProto
    nodes: dict[str, OnnxNode]
    dag: nx.DiGraph
    producer: dict[str, str]  #: tensor -> producing node
    consumers: dict[str, list[str]]  #: tensor -> consuming nodes
    initializers: dict[str, np.ndarray]
    inputs: list[onnx.ValueInfoProto]  #: graph inputs that are not initialisers
    outputs: list[str]
    opsets: dict[str, int]
    elem_types: dict[str, int] = field(default_factory=dict)

    def order(self) -> list[OnnxNode]:
        """Nodes in a topological order that keeps the file's order where it can."""
        keys = nx.lexicographical_topological_sort(self.dag, key=lambda n: self.nodes[n].index)
        return [self.nodes[n] for n in keys]

    def opset(self, node: OnnxNode) -> int:
        return self.opsets.get(node.domain or "", self.opsets.get("ai.onnx", 0))


def read_model(path: str | Path, model: onnx.ModelProto | None = None) -> onnx.ModelProto:
    """The model with its external data, from a file the frontend may trust.

    ``model`` is :func:`.onnx_file.read_checked`'s parse of ``path`` when the caller
    already has it (the compile command checks the file before importing ``onnx``);
    every refusal of a bad file is that function's, naming the file and tensor.
    """
    path = Path(path)
    if model is None:
        model = read_checked(path)
    try:
        external_data_helper.load_external_data_for_model(model, str(path.parent.resolve()))
    except Exception as e:
        raise FrontendError(f"{path}: cannot load external data: {e}") from None
    return model


def build_graph(model: onnx.ModelProto, path: Path) -> OnnxGraph:
    """Shape-infer the model and index it; a dangling tensor read is an error naming both."""
    try:
        model = onnx.shape_inference.infer_shapes(
            model, check_type=False, strict_mode=False, data_prop=True
        )
    except Exception as e:
        raise FrontendError(f"{path}: shape inference failed: {e}") from None
    g = model.graph
    inits = {t.name: numpy_helper.to_array(t) for t in g.initializer}
    defined = set(inits) | {i.name for i in g.input}
    nodes: dict[str, OnnxNode] = {}
    producer: dict[str, str] = {}
    consumers: dict[str, list[str]] = {}
    dag = nx.DiGraph()
    for k, n in enumerate(g.node):
        if any(
            a.type in (onnx.AttributeProto.GRAPH, onnx.AttributeProto.GRAPHS) for a in n.attribute
        ):
            raise FrontendError(
                f"{path}: node {n.name or k!r} ({n.op_type}) has a subgraph; "
                f"control flow is not supported in a decoder export"
            )
        name = n.name or f"{n.op_type}_{k}"
        if name in nodes:
            name = f"{name}#{k}"
        attrs = {a.name: helper.get_attribute_value(a) for a in n.attribute}
        if n.op_type == "Constant":
            attrs = {"value": _constant_value(n)}
        node = OnnxNode(name, n.op_type, n.domain or "", tuple(n.input), tuple(n.output), attrs, k)
        nodes[name] = node
        dag.add_node(name)
        for t in n.output:
            if t:
                producer[t] = name
    for node in nodes.values():
        for t in node.inputs:
            if not t:
                continue
            if t not in defined and t not in producer:
                raise FrontendError(
                    f"{path}: node {node.name!r} ({node.op}) reads tensor {t!r} "
                    f"that no node, input or initialiser defines (truncated file?)"
                )
            consumers.setdefault(t, []).append(node.name)
            if t in producer:
                dag.add_edge(producer[t], node.name)
    if not nx.is_directed_acyclic_graph(dag):
        raise FrontendError(f"{path}: the graph has a cycle")
    for o in g.output:
        if o.name not in producer and o.name not in defined:
            raise FrontendError(f"{path}: graph output {o.name!r} is not computed by any node")
    elem = {
        vi.name: vi.type.tensor_type.elem_type
        for vi in list(g.value_info) + list(g.input) + list(g.output)
        if vi.type.HasField("tensor_type")
    }
    opsets = {(o.domain or ""): o.version for o in model.opset_import}
    graph_inputs = [i for i in g.input if i.name not in inits]
    return OnnxGraph(
        path,
        model,
        nodes,
        dag,
        producer,
        consumers,
        inits,
        graph_inputs,
        [o.name for o in g.output],
        opsets,
        elem,
    )


def _constant_value(n: onnx.NodeProto) -> np.ndarray:
    a = n.attribute[0]
    if a.name == "value":
        return numpy_helper.to_array(a.t)
    if a.name in ("value_float", "value_int"):
        return np.array(helper.get_attribute_value(a))
    if a.name in ("value_floats", "value_ints"):
        return np.array(helper.get_attribute_value(a))
    raise FrontendError(f"Constant node {n.name!r}: attribute {a.name!r} is not supported")


# ----------------------------------------------------------------------------------- probe


def probe_feeds(
    g: OnnxGraph, rows: int, vocab: int, seed: int = 0
) -> tuple[dict[str, np.ndarray], np.ndarray]:
    """Inputs of the probe run: ``rows`` random tokens at positions ``0..rows-1``, no past.

    Returns the feeds and the token ids. An input the frontend does not know is an error.
    """
    rng = np.random.default_rng(seed)
    ids = rng.integers(0, vocab, size=rows)
    feeds: dict[str, np.ndarray] = {}
    for inp in g.inputs:
        tt = inp.type.tensor_type
        dtype = helper.tensor_dtype_to_np_dtype(tt.elem_type)
        dims = [d.dim_value if d.HasField("dim_value") else None for d in tt.shape.dim]
        name = inp.name
        low = name.lower()
        if dims and dims[0] not in (None, 1):
            raise FrontendError(
                f"{g.path}: input {name!r} has a fixed batch of {dims[0]}; export "
                f"with a dynamic or unit batch"
            )
        if low == "input_ids":
            feeds[name] = ids[None].astype(dtype)
        elif low == "attention_mask":
            feeds[name] = np.ones((1, rows), dtype)
        elif low == "position_ids":
            feeds[name] = np.arange(rows)[None].astype(dtype)
        elif low == "cache_position":
            feeds[name] = np.arange(rows).astype(dtype)
        elif "past" in low:  # past_key_values.{i}.{key,value} [batch, kv_heads, past, head_dim]
            shape = [1 if k == 0 else (0 if d is None else d) for k, d in enumerate(dims)]
            if len(shape) == 4 and shape[2]:
                raise FrontendError(
                    f"{g.path}: input {name!r} has a fixed past length {shape[2]}; "
                    f"export with a dynamic past length"
                )
            feeds[name] = np.zeros(shape, dtype)
        else:
            raise FrontendError(
                f"{g.path}: input {name!r} is not one the frontend knows "
                f"(input_ids, attention_mask, position_ids, cache_position, "
                f"past_key_values.*)"
            )
        want = feeds[name].shape
        for k, d in enumerate(dims):
            if d is not None and k < len(want) and want[k] != d:
                raise FrontendError(
                    f"{g.path}: input {name!r} has a fixed size {d} on axis {k}; "
                    f"export with a dynamic sequence length"
                )
    return feeds, ids


def probe_rows(g: OnnxGraph) -> int:
    """The probe length: the exported fixed length if any, else :data:`PROBE_ROWS`."""
    for inp in g.inputs:
        if inp.name == "input_ids":
            dims = inp.type.tensor_type.shape.dim
            if len(dims) == 2 and dims[1].HasField("dim_value"):
                return max(dims[1].dim_value, 1)
    return PROBE_ROWS


def probe_values(g: OnnxGraph, feeds: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
    """Every tensor's value on the probe inputs, computed by onnxruntime."""
    import onnxruntime as ort

    model = onnx.ModelProto()
    model.CopyFrom(g.model)
    have = {o.name for o in model.graph.output}
    types = dict(g.elem_types)
    types.update({k: helper.np_dtype_to_tensor_dtype(v.dtype) for k, v in g.initializers.items()})
    for node in g.order():
        for t in node.outputs:
            if t and not types.get(t):  # contrib ops shape inference does not know
                types[t] = _fallback_type(node, types)
            if t and t not in have:
                model.graph.output.append(helper.make_tensor_value_info(t, types[t], None))
                have.add(t)
    opts = ort.SessionOptions()
    opts.graph_optimization_level = ort.GraphOptimizationLevel.ORT_DISABLE_ALL
    opts.log_severity_level = 3
    try:
        sess = ort.InferenceSession(
            model.SerializeToString(), opts, providers=["CPUExecutionProvider"]
        )
        names = [o.name for o in sess.get_outputs()]
        vals = sess.run(names, feeds)
    except Exception as e:
        raise FrontendError(
            f"{g.path}: onnxruntime cannot run the model on a probe prompt of "
            f"{len(next(iter(feeds.values()))[0])} tokens: {e}"
        ) from None
    out = dict(zip(names, vals, strict=True))
    out.update(feeds)
    out.update(g.initializers)
    for node in g.nodes.values():
        if node.op == "Constant":
            out[node.outputs[0]] = node.attrs["value"]
    return out


def _fallback_type(node: OnnxNode, types: dict[str, int]) -> int:
    """The first float input's type: what contrib ops (norms, attention, MatMulNBits) output."""
    known = [types[t] for t in node.inputs if t and types.get(t)]
    floats = [t for t in known if helper.tensor_dtype_to_np_dtype(t).kind == "f"]
    return (floats or known or [onnx.TensorProto.FLOAT])[0]
