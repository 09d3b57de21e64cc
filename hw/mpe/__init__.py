"""The matrix processing engine (MPE): MM and MV, dense and N:M sparse, INT8/INT4 weights.

One component or builder per part (docs/rtl.md, "How the MPE computes"):

- :mod:`.control`: the instruction's fields and sizes, the loop over tiles and steps;
- :mod:`.fetch`: the buffer side, reads, weight/index staging and result writes;
- :mod:`.tile_buffer`: :class:`TileBuffer`, the activation tile, one RAM bank per tile row;
- :mod:`.operands`: activation windows per row, the per-chain mode multiplexer;
- :mod:`.chain`: :class:`DspChain`, the sparse DSP chain of one vector unit;
- :mod:`.epilogue`: group scaling, accumulation and requantisation per segment;
- :mod:`.engine`: :class:`MatrixEngine`, which wires them.
"""

from .chain import ACT_BITS, PROD_BITS, WGT_BITS, DspChain
from .engine import MatrixEngine

__all__ = ["ACT_BITS", "PROD_BITS", "WGT_BITS", "DspChain", "MatrixEngine"]
