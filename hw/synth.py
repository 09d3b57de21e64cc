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


def _limit_memory() -> None:
    resource.setrlimit(resource.RLIMIT_AS, (YOSYS_MEMORY_KB * 1024, YOSYS_MEMORY_KB * 1024))


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
    key = f"{hashlib.sha256(text.encode()).hexdigest()}|{flags}|{blackbox}|{flatten}"
    if key in _DONE:  # the same block in another config or a --cache'd run: synthesised once
        return dict(_DONE[key], cached=True)
    _DONE[key] = r = dict(
        _synth_il(text, box_stubs(widths), name, yosys, flags, blackbox, flatten, timeout),
        convert_seconds=convert_s,
    )
    return r


#: Results by (RTLIL hash, flags, black boxes, flatten): a block is synthesised once per
#: process, and once ever with ``--cache`` (successful runs only).
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
        t = time.perf_counter()
        try:
            proc = subprocess.run(
                [yosys, "-q", "-p", script],
                capture_output=True,
                text=True,
                timeout=timeout,
                preexec_fn=_limit_memory,
            )
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
    return {
        "ok": True,
        "cells": cells,
        "seconds": seconds,
        "blackboxes": len(boxes),
        **classes(cells),
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
