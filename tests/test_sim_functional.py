"""The functional simulator, instruction by instruction, against independent references.

The references here are written from the ISA's prose (docs/isa.md, the docstrings of
flightforge/numerics.py) with plain Python integers and loops; they share no code with
flightforge.numerics, which the simulator uses. Weights are packed with
flightforge.formats and the reference uses the unpacked matrix the test generated, so
packing is checked too.
"""

from __future__ import annotations

import math

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from flightforge import formats, isa
from flightforge.arch import arch_from_dict
from flightforge.mappings import load_target
from flightforge.sim.device import DeviceError
from flightforge.sim.functional import FunctionalSim

ARCH = load_target("tiny")
HALT = isa.SYS(op=isa.SysOp.HALT)
NP = {isa.DType.INT8: "<i1", isa.DType.INT16: "<i2", isa.DType.INT32: "<i4"}


def rnd(x: int, s: int) -> int:
    """Round half up, then shift: the ISA's rounding, in Python integers."""
    return x if s == 0 else (x + (1 << (s - 1))) >> s


def clamp(x: int, dt: isa.DType) -> int:
    b = isa.DType(dt).bits
    return max(-(1 << (b - 1)), min((1 << (b - 1)) - 1, x))


def put(sim: FunctionalSim, buf: isa.Buf, addr: int, arr: np.ndarray, dt: isa.DType) -> None:
    raw = np.ascontiguousarray(arr).astype(NP[dt]).view(np.uint8).ravel()
    sim.buffer(buf)[addr : addr + raw.size] = raw


def get(
    sim: FunctionalSim,
    buf: isa.Buf,
    addr: int,
    rows: int,
    cols: int,
    dt: isa.DType,
    stride: int | None = None,
) -> np.ndarray:
    nb = isa.DType(dt).nbytes
    stride = cols * nb if stride is None else stride
    out = [
        sim.buffer(buf)[addr + r * stride : addr + r * stride + cols * nb].view(NP[dt])
        for r in range(rows)
    ]
    return np.array(out, dtype=np.int64)


def run(sim: FunctionalSim, *instrs: isa.Instruction):
    return sim.execute([*instrs, HALT])


# --- transfers ------------------------------------------------------------------------


@settings(max_examples=40, deadline=None)
@given(
    rows=st.integers(1, 6),
    row_bytes=st.integers(1, 40),
    pad_src=st.integers(0, 9),
    pad_dst=st.integers(0, 9),
    src=st.integers(0, 1 << 20),
    dst=st.integers(0, 4096),
    buf=st.sampled_from(list(isa.Buf)),
    seed=st.integers(0, 1 << 16),
)
def test_load_and_store_move_strided_2d_blocks(
    rows, row_bytes, pad_src, pad_dst, src, dst, buf, seed
):
    sim = FunctionalSim(ARCH)
    rng = np.random.default_rng(seed)
    image = rng.integers(0, 256, size=rows * (row_bytes + pad_src), dtype=np.uint8)
    sim.write(src, image.tobytes())
    s_stride, d_stride = row_bytes + pad_src, row_bytes + pad_dst
    run(
        sim,
        isa.LD(
            buf=buf,
            dst=dst,
            src=src,
            rows=rows,
            row_bytes=row_bytes,
            src_stride=s_stride,
            dst_stride=d_stride,
            release=1 << isa.Unit.ST,
        ),
        isa.ST(
            buf=buf,
            src=dst,
            dst=src + (1 << 21),
            rows=rows,
            row_bytes=row_bytes,
            src_stride=d_stride,
            dst_stride=row_bytes,
            wait=1 << isa.Unit.LD,
        ),
    )
    expect = b"".join(image[r * s_stride : r * s_stride + row_bytes].tobytes() for r in range(rows))
    for r in range(rows):
        got = sim.buffer(buf)[dst + r * d_stride : dst + r * d_stride + row_bytes].tobytes()
        assert got == expect[r * row_bytes : (r + 1) * row_bytes]
    assert sim.read(src + (1 << 21), rows * row_bytes) == expect


# --- matrix engine ----------------------------------------------------------------------


def random_weights(rng, n: int, k: int, prec: isa.WPrec, mode: isa.SparseMode) -> np.ndarray:
    lo, hi = (-8, 7) if prec == isa.WPrec.INT4 else (-128, 127)
    w = rng.integers(lo, hi + 1, size=(n, k))
    if mode.is_sparse:
        keep = np.zeros((n, k // mode.m, mode.m), dtype=bool)
        for c in range(n):
            for blk in range(k // mode.m):
                keep[c, blk, rng.choice(mode.m, size=mode.n, replace=False)] = True
        w = np.where(keep.reshape(n, k), w, 0)
    return w


def reference_matmul(a, w, *, bias, mult, shift, odt, group=0, scales=None, psum=None):
    """C[m][n] from the ISA's formula, one element at a time."""
    rows, k = a.shape
    out = np.zeros((rows, w.shape[0]), dtype=np.int64)
    for m in range(rows):
        for n in range(w.shape[0]):
            if group:
                acc = sum(
                    int(scales[n][g])
                    * sum(int(a[m, kk]) * int(w[n, kk]) for kk in range(g * group, (g + 1) * group))
                    for g in range(k // group)
                )
            else:
                acc = sum(int(a[m, kk]) * int(w[n, kk]) for kk in range(k))
            if psum is not None:
                acc += int(psum[m, n])
            acc += int(bias[n])
            out[m, n] = clamp(rnd(acc * int(mult[n]), shift), odt)
    return out


MODES = list(isa.SparseMode)


@pytest.mark.parametrize("mode", MODES, ids=[m.name for m in MODES])
@pytest.mark.parametrize("prec", list(isa.WPrec), ids=[p.name for p in isa.WPrec])
@pytest.mark.parametrize("kind", ["MM", "MV"])
def test_matmul_every_sparse_mode_and_precision(mode, prec, kind):
    rng = np.random.default_rng(int(mode) * 7 + int(prec) * 3 + (kind == "MV"))
    rows = 1 if kind == "MV" else 5
    n, k = 6, 64
    gsz = isa.gsz_code(32) if prec == isa.WPrec.INT4 else 0
    group = isa.group_size(gsz)
    a = rng.integers(-128, 128, size=(rows, k))
    w = random_weights(rng, n, k, prec, mode)
    packed = formats.pack_weights(w, prec, mode)
    bias = rng.integers(-5000, 5000, size=n)
    mult = rng.integers(1, 1 << 16, size=n)
    scales = rng.integers(0, 256, size=(n, k // group if group else 0))
    rec = formats.pack_column_records(formats.ColumnRecords(bias, mult, scales), k, gsz)
    psum = rng.integers(-(1 << 20), 1 << 20, size=(rows, n))
    odt = isa.DType.INT16
    sim = FunctionalSim(ARCH)
    a_addr, p_addr, d_addr, w_addr, meta_addr, q_addr = 0, 1024, 2048, 64, 32, 16
    put(sim, isa.Buf.ACT, a_addr, a, isa.DType.INT8)
    put(sim, isa.Buf.ACT, p_addr, psum, isa.DType.INT32)
    sim.buffer(isa.Buf.WGT)[w_addr : w_addr + len(packed.weights)] = np.frombuffer(
        packed.weights, np.uint8
    )
    sim.buffer(isa.Buf.META)[meta_addr : meta_addr + len(packed.meta)] = np.frombuffer(
        packed.meta, np.uint8
    )
    sim.buffer(isa.Buf.SCALE)[q_addr : q_addr + len(rec)] = np.frombuffer(rec, np.uint8)
    common = dict(
        n=n,
        k=k,
        a_addr=a_addr,
        w_addr=w_addr,
        meta_addr=meta_addr,
        q_addr=q_addr,
        p_addr=p_addr,
        d_addr=d_addr,
        d_stride=n * 4,
        sparse=mode,
        wprec=prec,
        gsz=gsz,
        colp=1,
        acc_in=1,
        odt=odt,
        shift=20,
    )
    ins = isa.MV(**common) if kind == "MV" else isa.MM(m=rows, a_stride=k, **common)
    run(sim, ins)
    got = get(sim, isa.Buf.ACT, d_addr, rows, n, odt, stride=n * 4)
    expect = reference_matmul(
        a, w, bias=bias, mult=mult, shift=20, odt=odt, group=group, scales=scales, psum=psum
    )
    assert np.array_equal(got, expect)


@pytest.mark.parametrize("odt", list(isa.DType), ids=[d.name for d in isa.DType])
def test_matmul_immediate_multiplier_kn_layout_and_saturation(odt):
    """``wkn``: a [K][N] INT8 tile (the V cache); no records: bias 0, immediate mult."""
    rng = np.random.default_rng(int(odt))
    rows, n, k = 3, 5, 7
    a = rng.integers(-128, 128, size=(rows, k))
    w_kn = rng.integers(-128, 128, size=(k, n))
    sim = FunctionalSim(ARCH)
    put(sim, isa.Buf.ACT, 0, a, isa.DType.INT8)
    put(sim, isa.Buf.WGT, 100, w_kn, isa.DType.INT8)
    run(
        sim,
        isa.MM(
            m=rows,
            a_stride=k,
            n=n,
            k=k,
            a_addr=0,
            w_addr=100,
            d_addr=512,
            d_stride=n * 4,
            wkn=1,
            mult=3,
            shift=1,
            odt=odt,
        ),
    )
    got = get(sim, isa.Buf.ACT, 512, rows, n, odt, stride=n * 4)
    expect = reference_matmul(a, w_kn.T, bias=[0] * n, mult=[3] * n, shift=1, odt=odt)
    assert np.array_equal(got, expect)
    if odt == isa.DType.INT8:
        assert np.abs(expect).max() == 128 or np.abs(expect).max() == 127  # saturation exercised


# --- special-function unit ----------------------------------------------------------------


def misc(
    sim: FunctionalSim,
    a: np.ndarray,
    a_dt,
    d_dt,
    b: np.ndarray | None = None,
    b_dt=isa.DType.INT8,
    params: bytes = b"",
    **fields,
) -> np.ndarray:
    rows, cols = a.shape
    put(sim, isa.Buf.ACT, 0, a, a_dt)
    if b is not None:
        put(sim, isa.Buf.ACT, 8192, b, b_dt)
    sim.buffer(isa.Buf.GLB)[64 : 64 + len(params)] = np.frombuffer(params, np.uint8)
    run(
        sim,
        isa.MISC(
            rows=rows,
            cols=cols,
            a_addr=0,
            a_stride=cols * a_dt.nbytes,
            a_dt=a_dt,
            b_addr=8192,
            b_stride=cols * b_dt.nbytes,
            b_dt=b_dt,
            d_addr=16384,
            d_stride=cols * d_dt.nbytes,
            d_dt=d_dt,
            p_addr=64,
            **fields,
        ),
    )
    return get(sim, isa.Buf.ACT, 16384, rows, cols, d_dt)


def test_add_mul_requant():
    rng = np.random.default_rng(1)
    sim = FunctionalSim(ARCH)
    a = rng.integers(-32768, 32768, size=(3, 9))
    b = rng.integers(-128, 128, size=(3, 9))
    got = misc(
        sim,
        a,
        isa.DType.INT16,
        isa.DType.INT16,
        b,
        isa.DType.INT8,
        op=isa.MiscOp.ADD,
        m0=40000,
        m1=9000,
        shift=15,
    )
    assert got.tolist() == [
        [
            clamp(rnd(int(x) * 40000 + int(y) * 9000, 15), isa.DType.INT16)
            for x, y in zip(ra, rb, strict=True)
        ]
        for ra, rb in zip(a, b, strict=True)
    ]
    a8 = rng.integers(-128, 128, size=(3, 9))
    got = misc(
        sim,
        a8,
        isa.DType.INT8,
        isa.DType.INT8,
        b,
        isa.DType.INT8,
        op=isa.MiscOp.MUL,
        m0=30000,
        shift=20,
    )
    assert got.tolist() == [
        [
            clamp(rnd(int(x) * int(y) * 30000, 20), isa.DType.INT8)
            for x, y in zip(ra, rb, strict=True)
        ]
        for ra, rb in zip(a8, b, strict=True)
    ]
    a32 = rng.integers(-(1 << 31), 1 << 31, size=(2, 5))
    got = misc(sim, a32, isa.DType.INT32, isa.DType.INT8, op=isa.MiscOp.REQUANT, m0=123, shift=30)
    assert got.tolist() == [[clamp(rnd(int(x) * 123, 30), isa.DType.INT8) for x in r] for r in a32]


@pytest.mark.parametrize("op", [isa.MiscOp.SILU, isa.MiscOp.GELU, isa.MiscOp.RELU])
@pytest.mark.parametrize("d_dt", [isa.DType.INT8, isa.DType.INT16])
def test_table_operations_index_by_the_input_byte(op, d_dt):
    rng = np.random.default_rng(int(op))
    lut = rng.integers(*[(-128, 128), (-32768, 32768)][d_dt == isa.DType.INT16], size=256)
    a = rng.integers(-128, 128, size=(4, 11))
    got = misc(
        FunctionalSim(ARCH), a, isa.DType.INT8, d_dt, op=op, params=lut.astype(NP[d_dt]).tobytes()
    )
    assert got.tolist() == [[int(lut[x % 256]) for x in r] for r in a]


def reference_softmax(x, m0, shift, pos, length, causal, bits):
    exp2 = [round(2**15 * 2.0 ** (-f / 256)) for f in range(256)]
    out = []
    for r, row in enumerate(x):
        valid = [j < (length or len(row)) and (not causal or j <= pos + r) for j in range(len(row))]
        mx = max(int(v) for v, ok in zip(row, valid, strict=True) if ok)
        e = []
        for v, ok in zip(row, valid, strict=True):
            t = rnd((mx - int(v)) * m0, shift)
            e.append(exp2[t % 256] >> min(t // 256, 16) if ok else 0)
        recip = (1 << 38) // sum(e)
        out.append([min((1 << (bits - 1)) - 1, rnd(v * recip, 38 - (bits - 1))) for v in e])
    return out


@pytest.mark.parametrize("causal,length,pos", [(0, 0, 0), (1, 0, 3), (1, 9, 2), (0, 5, 0)])
@pytest.mark.parametrize("d_dt", [isa.DType.INT8, isa.DType.INT16])
def test_softmax_with_causal_mask_and_valid_length(causal, length, pos, d_dt):
    rng = np.random.default_rng(pos + length)
    x = rng.integers(-(1 << 20), 1 << 20, size=(4, 12))
    got = misc(
        FunctionalSim(ARCH),
        x,
        isa.DType.INT32,
        d_dt,
        op=isa.MiscOp.SOFTMAX,
        m0=700,
        shift=16,
        pos=pos,
        len=length,
        causal=causal,
    )
    assert got.tolist() == reference_softmax(x, 700, 16, pos, length, causal, d_dt.bits)


def reference_norm(x, gamma, beta, eps, shift, odt, layer):
    out = []
    for row in x:
        row = [int(v) for v in row]
        cols = len(row)
        if layer:
            mean = sum(row) // cols
            row = [v - mean for v in row]
        ms = sum(v * v for v in row) // cols + eps
        inv = (1 << 38) // max(math.isqrt(ms << 16), 1)
        t = [rnd(v * inv, 16) for v in row]
        y = [
            rnd(tv * int(g), shift) + (int(beta[j]) if layer else 0)
            for j, (tv, g) in enumerate(zip(t, gamma, strict=True))
        ]
        out.append([clamp(v, odt) for v in y])
    return out


@pytest.mark.parametrize("layer", [False, True], ids=["rmsnorm", "layernorm"])
@pytest.mark.parametrize("a_dt", [isa.DType.INT8, isa.DType.INT16])
def test_norms(layer, a_dt):
    rng = np.random.default_rng(int(layer) + 2 * int(a_dt))
    lim = 1 << (a_dt.bits - 1)
    x = rng.integers(-lim, lim, size=(3, 24))
    gamma = rng.integers(-32768, 32768, size=24)
    beta = rng.integers(-300, 300, size=24)
    params = gamma.astype("<i2").tobytes() + (beta.astype("<i2").tobytes() if layer else b"")
    got = misc(
        FunctionalSim(ARCH),
        x,
        a_dt,
        isa.DType.INT8,
        op=isa.MiscOp.LAYERNORM if layer else isa.MiscOp.RMSNORM,
        params=params,
        eps=77,
        shift=22,
    )
    assert got.tolist() == reference_norm(x, gamma, beta, 77, 22, isa.DType.INT8, layer)


def test_rope_reads_each_rows_position_from_the_table():
    rng = np.random.default_rng(3)
    head, pos, rows, cols = 8, 5, 3, 16
    cos = rng.integers(-16384, 16385, size=(pos + rows, head // 2))
    sin = rng.integers(-16384, 16385, size=(pos + rows, head // 2))
    table = np.concatenate([cos, sin], axis=1).astype("<i2").tobytes()
    x = rng.integers(-128, 128, size=(rows, cols))
    got = misc(
        FunctionalSim(ARCH),
        x,
        isa.DType.INT8,
        isa.DType.INT8,
        op=isa.MiscOp.ROPE,
        params=table,
        pos=pos,
        len=head,
        shift=14,
    )
    expect = []
    h = head // 2
    for r in range(rows):
        c, s = cos[pos + r], sin[pos + r]
        row = []
        for chunk in range(cols // head):
            x1 = [int(v) for v in x[r, chunk * head : chunk * head + h]]
            x2 = [int(v) for v in x[r, chunk * head + h : (chunk + 1) * head]]
            row += [
                clamp(rnd(x1[i] * int(c[i]) - x2[i] * int(s[i]), 14), isa.DType.INT8)
                for i in range(h)
            ]
            row += [
                clamp(rnd(x2[i] * int(c[i]) + x1[i] * int(s[i]), 14), isa.DType.INT8)
                for i in range(h)
            ]
        expect.append(row)
    assert got.tolist() == expect


# --- synchronisation and errors -----------------------------------------------------------


def _ld_then_mv(wait: bool) -> list[isa.Instruction]:
    """An MV placed before the LD that fills its activations: only a token orders them."""
    mv = isa.MV(
        n=1,
        k=4,
        a_addr=0,
        w_addr=0,
        d_addr=64,
        d_stride=4,
        wkn=1,
        mult=1,
        odt=isa.DType.INT32,
        wait=(1 << isa.Unit.LD) if wait else 0,
    )
    ld = isa.LD(
        buf=isa.Buf.ACT,
        dst=0,
        src=0,
        rows=1,
        row_bytes=4,
        src_stride=4,
        dst_stride=4,
        release=(1 << isa.Unit.MPE) if wait else 0,
    )
    return [mv, ld, HALT]


@pytest.mark.parametrize("wait", [True, False])
def test_tokens_order_units_that_program_order_does_not(wait):
    sim = FunctionalSim(ARCH)
    sim.write(0, bytes([1, 2, 3, 4]))
    sim.buffer(isa.Buf.WGT)[0:4] = [1, 1, 1, 1]
    sim.execute(_ld_then_mv(wait))
    got = get(sim, isa.Buf.ACT, 64, 1, 1, isa.DType.INT32)[0, 0]
    assert got == (10 if wait else 0)


def test_waiting_on_a_token_nobody_releases_is_a_deadlock_naming_the_instruction():
    prog = [
        isa.LD(buf=isa.Buf.ACT, rows=1, row_bytes=4),
        isa.MISC(op=isa.MiscOp.REQUANT, rows=1, cols=4, m0=1, wait=1 << isa.Unit.MPE),
        HALT,
    ]
    with pytest.raises(
        DeviceError,
        match=r"deadlock in section 'demo': instruction 1 \(MISC on SFU\) "
        r"waits for a token from MPE",
    ):
        FunctionalSim(ARCH).execute(prog, name="demo")


def test_a_full_token_counter_blocks_dispatch_for_good():
    """token_depth+1 releases to a unit whose consumer comes later cannot all be held."""
    depth = ARCH.token_depth
    lds = [
        isa.LD(buf=isa.Buf.ACT, dst=4 * i, rows=1, row_bytes=4, release=1 << isa.Unit.SFU)
        for i in range(depth + 1 + ARCH.queue_depth)
    ]
    consumers = [
        isa.MISC(op=isa.MiscOp.REQUANT, rows=1, cols=1, m0=1, wait=1 << isa.Unit.LD) for _ in lds
    ]
    with pytest.raises(DeviceError, match=f"room to release to SFU \\({depth} tokens"):
        FunctionalSim(ARCH).execute([*lds, *consumers, HALT])
    # Interleaved, the same tokens never exceed the depth.
    FunctionalSim(ARCH).execute(
        [x for pair in zip(lds, consumers, strict=True) for x in pair] + [HALT]
    )


def test_tokens_left_at_halt_are_an_error():
    prog = [isa.LD(buf=isa.Buf.ACT, rows=1, row_bytes=4, release=1 << isa.Unit.MPE), HALT]
    with pytest.raises(DeviceError, match="unconsumed tokens: 1 from LD to MPE"):
        FunctionalSim(ARCH).execute(prog)


def test_section_must_end_with_its_only_halt():
    ld = isa.LD(buf=isa.Buf.ACT, rows=1, row_bytes=4)
    with pytest.raises(DeviceError, match="is not SYS HALT"):
        FunctionalSim(ARCH).execute([ld])
    with pytest.raises(DeviceError, match="HALT before the end"):
        FunctionalSim(ARCH).execute([HALT, ld, HALT])


def test_out_of_range_operands_name_instruction_field_and_buffer():
    act = ARCH.buffers.act.size
    bad = isa.MISC(
        op=isa.MiscOp.REQUANT,
        rows=2,
        cols=8,
        a_addr=0,
        a_stride=8,
        d_addr=act - 8,
        d_stride=8,
        m0=1,
    )
    with pytest.raises(
        DeviceError,
        match=rf"instruction 1 \(MISC\): d_addr: bytes {act - 8}\.\.{act + 7} "
        rf"are outside ACT \({act} bytes\)",
    ):
        FunctionalSim(ARCH).execute([isa.SYS(), bad, HALT])
    far = isa.LD(buf=isa.Buf.WGT, src=ARCH.hbm.capacity - 2, rows=1, row_bytes=4)
    with pytest.raises(DeviceError, match="src: bytes .* outside external memory"):
        FunctionalSim(ARCH).execute([far, HALT])


def test_a_matmul_longer_than_the_tile_buffer_names_instruction_and_field():
    k = ARCH.mpe.tile_k + 2
    mv = isa.MV(n=1, k=k, a_addr=0, d_addr=ARCH.mpe.tile_k + 8, mult=1)
    with pytest.raises(
        DeviceError,
        match=rf"instruction 0 \(MV\): k: K={k} exceeds the MPE's activation tile buffer "
        rf"\(mpe\.tile_k = {k - 2} ",
    ):
        FunctionalSim(ARCH).execute([mv, HALT])


def test_a_program_for_another_architecture_is_refused():
    from flightforge.compiler.demo import build_demo

    other = arch_from_dict({**ARCH.model_dump(), "name": "other", "token_depth": 2})
    with pytest.raises(DeviceError, match="cannot load program"):
        FunctionalSim(other).load(build_demo(ARCH).program)


@settings(max_examples=30, deadline=None)
@given(
    bits=st.sampled_from([2, 3, 4]),
    rows=st.integers(1, 4),
    n=st.integers(1, 70),
    pad=st.integers(0, 5),
    seed=st.integers(0, 1 << 16),
)
def test_load_widens_packed_low_bit_weights_to_int8(bits, rows, n, pad, seed):
    rng = np.random.default_rng(seed)
    values = rng.integers(-(1 << (bits - 1)), 1 << (bits - 1), size=(rows, n))
    packed = formats.pack_lowbit(values, bits)
    assert packed.shape == (rows, -(-n * bits // 8))
    # Reference bitstream: value j of a row occupies bits j*bits .. j*bits+bits-1, LSB first.
    for r in range(rows):
        stream = int.from_bytes(packed[r].tobytes(), "little")
        for j in range(n):
            field = (stream >> (j * bits)) & ((1 << bits) - 1)
            assert field - ((field >> (bits - 1)) << bits) == values[r, j]
    stride = packed.shape[1] + pad
    image = np.zeros((rows, stride), np.uint8)
    image[:, : packed.shape[1]] = packed
    sim = FunctionalSim(ARCH)
    sim.write(1000, image.tobytes())
    ld = isa.LD(
        buf=isa.Buf.WGT,
        dst=8,
        src=1000,
        rows=rows,
        row_bytes=n,
        src_stride=stride,
        dst_stride=n + 3,
        unpack=isa.Unpack(bits - 1),
    )
    assert ld.src_row_bytes == packed.shape[1]
    run(sim, ld)
    assert np.array_equal(get(sim, isa.Buf.WGT, 8, rows, n, isa.DType.INT8, stride=n + 3), values)
