"""An external-memory timing model written from the DRAM's published behaviour, not from
the cycle model (sim/timing.py): the independent memory of the RTL testbenches.

The default testbench memory (:func:`flightforge.sim.bus_model.memory_timing`) takes its
numbers from ``Timing``, so "RTL cycles == model cycles" checks the core against the
model but says nothing about the model's memory terms. This model has its own: per
channel (an HBM2 pseudo-channel, a DDR4 channel) it keeps

- **banks with open rows** (open-page policy): a hit costs ``tCL`` (reads) or ``tCWL``
  (writes) from its column command; a miss on a closed bank adds ``tRCD``; a miss on a
  bank open at another row adds ``tRP`` after ``tRAS`` (and ``tWR`` after a write) has
  passed;
- **the data bus**: every access moves a whole DRAM burst (``bus_bits * BL / 8`` bytes,
  the device's access granularity) at the device's data rate, one burst after the other;
- **read/write turnaround**: a read's column command waits ``tWTR`` after the last write
  data, write data wait two device clocks after the last read data;
- **refresh**: every ``tREFI`` the channel closes its rows and is busy for ``tRFC``;
- **the address map** of the mapping (``hbm.channel_bytes`` or ``hbm.interleave_bytes``),
  then within a channel: column, bank, row (page-interleaved banks).

Accesses are served in arrival order (first come, first served; no reordering), each
access as soon as its bank, the bus and the turnaround allow. The one platform figure a
DRAM data sheet cannot give, the controller, PHY and interconnect latency, is taken from
the mapping: ``hbm.latency_ns`` is read as the idle first-beat latency of a read to a
closed bank, so the fixed part is that minus ``tRCD + tCL`` and the beat's time on the
DRAM bus. The parameters
and their sources are in :data:`PARTS` and docs/cycle_model.md ("Independent memory").

Time runs in integer picoseconds (so the C++ port in
``sim/verilator/flightforge_tb_host.cpp`` computes the same numbers); a core cycle ``c``
starts at ``c * 10**9 // clock_khz`` ps, and a datum ready at ``t`` ps is usable from the
first cycle that starts at or after ``t``.
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass, field

from flightforge.arch import ArchConfig


@dataclass(frozen=True)
class DramParams:
    """One memory kind's published timing, per channel (times in device clocks ``tCK``)."""

    part: str  #: what the numbers describe, with the source in docs/cycle_model.md
    bus_bits: int  #: data bus width of one channel
    data_rate_mts: int  #: transfers per second per pin, in millions (2 per tCK)
    burst_length: int  #: BL: transfers per column command
    banks: int  #: banks per channel
    page_bytes: int  #: bytes of one open row across the channel
    rcd: int  #: tRCD: ACT to column command
    rp: int  #: tRP: PRE to ACT
    cl: int  #: tCL: read command to first data
    cwl: int  #: tCWL: write command to first data
    ras: int  #: tRAS: ACT to PRE
    wr: int  #: tWR: last write data to PRE
    wtr: int  #: tWTR: last write data to read command
    refi_ns: int  #: tREFI: refresh interval
    rfc_ns: int  #: tRFC: one refresh

    @property
    def tck_ps(self) -> int:
        return 2 * 10**6 // self.data_rate_mts

    @property
    def atom_bytes(self) -> int:
        """Bytes one column command moves: the smallest access."""
        return self.bus_bits * self.burst_length // 8

    @property
    def channel_gbs(self) -> float:
        return self.bus_bits / 8 * self.data_rate_mts / 1000


#: HBM2 pseudo-channel of the Alveo U280 (JESD235C timings in tCK as Ramulator2's
#: ``HBM2_2Gbps`` preset gives them; 1800 MT/s per pin, AMD UG1556/PG276; 64-bit
#: pseudo-channel, BL4, 16 banks, 1 KiB pages; 8 Gb dies: tRFC 350 ns, tREFI 3.9 us).
HBM2 = DramParams(
    part="HBM2 pseudo-channel (JESD235C), 1800 MT/s",
    bus_bits=64,
    data_rate_mts=1800,
    burst_length=4,
    banks=16,
    page_bytes=1024,
    rcd=7,
    rp=7,
    cl=7,
    cwl=2,
    ras=17,
    wr=8,
    wtr=3,
    refi_ns=3900,
    rfc_ns=350,
)

#: The KV260's DDR4 (K26 SOM: 64-bit DDR4-2400, x16 8 Gb devices; JESD79-4 speed bin
#: 2400R, 16-16-16, as Ramulator2's ``DDR4_2400R`` preset; 8 banks per x16 device
#: (2 groups of 4), 2 KiB pages per device, 8 KiB across the 64-bit rank; BL8;
#: tRFC1 350 ns for 8 Gb, tREFI 7.8 us).
DDR4 = DramParams(
    part="DDR4-2400R (JESD79-4), 64-bit",
    bus_bits=64,
    data_rate_mts=2400,
    burst_length=8,
    banks=8,
    page_bytes=8192,
    rcd=16,
    rp=16,
    cl=16,
    cwl=12,
    ras=39,
    wr=18,
    wtr=3,
    refi_ns=7800,
    rfc_ns=350,
)

PARTS = {"hbm": HBM2, "ddr": DDR4}


def channel_rate_mts(arch: ArchConfig, part: DramParams) -> int:
    """The data rate of one channel of ``arch`` on ``part``'s bus, in MT/s.

    For the real targets the mapping's rate is the part's (U280: 460 GB/s over 32
    pseudo-channels = 1797 MT/s; KV260: 19.2 GB/s = 2400 MT/s) and the part's is used.
    A scaled target (``tiny``: 0.8 GB/s per channel) keeps the part's timings in ns and
    its burst, and moves its data at the mapping's rate (the same device behind a slower
    link): only the bus occupancy of a burst follows the mapping.
    """
    per_channel_gbs = arch.hbm.bandwidth_gbs / arch.hbm.channels
    mts = round(per_channel_gbs * 8000 / part.bus_bits)
    if abs(mts - part.data_rate_mts) <= part.data_rate_mts // 100:
        return part.data_rate_mts
    return mts


@dataclass(frozen=True)
class DramTiming:
    """The integers both the Python model and its C++ port run on (ps and bytes)."""

    clock_khz: int
    channels: int
    channel_bytes: int  #: linear map: bytes per channel
    interleave_bytes: int  #: 0: linear map; else bytes per channel in turn
    atom_bytes: int
    banks: int
    page_bytes: int
    atom_ps: int  #: one burst on the data bus
    rcd_ps: int
    rp_ps: int
    cl_ps: int
    cwl_ps: int
    ras_ps: int
    wr_ps: int
    wtr_ps: int
    rtw_ps: int  #: read data to write data on the bus (two device clocks)
    refi_ps: int
    rfc_ps: int
    fixed_ps: int  #: controller, PHY and interconnect: request and answer together

    def as_list(self) -> list[int]:
        return [getattr(self, f.name) for f in dataclasses.fields(self)]


def dram_timing(arch: ArchConfig, part: DramParams | None = None) -> DramTiming:
    """The model's integers for ``arch`` (its clock, address map and stated latency)."""
    p = part or PARTS[arch.hbm.kind]
    mem = arch.hbm
    tck = p.tck_ps
    if mem.interleave_bytes % p.atom_bytes or mem.channel_bytes % p.atom_bytes:
        raise ValueError(
            f"{arch.name}: the channel map ({mem.interleave_bytes or mem.channel_bytes} "
            f"bytes) must be a multiple of the {p.atom_bytes}-byte DRAM burst"
        )
    atom_ps = p.atom_bytes * 8 * 10**6 // (p.bus_bits * channel_rate_mts(arch, p))
    # the mapping's latency: a read of one beat (``burst_bytes``) to a closed bank
    first_beat = -(-min(mem.burst_bytes, p.atom_bytes) * atom_ps // p.atom_bytes)
    closed_read = (p.rcd + p.cl) * tck + first_beat
    return DramTiming(
        clock_khz=round(arch.clock_mhz * 1000),
        channels=mem.channels,
        channel_bytes=mem.channel_bytes,
        interleave_bytes=mem.interleave_bytes,
        atom_bytes=p.atom_bytes,
        banks=p.banks,
        page_bytes=p.page_bytes,
        atom_ps=atom_ps,
        rcd_ps=p.rcd * tck,
        rp_ps=p.rp * tck,
        cl_ps=p.cl * tck,
        cwl_ps=p.cwl * tck,
        ras_ps=p.ras * tck,
        wr_ps=p.wr * tck,
        wtr_ps=p.wtr * tck,
        rtw_ps=2 * tck,
        refi_ps=p.refi_ns * 1000,
        rfc_ps=p.rfc_ns * 1000,
        fixed_ps=max(0, round(mem.latency_ns * 1000) - closed_read),
    )


@dataclass
class _Channel:
    """One channel's state: open rows, bank and bus availability, refresh."""

    banks: int
    open_row: list[int] = field(default_factory=list)
    act_at: list[int] = field(default_factory=list)  #: last ACT of each bank
    pre_ok: list[int] = field(default_factory=list)  #: earliest PRE (tWR after writes)
    ready: list[int] = field(default_factory=list)  #: earliest next command of each bank
    bus_free: int = 0
    last_read_end: int = -(10**15)
    last_write_end: int = -(10**15)
    next_refresh: int = 0

    def __post_init__(self) -> None:
        self.open_row = [-1] * self.banks
        self.act_at = [0] * self.banks
        self.pre_ok = [0] * self.banks
        self.ready = [0] * self.banks


@dataclass
class DramStats:
    """What the accesses met (for the report: which term costs what)."""

    hits: int = 0
    misses: int = 0  #: closed bank
    conflicts: int = 0  #: bank open at another row
    refreshes: int = 0
    turnarounds: int = 0


class Dram:
    """The channels of one memory: :meth:`access` schedules one DRAM burst."""

    def __init__(self, t: DramTiming) -> None:
        self.t = t
        self.channels = [_Channel(t.banks) for _ in range(t.channels)]
        for ch in self.channels:
            ch.next_refresh = t.refi_ps
        self.stats = DramStats()

    def cycle_ps(self, cycle: int) -> int:
        """Start of core cycle ``cycle`` in ps."""
        return cycle * 10**9 // self.t.clock_khz

    def ready_cycle(self, ps: int) -> int:
        """First core cycle starting at or after ``ps``."""
        return -(-ps * self.t.clock_khz // 10**9)

    def locate(self, addr: int) -> tuple[int, int, int]:
        """``(channel, bank, row)`` of byte ``addr`` under the mapping's address map."""
        t = self.t
        if t.interleave_bytes:
            unit, within = divmod(addr, t.interleave_bytes)
            ch, n = unit % t.channels, unit // t.channels
            off = n * t.interleave_bytes + within
        else:
            ch, off = divmod(addr, t.channel_bytes)
        page = off // t.page_bytes
        return ch, page % t.banks, page // t.banks

    def _refresh(self, ch: _Channel, at: int) -> None:
        """Refreshes due before ``at``: each closes every row and holds the channel."""
        t = self.t
        while ch.next_refresh <= at:
            start = max(ch.next_refresh, ch.bus_free)
            if any(r >= 0 for r in ch.open_row):
                start = max([start] + [ch.act_at[b] + t.ras_ps for b in range(ch.banks)])
                start = max([start] + ch.pre_ok) + t.rp_ps
            end = start + t.rfc_ps
            ch.open_row = [-1] * ch.banks
            ch.ready = [max(r, end) for r in ch.ready]
            ch.next_refresh += t.refi_ps
            self.stats.refreshes += 1

    def access(self, addr: int, at: int, write: bool) -> int:
        """Schedule the burst holding byte ``addr``, arriving at ``at`` ps; returns the
        time its data starts on the DRAM bus plus the fixed latency (ps): byte ``i`` of
        the burst has crossed ``(i + 1) * atom_ps / atom_bytes`` later."""
        t = self.t
        c, b, row = self.locate(addr)
        ch = self.channels[c]
        self._refresh(ch, at)
        start = max(at, ch.ready[b])
        if ch.open_row[b] == row:
            cas = start
            self.stats.hits += 1
        else:
            if ch.open_row[b] >= 0:
                start = max(start, ch.act_at[b] + t.ras_ps, ch.pre_ok[b]) + t.rp_ps
                self.stats.conflicts += 1
            else:
                self.stats.misses += 1
            ch.open_row[b], ch.act_at[b] = row, start
            cas = start + t.rcd_ps
        if write:
            first = max(cas + t.cwl_ps, ch.bus_free, ch.last_read_end + t.rtw_ps)
            if ch.last_read_end + t.rtw_ps > max(cas + t.cwl_ps, ch.bus_free):
                self.stats.turnarounds += 1
        else:
            if ch.last_write_end + t.wtr_ps > cas:
                cas = ch.last_write_end + t.wtr_ps
                self.stats.turnarounds += 1
            first = max(cas + t.cl_ps, ch.bus_free)
        end = first + t.atom_ps
        ch.bus_free = end
        ch.ready[b] = max(ch.ready[b], first - (t.cwl_ps if write else t.cl_ps))
        if write:
            ch.last_write_end = end
            ch.pre_ok[b] = end + t.wr_ps
        else:
            ch.last_read_end = end
        return first + t.fixed_ps

    def read_beats(self, cycle: int, addr: int, beats: int, beat_bytes: int) -> list[int]:
        """A read command accepted in core cycle ``cycle``: the cycle from which each of
        its beats can be driven (bursts in address order)."""
        at = self.cycle_ps(cycle + 1)
        a, atom_ps = self.t.atom_bytes, self.t.atom_ps
        start: dict[int, int] = {}
        for atom in range(addr // a, (addr + beats * beat_bytes - 1) // a + 1):
            start[atom] = self.access(atom * a, at, False)
        out = []
        for i in range(beats):
            lo, hi = addr + i * beat_bytes, addr + (i + 1) * beat_bytes
            last = max(
                start[x] + -(-(min(hi, (x + 1) * a) - x * a) * atom_ps // a)
                for x in range(lo // a, (hi - 1) // a + 1)
            )
            out.append(self.ready_cycle(last))
        return out

    def write_atom(self, cycle: int, addr: int) -> int:
        """The burst holding ``addr``, whose last byte the core sent in ``cycle``: the
        cycle its write is answered."""
        return self.ready_cycle(self.access(addr, self.cycle_ps(cycle + 1), True) + self.t.atom_ps)
