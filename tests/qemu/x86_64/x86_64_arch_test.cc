// x86-64-only in-VM tests: the page tables (direct map, MMIO window, kernel image permissions,
// no identity map), the PAT layout, the trap path (faults caught by probes, decoded and resumed),
// the TSC clock against the HPET, the CPU count against QEMU's fw_cfg, and the DmaOp's choice of
// cache instructions against CPUID.
#include "arch/x86_64/testkernel/cpu.h"
#include "arch/x86_64/testkernel/cpu_features.h"
#include "arch/x86_64/testkernel/paging.h"
#include "arch/x86_64/testkernel/smp.h"
#include "arch/x86_64/testkernel/traps.h"
#include "arch/x86_64/testkernel/x86_64_platform.h"
#include "dmakit/arch/x86_64_dma_op.h"
#include "dmakit/kernel_hooks.h"
#include "testkernel/arch.h"
#include "testkernel/arch_io.h"
#include "testkernel/kernel_env.h"
#include "testkernel/kstring.h"
#include "testkernel/percpu.h"
#include "tests/qemu/ktest.h"

extern "C" char __text_start[], __rodata_start[], __data_start[], boot_stack_guard[];

namespace {

constexpr uint64_t kPage = 4096;
constexpr uint64_t kPfVector = 14;
constexpr uint64_t kGpVector = 13;
// #PF error code bits.
constexpr uint64_t kPfPresent = 1, kPfWrite = 2, kPfFetch = 16;

bool mapped_as(const void* va, const char* type) {
  const char* name = arch::mapping_attribute(va);
  return name != nullptr && kstr::equal(name, type);
}

// End of the highest memory-map entry below the MMIO window (RAM or firmware memory).
uint64_t low_memory_top() {
  const x86::PvhInfo& pvh = x86::pvh_info();
  uint64_t top = 0;
  for (size_t i = 0; i < pvh.num_memmap; ++i) {
    const uint64_t end = pvh.memmap[i].addr + pvh.memmap[i].size;
    if (end <= x86::kMmioWindowBase && end > top) top = end;
  }
  return top;
}

}  // namespace

KTEST(x86_direct_map_covers_ram_write_back) {
  const KernelEnv& env = kernel_env();
  KREQUIRE_TRUE(env.boot != nullptr);
  KEXPECT_EQ(env.direct_map_offset, x86::kDirectMapBase);
  for (size_t i = 0; i < env.boot->num_ram; ++i) {
    const PhysRange& r = env.boot->ram[i];
    const uint64_t probes[3] = {r.base.value(), r.base.value() + (r.size / 2 & ~(kPage - 1)),
                                r.end().value() - 8};
    for (uint64_t p : probes) {
      void* va = env.phys_to_virt(PhysAddr(p));
      x86::Translation t;
      KREQUIRE_TRUE(x86::translate(va, &t));
      KEXPECT_EQ(t.phys, p);
      KEXPECT_TRUE(t.type == x86::MemType::kWriteBack);
      KEXPECT_TRUE(t.writable);
      KEXPECT_FALSE(t.executable);
      KEXPECT_TRUE(mapped_as(va, "wb"));
      // A real access through the mapping works.
      uint64_t v = 0;
      x86::ProbeFault f;
      KEXPECT_TRUE(x86::probe_read64(reinterpret_cast<uintptr_t>(va) & ~7ull, &v, &f));
    }
  }
}

KTEST(x86_no_identity_map_and_holes_unmapped) {
  KEXPECT_TRUE(arch::mapping_attribute(nullptr) == nullptr);
  x86::ProbeFault f;
  uint64_t v = 0;
  // The null page: a not-present read fault, CR2 = the address.
  KEXPECT_FALSE(x86::probe_read64(0x10, &v, &f));
  KEXPECT_EQ(f.vector, kPfVector);
  KEXPECT_EQ(f.error & (kPfPresent | kPfWrite | kPfFetch), 0u);
  KEXPECT_EQ(f.cr2, 0x10u);
  // The kernel's physical load address: the boot identity map is gone.
  const uint64_t image_phys = x86::kernel_virt_to_phys(__text_start);
  KEXPECT_FALSE(x86::probe_read64(image_phys, &v, &f));
  KEXPECT_EQ(f.vector, kPfVector);
  KEXPECT_EQ(f.cr2, image_phys);
  // Between the top of low memory and the MMIO window nothing is mapped.
  const uint64_t gap = (low_memory_top() + kPage - 1) & ~(kPage - 1);
  if (gap < x86::kMmioWindowBase) {
    KEXPECT_TRUE(arch::mapping_attribute(x86::direct_map(gap)) == nullptr);
    KEXPECT_FALSE(x86::probe_read64(reinterpret_cast<uintptr_t>(x86::direct_map(gap)), &v, &f));
    KEXPECT_EQ(f.vector, kPfVector);
  }
  // Past the highest RAM above 4 GiB (if any).
  const KernelEnv& env = kernel_env();
  uint64_t top = 0;
  for (size_t i = 0; i < env.boot->num_ram; ++i) {
    if (env.boot->ram[i].end().value() > top) top = env.boot->ram[i].end().value();
  }
  if (top > x86::kMmioWindowEnd) {
    KEXPECT_TRUE(arch::mapping_attribute(x86::direct_map(top)) == nullptr);
  }
  // A non-canonical address: #GP, not #PF.
  KEXPECT_FALSE(x86::probe_read64(0x0000'8000'0000'0000ull, &v, &f));
  KEXPECT_EQ(f.vector, kGpVector);
}

KTEST(x86_mmio_window_is_uncached) {
  const uint64_t probes[] = {x86::kMmioWindowBase, 0xFEC0'0000 /* IOAPIC */, 0xFED0'0000 /* HPET */,
                             0xFEE0'0000 /* LAPIC */, x86::kMmioWindowEnd - kPage};
  for (uint64_t p : probes) {
    x86::Translation t;
    KREQUIRE_TRUE(x86::translate(x86::direct_map(p), &t));
    KEXPECT_EQ(t.phys, p);
    KEXPECT_TRUE(mapped_as(x86::direct_map(p), "uc"));
    KEXPECT_FALSE(t.executable);
  }
  // mmio_map hands back the same uncached mapping for the window, and refuses RAM.
  auto r = arch::mmio_map(PhysAddr(0xFED0'0000), 0x400);
  KREQUIRE_OK(r);
  KEXPECT_EQ(reinterpret_cast<uintptr_t>(*r),
             reinterpret_cast<uintptr_t>(x86::direct_map(0xFED0'0000)));
  const PhysRange& ram = kernel_env().boot->ram[kernel_env().boot->num_ram - 1];
  KEXPECT_ERR(arch::mmio_map(ram.base, kPage), ErrorCode::kInvalidArgument);
  KEXPECT_ERR(arch::mmio_map(PhysAddr(0x1000), 0), ErrorCode::kInvalidArgument);
}

KTEST(x86_pat_has_write_combining) {
  // WB, WT, UC-, UC, WC, WP, UC-, UC (paging.h).
  KEXPECT_EQ(x86::rdmsr(x86::kMsrPat), 0x0007'0501'0007'0406ull);
  // A device range far above RAM mapped write-combining and uncached (64-bit BAR style).
  const uint64_t wc = 0x70'0000'0000ull;  // 448 GiB: above any RAM size used here.
  auto r = x86::map_device(PhysAddr(wc), 2 * kPage, x86::MemType::kWriteCombining);
  KREQUIRE_OK(r);
  KEXPECT_TRUE(mapped_as(*r, "wc"));
  KEXPECT_TRUE(mapped_as(static_cast<char*>(*r) + kPage, "wc"));
  // Same range, other type: refused; same type again: accepted.
  KEXPECT_ERR(x86::map_device(PhysAddr(wc), kPage, x86::MemType::kUncached),
              ErrorCode::kInvalidArgument);
  KEXPECT_OK(x86::map_device(PhysAddr(wc + kPage), kPage, x86::MemType::kWriteCombining));
  auto uc = arch::mmio_map(PhysAddr(wc + 16 * kPage), 100);
  KREQUIRE_OK(uc);
  KEXPECT_TRUE(mapped_as(const_cast<void*>(*uc), "uc"));
}

KTEST(x86_kernel_image_permissions) {
  x86::Translation t;
  KREQUIRE_TRUE(x86::translate(__text_start, &t));
  KEXPECT_TRUE(t.executable);
  KEXPECT_FALSE(t.writable);
  KREQUIRE_TRUE(x86::translate(__rodata_start, &t));
  KEXPECT_FALSE(t.writable);
  KEXPECT_FALSE(t.executable);
  KREQUIRE_TRUE(x86::translate(__data_start, &t));
  KEXPECT_TRUE(t.writable);
  KEXPECT_FALSE(t.executable);
  // Writing text or rodata faults with P|W set (CR0.WP is on); the value written is the one
  // already there, so even a wrongly successful write changes nothing.
  x86::ProbeFault f;
  const char* const read_only[] = {__text_start, __rodata_start};
  for (const char* p : read_only) {
    const auto addr = reinterpret_cast<uintptr_t>(p);
    uint64_t old = 0;
    KREQUIRE_TRUE(x86::probe_read64(addr, &old, &f));
    KEXPECT_FALSE(x86::probe_write64(addr, old, &f));
    KEXPECT_EQ(f.vector, kPfVector);
    KEXPECT_EQ(f.error & (kPfPresent | kPfWrite), kPfPresent | kPfWrite);
    KEXPECT_EQ(f.cr2, addr);
  }
  // The boot stack's guard page is unmapped.
  uint64_t v = 0;
  KEXPECT_FALSE(x86::probe_read64(reinterpret_cast<uintptr_t>(boot_stack_guard), &v, &f));
  KEXPECT_EQ(f.vector, kPfVector);
  KEXPECT_EQ(f.error & kPfPresent, 0u);
}

KTEST(x86_dma_op_uses_the_cpu_instructions) {
  const x86::CpuFeatures& cpu = x86::cpu_features();
  const x86::CpuidRegs l1 = x86::cpuid(1);
  const x86::CpuidRegs l7 = x86::cpuid(7, 0);
  KEXPECT_EQ(cpu.clflush, ((l1.edx >> 19) & 1) != 0);
  KEXPECT_EQ(cpu.clflushopt, ((l7.ebx >> 23) & 1) != 0);
  KEXPECT_EQ(cpu.clwb, ((l7.ebx >> 24) & 1) != 0);
  KEXPECT_EQ(arch::cache_line_size(), static_cast<size_t>(((l1.ebx >> 8) & 0xFF) * 8));
  // This arch's create_dma_op always builds an X86DmaOp.
  const auto& op = static_cast<const X86DmaOp&>(*kernel_env().dma);
  KEXPECT_EQ(op.line_size(), arch::cache_line_size());
  KEXPECT_TRUE(op.flush_insn() == (cpu.clwb         ? X86DmaOp::FlushInsn::kClwb
                                   : cpu.clflushopt ? X86DmaOp::FlushInsn::kClflushopt
                                                    : X86DmaOp::FlushInsn::kClflush));
  KEXPECT_TRUE(op.inval_insn() ==
               (cpu.clflushopt ? X86DmaOp::InvalInsn::kClflushopt : X86DmaOp::InvalInsn::kClflush));
  KEXPECT_TRUE(op.default_constraints().coherence == DmaCoherence::kCoherent);
  // The boot report names exactly the optional instructions found.
  const char* features = arch::cache_features();
  KEXPECT_EQ(kstr::contains(features, "clflushopt"), cpu.clflushopt);
  KEXPECT_EQ(kstr::contains(features, "clwb"), cpu.clwb);
}

KTEST(x86_now_ns_agrees_with_hpet) {
  // HPET (q35: 0xFED0'0000): capabilities (period in femtoseconds in bits 63:32), configuration
  // (bit 0 enables the counter), main counter at 0xF0.
  auto r = arch::mmio_map(PhysAddr(0xFED0'0000), 0x400);
  KREQUIRE_OK(r);
  volatile uint64_t* hpet = static_cast<volatile uint64_t*>(*r);
  const uint64_t period_fs = hpet[0] >> 32;
  KREQUIRE_TRUE(period_fs != 0 && period_fs <= 100'000'000);  // The spec's upper bound: 100 ns.
  hpet[2] = hpet[2] | 1;
  const uint64_t h0 = hpet[0xF0 / 8];
  const uint64_t t0 = arch::now_ns();
  uint64_t prev = t0;
  uint64_t t1 = t0;
  // 50 ms by now_ns, bounded by the HPET too (so a broken now_ns cannot hang the test).
  while (t1 - t0 < 50'000'000) {
    t1 = arch::now_ns();
    KREQUIRE_TRUE(t1 >= prev);
    prev = t1;
    if ((hpet[0xF0 / 8] - h0) * period_fs / 1'000'000 > 2'000'000'000) break;
  }
  const uint64_t hpet_ns = (hpet[0xF0 / 8] - h0) * period_fs / 1'000'000;
  const uint64_t tsc_ns = arch::now_ns() - t0;
  // Within 5 % of each other (the calibration is far better; this leaves room for a busy host).
  KEXPECT_GE(tsc_ns * 100, hpet_ns * 95);
  KEXPECT_LE(tsc_ns * 100, hpet_ns * 105);
}

KTEST(x86_cpu_count_matches_fw_cfg) {
  // QEMU's fw_cfg (selector port 0x510, data port 0x511): key 0x05 is the boot CPU count, an
  // independent source for what the MADT says.
  x86::outw(0x510, 0x05);
  const uint16_t lo = x86::inb(0x511);
  const uint16_t hi = x86::inb(0x511);
  const unsigned fw_cfg_cpus = static_cast<unsigned>(lo | hi << 8);
  KEXPECT_GE(fw_cfg_cpus, 1u);
  KEXPECT_EQ(kernel_env().boot->num_cpus, fw_cfg_cpus);
}

KTEST(x86_boot_info_from_pvh) {
  const x86::PvhInfo& pvh = x86::pvh_info();
  const arch::BootInfo& info = *kernel_env().boot;
  KEXPECT_GE(pvh.version, 1u);
  // RAM is exactly the memory map's type-1 entries.
  size_t ram = 0;
  for (size_t i = 0; i < pvh.num_memmap; ++i) {
    if (pvh.memmap[i].type != x86::kMemTypeRam) continue;
    KREQUIRE_TRUE(ram < info.num_ram);
    KEXPECT_EQ(info.ram[ram].base.value(), pvh.memmap[i].addr);
    KEXPECT_EQ(info.ram[ram].size, pvh.memmap[i].size);
    ++ram;
  }
  KEXPECT_EQ(ram, info.num_ram);
  // The reserved list names low memory, the kernel image and the firmware's PVH data.
  auto reserved = [&](uint64_t base, uint64_t size) {
    for (size_t i = 0; i < info.num_reserved; ++i) {
      const PhysRange& r = info.reserved[i];
      if (r.base.value() <= base && base + size <= r.end().value()) return true;
    }
    return false;
  };
  KEXPECT_TRUE(reserved(0, 1 << 20));
  KEXPECT_TRUE(reserved(x86::kernel_virt_to_phys(__text_start), kPage));
  KEXPECT_TRUE(reserved(x86::kernel_virt_to_phys(boot_stack_guard), kPage));
  KEXPECT_TRUE(reserved(pvh.start_info_phys, 56));
  KEXPECT_TRUE(reserved(pvh.memmap_phys, pvh.num_memmap * sizeof(x86::MemmapEntry)));
  KEXPECT_TRUE(info.fdt == nullptr);
  KEXPECT_TRUE(kstr::contains(info.cmdline, "mode=test"));
}

KTEST(x86_pci_host_fallback_finds_q35) {
  auto r = arch::pci_host_fallback();
  KREQUIRE_OK(r);
  const arch::PciHostDesc& d = *r;
  // SeaBIOS enables a 256 MiB ECAM at 0xB000'0000 (the memory map marks it reserved).
  KEXPECT_EQ(d.ecam.base.value(), x86::kMmioWindowBase);
  KEXPECT_EQ(d.ecam.size, 256ull << 20);
  KEXPECT_EQ(d.bus_end, 255u);
  // The host bridge's vendor/device ID through ECAM equals what the ports said.
  auto ecam = arch::mmio_map(d.ecam.base, kPage);
  KREQUIRE_OK(ecam);
  KEXPECT_EQ(*static_cast<volatile uint32_t*>(*ecam), 0x29C0'8086u);
  bool mem32 = false;
  for (size_t i = 0; i < d.num_windows; ++i) {
    const arch::PciHostWindow& w = d.windows[i];
    if (w.kind != arch::PciHostWindow::Kind::kMem32) continue;
    mem32 = true;
    KEXPECT_GE(w.cpu_base.value(), low_memory_top());
    KEXPECT_LE(w.cpu_base.value() + w.size, 0xFEC0'0000ull);
    // No window overlaps the ECAM region.
    KEXPECT_TRUE(w.cpu_base.value() + w.size <= d.ecam.base.value() ||
                 w.cpu_base.value() >= d.ecam.end().value());
  }
  KEXPECT_TRUE(mem32);
}

// The remote TLB invalidation hook interrupts every other online CPU (kTlbShootdownVector) and
// returns only once each has invalidated: each one's served count goes up by exactly one per
// call, the caller's not at all (it invalidates locally).
KTEST(x86_64_tlb_shootdown_reaches_every_other_cpu) {
  const dmakit_kernel_hooks& h = dma::kernel_hooks();
  KREQUIRE_TRUE(h.tlb_flush_kernel_range != nullptr);
  uint64_t before[kMaxCpus];
  for (unsigned i = 0; i < num_cpus(); ++i) before[i] = x86::tlb_shootdowns_served(i);
  constexpr unsigned kCalls = 5;
  uintptr_t va = reinterpret_cast<uintptr_t>(kernel_env().phys_to_virt(PhysAddr(0x100000)));
  for (unsigned k = 0; k < kCalls; ++k) h.tlb_flush_kernel_range(va, 2 * 4096);
  KEXPECT_EQ(x86::tlb_shootdowns_served(0) - before[0], 0u);
  for (unsigned i = 1; i < num_cpus(); ++i) {
    KEXPECT_TRUE(cpu_online(i));
    KEXPECT_EQ(x86::tlb_shootdowns_served(i) - before[i], uint64_t{kCalls});
  }
}
