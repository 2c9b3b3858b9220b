// The C API (include/dmakit/dmakit.h) over the C++ objects.
//
// Each opaque C struct is storage for a "box": a tag word followed by the C++ object, built in
// place by the init function (placement new: the library allocates nothing) and destroyed by the
// matching destroy, unmap or free. The tag says which kind of live object the storage holds, so
// that a call on storage that was never initialised, or was destroyed, or holds another kind,
// returns an error instead of running on garbage (zeroed static storage holds no tag). The tag is
// read as raw bytes, since the storage need not hold an object when it is checked.
// Architecture-specific construction of the platform's DmaOp lives in arch/<arch>/ (see
// dma/capi_platform.h).
#include "dmakit/dmakit.h"

#include "dma/capi_platform.h"
#include "dmakit/device_dma.h"
#include "dmakit/kernel_dma_op.h"
#include "dmakit/scatter_gather.h"
#include "dmakit/support/bitops.h"

namespace {

// One tag per kind of object ("pfa1", "bpl1", ...); none is 0, the state of zeroed storage.
constexpr uint32_t kPfaTag = 0x3161'6670;
constexpr uint32_t kPoolTag = 0x316c'7062;
constexpr uint32_t kOpTag = 0x3170'6f64;
constexpr uint32_t kDeviceTag = 0x3176'6564;
constexpr uint32_t kMapTag = 0x3170'616d;
constexpr uint32_t kCoherentTag = 0x3168'6f63;
constexpr uint32_t kSgTag = 0x3167'7373;

struct PfaBox {
  uint32_t tag = kPfaTag;
  PageFrameAllocator pfa;
};

struct PoolBox {
  uint32_t tag = kPoolTag;
  BouncePool pool;
};

struct OpBox {
  uint32_t tag = kOpTag;
  KernelDmaOp* op = nullptr;  // Lives in arch_storage.
  // The C translation callback, called through translate_trampoline.
  int (*translate)(void* ctx, const void* va, uint64_t* phys) = nullptr;
  void* translate_ctx = nullptr;
  // Config::ram must outlive the op: the caller's ranges, copied.
  PhysRange ram[DMAKIT_MAX_RAM_RANGES];
  // The config's grow_pools, whose PoolBoxes the op built and ends again at destroy.
  dmakit_bounce_pool* grow[DMAKIT_MAX_GROWN_POOLS] = {};
  size_t num_grow = 0;
  alignas(dmakit_capi::kArchOpAlign) unsigned char arch_storage[dmakit_capi::kArchOpBytes];
};

struct DeviceBox {
  uint32_t tag = kDeviceTag;
  DeviceDma dev;
};

struct MapBox {
  uint32_t tag = kMapTag;
  StreamingMapping mapping;
};

struct CoherentBox {
  uint32_t tag = kCoherentTag;
  DmaOp* op = nullptr;
  DmaHandle handle;
  bool noncoherent = false;  // From alloc_noncoherent: freed by dealloc_noncoherent.
};

struct SgBox {
  uint32_t tag = kSgTag;
  SgMapping sg;
};

// Sizes and alignments of the C structs are the ABI; the objects must fit with room to spare.
template <typename Box, typename C>
constexpr bool fits() {
  return sizeof(Box) <= sizeof(C) && alignof(Box) <= alignof(C);
}
static_assert(fits<PfaBox, dmakit_pfa>(), "dmakit_pfa is too small for PageFrameAllocator");
static_assert(fits<PoolBox, dmakit_bounce_pool>(), "dmakit_bounce_pool is too small");
static_assert(fits<OpBox, dmakit_platform_op>(), "dmakit_platform_op is too small");
static_assert(fits<DeviceBox, dmakit_device>(), "dmakit_device is too small for DeviceDma");
static_assert(fits<MapBox, dmakit_map_handle>(), "dmakit_map_handle is too small");
static_assert(fits<CoherentBox, dmakit_coherent>(), "dmakit_coherent is too small");
static_assert(fits<SgBox, dmakit_sg>(), "dmakit_sg is too small for SgMapping");
// Scatter-gather handle storage holds at least one DmaMapHandle per dmakit_map_handle.
static_assert(sizeof(DmaMapHandle) <= sizeof(dmakit_map_handle) &&
              alignof(DmaMapHandle) <= alignof(dmakit_map_handle));
// Segments are built in the caller's array as DmaSegment, then rewritten in place.
static_assert(sizeof(DmaSegment) == sizeof(dmakit_sg_segment) &&
              alignof(DmaSegment) <= alignof(dmakit_sg_segment));
static_assert(sizeof(SgEntry) == sizeof(dmakit_sg_entry));
// A dmakit_dma_window array is read as DmaWindow in place.
static_assert(sizeof(DmaWindow) == sizeof(dmakit_dma_window) &&
              alignof(DmaWindow) <= alignof(dmakit_dma_window));

// The C status values are the ErrorCode values.
static_assert(DMAKIT_OK == static_cast<int>(ErrorCode::kOk));
static_assert(DMAKIT_ATTR_SKIP_CPU_SYNC == kDmaAttrSkipCpuSync);
static_assert(DMAKIT_ATTR_WRITE_COMBINE == kDmaAttrWriteCombine);
static_assert(DMAKIT_ATTR_NO_KERNEL_MAPPING == kDmaAttrNoKernelMapping);
static_assert(DMAKIT_ATTR_WEAK_ORDERING == kDmaAttrWeakOrdering);
static_assert(DMAKIT_ERR_NO_MEMORY == static_cast<int>(ErrorCode::kNoMemory));
static_assert(DMAKIT_ERR_LAYOUT == static_cast<int>(ErrorCode::kLayoutError));
static_assert(DMAKIT_ERR_DMA_MASK == static_cast<int>(ErrorCode::kDmaMaskNotMatch));
static_assert(DMAKIT_ERR_INVALID_ARGUMENT == static_cast<int>(ErrorCode::kInvalidArgument));
static_assert(DMAKIT_ERR_NOT_FOUND == static_cast<int>(ErrorCode::kNotFound));
static_assert(DMAKIT_ERR_OUT_OF_RANGE == static_cast<int>(ErrorCode::kOutOfRange));
static_assert(DMAKIT_ERR_BUSY == static_cast<int>(ErrorCode::kBusy));
static_assert(DMAKIT_ERR_TIMED_OUT == static_cast<int>(ErrorCode::kTimedOut));
static_assert(DMAKIT_ERR_IO == static_cast<int>(ErrorCode::kIoError));
static_assert(DMAKIT_ERR_NOT_SUPPORTED == static_cast<int>(ErrorCode::kNotSupported));
static_assert(DMAKIT_ERR_NOT_CONTIGUOUS == static_cast<int>(ErrorCode::kNotContiguous));
constexpr int kLastStatus = DMAKIT_ERR_NOT_CONTIGUOUS;

uint32_t tag_of(const unsigned char* storage) {
  uint32_t t = 0;
  __builtin_memcpy(&t, storage, sizeof(t));
  return t;
}
void clear_tag(unsigned char* storage) {
  uint32_t zero = 0;
  __builtin_memcpy(storage, &zero, sizeof(zero));
}

// The live box in `c`, or null when c is null or holds no live object of this kind.
template <typename Box, typename C>
Box* live(C* c, uint32_t tag) {
  if (c == nullptr || tag_of(c->opaque) != tag) return nullptr;
  return reinterpret_cast<Box*>(c->opaque);
}
template <typename Box, typename C>
const Box* live(const C* c, uint32_t tag) {
  if (c == nullptr || tag_of(c->opaque) != tag) return nullptr;
  return reinterpret_cast<const Box*>(c->opaque);
}

// Ends the box's object and leaves the storage untagged.
template <typename Box, typename C>
void end(C* c, Box* b) {
  b->~Box();
  clear_tag(c->opaque);
}

int status(ErrorCode code) {
  return static_cast<int>(code);
}
template <typename R>
int status_of(const R& r) {
  return r.ok() ? DMAKIT_OK : status(r.error().code);
}

bool valid_direction(int dir) {
  return dir == DMAKIT_TO_DEVICE || dir == DMAKIT_FROM_DEVICE || dir == DMAKIT_BIDIRECTIONAL;
}
DmaDirection to_direction(int dir) {
  return static_cast<DmaDirection>(dir);
}
static_assert(static_cast<int>(DmaDirection::kToDevice) == DMAKIT_TO_DEVICE);
static_assert(static_cast<int>(DmaDirection::kFromDevice) == DMAKIT_FROM_DEVICE);
static_assert(static_cast<int>(DmaDirection::kBidirectional) == DMAKIT_BIDIRECTIONAL);

bool valid_coherence(int c) {
  return c == DMAKIT_COHERENCE_PLATFORM || c == DMAKIT_COHERENCE_COHERENT ||
         c == DMAKIT_COHERENCE_NONCOHERENT;
}

// Copies C ranges into `out` (room for `room`). False when there are more than that.
bool copy_ranges(const dmakit_phys_range* in, size_t n, PhysRange* out, size_t room) {
  if (n > room || (n > 0 && in == nullptr)) return false;
  for (size_t i = 0; i < n; ++i) out[i] = PhysRange{PhysAddr(in[i].base), in[i].size};
  return true;
}

KernelDmaOp* live_op(dmakit_platform_op* op) {
  auto* b = live<OpBox>(op, kOpTag);
  return b == nullptr ? nullptr : b->op;
}
const KernelDmaOp* live_op(const dmakit_platform_op* op) {
  const auto* b = live<OpBox>(op, kOpTag);
  return b == nullptr ? nullptr : b->op;
}

bool translate_trampoline(void* ctx, const void* va, uint64_t* phys) {
  const auto* b = static_cast<const OpBox*>(ctx);
  return b->translate(b->translate_ctx, va, phys) != 0;
}

}  // namespace

extern "C" {

const char* dmakit_strerror(int s) {
  if (s < 0 || s > kLastStatus) return "unknown error";
  return error_code_name(static_cast<ErrorCode>(s));
}

// ---- Page-frame allocator ----

size_t dmakit_pfa_metadata_size(const dmakit_phys_range* ranges, size_t n) {
  PhysRange r[DMAKIT_MAX_RAM_RANGES];
  if (!copy_ranges(ranges, n, r, DMAKIT_MAX_RAM_RANGES)) return 0;
  return PageFrameAllocator::metadata_size(support::Span<const PhysRange>(r, n));
}

int dmakit_pfa_init(dmakit_pfa* pfa, const dmakit_phys_range* ram, size_t num_ram,
                    const dmakit_phys_range* reserved, size_t num_reserved,
                    uintptr_t direct_map_offset, void* metadata, size_t metadata_bytes) {
  if (pfa == nullptr || tag_of(pfa->opaque) == kPfaTag) return DMAKIT_ERR_INVALID_ARGUMENT;
  PhysRange r[DMAKIT_MAX_RAM_RANGES];
  PhysRange res[DMAKIT_MAX_RESERVED];
  if (num_ram == 0 || !copy_ranges(ram, num_ram, r, DMAKIT_MAX_RAM_RANGES) ||
      !copy_ranges(reserved, num_reserved, res, DMAKIT_MAX_RESERVED)) {
    return DMAKIT_ERR_INVALID_ARGUMENT;
  }
  auto* b = new (pfa->opaque) PfaBox;
  Result<void> init = b->pfa.init(support::Span<const PhysRange>(r, num_ram),
                                  support::Span<const PhysRange>(res, num_reserved),
                                  direct_map_offset, metadata, metadata_bytes);
  if (!init.ok()) end(pfa, b);
  return status_of(init);
}

int dmakit_pfa_alloc(dmakit_pfa* pfa, unsigned order, uint64_t limit, uint64_t* phys) {
  auto* b = live<PfaBox>(pfa, kPfaTag);
  if (b == nullptr || phys == nullptr) return DMAKIT_ERR_INVALID_ARGUMENT;
  Result<PhysAddr> r = b->pfa.alloc(order, limit);
  if (r.ok()) *phys = r->value();
  return status_of(r);
}

int dmakit_pfa_free(dmakit_pfa* pfa, uint64_t phys, unsigned order) {
  auto* b = live<PfaBox>(pfa, kPfaTag);
  if (b == nullptr) return DMAKIT_ERR_INVALID_ARGUMENT;
  return status_of(b->pfa.free(PhysAddr(phys), order));
}

void* dmakit_pfa_phys_to_virt(const dmakit_pfa* pfa, uint64_t phys) {
  const auto* b = live<PfaBox>(pfa, kPfaTag);
  return b == nullptr ? nullptr : b->pfa.phys_to_virt(PhysAddr(phys));
}

int dmakit_pfa_stats_get(const dmakit_pfa* pfa, dmakit_pfa_stats* out) {
  const auto* b = live<PfaBox>(pfa, kPfaTag);
  if (b == nullptr || out == nullptr) return DMAKIT_ERR_INVALID_ARGUMENT;
  PageFrameAllocator::Stats st = b->pfa.stats();
  dmakit_pfa_stats s = {};
  s.managed_pages = st.managed_pages;
  s.free_pages = st.free_pages;
  s.metadata_bytes = st.metadata_bytes;
  s.num_ranges = b->pfa.num_ranges();
  s.lowest_address = b->pfa.lowest_address().value();
  s.highest_address = b->pfa.highest_address().value();
  *out = s;
  return DMAKIT_OK;
}

int dmakit_pfa_destroy(dmakit_pfa* pfa) {
  auto* b = live<PfaBox>(pfa, kPfaTag);
  if (b == nullptr) return DMAKIT_ERR_INVALID_ARGUMENT;
  b->pfa.shutdown();  // Debug builds: asserts that no page is still allocated.
  end(pfa, b);
  return DMAKIT_OK;
}

// ---- Bounce pools ----

size_t dmakit_bounce_pool_metadata_size(size_t bytes, size_t slot_size) {
  return BouncePool::metadata_size(bytes,
                                   slot_size == 0 ? BouncePool::kDefaultSlotSize : slot_size);
}

int dmakit_bounce_pool_init(dmakit_bounce_pool* pool, uint64_t phys_base, size_t bytes,
                            void* cpu_base, void* metadata, size_t metadata_bytes,
                            const dmakit_bounce_pool_options* options) {
  if (pool == nullptr || tag_of(pool->opaque) == kPoolTag) return DMAKIT_ERR_INVALID_ARGUMENT;
  BouncePool::Options o;
  if (options != nullptr) {
    if (options->slot_size != 0) o.slot_size = options->slot_size;
    o.max_mapping = options->max_mapping;
    o.name = options->name;
  }
  auto* b = new (pool->opaque) PoolBox;
  Result<void> init =
      b->pool.init(PhysAddr(phys_base), bytes, cpu_base, metadata, metadata_bytes, o);
  if (!init.ok()) end(pool, b);
  return status_of(init);
}

int dmakit_bounce_pool_enable_cpu_caches(dmakit_bounce_pool* pool, unsigned (*current_cpu)(void),
                                         unsigned num_cpus) {
  auto* b = live<PoolBox>(pool, kPoolTag);
  if (b == nullptr) return DMAKIT_ERR_INVALID_ARGUMENT;
  return status_of(b->pool.enable_cpu_caches(current_cpu, num_cpus));
}

int dmakit_bounce_pool_stats_get(const dmakit_bounce_pool* pool, dmakit_bounce_pool_stats* out) {
  const auto* b = live<PoolBox>(pool, kPoolTag);
  if (b == nullptr || out == nullptr) return DMAKIT_ERR_INVALID_ARGUMENT;
  BouncePool::Stats s = b->pool.stats();
  out->total_slots = s.total_slots;
  out->used_slots = s.used_slots;
  out->high_water_slots = s.high_water_slots;
  out->allocations = s.allocations;
  out->failures = s.failures;
  out->quota_failures = s.quota_failures;
  out->invalid_frees = s.invalid_frees;
  out->bytes_bounced = s.bytes_bounced;
  out->cached_slots = s.cached_slots;
  return DMAKIT_OK;
}

int dmakit_bounce_pool_destroy(dmakit_bounce_pool* pool) {
  auto* b = live<PoolBox>(pool, kPoolTag);
  if (b == nullptr) return DMAKIT_ERR_INVALID_ARGUMENT;
  b->pool.shutdown();  // Debug builds: asserts that no slot is still in use.
  end(pool, b);
  return DMAKIT_OK;
}

// ---- The platform's DMA operations ----

namespace {
// Ends the PoolBoxes the op built in the config's grow_pools (their memory is the allocator's
// again by then: the op's shutdown trimmed them, or they never grew).
void end_grow_pools(OpBox* b) {
  for (size_t g = 0; g < b->num_grow; ++g) {
    end(b->grow[g], live<PoolBox>(b->grow[g], kPoolTag));
  }
  b->num_grow = 0;
}
}  // namespace

int dmakit_platform_op_init(dmakit_platform_op* op, const dmakit_platform_config* cfg) {
  if (op == nullptr || cfg == nullptr || tag_of(op->opaque) == kOpTag) {
    return DMAKIT_ERR_INVALID_ARGUMENT;
  }
  auto* pfa = live<PfaBox>(cfg->pfa, kPfaTag);
  if (pfa == nullptr || cfg->num_pools > DMAKIT_MAX_POOLS || !valid_coherence(cfg->coherence) ||
      (cfg->cache_line_size != 0 && !support::is_pow2(cfg->cache_line_size))) {
    return DMAKIT_ERR_INVALID_ARGUMENT;
  }
  static_assert(DMAKIT_MAX_POOLS == KernelDmaOp::kMaxPools);
  KernelDmaOp::Config c;
  c.pfa = &pfa->pfa;
  for (size_t i = 0; i < cfg->num_pools; ++i) {
    auto* pool = live<PoolBox>(cfg->pools[i], kPoolTag);
    if (pool == nullptr) return DMAKIT_ERR_INVALID_ARGUMENT;
    c.pools[i] = &pool->pool;
  }
  c.num_pools = cfg->num_pools;
  static_assert(DMAKIT_MAX_GROWN_POOLS == KernelDmaOp::kMaxGrownPools);
  if (!KernelDmaOp::growth_limits_ok(cfg->max_grown_pools, cfg->grow_limit, cfg->grow_step)) {
    return DMAKIT_ERR_INVALID_ARGUMENT;
  }
  for (size_t g = 0; g < cfg->max_grown_pools; ++g) {
    dmakit_bounce_pool* spare = cfg->grow_pools[g];
    if (spare == nullptr || tag_of(spare->opaque) == kPoolTag) return DMAKIT_ERR_INVALID_ARGUMENT;
    for (size_t h = 0; h < g; ++h) {
      if (cfg->grow_pools[h] == spare) return DMAKIT_ERR_INVALID_ARGUMENT;
    }
  }
  c.max_grown_pools = cfg->max_grown_pools;
  c.grow_limit = cfg->grow_limit;
  c.grow_step = cfg->grow_step;
  c.direct_map_offset = cfg->direct_map_offset;
  c.platform_coherent = cfg->coherence == DMAKIT_COHERENCE_COHERENT;
  c.cache_maintenance = (cfg->cache_flags & DMAKIT_CACHE_NO_MAINTENANCE) == 0;
  if (cfg->cache_line_size != 0) c.cache_line_size = cfg->cache_line_size;
  PhysRange ram[DMAKIT_MAX_RAM_RANGES];
  if (!copy_ranges(cfg->ram, cfg->num_ram, ram, DMAKIT_MAX_RAM_RANGES)) {
    return DMAKIT_ERR_INVALID_ARGUMENT;
  }

  auto* b = new (op->opaque) OpBox;
  for (size_t i = 0; i < cfg->num_ram; ++i) b->ram[i] = ram[i];
  for (size_t g = 0; g < cfg->max_grown_pools; ++g) {
    b->grow[g] = cfg->grow_pools[g];
    c.grow_pools[g] = &(new (b->grow[g]->opaque) PoolBox)->pool;
  }
  b->num_grow = cfg->max_grown_pools;
  c.ram = cfg->num_ram > 0 ? b->ram : nullptr;
  c.num_ram = cfg->num_ram;
  if (cfg->translate != nullptr) {
    b->translate = cfg->translate;
    b->translate_ctx = cfg->translate_ctx;
    c.translate = &translate_trampoline;
    c.translate_ctx = b;
  }
  dmakit_capi::ArchOptions arch;
  arch.coherence = cfg->coherence;
  arch.cache_line_size = cfg->cache_line_size;
  arch.cache_flags = cfg->cache_flags;
  arch.page_tables = cfg->page_tables;
  Result<void> built = dmakit_capi::construct_arch_op(b->arch_storage, c, arch, &b->op);
  if (!built.ok()) {
    end_grow_pools(b);
    end(op, b);
  }
  return status_of(built);
}

int dmakit_flush(dmakit_platform_op* op, const void* va, size_t size) {
  KernelDmaOp* k = live_op(op);
  if (k == nullptr) return DMAKIT_ERR_INVALID_ARGUMENT;
  k->flush(va, size);
  return DMAKIT_OK;
}

int dmakit_invalidate(dmakit_platform_op* op, const void* va, size_t size) {
  KernelDmaOp* k = live_op(op);
  if (k == nullptr) return DMAKIT_ERR_INVALID_ARGUMENT;
  k->invalidate(va, size);
  return DMAKIT_OK;
}

int dmakit_flush_invalidate(dmakit_platform_op* op, const void* va, size_t size) {
  KernelDmaOp* k = live_op(op);
  if (k == nullptr) return DMAKIT_ERR_INVALID_ARGUMENT;
  k->flush_invalidate(va, size);
  return DMAKIT_OK;
}

size_t dmakit_cache_alignment(const dmakit_platform_op* op) {
  const KernelDmaOp* k = live_op(op);
  return k == nullptr ? 0 : k->cache_alignment();
}

int dmakit_op_stats_get(const dmakit_platform_op* op, dmakit_op_stats* out) {
  const KernelDmaOp* k = live_op(op);
  if (k == nullptr || out == nullptr) return DMAKIT_ERR_INVALID_ARGUMENT;
  if (!DMA_STATS) return DMAKIT_ERR_NOT_SUPPORTED;
  KernelDmaOp::Stats s = k->stats();
  out->maps = s.maps;
  out->direct_maps = s.direct_maps;
  out->bounced_maps = s.bounced_maps;
  out->bytes_mapped = s.bytes_mapped;
  out->bytes_bounced = s.bytes_bounced;
  out->map_errors = s.map_errors;
  out->coherent_allocs = s.coherent_allocs;
  out->coherent_live = s.coherent_live;
  out->live_maps = s.live_maps;
  out->coherent_uncached = s.coherent_uncached;
  out->coherent_uncached_live = s.coherent_uncached_live;
  out->pool_fallbacks = s.pool_fallbacks;
  out->grow_events = s.grow_events;
  out->shrink_events = s.shrink_events;
  out->grown_bytes = s.grown_bytes;
  out->grown_bytes_high_water = s.grown_bytes_high_water;
  return DMAKIT_OK;
}

int dmakit_trim_bounce_pools(dmakit_platform_op* op, size_t* freed) {
  KernelDmaOp* k = live_op(op);
  if (k == nullptr) return DMAKIT_ERR_INVALID_ARGUMENT;
  auto r = k->trim_bounce_pools();
  if (!r.ok()) return status(r.error().code);
  if (freed != nullptr) *freed = *r;
  return DMAKIT_OK;
}

int dmakit_platform_op_destroy(dmakit_platform_op* op) {
  auto* b = live<OpBox>(op, kOpTag);
  if (b == nullptr) return DMAKIT_ERR_INVALID_ARGUMENT;
  b->op->shutdown();  // The misuse checker's report of what is still mapped (DMA_API_DEBUG).
  dmakit_capi::destroy_arch_op(b->arch_storage);
  end_grow_pools(b);
  end(op, b);
  return DMAKIT_OK;
}

// ---- Devices ----

int dmakit_device_init(dmakit_device* dev, dmakit_platform_op* op,
                       const dmakit_device_config* cfg) {
  KernelDmaOp* k = live_op(op);
  if (dev == nullptr || k == nullptr || cfg == nullptr || cfg->dma_mask == 0 ||
      !valid_coherence(cfg->coherence)) {
    return DMAKIT_ERR_INVALID_ARGUMENT;
  }
  DmaConstraints c = k->default_constraints();
  c.dma_mask = cfg->dma_mask;
  c.bus_offset = cfg->bus_offset;
  c.min_align_mask = cfg->min_align_mask;
  c.bounce_quota = cfg->bounce_quota;
  if (cfg->coherence != DMAKIT_COHERENCE_PLATFORM) {
    c.coherence = dma_coherence(cfg->coherence == DMAKIT_COHERENCE_COHERENT);
  }
  c.force_bounce = cfg->force_bounce != 0;
  c.name = cfg->name;
  auto* b = new (dev->opaque) DeviceBox;
  b->dev = DeviceDma(k, c);
  return DMAKIT_OK;
}

}  // extern "C"

void* dmakit_capi::arch_storage_of(dmakit_platform_op* op) {
  auto* b = live<OpBox>(op, kOpTag);
  return b == nullptr ? nullptr : b->arch_storage;
}

const DeviceDma* dmakit_capi::device_of(const dmakit_device* dev) {
  const auto* b = live<DeviceBox>(dev, kDeviceTag);
  return b == nullptr ? nullptr : &b->dev;
}

int dmakit_device_from_cpp(dmakit_device* dev, const DeviceDma& cpp) {
  if (dev == nullptr || cpp.op() == nullptr) return DMAKIT_ERR_INVALID_ARGUMENT;
  auto* b = new (dev->opaque) DeviceBox;
  b->dev = cpp;
  return DMAKIT_OK;
}

extern "C" {

int dmakit_device_set_dma_mask(dmakit_device* dev, uint64_t dma_mask) {
  auto* b = live<DeviceBox>(dev, kDeviceTag);
  if (b == nullptr || dma_mask == 0) return DMAKIT_ERR_INVALID_ARGUMENT;
  return status_of(b->dev.set_dma_mask(dma_mask));
}

int dmakit_device_set_dma_windows(dmakit_device* dev, const dmakit_dma_window* windows, size_t n) {
  auto* b = live<DeviceBox>(dev, kDeviceTag);
  if (b == nullptr) return DMAKIT_ERR_INVALID_ARGUMENT;
  return status_of(b->dev.set_dma_windows(reinterpret_cast<const DmaWindow*>(windows), n));
}

int dmakit_device_set_coherent_mask(dmakit_device* dev, uint64_t dma_mask) {
  auto* b = live<DeviceBox>(dev, kDeviceTag);
  if (b == nullptr || dma_mask == 0) return DMAKIT_ERR_INVALID_ARGUMENT;
  return status_of(b->dev.set_coherent_mask(dma_mask));
}

int dmakit_device_set_dma_mask_and_coherent(dmakit_device* dev, uint64_t dma_mask) {
  auto* b = live<DeviceBox>(dev, kDeviceTag);
  if (b == nullptr || dma_mask == 0) return DMAKIT_ERR_INVALID_ARGUMENT;
  return status_of(b->dev.set_dma_mask_and_coherent(dma_mask));
}

uint64_t dmakit_device_coherent_mask(const dmakit_device* dev) {
  const auto* b = live<DeviceBox>(dev, kDeviceTag);
  return b == nullptr ? 0 : b->dev.coherent_mask();
}

uint64_t dmakit_device_required_mask(const dmakit_device* dev) {
  const auto* b = live<DeviceBox>(dev, kDeviceTag);
  return b == nullptr ? 0 : b->dev.required_mask();
}

int dmakit_device_addressing_limited(const dmakit_device* dev) {
  const auto* b = live<DeviceBox>(dev, kDeviceTag);
  return b != nullptr && b->dev.addressing_limited() ? 1 : 0;
}

size_t dmakit_device_opt_mapping_size(const dmakit_device* dev) {
  const auto* b = live<DeviceBox>(dev, kDeviceTag);
  return b == nullptr ? 0 : b->dev.opt_mapping_size();
}

int dmakit_device_need_sync(const dmakit_device* dev, uint64_t dma_addr) {
  const auto* b = live<DeviceBox>(dev, kDeviceTag);
  if (b == nullptr) return 1;
  return b->dev.need_sync(DmaAddr(dma_addr)) ? 1 : 0;
}

int dmakit_device_set_coherence(dmakit_device* dev, int coherence) {
  auto* b = live<DeviceBox>(dev, kDeviceTag);
  if (b == nullptr || !valid_coherence(coherence)) return DMAKIT_ERR_INVALID_ARGUMENT;
  b->dev.set_coherent(coherence == DMAKIT_COHERENCE_PLATFORM
                          ? b->dev.op()->default_constraints().coherence == DmaCoherence::kCoherent
                          : coherence == DMAKIT_COHERENCE_COHERENT);
  return DMAKIT_OK;
}

int dmakit_device_set_force_bounce(dmakit_device* dev, int force) {
  auto* b = live<DeviceBox>(dev, kDeviceTag);
  if (b == nullptr) return DMAKIT_ERR_INVALID_ARGUMENT;
  b->dev.set_force_bounce(force != 0);
  return DMAKIT_OK;
}

uint64_t dmakit_device_dma_mask(const dmakit_device* dev) {
  const auto* b = live<DeviceBox>(dev, kDeviceTag);
  return b == nullptr ? 0 : b->dev.dma_mask();
}

int dmakit_device_coherent(const dmakit_device* dev) {
  const auto* b = live<DeviceBox>(dev, kDeviceTag);
  return b != nullptr && b->dev.coherent() ? 1 : 0;
}

size_t dmakit_device_max_mapping_size(const dmakit_device* dev) {
  const auto* b = live<DeviceBox>(dev, kDeviceTag);
  return b == nullptr ? 0 : b->dev.max_mapping_size();
}

size_t dmakit_device_cache_alignment(const dmakit_device* dev) {
  const auto* b = live<DeviceBox>(dev, kDeviceTag);
  return b == nullptr ? 0 : b->dev.cache_alignment();
}

size_t dmakit_device_check_no_mappings(const dmakit_device* dev) {
  const auto* b = live<DeviceBox>(dev, kDeviceTag);
  return b == nullptr ? 0 : b->dev.check_no_mappings();
}

// ---- Streaming mappings ----

int dmakit_map(dmakit_device* dev, void* addr, size_t size, int dir, size_t align,
               dmakit_map_handle* out) {
  auto* b = live<DeviceBox>(dev, kDeviceTag);
  if (b == nullptr || out == nullptr || !valid_direction(dir)) return DMAKIT_ERR_INVALID_ARGUMENT;
  auto m = b->dev.map(addr, size, to_direction(dir), align);
  if (!m.ok()) return status(m.error().code);
  auto* h = new (out->opaque) MapBox;
  h->mapping = support::move(*m);
  return DMAKIT_OK;
}

int dmakit_map_attrs(dmakit_device* dev, void* addr, size_t size, int dir, size_t align,
                     uint32_t attrs, dmakit_map_handle* out) {
  auto* b = live<DeviceBox>(dev, kDeviceTag);
  if (b == nullptr || out == nullptr || !valid_direction(dir)) return DMAKIT_ERR_INVALID_ARGUMENT;
  auto m = b->dev.map_attrs(addr, size, to_direction(dir), attrs, align);
  if (!m.ok()) return status(m.error().code);
  auto* h = new (out->opaque) MapBox;
  h->mapping = support::move(*m);
  return DMAKIT_OK;
}

int dmakit_map_page(dmakit_device* dev, uint64_t page, size_t offset, size_t size, int dir,
                    dmakit_map_handle* out) {
  auto* b = live<DeviceBox>(dev, kDeviceTag);
  if (b == nullptr || out == nullptr || !valid_direction(dir)) return DMAKIT_ERR_INVALID_ARGUMENT;
  auto m = b->dev.map_page(PhysAddr(page), offset, size, to_direction(dir));
  if (!m.ok()) return status(m.error().code);
  auto* h = new (out->opaque) MapBox;
  h->mapping = support::move(*m);
  return DMAKIT_OK;
}

int dmakit_map_resource(dmakit_device* dev, uint64_t phys, size_t size, int dir,
                        uint64_t* dma_addr) {
  auto* b = live<DeviceBox>(dev, kDeviceTag);
  if (b == nullptr || dma_addr == nullptr || !valid_direction(dir)) {
    return DMAKIT_ERR_INVALID_ARGUMENT;
  }
  auto r = b->dev.map_resource(PhysAddr(phys), size, to_direction(dir));
  if (!r.ok()) return status(r.error().code);
  *dma_addr = r->value();
  return DMAKIT_OK;
}

int dmakit_unmap_resource(dmakit_device* dev, uint64_t dma_addr, size_t size, int dir) {
  auto* b = live<DeviceBox>(dev, kDeviceTag);
  if (b == nullptr || !valid_direction(dir)) return DMAKIT_ERR_INVALID_ARGUMENT;
  b->dev.unmap_resource(DmaAddr(dma_addr), size, to_direction(dir));
  return DMAKIT_OK;
}

uint64_t dmakit_map_dma_addr(const dmakit_map_handle* h) {
  const auto* b = live<MapBox>(h, kMapTag);
  return b == nullptr ? 0 : b->mapping.dma_addr().value();
}

size_t dmakit_map_size(const dmakit_map_handle* h) {
  const auto* b = live<MapBox>(h, kMapTag);
  return b == nullptr ? 0 : b->mapping.size();
}

int dmakit_map_bounced(const dmakit_map_handle* h) {
  const auto* b = live<MapBox>(h, kMapTag);
  return b != nullptr && b->mapping.bounced() ? 1 : 0;
}

int dmakit_unmap(dmakit_map_handle* h) {
  auto* b = live<MapBox>(h, kMapTag);
  if (b == nullptr) return DMAKIT_ERR_NOT_FOUND;
  b->mapping.unmap();
  end(h, b);
  return DMAKIT_OK;
}

int dmakit_prepare_read(dmakit_map_handle* h, size_t offset, size_t size) {
  auto* b = live<MapBox>(h, kMapTag);
  if (b == nullptr) return DMAKIT_ERR_NOT_FOUND;
  return status_of(b->mapping.sync_for_cpu(offset, size));
}

int dmakit_confirm_write(dmakit_map_handle* h, size_t offset, size_t size) {
  auto* b = live<MapBox>(h, kMapTag);
  if (b == nullptr) return DMAKIT_ERR_NOT_FOUND;
  return status_of(b->mapping.sync_for_device(offset, size));
}

// ---- Scatter-gather ----

int dmakit_sg_map(dmakit_sg* sg, dmakit_device* dev, const dmakit_sg_entry* entries,
                  size_t num_entries, int dir, const dmakit_sg_limits* limits,
                  dmakit_map_handle* handles, size_t num_handles, dmakit_sg_segment* segments,
                  size_t max_segments, size_t* num_segments) {
  auto* d = live<DeviceBox>(dev, kDeviceTag);
  if (sg == nullptr || d == nullptr || (entries == nullptr && num_entries > 0) ||
      (handles == nullptr && num_handles > 0) || (segments == nullptr && max_segments > 0) ||
      num_segments == nullptr || !valid_direction(dir)) {
    return DMAKIT_ERR_INVALID_ARGUMENT;
  }
  SgLimits l;
  if (limits != nullptr) {
    if (limits->max_segment_size != 0) l.max_segment_size = limits->max_segment_size;
    if (limits->segment_boundary_mask != 0) l.segment_boundary_mask = limits->segment_boundary_mask;
    l.align = limits->align;
  }
  // The C entries, as the C++ type (SgMapping reads them during the call only).
  if (num_entries > DMAKIT_MAX_SG_ENTRIES) return DMAKIT_ERR_OUT_OF_RANGE;
  SgEntry local[DMAKIT_MAX_SG_ENTRIES];
  for (size_t i = 0; i < num_entries; ++i) local[i] = SgEntry{entries[i].addr, entries[i].size};
  support::Span<const SgEntry> in(local, num_entries);
  // The caller's handle storage, as DmaMapHandles (at least one per dmakit_map_handle).
  size_t nh = num_handles * sizeof(dmakit_map_handle) / sizeof(DmaMapHandle);
  auto* hs = reinterpret_cast<DmaMapHandle*>(handles);
  for (size_t i = 0; i < nh; ++i) new (&hs[i]) DmaMapHandle;
  // The segments are built as DmaSegments in the caller's array, then rewritten as the C type.
  auto* segs = reinterpret_cast<DmaSegment*>(segments);
  for (size_t i = 0; i < max_segments; ++i) new (&segs[i]) DmaSegment;
  Result<SgMapping> r =
      SgMapping::map(d->dev, in, to_direction(dir), l, support::Span<DmaMapHandle>(hs, nh),
                     support::Span<DmaSegment>(segs, max_segments));
  if (!r.ok()) return status(r.error().code);
  auto* b = new (sg->opaque) SgBox;
  b->sg = support::move(*r);
  size_t n = b->sg.segments().size();
  for (size_t i = 0; i < n; ++i) {
    DmaSegment s = segs[i];
    new (&segments[i]) dmakit_sg_segment{s.addr.value(), s.size};
  }
  *num_segments = n;
  return DMAKIT_OK;
}

int dmakit_sg_prepare_read(dmakit_sg* sg) {
  auto* b = live<SgBox>(sg, kSgTag);
  if (b == nullptr) return DMAKIT_ERR_NOT_FOUND;
  return status_of(b->sg.sync_for_cpu());
}

int dmakit_sg_confirm_write(dmakit_sg* sg) {
  auto* b = live<SgBox>(sg, kSgTag);
  if (b == nullptr) return DMAKIT_ERR_NOT_FOUND;
  return status_of(b->sg.sync_for_device());
}

int dmakit_sg_unmap(dmakit_sg* sg) {
  auto* b = live<SgBox>(sg, kSgTag);
  if (b == nullptr) return DMAKIT_ERR_NOT_FOUND;
  b->sg.unmap();
  end(sg, b);
  return DMAKIT_OK;
}

// ---- Coherent memory ----

int dmakit_alloc_coherent(dmakit_device* dev, size_t size, size_t align, dmakit_coherent* out) {
  auto* d = live<DeviceBox>(dev, kDeviceTag);
  if (d == nullptr || out == nullptr) return DMAKIT_ERR_INVALID_ARGUMENT;
  DmaOp* op = d->dev.op();
  Result<DmaHandle> r = op->alloc_coherent(d->dev.coherent_constraints(), Layout{size, align});
  if (!r.ok()) return status(r.error().code);
  auto* b = new (out->opaque) CoherentBox;
  b->op = op;
  b->handle = *r;
  return DMAKIT_OK;
}

int dmakit_alloc_attrs(dmakit_device* dev, size_t size, size_t align, uint32_t attrs,
                       dmakit_coherent* out) {
  auto* d = live<DeviceBox>(dev, kDeviceTag);
  if (d == nullptr || out == nullptr) return DMAKIT_ERR_INVALID_ARGUMENT;
  DmaOp* op = d->dev.op();
  Result<DmaHandle> r = op->alloc_attrs(d->dev.coherent_constraints(), Layout{size, align}, attrs);
  if (!r.ok()) return status(r.error().code);
  auto* b = new (out->opaque) CoherentBox;
  b->op = op;
  b->handle = *r;
  return DMAKIT_OK;
}

int dmakit_alloc_noncoherent(dmakit_device* dev, size_t size, size_t align, dmakit_coherent* out) {
  auto* d = live<DeviceBox>(dev, kDeviceTag);
  if (d == nullptr || out == nullptr) return DMAKIT_ERR_INVALID_ARGUMENT;
  DmaOp* op = d->dev.op();
  Result<DmaHandle> r = op->alloc_noncoherent(d->dev.coherent_constraints(), Layout{size, align});
  if (!r.ok()) return status(r.error().code);
  auto* b = new (out->opaque) CoherentBox;
  b->op = op;
  b->handle = *r;
  b->noncoherent = true;
  return DMAKIT_OK;
}

int dmakit_noncoherent_sync_for_device(dmakit_coherent* c, size_t offset, size_t size, int dir) {
  auto* b = live<CoherentBox>(c, kCoherentTag);
  if (b == nullptr) return DMAKIT_ERR_NOT_FOUND;
  if (!valid_direction(dir)) return DMAKIT_ERR_INVALID_ARGUMENT;
  return status_of(b->op->sync_noncoherent(b->handle, offset, size, to_direction(dir),
                                           DmaSyncTarget::kForDevice));
}

int dmakit_noncoherent_sync_for_cpu(dmakit_coherent* c, size_t offset, size_t size, int dir) {
  auto* b = live<CoherentBox>(c, kCoherentTag);
  if (b == nullptr) return DMAKIT_ERR_NOT_FOUND;
  if (!valid_direction(dir)) return DMAKIT_ERR_INVALID_ARGUMENT;
  return status_of(
      b->op->sync_noncoherent(b->handle, offset, size, to_direction(dir), DmaSyncTarget::kForCpu));
}

void* dmakit_coherent_cpu_addr(const dmakit_coherent* c) {
  const auto* b = live<CoherentBox>(c, kCoherentTag);
  return b == nullptr ? nullptr : b->handle.cpu_addr;
}

uint64_t dmakit_coherent_dma_addr(const dmakit_coherent* c) {
  const auto* b = live<CoherentBox>(c, kCoherentTag);
  return b == nullptr ? 0 : b->handle.dma_addr.value();
}

size_t dmakit_coherent_size(const dmakit_coherent* c) {
  const auto* b = live<CoherentBox>(c, kCoherentTag);
  return b == nullptr ? 0 : b->handle.layout.size;
}

int dmakit_free_coherent(dmakit_coherent* c) {
  auto* b = live<CoherentBox>(c, kCoherentTag);
  if (b == nullptr) return DMAKIT_ERR_NOT_FOUND;
  if (b->noncoherent) {
    b->op->dealloc_noncoherent(b->handle);
  } else {
    b->op->dealloc_coherent(b->handle);
  }
  end(c, b);
  return DMAKIT_OK;
}

}  // extern "C"
