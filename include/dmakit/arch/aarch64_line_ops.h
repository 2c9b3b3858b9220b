// AArch64's decisions for the shared cache walk (include/dmakit/arch/cache_range.h): which
// data-cache instruction serves each line operation, and the barrier. No instruction is written
// here: `Insn` supplies them, so the same decisions run in the kernel
// (arch/aarch64/dma/aarch64_dma_op.cc, inline asm) and in the host tests against the cache model
// (arch/host/model_line_ops.h).
//
//   clean            -> dc cvac   (to the point of coherency)
//   invalidate       -> dc ivac   (whole lines only; the walk cleans partial ones)
//   clean_invalidate -> dc civac
//   before           -> nothing: a DC by VA is ordered after the CPU's earlier stores to the same
//                       line (Arm ARM, "Ordering of cache maintenance instructions")
//   after            -> dsb sy: the maintenance completes before the method returns
//
// Insn needs: dc_cvac(uintptr_t), dc_ivac(uintptr_t), dc_civac(uintptr_t), dsb_sy().
//
// Calling contexts: any (dmakit/dma_op.h); nothing here takes a lock.
#pragma once

#include "dmakit/arch/cache_range.h"

template <typename Insn>
class AArch64LineOps {
 public:
  // line: CTR_EL0.DminLine in bytes, a power of two.
  [[gnu::always_inline]] AArch64LineOps(Insn insn, size_t line) : insn_(insn), line_(line) {}

  [[gnu::always_inline]] size_t line_size() const { return line_; }
  [[gnu::always_inline]] void clean(uintptr_t a) { insn_.dc_cvac(a); }
  [[gnu::always_inline]] void invalidate(uintptr_t a) { insn_.dc_ivac(a); }
  [[gnu::always_inline]] bool invalidate_usable() const { return true; }
  [[gnu::always_inline]] void clean_invalidate(uintptr_t a) { insn_.dc_civac(a); }
  [[gnu::always_inline]] void before(cache_range::CacheOp) {}
  [[gnu::always_inline]] void after(cache_range::CacheOp) { insn_.dsb_sy(); }

 private:
  Insn insn_;
  size_t line_;
};
