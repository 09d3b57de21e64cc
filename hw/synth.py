"""The project's one Yosys runner: synthesis of an Amaranth component for UltraScale+
(``synth_xilinx -family xcup``) with its cell counts, resource classes, path depth and
memory ports, under a memory and time limit, cached by the hash of its RTLIL.

Used by ``benchmarks/rtl_resources.py`` (the whole core of each mapping, block by block),
``benchmarks/rtl_speed.py``, ``benchmarks/calibrate_resources.py`` and the tests; nothing
else runs Yosys, so every figure in docs/rtl.md comes from the same script.

Every block is converted inside a wrapper (:class:`PortBoxes`) that drives each of its
input ports from, and feeds each output port into, a black-box cell: Amaranth 0.5 numbers
the bits of a design's top-level inputs in 16 bits (``_nir.Net``), so a block with more
than 65 534 input bits cannot be the top of a conversion (kv260's MPE has 116 154, u280's
1 151 898, mostly its ports' ``rdata``); Yosys optimises through neither kind of port.

Every Yosys run has an address-space limit (``ulimit -v``, :data:`YOSYS_MEMORY_KB`): a
block that needs more fails alone and is reported as out of memory, instead of taking the
shared machine down. Needs Debian's ``yosys`` (0.23; ``apt-get install yosys``).
"""

from __future__ import annotations

import hashlib
import json
import re
import resource
import shutil
import subprocess
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path

from amaranth import Elaboratable, Module, Value
from amaranth.back import rtlil
from amaranth.hdl import Instance
from amaranth.lib.wiring import In

#: Address-space limit of every Yosys run (KiB, as ``ulimit -v``): 8 GB of the 24 GB
#: shared machine.
YOSYS_MEMORY_KB = 8_000_000
#: Wall-clock limit of one Yosys run (s).
YOSYS_TIMEOUT_S = 3600
#: Part of every cache key: raised when a result gains fields (2: ``depth``), so that a
#: cache written before is not taken for a complete result.
_VERSION = 2


def _limit_memory() -> None:
    resource.setrlimit(resource.RLIMIT_AS, (YOSYS_MEMORY_KB * 1024, YOSYS_MEMORY_KB * 1024))


def run_yosys(yosys: str, script: str, timeout: int) -> subprocess.CompletedProcess:
    """Run a Yosys script quietly under :data:`YOSYS_MEMORY_KB` (raises
    ``subprocess.TimeoutExpired`` after ``timeout`` s)."""
    return subprocess.run(
        [yosys, "-q", "-p", script],
        capture_output=True,
        text=True,
        timeout=timeout,
        preexec_fn=_limit_memory,
    )


def yosys_binary() -> str:
    """Path of the ``yosys`` executable; raises if there is none."""
    yosys = shutil.which("yosys")
    if yosys is None:
        raise FileNotFoundError("yosys is not on PATH (apt-get install yosys)")
    return yosys


class PortBoxes(Elaboratable):
    """``component`` with every input port driven by a black-box cell ``bb_src_<width>``
    and every output port read by one ``bb_snk_<width>``: the design's only top-level
    ports are the clock and reset (see the module docstring); ``widths`` lists the boxes'
    widths (after elaboration) for :func:`box_stubs`."""

    def __init__(self, component) -> None:
        self.component = component
        self.widths: set[int] = set()

    def elaborate(self, platform) -> Module:
        m = Module()
        m.submodules.dut = c = self.component
        for i, (_, member, value) in enumerate(c.signature.flatten(c)):
            value = Value.cast(value)  # (a data.View's len() counts its elements)
            w = len(value)
            self.widths.add(w)
            if member.flow == In:
                m.submodules[f"src{i}"] = Instance(f"bb_src_{w}", o_o=value)
            else:
                m.submodules[f"snk{i}"] = Instance(f"bb_snk_{w}", i_i=value)
        return m


def convert_boxed(component, name: str) -> tuple[str, set[int]]:
    """RTLIL of ``component`` inside :class:`PortBoxes` (its module is ``<name>.dut``) and
    the boxes' widths."""
    top = PortBoxes(component)
    return rtlil.convert(top, name=name, ports=[]), top.widths


def box_stubs(widths) -> str:
    """Verilog black-box declarations of :class:`PortBoxes`' cells."""
    return "".join(
        f"(* blackbox, keep *) module bb_src_{w}(output [{w - 1}:0] o); endmodule\n"
        f"(* blackbox, keep *) module bb_snk_{w}(input [{w - 1}:0] i); endmodule\n"
        for w in sorted(widths)
    )


def synth(
    component,
    name: str,
    yosys: str,
    flags: str = "",
    blackbox: str | None = None,
    flatten: bool = False,
    timeout: int = YOSYS_TIMEOUT_S,
) -> dict:
    """Cells of ``component`` after ``synth_xilinx -family xcup``: hierarchical (each
    submodule synthesised on its own, counted once per instance) or, with ``flatten``,
    as one module but for the black boxes.

    ``blackbox``: a regular expression on submodule names (the path below ``name``, as
    ``lane3``): those submodules are left as black boxes, not counted;
    ``blackboxes`` in the result says how many there were. A failed or out-of-memory run
    returns ``ok: False`` and the reason instead of raising.
    """
    t = time.perf_counter()
    try:
        text, widths = convert_boxed(component, name)
    except (AssertionError, MemoryError) as e:  # e.g. more than 65 534 bits in one cell
        return {
            "ok": False,
            "seconds": 0,
            "blackboxes": 0,
            "error": f"Amaranth cannot emit it: {type(e).__name__} {e}".strip(),
        }
    convert_s = round(time.perf_counter() - t, 1)
    key = f"{hashlib.sha256(text.encode()).hexdigest()}|{flags}|{blackbox}|{flatten}|{_VERSION}"
    if key in _DONE:  # the same block in another config or a --cache'd run: synthesised once
        return dict(_DONE[key], cached=True)
    _DONE[key] = r = dict(
        _synth_il(text, box_stubs(widths), name, yosys, flags, blackbox, flatten, timeout),
        convert_seconds=convert_s,
    )
    return r


#: Results by (RTLIL hash, flags, black boxes, flatten, :data:`_VERSION`): a block is
#: synthesised once per process, and once ever with ``--cache`` (successful runs only).
_DONE: dict[str, dict] = {}


def load_cache(path: Path) -> None:
    if path.exists():
        _DONE.update(json.loads(path.read_text()))


def save_cache(path: Path) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps({k: v for k, v in _DONE.items() if v["ok"]}) + "\n")


def _synth_il(
    text: str,
    stubs: str,
    name: str,
    yosys: str,
    flags: str,
    blackbox: str | None,
    flatten: bool,
    timeout: int,
) -> dict:
    with tempfile.TemporaryDirectory() as tmp:
        il = Path(tmp) / f"{name}.il"
        il.write_text(text)
        del text
        stub = Path(tmp) / "boxes.v"
        stub.write_text(stubs)
        boxes = []
        if blackbox:
            mods = re.findall(rf"^module \\{re.escape(name)}\.dut\.(\S+)$", il.read_text(), re.M)
            boxes = [mm for mm in mods if re.fullmatch(blackbox, mm)]
        stat = Path(tmp) / "stat.json"
        script = (
            f"read_verilog -lib {stub}; read_rtlil {il}; "
            + "".join(f"blackbox {name}.dut.{b}; " for b in boxes)
            + f"synth_xilinx -family xcup -top {name} {'-flatten ' if flatten else ''}{flags}; "
            f"tee -q -o {stat} stat -json -top {name}"
        )
        netlist = Path(tmp) / "netlist.json"
        if flatten:  # one module: its paths can be traced (path_depth)
            script += f"; opt_clean -purge; setattr -unset src; write_json {netlist}"
        t = time.perf_counter()
        try:
            proc = run_yosys(yosys, script, timeout)
        except subprocess.TimeoutExpired:
            return {
                "ok": False,
                "error": f"timeout after {timeout} s",
                "seconds": round(time.perf_counter() - t, 1),
                "blackboxes": len(boxes),
            }
        seconds = round(time.perf_counter() - t, 1)
        if proc.returncode:
            tail = (proc.stderr or proc.stdout)[-600:]
            oom = (
                proc.returncode in (-6, -9, 134, 137)
                or "bad_alloc" in tail
                or "memory" in tail.lower()
            )
            why = (
                f"out of memory at {YOSYS_MEMORY_KB // 1_000_000} GB"
                if oom
                else f"yosys exit {proc.returncode}: {tail.strip()[-300:]}"
            )
            return {"ok": False, "error": why, "seconds": seconds, "blackboxes": len(boxes)}
        cells = design_cells(json.loads(stat.read_text()), name)
        depth = path_depth(json.loads(netlist.read_text()), name) if flatten else None
    return {
        "ok": True,
        "cells": cells,
        "seconds": seconds,
        "blackboxes": len(boxes),
        **classes(cells),
        "depth": depth,
    }


def design_cells(stat: dict, top: str) -> dict[str, int]:
    """Xilinx cells of the whole design below ``top`` (every instance counted), from
    ``stat -json -top``: the hierarchy totals when there are submodules, else the top
    module's own cells. (Summing the per-module sections and the totals, as an earlier
    parser of the text output did, counts a hierarchical design twice.)"""
    if "design" in stat:
        cells = stat["design"]["num_cells_by_type"]
    else:
        (mod,) = [v for k, v in stat["modules"].items() if k.lstrip("\\") == top]
        cells = mod["num_cells_by_type"]
    return {k: v for k, v in cells.items() if re.fullmatch(r"[A-Z][A-Z0-9_]+", k)}


def classes(cells: dict[str, int]) -> dict[str, float]:
    """LUT, FF, DSP, BRAM (36 Kb equivalents), URAM from Yosys' Xilinx cell names."""
    lut = sum(v for k, v in cells.items() if re.fullmatch(r"LUT[1-6]", k))
    lut += sum(v for k, v in cells.items() if re.fullmatch(r"RAM(32|64)M(16)?", k)) * 4
    lut += sum(v for k, v in cells.items() if re.fullmatch(r"RAM(32|64|128|256)X1[SD]", k)) * 2
    ff = sum(v for k, v in cells.items() if k in ("FDRE", "FDSE", "FDCE", "FDPE"))
    dsp = sum(v for k, v in cells.items() if k.startswith("DSP48"))
    bram = cells.get("RAMB36E2", 0) + cells.get("RAMB18E2", 0) / 2
    return {"lut": lut, "ff": ff, "dsp": dsp, "bram": bram, "uram": cells.get("URAM288", 0)}


# --- Path depth -------------------------------------------------------------------------

#: Cell types whose outputs start a path and whose inputs end one (registers, block RAMs,
#: FIFOs, shift registers, I/O and clock buffers, constants).
_SEQUENTIAL = re.compile(r"FD[A-Z]*|LD[A-Z]*|RAMB\w+|URAM\w+|FIFO\w+|SRL\w+|[IO]BUF\w*|BUFG\w*")
_CONSTANT = ("VCC", "GND")
#: Distributed RAM: the read address is combinational to the data output (a LUT level);
#: the write side is clocked.
_LUTRAM = re.compile(r"RAM\d+X\d+[SD](_1)?|RAM\d+M\d*")
_LUTRAM_ADDR = re.compile(r"ADDR[A-H]|A\d*|DPRA\d*")
#: DSP48E2 inputs by the register that can capture them (UG579): the multiplier's
#: operands and the ALU's operands.
_DSP_MULT_IN = {"A": "AREG", "ACIN": "AREG", "B": "BREG", "BCIN": "BREG", "D": "DREG"}
_DSP_MULT_IN |= {"INMODE": "INMODEREG"}
_DSP_ALU_IN = {
    "C": "CREG",
    "OPMODE": "OPMODEREG",
    "ALUMODE": "ALUMODEREG",
    "CARRYIN": "CARRYINREG",
    "CARRYINSEL": "CARRYINSELREG",
    "PCIN": None,
    "CARRYCASCIN": None,
    "MULTSIGNIN": None,
}

#: DSP48E2 maximum clock (MHz) by register configuration and speed grade, from AMD's data
#: sheets, table "DSP48 Slice Switching Characteristics" (the same figures in DS925
#: v1.30, Zynq UltraScale+ MPSoC, and DS923 v1.20, Virtex UltraScale+): columns are
#: speed grade at VCCINT.
DSP48E2_FMAX_MHZ: dict[str, dict[str, float]] = {
    # all of A/B, M and P registers used
    "all_registers": {"-3@0.90V": 891, "-2@0.85V": 775, "-1@0.85V": 645, "-2@0.72V": 644},
    # two-register multiply without MREG
    "mult_no_mreg": {"-3@0.90V": 635, "-2@0.85V": 544, "-1@0.85V": 456, "-2@0.72V": 440},
    # without the pipeline registers (MREG, ADREG), pre-adder in use
    "no_pipeline_regs": {"-3@0.90V": 483, "-2@0.85V": 410, "-1@0.85V": 338, "-2@0.72V": 323},
}


def speed_column(part: str) -> str:
    """The data-sheet column of a part name: its speed grade and VCCINT ("-2LV": 0.72 V,
    as the Kria K26; "-2L-e", "-2-e", "-2-i": 0.85 V; "-3": 0.90 V)."""
    m = re.search(r"-([123])(L?V|L|E)?-[a-z]\b|-([123])(LV|L|E)?$", part)
    if not m:
        raise ValueError(f"device part {part!r}: no speed grade (as -2, -2L, -2LV) found")
    grade = m.group(1) or m.group(3)
    suffix = (m.group(2) or m.group(4) or "").upper()
    if grade == "3":
        return "-3@0.90V"
    return f"-{grade}@0.72V" if suffix == "LV" else f"-{grade}@0.85V"


def _param(cell: dict, name: str, default: int = 0) -> int | str:
    v = cell.get("parameters", {}).get(name)
    if v is None:
        return default
    if isinstance(v, int):
        return v
    return int(v, 2) if re.fullmatch(r"[01xz]+", v) else v.strip()


def dsp_config(cell: dict) -> str:
    """Register configuration of one DSP48E2 (a key of :data:`DSP48E2_FMAX_MHZ`), or
    ``"unregistered"``: an operand or the result without its register, so the DSP is one
    level of a fabric path and no data-sheet maximum applies."""
    mult = _param(cell, "USE_MULT", "MULTIPLY") != "NONE"
    regs_in = _param(cell, "AREG", 1) and _param(cell, "BREG", 1)
    if not (_param(cell, "PREG", 1) and regs_in):
        return "unregistered"
    if not mult or _param(cell, "MREG", 1):
        return "all_registers"
    if "AD" in (_param(cell, "AMULTSEL", "A"), _param(cell, "BMULTSEL", "B")):
        return "no_pipeline_regs" if not _param(cell, "ADREG", 1) else "mult_no_mreg"
    return "mult_no_mreg"


def _arcs(cell: dict) -> tuple[str, list[tuple[list, list]], dict[str, int]]:
    """(kind, combinational arcs as (input bits, output bits), end weight per input port)
    of one cell. ``kind`` is the level the cell adds to a path through it ("lut",
    "carry", "muxf", "lutram", "dsp") or "boundary"; an input port in ``ends`` ends a
    path there, after that many DSP levels (an operand captured behind the DSP's
    multiplier or ALU)."""
    t, conn = cell["type"], cell["connections"]
    dirs = cell.get("port_directions", {})
    ins = [p for p, d in dirs.items() if d == "input"]
    outs = [p for p, d in dirs.items() if d == "output"]
    if re.fullmatch(r"LUT[1-6](_2)?|INV", t):
        return (
            "lut",
            [
                (
                    [b for p in ins for b in conn.get(p, [])],
                    [b for p in outs for b in conn.get(p, [])],
                )
            ],
            {},
        )
    if re.fullmatch(r"MUXF[5-9]", t):
        return "muxf", [([b for p in ins for b in conn.get(p, [])], conn.get("O", []))], {}
    if t in ("CARRY4", "CARRY8"):
        n = 4 if t == "CARRY4" else 8
        bit = [(conn.get(p) or []) + [None] * n for p in ("S", "DI", "O", "CO")]
        carry_in = [b for p in ("CI", "CI_TOP", "CYINIT") for b in conn.get(p, [])]
        arcs = [
            (carry_in + bit[0][: i + 1] + bit[1][: i + 1], [bit[2][i], bit[3][i]]) for i in range(n)
        ]
        return "carry", arcs, {}
    if _LUTRAM.fullmatch(t):
        addr = [b for p in ins if _LUTRAM_ADDR.fullmatch(p) for b in conn.get(p, [])]
        return "lutram", [(addr, [b for p in outs for b in conn.get(p, [])])], {p: 0 for p in ins}
    if t == "DSP48E2":
        return _dsp_arcs(cell, ins, outs)
    return "boundary", [], {p: 0 for p in ins}


def _dsp_arcs(cell: dict, ins: list[str], outs: list[str]):
    conn = cell["connections"]
    mult = _param(cell, "USE_MULT", "MULTIPLY") != "NONE"
    mreg, preg = _param(cell, "MREG", 1) and mult, _param(cell, "PREG", 1)
    comb, ends = [], {}
    for p in ins:
        reg = _DSP_MULT_IN.get(p, _DSP_ALU_IN.get(p, "none"))
        if reg == "none":  # clocks, enables, resets
            ends[p] = 0
            continue
        if reg is not None and _param(cell, reg, 1):
            ends[p] = 0  # captured at the DSP's input register
        elif p in _DSP_MULT_IN and mreg or preg:
            ends[p] = 1  # through the multiplier or ALU into the M or P register
        else:
            comb.append(p)  # through to P: the DSP is a level of the path
    p_outs = [p for p in outs if p not in ("ACOUT", "BCOUT")]
    arcs = (
        []
        if preg
        else [
            (
                [b for p in comb for b in conn.get(p, [])],
                [b for p in p_outs for b in conn.get(p, [])],
            )
        ]
    )
    return "dsp", arcs, ends


LEVEL_KINDS = ("lut", "carry", "muxf", "lutram", "dsp")


def path_depth(netlist: dict, top: str) -> dict:
    """Longest register-to-register path of a flattened, mapped design (Yosys
    ``write_json`` after ``synth_xilinx -flatten``) in logic levels as Vivado counts them:
    each LUT, carry cell (Yosys 0.23 maps carries to CARRY4, 4 bits each), wide mux
    (MUXF7/8), distributed-RAM read and unregistered DSP48E2 on the path is one level.

    Paths start at flip-flops, block RAMs, registered DSP outputs, constants and the
    black boxes of :class:`PortBoxes` (the block's ports: a path from or to a port counts
    as if the port were registered) and end at their inputs. Returns the level count, the
    levels by kind, the path's first and last net and, per DSP48E2, the register
    configurations (:func:`dsp_config`)."""
    mod = netlist["modules"][top]
    names = {}
    for name, net in mod.get("netnames", {}).items():
        for b in net["bits"]:
            if isinstance(b, int) and (b not in names or name[0] != "$"):
                names[b] = name
    driver: dict[int, tuple[str, int, str]] = {}  # bit -> (cell, arc index, kind)
    arcs_of, ends = {}, []
    configs: dict[str, int] = {}
    for cname, cell in mod["cells"].items():
        kind, arcs, cell_ends = _arcs(cell)
        arcs_of[cname] = arcs
        if cell["type"] == "DSP48E2":
            c = dsp_config(cell)
            configs[c] = configs.get(c, 0) + 1
        for i, (_, outs) in enumerate(arcs):
            for b in outs:
                if isinstance(b, int):
                    driver[b] = (cname, i, kind)
        for p, extra in cell_ends.items():
            ends += [(b, extra) for b in cell["connections"].get(p, []) if isinstance(b, int)]
    for port in mod.get("ports", {}).values():
        if port["direction"] == "output":
            ends += [(b, 0) for b in port["bits"] if isinstance(b, int)]
    arrival: dict[int, tuple[int, ...]] = {}
    via: dict[int, int | None] = {}

    zero = (0,) * (1 + len(LEVEL_KINDS))
    visiting: set[int] = set()  # (a combinational loop would be cut where it closes)

    def resolve(bit: int) -> tuple[int, ...]:
        stack = [bit]
        while stack:
            b = stack[-1]
            if b in arrival:
                stack.pop()
                continue
            d = driver.get(b)
            if d is None:
                arrival[b], via[b] = zero, None
                stack.pop()
                continue
            cname, i, kind = d
            inputs = [x for x in arcs_of[cname][i][0] if isinstance(x, int)]
            todo = [x for x in inputs if x not in arrival and x not in visiting]
            if todo:
                visiting.add(b)
                stack += todo
                continue
            stack.pop()
            visiting.discard(b)
            inputs = [x for x in inputs if x in arrival]
            best = max(inputs, key=lambda x: arrival[x], default=None)
            a = list(arrival[best]) if best is not None else list(zero)
            a[0] += 1
            a[1 + LEVEL_KINDS.index(kind)] += 1
            arrival[b], via[b] = tuple(a), best
        return arrival[bit]

    worst, worst_bit = zero, None
    for b, extra in ends:
        a = list(resolve(b))
        if extra:
            a[0] += extra
            a[1 + LEVEL_KINDS.index("dsp")] += extra
        if tuple(a) > worst:
            worst, worst_bit = tuple(a), b
    start = worst_bit
    while start is not None and via.get(start) is not None:
        start = via[start]
    return {
        "levels": worst[0],
        **dict(zip(LEVEL_KINDS, worst[1:], strict=True)),
        "from": names.get(start, str(start)) if start is not None else None,
        "to": names.get(worst_bit, str(worst_bit)) if worst_bit is not None else None,
        "dsp48e2": configs,
    }


# --- Memory ports -------------------------------------------------------------------------


@dataclass(frozen=True)
class MemoryPorts:
    """One memory of a design as Yosys collects it (``$mem_v2`` after ``proc;
    memory_collect``): where it is, its shape and its ports. ``ports`` counts the distinct
    physical ports: a read and a write port on the same address bits are one read-write
    port, as a block RAM port does both (UG573); ``async_reads`` are read ports without a
    clock, which no block RAM or UltraRAM has."""

    module: str
    memid: str
    words: int
    width: int
    read_ports: int
    write_ports: int
    ports: int
    async_reads: int


def _int_param(v) -> int:
    return v if isinstance(v, int) else int(v, 2)


def _memories(netlist: dict) -> list[MemoryPorts]:
    out = []
    for mname, mod in netlist["modules"].items():
        for cell in mod.get("cells", {}).values():
            if cell["type"] != "$mem_v2":
                continue
            prm, conn = cell["parameters"], cell["connections"]
            abits = _int_param(prm["ABITS"])
            rd, wr = _int_param(prm["RD_PORTS"]), _int_param(prm["WR_PORTS"])
            addrs = {
                tuple(conn[sig][i * abits : (i + 1) * abits])
                for sig, n in (("RD_ADDR", rd), ("WR_ADDR", wr))
                for i in range(n)
            }
            clocked = str(prm.get("RD_CLK_ENABLE", "")).rjust(rd, "0")[-rd:] if rd else ""
            out.append(
                MemoryPorts(
                    module=mname.lstrip("\\"),
                    memid=str(prm["MEMID"]).lstrip("\\"),
                    words=_int_param(prm["SIZE"]),
                    width=_int_param(prm["WIDTH"]),
                    read_ports=rd,
                    write_ports=wr,
                    ports=len(addrs),
                    async_reads=clocked.count("0"),
                )
            )
    return out


def memory_ports(
    component, name: str, yosys: str, timeout: int = YOSYS_TIMEOUT_S
) -> list[MemoryPorts]:
    """Every memory of ``component`` (read by Yosys from its RTLIL, not synthesised:
    ``proc; memory_collect``), with its port counts. Raises ``RuntimeError`` naming the
    design if Yosys fails."""
    text, widths = convert_boxed(component, name)
    with tempfile.TemporaryDirectory() as tmp:
        il, stub, out = Path(tmp) / f"{name}.il", Path(tmp) / "boxes.v", Path(tmp) / "m.json"
        il.write_text(text)
        del text
        stub.write_text(box_stubs(widths))
        script = (
            f"read_verilog -lib {stub}; read_rtlil {il}; hierarchy -top {name}; proc; "
            "memory_collect; delete t:* t:$mem_v2 %d; setattr -set keep 1 t:$mem_v2; "
            f"opt_clean; write_json {out}"
        )
        proc = run_yosys(yosys, script, timeout)
        if proc.returncode:
            tail = (proc.stderr or proc.stdout).strip()[-300:]
            raise RuntimeError(f"{name}: yosys exit {proc.returncode}: {tail}")
        return _memories(json.loads(out.read_text()))
