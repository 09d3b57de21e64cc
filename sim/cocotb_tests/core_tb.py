"""cocotb testbench of the FlightForge core: drivers, memory models and a step runner.

The golden model is not here: this module only replays a list of steps (host writes to
external memory, section runs, dumps of buffers and memory) that
:mod:`flightforge.sim.rtl_harness` pickled, and pickles back what the core did. The
harness compares those results with the functional simulator.

Memory models follow the bus protocol of :mod:`flightforge.hw.bus` and the timing of
sim/timing.py (latency once per pipelined transfer, one burst per cycle, the crossing
penalty); the harness derives their latencies from the config. While a channel is idle
its model sleeps on ``cmd_valid``, so the clock runs in the simulator, not in Python.
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


def _crossings(addr, nbytes, channel_bytes):
    """Channel boundaries the byte span ``[addr, addr + nbytes)`` runs over."""
    return (addr + nbytes - 1) // channel_bytes - addr // channel_bytes


async def serve_reads(dut, prefix, beat_bytes, source, timing):
    """A read channel with the cycle model's timing (sim/timing.py ``transfer``).

    Commands are always accepted; the first beat of a command is presented
    ``timing["rd_latency"]`` cycles after the cycle in which it was accepted, at the
    earliest, and after the previous command's beats; beats follow one per cycle while
    the core takes them. A command whose span runs over a channel boundary waits
    ``penalty`` cycles per boundary (the request is split and re-issued).
    """
    from collections import deque

    clk = dut.clk
    cmd_valid, cmd_ready = _port(dut, prefix, "cmd_valid"), _port(dut, prefix, "cmd_ready")
    cmd_addr, cmd_beats = _port(dut, prefix, "cmd_addr"), _port(dut, prefix, "cmd_beats")
    data, data_valid = _port(dut, prefix, "data"), _port(dut, prefix, "data_valid")
    data_ready = _port(dut, prefix, "data_ready")
    lat, pen, chb = timing["rd_latency"], timing["penalty"], timing["channel_bytes"]
    cmd_ready.value = 1
    data_valid.value = 0
    pending = deque()  # [first cycle, payload, beats]
    cur = None  # [next beat index, payload, beats]
    free_at = 0  # first cycle the data bus is free for the next command's beats
    while True:
        if not pending and cur is None:
            await _wait_high(clk, cmd_valid)
        else:
            await ReadOnly()
        now = get_sim_time("ns") // PERIOD_NS
        if cur is not None and int(data_ready.value):
            cur[0] += 1
            if cur[0] == cur[2]:
                cur = None
                free_at = now + 1
        if int(cmd_valid.value):
            addr, beats = int(cmd_addr.value), int(cmd_beats.value)
            payload = bytes(source().read(addr, beats * beat_bytes))
            pending.append([now + lat, payload, beats, _crossings(addr, beats * beat_bytes, chb)])
        await RisingEdge(clk)
        now += 1
        if cur is None and pending and pending[0][0] <= now:
            first, payload, beats, cross = pending[0]
            start = max(first, free_at) + pen * cross
            if start <= now:
                pending.popleft()
                cur = [0, payload, beats]
        if cur is not None:
            i = cur[0]
            data.value = int.from_bytes(cur[1][i * beat_bytes:(i + 1) * beat_bytes], "little")
            data_valid.value = 1
        else:
            data_valid.value = 0


async def serve_writes(dut, prefix, beat_bytes, mem, timing):
    """A write channel: commands and beats always taken; each command's response pulses
    ``timing["wr_latency"]`` cycles after its last beat (plus the crossing penalty)."""
    from collections import deque

    clk = dut.clk
    cmd_valid, cmd_ready = _port(dut, prefix, "cmd_valid"), _port(dut, prefix, "cmd_ready")
    cmd_addr, cmd_beats = _port(dut, prefix, "cmd_addr"), _port(dut, prefix, "cmd_beats")
    data, data_valid = _port(dut, prefix, "data"), _port(dut, prefix, "data_valid")
    data_ready, strb = _port(dut, prefix, "data_ready"), _port(dut, prefix, "strb")
    resp_valid = _port(dut, prefix, "resp_valid")
    lat, pen, chb = timing["wr_latency"], timing["penalty"], timing["channel_bytes"]
    cmd_ready.value = 1
    data_ready.value = 1
    resp_valid.value = 0
    cmds = deque()  # [addr, beats, beats received, crossings]
    resps = deque()  # cycles at which a response pulses
    pulsing = False
    while True:
        if not cmds and not resps and not pulsing:
            await _wait_high(clk, cmd_valid)
        else:
            await ReadOnly()
        now = get_sim_time("ns") // PERIOD_NS
        if int(cmd_valid.value):
            addr, beats = int(cmd_addr.value), int(cmd_beats.value)
            cmds.append([addr, beats, 0, _crossings(addr, beats * beat_bytes, chb)])
        if int(data_valid.value):
            if not cmds:
                raise RuntimeError(f"{prefix}: a write beat without a command")
            c = cmds[0]
            word = int(data.value).to_bytes(beat_bytes, "little")
            mask = int(strb.value)
            base = c[0] + c[2] * beat_bytes
            for b in range(beat_bytes):
                if mask >> b & 1:
                    mem.write(base + b, word[b:b + 1], "ST beat")
            c[2] += 1
            if c[2] == c[1]:
                cmds.popleft()
                resps.append(now + lat + pen * c[3])
        await RisingEdge(clk)
        now += 1
        pulsing = bool(resps) and resps[0] == now
        if pulsing:
            resps.popleft()
        resp_valid.value = int(pulsing)


async def load_code(dut, code):
    """Write a section's code into the instruction buffer (one instruction per cycle)."""
    clk = dut.clk
    n = len(code) // isa.INSTR_BYTES
    for i in range(n):
        dut.imem_we.value = 1
        dut.imem_addr.value = i
        dut.imem_wdata.value = int.from_bytes(code[i * isa.INSTR_BYTES:(i + 1) * isa.INSTR_BYTES],
                                              "little")
        await RisingEdge(clk)
    dut.imem_we.value = 0


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
    await load_code(dut, code)
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


async def _trace(dut, cycles):
    """Debug aid: print the external-memory handshakes of the first ``cycles`` cycles."""
    names = [f"{p}__{n}" for p in ("mem_rd", "mem_wr") for n in
             ("cmd_valid", "cmd_ready", "data_valid", "data_ready")] + ["mem_wr__resp_valid",
                                                                         "halted", "start"]
    for _ in range(cycles):
        await ReadOnly()
        now = get_sim_time("ns") // PERIOD_NS
        vals = {n: int(getattr(dut, n).value) for n in names}
        print(now, " ".join(n.split("__")[-1] if "__" not in n else n for n, v in vals.items() if v))
        await RisingEdge(dut.clk)


@cocotb.test()
async def replay(dut):
    """Replay the pickled steps (see flightforge.sim.rtl_harness.run_steps)."""
    with open(cocotb.plusargs["steps"], "rb") as f:
        job = pickle.load(f)
    arch_beat = job["beat_bytes"]
    mem = ExternalMemory(job["capacity"])
    Clock(dut.clk, PERIOD_NS, unit="ns").start()
    for name in ("start", "dbg_en", "dbg_we", "imem_we"):
        getattr(dut, name).value = 0
    dut.rst.value = 1
    for _ in range(3):
        await RisingEdge(dut.clk)
    dut.rst.value = 0
    cocotb.start_soon(serve_reads(dut, "mem_rd", arch_beat, lambda: mem, job["timing"]))
    cocotb.start_soon(serve_writes(dut, "mem_wr", arch_beat, mem, job["timing"]))
    if job.get("trace"):
        cocotb.start_soon(_trace(dut, job["trace"]))
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
