// Simulation-only top for the FlightForge core under Verilator (not part of the RTL
// that `flightforge rtl` exports; flightforge.sim.rtl_harness builds the two together).
//
// The core's Verilog is the device under test, unchanged. Around it this wrapper holds
// what the cocotb testbench used to do cycle by cycle in Python:
//   - the external memory's read and write channels: C++ models (flightforge_tb_host.cpp,
//     ports of flightforge.sim.bus_model) stepped through DPI-C at every rising edge with
//     the values the core drives before the edge; their outputs are registered here;
//   - a host sequencer that loads a section's code into the instruction buffer (one
//     instruction per cycle); runs it: holds the length register `run_d`, pulses `start`
//     and counts the section's cycles until `halted` rises (or a cycle limit, or a
//     memory fault); and dumps buffer windows through the debug port (one byte per
//     cycle, pipelined).
// The host asks for an operation by toggling `req` after describing it to the C++ side;
// `ack` follows `req` when it is over, so Python waits on one trigger per operation.
module flightforge_tb #(
    parameter int BEAT_BYTES = 8,
    parameter int ADDR_BITS = 36,
    parameter int BEATS_BITS = 21,
    parameter int INSTR_BITS = 384,
    parameter int IMEM_ADDR_BITS = 12,
    parameter int BUF_ADDR_BITS = 24,
    parameter int DIM_BITS = 16
) (
    input  logic clk,
    input  logic rst,
    input  logic req,
    output logic ack
);
    localparam int BEAT_BITS = 8 * BEAT_BYTES;
    localparam int OP_LOAD = 1, OP_RUN = 2, OP_DUMP = 3;  // as Op in the C++

    import "DPI-C" function void ff_begin(output int op, output int instructions,
                                          output longint max_cycles, output int run_d);
    import "DPI-C" function void ff_code_word(input int index, output bit [INSTR_BITS-1:0] word);
    import "DPI-C" function void ff_rd_tick(input bit cmd_valid, input longint cmd_addr,
                                            input int cmd_beats, input bit data_ready,
                                            output bit data_valid, output bit [BEAT_BITS-1:0] data);
    import "DPI-C" function void ff_wr_tick(input bit cmd_valid, input longint cmd_addr,
                                            input int cmd_beats, input bit data_valid,
                                            input bit [BEAT_BITS-1:0] data,
                                            input bit [BEAT_BYTES-1:0] strb, output bit resp_valid);
    import "DPI-C" function bit ff_faulted();
    import "DPI-C" function void ff_end_run(input longint cycles, input bit timeout,
                                            input bit illegal, input bit token_error);
    import "DPI-C" function bit ff_dump_next(output int buf_index, output int addr);
    import "DPI-C" function void ff_dump_byte(input int value);

    logic start, halted, illegal, token_error;
    logic [DIM_BITS-1:0] run_d;
    logic imem_we;
    logic [IMEM_ADDR_BITS-1:0] imem_addr;
    logic [INSTR_BITS-1:0] imem_wdata;
    logic rd_cmd_valid, rd_data_valid, rd_data_ready;
    logic [ADDR_BITS-1:0] rd_cmd_addr;
    logic [BEATS_BITS-1:0] rd_cmd_beats;
    logic [BEAT_BITS-1:0] rd_data;
    logic wr_cmd_valid, wr_data_valid, wr_resp_valid;
    logic [ADDR_BITS-1:0] wr_cmd_addr;
    logic [BEATS_BITS-1:0] wr_cmd_beats;
    logic [BEAT_BITS-1:0] wr_data;
    logic [BEAT_BYTES-1:0] wr_strb;
    logic dbg_en;
    logic [2:0] dbg_buf;
    logic [BUF_ADDR_BITS-1:0] dbg_addr;
    logic [7:0] dbg_rdata;

    flightforge_core core (
        .clk(clk), .rst(rst), .start(start), .run_d(run_d), .halted(halted), .illegal(illegal),
        .token_error(token_error),
        .imem_we(imem_we), .imem_addr(imem_addr), .imem_wdata(imem_wdata),
        .mem_rd__cmd_valid(rd_cmd_valid), .mem_rd__cmd_ready(1'b1),
        .mem_rd__cmd_addr(rd_cmd_addr), .mem_rd__cmd_beats(rd_cmd_beats),
        .mem_rd__data_valid(rd_data_valid), .mem_rd__data_ready(rd_data_ready),
        .mem_rd__data(rd_data),
        .mem_wr__cmd_valid(wr_cmd_valid), .mem_wr__cmd_ready(1'b1),
        .mem_wr__cmd_addr(wr_cmd_addr), .mem_wr__cmd_beats(wr_cmd_beats),
        .mem_wr__data_valid(wr_data_valid), .mem_wr__data_ready(1'b1), .mem_wr__data(wr_data),
        .mem_wr__strb(wr_strb), .mem_wr__resp_valid(wr_resp_valid),
        .dbg_en(dbg_en), .dbg_we(1'b0), .dbg_buf(dbg_buf), .dbg_addr(dbg_addr),
        .dbg_wdata(8'd0), .dbg_rdata(dbg_rdata)
    );

    // Memory channels. The models take every command (cmd_ready and the write channel's
    // data_ready are tied high, as the bus protocol lets memory do).
    always @(posedge clk) begin
        bit rd_valid, resp;
        bit [BEAT_BITS-1:0] beat;
        ff_rd_tick(rd_cmd_valid, longint'(rd_cmd_addr), int'(rd_cmd_beats), rd_data_ready,
                   rd_valid, beat);
        ff_wr_tick(wr_cmd_valid, longint'(wr_cmd_addr), int'(wr_cmd_beats), wr_data_valid,
                   wr_data, wr_strb, resp);
        rd_data_valid <= rd_valid;
        rd_data <= beat;
        wr_resp_valid <= resp;
    end

    // Host sequencer.
    typedef enum logic [2:0] {IDLE, LOAD, START, RUN, DUMP} state_t;
    state_t state;
    int count;  // LOAD: next instruction; RUN: cycles since the edge that took `start`
    int instructions;
    longint limit;
    logic dump_read;  // DUMP: the debug port answers a read in this cycle

    always @(posedge clk) begin
        if (rst) begin
            state <= IDLE;
            ack <= req;
            start <= 0;
            run_d <= 0;
            imem_we <= 0;
            dbg_en <= 0;
            dump_read <= 0;
        end else begin
            start <= 0;
            imem_we <= 0;
            dbg_en <= 0;
            case (state)
                IDLE: if (req != ack) begin
                    int op, n, d;
                    longint max_cycles;
                    ff_begin(op, n, max_cycles, d);
                    instructions <= n;
                    limit <= max_cycles;
                    count <= 0;
                    dump_read <= 0;
                    start <= op == OP_RUN;
                    if (op == OP_RUN) run_d <= DIM_BITS'(d);
                    case (op)
                        OP_LOAD: state <= LOAD;
                        OP_RUN: state <= START;
                        OP_DUMP: state <= DUMP;
                        default: ack <= req;
                    endcase
                end
                LOAD: if (count == instructions) begin
                    state <= IDLE;
                    ack <= req;
                end else begin
                    bit [INSTR_BITS-1:0] word;
                    ff_code_word(count, word);
                    imem_we <= 1;
                    imem_addr <= IMEM_ADDR_BITS'(count);
                    imem_wdata <= word;
                    count <= count + 1;
                end
                START: begin  // the core takes `start` at this edge: model time 0
                    count <= 0;
                    state <= RUN;
                end
                RUN: begin
                    // `halted` seen before this edge rose at the previous one, `count`
                    // edges after the one that took `start`: the section's cycles.
                    if (halted || longint'(count) >= limit || ff_faulted()) begin
                        ff_end_run(longint'(count), !halted && !ff_faulted(), illegal,
                                   token_error);
                        state <= IDLE;
                        ack <= req;
                    end else begin
                        count <= count + 1;
                    end
                end
                DUMP: begin
                    int b, a;
                    if (dump_read) ff_dump_byte(int'(dbg_rdata));
                    dump_read <= dbg_en;  // the read the core takes at this edge answers next cycle
                    if (ff_dump_next(b, a)) begin
                        dbg_en <= 1;
                        dbg_buf <= 3'(b);
                        dbg_addr <= BUF_ADDR_BITS'(a);
                    end else if (!dbg_en && !dump_read) begin
                        state <= IDLE;
                        ack <= req;
                    end
                end
                default: state <= IDLE;
            endcase
        end
    end
endmodule
