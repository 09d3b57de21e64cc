"""The sparse DSP chain: the dot-product engine of one vector processing unit.

A chain is ``groups`` DSP48E2 slices (:class:`DspSlice`) in one PCOUT->PCIN cascade,
each making two INT8 multiplies that share one weight (two lanes: two rows of an MM
tile; an MV tile leaves the high lane at zero), packed as AMD WP487 describes (constants
and latency in :mod:`flightforge.mpe`). In front of every slice two sparse MUXes pick,
by the weight's index, one of ``window`` activations of each lane's row.

Systolic skew: slice ``g`` takes its operands ``g`` cycles after slice 0 (delay lines
without reset, which Yosys maps to SRL16 shift registers), so that the P it adds from
slice ``g - 1`` holds the same step. The reduction node behind slice ``g`` is the next
slice's zero-select of PCIN (``cut`` bit ``g``); a chain also cuts itself every
:data:`~flightforge.mpe.RUN` slices, where a lane could otherwise overflow its field.
The lane sums are read at the odd slices (every segment, scale group and run ends at
one) and delayed to the last slice's time: ``sums[h]`` (slice ``2h + 1``) of a step are
valid ``chain_latency(groups)`` cycles after its operands, with ``out_valid``.
"""

from __future__ import annotations

from amaranth import ClockSignal, Const, Instance, Module, Mux, Signal, signed, unsigned
from amaranth.lib import data, wiring
from amaranth.lib.wiring import In, Out

from flightforge import mpe as sched

ACT_BITS = 8
WGT_BITS = 8  #: INT4 weights arrive sign-extended to INT8
PROD_BITS = ACT_BITS + WGT_BITS
LANES = 2  #: INT8 multiplies per DSP48E2 (WP487 packing)
P_BITS = 48


def _check_pow2(name: str, value: object, low: int) -> int:
    if isinstance(value, bool) or not isinstance(value, int):
        raise TypeError(f"{name} must be an integer, not {value!r}")
    if value < low or value & (value - 1):
        raise ValueError(f"{name} must be a power of two of at least {low}, not {value!r}")
    return value


def delay(m: Module, value, cycles: int, name: str):
    """``value`` ``cycles`` cycles later, through registers without reset (SRL-mappable)."""
    for t in range(cycles):
        r = Signal.like(value, name=f"{name}_{t}", reset_less=True)
        m.d.sync += r.eq(value)
        value = r
    return value


class DspSlice(wiring.Component):
    """One DSP48E2 as the chain configures it: ``P = (A + D) * B + (zero ? 0 : PCIN)``.

    A, D and B are registered (AREG = DREG = 1, BREG = 2 to meet the pre-adder's AD
    register), then AD, M and P (ADREG = MREG = PREG = 1): P holds the product of the
    operands of four cycles before. ``zero`` is the Z multiplexer's select (OPMODE Z =
    0 instead of PCIN) and takes effect with the M of the same operands.

    ``primitive=False`` (simulation, Verilator) builds the slice from Amaranth
    arithmetic in the DSP48E2's own stages; ``primitive=True`` (synthesis) instantiates
    the DSP48E2 with those registers, INMODE ``D + A2`` and a dynamic OPMODE, because
    Yosys' ``xilinx_dsp`` infers neither the pre-adder nor a cascade whose Z input is
    switched at run time (tried: it kept the adders and the zero-select in fabric).
    """

    #: DSP48E2 attributes of the configuration (UG579): registers and multiplier inputs.
    ATTRS = dict(
        A_INPUT="DIRECT", B_INPUT="DIRECT", AMULTSEL="AD", BMULTSEL="B", PREADDINSEL="A",
        USE_MULT="MULTIPLY", USE_SIMD="ONE48", AREG=1, ACASCREG=1, BREG=2, BCASCREG=2,
        DREG=1, ADREG=1, MREG=1, PREG=1, CREG=0, INMODEREG=0, OPMODEREG=1, ALUMODEREG=0,
        CARRYINREG=0, CARRYINSELREG=0,
    )  # fmt: skip
    INMODE_D_PLUS_A2 = 0b00100
    OPMODE_M = 0b00_000_01_01  #: X = Y = M, Z = 0
    OPMODE_PCIN = 0b00_001_00_00  #: Z = PCIN

    def __init__(self, primitive: bool = False) -> None:
        self.primitive = primitive
        super().__init__(
            {
                "a": In(signed(27)),  # the high lane's activation, shifted (A port, pre-adder)
                "d": In(signed(27)),  # the low lane's activation (D port)
                "b": In(signed(18)),  # the shared weight
                "zero": In(1),
                "pcin": In(signed(P_BITS)),
                "p": Out(signed(P_BITS)),
                "pcout": Out(signed(P_BITS)),
            }
        )

    def elaborate(self, platform) -> Module:
        m = Module()
        zero = delay(m, self.zero, 2, "zero")  # the OPMODE register is the third stage
        if self.primitive:
            opmode = Signal(9)  # W = 0, Z = PCIN or 0, Y = X = M
            m.d.comb += opmode.eq(Mux(zero, self.OPMODE_M, self.OPMODE_M | self.OPMODE_PCIN))
            a30 = Signal(signed(30))  # the A port, sign-extended
            m.d.comb += a30.eq(self.a)
            m.submodules.dsp = Instance(
                "DSP48E2",
                **{f"p_{k}": v for k, v in self.ATTRS.items()},
                i_CLK=ClockSignal(),
                **{f"i_CE{r}": 1 for r in ("A1", "A2", "B1", "B2", "D", "AD", "M", "P")},
                **{f"i_CE{r}": 1 for r in ("C", "CTRL", "INMODE", "ALUMODE", "CARRYIN")},
                **{f"i_RST{r}": 0 for r in ("A", "B", "C", "D", "M", "P", "CTRL")},
                **{f"i_RST{r}": 0 for r in ("INMODE", "ALUMODE", "ALLCARRYIN")},
                i_A=a30,
                i_B=self.b,
                i_C=0,
                i_D=self.d,
                i_INMODE=self.INMODE_D_PLUS_A2,
                i_OPMODE=opmode,
                i_ALUMODE=0,
                i_CARRYIN=0,
                i_CARRYINSEL=0,
                i_PCIN=self.pcin,
                i_ACIN=0,
                i_BCIN=0,
                i_CARRYCASCIN=0,
                i_MULTSIGNIN=0,
                o_P=self.p,
                o_PCOUT=self.pcout,
            )
            return m
        a, d, b1 = (
            Signal.like(v, name=f"{v.name}_r", reset_less=True) for v in (self.a, self.d, self.b)
        )
        ad = Signal(signed(27), reset_less=True)
        b2 = Signal.like(self.b, reset_less=True)
        mreg = Signal(signed(45), reset_less=True)
        zreg = Signal(reset_less=True)
        m.d.sync += [
            a.eq(self.a),
            d.eq(self.d),
            b1.eq(self.b),
            ad.eq(a + d),
            b2.eq(b1),
            mreg.eq(ad * b2),
            zreg.eq(zero),
            self.p.eq(mreg + Mux(zreg, 0, self.pcin)),
        ]
        m.d.comb += self.pcout.eq(self.p)
        return m


def lane_sums(p):
    """The (low, high) lane sums packed in a slice's P: the low field, read in
    ``[-LANE_MAX + ..., LANE_MAX]``, and the rest plus the borrow the low sum left."""
    low = p[: sched.LANE_SHIFT]
    neg = low > sched.LANE_MAX
    lo = Mux(neg, low - (1 << sched.LANE_SHIFT), low)
    hi = (p >> sched.LANE_SHIFT) + neg
    return lo, hi


class DspChain(wiring.Component):
    """``groups`` DSP48E2 slices (``2 * groups`` INT8 MACs in two lanes) in one cascade,
    with a sparse MUX per MAC; ``idx`` and ``wgt`` are shared by a slice's lanes."""

    def __init__(self, groups: int, window: int, primitive: bool = False) -> None:
        if isinstance(groups, bool) or not isinstance(groups, int):
            raise TypeError(f"groups must be an integer, not {groups!r}")
        if groups < 2 or groups % 2:
            raise ValueError(f"groups must be even and at least 2, not {groups!r}")
        self.groups = groups
        self.primitive = primitive  # DSP48E2 instances (synthesis) or their model
        self.window = _check_pow2("window", window, 2)
        self.macs = LANES * groups
        self.idx_bits = window.bit_length() - 1
        self.sum_bits = sched.LANE_SUM_BITS
        self.latency = sched.chain_latency(groups)
        act = data.ArrayLayout(signed(ACT_BITS), window)
        super().__init__(
            {
                "valid": In(1),
                "act": In(data.ArrayLayout(data.ArrayLayout(act, LANES), groups)),
                "wgt": In(data.ArrayLayout(signed(WGT_BITS), groups)),
                "idx": In(data.ArrayLayout(unsigned(self.idx_bits), groups)),
                "cut": In(groups),
                "out_valid": Out(1),
                "sums": Out(
                    data.ArrayLayout(data.ArrayLayout(signed(self.sum_bits), LANES), groups // 2)
                ),
            }
        )

    def elaborate(self, platform) -> Module:
        m = Module()
        pcin = Const(0, signed(P_BITS))
        for g in range(self.groups):
            m.submodules[f"dsp{g}"] = dsp = DspSlice(self.primitive)
            lo, hi = (self.act[g][lane][self.idx[g]] for lane in range(LANES))  # sparse MUXes
            m.d.comb += [
                dsp.d.eq(delay(m, lo, g, f"lo{g}")),
                dsp.a.eq(delay(m, hi, g, f"hi{g}") << sched.LANE_SHIFT),
                dsp.b.eq(delay(m, self.wgt[g], g, f"w{g}")),
                dsp.pcin.eq(pcin),
                # the reduction node before slice g: a cut, or the end of a lane run
                dsp.zero.eq(
                    delay(m, self.cut[g - 1], g, f"cut{g}") | (g % sched.RUN == 0) if g else 1
                ),
            ]
            pcin = dsp.pcout
            if g % 2:
                sums = Signal.like(self.sums[g // 2], name=f"lanes{g}", reset_less=True)
                m.d.sync += [sums[lane].eq(v) for lane, v in enumerate(lane_sums(dsp.p))]
                m.d.comb += self.sums[g // 2].eq(delay(m, sums, self.groups - 1 - g, f"sk{g}"))
        m.d.comb += self.out_valid.eq(delay(m, self.valid, self.latency, "valid"))
        return m
