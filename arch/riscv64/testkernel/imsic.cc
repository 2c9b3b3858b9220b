#include "arch/riscv64/testkernel/imsic.h"

namespace riscv::imsic {
namespace {

constexpr uint64_t kRegEidelivery = 0x70;
constexpr uint64_t kRegEithreshold = 0x72;
constexpr uint64_t kRegEie0 = 0xC0;

// siselect (0x150) / sireg (0x151) by number: the assembler need not know Ssaia.
void write_indirect(uint64_t reg, uint64_t v) {
  __asm__ volatile("csrw 0x150, %0\n\tcsrw 0x151, %1" ::"r"(reg), "r"(v) : "memory");
}
uint64_t eie_reg(unsigned id) {
  return kRegEie0 + 2 * (id / 64);
}

}  // namespace

void init_this_hart(unsigned num_ids) {
  write_indirect(kRegEidelivery, 0);
  for (unsigned id = 0; id <= num_ids; id += 64) {
    uint64_t bits = ~0ull;
    if (id == 0) bits &= ~1ull;                                   // Identity 0 does not exist.
    if (num_ids - id < 63) bits &= (2ull << (num_ids - id)) - 1;  // Up to num_ids only.
    write_indirect(eie_reg(id), bits);
  }
  write_indirect(kRegEithreshold, 0);
  write_indirect(kRegEidelivery, 1);
}

unsigned claim() {
  uint64_t v;
  // stopei (0x15C): reads the top identity (bits 26:16) and, written, clears its pending bit.
  __asm__ volatile("csrrw %0, 0x15C, zero" : "=r"(v)::"memory");
  return static_cast<unsigned>((v >> 16) & 0x7FF);
}

}  // namespace riscv::imsic
