// The host side of the Verilator testbench (flightforge_tb.sv): external memory, the
// memory channels' timing, and the section/dump requests of the cocotb replay.
//
// Why C++: the memory channels must act on every clock edge while a transfer is in
// flight; as cocotb coroutines they cost Python per cycle and bounded the simulation
// at a few hundred cycles per second. Here the SystemVerilog wrapper calls them through
// DPI-C at each edge, so Verilator free-runs through a whole section and Python only
// waits for its end. Python reaches the same state through ctypes on the simulator
// process (the executable is linked with -rdynamic, so ctypes.CDLL(None) finds the
// ff_* functions below): memory is loaded and read in bulk, never a word per VPI call.
//
// ReadChannel and WriteChannel are line-for-line ports of flightforge.sim.bus_model
// (the reference, also driven by Amaranth's Python simulator); keep them in step.
//
// One simulation process holds one testbench, and DPI-C functions carry no instance
// pointer, so the state is one object reached through host().

#include <algorithm>
#include <cstdint>
#include <cstring>
#include <deque>
#include <map>
#include <string>
#include <vector>

#include "svdpi.h"
#if __has_include("Vtop__Dpi.h")
#include "Vtop__Dpi.h"  // the prototypes Verilator derived from the SV imports: checked here
#endif

namespace {

// Sparse byte-addressed memory of `capacity` bytes, zero until written (as
// flightforge.sim.functional.ExternalMemory, whose page size it shares).
class Memory {
public:
    uint64_t capacity = 0;
    int page_bits = 20;
    std::map<uint64_t, std::vector<uint8_t>> pages;

    // Records the first access outside memory in `error`, worded as ExternalMemory's.
    bool check(uint64_t addr, uint64_t size, const char* what, std::string& error) const {
        if (addr + size <= capacity && addr + size >= addr) return true;
        if (error.empty()) {
            error = std::string(what) + ": bytes " + std::to_string(addr) + ".." +
                    std::to_string(addr + size - 1) + " are outside external memory (0.." +
                    std::to_string(capacity - 1) + ")";
        }
        return false;
    }

    void write(uint64_t addr, const uint8_t* data, uint64_t size) {
        const uint64_t page_size = uint64_t(1) << page_bits;
        for (uint64_t pos = 0; pos < size;) {
            const uint64_t a = addr + pos, off = a & (page_size - 1);
            const uint64_t n = std::min(size - pos, page_size - off);
            std::vector<uint8_t>& page = pages[a >> page_bits];
            if (page.empty()) page.assign(page_size, 0);
            std::memcpy(page.data() + off, data + pos, n);
            pos += n;
        }
    }

    void read(uint64_t addr, uint8_t* out, uint64_t size) const {
        const uint64_t page_size = uint64_t(1) << page_bits;
        for (uint64_t pos = 0; pos < size;) {
            const uint64_t a = addr + pos, off = a & (page_size - 1);
            const uint64_t n = std::min(size - pos, page_size - off);
            auto it = pages.find(a >> page_bits);
            if (it == pages.end()) {
                std::memset(out + pos, 0, n);
            } else {
                std::memcpy(out + pos, it->second.data() + off, n);
            }
            pos += n;
        }
    }
};

struct Timing {
    int64_t rd_latency = 0, wr_latency = 0, penalty = 0;
    uint64_t channel_bytes = 1;
};

int64_t crossings(uint64_t addr, uint64_t nbytes, uint64_t channel_bytes) {
    return int64_t((addr + nbytes - 1) / channel_bytes) - int64_t(addr / channel_bytes);
}

// Bits 8*i .. 8*i+7 of a DPI bit vector are byte i (svBitVecVal: 32-bit words, LSB first).
void put_bytes(svBitVecVal* vec, const uint8_t* bytes, int n) {
    for (int w = 0; w < (n + 3) / 4; ++w) vec[w] = 0;
    for (int i = 0; i < n; ++i) vec[i / 4] |= svBitVecVal(bytes[i]) << (8 * (i % 4));
}

uint8_t get_byte(const svBitVecVal* vec, int i) { return uint8_t(vec[i / 4] >> (8 * (i % 4))); }

struct ReadCommand {
    int64_t first;
    std::vector<uint8_t> payload;
    int64_t beats, crossings;
};

// Port of bus_model.ReadChannel.step.
class ReadChannel {
public:
    int64_t now = 0;

    void step(Memory& mem, const Timing& t, int beat_bytes, std::string& error, bool cmd_valid,
              uint64_t cmd_addr, int64_t cmd_beats, bool data_ready, bool& data_valid,
              std::vector<uint8_t>& data) {
        if (active_ && data_ready) {
            if (++beat_ == current_.beats) {
                active_ = false;
                free_at_ = now + 1;
            }
        }
        if (cmd_valid) {
            const uint64_t nbytes = uint64_t(cmd_beats) * beat_bytes;
            ReadCommand c{now + t.rd_latency, std::vector<uint8_t>(nbytes, 0), cmd_beats,
                          crossings(cmd_addr, nbytes, t.channel_bytes)};
            if (mem.check(cmd_addr, nbytes, "LD command", error)) {
                mem.read(cmd_addr, c.payload.data(), nbytes);
            }
            pending_.push_back(std::move(c));
        }
        now += 1;
        if (!active_ && !pending_.empty() && pending_.front().first <= now) {
            const ReadCommand& head = pending_.front();
            if (std::max(head.first, free_at_) + t.penalty * head.crossings <= now) {
                current_ = std::move(pending_.front());
                pending_.pop_front();
                active_ = true;
                beat_ = 0;
            }
        }
        data_valid = active_;
        if (active_) {
            data.assign(current_.payload.begin() + beat_ * beat_bytes,
                        current_.payload.begin() + (beat_ + 1) * beat_bytes);
        }
    }

private:
    std::deque<ReadCommand> pending_;
    ReadCommand current_{};
    bool active_ = false;
    int64_t beat_ = 0, free_at_ = 0;
};

struct WriteCommand {
    uint64_t addr;
    int64_t beats, crossings, received;
};

// Port of bus_model.WriteChannel.step.
class WriteChannel {
public:
    int64_t now = 0;

    bool step(Memory& mem, const Timing& t, int beat_bytes, std::string& error, bool cmd_valid,
              uint64_t cmd_addr, int64_t cmd_beats, bool data_valid, const svBitVecVal* data,
              const svBitVecVal* strb) {
        if (cmd_valid) {
            commands_.push_back({cmd_addr, cmd_beats,
                                 crossings(cmd_addr, uint64_t(cmd_beats) * beat_bytes,
                                           t.channel_bytes), 0});
        }
        if (data_valid) {
            if (commands_.empty()) {
                if (error.empty()) {
                    error = "cycle " + std::to_string(now) + ": a write beat without a command";
                }
            } else {
                WriteCommand& c = commands_.front();
                const uint64_t base = c.addr + uint64_t(c.received) * beat_bytes;
                for (int b = 0; b < beat_bytes; ++b) {
                    if ((get_byte(strb, b / 8) >> (b % 8)) & 1) {
                        const uint8_t byte = get_byte(data, b);
                        if (mem.check(base + b, 1, "ST beat", error)) mem.write(base + b, &byte, 1);
                    }
                }
                if (++c.received == c.beats) {
                    responses_.push_back(now + t.wr_latency + t.penalty * c.crossings);
                    commands_.pop_front();
                }
            }
        }
        now += 1;
        if (!responses_.empty() && responses_.front() <= now) {
            responses_.pop_front();
            return true;
        }
        return false;
    }

private:
    std::deque<WriteCommand> commands_;
    std::deque<int64_t> responses_;
};

enum Op : int { OP_NONE = 0, OP_LOAD = 1, OP_RUN = 2, OP_DUMP = 3 };  // as in flightforge_tb.sv

struct Window {
    int64_t buf, lo, hi;
};

struct Host {
    Memory mem;
    Timing timing;
    int beat_bytes = 1, instr_bytes = 1;
    ReadChannel rd;
    WriteChannel wr;
    std::vector<uint8_t> beat;
    std::string error;  // the first fault (memory access outside capacity, protocol)

    int op = OP_NONE;  // the request the wrapper takes at its next idle edge
    std::vector<uint8_t> code;
    int64_t max_cycles = 0;
    int run_d = 0;  // the length register while the section runs
    int64_t result[4] = {0, 0, 0, 0};  // cycles, timeout, illegal, token_error

    std::vector<Window> windows;
    size_t window = 0;
    int64_t next_addr = 0;
    std::vector<uint8_t> dumped;
};

Host& host() {
    static Host h;
    return h;
}

}  // namespace

// --- called from Python (ctypes) ----------------------------------------------------------

extern "C" {

int ff_configure(uint64_t capacity, int page_bits, int beat_bytes, int instr_bytes,
                 int64_t rd_latency, int64_t wr_latency, int64_t penalty,
                 uint64_t channel_bytes) {
    Host& h = host();
    h.mem.capacity = capacity;
    h.mem.page_bits = page_bits;
    h.beat_bytes = beat_bytes;
    h.instr_bytes = instr_bytes;
    h.timing = Timing{rd_latency, wr_latency, penalty, channel_bytes};
    return 0;
}

// 0 on success; -1 (and ff_error(), if it is the first fault) for bytes outside memory.
int ff_mem_write(uint64_t addr, const uint8_t* data, uint64_t size) {
    Host& h = host();
    if (!h.mem.check(addr, size, "write", h.error)) return -1;
    h.mem.write(addr, data, size);
    return 0;
}

int ff_mem_read(uint64_t addr, uint8_t* out, uint64_t size) {
    Host& h = host();
    if (!h.mem.check(addr, size, "read", h.error)) return -1;
    h.mem.read(addr, out, size);
    return 0;
}

// The indices of the pages written so far, ascending; returns their number (at most
// `max` are stored).
uint64_t ff_pages(uint64_t* out, uint64_t max) {
    uint64_t n = 0;
    for (const auto& kv : host().mem.pages) {
        if (n < max) out[n] = kv.first;
        ++n;
    }
    return n;
}

int ff_page_read(uint64_t page, uint8_t* out) {
    const Memory& mem = host().mem;
    auto it = mem.pages.find(page);
    if (it == mem.pages.end()) return -1;
    std::memcpy(out, it->second.data(), it->second.size());
    return 0;
}

void ff_request_load(const uint8_t* code, uint64_t size) {
    Host& h = host();
    h.code.assign(code, code + size);
    h.op = OP_LOAD;
}

void ff_request_run(int64_t max_cycles, int run_d) {
    Host& h = host();
    h.max_cycles = max_cycles;
    h.run_d = run_d;
    h.op = OP_RUN;
}

// `windows` holds `count` (buffer, lo, hi) triples; their bytes are dumped in order.
void ff_request_dump(const int64_t* windows, uint64_t count) {
    Host& h = host();
    h.windows.clear();
    for (uint64_t i = 0; i < count; ++i) {
        h.windows.push_back({windows[3 * i], windows[3 * i + 1], windows[3 * i + 2]});
    }
    h.window = 0;
    h.next_addr = h.windows.empty() ? 0 : h.windows[0].lo;
    h.dumped.clear();
    h.op = OP_DUMP;
}

uint64_t ff_dump_size() { return host().dumped.size(); }

void ff_dump_copy(uint8_t* out) {
    const std::vector<uint8_t>& d = host().dumped;
    std::memcpy(out, d.data(), d.size());
}

void ff_run_result(int64_t* out) { std::memcpy(out, host().result, sizeof host().result); }

const char* ff_error() { return host().error.c_str(); }

// --- called from SystemVerilog (DPI-C imports of flightforge_tb.sv) -----------------------

void ff_begin(int* op, int* instructions, long long* max_cycles, int* run_d) {
    Host& h = host();
    *op = h.op;
    *instructions = int(h.code.size() / h.instr_bytes);
    *max_cycles = h.max_cycles;
    *run_d = h.run_d;
    h.op = OP_NONE;
}

void ff_code_word(int index, svBitVecVal* word) {
    Host& h = host();
    put_bytes(word, h.code.data() + size_t(index) * h.instr_bytes, h.instr_bytes);
}

void ff_rd_tick(svBit cmd_valid, long long cmd_addr, int cmd_beats, svBit data_ready,
                svBit* data_valid, svBitVecVal* data) {
    Host& h = host();
    bool valid = false;
    h.rd.step(h.mem, h.timing, h.beat_bytes, h.error, cmd_valid, uint64_t(cmd_addr), cmd_beats,
              data_ready, valid, h.beat);
    *data_valid = valid;
    if (valid) {
        put_bytes(data, h.beat.data(), h.beat_bytes);
    } else {
        for (int w = 0; w < (h.beat_bytes + 3) / 4; ++w) data[w] = 0;
    }
}

void ff_wr_tick(svBit cmd_valid, long long cmd_addr, int cmd_beats, svBit data_valid,
                const svBitVecVal* data, const svBitVecVal* strb, svBit* resp_valid) {
    Host& h = host();
    *resp_valid = h.wr.step(h.mem, h.timing, h.beat_bytes, h.error, cmd_valid,
                            uint64_t(cmd_addr), cmd_beats, data_valid, data, strb);
}

svBit ff_faulted() { return !host().error.empty(); }

void ff_end_run(long long cycles, svBit timeout, svBit illegal, svBit token_error) {
    int64_t* r = host().result;
    r[0] = cycles;
    r[1] = timeout;
    r[2] = illegal;
    r[3] = token_error;
}

// The next (buffer, address) to read through the debug port; 0 when the dump is over.
svBit ff_dump_next(int* buf, int* addr) {
    Host& h = host();
    while (h.window < h.windows.size() && h.next_addr >= h.windows[h.window].hi) {
        if (++h.window < h.windows.size()) h.next_addr = h.windows[h.window].lo;
    }
    if (h.window >= h.windows.size()) return 0;
    *buf = int(h.windows[h.window].buf);
    *addr = int(h.next_addr++);
    return 1;
}

void ff_dump_byte(int value) { host().dumped.push_back(uint8_t(value)); }

}  // extern "C"
