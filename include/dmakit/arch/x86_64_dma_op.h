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
// Who decides which instructions run: the kernel. The library executes no CPUID; it uses exactly
// the FlushInsn / InvalInsn the kernel passes, so the kernel must pass kClwb only if CPUID.(EAX=7,
// ECX=0):EBX[24] (CLWB) is set, kClflushopt only if EBX[23] (CLFLUSHOPT) is, and may always pass
// kClflush (CPUID.1:EDX[19], on every x86-64 CPU). No control-register bit enables them; they run
// at any privilege level. The test kernel's choice (arch/x86_64/testkernel/x86_64_platform.cc)
// is the example. set_memory_attribute additionally writes page-table entries, INVLPG, and reads
// and writes CR4 (PGE toggle) or CR3 to flush the local TLB, or calls the kernel's TLB hook; and
// only when the kernel described its page tables (dmakit/page_tables.h).
//
// Calling contexts: those of DmaOp and KernelDmaOp (dmakit/dma_op.h); the cache methods are any
// context.
#pragma once

#include "dmakit/arch/x86_64_line_ops.h"
#include "dmakit/kernel_dma_op.h"
#include "dmakit/page_tables.h"

class X86DmaOp final : public KernelDmaOp {
 public:
  // Which flush instructions to use (include/dmakit/arch/x86_64_line_ops.h).
  using FlushInsn = X86FlushInsn;
  using InvalInsn = X86InvalInsn;

  // For static storage: `constinit X86DmaOp g_op;`, then init() at boot (see KernelDmaOp).
  constexpr X86DmaOp() = default;
  // Sets the object up. Preconditions: KernelDmaOp::init's; the CPU has the chosen instructions
  // (every x86-64 CPU has CLFLUSH). The choice is fixed for the object's life. `page_tables`: the
  // kernel's description of the 4-level tables that hold its direct map and of its PAT indices
  // for write-back and UC-, copied (its callbacks and table_ctx must outlive this object); null
  // (or a description that lacks something) when the kernel does not let the library edit them:
  // set_memory_attribute is then kNotSupported, and so is alloc_coherent for a non-coherent
  // device. Calling context: KernelDmaOp::init's.
  // Errors: kInvalidArgument (line_size not a power of two, or KernelDmaOp::init's); the object
  // is unchanged then.
  Result<void> init(const Config& cfg, size_t line_size, FlushInsn flush_insn, InvalInsn inval_insn,
                    const dmakit_page_tables* page_tables = nullptr);
  // The same in one step; panics where init() returns an error.
  X86DmaOp(const Config& cfg, size_t line_size, FlushInsn flush_insn, InvalInsn inval_insn,
           const dmakit_page_tables* page_tables = nullptr);

  // See DmaOp. Any alignment, size 0 does nothing; safe with interrupts off, on any CPU.
  void flush(const void* addr, size_t size) override;
  void invalidate(const void* addr, size_t size) override;
  void flush_invalidate(const void* addr, size_t size) override;
  // Direct-map pages to the kernel's UC- PAT index (kUncached) or its write-back one (kCached) in
  // place, in the tables the kernel described; see arch/x86_64/dma/x86_64_uncached.cc. Errors:
  // KernelDmaOp's; kNotSupported without a usable description; kInvalidArgument outside its
  // direct map; kNoMemory when alloc_table has no page for a split. Thread context.
  Result<void> set_memory_attribute(void* va, size_t bytes, MemAttr attr) override;
  // Split tables live now (0 once every page made uncached is cacheable again). Any context.
  size_t split_tables() const;

  size_t line_size() const { return line_size_; }
  FlushInsn flush_insn() const { return flush_insn_; }
  InvalInsn inval_insn() const { return inval_insn_; }

 private:
  // The page-table editor (DirectMapAttributes, built in place by init_attributes).
  static constexpr size_t kAttributesBytes = 1280;
  void init_attributes(const dmakit_page_tables* page_tables);

  size_t line_size_ = 64;
  FlushInsn flush_insn_ = FlushInsn::kClflush;
  InvalInsn inval_insn_ = InvalInsn::kClflush;
  alignas(uint64_t) unsigned char attrs_[kAttributesBytes] = {};
};
