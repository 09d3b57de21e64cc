"""Power model: static + per-resource dynamic power scaled by the units' activity.

    P = P_static + P_logic + P_memory
    P_static = static_w_per_lut * device LUTs                       (leakage grows with the die)
    P_logic  = scale * f_MHz / 100 * sum_r  e_r * count_r * activity_r
    P_memory = pj_per_bit[kind] * 8 * external bytes per second

``e_r`` is the dynamic power of one resource of kind ``r`` toggling at 100 MHz with full
activity (relative weights in the style of AMD's power estimator; only their ratios
matter, because ``scale`` is fitted). Activities come from the cycle model's busy
fractions of one decode step: MAC DSPs, LUTs and FFs follow the MPE; SFU resources the
SFU; buffer memories the busiest of LD and MPE; control (controller, LD/ST units) is
always on. ``scale`` is calibrated so that LLaMA2-7B decode on the U280 mapping under
FlightLLM's artifact assumptions draws FlightLLM's reported ~45 W
(``benchmarks/calibrate_resources.py --power``); with one calibration point the model's
error elsewhere is unknown (docs/dse.md).
"""

from __future__ import annotations

from dataclasses import dataclass

from flightforge.arch import ArchConfig

from .resources import calibration, core_resources, sfu_copies


@dataclass(frozen=True)
class Power:
    static_w: float
    logic_w: float
    memory_w: float

    @property
    def total_w(self) -> float:
        return self.static_w + self.logic_w + self.memory_w


def logic_activity_w(
    arch: ArchConfig, busy: dict[str, float], cores: int | None = None, coef: dict | None = None
) -> float:
    """Unscaled logic power at 100 MHz: sum of e_r * count_r * activity (watts)."""
    cal = calibration()
    c = coef or cal["coefficients"]
    e = cal["power"]["energy_w_at_100mhz"]
    cores = cores or arch.cores
    res = core_resources(arch, c, cores)
    lanes = sfu_copies(arch.sfu.lanes)
    mpe, sfu = busy.get("MPE", 0.0), busy.get("SFU", 0.0)
    mem_act = max(busy.get("LD", 0.0), mpe)
    mac_dsp = arch.mpe.macs / 2
    mac_lut = arch.mpe.macs * (c["lut_per_mac"] + c["lut_per_mac_per_window"] * arch.sparse_m)
    mac_ff = arch.mpe.macs * (c["ff_per_mac"] + c["ff_per_mac_per_window"] * arch.sparse_m)
    sfu_dsp, sfu_lut, sfu_ff = (lanes * c[f"{k}_sfu_lane"] for k in ("dsp", "lut", "ff"))
    ctl_dsp, ctl_lut, ctl_ff = (
        res.dsp - mac_dsp - sfu_dsp,
        res.lut - mac_lut - sfu_lut,
        res.ff - mac_ff - sfu_ff,
    )
    w = (
        mpe * (e["dsp"] * mac_dsp + e["lut"] * mac_lut + e["ff"] * mac_ff)
        + sfu * (e["dsp"] * sfu_dsp + e["lut"] * sfu_lut + e["ff"] * sfu_ff)
        + (e["dsp"] * ctl_dsp + e["lut"] * ctl_lut + e["ff"] * ctl_ff)
        + mem_act * (e["bram"] * res.bram + e["uram"] * res.uram)
    )
    return w * cores


def power(
    arch: ArchConfig, busy: dict[str, float], bytes_per_s: float, cores: int | None = None
) -> Power:
    """Power of ``arch`` running with unit busy fractions ``busy`` (0..1 each) and
    ``bytes_per_s`` of external-memory traffic."""
    p = calibration()["power"]
    dev_lut = arch.device.lut if arch.device is not None else 0
    static = p["static_w_per_lut"] * dev_lut
    logic = p["scale"] * arch.clock_mhz / 100 * logic_activity_w(arch, busy, cores)
    memory = p["pj_per_bit"][arch.hbm.kind] * 1e-12 * 8 * bytes_per_s
    return Power(static, logic, memory)
