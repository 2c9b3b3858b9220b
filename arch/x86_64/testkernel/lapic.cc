#include "arch/x86_64/testkernel/lapic.h"

#include "arch/x86_64/testkernel/cpu.h"
#include "testkernel/arch_io.h"

namespace lapic {
namespace {

constexpr uint32_t kMsrApicBase = 0x1B;
constexpr uint64_t kApicBaseEnable = 1ull << 11;
constexpr uint64_t kApicBaseX2 = 1ull << 10;
constexpr uint64_t kApicBaseAddrMask = 0x000F'FFFF'FFFF'F000ull;
constexpr uint32_t kMsrX2Base = 0x800;
constexpr uint32_t kSvrEnable = 1u << 8;
constexpr uint32_t kIcrDeliveryPending = 1u << 12;
constexpr uint32_t kIcrAssert = 1u << 14;

bool g_x2apic = false;
volatile uint32_t* g_mmio = nullptr;  // xAPIC mode only.

}  // namespace

bool x2apic() {
  return g_x2apic;
}

uint32_t read(uint32_t reg) {
  if (g_x2apic) return static_cast<uint32_t>(x86::rdmsr(kMsrX2Base + (reg >> 4)));
  return g_mmio[reg / 4];
}

void write(uint32_t reg, uint32_t val) {
  if (g_x2apic) {
    x86::wrmsr(kMsrX2Base + (reg >> 4), val);
  } else {
    g_mmio[reg / 4] = val;
  }
}

bool init_this_cpu() {
  const x86::CpuidRegs leaf1 = x86::cpuid(1);
  if ((leaf1.edx & (1u << 9)) == 0) return false;  // No APIC.
  const bool has_x2 = (leaf1.ecx & (1u << 21)) != 0;
  uint64_t base = x86::rdmsr(kMsrApicBase);
  if (has_x2) {
    // xAPIC must be enabled before x2APIC (SDM 11.12.5: the transition from disabled to x2APIC
    // goes through xAPIC).
    if ((base & kApicBaseEnable) == 0) x86::wrmsr(kMsrApicBase, base | kApicBaseEnable);
    x86::wrmsr(kMsrApicBase, base | kApicBaseEnable | kApicBaseX2);
    g_x2apic = true;
  } else {
    if ((base & kApicBaseEnable) == 0) x86::wrmsr(kMsrApicBase, base | kApicBaseEnable);
    if (g_mmio == nullptr) {
      auto va = arch::mmio_map(PhysAddr(base & kApicBaseAddrMask), 4096);
      if (!va.ok()) return false;
      g_mmio = static_cast<volatile uint32_t*>(*va);
    }
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
  return g_x2apic ? v : v >> 24;
}

void eoi() {
  write(kRegEoi, 0);
}

void send_ipi(uint32_t apic_id, uint8_t vector) {
  if (g_x2apic) {
    // One 64-bit write: destination in the high half. Delivery status is gone in x2APIC mode.
    x86::wrmsr(kMsrX2Base + (kRegIcrLow >> 4),
               (uint64_t{apic_id} << 32) | kIcrAssert | uint32_t{vector});
    return;
  }
  write(kRegIcrHigh, apic_id << 24);
  write(kRegIcrLow, kIcrAssert | uint32_t{vector});
  while ((read(kRegIcrLow) & kIcrDeliveryPending) != 0) {
    __asm__ volatile("pause");
  }
}

}  // namespace lapic
