// Riscv64DmaOp: the RISC-V DmaOp. Cache maintenance with the Zicbom cache-block instructions,
// one block at a time, block size from the device tree ("riscv,cbom-block-size"):
//   flush            -> cbo.clean  (write dirty data back, keep the copy)
//   invalidate       -> cbo.inval  on whole blocks, cbo.flush on the partial blocks at either
//                       end (so bytes sharing a block with the range are written back, not lost)
//   flush_invalidate -> cbo.flush  (write back, then discard)
// with `fence rw, rw` before (earlier CPU stores are visible to the operation) and after (the
// operation completes before later accesses, e.g. the MMIO write that starts the device).
//
// What the kernel must enable, and how it tells the library (CacheOps). The library executes a
// cbo.* instruction only when the kernel said it may; it probes nothing and reads no CSR.
//   - cbo.clean and cbo.flush: from S-mode they raise an illegal-instruction exception unless
//     menvcfg.CBCFE = 1, a bit only M-mode can write (the SBI firmware: OpenSBI sets it when the
//     hart has Zicbom; others may not). The ISA string (riscv,isa / riscv,isa-extensions) says
//     whether the hart has Zicbom, not whether the firmware enabled it, and QEMU advertises it
//     either way. Set CacheOps::zicbom only once both hold, e.g. by executing cbo.clean and
//     cbo.flush once under the kernel's own trap handler (the test kernel's probe_cache_ops in
//     arch/riscv64/testkernel/riscv64_platform.cc does exactly that). A kernel running in M-mode
//     needs no enable bit. U-mode never runs library code (senvcfg.CBCFE/CBIE, which the kernel
//     sets for U-mode, concern only the kernel's own users).
//   - cbo.inval: needs menvcfg.CBIE = 01 (executes as a flush) or 11 (as an invalidate); 00
//     traps. Set CacheOps::inval_usable only if it does not trap. Without it invalidate uses
//     cbo.flush on every block, a correct (only slower) substitute: the written-back data is then
//     discarded from the cache all the same.
//   - the block size: CacheOps::block_size, from the device tree (riscv,cbom-block-size).
//   - Svpbmt (for set_memory_attribute): menvcfg.PBMTE = 1, again M-mode's; without it the PBMT
//     bits of a leaf are reserved and using them faults. Set CacheOps::svpbmt only when every
//     hart has Svpbmt and the firmware enabled it.
// Without Zicbom the platform is declared coherent (Config::platform_coherent forced true) and
// the three methods only fence. Without Svpbmt (or without Zicbom, or without a page-table
// description, dmakit/page_tables.h) coherent memory cannot be mapped non-cacheable for a
// non-coherent device (arch/riscv64/dma/riscv64_uncached.cc): without Svpbmt the platform is
// declared coherent as well. Both are true on QEMU, which models no caches; on real hardware
// lacking them, a device that does not snoop would need memory the platform's PMAs make
// uncacheable, which this port does not support (a device explicitly marked non-coherent then
// gets kNotSupported from alloc_coherent).
//
// Cost: one instruction per block touched, plus two fences.
//
// Calling contexts: those of DmaOp and KernelDmaOp (dmakit/dma_op.h); the cache methods are any
// context.
#pragma once

#include "dmakit/kernel_dma_op.h"
#include "dmakit/page_tables.h"

class Riscv64DmaOp final : public KernelDmaOp {
 public:
  struct CacheOps {
    bool zicbom = false;        // Every hart has Zicbom and menvcfg.CBCFE = 1 (see above).
    bool inval_usable = false;  // And menvcfg.CBIE != 00: cbo.inval does not trap.
    uint32_t block_size = 64;   // Cache-block size in bytes, a power of two.
    bool svpbmt = false;        // Every hart has Svpbmt and menvcfg.PBMTE = 1: PTEs can say NC.
  };

  // For static storage: `constinit Riscv64DmaOp g_op;`, then init() at boot (see KernelDmaOp).
  constexpr Riscv64DmaOp() = default;
  // Sets the object up. cfg.platform_coherent is kept when the platform could be non-coherent
  // (Zicbom and Svpbmt), and forced true otherwise; cfg.cache_maintenance becomes ops.zicbom and
  // cfg.cache_line_size the block size. `page_tables`: the kernel's description of the Sv39 /
  // Sv48 tables that hold its direct map, copied (its callbacks and table_ctx must outlive this
  // object); null (or a description that lacks something) when the kernel does not let the
  // library edit them: set_memory_attribute is then kNotSupported, and so is alloc_coherent for
  // a non-coherent device. Preconditions and calling context: KernelDmaOp::init's.
  // Errors: kInvalidArgument (ops.zicbom with a block size that is not a power of two >= 16, or
  // KernelDmaOp::init's); the object is unchanged then.
  Result<void> init(const Config& cfg, const CacheOps& ops,
                    const dmakit_page_tables* page_tables = nullptr);
  // The same in one step; panics where init() returns an error.
  Riscv64DmaOp(const Config& cfg, const CacheOps& ops,
               const dmakit_page_tables* page_tables = nullptr);

  // Any alignment, size may be 0; may be called with interrupts off. See DmaOp.
  void flush(const void* addr, size_t size) override;
  void invalidate(const void* addr, size_t size) override;
  void flush_invalidate(const void* addr, size_t size) override;
  // Direct-map pages to Svpbmt NC (kUncached) or PBMT=PMA (kCached) in place, in the tables the
  // kernel described; see arch/riscv64/dma/riscv64_uncached.cc. Errors: KernelDmaOp's;
  // kNotSupported without Zicbom, Svpbmt or a usable description; kInvalidArgument outside its
  // direct map; kNoMemory when alloc_table has no page for a split. Thread context.
  Result<void> set_memory_attribute(void* va, size_t bytes, MemAttr attr) override;
  // Split tables live now (0 once every page made uncached is cacheable again). Any context.
  size_t split_tables() const;

  const CacheOps& cache_ops() const { return ops_; }

 private:
  static Config with_coherence(const Config& cfg, const CacheOps& ops);
  // The page-table editor (DirectMapAttributes, built in place by init_attributes).
  static constexpr size_t kAttributesBytes = 1280;
  void init_attributes(const dmakit_page_tables* page_tables);

  CacheOps ops_ = {};
  alignas(uint64_t) unsigned char attrs_[kAttributesBytes] = {};
};
