// Riscv64DmaOp: the RISC-V DmaOp. Cache maintenance with the Zicbom cache-block instructions,
// one block at a time, block size from the device tree ("riscv,cbom-block-size"):
//   flush            -> cbo.clean  (write dirty data back, keep the copy)
//   invalidate       -> cbo.inval  on whole blocks, cbo.flush on the partial blocks at either
//                       end (so bytes sharing a block with the range are written back, not lost)
//   flush_invalidate -> cbo.flush  (write back, then discard)
// with `fence rw, rw` before (earlier CPU stores are visible to the operation) and after (the
// operation completes before later accesses, e.g. the MMIO write that starts the device).
//
// Without Zicbom (by the ISA string) there are no cache instructions to use: the platform is
// declared coherent (Config::platform_coherent forced true) and the three methods only fence.
// Without Svpbmt, coherent memory cannot be mapped non-cacheable for a non-coherent device
// (arch/riscv64/dma/riscv64_uncached.cc): the platform is declared coherent as well. Both are true on
// QEMU, which models no caches; on real hardware lacking them, a device that does not snoop would
// need memory the platform's PMAs make uncacheable, which this port does not support (a device
// explicitly marked non-coherent then gets kNotSupported from alloc_coherent).
// cbo.inval needs the M-mode firmware to set menvcfg.CBIE; if it traps (found by a boot-time
// probe), `inval_usable` is false and invalidate uses cbo.flush on every block, which is a correct
// (only slower) substitute: the written-back data is then discarded from the cache all the same.
//
// Cost: one instruction per block touched, plus two fences.
//
// Calling contexts: those of DmaOp and KernelDmaOp (dmakit/dma_op.h); the cache methods are any
// context.
#pragma once

#include "dmakit/kernel_dma_op.h"

class Riscv64DmaOp final : public KernelDmaOp {
 public:
  struct CacheOps {
    bool zicbom = false;        // Zicbom is in the ISA string and cbo.clean/cbo.flush work.
    bool inval_usable = false;  // cbo.inval does not trap (menvcfg.CBIE enabled by firmware).
    uint32_t block_size = 64;   // Cache-block size in bytes, a power of two.
    bool svpbmt = false;        // Every hart has Svpbmt: PTEs can say NC (set_memory_attribute).
  };

  // Preconditions: as KernelDmaOp's; ops.block_size a power of two >= 16 when ops.zicbom.
  // cfg.platform_coherent is kept when the platform could be non-coherent (Zicbom and Svpbmt),
  // and forced true otherwise; cfg.cache_maintenance becomes ops.zicbom and
  // cfg.cache_line_size the block size.
  Riscv64DmaOp(const Config& cfg, const CacheOps& ops);

  // Any alignment, size may be 0; may be called with interrupts off. See DmaOp.
  void flush(const void* addr, size_t size) override;
  void invalidate(const void* addr, size_t size) override;
  void flush_invalidate(const void* addr, size_t size) override;
  // Direct-map pages to Svpbmt NC (kUncached) or PBMT=PMA (kCached) in place; see
  // arch/riscv64/dma/riscv64_uncached.cc. Errors: KernelDmaOp's; kNotSupported without Zicbom or
  // Svpbmt (or when satp is not Sv39).
  Result<void> set_memory_attribute(void* va, size_t bytes, MemAttr attr) override;

  const CacheOps& cache_ops() const { return ops_; }

 private:
  static Config with_coherence(const Config& cfg, const CacheOps& ops);

  CacheOps ops_;
};
