"""The matrix processing engine: MM and MV, dense and N:M sparse, INT8/INT4 weights.

The MPE computes one output element at a time on a :class:`~.dsp_chain.DspChain`:
for output ``(row, col)`` it streams the column's stored weight entries through the
chain ``2 * groups_per_chain`` at a time (one chunk), staging each entry's weight, its
sparse index and its activation window. Chunks never straddle a group-scale group, so
the chain's sum is the group's partial sum; the group sum is scaled by the column's
uint8 group scale into the 48-bit accumulator. The epilogue adds the partial sums and
the bias, multiplies by the requantisation multiplier, rounds, shifts and saturates to
``odt`` exactly as :func:`flightforge.numerics.matmul`.

Operands come byte by byte through the buffers' byte ports, so throughput is bounded by
buffer bandwidth (one byte per buffer per cycle), not by the chain: staging is serial.
Widening the buffer ports is the next step for performance (docs/rtl.md).
"""

from __future__ import annotations

from amaranth import Cat, Const, Module, Mux, Signal, signed
from amaranth.lib import data, wiring
from amaranth.lib.wiring import Out

from flightforge import isa, formats
from flightforge.arch import ArchConfig

from .buffers import addr_bits
from .bus import BufPortSignature
from .decode import field, unit_members
from .dsp_chain import DspChain
from .sfu.common import by_dtype, rnd_shift, saturate

ACC_BITS = 50  #: accumulator: scaled sums < 2**46 plus bias and partial sums (numerics)
GSUM_BITS = 36  #: one group's sum of products: K < 2**16 products of at most 2**14


class MatrixEngine(wiring.Component):
    """MM/MV unit; ports ``buf_act``, ``buf_wgt``, ``buf_meta``, ``buf_scale``."""

    BUFFERS = (isa.Buf.ACT, isa.Buf.WGT, isa.Buf.META, isa.Buf.SCALE)

    def __init__(self, arch: ArchConfig) -> None:
        self.arch = arch
        self.groups = arch.mpe.groups_per_chain
        self.window = arch.sparse_m
        super().__init__({**unit_members(isa.Unit.MPE), **{
            f"buf_{b.name.lower()}": Out(BufPortSignature(addr_bits(arch.buffers.of(b).size)))
            for b in self.BUFFERS}})

    def elaborate(self, platform) -> Module:
        m = Module()
        m.submodules.chain = chain = DspChain(self.groups, self.window)
        word = Signal.like(self.instr)
        opcode = word[:isa.OPCODE_BITS]
        f = {name: field(word, (isa.MM, isa.MV), opcode, name)
             for name, *_ in isa.layout(isa.MV)[1:]}
        is_mm = opcode == isa.Opcode.MM
        mm = field(word, (isa.MM,), opcode, "m"), field(word, (isa.MM,), opcode, "a_stride")
        rows = Mux(is_mm, mm[0], 1)
        a_stride = mm[1]

        # --- derived sizes (formats.py's layout, computed from the fields) ---------------
        lm = Signal(range(8))  # log2 of the sparse block m (0 when dense)
        ln = Signal(range(8))  # log2 of the kept weights n per block
        lib = Signal(range(4))  # log2 of the index bits
        with m.Switch(f["sparse"]):
            for mode in isa.SparseMode:
                if mode.is_sparse:
                    with m.Case(mode):
                        ib = formats.index_bits(mode)
                        m.d.comb += [lm.eq(mode.m.bit_length() - 1), ln.eq(mode.n.bit_length() - 1),
                                     lib.eq(ib.bit_length() - 1)]
        sparse = f["sparse"] != isa.SparseMode.DENSE
        int4 = f["wprec"] == isa.WPrec.INT4
        k = f["k"]
        entries = Signal(isa.DIM_BITS + 1)
        m.d.comb += entries.eq((k >> lm) << ln)
        gshift = f["gsz"] + 3
        group_entries = Signal(isa.DIM_BITS + 1)
        m.d.comb += group_entries.eq(Mux(f["gsz"] != 0, ((1 << gshift) >> lm) << ln, entries))
        wrb = Mux(int4, (entries + 1) >> 1, entries)
        mrb = Mux(sparse, ((entries << lib) + 7) >> 3, 0)
        ngroups = Mux(f["gsz"] != 0, k >> gshift, 0)
        recb = formats.RECORD_HEADER_BYTES + (((ngroups + 3) >> 2) << 2)
        obytes = by_dtype(f["odt"], lambda d: d.nbytes)

        # --- loop state ---------------------------------------------------------------------
        A = isa.BUF_ADDR_BITS + 2
        row, col = Signal(isa.DIM_BITS), Signal(isa.DIM_BITS)
        a_row, d_row, p_row = Signal(A), Signal(A), Signal(A)
        d_ptr, p_ptr, w_col, m_col, q_col, wk_ptr = (Signal(A, name=n) for n in
                                                     ("d_ptr", "p_ptr", "w_col", "m_col", "q_col", "wk_ptr"))
        e, left = Signal(isa.DIM_BITS + 1), Signal(isa.DIM_BITS + 1)
        gi = Signal(isa.DIM_BITS)
        acc = Signal(signed(ACC_BITS))
        gsum = Signal(signed(GSUM_BITS))
        rec = Signal(48)  # bias:int32, mult:uint16
        tmp = Signal(32)
        bcnt = Signal(range(max(self.window, 8)))
        slot = Signal(range(chain.macs))
        win = Signal(8 * self.window)
        blk = Signal(isa.DIM_BITS + 1)
        blk_ok = Signal()
        st_act = Signal.like(chain.act)
        st_wgt = Signal.like(chain.wgt)
        st_idx = Signal.like(chain.idx)
        m.d.comb += [chain.act.eq(st_act), chain.wgt.eq(st_wgt), chain.idx.eq(st_idx)]
        ports = {b: getattr(self, f"buf_{b.name.lower()}") for b in self.BUFFERS}

        def read(state, buf, addr, count, dest, then):
            """States reading ``count`` bytes at ``addr + i`` into byte lanes of ``dest``."""
            port = ports[buf]
            with m.State(state):
                m.d.comb += [port.req.eq(1), port.addr.eq(addr + bcnt)]
                with m.If(port.grant):
                    m.next = state + "_D"
            with m.State(state + "_D"):
                m.d.sync += dest.word_select(bcnt, 8).eq(port.rdata)
                with m.If(bcnt == count - 1):
                    m.d.sync += bcnt.eq(0)
                    then()
                with m.Else():
                    m.d.sync += bcnt.eq(bcnt + 1)
                    m.next = state

        def goto(state):
            return lambda: setattr(m, "next", state)

        chunk_full = (slot == chain.macs - 1) | (left == 1)
        w_byte = Signal(8)
        meta_bit = Signal(isa.DIM_BITS + 4)
        m.d.comb += meta_bit.eq(e << lib)
        with m.FSM():
            with m.State("IDLE"):
                with m.If(self.start):
                    m.d.sync += word.eq(self.instr)
                    m.next = "INIT"
            with m.State("INIT"):
                m.d.sync += [row.eq(0), a_row.eq(f["a_addr"]), d_row.eq(f["d_addr"]),
                             p_row.eq(f["p_addr"])]
                m.next = "ROW"
            with m.State("ROW"):
                m.d.sync += [col.eq(0), w_col.eq(f["w_addr"]), m_col.eq(f["meta_addr"]),
                             q_col.eq(f["q_addr"]), d_ptr.eq(d_row), p_ptr.eq(p_row)]
                m.next = "COL"
            with m.State("COL"):
                m.d.sync += [acc.eq(0), e.eq(0), gi.eq(0), blk_ok.eq(0), bcnt.eq(0),
                             rec.eq(Cat(Const(0, 32), f["mult"])), wk_ptr.eq(f["w_addr"] + col)]
                with m.If(f["acc_in"]):
                    m.next = "PSUM"
                with m.Elif(f["colp"]):
                    m.next = "REC"
                with m.Else():
                    m.next = "GROUP"
            read("PSUM", isa.Buf.ACT, p_ptr, 4, tmp, goto("PSUM_END"))
            with m.State("PSUM_END"):
                m.d.sync += acc.eq(tmp.as_signed())
                with m.If(f["colp"]):
                    m.next = "REC"
                with m.Else():
                    m.next = "GROUP"
            read("REC", isa.Buf.SCALE, q_col, 6, rec, goto("GROUP"))
            with m.State("GROUP"):
                m.d.sync += [gsum.eq(0), left.eq(group_entries), slot.eq(0)]
                m.next = "WGT"
            # Stage one entry: weight, then (sparse) index and window, else the activation.
            with m.State("WGT"):
                port = ports[isa.Buf.WGT]
                m.d.comb += [port.req.eq(1),
                             port.addr.eq(Mux(f["wkn"], wk_ptr, w_col + Mux(int4, e >> 1, e)))]
                with m.If(port.grant):
                    m.next = "WGT_D"
            with m.State("WGT_D"):
                rd = ports[isa.Buf.WGT].rdata
                nib = Mux(e[0], rd[4:8], rd[0:4])
                m.d.sync += st_wgt[slot].eq(Mux(int4, nib.as_signed(), rd.as_signed()))
                with m.If(sparse):
                    m.next = "META"
                with m.Else():
                    m.next = "ACT"
            with m.State("META"):
                port = ports[isa.Buf.META]
                m.d.comb += [port.req.eq(1), port.addr.eq(m_col + (meta_bit >> 3))]
                with m.If(port.grant):
                    m.next = "META_D"
            with m.State("META_D"):
                rd = ports[isa.Buf.META].rdata
                mask = (Const(1, 9) << (Const(1, 4) << lib)) - 1
                m.d.sync += st_idx[slot].eq((rd >> meta_bit[:3]) & mask)
                with m.If(blk_ok & (blk == (e >> ln))):
                    m.next = "STAGE"
                with m.Else():
                    m.d.sync += [blk.eq(e >> ln), bcnt.eq(0)]
                    m.next = "WIN"

            def after_win():
                m.d.sync += blk_ok.eq(1)
                m.next = "STAGE"
            read("WIN", isa.Buf.ACT, a_row + (blk << lm), 1 << lm, win, after_win)
            with m.State("ACT"):
                port = ports[isa.Buf.ACT]
                m.d.comb += [port.req.eq(1), port.addr.eq(a_row + e)]
                with m.If(port.grant):
                    m.next = "ACT_D"
            with m.State("ACT_D"):
                m.d.sync += [st_act[slot].eq(ports[isa.Buf.ACT].rdata), st_idx[slot].eq(0)]
                m.next = "NEXT"
            with m.State("STAGE"):
                m.d.sync += st_act[slot].eq(win)
                m.next = "NEXT"
            with m.State("NEXT"):
                m.d.sync += [e.eq(e + 1), left.eq(left - 1), slot.eq(slot + 1),
                             wk_ptr.eq(wk_ptr + f["n"])]
                with m.If(chunk_full):
                    m.next = "FIRE"
                with m.Else():
                    m.next = "WGT"
            with m.State("FIRE"):
                m.d.comb += chain.valid.eq(1)
                m.next = "CHAIN"
            with m.State("CHAIN"):
                with m.If(chain.out_valid):
                    m.d.sync += [gsum.eq(gsum + chain.sums[self.groups - 1]), slot.eq(0),
                                 st_wgt.eq(0)]
                    with m.If(left == 0):
                        with m.If(f["gsz"] != 0):
                            m.next = "SCALE"
                        with m.Else():
                            m.next = "GROUP_END"
                    with m.Else():
                        m.next = "WGT"
            read("SCALE", isa.Buf.SCALE, q_col + formats.RECORD_HEADER_BYTES + gi, 1, tmp,
                 goto("SCALED"))
            with m.State("SCALED"):
                m.d.sync += acc.eq(acc + gsum * tmp[:8])
                m.next = "GROUP_NEXT"
            with m.State("GROUP_END"):
                m.d.sync += acc.eq(acc + gsum)
                m.next = "GROUP_NEXT"
            with m.State("GROUP_NEXT"):
                m.d.sync += gi.eq(gi + 1)
                with m.If(e == entries):
                    m.next = "EPILOGUE"
                with m.Else():
                    m.next = "GROUP"
            with m.State("EPILOGUE"):
                scaled = (acc + rec[:32].as_signed()) * rec[32:48]
                m.d.sync += [tmp.eq(saturate(rnd_shift(scaled, f["shift"]), f["odt"])), bcnt.eq(0)]
                m.next = "WRITE"
            with m.State("WRITE"):
                port = ports[isa.Buf.ACT]
                m.d.comb += [port.req.eq(1), port.we.eq(1), port.addr.eq(d_ptr + bcnt),
                             port.wdata.eq(tmp.word_select(bcnt, 8))]
                with m.If(port.grant):
                    m.d.sync += bcnt.eq(bcnt + 1)
                    with m.If(bcnt == obytes - 1):
                        m.d.sync += bcnt.eq(0)
                        m.next = "COL_NEXT"
            with m.State("COL_NEXT"):
                m.d.sync += [col.eq(col + 1), w_col.eq(w_col + wrb), m_col.eq(m_col + mrb),
                             q_col.eq(q_col + recb), d_ptr.eq(d_ptr + obytes), p_ptr.eq(p_ptr + 4)]
                with m.If(col == f["n"] - 1):
                    m.next = "ROW_NEXT"
                with m.Else():
                    m.next = "COL"
            with m.State("ROW_NEXT"):
                m.d.sync += [row.eq(row + 1), a_row.eq(a_row + a_stride),
                             d_row.eq(d_row + f["d_stride"]), p_row.eq(p_row + f["d_stride"])]
                with m.If(row == rows - 1):
                    m.d.comb += self.done.eq(1)
                    m.next = "IDLE"
                with m.Else():
                    m.next = "ROW"
        return m
