"""The open ECP5 flow (hw/fpga.py, `flightforge build`): its checks, its reading of
nextpnr's report, and the whole flow on the link (synthesis, place and route, bitstream)."""

from __future__ import annotations

import json

import pytest

from flightforge.hw import fpga


def test_baud_rates_the_clock_cannot_make_are_refused() -> None:
    assert fpga.uart_divisor(25e6, 1_000_000) == 25
    with pytest.raises(fpga.BuildError, match="3000000 baud cannot be made from a 25 MHz"):
        fpga.uart_divisor(25e6, 3_000_000)


def test_a_target_without_a_board_is_refused_by_name() -> None:
    with pytest.raises(fpga.BuildError, match="'tiny' is not a board target; board targets: ulx3s"):
        fpga.board_platform("tiny")


#: The shape of nextpnr-ecp5's --report JSON (two segments of a real path).
REPORT = {
    "utilization": {
        "TRELLIS_COMB": {"used": 82, "available": 83640},
        "TRELLIS_FF": {"used": 59, "available": 83640},
        "DP16KD": {"used": 0, "available": 208},
        "MULT18X18D": {"used": 0, "available": 156},
    },
    "fmax": {"$glbnet$clk": {"achieved": 54.2, "constraint": 25.0}},
    "critical_paths": [
        {
            "from": "posedge $glbnet$clk",
            "to": "posedge $glbnet$clk",
            "path": [
                {"delay": 0.5, "from": {"cell": "dut.urx.timer_FF"}, "to": {"cell": "x"}},
                {"delay": 17.9, "from": {"cell": "x"}, "to": {"cell": "dut.urx.bit_FF"}},
            ],
        }
    ],
}


def test_report_gives_utilisation_fmax_and_the_worst_path() -> None:
    r = fpga.BuildReport("top", 25.0)
    fpga.read_report(r, REPORT)
    assert r.utilisation == {
        "LUT4": (82, 83640),
        "FF": (59, 83640),
        "MULT18": (0, 156),
        "EBR": (0, 208),
    }
    assert r.fmax_mhz == 54.2 and r.timing_met
    fpga.check_timing(r, "ulx3s")
    r.clock_mhz = 100.0
    with pytest.raises(
        fpga.TimingError, match=r"54.20 MHz achieved, 100 MHz requested; worst"
    ) as e:
        fpga.check_timing(r, "ulx3s")
    assert "dut.urx.timer_FF -> dut.urx.bit_FF (18.40 ns" in str(e.value)
    assert "LUT4        82 of   83640 (0.1%)" in r.summary()


@pytest.mark.slow
def test_the_link_goes_through_the_whole_flow_to_a_bitstream(tmp_path) -> None:
    """`flightforge build --design link`: synthesis, place and route at the board's
    25 MHz, bitstream; the summary's figures are nextpnr's."""
    from click.testing import CliRunner

    from flightforge.cli import main

    try:
        fpga.tools()
    except fpga.BuildError as e:
        pytest.skip(str(e))
    out = tmp_path / "link"
    r = CliRunner().invoke(
        main, ["build", "--target", "ulx3s", "--out", str(out), "--design", "link", "-q"]
    )
    assert r.exit_code == 0, r.output
    assert "timing met" in r.output
    summary = json.loads((out / "summary.json").read_text())
    assert summary["timing_met"] and summary["fmax_mhz"] >= 25
    assert 0 < summary["LUT4"] < 1000 and 0 < summary["FF"] < 1000
    assert (out / "top.bit").stat().st_size > 100_000  # an LFE5U-85F image
    print(json.dumps(summary))


@pytest.mark.slow
def test_a_dsp_chain_places_and_routes_out_of_context(tmp_path) -> None:
    """One small block of the core through synthesis and place and route on the ULX3S's
    part: the chain's multipliers land on MULT18X18D blocks (two per DSP group, ECP5 has
    no packing of two MACs in one), and it meets the board's clock."""
    from flightforge.hw.mpe.chain import DspChain
    from flightforge.mappings import load_target

    try:
        fpga.tools()
    except fpga.BuildError as e:
        pytest.skip(str(e))
    arch = load_target("ulx3s")
    r = fpga.build_block("ulx3s", DspChain(4, 16), "dsp_chain", tmp_path, arch.clock_mhz)
    assert r.utilisation["MULT18"][0] == 4 * 2
    assert r.timing_met and r.worst_path
    print(json.dumps(r.json_line()))


def test_build_of_a_target_without_a_board_names_the_board_targets(tmp_path) -> None:
    from click.testing import CliRunner

    from flightforge.cli import main

    r = CliRunner().invoke(main, ["build", "--target", "tiny", "--out", str(tmp_path / "b")])
    assert r.exit_code == 1
    assert "'tiny' is not a board target; board targets: ulx3s" in r.output
