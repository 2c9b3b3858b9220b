// Monotonic time from the time-stamp counter.
//
// The TSC rate is measured against the legacy PIT (channel 2, 1.193182 MHz, gated through port
// 0x61, no interrupts): three 10 ms intervals, keeping the smallest TSC delta (the one least
// inflated by a late poll or a descheduled vCPU). The PIT measures the rate the guest actually
// sees; CPUID leaf 0x15/0x16 (which a hypervisor may fill with numbers unrelated to the TSC it
// exposes) is used only if the PIT never answers.
#pragma once

#include "support/types.h"

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
