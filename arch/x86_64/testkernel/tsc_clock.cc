// TSC calibration against PIT channel 2, reading the PIT's counter rather than waiting for its
// terminal count: a sample is (TSC before, latched PIT count, TSC after), and its width (after -
// before) bounds its error. Taking the narrowest of a few samples at each end of a ~20 ms interval
// makes the result immune to the vCPU being descheduled between samples (both clocks keep
// running in real time) and nearly immune to it within one (such a sample is wide and loses).
#include "arch/x86_64/testkernel/tsc_clock.h"

#include "arch/x86_64/testkernel/cpu.h"
#include "arch/x86_64/testkernel/cpu_features.h"
#include "arch/x86_64/testkernel/serial.h"

namespace x86 {
namespace {

constexpr uint64_t kPitHz = 1'193'182;
constexpr uint16_t kPitChannel2 = 0x42;
constexpr uint16_t kPitCommand = 0x43;
constexpr uint16_t kPortB = 0x61;            // bit 0: channel 2 gate, bit 1: speaker enable.
constexpr uint32_t kIntervalTicks = 23'864;  // 20 ms of PIT time; the counter starts at 0xFFFF.
constexpr int kSamplesPerEnd = 8;
constexpr int kAttempts = 5;
// A good sample is at most 1/2000 of the interval wide (a 0.05 % error bound).
constexpr uint64_t kMaxWidthDivisor = 2000;
// Sampling a 20 ms interval takes far fewer reads than this even on a slow emulator; more means
// the PIT is not counting.
constexpr uint64_t kMaxPolls = 10'000'000;

uint64_t g_tsc0 = 0;
uint64_t g_hz = 0;
uint64_t g_mult = 0;  // ns = (tsc delta * g_mult) >> 32.
const char* g_source = "none";

struct Sample {
  uint64_t tsc;    // Midpoint of the TSC reads around the latch.
  uint64_t width;  // TSC ticks between them: the sample's uncertainty.
  uint16_t count;  // PIT channel 2 count (counting down).
};

Sample sample() {
  const uint64_t a = rdtsc_ordered();
  outb(kPitCommand, 0x80);  // Counter-latch command, channel 2.
  const uint8_t lo = inb(kPitChannel2);
  const uint8_t hi = inb(kPitChannel2);
  const uint64_t b = rdtsc_ordered();
  return Sample{a + (b - a) / 2, b - a, static_cast<uint16_t>(hi << 8 | lo)};
}

Sample narrowest(int n) {
  Sample best = sample();
  for (int i = 1; i < n; ++i) {
    const Sample s = sample();
    if (s.width < best.width) best = s;
  }
  return best;
}

// One measurement of the TSC rate; 0 if the PIT does not count. *width_ok tells whether both
// end samples were narrow enough.
uint64_t measure(bool* width_ok) {
  // Gate on, speaker off; channel 2, lobyte/hibyte, mode 0, start from 0xFFFF (55 ms to zero,
  // longer than any interval measured here, so the count never wraps).
  outb(kPortB, static_cast<uint8_t>((inb(kPortB) & ~0x02) | 0x01));
  outb(kPitCommand, 0xB0);
  outb(kPitChannel2, 0xFF);
  outb(kPitChannel2, 0xFF);
  const Sample start = narrowest(kSamplesPerEnd);
  uint64_t polls = 0;
  for (;;) {
    const Sample s = sample();
    if (static_cast<uint32_t>(start.count - s.count) >= kIntervalTicks && s.count < start.count) {
      break;
    }
    if (++polls == kMaxPolls) return 0;
  }
  const Sample end = narrowest(kSamplesPerEnd);
  const uint64_t ticks = static_cast<uint64_t>(start.count - end.count);
  if (end.count >= start.count || ticks == 0) return 0;
  const uint64_t tsc = end.tsc - start.tsc;
  const uint64_t max_width = tsc / kMaxWidthDivisor;
  *width_ok = start.width <= max_width && end.width <= max_width;
  // tsc covers ~20 ms: even at 100 GHz the product stays below 2^64.
  return tsc * kPitHz / ticks;
}

}  // namespace

void init_tsc_clock() {
  uint64_t hz = 0;
  for (int i = 0; i < kAttempts; ++i) {
    bool ok = false;
    hz = measure(&ok);
    if (hz == 0 || ok) break;
  }
  if (hz != 0) {
    g_hz = hz;
    g_source = "pit";
  } else if (cpu_features().cpuid_tsc_hz != 0) {
    g_hz = cpu_features().cpuid_tsc_hz;
    g_source = "cpuid";
  } else {
    boot_panic("cannot measure the TSC rate: no PIT and no CPUID leaf 0x15/0x16");
  }
  g_mult = (1'000'000'000ull << 32) / g_hz;
  g_tsc0 = rdtsc_ordered();
}

uint64_t tsc_now_ns() {
  const uint64_t delta = rdtsc_ordered() - g_tsc0;
  return static_cast<uint64_t>((static_cast<unsigned __int128>(delta) * g_mult) >> 32);
}

uint64_t tsc_hz() {
  return g_hz;
}
const char* tsc_source() {
  return g_source;
}

}  // namespace x86
