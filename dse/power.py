"""Power model: static + per-resource dynamic power x the units' activity + memory traffic.

    P = P_static + P_logic + P_memory
    P_static = STATIC_W_PER_LUT * device LUTs                       (leakage grows with the die)
    P_logic  = f_MHz / 100 * sum_r  RESOURCE_W_AT_100MHZ[r] * count_r * activity_r
    P_memory = PJ_PER_BIT[kind] * 8 * external bytes per second

Nothing here is fitted to a published power figure: the FlightLLM 45 W (U280) and the
TeLLMe "under 7 W" (KV260) results are checks the model is held to
(``benchmarks/dse_power_check.py``, docs/dse.md "Power model and its error"), not inputs.
Activities are the cycle model's per-unit busy fractions of a decode step: MAC DSPs, LUTs
and FFs follow the MPE, SFU resources the SFU, buffer memories the busier of LD and MPE,
control (controller, LD/ST units) is always on.

Every figure carries its source and an uncertainty factor range (:data:`BANDS`); every
power or energy the DSE prints comes with the band ``[lo, hi]`` that these ranges give
when all components sit at their low (or high) end together.
"""

from __future__ import annotations

from dataclasses import dataclass

from flightforge.arch import ArchConfig

from .resources import calibration, core_resources, sfu_copies

#: Dynamic power of one resource at 100 MHz and full activity (W). Estimates in the
#: style of AMD's UltraScale+ power estimator (XPE, UG440) at its default activity (logic
#: toggle rate 12.5 %, DSP inputs toggling as random data, ~38 %, times the clock-enable
#: rate); no per-resource table was found in AMD's public documents, so these are not
#: copied from one: the ``logic`` band (x0.5 .. x2) covers XPE's toggle-rate range (12.5 %
#: default to ~38 % random data) and the routing load, unknown before place and route.
RESOURCE_W_AT_100MHZ = {
    "dsp": 0.6e-3,
    "lut": 0.01e-3,
    "ff": 0.004e-3,
    "bram": 0.9e-3,
    "uram": 2.0e-3,
}
#: Static power per LUT of the device (W): 10 W for the XCU280's 1 303 680 LUTs, scaled by
#: the die. An assumption (no published static figure for the XCU280 or XCK26 was found;
#: XPE's figure depends on junction temperature and process corner): band x0.5 .. x1.5.
STATIC_W_PER_LUT = 10.0 / 1_303_680
#: HBM2 access energy (pJ per bit moved), the figure the Fine-Grained DRAM paper (O'Connor
#: et al., MICRO 2017) starts from for HBM2; AMD's WP485 states that the Virtex
#: UltraScale+ HBM interface takes "4 times lower power per bit than external memory", so
#: DDR4 is priced at four times HBM. Band x0.75 .. x1.3 (page-hit rate, XPE's HBM sheet).
HBM_PJ_PER_BIT = 3.9
PJ_PER_BIT = {"hbm": HBM_PJ_PER_BIT, "ddr": 4 * HBM_PJ_PER_BIT}
#: Uncertainty of each component as factors (low, high) on its central value.
BANDS = {"static": (0.5, 1.5), "logic": (0.5, 2.0), "memory": (0.75, 1.3)}


@dataclass(frozen=True)
class Power:
    """A power estimate by component (W), with its uncertainty band."""

    static_w: float
    logic_w: float
    memory_w: float

    @property
    def total_w(self) -> float:
        return self.static_w + self.logic_w + self.memory_w

    def _bound(self, end: int) -> float:
        parts = {"static": self.static_w, "logic": self.logic_w, "memory": self.memory_w}
        return sum(BANDS[k][end] * w for k, w in parts.items())

    @property
    def lo_w(self) -> float:
        """Every component at the low end of its band."""
        return self._bound(0)

    @property
    def hi_w(self) -> float:
        """Every component at the high end of its band."""
        return self._bound(1)


def logic_activity_w(
    arch: ArchConfig, busy: dict[str, float], cores: int | None = None, coef: dict | None = None
) -> float:
    """Logic power at 100 MHz: sum of e_r * count_r * activity over every core (W)."""
    c = coef or calibration()["coefficients"]
    e = RESOURCE_W_AT_100MHZ
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
    dev_lut = arch.device.lut if arch.device is not None else 0
    static = STATIC_W_PER_LUT * dev_lut
    logic = arch.clock_mhz / 100 * logic_activity_w(arch, busy, cores)
    memory = PJ_PER_BIT[arch.hbm.kind] * 1e-12 * 8 * bytes_per_s
    return Power(static, logic, memory)


def band_text(value: float, lo: float, hi: float, fmt: str = ".3g") -> str:
    """``value [lo-hi]``: how every power and energy figure is printed."""
    return f"{value:{fmt}} [{lo:{fmt}}-{hi:{fmt}}]"
