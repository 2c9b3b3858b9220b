// AArch64 SMP for QEMU virt: CPUs from the device tree's /cpus (MPIDR affinity in "reg"), started
// with PSCI CPU_ON through the conduit the /psci node's "method" names (hvc or smc). A started CPU
// enters aarch64_secondary_entry (entry.S) with the MMU off and x0 = its PerCpu; the entry code
// programs the boot CPU's translation registers (aarch64_secondary_params, cleaned to the point
// of coherency because it is read with the caches off), switches to its stacks, sets TPIDR_EL1
// and calls aarch64_secondary_boot.
//
// Idle CPUs: without an interrupt controller nothing can wake a CPU from wfi, and wfe is a plain
// yield under QEMU's TCG, so a polling CPU burns a host thread. An idle secondary therefore polls
// for kIdleSpinNs and then powers itself off (PSCI CPU_OFF) after marking itself asleep
// (PerCpu::arch[kPowerWord]); wake_cpu, which runs after a post, turns a sleeping CPU back on
// with CPU_ON, and the CPU re-enters secondary_main. Both sides order "post, then read the state"
// and "mark asleep, then look at the slot" with full barriers, so a post is never missed: either
// the CPU sees the work before going off, or the poster sees it asleep and restarts it.
//
// Cross-CPU TLB maintenance needs no interrupt: `tlbi vaae1is` is broadcast to every CPU of the
// inner-shareable domain, and the `dsb ish` after it waits until all of them have done it.
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
constexpr uint64_t kPsciCpuOff = 0x8400'0002;
constexpr uint64_t kPsciAffinityInfo64 = 0xC400'0004;
constexpr int64_t kPsciAffinityOff = 1;
// The idle protocol's word in PerCpu::arch.
constexpr size_t kPowerWord = 0;
constexpr uintptr_t kAwake = 0;
constexpr uintptr_t kAsleep = 1;
constexpr uint64_t kIdleSpinNs = 500'000;
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

uintptr_t irq_save() {
  uint64_t daif;
  __asm__ volatile("mrs %0, daif\n msr daifset, #3" : "=r"(daif) : : "memory");
  return daif;
}

void irq_restore(uintptr_t state) {
  __asm__ volatile("msr daif, %0" : : "r"(static_cast<uint64_t>(state)) : "memory");
}

void cpu_relax() {
  __asm__ volatile("yield" ::: "memory");
}

void idle_wait() {
  PerCpu* me = this_cpu();
  uint64_t until = now_ns() + kIdleSpinNs;
  while (now_ns() < until) {
    if (smp_work_pending(*me)) return;
    __asm__ volatile("wfe" ::: "memory");  // wake_cpu's sev ends it early on real hardware.
  }
  __atomic_store_n(&me->arch[kPowerWord], kAsleep, __ATOMIC_SEQ_CST);
  __atomic_thread_fence(__ATOMIC_SEQ_CST);
  if (smp_work_pending(*me)) {
    uintptr_t expected = kAsleep;
    if (__atomic_compare_exchange_n(&me->arch[kPowerWord], &expected, kAwake, false,
                                    __ATOMIC_SEQ_CST, __ATOMIC_SEQ_CST)) {
      return;
    }
    // A poster already saw this CPU asleep and is turning it back on: go off for it.
  }
  // Does not return: the CPU restarts at aarch64_secondary_entry on the next CPU_ON.
  psci_call(kPsciCpuOff, 0, 0, 0);
  kpanic("aarch64: PSCI CPU_OFF returned on cpu %u", me->index);
}

void wake_cpu(PerCpu& cpu) {
  __asm__ volatile("dsb ish\n sev" ::: "memory");
  __atomic_thread_fence(__ATOMIC_SEQ_CST);
  if (__atomic_exchange_n(&cpu.arch[kPowerWord], kAwake, __ATOMIC_SEQ_CST) != kAsleep) return;
  // It is off, or about to call CPU_OFF: wait until PSCI sees it off, then turn it on.
  while (psci_call(kPsciAffinityInfo64, cpu.hw_id, 0, 0) != kPsciAffinityOff) cpu_relax();
  int64_t r =
      psci_call(kPsciCpuOn64, cpu.hw_id, reinterpret_cast<uintptr_t>(aarch64_secondary_entry),
                reinterpret_cast<uintptr_t>(&cpu));
  if (r != 0) {
    kpanic("aarch64: PSCI CPU_ON(0x%llx) to wake cpu %u returned %lld",
           static_cast<unsigned long long>(cpu.hw_id), cpu.index, static_cast<long long>(r));
  }
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
