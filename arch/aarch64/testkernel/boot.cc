// AArch64 boot, after entry.S: find the device tree, turn the MMU and caches on, build the direct
// map from the device tree's memory nodes, map the MMIO the device tree describes, fill
// arch::BootInfo and enter kernel_main.
//
// Two phases:
//   early (MMU off) -- identity-map the kernel image, the DTB and the console, enable the MMU.
//     With the MMU off every data access is Device memory, where an unaligned access faults;
//     this phase therefore only stores aligned 64-bit table entries and reads the DTB header
//     a byte at a time.
//   late (MMU on, caches on) -- parse the device tree, map RAM at kDirectMapBase + phys and the
//     MMIO identity, then re-read the device tree through the direct map for the BootInfo (the
//     subsystem sees only direct-map addresses).
#include "arch/aarch64/testkernel/mmu.h"
#include "arch/aarch64/testkernel/platform.h"
#include "arch/aarch64/testkernel/sysreg.h"
#include "dmakit/support/bitops.h"
#include "testkernel/arch.h"
#include "testkernel/fdt.h"
#include "testkernel/fdt_boot_info.h"
#include "testkernel/kprintf.h"
#include "testkernel/kstring.h"
#include "testkernel/panic.h"
#include "testkernel/percpu.h"

extern "C" {
extern char __image_start[];       // NOLINT: linker-script symbols.
extern char __image_end[];         // NOLINT
extern char __boot_stack_guard[];  // NOLINT: entry.S, a page-aligned page.
}

namespace {

using aarch64::MemAttr;
using aarch64::Space;

// QEMU's documentation (docs/system/arm/virt.rst, "Hardware configuration information for bare
// metal programming"): a guest that is not a Linux kernel finds the flattened device tree at the
// base of RAM, 0x4000'0000. The kernel is linked at 0x4020'0000 to leave room for it.
constexpr uint64_t kQemuVirtDtbPhys = 0x4000'0000;
constexpr uint64_t kPage = 4096;
constexpr size_t kMaxRam = arch::kMaxMemRanges;

arch::BootInfo g_boot;

uint64_t image_start() {
  return reinterpret_cast<uintptr_t>(__image_start);
}
uint64_t image_end() {
  return reinterpret_cast<uintptr_t>(__image_end);
}

[[noreturn]] void boot_fail(const char* what, ErrorCode code) {
  kpanic("aarch64 boot: %s: %s", what, error_code_name(code));
}

// The DTB: from x0 if a loader passed one, else where QEMU puts it for bare-metal ELF guests.
uint64_t locate_dtb(uint64_t x0) {
  if (x0 != 0 && (x0 & 7) == 0 && Fdt::peek_total_size(reinterpret_cast<const void*>(x0)) != 0) {
    return x0;
  }
  if (Fdt::peek_total_size(reinterpret_cast<const void*>(kQemuVirtDtbPhys)) != 0) {
    return kQemuVirtDtbPhys;
  }
  return 0;
}

void map_or_fail(Space s, uint64_t va, uint64_t pa, uint64_t size, MemAttr attr, bool exec,
                 const char* what) {
  auto r = aarch64::mmu_map(s, va, pa, size, attr, exec);
  if (!r.ok()) boot_fail(what, r.code());
}

// MMU off: identity-map exactly the image and the DTB (whole pages; 2 MiB blocks where aligned),
// and the console. Nothing else of RAM is reachable at its physical address.
void early_mmu(uint64_t dtb, uint32_t dtb_size) {
  aarch64::mmu_reset_tables();
  uint64_t img_lo = support::align_down(image_start(), kPage);
  uint64_t img_hi = support::align_up(image_end(), kPage);
  uint64_t dtb_lo = support::align_down(dtb, kPage);
  uint64_t dtb_hi = support::align_up(dtb + dtb_size, kPage);
  if (dtb_hi >= img_lo && dtb_lo <= img_hi) {
    // Overlapping or adjacent: one executable range covering both.
    img_lo = support::min(img_lo, dtb_lo);
    img_hi = support::max(img_hi, dtb_hi);
  } else {
    map_or_fail(Space::kIdentity, dtb_lo, dtb_lo, dtb_hi - dtb_lo, MemAttr::kNormalWb, false,
                "identity map of the device tree");
  }
  // The image minus the boot stack's guard page.
  uint64_t guard = reinterpret_cast<uintptr_t>(__boot_stack_guard);
  map_or_fail(Space::kIdentity, img_lo, img_lo, guard - img_lo, MemAttr::kNormalWb, true,
              "identity map of the kernel image");
  map_or_fail(Space::kIdentity, guard + kPage, guard + kPage, img_hi - guard - kPage,
              MemAttr::kNormalWb, true, "identity map of the kernel image");
  uint64_t uart = aarch64::kPl011Phys;
  map_or_fail(Space::kIdentity, uart, uart, kPage, MemAttr::kDevice, false, "console mapping");
  aarch64::mmu_enable();
}

bool overlaps_ram(const PhysRange* ram, size_t n, uint64_t lo, uint64_t hi) {
  for (size_t i = 0; i < n; ++i) {
    if (lo < ram[i].end().value() && ram[i].base.value() < hi) return true;
  }
  return false;
}

// Identity-maps one MMIO range as Device-nGnRE, skipping RAM, page 0 (so that a null pointer
// dereference faults) and ranges that do not fit the address space.
void map_mmio(const PhysRange* ram, size_t nram, uint64_t base, uint64_t size, const char* node) {
  if (size == 0 || support::add_overflows(base, size)) return;
  uint64_t lo = support::align_down(base, kPage);
  uint64_t hi = support::align_up(base + size, kPage);
  if (lo == 0 || hi > (1ull << 48) || overlaps_ram(ram, nram, lo, hi)) return;
  auto r = aarch64::mmu_map(Space::kIdentity, lo, lo, hi - lo, MemAttr::kDevice, false);
  if (!r.ok()) {
    kprintf("aarch64 boot: warning: cannot map MMIO of %s [0x%llx, 0x%llx): %s\n", node,
            static_cast<unsigned long long>(lo), static_cast<unsigned long long>(hi),
            error_code_name(r.code()));
  }
}

// Maps every MMIO range the device tree gives in CPU physical addresses: the "reg" of nodes whose
// ancestors (below the root) all translate addresses one to one (empty "ranges"), and the parent
// side of non-empty "ranges" of such nodes (PCIe windows).
void map_devices(const Fdt& fdt, const PhysRange* ram, size_t nram) {
  constexpr int kMaxDepth = 16;
  bool cpu_addressed[kMaxDepth] = {};  // Children of the node at this depth have CPU addresses.
  FdtNode nodes[kMaxDepth];
  int depth = 0;
  FdtNode n = fdt.root();
  nodes[0] = n;
  cpu_addressed[0] = true;
  for (n = fdt.next_node(n, &depth); n.valid(); n = fdt.next_node(n, &depth)) {
    if (depth <= 0 || depth >= kMaxDepth) break;
    nodes[depth] = n;
    FdtProp ranges = fdt.prop(n, "ranges");
    bool mine = cpu_addressed[depth - 1];
    cpu_addressed[depth] = mine && ranges.found() && ranges.len == 0;
    if (!mine || !fdt.is_enabled(n)) continue;
    const char* dt = fdt.prop_string(n, "device_type");
    if (dt != nullptr && kstr::equal(dt, "memory")) continue;
    auto count = fdt.reg_count(n);
    for (size_t i = 0; count.ok() && i < *count; ++i) {
      auto r = fdt.reg(n, i);
      if (r.ok()) map_mmio(ram, nram, r->base.value(), r->size, fdt.name(n));
    }
    if (ranges.found() && ranges.len != 0) {
      uint32_t child_ac = fdt.address_cells(n);
      uint32_t parent_ac = fdt.address_cells(nodes[depth - 1]);
      uint32_t sc = fdt.size_cells(n);
      uint32_t entry = 4 * (child_ac + parent_ac + sc);
      if (parent_ac > 2 || sc > 2 || entry == 0) continue;
      for (uint32_t off = 0; off + entry <= ranges.len; off += entry) {
        const uint8_t* e = ranges.data + off;
        uint64_t base = Fdt::read_cells(e + 4 * child_ac, parent_ac);
        uint64_t size = Fdt::read_cells(e + 4 * (child_ac + parent_ac), sc);
        map_mmio(ram, nram, base, size, fdt.name(n));
      }
    }
  }
}

[[noreturn]] void late_boot(uint64_t dtb) {
  auto early = Fdt::from(reinterpret_cast<const void*>(dtb));
  if (!early.ok()) boot_fail("device tree header", early.code());

  PhysRange ram[kMaxRam];
  size_t nram = early->memory_ranges(ram, kMaxRam);
  if (nram == 0) boot_fail("device tree has no memory node", ErrorCode::kNotFound);
  if (nram > kMaxRam) boot_fail("too many memory ranges", ErrorCode::kNoMemory);

  // The direct map: every RAM range, in whole pages.
  for (size_t i = 0; i < nram; ++i) {
    uint64_t lo = support::align_up(ram[i].base.value(), kPage);
    uint64_t hi = support::align_down(ram[i].end().value(), kPage);
    if (hi <= lo) continue;
    map_or_fail(Space::kDirect, aarch64::kDirectMapBase + lo, lo, hi - lo, MemAttr::kNormalWb,
                false, "direct map");
  }
  map_devices(*early, ram, nram);
  aarch64::mmu_sync();

  auto fdt = Fdt::from(reinterpret_cast<const void*>(aarch64::kDirectMapBase + dtb));
  if (!fdt.ok()) boot_fail("device tree through the direct map", fdt.code());
  auto r = boot_info_from_fdt(*fdt, PhysAddr(dtb), &g_boot);
  if (!r.ok()) boot_fail("device tree contents", r.code());
  // The kernel image includes .bss: boot stack, page-table pool and all static state.
  r = boot_info_add_reserved(&g_boot, PhysAddr(image_start()), image_end() - image_start());
  if (!r.ok()) boot_fail("reserved ranges", r.code());
  g_boot.direct_map_offset = aarch64::kDirectMapBase;

  uint64_t el = (aarch64::read_currentel() >> 2) & 3;
  kprintf(
      "aarch64: EL%llu, MMU and caches on (SCTLR_EL1 0x%llx), D-cache line %zu bytes, "
      "page tables %zu/%zu pages\n",
      static_cast<unsigned long long>(el),
      static_cast<unsigned long long>(aarch64::read_sctlr_el1()), aarch64::dcache_line_size(),
      aarch64::mmu_tables_used(), aarch64::mmu_tables_capacity());
  kprintf("aarch64: device tree at 0x%llx (%u bytes); kernel image [0x%llx, 0x%llx)\n",
          static_cast<unsigned long long>(dtb), fdt->total_size(),
          static_cast<unsigned long long>(image_start()),
          static_cast<unsigned long long>(image_end()));
  kernel_main(g_boot);
}

}  // namespace

extern "C" [[noreturn]] void aarch64_boot(uint64_t x0) {
  aarch64::console_init();
  uint64_t dtb = locate_dtb(x0);
  if (dtb == 0)
    kpanic("aarch64 boot: no device tree (x0 = 0x%llx)", static_cast<unsigned long long>(x0));
  early_mmu(dtb, Fdt::peek_total_size(reinterpret_cast<const void*>(dtb)));
  // With the caches on: the per-CPU table is ordinary cacheable memory from here on.
  smp_init_boot_cpu(aarch64::read_mpidr_el1() & 0xFF'00FF'FFFFull);
  late_boot(dtb);
}
