// The local APIC (xAPIC, MMIO): see lapic.h.
#include "arch/x86_64/testkernel/lapic.h"

#include "arch/x86_64/testkernel/cpu.h"
#include "arch/x86_64/testkernel/paging.h"
#include "testkernel/arch.h"
#include "testkernel/panic.h"

namespace x86::lapic {
namespace {

constexpr uint32_t kMsrApicBase = 0x1B;
constexpr uint64_t kApicBaseEnable = 1ull << 11;
constexpr uint64_t kApicBaseAddrMask = 0x000F'FFFF'FFFF'F000ull;
constexpr uint32_t kSvrEnable = 1u << 8;
constexpr uint32_t kIcrDeliveryPending = 1u << 12;
constexpr uint32_t kIcrLevelAssert = 1u << 14;
constexpr uint32_t kIcrModeInit = 5u << 8;
constexpr uint32_t kIcrModeStartup = 6u << 8;

volatile uint32_t* g_base = nullptr;

void wait_idle() {
  while ((read(kRegIcrLow) & kIcrDeliveryPending) != 0) __asm__ volatile("pause");
}

void send_icr(uint32_t apic_id, uint32_t low) {
  wait_idle();
  write(kRegIcrHigh, apic_id << 24);
  write(kRegIcrLow, low);  // This write sends it.
  wait_idle();
}

void delay_ns(uint64_t ns) {
  uint64_t end = arch::now_ns() + ns;
  while (arch::now_ns() < end) __asm__ volatile("pause");
}

}  // namespace

uint32_t read(uint32_t reg) {
  return g_base[reg / 4];
}

void write(uint32_t reg, uint32_t value) {
  g_base[reg / 4] = value;
}

void init_this_cpu() {
  uint64_t msr = rdmsr(kMsrApicBase);
  if (g_base == nullptr) {
    uint64_t phys = msr & kApicBaseAddrMask;
    if (phys < kMmioWindowBase || phys + 4096 > kMmioWindowEnd) {
      auto m = map_device(PhysAddr(phys), 4096, MemType::kUncached);
      if (!m.ok())
        kpanic("x86_64: cannot map the local APIC at 0x%llx",
               static_cast<unsigned long long>(phys));
      g_base = static_cast<volatile uint32_t*>(*m);
    } else {
      g_base = static_cast<volatile uint32_t*>(direct_map(phys));
    }
  }
  if ((msr & kApicBaseEnable) == 0) wrmsr(kMsrApicBase, msr | kApicBaseEnable);
  write(kRegTpr, 0);
  write(kRegSvr, kSvrEnable | kSpuriousVector);
}

uint32_t id() {
  return read(kRegId) >> 24;
}

void eoi() {
  write(kRegEoi, 0);
}

void send_ipi(uint32_t apic_id, uint8_t vector) {
  send_icr(apic_id, vector);  // Fixed delivery, physical destination, edge.
}

void send_init_sipi(uint32_t apic_id, uint8_t start_page) {
  write(kRegEsr, 0);
  send_icr(apic_id, kIcrModeInit | kIcrLevelAssert);
  delay_ns(10'000'000);
  for (int i = 0; i < 2; ++i) {
    send_icr(apic_id, kIcrModeStartup | start_page);
    delay_ns(200'000);
  }
}

}  // namespace x86::lapic
