"""The LD and ST units' pipeline: the cycles they add to a transfer beyond the memory.

The RTL (``hw/memory_units.py``) is built to these numbers and the cycle model
(``sim/timing.py``) charges them, so the two agree by construction (as
:mod:`flightforge.mpe` does for the MPE). The external memory's own latency (the
config's ``hbm.latency_ns``) is what the RTL's memory model (``sim/bus_model.py``) waits
between a command and its first beat (LD), or between a command's last beat and its write
response (ST); a transfer then lasts ``latency + overhead + beats`` (plus the channel and
port terms of ``Timing.transfer``), where the overhead is the units' own pipeline:

- **setup** (:data:`SETUP_STAGES`): the instruction is latched, then its transfer shape
  is computed in registered steps (packed row bytes; whether the transfer is one span;
  ``rows * row_bytes`` in a registered DSP48E2 multiply; each command's burst count and
  the walk's counters) so that no step is a long carry chain;
- **issue**: the first command leaves in the cycle after the setup;
- **drain**: a LD writes each chunk :data:`LD_DRAIN_STAGES` cycles after the cycle in
  which its beat is on the bus (positions, realignment into the buffer port's registers,
  the write); a ST reads the buffer and realigns the bytes into a beat register before it
  sends the beat, :data:`ST_DRAIN_STAGES` cycles after the chunk is decided.
"""

from __future__ import annotations

#: Registered setup steps after the cycle that starts the unit (the instruction latch):
#: packed bits per row; packed bytes and ``rows * row_bytes``; whether the transfer is one
#: span and its packed bytes; the per-command burst counts and the walk's counters.
SETUP_STAGES = 4
#: Cycles from ``start`` to the first command (the setup, then the command is driven).
ISSUE_CYCLES = SETUP_STAGES + 1
#: LD: a chunk's position and buffer address; its bits shifted by the position's multiple
#: of 32 bits; the rest of the shift and the widening into the port registers; the write
#: (and ``done`` with the last one).
LD_DRAIN_STAGES = 4
#: ST: a chunk's position and buffer address; the buffer read (and the beat's byte
#: strobes of the chunk); the read bytes registered as they leave the buffer's port; the
#: bytes realigned and merged into the beat register; the beat on the bus.
ST_DRAIN_STAGES = 5

#: Cycles a LD adds to the memory's latency and its beats: issue, and the drain after
#: the cycle its last beat is on the bus.
LD_OVERHEAD = ISSUE_CYCLES + LD_DRAIN_STAGES
#: Cycles a ST adds to the memory's write latency and its chunks: the walk starts with
#: the command, its last beat leaves ``ST_DRAIN_STAGES`` cycles after its last chunk, and
#: ``done`` is the cycle of the last write response.
ST_OVERHEAD = ISSUE_CYCLES + ST_DRAIN_STAGES
