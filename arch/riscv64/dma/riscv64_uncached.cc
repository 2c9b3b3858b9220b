// Uncached coherent memory on RISC-V: Riscv64DmaOp::set_memory_attribute, which changes
// direct-map pages between PBMT=PMA (cacheable RAM) and the Svpbmt NC type (non-cacheable,
// idempotent, weakly ordered main memory) in place through DirectMapAttributes
// (mm/direct_map_attributes.h: the split/merge scheme and its cost), over the Sv39 or Sv48
// tables the kernel described (dmakit/page_tables.h).
//
// Needs Svpbmt enabled for S-mode (menvcfg.PBMTE, set by the M-mode firmware; without it the
// PBMT bits are reserved and a leaf using them faults) and Zicbom (to write back and drop what
// the cacheable mapping left in the cache before and after the change: KernelDmaOp's
// flush_invalidate, i.e. cbo.flush), both as the kernel reports them in Riscv64DmaOp::CacheOps.
// Without either, or without a description, this returns kNotSupported, so a device explicitly
// marked non-coherent gets kNotSupported from alloc_coherent rather than cacheable memory it
// would believe coherent.
//
// Entry updates: RISC-V has no break-before-make rule. After each store the TLB is invalidated
// through the kernel's tlb_flush_kernel_range hook (dmakit/kernel_hooks.h: an SBI remote fence
// on every hart) when it gave one; else on this hart only, with `sfence.vma va` for a changed
// leaf and a full `sfence.vma` when a leaf is replaced by a table or back (a non-leaf entry
// changes), which also orders the new table's stores before the walker reads it.
//
// Split tables come from the kernel's alloc_table; when it has none (or 64 are live),
// alloc_coherent fails with kNoMemory and the map stays as it was.
#include "arch/riscv64/dma/riscv64_page_format.h"
#include "arch/riscv64/dma/riscv64_tlb.h"
#include "dmakit/arch/riscv64_dma_op.h"
#include "dmakit/dma_debug.h"
#include "dmakit/kernel_hooks.h"
#include "dmakit/support/utility.h"
#include "mm/direct_map_attributes.h"

namespace {

struct Riscv64LiveFormat : Riscv64PageFormat {
  using Riscv64PageFormat::Riscv64PageFormat;

  void replace(Pte* slot, Pte value, uintptr_t va, int level) const {
    replace_in_place(
        slot, value, va, level_size(level), level,
        [](uintptr_t page) { riscv64_dma::sfence_vma(page); },
        [] { riscv64_dma::sfence_vma_all(); });
  }
};

using Attributes = DirectMapAttributes<Riscv64LiveFormat>;

}  // namespace

void Riscv64DmaOp::init_attributes(const dmakit_page_tables* page_tables) {
  static_assert(sizeof(Attributes) <= kAttributesBytes, "Riscv64DmaOp::attrs_ too small");
  static_assert(alignof(Attributes) <= alignof(uint64_t), "Riscv64DmaOp::attrs_ misaligned");
  // Svpbmt gives the NC encoding; Zicbom the cache maintenance around the change.
  const bool usable = ops_.svpbmt && ops_.zicbom;
  new (attrs_)
      Attributes(usable ? page_tables : nullptr, Riscv64LiveFormat(page_tables, ops_.svpbmt));
}

// kWriteCombine is Svpbmt NC too: non-cacheable, idempotent main memory, which may combine
// writes (what Linux's pgprot_writecombine gives on RISC-V).
Result<void> Riscv64DmaOp::set_memory_attribute(void* va, size_t bytes, MemAttr attr) {
  if (!DmaDebug::thread_context_ok("set_memory_attribute", nullptr, 0)) return ErrorCode::kBusy;
  auto* attrs = reinterpret_cast<Attributes*>(attrs_);
  return attrs->set(reinterpret_cast<uintptr_t>(va), bytes,
                    attr == MemAttr::kCached ? PageAttr::kCached : PageAttr::kUncached);
}

size_t Riscv64DmaOp::split_tables() const {
  return reinterpret_cast<const Attributes*>(attrs_)->tables_in_use();
}
