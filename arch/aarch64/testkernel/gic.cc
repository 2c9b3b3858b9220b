#include "arch/aarch64/testkernel/gic.h"

#include "testkernel/arch_io.h"

namespace aarch64::gic {
namespace {

constexpr uint32_t kDistCtlr = 0x000;
constexpr uint32_t kDistTyper = 0x004;
constexpr uint32_t kDistIsEnabler = 0x100;
constexpr uint32_t kDistIcEnabler = 0x180;
constexpr uint32_t kDistIcPendr = 0x280;
constexpr uint32_t kDistIPriorityr = 0x400;
constexpr uint32_t kDistITargetsr = 0x800;
constexpr uint32_t kDistIcfgr = 0xC00;
constexpr uint32_t kDistSgir = 0xF00;
constexpr uint32_t kCpuCtlr = 0x000;
constexpr uint32_t kCpuPmr = 0x004;
constexpr uint32_t kCpuBpr = 0x008;
constexpr uint32_t kCpuIar = 0x00C;
constexpr uint32_t kCpuEoir = 0x010;
constexpr uint32_t kV2mTyper = 0x008;
constexpr uint32_t kV2mSetSpi = 0x040;
constexpr uint8_t kPriority = 0x80;
constexpr uint32_t kPriorityMaskAll = 0xF0;  // Lets every priority above 0xF0 through.

volatile uint8_t* g_dist = nullptr;
volatile uint8_t* g_cpu = nullptr;
unsigned g_num_ids = 0;
unsigned g_msi_first = 0;
unsigned g_msi_count = 0;
uint64_t g_msi_doorbell = 0;

volatile uint32_t& reg32(volatile uint8_t* base, uint32_t off) {
  return *reinterpret_cast<volatile uint32_t*>(base + off);
}

}  // namespace

Result<void> init(const Description& d) {
  TRY_ASSIGN(volatile void* dist, arch::mmio_map(PhysAddr(d.dist_phys), 0x1000));
  TRY_ASSIGN(volatile void* cpu, arch::mmio_map(PhysAddr(d.cpu_phys), 0x2000));
  g_dist = static_cast<volatile uint8_t*>(dist);
  g_cpu = static_cast<volatile uint8_t*>(cpu);
  if (d.v2m_phys != 0) {
    TRY_ASSIGN(volatile void* v2m, arch::mmio_map(PhysAddr(d.v2m_phys), 0x1000));
    const uint32_t typer = reg32(static_cast<volatile uint8_t*>(v2m), kV2mTyper);
    g_msi_first = (typer >> 16) & 0x3FF;
    g_msi_count = typer & 0x3FF;
    g_msi_doorbell = d.v2m_phys + kV2mSetSpi;
  }
  reg32(g_dist, kDistCtlr) = 0;
  g_num_ids = 32 * ((reg32(g_dist, kDistTyper) & 0x1F) + 1);
  if (g_num_ids > 1020) g_num_ids = 1020;
  for (unsigned id = 32; id < g_num_ids; id += 32) {
    reg32(g_dist, kDistIcEnabler + id / 8) = 0xFFFF'FFFFu;
    reg32(g_dist, kDistIcPendr + id / 8) = 0xFFFF'FFFFu;
  }
  reg32(g_dist, kDistCtlr) = 1;
  cpu_init();
  return support::ok();
}

void cpu_init() {
  reg32(g_dist, kDistIcEnabler) = 0xFFFF'FFFFu;  // Banked: this CPU's SGIs and PPIs.
  reg32(g_cpu, kCpuPmr) = kPriorityMaskAll;
  reg32(g_cpu, kCpuBpr) = 0;
  reg32(g_cpu, kCpuCtlr) = 1;
}

unsigned num_ids() {
  return g_num_ids;
}
unsigned msi_first() {
  return g_msi_first;
}
unsigned msi_count() {
  return g_msi_count;
}
uint64_t msi_doorbell() {
  return g_msi_doorbell;
}

void enable(unsigned id, bool edge, unsigned cpu) {
  g_dist[kDistIPriorityr + id] = kPriority;
  if (id >= 32) {
    g_dist[kDistITargetsr + id] = static_cast<uint8_t>(1u << cpu);
    const uint32_t shift = (id % 16) * 2 + 1;
    volatile uint32_t& cfg = reg32(g_dist, kDistIcfgr + (id / 16) * 4);
    cfg = edge ? (cfg | (1u << shift)) : (cfg & ~(1u << shift));
  }
  reg32(g_dist, kDistIsEnabler + (id / 32) * 4) = 1u << (id % 32);
}

void disable(unsigned id) {
  reg32(g_dist, kDistIcEnabler + (id / 32) * 4) = 1u << (id % 32);
}

void send_sgi(unsigned id, unsigned cpu) {
  // TargetListFilter 0 (the list), CPU target list in bits 23:16, SGI ID in bits 3:0.
  __asm__ volatile("dsb ishst" ::: "memory");  // The caller's stores before the interrupt.
  reg32(g_dist, kDistSgir) = (1u << (16 + cpu)) | (id & 0xF);
}

uint32_t ack() {
  return reg32(g_cpu, kCpuIar);
}

void eoi(uint32_t iar) {
  reg32(g_cpu, kCpuEoir) = iar;
}

}  // namespace aarch64::gic
