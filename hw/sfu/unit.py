"""The SFU unit: runs one MISC instruction on its operation component.

Every operation now runs on a lane-parallel pipeline of ``stream.py`` (ADD/MUL/REQUANT/
tables, ROPE, SOFTMAX, RMSNORM/LAYERNORM); the byte-serial path below is no longer
started by any operation.

The operation components (:class:`.elementwise.Elementwise`, :class:`.elementwise.Rope`,
:class:`.softmax.Softmax`, :class:`.norm.Norm`) see element ports with a fixed read
latency of one cycle and no back-pressure. The buffers are byte-wide and shared, so the
unit runs the active component with a clock enable: in a cycle where it requests
element reads or a write, the unit freezes it, moves the bytes (write first, then the
reads, each element ``1 << dt`` bytes, little-endian, sign-extended), and lets it run
again with the read data in place, which the component then sees one (enabled) cycle
after its request, as it expects.
"""

from __future__ import annotations

from amaranth import Const, Module, Mux, Signal, signed
from amaranth.hdl import EnableInserter
from amaranth.lib import wiring
from amaranth.lib.wiring import Out

from flightforge import isa
from flightforge.arch import ArchConfig

from ..buffers import addr_bits
from ..bus import BufPortSignature
from ..decode import unit_members, view
from .common import ELEM_BITS
from .elementwise import Elementwise, Rope
from .norm import Norm
from .softmax import Softmax
from .stream import STREAM_OPS, ElementStream, NormStream, RopeStream, SoftmaxStream


def by_dtype_value(dt, raw):
    """``raw`` (32 bits, little-endian bytes) sign-extended from the element type ``dt``."""
    out = raw.as_signed()
    for d in reversed(list(isa.DType)[:-1]):
        out = Mux(dt == d, raw[:d.bits].as_signed(), out)
    return out


class SpecialFunctionUnit(wiring.Component):
    """MISC unit; ports ``buf_act`` (operands, result) and ``buf_glb`` (parameters)."""

    def __init__(self, arch: ArchConfig) -> None:
        self.arch = arch
        act = arch.buffers.of(isa.Buf.ACT)
        pa = act.banks * act.width
        lanes = arch.sfu.lanes
        self.widths = {isa.Buf.ACT: [pa] * 3 + [4] * (6 * lanes),
                       isa.Buf.GLB: [4] * lanes + [2] * (3 * lanes)}
        super().__init__({**unit_members(isa.Unit.SFU), **{
            f"buf_{b.name.lower()}": Out(BufPortSignature(addr_bits(arch.buffers.of(b).size)))
            for b in (isa.Buf.ACT, isa.Buf.GLB)}, **{
            f"buf_{b.name.lower()}_s{i}": Out(BufPortSignature(addr_bits(arch.buffers.of(b).size), w))
            for b, ws in self.widths.items() for i, w in enumerate(ws)}})

    def port_widths(self, buf: isa.Buf) -> list[int]:
        """Widths of the element-stream pipeline's extra ports on ``buf``."""
        return self.widths.get(buf, [])

    def ports(self, buf: isa.Buf):
        return [getattr(self, f"buf_{buf.name.lower()}_s{i}") for i in range(len(self.widths[buf]))]

    def elaborate(self, platform) -> Module:
        m = Module()
        word = Signal.like(self.instr)
        ins = view(isa.MISC, word)
        run = Signal()
        ops = {"elementwise": Elementwise(), "rope": Rope(), "softmax": Softmax(),
               "norm": Norm()}
        which = {isa.MiscOp.ADD: "elementwise", isa.MiscOp.MUL: "elementwise",
                 isa.MiscOp.REQUANT: "elementwise", isa.MiscOp.SILU: "elementwise",
                 isa.MiscOp.GELU: "elementwise", isa.MiscOp.RELU: "elementwise",
                 isa.MiscOp.ROPE: "rope", isa.MiscOp.SOFTMAX: "softmax",
                 isa.MiscOp.RMSNORM: "norm", isa.MiscOp.LAYERNORM: "norm"}
        assert set(which) == set(isa.MiscOp), "every MiscOp needs a component"
        for name, op in ops.items():
            m.submodules[name] = EnableInserter(run)(op)
            for fname, _ in isa.MISC.field_specs():
                m.d.comb += op.instr[fname].eq(ins[fname])

        # The lane-parallel element-wise pipeline (ADD, MUL, REQUANT, tables).
        m.submodules.stream = stream = ElementStream(self.arch)
        for fname, _ in isa.MISC.field_specs():
            m.d.comb += stream.instr[fname].eq(ins[fname])
        for i, p in enumerate((stream.port_a, stream.port_b, stream.port_d)):
            wiring.connect(m, p, wiring.flipped(self.ports(isa.Buf.ACT)[i]))
        for j in range(self.arch.sfu.lanes):
            wiring.connect(m, getattr(stream, f"port_t{j}"), wiring.flipped(self.ports(isa.Buf.GLB)[j]))
        m.submodules.rope_stream = rope = RopeStream(self.arch)
        for fname, _ in isa.MISC.field_specs():
            m.d.comb += rope.instr[fname].eq(ins[fname])
        L = self.arch.sfu.lanes
        for j in range(L):
            wiring.connect(m, getattr(rope, f"rd{j}"), wiring.flipped(self.ports(isa.Buf.ACT)[3 + j]))
            wiring.connect(m, getattr(rope, f"wr{j}"), wiring.flipped(self.ports(isa.Buf.ACT)[3 + L + j]))
            wiring.connect(m, getattr(rope, f"tab{j}"), wiring.flipped(self.ports(isa.Buf.GLB)[L + j]))
        m.submodules.softmax_stream = smx = SoftmaxStream(self.arch)
        for fname, _ in isa.MISC.field_specs():
            m.d.comb += smx.instr[fname].eq(ins[fname])
        for j in range(L):
            wiring.connect(m, getattr(smx, f"rd{j}"), wiring.flipped(self.ports(isa.Buf.ACT)[3 + 2 * L + j]))
            wiring.connect(m, getattr(smx, f"wr{j}"), wiring.flipped(self.ports(isa.Buf.ACT)[3 + 3 * L + j]))
        m.submodules.norm_stream = nrm = NormStream(self.arch)
        for fname, _ in isa.MISC.field_specs():
            m.d.comb += nrm.instr[fname].eq(ins[fname])
        for j in range(L):
            wiring.connect(m, getattr(nrm, f"rd{j}"), wiring.flipped(self.ports(isa.Buf.ACT)[3 + 4 * L + j]))
            wiring.connect(m, getattr(nrm, f"wr{j}"), wiring.flipped(self.ports(isa.Buf.ACT)[3 + 5 * L + j]))
            wiring.connect(m, getattr(nrm, f"g{j}"), wiring.flipped(self.ports(isa.Buf.GLB)[2 * L + j]))
            wiring.connect(m, getattr(nrm, f"b{j}"), wiring.flipped(self.ports(isa.Buf.GLB)[3 * L + j]))
        is_norm = ins.op.matches(isa.MiscOp.RMSNORM, isa.MiscOp.LAYERNORM)
        fast = ins.op.matches(*STREAM_OPS)
        is_smx = ins.op == isa.MiscOp.SOFTMAX
        is_rope = ins.op == isa.MiscOp.ROPE

        # The active component's requests, merged (only it is ever started).
        start, done = Signal(), Signal()
        req = {k: Signal(name=f"{k}_en") for k in ("rd", "rdb", "prm", "wr")}
        row, col, brow, bcol = (Signal(isa.DIM_BITS, name=n) for n in ("row", "col", "brow", "bcol"))
        wrow, wcol = Signal(isa.DIM_BITS), Signal(isa.DIM_BITS)
        index, wdata = Signal(isa.BUF_ADDR_BITS), Signal(signed(ELEM_BITS))
        a_raw, b_raw, p_raw = Signal(32), Signal(32), Signal(32)
        params_dt = Mux(ins.op.matches(*[o for o in isa.MiscOp if o.is_table]), ins.d_dt,
                        isa.DType.INT16)
        for name, op in ops.items():
            ops_of = [o for o, n in which.items() if n == name]
            with m.If(ins.op.matches(*ops_of)):
                m.d.comb += [op.start.eq(start), done.eq(op.done),
                             req["rd"].eq(op.rd.en), row.eq(op.rd.row), col.eq(op.rd.col),
                             req["wr"].eq(op.wr.en), wrow.eq(op.wr.row), wcol.eq(op.wr.col),
                             wdata.eq(op.wr.data)]
                if hasattr(op, "rdb"):
                    m.d.comb += [req["rdb"].eq(op.rdb.en), brow.eq(op.rdb.row),
                                 bcol.eq(op.rdb.col)]
                if hasattr(op, "prm"):
                    m.d.comb += [req["prm"].eq(op.prm.en), index.eq(op.prm.index)]
            m.d.comb += op.rd.data.eq(by_dtype_value(ins.a_dt, a_raw))
            if hasattr(op, "rdb"):
                m.d.comb += op.rdb.data.eq(by_dtype_value(ins.b_dt, b_raw))
            if hasattr(op, "prm"):
                m.d.comb += op.prm.data.eq(by_dtype_value(params_dt, p_raw))

        # Byte addresses of the pending transfers, captured with the request.
        A = isa.BUF_ADDR_BITS + 2
        ptr = {k: Signal(A, name=f"{k}_ptr") for k in req}
        pend = {k: Signal(name=f"{k}_pend") for k in req}
        wval = Signal(32)
        last = Signal()

        def elem(base, stride, r, c, dt):
            return base + r * stride + (c << dt)

        addr_now = {
            "wr": elem(ins.d_addr, ins.d_stride, wrow, wcol, ins.d_dt),
            "rd": elem(ins.a_addr, ins.a_stride, row, col, ins.a_dt),
            "rdb": elem(ins.b_addr, ins.b_stride, brow, bcol, ins.b_dt),
            "prm": ins.p_addr + (index << params_dt),
        }
        nbytes = {"wr": ins.d_dt, "rd": ins.a_dt, "rdb": ins.b_dt, "prm": params_dt}
        dest = {"rd": a_raw, "rdb": b_raw, "prm": p_raw}
        port = {"wr": self.buf_act, "rd": self.buf_act, "rdb": self.buf_act,
                "prm": self.buf_glb}
        bcnt = Signal(2)
        order = ["wr", "rd", "rdb", "prm"]

        with m.FSM():
            with m.State("IDLE"):
                m.d.comb += run.eq(1)
                with m.If(self.start):
                    m.d.sync += word.eq(self.instr)
                    m.next = "GO"
            with m.State("STREAM"):
                with m.If(stream.done | rope.done | smx.done | nrm.done):
                    m.d.comb += self.done.eq(1)
                    m.next = "IDLE"
            with m.State("GO"):
                with m.If(fast):
                    m.d.comb += stream.start.eq(1)
                    m.next = "STREAM"
                with m.Elif(is_rope):
                    m.d.comb += rope.start.eq(1)
                    m.next = "STREAM"
                with m.Elif(is_smx):
                    m.d.comb += smx.start.eq(1)
                    m.next = "STREAM"
                with m.Elif(is_norm):
                    m.d.comb += nrm.start.eq(1)
                    m.next = "STREAM"
                with m.Else():
                    m.d.comb += [run.eq(1), start.eq(1)]
                    m.next = "RUN"
            with m.State("RUN"):
                m.d.comb += run.eq(1)
                any_req = req["wr"] | req["rd"] | req["rdb"] | req["prm"]
                m.d.sync += [pend[k].eq(req[k]) for k in req]
                m.d.sync += [ptr[k].eq(addr_now[k]) for k in req]
                m.d.sync += [wval.eq(wdata), last.eq(done), bcnt.eq(0)]
                with m.If(any_req):
                    m.next = "XFER"
                with m.Elif(done):
                    m.d.comb += self.done.eq(1)
                    m.next = "IDLE"
            with m.State("XFER"):
                # The first pending transfer in `order` moves one byte per grant.
                busy = Const(0, 1)
                for k in order:
                    earlier = busy
                    busy = busy | pend[k]
                    with m.If(pend[k] & ~earlier):
                        p = port[k]
                        m.d.comb += [p.req.eq(1), p.addr.eq(ptr[k] + bcnt)]
                        if k == "wr":
                            m.d.comb += [p.we.eq(1), p.wdata.eq(wval.word_select(bcnt, 8))]
                        with m.If(p.grant):
                            end = bcnt == (1 << nbytes[k]) - 1
                            m.d.sync += bcnt.eq(Mux(end, 0, bcnt + 1))
                            with m.If(end):
                                m.d.sync += pend[k].eq(0)
                with m.If(~busy):
                    m.next = "SETTLE"
            with m.State("SETTLE"):  # the last read byte lands in its lane
                with m.If(last):
                    m.d.comb += self.done.eq(1)
                    m.next = "IDLE"
                with m.Else():
                    m.next = "RUN"
        self._latch(m, order, pend, port, bcnt, dest)
        return m

    def _latch(self, m, order, pend, port, bcnt, dest):
        """A granted read's byte arrives next cycle: write it to its lane then."""
        for k in ("rd", "rdb", "prm"):
            p = port[k]
            got = Signal(name=f"{k}_got")
            lane = Signal(2, name=f"{k}_lane")
            earlier = Const(0, 1)
            for j in order[:order.index(k)]:
                earlier = earlier | pend[j]
            m.d.sync += [got.eq(p.req & p.grant & pend[k] & ~earlier), lane.eq(bcnt)]
            with m.If(got):
                m.d.sync += dest[k].word_select(lane, 8).eq(p.rdata)
