// AArch64 cache maintenance for the DMA layer; see aarch64_dma_op.h.
#include "dmakit/arch/aarch64_dma_op.h"

#include "dmakit/arch/aarch64_line_ops.h"
#include "dmakit/support/assert.h"
#include "dmakit/support/bitops.h"

namespace {

// The instructions behind AArch64LineOps. The "memory" clobbers keep the compiler from moving
// the caller's accesses to the buffer across them.
struct DcInsns {
  [[gnu::always_inline]] void dc_cvac(uintptr_t a) {
    __asm__ volatile("dc cvac, %0" : : "r"(a) : "memory");
  }
  [[gnu::always_inline]] void dc_ivac(uintptr_t a) {
    __asm__ volatile("dc ivac, %0" : : "r"(a) : "memory");
  }
  [[gnu::always_inline]] void dc_civac(uintptr_t a) {
    __asm__ volatile("dc civac, %0" : : "r"(a) : "memory");
  }
  [[gnu::always_inline]] void dsb_sy() { __asm__ volatile("dsb sy" : : : "memory"); }
};
static_assert(cache_range::InvalidatingLineOps<AArch64LineOps<DcInsns>>);

// A local copy of the line size: the asm's memory clobber would make the walk reload a member.
[[gnu::always_inline]] inline AArch64LineOps<DcInsns> line_ops(size_t line) {
  return AArch64LineOps<DcInsns>(DcInsns{}, line);
}

}  // namespace

Result<void> AArch64DmaOp::init(const Config& cfg, size_t line_size,
                                const dmakit_page_tables* page_tables) {
  if (!support::is_pow2(line_size) || line_size < 16) return ErrorCode::kInvalidArgument;
  TRY(KernelDmaOp::init(with_line_size(cfg, line_size)));
  line_ = line_size;
  init_attributes(page_tables);
  return support::ok();
}

AArch64DmaOp::AArch64DmaOp(const Config& cfg, size_t line_size,
                           const dmakit_page_tables* page_tables) {
  Result<void> r = init(cfg, line_size, page_tables);
  KASSERT(r.ok(), "AArch64DmaOp: bad cache line size or Config");
}

size_t AArch64DmaOp::hardware_line_size() {
  uint64_t ctr;
  __asm__ volatile("mrs %0, ctr_el0" : "=r"(ctr));
  return size_t{4} << ((ctr >> 16) & 0xf);
}

void AArch64DmaOp::flush(const void* addr, size_t size) {
  auto ops = line_ops(line_);
  cache_range::maintain(ops, cache_range::CacheOp::kClean, addr, size);
}

void AArch64DmaOp::invalidate(const void* addr, size_t size) {
  auto ops = line_ops(line_);
  cache_range::maintain(ops, cache_range::CacheOp::kInvalidate, addr, size);
}

void AArch64DmaOp::flush_invalidate(const void* addr, size_t size) {
  auto ops = line_ops(line_);
  cache_range::maintain(ops, cache_range::CacheOp::kCleanInvalidate, addr, size);
}
