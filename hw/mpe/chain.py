"""The sparse DSP chain: the dot-product engine of one vector processing unit.

A chain is ``groups`` DSP groups of two cascaded MACs. In front of every MAC a sparse
MUX picks one of ``window`` activations by the weight's index, so an N:M-sparse row
feeds each MAC one kept weight and the M-activation block it belongs to (a dense row
feeds window slot 0 with index 0). The reduction node at the end of each group either
passes the running sum down the cascade or cuts it, so one chain yields one dot product
or several shorter ones (``cut`` bit ``g`` ends a segment after group ``g``).

Pipeline: products are registered (the DSP's M register), then the cascade sum of each
segment is registered at its reduction node: ``out_valid`` follows ``valid`` by two
cycles. The cascade is written as an adder chain; the DSP48 PCIN/PCOUT skew of a
systolic implementation is not modelled.
"""

from __future__ import annotations

from amaranth import Module, Mux, Signal, signed, unsigned
from amaranth.lib import data, wiring
from amaranth.lib.wiring import In, Out

ACT_BITS = 8
WGT_BITS = 8  #: INT4 weights arrive sign-extended to INT8
PROD_BITS = ACT_BITS + WGT_BITS


def _check_pow2(name: str, value: object, low: int) -> int:
    if isinstance(value, bool) or not isinstance(value, int):
        raise TypeError(f"{name} must be an integer, not {value!r}")
    if value < low or value & (value - 1):
        raise ValueError(f"{name} must be a power of two of at least {low}, not {value!r}")
    return value


class DspChain(wiring.Component):
    """``groups`` DSP groups (``2 * groups`` MACs) with an M-way sparse MUX per MAC."""

    def __init__(self, groups: int, window: int) -> None:
        if isinstance(groups, bool) or not isinstance(groups, int):
            raise TypeError(f"groups must be an integer, not {groups!r}")
        if groups < 1:
            raise ValueError(f"groups must be at least 1, not {groups!r}")
        self.groups = groups
        self.window = _check_pow2("window", window, 2)
        self.macs = 2 * groups
        self.idx_bits = window.bit_length() - 1
        self.sum_bits = PROD_BITS + self.macs.bit_length()
        super().__init__(
            {
                "valid": In(1),
                "act": In(data.ArrayLayout(data.ArrayLayout(signed(ACT_BITS), window), self.macs)),
                "wgt": In(data.ArrayLayout(signed(WGT_BITS), self.macs)),
                "idx": In(data.ArrayLayout(unsigned(self.idx_bits), self.macs)),
                "cut": In(groups),
                "out_valid": Out(1),
                "sums": Out(data.ArrayLayout(signed(self.sum_bits), groups)),
            }
        )

    def elaborate(self, platform) -> Module:
        m = Module()
        prods = [Signal(signed(PROD_BITS), name=f"prod{i}") for i in range(self.macs)]
        cut = Signal(self.groups)
        valid = Signal()
        for i, p in enumerate(prods):
            picked = Signal(signed(ACT_BITS), name=f"mux{i}")  # the sparse MUX
            m.d.comb += picked.eq(self.act[i][self.idx[i]])
            m.d.sync += p.eq(picked * self.wgt[i])
        m.d.sync += [cut.eq(self.cut), valid.eq(self.valid), self.out_valid.eq(valid)]
        run = 0
        for g in range(self.groups):
            run = run + prods[2 * g] + prods[2 * g + 1]  # two cascaded MACs
            node = Signal(signed(self.sum_bits), name=f"node{g}")
            m.d.comb += node.eq(run)
            m.d.sync += self.sums[g].eq(node)
            run = Mux(cut[g], 0, node)  # the reduction node cuts or passes the cascade
        return m
