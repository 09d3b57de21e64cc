"""The cycle model: hand-computed schedules, the timing formulas, reports and traces.

The ``tiny`` target's constants, which the expected numbers below are computed from:
100 MHz; 2 channels of 32 MiB at 1.6 GB/s in all, so 8 bytes per cycle per channel
(rate_q8 = 2048); 200 ns latency = 20 cycles; 8-byte bursts; a 2-cycle cross-channel
penalty; buffer ports of 2 x 4 = 8 bytes per cycle (ACT, WGT) and 4 (GLB, META, SCALE);
MM shape n x k x m = 2 x 4 x 4, MV shape 4 x 4 x 1, 4 shared requantisers; MPE depth (MM
24, MV 23) = 2 frame cycles + 3 of systolic skew + 4 DSP48E2 stages + 1 lane read + 5
accumulator stages (lane sums latched, its DSP48E2's 4) + the tile's drain (MM 2, MV 1)
+ 7 requantiser stages (flightforge.mpe.depth); SFU 4 lanes, pipeline 4. A LD's fixed
cost is ``LD = 20 + flightforge.ldst.LD_OVERHEAD`` (the memory's latency and the load
unit's own pipeline: setup, command issue, drain).
"""

from __future__ import annotations

import json

import pytest

from flightforge import isa, ldst
from flightforge.arch import arch_from_dict
from flightforge.compiler.graph import ONE_LAYER, DecoderShape, random_decoder
from flightforge.compiler.lower.buckets import BucketPlan
from flightforge.compiler.pipeline import CompileOptions, compile_decoder
from flightforge.isa import Buf, DType, MiscOp, SparseMode, Unit, WPrec
from flightforge.mappings import load_target
from flightforge.sim.cycle_model import CycleModel, simulate, stall_breakdown
from flightforge.sim.device import DeviceError
from flightforge.sim.timing import Timing, TimingParams, duration

TINY = load_target("tiny")
CH = 32 << 20  # tiny's channel_bytes
HALT = isa.SYS(op=isa.SysOp.HALT)
LD_RELEASE_MPE = 1 << Unit.MPE
MV_WAITS_LD = 1 << Unit.LD
LD = 20 + ldst.LD_OVERHEAD  #: a LD's cycles besides its bursts: latency and the unit's pipeline


def ld(nbytes: int, src: int = 0, buf: Buf = Buf.WGT, **kw) -> isa.LD:
    return isa.LD(
        buf=buf, src=src, rows=1, row_bytes=nbytes, src_stride=nbytes, dst_stride=nbytes, **kw
    )


def mv(n: int, k: int, **kw) -> isa.MV:
    return isa.MV(n=n, k=k, mult=1, **kw)


def run(instrs, params: TimingParams = TimingParams()):
    return CycleModel(TINY, params).execute(instrs)


def test_derived_constants_of_tiny():
    t = Timing(TINY)
    assert (t.rate_q8, t.latency, t.burst, t.penalty) == (2048, 20, 8, 2)
    assert t.port[Buf.ACT] == 8 and t.port[Buf.META] == 4


@pytest.mark.parametrize(
    "src,nbytes,expected",
    [
        (0, 64, LD + 8),  # 8 bursts on one channel = 8 cycles; the WGT port also takes 8
        (3, 64, LD + 9),  # unaligned: 9 bursts
        (CH - 32, 64, LD + 8 + 2),  # 4 bursts per channel, port-bound at 8, one crossing
    ],
)
def test_load_cycles(src, nbytes, expected):
    assert duration(TINY, ld(nbytes, src)) == expected


def test_rows_in_different_channels_stream_in_parallel():
    strided = isa.LD(buf=Buf.WGT, src=0, rows=2, row_bytes=256, src_stride=CH, dst_stride=256)
    contiguous = ld(512)
    t = Timing(TINY, TimingParams())
    # 32 bursts per channel (32 cycles) vs 64 on one channel; both bound by the 8 B port.
    assert t.ld(strided).cycles == LD + 64 and t.ld(contiguous).cycles == LD + 64
    wide = Timing(
        TINY.model_copy(
            update={
                "buffers": TINY.buffers.model_copy(
                    update={"wgt": TINY.buffers.wgt.model_copy(update={"banks": 8})}
                )
            }
        )
    )
    assert wide.ld(strided).cycles == LD + 32 and wide.ld(contiguous).cycles == LD + 64


@pytest.mark.parametrize(
    "ins,expected",
    [
        # 16 packed bytes = 2 bursts of 32 2-bit values; the 8-byte WGT port writes 8 INT8 a
        # cycle: 4 cycles a burst
        (ld(64, unpack=isa.Unpack.INT2), LD + 2 * 4),
        # 3-bit: 24 bytes = 3 bursts in which 21, 21 and 22 values end: 3 cycles each (the
        # whole-transfer rate would say cdiv(64, 8) = 8)
        (ld(64, unpack=isa.Unpack.INT3), LD + 3 * 3),
        # 4-bit into GLB (4-byte port) from byte 7: 5 packed bytes, 2 values end in the
        # first burst, 8 in the second: 1 + 2 cycles
        (ld(10, src=7, buf=Buf.GLB, unpack=isa.Unpack.INT4), LD + 3),
        # 3 values of 3 bits per row = 2 bytes with padding: not one span even though both
        # sides are contiguous, so the shared burst is read once per row
        (
            isa.LD(
                buf=Buf.WGT, rows=2, row_bytes=3, src_stride=2, dst_stride=3, unpack=isa.Unpack.INT3
            ),
            LD + 2,
        ),
        # 4-bit rows of 4 values join without padding: one span, one burst of 8 values
        (
            isa.LD(
                buf=Buf.WGT, rows=2, row_bytes=4, src_stride=2, dst_stride=4, unpack=isa.Unpack.INT4
            ),
            LD + 1,
        ),
    ],
)
def test_unpacking_load_cycles(ins, expected):
    """An unpacking LD costs, burst by burst, ``ceil(values ending in it / port)``."""
    assert duration(TINY, ins) == expected


def test_unpacking_load_on_wide_ports_streams_at_the_channel_rate():
    """Where the port writes a whole burst of 2-bit values a cycle (U280: 1024-byte WGT
    port, 32-byte bursts), an unpacking LD's buffer side is counted as a plain LD's:
    each core's share of the INT8 bytes at the port's width; it reads a quarter of the
    bursts."""
    u280 = Timing(load_target("u280"))
    assert not u280.beatwise(Buf.WGT, 2) and Timing(TINY).beatwise(Buf.WGT, 2)
    packed = isa.LD(
        buf=Buf.WGT,
        rows=64,
        row_bytes=4096,
        src_stride=1024,
        dst_stride=4096,
        unpack=isa.Unpack.INT2,
    )
    plain = isa.LD(buf=Buf.WGT, rows=64, row_bytes=1024, src_stride=1024, dst_stride=1024)
    share = -(-64 * 4096 // u280.cores)
    assert u280.ld(packed).port_cycles == -(-share // 1024)
    assert u280.ld(packed).burst_bytes == u280.ld(plain).burst_bytes == 64 * 1024


def test_fast_evaluator_times_unpacking_loads_like_the_cycle_model():
    """flightforge.dse.timing takes the burst-by-burst port cycles from Timing: a 3-bit
    decoder on tiny (unpacking LDs into the 8-byte WGT port, 21 or 22 values ending in a
    burst: 3 cycles each, not the 8 a cycle of a whole-transfer rate) times identically."""
    from flightforge.compiler.quant.qdecoder import QuantOptions
    from flightforge.dse.timing import durations, prepare

    shape = ONE_LAYER
    program = compile_decoder(
        random_decoder(shape, seed=1),
        TINY,
        CompileOptions(max_len=4, quant=QuantOptions(weight_bits=3)),
    ).program
    t = Timing(TINY)
    unpacking = 0
    for sec in program.sections:
        s = prepare(program, sec.name, sec.len_hi)
        unpacking += sum(isinstance(i, isa.LD) and i.unpack != isa.Unpack.NONE for i in s.instrs)
        assert [int(x) for x in durations(s, TINY, TimingParams())] == [
            t.duration(i) for i in s.instrs
        ], sec.name
    assert unpacking


def test_interleaved_map_spreads_a_contiguous_load():
    t = Timing(TINY, TimingParams(interleave_bytes=16))
    cost = t.ld(ld(64))
    # 4 units of 16 bytes alternate between the 2 channels: 4 bursts each.
    assert cost.cycles == LD + max(4, 8) and cost.crossings == 0 and cost.burst_bytes == 64


def test_mv_int8_vs_int4_is_bound_by_the_weight_port():
    int8 = duration(TINY, mv(64, 64))
    int4 = duration(TINY, mv(64, 64, wprec=WPrec.INT4))
    # compute: ceil(64/4) * ceil(64/4) = 256 cycles; the 8 B/cycle WGT port needs 512
    # cycles for 4096 INT8 weights and 256 for INT4 ones; before them the tile fill (the
    # row's 64 activations: 8 ACT lines, then 2); after them the MV's 23-cycle datapath
    # (2 frame + 3 skew along 4 cascaded slices + 4 DSP48E2 stages + 1 lane read + 5
    # accumulator stages + a 1-cycle drain + 7 requantiser stages).
    assert (int8, int4) == (10 + 512 + 23, 10 + 256 + 23)


@pytest.mark.parametrize(
    "mode, reads", [(SparseMode.S2_4, 2), (SparseMode.S4_16, 4), (SparseMode.S8_16, 4)]
)
def test_nm_sparse_mm_macs_are_n_over_m_of_dense_but_its_span_is_read_a_word_a_cycle(mode, reads):
    """N:M MM does N/M of the dense MACs, but each row reads its step's span of
    ``max(1, k / N) * M`` activations from its tile-buffer bank one 4-byte word a cycle
    (tiny: 2:4 8 B, 4:16 and 8:16 16 B): with k >= N that is the dense rate per
    activation (2:4, 4:16), with k < N slower (8:16: 4 entries of one 16-wide block)."""
    t = Timing(TINY)
    dense = isa.MM(m=4, n=16, k=64, a_stride=64, mult=1)
    sparse = isa.MM(m=4, n=16, k=64, a_stride=64, mult=1, sparse=mode)
    assert t.matmul_compute(dense) == 1 * 8 * 16
    assert t.matmul_compute(sparse) * mode.m == t.matmul_compute(dense) * mode.n
    assert (t.tile_read_cycles(dense), t.tile_read_cycles(sparse)) == (1, reads)
    steps = 64 * mode.n // mode.m // 4
    assert (t.matmul_tile(dense), t.matmul_tile(sparse)) == (16, steps * reads)


def test_a_sparse_step_reads_its_span_over_several_cycles():
    """Hand-computed on tiny (4-byte bank words, an 8-byte ACT line: an MV row reads 2
    words a cycle). MM 4 x 2 x K = 16 at 2:4: 8 stored entries, 2 steps of 4; a step's
    span is 2 blocks of 4 = 8 B, two words from each row's bank: 2 cycles (its weights
    take 1 WGT cycle, its indices 1 META cycle). The fill reads 4 rows x 2 lines, + 2;
    then 2 steps x 2 cycles; then the MM depth 24. MV 2:16 at K = 64: 8 stored entries,
    2 steps whose span is 2 blocks of 16 = 32 B = 4 MV reads of 8 B; fill 8 lines + 2,
    2 x 4 cycles, MV depth 23. Dense steps read their 4 bytes in one cycle. On kv260
    (16-byte words, 128-byte line) an MV reads 8 words a cycle: every N:M span in one."""
    t = Timing(TINY)
    mm = isa.MM(m=4, n=2, k=16, a_stride=16, mult=1, sparse=SparseMode.S2_4)
    assert (t.tile_read_cycles(mm), t.matmul_tile(mm)) == (2, 4)
    assert t.matmul(mm) == (8 + 2) + 4 + 24
    mv = isa.MV(n=4, k=64, mult=1, sparse=SparseMode.S2_16)
    assert (t.tile_read_cycles(mv), t.matmul_tile(mv)) == (4, 8)
    assert t.matmul(mv) == (8 + 2) + 8 + 23
    kv = Timing(load_target("kv260"))
    for mode in (SparseMode.S2_4, SparseMode.S2_16, SparseMode.S4_16, SparseMode.S8_16):
        assert kv.tile_read_cycles(isa.MV(n=16, k=4096, mult=1, sparse=mode)) == 1
        assert kv.tile_read_cycles(isa.MM(m=32, n=2, k=4096, mult=1, sparse=mode)) == (
            mode.m // mode.n
        )


def test_mm_tiles_rows_columns_and_k():
    t = Timing(TINY)
    # 5 rows need 2 row tiles of 4; 3 columns need 2 column tiles of 2; K=9 needs 3 of 4.
    assert t.matmul_compute(isa.MM(m=5, n=3, k=9, a_stride=9, mult=1)) == 2 * 2 * 3


def test_sfu_passes_and_port():
    t = Timing(TINY)
    add = isa.MISC(op=MiscOp.ADD, rows=2, cols=64)
    soft = isa.MISC(op=MiscOp.SOFTMAX, rows=1, cols=64, a_dt=DType.INT32)
    # ADD: two-cycle beats through the one ACT read port, the a run (8 INT8 in the 8 B
    # port) then the b run; the 4 lanes take the 8 elements in two phases, each phase's
    # 4 results one write: 8 beats = 16 cycles a row, then 18 cycles to done: unit
    # start, 2 address stages, read, the a run's wait for the b run, the lane's 12
    # stages, write. (Before the read side was one port, a and b had a port each and
    # ADD was charged 3 bytes an element on the byte-credit schedule: 24 cycles a row, 17
    # to done.) INT16 a and b: 4 elements a run, 32 cycles a row
    assert t.misc(add) == 2 * 16 + 18
    assert t.misc(isa.MISC(op=MiscOp.ADD, rows=1, cols=64, a_dt=DType.INT16, b_dt=DType.INT16)) == (
        32 + 18
    )
    # INT32 results: 4 lanes' results (16 B) do not fit the 8 B write run, so a beat takes
    # 2 elements, all in the first phase
    assert t.misc(isa.MISC(op=MiscOp.MUL, rows=1, cols=64, d_dt=DType.INT32)) == 64 + 18
    # SOFTMAX: 3 passes over 64 columns of INT32 in, INT8 out: 5 bytes an element -> 40,
    # then the row's sum register (1) and reciprocal (40 cycles) before its output pass;
    # 25 cycles to done:
    # the row maximum's tree over 4 lanes (2), round1 (5 lane stages), the exp2 ROM (1),
    # e * recip through the lane (12), 5 more
    assert t.misc(soft) == 3 * 40 + 41 + 25


def test_rope_reads_its_halves_in_alternate_cycles():
    """ROPE has one ACT read port, one ACT write port and one GLB read port: a beat reads
    the x1 and cos runs, then the x2 and sin runs (hand-computed on tiny)."""
    t = Timing(TINY)
    # 4 lanes, 8 B ACT runs, 4 B GLB line: a beat holds 2 INT16 cos (or sin) values, so 2
    # pairs. 2 rows of 2 heads of 8 columns: 4 pairs a head = 2 beats = 4 cycles; 16 issue
    # cycles, then 18 to done: 17 as every pipeline, +1 because the x1 run waits a cycle
    # for the x2 run (y2 goes through the lanes the cycle after y1).
    rope = isa.MISC(op=MiscOp.ROPE, rows=2, cols=16, len=8)
    assert t.misc(rope) == 2 * 2 * 4 + 18
    # a head of 6 columns: 3 pairs = beats of 2 and 1, still 4 cycles a head; INT32 in
    # (4 B an element: 2 in an 8 B run) changes nothing, the GLB run still bounds it
    assert t.misc(isa.MISC(op=MiscOp.ROPE, rows=1, cols=12, len=6, a_dt=DType.INT32)) == 8 + 18
    # before (one port per lane and half): max(cols / lanes, cols * 2 B / 8 B) = 4 a row
    # and 17 to done; the GLB line (4 B) carried 16 B of cos/sin a cycle


def test_row_reductions_hide_the_per_row_wait_behind_neighbouring_passes():
    """Hand-computed schedules of the pass orders in flightforge.sfu_row_ops."""
    t = Timing(TINY)
    # SOFTMAX, 3 rows of p = 5 (20 INT8 columns, 4 lanes), gap 41 (the row sum's register
    # and the 40-cycle divider): MAX0 SUM0 MAX1 [wait 36] OUT0 SUM1 MAX2 [36] OUT1 SUM2
    # [41] OUT2
    soft = isa.MISC(op=MiscOp.SOFTMAX, rows=3, cols=20)
    assert t.misc(soft) == 9 * 5 + 2 * 36 + 41 + 25
    # p = 50 > 41: only the last row waits
    assert t.misc(isa.MISC(op=MiscOp.SOFTMAX, rows=3, cols=200)) == 9 * 50 + 41 + 25
    # RMSNORM (gap 132: the reads go out 2 cycles after the issue, x*x is out of the lane
    # 3 cycles after x and summed over the lanes in 1), 4 rows of p = 50: STATS0 STATS1
    # [82] OUT0 STATS2 [32] OUT1 STATS3 [32] OUT2 [82] OUT3
    norm = isa.MISC(op=MiscOp.RMSNORM, rows=4, cols=200)
    assert t.misc(norm) == 8 * 50 + 82 + 32 + 32 + 82 + 17
    # one row: statistics, the whole sequence, output
    assert t.misc(isa.MISC(op=MiscOp.LAYERNORM, rows=1, cols=200)) == 2 * 50 + 185 + 17


def test_ld_overlaps_an_independent_mv():
    r = run([ld(64), mv(64, 64), HALT])
    s, e = r.schedule.start, r.schedule.end
    assert (s[0], e[0]) == (0, LD + 8)
    assert (s[1], e[1]) == (1, 1 + 545)  # dispatched one cycle later, runs concurrently
    assert r.cycles == 546 + 1  # HALT retires the cycle after the last completion
    assert r.busy["LD"] == LD + 8 and r.busy["MPE"] == 545


def test_missing_token_is_a_stall_in_the_breakdown():
    r = run([ld(64, release=LD_RELEASE_MPE), mv(64, 64, wait=MV_WAITS_LD), HALT])
    assert (r.schedule.start[1], r.schedule.end[1]) == (LD + 8, LD + 8 + 545)
    mpe = r.stalls["MPE"]
    assert (mpe["dispatch"], mpe["wait_LD"], mpe["drain"]) == (1, LD + 7, 1)  # HALT: +1
    ld_row = r.stalls["LD"]
    assert ld_row["drain"] == r.cycles - (LD + 8)
    for unit in ("LD", "ST", "MPE", "SFU"):
        assert r.busy[unit] + sum(r.stalls[unit].values()) == r.cycles


def test_a_buffer_side_held_by_another_unit_is_a_wait_and_a_stall():
    """One write port per buffer: a MISC writing ACT waits for a LD into ACT to end,
    though no token orders them (isa.buffer_sides); a MV reading WGT does not wait for
    a LD writing WGT (different sides), but a MISC after a MV waits for both ACT sides."""
    requant = isa.MISC(op=MiscOp.REQUANT, rows=1, cols=8, m0=1)
    # REQUANT: 2 bytes an element through the 8 B ACT port, 8 columns: 2 cycles, + 17
    # (the SFU's depth after the last issue: start, 2 address stages, read, 12 lane
    # stages, write)
    assert Timing(TINY).misc(requant) == 19
    r = run([ld(64, buf=Buf.ACT), requant, HALT])
    s, e = r.schedule.start.tolist(), r.schedule.end.tolist()
    assert (s[0], e[0]) == (0, LD + 8)
    assert (s[1], e[1]) == (LD + 8, LD + 27)  # dispatched at 1, ACT.write free at LD + 8
    sfu = r.stalls["SFU"]
    assert (sfu["dispatch"], sfu["buffer_side"], sfu["drain"]) == (1, LD + 7, 1)
    assert r.cycles == LD + 28
    r = run([ld(64, buf=Buf.WGT), mv(4, 8), requant, HALT])
    s, e = r.schedule.start.tolist(), r.schedule.end.tolist()
    assert s[1] == 1  # MV overlaps the LD into WGT
    assert s[2] == e[1]  # REQUANT waits for the MV's ACT sides
    assert r.stalls["SFU"]["buffer_side"] == e[1] - 2
    for unit in ("LD", "ST", "MPE", "SFU"):
        assert r.busy[unit] + sum(r.stalls[unit].values()) == r.cycles


def test_full_token_counter_is_a_release_room_stall():
    # token_depth 4: the fifth LD releasing to the MPE waits for the MPE to consume one.
    lds = [ld(64, release=LD_RELEASE_MPE) for _ in range(5)]
    mvs = [mv(4, 8, wait=MV_WAITS_LD) for _ in range(5)]
    r = run([mv(64, 64), *lds, *mvs, HALT])
    assert r.stalls["LD"]["release_room"] > 0
    assert stall_breakdown(r.instrs, r.schedule) == r.stalls


def test_two_cores_split_columns_and_pay_an_all_gather():
    one = Timing(TINY)
    two = Timing(TINY, TimingParams(cores=2))
    i = mv(64, 64)
    assert two.matmul_compute(i) * 2 == one.matmul_compute(i)
    # 32 columns x 64 INT8 weights per core through the WGT port: 256 cycles; + the fill
    # (8 lines + 2) and 23; then the all-gather: 32 + ceil(64 bytes * 1 / (2 * 64)).
    assert two.matmul(i) == 10 + 256 + 23 + 32 + 1
    # A weight load's share per core halves the port time; the channel still carries all.
    assert two.ld(ld(64)).cycles == one.ld(ld(64)).cycles == LD + 8
    # 32 columns a core in beats of 8: 8 cycles, then the depth (18 for ADD)
    assert two.misc(isa.MISC(op=MiscOp.ADD, rows=1, cols=64)) == 8 + 18
    assert two.misc(isa.MISC(op=MiscOp.RMSNORM, rows=1, cols=64)) == one.misc(
        isa.MISC(op=MiscOp.RMSNORM, rows=1, cols=64)
    )


def test_timing_params_are_checked():
    with pytest.raises(ValueError, match="mem_efficiency_pct must be 1..100, not 0"):
        TimingParams(mem_efficiency_pct=0)
    with pytest.raises(
        ValueError, match="interleave_bytes 12 must be a multiple of the burst size 8"
    ):
        Timing(TINY, TimingParams(interleave_bytes=12))


@pytest.fixture(scope="module")
def compiled():
    shape = DecoderShape(2, 32, 2, 2, 16, 64, 50, "swiglu", True)
    return compile_decoder(
        random_decoder(shape, seed=3), TINY, CompileOptions(max_len=12, lengths=(4, 5, 6, 8))
    ).program


def test_device_protocol_runs_sections(compiled):
    dev = CycleModel(TINY)
    with pytest.raises(DeviceError, match="no program loaded"):
        dev.run("decode_4")
    dev.load(compiled)
    dev.write(0, b"\x01\x02")
    assert dev.read(0, 2) == b"\0\0"
    res = dev.run("decode_4")
    assert res.cycles > 0 and res.instructions == len(compiled.section("decode_4"))
    assert 0 < res.stats["hbm_utilisation"] <= 1


def test_simulate_a_small_decoder(compiled, tmp_path):
    rep = simulate(compiled, TINY, prompt_len=4, decode_steps=3)
    assert rep.decode_method == "exact"
    assert [s["position"] for s in rep.decode_samples] == [4, 5, 6]
    assert rep.total_cycles == rep.prefill_cycles + sum(s["cycles"] for s in rep.decode_samples)
    assert rep.prefill_seconds == rep.prefill_cycles / 100e6
    assert rep.decode_tokens_per_s == pytest.approx(3 / rep.decode_seconds)
    # Later positions attend over more cached rows.
    cycles = [s["cycles"] for s in rep.decode_samples]
    assert cycles == sorted(cycles)
    assert 0 < rep.hbm_utilisation <= 1
    for unit in ("LD", "ST", "MPE", "SFU"):
        assert rep.busy[unit] + sum(rep.stalls[unit].values()) == rep.total_cycles
    path = tmp_path / "t.json"
    rep.write_trace(str(path))
    trace = json.loads(path.read_text())
    events = trace["traceEvents"]
    names = {e["args"]["name"] for e in events if e["ph"] == "M" and e["name"] == "thread_name"}
    assert names == {"sections", "LD", "ST", "MPE", "SFU"}
    slices = [e for e in events if e["ph"] == "X"]
    assert all(e["dur"] >= 0 and e["ts"] >= 0 and isinstance(e["tid"], int) for e in slices)
    per_unit = {}
    for e in slices:
        if e["tid"]:
            assert per_unit.get(e["tid"], -1) <= e["ts"] + 1e-9, "slices on one track overlap"
            per_unit[e["tid"]] = e["ts"] + e["dur"]
    assert len([e for e in slices if e["tid"] == 0]) == 4  # prefill + 3 decode runs


def test_missing_decode_positions_are_interpolated_only_on_request(compiled):
    with pytest.raises(DeviceError, match="no decode section for 1 of the 5 positions"):
        simulate(compiled, TINY, prompt_len=4, decode_steps=5)
    rep = simulate(compiled, TINY, prompt_len=4, decode_steps=5, interpolate=True)
    assert rep.decode_method == "interpolated"
    c = {s["position"]: s["cycles"] for s in rep.decode_samples}
    assert rep.decode_cycles == round(c[4] + c[5] + c[6] + (c[6] + c[8]) / 2 + c[8])
    with pytest.raises(DeviceError, match="never extrapolates"):
        simulate(compiled, TINY, prompt_len=4, decode_steps=6, interpolate=True)


def test_a_decode_bucket_is_sampled_and_interpolated_along_its_positions():
    """A bucket's stream attends over the actual context: its cycles grow with the
    position, the model times every 32nd position, and the sum matches timing each one."""
    shape = DecoderShape(1, 32, 2, 2, 16, 64, 50, "swiglu", True)
    prog = random_decoder(shape, seed=3)
    plan = BucketPlan(prefill=tuple((n, n) for n in range(1, 61)), decode=((1, 59),))
    bucketed = compile_decoder(
        prog, TINY, CompileOptions(max_len=60, buckets=plan, lengths=(4,))
    ).program
    exact = compile_decoder(
        prog, TINY, CompileOptions(max_len=60, lengths=(4,) + tuple(range(4, 44)))
    ).program
    sampled = simulate(bucketed, TINY, prompt_len=4, decode_steps=40)
    every = simulate(bucketed, TINY, prompt_len=4, decode_steps=40, sample_stride=1)
    assert sampled.decode_method == "sampled" and every.decode_method == "exact"
    assert [s["position"] for s in sampled.decode_samples] == [4, 36, 43]
    assert every.decode_cycles == simulate(exact, TINY, prompt_len=4, decode_steps=40).decode_cycles
    cycles = [s["cycles"] for s in every.decode_samples]
    assert cycles[-1] > cycles[0]
    assert sampled.decode_cycles == pytest.approx(every.decode_cycles, rel=0.005)
    with pytest.raises(DeviceError, match="sample_stride must be at least 1"):
        simulate(bucketed, TINY, prompt_len=4, decode_steps=2, sample_stride=0)


def test_more_cores_are_faster_on_the_same_program(compiled):
    one = simulate(compiled, TINY, 4, 1, params=TimingParams(cores=1))
    two = simulate(compiled, TINY, 4, 1, params=TimingParams(cores=2, sync_latency_cycles=0))
    assert two.cores == 2 and two.total_cycles < one.total_cycles


def test_cli_simulate_prints_a_report_and_writes_a_trace(compiled, tmp_path):
    from click.testing import CliRunner

    from flightforge.cli import main

    path = tmp_path / "dec.ffb"
    compiled.save(path)
    trace = tmp_path / "trace.json"
    result = CliRunner().invoke(
        main,
        [
            "simulate",
            str(path),
            "--target",
            "tiny",
            "--prompt-len",
            "4",
            "--decode",
            "3",
            "--trace",
            str(trace),
        ],
    )
    assert result.exit_code == 0, result.output
    assert "token/s" in result.output and "time to first token" in result.output
    assert json.loads(trace.read_text())["traceEvents"]
    result = CliRunner().invoke(
        main, ["simulate", str(path), "--target", "tiny", "--prompt-len", "4", "--decode", "5"]
    )
    assert result.exit_code == 1
    assert result.output == (
        f"Error: {path} has no decode section for 1 of the 5 decode steps (position 7; "
        "compiled decode positions: 4..6, 8); compile them (`flightforge compile ... "
        "--max-len 8` without --lengths, or --lengths naming them) or add --interpolate\n"
    )
    result = CliRunner().invoke(
        main,
        ["simulate", str(path), "--target", "tiny", "--prompt-len", "4", "--decode", "6"]
        + ["--interpolate"],
    )
    assert result.exit_code == 1
    assert result.output == (
        f"Error: {path} cannot time decode position 9: --interpolate needs compiled decode "
        "positions below and above it (compiled: 4..6, 8), it never extrapolates; compile "
        "with --max-len 10 or more\n"
    )


def test_requantisers_hold_back_tiles_shorter_than_their_drain():
    """tiny's 4 requantisers drain an MM tile (4 x 2) in 2 cycles, so a tile's last step
    waits until the previous tile's drain is under way: each of the 2 row tiles fills
    its 4 rows (one ACT line each, + 2), runs its first column tile (one 1-cycle step)
    and its second held to max(1, 2) cycles; then the 24-cycle MM depth (2 frame + 8
    chain + 5 accumulator + 2 drain + 7 requantiser stages)."""
    t = Timing(TINY)
    i = isa.MM(m=8, n=4, k=4, a_stride=4, mult=1)
    assert t.matmul_tile(i) == 1
    assert t.matmul(i) == 2 * (4 + 2 + 1 + 2) + 24
    # a tile as long as its drain is not held back: 2 steps of 1 cycle
    j = isa.MM(m=8, n=4, k=8, a_stride=8, mult=1)
    assert t.matmul_tile(j) == 2 and t.matmul(j) == 2 * (4 + 2 + 2 * 2) + 24


def test_mv_tiles_drain_in_one_cycle():
    """An MV tile is one row of 4 columns: the 4 requantisers take it in one cycle, so
    one-step MV tiles (4 columns x 4 INT4 weights = 8 bytes, one WGT port cycle) run
    back to back after the fill (1 line + 2): 3 tiles of 1 cycle, then the MV depth 23."""
    t = Timing(TINY)
    i = isa.MV(n=12, k=4, mult=1, wprec=WPrec.INT4)
    assert (t.matmul_tile(i), t.matmul(i)) == (1, 3 + 3 + 23)


def test_tile_fill_reads_every_line_each_row_touches():
    """Hand-computed: MM 6 x 12 activations from a_addr 5, rows 13 B apart, on tiny's
    8 B ACT line. Rows start at 5, 18, 31, 44, 57, 70 (offsets 5 2 7 4 1 6 in their
    lines) and touch ceil((offset + 12) / 8) = 3 2 3 2 2 3 lines. Row tile 0 (rows 0-3)
    fills 10 lines + 2, row tile 1 (rows 4, 5) 5 + 2; each then runs its one column tile
    of 3 one-cycle steps (12 INT8 weights of 2 columns: 8 B, one WGT cycle a step); then
    the 24-cycle MM depth."""
    t = Timing(TINY)
    i = isa.MM(m=6, n=2, k=12, a_addr=5, a_stride=13, mult=1)
    assert t.matmul_tile(i) == 3
    assert t.fill_lines(5, 13, 12, 4) == 10 and t.fill_lines(5 + 4 * 13, 13, 12, 2) == 5
    assert t.matmul(i) == (10 + 2 + 3) + (5 + 2 + 3) + 24
    # aligned rows touch ceil(K / line) lines: 6 x 2 here
    aligned = isa.MM(m=6, n=2, k=12, a_addr=8, a_stride=16, mult=1)
    assert t.matmul(aligned) == (8 + 2 + 3) + (4 + 2 + 3) + 24
    # the offsets repeat every line / gcd(stride, line) rows: 1000 rows summed by period
    assert t.fill_lines(3, 13, 12, 1000) == sum(
        -(-((3 + r * 13) % 8 + 12) // 8) for r in range(1000)
    )


def test_a_fill_shorter_than_the_drain_overlaps_it():
    """With one requantiser (mm.n = mv.n = 1) an MM tile of 8 rows drains in 8 cycles.
    MM 9 x 1 x 4: row tile 0 fills 8 lines + 2 and runs one 1-cycle step; row tile 1
    (row 8 alone) fills 1 line + 2, and its step waits until 8 cycles after row tile
    0's: the fill runs during the drain, max(3 + 1, 8). Then the depth (2 frame + 8
    chain + 5 accumulator + 8 drain + 7)."""
    d = TINY.model_dump(mode="json")
    d["mpe"].update(mm={"n": 1, "k": 4, "m": 8}, mv={"n": 1, "k": 4, "m": 1})
    arch = arch_from_dict(d)
    assert arch.mpe.drain(arch.mpe.mm) == 8
    t = Timing(arch)
    i = isa.MM(m=9, n=1, k=4, a_stride=8, mult=1)
    assert t.matmul(i) == (8 + 2 + 1) + max(1 + 2 + 1, 8) + (2 + 8 + 5 + 8 + 7)


def test_a_step_of_several_scale_groups_takes_a_cycle_each():
    """A segment accumulator has one multiplier: a step holding several scale groups
    takes one cycle per group. 2:16 weights with 16-wide groups store 2 entries per
    group, so tiny's 4-entry MV step holds 2 groups: an MV of one column and K = 32 (4
    stored INT4 entries: 2 weight bytes, 2 index bytes, one port cycle each) would take
    2 cycles for its step instead of 1, but its 32-byte span takes 4 tile-buffer reads
    (test_a_sparse_step_reads_its_span_over_several_cycles): 4, after the fill of its 32
    activations (4 lines + 2), then the MV depth 23 plus the last step's second group;
    on kv260 the same step is its 8 groups. 2:4 weights store 8 entries per group, more
    than a step: its 16 stored entries are 4 steps of 1 cycle (an 8-byte span, 1 read)."""
    t = Timing(TINY)
    kw = dict(n=1, k=32, mult=1, wprec=WPrec.INT4, gsz=1, colp=1)
    i = isa.MV(sparse=SparseMode.S2_16, **kw)
    # the step's 32-byte span takes 4 tile-buffer reads on tiny, more than its 2 groups
    assert (t.scale_cycles(i), t.tile_read_cycles(i), t.matmul_tile(i)) == (2, 4, 4)
    assert t.matmul(i) == 6 + 4 + 23 + 1
    # kv260 (k = 16): 8 groups of 2 stored entries, the span read in one cycle
    kv = Timing(load_target("kv260"))
    assert (kv.scale_cycles(i), kv.tile_read_cycles(i), kv.matmul_tile(i)) == (8, 1, 8)
    j = isa.MV(sparse=SparseMode.S2_4, **kw)
    assert (t.scale_cycles(j), t.matmul_tile(j), t.matmul(j)) == (1, 4, 6 + 4 + 23)
