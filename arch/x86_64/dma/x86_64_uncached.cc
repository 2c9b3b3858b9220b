// Uncached coherent memory on x86-64: X86DmaOp::set_memory_attribute, which changes direct-map
// pages between the kernel's write-back PAT index and its UC- (or UC) index (or its WC index,
// for write-combining allocations, when the kernel's PAT has one) in place through
// DirectMapAttributes (mm/direct_map_attributes.h: the split/merge scheme and its cost), over the
// 4-level tables the kernel described (dmakit/page_tables.h).
//
// Why UC rather than write-combining for alloc_coherent: coherent memory holds descriptors and
// rings that the driver and a device both update, and the contract is that neither side needs
// maintenance or flushing. UC- loads and stores reach memory in program order; WC stores would sit
// in write-combining buffers until a fence, which the drivers do not issue for coherent memory.
// (x86 DMA snoops the caches, so this path only serves devices explicitly marked non-coherent
// and the tests.)
//
// The sequence the SDM asks for when memory becomes uncacheable (vol. 3, "Memory type
// changes"): KernelDmaOp writes the lines back before the change (clflushopt), the entry changes
// and the old translation is dropped, then KernelDmaOp flushes the lines again (anything the
// write-back mapping fetched meanwhile). Splits and merges change a 1 GiB or 2 MiB leaf into a
// table of identical smaller leaves (or back); no break is needed: old and new translations are
// the same until the attribute itself changes. The invalidation after each store is the kernel's
// tlb_flush_kernel_range hook (dmakit/kernel_hooks.h: IPIs and INVLPG on every CPU) when it gave
// one; else this CPU's own INVLPG for a page, and a full flush (global entries included) when a
// leaf becomes a table or back.
//
// Split tables come from the kernel's alloc_table; when it has none (or 64 are live),
// alloc_coherent fails with kNoMemory and the map stays as it was.
#include "arch/x86_64/dma/x86_64_page_format.h"
#include "arch/x86_64/dma/x86_64_tlb.h"
#include "dmakit/arch/x86_64_dma_op.h"
#include "dmakit/dma_debug.h"
#include "dmakit/kernel_hooks.h"
#include "dmakit/support/utility.h"
#include "mm/direct_map_attributes.h"

namespace {

struct X86LiveFormat : X86PageFormat {
  using X86PageFormat::X86PageFormat;

  void replace(Pte* slot, Pte value, uintptr_t va, int level) const {
    replace_in_place(
        slot, value, va, level_size(level), level, [](uintptr_t page) { x86_64_dma::invlpg(page); },
        [] { x86_64_dma::flush_tlb_all(); });
  }
};

using Attributes = DirectMapAttributes<X86LiveFormat>;

}  // namespace

void X86DmaOp::init_attributes(const dmakit_page_tables* page_tables) {
  static_assert(sizeof(Attributes) <= kAttributesBytes, "X86DmaOp::attrs_ too small");
  static_assert(alignof(Attributes) <= alignof(uint64_t), "X86DmaOp::attrs_ misaligned");
  new (attrs_) Attributes(page_tables, X86LiveFormat(page_tables));
}

Result<void> X86DmaOp::set_memory_attribute(void* va, size_t bytes, MemAttr attr) {
  if (!DmaDebug::thread_context_ok("set_memory_attribute", nullptr, 0)) return ErrorCode::kBusy;
  // Write-combining takes the kernel's WC index (dmakit_page_tables_x86_64.pat_wc); without one
  // set() answers kNotSupported: the encoding is not the library's to choose (the kernel
  // programs IA32_PAT).
  const PageAttr page_attr = attr == MemAttr::kUncached       ? PageAttr::kUncached
                             : attr == MemAttr::kWriteCombine ? PageAttr::kWriteCombine
                                                              : PageAttr::kCached;
  auto* attrs = reinterpret_cast<Attributes*>(attrs_);
  return attrs->set(reinterpret_cast<uintptr_t>(va), bytes, page_attr);
}

size_t X86DmaOp::split_tables() const {
  return reinterpret_cast<const Attributes*>(attrs_)->tables_in_use();
}
