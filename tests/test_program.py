"""The program binary: exact round trips, and refusal of anything corrupt or mismatched."""

from __future__ import annotations

import pytest

from flightforge import isa
from flightforge.compiler.demo import build_demo
from flightforge.mappings import load_target
from flightforge.program import _HEADER, FORMAT_VERSION, Program, ProgramError, Section, Segment


@pytest.fixture(scope="module")
def program(tiny):
    return build_demo(tiny).program


@pytest.fixture
def saved(program, tmp_path):
    path = tmp_path / "demo.ffb"
    program.save(path)
    return path


def test_save_load_round_trip(program, saved, tiny):
    back = Program.load(saved, tiny)
    assert back == program
    assert [s.instructions for s in back.sections] == [s.instructions for s in program.sections]
    assert back.inputs == program.inputs and back.outputs == program.outputs
    assert back.to_bytes() == saved.read_bytes()


def test_hand_built_program_round_trip(tiny):
    code = [
        isa.LD(rows=2, row_bytes=8, src_stride=8, dst_stride=8, release=1 << isa.Unit.ST),
        isa.ST(rows=2, row_bytes=8, src_stride=8, dst_stride=8, dst=64, wait=1 << isa.Unit.LD),
        isa.SYS(op=isa.SysOp.HALT),
    ]
    prog = Program.for_arch(
        tiny,
        [Section.from_instructions("copy", "main", 1, 4, code)],
        [Segment("src", "input", 0, 16, bytes(range(16))), Segment("dst", "output", 64, 16)],
        {"note": "hand built"},
    )
    back = Program.from_bytes(prog.to_bytes(), arch=tiny)
    assert back == prog
    assert back.section("copy").instructions == code
    assert back.section_for("main", 3).name == "copy"
    summary = back.summary()
    assert summary["instructions_per_opcode"] == {"LD": 1, "ST": 1, "SYS": 1}
    assert summary["sections"] == [
        {
            "name": "copy",
            "stage": "main",
            "lengths": "1..4",
            "instructions": 3,
            "bytes": 3 * isa.INSTR_BYTES,
        }
    ]


def test_the_binary_records_its_target(program, saved, tiny):
    """Format version 2 carries the target's config, so a binary names its own target;
    a version 1 binary (no config) round-trips as version 1."""
    import dataclasses

    back = Program.load(saved)
    assert back.target() == tiny
    assert _HEADER.unpack_from(saved.read_bytes())[1] == FORMAT_VERSION == 2
    old = dataclasses.replace(program, arch_config=None).to_bytes()
    assert _HEADER.unpack_from(old)[1] == 1
    again = Program.from_bytes(old, "old.ffb", tiny)
    assert again.target() is None and again.to_bytes() == old


def test_a_recorded_config_that_does_not_match_the_digest_is_refused(program, tiny):
    """A manifest rewritten with another target's config (and a valid checksum) cannot
    pass for the digest in the header."""
    import dataclasses

    u280 = load_target("u280").canonical_json()
    forged = dataclasses.replace(program, arch_config=u280).to_bytes()  # checksum recomputed
    with pytest.raises(ProgramError, match="does not match the header's config digest"):
        Program.from_bytes(forged, "forged.ffb")


def test_loading_for_another_arch_names_both(saved):
    with pytest.raises(
        ProgramError,
        match=r"demo\.ffb: program was compiled for architecture "
        r"'tiny' .* not 'u280'",
    ):
        Program.load(saved, load_target("u280"))


def _positions(data: bytes, count: int = 50) -> list[tuple[str, int]]:
    """About ``count`` byte positions spread over header, manifest, payload and trailer."""
    mlen, plen = _HEADER.unpack_from(data)[3], _HEADER.unpack_from(data)[5]
    parts = {
        "header": (0, _HEADER.size),
        "manifest": (_HEADER.size, _HEADER.size + mlen),
        "payload": (_HEADER.size + mlen, _HEADER.size + mlen + plen),
        "trailer": (len(data) - 32, len(data)),
    }
    out = []
    for name, (lo, hi) in parts.items():
        step = max(1, (hi - lo) // (count // len(parts)))
        out += [(name, p) for p in range(lo, hi, step)] + [(name, hi - 1)]
    return out


def test_positions_cover_every_part(program):
    data = program.to_bytes()
    names = {name for name, _ in _positions(data)}
    assert names == {"header", "manifest", "payload", "trailer"}
    assert 40 <= len(_positions(data)) <= 80


@pytest.mark.parametrize("bit", [0, 7])
def test_flipped_bytes_are_refused(program, tiny, bit):
    data = program.to_bytes()
    for part, pos in _positions(data):
        bad = bytearray(data)
        bad[pos] ^= 1 << bit
        with pytest.raises(ProgramError, match=r"^demo\.ffb: ") as exc:
            Program.from_bytes(bytes(bad), "demo.ffb", tiny)
        assert "\n" not in str(exc.value), f"{part} byte {pos}"


@pytest.mark.parametrize("keep", [0, 7, 8, 20, 55, 56, 57, 200, -33, -32, -1])
def test_truncated_files_are_refused(program, keep):
    data = program.to_bytes()
    with pytest.raises(ProgramError, match=r"^cut\.ffb: (too short|checksum mismatch|not a)"):
        Program.from_bytes(data[:keep], "cut.ffb")


def test_consistent_but_wrong_header_is_refused(program):
    """A header rewritten with a valid checksum still has to add up."""
    import hashlib

    data = program.to_bytes()
    fields = list(_HEADER.unpack_from(data))
    fields[1] = 99  # format version
    body = _HEADER.pack(*fields) + data[_HEADER.size : -32]
    with pytest.raises(ProgramError, match="format version 99 is not supported"):
        Program.from_bytes(body + hashlib.sha256(body).digest(), "v.ffb")
    fields = list(_HEADER.unpack_from(data))
    fields[3] += 1  # manifest length
    body = _HEADER.pack(*fields) + data[_HEADER.size : -32]
    with pytest.raises(ProgramError, match="header lengths do not add up"):
        Program.from_bytes(body + hashlib.sha256(body).digest(), "v.ffb")


def test_missing_file_names_it(tmp_path):
    with pytest.raises(ProgramError, match=r"nothing\.ffb: cannot read"):
        Program.load(tmp_path / "nothing.ffb")


def test_overlapping_segments_are_refused(tiny):
    with pytest.raises(ProgramError, match=r"segments 'a' .* and 'b' .* overlap"):
        Program.for_arch(tiny, [], [Segment("a", "const", 0, 16), Segment("b", "const", 8, 16)])


def test_segment_beyond_external_memory_is_refused(tiny):
    with pytest.raises(ProgramError, match=r"segment 'far' ends at .* beyond the"):
        Program.for_arch(tiny, [], [Segment("far", "const", tiny.hbm.capacity - 8, 16)])


def test_header_layout_is_as_documented():
    """The module docstring puts the manifest at byte 56."""
    assert _HEADER.size == 56


def test_an_mm_longer_than_the_tile_buffer_is_refused(tiny):
    """The checker refuses K past ``mpe.tile_k``, at the section's longest length when
    ``dyn_k`` lets K grow with D, naming the section, instruction and field."""
    halt = isa.SYS(op=isa.SysOp.HALT)
    k = tiny.mpe.tile_k
    fits = isa.MV(n=1, k=k - 4, dyn_k=1)
    Program.for_arch(tiny, [Section.from_instructions("ok", "main", 1, 5, [fits, halt])], [])
    with pytest.raises(
        ProgramError,
        match=rf"section 'grow', instruction 0 \(MV\): k: K={k + 1} at D=5 exceeds .*"
        rf"mpe\.tile_k = {k}",
    ):
        Program.for_arch(tiny, [Section.from_instructions("grow", "main", 1, 6, [fits, halt])], [])
    long = isa.MM(m=2, n=1, k=k + 2, a_stride=k + 2)
    with pytest.raises(ProgramError, match=rf"instruction 1 \(MM\): k: K={k + 2} exceeds"):
        Program.for_arch(
            tiny, [Section.from_instructions("s", "main", 1, 1, [halt, long, halt])], []
        )
