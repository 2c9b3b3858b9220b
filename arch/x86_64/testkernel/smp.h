// x86-64 SMP internals shared with the trap handler: the interrupt vectors smp.cc owns.
#pragma once

#include "dmakit/support/types.h"

namespace x86 {

// Inter-processor interrupts of the SMP code (the top of the vector space, below the APIC's
// spurious vector 0xFF).
constexpr uint8_t kTlbShootdownVector = 0xF1;  // Do the pending TLB shootdown, acknowledge.
constexpr uint8_t kWakeVector = 0xF2;          // Only ends an idle CPU's hlt.

// Handles an interrupt that belongs to the SMP code (the vectors above); returns false for any
// other vector (irq.h's irq_dispatch takes those). Called by the trap handler, interrupts off.
bool smp_handle_interrupt(uint8_t vector);

// TLB shootdowns this CPU has served for others (for tests).
uint64_t tlb_shootdowns_served(unsigned cpu_index);

}  // namespace x86
