// AArch64 SMP for QEMU virt: CPUs from the device tree's /cpus (MPIDR affinity in "reg"), started
// with PSCI CPU_ON through the conduit the /psci node's "method" names (hvc or smc). A started CPU
// enters aarch64_secondary_entry (entry.S) with the MMU off and x0 = its PerCpu; the entry code
// programs the boot CPU's translation registers (aarch64_secondary_params, cleaned to the point
// of coherency because it is read with the caches off), switches to its stacks, sets TPIDR_EL1
// and calls aarch64_secondary_boot.
//
// Idle CPUs wait in wfi with IRQs masked: a pending interrupt (the wake SGI that wake_cpu sends,
// or the CPU's own timer tick) ends the wfi, and is taken once the caller unmasks. The poster
// publishes the work before the SGI (dsb), and the idle CPU looks at its slot with IRQs masked
// before the wfi, so a post is never missed.
//
// Cross-CPU TLB maintenance needs no interrupt: `tlbi vaae1is` is broadcast to every CPU of the
// inner-shareable domain, and the `dsb ish` after it waits until all of them have done it.
#include "arch/aarch64/testkernel/irq.h"
#include "arch/aarch64/testkernel/mmu.h"
#include "arch/aarch64/testkernel/sysreg.h"
#include "testkernel/arch.h"
#include "testkernel/fdt.h"
#include "testkernel/kprintf.h"
#include "testkernel/kstring.h"
#include "testkernel/panic.h"
#include "testkernel/percpu.h"

extern "C" char aarch64_secondary_entry[];  // NOLINT: entry.S.

// What a secondary's entry code loads before its MMU is on (entry.S reads it by offset).
struct Aarch64SecondaryParams {
  uint64_t mair;
  uint64_t tcr;
  uint64_t ttbr0;
  uint64_t ttbr1;
  uint64_t sctlr;
};
extern "C" {
alignas(64) constinit Aarch64SecondaryParams aarch64_secondary_params = {};
}

namespace {

// PSCI (Arm DEN 0022): CPU_ON, SMC64 calling convention.
constexpr uint64_t kPsciCpuOn64 = 0xC400'0003;
constexpr uint64_t kMpidrAffinityMask = 0xFF'00FF'FFFFull;  // Aff3, Aff2, Aff1, Aff0.
// A range bigger than this many pages is dropped with one `tlbi vmalle1is` instead.
constexpr size_t kMaxTlbiPages = 64;

enum class Conduit { kNone, kHvc, kSmc };
Conduit g_conduit = Conduit::kNone;

// SMCCC v1.0 lets the firmware change x4-x17 as well.
#define PSCI_CLOBBERS \
  "x4", "x5", "x6", "x7", "x8", "x9", "x10", "x11", "x12", "x13", "x14", "x15", "x16", "x17"

int64_t psci_call(uint64_t fn, uint64_t a1, uint64_t a2, uint64_t a3) {
  register uint64_t x0 __asm__("x0") = fn;
  register uint64_t x1 __asm__("x1") = a1;
  register uint64_t x2 __asm__("x2") = a2;
  register uint64_t x3 __asm__("x3") = a3;
  if (g_conduit == Conduit::kHvc) {
    __asm__ volatile("hvc #0" : "+r"(x0), "+r"(x1), "+r"(x2), "+r"(x3) : : "memory", PSCI_CLOBBERS);
  } else {
    __asm__ volatile("smc #0" : "+r"(x0), "+r"(x1), "+r"(x2), "+r"(x3) : : "memory", PSCI_CLOBBERS);
  }
  return static_cast<int64_t>(x0);
}

// The TLB test page: an otherwise unused address of the identity space (TTBR0), far above
// anything the device tree describes.
constexpr uint64_t kTlbTestVa = 0x0000'7F00'0000'0000ull;
constexpr uint64_t kDescValid = 1ull << 0;
constexpr uint64_t kDescTable = 1ull << 1;
constexpr uint64_t kDescOaMask = 0x0000'FFFF'FFFF'F000ull;

// The level-3 descriptor that maps kTlbTestVa, or null if the walk stops before (unmapped, or a
// block). Tables are in the kernel image, identity-mapped: their physical address is their
// address.
uint64_t* tlb_test_descriptor() {
  uint64_t table = aarch64::read_ttbr0_el1() & kDescOaMask;
  for (int level = 0; level < 3; ++level) {
    uint64_t e = reinterpret_cast<uint64_t*>(table)[(kTlbTestVa >> (39 - 9 * level)) & 511];
    if ((e & kDescValid) == 0 || (e & kDescTable) == 0) return nullptr;
    table = e & kDescOaMask;
  }
  return &reinterpret_cast<uint64_t*>(table)[(kTlbTestVa >> 12) & 511];
}

// Cleans and invalidates [p, p + n) to the point of coherency, for data a CPU with its caches
// off reads.
void clean_to_poc(const void* p, size_t n) {
  size_t line = aarch64::dcache_line_size();
  uintptr_t a = reinterpret_cast<uintptr_t>(p) & ~(line - 1);
  uintptr_t end = reinterpret_cast<uintptr_t>(p) + n;
  for (; a < end; a += line) __asm__ volatile("dc civac, %0" : : "r"(a) : "memory");
  aarch64::dsb_sy();
}

}  // namespace

extern "C" [[noreturn]] void aarch64_secondary_boot(PerCpu* self) {
  if (!aarch64::irq_init_secondary(self->index)) {
    secondary_give_up(self, "its GIC redistributor / CPU interface could not be set up");
  }
  secondary_main(self);
}

namespace arch {

unsigned cpu_hw_ids(const BootInfo& info, uint64_t* ids, unsigned max) {
  ids[0] = aarch64::read_mpidr_el1() & kMpidrAffinityMask;
  unsigned n = 1;
  auto fdt = Fdt::from(info.fdt);
  if (!fdt.ok()) return n;
  FdtNode psci = fdt->find_path("/psci");
  const char* method = psci.valid() ? fdt->prop_string(psci, "method") : nullptr;
  if (method != nullptr && kstr::equal(method, "hvc")) g_conduit = Conduit::kHvc;
  if (method != nullptr && kstr::equal(method, "smc")) g_conduit = Conduit::kSmc;
  for (unsigned i = 0; i < fdt->cpu_count() && n < max; ++i) {
    auto reg = fdt->reg(fdt->cpu_node(i), 0);
    if (!reg.ok()) continue;
    uint64_t mpidr = reg->base.value() & kMpidrAffinityMask;
    if (mpidr != ids[0]) ids[n++] = mpidr;
  }
  if (n > 1 && g_conduit == Conduit::kNone) {
    kprintf("aarch64: no PSCI method in the device tree; secondary CPUs stay off\n");
    return 1;
  }
  return n;
}

bool start_cpu(PerCpu& cpu) {
  aarch64_secondary_params = {aarch64::read_mair_el1(), aarch64::read_tcr_el1(),
                              aarch64::read_ttbr0_el1(), aarch64::read_ttbr1_el1(),
                              aarch64::read_sctlr_el1()};
  clean_to_poc(&aarch64_secondary_params, sizeof(aarch64_secondary_params));
  clean_to_poc(&cpu, sizeof(cpu));
  // The kernel image is identity-mapped: the entry's and the PerCpu's virtual addresses are
  // their physical addresses.
  int64_t r =
      psci_call(kPsciCpuOn64, cpu.hw_id, reinterpret_cast<uintptr_t>(aarch64_secondary_entry),
                reinterpret_cast<uintptr_t>(&cpu));
  if (r != 0) {
    kprintf("aarch64: PSCI CPU_ON(0x%llx) returned %lld\n",
            static_cast<unsigned long long>(cpu.hw_id), static_cast<long long>(r));
    return false;
  }
  return true;
}

void set_this_cpu(PerCpu* cpu) {
  __asm__ volatile("msr tpidr_el1, %0" : : "r"(cpu) : "memory");
}

void cpu_relax() {
  __asm__ volatile("yield" ::: "memory");
}

void idle_wait() {
  __asm__ volatile("wfi" ::: "memory");
}

void wake_cpu(PerCpu& cpu) {
  aarch64::send_wake(cpu.index);
}

void tlb_flush_kernel_range(uintptr_t va, size_t size) {
  constexpr uintptr_t kPage = 4096;
  uintptr_t first = va & ~(kPage - 1);
  uintptr_t end = va + size;
  size_t pages = size == 0 ? 0 : (end - first + kPage - 1) / kPage;
  aarch64::dsb_ishst();  // Page-table writes before the invalidation.
  if (pages > kMaxTlbiPages) {
    __asm__ volatile("tlbi vmalle1is" ::: "memory");
  } else {
    for (uintptr_t a = first; a < end; a += kPage) {
      // Operand: VA[55:12] in bits [43:0]; vaae1: all ASIDs, last level and walk caches.
      uint64_t arg = (a >> 12) & ((1ull << 44) - 1);
      __asm__ volatile("tlbi vaae1is, %0" : : "r"(arg) : "memory");
    }
  }
  aarch64::dsb_ish();
  aarch64::isb();
}

Result<uintptr_t> tlb_test_page_map(PhysAddr pa) {
  uint64_t* d = tlb_test_descriptor();
  if (d == nullptr || (*d & kDescValid) == 0) {
    // An address no CPU has translated yet (Arm TLBs hold no invalid entries): a plain map.
    auto r = aarch64::mmu_map(aarch64::Space::kIdentity, kTlbTestVa, pa.value(), 4096,
                              aarch64::MemAttr::kNormalWb, false);
    if (!r.ok()) return r.error();
    aarch64::dsb_ishst();
    aarch64::isb();
    return kTlbTestVa;
  }
  // Only the output address changes, between two Normal write-back pages nobody writes through
  // this address: the test wants the old translation left in every TLB, so there is no
  // break-before-make here (whose TLBI would remove it).
  __atomic_store_n(d, (*d & ~kDescOaMask) | (pa.value() & kDescOaMask), __ATOMIC_RELAXED);
  aarch64::dsb_ishst();
  return kTlbTestVa;
}

void tlb_test_page_release() {
  uint64_t* d = tlb_test_descriptor();
  if (d != nullptr) __atomic_store_n(d, uint64_t{0}, __ATOMIC_RELAXED);
  aarch64::dsb_ishst();
}

}  // namespace arch

#undef PSCI_CLOBBERS
