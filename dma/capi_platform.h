// What the C API (dma/capi.cc) needs from the architecture: building that architecture's DmaOp
// for dmakit_platform_op_init. One definition per architecture (arch/<arch>/dma/<arch>_capi.cc,
// arch/host/host_capi.cc for the host backend), so that dma/ names no architecture.
#pragma once

#include "dmakit/device_dma.h"
#include "dmakit/dmakit.h"
#include "dmakit/kernel_dma_op.h"

namespace dmakit_capi {

// Room and alignment for the architecture's DmaOp (and whatever it needs beside it) inside a
// dmakit_platform_op; each architecture's file checks its objects against them.
inline constexpr size_t kArchOpBytes = 3072;
inline constexpr size_t kArchOpAlign = 16;

// The part of dmakit_platform_config that only the architecture interprets.
struct ArchOptions {
  int coherence = DMAKIT_COHERENCE_PLATFORM;        // dmakit_coherence, already checked.
  size_t cache_line_size = 0;                       // 0 or a power of two, already checked.
  uint32_t cache_flags = 0;                         // DMAKIT_CACHE_*.
  const dmakit_page_tables* page_tables = nullptr;  // Copied by the DmaOp; may be null.
};

// Builds the architecture's DmaOp over `cfg` in `storage` (kArchOpBytes bytes aligned to
// kArchOpAlign) and stores it in *out. cfg.platform_coherent and cfg.cache_maintenance are
// already set from the options' generic parts (DMAKIT_COHERENCE_COHERENT / _NONCOHERENT,
// DMAKIT_CACHE_NO_MAINTENANCE); the architecture applies its default for
// DMAKIT_COHERENCE_PLATFORM and its own flags. Boot context.
// Errors: kInvalidArgument (options this architecture cannot take); on error nothing is built.
Result<void> construct_arch_op(void* storage, const KernelDmaOp::Config& cfg,
                               const ArchOptions& options, KernelDmaOp** out);

// Destroys what construct_arch_op built in `storage`.
void destroy_arch_op(void* storage);

// For a backend's own C functions beside the API (the host backend's simulated device, see
// arch/host/host_capi.h): the storage construct_arch_op built in, and the device of a live
// dmakit_device; null when the object is not live. Defined in dma/capi.cc.
void* arch_storage_of(dmakit_platform_op* op);
const DeviceDma* device_of(const dmakit_device* dev);

}  // namespace dmakit_capi
