// RISC-V SMP under OpenSBI: harts from the device tree's /cpus ("reg" is the hart id; the boot
// hart is the one OpenSBI entered _start on), started with SBI HSM hart_start at
// riscv64_secondary_entry (boot.S) with opaque = the hart's PerCpu. The entry code goes through
// the boot page table (it identity-maps the kernel, so the satp write does not pull the code from
// under the hart), jumps to the kernel's linked address and installs the final table
// (riscv64_kernel_satp), its stacks, tp and the trap vector.
//
// Idle harts wait in wfi with sstatus.SIE clear: a pending interrupt enabled in sie (the
// supervisor software interrupt that wake_cpu sends with SBI IPI, the hart's timer, an MSI) ends
// the wfi and is taken once the caller unmasks; irq.cc's handler clears SSIP.
// Remote TLB invalidation is SBI RFENCE remote_sfence_vma over the online harts; the firmware
// returns once every hart has done it.
#include "arch/riscv64/testkernel/csr.h"
#include "arch/riscv64/testkernel/irq.h"
#include "arch/riscv64/testkernel/riscv64_platform.h"
#include "arch/riscv64/testkernel/sbi.h"
#include "testkernel/arch.h"
#include "testkernel/fdt.h"
#include "testkernel/kprintf.h"
#include "testkernel/panic.h"
#include "testkernel/percpu.h"

extern "C" char riscv64_secondary_entry[];  // NOLINT: boot.S.

extern "C" {
// The final satp, read by riscv64_secondary_entry once it runs at the linked address.
constinit uint64_t riscv64_kernel_satp = 0;
}

namespace {

constexpr uint64_t kSieSsie = 1ull << 1;
bool g_have_rfence = false;

void local_sfence_range(uintptr_t va, size_t size) {
  constexpr uintptr_t kPage = 4096;
  if (size > 64 * kPage) {
    riscv::sfence_vma_all();
    return;
  }
  for (uintptr_t a = va & ~(kPage - 1); a < va + size; a += kPage) {
    __asm__ volatile("sfence.vma %0, zero" : : "r"(a) : "memory");
  }
}

// The TLB test page: the direct-map address of a physical page nothing uses (past RAM and the
// PCIe windows of QEMU virt, inside the 256 GiB direct map), mapped as one 4 KiB leaf by
// mmio_map the first time and then pointed at RAM.
constexpr uint64_t kTlbTestPhys = 0x3F'0000'0000ull;
constexpr uint64_t kPteV = 1ull << 0;
constexpr uint64_t kPteRwx = 7ull << 1;
constexpr uint64_t kPtePpnShift = 10;
constexpr uint64_t kPtePpnMask = ((1ull << 44) - 1) << kPtePpnShift;
constexpr uint64_t kPtePbmtMask = 3ull << 61;
uint64_t g_tlb_test_original = 0;

// The 4 KiB leaf that maps `va` in the active table, or null. Table pages are in the kernel
// image, reached through the direct map.
uint64_t* pte_of(uintptr_t va) {
  uint64_t table = (riscv::read_satp() & ((1ull << 44) - 1)) << 12;
  for (int level = 2; level >= 0; --level) {
    auto* t = reinterpret_cast<uint64_t*>(table + riscv::Riscv64Platform::kDirectMapOffset);
    uint64_t* e = &t[(va >> (12 + 9 * level)) & 511];
    if ((*e & kPteV) == 0) return nullptr;
    if ((*e & kPteRwx) != 0) return level == 0 ? e : nullptr;
    table = ((*e & kPtePpnMask) >> kPtePpnShift) << 12;
  }
  return nullptr;
}

struct Range {
  uintptr_t va;
  size_t size;
};

}  // namespace

extern "C" [[noreturn]] void riscv64_secondary_boot(PerCpu* self) {
  if (!riscv::irq_init_secondary(self->index)) secondary_give_up(self, "no IMSIC file for it");
  __asm__ volatile("csrs sie, %0" : : "r"(kSieSsie) : "memory");
  secondary_main(self);
}

namespace arch {

unsigned cpu_hw_ids(const BootInfo& info, uint64_t* ids, unsigned max) {
  ids[0] = riscv::platform().boot_hart();
  unsigned n = 1;
  auto fdt = Fdt::from(info.fdt);
  if (!fdt.ok()) return n;
  for (unsigned i = 0; i < fdt->cpu_count() && n < max; ++i) {
    auto reg = fdt->reg(fdt->cpu_node(i), 0);
    if (reg.ok() && reg->base.value() != ids[0]) ids[n++] = reg->base.value();
  }
  if (n > 1 && !riscv::sbi::probe_extension(riscv::sbi::kExtHsm)) {
    kprintf("riscv64: no SBI HSM extension; the other harts stay stopped\n");
    return 1;
  }
  g_have_rfence = riscv::sbi::probe_extension(riscv::sbi::kExtRfence);
  return n;
}

bool start_cpu(PerCpu& cpu) {
  riscv64_kernel_satp = riscv::read_satp();
  uintptr_t entry = reinterpret_cast<uintptr_t>(riscv64_secondary_entry) -
                    riscv::Riscv64Platform::kDirectMapOffset;
  __atomic_thread_fence(__ATOMIC_SEQ_CST);
  auto r = riscv::sbi::call(riscv::sbi::kExtHsm, riscv::sbi::kHsmHartStart, cpu.hw_id, entry,
                            reinterpret_cast<uintptr_t>(&cpu));
  if (r.error != 0) {
    kprintf("riscv64: SBI hart_start(%llu) failed: %ld\n",
            static_cast<unsigned long long>(cpu.hw_id), r.error);
    return false;
  }
  return true;
}

void set_this_cpu(PerCpu* cpu) {
  __asm__ volatile("mv tp, %0" : : "r"(cpu) : "memory");
}

void cpu_relax() {
  // Zihintpause `pause` (a fence with no predecessor set: a plain fence where it is not
  // implemented), spelled as its encoding so that no assembler extension flag is needed.
  __asm__ volatile(".4byte 0x0100000f" ::: "memory");
}

void idle_wait() {
  // An IPI that arrived since the slot was last looked at leaves SSIP set: the wfi returns at
  // once.
  riscv::wfi();
}

void wake_cpu(PerCpu& cpu) {
  __atomic_thread_fence(__ATOMIC_SEQ_CST);
  (void)riscv::sbi::call(riscv::sbi::kExtIpi, riscv::sbi::kIpiSendIpi, 1, cpu.hw_id);
}

void tlb_flush_kernel_range(uintptr_t va, size_t size) {
  __atomic_thread_fence(__ATOMIC_SEQ_CST);  // Page-table writes before the fences.
  if (!g_have_rfence) {
    Range r{va, size};
    run_on_all_cpus(
        [](void* p) {
          local_sfence_range(static_cast<Range*>(p)->va, static_cast<Range*>(p)->size);
        },
        &r);
    return;
  }
  // One call per 64-hart group (hart_mask_base + a 64-bit mask).
  bool done[kMaxCpus] = {};
  for (unsigned i = 0; i < num_cpus(); ++i) {
    if (done[i] || !cpu_online(i)) continue;
    uint64_t base = cpu_data(i).hw_id & ~uint64_t{63};
    uint64_t mask = 0;
    for (unsigned j = i; j < num_cpus(); ++j) {
      if (!cpu_online(j) || (cpu_data(j).hw_id & ~uint64_t{63}) != base) continue;
      mask |= 1ull << (cpu_data(j).hw_id - base);
      done[j] = true;
    }
    auto r = riscv::sbi::call(riscv::sbi::kExtRfence, riscv::sbi::kRfenceRemoteSfenceVma, mask,
                              base, va, size);
    if (r.error != 0) {
      kpanic("riscv64: SBI remote_sfence_vma failed: %ld", r.error);
    }
  }
}

Result<uintptr_t> tlb_test_page_map(PhysAddr pa) {
  uintptr_t va = kTlbTestPhys + riscv::Riscv64Platform::kDirectMapOffset;
  if (pte_of(va) == nullptr) {
    auto m = riscv::platform().mmio_map(PhysAddr(kTlbTestPhys), 4096);
    if (!m.ok()) return m.error();
  }
  uint64_t* pte = pte_of(va);
  if (pte == nullptr) return ErrorCode::kNotSupported;
  if (g_tlb_test_original == 0) g_tlb_test_original = *pte;
  // Ordinary memory (PBMT cleared): the page is RAM now.
  uint64_t e = (*pte & ~(kPtePpnMask | kPtePbmtMask)) | ((pa.value() >> 12) << kPtePpnShift);
  __atomic_store_n(pte, e, __ATOMIC_RELEASE);
  return va;
}

void tlb_test_page_release() {
  uint64_t* pte = pte_of(kTlbTestPhys + riscv::Riscv64Platform::kDirectMapOffset);
  if (pte != nullptr && g_tlb_test_original != 0) {
    __atomic_store_n(pte, g_tlb_test_original, __ATOMIC_RELEASE);
  }
}

}  // namespace arch
