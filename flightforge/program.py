"""The program binary (``.ffb``): instruction sections plus the external-memory image.

Layout (all integers little-endian)::

    0   magic            8 bytes  b"FFBIN\\x00\\r\\n" (catches text-mode mangling)
    8   format version   u16
    10  ISA version      u16
    12  manifest length  u32
    16  arch digest      32 bytes  SHA-256 of the canonical architecture config
    48  payload length   u64
    56  manifest         UTF-8 JSON: the target's name and config, sections, segments,
                         metadata
    ..  payload          section code and segment data, at offsets the manifest gives
    ..  checksum         32 bytes  SHA-256 of every byte before it

A section is one instruction stream for one stage and one range of lengths (a length
bucket). A segment is a named region of external memory: weights, KV cache, inputs,
outputs, constants; its data may be absent (zero-initialised, or a shape-only
compile that carries addresses and sizes without weight values).

Format version 2 records the whole target config (its canonical JSON, whose SHA-256 is
the header's digest) so that ``run`` and ``simulate`` need no ``--target``; version 1
binaries, which record only the target's name and digest, still load.
"""

from __future__ import annotations

import hashlib
import itertools
import json
import struct
from collections import Counter
from collections.abc import Iterable
from dataclasses import dataclass, field
from functools import cached_property
from pathlib import Path
from typing import Any

from pydantic import BaseModel, ConfigDict, Field, ValidationError

from . import isa
from .arch import ArchConfig, ConfigError, arch_from_dict
from .files import read_bytes, short_repr, write_bytes

MAGIC = b"FFBIN\x00\r\n"
FORMAT_VERSION = 2
#: Versions this build reads: 1 lacks the manifest's ``arch_config``.
READABLE_VERSIONS = (1, 2)
_HEADER = struct.Struct("<8sHHI32sQ")
_DIGEST_BYTES = 32
SEGMENT_KINDS = ("weights", "kv", "input", "output", "const", "scratch")
MAX_FILE_BYTES = 2 << isa.EXT_ADDR_BITS  #: a binary's data is at most its memory image, and code


class ProgramError(ValueError):
    """A program file or object is invalid; the message names the file and the part."""


@dataclass(frozen=True)
class Section:
    """One encoded instruction stream, valid for lengths ``len_lo..len_hi`` of ``stage``."""

    name: str
    stage: str
    len_lo: int
    len_hi: int
    code: bytes

    @classmethod
    def from_instructions(
        cls, name: str, stage: str, len_lo: int, len_hi: int, instrs: Iterable[isa.Instruction]
    ) -> Section:
        try:
            return cls(name, stage, len_lo, len_hi, isa.encode(instrs))
        except isa.EncodeError as e:
            raise ProgramError(f"section {name!r}: {e}") from None

    @cached_property
    def instructions(self) -> list[isa.Instruction]:
        try:
            return isa.decode(self.code)
        except isa.DecodeError as e:
            raise ProgramError(f"section {self.name!r}: {e}") from None

    def __len__(self) -> int:
        return len(self.code) // isa.INSTR_BYTES


def check_tile_k(section: Section, arch: ArchConfig) -> None:
    """Every MM/MV of ``section`` reduces over at most ``mpe.tile_k`` activations, the
    MPE's activation tile buffer per row, at the section's longest length (``k`` grows
    by ``D <= len_hi - len_lo`` when ``dyn_k``)."""
    d_max = section.len_hi - section.len_lo
    for i, ins in enumerate(section.instructions):
        if isinstance(ins, (isa.MM, isa.MV)):
            k = ins.k + (d_max if ins.dyn_k else 0)
            if k > arch.mpe.tile_k:
                at = f" at D={d_max}" if ins.dyn_k and d_max else ""
                raise ProgramError(
                    f"section {section.name!r}, instruction {i} ({ins.OPCODE.name}): k: "
                    f"K={k}{at} exceeds the MPE's activation tile buffer "
                    f"(mpe.tile_k = {arch.mpe.tile_k} activations per row)"
                )


@dataclass(frozen=True)
class Segment:
    """A region of external memory described by the program."""

    name: str
    kind: str
    addr: int
    size: int
    data: bytes | None = None

    def __post_init__(self) -> None:
        if self.kind not in SEGMENT_KINDS:
            raise ProgramError(
                f"segment {self.name!r}: kind {self.kind!r} is not one of "
                + ", ".join(SEGMENT_KINDS)
            )
        if self.data is not None and len(self.data) != self.size:
            raise ProgramError(
                f"segment {self.name!r}: {len(self.data)} bytes of data for a size of {self.size}"
            )

    @property
    def end(self) -> int:
        return self.addr + self.size


@dataclass(frozen=True)
class TensorIO:
    """A program input or output: where it lives and how to (de)quantise it.

    Stored in ``Program.metadata["inputs"]`` / ``["outputs"]`` as dicts. The tensor is
    row-major ``shape`` of ``dtype`` at the start of ``segment``; real value =
    integer * ``scale`` (``scale`` None for tensors that are not quantised, e.g. ids).
    """

    name: str
    segment: str
    dtype: str
    shape: tuple[int, ...]
    scale: float | None = None

    def to_dict(self) -> dict[str, Any]:
        return {
            "name": self.name,
            "segment": self.segment,
            "dtype": self.dtype,
            "shape": list(self.shape),
            "scale": self.scale,
        }

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> TensorIO:
        return cls(d["name"], d["segment"], d["dtype"], tuple(d["shape"]), d.get("scale"))


class _Strict(BaseModel):
    model_config = ConfigDict(strict=True, extra="forbid", frozen=True)


class _SectionEntry(_Strict):
    name: str
    stage: str
    len_lo: int
    len_hi: int
    offset: int
    size: int = Field(ge=0)


class _SegmentEntry(_Strict):
    name: str
    kind: str
    addr: int = Field(ge=0)
    size: int = Field(ge=0)
    offset: int | None


class _TensorEntry(_Strict):
    name: str
    segment: str
    dtype: str
    shape: list[int]
    scale: float | None = None


class _DecoderEntry(_Strict):
    """The decoder fields the host (:mod:`flightforge.generate`) and the cycle model read."""

    model_config = ConfigDict(extra="allow")
    max_len: int = Field(ge=1)
    hidden: int = Field(ge=1)
    vocab: int = Field(ge=1)
    input_segment: str
    logits_segment: str
    embed_segment: str
    positions_segment: str | None = None
    position_offset: int = 0
    input_scale: float
    logits_scale: float
    prefill_logits: str = "all"
    prefill_chunk: int = Field(default=0, ge=0)
    prefill_mode: str = "whole"


class _Metadata(_Strict):
    model_config = ConfigDict(extra="allow")
    inputs: list[_TensorEntry] = []
    outputs: list[_TensorEntry] = []
    decoder: _DecoderEntry | None = None


class _Manifest(_Strict):
    """The manifest's schema: a binary whose checksum holds can still be written by
    another tool; every field the loader, host and models read is typed here, so a
    wrong type is an error naming the field, not a traceback later."""

    arch: str
    arch_config: str | None = None
    sections: list[_SectionEntry]
    segments: list[_SegmentEntry]
    metadata: _Metadata = _Metadata()


def _check_manifest(manifest: Any) -> str | None:
    """None if ``manifest`` fits :class:`_Manifest`, else a message naming the field."""
    try:
        _Manifest.model_validate(manifest)
    except ValidationError as e:
        err = e.errors()[0]
        loc = ".".join(str(p) for p in err["loc"]) or "(top level)"
        return f"manifest field {loc}: {err['msg']} (got {short_repr(err.get('input'))})"
    return None


@dataclass(frozen=True)
class Program:
    """A compiled program for one architecture config."""

    arch_name: str
    arch_digest: bytes
    sections: tuple[Section, ...]
    segments: tuple[Segment, ...] = ()
    metadata: dict[str, Any] = field(default_factory=dict)
    #: The target's canonical config JSON (``ArchConfig.canonical_json``); None in a
    #: version 1 binary, which records only the name and digest.
    arch_config: str | None = None

    @classmethod
    def for_arch(
        cls,
        arch: ArchConfig,
        sections: Iterable[Section],
        segments: Iterable[Segment] = (),
        metadata: dict[str, Any] | None = None,
    ) -> Program:
        prog = cls(
            arch.name,
            arch.digest(),
            tuple(sections),
            tuple(segments),
            dict(metadata or {}),
            arch.canonical_json(),
        )
        prog.validate(arch)
        return prog

    def target(self) -> ArchConfig | None:
        """The target the program was compiled for, from the config it records (None
        for a version 1 binary, which records only its name and digest)."""
        if self.arch_config is None:
            return None
        try:
            return arch_from_dict(json.loads(self.arch_config), f"target {self.arch_name!r}")
        except (json.JSONDecodeError, ConfigError) as e:
            raise ProgramError(f"the recorded target config is invalid: {e}") from None

    def section(self, name: str) -> Section:
        for s in self.sections:
            if s.name == name:
                return s
        raise ProgramError(
            f"no section {name!r}; sections: " + ", ".join(s.name for s in self.sections)
        )

    def section_for(self, stage: str, length: int) -> Section:
        """The section of ``stage`` whose length range holds ``length``."""
        for s in self.sections:
            if s.stage == stage and s.len_lo <= length <= s.len_hi:
                return s
        ranges = ", ".join(f"{s.len_lo}..{s.len_hi}" for s in self.sections if s.stage == stage)
        raise ProgramError(
            f"no {stage} section covers length {length} (covered: {ranges or 'none'})"
        )

    def segment(self, name: str) -> Segment:
        for s in self.segments:
            if s.name == name:
                return s
        raise ProgramError(f"no segment {name!r}")

    @property
    def inputs(self) -> list[TensorIO]:
        return [TensorIO.from_dict(d) for d in self.metadata.get("inputs", [])]

    @property
    def outputs(self) -> list[TensorIO]:
        return [TensorIO.from_dict(d) for d in self.metadata.get("outputs", [])]

    def validate(self, arch: ArchConfig | None = None) -> None:
        """Structural checks: unique names, segments inside memory and not overlapping."""
        names = [s.name for s in self.sections]
        if len(set(names)) != len(names):
            raise ProgramError(f"duplicate section names in {names}")
        for s in self.sections:
            if s.len_lo > s.len_hi:
                raise ProgramError(
                    f"section {s.name!r}: length range {s.len_lo}..{s.len_hi} is empty"
                )
        segs = sorted(self.segments, key=lambda s: s.addr)
        for a, b in itertools.pairwise(segs):
            if b.addr < a.end:
                raise ProgramError(
                    f"segments {a.name!r} ({a.addr:#x}..{a.end:#x}) and {b.name!r} "
                    f"({b.addr:#x}..{b.end:#x}) overlap"
                )
        if arch is not None:
            if arch.digest() != self.arch_digest:
                raise ProgramError(
                    f"program was compiled for architecture {self.arch_name!r} "
                    f"(config digest {self.arch_digest.hex()[:16]}), not "
                    f"{arch.name!r} (digest {arch.digest().hex()[:16]})"
                )
            for s in segs:
                if s.end > arch.hbm.capacity:
                    raise ProgramError(
                        f"segment {s.name!r} ends at {s.end:#x}, beyond the "
                        f"{arch.hbm.capacity:#x} bytes of external memory"
                    )
            for s in self.sections:
                check_tile_k(s, arch)

    # --- serialisation -------------------------------------------------------------------

    def to_bytes(self) -> bytes:
        payload = bytearray()
        sections = []
        for s in self.sections:
            sections.append(
                {
                    "name": s.name,
                    "stage": s.stage,
                    "len_lo": s.len_lo,
                    "len_hi": s.len_hi,
                    "offset": len(payload),
                    "size": len(s.code),
                }
            )
            payload += s.code
        segments = []
        for g in self.segments:
            entry = {"name": g.name, "kind": g.kind, "addr": g.addr, "size": g.size, "offset": None}
            if g.data is not None:
                entry["offset"] = len(payload)
                payload += g.data
            segments.append(entry)
        manifest = json.dumps(
            {
                "arch": self.arch_name,
                **({} if self.arch_config is None else {"arch_config": self.arch_config}),
                "sections": sections,
                "segments": segments,
                "metadata": self.metadata,
            },
            sort_keys=True,
        ).encode()
        version = FORMAT_VERSION if self.arch_config is not None else 1
        head = _HEADER.pack(
            MAGIC, version, isa.ISA_VERSION, len(manifest), self.arch_digest, len(payload)
        )
        body = head + manifest + payload
        return body + hashlib.sha256(body).digest()

    def save(self, path: str | Path) -> None:
        """Write the binary atomically: a failed write leaves any earlier file intact."""
        write_bytes(Path(path), self.to_bytes())

    @classmethod
    def from_bytes(
        cls, data: bytes, source: str = "<bytes>", arch: ArchConfig | None = None
    ) -> Program:
        """Parse and verify a binary; with ``arch``, refuse one compiled for another config."""

        def fail(msg: str) -> ProgramError:
            return ProgramError(f"{source}: {msg}")

        if len(data) < _HEADER.size + _DIGEST_BYTES:
            raise fail(f"too short for a FlightForge binary ({len(data)} bytes)")
        if data[:8] != MAGIC:
            raise fail(f"not a FlightForge binary (magic {data[:8]!r}, expected {MAGIC!r})")
        body, digest = data[:-_DIGEST_BYTES], data[-_DIGEST_BYTES:]
        if hashlib.sha256(body).digest() != digest:
            raise fail("checksum mismatch: the file is corrupt or truncated")
        _, fmt, isa_ver, mlen, arch_digest, plen = _HEADER.unpack_from(data)
        if fmt not in READABLE_VERSIONS:
            readable = ", ".join(map(str, READABLE_VERSIONS))
            raise fail(f"format version {fmt} is not supported (this build reads {readable})")
        if isa_ver != isa.ISA_VERSION:
            raise fail(f"ISA version {isa_ver} does not match this build's {isa.ISA_VERSION}")
        if _HEADER.size + mlen + plen != len(body):
            raise fail("header lengths do not add up to the file size")
        try:
            manifest = json.loads(body[_HEADER.size : _HEADER.size + mlen])
        except (UnicodeDecodeError, json.JSONDecodeError, RecursionError) as e:
            raise fail(f"manifest is not valid JSON: {e}") from None
        problem = _check_manifest(manifest)
        if problem:
            raise fail(problem)
        config = manifest.get("arch_config")
        if config is not None and hashlib.sha256(config.encode()).digest() != arch_digest:
            raise fail("the recorded target config does not match the header's config digest")
        if config is not None and fmt < 2:
            raise fail(f"format version {fmt} has no recorded target config (arch_config)")
        payload = body[_HEADER.size + mlen :]

        def blob(entry: dict, what: str) -> bytes:
            off, size = entry["offset"], entry["size"]
            if not (0 <= off and off + size <= len(payload)):
                raise fail(f"{what} lies outside the payload")
            return payload[off : off + size]

        try:
            sections = []
            for e in manifest["sections"]:
                code = blob(e, f"section {e['name']!r}")
                if len(code) % isa.INSTR_BYTES:
                    raise fail(
                        f"section {e['name']!r}: {len(code)} bytes is not a whole number "
                        f"of {isa.INSTR_BYTES}-byte instructions"
                    )
                sections.append(Section(e["name"], e["stage"], e["len_lo"], e["len_hi"], code))
            segments = [
                Segment(
                    e["name"],
                    e["kind"],
                    e["addr"],
                    e["size"],
                    None if e["offset"] is None else blob(e, f"segment {e['name']!r}"),
                )
                for e in manifest["segments"]
            ]
            prog = cls(
                manifest["arch"],
                arch_digest,
                tuple(sections),
                tuple(segments),
                manifest.get("metadata", {}),
                config,
            )
        except (KeyError, TypeError) as e:
            raise fail(f"manifest is missing or mistypes field {e}") from None
        for s in prog.sections:
            try:
                s.instructions  # noqa: B018 - decode now so errors surface at load time
            except ProgramError as e:
                raise fail(str(e)) from None
        try:
            prog.validate(arch)
        except ProgramError as e:
            raise fail(str(e)) from None
        return prog

    @classmethod
    def load(cls, path: str | Path, arch: ArchConfig | None = None) -> Program:
        path = Path(path)
        data = read_bytes(path, ProgramError, MAX_FILE_BYTES, regular=True)
        return cls.from_bytes(data, str(path), arch)

    # --- reporting -----------------------------------------------------------------------

    def summary(self) -> dict[str, Any]:
        """Counts for ``flightforge inspect``: instructions per opcode, bytes per section."""
        per_op: Counter[str] = Counter()
        for s in self.sections:
            per_op.update(i.OPCODE.name for i in s.instructions)
        return {
            "arch": self.arch_name,
            "arch_digest": self.arch_digest.hex(),
            "sections": [
                {
                    "name": s.name,
                    "stage": s.stage,
                    "lengths": f"{s.len_lo}..{s.len_hi}",
                    "instructions": len(s),
                    "bytes": len(s.code),
                }
                for s in self.sections
            ],
            "instructions_per_opcode": dict(sorted(per_op.items())),
            "segments": [
                {
                    "name": g.name,
                    "kind": g.kind,
                    "addr": g.addr,
                    "size": g.size,
                    "has_data": g.data is not None,
                }
                for g in self.segments
            ],
        }
