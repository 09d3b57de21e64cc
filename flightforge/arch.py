"""Architecture configuration: one typed, validated description of a FlightForge core.

The same :class:`ArchConfig` parameterises compiler tiling, the functional simulator,
the cycle model, RTL generation and design-space exploration. Targets are YAML files in
``mappings/`` (loaded by :func:`flightforge.mappings.load_target`); an invalid file gets
a :class:`ConfigError` naming the file, the field and the rule it breaks.
"""

from __future__ import annotations

import hashlib
import json
from pathlib import Path
from typing import Annotated, Any, Literal

from pydantic import BaseModel, ConfigDict, Field, Strict, ValidationError, model_validator

from . import isa
from . import mpe as mpe_datapath
from .files import read_yaml, short_repr

#: Integers are integers: ``cores: true`` or ``chains: 4.5`` is refused, not coerced.
Int = Annotated[int, Strict()]
#: Finite numbers (YAML's ``.inf`` and ``.nan`` are refused); integers are accepted.
Real = Annotated[float, Strict(), Field(allow_inf_nan=False)]

#: Bounds of quantities no FPGA reaches; past them the cycle model's conversions to
#: cycles lose meaning (an infinite clock, a latency of years).
MAX_CLOCK_MHZ = 2000.0
MAX_LATENCY_NS = 1e6
MAX_BANDWIDTH_GBS = 1e5
#: The least ``sfu.pipeline_depth``: a floor on the cycles from a MISC's last issue to its
#: done; the pipelines' own depth (``sfu_row_ops.misc_depth``) is more in every mapping.
MIN_SFU_DEPTH = 4
#: The SFU's pipelines read and write ACT in 4-byte (INT32/FP) elements and look tables
#: up in GLB 4 bytes at a time, so those two buffers need at least this many byte lanes.
SFU_PORT_BYTES = 4


def _pow2(v: int) -> bool:
    return v >= 1 and not v & (v - 1)


class ConfigError(ValueError):
    """An architecture config is malformed; the message names the file and field."""


class _Model(BaseModel):
    model_config = ConfigDict(frozen=True, extra="forbid")


class BufferConfig(_Model):
    """One on-chip buffer of a core."""

    size: Int = Field(gt=0, description="capacity in bytes")
    banks: Int = Field(default=1, ge=1, description="independently addressed banks")
    width: Int = Field(default=16, ge=1, description="bytes per bank port per cycle")

    @property
    def lanes(self) -> int:
        """Byte lanes of the RAM (hw/buffers.py): a port reaches ``lanes`` bytes a cycle."""
        return self.banks * self.width

    @model_validator(mode="after")
    def _fits_isa(self) -> BufferConfig:
        limit = 1 << isa.BUF_ADDR_BITS
        if self.size > limit:
            raise ValueError(
                f"size {self.size} exceeds the ISA's {isa.BUF_ADDR_BITS}-bit "
                f"buffer address space ({limit} bytes)"
            )
        if not _pow2(self.lanes):
            raise ValueError(
                f"banks x width = {self.banks} x {self.width} = {self.lanes} byte lanes "
                f"must be a power of two (byte address a is in lane a % lanes)"
            )
        if self.size % self.lanes:
            raise ValueError(f"size {self.size} is not a multiple of the {self.lanes} byte lanes")
        return self


class Buffers(_Model):
    act: BufferConfig
    wgt: BufferConfig
    glb: BufferConfig
    meta: BufferConfig
    scale: BufferConfig

    def of(self, buf: isa.Buf) -> BufferConfig:
        return getattr(self, buf.name.lower())

    @model_validator(mode="after")
    def _sfu_ports_fit(self) -> Buffers:
        for name in ("act", "glb"):
            lanes = getattr(self, name).lanes
            if lanes < SFU_PORT_BYTES:
                raise ValueError(
                    f"{name} has {lanes} byte lanes (banks x width); the SFU's "
                    f"{SFU_PORT_BYTES}-byte ports on it need at least {SFU_PORT_BYTES}"
                )
        return self


class ParallelShape(_Model):
    """Output columns, reduction elements and rows the MPE handles per cycle."""

    n: Int = Field(ge=1)
    k: Int = Field(ge=2, multiple_of=2, description="even: a DSP group takes two entries")
    m: Int = Field(ge=1)

    @property
    def macs(self) -> int:
        return self.n * self.k * self.m


class MpeConfig(_Model):
    """Matrix processing engine: ``chains`` sparse DSP chains of ``groups_per_chain``
    DSP groups, each group two cascaded MACs ending in a reduction node."""

    chains: Int = Field(ge=1)
    groups_per_chain: Int = Field(ge=1)
    macs_per_group: Literal[2] = 2
    mm: ParallelShape = Field(description="parallelism in MM (GEMM/SpMM) mode")
    mv: ParallelShape = Field(description="parallelism in MV (GEMV/SpMV) mode; m is 1")
    tile_k: Int = Field(
        ge=2,
        le=(1 << isa.DIM_BITS) - 1,
        description=(
            "activation tile buffer capacity per tile row, in INT8 activations: the "
            "largest reduction length K of one MM/MV (longer K is split by the compiler)"
        ),
    )

    @property
    def macs(self) -> int:
        return self.chains * self.groups_per_chain * self.macs_per_group

    @property
    def requantisers(self) -> int:
        """Shared requantisation units per core (flightforge.mpe.requantisers)."""
        return mpe_datapath.requantisers([self.mm.n, self.mv.n])

    def drain(self, shape: ParallelShape) -> int:
        """Cycles the requantisers take per output tile of ``shape``."""
        return mpe_datapath.drain_cycles(self.requantisers, shape.m, shape.n)

    def depth(self, shape: ParallelShape) -> int:
        """Cycles an MM/MV of ``shape`` takes beyond its fetch cycles: the DSP48E2
        datapath's, derived (flightforge.mpe.depth), not configured."""
        return mpe_datapath.depth(self.groups_per_chain, self.drain(shape))

    @model_validator(mode="after")
    def _shapes_fit(self) -> MpeConfig:
        """The mapping hw/mpe builds: a chain of ``groups_per_chain`` DSP48E2 slices cut
        by a reduction node after every second slice; a tile segment's ``k`` entries on
        ``k`` slices of one chain, two rows of the tile in each slice's two lanes."""
        g, lanes = self.groups_per_chain, self.macs_per_group
        if self.mv.m != 1:
            raise ValueError(f"mv.m must be 1 (one row: a matrix-vector product), not {self.mv.m}")
        if g % 2:
            raise ValueError(
                f"groups_per_chain must be even (a reduction node ends each pair of "
                f"slices), not {g}"
            )
        for mode in ("mm", "mv"):
            shape: ParallelShape = getattr(self, mode)
            if shape.macs > self.macs:
                raise ValueError(
                    f"{mode} parallelism {shape.n}x{shape.k}x{shape.m} = "
                    f"{shape.macs} MACs exceeds the {self.macs} MACs of "
                    f"{self.chains} chains x {g} groups x 2"
                )
            if g % shape.k:
                raise ValueError(
                    f"{mode}.k = {shape.k} does not divide a chain's {g} slices: a "
                    f"segment's k entries lie on k slices of one chain"
                )
            slices = -(-shape.m // lanes) * shape.n * shape.k
            if slices > self.chains * g:
                raise ValueError(
                    f"{mode} parallelism {shape.n}x{shape.k}x{shape.m} needs "
                    f"ceil(m/{lanes}) x n x k = {slices} slices, more than the "
                    f"{self.chains} chains x {g} slices"
                )
        return self


class SfuConfig(_Model):
    lanes: Int = Field(
        ge=2, multiple_of=2, description="elements per cycle; even: RoPE rotates lane pairs"
    )
    pipeline_depth: Int = Field(
        default=6,
        ge=MIN_SFU_DEPTH,
        description="cycles from a MISC's last issue to its done at least: the pipelines "
        "pad their own depth (sfu_row_ops.misc_depth) up to it",
    )


class MemoryConfig(_Model):
    """External memory of ``channels`` equal channels.

    The address map is the memory controller's: channels laid out contiguously
    (channel = address // channel_bytes, as raw HBM pseudo-channels are) when
    ``interleave_bytes`` is 0, else consecutive ``interleave_bytes`` blocks go to the
    channels in turn, so one transfer of a weight tile draws on every channel (as
    FlightLLM spreads each tile over its die's channels).
    """

    kind: Literal["hbm", "ddr"]
    channels: Int = Field(ge=1)
    capacity: Int = Field(gt=0, description="total bytes")
    bandwidth_gbs: Real = Field(
        gt=0, le=MAX_BANDWIDTH_GBS, description="peak bandwidth over all channels, GB/s (1e9 B/s)"
    )
    latency_ns: Real = Field(ge=0, le=MAX_LATENCY_NS, description="first-beat latency")
    burst_bytes: Int = Field(
        default=64, ge=2, description="bytes per burst beat of one channel (a power of two)"
    )
    cross_channel_penalty_cycles: Int = Field(default=0, ge=0, le=1_000_000)
    interleave_bytes: Int = Field(
        default=0, ge=0, description="0: contiguous channels; else bytes per channel in turn"
    )

    @property
    def channel_bytes(self) -> int:
        return self.capacity // self.channels

    @model_validator(mode="after")
    def _fits_isa(self) -> MemoryConfig:
        if self.capacity > 1 << isa.EXT_ADDR_BITS:
            raise ValueError(
                f"capacity {self.capacity} exceeds the ISA's "
                f"{isa.EXT_ADDR_BITS}-bit external address space"
            )
        if not _pow2(self.burst_bytes):
            raise ValueError(f"burst_bytes must be a power of two, not {self.burst_bytes}")
        if self.capacity % self.channels:
            raise ValueError(
                f"capacity {self.capacity} is not divisible by {self.channels} channels"
            )
        if self.interleave_bytes % self.burst_bytes:
            raise ValueError(
                f"interleave_bytes {self.interleave_bytes} is not a multiple of "
                f"burst_bytes {self.burst_bytes}"
            )
        return self


class DeviceBudget(_Model):
    """Resources of the target device, for resource checks and DSE."""

    part: str
    dsp: Int = Field(ge=0)
    lut: Int = Field(ge=0)
    ff: Int = Field(ge=0)
    bram: Int = Field(ge=0, description="36 Kb block RAMs")
    uram: Int = Field(ge=0, description="288 Kb UltraRAMs")


class ArchConfig(_Model):
    """A complete target: cores, engines, buffers, memories, clock and precisions."""

    name: str
    description: str = ""
    clock_mhz: Real = Field(gt=0, le=MAX_CLOCK_MHZ)
    cores: Int = Field(ge=1)
    sparse_m: Int = Field(default=16, ge=2)
    sparse_n: tuple[Int, ...] = (2, 4, 8, 16)
    act_bits: Literal[8] = 8
    weight_bits: tuple[Int, ...] = (2, 3, 4, 8)
    token_depth: Int = Field(
        default=8, ge=1, description="capacity of each wait/release token counter"
    )
    queue_depth: Int = Field(
        default=4, ge=1, description="instructions each unit's issue queue holds"
    )
    mpe: MpeConfig
    sfu: SfuConfig
    buffers: Buffers
    hbm: MemoryConfig
    ddr: MemoryConfig | None = None
    device: DeviceBudget | None = None

    @model_validator(mode="after")
    def _sparsity_supported(self) -> ArchConfig:
        m = self.sparse_m
        if m & (m - 1):
            raise ValueError(f"sparse_m must be a power of two, not {m}")
        for n in self.sparse_n:
            try:
                isa.SparseMode.from_nm(n, m)
            except ValueError as e:
                raise ValueError(f"sparse_n: {e}") from None
        for b in self.weight_bits:
            if b not in (2, 3, 4, 8):
                raise ValueError(f"weight_bits: {b} is not one of 2, 3, 4, 8")
        return self

    @model_validator(mode="after")
    def _mpe_reaches_its_operands(self) -> ArchConfig:
        """Each MPE column takes its weights and sparse indices from an equal share of
        the WGT and META ports (hw/mpe.py), so the columns must divide their lanes."""
        for mode in ("mm", "mv"):
            n = getattr(self.mpe, mode).n
            for buf in ("wgt", "meta"):
                lanes = getattr(self.buffers, buf).lanes
                if lanes % n:
                    raise ValueError(
                        f"mpe.{mode}.n = {n} does not divide the {lanes} byte lanes of "
                        f"buffers.{buf}: each column reads an equal share of the port"
                    )
        return self

    @property
    def clock_hz(self) -> float:
        return self.clock_mhz * 1e6

    def canonical_json(self) -> str:
        return json.dumps(self.model_dump(mode="json"), sort_keys=True, separators=(",", ":"))

    def digest(self) -> bytes:
        """SHA-256 of the canonical config: a binary records it and refuses other targets."""
        return hashlib.sha256(self.canonical_json().encode()).digest()


def _format_validation_error(source: str, err: ValidationError) -> str:
    lines = [f"{source}: invalid architecture config"]
    for e in err.errors():
        loc = ".".join(str(p) for p in e["loc"]) or "(top level)"
        msg = e["msg"].removeprefix("Value error, ")
        value = e.get("input")
        shown = (
            ""
            if isinstance(value, dict) or e["type"] == "missing"
            else f" (got {short_repr(value)})"
        )
        lines.append(f"  {loc}: {msg}{shown}")
    return "\n".join(lines)


def arch_from_dict(data: Any, source: str = "<config>") -> ArchConfig:
    if not isinstance(data, dict):
        raise ConfigError(
            f"{source}: expected a mapping at the top level, not {type(data).__name__}"
        )
    try:
        return ArchConfig.model_validate(data)
    except ValidationError as e:
        raise ConfigError(_format_validation_error(source, e)) from None


def load_arch(path: str | Path) -> ArchConfig:
    """Load and validate an architecture YAML file."""
    path = Path(path)
    return arch_from_dict(read_yaml(path, ConfigError), str(path))
