"""RTL of the special-function unit: one lane-parallel pipeline per operation family
(element-wise and tables, RoPE, softmax, the two norms), bit-exact with
flightforge.numerics and cycle-exact with the cycle model, run by
:class:`.unit.SpecialFunctionUnit` (docs/rtl.md).
"""

from .divider import Divider, ISqrt

__all__ = ["Divider", "ISqrt"]
