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
uint64_t read_indirect(uint64_t reg) {
  uint64_t v;
  __asm__ volatile("csrw 0x150, %1\n\tcsrr %0, 0x151" : "=r"(v) : "r"(reg) : "memory");
  return v;
}

uint64_t eie_reg(unsigned id) {
  return kRegEie0 + 2 * (id / 64);
}

}  // namespace

void init_this_hart(unsigned num_ids) {
  write_indirect(kRegEidelivery, 0);
  for (unsigned id = 0; id < num_ids + 1; id += 64) write_indirect(eie_reg(id), 0);
  write_indirect(kRegEithreshold, 0);
  write_indirect(kRegEidelivery, 1);
}

void enable(unsigned id) {
  const uint64_t reg = eie_reg(id);
  write_indirect(reg, read_indirect(reg) | (1ull << (id % 64)));
}

void disable(unsigned id) {
  const uint64_t reg = eie_reg(id);
  write_indirect(reg, read_indirect(reg) & ~(1ull << (id % 64)));
}

unsigned claim() {
  uint64_t v;
  // stopei (0x15C): reads the top identity (bits 26:16) and, written, clears its pending bit.
  __asm__ volatile("csrrw %0, 0x15C, zero" : "=r"(v)::"memory");
  return static_cast<unsigned>((v >> 16) & 0x7FF);
}

}  // namespace riscv::imsic
