// The AArch64 instructions the library's page-table edits need (aarch64_uncached.cc), and
// nothing else: the library reads no system register that describes the kernel's tables (the
// kernel says where they are, dmakit/page_tables.h). Library-internal.
#pragma once

#include "dmakit/support/types.h"

namespace aarch64_dma {

// Masks IRQ, FIQ, SError and debug exceptions on this CPU; returns the previous DAIF.
[[gnu::always_inline]] inline uint64_t irq_mask() {
  uint64_t daif;
  __asm__ volatile("mrs %0, daif" : "=r"(daif));
  __asm__ volatile("msr daifset, #0xf" : : : "memory");
  return daif;
}
[[gnu::always_inline]] inline void irq_restore(uint64_t daif) {
  __asm__ volatile("msr daif, %0" : : "r"(daif) : "memory");
}

[[gnu::always_inline]] inline void dsb_ishst() {
  __asm__ volatile("dsb ishst" : : : "memory");
}
[[gnu::always_inline]] inline void dsb_ish() {
  __asm__ volatile("dsb ish" : : : "memory");
}
[[gnu::always_inline]] inline void dsb_nsh() {
  __asm__ volatile("dsb nsh" : : : "memory");
}
[[gnu::always_inline]] inline void isb() {
  __asm__ volatile("isb" : : : "memory");
}

// Every CPU's TLB entries for the page at `va` in the Inner Shareable domain, any ASID, EL1&0
// regime: the hardware broadcasts it, so it is right on one CPU and on many, with no IPI.
[[gnu::always_inline]] inline void tlbi_vaae1is(uintptr_t va) {
  const uint64_t arg = (va >> 12) & ((1ull << 44) - 1);  // VA[55:12].
  __asm__ volatile("tlbi vaae1is, %0" : : "r"(arg) : "memory");
}
// Every TLB and walk-cache entry of the EL1&0 regime on every CPU of the Inner Shareable domain.
[[gnu::always_inline]] inline void tlbi_vmalle1is() {
  __asm__ volatile("tlbi vmalle1is" : : : "memory");
}

}  // namespace aarch64_dma
