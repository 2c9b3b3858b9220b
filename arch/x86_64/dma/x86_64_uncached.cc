// Uncached coherent memory on x86-64: X86DmaOp::set_memory_attribute, which changes direct-map
// pages between write-back (PAT index 0) and UC- (PAT index 2, the PCD bit) in place through
// DirectMapAttributes (mm/direct_map_attributes.h: the split/merge scheme and its cost).
//
// Why UC- rather than the write-combining entry the port also programs (PAT index 4): coherent
// memory holds descriptors and rings that the driver and a device both update, and the contract
// is that neither side needs maintenance or flushing. UC- loads and stores reach memory in
// program order; WC stores would sit in write-combining buffers until a fence, which the drivers
// do not issue for coherent memory. (x86 DMA snoops the caches, so this path only serves devices
// explicitly marked non-coherent and the tests.)
//
// The sequence the SDM asks for when memory becomes uncacheable (vol. 3, "Memory type
// changes"): KernelDmaOp writes the lines back before the change (clflushopt), the entry changes
// and INVLPG drops the old translation, then KernelDmaOp flushes the lines again (anything the
// write-back mapping fetched meanwhile). Splits and merges change a 1 GiB or 2 MiB leaf into a
// table of identical smaller leaves (or back) and reload CR3: the direct map has no global
// entries, so that drops every translation of the region and the paging-structure caches that
// pointed at the old entry. No break is needed: old and new translations are the same until the
// attribute itself changes. Single CPU: an SMP kernel would add a TLB shootdown to replace().
//
// Page tables of the splits come from a static pool in the kernel image (kSplitPoolPages pages,
// reached at kKernelVma + phys like every table of the port); when it is exhausted
// alloc_coherent fails with kNoMemory and the map stays as it was.
#include "testkernel/arch.h"
#include "arch/x86_64/testkernel/cpu.h"
#include "arch/x86_64/testkernel/paging.h"
#include "dmakit/arch/x86_64_dma_op.h"
#include "mm/direct_map_attributes.h"

namespace {

constexpr size_t kSplitPoolPages = 64;

struct X86DirectMap {
  using Pte = uint64_t;
  static constexpr int kTopLevel = 3;  // PML4.

  static constexpr Pte kPresent = 1ull << 0;
  static constexpr Pte kWrite = 1ull << 1;
  static constexpr Pte kPwt = 1ull << 3;
  static constexpr Pte kPcd = 1ull << 4;
  static constexpr Pte kLarge = 1ull << 7;      // PS in a PDPT or PD entry.
  static constexpr Pte kPatSmall = 1ull << 7;   // PAT in a 4 KiB PTE.
  static constexpr Pte kPatLarge = 1ull << 12;  // PAT in a 1 GiB / 2 MiB leaf.
  static constexpr Pte kAddrMask = 0x000F'FFFF'FFFF'F000;

  static uint64_t level_size(int level) { return 1ull << (12 + 9 * level); }
  static Pte* table_at(uint64_t phys) { return reinterpret_cast<Pte*>(phys + x86::kKernelVma); }

  static Pte* root() { return table_at(x86::read_cr3() & kAddrMask); }
  static bool present(Pte e) { return (e & kPresent) != 0; }
  static bool is_leaf(Pte e, int level) { return level == 0 || (level <= 2 && (e & kLarge) != 0); }
  static Pte* table_of(Pte e) { return table_at(e & kAddrMask); }
  // Intermediate entries allow everything (as the port builds them); the leaves decide.
  static Pte table_entry(const Pte* t) { return x86::kernel_virt_to_phys(t) | kPresent | kWrite; }
  static Pte pat_bit(int level) { return level == 0 ? kPatSmall : kPatLarge; }
  static unsigned pat_index(Pte e, int level) {
    return ((e & kPwt) != 0 ? 1u : 0u) | ((e & kPcd) != 0 ? 2u : 0u) |
           ((e & pat_bit(level)) != 0 ? 4u : 0u);
  }
  // Index 0 is write-back and index 2 UC- in the port's PAT layout (checked by pat_layout_ok()).
  static PageAttr attr_of(Pte e, int level) {
    switch (pat_index(e, level)) {
      case 0:
        return PageAttr::kCached;
      case 2:
        return PageAttr::kUncached;
      default:
        return PageAttr::kOther;
    }
  }
  static Pte with_attr(Pte e, int level, PageAttr attr) {
    e &= ~(kPwt | kPcd | pat_bit(level));
    return attr == PageAttr::kUncached ? e | kPcd : e;
  }
  static Pte split_leaf(Pte e, int level, size_t i) {
    const int child = level - 1;
    const uint64_t base = e & kAddrMask & ~(level_size(level) - 1);
    const bool pat = (e & kPatLarge) != 0;
    Pte flags = e & ~kAddrMask & ~kLarge;  // Low flags and NX; PS and PAT placed below.
    if (child > 0) {
      flags |= kLarge | (pat ? kPatLarge : 0);
    } else {
      flags |= pat ? kPatSmall : 0;
    }
    return (base + i * level_size(child)) | flags;
  }
  static void replace(Pte* slot, Pte value, uintptr_t va, int level) {
    __atomic_store_n(slot, value, __ATOMIC_SEQ_CST);
    if (level == 0) {
      __asm__ volatile("invlpg (%0)" : : "r"(va) : "memory");
    } else {
      x86::write_cr3(x86::read_cr3());
    }
  }
};

using Attributes = DirectMapAttributes<X86DirectMap>;

Attributes::Table g_split_pool[kSplitPoolPages];
constinit Attributes g_attrs{g_split_pool, kSplitPoolPages};

// The PAT MSR as x86::init_pat programs it: index 0 write-back (6), index 2 UC- (7).
bool pat_layout_ok() {
  const uint64_t pat = x86::rdmsr(x86::kMsrPat);
  return (pat & 0xFF) == 0x06 && ((pat >> 16) & 0xFF) == 0x07;
}

}  // namespace

Result<void> X86DmaOp::set_memory_attribute(void* va, size_t bytes, MemAttr attr) {
  const auto v = reinterpret_cast<uintptr_t>(va);
  // Only the direct map (below the 46-bit physical limit the port maps), never the image.
  constexpr uint64_t kDirectMapSpan = 1ull << 46;
  if (v < x86::kDirectMapBase || v - x86::kDirectMapBase >= kDirectMapSpan ||
      bytes > kDirectMapSpan - (v - x86::kDirectMapBase)) {
    return ErrorCode::kInvalidArgument;
  }
  if (!pat_layout_ok()) return ErrorCode::kNotSupported;
  return g_attrs.set(v, bytes,
                     attr == MemAttr::kUncached ? PageAttr::kUncached : PageAttr::kCached);
}

namespace arch {

size_t direct_map_split_tables() {
  return g_attrs.tables_in_use();
}

}  // namespace arch
