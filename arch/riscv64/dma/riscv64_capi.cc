// dmakit_platform_op_init on RISC-V 64 (dma/capi_platform.h): a Riscv64DmaOp with the cache
// operations the kernel declares (DMAKIT_CACHE_RISCV_*). Without Zicbom and Svpbmt the op treats
// the platform as coherent whatever the configuration says (Riscv64DmaOp's rule); with both, the
// default is not coherent.
#include "dma/capi_platform.h"
#include "dmakit/arch/riscv64_dma_op.h"

namespace dmakit_capi {

static_assert(sizeof(Riscv64DmaOp) <= kArchOpBytes && alignof(Riscv64DmaOp) <= kArchOpAlign,
              "Riscv64DmaOp outgrew dmakit_platform_op");

Result<void> construct_arch_op(void* storage, const KernelDmaOp::Config& cfg,
                               const ArchOptions& options, KernelDmaOp** out) {
  Riscv64DmaOp::CacheOps ops;
  ops.zicbom = (options.cache_flags & DMAKIT_CACHE_RISCV_ZICBOM) != 0;
  ops.inval_usable = ops.zicbom && (options.cache_flags & DMAKIT_CACHE_RISCV_CBO_INVAL) != 0;
  ops.svpbmt = (options.cache_flags & DMAKIT_CACHE_RISCV_SVPBMT) != 0;
  if (options.cache_line_size != 0) {
    // Riscv64DmaOp's precondition; the block size field is 32 bits.
    if (options.cache_line_size < 16 || options.cache_line_size > 4096) {
      return ErrorCode::kInvalidArgument;
    }
    ops.block_size = static_cast<uint32_t>(options.cache_line_size);
  }
  *out = new (storage) Riscv64DmaOp(cfg, ops, options.page_tables);
  return support::ok();
}

void destroy_arch_op(void* storage) {
  static_cast<Riscv64DmaOp*>(storage)->~Riscv64DmaOp();
}

}  // namespace dmakit_capi
