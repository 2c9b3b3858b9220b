// Uncached coherent memory on AArch64: AArch64DmaOp::set_memory_attribute, which changes
// direct-map pages between the kernel's Normal write-back and Normal Non-cacheable MAIR indices
// in place through DirectMapAttributes (mm/direct_map_attributes.h: the split/merge scheme and
// its cost), over the tables the kernel described (dmakit/page_tables.h).
//
// Every live entry changes with break-before-make (Arm ARM, "Using break-before-make when
// updating translation table entries": required to change the memory type or the block size):
// write an invalid entry, DSB, invalidate the TLB (the page's VA for a page, the whole EL1 regime
// for a block becoming a table or back, which also drops the walk caches), DSB, write the new
// entry, DSB, ISB. The invalidation is the kernel's tlb_flush_kernel_range hook when it gave one
// (dmakit/kernel_hooks.h; on AArch64 it must be the broadcast `tlbi ...is` family followed by
// `dsb ish`, since it runs here with interrupts masked), else the broadcast `tlbi vaae1is` /
// `tlbi vmalle1is` and `dsb ish`, which reach every CPU without an IPI (so the library is right
// on SMP without the hook). During the break the entry's region is unmapped, so replace() runs with
// interrupts masked and touches nothing but the table entry: the kernel must reach its tables
// (table_offset), and run this code and its stack, outside the direct map being changed (the
// test kernel uses its identity map). Another CPU touching the same 2 MiB / 1 GiB of the direct
// map during a split or merge would fault, unless the kernel split the memory that
// alloc_coherent may remap down to pages up front (split_direct_map): then only the caller's own
// pages are ever broken.
//
// Mismatched attributes: the kernel has no other mapping of these pages, so no cacheable alias
// remains. Lines the write-back mapping holds are cleaned and invalidated by KernelDmaOp before
// the change, and again after it (DC CIVAC acts on the physical line whatever the attribute of
// the VA used), which drops any line a speculative access filled between the two.
//
// Split tables come from the kernel's alloc_table; when it has none (or 64 are live),
// alloc_coherent fails with kNoMemory and the map stays as it was.
#include "arch/aarch64/dma/aarch64_page_format.h"
#include "arch/aarch64/dma/aarch64_tlb.h"
#include "dmakit/arch/aarch64_dma_op.h"
#include "dmakit/dma_debug.h"
#include "dmakit/kernel_hooks.h"
#include "dmakit/support/utility.h"
#include "mm/direct_map_attributes.h"

namespace {

struct Aarch64LiveFormat : Aarch64PageFormat {
  using Aarch64PageFormat::Aarch64PageFormat;

  void replace(Pte* slot, Pte value, uintptr_t va, int level) const {
    const auto flush = dma::kernel_hooks().tlb_flush_kernel_range;
    const uint64_t daif = aarch64_dma::irq_mask();
    __atomic_store_n(slot, Pte{0}, __ATOMIC_RELAXED);
    aarch64_dma::dsb_ishst();
    if (flush != nullptr) {
      flush(va, level_size(level));
    } else {
      if (level == 0) {
        aarch64_dma::tlbi_vaae1is(va);
      } else {
        aarch64_dma::tlbi_vmalle1is();
      }
      aarch64_dma::dsb_ish();
    }
    __atomic_store_n(slot, value, __ATOMIC_RELAXED);
    aarch64_dma::dsb_ishst();
    aarch64_dma::isb();
    aarch64_dma::irq_restore(daif);
  }
};

using Attributes = DirectMapAttributes<Aarch64LiveFormat>;

}  // namespace

void AArch64DmaOp::init_attributes(const dmakit_page_tables* page_tables) {
  static_assert(sizeof(Attributes) <= kAttributesBytes, "AArch64DmaOp::attrs_ too small");
  static_assert(alignof(Attributes) <= alignof(uint64_t), "AArch64DmaOp::attrs_ misaligned");
  new (attrs_) Attributes(page_tables, Aarch64LiveFormat(page_tables));
}

// kWriteCombine is Normal Non-cacheable too: AArch64's write-combining memory type (what Linux's
// pgprot_writecombine gives), which allows stores to merge and be buffered.
Result<void> AArch64DmaOp::set_memory_attribute(void* va, size_t bytes, MemAttr attr) {
  if (!DmaDebug::thread_context_ok("set_memory_attribute", nullptr, 0)) return ErrorCode::kBusy;
  auto* attrs = reinterpret_cast<Attributes*>(attrs_);
  return attrs->set(reinterpret_cast<uintptr_t>(va), bytes,
                    attr == MemAttr::kCached ? PageAttr::kCached : PageAttr::kUncached);
}

Result<void> AArch64DmaOp::split_direct_map(void* va, size_t bytes) {
  return reinterpret_cast<Attributes*>(attrs_)->split_to_pages(reinterpret_cast<uintptr_t>(va),
                                                               bytes);
}

size_t AArch64DmaOp::split_tables() const {
  return reinterpret_cast<const Attributes*>(attrs_)->tables_in_use();
}
