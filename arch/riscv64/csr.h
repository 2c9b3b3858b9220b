// Supervisor-mode control and status registers of RISC-V, and the few instructions the boot,
// trap and DMA code need, as inline functions. Only S-mode CSRs appear here: the kernel runs
// under OpenSBI and never touches M-mode state.
#pragma once

#include "support/types.h"

namespace riscv {

// sstatus bits.
constexpr uint64_t kSstatusSie = 1ull << 1;   // Supervisor interrupts enabled.
constexpr uint64_t kSstatusSpp = 1ull << 8;   // Previous privilege was S.
constexpr uint64_t kSstatusFsMask = 3ull << 13;
constexpr uint64_t kSstatusFsInitial = 1ull << 13;
constexpr uint64_t kSstatusSum = 1ull << 18;  // S-mode may touch U pages.

// satp MODE field values.
constexpr uint64_t kSatpModeSv39 = 8ull << 60;

// scause: top bit set for interrupts.
constexpr uint64_t kScauseInterrupt = 1ull << 63;


inline uint64_t read_sstatus() {
  uint64_t v;
  __asm__ volatile("csrr %0, sstatus" : "=r"(v));
  return v;
}
inline void write_sstatus(uint64_t v) { __asm__ volatile("csrw sstatus, %0" : : "r"(v) : "memory"); }
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
inline uint64_t read_scause() {
  uint64_t v;
  __asm__ volatile("csrr %0, scause" : "=r"(v));
  return v;
}
inline uint64_t read_stval() {
  uint64_t v;
  __asm__ volatile("csrr %0, stval" : "=r"(v));
  return v;
}
inline uint64_t read_sepc() {
  uint64_t v;
  __asm__ volatile("csrr %0, sepc" : "=r"(v));
  return v;
}
inline void write_stvec(uint64_t v) { __asm__ volatile("csrw stvec, %0" : : "r"(v) : "memory"); }
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
inline void sfence_vma_all() { __asm__ volatile("sfence.vma zero, zero" : : : "memory"); }
// Full fence over memory and I/O: what the DMA code puts around cache-block operations.
inline void fence_rw_rw() { __asm__ volatile("fence rw, rw" : : : "memory"); }
inline void fence_iorw_iorw() { __asm__ volatile("fence iorw, iorw" : : : "memory"); }
inline void wfi() { __asm__ volatile("wfi"); }

}  // namespace riscv
