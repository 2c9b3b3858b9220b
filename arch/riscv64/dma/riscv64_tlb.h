// The RISC-V instructions the library's page-table edits need (riscv64_uncached.cc), and nothing
// else: the library reads no CSR that describes the kernel's tables (the kernel says where they
// are, dmakit/page_tables.h). Library-internal.
#pragma once

#include "dmakit/support/types.h"

namespace riscv64_dma {

// This hart's translations of the page at `va`, every address space (orders earlier page-table
// stores before later implicit references, privileged spec "SFENCE.VMA").
[[gnu::always_inline]] inline void sfence_vma(uintptr_t va) {
  __asm__ volatile("sfence.vma %0, zero" : : "r"(va) : "memory");
}
// Every translation and cached non-leaf entry of this hart.
[[gnu::always_inline]] inline void sfence_vma_all() {
  __asm__ volatile("sfence.vma zero, zero" : : : "memory");
}

}  // namespace riscv64_dma
