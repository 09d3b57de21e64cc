"""Analytical FPGA resource model of a FlightForge design, calibrated against Yosys.

Per core (``cores`` copies), from the architecture config:

- **DSP48E2**: one per two INT8 MACs (FlightLLM packs two MACs that share a weight into
  one DSP48: ``chains * groups_per_chain``), plus the MPE epilogue and the SFU lanes.
- **LUT / FF**: per MAC ``a + b * sparse_m`` (the sparse MUX in front of each MAC picks
  1 of ``sparse_m`` activations: its LUTs grow with the window), fitted on Yosys runs of
  ``hw.mpe.DspChain``; per-core constants for the controller, the LD and ST units
  and the MPE epilogue; the SFU as the earlier single-lane RTL SFU (one element per
  cycle, with the row units: divider, square root, exp table) plus, per extra lane,
  ``SFU_LANE_SHARE`` of it (an assumption). The current lane-parallel RTL SFU and tiled
  MPE synthesise far larger (docs/rtl.md, "Area", ``benchmarks/rtl_resources.py``):
  the SFU now shares one datapath per lane (about 2 300 LUT and 4 DSP a lane), but the
  MPE's operand ports and the buffers' per-user ports are RTL area still to be brought
  down (and kv260/u280's MPE cannot be emitted yet), so these coefficients are kept.
- **BRAM / URAM**: each buffer bank (``size / banks`` bytes, ``8 * width`` bits wide) is
  mapped to the cheapest tiling of BRAM36 aspect ratios (32K x 1 .. 512 x 72) or of
  URAM288 (4K x 72, no other aspect); buffers that would fill at least half of their
  URAMs go to URAM, largest first, while the device's URAM budget lasts; the rest go
  to BRAM.

Coefficients come from ``dse/resource_calibration.json``, written by
``benchmarks/calibrate_resources.py`` (Yosys ``synth_xilinx -family xcup``); the model's
error on each calibration run is listed in docs/dse.md.
"""

from __future__ import annotations

import json
import math
from dataclasses import asdict, dataclass
from functools import cache
from pathlib import Path

from flightforge import isa
from flightforge.arch import ArchConfig, BufferConfig

CALIBRATION = Path(__file__).with_name("resource_calibration.json")
KINDS = ("dsp", "lut", "ff", "bram", "uram")
BRAM_SHAPES = ((32768, 1), (16384, 2), (8192, 4), (4096, 9), (2048, 18), (1024, 36), (512, 72))
URAM_SHAPE = (4096, 72)
SFU_LANE_SHARE = 0.2  #: assumed cost of one more SFU lane, as a share of the whole RTL SFU


@cache
def calibration(path: str | None = None) -> dict:
    """The committed calibration data (coefficients, synthesis runs, power constants)."""
    return json.loads(Path(path or CALIBRATION).read_text())


@dataclass(frozen=True)
class Resources:
    dsp: float
    lut: float
    ff: float
    bram: float
    uram: float

    def as_dict(self) -> dict[str, float]:
        return asdict(self)

    def __add__(self, other: Resources) -> Resources:
        return Resources(*(getattr(self, k) + getattr(other, k) for k in KINDS))

    def scaled(self, f: float) -> Resources:
        return Resources(*(getattr(self, k) * f for k in KINDS))


def _tiles(width_bits: int, depth: int, shape: tuple[int, int]) -> int:
    d, w = shape
    return math.ceil(width_bits / w) * math.ceil(depth / d)


def bank_memories(buf: BufferConfig, has_uram: bool) -> tuple[int, int]:
    """(BRAM36, URAM288) for one buffer on its own: URAM if it fills at least half of
    the URAMs it needs."""
    depth = math.ceil(buf.size / (buf.banks * buf.width))
    width = 8 * buf.width
    bram = min(_tiles(width, depth, s) for s in BRAM_SHAPES)
    uram = _tiles(width, depth, URAM_SHAPE)
    if has_uram and depth * width >= 0.5 * uram * URAM_SHAPE[0] * URAM_SHAPE[1]:
        return 0, uram * buf.banks
    return bram * buf.banks, 0


def buffer_memories(arch: ArchConfig, cores: int) -> tuple[int, int]:
    """(BRAM36, URAM288) of every core's buffers, URAM given to the largest deep buffers
    first while ``cores`` copies fit the device's URAM."""
    budget = arch.device.uram if arch.device is not None else math.inf
    bram = uram = 0
    for b in sorted(isa.Buf, key=lambda b: -arch.buffers.of(b).size):
        buf = arch.buffers.of(b)
        br, ur = bank_memories(buf, budget > 0)
        if ur and (uram + ur) * cores > budget:
            br, ur = bank_memories(buf, False)
        bram += br
        uram += ur
    return bram, uram


def core_resources(arch: ArchConfig, coef: dict | None = None, cores: int = 1) -> Resources:
    """Resources of one core (of ``cores`` sharing the device's URAM)."""
    c = coef or calibration()["coefficients"]
    macs = arch.mpe.macs
    window = arch.sparse_m
    lanes = arch.sfu.lanes
    fixed = ("controller", "load_unit", "store_unit")
    sfu = sfu_copies(lanes)
    dsp = (
        macs / 2
        + c["dsp_mpe_epilogue"]
        + sfu * c["dsp_sfu_lane"]
        + sum(c[f"dsp_{k}"] for k in fixed)
    )
    lut = (
        macs * (c["lut_per_mac"] + c["lut_per_mac_per_window"] * window)
        + c["lut_mpe_epilogue"]
        + sfu * c["lut_sfu_lane"]
        + sum(c[f"lut_{k}"] for k in fixed)
    )
    ff = (
        macs * (c["ff_per_mac"] + c["ff_per_mac_per_window"] * window)
        + c["ff_mpe_epilogue"]
        + sfu * c["ff_sfu_lane"]
        + sum(c[f"ff_{k}"] for k in fixed)
    )
    bram, uram = buffer_memories(arch, cores)
    return Resources(dsp, lut, ff, bram, uram)


def sfu_copies(lanes: int) -> float:
    """The SFU's cost in RTL SFUs (single-lane) for ``lanes`` lanes."""
    return 1 + (lanes - 1) * SFU_LANE_SHARE


def design_resources(arch: ArchConfig, cores: int | None = None) -> Resources:
    """Resources of the whole design: ``cores`` (default ``arch.cores``) cores."""
    cores = cores or arch.cores
    return core_resources(arch, cores=cores).scaled(cores)


def utilisation(res: Resources, arch: ArchConfig) -> dict[str, float]:
    """Share of the device budget each resource uses (empty without ``arch.device``)."""
    dev = arch.device
    if dev is None:
        return {}
    out = {}
    for k in KINDS:
        have = getattr(dev, k)
        need = getattr(res, k)
        out[k] = need / have if have else (0.0 if need == 0 else math.inf)
    return out


def over_budget(res: Resources, arch: ArchConfig) -> list[str]:
    """One reason per resource over the device budget (empty if it fits)."""
    dev = arch.device
    if dev is None:
        return []
    return [
        f"{k.upper()} {getattr(res, k):.0f} > {getattr(dev, k)} of {dev.part}"
        for k in KINDS
        if getattr(res, k) > getattr(dev, k)
    ]
