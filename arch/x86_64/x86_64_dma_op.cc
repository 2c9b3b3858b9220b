#include "arch/x86_64/x86_64_dma_op.h"

namespace {

// The instructions, one line each. The "memory" clobber keeps the compiler from moving the
// caller's stores to the buffer across them.
inline void clwb(uintptr_t p) {
  __asm__ volatile("clwb (%0)" ::"r"(p) : "memory");
}
inline void clflushopt(uintptr_t p) {
  __asm__ volatile("clflushopt (%0)" ::"r"(p) : "memory");
}
inline void clflush(uintptr_t p) {
  __asm__ volatile("clflush (%0)" ::"r"(p) : "memory");
}
inline void sfence() {
  __asm__ volatile("sfence" ::: "memory");
}
inline void mfence() {
  __asm__ volatile("mfence" ::: "memory");
}

// Write back and invalidate every line touched by [addr, addr + size), fenced on both sides.
// Inlined into both invalidate and flush_invalidate so each method's body holds the instructions.
[[gnu::always_inline]] inline void flush_invalidate_lines(const void* addr, size_t size,
                                                          size_t line_size,
                                                          X86DmaOp::InvalInsn insn) {
  if (size == 0) return;
  const uintptr_t start = reinterpret_cast<uintptr_t>(addr) & ~(line_size - 1);
  const uintptr_t end = reinterpret_cast<uintptr_t>(addr) + size;
  mfence();
  if (insn == X86DmaOp::InvalInsn::kClflushopt) {
    for (uintptr_t p = start; p < end; p += line_size) clflushopt(p);
  } else {
    for (uintptr_t p = start; p < end; p += line_size) clflush(p);
  }
  mfence();
}

}  // namespace

X86DmaOp::X86DmaOp(const Config& cfg, size_t line_size, FlushInsn flush_insn, InvalInsn inval_insn)
    : KernelDmaOp(cfg), line_size_(line_size), flush_insn_(flush_insn), inval_insn_(inval_insn) {
  KASSERT(line_size != 0 && (line_size & (line_size - 1)) == 0,
          "cache line size must be a power of two");
}

void X86DmaOp::flush(const void* addr, size_t size) {
  if (size == 0) return;
  const uintptr_t mask = line_size_ - 1;
  const uintptr_t start = reinterpret_cast<uintptr_t>(addr) & ~mask;
  const uintptr_t end = reinterpret_cast<uintptr_t>(addr) + size;
  switch (flush_insn_) {
    case FlushInsn::kClwb:
      for (uintptr_t p = start; p < end; p += line_size_) clwb(p);
      sfence();
      break;
    case FlushInsn::kClflushopt:
      for (uintptr_t p = start; p < end; p += line_size_) clflushopt(p);
      sfence();
      break;
    case FlushInsn::kClflush:
      for (uintptr_t p = start; p < end; p += line_size_) clflush(p);
      mfence();
      break;
  }
}

void X86DmaOp::invalidate(const void* addr, size_t size) {
  flush_invalidate_lines(addr, size, line_size_, inval_insn_);
}

void X86DmaOp::flush_invalidate(const void* addr, size_t size) {
  flush_invalidate_lines(addr, size, line_size_, inval_insn_);
}
