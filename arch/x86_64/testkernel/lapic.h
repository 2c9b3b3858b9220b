// The local APIC of the calling CPU: x2APIC mode (MSRs 0x800 + register / 16) when CPUID offers
// it, which QEMU's q35 `-cpu max` does, else xAPIC mode (4 KiB of MMIO at IA32_APIC_BASE, reached
// through arch::mmio_map). Registers are named by their xAPIC MMIO offset in both modes. Besides
// identification and end of interrupt: inter-processor interrupts and the INIT-SIPI-SIPI sequence
// that starts another CPU (Intel SDM vol. 3, "Advanced Programmable Interrupt Controller", "MP
// Initialization").
//
// The mode is chosen once, by the first init_this_cpu (the boot CPU's): every other CPU's
// init_this_cpu puts its APIC into the same mode, since read/write/send_ipi pick the access path
// from that one global choice. A CPU must not touch its APIC before its own init_this_cpu.
//
// Threading: every function acts on the calling CPU's APIC; safe with interrupts off and in
// interrupt context.
#pragma once

#include "dmakit/support/types.h"

namespace x86::lapic {

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

// Vector of the APIC's spurious interrupts (its low four bits are 1, as older APICs require;
// never needs an EOI).
constexpr uint8_t kSpuriousVector = 0xFF;

// Enables the calling CPU's APIC in the mode described above, software-enabled with the
// spurious vector, task priority 0, LINT0/LINT1, error and timer LVT entries masked. The boot
// CPU's call must come after init_paging (xAPIC mode maps the registers). Idempotent. Returns
// false if the CPU has no APIC, its registers cannot be mapped, or it cannot enter the mode the
// boot CPU chose (x2APIC on a CPU without it).
bool init_this_cpu();
// True once init_this_cpu chose x2APIC mode.
bool x2apic();
// The calling CPU's APIC ID (the full 32 bits in x2APIC mode, 8 bits in xAPIC mode).
uint32_t id();
// Signals the end of the interrupt being handled (not for the spurious vector).
void eoi();
// Sends fixed-delivery interrupt `vector` (32..255) to the CPU with APIC ID `apic_id`, and waits
// until the APIC accepted it (xAPIC: the delivery-status bit clears).
void send_ipi(uint32_t apic_id, uint8_t vector);
// Starts the CPU `apic_id` at real-mode address start_page * 4096: INIT, 10 ms, then two
// STARTUP IPIs 200 us apart (the SDM's universal start-up algorithm). Takes about 10 ms.
void send_init_sipi(uint32_t apic_id, uint8_t start_page);
uint32_t read(uint32_t reg);
void write(uint32_t reg, uint32_t val);

}  // namespace x86::lapic
