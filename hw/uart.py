"""A minimal 8N1 UART: the host link of the board SoC (:mod:`.soc`).

A board's USB bridge (an FTDI or similar chip) turns the host's serial port into two
wires; nothing more than 8 data bits, no parity, one stop bit is needed. ``divisor`` is
the number of clock cycles per bit (``clock / baud``), fixed at elaboration: a board
build derives it from the mapping's clock and the baud rate, a simulation uses a small
one so that bytes cost few cycles.
"""

from __future__ import annotations

from amaranth import Cat, Module, Signal
from amaranth.lib import wiring
from amaranth.lib.cdc import FFSynchronizer
from amaranth.lib.wiring import In, Out

#: The smallest divisor the receiver samples reliably (a two-flop synchroniser on ``rx``
#: and a sample point half a bit after the start edge).
MIN_DIVISOR = 4


def check_divisor(divisor: int) -> int:
    """``divisor`` as an int, or a ValueError naming it."""
    if not isinstance(divisor, int) or isinstance(divisor, bool) or divisor < MIN_DIVISOR:
        raise ValueError(f"UART divisor must be an integer >= {MIN_DIVISOR}, not {divisor!r}")
    return divisor


class UartRx(wiring.Component):
    """Receiver: ``valid`` pulses for one cycle with the byte on ``data``.

    ``rx`` idles high; a byte is a low start bit, 8 data bits LSB first, a high stop bit.
    A byte whose stop bit is low is dropped and ``frame_error`` pulses instead.
    """

    def __init__(self, divisor: int) -> None:
        self.divisor = check_divisor(divisor)
        super().__init__(
            {"rx": In(1, init=1), "data": Out(8), "valid": Out(1), "frame_error": Out(1)}
        )

    def elaborate(self, platform) -> Module:
        m = Module()
        rx = Signal(init=1)
        m.submodules.sync_rx = FFSynchronizer(self.rx, rx, init=1)
        timer = Signal(range(self.divisor * 3 // 2 + 1))
        bit = Signal(range(10))
        shreg = Signal(8)
        m.d.sync += [self.valid.eq(0), self.frame_error.eq(0)]
        with m.FSM():
            with m.State("IDLE"):
                with m.If(~rx):  # start edge: sample the first data bit 1.5 bits later
                    m.d.sync += [timer.eq(self.divisor * 3 // 2 - 1), bit.eq(0)]
                    m.next = "BITS"
            with m.State("BITS"):
                with m.If(timer != 0):
                    m.d.sync += timer.eq(timer - 1)
                with m.Elif(bit == 8):  # the stop bit
                    with m.If(rx):
                        m.d.sync += [self.data.eq(shreg), self.valid.eq(1)]
                    with m.Else():
                        m.d.sync += self.frame_error.eq(1)
                    m.next = "IDLE"
                with m.Else():
                    m.d.sync += [
                        shreg.eq(Cat(shreg[1:], rx)),
                        bit.eq(bit + 1),
                        timer.eq(self.divisor - 1),
                    ]
        return m


class UartTx(wiring.Component):
    """Transmitter: a byte on ``data`` is taken in a cycle where ``valid`` and ``ready``
    are both high, and sent 8N1 on ``tx``."""

    def __init__(self, divisor: int) -> None:
        self.divisor = check_divisor(divisor)
        super().__init__({"tx": Out(1, init=1), "data": In(8), "valid": In(1), "ready": Out(1)})

    def elaborate(self, platform) -> Module:
        m = Module()
        timer = Signal(range(self.divisor))
        left = Signal(range(11))  # bits still to send, start and stop included
        shreg = Signal(10, init=0x3FF)
        m.d.comb += [self.ready.eq(left == 0), self.tx.eq(shreg[0])]
        with m.If(left == 0):
            with m.If(self.valid):
                m.d.sync += [
                    shreg.eq(Cat(0, self.data, 1)),
                    left.eq(10),
                    timer.eq(self.divisor - 1),
                ]
        with m.Elif(timer != 0):
            m.d.sync += timer.eq(timer - 1)
        with m.Else():
            m.d.sync += [shreg.eq(Cat(shreg[1:], 1)), left.eq(left - 1)]
            m.d.sync += timer.eq(self.divisor - 1)
        return m
