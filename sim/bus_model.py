"""The external memory on the far side of the core's bus (:mod:`flightforge.hw.bus`),
with the cycle model's transfer timing (sim/timing.py), one clock edge at a time.

This is the reference of the memory model that runs next to the RTL: the Verilator
testbench (``sim/verilator/flightforge_tb_host.cpp``) is a line-for-line port of
:class:`ReadChannel` and :class:`WriteChannel`, and Amaranth's Python simulator drives
these classes directly (``benchmarks/rtl_speed.py``). Both call :meth:`step` once per
rising clock edge with the values the core drives just before the edge, and drive the
returned values during the next cycle, so the model is a synchronous circuit whichever
simulator runs it.

Timing (as ``Timing.transfer`` counts it; :func:`memory_timing` derives the numbers):

- read: a command's first beat is driven ``rd_latency`` cycles after the cycle in which
  the command was accepted, at the earliest, and not before the previous command's last
  beat was taken; beats then follow one per cycle while the core takes them. A command
  whose span runs over a channel boundary waits ``penalty`` cycles more per boundary
  (the request is split and re-issued). The data are read when the command is accepted.
- write: commands and beats are always taken; a command's response pulses
  ``wr_latency`` cycles after its last beat, plus ``penalty`` per channel boundary.

With a :class:`~flightforge.sim.dram_model.Dram` (``dram=``, the same object for both
channels) the timing is the independent memory's instead (sim/dram_model.py: banks, rows,
the DRAM bus, turnaround, refresh): a read beat is driven from the cycle its bursts have
arrived, and a write is answered when its last burst has been written; the channel map
is the config's and ``timing`` is not used.
"""

from __future__ import annotations

from collections import deque
from dataclasses import dataclass, field

from flightforge.arch import ArchConfig

from .device import DeviceError
from .dram_model import Dram
from .functional import ExternalMemory


@dataclass(frozen=True)
class MemoryTiming:
    """The memory model's numbers for one config (see the module docstring)."""

    rd_latency: int  #: cycles from a read command to its first beat, at the earliest
    wr_latency: int  #: cycles from a write command's last beat to its response
    penalty: int  #: extra cycles per channel boundary a command's span runs over
    channel_bytes: int  #: bytes per external-memory channel (linear channel map)


def memory_timing(arch: ArchConfig) -> MemoryTiming:
    """The external-memory model's timing for ``arch``, consistent with sim/timing.py:
    the memory waits the config's ``latency`` (a read's first beat after its command, a
    write's response after its last beat); a LD or ST of ``b`` beats then lasts
    ``latency + overhead + b`` cycles on the RTL, the overhead being the units' own
    pipeline (:mod:`flightforge.ldst`, ``Timing.ld_latency`` / ``st_latency``)."""
    from .timing import Q, timing_for

    t = timing_for(arch)
    if t.rate_q8 != arch.hbm.burst_bytes * Q:
        raise DeviceError(
            f"{arch.name}: the RTL memory model streams one {arch.hbm.burst_bytes}-byte "
            f"burst per cycle per channel, but the config's rate is "
            f"{t.rate_q8 / Q} bytes per cycle"
        )
    return MemoryTiming(
        rd_latency=t.latency,
        wr_latency=t.latency,
        penalty=t.penalty,
        channel_bytes=arch.hbm.channel_bytes,
    )


def crossings(addr: int, nbytes: int, channel_bytes: int) -> int:
    """Channel boundaries the byte span ``[addr, addr + nbytes)`` runs over."""
    return (addr + nbytes - 1) // channel_bytes - addr // channel_bytes


@dataclass
class _ReadCommand:
    first: int  #: earliest cycle of the first beat (before the crossing penalty)
    payload: bytes  #: the command's bytes, read when it was accepted
    beats: int
    crossings: int
    ready: list[int] | None = None  #: with a :class:`Dram`: each beat's first cycle


@dataclass
class ReadChannel:
    """The read channel: accepts every command, returns its beats in command order."""

    memory: ExternalMemory
    beat_bytes: int
    timing: MemoryTiming
    now: int = 0  #: the cycle whose end the next :meth:`step` is
    _pending: deque[_ReadCommand] = field(default_factory=deque)
    _current: _ReadCommand | None = None  #: the command whose beats are being driven
    _beat: int = 0  #: index of the beat being driven
    _free_at: int = 0  #: first cycle the data bus is free for the next command's beats
    #: the independent memory (sim/dram_model.py): beats come when its bursts do
    dram: Dram | None = None
    _driven: bool = False  #: a beat is driven in the current cycle

    def step(
        self, cmd_valid: bool, cmd_addr: int, cmd_beats: int, data_ready: bool
    ) -> tuple[bool, int]:
        """One rising edge; returns ``(data_valid, data)`` for the next cycle."""
        if self.dram is not None:
            return self._step_dram(cmd_valid, cmd_addr, cmd_beats, data_ready)
        t = self.timing
        if self._current is not None and data_ready:
            self._beat += 1
            if self._beat == self._current.beats:
                self._current = None
                self._free_at = self.now + 1
        if cmd_valid:
            nbytes = cmd_beats * self.beat_bytes
            payload = self.memory.read(cmd_addr, nbytes, "LD command").tobytes()
            self._pending.append(
                _ReadCommand(
                    self.now + t.rd_latency,
                    payload,
                    cmd_beats,
                    crossings(cmd_addr, nbytes, t.channel_bytes),
                )
            )
        self.now += 1
        if self._current is None and self._pending and self._pending[0].first <= self.now:
            head = self._pending[0]
            if max(head.first, self._free_at) + t.penalty * head.crossings <= self.now:
                self._current, self._beat = self._pending.popleft(), 0
        if self._current is None:
            return False, 0
        lo = self._beat * self.beat_bytes
        return True, int.from_bytes(self._current.payload[lo : lo + self.beat_bytes], "little")

    def _step_dram(
        self, cmd_valid: bool, cmd_addr: int, cmd_beats: int, data_ready: bool
    ) -> tuple[bool, int]:
        """:meth:`step` with the independent memory: beat ``i`` of the head command is
        driven from the cycle its bursts have arrived, once beat ``i - 1`` was taken."""
        if self._driven and data_ready:
            self._beat += 1
            if self._beat == self._current.beats:
                self._current = None
        if cmd_valid:
            nbytes = cmd_beats * self.beat_bytes
            payload = self.memory.read(cmd_addr, nbytes, "LD command").tobytes()
            ready = self.dram.read_beats(self.now, cmd_addr, cmd_beats, self.beat_bytes)
            self._pending.append(_ReadCommand(ready[0], payload, cmd_beats, 0, ready))
        self.now += 1
        if self._current is None and self._pending:
            self._current, self._beat = self._pending.popleft(), 0
        cur = self._current
        self._driven = cur is not None and cur.ready[self._beat] <= self.now
        if not self._driven:
            return False, 0
        lo = self._beat * self.beat_bytes
        return True, int.from_bytes(cur.payload[lo : lo + self.beat_bytes], "little")


@dataclass
class _WriteCommand:
    addr: int
    beats: int
    crossings: int
    received: int = 0
    next_atom: int = 0  #: with a :class:`Dram`: the first burst not yet written
    due: int = 0  #: with a :class:`Dram`: the cycle its last burst is answered


@dataclass
class WriteChannel:
    """The write channel: takes every command and beat, answers each command once.

    A response is due ``wr_latency`` (+ penalties) cycles after its command's last beat and
    pulses at the first edge at or after that cycle, in command order (a command with
    fewer boundaries cannot overtake an earlier one).
    """

    memory: ExternalMemory
    beat_bytes: int
    timing: MemoryTiming
    now: int = 0
    _commands: deque[_WriteCommand] = field(default_factory=deque)
    _responses: deque[int] = field(default_factory=deque)  #: cycles responses are due
    #: the independent memory (sim/dram_model.py), shared with the read channel
    dram: Dram | None = None

    def step(
        self, cmd_valid: bool, cmd_addr: int, cmd_beats: int, data_valid: bool, data: int, strb: int
    ) -> bool:
        """One rising edge; returns ``resp_valid`` for the next cycle."""
        t = self.timing
        if cmd_valid:
            self._commands.append(
                _WriteCommand(
                    cmd_addr,
                    cmd_beats,
                    crossings(cmd_addr, cmd_beats * self.beat_bytes, t.channel_bytes),
                )
            )
        if data_valid:
            if not self._commands:
                raise DeviceError(f"cycle {self.now}: a write beat without a command")
            c = self._commands[0]
            word = data.to_bytes(self.beat_bytes, "little")
            base = c.addr + c.received * self.beat_bytes
            for b in range(self.beat_bytes):
                if strb >> b & 1:
                    self.memory.write(base + b, word[b : b + 1], "ST beat")
            c.received += 1
            if self.dram is not None:
                self._write_bursts(c)
            if c.received == c.beats:
                self._commands.popleft()
                if self.dram is None:
                    self._responses.append(self.now + t.wr_latency + t.penalty * c.crossings)
                else:  # answered in command order
                    self._responses.append(max([c.due, *list(self._responses)[-1:]]))
        self.now += 1
        if self._responses and self._responses[0] <= self.now:
            self._responses.popleft()
            return True
        return False

    def _write_bursts(self, c: _WriteCommand) -> None:
        """Write every DRAM burst of ``c`` whose bytes have all arrived (the last beat
        completes the command's last, partial burst)."""
        a = self.dram.t.atom_bytes
        if c.received == 1:
            c.next_atom = c.addr // a * a
        sent = c.addr + c.received * self.beat_bytes
        while c.next_atom + a <= sent or (c.received == c.beats and c.next_atom < sent):
            c.due = max(c.due, self.dram.write_atom(self.now, c.next_atom))
            c.next_atom += a
