// Simulation main for the board SoC (flightforge.hw.soc) under Verilator: the host's
// side of the serial line, as the board's USB bridge would be.
//
// Bytes read from stdin are sent 8N1 on the SoC's `rx` wire; bytes the SoC sends on
// `tx` are decoded and written to stdout. The host driver (flightforge.sim.board) talks
// to this process through its pipes exactly as it talks to a serial port. The UART
// divisor (clock cycles per bit) is argv[1]; it must equal the SoC's. The simulation
// runs until stdin closes, and ends with a line on stderr giving the cycles simulated.
#include <cstdio>
#include <cstdlib>
#include <cstdint>
#include <deque>
#include <poll.h>
#include <unistd.h>

#include "Vflightforge_soc.h"
#include "verilated.h"

namespace {

struct Serializer {  // host -> SoC
    std::deque<uint8_t> queue;
    int divisor;
    int frame = 0x3FF, bits = 0, timer = 0;
    int line() const { return frame & 1; }
    void tick() {
        if (bits == 0) {
            if (queue.empty()) return;
            frame = 0x200 | (queue.front() << 1);  // start bit 0, data LSB first, stop bit 1
            queue.pop_front();
            bits = 10;
            timer = divisor;
            return;  // the start bit lasts `divisor` cycles from this one
        }
        if (--timer == 0) {
            frame = (frame >> 1) | 0x200;
            timer = divisor;
            if (--bits == 0) frame = 0x3FF;
        }
    }
};

struct Deserializer {  // SoC -> host
    int divisor;
    int timer = 0, bit = -1, shreg = 0;
    bool errors = false;
    // One cycle of the line; returns a received byte or -1.
    int tick(int line) {
        if (bit < 0) {
            if (!line) {  // start edge: sample the middle of each following bit
                bit = 0;
                timer = divisor + divisor / 2;
            }
            return -1;
        }
        if (--timer) return -1;
        timer = divisor;
        if (bit < 8) {
            shreg |= line << bit;
            bit++;
            return -1;
        }
        int byte = shreg;
        bit = -1;
        shreg = 0;
        if (!line) {
            errors = true;
            return -1;
        }
        return byte;
    }
};

}  // namespace

int main(int argc, char** argv) {
    if (argc < 2) {
        std::fprintf(stderr, "usage: %s DIVISOR\n", argv[0]);
        return 2;
    }
    int divisor = std::atoi(argv[1]);
    Verilated::commandArgs(argc, argv);
    auto* top = new Vflightforge_soc;
    Serializer out{{}, divisor};
    Deserializer in{divisor};
    top->clk = 0;
    top->rst = 1;
    top->rx = 1;
    top->eval();
    for (int i = 0; i < 4; i++) {
        top->clk = 1;
        top->eval();
        top->clk = 0;
        top->eval();
    }
    top->rst = 0;
    uint64_t cycles = 0;
    bool open = true;
    uint8_t buf[4096];
    while (open || !out.queue.empty() || out.bits) {
        if ((cycles & 63) == 0 && open) {
            pollfd p{0, POLLIN, 0};
            // Nothing to send and nothing arriving: the host is waiting for a reply or
            // has more to say; poll without blocking so the SoC keeps running.
            if (poll(&p, 1, 0) > 0) {
                ssize_t n = read(0, buf, sizeof buf);
                if (n <= 0) open = false;
                for (ssize_t i = 0; i < n; i++) out.queue.push_back(buf[i]);
            }
        }
        out.tick();
        top->rx = out.line();
        top->clk = 1;
        top->eval();
        top->clk = 0;
        top->eval();
        cycles++;
        int byte = in.tick(top->tx);
        if (byte >= 0) {
            uint8_t b = uint8_t(byte);
            if (write(1, &b, 1) != 1) break;
        }
    }
    std::fprintf(stderr, "soc_host: %llu cycles%s\n", (unsigned long long)cycles,
                 in.errors ? ", framing errors seen" : "");
    top->final();
    delete top;
    return in.errors ? 1 : 0;
}
