"""cocotb testbench of the FlightForge core: drivers, memory models and a step runner.

The golden model is not here: this module only replays a list of steps (host writes to
external memory, section runs, dumps of buffers and memory) that
:mod:`flightforge.sim.rtl_harness` pickled, and pickles back what the core did. The
harness compares those results with the functional simulator.

Memory models follow the bus protocol of :mod:`flightforge.hw.bus`. Each serves one
channel: while a channel is idle the model sleeps on the valid/ready signal it waits
for, so the clock runs in the simulator, not in Python.
"""

import pickle

import cocotb
import numpy as np
from cocotb.clock import Clock
from cocotb.triggers import First, ReadOnly, RisingEdge, Timer
from cocotb.utils import get_sim_time

from flightforge import isa
from flightforge.sim.functional import ExternalMemory

PERIOD_NS = 10


def _port(dut, prefix, name):
    return getattr(dut, f"{prefix}__{name}")


async def _wait_high(clk, sig):
    """Return in the ReadOnly phase of the first cycle in which ``sig`` is 1."""
    await ReadOnly()
    while not int(sig.value):
        await RisingEdge(sig)
        await ReadOnly()


async def serve_reads(dut, prefix, beat_bytes, source):
    """A read channel: ``source()`` gives the object with ``read(addr, size)``."""
    clk = dut.clk
    cmd_valid, cmd_ready = _port(dut, prefix, "cmd_valid"), _port(dut, prefix, "cmd_ready")
    cmd_addr, cmd_beats = _port(dut, prefix, "cmd_addr"), _port(dut, prefix, "cmd_beats")
    data, data_valid = _port(dut, prefix, "data"), _port(dut, prefix, "data_valid")
    data_ready = _port(dut, prefix, "data_ready")
    cmd_ready.value = 1
    data_valid.value = 0
    while True:
        await _wait_high(clk, cmd_valid)
        addr, beats = int(cmd_addr.value), int(cmd_beats.value)
        payload = source().read(addr, beats * beat_bytes)
        await RisingEdge(clk)  # the command handshake happened at this edge
        cmd_ready.value = 0
        for i in range(beats):
            data.value = int.from_bytes(bytes(payload[i * beat_bytes:(i + 1) * beat_bytes]), "little")
            data_valid.value = 1
            await _wait_high(clk, data_ready)
            await RisingEdge(clk)
        data_valid.value = 0
        cmd_ready.value = 1


async def serve_writes(dut, prefix, beat_bytes, mem):
    clk = dut.clk
    cmd_valid, cmd_ready = _port(dut, prefix, "cmd_valid"), _port(dut, prefix, "cmd_ready")
    cmd_addr, cmd_beats = _port(dut, prefix, "cmd_addr"), _port(dut, prefix, "cmd_beats")
    data, data_valid = _port(dut, prefix, "data"), _port(dut, prefix, "data_valid")
    data_ready, strb = _port(dut, prefix, "data_ready"), _port(dut, prefix, "strb")
    cmd_ready.value = 1
    data_ready.value = 0
    while True:
        await _wait_high(clk, cmd_valid)
        addr, beats = int(cmd_addr.value), int(cmd_beats.value)
        await RisingEdge(clk)
        cmd_ready.value = 0
        data_ready.value = 1
        for i in range(beats):
            await _wait_high(clk, data_valid)
            word = int(data.value).to_bytes(beat_bytes, "little")
            mask = int(strb.value)
            for b in range(beat_bytes):
                if mask >> b & 1:
                    mem.write(addr + i * beat_bytes + b, word[b:b + 1], "ST beat")
            await RisingEdge(clk)
        data_ready.value = 0
        cmd_ready.value = 1


class Code:
    """The instruction memory: the running section's code."""

    def __init__(self):
        self.code = b""

    def read(self, addr, size):
        out = self.code[addr:addr + size]
        return out + bytes(size - len(out))


async def dump_buffer(dut, buf, lo, hi):
    """Bytes ``lo..hi`` of one buffer, through the debug port (one byte per cycle)."""
    out = bytearray()
    clk = dut.clk
    for addr in range(lo, hi):
        await RisingEdge(clk)
        dut.dbg_en.value, dut.dbg_we.value = 1, 0
        dut.dbg_buf.value, dut.dbg_addr.value = int(buf), addr
        await RisingEdge(clk)  # the buffer reads the byte at this edge
        dut.dbg_en.value = 0
        await ReadOnly()
        out.append(int(dut.dbg_rdata.value))
    await RisingEdge(clk)
    return bytes(out)


async def run_section(dut, code, max_cycles):
    """Run one section; returns the result record."""
    clk = dut.clk
    CODE.code = code
    dut.start.value = 1
    await RisingEdge(clk)
    t0 = get_sim_time("ns")
    dut.start.value = 0
    edge = RisingEdge(dut.halted)
    fired = await First(edge, Timer(max_cycles * PERIOD_NS, "ns"))
    t1 = get_sim_time("ns")
    await ReadOnly()
    rec = {"timeout": fired is not edge, "cycles": None,
           "illegal": int(dut.illegal.value), "token_error": int(dut.token_error.value)}
    rec["cycles"] = int((t1 - t0) // PERIOD_NS)
    await RisingEdge(clk)
    return rec


CODE = Code()


@cocotb.test()
async def replay(dut):
    """Replay the pickled steps (see flightforge.sim.rtl_harness.run_steps)."""
    with open(cocotb.plusargs["steps"], "rb") as f:
        job = pickle.load(f)
    arch_beat = job["beat_bytes"]
    mem = ExternalMemory(job["capacity"])
    Clock(dut.clk, PERIOD_NS, unit="ns").start()
    for name in ("start", "dbg_en", "dbg_we"):
        getattr(dut, name).value = 0
    dut.rst.value = 1
    for _ in range(3):
        await RisingEdge(dut.clk)
    dut.rst.value = 0
    cocotb.start_soon(serve_reads(dut, "imem", isa.WORD_BITS // 8, lambda: CODE))
    cocotb.start_soon(serve_reads(dut, "mem_rd", arch_beat, lambda: mem))
    cocotb.start_soon(serve_writes(dut, "mem_wr", arch_beat, mem))
    await RisingEdge(dut.clk)
    results = []
    for step in job["steps"]:
        kind = step[0]
        if kind == "write":
            mem.write(step[1], step[2])
            results.append(None)
        elif kind == "run":
            rec = await run_section(dut, step[2], job["max_cycles"])
            rec["section"] = step[1]
            results.append(rec)
            if rec["timeout"] or rec["illegal"]:
                break
        elif kind == "dump":
            bufs = {}
            for buf, lo, hi in step[1]:
                bufs[(buf, lo)] = await dump_buffer(dut, buf, lo, hi)
            ext = {(a, n): mem.read(a, n).tobytes() for a, n in step[2]}
            results.append({"buffers": bufs, "ext": ext})
        elif kind == "memory":
            results.append({page: np.array(data) for page, data in mem._pages.items()})
    with open(cocotb.plusargs["results"], "wb") as f:
        pickle.dump(results, f)
