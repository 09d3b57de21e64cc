"""RMSNORM and LAYERNORM: one statistics pass, four sequential steps, one output pass.

The two norms share everything but the mean, so one component runs both (``instr.op``
chooses). LAYERNORM needs ``sum (x - mean)**2`` with the floor mean, which would take a
second pass over the row; the exact identity ``sum (x - m)**2 = S2 - m * (2*S1 - n*m)``
(``S1 = sum x``, ``S2 = sum x**2``, any integer ``m``) gives it from the statistics of
the single pass, with two multiplications once per row.
"""

from __future__ import annotations

from amaranth import Module, Mux, Signal, signed, unsigned
from amaranth.lib import data, wiring

from flightforge import isa, numerics

from .common import check_latency, delay, op_signature, rnd_shift, saturate
from .divider import Divider, ISqrt

#: Input bits: norms take INT8 or INT16 (isa.MISC refuses INT32).
X_BITS = isa.DType.INT16.bits
#: |sum x| < 2**(X_BITS - 1 + DIM_BITS); one more bit for the sign.
S1_BITS = X_BITS + isa.DIM_BITS
#: sum x**2 (or of the centred values) < 2**(2 * X_BITS + DIM_BITS).
S2_BITS = 2 * X_BITS + isa.DIM_BITS
#: mean square + eps <= (2**X_BITS)**2 + 2**16: the centred values span 2**X_BITS.
MS_BITS = 2 * X_BITS + 2
#: isqrt(ms << 16), then inv = 2**38 // r.
RADICAND_BITS = MS_BITS + 16
INV_DIVIDEND_BITS = numerics.NORM_RSQRT_BITS + 1
DIV_DIVIDEND_BITS = max(S1_BITS, S2_BITS, INV_DIVIDEND_BITS)
ROOT_BITS = (RADICAND_BITS + 1) // 2
DIV_DIVISOR_BITS = max(isa.DIM_BITS, ROOT_BITS)

Tag = data.StructLayout({"valid": 1, "out": 1, "last": 1, "col": isa.DIM_BITS})


class Norm(wiring.Component):
    """RMSNORM / LAYERNORM of each row, bit-exact with :mod:`flightforge.numerics`.

    GLB parameters (INT16 elements from ``p_addr``): ``gamma[cols]``, then for
    LAYERNORM ``beta[cols]``. The output pass reads one element per cycle for RMSNORM;
    LAYERNORM reads gamma and beta on the one GLB port in two cycles per element.
    """

    #: write-pipeline stages after the read data of the output pass
    PIPE_OUT = 4
    #: register steps computing the centred sum of squares (LAYERNORM only)
    CENTER_STEPS = 2

    def __init__(self, *, read_latency: int = 1) -> None:
        self.read_latency = check_latency(read_latency)
        super().__init__(op_signature(params=True))

    def row_cycles(self, cols: int, layer: bool) -> int:
        """Cycles of one row: stats pass, divisions, square root, output pass."""
        lat = self.read_latency
        div = Divider.latency_of(DIV_DIVIDEND_BITS) + 1
        steps = 2 * div + ISqrt.latency_of(RADICAND_BITS) + 1
        if layer:
            steps += div + self.CENTER_STEPS
        per = 2 if layer else 1
        return (cols + lat) + steps + (per * (cols - 1) + lat + self.PIPE_OUT + 1)

    def cycles(self, rows: int, cols: int, layer: bool) -> int:
        """Cycles from ``start`` to ``done`` (both counted) of a ``rows x cols`` tile."""
        return 1 + rows * self.row_cycles(cols, layer)

    def elaborate(self, platform) -> Module:
        m = Module()
        m.submodules.divider = div = Divider(DIV_DIVIDEND_BITS, DIV_DIVISOR_BITS)
        m.submodules.isqrt = sqrt = ISqrt(RADICAND_BITS)
        ins = self.instr
        layer = ins.op == isa.MiscOp.LAYERNORM

        row = Signal(isa.DIM_BITS)
        col = Signal(isa.DIM_BITS)
        issuing = Signal()
        phase = Signal()  # LAYERNORM output pass: 0 reads x and gamma, 1 reads beta
        out_pass = Signal()
        s1 = Signal(signed(S1_BITS))
        s2 = Signal(unsigned(S2_BITS))
        mean = Signal(signed(X_BITS + 1))
        inv = Signal(INV_DIVIDEND_BITS)

        issue = Signal(Tag)
        beta_issue = Signal()
        x_issue = issuing & ~phase
        m.d.comb += [
            issue.valid.eq(x_issue), issue.out.eq(out_pass), issue.col.eq(col),
            issue.last.eq(col == ins.cols - 1), beta_issue.eq(issuing & phase),
            self.rd.en.eq(x_issue), self.rd.row.eq(row), self.rd.col.eq(col),
            self.prm.en.eq(issuing & out_pass),
            self.prm.index.eq(Mux(phase, ins.cols + col, col)),
        ]
        with m.If(issuing):
            with m.If(out_pass & layer & ~phase):
                m.d.sync += phase.eq(1)
            with m.Else():
                m.d.sync += [phase.eq(0), col.eq(col + 1)]
                with m.If(issue.last):
                    m.d.sync += issuing.eq(0)
        arrive = Tag(delay(m, issue, self.read_latency, "arrive"))
        beta_arrive = delay(m, beta_issue, self.read_latency, "beta_arrive")
        x = self.rd.data[:X_BITS].as_signed()

        tag_e = self._output_pipeline(m, arrive, beta_arrive, x, mean, inv, layer)
        m.d.comb += [self.wr.row.eq(row), self.wr.col.eq(tag_e.col)]

        def begin(out: int) -> list:
            return [col.eq(0), phase.eq(0), issuing.eq(1), out_pass.eq(out)]

        def divide(state: str, dividend, divisor, then: str, *result) -> None:
            with m.State(state):
                m.d.comb += [div.start.eq(1), div.dividend.eq(dividend), div.divisor.eq(divisor)]
                m.next = state + "_WAIT"
            with m.State(state + "_WAIT"):
                with m.If(div.done):
                    m.d.sync += list(result)
                    m.next = then

        centre = Signal(signed(S1_BITS + X_BITS + 3))
        with m.FSM() as fsm:
            with m.State("IDLE"):
                with m.If(self.start):
                    m.d.sync += [row.eq(0), s1.eq(0), s2.eq(0), *begin(0)]
                    m.next = "STATS"
            with m.State("STATS"):
                with m.If(arrive.valid):
                    m.d.sync += [s1.eq(s1 + x), s2.eq(s2 + x * x)]
                    with m.If(arrive.last):
                        m.d.sync += mean.eq(0)
                        with m.If(layer):
                            m.next = "MEAN"
                        with m.Else():
                            m.next = "MS"
            divide("MEAN", abs(s1), ins.cols, "CENTRE_1",
                   mean.eq(Mux(s1 >= 0, div.quotient,
                               -div.quotient - (div.remainder != 0))))
            with m.State("CENTRE_1"):
                m.d.sync += centre.eq(2 * s1 - ins.cols * mean)
                m.next = "CENTRE_2"
            with m.State("CENTRE_2"):
                m.d.sync += s2.eq(s2 - mean * centre)
                m.next = "MS"
            ms = Signal(MS_BITS)
            m.d.comb += ms.eq(div.quotient + ins.eps)
            divide("MS", s2, ins.cols, "SQRT")
            with m.State("SQRT"):
                m.d.comb += [sqrt.start.eq(1), sqrt.value.eq(ms << 16)]
                m.next = "SQRT_WAIT"
            with m.State("SQRT_WAIT"):
                with m.If(sqrt.done):
                    m.next = "INV"
            divide("INV", 1 << numerics.NORM_RSQRT_BITS, Mux(sqrt.root == 0, 1, sqrt.root),
                   "OUT", inv.eq(div.quotient), *begin(1))
            with m.State("OUT"):
                with m.If(tag_e.valid):
                    m.d.comb += self.wr.en.eq(1)
                    with m.If(tag_e.last):
                        m.d.sync += [row.eq(row + 1), s1.eq(0), s2.eq(0), out_pass.eq(0)]
                        with m.If(row == ins.rows - 1):
                            m.d.comb += self.done.eq(1)
                            m.next = "IDLE"
                        with m.Else():
                            m.d.sync += begin(0)
                            m.next = "STATS"
        m.d.comb += self.busy.eq(~fsm.ongoing("IDLE"))
        return m

    def _output_pipeline(self, m: Module, arrive, beta_arrive, x, mean, inv, layer):
        """x - mean -> t = rnd(xc * inv, 16) -> rnd(t * gamma, shift) -> + beta, sat."""
        ins = self.instr
        tag_b, tag_c, tag_d, tag_e = (Signal(Tag, name=f"tag_{s}") for s in "bcde")
        xc_b = Signal(signed(X_BITS + 2))
        g_b, g_c = Signal(signed(X_BITS), name="g_b"), Signal(signed(X_BITS), name="g_c")
        t_c = Signal(signed(len(xc_b) + len(inv) - numerics.NORM_T_SHIFT + 1))
        u_d = Signal(signed(len(t_c) + X_BITS))
        beta = Signal(signed(X_BITS))
        y_e = Signal(signed(len(self.wr.data)))
        m.d.sync += [
            tag_b.eq(Mux(arrive.out, arrive, 0)), tag_c.eq(tag_b), tag_d.eq(tag_c),
            tag_e.eq(tag_d),
            xc_b.eq(x - mean), g_b.eq(self.prm.data[:X_BITS].as_signed()), g_c.eq(g_b),
            t_c.eq(rnd_shift(xc_b * inv, numerics.NORM_T_SHIFT)),
            u_d.eq(rnd_shift(t_c * g_c, ins.shift)),
            y_e.eq(saturate(u_d + Mux(layer, beta, 0), ins.d_dt)),
        ]
        with m.If(beta_arrive):
            m.d.sync += beta.eq(self.prm.data[:X_BITS].as_signed())
        m.d.comb += self.wr.data.eq(y_e)
        return tag_e
