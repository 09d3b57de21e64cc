"""RTL of the special-function unit's row operations, bit-exact with flightforge.numerics.

One component per operation family (softmax, the two norms, table lookups, RoPE),
built from shared sequential arithmetic (:class:`Divider`, :class:`ISqrt`) and the
element-port conventions of :mod:`.common`, run by :class:`.unit.SpecialFunctionUnit`
(docs/rtl.md).
"""

from .common import ElemReadSignature, ElemWriteSignature, MiscFields, ParamReadSignature
from .divider import Divider, ISqrt

__all__ = ["Divider", "ISqrt", "ElemReadSignature", "ElemWriteSignature", "MiscFields",
           "ParamReadSignature"]
