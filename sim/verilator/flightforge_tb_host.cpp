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

// Port of flightforge.sim.dram_model.Dram (the independent memory): integers in ps.
struct DramTiming {
    int64_t clock_khz = 0, channels = 0, channel_bytes = 0, interleave_bytes = 0, atom_bytes = 0,
            banks = 0, page_bytes = 0, atom_ps = 0, rcd_ps = 0, rp_ps = 0, cl_ps = 0, cwl_ps = 0,
            ras_ps = 0, wr_ps = 0, wtr_ps = 0, rtw_ps = 0, refi_ps = 0, rfc_ps = 0, fixed_ps = 0;
};
constexpr int DRAM_FIELDS = 19;  // DramTiming.as_list() in dram_model.py, in this order

struct DramChannel {
    std::vector<int64_t> open_row, act_at, pre_ok, ready;
    int64_t bus_free = 0, last_read_end = -1000000000000000LL,
            last_write_end = -1000000000000000LL, next_refresh = 0;
};

int64_t cdiv(int64_t a, int64_t b) { return (a + b - 1) / b; }  // ceiling, b > 0, a >= 0

class Dram {
public:
    DramTiming t;
    std::vector<DramChannel> channels;

    void configure(const DramTiming& timing) {
        t = timing;
        channels.assign(size_t(t.channels), DramChannel{});
        for (DramChannel& ch : channels) {
            ch.open_row.assign(size_t(t.banks), -1);
            ch.act_at.assign(size_t(t.banks), 0);
            ch.pre_ok.assign(size_t(t.banks), 0);
            ch.ready.assign(size_t(t.banks), 0);
            ch.next_refresh = t.refi_ps;
        }
    }

    int64_t cycle_ps(int64_t cycle) const { return cycle * 1000000000LL / t.clock_khz; }
    int64_t ready_cycle(int64_t ps) const { return cdiv(ps * t.clock_khz, 1000000000LL); }

    void refresh(DramChannel& ch, int64_t at) {
        while (ch.next_refresh <= at) {
            int64_t start = std::max(ch.next_refresh, ch.bus_free);
            bool any_open = false;
            for (int64_t r : ch.open_row) any_open |= r >= 0;
            if (any_open) {
                for (int64_t b = 0; b < t.banks; ++b) start = std::max(start, ch.act_at[b] + t.ras_ps);
                for (int64_t p : ch.pre_ok) start = std::max(start, p);
                start += t.rp_ps;
            }
            const int64_t end = start + t.rfc_ps;
            for (int64_t b = 0; b < t.banks; ++b) {
                ch.open_row[b] = -1;
                ch.ready[b] = std::max(ch.ready[b], end);
            }
            ch.next_refresh += t.refi_ps;
        }
    }

    int64_t access(int64_t addr, int64_t at, bool write) {
        int64_t c, off;
        if (t.interleave_bytes) {
            const int64_t unit = addr / t.interleave_bytes, within = addr % t.interleave_bytes;
            c = unit % t.channels;
            off = (unit / t.channels) * t.interleave_bytes + within;
        } else {
            c = addr / t.channel_bytes;
            off = addr % t.channel_bytes;
        }
        const int64_t page = off / t.page_bytes, b = page % t.banks, row = page / t.banks;
        DramChannel& ch = channels[size_t(c)];
        refresh(ch, at);
        int64_t start = std::max(at, ch.ready[b]), cas;
        if (ch.open_row[b] == row) {
            cas = start;
        } else {
            if (ch.open_row[b] >= 0) {
                start = std::max({start, ch.act_at[b] + t.ras_ps, ch.pre_ok[b]}) + t.rp_ps;
            }
            ch.open_row[b] = row;
            ch.act_at[b] = start;
            cas = start + t.rcd_ps;
        }
        int64_t first;
        if (write) {
            first = std::max({cas + t.cwl_ps, ch.bus_free, ch.last_read_end + t.rtw_ps});
        } else {
            cas = std::max(cas, ch.last_write_end + t.wtr_ps);
            first = std::max(cas + t.cl_ps, ch.bus_free);
        }
        const int64_t end = first + t.atom_ps;
        ch.bus_free = end;
        ch.ready[b] = std::max(ch.ready[b], first - (write ? t.cwl_ps : t.cl_ps));
        if (write) {
            ch.last_write_end = end;
            ch.pre_ok[b] = end + t.wr_ps;
        } else {
            ch.last_read_end = end;
        }
        return first + t.fixed_ps;
    }

    std::vector<int64_t> read_beats(int64_t cycle, uint64_t addr, int64_t beats, int beat_bytes) {
        const int64_t at = cycle_ps(cycle + 1), a = t.atom_bytes;
        const int64_t lo_atom = int64_t(addr) / a;
        const int64_t hi_atom = (int64_t(addr) + beats * beat_bytes - 1) / a;
        std::vector<int64_t> start;
        for (int64_t x = lo_atom; x <= hi_atom; ++x) start.push_back(access(x * a, at, false));
        std::vector<int64_t> out;
        for (int64_t i = 0; i < beats; ++i) {
            const int64_t lo = int64_t(addr) + i * beat_bytes, hi = lo + beat_bytes;
            int64_t last = 0;
            for (int64_t x = lo / a; x <= (hi - 1) / a; ++x) {
                const int64_t n = std::min(hi, (x + 1) * a) - x * a;
                last = std::max(last, start[size_t(x - lo_atom)] + cdiv(n * t.atom_ps, a));
            }
            out.push_back(ready_cycle(last));
        }
        return out;
    }

    int64_t write_atom(int64_t cycle, int64_t addr) {
        return ready_cycle(access(addr, cycle_ps(cycle + 1), true) + t.atom_ps);
    }
};

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
    std::vector<int64_t> ready;  // with the Dram: each beat's first cycle
};

// Port of bus_model.ReadChannel.step.
class ReadChannel {
public:
    int64_t now = 0;

    void step(Memory& mem, const Timing& t, int beat_bytes, std::string& error, bool cmd_valid,
              uint64_t cmd_addr, int64_t cmd_beats, bool data_ready, bool& data_valid,
              std::vector<uint8_t>& data, Dram* dram) {
        if (dram) {
            step_dram(mem, *dram, beat_bytes, error, cmd_valid, cmd_addr, cmd_beats, data_ready,
                      data_valid, data);
            return;
        }
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
    // Port of bus_model.ReadChannel._step_dram.
    void step_dram(Memory& mem, Dram& dram, int beat_bytes, std::string& error, bool cmd_valid,
                   uint64_t cmd_addr, int64_t cmd_beats, bool data_ready, bool& data_valid,
                   std::vector<uint8_t>& data) {
        if (driven_ && data_ready) {
            if (++beat_ == current_.beats) active_ = false;
        }
        if (cmd_valid) {
            const uint64_t nbytes = uint64_t(cmd_beats) * beat_bytes;
            ReadCommand c{0, std::vector<uint8_t>(nbytes, 0), cmd_beats, 0,
                          dram.read_beats(now, cmd_addr, cmd_beats, beat_bytes)};
            c.first = c.ready[0];
            if (mem.check(cmd_addr, nbytes, "LD command", error)) {
                mem.read(cmd_addr, c.payload.data(), nbytes);
            }
            pending_.push_back(std::move(c));
        }
        now += 1;
        if (!active_ && !pending_.empty()) {
            current_ = std::move(pending_.front());
            pending_.pop_front();
            active_ = true;
            beat_ = 0;
        }
        driven_ = active_ && current_.ready[size_t(beat_)] <= now;
        data_valid = driven_;
        if (driven_) {
            data.assign(current_.payload.begin() + beat_ * beat_bytes,
                        current_.payload.begin() + (beat_ + 1) * beat_bytes);
        }
    }

    std::deque<ReadCommand> pending_;
    ReadCommand current_{};
    bool active_ = false, driven_ = false;
    int64_t beat_ = 0, free_at_ = 0;
};

struct WriteCommand {
    uint64_t addr;
    int64_t beats, crossings, received;
    int64_t next_atom = 0, due = 0;  // with the Dram: first burst not yet written, answer
};

// Port of bus_model.WriteChannel.step.
class WriteChannel {
public:
    int64_t now = 0;

    bool step(Memory& mem, const Timing& t, int beat_bytes, std::string& error, bool cmd_valid,
              uint64_t cmd_addr, int64_t cmd_beats, bool data_valid, const svBitVecVal* data,
              const svBitVecVal* strb, Dram* dram) {
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
                ++c.received;
                if (dram) write_bursts(*dram, c, beat_bytes);
                if (c.received == c.beats) {
                    if (!dram) {
                        responses_.push_back(now + t.wr_latency + t.penalty * c.crossings);
                    } else {  // answered in command order
                        responses_.push_back(
                            responses_.empty() ? c.due : std::max(c.due, responses_.back()));
                    }
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
    // Port of bus_model.WriteChannel._write_bursts.
    void write_bursts(Dram& dram, WriteCommand& c, int beat_bytes) {
        const int64_t a = dram.t.atom_bytes;
        if (c.received == 1) c.next_atom = int64_t(c.addr) / a * a;
        const int64_t sent = int64_t(c.addr) + c.received * beat_bytes;
        while (c.next_atom + a <= sent || (c.received == c.beats && c.next_atom < sent)) {
            c.due = std::max(c.due, dram.write_atom(now, c.next_atom));
            c.next_atom += a;
        }
    }

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
    Dram dram;
    bool use_dram = false;  // the independent memory instead of the model-derived timing
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
    h.use_dram = false;
    return 0;
}

// Switch to the independent memory: `values` is dram_model.DramTiming.as_list().
int ff_configure_dram(const int64_t* values, int count) {
    if (count != DRAM_FIELDS) return -1;
    DramTiming t;
    int64_t* fields[DRAM_FIELDS] = {
        &t.clock_khz, &t.channels, &t.channel_bytes, &t.interleave_bytes, &t.atom_bytes,
        &t.banks, &t.page_bytes, &t.atom_ps, &t.rcd_ps, &t.rp_ps, &t.cl_ps, &t.cwl_ps,
        &t.ras_ps, &t.wr_ps, &t.wtr_ps, &t.rtw_ps, &t.refi_ps, &t.rfc_ps, &t.fixed_ps};
    for (int i = 0; i < DRAM_FIELDS; ++i) *fields[i] = values[i];
    Host& h = host();
    h.dram.configure(t);
    h.use_dram = true;
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
              data_ready, valid, h.beat, h.use_dram ? &h.dram : nullptr);
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
                            uint64_t(cmd_addr), cmd_beats, data_valid, data, strb,
                            h.use_dram ? &h.dram : nullptr);
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
