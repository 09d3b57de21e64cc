"""Sequential restoring divider and digit-by-digit integer square root.

Both run once per row (the softmax reciprocal, the norms' mean, mean square and
inverse root), so a one-bit-per-cycle iteration costs a few dozen cycles per row and a
single subtractor instead of a combinational divider array.
"""

from __future__ import annotations

from amaranth import Cat, Const, Module, Signal, unsigned
from amaranth.lib import wiring
from amaranth.lib.wiring import In, Out

from flightforge.sfu_row_ops import divider_latency, isqrt_latency

from .lane import carry_select_add


def _check_width(name: str, width: object) -> int:
    if isinstance(width, bool) or not isinstance(width, int):
        raise TypeError(f"{name} must be an integer, not {width!r}")
    if width < 1:
        raise ValueError(f"{name} must be at least 1, not {width!r}")
    return width


class Divider(wiring.Component):
    """Unsigned restoring division ``quotient, remainder = divmod(dividend, divisor)``.

    ``start`` samples the operands; one quotient bit is produced per cycle, most
    significant first: with ``start`` high in cycle ``c``, ``done`` is high and the results
    are valid from cycle ``c + dividend_width + 1`` until the next ``start``.
    Latency (``start`` to ``done``): ``dividend_width + 1`` cycles.
    Division by zero gives an all-ones quotient and the dividend as remainder (what the
    restoring recurrence yields); the SFU never divides by zero.
    """

    def __init__(self, dividend_width: int, divisor_width: int) -> None:
        self.dividend_width = _check_width("dividend_width", dividend_width)
        self.divisor_width = _check_width("divisor_width", divisor_width)
        super().__init__(
            {
                "start": In(1),
                "dividend": In(unsigned(dividend_width)),
                "divisor": In(unsigned(divisor_width)),
                "busy": Out(1),
                "done": Out(1),
                "quotient": Out(unsigned(dividend_width)),
                "remainder": Out(unsigned(divisor_width)),
            }
        )

    @staticmethod
    def latency_of(dividend_width: int) -> int:
        """Cycles from ``start`` to ``done`` for a divider of ``dividend_width`` bits."""
        return divider_latency(dividend_width)

    @property
    def latency(self) -> int:
        return self.latency_of(self.dividend_width)

    def elaborate(self, platform) -> Module:
        m = Module()
        n = self.dividend_width
        count = Signal(range(n + 1))
        divisor = Signal(self.divisor_width)
        rem = Signal(self.divisor_width + 1)
        trial = Signal(self.divisor_width + 2)
        m.d.comb += [
            trial.eq((rem << 1 | self.quotient[-1]) - divisor),
            self.busy.eq(count != 0),
            self.remainder.eq(rem),
        ]
        with m.If(self.start):
            m.d.sync += [
                count.eq(n),
                divisor.eq(self.divisor),
                rem.eq(0),
                self.quotient.eq(self.dividend),
                self.done.eq(0),
            ]
        with m.Elif(count != 0):
            m.d.sync += count.eq(count - 1)
            with m.If(trial[-1]):  # negative: restore
                m.d.sync += rem.eq(rem << 1 | self.quotient[-1])
            with m.Else():
                m.d.sync += rem.eq(trial)
            m.d.sync += self.quotient.eq(self.quotient << 1 | ~trial[-1])
            m.d.sync += self.done.eq(count == 1)
        return m


class ISqrt(wiring.Component):
    """Floor square root of a ``width``-bit unsigned value, two radicand bits per cycle.

    The classic digit-by-digit recurrence (``bit`` walking down two places a cycle):
    with ``start`` high in cycle ``c``, ``done`` is high and ``root`` valid from cycle
    ``c + ceil(width / 2) + 1`` until the next ``start``. Latency: ``ceil(width/2) + 1``.
    """

    def __init__(self, width: int) -> None:
        self.width = _check_width("width", width)
        self.steps = (width + 1) // 2
        super().__init__(
            {
                "start": In(1),
                "value": In(unsigned(width)),
                "busy": Out(1),
                "done": Out(1),
                "root": Out(unsigned(self.steps)),
            }
        )

    @staticmethod
    def latency_of(width: int) -> int:
        """Cycles from ``start`` to ``done`` for a radicand of ``width`` bits."""
        return isqrt_latency(width)

    @property
    def latency(self) -> int:
        return self.latency_of(self.width)

    def elaborate(self, platform) -> Module:
        m = Module()
        w = 2 * self.steps
        op = Signal(w)
        res = Signal(w)
        bit = Signal(w)
        trial = Signal(w + 2)
        # res has no bit at or below bit's, so res + bit = res | bit; op - (res | bit) in
        # carry-select chunks (a radicand of 50 bits is a 13-CARRY4 chain otherwise)
        minus = Signal(w + 2)
        m.d.comb += minus.eq(~Cat(res | bit, Const(0, 2)))
        m.d.comb += [
            trial.eq(carry_select_add(m, op, minus, w + 2, "trial", cin=1)),
            self.busy.eq(bit != 0),
            self.root.eq(res),
        ]
        with m.If(self.start):
            m.d.sync += [op.eq(self.value), res.eq(0), bit.eq(1 << (w - 2)), self.done.eq(0)]
        with m.Elif(bit != 0):
            m.d.sync += bit.eq(bit >> 2)
            with m.If(trial[-1]):
                m.d.sync += res.eq(res >> 1)
            with m.Else():
                m.d.sync += [op.eq(trial), res.eq((res >> 1) + bit)]
            m.d.sync += self.done.eq(bit == 1)
        return m
