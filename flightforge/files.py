"""Reading every file the tool is handed and writing every file it makes.

Readers. Each format has one reader here (YAML, JSON, UTF-8 text, ``.npy``, and the
bounded bytes under the ``.ffb`` loader and the ONNX reader, which lives in
``compiler/frontend/onnx_graph.py``, the one module that imports ``onnx``), and each
takes the caller's error type, so a bad file is one error of the caller's kind that
names the file. Every reader is
bounded before it spends: text formats by :data:`TEXT_LIMIT` bytes (so ``/dev/zero``
given as a config is refused after 16 MiB, not read forever); YAML by the number of
nodes after alias expansion (a 1 KB "billion laughs" file expands to 10^9 nodes and
would hang whatever formats or walks it); binary formats by the sizes their headers
declare, checked against the bytes the file holds before anything is allocated (an
``.npy`` header claiming 10^11 elements over 16 bytes of data, an ONNX initialiser
with huge dims and no data). Binary inputs must be regular files.

Writers. :func:`atomic_writer` writes into a temporary file in the target's own folder
and renames it into place once complete, so a full disk or a file-size limit never
leaves a truncated file, and an earlier file of that name survives a failed write; the
error (:class:`OutputError`) names the file. :func:`check_output_file` and
:func:`prepare_output_dir` create a command's output folder, or refuse it, before its
long work starts, not after it.
"""

from __future__ import annotations

import contextlib
import json
import math
import os
import reprlib
import stat
import tempfile
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import IO, Any

import numpy as np

TEXT_LIMIT = 16 * 2**20  #: bytes of any text input (configs, plans, specs, prompts)
YAML_NODE_LIMIT = 100_000  #: YAML nodes after alias expansion (a big plan holds ~10^3)
NPY_HEADER_LIMIT = 10_000  #: bytes of an .npy header (numpy's own default bound)


class OutputError(OSError):
    """A file could not be written; the message names it. Any earlier file of that name
    is unchanged (see :func:`atomic_writer`)."""


def short_repr(value: Any, limit: int = 60) -> str:
    """``repr`` cut to about ``limit`` characters, for error messages about user values
    (an expanded YAML value or a megabyte string must not be formatted whole)."""
    r = reprlib.Repr()
    r.maxstring = r.maxother = limit
    r.maxlist = r.maxtuple = r.maxdict = r.maxset = 6
    r.maxlevel = 3
    return r.repr(value)


# --- reading ---------------------------------------------------------------------------------


def read_bytes(
    path: Path, error: type[Exception], limit: int = TEXT_LIMIT, *, regular: bool = False
) -> bytes:
    """The bytes of ``path``, at most ``limit`` of them; ``regular`` refuses anything but
    a regular file (a device or a pipe has no size to check before reading)."""
    try:
        with open(path, "rb") as f:
            st = os.fstat(f.fileno())
            if regular and not stat.S_ISREG(st.st_mode):
                raise error(f"{path}: not a regular file")
            if stat.S_ISREG(st.st_mode) and st.st_size > limit:  # refused before reading
                raise error(f"{path}: {st.st_size} bytes is more than the limit of {limit}")
            regular_file = stat.S_ISREG(st.st_mode)
            data = f.read(st.st_size + 1) if regular_file else _read_at_most(f, limit + 1)
    except OSError as e:
        if isinstance(e, error):
            raise
        raise error(f"{path}: cannot read: {e.strerror or e}") from None
    if len(data) > limit:
        raise error(f"{path}: more than the limit of {limit} bytes")
    return data


def _read_at_most(f: IO[bytes], size: int) -> bytes:
    """Up to ``size`` bytes, in chunks (``read(size)`` would allocate ``size`` up front)."""
    chunks = []
    while size > 0:
        chunk = f.read(min(size, 1 << 20))
        if not chunk:
            break
        chunks.append(chunk)
        size -= len(chunk)
    return b"".join(chunks)


def read_text(path: Path, error: type[Exception], limit: int = TEXT_LIMIT) -> str:
    """The UTF-8 text of ``path``; an undecodable byte is named by offset and line."""
    data = read_bytes(path, error, limit)
    try:
        return data.decode("utf-8")
    except UnicodeDecodeError as e:
        line = data.count(b"\n", 0, e.start) + 1
        raise error(
            f"{path}: not UTF-8 text: byte {data[e.start]:#04x} at offset {e.start} (line {line})"
        ) from None


def read_yaml(path: Path, error: type[Exception]) -> Any:
    """The parsed contents of the YAML file ``path``; ``error`` names it on failure."""
    return _parse(path, error, _yaml_load, "YAML")


def read_json(path: Path, error: type[Exception]) -> Any:
    """The parsed contents of the JSON file ``path``; ``error`` names it on failure."""
    return _parse(path, error, json.loads, "JSON")


def _parse(path: Path, error: type[Exception], parse: Callable[[str], Any], kind: str) -> Any:
    import yaml

    text = read_text(path, error)
    try:
        return parse(text)
    except RecursionError:
        raise error(f"{path}: not valid {kind}: nested too deeply") from None
    except _Expansion as e:
        raise error(f"{path}: not valid {kind}: {e}") from None
    except (yaml.YAMLError, ValueError) as e:  # JSONDecodeError and int-size errors too
        raise error(f"{path}: not valid {kind}: {e}") from None


class _Expansion(ValueError):
    pass


def _yaml_load(text: str) -> Any:
    """``yaml.safe_load`` that counts the document's nodes as aliases expand them
    (cheaply, one visit per distinct node) and refuses past :data:`YAML_NODE_LIMIT`
    before building any Python object."""
    import yaml

    loader = getattr(yaml, "CSafeLoader", yaml.SafeLoader)(text)
    try:
        node = loader.get_single_node()
        if node is None:
            return None
        _expanded_size(node, {})
        return loader.construct_document(node)
    finally:
        loader.dispose()


def _expanded_size(node: Any, memo: dict[int, int | None]) -> int:
    import yaml

    key = id(node)
    if key in memo:
        if memo[key] is None:
            raise _Expansion("a recursive alias (a node that contains itself)")
        return memo[key]
    memo[key] = None
    size = 1
    if isinstance(node, yaml.SequenceNode):
        size += sum(_expanded_size(v, memo) for v in node.value)
    elif isinstance(node, yaml.MappingNode):
        size += sum(_expanded_size(k, memo) + _expanded_size(v, memo) for k, v in node.value)
    if size > YAML_NODE_LIMIT:
        raise _Expansion(
            f"more than {YAML_NODE_LIMIT} values once its aliases are expanded "
            f"(nested aliases, as in a 'billion laughs' file?)"
        )
    memo[key] = size
    return size


def read_npy(path: Path, error: type[Exception]) -> np.ndarray:
    """An array from an ``.npy`` file. The header's shape and dtype must account for
    exactly the bytes that follow it (checked before allocating); object arrays, which
    numpy stores as pickles, are refused."""
    try:
        with open(path, "rb") as f:
            if not stat.S_ISREG(os.fstat(f.fileno()).st_mode):
                raise error(f"{path}: not a regular file")
            shape, fortran, dtype = _npy_header(f, path, error)
            count = math.prod(shape)
            want = count * dtype.itemsize
            have = os.fstat(f.fileno()).st_size - f.tell()
            if want != have:
                raise error(
                    f"{path}: the .npy header declares {dtype.str}{list(shape)} "
                    f"({want} bytes) but {have} bytes of data follow it"
                )
            array = np.fromfile(f, dtype=dtype, count=count)
    except OSError as e:
        if isinstance(e, error):
            raise
        raise error(f"{path}: cannot read: {e.strerror or e}") from None
    return array.reshape(shape, order="F" if fortran else "C")


def _npy_header(f: IO[bytes], path: Path, error: type[Exception]):
    fmt = np.lib.format
    try:
        version = fmt.read_magic(f)
        if version == (1, 0):
            shape, fortran, dtype = fmt.read_array_header_1_0(f, NPY_HEADER_LIMIT)
        elif version in ((2, 0), (3, 0)):
            shape, fortran, dtype = fmt.read_array_header_2_0(f, NPY_HEADER_LIMIT)
        else:
            raise ValueError(f"format version {version} is not supported")
    except (ValueError, SyntaxError, TypeError) as e:
        raise error(f"{path}: not a readable .npy file: {e}") from None
    if dtype.hasobject:
        raise error(f"{path}: holds Python objects (pickled data); refused")
    return shape, fortran, dtype


# --- writing ---------------------------------------------------------------------------------


def check_output_file(path: Path) -> Path:
    """Make sure now, before long work, that ``path`` can be written: its folder is
    created if missing (``out/x.ffb`` needs no mkdir), and a folder that cannot be made
    or written, or a ``path`` that is a folder, is refused naming it."""
    path = Path(path)
    if path.is_dir():
        raise OutputError(f"{path}: is a folder, not a file")
    prepare_output_dir(path.parent if str(path.parent) else Path("."))
    return path


def prepare_output_dir(folder: Path) -> Path:
    """Create the output folder ``folder`` now (with its parents), before long work, and
    refuse one that cannot be created or written."""
    folder = Path(folder)
    try:
        folder.mkdir(parents=True, exist_ok=True)
    except OSError as e:
        raise OutputError(f"{folder}: cannot create the output folder: {e.strerror}") from None
    if not folder.is_dir():  # mkdir(exist_ok) passes a file of that name
        raise OutputError(f"{folder}: cannot create the output folder: a file has its name")
    if not os.access(folder, os.W_OK | os.X_OK):
        raise OutputError(f"{folder}: the output folder is not writable")
    return folder


@contextlib.contextmanager
def atomic_writer(path: Path, mode: str = "wb") -> Iterator[IO]:
    """A file object whose contents replace ``path`` only once the block completes.

    The data goes to a temporary file next to ``path`` (same folder, hence the same file
    system, so the rename is atomic); on any failure the temporary file is removed and
    ``path`` keeps its earlier contents. A failed write raises :class:`OutputError`
    naming ``path``.
    """
    path = Path(path)
    if path.exists() and not path.is_file() and not path.is_dir():
        # A device or a pipe (``--out /dev/null``) is written in place: renaming a
        # temporary file over it would replace the device node itself.
        try:
            with open(path, mode) as f:
                yield f
        except OSError as e:
            raise OutputError(f"{path}: cannot write: {e.strerror or e}") from None
        return
    folder = path.parent if str(path.parent) else Path(".")
    try:
        fd, tmp = tempfile.mkstemp(dir=folder, prefix=f".{path.name}.", suffix=".tmp")
    except OSError as e:
        raise OutputError(f"{path}: cannot write: {e.strerror}") from None
    try:
        os.fchmod(fd, 0o666 & ~_umask())
        with os.fdopen(fd, mode) as f:
            yield f
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except OSError as e:
        _remove(tmp)
        raise OutputError(
            f"{path}: cannot write: {e.strerror or e}"
            + ("; the earlier file is unchanged" if path.exists() else "")
        ) from None
    except BaseException:
        _remove(tmp)
        raise


def write_bytes(path: Path, data: bytes) -> None:
    """Write ``data`` to ``path`` atomically (see :func:`atomic_writer`)."""
    with atomic_writer(path) as f:
        f.write(data)


def write_text(path: Path, text: str) -> None:
    """Write UTF-8 ``text`` to ``path`` atomically (see :func:`atomic_writer`)."""
    with atomic_writer(path, "w") as f:
        f.write(text)


def write_npy(path: Path, array: np.ndarray) -> None:
    """Save ``array`` as ``.npy`` at ``path`` atomically, without pickles."""
    with atomic_writer(path) as f:
        np.save(f, np.asarray(array), allow_pickle=False)


def _umask() -> int:
    mask = os.umask(0)
    os.umask(mask)
    return mask


def _remove(tmp: str) -> None:
    with contextlib.suppress(OSError):
        os.unlink(tmp)
