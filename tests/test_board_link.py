"""The board link: the UART (Amaranth simulation), the protocol's encoding, and the host
driver talking to the simulated SoC's UART (Verilator) while it runs the compiled demo
program, whose outputs must equal the functional simulator's bit for bit."""

from __future__ import annotations

import time

import pytest

from flightforge import isa, link
from flightforge.link import Op, Status


def test_encode_puts_fields_little_endian_and_refuses_overflow() -> None:
    assert link.encode(Op.WRITE, addr=0x1234, size=3) == b"W" + bytes(
        [0x34, 0x12, 0, 0, 3, 0, 0, 0]
    )
    assert link.encode(Op.RUN, d=5) == b"X\x05" + bytes(link.header_bytes(Op.RUN) - 1)
    with pytest.raises(ValueError, match="field 'count'"):
        link.encode(Op.PROGRAM, index=0, count=1 << 16)


def test_uart_divisor_is_checked() -> None:
    from flightforge.hw.uart import UartTx

    with pytest.raises(ValueError, match="divisor"):
        UartTx(2)


def test_uart_loopback_bytes_and_frame_error() -> None:
    """TX wired to RX at the smallest divisor: every byte comes back; a line held low
    through the stop bit is a framing error, not a byte."""
    from amaranth import Module
    from amaranth.sim import Simulator

    from flightforge.hw.uart import MIN_DIVISOR, UartRx, UartTx

    m = Module()
    m.submodules.tx = tx = UartTx(MIN_DIVISOR)
    m.submodules.rx = rx = UartRx(MIN_DIVISOR)
    sent = [0x00, 0xFF, 0x55, 0xA3, 0x01, 0x80]
    got, errors = [], []

    async def bench(ctx) -> None:
        for b in sent:
            ctx.set(rx.rx, ctx.get(tx.tx))
            ctx.set(tx.data, b)
            ctx.set(tx.valid, 1)
            while True:
                ctx.set(rx.rx, ctx.get(tx.tx))
                ready = ctx.get(tx.ready)
                await ctx.tick()
                if ready:
                    break
            ctx.set(tx.valid, 0)
            for _ in range(12 * MIN_DIVISOR):
                ctx.set(rx.rx, ctx.get(tx.tx))
                if ctx.get(rx.valid):
                    got.append(ctx.get(rx.data))
                await ctx.tick()
        for _ in range(12 * MIN_DIVISOR):  # a break: the line low for a whole frame
            ctx.set(rx.rx, 0)
            errors.append(ctx.get(rx.frame_error))
            assert not ctx.get(rx.valid)
            await ctx.tick()

    sim = Simulator(m)
    sim.add_clock(1e-8)
    sim.add_testbench(bench)
    sim.run()
    assert got == sent
    assert any(errors)


# --- the SoC under Verilator -----------------------------------------------------------

MEM_BYTES = 16384  #: the demo's segments take 10.3 KiB
DIVISOR = 4  #: cycles per bit in simulation (a board at 3 Mbaud and 48 MHz has 16)


@pytest.fixture(scope="module")
def soc_build(rtl_tiny):
    from flightforge.sim.board import build_soc_sim

    return build_soc_sim(rtl_tiny, MEM_BYTES, DIVISOR)


@pytest.mark.rtl
@pytest.mark.slow
def test_driver_runs_the_demo_on_the_simulated_soc_bit_exact(rtl_tiny, soc_build) -> None:
    from flightforge import hostio
    from flightforge.compiler.demo import build_demo, run_demo
    from flightforge.sim.board import BoardDevice, SimulatedBoard
    from flightforge.sim.functional import FunctionalSim

    build = build_demo(rtl_tiny)
    ref = FunctionalSim(rtl_tiny)
    run_demo(rtl_tiny, ref, build)
    t0 = time.perf_counter()
    with SimulatedBoard(soc_build) as stream:
        dev = BoardDevice(rtl_tiny, stream)
        assert dev.mem_bytes == MEM_BYTES
        report = run_demo(rtl_tiny, dev, build)
        for tio in build.program.outputs:
            got = hostio.read_output(dev, build.program, tio)
            want = hostio.read_output(ref, build.program, tio)
            assert (got == want).all(), f"{tio.name}: board and functional simulator differ"
        assert all(a.bit_exact for a in report.outputs)
        assert all(r.cycles and r.cycles > 0 for r in report.runs)
        sent, received = stream.bytes_sent, stream.bytes_received
    print(
        f"demo over the simulated UART: {sent} bytes sent, {received} received, "
        f"cycles {[r.cycles for r in report.runs]}, {time.perf_counter() - t0:.1f} s wall"
    )


@pytest.mark.rtl
@pytest.mark.slow
def test_soc_refuses_bad_commands_and_stays_in_step(rtl_tiny, soc_build) -> None:
    from flightforge.sim.board import BoardDevice, LinkError, SimulatedBoard
    from flightforge.sim.device import DeviceError

    with SimulatedBoard(soc_build, timeout_s=20) as stream:
        dev = BoardDevice(rtl_tiny, stream)
        lk = dev.link
        with pytest.raises(LinkError, match="RANGE"):
            lk.write(MEM_BYTES - 2, b"abcd")  # the four bytes are consumed and dropped
        with pytest.raises(LinkError, match="RANGE"):
            lk.read(MEM_BYTES, 1)
        with pytest.raises(LinkError, match="RANGE"):
            lk.program(4095, bytes(2 * isa.INSTR_BYTES))
        stream.write(b"?")
        assert stream.read(1) == bytes([Status.OPCODE])
        lk.write(MEM_BYTES - 4, b"wxyz")
        assert lk.read(MEM_BYTES - 6, 6) == b"\0\0wxyz"
        with pytest.raises(DeviceError, match="outside the board's on-chip memory"):
            dev.write(MEM_BYTES - 1, b"ab")
        # A section whose LD reaches past the on-chip memory: MEM_FAULT, named.
        ld = isa.LD(buf=isa.Buf.ACT, dst=0, src=MEM_BYTES - 8, rows=1, row_bytes=16)
        code = isa.encode([ld, isa.SYS(op=isa.SysOp.HALT)])
        lk.program(0, code)
        with pytest.raises(LinkError, match="MEM_FAULT"):
            lk.run(0)


def test_cli_run_on_a_board_needs_a_port_and_names_a_bad_one(tmp_path, tiny) -> None:
    from click.testing import CliRunner

    from flightforge.cli import main
    from flightforge.compiler.demo import build_demo

    path = tmp_path / "demo.ffp"
    build_demo(tiny).program.save(path)
    base = ["run", str(path), "--target", "tiny", "--out-dir", str(tmp_path)]
    r = CliRunner().invoke(main, [*base, "--backend", "board"])
    assert r.exit_code == 2 and "--port" in r.output
    r = CliRunner().invoke(main, [*base, "--port", "/dev/ttyUSB0"])
    assert r.exit_code == 2 and "--backend board" in r.output
    missing = tmp_path / "no-such-tty"
    r = CliRunner().invoke(main, [*base, "--backend", "board", "--port", str(missing)])
    assert r.exit_code == 1 and str(missing) in r.output, r.output
