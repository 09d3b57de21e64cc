"""The board SoC: one :class:`~flightforge.hw.core.Core`, an on-chip stand-in for its
external memory and a UART host link speaking :mod:`flightforge.link`'s protocol.

On-chip-only configuration: a small board's SDRAM needs a controller this flow does not
have yet, so the core's external-memory bus (:mod:`.bus`) is served by one block memory
of ``mem_bytes`` (a power of two, one ``hbm.burst_bytes`` beat per word, one read and
one write port: EBR/BRAM as the FPGA has them). A small model's weights, KV cache,
inputs and outputs must fit in it; the host writes and reads it through the link while
the core is idle. Its timing is not the mapping's external-memory model: a read
command's beats start two cycles after it is taken, one per cycle, one command at a
time; write commands wait in a four-entry queue and are answered one cycle after their
last beat. The cycle counts the SoC reports are therefore the board's, not the cycle
model's. A core access past ``mem_bytes`` sets ``Status.MEM_FAULT`` (writes there are
dropped, reads return wrapped data), which the RUN reply carries.
"""

from __future__ import annotations

from amaranth import Cat, Const, Module, Mux, Signal
from amaranth.lib import wiring
from amaranth.lib.fifo import SyncFIFO
from amaranth.lib.memory import Memory
from amaranth.lib.wiring import In, Out

from flightforge import isa, link
from flightforge.arch import ArchConfig
from flightforge.link import Op, Status

from .controller import IMEM_DEPTH
from .core import Core
from .memory_units import _beat_bytes
from .uart import UartRx, UartTx

assert link.HEADER[Op.READ] == link.HEADER[Op.WRITE], "EXEC decodes both alike"

#: Write commands the on-chip memory queues ahead of their beats.
WRITE_QUEUE = 4


def check_mem_bytes(arch: ArchConfig, mem_bytes: int) -> int:
    """``mem_bytes`` as validated: a power of two of whole beats, addressable by the
    link's 32-bit fields and the core's addresses."""
    beat = _beat_bytes(arch)
    if (
        not isinstance(mem_bytes, int)
        or isinstance(mem_bytes, bool)
        or mem_bytes < beat
        or mem_bytes & (mem_bytes - 1)
        or mem_bytes > min(1 << 32, 1 << isa.EXT_ADDR_BITS, arch.hbm.capacity)
    ):
        raise ValueError(
            f"on-chip memory of {mem_bytes!r} bytes: must be a power of two of at least "
            f"one {beat}-byte beat and at most the target's {arch.hbm.capacity} bytes"
        )
    return mem_bytes


class Soc(wiring.Component):
    """Core + on-chip memory + UART link (``rx``/``tx``: the USB bridge's two wires)."""

    def __init__(self, arch: ArchConfig, mem_bytes: int, divisor: int) -> None:
        self.arch = arch
        self.mem_bytes = check_mem_bytes(arch, mem_bytes)
        self.divisor = divisor
        super().__init__({"rx": In(1, init=1), "tx": Out(1, init=1)})

    def elaborate(self, platform) -> Module:
        m = Module()
        m.submodules.core = core = Core(self.arch)
        m.submodules.urx = urx = UartRx(self.divisor)
        m.submodules.utx = utx = UartTx(self.divisor)
        m.d.comb += [urx.rx.eq(self.rx), self.tx.eq(utx.tx)]
        beat = _beat_bytes(self.arch)
        lw = (beat - 1).bit_length()
        words = self.mem_bytes // beat
        m.submodules.mem = mem = Memory(shape=8 * beat, depth=words, init=[])
        rp = mem.read_port()
        wp = mem.write_port(granularity=8)
        running = Signal()
        fault = Signal()
        with m.If(running):
            self._read_channel(m, core.mem_rd, rp, lw, fault)
            self._write_channel(m, core.mem_wr, wp, lw, fault)
        self._host(m, core, urx, utx, rp, wp, lw, running, fault)
        return m

    def _oob(self, m: Module, addr, beats, lw: int) -> Signal:
        """A command whose bytes run past the on-chip memory."""
        end = Signal(isa.EXT_ADDR_BITS + 2)
        m.d.comb += end.eq(addr + (beats << lw))
        return end > self.mem_bytes

    def _read_channel(self, m: Module, ch, rp, lw: int, fault: Signal) -> None:
        """One command at a time; a beat a cycle while the core takes them."""
        left = Signal.like(ch.cmd_beats)
        ptr = Signal.like(rp.addr)
        valid = Signal()
        m.d.comb += [ch.cmd_ready.eq(left == 0), ch.data_valid.eq(valid), ch.data.eq(rp.data)]
        with m.If(ch.cmd_valid & (left == 0)):
            m.d.sync += [ptr.eq(ch.cmd_addr[lw:]), left.eq(ch.cmd_beats)]
            with m.If(self._oob(m, ch.cmd_addr, ch.cmd_beats, lw)):
                m.d.sync += fault.eq(1)
        with m.If(~valid | ch.data_ready):
            m.d.sync += valid.eq(left != 0)
            with m.If(left != 0):
                m.d.comb += [rp.en.eq(1), rp.addr.eq(ptr)]
                m.d.sync += [ptr.eq(ptr + 1), left.eq(left - 1)]
        with m.Else():
            m.d.comb += rp.en.eq(0)

    def _write_channel(self, m: Module, ch, wp, lw: int, fault: Signal) -> None:
        """Commands queue (the store unit sends beats without waiting for ``cmd_ready``,
        but never before their command); each beat goes to the queue's head."""
        aw, bw = len(wp.addr), len(ch.cmd_beats)
        m.submodules.wr_queue = q = SyncFIFO(width=aw + bw + 1, depth=WRITE_QUEUE)
        m.d.comb += [
            ch.cmd_ready.eq(q.w_rdy),
            ch.data_ready.eq(1),
            q.w_en.eq(ch.cmd_valid),
            q.w_data.eq(
                Cat(
                    ch.cmd_addr[lw:][:aw], ch.cmd_beats, self._oob(m, ch.cmd_addr, ch.cmd_beats, lw)
                )
            ),
        ]
        with m.If(ch.cmd_valid & self._oob(m, ch.cmd_addr, ch.cmd_beats, lw)):
            m.d.sync += fault.eq(1)
        h_addr, h_beats, h_bad = q.r_data[:aw], q.r_data[aw : aw + bw], q.r_data[-1]
        count = Signal(bw)
        m.d.sync += ch.resp_valid.eq(0)
        with m.If(ch.data_valid):
            with m.If(~q.r_rdy):  # a beat before its command: the bus protocol broken
                m.d.sync += fault.eq(1)
            with m.Else():
                m.d.comb += [
                    wp.addr.eq(h_addr + count),
                    wp.data.eq(ch.data),
                    wp.en.eq(Mux(h_bad, 0, ch.strb)),
                ]
                with m.If(count == h_beats - 1):
                    m.d.comb += q.r_en.eq(1)
                    m.d.sync += [count.eq(0), ch.resp_valid.eq(1)]
                with m.Else():
                    m.d.sync += count.eq(count + 1)

    def _host(self, m, core, urx, utx, rp, wp, lw, running, fault) -> None:
        """The link's command engine (:mod:`flightforge.link`)."""
        op = Signal(8)
        hdr = Signal(8 * link.HEADER_BYTES_MAX)
        hcnt = Signal(range(link.HEADER_BYTES_MAX + 1))
        addr, size = Signal(33), Signal(33)
        status = Signal(8)
        frame = Signal()  # a framing error since the last reply
        word = Signal(isa.INSTR_BITS)
        bcnt = Signal(range(isa.INSTR_BYTES))
        commit = Signal()
        # Reply bytes: a shift register sent LSB first; `then_read` streams READ's data.
        out = Signal(8 * (1 + max(link.CYCLE_BYTES, link.IDENT_BYTES)))
        nout = Signal(range(len(out) // 8 + 1))
        then_read = Signal()
        cycles = Signal(8 * link.CYCLE_BYTES)
        tx_byte, tx_pend = Signal(8), Signal()
        run_d = Signal(isa.DIM_BITS)  # the length register, held while the section runs
        m.d.comb += core.run_d.eq(run_d)
        m.d.comb += [utx.data.eq(tx_byte), utx.valid.eq(tx_pend)]
        with m.If(utx.ready & tx_pend):
            m.d.sync += tx_pend.eq(0)
        with m.If(urx.frame_error):
            m.d.sync += frame.eq(1)
        m.d.comb += [core.imem_wdata.eq(word), core.imem_addr.eq(addr)]
        m.d.sync += commit.eq(0)
        with m.If(commit & ~status[3]):  # Status.RANGE: drop the instruction
            m.d.comb += core.imem_we.eq(1)
            m.d.sync += addr.eq(addr + 1)
        fields = {o: {} for o in Op}
        for o in Op:
            pos = 0
            for name, n in link.HEADER[o]:
                fields[o][name] = hdr[8 * pos : 8 * (pos + n)]
                pos += n

        def reply(extra=None, nbytes: int = 0) -> None:
            st = status | Mux(frame, Status.FRAME, 0)
            body = st[:8] if extra is None else Cat(st[:8], extra)
            m.d.sync += [out.eq(body), nout.eq(1 + nbytes), frame.eq(0)]
            m.d.sync += status.eq(st)  # READ's data follow only a status of 0
            m.next = "SEND"

        with m.FSM():
            with m.State("IDLE"):
                with m.If(urx.valid):
                    m.d.sync += [op.eq(urx.data), hcnt.eq(0), status.eq(0), then_read.eq(0)]
                    m.next = "HEADER"
            with m.State("HEADER"):
                with m.Switch(op):
                    for o in Op:
                        with m.Case(o):
                            n = link.header_bytes(o)
                            with m.If(hcnt == n):
                                m.next = "EXEC"
                            with m.Elif(urx.valid):
                                m.d.sync += [
                                    hdr.word_select(hcnt, 8).eq(urx.data),
                                    hcnt.eq(hcnt + 1),
                                ]
                    with m.Default():
                        m.d.sync += status.eq(Status.OPCODE)
                        m.next = "REPLY"
            with m.State("REPLY"):
                reply()
            with m.State("EXEC"):
                regs = (run_d, cycles, fault)
                self._exec(m, op, fields, addr, size, status, then_read, core, regs, reply)
            with m.State("WRITE"):
                with m.If(size == 0):
                    m.next = "REPLY"
                with m.Elif(urx.valid):
                    with m.If(~status[3]):
                        sel = Const(1, 1 << lw) << addr[:lw] if lw else Const(1, 1)
                        m.d.comb += [
                            wp.addr.eq(addr[lw:]),
                            wp.data.eq(urx.data.replicate(len(wp.data) // 8)),
                            wp.en.eq(sel),
                        ]
                    m.d.sync += [addr.eq(addr + 1), size.eq(size - 1)]
            with m.State("PROGRAM"):
                with m.If((size == 0) & ~commit):
                    m.next = "REPLY"
                with m.Elif(urx.valid):
                    m.d.sync += [word.word_select(bcnt, 8).eq(urx.data), bcnt.eq(bcnt + 1)]
                    with m.If(bcnt == isa.INSTR_BYTES - 1):
                        m.d.sync += [bcnt.eq(0), commit.eq(1), size.eq(size - 1)]
            with m.State("RUN"):
                m.d.comb += running.eq(1)
                with m.If(core.halted):
                    m.d.sync += status.eq(
                        Mux(core.illegal, Status.ILLEGAL, 0)
                        | Mux(core.token_error, Status.TOKEN_ERROR, 0)
                        | Mux(fault, Status.MEM_FAULT, 0)
                    )
                    m.next = "RUN_REPLY"
                with m.Else():
                    m.d.sync += cycles.eq(cycles + 1)
            with m.State("RUN_REPLY"):
                reply(cycles, link.CYCLE_BYTES)
            with m.State("SEND"):
                with m.If(~tx_pend & (nout != 0)):
                    m.d.sync += [
                        tx_byte.eq(out[:8]),
                        tx_pend.eq(1),
                        out.eq(out >> 8),
                        nout.eq(nout - 1),
                    ]
                with m.Elif(nout == 0):
                    m.next = "IDLE"
                    with m.If(then_read & (status == 0) & (size != 0)):
                        m.next = "READ"
            with m.State("READ"):
                m.d.comb += [rp.en.eq(1), rp.addr.eq(addr[lw:])]
                m.next = "READ_SEND"
            with m.State("READ_SEND"):
                m.d.comb += [rp.en.eq(1), rp.addr.eq(addr[lw:])]  # hold the word read
                with m.If(~tx_pend):
                    m.d.sync += [
                        tx_byte.eq(rp.data.word_select(addr[:lw], 8) if lw else rp.data),
                        tx_pend.eq(1),
                        addr.eq(addr + 1),
                        size.eq(size - 1),
                    ]
                    m.next = "READ"
                    with m.If(size == 1):
                        m.next = "IDLE"

    def _exec(self, m, op, fields, addr, size, status, then_read, core, regs, reply) -> None:
        """Act on a command whose header is complete."""
        mem, imem = self.mem_bytes, IMEM_DEPTH
        run_d, cycles, fault = regs
        with m.Switch(op):
            with m.Case(Op.IDENT):
                ident = int.from_bytes(self.arch.digest()[: link.DIGEST_BYTES], "little")
                log2 = (self.mem_bytes - 1).bit_length()
                reply(
                    Const(ident | log2 << 8 * link.DIGEST_BYTES, 8 * link.IDENT_BYTES),
                    link.IDENT_BYTES,
                )
            with m.Case(Op.WRITE, Op.READ):
                f = fields[Op.WRITE]
                a, n = f["addr"], f["size"]
                m.d.sync += [addr.eq(a), size.eq(n), then_read.eq(op == Op.READ)]
                with m.If(a + n > mem):
                    m.d.sync += status.eq(Status.RANGE)
                m.next = "WRITE"
                with m.If(op == Op.READ):
                    m.next = "REPLY"
            with m.Case(Op.PROGRAM):
                f = fields[Op.PROGRAM]
                m.d.sync += [addr.eq(f["index"]), size.eq(f["count"])]
                with m.If(f["index"] + f["count"] > imem):
                    m.d.sync += status.eq(Status.RANGE)
                m.next = "PROGRAM"
            with m.Case(Op.RUN):
                m.d.comb += core.start.eq(1)
                m.d.sync += [run_d.eq(fields[Op.RUN]["d"]), cycles.eq(0), fault.eq(0)]
                m.next = "RUN"
