// AArch64-only in-VM tests: the MMU and caches are really on, the page tables agree with the
// hardware's own translation (AT S1E1R / PAR_EL1), and the DmaOp uses the CPU's line size.
#include "arch/aarch64/testkernel/mmu.h"
#include "arch/aarch64/testkernel/sysreg.h"
#include "dmakit/arch/aarch64_dma_op.h"
#include "testkernel/arch.h"
#include "testkernel/fdt.h"
#include "testkernel/kernel_env.h"
#include "testkernel/kstring.h"
#include "tests/qemu/ktest.h"

namespace {

// The hardware's stage-1 translation of va for an EL1 read: true and the PA and MAIR attribute
// byte, or false on a fault.
bool hw_translate(uint64_t va, uint64_t* pa, uint8_t* mair_attr) {
  __asm__ volatile("at s1e1r, %0\n isb" : : "r"(va) : "memory");
  uint64_t par = aarch64::read_par_el1();
  if ((par & 1) != 0) return false;
  *pa = (par & 0x0000'FFFF'FFFF'F000ull) | (va & 0xfff);
  *mair_attr = static_cast<uint8_t>(par >> 56);
  return true;
}

}  // namespace

KTEST(aarch64_mmu_and_caches_on) {
  uint64_t sctlr = aarch64::read_sctlr_el1();
  KEXPECT_TRUE((sctlr & aarch64::kSctlrM) != 0);
  KEXPECT_TRUE((sctlr & aarch64::kSctlrC) != 0);
  KEXPECT_TRUE((sctlr & aarch64::kSctlrI) != 0);
  KEXPECT_EQ(aarch64::read_mair_el1(), aarch64::kMairValue);
  KEXPECT_EQ((aarch64::read_currentel() >> 2) & 3, 1u);
}

KTEST(aarch64_direct_map_matches_hardware_walk) {
  const KernelEnv& env = kernel_env();
  KREQUIRE_TRUE(env.boot != nullptr);
  // First, middle and last page of every RAM range, seen through the direct map.
  for (size_t i = 0; i < env.boot->num_ram; ++i) {
    const PhysRange& r = env.boot->ram[i];
    uint64_t probes[3] = {r.base.value(), r.base.value() + (r.size / 2 & ~0xfffull),
                          r.end().value() - 8};
    for (uint64_t p : probes) {
      void* va = env.phys_to_virt(PhysAddr(p));
      uint64_t hw_pa = 0;
      uint8_t hw_attr = 0;
      KREQUIRE_TRUE(hw_translate(reinterpret_cast<uintptr_t>(va), &hw_pa, &hw_attr));
      KEXPECT_EQ(hw_pa, p);
      KEXPECT_EQ(hw_attr, 0xFFu);  // Normal, inner/outer write-back RA WA.
      aarch64::MemAttr attr;
      uint64_t sw_pa = 0;
      KREQUIRE_TRUE(aarch64::mmu_lookup(reinterpret_cast<uintptr_t>(va), &attr, &sw_pa));
      KEXPECT_EQ(sw_pa, p);
      KEXPECT_TRUE(attr == aarch64::MemAttr::kNormalWb);
      const char* name = arch::mapping_attribute(va);
      KREQUIRE_TRUE(name != nullptr);
      KEXPECT_TRUE(kstr::equal(name, "normal-wb"));
    }
  }
}

KTEST(aarch64_null_page_and_holes_unmapped) {
  uint64_t pa = 0;
  uint8_t attr = 0;
  KEXPECT_FALSE(hw_translate(0, &pa, &attr));
  KEXPECT_TRUE(arch::mapping_attribute(nullptr) == nullptr);
  // Just past the direct map of the highest RAM byte.
  const KernelEnv& env = kernel_env();
  uint64_t top = 0;
  for (size_t i = 0; i < env.boot->num_ram; ++i) {
    if (env.boot->ram[i].end().value() > top) top = env.boot->ram[i].end().value();
  }
  KEXPECT_FALSE(
      hw_translate(reinterpret_cast<uintptr_t>(env.phys_to_virt(PhysAddr(top))), &pa, &attr));
  // RAM outside the kernel image and the device tree has no identity mapping: the bounce pools
  // and the allocator's pages are reached only through the direct map.
  for (size_t i = 0; i < env.num_pools; ++i) {
    KEXPECT_FALSE(hw_translate(env.pools[i]->base().value(), &pa, &attr));
  }
  KEXPECT_FALSE(hw_translate(env.pfa->highest_address().value() - 4096, &pa, &attr));
}

KTEST(aarch64_console_is_device_memory) {
  uint64_t pa = 0;
  uint8_t attr = 0xff;
  KREQUIRE_TRUE(hw_translate(0x0900'0000, &pa, &attr));
  KEXPECT_EQ(attr, 0x04u);  // Device-nGnRE.
  const char* name = arch::mapping_attribute(reinterpret_cast<const void*>(0x0900'0000ull));
  KREQUIRE_TRUE(name != nullptr);
  KEXPECT_TRUE(kstr::equal(name, "device-ngnre"));
}

KTEST(aarch64_dma_op_line_size_from_ctr) {
  KEXPECT_EQ(arch::cache_line_size(), aarch64::dcache_line_size());
  KEXPECT_EQ(AArch64DmaOp::hardware_line_size(), aarch64::dcache_line_size());
  KEXPECT_FALSE(kernel_env().dma->default_constraints().coherence == DmaCoherence::kCoherent);
}

// MMIO the device tree describes is identity-mapped as Device-nGnRE: the PCIe ECAM and the parent
// side of every window in its "ranges" (QEMU virt's high ECAM and 64-bit window lie far above RAM).
KTEST(aarch64_pcie_windows_device_mapped) {
  const arch::BootInfo& b = *kernel_env().boot;
  KREQUIRE_TRUE(b.fdt != nullptr);
  auto f = Fdt::from(b.fdt);
  KREQUIRE_OK(f);
  FdtNode pci = f->find_compatible("pci-host-ecam-generic");
  KREQUIRE_TRUE(pci.valid());
  auto ecam = f->reg(pci, 0);
  KREQUIRE_OK(ecam);
  const uint64_t probes_ecam[] = {ecam->base.value(), ecam->end().value() - 4};
  for (uint64_t pa : probes_ecam) {
    const char* name = arch::mapping_attribute(reinterpret_cast<const void*>(pa));
    KREQUIRE_TRUE(name != nullptr);
    KEXPECT_TRUE(kstr::equal(name, "device-ngnre"));
  }
  FdtProp ranges = f->prop(pci, "ranges");
  KREQUIRE_TRUE(ranges.found());
  uint32_t child_ac = f->address_cells(pci);
  uint32_t parent_ac = f->address_cells(f->parent(pci));
  uint32_t sc = f->size_cells(pci);
  uint32_t entry = 4 * (child_ac + parent_ac + sc);
  size_t windows = 0;
  for (uint32_t off = 0; off + entry <= ranges.len; off += entry) {
    uint64_t base = Fdt::read_cells(ranges.data + off + 4 * child_ac, parent_ac);
    uint64_t size = Fdt::read_cells(ranges.data + off + 4 * (child_ac + parent_ac), sc);
    const uint64_t probes[] = {base, base + size - 1};
    for (uint64_t pa : probes) {
      uint64_t hw_pa = 0;
      uint8_t attr = 0xff;
      KREQUIRE_TRUE(hw_translate(pa, &hw_pa, &attr));
      KEXPECT_EQ(hw_pa, pa);
      KEXPECT_EQ(attr, 0x04u);
    }
    ++windows;
  }
  KEXPECT_GE(windows, 2u);
}
