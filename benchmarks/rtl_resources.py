"""Resource estimate of each shipped config's RTL core: Yosys, hierarchically, beside the
analytical resource model.

Yosys 0.23 ``synth_xilinx -family xcup`` (UltraScale+) does not flatten across the
boundaries chosen here: every distinct block is synthesised once (flattened inside),
with the blocks it repeats left as black boxes, and a core's total is the sum over
instances:

- ``Controller`` (instruction buffer, decoder, token counters), ``LoadUnit``,
  ``StoreUnit``: one each;
- ``MatrixEngine`` without its chains (operand ports, staging, reduction, epilogue), plus
  ``chains`` x ``DspChain(groups_per_chain, sparse_m)``;
- ``SpecialFunctionUnit`` without its pipelines and lanes (instruction issue, the lanes'
  operand multiplexers), each of its four pipelines (``ElementStream``, ``RopeStream``,
  ``SoftmaxStream``, ``NormStream``: addressing, row reductions, dividers), plus
  ``lanes`` x ``SfuLane`` (the shared per-lane arithmetic, ``hw/sfu/lane.py``);
- the buffers' port networks: every user has its own port at any byte address
  (``hw.buffers.BufferPort``: a rotate network in front of and behind the lanes), one
  row per distinct (buffer, width) times its number of ports.

Not synthesised (stated in every table): the buffers' RAMs, counted with the resource
model's banking rule (checked against Yosys on single buffers by
``calibrate_resources.py``): all ports on one RAM is a multi-ported RAM that Yosys cannot
map to block RAM, and that an FPGA build would replicate or multi-pump. Nor is the
core's top-level glue (dynamic-field adders, the debug read mux).

Every block is converted inside a wrapper (:class:`PortBoxes`) that drives each of its
input ports from, and feeds each output port into, a black-box cell: Amaranth 0.5 numbers
the bits of a design's top-level inputs in 16 bits (``_nir.Net``), so a block with more
than 65 534 input bits cannot be the top of a conversion (kv260's MPE has 116 154, u280's
1 151 898, mostly its ports' ``rdata``); Yosys optimises through neither kind of port.

Every Yosys run has a 10 GB address-space limit (``ulimit -v``): a block that needs
more fails alone and is reported as out of memory, instead of taking the shared machine
down.

    python benchmarks/rtl_resources.py [--targets tiny kv260 u280 vhk158] [--out FILE.json]

Prints one table per config and ends with one JSON line; ``--out`` keeps every run.
"""

from __future__ import annotations

import argparse
import hashlib
import json
import re
import resource
import shutil
import subprocess
import tempfile
import time
from collections import Counter
from pathlib import Path

from amaranth import Elaboratable, Module, Value
from amaranth.back import rtlil
from amaranth.hdl import Instance
from amaranth.lib.wiring import In

from flightforge import isa
from flightforge.mappings import load_target
from flightforge.resources import KINDS, buffer_memories, calibration, core_resources, sfu_copies

#: Address-space limit of every Yosys run (KiB, as ``ulimit -v``): ~10 GB of the 24 GB
#: shared machine.
YOSYS_MEMORY_KB = 10_000_000
#: Wall-clock limit of one Yosys run (s).
YOSYS_TIMEOUT_S = 3600
TARGETS = ("tiny", "kv260", "u280", "vhk158")


def _limit_memory() -> None:
    resource.setrlimit(resource.RLIMIT_AS, (YOSYS_MEMORY_KB * 1024, YOSYS_MEMORY_KB * 1024))


def yosys_binary() -> str:
    yosys = shutil.which("yosys")
    if yosys is None:
        raise SystemExit("yosys is not on PATH (apt-get install yosys)")
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


def core_blocks(arch) -> list[tuple[str, object, str | None, int]]:
    """(block, component, black-boxed submodules, instances per core) of one core."""
    from flightforge.hw.controller import Controller
    from flightforge.hw.dsp_chain import DspChain
    from flightforge.hw.memory_units import LoadUnit, StoreUnit
    from flightforge.hw.mpe import MatrixEngine
    from flightforge.hw.sfu.lane import SfuLane
    from flightforge.hw.sfu.unit import SpecialFunctionUnit

    g, w = arch.mpe.groups_per_chain, arch.sparse_m
    mpe = MatrixEngine(arch)
    sfu = SpecialFunctionUnit(arch)
    streams = "|".join(sfu.streams)  # the unit's submodule names of its pipelines
    return [
        ("Controller", Controller(arch), None, 1),
        ("LoadUnit", LoadUnit(arch), None, 1),
        ("StoreUnit", StoreUnit(arch), None, 1),
        ("MatrixEngine w/o chains, feeds, row windows, epilogues", mpe, MatrixEngine.REPEATED, 1),
        *((label, c, None, count) for label, c, count in mpe.parts()),
        (f"DspChain({g}, {w})", DspChain(g, w), None, arch.mpe.chains),
        ("SpecialFunctionUnit w/o pipelines and lanes", sfu, rf"lane\d+|{streams}", 1),
        *((f"{type(s).__name__} ({name} pipeline)", s, None, 1) for name, s in sfu.streams.items()),
        ("SfuLane", SfuLane(), None, arch.sfu.lanes),
    ]


def buffer_ports(arch) -> dict[str, list[int]]:
    """Port widths (bytes) of each buffer of the core, as ``hw.core.Core`` builds them
    (debug port, LD/ST, MPE, SFU)."""
    from flightforge.hw.core import Core
    from flightforge.hw.memory_units import LoadUnit, StoreUnit
    from flightforge.hw.mpe import MatrixEngine
    from flightforge.hw.sfu.unit import SpecialFunctionUnit

    del Core  # the order below is Core.elaborate's
    units = [LoadUnit(arch), StoreUnit(arch), MatrixEngine(arch), SpecialFunctionUnit(arch)]
    for u in [*units, *units[3].streams.values()]:
        u._MustUse__silence = True  # only their port widths are looked at
    out = {}
    for b in isa.Buf:
        users = [u for u in units if hasattr(u, f"buf_{b.name.lower()}")]
        widths = [1] + [u.buffer_width(b) for u in users]
        widths += [x for u in units if hasattr(u, "port_widths") for x in u.port_widths(b)]
        out[b.name] = widths
    return out


def model_blocks(arch) -> dict[str, dict[str, float]]:
    """The resource model's figure for the same blocks (flightforge/resources.py)."""
    c = calibration()["coefficients"]
    macs_chain = 2 * arch.mpe.groups_per_chain
    chain = {
        "lut": macs_chain * (c["lut_per_mac"] + c["lut_per_mac_per_window"] * arch.sparse_m),
        "ff": macs_chain * (c["ff_per_mac"] + c["ff_per_mac_per_window"] * arch.sparse_m),
        "dsp": macs_chain / 2,
    }
    sfu = {k: sfu_copies(arch.sfu.lanes) * c[f"{k}_sfu_lane"] for k in ("lut", "ff", "dsp")}
    out = {
        "Controller": {k: c[f"{k}_controller"] for k in ("lut", "ff", "dsp")},
        "LoadUnit": {k: c[f"{k}_load_unit"] for k in ("lut", "ff", "dsp")},
        "StoreUnit": {k: c[f"{k}_store_unit"] for k in ("lut", "ff", "dsp")},
        "MPE (epilogue + chains)": {
            k: c[f"{k}_mpe_epilogue"] + arch.mpe.chains * chain[k] for k in ("lut", "ff", "dsp")
        },
        "SFU": sfu,
    }
    return out


def port_blocks(arch) -> list[tuple[str, object, int]]:
    """(block, network, ports) for every distinct port of every buffer of the core:
    :class:`hw.buffers.BufferPort` as ``Buffer`` builds it, and how many ports have it."""
    from flightforge.hw.buffers import Buffer

    out = []
    for b, widths in buffer_ports(arch).items():
        cfg = arch.buffers.of(isa.Buf[b])
        lanes = cfg.banks * cfg.width
        for w, n in sorted(Counter(widths).items()):
            buf = Buffer(cfg.size, [w], lanes)
            buf._MustUse__silence = True  # only asked for its port network
            out.append((f"BufferPort {b} {w} B x {lanes} lanes", buf.port_network(0), n))
    return out


def run_target(
    target: str,
    yosys: str,
    timeout: int = YOSYS_TIMEOUT_S,
    skip: tuple[str, ...] = (),
    cache: Path | None = None,
) -> dict:
    arch = load_target(target)
    rows = []
    for block, comp, box, count in core_blocks(arch):
        name = re.sub(r"\W+", "_", block.split()[0].lower())
        if re.split(r"[\s(]", block)[0] in skip:
            comp._MustUse__silence = True  # built with the others, deliberately not used
            r = {"ok": False, "error": "not run (--skip)", "seconds": 0}
        else:
            r = synth(comp, name, yosys, blackbox=box, flatten=True, timeout=timeout)
        rows.append({"block": block, "count": count, **r})
        if cache:
            save_cache(cache)
        print(
            json.dumps(
                {
                    "target": target,
                    "block": block,
                    "count": count,
                    **{k: v for k, v in r.items() if k != "cells"},
                }
            ),
            flush=True,
        )
    total = {k: 0.0 for k in KINDS}
    ok = all(r["ok"] for r in rows)
    for r in rows:
        if r["ok"]:
            for k in KINDS:
                total[k] += r["count"] * r[k]
    ports, ports_total = [], {k: 0.0 for k in KINDS}
    for block, net, count in [] if "BufferPort" in skip else port_blocks(arch):
        r = synth(net, "bufferport", yosys, flatten=True, timeout=timeout)
        ports.append({"block": block, "count": count, **r})
        if cache:
            save_cache(cache)
        print(
            json.dumps(
                {
                    "target": target,
                    "block": block,
                    "count": count,
                    **{k: v for k, v in r.items() if k != "cells"},
                }
            ),
            flush=True,
        )
        for k in KINDS:
            ports_total[k] += count * r.get(k, 0)
    bram, uram = buffer_memories(arch, arch.cores)
    model = core_resources(arch, cores=arch.cores)
    return {
        "target": target,
        "rows": rows,
        "complete": ok,
        "synth_total": total,
        "port_rows": ports,
        "ports_total": ports_total,
        "ports_complete": bool(ports) and all(r["ok"] for r in ports),
        "buffer_bram": bram,
        "buffer_uram": uram,
        "buffer_ports": buffer_ports(arch),
        "model": model.as_dict(),
        "model_blocks": model_blocks(arch),
        "device": arch.device.model_dump() if arch.device is not None else None,
        "cores": arch.cores,
    }


def _fmt(v) -> str:
    return f"{v:,.0f}".replace(",", " ") if isinstance(v, (int, float)) else str(v)


def _row(r: dict) -> str:
    if not r["ok"]:
        return f"| {r['block']} | {r['count']} | {r['error']} | | | | {r['seconds']} |"
    return (
        f"| {r['block']} | {r['count']} | "
        + " | ".join(
            f"{_fmt(r[k])}"
            + (f" (x{r['count']} = {_fmt(r[k] * r['count'])})" if r["count"] > 1 else "")
            for k in ("lut", "ff", "dsp", "bram")
        )
        + f" | {r['seconds']} |"
    )


def _total(label: str, t: dict, bram: str | None = None) -> str:
    return (
        f"| **{label}** | | {_fmt(t['lut'])} | {_fmt(t['ff'])} | {_fmt(t['dsp'])} | "
        f"{bram if bram is not None else _fmt(t['bram'])} | |"
    )


def print_table(res: dict) -> None:
    t = res["target"]
    print(f"\n## {t} (per core; {res['cores']} core(s))\n")
    print("| block | instances | LUT | FF | DSP | BRAM36 | Yosys s |")
    print("|---|---|---|---|---|---|---|")
    for r in res["rows"]:
        print(_row(r))
    s = res["synth_total"]
    tag = "" if res["complete"] else " (blocks that failed are missing)"
    print(_total(f"logic blocks{tag}", s))
    port_rows = res.get("port_rows", [])
    for r in port_rows:
        print(_row(r))
    pt = res.get("ports_total", {k: 0.0 for k in KINDS})
    ptag = (
        ""
        if res.get("ports_complete")
        else " (not run)"
        if not port_rows
        else " (ports that failed are missing)"
    )
    print(_total(f"buffer port networks{ptag}", pt))
    print(
        f"| buffer RAMs (model's banking rule, not synthesised) | | | | | "
        f"{_fmt(res['buffer_bram'])} + {_fmt(res['buffer_uram'])} URAM | |"
    )
    core = {k: s[k] + pt[k] for k in KINDS}
    core["bram"] += res["buffer_bram"]
    print(
        _total(
            f"core: logic + port networks + RAMs{tag}{ptag}",
            core,
            f"{_fmt(core['bram'])} + {_fmt(res['buffer_uram'])} URAM",
        )
    )
    m = res["model"]
    print(
        _total(
            "resource model (flightforge/resources.py)",
            m,
            f"{_fmt(m['bram'])} + {_fmt(m['uram'])} URAM",
        )
    )
    dev = res["device"]
    if dev:
        print(
            f"| device {dev['part']} | | {_fmt(dev['lut'])} | {_fmt(dev['ff'])} | {_fmt(dev['dsp'])} "
            f"| {_fmt(dev['bram'])} + {_fmt(dev['uram'])} URAM | |"
        )
        c = res["cores"]
        use = {k: (core[k] * c / dev[k] if dev[k] else 0) for k in ("lut", "ff", "dsp", "bram")}
        print(
            f"| core x {c} / device | | "
            + " | ".join(f"{100 * use[k]:.0f}%" for k in ("lut", "ff", "dsp", "bram"))
            + " | |"
        )


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--targets", nargs="+", default=list(TARGETS))
    ap.add_argument("--out", type=Path, help="write every run (cells included) here")
    ap.add_argument("--timeout", type=int, default=YOSYS_TIMEOUT_S, help="per Yosys run (s)")
    ap.add_argument(
        "--skip",
        nargs="*",
        default=[],
        help="blocks not to run, by the first word of their name (e.g. MatrixEngine DspChain)",
    )
    ap.add_argument("--tables", type=Path, nargs="+", help="only print the tables of --out files")
    ap.add_argument(
        "--cache",
        type=Path,
        help="reuse and keep every successful block here (JSON, "
        "keyed by the block's RTLIL hash: a changed block is synthesised again)",
    )
    args = ap.parse_args()
    if args.tables:
        for f in args.tables:
            for res in json.loads(f.read_text()):
                print_table(res)
        return
    yosys = yosys_binary()
    if args.cache:
        load_cache(args.cache)
    results = []
    for t in args.targets:
        res = run_target(t, yosys, args.timeout, tuple(args.skip), args.cache)
        print_table(res)
        results.append(res)
    if args.out:
        args.out.write_text(json.dumps(results, indent=1) + "\n")
    summary = {
        r["target"]: {
            "complete": r["complete"],
            "yosys": r["synth_total"],
            "ports_complete": r["ports_complete"],
            "port_networks": r["ports_total"],
            "buffer_bram": r["buffer_bram"],
            "buffer_uram": r["buffer_uram"],
            "model": r["model"],
        }
        for r in results
    }
    print(
        json.dumps(
            {
                "benchmark": "rtl_resources",
                "family": "xcup",
                "memory_limit_kb": YOSYS_MEMORY_KB,
                "targets": summary,
            }
        )
    )


if __name__ == "__main__":
    main()
