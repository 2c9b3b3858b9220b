// The local APIC of the calling CPU: x2APIC mode (MSRs 0x800 + register / 16) when CPUID offers
// it, which QEMU's q35 `-cpu max` does, else xAPIC mode (4 KiB of MMIO at IA32_APIC_BASE, reached
// through arch::mmio_map). Registers are named by their xAPIC MMIO offset in both modes.
//
// Threading: every function acts on the calling CPU's APIC; safe with interrupts off and in
// interrupt context. init_this_cpu runs once per CPU before the others are used there.
#pragma once

#include "dmakit/support/types.h"

namespace lapic {

// Register offsets (Intel SDM vol. 3, table 11-1).
constexpr uint32_t kRegId = 0x20;
constexpr uint32_t kRegVersion = 0x30;
constexpr uint32_t kRegTpr = 0x80;
constexpr uint32_t kRegEoi = 0xB0;
constexpr uint32_t kRegSvr = 0xF0;
constexpr uint32_t kRegEsr = 0x280;
constexpr uint32_t kRegIcrLow = 0x300;
constexpr uint32_t kRegIcrHigh = 0x310;
constexpr uint32_t kRegLvtTimer = 0x320;
constexpr uint32_t kRegLvtLint0 = 0x350;
constexpr uint32_t kRegLvtLint1 = 0x360;
constexpr uint32_t kRegLvtError = 0x370;
constexpr uint32_t kRegTimerInitial = 0x380;
constexpr uint32_t kRegTimerCurrent = 0x390;
constexpr uint32_t kRegTimerDivide = 0x3E0;

constexpr uint32_t kLvtMasked = 1u << 16;
constexpr uint32_t kLvtTimerPeriodic = 1u << 17;

// Vector of the APIC's spurious interrupts (its low four bits are 1, as older APICs require).
constexpr uint8_t kSpuriousVector = 0xFF;

// Enables the calling CPU's APIC (x2APIC mode if available), software-enabled with the spurious
// vector, task priority 0, LINT0/LINT1, error and timer LVT entries masked. Returns false if the
// CPU has no APIC or its registers cannot be mapped.
bool init_this_cpu();
// True once init_this_cpu succeeded on some CPU, in x2APIC mode.
bool x2apic();
// The calling CPU's APIC ID (the full 32 bits in x2APIC mode, 8 bits in xAPIC mode).
uint32_t id();
// Signals the end of the interrupt being handled.
void eoi();
// Sends fixed-delivery interrupt `vector` to the CPU with APIC ID `apic_id`, and waits until the
// APIC accepted it (xAPIC: the delivery-status bit clears).
void send_ipi(uint32_t apic_id, uint8_t vector);
uint32_t read(uint32_t reg);
void write(uint32_t reg, uint32_t val);

}  // namespace lapic
