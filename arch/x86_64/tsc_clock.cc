#include "arch/x86_64/tsc_clock.h"

#include "arch/x86_64/cpu.h"
#include "arch/x86_64/cpu_features.h"
#include "arch/x86_64/serial.h"

namespace x86 {
namespace {

constexpr uint64_t kPitHz = 1'193'182;
constexpr uint16_t kPitLatch = 11'932;  // ~10 ms.
constexpr uint16_t kPitChannel2 = 0x42;
constexpr uint16_t kPitCommand = 0x43;
constexpr uint16_t kPortB = 0x61;  // bit 0: channel 2 gate, bit 1: speaker, bit 5: OUT2.
constexpr int kRuns = 3;
// A 10 ms wait takes well under this many polls even on a slow emulator; more means no PIT.
constexpr uint64_t kMaxPolls = 50'000'000;

uint64_t g_tsc0 = 0;
uint64_t g_hz = 0;
uint64_t g_mult = 0;  // ns = (tsc delta * g_mult) >> 32.
const char* g_source = "none";

// TSC ticks over one PIT countdown of kPitLatch, or 0 if OUT2 never rose.
uint64_t pit_interval_ticks() {
  // Gate on, speaker off; channel 2, lobyte/hibyte, mode 0 (OUT rises at terminal count).
  outb(kPortB, static_cast<uint8_t>((inb(kPortB) & ~0x02) | 0x01));
  outb(kPitCommand, 0xB0);
  outb(kPitChannel2, kPitLatch & 0xFF);
  outb(kPitChannel2, kPitLatch >> 8);
  const uint64_t t0 = rdtsc_ordered();
  for (uint64_t i = 0; i < kMaxPolls; ++i) {
    if (inb(kPortB) & 0x20) {
      return rdtsc_ordered() - t0;
    }
  }
  return 0;
}

}  // namespace

void init_tsc_clock() {
  uint64_t best = 0;
  for (int i = 0; i < kRuns; ++i) {
    const uint64_t t = pit_interval_ticks();
    if (t != 0 && (best == 0 || t < best)) best = t;
  }
  if (best != 0) {
    g_hz = best * kPitHz / kPitLatch;
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

uint64_t tsc_hz() { return g_hz; }
const char* tsc_source() { return g_source; }

}  // namespace x86
