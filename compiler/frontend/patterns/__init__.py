"""The ONNX pattern families, one module each, and the order their rules are tried in.

Each module holds small rules (:class:`~..interpreter.Rule`): a ``pattern`` on the input
tags, a ``check`` that returns why a node of that shape is still not the pattern, and a
``rewrite`` to the output tags. For every op, rules are tried family by family in
:data:`FAMILIES` order, then in their module's order; the first whose pattern matches
decides. The families' patterns for one op exclude each other except where the order
says otherwise: a reshape keeps a pending projection or attention scores before it makes
a view, and a norm, a rotary or a learned-position rule claims a binary node before it is
read as a generic elementwise function or a residual add.
"""

from __future__ import annotations

from ..interpreter import register
from . import attention, elementwise, embedding, fused, norm, projection, rope, views

FAMILIES = (projection, attention, norm, views, rope, embedding, elementwise, fused)

for _family in FAMILIES:
    register(_family.RULES)
