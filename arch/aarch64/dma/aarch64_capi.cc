// dmakit_platform_op_init on AArch64 (dma/capi_platform.h): an AArch64DmaOp. The platform default
// is not coherent (Arm SoCs declare coherent devices one by one, "dma-coherent"); a line size of
// 0 is read from CTR_EL0.
#include "dma/capi_platform.h"
#include "dmakit/arch/aarch64_dma_op.h"

namespace dmakit_capi {

static_assert(sizeof(AArch64DmaOp) <= kArchOpBytes && alignof(AArch64DmaOp) <= kArchOpAlign,
              "AArch64DmaOp outgrew dmakit_platform_op");

Result<void> construct_arch_op(void* storage, const KernelDmaOp::Config& cfg,
                               const ArchOptions& options, KernelDmaOp** out) {
  size_t line =
      options.cache_line_size != 0 ? options.cache_line_size : AArch64DmaOp::hardware_line_size();
  if (line < 16) return ErrorCode::kInvalidArgument;  // AArch64DmaOp's precondition.
  *out = new (storage) AArch64DmaOp(cfg, line, options.page_tables);
  return support::ok();
}

void destroy_arch_op(void* storage) {
  static_cast<AArch64DmaOp*>(storage)->~AArch64DmaOp();
}

}  // namespace dmakit_capi
