// The local APIC in xAPIC mode (memory-mapped registers at the IA32_APIC_BASE address, reached
// through the direct map's uncached MMIO window): identification, end of interrupt, inter-
// processor interrupts and the INIT-SIPI-SIPI sequence that starts another CPU (Intel SDM vol. 3,
// "Advanced Programmable Interrupt Controller", "MP Initialization").
//
// Every function acts on the calling CPU's own local APIC and is safe with interrupts off.
#pragma once

#include "dmakit/support/types.h"

namespace x86::lapic {

// Register offsets (bytes from the APIC base).
constexpr uint32_t kRegId = 0x20;
constexpr uint32_t kRegVersion = 0x30;
constexpr uint32_t kRegTpr = 0x80;
constexpr uint32_t kRegEoi = 0xB0;
constexpr uint32_t kRegSvr = 0xF0;
constexpr uint32_t kRegEsr = 0x280;
constexpr uint32_t kRegIcrLow = 0x300;
constexpr uint32_t kRegIcrHigh = 0x310;
constexpr uint32_t kRegLvtTimer = 0x320;
constexpr uint32_t kRegTimerInitial = 0x380;
constexpr uint32_t kRegTimerCurrent = 0x390;
constexpr uint32_t kRegTimerDivide = 0x3E0;

// The vector the APIC delivers for a spurious interrupt (programmed in the SVR; never needs an
// EOI).
constexpr uint8_t kSpuriousVector = 0xFF;

// Enables the calling CPU's local APIC (SVR software enable, spurious vector kSpuriousVector,
// task priority 0). The first call (boot CPU) finds the register base from IA32_APIC_BASE; it
// must come after init_paging. Idempotent.
void init_this_cpu();

// The calling CPU's APIC id (ID register bits 31:24).
uint32_t id();

// Signals the end of the interrupt being handled (not for the spurious vector).
void eoi();

// Sends a fixed interrupt with `vector` (32..255) to the CPU with APIC id `apic_id` and waits
// until the local APIC has sent it (ICR delivery status idle).
void send_ipi(uint32_t apic_id, uint8_t vector);

// Starts the CPU `apic_id` at real-mode address start_page * 4096: INIT, 10 ms, then two
// STARTUP IPIs 200 us apart (the SDM's universal start-up algorithm). Takes about 10 ms.
void send_init_sipi(uint32_t apic_id, uint8_t start_page);

uint32_t read(uint32_t reg);
void write(uint32_t reg, uint32_t value);

}  // namespace x86::lapic
