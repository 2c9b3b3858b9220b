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
// Which instructions the library executes, and who must enable them: the DC CVAC / IVAC / CIVAC
// operations above, DSB, and MRS of CTR_EL0 (hardware_line_size). At EL1 they are always
// available: no enable bit exists for them (SCTLR_EL1.UCI and UCT only open DC and CTR_EL0 to
// EL0, which the library never runs at). For uncached coherent memory (set_memory_attribute) it
// also writes page-table entries and executes TLBI (or calls the kernel's TLB hook), DSB, ISB and
// masks interrupts (DAIF) around each entry update, and only when the kernel described its page
// tables (dmakit/page_tables.h).
//
// Threading: as DmaOp. The cache methods touch no shared state; set_memory_attribute serializes
// on its own lock.
//
// Calling contexts: those of DmaOp and KernelDmaOp (dmakit/dma_op.h); the cache methods are any
// context.
#pragma once

#include "dmakit/kernel_dma_op.h"
#include "dmakit/page_tables.h"

class AArch64DmaOp final : public KernelDmaOp {
 public:
  // For static storage: `constinit AArch64DmaOp g_op;`, then init() at boot (see KernelDmaOp).
  constexpr AArch64DmaOp() = default;
  // Sets the object up with cfg and the line size `line_size` (normally hardware_line_size()).
  // `page_tables`: the kernel's description of the tables that hold its direct map, copied (the
  // struct need not outlive the call; its callbacks and table_ctx must outlive this object), with
  // the MAIR indices of Normal write-back and Normal Non-cacheable; null (or a description that
  // lacks something) when the kernel does not let the library edit them: set_memory_attribute is
  // then kNotSupported, and so is alloc_coherent for a non-coherent device.
  // Preconditions and calling context: KernelDmaOp::init's.
  // Errors: kInvalidArgument (line_size not a power of two of at least 16, or KernelDmaOp::init's);
  // the object is unchanged then.
  Result<void> init(const Config& cfg, size_t line_size,
                    const dmakit_page_tables* page_tables = nullptr);
  // The same in one step; panics where init() returns an error.
  AArch64DmaOp(const Config& cfg, size_t line_size,
               const dmakit_page_tables* page_tables = nullptr);

  void flush(const void* addr, size_t size) override;
  void invalidate(const void* addr, size_t size) override;
  void flush_invalidate(const void* addr, size_t size) override;
  // Direct-map pages to Normal Non-cacheable (kUncached) or Normal write-back (kCached) in place,
  // in the tables the kernel described; see arch/aarch64/dma/aarch64_uncached.cc. Errors:
  // KernelDmaOp's; kNotSupported without a usable description; kInvalidArgument outside its
  // direct map; kNoMemory when alloc_table has no page for a split. Thread context, interrupts
  // enabled; not concurrently with another CPU's access to the same 2 MiB / 1 GiB of the direct
  // map (a split unmaps it briefly).
  Result<void> set_memory_attribute(void* va, size_t bytes, MemAttr attr) override;
  // Split tables live now (0 once every page made uncached is cacheable again). Any context.
  size_t split_tables() const;

  // Splits the direct map over [va, va + bytes) (page aligned; the memory alloc_coherent may
  // hand to non-coherent devices) down to 4 KiB pages for good, with tables from alloc_table
  // that are never given back (one per 2 MiB and per 1 GiB of the range). Afterwards
  // set_memory_attribute in that range breaks (break-before-make) only the pages it changes,
  // which their caller owns, so other CPUs may use the rest of the direct map meanwhile: no
  // fault window. Call it at boot, before other CPUs or interrupt handlers use the range's
  // 2 MiB / 1 GiB regions (its own splits break them). Errors: kNotSupported (no usable
  // description), kLayoutError (misaligned or empty), kInvalidArgument (outside the described
  // direct map, unmapped or device memory), kNoMemory (alloc_table ran out; the splits made so
  // far stay, translating as before).
  Result<void> split_direct_map(void* va, size_t bytes);

  size_t line_size() const { return line_; }

  // The line size the hardware reports (CTR_EL0.DminLine), in bytes.
  static size_t hardware_line_size();

 private:
  // The page-table editor (DirectMapAttributes, built in place by init_attributes).
  static constexpr size_t kAttributesBytes = 1280;
  void init_attributes(const dmakit_page_tables* page_tables);

  size_t line_ = 64;
  alignas(uint64_t) unsigned char attrs_[kAttributesBytes] = {};
};
