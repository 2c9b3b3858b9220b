// x86-64's decisions for the shared cache walk (include/dmakit/arch/cache_range.h), with the
// instructions supplied by `Insn` (inline asm in arch/x86_64/dma/x86_64_dma_op.cc, the cache model
// in the host tests: arch/host/model_line_ops.h).
//
//   clean            -> CLWB (write back, the line may stay cached), else CLFLUSHOPT, else
//                       CLFLUSH, as the CPU has them
//   clean_invalidate -> CLFLUSHOPT, else CLFLUSH
//   invalidate       -> none: x86 has no invalidate-without-write-back for normal use (INVD is
//                       whole-cache and privileged-dangerous), so the walk writes every line back
//                       and invalidates it, which is also what partial lines need.
//   barriers         -> clean: nothing before; SFENCE after (MFENCE after CLFLUSH alone), so the
//                       write-backs are complete before a later store (a doorbell) is visible.
//                       The invalidating walks: MFENCE before (earlier stores and loads are
//                       ordered before the flushes) and after (later loads cannot be satisfied
//                       before the lines are gone). CLFLUSHOPT and CLWB are ordered only by
//                       fences, locked operations and accesses to the same line (SDM vol. 2).
//
// Insn needs: clwb(uintptr_t), clflushopt(uintptr_t), clflush(uintptr_t), sfence(), mfence().
//
// Calling contexts: any (dmakit/dma_op.h); nothing here takes a lock.
#pragma once

#include "dmakit/arch/cache_range.h"

// Which instructions the CPU has (CPUID), fixed for an object's life.
enum class X86FlushInsn : uint8_t { kClwb, kClflushopt, kClflush };
enum class X86InvalInsn : uint8_t { kClflushopt, kClflush };

template <typename Insn>
class X86LineOps {
 public:
  // line: CPUID.1:EBX[15:8] * 8, a power of two.
  [[gnu::always_inline]] X86LineOps(Insn insn, size_t line, X86FlushInsn flush, X86InvalInsn inval)
      : insn_(insn), line_(line), flush_(flush), inval_(inval) {}

  [[gnu::always_inline]] size_t line_size() const { return line_; }
  [[gnu::always_inline]] void clean(uintptr_t a) {
    switch (flush_) {
      case X86FlushInsn::kClwb:
        insn_.clwb(a);
        break;
      case X86FlushInsn::kClflushopt:
        insn_.clflushopt(a);
        break;
      case X86FlushInsn::kClflush:
        insn_.clflush(a);
        break;
    }
  }
  [[gnu::always_inline]] void clean_invalidate(uintptr_t a) {
    if (inval_ == X86InvalInsn::kClflushopt) {
      insn_.clflushopt(a);
    } else {
      insn_.clflush(a);
    }
  }
  [[gnu::always_inline]] void before(cache_range::CacheOp op) {
    if (op != cache_range::CacheOp::kClean) insn_.mfence();
  }
  [[gnu::always_inline]] void after(cache_range::CacheOp op) {
    if (op == cache_range::CacheOp::kClean && flush_ != X86FlushInsn::kClflush) {
      insn_.sfence();
    } else {
      insn_.mfence();
    }
  }

 private:
  Insn insn_;
  size_t line_;
  X86FlushInsn flush_;
  X86InvalInsn inval_;
};
