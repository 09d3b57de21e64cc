"""Port signatures shared by the core's blocks: buffer ports and the external-memory bus.

Buffer port (``width`` bytes per access at any byte address; every user has its own
port on :class:`flightforge.hw.buffers.Buffer` and is granted at once): a requester
drives ``req``, ``addr``, ``we``, ``wdata`` (and ``strb``) and keeps them until
``grant``; a granted read returns its bytes on ``rdata`` in the next cycle.

External memory (AXI-like, split read and write channels, one beat is ``beat_bytes``
bytes, addresses are beat-aligned byte addresses):

- read: the core sends ``cmd_addr``/``cmd_beats`` with ``cmd_valid`` until ``cmd_ready``;
  memory then returns exactly ``cmd_beats`` beats on ``data`` with ``data_valid``, each
  taken in a cycle where the core holds ``data_ready``. Beat ``i`` is the bytes
  ``cmd_addr + i*beat_bytes ..``, byte 0 in bits 0..7 (little-endian).
- write: the same command, then ``cmd_beats`` beats on ``data``/``strb`` with
  ``data_valid``. Only bytes whose ``strb`` bit is set are written. The store unit sends
  one beat per cycle and expects memory to take it (``data_ready`` high whenever the
  core sends; an AXI write-data FIFO). Memory pulses ``resp_valid`` once per command
  when its data is written (AXI's B channel), in command order.

Commands are pipelined: the core issues the commands of one transfer back to back (one
per cycle) and memory returns the beats of successive read commands in order, so the
memory latency is paid once per transfer.
"""

from __future__ import annotations

from amaranth.lib import wiring
from amaranth.lib.wiring import In, Out

#: Width of a burst length in beats: a row of up to 2**ROW_BYTES_BITS bytes, unaligned.
BEATS_BITS = 21


class BufPortSignature(wiring.Signature):
    """A port of ``width`` bytes on an on-chip buffer (requester side).

    Byte ``i`` of ``wdata``/``rdata`` is buffer byte ``addr + i``; ports wider than one
    byte have ``strb`` (byte enables of a write)."""

    def __init__(self, addr_bits: int, width: int = 1) -> None:
        if not isinstance(addr_bits, int) or isinstance(addr_bits, bool):
            raise TypeError(f"addr_bits must be an integer, not {addr_bits!r}")
        if addr_bits < 1:
            raise ValueError(f"addr_bits must be at least 1, not {addr_bits!r}")
        if not isinstance(width, int) or isinstance(width, bool) or width < 1:
            raise ValueError(f"width must be a positive integer, not {width!r}")
        members = {
            "req": Out(1),
            "we": Out(1),
            "addr": Out(addr_bits),
            "wdata": Out(8 * width),
            "grant": In(1),
            "rdata": In(8 * width),
        }
        if width > 1:
            members["strb"] = Out(width)
        super().__init__(members)


class MemReadSignature(wiring.Signature):
    """External-memory read channel (core side)."""

    def __init__(self, addr_bits: int, beat_bytes: int) -> None:
        super().__init__(
            {
                "cmd_valid": Out(1),
                "cmd_ready": In(1),
                "cmd_addr": Out(addr_bits),
                "cmd_beats": Out(BEATS_BITS),
                "data_valid": In(1),
                "data_ready": Out(1),
                "data": In(8 * beat_bytes),
            }
        )


class MemWriteSignature(wiring.Signature):
    """External-memory write channel (core side)."""

    def __init__(self, addr_bits: int, beat_bytes: int) -> None:
        super().__init__(
            {
                "cmd_valid": Out(1),
                "cmd_ready": In(1),
                "cmd_addr": Out(addr_bits),
                "cmd_beats": Out(BEATS_BITS),
                "data_valid": Out(1),
                "data_ready": In(1),
                "data": Out(8 * beat_bytes),
                "strb": Out(beat_bytes),
                "resp_valid": In(1),
            }
        )
