/* The host backend's additions to the C API (include/dmakit/dmakit.h), for the C host test
 * (tests/host/c/): a simulated device that reads and writes memory by DMA address, through the
 * cache model that the host's dmakit_platform_op keeps of the RAM it was given.
 *
 * On the host, dmakit_platform_op_init builds a HostDmaOp over a CacheModel of the span from the
 * lowest to the highest byte of dmakit_platform_config.ram (required), reached at physical +
 * direct_map_offset: that memory must exist for the whole span, be all zero at that point (fresh
 * RAM), and start page aligned. The platform default is not coherent (the model's caches matter),
 * the line size 64 unless configured, and the cache decisions are AArch64's. */
#ifndef DMAKIT_ARCH_HOST_HOST_CAPI_H
#define DMAKIT_ARCH_HOST_HOST_CAPI_H

#include "dmakit/dmakit.h"

#ifdef __cplusplus
extern "C" {
#endif

/* What the device `dev` (of the host op `op`) reads at [dma_addr, dma_addr + len), into `dst`: a
 * non-coherent device reads memory behind the model's cache, a coherent one snoops.
 * Errors: INVALID_ARGUMENT (op or dev not live, or dev not a device of op), DMA_MASK (the range
 * goes above the device's mask), OUT_OF_RANGE (not inside the op's RAM). */
int dmakit_host_device_read(dmakit_platform_op* op, const dmakit_device* dev, uint64_t dma_addr,
                            void* dst, size_t len);
/* The device writes `src` at [dma_addr, dma_addr + len). Errors as dmakit_host_device_read. */
int dmakit_host_device_write(dmakit_platform_op* op, const dmakit_device* dev, uint64_t dma_addr,
                             const void* src, size_t len);

/* Lines dirty in the model's cache are written back, as a cache may do at any moment. */
int dmakit_host_evict_all(dmakit_platform_op* op);

#ifdef __cplusplus
} /* extern "C" */
#endif

#endif /* DMAKIT_ARCH_HOST_HOST_CAPI_H */
