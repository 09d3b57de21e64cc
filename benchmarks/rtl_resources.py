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

Every block is converted and synthesised by the project's one Yosys runner,
:mod:`flightforge.hw.synth` (inside ``PortBoxes``, under its memory and time limits,
cached by RTLIL hash).

    python benchmarks/rtl_resources.py [--targets tiny kv260 u280 vhk158] [--out FILE.json]

Prints one table per config and ends with one JSON line; ``--out`` keeps every run.
"""

from __future__ import annotations

import argparse
import json
import re
from collections import Counter
from pathlib import Path

from flightforge import isa
from flightforge.dse.resources import (
    KINDS,
    buffer_memories,
    calibration,
    core_resources,
    sfu_copies,
)
from flightforge.hw.synth import (
    DSP48E2_FMAX_MHZ,
    YOSYS_MEMORY_KB,
    YOSYS_TIMEOUT_S,
    load_cache,
    save_cache,
    speed_column,
    synth,
    yosys_binary,
)
from flightforge.mappings import load_target

TARGETS = ("tiny", "kv260", "u280", "vhk158")
#: Default block cache (build/ is not versioned): reruns synthesise only changed blocks.
CACHE = Path(__file__).resolve().parents[1] / "build" / "rtl_resources_cache.json"


def core_blocks(arch) -> list[tuple[str, object, str | None, int]]:
    """(block, component, black-boxed submodules, instances per core) of one core."""
    from flightforge.hw.controller import Controller
    from flightforge.hw.memory_units import LoadUnit, StoreUnit
    from flightforge.hw.mpe import DspChain, MatrixEngine
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
        # the DSP48E2 primitives, as synthesis would take them (DspSlice's docstring)
        (f"DspChain({g}, {w})", DspChain(g, w, primitive=True), None, arch.mpe.chains),
        ("SpecialFunctionUnit w/o pipelines and lanes", sfu, rf"lane\d+|{streams}", 1),
        *((f"{type(s).__name__} ({name} pipeline)", s, None, 1) for name, s in sfu.streams.items()),
        ("SfuLane", SfuLane(), None, arch.sfu.lanes),
    ]


def buffer_ports(arch) -> dict[str, list[int]]:
    """Port widths (bytes) of each buffer of the core, as ``hw.core.Core`` builds them
    (LD shared with the debug port, ST, MPE, SFU)."""
    from flightforge.hw.core import buffer_port_widths
    from flightforge.hw.memory_units import LoadUnit, StoreUnit
    from flightforge.hw.mpe import MatrixEngine
    from flightforge.hw.sfu.unit import SpecialFunctionUnit

    units = [LoadUnit(arch), StoreUnit(arch), MatrixEngine(arch), SpecialFunctionUnit(arch)]
    for u in [*units, *units[3].streams.values()]:
        u._MustUse__silence = True  # only their port widths are looked at
    return {b.name: buffer_port_widths(arch, b, units) for b in isa.Buf}


def model_blocks(arch) -> dict[str, dict[str, float]]:
    """The resource model's figure for the same blocks (dse/resources.py)."""
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


def _selected(block: str, only: tuple[str, ...], skip: tuple[str, ...]) -> bool:
    """Whether ``block`` runs: its first word (``DspChain``, ``BufferPort``, ...) is in
    ``only`` (when given) and not in ``skip``."""
    word = re.split(r"[\s(]", block)[0]
    return (not only or word in only) and word not in skip


def _run_block(target, block, comp, count, name, yosys, timeout, box, run, cache) -> dict:
    if run:
        r = synth(comp, name, yosys, blackbox=box, flatten=True, timeout=timeout)
    else:
        comp._MustUse__silence = True  # built with the others, deliberately not used
        r = {"ok": False, "error": "not run (--only/--skip)", "seconds": 0}
    if cache:
        save_cache(cache)
    line = {"target": target, "block": block, "count": count}
    print(json.dumps(line | {k: v for k, v in r.items() if k != "cells"}), flush=True)
    return {"block": block, "count": count, **r}


def run_target(
    target: str,
    yosys: str,
    timeout: int = YOSYS_TIMEOUT_S,
    skip: tuple[str, ...] = (),
    cache: Path | None = None,
    only: tuple[str, ...] = (),
) -> dict:
    """Synthesise the selected blocks of ``target``'s core (each once, cached) and
    collect per-core totals, the banking rule's RAMs, the model and the device."""
    arch = load_target(target)
    rows = []
    for block, comp, box, count in core_blocks(arch):
        name = re.sub(r"\W+", "_", block.split()[0].lower())
        run = _selected(block, only, skip)
        rows.append(_run_block(target, block, comp, count, name, yosys, timeout, box, run, cache))
    total = {k: 0.0 for k in KINDS}
    ok = all(r["ok"] for r in rows)
    for r in rows:
        if r["ok"]:
            for k in KINDS:
                total[k] += r["count"] * r[k]
    ports, ports_total = [], {k: 0.0 for k in KINDS}
    for block, net, count in port_blocks(arch):
        run = _selected(block, only, skip)
        ports.append(
            _run_block(target, block, net, count, "bufferport", yosys, timeout, None, run, cache)
        )
        for k in KINDS:
            ports_total[k] += count * ports[-1].get(k, 0)
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
        "clock_mhz": arch.clock_mhz,
    }


#: What the UltraScale+ synthesis says about a Versal target (DSP58, no open flow).
VERSAL_PROXY = (
    "UltraScale+ proxy: Yosys 0.23 has no Versal family (no DSP58, LUT6CY, or Versal "
    "BRAM/URAM mapping, and no open place and route for Versal), so these are the "
    "figures of the same RTL mapped to UltraScale+ primitives (DSP48E2: 27x18 multiply, "
    "not DSP58's 27x24), set against the Versal part's resource counts"
)


def worst_depth(res: dict) -> dict | None:
    """The deepest register-to-register path over the target's synthesised blocks."""
    deep = [r for r in res["rows"] + res.get("port_rows", []) if r["ok"] and r.get("depth")]
    if not deep:
        return None
    r = max(deep, key=lambda r: r["depth"]["levels"])
    return {"block": r["block"], **{k: v for k, v in r["depth"].items() if k != "dsp48e2"}}


def dsp_clock(res: dict) -> dict:
    """The data-sheet clock limit of the registered DSP48E2s (DS925/DS923, the device's
    speed grade) and how many DSPs are unregistered (in fabric paths; no data-sheet
    figure)."""
    configs: dict[str, int] = {}
    for r in res["rows"] + res.get("port_rows", []):
        for c, n in ((r.get("depth") or {}).get("dsp48e2") or {}).items():
            configs[c] = configs.get(c, 0) + n * r["count"]
    dev = res["device"]
    out = {"dsp48e2_by_config": configs, "unregistered": configs.get("unregistered", 0)}
    regd = [c for c in configs if c in DSP48E2_FMAX_MHZ]
    if dev and regd:
        col = speed_column(dev["part"])
        c = min(regd, key=lambda c: DSP48E2_FMAX_MHZ[c][col])
        out |= {"fmax_mhz": DSP48E2_FMAX_MHZ[c][col], "config": c, "speed": col}
    return out


def core_total(res: dict) -> dict:
    """Per-core LUT/FF/DSP/BRAM36/URAM: logic blocks + port networks + the buffers' RAMs
    by the banking rule."""
    s, pt = res["synth_total"], res.get("ports_total", {k: 0.0 for k in KINDS})
    core = {k: s[k] + pt[k] for k in KINDS}
    core["bram"] += res["buffer_bram"]
    core["uram"] = core.get("uram", 0) + res["buffer_uram"]
    return core


def summary(res: dict) -> dict:
    """The target's JSON line: whole design (all cores), device utilisation, worst depth."""
    c, dev = res["cores"], res["device"]
    core = core_total(res)
    total = {k: round(core[k] * c, 1) for k in ("lut", "ff", "dsp", "bram", "uram")}
    names = {"lut": "lut", "ff": "ff", "dsp": "dsp", "bram": "bram36", "uram": "uram"}
    out = {
        "benchmark": "rtl_resources",
        "target": res["target"],
        "family": "xcup",
        "complete": res["complete"] and res["ports_complete"],
        "not_measured": [r["block"] for r in res["rows"] + res["port_rows"] if not r["ok"]],
        "cores": c,
        **{names[k]: v for k, v in total.items()},
        "device": dev["part"] if dev else None,
        "utilisation_pct": {
            names[k]: round(100 * total[k] / dev[k], 1) if dev[k] else None for k in total
        }
        if dev
        else None,
        "worst_depth": worst_depth(res),
        "dsp_clock": dsp_clock(res),
        "clock_mhz": res.get("clock_mhz"),
        "memory_limit_kb": YOSYS_MEMORY_KB,
    }
    if dev and dev["part"].startswith("xcv"):
        out["note"] = VERSAL_PROXY
    return out


def _fmt(v) -> str:
    return f"{v:,.0f}".replace(",", " ") if isinstance(v, (int, float)) else str(v)


def _depth(r: dict) -> str:
    """``levels (LUT/carry/mux/DSP)`` of a block's worst path, and its DSP48E2s'
    register configurations."""
    d = r.get("depth")
    if not d:
        return ""
    mux = d["muxf"] + d["lutram"]
    text = f"{d['levels']} ({d['lut']}/{d['carry']}/{mux}/{d['dsp']})"
    if d.get("dsp48e2"):
        text += " " + ", ".join(f"{n} {c}" for c, n in sorted(d["dsp48e2"].items()))
    return text


def _row(r: dict) -> str:
    if not r["ok"]:
        return f"| {r['block']} | {r['count']} | {r['error']} | | | | | {r['seconds']} |"
    return (
        f"| {r['block']} | {r['count']} | "
        + " | ".join(
            f"{_fmt(r[k])}"
            + (f" (x{r['count']} = {_fmt(r[k] * r['count'])})" if r["count"] > 1 else "")
            for k in ("lut", "ff", "dsp", "bram")
        )
        + f" | {_depth(r)} | {r['seconds']} |"
    )


def _total(label: str, t: dict, bram: str | None = None) -> str:
    return (
        f"| **{label}** | | {_fmt(t['lut'])} | {_fmt(t['ff'])} | {_fmt(t['dsp'])} | "
        f"{bram if bram is not None else _fmt(t['bram'])} | | |"
    )


def print_table(res: dict) -> None:
    t = res["target"]
    print(f"\n## {t} (per core; {res['cores']} core(s))\n")
    print(
        "| block | instances | LUT | FF | DSP | BRAM36 | "
        "path levels (LUT/carry/mux/DSP), DSP48E2 registers | Yosys s |"
    )
    print("|---|---|---|---|---|---|---|---|")
    for r in res["rows"]:
        print(_row(r))
    s = res["synth_total"]
    tag = "" if res["complete"] else " (blocks not run or failed are missing)"
    print(_total(f"logic blocks{tag}", s))
    port_rows = res.get("port_rows", [])
    for r in port_rows:
        print(_row(r))
    pt = res.get("ports_total", {k: 0.0 for k in KINDS})
    ptag = "" if res.get("ports_complete") else " (ports not run or failed are missing)"
    print(_total(f"buffer port networks{ptag}", pt))
    print(
        f"| buffer RAMs (model's banking rule, not synthesised) | | | | | "
        f"{_fmt(res['buffer_bram'])} + {_fmt(res['buffer_uram'])} URAM | | |"
    )
    core = core_total(res)
    print(
        _total(
            f"core: logic + port networks + RAMs{tag}{ptag}",
            core,
            f"{_fmt(core['bram'])} + {_fmt(core['uram'])} URAM",
        )
    )
    m = res["model"]
    print(
        _total(
            "resource model (dse/resources.py)",
            m,
            f"{_fmt(m['bram'])} + {_fmt(m['uram'])} URAM",
        )
    )
    dev = res["device"]
    if dev:
        print(
            f"| device {dev['part']} | | {_fmt(dev['lut'])} | {_fmt(dev['ff'])} | "
            f"{_fmt(dev['dsp'])} | {_fmt(dev['bram'])} + {_fmt(dev['uram'])} URAM | | |"
        )
        use = summary(res)["utilisation_pct"]
        part = "" if res["complete"] and res["ports_complete"] else " (blocks missing)"
        print(
            f"| core x {res['cores']} / device{part} | | "
            + " | ".join(f"{use[k]:.0f}%" for k in ("lut", "ff", "dsp", "bram36"))
            + f" + {use['uram'] or 0:.0f}% URAM | | |"
        )


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--targets", nargs="+", default=list(TARGETS))
    ap.add_argument("--out", type=Path, help="write every run (cells included) here")
    ap.add_argument("--timeout", type=int, default=YOSYS_TIMEOUT_S, help="per Yosys run (s)")
    ap.add_argument(
        "--only",
        nargs="*",
        default=[],
        help="run only these blocks, by the first word of their name (e.g. DspChain "
        "BufferPort Controller); the others are reported as not run",
    )
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
        default=CACHE,
        help="reuse and keep every successful block here (JSON, keyed by the block's "
        "RTLIL hash: a changed block is synthesised again; default %(default)s)",
    )
    args = ap.parse_args()
    if args.tables:
        for f in args.tables:
            for res in json.loads(f.read_text()):
                print_table(res)
                print(json.dumps(summary(res)))
        return
    yosys = yosys_binary()
    load_cache(args.cache)
    results = []
    for t in args.targets:
        res = run_target(t, yosys, args.timeout, tuple(args.skip), args.cache, tuple(args.only))
        print_table(res)
        results.append(res)
    if args.out:
        args.out.write_text(json.dumps(results, indent=1) + "\n")
    for res in results:
        print(json.dumps(summary(res)))


if __name__ == "__main__":
    main()
