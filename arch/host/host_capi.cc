// dmakit_platform_op_init on the host (dma/capi_platform.h): a HostDmaOp and the CacheModel it
// drives, side by side in the op's storage; and the simulated device of arch/host/host_capi.h.
#include "arch/host/host_capi.h"

#include "arch/host/host_platform.h"
#include "dma/capi_platform.h"

namespace dmakit_capi {
namespace {

struct HostOp {
  // The model first: the op uses it until its own destruction.
  CacheModel model;
  HostDmaOp op;
  uint64_t ram_lo;     // Physical address of the model's first byte.
  uint64_t ram_bytes;  // Bytes the model covers.

  HostOp(uint8_t* arena, size_t size, size_t line, const KernelDmaOp::Config& cfg, uint64_t lo)
      : model(arena, size, line, CacheModel::Tracking::kValues),
        op(cfg, &model, arena, size, HostDmaOp::UncachedOptions{}, HostCachePolicy::kAArch64),
        ram_lo(lo),
        ram_bytes(size) {}
};

static_assert(sizeof(HostOp) <= kArchOpBytes && alignof(HostOp) <= kArchOpAlign,
              "HostDmaOp and its cache model outgrew dmakit_platform_op");

}  // namespace

Result<void> construct_arch_op(void* storage, const KernelDmaOp::Config& cfg,
                               const ArchOptions& options, KernelDmaOp** out) {
  // The model covers the RAM the kernel named: there must be some.
  if (cfg.num_ram == 0) return ErrorCode::kInvalidArgument;
  uint64_t lo = ~0ull;
  uint64_t hi = 0;
  for (size_t i = 0; i < cfg.num_ram; ++i) {
    const PhysRange& r = cfg.ram[i];
    if (r.size == 0 || r.base.value() + r.size < r.base.value()) {
      return ErrorCode::kInvalidArgument;
    }
    if (r.base.value() < lo) lo = r.base.value();
    if (r.end().value() > hi) hi = r.end().value();
  }
  // NOLINTNEXTLINE(performance-no-int-to-ptr): the direct map is an address computation.
  auto* arena = reinterpret_cast<uint8_t*>(static_cast<uintptr_t>(lo) + cfg.direct_map_offset);
  if (reinterpret_cast<uintptr_t>(arena) % CacheModel::kPageSize != 0) {
    return ErrorCode::kInvalidArgument;
  }
  size_t line = options.cache_line_size != 0 ? options.cache_line_size : 64;
  KernelDmaOp::Config c = cfg;
  c.cache_line_size = line;
  auto* h = new (storage) HostOp(arena, static_cast<size_t>(hi - lo), line, c, lo);
  *out = &h->op;
  return support::ok();
}

void destroy_arch_op(void* storage) {
  static_cast<HostOp*>(storage)->~HostOp();
}

namespace {

// The model offset of a device access, after the checks a real bus would make.
Result<size_t> device_offset(dmakit_platform_op* op, const dmakit_device* dev, uint64_t dma_addr,
                             size_t len, HostOp** host, bool* coherent) {
  auto* h = static_cast<HostOp*>(arch_storage_of(op));
  const DeviceDma* d = device_of(dev);
  if (h == nullptr || d == nullptr || d->op() != &h->op) return ErrorCode::kInvalidArgument;
  const DmaConstraints& c = d->constraints();
  if (len == 0 || dma_addr > c.dma_mask || len - 1 > c.dma_mask - dma_addr) {
    return ErrorCode::kDmaMaskNotMatch;
  }
  uint64_t off = dma_addr - c.bus_offset - h->ram_lo;
  if (off > h->ram_bytes || len > h->ram_bytes - off) return ErrorCode::kOutOfRange;
  *host = h;
  *coherent = d->coherent();
  return static_cast<size_t>(off);
}

int status_of(const Result<size_t>& r) {
  return r.ok() ? DMAKIT_OK : static_cast<int>(r.error().code);
}

}  // namespace
}  // namespace dmakit_capi

extern "C" {

int dmakit_host_device_read(dmakit_platform_op* op, const dmakit_device* dev, uint64_t dma_addr,
                            void* dst, size_t len) {
  dmakit_capi::HostOp* h = nullptr;
  bool coherent = false;
  auto off = dmakit_capi::device_offset(op, dev, dma_addr, len, &h, &coherent);
  if (off.ok()) h->model.device_read(*off, dst, len, coherent);
  return dmakit_capi::status_of(off);
}

int dmakit_host_device_write(dmakit_platform_op* op, const dmakit_device* dev, uint64_t dma_addr,
                             const void* src, size_t len) {
  dmakit_capi::HostOp* h = nullptr;
  bool coherent = false;
  auto off = dmakit_capi::device_offset(op, dev, dma_addr, len, &h, &coherent);
  if (off.ok()) h->model.device_write(*off, src, len, coherent);
  return dmakit_capi::status_of(off);
}

int dmakit_host_evict_all(dmakit_platform_op* op) {
  auto* h = static_cast<dmakit_capi::HostOp*>(dmakit_capi::arch_storage_of(op));
  if (h == nullptr) return DMAKIT_ERR_INVALID_ARGUMENT;
  h->model.evict_all();
  return DMAKIT_OK;
}

}  // extern "C"
