// The supervisor-mode CSRs and instructions the RISC-V boot and trap code uses, as inline
// functions. Only S-mode state appears here: the kernel runs under OpenSBI and never touches
// M-mode CSRs. All are safe with interrupts off.
#pragma once

#include "dmakit/support/types.h"

namespace riscv {

// sstatus.SPP: the trap came from S-mode.
constexpr uint64_t kSstatusSpp = 1ull << 8;
// satp.MODE = Sv39.
constexpr uint64_t kSatpModeSv39 = 8ull << 60;
// scause: top bit set for interrupts.
constexpr uint64_t kScauseInterrupt = 1ull << 63;

inline uint64_t read_satp() {
  uint64_t v;
  __asm__ volatile("csrr %0, satp" : "=r"(v));
  return v;
}
// Installs a new root page table. The sfence.vma before orders earlier page-table stores; the one
// after drops translations cached from the old table.
inline void write_satp(uint64_t v) {
  __asm__ volatile("sfence.vma zero, zero\n\tcsrw satp, %0\n\tsfence.vma zero, zero"
                   :
                   : "r"(v)
                   : "memory");
}
// Drops every cached translation (after new page-table entries are written).
inline void sfence_vma_all() {
  __asm__ volatile("sfence.vma zero, zero" : : : "memory");
}
inline uint64_t read_stvec() {
  uint64_t v;
  __asm__ volatile("csrr %0, stvec" : "=r"(v));
  return v;
}
// The `time` CSR (Zicntr): ticks at the device tree's timebase-frequency.
inline uint64_t read_time() {
  uint64_t v;
  __asm__ volatile("rdtime %0" : "=r"(v));
  return v;
}
inline void wfi() {
  __asm__ volatile("wfi");
}

}  // namespace riscv
