#include "arch/aarch64/testkernel/gic_v3.h"

#include "dmakit/support/spinlock.h"
#include "testkernel/arch.h"
#include "testkernel/arch_io.h"
#include "testkernel/kernel_env.h"

namespace aarch64::gicv3 {
namespace {

constexpr unsigned kMaxCpus = 8;
constexpr unsigned kMaxDevices = 8;
constexpr unsigned kLpiBase = 8192;
constexpr unsigned kIdBits = 14;  // LPIs 8192..16383.
constexpr unsigned kNumLpis = 256;
constexpr unsigned kEventBits = 8;  // EventID = LPI - 8192 < kNumLpis.
constexpr uint64_t kPage = 4096;
constexpr uint64_t kSpinLimit = 10'000'000;

// Distributor.
constexpr uint32_t kGicdCtlr = 0x0000;
constexpr uint32_t kGicdTyper = 0x0004;
constexpr uint32_t kGicdIcEnabler = 0x0180;
constexpr uint32_t kGicdIGroupr = 0x0080;
constexpr uint32_t kGicdCtlrRwp = 1u << 31;
constexpr uint32_t kGicdCtlrAreNs = 1u << 4;
constexpr uint32_t kGicdCtlrEnableGrp1 = 1u << 1;
// Redistributor: RD_base frame, then SGI_base 64 KiB above it; 128 KiB per CPU.
constexpr uint64_t kGicrStride = 0x20000;
constexpr uint64_t kGicrSgi = 0x10000;
constexpr uint32_t kGicrCtlr = 0x0000;
constexpr uint32_t kGicrTyper = 0x0008;
constexpr uint32_t kGicrWaker = 0x0014;
constexpr uint32_t kGicrPropbaser = 0x0070;
constexpr uint32_t kGicrPendbaser = 0x0078;
constexpr uint32_t kGicrIGroupr0 = 0x0080;
constexpr uint32_t kGicrIsEnabler0 = 0x0100;
constexpr uint32_t kGicrIcEnabler0 = 0x0180;
constexpr uint32_t kGicrIPriorityr = 0x0400;
constexpr uint64_t kGicrTyperLast = 1u << 4;
constexpr uint32_t kGicrWakerProcessorSleep = 1u << 1;
constexpr uint32_t kGicrWakerChildrenAsleep = 1u << 2;
constexpr uint32_t kGicrCtlrEnableLpis = 1u << 0;
// Memory attributes of the tables: inner write-back read/write-allocate, inner shareable.
constexpr uint64_t kTableAttrs = (7ull << 7) | (1ull << 10);
constexpr uint64_t kPendbaserPtz = 1ull << 62;
// ITS.
constexpr uint32_t kGitsCtlr = 0x0000;
constexpr uint32_t kGitsTyper = 0x0008;
constexpr uint32_t kGitsCbaser = 0x0080;
constexpr uint32_t kGitsCwriter = 0x0088;
constexpr uint32_t kGitsCreadr = 0x0090;
constexpr uint32_t kGitsBaser = 0x0100;
constexpr uint64_t kGitsTranslater = 0x10040;
constexpr uint32_t kGitsCtlrEnabled = 1u << 0;
constexpr uint32_t kGitsCtlrQuiescent = 1u << 31;
constexpr uint64_t kGitsValid = 1ull << 63;
constexpr uint64_t kGitsBaserAttrs = (7ull << 59) | (1ull << 10);  // InnerCache, Shareability.
constexpr uint64_t kGitsCbaserAttrs = (7ull << 59) | (1ull << 10);
constexpr uint64_t kBaserTypeDevice = 1;
constexpr uint64_t kBaserTypeCollection = 4;
constexpr uint8_t kCmdMapd = 0x08;
constexpr uint8_t kCmdMapc = 0x09;
constexpr uint8_t kCmdMapti = 0x0A;
constexpr uint8_t kCmdSync = 0x05;
constexpr uint8_t kCmdInv = 0x0C;
constexpr uint8_t kCmdDiscard = 0x0F;
constexpr uint8_t kLpiPriority = 0xA0;
constexpr uint8_t kLpiEnable = 1;

struct Device {
  uint32_t devid = 0;
  bool used = false;
};

struct Cpu {
  volatile uint8_t* rd = nullptr;  // RD_base of its redistributor.
  uint64_t rd_phys = 0;
  uint32_t procnum = 0;
  bool collection = false;
};

volatile uint8_t* g_dist = nullptr;
volatile uint8_t* g_its = nullptr;
uint64_t g_its_phys = 0;
Description g_desc;
Cpu g_cpu[kMaxCpus];
uint8_t* g_prop = nullptr;  // LPI configuration table, a byte per LPI from 8192.
uint64_t g_prop_phys = 0;
uint64_t* g_cmdq = nullptr;
uint64_t g_cmdq_phys = 0;
uint64_t g_cwriter = 0;
bool g_pta = false;
uint32_t g_device_entries = 0;
uint32_t g_itt_bytes = 0;
Device g_devices[kMaxDevices];
uint64_t g_itt_phys[kMaxDevices];
uint32_t g_lpi_dev[kNumLpis];  // Device slot + 1 of each mapped LPI, 0 if unmapped.
unsigned g_lpis = 0;
support::SpinLock g_lock;

volatile uint32_t& r32(volatile uint8_t* b, uint64_t off) {
  return *reinterpret_cast<volatile uint32_t*>(b + off);
}
volatile uint64_t& r64(volatile uint8_t* b, uint64_t off) {
  return *reinterpret_cast<volatile uint64_t*>(b + off);
}

uint64_t affinity_of_this_cpu() {
  uint64_t mpidr;
  __asm__ volatile("mrs %0, mpidr_el1" : "=r"(mpidr));
  return (mpidr & 0xFF'FFFF) | ((mpidr >> 8) & 0xFF00'0000);
}

// The GIC's tables live as long as the kernel: they come from an arena in the kernel image
// (.bss, zeroed at boot), so they are reserved with it and never show up as allocations of the
// page-frame allocator. The image is identity-mapped (mmu.h): its virtual addresses are physical.
// Room: the LPI configuration table, the device and collection tables, the command queue, and an
// ITT per device. The CPUs' 64 KiB-aligned pending tables have an array of their own, so that
// their alignment wastes nothing between the arena's small tables (secondaries come up after the
// ITS tables and the first ITTs exist).
constexpr size_t kPendingTableBytes = 0x10000;
constexpr size_t kArenaBytes = 2 * kPage + 3 * kPage + kMaxDevices * kPage;
alignas(0x10000) uint8_t g_arena[kArenaBytes];
alignas(0x10000) uint8_t g_pending_tables[kMaxCpus][kPendingTableBytes];
size_t g_arena_used = 0;

// `bytes` zeroed bytes of the arena, `align`-aligned; the physical address in *phys. Boot and
// thread context, under g_lock once the ITS is up.
Result<uint8_t*> table_bytes(uint64_t bytes, uint64_t align, uint64_t* phys) {
  const size_t start = (g_arena_used + align - 1) & ~static_cast<size_t>(align - 1);
  if (start > kArenaBytes || bytes > kArenaBytes - start) return ErrorCode::kNoMemory;
  g_arena_used = start + bytes;
  uint8_t* va = g_arena + start;
  *phys = reinterpret_cast<uintptr_t>(va);
  return va;
}

void clean(const void* p, size_t n) {
  kernel_env().dma->flush(const_cast<void*>(p), n);
}

bool wait_clear32(volatile uint8_t* b, uint32_t off, uint32_t bits) {
  for (uint64_t i = 0; i < kSpinLimit; ++i) {
    if ((r32(b, off) & bits) == 0) return true;
  }
  return false;
}

// Queues one command and waits until the ITS has consumed it. Under g_lock.
Result<void> its_command(uint64_t d0, uint64_t d1, uint64_t d2, uint64_t d3) {
  uint64_t* slot = g_cmdq + g_cwriter / 8;
  slot[0] = d0;
  slot[1] = d1;
  slot[2] = d2;
  slot[3] = d3;
  clean(slot, 32);
  g_cwriter = (g_cwriter + 32) % kPage;
  arch::io_wmb();
  r64(g_its, kGitsCwriter) = g_cwriter;
  for (uint64_t i = 0; i < kSpinLimit; ++i) {
    const uint64_t creadr = r64(g_its, kGitsCreadr);
    if ((creadr & 1) != 0) return ErrorCode::kNotSupported;  // Stalled on a bad command.
    if ((creadr & ~0x1Full) == g_cwriter) return support::ok();
  }
  return ErrorCode::kTimedOut;
}

uint64_t rdbase(const Cpu& c) {
  return g_pta ? (c.rd_phys >> 16) : c.procnum;
}

Result<void> sync(const Cpu& c) {
  return its_command(kCmdSync, 0, rdbase(c) << 16, 0);
}

// Finds and wakes the calling CPU's redistributor, sets up its SGI/PPI and LPI state.
Result<void> redistributor_init(unsigned cpu_index) {
  const uint64_t aff = affinity_of_this_cpu();
  for (uint64_t off = 0; off + kGicrStride <= g_desc.redist_size; off += kGicrStride) {
    TRY_ASSIGN(volatile void* va, arch::mmio_map(PhysAddr(g_desc.redist_phys + off), kGicrStride));
    auto* rd = static_cast<volatile uint8_t*>(va);
    const uint64_t typer = r64(rd, kGicrTyper);
    if ((typer >> 32) == aff) {
      Cpu& c = g_cpu[cpu_index];
      c.rd = rd;
      c.rd_phys = g_desc.redist_phys + off;
      c.procnum = static_cast<uint32_t>((typer >> 8) & 0xFFFF);
      r32(rd, kGicrWaker) = r32(rd, kGicrWaker) & ~kGicrWakerProcessorSleep;
      if (!wait_clear32(rd, kGicrWaker, kGicrWakerChildrenAsleep)) return ErrorCode::kTimedOut;
      volatile uint8_t* sgi = rd + kGicrSgi;
      r32(sgi, kGicrIcEnabler0) = 0xFFFF'FFFFu;
      r32(sgi, kGicrIGroupr0) = 0xFFFF'FFFFu;  // Group 1: delivered as IRQ.
      for (unsigned i = 0; i < 32; ++i) sgi[kGicrIPriorityr + i] = 0x80;
      // LPIs: the shared configuration table, a pending table of its own (64 KiB aligned, zero:
      // .bss, identity-mapped, so its address is physical).
      const uint64_t pend_phys = reinterpret_cast<uintptr_t>(g_pending_tables[cpu_index]);
      r64(rd, kGicrPropbaser) = g_prop_phys | kTableAttrs | (kIdBits - 1);
      r64(rd, kGicrPendbaser) = pend_phys | kTableAttrs | kPendbaserPtz;
      r32(rd, kGicrCtlr) = r32(rd, kGicrCtlr) | kGicrCtlrEnableLpis;
      return support::ok();
    }
    if ((typer & kGicrTyperLast) != 0) break;
  }
  return ErrorCode::kNotFound;
}

void cpu_interface_init() {
  uint64_t sre;
  __asm__ volatile("mrs %0, icc_sre_el1" : "=r"(sre));
  __asm__ volatile("msr icc_sre_el1, %0; isb" ::"r"(sre | 1));
  __asm__ volatile("msr icc_pmr_el1, %0" ::"r"(uint64_t{0xF0}));
  __asm__ volatile("msr icc_bpr1_el1, %0" ::"r"(uint64_t{0}));
  __asm__ volatile("msr icc_igrpen1_el1, %0; isb" ::"r"(uint64_t{1}));
}

Result<void> map_collection(unsigned cpu_index) {
  Cpu& c = g_cpu[cpu_index];
  const uintptr_t flags = arch::irq_save();
  g_lock.lock();
  auto r = its_command(kCmdMapc, 0, kGitsValid | (rdbase(c) << 16) | cpu_index, 0);
  if (r.ok()) r = sync(c);
  if (r.ok()) c.collection = true;
  g_lock.unlock();
  arch::irq_restore(flags);
  return r;
}

Result<void> its_init() {
  TRY_ASSIGN(volatile void* va, arch::mmio_map(PhysAddr(g_desc.its_phys), 0x20000));
  g_its = static_cast<volatile uint8_t*>(va);
  g_its_phys = g_desc.its_phys;
  r32(g_its, kGitsCtlr) = 0;
  for (uint64_t i = 0; i < kSpinLimit && (r32(g_its, kGitsCtlr) & kGitsCtlrQuiescent) == 0; ++i) {
  }
  const uint64_t typer = r64(g_its, kGitsTyper);
  g_pta = ((typer >> 19) & 1) != 0;
  const uint32_t itt_entry = static_cast<uint32_t>(((typer >> 4) & 0xF) + 1);
  g_itt_bytes = itt_entry << kEventBits;
  for (unsigned n = 0; n < 8; ++n) {
    const uint64_t v = r64(g_its, kGitsBaser + 8 * n);
    const uint64_t type = (v >> 56) & 7;
    if (type != kBaserTypeDevice && type != kBaserTypeCollection) continue;
    const uint64_t entry = ((v >> 48) & 0x1F) + 1;
    uint64_t phys = 0;
    TRY(table_bytes(kPage, kPage, &phys));  // One 4 KiB page, flat: IDs below kPage / entry.
    const uint64_t want = kGitsValid | kGitsBaserAttrs | (type << 56) | phys;
    r64(g_its, kGitsBaser + 8 * n) = want;
    const uint64_t got = r64(g_its, kGitsBaser + 8 * n);
    if ((got & kGitsValid) == 0 || (got & 0x0000'FFFF'FFFF'F000ull) != phys ||
        ((got >> 8) & 3) != 0) {
      return ErrorCode::kNotSupported;  // Needs another page size: not handled.
    }
    if (type == kBaserTypeDevice) g_device_entries = static_cast<uint32_t>(kPage / entry);
  }
  TRY_ASSIGN(uint8_t* q, table_bytes(kPage, kPage, &g_cmdq_phys));
  g_cmdq = reinterpret_cast<uint64_t*>(q);
  r64(g_its, kGitsCbaser) = kGitsValid | kGitsCbaserAttrs | g_cmdq_phys;  // Size: one page.
  r64(g_its, kGitsCwriter) = 0;
  g_cwriter = 0;
  r32(g_its, kGitsCtlr) = kGitsCtlrEnabled;
  return support::ok();
}

}  // namespace

Result<void> init(const Description& d) {
  g_desc = d;
  TRY_ASSIGN(volatile void* dist, arch::mmio_map(PhysAddr(d.dist_phys), 0x10000));
  g_dist = static_cast<volatile uint8_t*>(dist);
  r32(g_dist, kGicdCtlr) = 0;
  if (!wait_clear32(g_dist, kGicdCtlr, kGicdCtlrRwp)) return ErrorCode::kTimedOut;
  unsigned ids = 32 * ((r32(g_dist, kGicdTyper) & 0x1F) + 1);
  if (ids > 1020) ids = 1020;
  for (unsigned id = 32; id < ids; id += 32) {
    r32(g_dist, kGicdIcEnabler + id / 8) = 0xFFFF'FFFFu;
    r32(g_dist, kGicdIGroupr + id / 8) = 0xFFFF'FFFFu;
  }
  r32(g_dist, kGicdCtlr) = kGicdCtlrAreNs | kGicdCtlrEnableGrp1;
  if (!wait_clear32(g_dist, kGicdCtlr, kGicdCtlrRwp)) return ErrorCode::kTimedOut;
  // LPI configuration table: a byte per LPI, all disabled.
  const uint32_t id_bits = ((r32(g_dist, kGicdTyper) >> 19) & 0x1F) + 1;
  if (id_bits < kIdBits) return ErrorCode::kNotSupported;
  TRY_ASSIGN(g_prop, table_bytes(2 * kPage, kPage, &g_prop_phys));  // 2^14 - 8192 bytes.
  g_lpis = kNumLpis;
  TRY(redistributor_init(0));
  cpu_interface_init();
  if (d.its_phys != 0) {
    TRY(its_init());
    TRY(map_collection(0));
  }
  return support::ok();
}

Result<void> cpu_init(unsigned cpu_index) {
  if (cpu_index >= kMaxCpus) return ErrorCode::kInvalidArgument;
  TRY(redistributor_init(cpu_index));
  cpu_interface_init();
  if (g_its != nullptr) TRY(map_collection(cpu_index));
  return support::ok();
}

void enable_ppi(unsigned id) {
  const uint64_t aff = affinity_of_this_cpu();
  for (const Cpu& c : g_cpu) {
    if (c.rd == nullptr || (r64(c.rd, kGicrTyper) >> 32) != aff) continue;
    volatile uint8_t* sgi = c.rd + kGicrSgi;
    sgi[kGicrIPriorityr + id] = 0x80;
    r32(sgi, kGicrIsEnabler0) = 1u << id;
    return;
  }
}

void send_sgi(unsigned id, uint64_t mpidr) {
  // ICC_SGI1R_EL1: Aff3 in 55:48, Aff2 in 39:32, INTID in 27:24, Aff1 in 23:16, and the target
  // list (a bit per Aff0 value 0..15) in 15:0.
  const uint64_t aff0 = mpidr & 0xF;
  const uint64_t v = (((mpidr >> 32) & 0xFF) << 48) | (((mpidr >> 16) & 0xFF) << 32) |
                     (uint64_t{id & 0xF} << 24) | (((mpidr >> 8) & 0xFF) << 16) | (1ull << aff0);
  __asm__ volatile("dsb ishst; msr icc_sgi1r_el1, %0; isb" ::"r"(v) : "memory");
}

uint32_t ack() {
  uint64_t v;
  __asm__ volatile("mrs %0, icc_iar1_el1" : "=r"(v)::"memory");
  return static_cast<uint32_t>(v & 0xFF'FFFF);
}

void eoi(uint32_t id) {
  __asm__ volatile("msr icc_eoir1_el1, %0; isb" ::"r"(uint64_t{id}) : "memory");
}

unsigned lpi_first() {
  return kLpiBase;
}
unsigned lpi_count() {
  return g_its != nullptr ? g_lpis : 0;
}
bool has_its() {
  return g_its != nullptr;
}
uint64_t its_doorbell() {
  return g_its_phys + kGitsTranslater;
}

Result<void> its_map(uint32_t devid, unsigned lpi, unsigned cpu) {
  if (g_its == nullptr || lpi < kLpiBase || lpi - kLpiBase >= g_lpis) {
    return ErrorCode::kInvalidArgument;
  }
  if (devid >= g_device_entries || cpu >= kMaxCpus || !g_cpu[cpu].collection) {
    return ErrorCode::kNotSupported;
  }
  const uint32_t event = lpi - kLpiBase;
  const uintptr_t flags = arch::irq_save();
  g_lock.lock();
  Result<void> r = support::ok();
  // The device's slot, mapped (MAPD) on its first event.
  unsigned slot = kMaxDevices;
  for (unsigned i = 0; i < kMaxDevices; ++i) {
    if (g_devices[i].used && g_devices[i].devid == devid) slot = i;
  }
  if (slot == kMaxDevices) {
    for (unsigned i = 0; i < kMaxDevices && slot == kMaxDevices; ++i) {
      if (!g_devices[i].used) slot = i;
    }
    if (slot == kMaxDevices) {
      r = ErrorCode::kNoMemory;
    } else {
      // A slot keeps its ITT for good: a device that comes back gets it again.
      Result<uint8_t*> itt = g_itt_phys[slot] != 0
                                 ? Result<uint8_t*>(nullptr)
                                 : table_bytes(g_itt_bytes, 256, &g_itt_phys[slot]);
      if (!itt.ok()) {
        r = itt.error();
      } else {
        r = its_command(kCmdMapd | (uint64_t{devid} << 32), kEventBits - 1,
                        kGitsValid | g_itt_phys[slot], 0);
        if (r.ok()) {
          g_devices[slot].devid = devid;
          g_devices[slot].used = true;
        }
      }
    }
  }
  if (r.ok()) {
    g_prop[event] = kLpiPriority | kLpiEnable;
    clean(&g_prop[event], 1);
    r = its_command(kCmdMapti | (uint64_t{devid} << 32), event | (uint64_t{lpi} << 32), cpu, 0);
    if (r.ok()) r = its_command(kCmdInv | (uint64_t{devid} << 32), event, 0, 0);
    if (r.ok()) r = sync(g_cpu[cpu]);
    if (r.ok()) g_lpi_dev[event] = slot + 1;
  }
  g_lock.unlock();
  arch::irq_restore(flags);
  return r;
}

Result<void> its_unmap(unsigned lpi) {
  if (g_its == nullptr || lpi < kLpiBase || lpi - kLpiBase >= g_lpis) return ErrorCode::kNotFound;
  const uint32_t event = lpi - kLpiBase;
  const uintptr_t flags = arch::irq_save();
  g_lock.lock();
  Result<void> r = support::ok();
  if (g_lpi_dev[event] == 0) {
    r = ErrorCode::kNotFound;
  } else {
    const uint32_t devid = g_devices[g_lpi_dev[event] - 1].devid;
    g_prop[event] = kLpiPriority;
    clean(&g_prop[event], 1);
    r = its_command(kCmdDiscard | (uint64_t{devid} << 32), event, 0, 0);
    if (r.ok()) r = sync(g_cpu[0]);
    g_lpi_dev[event] = 0;
  }
  g_lock.unlock();
  arch::irq_restore(flags);
  return r;
}

}  // namespace aarch64::gicv3
