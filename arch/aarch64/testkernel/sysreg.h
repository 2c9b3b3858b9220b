// AArch64 system-register accessors and barriers for the test kernel (EL1).
#pragma once

#include "dmakit/support/types.h"

namespace aarch64 {

#define AARCH64_SYSREG_RW(name)                                  \
  inline uint64_t read_##name() {                                \
    uint64_t v;                                                  \
    __asm__ volatile("mrs %0, " #name : "=r"(v));                \
    return v;                                                    \
  }                                                              \
  inline void write_##name(uint64_t v) {                         \
    __asm__ volatile("msr " #name ", %0" : : "r"(v) : "memory"); \
  }
#define AARCH64_SYSREG_RO(name)                   \
  inline uint64_t read_##name() {                 \
    uint64_t v;                                   \
    __asm__ volatile("mrs %0, " #name : "=r"(v)); \
    return v;                                     \
  }

AARCH64_SYSREG_RW(sctlr_el1)
AARCH64_SYSREG_RW(tcr_el1)
AARCH64_SYSREG_RW(mair_el1)
AARCH64_SYSREG_RW(ttbr0_el1)
AARCH64_SYSREG_RW(ttbr1_el1)
AARCH64_SYSREG_RW(vbar_el1)
AARCH64_SYSREG_RW(par_el1)
AARCH64_SYSREG_RO(esr_el1)
AARCH64_SYSREG_RO(far_el1)
AARCH64_SYSREG_RO(ctr_el0)
AARCH64_SYSREG_RO(mpidr_el1)
AARCH64_SYSREG_RO(midr_el1)
AARCH64_SYSREG_RO(id_aa64mmfr0_el1)
AARCH64_SYSREG_RO(cntfrq_el0)
AARCH64_SYSREG_RO(currentel)

#undef AARCH64_SYSREG_RW
#undef AARCH64_SYSREG_RO

inline uint64_t read_cntvct_el0() {
  uint64_t v;
  // The isb keeps the counter read from being hoisted above earlier instructions.
  __asm__ volatile("isb\n mrs %0, cntvct_el0" : "=r"(v) : : "memory");
  return v;
}

inline void isb() {
  __asm__ volatile("isb" : : : "memory");
}
inline void dsb_sy() {
  __asm__ volatile("dsb sy" : : : "memory");
}
inline void dsb_ish() {
  __asm__ volatile("dsb ish" : : : "memory");
}
inline void dsb_ishst() {
  __asm__ volatile("dsb ishst" : : : "memory");
}
inline void tlbi_vmalle1() {
  __asm__ volatile("tlbi vmalle1" : : : "memory");
}

// SCTLR_EL1 bits.
constexpr uint64_t kSctlrM = 1ull << 0;   // Stage 1 MMU enable.
constexpr uint64_t kSctlrA = 1ull << 1;   // Alignment check.
constexpr uint64_t kSctlrC = 1ull << 2;   // Data (unified) caches enable.
constexpr uint64_t kSctlrSA = 1ull << 3;  // SP alignment check.
constexpr uint64_t kSctlrI = 1ull << 12;  // Instruction cache enable.
constexpr uint64_t kSctlrWXN = 1ull << 19;
constexpr uint64_t kSctlrE0E = 1ull << 24;
constexpr uint64_t kSctlrEE = 1ull << 25;

// Data cache line size in bytes: CTR_EL0.DminLine (bits 19:16) is log2 of the number of 4-byte
// words in the smallest data cache line of the caches this CPU's maintenance reaches.
inline size_t dcache_line_size() {
  return size_t{4} << ((read_ctr_el0() >> 16) & 0xf);
}

}  // namespace aarch64
