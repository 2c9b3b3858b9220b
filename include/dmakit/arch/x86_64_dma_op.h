// X86DmaOp: the x86-64 DmaOp, KernelDmaOp plus the cache-maintenance instructions.
//
// x86 DMA is cache coherent, so the platform default is coherent and the streaming path does no
// maintenance; these methods serve devices explicitly marked non-coherent and direct callers.
//
//   flush:            CLWB per line (write back, line may stay cached), else CLFLUSHOPT, else
//                     CLFLUSH; then SFENCE (MFENCE after CLFLUSH-only), so the write-backs are
//                     complete before a later store (a doorbell) becomes visible.
//   invalidate,
//   flush_invalidate: MFENCE, CLFLUSHOPT per line (else CLFLUSH), MFENCE. x86 has no
//                     invalidate-without-write-back for normal use (INVD is whole-cache and
//                     privileged-dangerous), so invalidate writes dirty lines back first; this is
//                     also what the contract asks for at partial lines, whose neighbours' data
//                     must survive. The leading MFENCE orders earlier stores and loads before the
//                     flushes, the trailing one keeps later loads from being satisfied before the
//                     lines are gone (CLFLUSHOPT is ordered only by fences, locked operations and
//                     accesses to the same line; SDM vol. 2, CLFLUSHOPT/CLWB).
//
// The line size is CPUID.1:EBX[15:8] * 8. Each operation costs one instruction per line touched
// by [addr, addr + size) plus two fences.
//
// Calling contexts: those of DmaOp and KernelDmaOp (dmakit/dma_op.h); the cache methods are any
// context.
#pragma once

#include "dmakit/arch/x86_64_line_ops.h"
#include "dmakit/kernel_dma_op.h"

class X86DmaOp final : public KernelDmaOp {
 public:
  // Which flush instructions to use (include/dmakit/arch/x86_64_line_ops.h).
  using FlushInsn = X86FlushInsn;
  using InvalInsn = X86InvalInsn;

  // Preconditions: as KernelDmaOp; the CPU has at least CLFLUSH (every x86-64 CPU does).
  // `line_size` is a power of two. The choice of instructions is fixed for the object's life.
  X86DmaOp(const Config& cfg, size_t line_size, FlushInsn flush_insn, InvalInsn inval_insn);

  // See DmaOp. Any alignment, size 0 does nothing; safe with interrupts off, on any CPU.
  void flush(const void* addr, size_t size) override;
  void invalidate(const void* addr, size_t size) override;
  void flush_invalidate(const void* addr, size_t size) override;
  // Direct-map pages to PAT UC- (kUncached) or write-back (kCached) in place; see
  // arch/x86_64/dma/x86_64_uncached.cc. Errors: KernelDmaOp's; kNotSupported if the PAT MSR does not
  // hold the port's layout (index 0 WB, index 2 UC-).
  Result<void> set_memory_attribute(void* va, size_t bytes, MemAttr attr) override;

  size_t line_size() const { return line_size_; }
  FlushInsn flush_insn() const { return flush_insn_; }
  InvalInsn inval_insn() const { return inval_insn_; }

 private:
  size_t line_size_;
  FlushInsn flush_insn_;
  InvalInsn inval_insn_;
};
