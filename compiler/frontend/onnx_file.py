"""An ONNX file's bytes parsed and checked before the ``onnx`` package is imported.

Why a module of its own: ``import onnx`` costs 0.7-0.9 s of CPU (most of it
``ml_dtypes``' extension, loaded by ``onnx.helper``), more than the one second the README
allows for refusing a 1 KB bad input. The protobuf schema is all a refusal needs, and
``onnx`` ships it as a generated module, ``onnx/onnx_ml_pb2.py``, that imports nothing of
``onnx`` itself. :func:`read_checked` loads that module under its own name (so a later
``import onnx`` finds it in ``sys.modules`` and the message classes are the same), parses
the file with protobuf, and refuses, naming the file and tensor, what would otherwise be
allocated or followed blindly: a file that does not parse or holds no graph; external
data outside the model's folder, missing, or shorter than its offset and length; any
tensor (initialiser, sparse initialiser, constant attribute, in any subgraph or
function) whose dims declare more bytes than its data holds.
"""

from __future__ import annotations

import importlib.util
import math
import os
import sys
from collections.abc import Iterator
from pathlib import Path
from types import ModuleType
from typing import Any

from flightforge.files import read_bytes

from ..errors import CompileError

MAX_ONNX_BYTES = 2**31  #: protobuf's own limit on one message (weights beyond go external)

#: Bits per element of every ONNX element type (``TensorProto.DataType`` names); STRING
#: and UNDEFINED have no fixed size and are not checked.
ELEMENT_BITS = {
    "FLOAT": 32, "UINT8": 8, "INT8": 8, "UINT16": 16, "INT16": 16, "INT32": 32,
    "INT64": 64, "BOOL": 8, "FLOAT16": 16, "DOUBLE": 64, "UINT32": 32, "UINT64": 64,
    "COMPLEX64": 64, "COMPLEX128": 128, "BFLOAT16": 16, "FLOAT8E4M3FN": 8,
    "FLOAT8E4M3FNUZ": 8, "FLOAT8E5M2": 8, "FLOAT8E5M2FNUZ": 8, "FLOAT8E8M0": 8,
    "UINT4": 4, "INT4": 4, "FLOAT4E2M1": 4, "UINT2": 2, "INT2": 2, "FLOAT6E2M3": 6,
    "FLOAT6E3M2": 6,
}  # fmt: skip
#: The typed (non-raw) data fields; an entry holds at most 8 bytes of any element type.
_TYPED_FIELDS = ("float_data", "int32_data", "int64_data", "double_data", "uint64_data")


class FrontendError(CompileError):
    """An ONNX model the frontend cannot turn into a decoder; the message names the culprit."""


def _schema() -> ModuleType:
    """``onnx.onnx_ml_pb2``, without running ``onnx/__init__`` if onnx is not loaded yet."""
    name = "onnx.onnx_ml_pb2"
    if name in sys.modules:
        return sys.modules[name]
    if "onnx" in sys.modules:
        return importlib.import_module(name)
    package = importlib.util.find_spec("onnx")
    if package is None or not package.submodule_search_locations:
        raise FrontendError("the onnx package is not installed (pip install -e .)")
    location = Path(package.submodule_search_locations[0]) / "onnx_ml_pb2.py"
    spec = importlib.util.spec_from_file_location(name, location)
    module = importlib.util.module_from_spec(spec)
    sys.modules[name] = module  # `import onnx` later reuses it: one schema, one class set
    try:
        spec.loader.exec_module(module)
    except BaseException:
        del sys.modules[name]
        raise
    return module


def read_checked(path: str | Path) -> Any:
    """The parsed ``onnx.ModelProto`` of ``path``, external data not loaded, every
    declared tensor size checked against the bytes that back it."""
    path = Path(path)
    if not path.is_file():
        raise FrontendError(f"{path}: no such file")
    data = read_bytes(path, FrontendError, MAX_ONNX_BYTES, regular=True)
    pb = _schema()
    model = pb.ModelProto()
    try:
        model.ParseFromString(data)
    except Exception as e:  # protobuf's DecodeError and friends
        raise FrontendError(
            f"{path}: not a readable ONNX model (truncated or corrupt?): {type(e).__name__}: {e}"
        ) from None
    if not model.graph.node or not model.graph.output:
        raise FrontendError(
            f"{path}: the file parses but holds no graph nodes or outputs "
            f"(truncated or not an ONNX model?)"
        )
    base = path.parent.resolve()
    external = pb.TensorProto.EXTERNAL
    for tensor in all_tensors(model):
        if tensor.data_location == external:
            have = _external_bytes(tensor, base, path)
        else:
            have = _inline_bytes(tensor, pb)
        if have is not None:
            _check_declared(tensor, have, path, pb)
    return model


def all_tensors(model: Any) -> Iterator[Any]:
    """Every ``TensorProto`` of the model: initialisers, sparse initialisers' parts and
    tensor attributes, in the main graph, every subgraph and every function."""
    yield from _graph_tensors(model.graph)
    for function in model.functions:
        for node in function.node:
            yield from _node_tensors(node)


def _graph_tensors(graph: Any) -> Iterator[Any]:
    yield from graph.initializer
    for sparse in graph.sparse_initializer:
        yield from (sparse.values, sparse.indices)
    for node in graph.node:
        yield from _node_tensors(node)


def _node_tensors(node: Any) -> Iterator[Any]:
    for attr in node.attribute:
        if attr.HasField("t"):
            yield attr.t
        yield from attr.tensors
        if attr.HasField("g"):
            yield from _graph_tensors(attr.g)
        for sub in attr.graphs:
            yield from _graph_tensors(sub)


def _external_bytes(tensor: Any, base: Path, path: Path) -> int:
    """The bytes of ``tensor``'s external data, refusing a location outside ``base``."""
    info = {e.key: e.value for e in tensor.external_data}
    loc = info.get("location", "")
    try:
        offset, length = int(info.get("offset") or 0), int(info.get("length") or 0)
    except ValueError:
        raise FrontendError(
            f"{path}: tensor {tensor.name!r}: external data offset/length are not integers "
            f"({info.get('offset')!r}, {info.get('length')!r})"
        ) from None
    target = (base / loc).resolve()
    if not loc or os.path.isabs(loc) or not target.is_relative_to(base):
        raise FrontendError(
            f"{path}: tensor {tensor.name!r} has external data at {loc!r}, "
            f"outside the model's folder {base}; refused"
        )
    if not target.is_file():
        raise FrontendError(
            f"{path}: tensor {tensor.name!r}: external data file {loc!r} does not exist"
        )
    size = target.stat().st_size
    if offset < 0 or length < 0 or offset + length > size:
        raise FrontendError(
            f"{path}: tensor {tensor.name!r}: external data {loc!r} is {size} bytes, "
            f"shorter than offset+length {offset + length}"
        )
    return length if length else size - offset


def _inline_bytes(tensor: Any, pb: ModuleType) -> int | None:
    """An upper bound on the bytes ``tensor`` holds in the file (None: strings)."""
    if tensor.data_type in (pb.TensorProto.STRING, pb.TensorProto.UNDEFINED):
        return None
    if tensor.HasField("raw_data"):
        return len(tensor.raw_data)
    # A typed field holds one element per entry, or two (complex parts, packed 4-bit
    # values): at most 8 bytes of data per entry bounds the tensor.
    return 8 * sum(len(getattr(tensor, f)) for f in _TYPED_FIELDS)


def _check_declared(tensor: Any, have: int, path: Path, pb: ModuleType) -> None:
    dims = list(tensor.dims)
    if any(d < 0 for d in dims):
        raise FrontendError(f"{path}: tensor {tensor.name!r} has negative dims {dims}")
    try:
        name = pb.TensorProto.DataType.Name(tensor.data_type)
        if name == "STRING":  # variable-length elements: nothing to bound
            return
        bits = ELEMENT_BITS[name]
    except (KeyError, ValueError):
        raise FrontendError(
            f"{path}: tensor {tensor.name!r} has unknown data type {tensor.data_type}"
        ) from None
    want = -(-math.prod(dims) * bits // 8)
    if want > have:
        raise FrontendError(
            f"{path}: tensor {tensor.name!r} declares dims {dims} ({want} bytes) "
            f"but holds {have} bytes of data"
        )
