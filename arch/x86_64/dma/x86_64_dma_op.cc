// x86-64 cache maintenance for X86DmaOp; the scheme is in x86_64_dma_op.h, the decisions (which
// line gets which instruction, the fences) in include/dmakit/arch/x86_64_line_ops.h and
// include/dmakit/arch/cache_range.h. The walk is forced inline, so each method's own body holds its
// instructions (the in-VM disassembly check looks there).
#include "dmakit/arch/x86_64_dma_op.h"

#include "dmakit/arch/x86_64_line_ops.h"

namespace {

// The instructions behind X86LineOps, one line each. The "memory" clobber keeps the compiler from
// moving the caller's stores to the buffer across them.
struct X86Insns {
  [[gnu::always_inline]] void clwb(uintptr_t p) {
    __asm__ volatile("clwb (%0)" ::"r"(p) : "memory");
  }
  [[gnu::always_inline]] void clflushopt(uintptr_t p) {
    __asm__ volatile("clflushopt (%0)" ::"r"(p) : "memory");
  }
  [[gnu::always_inline]] void clflush(uintptr_t p) {
    __asm__ volatile("clflush (%0)" ::"r"(p) : "memory");
  }
  [[gnu::always_inline]] void sfence() { __asm__ volatile("sfence" ::: "memory"); }
  [[gnu::always_inline]] void mfence() { __asm__ volatile("mfence" ::: "memory"); }
};
static_assert(cache_range::LineOps<X86LineOps<X86Insns>>);
// No invalidate-only instruction: the walk must never take the whole-line invalidate path.
static_assert(!cache_range::InvalidatingLineOps<X86LineOps<X86Insns>>);

}  // namespace

Result<void> X86DmaOp::init(const Config& cfg, size_t line_size, FlushInsn flush_insn,
                            InvalInsn inval_insn, const dmakit_page_tables* page_tables) {
  if (line_size == 0 || (line_size & (line_size - 1)) != 0) return ErrorCode::kInvalidArgument;
  TRY(KernelDmaOp::init(with_line_size(cfg, line_size)));
  line_size_ = line_size;
  flush_insn_ = flush_insn;
  inval_insn_ = inval_insn;
  init_attributes(page_tables);
  return support::ok();
}

X86DmaOp::X86DmaOp(const Config& cfg, size_t line_size, FlushInsn flush_insn, InvalInsn inval_insn,
                   const dmakit_page_tables* page_tables) {
  Result<void> r = init(cfg, line_size, flush_insn, inval_insn, page_tables);
  KASSERT(r.ok(), "X86DmaOp: bad cache line size or Config");
}

void X86DmaOp::flush(const void* addr, size_t size) {
  X86LineOps<X86Insns> ops(X86Insns{}, line_size_, flush_insn_, inval_insn_);
  cache_range::maintain(ops, cache_range::CacheOp::kClean, addr, size);
}

void X86DmaOp::invalidate(const void* addr, size_t size) {
  X86LineOps<X86Insns> ops(X86Insns{}, line_size_, flush_insn_, inval_insn_);
  cache_range::maintain(ops, cache_range::CacheOp::kInvalidate, addr, size);
}

void X86DmaOp::flush_invalidate(const void* addr, size_t size) {
  X86LineOps<X86Insns> ops(X86Insns{}, line_size_, flush_insn_, inval_insn_);
  cache_range::maintain(ops, cache_range::CacheOp::kCleanInvalidate, addr, size);
}
