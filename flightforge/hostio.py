"""Host side of a program's typed inputs and outputs (:class:`~flightforge.program.TensorIO`).

The host quantises float tensors with the scale the compiler fixed, writes them to the
input segments of a device, and reads outputs back as integers (real value = integer *
scale). The CLI's ``run`` and ``demo`` commands and :func:`flightforge.compiler.demo.run_demo`
share these functions, so every back end is fed and read the same way.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np

from .program import Program, TensorIO

_DTYPES = {"int8": "<i1", "int16": "<i2", "int32": "<i4"}


class TensorIOError(ValueError):
    """A host tensor does not match the program's input or output; the message names it."""


def numpy_dtype(tio: TensorIO) -> np.dtype:
    """The little-endian numpy type of a tensor as it lies in external memory."""
    try:
        return np.dtype(_DTYPES[tio.dtype])
    except KeyError:
        raise TensorIOError(
            f"tensor {tio.name!r}: element type {tio.dtype!r} is not one of " + ", ".join(_DTYPES)
        ) from None


def nbytes(tio: TensorIO) -> int:
    return math.prod(tio.shape) * numpy_dtype(tio).itemsize


def _addr(program: Program, tio: TensorIO) -> int:
    seg = program.segment(tio.segment)
    if nbytes(tio) > seg.size:
        raise TensorIOError(
            f"tensor {tio.name!r}: {nbytes(tio)} bytes of {tio.dtype} "
            f"{list(tio.shape)} do not fit in segment {seg.name!r} "
            f"of {seg.size} bytes"
        )
    return seg.addr


def quantize(tio: TensorIO, value: np.ndarray) -> np.ndarray:
    """Integers to write for ``value``: floats are ``round(x / scale)`` saturated to the
    element type; integers are taken as they are but must lie in its range."""
    value = np.asarray(value)
    if value.shape != tuple(tio.shape):
        raise TensorIOError(
            f"input {tio.name!r}: shape {list(value.shape)} does not match "
            f"the program's {list(tio.shape)}"
        )
    info = np.iinfo(numpy_dtype(tio))
    if value.dtype.kind == "f":
        if tio.scale is None:
            raise TensorIOError(
                f"input {tio.name!r} is not quantised (no scale): give integer "
                f"values, not {value.dtype}"
            )
        if not np.all(np.isfinite(value)):
            raise TensorIOError(f"input {tio.name!r}: holds NaN or infinite values")
        q = np.round(value.astype(np.float64) / tio.scale)
        return np.clip(q, info.min, info.max).astype(np.int64)
    if value.dtype.kind in "iu":
        if value.size and (value.min() < info.min or value.max() > info.max):
            raise TensorIOError(
                f"input {tio.name!r}: integer values {value.min()}..{value.max()} "
                f"exceed the {tio.dtype} range {info.min}..{info.max}"
            )
        return value.astype(np.int64)
    raise TensorIOError(
        f"input {tio.name!r}: values of type {value.dtype} are neither integers nor floats"
    )


def dequantize(tio: TensorIO, ints: np.ndarray) -> np.ndarray:
    """Real values of integer tensor contents (the integers themselves without a scale)."""
    return ints.astype(np.float64) * (1.0 if tio.scale is None else tio.scale)


def write_input(device, program: Program, tio: TensorIO, value: np.ndarray) -> np.ndarray:
    """Quantise ``value`` and write it to the device; returns the integers written."""
    q = quantize(tio, value)
    device.write(_addr(program, tio), q.astype(numpy_dtype(tio)).tobytes())
    return q


def read_output(device, program: Program, tio: TensorIO) -> np.ndarray:
    """Read a tensor back from the device as int64 of its shape."""
    raw = device.read(_addr(program, tio), nbytes(tio))
    return np.frombuffer(raw, dtype=numpy_dtype(tio)).reshape(tio.shape).astype(np.int64)


@dataclass(frozen=True)
class Agreement:
    """How a device output compares with the integer and float references."""

    name: str
    bit_exact: bool  #: equal to the quantised reference in every element
    max_abs_diff: int  #: largest difference from the quantised reference, integer units
    rel_rms: float  #: ||got - float_ref|| / ||float_ref|| of the dequantised output
    cosine: float  #: cosine similarity of the dequantised output with the float reference


def compare(
    tio: TensorIO, got: np.ndarray, expected_int: np.ndarray, expected_float: np.ndarray
) -> Agreement:
    """Compare an integer output with its quantised and float references."""
    got = np.asarray(got, np.int64)
    exp = np.asarray(expected_int, np.int64)
    if got.shape != exp.shape:
        raise TensorIOError(
            f"output {tio.name!r}: shape {list(got.shape)} does not match the "
            f"reference {list(exp.shape)}"
        )
    diff = int(np.max(np.abs(got - exp))) if got.size else 0
    real = dequantize(tio, got).ravel()
    ref = np.asarray(expected_float, np.float64).ravel()
    ref_norm, real_norm = float(np.linalg.norm(ref)), float(np.linalg.norm(real))
    err = float(np.linalg.norm(real - ref))
    rel_rms = err / ref_norm if ref_norm else (0.0 if err == 0 else math.inf)
    if ref_norm and real_norm:
        cosine = float(real @ ref) / (ref_norm * real_norm)
    else:  # a zero vector points nowhere: similar only to another zero vector
        cosine = 1.0 if ref_norm == real_norm else 0.0
    return Agreement(tio.name, diff == 0, diff, rel_rms, cosine)
