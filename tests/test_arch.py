"""Architecture configs: every shipped target loads; bad ones are refused naming the field."""

from __future__ import annotations

import copy

import pytest
import yaml

from flightforge import isa
from flightforge.arch import ArchConfig, ConfigError, arch_from_dict, load_arch
from flightforge.mappings import available_targets, load_target, target_path


def test_shipped_targets_are_listed():
    assert {"tiny", "u280", "vhk158"} <= set(available_targets())


@pytest.mark.parametrize("name", available_targets())
def test_every_shipped_target_loads(name):
    arch = load_target(name)
    assert isinstance(arch, ArchConfig)
    assert arch.name == name
    assert arch.mpe.mm.macs <= arch.mpe.macs and arch.mpe.mv.macs <= arch.mpe.macs
    # Loading by path gives the same config, and the digest is stable.
    assert load_target(str(target_path(name))).digest() == arch.digest()


def test_digests_differ_between_targets():
    digests = {load_target(n).digest() for n in available_targets()}
    assert len(digests) == len(available_targets())


def test_u280_matches_the_paper():
    arch = load_target("u280")
    assert (arch.clock_mhz, arch.cores, arch.hbm.bandwidth_gbs) == (225, 3, 460)


@pytest.fixture
def tiny_dict():
    return yaml.safe_load(target_path("tiny").read_text())


def _set(d: dict, path: str, value) -> dict:
    d = copy.deepcopy(d)
    *parents, last = path.split(".")
    node = d
    for p in parents:
        node = node[p]
    if value is _DELETE:
        del node[last]
    else:
        node[last] = value
    return d


_DELETE = object()


@pytest.mark.parametrize(
    "path,value,match",
    [
        ("buffers.act.size", -5, r"buffers\.act\.size: Input should be greater than 0 \(got -5\)"),
        ("mpe.chains", 0, r"mpe\.chains: Input should be greater than or equal to 1"),
        ("mpe.tile_k", 1, r"mpe\.tile_k: Input should be greater than or equal to 2"),
        ("mpe.tile_k", 1 << 16, r"mpe\.tile_k: Input should be less than or equal to 65535"),
        ("clock_mhz", -100, r"clock_mhz: Input should be greater than 0"),
        ("frequency", 100, r"frequency: Extra inputs are not permitted"),
        ("mpe.lanes", 4, r"mpe\.lanes: Extra inputs are not permitted"),
        ("sparse_m", 12, r"sparse_m must be a power of two, not 12"),
        ("sparse_n", [3], r"sparse_n: sparsity 3:16 is not supported; supported: 2:4, 2:16"),
        ("sparse_m", 8, r"sparse_n: sparsity 2:8 is not supported"),
        ("weight_bits", [5], r"weight_bits: 5 is not one of 2, 3, 4, 8"),
        ("act_bits", 4, r"act_bits: Input should be 8"),
        (
            "hbm.capacity",
            1 << (isa.EXT_ADDR_BITS + 1),
            rf"hbm: capacity {1 << (isa.EXT_ADDR_BITS + 1)} exceeds the ISA's "
            rf"{isa.EXT_ADDR_BITS}-bit",
        ),
        ("hbm.capacity", 3 * 2**20 + 1, r"hbm: capacity 3145729 is not divisible by 2 channels"),
        (
            "buffers.wgt.size",
            (1 << isa.BUF_ADDR_BITS) + 1,
            rf"buffers\.wgt: size {(1 << isa.BUF_ADDR_BITS) + 1} exceeds the ISA's "
            rf"{isa.BUF_ADDR_BITS}-bit",
        ),
        (
            "mpe.mm",
            {"n": 64, "k": 64, "m": 64},
            r"mpe: mm parallelism 64x64x64 = 262144 MACs exceeds",
        ),
        ("hbm.kind", "sram", r"hbm\.kind: Input should be 'hbm' or 'ddr'"),
        ("mpe.pipeline_depth", 12, r"mpe\.pipeline_depth: Extra inputs are not permitted"),
        ("clock_mhz", _DELETE, r"clock_mhz: Field required"),
    ],
)
def test_invalid_config_is_refused_naming_the_field(tiny_dict, path, value, match):
    with pytest.raises(ConfigError, match=r"^bad\.yaml: invalid architecture config\n") as exc:
        arch_from_dict(_set(tiny_dict, path, value), "bad.yaml")
    assert exc.match(match)


def test_non_mapping_is_refused():
    with pytest.raises(
        ConfigError, match=r"^x\.yaml: expected a mapping at the top level, not list"
    ):
        arch_from_dict([1, 2], "x.yaml")


def test_file_errors_name_the_file(tmp_path, tiny_dict):
    with pytest.raises(ConfigError, match=r"missing\.yaml: cannot read"):
        load_arch(tmp_path / "missing.yaml")
    broken = tmp_path / "broken.yaml"
    broken.write_text("name: [unclosed\n")
    with pytest.raises(ConfigError, match=r"broken\.yaml: not valid YAML"):
        load_arch(broken)
    bad = tmp_path / "bad.yaml"
    bad.write_text(yaml.safe_dump(_set(tiny_dict, "sfu.lanes", 0)))
    with pytest.raises(
        ConfigError, match=r"bad\.yaml: invalid architecture config\n  sfu\.lanes: "
    ):
        load_target(str(bad))


def test_unknown_target_lists_the_shipped_ones():
    with pytest.raises(ConfigError, match=r"unknown target 'u281'; shipped targets: .*u280"):
        load_target("u281")


def test_mpe_depth_and_requantisers_derive_from_the_shapes(tiny_dict):
    """The MPE's depth is its datapath's (flightforge.mpe), not a configured number: tiny
    has lcm(2, 4) = 4 requantisers, which drain an MM tile (4 rows x 2 columns) in 2
    cycles and an MV tile (1 x 4) in 1; depth = 2 frame + chain (3 skew + 4 slice + 1
    read) + 5 accumulator stages + drain + 7 requantiser stages."""
    mp = arch_from_dict(tiny_dict).mpe
    assert mp.requantisers == 4
    assert (mp.drain(mp.mm), mp.drain(mp.mv)) == (2, 1)
    assert (mp.depth(mp.mm), mp.depth(mp.mv)) == (2 + 8 + 5 + 2 + 7, 2 + 8 + 5 + 1 + 7)
    u280 = load_target("u280").mpe
    assert (u280.requantisers, u280.drain(u280.mm), u280.depth(u280.mm)) == (64, 4, 38)
