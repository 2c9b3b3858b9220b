// AArch64DmaOp: the KernelDmaOp of AArch64 machines whose devices do not snoop the CPU caches
// (QEMU virt is declared so, which makes the streaming paths do real cache maintenance).
//
// Cache maintenance by virtual address, one data-cache line at a time, to the point of coherency:
//   flush            -- dc cvac  (clean)
//   invalidate       -- dc ivac  (invalidate) for lines wholly inside the range; dc civac (clean
//                       and invalidate) for a partial first or last line, so that bytes of a
//                       neighbouring object sharing the line are written back, not discarded
//   flush_invalidate -- dc civac
// each followed by dsb sy so the maintenance completes before the method returns. The line size
// is CTR_EL0.DminLine, read once at construction. Cost: one instruction per line of the range.
//
// Threading: as DmaOp. The methods touch no shared state.
//
// Calling contexts: those of DmaOp and KernelDmaOp (dmakit/dma_op.h); the cache methods are any
// context.
#pragma once

#include "dmakit/kernel_dma_op.h"

class AArch64DmaOp final : public KernelDmaOp {
 public:
  // Precondition: as KernelDmaOp. `line_size` is a power of two (the CPU's CTR_EL0.DminLine).
  AArch64DmaOp(const Config& cfg, size_t line_size);

  void flush(const void* addr, size_t size) override;
  void invalidate(const void* addr, size_t size) override;
  void flush_invalidate(const void* addr, size_t size) override;
  // Direct-map pages to Normal Non-cacheable (kUncached) or Normal write-back (kCached) in place;
  // see arch/aarch64/dma/aarch64_uncached.cc. Errors: KernelDmaOp's; kNotSupported if MAIR_EL1 does not hold
  // the layout of mmu.h.
  Result<void> set_memory_attribute(void* va, size_t bytes, MemAttr attr) override;

  size_t line_size() const { return line_; }

  // The line size the hardware reports (CTR_EL0.DminLine), in bytes.
  static size_t hardware_line_size();

 private:
  size_t line_;
};
