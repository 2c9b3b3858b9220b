// SplitTablePool: the page-table pages the test kernel lends dmakit for splitting large leaves of
// its direct map (dmakit_page_tables.alloc_table / free_table, dmakit/page_tables.h). Two sources:
//   - the splits set_memory_attribute makes and undoes at run time: a fixed array in the kernel
//     image (reserved with it, reached the way each port reaches its own tables), lent and taken
//     back one page at a time;
//   - the permanent splits of a boot-time split of the direct map to 4 KiB pages (AArch64,
//     AArch64DmaOp::split_direct_map): between begin_boot_split and end_boot_split, pages come
//     only from a region kernel_main carved out of RAM for it (sized from the RAM, about 2 MiB per
//     GiB), handed out in order and never taken back.
// The library calls the callbacks under its page-table lock, one call at a time; in_use() may be
// read from anywhere.
//
// Cost: alloc and free scan one 64-bit mask; a boot page is a bump of a counter.
#pragma once

#include "dmakit/page_tables.h"
#include "dmakit/support/assert.h"
#include "dmakit/support/bitops.h"
#include "dmakit/support/types.h"

class SplitTablePool {
 public:
  static constexpr size_t kPages = 64;
  static constexpr uint64_t kPageSize = 4096;
  struct alignas(kPageSize) Page {
    uint64_t e[512];
  };

  // Trivially constructible: a static instance is zero-initialized (no page lent), with no
  // constructor to run.
  SplitTablePool() = default;
  SplitTablePool(const SplitTablePool&) = delete;
  SplitTablePool& operator=(const SplitTablePool&) = delete;

  // Fills the split-table part of `pt`: the physical address of a page is its address in the
  // image minus `virt_minus_phys` (0 where the image is identity-mapped). Call once, before the
  // DmaOp is built.
  void describe(uintptr_t virt_minus_phys, dmakit_page_tables* pt) {
    off_ = virt_minus_phys;
    pt->alloc_table = &SplitTablePool::alloc;
    pt->free_table = &SplitTablePool::free;
    pt->table_ctx = this;
  }

  // From now until end_boot_split, alloc_table hands out the `pages` pages at `virt` (reached by
  // the library at that address; physical address virt minus describe's virt_minus_phys), in
  // order, for good: free_table of one of them is a bug. Boot CPU, before other CPUs start.
  void begin_boot_split(uintptr_t virt, size_t pages) {
    boot_base_ = virt;
    boot_pages_ = pages;
    boot_used_ = 0;
    boot_split_ = true;
  }
  // Ends the boot split; returns the boot pages handed out (the rest of the region stays unused).
  size_t end_boot_split() {
    boot_split_ = false;
    return boot_used_;
  }
  // Run-time split pages lent out now.
  size_t in_use() const {
    size_t n = 0;
    for (uint64_t u = __atomic_load_n(&used_, __ATOMIC_RELAXED); u != 0; u &= u - 1) ++n;
    return n;
  }

 private:
  static_assert(kPages == 64, "used_ is one bit per page");

  static int alloc(void* ctx, uint64_t* phys) {
    auto* self = static_cast<SplitTablePool*>(ctx);
    if (self->boot_split_) {
      if (self->boot_used_ == self->boot_pages_) return 0;
      *phys = self->boot_base_ + self->boot_used_++ * kPageSize - self->off_;
      return 1;
    }
    const uint64_t used = __atomic_load_n(&self->used_, __ATOMIC_RELAXED);
    if (used == ~uint64_t{0}) return 0;
    const unsigned i = support::ctz(~used);
    __atomic_store_n(&self->used_, used | (uint64_t{1} << i), __ATOMIC_RELAXED);
    *phys = reinterpret_cast<uintptr_t>(&self->pages_[i]) - self->off_;
    return 1;
  }
  static void free(void* ctx, uint64_t phys) {
    auto* self = static_cast<SplitTablePool*>(ctx);
    const uintptr_t va = static_cast<uintptr_t>(phys) + self->off_;
    const uintptr_t base = reinterpret_cast<uintptr_t>(&self->pages_[0]);
    KASSERT(va - self->boot_base_ >= self->boot_used_ * kPageSize,
            "SplitTablePool: free_table of a page of the boot split");
    const size_t i = (va - base) / kPageSize;
    const uint64_t used = __atomic_load_n(&self->used_, __ATOMIC_RELAXED);
    KASSERT(va >= base && i < kPages && (used & (uint64_t{1} << i)) != 0,
            "SplitTablePool: free_table of a page it did not lend");
    __atomic_store_n(&self->used_, used & ~(uint64_t{1} << i), __ATOMIC_RELAXED);
  }

  Page pages_[kPages];
  uint64_t used_;  // Bit i: pages_[i] is lent.
  uintptr_t off_;
  // The boot split's region: boot_pages_ pages at boot_base_, the first boot_used_ handed out.
  uintptr_t boot_base_;
  size_t boot_pages_;
  size_t boot_used_;
  bool boot_split_;
};
