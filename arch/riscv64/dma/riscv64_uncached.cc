// Uncached coherent memory on RISC-V: Riscv64DmaOp::set_memory_attribute, which changes
// direct-map pages between PBMT=PMA (cacheable RAM) and the Svpbmt NC type (non-cacheable,
// idempotent, weakly ordered main memory) in place through DirectMapAttributes
// (mm/direct_map_attributes.h: the split/merge scheme and its cost).
//
// Needs both Svpbmt (to express NC in a PTE; without it the PBMT bits are reserved) and Zicbom
// (to write back and drop what the cacheable mapping left in the cache before and after the
// change: KernelDmaOp's flush_invalidate, i.e. cbo.flush). A hart without either cannot make
// uncached memory from ordinary RAM; the port then declares DMA coherent (riscv64_dma_op.h) --
// true on QEMU, which models no caches -- and this returns kNotSupported, so a device explicitly
// marked non-coherent gets kNotSupported from alloc_coherent rather than cacheable memory it
// would believe coherent.
//
// Entry updates: RISC-V has no break-before-make rule; a changed leaf is followed by
// `sfence.vma va` (drops that page's translation), a leaf replaced by a table or back (split,
// merge: a non-leaf entry changes) by a full `sfence.vma`, which also orders the new table's
// stores before the walker reads it (privileged spec, "SFENCE.VMA"). Single hart: an SMP kernel
// would add a remote fence (SBI RFENCE) to replace().
//
// Tables are reached through the direct map (the port links the kernel into it); the split tables
// come from a static pool in the kernel image (kSplitPoolPages pages). When it is exhausted
// alloc_coherent fails with kNoMemory and the map stays as it was.
#include "testkernel/arch.h"
#include "arch/riscv64/testkernel/csr.h"
#include "dmakit/arch/riscv64_dma_op.h"
#include "arch/riscv64/testkernel/sv39_page_table.h"
#include "mm/direct_map_attributes.h"

namespace {

constexpr size_t kSplitPoolPages = 64;
constexpr uintptr_t kDirectMapBase = riscv::Sv39PageTable::kUpperHalfBase;
// The upper half of Sv39: the physical addresses the port's direct map can hold.
constexpr uint64_t kDirectMapSpan = 1ull << 38;

struct Sv39DirectMap {
  using Pte = uint64_t;
  static constexpr int kTopLevel = 2;

  static constexpr uint64_t kSatpModeMask = 0xFull << 60;
  static constexpr uint64_t kSatpPpnMask = (1ull << 44) - 1;
  static constexpr uint64_t kLeafMask = riscv::kPteR | riscv::kPteW | riscv::kPteX;

  static uint64_t level_size(int level) { return 1ull << (12 + 9 * level); }
  static uint64_t pte_phys(Pte e) {
    return ((e & riscv::kPtePpnMask) >> riscv::kPtePpnShift) << 12;
  }
  static Pte* table_at(uint64_t phys) { return reinterpret_cast<Pte*>(phys + kDirectMapBase); }

  static Pte* root() { return table_at((riscv::read_satp() & kSatpPpnMask) << 12); }
  static bool present(Pte e) { return (e & riscv::kPteV) != 0; }
  static bool is_leaf(Pte e, int) { return (e & kLeafMask) != 0; }
  static Pte* table_of(Pte e) { return table_at(pte_phys(e)); }
  static Pte table_entry(const Pte* t) {
    uint64_t phys = reinterpret_cast<uintptr_t>(t) - kDirectMapBase;
    return ((phys >> 12) << riscv::kPtePpnShift) | riscv::kPteV;
  }
  static PageAttr attr_of(Pte e, int) {
    switch (static_cast<riscv::MemType>((e & riscv::kPtePbmtMask) >> riscv::kPtePbmtShift)) {
      case riscv::MemType::kPma:
        return PageAttr::kCached;
      case riscv::MemType::kNonCacheable:
        return PageAttr::kUncached;
      default:
        return PageAttr::kOther;  // IO, or the reserved encoding.
    }
  }
  static Pte with_attr(Pte e, int, PageAttr attr) {
    e &= ~riscv::kPtePbmtMask;
    if (attr == PageAttr::kUncached) {
      e |= static_cast<uint64_t>(riscv::MemType::kNonCacheable) << riscv::kPtePbmtShift;
    }
    return e;
  }
  static Pte split_leaf(Pte e, int level, size_t i) {
    const uint64_t pa = pte_phys(e) + i * level_size(level - 1);
    return ((pa >> 12) << riscv::kPtePpnShift) | (e & ~riscv::kPtePpnMask);
  }
  static void replace(Pte* slot, Pte value, uintptr_t va, int level) {
    __atomic_store_n(slot, value, __ATOMIC_SEQ_CST);
    if (level == 0) {
      __asm__ volatile("sfence.vma %0, zero" : : "r"(va) : "memory");
    } else {
      riscv::sfence_vma_all();
    }
  }
  static bool active() { return (riscv::read_satp() & kSatpModeMask) == riscv::kSatpModeSv39; }
};

using Attributes = DirectMapAttributes<Sv39DirectMap>;

Attributes::Table g_split_pool[kSplitPoolPages];
constinit Attributes g_attrs{g_split_pool, kSplitPoolPages};

}  // namespace

Result<void> Riscv64DmaOp::set_memory_attribute(void* va, size_t bytes, MemAttr attr) {
  if (!ops_.zicbom || !ops_.svpbmt || !Sv39DirectMap::active()) return ErrorCode::kNotSupported;
  const auto v = reinterpret_cast<uintptr_t>(va);
  if (v < kDirectMapBase || v - kDirectMapBase >= kDirectMapSpan ||
      bytes > kDirectMapSpan - (v - kDirectMapBase)) {
    return ErrorCode::kInvalidArgument;
  }
  return g_attrs.set(v, bytes,
                     attr == MemAttr::kUncached ? PageAttr::kUncached : PageAttr::kCached);
}

namespace arch {

size_t direct_map_split_tables() {
  return g_attrs.tables_in_use();
}

}  // namespace arch
