// Zicbom cache maintenance for Riscv64DmaOp; the scheme is in riscv64_dma_op.h.
//
// Each method walks the blocks from the one holding the first byte to the one holding the last,
// comparing block addresses against the last block rather than an end pointer, so a range that
// ends at the top of the address space cannot wrap. The instructions are written out in each
// method (no shared helper) so a disassembly of the method shows them.
#include "arch/riscv64/riscv64_dma_op.h"

#include "support/assert.h"
#include "support/bitops.h"

namespace {

inline void fence_rw_rw() {
  __asm__ volatile("fence rw, rw" : : : "memory");
}

}  // namespace

KernelDmaOp::Config Riscv64DmaOp::with_coherence(const Config& cfg, const CacheOps& ops) {
  Config c = cfg;
  c.platform_coherent = !(ops.zicbom && ops.svpbmt);
  return c;
}

Riscv64DmaOp::Riscv64DmaOp(const Config& cfg, const CacheOps& ops)
    : KernelDmaOp(with_coherence(cfg, ops)), ops_(ops) {
  if (ops_.zicbom) {
    KASSERT(support::is_pow2(ops_.block_size) && ops_.block_size >= 16,
            "Zicbom block size must be a power of two >= 16");
  }
}

void Riscv64DmaOp::flush(const void* addr, size_t size) {
  fence_rw_rw();
  if (ops_.zicbom && size != 0) {
    uintptr_t mask = uintptr_t{ops_.block_size} - 1;
    uintptr_t a = reinterpret_cast<uintptr_t>(addr);
    KDEBUG_ASSERT(a + (size - 1) >= a, "cache maintenance range wraps");
    uintptr_t last = (a + (size - 1)) & ~mask;
    for (uintptr_t p = a & ~mask;; p += mask + 1) {
      __asm__ volatile("cbo.clean (%0)" : : "r"(p) : "memory");
      if (p == last) break;
    }
  }
  fence_rw_rw();
}

void Riscv64DmaOp::invalidate(const void* addr, size_t size) {
  fence_rw_rw();
  if (ops_.zicbom && size != 0) {
    uintptr_t mask = uintptr_t{ops_.block_size} - 1;
    uintptr_t a = reinterpret_cast<uintptr_t>(addr);
    uintptr_t end_byte = a + (size - 1);
    KDEBUG_ASSERT(end_byte >= a, "cache maintenance range wraps");
    uintptr_t first = a & ~mask;
    uintptr_t last = end_byte & ~mask;
    for (uintptr_t p = first;; p += mask + 1) {
      // A block the range covers only in part also holds someone else's bytes: write it back.
      bool partial = (p == first && a != first) || (p == last && (end_byte & mask) != mask);
      if (partial || !ops_.inval_usable) {
        __asm__ volatile("cbo.flush (%0)" : : "r"(p) : "memory");
      } else {
        __asm__ volatile("cbo.inval (%0)" : : "r"(p) : "memory");
      }
      if (p == last) break;
    }
  }
  fence_rw_rw();
}

void Riscv64DmaOp::flush_invalidate(const void* addr, size_t size) {
  fence_rw_rw();
  if (ops_.zicbom && size != 0) {
    uintptr_t mask = uintptr_t{ops_.block_size} - 1;
    uintptr_t a = reinterpret_cast<uintptr_t>(addr);
    KDEBUG_ASSERT(a + (size - 1) >= a, "cache maintenance range wraps");
    uintptr_t last = (a + (size - 1)) & ~mask;
    for (uintptr_t p = a & ~mask;; p += mask + 1) {
      __asm__ volatile("cbo.flush (%0)" : : "r"(p) : "memory");
      if (p == last) break;
    }
  }
  fence_rw_rw();
}
