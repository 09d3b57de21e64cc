"""The host link's byte protocol: one definition for the board SoC's RTL
(:mod:`flightforge.hw.soc`) and the host driver (:mod:`flightforge.sim.board`).

Every exchange is one command from the host and one reply from the SoC, in order:

- command: an opcode byte (:class:`Op`), then its header fields (:data:`HEADER`, each
  little-endian), then for ``PROGRAM`` ``count`` instructions of ``isa.INSTR_BYTES`` and
  for ``WRITE`` ``size`` data bytes;
- reply: a status byte (:class:`Status`, 0 when all went well), then for ``IDENT``
  :data:`IDENT_BYTES` (the first 4 bytes of the SoC's config digest and log2 of its
  on-chip memory size), for ``READ`` with status 0 the ``size`` bytes, for ``RUN`` the
  section's cycles in :data:`CYCLE_BYTES` (from the edge that takes ``start`` to the
  one at which ``halted`` rises).

A command whose range lies outside the on-chip memory or the instruction buffer is
answered with ``Status.RANGE`` after its data bytes were consumed (and dropped), so the
stream stays in step. ``RUN`` waits for the section's HALT: a program that never halts
leaves the SoC busy until the board is reset (the core has no abort).
"""

from __future__ import annotations

import enum

from . import isa


class Op(enum.IntEnum):
    """Command opcodes (ASCII letters, so a byte dump reads)."""

    IDENT = ord("I")  #: which SoC is this: config digest, memory size
    PROGRAM = ord("P")  #: write ``count`` instructions into the instruction buffer at ``index``
    WRITE = ord("W")  #: write ``size`` bytes to on-chip memory at ``addr``
    READ = ord("R")  #: read ``size`` bytes of on-chip memory at ``addr``
    RUN = ord("X")  #: run the loaded section with the length register at ``d``


class Status(enum.IntFlag):
    """Reply status bits."""

    ILLEGAL = 1  #: the core decoded an illegal instruction (RUN)
    TOKEN_ERROR = 2  #: the section reached HALT with unconsumed tokens (RUN)
    MEM_FAULT = 4  #: the core accessed bytes outside the on-chip memory (RUN)
    RANGE = 8  #: the command's range lies outside the memory or instruction buffer
    OPCODE = 16  #: unknown opcode
    FRAME = 32  #: the UART saw a byte without its stop bit since the last reply


#: Header fields of each command: (name, bytes), in wire order.
HEADER: dict[Op, tuple[tuple[str, int], ...]] = {
    Op.IDENT: (),
    Op.PROGRAM: (("index", 2), ("count", 2)),
    Op.WRITE: (("addr", 4), ("size", 4)),
    Op.READ: (("addr", 4), ("size", 4)),
    Op.RUN: (("d", (isa.DIM_BITS + 7) // 8),),
}
#: The link's baud rate unless told otherwise: a whole divisor of the ULX3S's 25 MHz
#: (25 cycles a bit), well within its FT231X bridge's 3 Mbaud.
DEFAULT_BAUD = 1_000_000
HEADER_BYTES_MAX = max(sum(n for _, n in fields) for fields in HEADER.values())
CYCLE_BYTES = 6  #: the RUN reply's cycle count
DIGEST_BYTES = 4  #: the config digest prefix in the IDENT reply
IDENT_BYTES = DIGEST_BYTES + 1


def header_bytes(op: Op) -> int:
    return sum(n for _, n in HEADER[op])


def encode(op: Op, **fields: int) -> bytes:
    """The opcode and header of one command (data bytes follow separately)."""
    out = bytearray([op])
    for name, n in HEADER[op]:
        value = fields[name]
        if not 0 <= value < 1 << (8 * n):
            raise ValueError(f"{op.name} field {name!r}: {value} does not fit in {n} bytes")
        out += value.to_bytes(n, "little")
    return bytes(out)
