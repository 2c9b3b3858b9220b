// x86-64 interrupt routing: the local APIC of each CPU, MSIs delivered straight to it (address
// 0xFEE0'0000 | apic_id << 12, data = vector, fixed delivery, edge), the LAPIC timer in periodic
// mode calibrated against the TSC clock, the I/O APICs and 8259 PICs masked.
//
// Vectors (disjoint): 0x00-0x1F exceptions (traps.cc panics on them); 0x30-0xDF MSIs, handed out
// by arch::msi_alloc; 0xEF the LAPIC timer; 0xF1 and 0xF2 the SMP code's IPIs (smp.h: TLB
// shootdown, wake); 0xFF the APIC's spurious vector.
#pragma once

#include "dmakit/support/types.h"

namespace x86 {

constexpr uint8_t kFirstMsiVector = 0x30;
constexpr unsigned kNumMsiVectors = 0xE0 - 0x30;
constexpr uint8_t kTimerVector = 0xEF;

// Called by x86_trap_handler for every vector >= 32 that is not one of smp.h's IPIs: runs the
// handler and signals the EOI. Interrupt context.
void irq_dispatch(uint64_t vector);

// For a secondary CPU (the SMP bring-up), once, interrupts off, before it touches its local APIC:
// enables the APIC in the boot CPU's mode (lapic.h) and records its APIC ID as CPU `cpu_index`, so
// that msi_alloc can steer MSIs to it. False if its APIC could not be enabled or cpu_index is out
// of range.
bool irq_init_secondary(unsigned cpu_index);

}  // namespace x86
