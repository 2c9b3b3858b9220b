// Monotonic time from the time-stamp counter.
//
// The TSC rate is measured against the legacy PIT (channel 2, 1.193182 MHz, gated through port
// 0x61, no interrupts) over a ~20 ms interval, from latched counter reads bracketed by TSC reads
// (tsc_clock.cc). The PIT measures the rate the guest actually sees; CPUID leaf 0x15/0x16 (which a
// hypervisor may fill with numbers unrelated to the TSC it exposes) is used only if the PIT never
// counts. Boot cost: about 20 ms, more only if the samples were disturbed and it retries.
#pragma once

#include "dmakit/support/types.h"

namespace x86 {

// Measures the TSC rate and starts the clock at zero. Call once on the boot CPU, interrupts off.
// Panics (boot_panic) when neither the PIT nor CPUID gives a rate.
void init_tsc_clock();

// Nanoseconds since init_tsc_clock(). Monotonic on the boot CPU; safe with interrupts off.
uint64_t tsc_now_ns();

// The rate in use, and where it came from ("pit" or "cpuid").
uint64_t tsc_hz();
const char* tsc_source();

}  // namespace x86
