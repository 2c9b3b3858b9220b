// AArch64 cache maintenance for the DMA layer; see aarch64_dma_op.h.
#include "arch/aarch64/aarch64_dma_op.h"

#include "support/assert.h"
#include "support/bitops.h"

AArch64DmaOp::AArch64DmaOp(const Config& cfg, size_t line_size)
    : KernelDmaOp(cfg), line_(line_size) {
  KASSERT(support::is_pow2(line_size) && line_size >= 16, "bad cache line size");
}

size_t AArch64DmaOp::hardware_line_size() {
  uint64_t ctr;
  __asm__ volatile("mrs %0, ctr_el0" : "=r"(ctr));
  return size_t{4} << ((ctr >> 16) & 0xf);
}

void AArch64DmaOp::flush(const void* addr, size_t size) {
  if (size == 0) return;
  const size_t line = line_;  // A local: the asm's memory clobber would reload the member.
  uintptr_t start = reinterpret_cast<uintptr_t>(addr);
  uintptr_t end = start + size;
  for (uintptr_t a = start & ~(line - 1); a < end; a += line) {
    __asm__ volatile("dc cvac, %0" : : "r"(a) : "memory");
  }
  __asm__ volatile("dsb sy" : : : "memory");
}

void AArch64DmaOp::invalidate(const void* addr, size_t size) {
  if (size == 0) return;
  const size_t line = line_;
  const uintptr_t mask = line - 1;
  uintptr_t start = reinterpret_cast<uintptr_t>(addr);
  uintptr_t end = start + size;
  uintptr_t first = start & ~mask;     // First line touched.
  uintptr_t last = (end - 1) & ~mask;  // Last line touched.
  // A line only partly inside the range holds a neighbour's bytes: clean it too (civac), so a
  // dirty neighbour reaches memory instead of being thrown away.
  if ((start & mask) != 0) {
    __asm__ volatile("dc civac, %0" : : "r"(first) : "memory");
    if (first == last) {
      __asm__ volatile("dsb sy" : : : "memory");
      return;
    }
    first += line;
  }
  if ((end & mask) != 0) {
    __asm__ volatile("dc civac, %0" : : "r"(last) : "memory");
    if (first == last) {
      __asm__ volatile("dsb sy" : : : "memory");
      return;
    }
    last -= line;
  }
  // Whole lines: plain invalidate.
  for (uintptr_t a = first;; a += line) {
    __asm__ volatile("dc ivac, %0" : : "r"(a) : "memory");
    if (a == last) break;
  }
  __asm__ volatile("dsb sy" : : : "memory");
}

void AArch64DmaOp::flush_invalidate(const void* addr, size_t size) {
  if (size == 0) return;
  const size_t line = line_;  // A local: the asm's memory clobber would reload the member.
  uintptr_t start = reinterpret_cast<uintptr_t>(addr);
  uintptr_t end = start + size;
  for (uintptr_t a = start & ~(line - 1); a < end; a += line) {
    __asm__ volatile("dc civac, %0" : : "r"(a) : "memory");
  }
  __asm__ volatile("dsb sy" : : : "memory");
}
