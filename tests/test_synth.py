"""The Yosys runner's instruments (flightforge.hw.synth): path depth in logic levels, DSP48E2
register configurations with their data-sheet clock, and the memory-port check.

The path tracer is checked on hand-built netlists (no Yosys) and on a synthesised adder
tree, registered and pipelined; the memory check on the Controller's instruction buffer
(one read and one write port) and on the whole core of tiny and kv260, where it must find
no memory with more than two ports (issue 15; expected to fail until the buffers are
banked RAMs). tiny's core takes ~40 s; kv260's is behind the ``synthesis`` marker
(``pytest -m synthesis``): converting it to RTLIL took over 13 minutes and 3.8 GB on the
shared machine with today's port networks.
"""

import shutil

import pytest
from amaranth import Module, Signal
from amaranth.lib import wiring
from amaranth.lib.wiring import In, Out

from flightforge.hw import synth
from flightforge.mappings import load_target

needs_yosys = pytest.mark.skipif(shutil.which("yosys") is None, reason="needs yosys")


def _cell(type_, ins: dict, outs: dict, **params) -> dict:
    return {
        "type": type_,
        "parameters": {
            k: format(v, "032b") if isinstance(v, int) else v for k, v in params.items()
        },
        "port_directions": {**{p: "input" for p in ins}, **{p: "output" for p in outs}},
        "connections": {**ins, **outs},
    }


def _netlist(cells: dict) -> dict:
    return {"modules": {"top": {"ports": {}, "cells": cells, "netnames": {"q_in": {"bits": [2]}}}}}


def test_path_depth_counts_levels_between_registers() -> None:
    """FF -> LUT -> CARRY4 (into its carry-out) -> CARRY4 (carry-in to its top bit) -> LUT
    -> FF is 4 levels; a second register path of one LUT does not change it."""
    cells = {
        "r0": _cell("FDRE", {"D": [100], "C": [1]}, {"Q": [2]}),
        "l0": _cell("LUT2", {"I0": [2], "I1": [2]}, {"O": [3]}),
        "c0": _cell(
            "CARRY4",
            {"CI": ["0"], "CYINIT": ["0"], "DI": [2, 2, 2, 2], "S": [2, 3, 3, 3]},
            {"O": [10, 11, 12, 13], "CO": [14, 15, 16, 17]},
        ),
        "c1": _cell(
            "CARRY4",
            {"CI": [17], "CYINIT": ["0"], "DI": [2, 2, 2, 2], "S": [2, 2, 2, 2]},
            {"O": [20, 21, 22, 23], "CO": [24, 25, 26, 27]},
        ),
        "l1": _cell("LUT1", {"I0": [23]}, {"O": [30]}),
        "r1": _cell("FDRE", {"D": [30], "C": [1]}, {"Q": [31]}),
        "l2": _cell("LUT1", {"I0": [31]}, {"O": [32]}),
        "r2": _cell("FDRE", {"D": [32], "C": [1]}, {"Q": [100]}),
    }
    d = synth.path_depth(_netlist(cells), "top")
    assert (d["levels"], d["lut"], d["carry"], d["dsp"]) == (4, 2, 2, 0)
    assert d["from"] == "q_in"
    # A carry's low bit depends only on its low inputs: O[0] of c0 is not behind l0.
    cells["l1"]["connections"]["I0"] = [10]
    d = synth.path_depth(_netlist(cells), "top")
    assert (d["levels"], d["lut"], d["carry"]) == (2, 1, 1)


def test_unregistered_dsp_is_a_level_and_a_registered_one_a_boundary() -> None:
    dsp = {"A": [3], "B": [3]}
    comb = _cell("DSP48E2", dsp, {"P": [4]}, AREG=0, BREG=0, MREG=0, PREG=0)
    regd = _cell("DSP48E2", dsp, {"P": [4]}, AREG=1, BREG=1, MREG=1, PREG=1)
    cells = {
        "r0": _cell("FDRE", {"D": [9]}, {"Q": [2]}),
        "l0": _cell("LUT1", {"I0": [2]}, {"O": [3]}),
        "l1": _cell("LUT1", {"I0": [4]}, {"O": [5]}),
        "r1": _cell("FDRE", {"D": [5]}, {"Q": [9]}),
    }
    d = synth.path_depth(_netlist({**cells, "dsp": comb}), "top")
    assert (d["levels"], d["lut"], d["dsp"]) == (3, 2, 1)
    assert d["dsp48e2"] == {"unregistered": 1}
    d = synth.path_depth(_netlist({**cells, "dsp": regd}), "top")
    assert (d["levels"], d["dsp"]) == (1, 0)
    assert d["dsp48e2"] == {"all_registers": 1}


def test_dsp_configs_and_their_data_sheet_clock() -> None:
    def config(**p) -> str:
        return synth.dsp_config(_cell("DSP48E2", {}, {}, **p))

    assert config(AREG=1, BREG=1, MREG=1, PREG=1) == "all_registers"
    assert config(AREG=1, BREG=1, MREG=0, PREG=1) == "mult_no_mreg"
    assert config(AREG=1, BREG=1, MREG=0, PREG=1, AMULTSEL="AD", ADREG=0) == "no_pipeline_regs"
    assert config(AREG=1, BREG=1, MREG=0, PREG=1, USE_MULT="NONE") == "all_registers"
    assert config(AREG=0, BREG=1, MREG=1, PREG=1) == "unregistered"
    assert config(AREG=1, BREG=1, MREG=1, PREG=0) == "unregistered"
    assert synth.speed_column("xck26-sfvc784-2LV-c") == "-2@0.72V"
    assert synth.speed_column("xcu280-fsvh2892-2L-e") == "-2@0.85V"
    assert synth.speed_column("xczu3eg-sbva484-1-e") == "-1@0.85V"
    assert synth.DSP48E2_FMAX_MHZ["all_registers"]["-2@0.85V"] == 775
    with pytest.raises(ValueError, match="xcfoo"):
        synth.speed_column("xcfoo")


class _AdderTree(wiring.Component):
    """Four registered 24-bit inputs summed into a register, optionally with a register
    after the first level of adds."""

    def __init__(self, pipelined: bool) -> None:
        self.pipelined = pipelined
        super().__init__({"x": In(24).array(4), "y": Out(26)})

    def elaborate(self, platform) -> Module:
        m = Module()
        regs = [Signal(24, name=f"r{i}") for i in range(4)]
        for r, x in zip(regs, self.x, strict=True):
            m.d.sync += r.eq(x)
        s0, s1 = Signal(25), Signal(25)
        domain = m.d.sync if self.pipelined else m.d.comb
        domain += [s0.eq(regs[0] + regs[1]), s1.eq(regs[2] + regs[3])]
        m.d.sync += self.y.eq(s0 + s1)
        return m


@needs_yosys
def test_synthesised_depth_shrinks_when_pipelined() -> None:
    yosys = synth.yosys_binary()
    flat = synth.synth(_AdderTree(False), "tree", yosys, flatten=True)
    piped = synth.synth(_AdderTree(True), "tree", yosys, flatten=True)
    assert flat["ok"] and piped["ok"]
    one_add = piped["depth"]
    assert one_add["carry"] >= 6  # a 25/26-bit carry chain: 7 CARRY4 cells
    assert flat["depth"]["levels"] > one_add["levels"]


@needs_yosys
def test_memory_ports_finds_the_instruction_buffer() -> None:
    """The Controller's instruction buffer: 4096 x (384 bits + the predecoded record),
    one read port (registered) and one write port at different addresses: two ports."""
    from flightforge.hw.controller import IMEM_DEPTH, Controller
    from flightforge.hw.decode import PREDECODED
    from flightforge.isa import INSTR_BITS

    arch = load_target("tiny")
    mems = synth.memory_ports(Controller(arch), "ctl", synth.yosys_binary())
    (imem,) = [m for m in mems if m.memid == "imem"]
    assert (imem.words, imem.width) == (IMEM_DEPTH, INSTR_BITS + PREDECODED.size)
    assert (imem.read_ports, imem.write_ports, imem.ports, imem.async_reads) == (1, 1, 2, 0)
    assert max(m.ports for m in mems) <= 2


@needs_yosys
@pytest.mark.slow
@pytest.mark.xfail(
    strict=True,
    reason="issue 15: the buffers' lane RAMs have one read-write port per user (tiny's "
    "ACT lanes 34 on 3408d53); the buffer work of issue 15 (banked RAMs of <= 2 ports) "
    "makes this pass: then remove this mark",
)
@pytest.mark.parametrize("target", ["tiny", pytest.param("kv260", marks=pytest.mark.synthesis)])
def test_core_memories_have_at_most_two_ports(target) -> None:
    from flightforge.hw.core import Core

    mems = synth.memory_ports(Core(load_target(target)), "core", synth.yosys_binary())
    assert any(m.memid == "imem" for m in mems)  # the check sees the core's memories
    wide = [m for m in mems if m.ports > 2 or m.async_reads]
    assert not wide, [f"{m.module}.{m.memid}: {m.ports} ports" for m in wide[:8]]
