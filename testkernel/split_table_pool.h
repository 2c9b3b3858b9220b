// SplitTablePool: the page-table pages the test kernel lends dmakit for splitting large leaves of
// its direct map (dmakit_page_tables.alloc_table / free_table, dmakit/page_tables.h). A fixed
// array in the kernel image, so the pages are reserved with it and each port reaches them the
// way it reaches its own tables. The library calls the callbacks under its page-table lock, one
// call at a time; in_use() may be read from anywhere.
//
// Cost: alloc and free scan one 64-bit mask.
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

  // Pages lent out now.
  size_t in_use() const {
    size_t n = 0;
    for (uint64_t u = __atomic_load_n(&used_, __ATOMIC_RELAXED); u != 0; u &= u - 1) ++n;
    return n;
  }

 private:
  static_assert(kPages == 64, "used_ is one bit per page");

  static int alloc(void* ctx, uint64_t* phys) {
    auto* self = static_cast<SplitTablePool*>(ctx);
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
    const size_t i = (va - base) / kPageSize;
    const uint64_t used = __atomic_load_n(&self->used_, __ATOMIC_RELAXED);
    KASSERT(va >= base && i < kPages && (used & (uint64_t{1} << i)) != 0,
            "SplitTablePool: free_table of a page it did not lend");
    __atomic_store_n(&self->used_, used & ~(uint64_t{1} << i), __ATOMIC_RELAXED);
  }

  Page pages_[kPages];
  uint64_t used_;  // Bit i: pages_[i] is lent.
  uintptr_t off_;
};
