// RISC-V's decisions for the shared cache walk (include/dmakit/arch/cache_range.h), with the Zicbom
// cache-block instructions supplied by `Insn` (inline asm in arch/riscv64/dma/riscv64_dma_op.cc,
// the cache model in the host tests: arch/host/model_line_ops.h).
//
//   clean            -> cbo.clean
//   invalidate       -> cbo.inval, when usable: it traps unless the M-mode firmware set
//                       menvcfg.CBIE (probed at boot). Otherwise the walk uses cbo.flush on every
//                       block, a correct (only slower) substitute.
//   clean_invalidate -> cbo.flush
//   before, after    -> fence rw, rw: earlier accesses are visible to the operation, and it
//                       completes before later ones (e.g. the MMIO write that starts the device)
//
// Insn needs: cbo_clean(uintptr_t), cbo_inval(uintptr_t), cbo_flush(uintptr_t), fence_rw_rw().
//
// Calling contexts: any (dmakit/dma_op.h); nothing here takes a lock.
#pragma once

#include "dmakit/arch/cache_range.h"

template <typename Insn>
class Riscv64LineOps {
 public:
  // block: the cache-block size ("riscv,cbom-block-size"), a power of two.
  [[gnu::always_inline]] Riscv64LineOps(Insn insn, size_t block, bool inval_usable)
      : insn_(insn), block_(block), inval_usable_(inval_usable) {}

  [[gnu::always_inline]] size_t line_size() const { return block_; }
  [[gnu::always_inline]] void clean(uintptr_t a) { insn_.cbo_clean(a); }
  [[gnu::always_inline]] void invalidate(uintptr_t a) { insn_.cbo_inval(a); }
  [[gnu::always_inline]] bool invalidate_usable() const { return inval_usable_; }
  [[gnu::always_inline]] void clean_invalidate(uintptr_t a) { insn_.cbo_flush(a); }
  [[gnu::always_inline]] void before(cache_range::CacheOp) { insn_.fence_rw_rw(); }
  [[gnu::always_inline]] void after(cache_range::CacheOp) { insn_.fence_rw_rw(); }

 private:
  Insn insn_;
  size_t block_;
  bool inval_usable_;
};
