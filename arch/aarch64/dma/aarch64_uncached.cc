// Uncached coherent memory on AArch64: AArch64DmaOp::set_memory_attribute, which changes
// direct-map pages between Normal write-back (MAIR index 1) and Normal Non-cacheable (MAIR index
// 2, programmed by mmu_enable for this purpose) in place through DirectMapAttributes
// (mm/direct_map_attributes.h: the split/merge scheme and its cost).
//
// Every live entry changes with break-before-make (Arm ARM, "Using break-before-make when
// updating translation table entries": required to change the memory type or the block size):
// write an invalid entry, DSB, TLBI (the page's VA for a page, the whole EL1 regime for a block
// becoming a table or back, which also drops the walk caches), DSB, write the new entry, DSB,
// ISB. During the break the entry's region is unmapped, so replace() runs with interrupts masked
// and touches nothing but the table entry: the code, its stack and every page table are in the
// kernel image, reached through the identity map (TTBR0), never through the direct map (TTBR1)
// being changed. Another CPU touching the same 2 MiB / 1 GiB of the direct map during a split or
// merge would fault; the test kernel runs on one CPU (an SMP kernel needs FEAT_BBM level 2 or a
// stop-machine around splits).
//
// Mismatched attributes: the kernel has no other mapping of these pages, so no cacheable alias
// remains. Lines the write-back mapping holds are cleaned and invalidated by KernelDmaOp before
// the change, and again after it (DC CIVAC acts on the physical line whatever the attribute of
// the VA used), which drops any line a speculative access filled between the two.
//
// Page tables of the splits come from a static pool in the kernel image (kSplitPoolPages pages;
// its physical address is its address in the identity map, as for mmu.cc's tables). When it is
// exhausted alloc_coherent fails with kNoMemory and the map stays as it was.
#include "dmakit/arch/aarch64_dma_op.h"
#include "arch/aarch64/testkernel/mmu.h"
#include "arch/aarch64/testkernel/sysreg.h"
#include "testkernel/arch.h"
#include "mm/direct_map_attributes.h"

namespace {

constexpr size_t kSplitPoolPages = 64;
// TTBR1 with T1SZ = 16: the direct map starts at kDirectMapBase, 2^47 bytes below the top.
constexpr uint64_t kDirectMapSpan = 1ull << 47;

struct Aarch64DirectMap {
  using Pte = uint64_t;
  static constexpr int kTopLevel = 3;  // L0; level 2 is L1 (1 GiB blocks), 0 is L3 (pages).

  static constexpr uint64_t kValid = 1ull << 0;
  static constexpr uint64_t kTableOrPage = 1ull << 1;
  static constexpr unsigned kAttrShift = 2;
  static constexpr uint64_t kAttrMask = 7ull << kAttrShift;
  static constexpr uint64_t kOaMask = 0x0000'FFFF'FFFF'F000ull;

  static uint64_t level_size(int level) { return 1ull << (12 + 9 * level); }
  // Tables are in the kernel image, identity-mapped: physical address = virtual address.
  static Pte* table_at(uint64_t pa) { return reinterpret_cast<Pte*>(static_cast<uintptr_t>(pa)); }

  static Pte* root() { return table_at(aarch64::read_ttbr1_el1() & kOaMask); }
  static bool present(Pte e) { return (e & kValid) != 0; }
  static bool is_leaf(Pte e, int level) { return level == 0 || (e & kTableOrPage) == 0; }
  static Pte* table_of(Pte e) { return table_at(e & kOaMask); }
  static Pte table_entry(const Pte* t) {
    return reinterpret_cast<uintptr_t>(t) | kValid | kTableOrPage;
  }
  static PageAttr attr_of(Pte e, int) {
    switch (static_cast<aarch64::MemAttr>((e & kAttrMask) >> kAttrShift)) {
      case aarch64::MemAttr::kNormalWb:
        return PageAttr::kCached;
      case aarch64::MemAttr::kNormalNc:
        return PageAttr::kUncached;
      default:
        return PageAttr::kOther;
    }
  }
  static Pte with_attr(Pte e, int, PageAttr attr) {
    auto idx =
        attr == PageAttr::kUncached ? aarch64::MemAttr::kNormalNc : aarch64::MemAttr::kNormalWb;
    return (e & ~kAttrMask) | (static_cast<uint64_t>(idx) << kAttrShift);
  }
  static Pte split_leaf(Pte e, int level, size_t i) {
    const int child = level - 1;
    const uint64_t base = e & kOaMask & ~(level_size(level) - 1);
    // Same lower and upper attributes; a page descriptor at L3, a block above.
    const uint64_t attrs = e & ~kOaMask & ~(kValid | kTableOrPage);
    return (base + i * level_size(child)) | attrs | kValid | (child == 0 ? kTableOrPage : 0);
  }
  static void replace(Pte* slot, Pte value, uintptr_t va, int level) {
    uint64_t daif;
    __asm__ volatile("mrs %0, daif" : "=r"(daif));
    __asm__ volatile("msr daifset, #0xf" : : : "memory");
    __atomic_store_n(slot, Pte{0}, __ATOMIC_RELAXED);
    aarch64::dsb_ishst();
    if (level == 0) {
      const uint64_t arg = (va >> 12) & ((1ull << 44) - 1);  // VA[55:12], all ASIDs.
      __asm__ volatile("tlbi vaae1is, %0" : : "r"(arg) : "memory");
    } else {
      __asm__ volatile("tlbi vmalle1is" : : : "memory");
    }
    aarch64::dsb_ish();
    __atomic_store_n(slot, value, __ATOMIC_RELAXED);
    aarch64::dsb_ishst();
    aarch64::isb();
    __asm__ volatile("msr daif, %0" : : "r"(daif) : "memory");
  }
};

using Attributes = DirectMapAttributes<Aarch64DirectMap>;

Attributes::Table g_split_pool[kSplitPoolPages];
constinit Attributes g_attrs{g_split_pool, kSplitPoolPages};

}  // namespace

Result<void> AArch64DmaOp::set_memory_attribute(void* va, size_t bytes, MemAttr attr) {
  const auto v = reinterpret_cast<uintptr_t>(va);
  if (v < aarch64::kDirectMapBase || v - aarch64::kDirectMapBase >= kDirectMapSpan ||
      bytes > kDirectMapSpan - (v - aarch64::kDirectMapBase)) {
    return ErrorCode::kInvalidArgument;
  }
  // MAIR index 2 must be Normal Non-cacheable (0x44) and index 1 write-back (0xFF), as mmu.h says.
  const uint64_t mair = aarch64::read_mair_el1();
  if (((mair >> 8) & 0xFF) != 0xFF || ((mair >> 16) & 0xFF) != 0x44) {
    return ErrorCode::kNotSupported;
  }
  return g_attrs.set(v, bytes,
                     attr == MemAttr::kUncached ? PageAttr::kUncached : PageAttr::kCached);
}

namespace arch {

size_t direct_map_split_tables() {
  return g_attrs.tables_in_use();
}

}  // namespace arch
