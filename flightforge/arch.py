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
from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field, ValidationError, model_validator

from . import isa
from . import mpe as mpe_datapath
from .files import read_yaml


class ConfigError(ValueError):
    """An architecture config is malformed; the message names the file and field."""


class _Model(BaseModel):
    model_config = ConfigDict(frozen=True, extra="forbid")


class BufferConfig(_Model):
    """One on-chip buffer of a core."""

    size: int = Field(gt=0, description="capacity in bytes")
    banks: int = Field(default=1, ge=1, description="independently addressed banks")
    width: int = Field(default=16, ge=1, description="bytes per bank port per cycle")

    @model_validator(mode="after")
    def _fits_isa(self) -> BufferConfig:
        limit = 1 << isa.BUF_ADDR_BITS
        if self.size > limit:
            raise ValueError(
                f"size {self.size} exceeds the ISA's {isa.BUF_ADDR_BITS}-bit "
                f"buffer address space ({limit} bytes)"
            )
        return self


class Buffers(_Model):
    act: BufferConfig
    wgt: BufferConfig
    glb: BufferConfig
    meta: BufferConfig
    scale: BufferConfig

    def of(self, buf: isa.Buf) -> BufferConfig:
        return getattr(self, buf.name.lower())


class ParallelShape(_Model):
    """Output columns, reduction elements and rows the MPE handles per cycle."""

    n: int = Field(ge=1)
    k: int = Field(ge=1)
    m: int = Field(ge=1)

    @property
    def macs(self) -> int:
        return self.n * self.k * self.m


class MpeConfig(_Model):
    """Matrix processing engine: ``chains`` sparse DSP chains of ``groups_per_chain``
    DSP groups, each group two cascaded MACs ending in a reduction node."""

    chains: int = Field(ge=1)
    groups_per_chain: int = Field(ge=1)
    macs_per_group: Literal[2] = 2
    mm: ParallelShape = Field(description="parallelism in MM (GEMM/SpMM) mode")
    mv: ParallelShape = Field(description="parallelism in MV (GEMV/SpMV) mode")
    pipeline_depth: int | None = Field(
        default=None,
        ge=1,
        description="cycles an MM/MV adds to its fetch cycles; default (and least): the "
        "datapath's own, flightforge.mpe.min_depth(groups_per_chain)",
    )

    @property
    def macs(self) -> int:
        return self.chains * self.groups_per_chain * self.macs_per_group

    @property
    def depth(self) -> int:
        """Cycles an MM/MV instruction takes beyond its fetch cycles (``pipeline_depth``,
        or the DSP48E2 datapath's own depth when it is not given)."""
        return self.pipeline_depth or mpe_datapath.min_depth(self.groups_per_chain)

    @model_validator(mode="after")
    def _depth_fits(self) -> MpeConfig:
        least = mpe_datapath.min_depth(self.groups_per_chain)
        if self.pipeline_depth is not None and self.pipeline_depth < least:
            raise ValueError(
                f"pipeline_depth must be at least {least} (the datapath of "
                f"{self.groups_per_chain} cascaded DSP48E2 slices), not {self.pipeline_depth!r}"
            )
        return self

    @model_validator(mode="after")
    def _shapes_fit(self) -> MpeConfig:
        for mode in ("mm", "mv"):
            shape: ParallelShape = getattr(self, mode)
            if shape.macs > self.macs:
                raise ValueError(
                    f"{mode} parallelism {shape.n}x{shape.k}x{shape.m} = "
                    f"{shape.macs} MACs exceeds the {self.macs} MACs of "
                    f"{self.chains} chains x {self.groups_per_chain} groups x 2"
                )
        return self


class SfuConfig(_Model):
    lanes: int = Field(ge=1, description="elements processed per cycle")
    pipeline_depth: int = Field(default=6, ge=1)


class MemoryConfig(_Model):
    """External memory of ``channels`` equal channels.

    The address map is the memory controller's: channels laid out contiguously
    (channel = address // channel_bytes, as raw HBM pseudo-channels are) when
    ``interleave_bytes`` is 0, else consecutive ``interleave_bytes`` blocks go to the
    channels in turn, so one transfer of a weight tile draws on every channel (as
    FlightLLM spreads each tile over its die's channels).
    """

    kind: Literal["hbm", "ddr"]
    channels: int = Field(ge=1)
    capacity: int = Field(gt=0, description="total bytes")
    bandwidth_gbs: float = Field(
        gt=0, description="peak bandwidth over all channels, GB/s (1e9 B/s)"
    )
    latency_ns: float = Field(ge=0, description="first-beat latency of a request")
    burst_bytes: int = Field(default=64, ge=1, description="bytes per burst beat of one channel")
    cross_channel_penalty_cycles: int = Field(default=0, ge=0)
    interleave_bytes: int = Field(
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
    dsp: int = Field(ge=0)
    lut: int = Field(ge=0)
    ff: int = Field(ge=0)
    bram: int = Field(ge=0, description="36 Kb block RAMs")
    uram: int = Field(ge=0, description="288 Kb UltraRAMs")


class ArchConfig(_Model):
    """A complete target: cores, engines, buffers, memories, clock and precisions."""

    name: str
    description: str = ""
    clock_mhz: float = Field(gt=0)
    cores: int = Field(ge=1)
    sparse_m: int = Field(default=16, ge=2)
    sparse_n: tuple[int, ...] = (2, 4, 8, 16)
    act_bits: Literal[8] = 8
    weight_bits: tuple[int, ...] = (2, 3, 4, 8)
    token_depth: int = Field(
        default=8, ge=1, description="capacity of each wait/release token counter"
    )
    queue_depth: int = Field(
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
        shown = "" if isinstance(value, dict) or e["type"] == "missing" else f" (got {value!r})"
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
