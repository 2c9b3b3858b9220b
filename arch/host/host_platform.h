// HostPlatform: a simulated machine for the host tests and benchmarks. It owns a block of host
// memory standing for physical RAM (with holes between ranges if asked), a CacheModel over it,
// a PageFrameAllocator and bounce pools carved from it, and a HostDmaOp: the KernelDmaOp subclass
// whose cache maintenance drives the model. A HostDevice does DMA against the model by DMA
// address, the way a real device would.
#pragma once

#include <cstddef>
#include <cstdint>
#include <memory>
#include <unordered_map>
#include <vector>

#include "arch/host/cache_model.h"
#include "dmakit/arch/cache_range.h"
#include "dmakit/kernel_dma_op.h"

// Whose cache-maintenance decisions HostDmaOp runs: each is that architecture's own line ops
// (arch/<arch>/<arch>_line_ops.h) over the shared walk (include/dmakit/arch/cache_range.h), with
// the instructions acting on the cache model (arch/host/model_line_ops.h).
enum class HostCachePolicy : uint8_t {
  kAArch64,         // dc cvac / ivac (whole lines) / civac (partial lines), dsb sy.
  kRiscv64,         // cbo.clean / cbo.inval (whole blocks) / cbo.flush (partial), fences.
  kRiscv64NoInval,  // As firmware without menvcfg.CBIE leaves it: cbo.flush for every invalidate.
  kX86,             // clwb / clflushopt, fenced; no invalidate-only instruction.
};

class HostDmaOp final : public KernelDmaOp {
 public:
  // How the simulated machine maps memory uncached (set_memory_attribute).
  struct UncachedOptions {
    // False: a platform that cannot (set_memory_attribute fails with kNotSupported).
    bool supported = true;
    // The page-table pool of a real port, in the terms that bound it: how many distinct 2 MiB
    // regions may hold uncached pages at once (a real port spends one split table per region,
    // mm/direct_map_attributes.h). One more is kNoMemory, with nothing changed.
    size_t region_budget = 64;
    // False: a platform without a write-combining encoding (kWriteCombine is kNotSupported, as on
    // x86-64); true: write-combining pages are modelled as uncached (AArch64, RISC-V).
    bool write_combine = true;
  };

  HostDmaOp(const Config& cfg, CacheModel* model, uint8_t* arena, size_t arena_size,
            const UncachedOptions& uncached, HostCachePolicy policy = HostCachePolicy::kAArch64)
      : KernelDmaOp(cfg),
        model_(model),
        arena_(arena),
        arena_size_(arena_size),
        uncached_(uncached),
        policy_(policy) {}
  // The misuse checker's end-of-life report (KernelDmaOp::shutdown; idempotent), since tests
  // build and destroy many of these at reused addresses.
  ~HostDmaOp() { shutdown(); }

  // The three run the chosen architecture's decisions (HostCachePolicy) on the cache model:
  // flush cleans every line overlapping the range; invalidate invalidates the lines wholly inside
  // and cleans+invalidates a partial first or last line (or every line, where the architecture
  // has no usable invalidate-only instruction); flush_invalidate cleans and invalidates every
  // line overlapping the range. Any alignment, size may be 0. The range must lie in simulated
  // RAM (the model asserts it). Thread-safe (the model's lock).
  void flush(const void* addr, size_t size) override;
  void invalidate(const void* addr, size_t size) override;
  void flush_invalidate(const void* addr, size_t size) override;
  HostCachePolicy policy() const { return policy_; }
  // Marks the pages uncached (or cached again) in the cache model; see KernelDmaOp for the
  // contract and CacheModel for what it does to the cache's contents. Errors as KernelDmaOp's:
  // kNotSupported (UncachedOptions::supported false), kLayoutError (misaligned), kInvalidArgument
  // (outside simulated RAM), kNoMemory (over the region budget); nothing changed on error.
  Result<void> set_memory_attribute(void* va, size_t bytes, MemAttr attr) override;

  // 2 MiB regions holding uncached pages now (what a real port's split tables would cover).
  size_t uncached_regions() const { return region_pages_.size(); }
  uint64_t attribute_changes() const { return attribute_changes_; }

 private:
  static constexpr uint64_t kRegion = 2ull << 20;
  void maintain(cache_range::CacheOp op, const void* addr, size_t size);
  CacheModel* model_;
  uint8_t* arena_;
  size_t arena_size_;
  UncachedOptions uncached_;
  HostCachePolicy policy_;
  std::unordered_map<size_t, size_t> region_pages_;  // 2 MiB region index -> uncached pages.
  uint64_t attribute_changes_ = 0;
};

class HostPlatform;

// A simulated bus-master device: reads and writes memory by DMA address, within its mask.
class HostDevice {
 public:
  HostDevice(HostPlatform* platform, uint64_t dma_mask, bool coherent, uint64_t bus_offset = 0)
      : platform_(platform), mask_(dma_mask), coherent_(coherent), bus_offset_(bus_offset) {}
  // Both abort the test (KASSERT) if the device would touch an address above its mask or outside
  // RAM: a real device would corrupt memory there.
  void read(DmaAddr addr, void* dst, size_t len) const;
  void write(DmaAddr addr, const void* src, size_t len);
  // Fills [addr, addr+len) with a byte value.
  void fill(DmaAddr addr, uint8_t value, size_t len);
  bool coherent() const { return coherent_; }

 private:
  size_t offset_of(DmaAddr addr, size_t len) const;
  HostPlatform* platform_;
  uint64_t mask_;
  bool coherent_;
  uint64_t bus_offset_;
};

class HostPlatform {
 public:
  struct PoolSpec {
    size_t bytes;    // Pool size.
    uint64_t limit;  // Highest physical address the pool may touch.
    size_t slot_size = BouncePool::kDefaultSlotSize;
  };
  struct Options {
    std::vector<PhysRange> ram;       // Physical RAM ranges (page aligned), holes allowed.
    std::vector<PhysRange> reserved;  // Pieces never given to the allocator.
    std::vector<PoolSpec> pools;      // Carved from the top of RAM under each limit.
    size_t line_size = 64;
    // Track the CPU's stores to simulated RAM (CacheModel::Tracking::kStores): a store dirties its
    // line even if it changes nothing. False: dirtiness by value comparison alone.
    bool track_cpu_stores = true;
    // Whose cache-maintenance decisions the platform's DmaOp runs.
    HostCachePolicy cache_policy = HostCachePolicy::kAArch64;
    bool platform_coherent = false;
    // False: a platform without cache-maintenance instructions (KernelDmaOp::Config).
    bool cache_maintenance = true;
    HostDmaOp::UncachedOptions uncached;
    // Per-CPU bounce-slot caches (BouncePool::enable_cpu_caches) for this many CPUs, each host
    // thread standing for one CPU (the first thread to use a pool is CPU 0, and so on); 0: off.
    unsigned cpu_caches = 0;
    // Bounce-pool growth (KernelDmaOp::Config::max_grown_pools, grow_limit, grow_step): this many
    // spare pool objects, owned by the platform; 0: no growth.
    size_t grown_pools = 0;
    uint64_t grow_limit = 0;
    uint64_t grow_step = 0;
  };

  // The CPU index host_current_cpu gives the calling thread: 0, 1, ... in the order threads
  // first ask.
  static unsigned host_current_cpu();

  // Default: 64 MiB of RAM at 0x4000'0000, one 4 MiB bounce pool below 4 GiB.
  static Options default_options();
  explicit HostPlatform(const Options& opts);
  ~HostPlatform();
  HostPlatform(const HostPlatform&) = delete;
  HostPlatform& operator=(const HostPlatform&) = delete;

  HostDmaOp& op() { return *op_; }
  PageFrameAllocator& pfa() { return pfa_; }
  BouncePool& pool(size_t i) { return *pools_[i]; }
  size_t num_pools() const { return pools_.size(); }
  // The spare pool objects growth sets up (Options::grown_pools).
  BouncePool& grown_pool(size_t i) { return *grown_pools_[i]; }
  CacheModel& model() { return *model_; }
  uintptr_t direct_map_offset() const { return direct_map_offset_; }
  // CPU pointer for a physical address inside RAM.
  uint8_t* phys_to_virt(uint64_t phys) const {
    return reinterpret_cast<uint8_t*>(phys + direct_map_offset_);
  }
  uint64_t arena_phys() const { return arena_phys_; }
  size_t arena_size() const { return arena_size_; }
  bool in_ram(uint64_t phys, size_t len) const;

  // A buffer of `bytes` bytes in simulated RAM at or above `min_phys` (for tests that need a
  // buffer above a mask): a page-frame allocation, freed by release_buffer.
  uint8_t* buffer_above(uint64_t min_phys, size_t bytes);
  void release_buffer(const uint8_t* p);

 private:
  // Unmaps simulated RAM last, after every object that may still touch it is gone.
  struct ArenaMapping {
    void* base = nullptr;
    size_t size = 0;
    ~ArenaMapping();
  };
  ArenaMapping arena_mapping_;
  Options opts_;
  uint64_t arena_phys_ = 0;
  size_t arena_size_ = 0;
  uint8_t* arena_ = nullptr;
  uintptr_t direct_map_offset_ = 0;
  std::unique_ptr<CacheModel> model_;
  std::vector<uint8_t> pfa_meta_;
  PageFrameAllocator pfa_;
  std::vector<std::vector<uint8_t>> pool_meta_;  // Before pools_: outlives them.
  std::vector<std::unique_ptr<BouncePool>> pools_;
  std::vector<std::unique_ptr<BouncePool>> grown_pools_;  // Options::grown_pools spare objects.
  std::unique_ptr<HostDmaOp> op_;
  struct Held {
    uint8_t* ptr;
    std::vector<std::pair<uint64_t, unsigned>> blocks;  // Taken to push allocations upward.
  };
  std::vector<Held> held_;
};
