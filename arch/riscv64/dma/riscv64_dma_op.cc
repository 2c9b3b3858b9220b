// Zicbom cache maintenance for Riscv64DmaOp; the scheme is in riscv64_dma_op.h, the decisions
// (which block gets which instruction, the fences) in include/dmakit/arch/riscv64_line_ops.h and
// include/dmakit/arch/cache_range.h. The walk is forced inline, so each method's own body holds its
// instructions (the in-VM disassembly check looks there).
#include "dmakit/arch/riscv64_dma_op.h"

#include "dmakit/arch/riscv64_line_ops.h"
#include "dmakit/support/assert.h"
#include "dmakit/support/bitops.h"

namespace {

// The instructions behind Riscv64LineOps. The "memory" clobbers keep the compiler from moving
// the caller's accesses to the buffer across them.
struct CboInsns {
  [[gnu::always_inline]] void cbo_clean(uintptr_t a) {
    __asm__ volatile("cbo.clean (%0)" : : "r"(a) : "memory");
  }
  [[gnu::always_inline]] void cbo_inval(uintptr_t a) {
    __asm__ volatile("cbo.inval (%0)" : : "r"(a) : "memory");
  }
  [[gnu::always_inline]] void cbo_flush(uintptr_t a) {
    __asm__ volatile("cbo.flush (%0)" : : "r"(a) : "memory");
  }
  [[gnu::always_inline]] void fence_rw_rw() { __asm__ volatile("fence rw, rw" : : : "memory"); }
};
static_assert(cache_range::InvalidatingLineOps<Riscv64LineOps<CboInsns>>);

[[gnu::always_inline]] inline Riscv64LineOps<CboInsns> line_ops(const Riscv64DmaOp::CacheOps& c) {
  return Riscv64LineOps<CboInsns>(CboInsns{}, c.block_size, c.inval_usable);
}

// Without Zicbom there is nothing to maintain (the platform is declared coherent); the methods
// still order the caller's accesses, as they did.
inline void fence_only() {
  CboInsns{}.fence_rw_rw();
}

}  // namespace

KernelDmaOp::Config Riscv64DmaOp::with_coherence(const Config& cfg, const CacheOps& ops) {
  Config c = cfg;
  // A platform that cannot maintain caches or map memory uncached must be coherent; one that
  // can is coherent only if the kernel says so (its devices snoop).
  c.platform_coherent = cfg.platform_coherent || !(ops.zicbom && ops.svpbmt);
  // Without Zicbom there is nothing to maintain the caches with: non-coherent devices are
  // refused (kNotSupported) rather than mapped without maintenance.
  c.cache_maintenance = ops.zicbom;
  if (ops.zicbom) c.cache_line_size = ops.block_size;
  return c;
}

Result<void> Riscv64DmaOp::init(const Config& cfg, const CacheOps& ops,
                                const dmakit_page_tables* page_tables) {
  if (ops.zicbom && (!support::is_pow2(ops.block_size) || ops.block_size < 16)) {
    return ErrorCode::kInvalidArgument;
  }
  TRY(KernelDmaOp::init(with_coherence(cfg, ops)));
  ops_ = ops;
  init_attributes(page_tables);
  return support::ok();
}

Riscv64DmaOp::Riscv64DmaOp(const Config& cfg, const CacheOps& ops,
                           const dmakit_page_tables* page_tables) {
  Result<void> r = init(cfg, ops, page_tables);
  KASSERT(r.ok(), "Riscv64DmaOp: bad Zicbom block size or Config");
}

void Riscv64DmaOp::flush(const void* addr, size_t size) {
  if (!ops_.zicbom) return fence_only();
  auto ops = line_ops(ops_);
  cache_range::maintain(ops, cache_range::CacheOp::kClean, addr, size);
}

void Riscv64DmaOp::invalidate(const void* addr, size_t size) {
  if (!ops_.zicbom) return fence_only();
  auto ops = line_ops(ops_);
  cache_range::maintain(ops, cache_range::CacheOp::kInvalidate, addr, size);
}

void Riscv64DmaOp::flush_invalidate(const void* addr, size_t size) {
  if (!ops_.zicbom) return fence_only();
  auto ops = line_ops(ops_);
  cache_range::maintain(ops, cache_range::CacheOp::kCleanInvalidate, addr, size);
}
