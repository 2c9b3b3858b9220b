// x86-64 SMP on QEMU q35: CPUs and APIC ids from the ACPI MADT, started with INIT-SIPI-SIPI from
// the boot CPU's local APIC at a real-mode trampoline (ap_boot.S) copied to a page of the low
// megabyte, which the boot code reserves whole (never given to the page-frame allocator).
//
// TLB shootdown: one at a time (g_shootdown_lock). The initiator publishes the range and the set
// of CPUs that must act, sends them kTlbShootdownVector, invalidates its own TLB and waits until
// every CPU has cleared its bit. A CPU clears its bit from the interrupt handler, or, when it has
// interrupts masked (a work item runs so, and may wait in a loop for other CPUs), from cpu_relax
// in any wait loop (so two CPUs that wait on each other with interrupts masked still make
// progress). Invalidation: invlpg per page, or a CR3 reload for ranges above kMaxInvlpgPages
// (the kernel maps no global pages, so that drops everything).
//
// Idle CPUs wait in `sti; hlt` (the sti shadow makes the pair atomic, so a wake IPI sent after
// the slot was found empty still ends the hlt); wake_cpu sends kWakeVector.
#include "arch/x86_64/testkernel/smp.h"

#include "arch/x86_64/testkernel/acpi.h"
#include "arch/x86_64/testkernel/cpu.h"
#include "arch/x86_64/testkernel/irq.h"
#include "arch/x86_64/testkernel/lapic.h"
#include "arch/x86_64/testkernel/paging.h"
#include "arch/x86_64/testkernel/traps.h"
#include "arch/x86_64/testkernel/x86_64_platform.h"
#include "dmakit/support/spinlock.h"
#include "testkernel/arch.h"
#include "testkernel/kprintf.h"
#include "testkernel/panic.h"
#include "testkernel/percpu.h"

extern "C" {
extern char x86_ap_trampoline_start[], x86_ap_trampoline_end[];  // NOLINT: ap_boot.S.
extern uint32_t x86_ap_trampoline_cr3, x86_ap_trampoline_efer;   // NOLINT: ap_boot.S.
extern char boot_pml4[];                                         // NOLINT: boot.S.
// Read by x86_ap_entry64 (ap_boot.S) for the AP being started.
constinit uint64_t x86_ap_boot_cr3 = 0;
constinit PerCpu* x86_ap_boot_percpu = nullptr;
}

namespace x86 {
namespace {

// Where ap_boot.S is assembled to run (AP_TRAMPOLINE_PHYS there).
constexpr uint64_t kTrampolinePhys = 0x8000;
constexpr uint32_t kMsrGsBase = 0xC000'0101;
constexpr uint64_t kEferLme = 1ull << 8;
constexpr uint64_t kEferNxe = 1ull << 11;
constexpr size_t kMaxInvlpgPages = 64;
constexpr uintptr_t kPage = 4096;
using Pte = uint64_t;

bool g_trampoline_ready = false;
// The AP started last: the next start waits until it has taken x86_ap_boot_percpu.
PerCpu* g_starting = nullptr;
uint64_t g_boot_cr4 = 0;

struct Shootdown {
  uintptr_t va = 0;
  size_t size = 0;
  uint32_t pending = 0;  // Bit i: CPU i has yet to invalidate.
};
Shootdown g_shootdown;
support::SpinLock g_shootdown_lock;
uint64_t g_served[kMaxCpus];

void local_flush(uintptr_t va, size_t size) {
  uintptr_t first = va & ~(kPage - 1);
  size_t pages = size == 0 ? 0 : (va + size - first + kPage - 1) / kPage;
  if (pages > kMaxInvlpgPages) {
    write_cr3(read_cr3());
    return;
  }
  for (size_t i = 0; i < pages; ++i) {
    __asm__ volatile("invlpg (%0)" : : "r"(first + i * kPage) : "memory");
  }
}

// Does this CPU's part of a pending shootdown, if any.
void serve_shootdown() {
  PerCpu* me = this_cpu();
  if (me == nullptr) return;
  uint32_t bit = 1u << me->index;
  if ((__atomic_load_n(&g_shootdown.pending, __ATOMIC_ACQUIRE) & bit) == 0) return;
  local_flush(g_shootdown.va, g_shootdown.size);
  ++g_served[me->index];
  __atomic_fetch_and(&g_shootdown.pending, ~bit, __ATOMIC_RELEASE);
}

bool overlaps(uint64_t a, uint64_t alen, uint64_t b, uint64_t blen) {
  return a < b + blen && b < a + alen;
}

// Copies the trampoline to its page once. False (with a message) if that page is not free RAM.
bool prepare_trampoline() {
  if (g_trampoline_ready) return true;
  const size_t len = static_cast<size_t>(x86_ap_trampoline_end - x86_ap_trampoline_start);
  const PvhInfo& pvh = pvh_info();
  bool in_ram = false;
  for (size_t i = 0; i < pvh.num_memmap; ++i) {
    const MemmapEntry& m = pvh.memmap[i];
    if (m.type == kMemTypeRam && m.addr <= kTrampolinePhys &&
        kTrampolinePhys + kPage <= m.addr + m.size) {
      in_ram = true;
    }
  }
  bool clash =
      overlaps(kTrampolinePhys, kPage, pvh.start_info_phys, 56) ||
      overlaps(kTrampolinePhys, kPage, pvh.memmap_phys, pvh.num_memmap * sizeof(MemmapEntry)) ||
      (pvh.cmdline_phys != 0 &&
       overlaps(kTrampolinePhys, kPage, pvh.cmdline_phys, pvh.cmdline_len + 1));
  if (!in_ram || clash || len > kPage) {
    kprintf("x86_64: the AP trampoline page 0x%llx is %s; secondary CPUs stay off\n",
            static_cast<unsigned long long>(kTrampolinePhys),
            !in_ram ? "not RAM"
            : clash ? "taken by the PVH start info"
                    : "too small");
    return false;
  }
  auto* dst = static_cast<uint8_t*>(direct_map(kTrampolinePhys));
  __builtin_memcpy(dst, x86_ap_trampoline_start, len);
  // The two words ap_boot.S leaves for the copy.
  const uint32_t cr3 = static_cast<uint32_t>(kernel_virt_to_phys(boot_pml4));
  const uint32_t efer = static_cast<uint32_t>(rdmsr(kMsrEfer) & (kEferLme | kEferNxe)) |
                        static_cast<uint32_t>(kEferLme);
  __builtin_memcpy(
      dst + (reinterpret_cast<char*>(&x86_ap_trampoline_cr3) - x86_ap_trampoline_start), &cr3,
      sizeof(cr3));
  __builtin_memcpy(
      dst + (reinterpret_cast<char*>(&x86_ap_trampoline_efer) - x86_ap_trampoline_start), &efer,
      sizeof(efer));
  g_boot_cr4 = read_cr4();
  g_trampoline_ready = true;
  return true;
}

// The TLB test page: the direct-map address of a physical page nothing uses (far above q35's RAM
// and 64-bit PCI window), mapped as one 4 KiB leaf by map_device the first time and then
// pointed at RAM.
constexpr uint64_t kTlbTestPhys = 0x7F'0000'0000ull;
constexpr Pte kPtePresent = 1;
constexpr Pte kPteLarge = 1ull << 7;
constexpr Pte kPteAddrMask = 0x000F'FFFF'FFFF'F000ull;
Pte g_tlb_test_original = 0;

// The 4 KiB PTE that maps `va` in the active tables, or null. Every table lives in the kernel
// image (paging.cc's pool), reached at kKernelVma + its physical address.
Pte* pte_of(uintptr_t va) {
  uint64_t table = read_cr3() & kPteAddrMask;
  for (int level = 3; level > 0; --level) {
    Pte e = reinterpret_cast<Pte*>(table + kKernelVma)[(va >> (12 + 9 * level)) & 0x1FF];
    if ((e & kPtePresent) == 0 || (e & kPteLarge) != 0) return nullptr;
    table = e & kPteAddrMask;
  }
  return &reinterpret_cast<Pte*>(table + kKernelVma)[(va >> 12) & 0x1FF];
}

}  // namespace

bool smp_handle_interrupt(uint8_t vector) {
  switch (vector) {
    case kTlbShootdownVector:
      serve_shootdown();
      lapic::eoi();
      return true;
    case kWakeVector:
      lapic::eoi();
      return true;
    default:
      return false;
  }
}

uint64_t tlb_shootdowns_served(unsigned cpu_index) {
  return cpu_index < kMaxCpus ? __atomic_load_n(&g_served[cpu_index], __ATOMIC_RELAXED) : 0;
}

}  // namespace x86

using namespace x86;

// Entered from x86_ap_entry64 on the AP's own stack, final page tables, interrupts off; the GDT
// register still points into the trampoline page, which these tables do not map: the first thing
// is the AP's own GDT.
extern "C" [[noreturn]] void x86_ap_main(PerCpu* self) {
  init_traps_secondary(self->index);
  arch::set_this_cpu(self);
  write_cr4(g_boot_cr4);
  init_pat();
  if (!irq_init_secondary(self->index)) secondary_give_up(self, "no usable local APIC");
  secondary_main(self);
}

namespace arch {

unsigned cpu_hw_ids(const BootInfo&, uint64_t* ids, unsigned max) {
  ids[0] = cpu_data(0).hw_id;
  uint32_t apic[kMaxCpus + 1];
  unsigned found = acpi_cpu_apic_ids(pvh_info().rsdp_phys, apic, kMaxCpus + 1);
  unsigned n = 1;
  for (unsigned i = 0; i < found && n < max; ++i) {
    if (apic[i] != ids[0]) ids[n++] = apic[i];
  }
  return n;
}

bool start_cpu(PerCpu& cpu) {
  if (!prepare_trampoline()) return false;
  if (cpu.hw_id > 0xFE && !lapic::x2apic()) {
    kprintf("x86_64: APIC id %llu needs x2APIC; cpu %u stays off\n",
            static_cast<unsigned long long>(cpu.hw_id), cpu.index);
    return false;
  }
  if (g_starting != nullptr && !cpu_online(g_starting->index) &&
      !__atomic_load_n(&g_starting->gave_up, __ATOMIC_ACQUIRE)) {
    // It may still read x86_ap_boot_percpu: starting another one would give both one PerCpu.
    // (One that gave up did so in C++, long past reading it.)
    kprintf("x86_64: cpu %u is not up yet; cpu %u stays off\n", g_starting->index, cpu.index);
    return false;
  }
  g_starting = &cpu;
  x86_ap_boot_cr3 = read_cr3();
  x86_ap_boot_percpu = &cpu;
  __atomic_thread_fence(__ATOMIC_SEQ_CST);
  lapic::send_init_sipi(static_cast<uint32_t>(cpu.hw_id),
                        static_cast<uint8_t>(kTrampolinePhys >> 12));
  return true;
}

void set_this_cpu(PerCpu* cpu) {
  wrmsr(kMsrGsBase, reinterpret_cast<uintptr_t>(cpu));
}

void cpu_relax() {
  __asm__ volatile("pause" ::: "memory");
  serve_shootdown();
}

void idle_wait() {
  serve_shootdown();
  // The only window with interrupts on: the wake and shootdown IPIs end the hlt.
  __asm__ volatile("sti\n hlt\n cli" ::: "memory");
}

void wake_cpu(PerCpu& cpu) {
  __atomic_thread_fence(__ATOMIC_SEQ_CST);
  lapic::send_ipi(static_cast<uint32_t>(cpu.hw_id), kWakeVector);
}

Result<uintptr_t> tlb_test_page_map(PhysAddr pa) {
  auto va = reinterpret_cast<uintptr_t>(direct_map(kTlbTestPhys));
  if (g_tlb_test_original == 0) {
    auto m = map_device(PhysAddr(kTlbTestPhys), kPage, MemType::kWriteBack);
    if (!m.ok()) return m.error();
  }
  Pte* pte = pte_of(va);
  if (pte == nullptr) return ErrorCode::kNotSupported;
  if (g_tlb_test_original == 0) g_tlb_test_original = *pte;
  __atomic_store_n(pte, (*pte & ~kPteAddrMask) | (pa.value() & kPteAddrMask), __ATOMIC_RELEASE);
  return va;
}

void tlb_test_page_release() {
  Pte* pte = pte_of(reinterpret_cast<uintptr_t>(direct_map(kTlbTestPhys)));
  if (pte != nullptr && g_tlb_test_original != 0) {
    __atomic_store_n(pte, g_tlb_test_original, __ATOMIC_RELEASE);
  }
}

void tlb_flush_kernel_range(uintptr_t va, size_t size) {
  uintptr_t irq = irq_save();
  while (!g_shootdown_lock.try_lock()) cpu_relax();  // Serves the holder's shootdown meanwhile.
  unsigned me = cpu_index();
  uint32_t targets = 0;
  for (unsigned i = 0; i < num_cpus(); ++i) {
    if (i != me && cpu_online(i)) targets |= 1u << i;
  }
  g_shootdown.va = va;
  g_shootdown.size = size;
  __atomic_store_n(&g_shootdown.pending, targets, __ATOMIC_RELEASE);
  for (unsigned i = 0; i < num_cpus(); ++i) {
    if ((targets & (1u << i)) != 0) {
      lapic::send_ipi(static_cast<uint32_t>(cpu_data(i).hw_id), kTlbShootdownVector);
    }
  }
  local_flush(va, size);
  while (__atomic_load_n(&g_shootdown.pending, __ATOMIC_ACQUIRE) != 0) {
    __asm__ volatile("pause" ::: "memory");
  }
  g_shootdown_lock.unlock();
  irq_restore(irq);
}

}  // namespace arch
