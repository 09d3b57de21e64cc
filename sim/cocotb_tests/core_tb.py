"""cocotb replay of host steps on the FlightForge core, inside the Verilator process.

The golden model is not here: this module only replays a list of steps (host writes to
external memory, section runs, dumps of buffers and memory) that
:mod:`flightforge.sim.rtl_harness` pickled, and pickles back what the core did. The
harness compares those results with the functional simulator.

The cycle-level work is not in Python either. The top is ``flightforge_tb``
(``sim/verilator/flightforge_tb.sv``): the memory channels, code loading, the section's
cycle count and buffer dumps run in SystemVerilog and in C++ behind DPI-C
(``flightforge_tb_host.cpp``). Python reaches that C++ state through ctypes on the
simulator process itself (:class:`Host`), describes an operation, toggles ``req`` and
waits for ``ack`` to follow: one trigger per section, while Verilator free-runs.
"""

from __future__ import annotations

import ctypes
import pickle
import time
from dataclasses import dataclass

import cocotb
import numpy as np
from cocotb.clock import Clock
from cocotb.triggers import ClockCycles, ValueChange

PERIOD_NS = 10
RESET_CYCLES = 3

_u8p = ctypes.POINTER(ctypes.c_uint8)
_i64p = ctypes.POINTER(ctypes.c_int64)
#: ctypes signatures of the ff_* functions of flightforge_tb_host.cpp that Python calls.
_SIGNATURES = {
    "ff_configure": (
        [
            ctypes.c_uint64,
            ctypes.c_int,
            ctypes.c_int,
            ctypes.c_int,
            ctypes.c_int64,
            ctypes.c_int64,
            ctypes.c_int64,
            ctypes.c_uint64,
        ],
        ctypes.c_int,
    ),
    "ff_configure_dram": ([_i64p, ctypes.c_int], ctypes.c_int),
    "ff_mem_write": ([ctypes.c_uint64, ctypes.c_char_p, ctypes.c_uint64], ctypes.c_int),
    "ff_mem_read": ([ctypes.c_uint64, _u8p, ctypes.c_uint64], ctypes.c_int),
    "ff_pages": ([ctypes.POINTER(ctypes.c_uint64), ctypes.c_uint64], ctypes.c_uint64),
    "ff_page_read": ([ctypes.c_uint64, _u8p], ctypes.c_int),
    "ff_request_load": ([ctypes.c_char_p, ctypes.c_uint64], None),
    "ff_request_run": ([ctypes.c_int64, ctypes.c_int], None),
    "ff_request_dump": ([_i64p, ctypes.c_uint64], None),
    "ff_dump_size": ([], ctypes.c_uint64),
    "ff_dump_copy": ([_u8p], None),
    "ff_run_result": ([_i64p], None),
    "ff_error": ([], ctypes.c_char_p),
}


class HostError(RuntimeError):
    """A host access outside external memory (the C++ side's message)."""


def bind(lib: ctypes.CDLL) -> ctypes.CDLL:
    """Give ``lib``'s ff_* functions their C signatures (ctypes would pass every integer as
    a 32-bit ``int``)."""
    for name, (args, res) in _SIGNATURES.items():
        fn = getattr(lib, name)
        fn.argtypes, fn.restype = args, res
    return lib


def _ptr(a: np.ndarray, kind=_u8p):
    return a.ctypes.data_as(kind)


@dataclass
class Host:
    """The C++ side of the testbench, reached through the process's exported symbols."""

    lib: ctypes.CDLL
    page_bits: int

    @classmethod
    def attach(cls, job: dict) -> Host:
        lib = bind(ctypes.CDLL(None))  # the simulator executable (linked with -rdynamic)
        t = job["timing"]
        lib.ff_configure(
            job["capacity"],
            job["page_bits"],
            job["beat_bytes"],
            job["instr_bytes"],
            t["rd_latency"],
            t["wr_latency"],
            t["penalty"],
            t["channel_bytes"],
        )
        if job.get("dram") is not None:  # the independent memory (sim/dram_model.py)
            values = np.array(job["dram"], np.int64)
            if lib.ff_configure_dram(_ptr(values, _i64p), len(values)):
                raise HostError(f"the testbench expects another DramTiming: {job['dram']}")
        return cls(lib, job["page_bits"])

    def error(self) -> str:
        return self.lib.ff_error().decode()

    def write(self, addr: int, data: bytes) -> None:
        if self.lib.ff_mem_write(addr, data, len(data)):
            raise HostError(self.error())

    def read(self, addr: int, size: int) -> bytes:
        out = np.zeros(size, np.uint8)
        if self.lib.ff_mem_read(addr, _ptr(out), size):
            raise HostError(self.error())
        return out.tobytes()

    def pages(self) -> dict[int, np.ndarray]:
        """Every page written so far (``ExternalMemory._pages`` of the same page size)."""
        n = self.lib.ff_pages(None, 0)
        index = np.zeros(n, np.uint64)
        self.lib.ff_pages(_ptr(index, ctypes.POINTER(ctypes.c_uint64)), n)
        out = {}
        for page in index.tolist():
            data = np.zeros(1 << self.page_bits, np.uint8)
            self.lib.ff_page_read(page, _ptr(data))
            out[page] = data
        return out

    def request_load(self, code: bytes) -> None:
        self.lib.ff_request_load(code, len(code))

    def request_run(self, max_cycles: int, run_d: int) -> None:
        self.lib.ff_request_run(max_cycles, run_d)

    def run_result(self) -> dict:
        out = np.zeros(4, np.int64)
        self.lib.ff_run_result(_ptr(out, _i64p))
        cycles, timeout, illegal, token_error = (int(v) for v in out)
        return {
            "cycles": cycles,
            "timeout": bool(timeout),
            "illegal": illegal,
            "token_error": token_error,
        }

    def request_dump(self, windows: list[tuple[int, int, int]]) -> None:
        flat = np.array([v for w in windows for v in w], np.int64)
        self.lib.ff_request_dump(_ptr(flat, _i64p), len(windows))

    def dumped(self) -> bytes:
        out = np.zeros(self.lib.ff_dump_size(), np.uint8)
        self.lib.ff_dump_copy(_ptr(out))
        return out.tobytes()


async def operate(dut) -> None:
    """Start the operation described to the host and wait until the wrapper is done."""
    dut.req.value = 1 - int(dut.req.value)
    await ValueChange(dut.ack)


async def run_section(dut, host: Host, code: bytes, max_cycles: int, run_d: int = 0) -> dict:
    """Load and run one section with the length register at ``run_d``; the record
    includes the wall time of the run alone (from ``start`` to its end, code loading
    excluded)."""
    host.request_load(code)
    await operate(dut)
    host.request_run(max_cycles, run_d)
    t = time.perf_counter()
    await operate(dut)
    wall = time.perf_counter() - t
    return {**host.run_result(), "wall_s": wall, "fault": host.error() or None}


async def dump_buffers(dut, host: Host, windows) -> dict:
    """Bytes ``lo..hi`` of each ``(buf, lo, hi)`` window, read through the debug port."""
    host.request_dump([(int(b), lo, hi) for b, lo, hi in windows])
    await operate(dut)
    data, out, pos = host.dumped(), {}, 0
    for buf, lo, hi in windows:
        out[(buf, lo)] = data[pos : pos + hi - lo]
        pos += hi - lo
    return out


@cocotb.test()
async def replay(dut):
    """Replay the pickled steps (see flightforge.sim.rtl_harness.run_steps)."""
    with open(cocotb.plusargs["steps"], "rb") as f:
        job = pickle.load(f)
    host = Host.attach(job)
    Clock(dut.clk, PERIOD_NS, unit="ns").start()
    dut.req.value = 0
    dut.rst.value = 1
    await ClockCycles(dut.clk, RESET_CYCLES)
    dut.rst.value = 0
    await ClockCycles(dut.clk, 1)
    results = []
    try:
        for step in job["steps"]:
            kind = step[0]
            if kind == "write":
                host.write(step[1], step[2])
                results.append(None)
            elif kind == "run":
                rec = await run_section(dut, host, step[2], job["max_cycles"], *step[3:4])
                rec["section"] = step[1]
                results.append(rec)
                if rec["timeout"] or rec["illegal"] or rec["fault"]:
                    break
            elif kind == "dump":
                results.append(
                    {
                        "buffers": await dump_buffers(dut, host, step[1]),
                        "ext": {(a, n): host.read(a, n) for a, n in step[2]},
                    }
                )
            elif kind == "memory":
                results.append(host.pages())
    except HostError as e:  # reported by the harness as a DeviceError
        results.append({"fault": str(e)})
    with open(cocotb.plusargs["results"], "wb") as f:
        pickle.dump(results, f)
