"""Host-side tensor I/O: quantising, writing and reading a program's typed inputs and outputs.

A memory-only fake device stands in for a simulator: these are properties of the
host code, whatever back end runs the sections.
"""

from __future__ import annotations

import numpy as np
import pytest

from flightforge import hostio
from flightforge.compiler.demo import DEMO_SECTIONS, build_demo, run_demo
from flightforge.program import Program, Segment, TensorIO
from flightforge.sim.device import RunResult


class MemoryDevice:
    """External memory and a log of the sections asked for; runs nothing."""

    def __init__(self, arch):
        self.arch = arch
        self.mem = bytearray(1 << 16)
        self.ran: list[str] = []

    def load(self, program: Program) -> None:
        for s in program.segments:
            self.write(s.addr, s.data or bytes(s.size))

    def write(self, addr: int, data: bytes) -> None:
        self.mem[addr : addr + len(data)] = data

    def read(self, addr: int, size: int) -> bytes:
        return bytes(self.mem[addr : addr + size])

    def run(self, section: str) -> RunResult:
        self.ran.append(section)
        return RunResult(section, 0)


def _program(tiny, dtype="int8", shape=(2, 3), scale=0.5, size=None):
    t = TensorIO("t", "t", dtype, shape, scale)
    n = hostio.nbytes(t)
    prog = Program.for_arch(
        tiny,
        [],
        [Segment("t", "input", 0x100, size or n)],
        {"inputs": [t.to_dict()], "outputs": [t.to_dict()]},
    )
    return prog, t


def test_floats_are_rounded_and_saturated():
    t = TensorIO("x", "x", "int8", (1, 5), 0.5)
    q = hostio.quantize(t, np.array([[0.26, -0.74, 100.0, -100.0, 0.0]]))
    assert q.tolist() == [[1, -1, 127, -128, 0]]


@pytest.mark.parametrize(
    "dtype,lo,hi", [("int8", -128, 127), ("int16", -32768, 32767), ("int32", -(2**31), 2**31 - 1)]
)
def test_integers_are_range_checked(dtype, lo, hi):
    t = TensorIO("ids", "s", dtype, (2,), None)
    assert hostio.quantize(t, np.array([lo, hi], np.int64)).tolist() == [lo, hi]
    with pytest.raises(
        hostio.TensorIOError,
        match=rf"input 'ids': integer values {lo - 1}\.\.{hi} exceed the {dtype} range",
    ):
        hostio.quantize(t, np.array([lo - 1, hi], np.int64))


@pytest.mark.parametrize(
    "value,match",
    [
        (np.zeros((3, 2)), r"input 't': shape \[3, 2\] does not match the program's \[2, 3\]"),
        (np.full((2, 3), np.nan), r"input 't': holds NaN"),
        (np.zeros((2, 3), bool), r"input 't': values of type bool are neither"),
    ],
)
def test_bad_values_are_refused_naming_the_input(value, match):
    with pytest.raises(hostio.TensorIOError, match=match):
        hostio.quantize(TensorIO("t", "t", "int8", (2, 3), 0.5), value)


def test_floats_for_an_unscaled_input_are_refused():
    with pytest.raises(hostio.TensorIOError, match=r"input 'ids' is not quantised \(no scale\)"):
        hostio.quantize(TensorIO("ids", "s", "int16", (2,), None), np.zeros(2))


def test_unknown_dtype_is_refused():
    with pytest.raises(
        hostio.TensorIOError, match=r"tensor 'f': element type 'float16' is not one"
    ):
        hostio.numpy_dtype(TensorIO("f", "f", "float16", (2,), None))


@pytest.mark.parametrize("dtype", ["int8", "int16", "int32"])
def test_write_then_read_round_trips(tiny, dtype):
    prog, t = _program(tiny, dtype)
    dev = MemoryDevice(tiny)
    dev.load(prog)
    ints = np.array([[1, -2, 3], [-4, 5, -6]])
    assert hostio.write_input(dev, prog, t, ints).tolist() == ints.tolist()
    assert hostio.read_output(dev, prog, t).tolist() == ints.tolist()
    assert dev.read(0x100, hostio.nbytes(t)) == ints.astype(hostio.numpy_dtype(t)).tobytes()
    assert hostio.dequantize(t, ints).tolist() == (ints * 0.5).tolist()


def test_tensor_larger_than_its_segment_is_refused(tiny):
    prog, t = _program(tiny, size=4)
    with pytest.raises(
        hostio.TensorIOError, match=r"tensor 't': 6 bytes .* segment 't' of 4 bytes"
    ):
        hostio.write_input(MemoryDevice(tiny), prog, t, np.zeros((2, 3), np.int8))


def test_compare_measures_both_references():
    t = TensorIO("y", "y", "int8", (4,), 0.5)
    ref_f = np.array([0.5, 1.0, -1.0, 2.0])
    exact = hostio.compare(t, np.array([1, 2, -2, 4]), np.array([1, 2, -2, 4]), ref_f)
    assert exact.bit_exact and exact.max_abs_diff == 0
    assert exact.rel_rms == 0 and exact.cosine == pytest.approx(1)
    off = hostio.compare(t, np.array([1, 2, -2, 1]), np.array([1, 2, -2, 4]), ref_f)
    assert not off.bit_exact and off.max_abs_diff == 3
    assert off.rel_rms == pytest.approx(1.5 / np.linalg.norm(ref_f))
    zero = hostio.compare(t, np.zeros(4), np.array([1, 2, -2, 4]), ref_f)
    assert zero.cosine == 0 and zero.rel_rms == pytest.approx(1)


def test_run_demo_drives_the_device_and_reports_every_output(tiny):
    """On a device that computes nothing, the outputs stay zero and are not bit-exact."""
    build = build_demo(tiny)
    dev = MemoryDevice(tiny)
    report = run_demo(tiny, dev, build)
    assert dev.ran == list(DEMO_SECTIONS)
    assert [a.name for a in report.outputs] == [t.name for t in build.program.outputs]
    assert not report.bit_exact
    x = build.program.inputs[0]
    written = hostio.read_output(dev, build.program, x)
    assert written.tolist() == hostio.quantize(x, build.inputs[x.name]).tolist()
