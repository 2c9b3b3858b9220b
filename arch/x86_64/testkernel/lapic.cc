// The local APIC (x2APIC or xAPIC): see lapic.h.
#include "arch/x86_64/testkernel/lapic.h"

#include "arch/x86_64/testkernel/cpu.h"
#include "testkernel/arch.h"
#include "testkernel/arch_io.h"

namespace x86::lapic {
namespace {

constexpr uint32_t kMsrApicBase = 0x1B;
constexpr uint64_t kApicBaseEnable = 1ull << 11;
constexpr uint64_t kApicBaseX2 = 1ull << 10;
constexpr uint64_t kApicBaseAddrMask = 0x000F'FFFF'FFFF'F000ull;
constexpr uint32_t kMsrX2Base = 0x800;
constexpr uint32_t kSvrEnable = 1u << 8;
constexpr uint32_t kIcrDeliveryPending = 1u << 12;
constexpr uint32_t kIcrAssert = 1u << 14;
constexpr uint32_t kIcrModeInit = 5u << 8;
constexpr uint32_t kIcrModeStartup = 6u << 8;

enum class Mode : uint8_t { kUnset, kXApic, kX2Apic };

// Written by the boot CPU's first init_this_cpu, before any other CPU runs; read-only after.
Mode g_mode = Mode::kUnset;
volatile uint32_t* g_mmio = nullptr;  // xAPIC mode only.

// Sends one ICR command: `low` is the command word (vector, delivery mode, level); the
// destination is the APIC ID. Returns once the APIC accepted it.
void send_icr(uint32_t apic_id, uint32_t low) {
  if (g_mode == Mode::kX2Apic) {
    // One 64-bit write: destination in the high half. No delivery status in x2APIC mode.
    wrmsr(kMsrX2Base + (kRegIcrLow >> 4), (uint64_t{apic_id} << 32) | low);
    return;
  }
  while ((read(kRegIcrLow) & kIcrDeliveryPending) != 0) __asm__ volatile("pause");
  write(kRegIcrHigh, apic_id << 24);
  write(kRegIcrLow, low);  // This write sends it.
  while ((read(kRegIcrLow) & kIcrDeliveryPending) != 0) __asm__ volatile("pause");
}

void delay_ns(uint64_t ns) {
  const uint64_t end = arch::now_ns() + ns;
  while (arch::now_ns() < end) __asm__ volatile("pause");
}

}  // namespace

bool x2apic() {
  return g_mode == Mode::kX2Apic;
}

uint32_t read(uint32_t reg) {
  if (g_mode == Mode::kX2Apic) return static_cast<uint32_t>(rdmsr(kMsrX2Base + (reg >> 4)));
  return g_mmio[reg / 4];
}

void write(uint32_t reg, uint32_t val) {
  if (g_mode == Mode::kX2Apic) {
    wrmsr(kMsrX2Base + (reg >> 4), val);
  } else {
    g_mmio[reg / 4] = val;
  }
}

bool init_this_cpu() {
  const CpuidRegs leaf1 = cpuid(1);
  if ((leaf1.edx & (1u << 9)) == 0) return false;  // No APIC.
  const bool has_x2 = (leaf1.ecx & (1u << 21)) != 0;
  if (g_mode == Mode::kUnset) g_mode = has_x2 ? Mode::kX2Apic : Mode::kXApic;
  const uint64_t base = rdmsr(kMsrApicBase);
  // xAPIC must be enabled before x2APIC (SDM 11.12.5: the transition from disabled to x2APIC
  // goes through xAPIC).
  if ((base & kApicBaseEnable) == 0) wrmsr(kMsrApicBase, base | kApicBaseEnable);
  if (g_mode == Mode::kX2Apic) {
    if (!has_x2) return false;
    if ((base & kApicBaseX2) == 0) wrmsr(kMsrApicBase, base | kApicBaseEnable | kApicBaseX2);
  } else if (g_mmio == nullptr) {
    auto va = arch::mmio_map(PhysAddr(base & kApicBaseAddrMask), 4096);
    if (!va.ok()) return false;
    g_mmio = static_cast<volatile uint32_t*>(*va);
  }
  write(kRegTpr, 0);
  write(kRegLvtTimer, kLvtMasked);
  write(kRegLvtLint0, kLvtMasked);
  write(kRegLvtLint1, kLvtMasked);
  write(kRegLvtError, kLvtMasked);
  write(kRegSvr, kSvrEnable | kSpuriousVector);
  // The error status register latches errors from before: a write clears it (in xAPIC mode it
  // must be written before it is read).
  write(kRegEsr, 0);
  return true;
}

uint32_t id() {
  const uint32_t v = read(kRegId);
  return g_mode == Mode::kX2Apic ? v : v >> 24;
}

void eoi() {
  write(kRegEoi, 0);
}

void send_ipi(uint32_t apic_id, uint8_t vector) {
  send_icr(apic_id, kIcrAssert | uint32_t{vector});  // Fixed delivery, physical, edge.
}

void send_init_sipi(uint32_t apic_id, uint8_t start_page) {
  write(kRegEsr, 0);
  send_icr(apic_id, kIcrModeInit | kIcrAssert);
  delay_ns(10'000'000);
  for (int i = 0; i < 2; ++i) {
    send_icr(apic_id, kIcrModeStartup | start_page);
    delay_ns(200'000);
  }
}

}  // namespace x86::lapic
