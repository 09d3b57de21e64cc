"""The compiler's one error type, shared by every stage.

Every stage (frontend, quantisation, lowering) raises :class:`CompileError` for a model
or program that cannot be compiled for the target as asked; the message names the node,
tensor, layer or buffer at fault. It lives apart from the stages so that none of them
imports another just to raise it.
"""

from __future__ import annotations


class CompileError(ValueError):
    """The model or program cannot be compiled for the target as asked."""
