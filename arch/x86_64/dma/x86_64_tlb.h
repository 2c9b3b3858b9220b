// The x86-64 instructions the library's page-table edits need (x86_64_uncached.cc), and nothing
// else: the library reads no register that describes the kernel's tables (the kernel says where
// they are, dmakit/page_tables.h). CR3 and CR4 are only read to flush this CPU's TLB.
// Library-internal.
#pragma once

#include "dmakit/support/types.h"

namespace x86_64_dma {

// This CPU's translations of the page at `va` (and every paging-structure cache entry).
[[gnu::always_inline]] inline void invlpg(uintptr_t va) {
  __asm__ volatile("invlpg (%0)" : : "r"(va) : "memory");
}

// Every translation of this CPU, global ones included: toggling CR4.PGE flushes them all; with
// PGE off there are no global entries and reloading CR3 does.
inline void flush_tlb_all() {
  constexpr uint64_t kCr4Pge = 1ull << 7;
  uint64_t cr4;
  __asm__ volatile("mov %%cr4, %0" : "=r"(cr4));
  if ((cr4 & kCr4Pge) != 0) {
    __asm__ volatile("mov %0, %%cr4" : : "r"(cr4 & ~kCr4Pge) : "memory");
    __asm__ volatile("mov %0, %%cr4" : : "r"(cr4) : "memory");
  } else {
    uint64_t cr3;
    __asm__ volatile("mov %%cr3, %0" : "=r"(cr3));
    __asm__ volatile("mov %0, %%cr3" : : "r"(cr3) : "memory");
  }
}

}  // namespace x86_64_dma
