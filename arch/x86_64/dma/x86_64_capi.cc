// dmakit_platform_op_init on x86-64 (dma/capi_platform.h): an X86DmaOp with the flush
// instructions the kernel found in CPUID (DMAKIT_CACHE_X86_*; CLFLUSH otherwise, which every
// x86-64 CPU has). x86 DMA snoops the caches: the platform default is coherent. A line size of 0
// is 64 (CPUID.1:EBX[15:8] * 8 on every current CPU).
#include "dma/capi_platform.h"
#include "dmakit/arch/x86_64_dma_op.h"

namespace dmakit_capi {

static_assert(sizeof(X86DmaOp) <= kArchOpBytes && alignof(X86DmaOp) <= kArchOpAlign,
              "X86DmaOp outgrew dmakit_platform_op");

Result<void> construct_arch_op(void* storage, const KernelDmaOp::Config& cfg,
                               const ArchOptions& options, KernelDmaOp** out) {
  KernelDmaOp::Config c = cfg;
  if (options.coherence == DMAKIT_COHERENCE_PLATFORM) c.platform_coherent = true;
  const bool clwb = (options.cache_flags & DMAKIT_CACHE_X86_CLWB) != 0;
  const bool clflushopt = (options.cache_flags & DMAKIT_CACHE_X86_CLFLUSHOPT) != 0;
  const auto flush = clwb         ? X86DmaOp::FlushInsn::kClwb
                     : clflushopt ? X86DmaOp::FlushInsn::kClflushopt
                                  : X86DmaOp::FlushInsn::kClflush;
  const auto inval = clflushopt ? X86DmaOp::InvalInsn::kClflushopt : X86DmaOp::InvalInsn::kClflush;
  size_t line = options.cache_line_size != 0 ? options.cache_line_size : 64;
  *out = new (storage) X86DmaOp(c, line, flush, inval, options.page_tables);
  return support::ok();
}

void destroy_arch_op(void* storage) {
  static_cast<X86DmaOp*>(storage)->~X86DmaOp();
}

}  // namespace dmakit_capi
