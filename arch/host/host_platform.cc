#include "arch/host/host_platform.h"

#include <atomic>

#include <sys/mman.h>

#include <algorithm>
#include <cstring>

#include "arch/host/model_line_ops.h"
#include "dmakit/arch/aarch64_line_ops.h"
#include "dmakit/arch/riscv64_line_ops.h"
#include "dmakit/arch/x86_64_line_ops.h"
#include "dmakit/dma_debug.h"
#include "dmakit/support/bitops.h"

static_assert(cache_range::InvalidatingLineOps<AArch64LineOps<ModelDcInsns>>);
static_assert(cache_range::InvalidatingLineOps<Riscv64LineOps<ModelCboInsns>>);
static_assert(cache_range::LineOps<X86LineOps<ModelX86Insns>> &&
              !cache_range::InvalidatingLineOps<X86LineOps<ModelX86Insns>>);

// ---- HostDmaOp ----

void HostDmaOp::maintain(cache_range::CacheOp op, const void* addr, size_t size) {
  ModelLines lines(model_, reinterpret_cast<uintptr_t>(arena_));
  const size_t line = model_->line_size();
  switch (policy_) {
    case HostCachePolicy::kAArch64: {
      AArch64LineOps<ModelDcInsns> ops(ModelDcInsns{&lines}, line);
      cache_range::maintain(ops, op, addr, size);
      break;
    }
    case HostCachePolicy::kRiscv64:
    case HostCachePolicy::kRiscv64NoInval: {
      Riscv64LineOps<ModelCboInsns> ops(ModelCboInsns{&lines}, line,
                                        policy_ == HostCachePolicy::kRiscv64);
      cache_range::maintain(ops, op, addr, size);
      break;
    }
    case HostCachePolicy::kX86: {
      // The best instructions: CLWB for a clean, CLFLUSHOPT for the rest.
      X86LineOps<ModelX86Insns> ops(ModelX86Insns{&lines}, line, X86FlushInsn::kClwb,
                                    X86InvalInsn::kClflushopt);
      cache_range::maintain(ops, op, addr, size);
      break;
    }
  }
}

void HostDmaOp::flush(const void* addr, size_t size) {
  maintain(cache_range::CacheOp::kClean, addr, size);
}

void HostDmaOp::invalidate(const void* addr, size_t size) {
  maintain(cache_range::CacheOp::kInvalidate, addr, size);
}

void HostDmaOp::flush_invalidate(const void* addr, size_t size) {
  maintain(cache_range::CacheOp::kCleanInvalidate, addr, size);
}

Result<void> HostDmaOp::set_memory_attribute(void* va, size_t bytes, MemAttr attr) {
  if (!DmaDebug::thread_context_ok("set_memory_attribute", nullptr, 0)) return ErrorCode::kBusy;
  if (!uncached_.supported) return ErrorCode::kNotSupported;
  auto p = reinterpret_cast<uintptr_t>(va);
  constexpr size_t kPage = CacheModel::kPageSize;
  if (bytes == 0 || p % kPage != 0 || bytes % kPage != 0) return ErrorCode::kLayoutError;
  auto base = reinterpret_cast<uintptr_t>(arena_);
  if (p < base || p - base > arena_size_ || bytes > arena_size_ - (p - base)) {
    return ErrorCode::kInvalidArgument;
  }
  const size_t off = p - base;
  if (attr == MemAttr::kWriteCombine && !uncached_.write_combine) return ErrorCode::kNotSupported;
  const bool uncached = attr != MemAttr::kCached;
  // The budget: regions that would newly hold an uncached page.
  if (uncached) {
    size_t fresh = 0;
    for (size_t r = off / kRegion; r <= (off + bytes - 1) / kRegion; ++r) {
      if (!region_pages_.contains(r)) ++fresh;
    }
    if (region_pages_.size() + fresh > uncached_.region_budget) return ErrorCode::kNoMemory;
  }
  for (size_t page = off; page < off + bytes; page += kPage) {
    if (model_->uncached(page) == uncached) continue;
    size_t r = page / kRegion;
    if (uncached) {
      ++region_pages_[r];
    } else if (--region_pages_[r] == 0) {
      region_pages_.erase(r);
    }
  }
  model_->set_uncached(off, bytes, uncached);
  ++attribute_changes_;
  return support::ok();
}

// ---- HostDevice ----

size_t HostDevice::offset_of(DmaAddr addr, size_t len) const {
  KASSERT(len == 0 || addr.value() + (len - 1) <= mask_, "device access above its DMA mask");
  uint64_t phys = addr.value() - bus_offset_;
  KASSERT(platform_->in_ram(phys, len), "device access outside RAM");
  return static_cast<size_t>(phys - platform_->arena_phys());
}

void HostDevice::read(DmaAddr addr, void* dst, size_t len) const {
  platform_->model().device_read(offset_of(addr, len), dst, len, coherent_);
}

void HostDevice::write(DmaAddr addr, const void* src, size_t len) {
  platform_->model().device_write(offset_of(addr, len), src, len, coherent_);
}

void HostDevice::fill(DmaAddr addr, uint8_t value, size_t len) {
  std::vector<uint8_t> bytes(len, value);
  write(addr, bytes.data(), len);
}

// ---- HostPlatform ----

HostPlatform::Options HostPlatform::default_options() {
  Options o;
  o.ram.push_back(PhysRange{PhysAddr(0x4000'0000), 64ull << 20});
  o.pools.push_back(PoolSpec{4ull << 20, 0xFFFF'FFFFull});
  return o;
}

bool HostPlatform::in_ram(uint64_t phys, size_t len) const {
  for (const PhysRange& r : opts_.ram) {
    if (phys >= r.base.value() && phys - r.base.value() <= r.size &&
        len <= r.size - (phys - r.base.value())) {
      return true;
    }
  }
  return false;
}

HostPlatform::HostPlatform(const Options& opts) : opts_(opts) {
  KASSERT(!opts_.ram.empty(), "HostPlatform needs RAM");
  std::sort(opts_.ram.begin(), opts_.ram.end(),
            [](const PhysRange& a, const PhysRange& b) { return a.base < b.base; });
  arena_phys_ = opts_.ram.front().base.value();
  arena_size_ = static_cast<size_t>(opts_.ram.back().end().value() - arena_phys_);
  // Lazily committed: holes and untouched pages cost nothing.
  void* m = mmap(nullptr, arena_size_, PROT_READ | PROT_WRITE,
                 MAP_PRIVATE | MAP_ANONYMOUS | MAP_NORESERVE, -1, 0);
  KASSERT(m != MAP_FAILED, "mmap of simulated RAM failed");
  arena_ = static_cast<uint8_t*>(m);
  arena_mapping_.base = m;
  arena_mapping_.size = arena_size_;
  direct_map_offset_ = reinterpret_cast<uintptr_t>(arena_) - arena_phys_;
  model_ = std::make_unique<CacheModel>(
      arena_, arena_size_, opts_.line_size,
      opts_.track_cpu_stores ? CacheModel::Tracking::kStores : CacheModel::Tracking::kValues);

  // Carve each bounce pool from the highest RAM under its limit that is free of reservations.
  std::vector<PhysRange> reserved = opts_.reserved;
  std::vector<PhysRange> pool_ranges;
  for (const PoolSpec& spec : opts_.pools) {
    bool placed = false;
    for (auto it = opts_.ram.rbegin(); it != opts_.ram.rend() && !placed; ++it) {
      uint64_t top = std::min<uint64_t>(it->end().value(), spec.limit + 1);
      top = support::align_down(top, 1u << 22);
      while (top >= it->base.value() + spec.bytes && !placed) {
        uint64_t base = top - spec.bytes;
        bool clash = false;
        for (const PhysRange& r : reserved) {
          if (base < r.end().value() && r.base.value() < top) clash = true;
        }
        if (!clash) {
          pool_ranges.push_back(PhysRange{PhysAddr(base), spec.bytes});
          reserved.push_back(PhysRange{PhysAddr(base), spec.bytes});
          placed = true;
        } else {
          top -= 1u << 22;
        }
      }
    }
    KASSERT(placed, "no room for a bounce pool under its limit");
  }

  pfa_meta_.resize(PageFrameAllocator::metadata_size(
      support::Span<const PhysRange>(opts_.ram.data(), opts_.ram.size())));
  auto r = pfa_.init(support::Span<const PhysRange>(opts_.ram.data(), opts_.ram.size()),
                     support::Span<const PhysRange>(reserved.data(), reserved.size()),
                     direct_map_offset_, pfa_meta_.data(), pfa_meta_.size());
  KASSERT(r.ok(), "page-frame allocator init failed");

  KernelDmaOp::Config cfg;
  cfg.pfa = &pfa_;
  cfg.direct_map_offset = direct_map_offset_;
  cfg.ram = opts_.ram.data();
  cfg.num_ram = opts_.ram.size();
  cfg.platform_coherent = opts_.platform_coherent;
  cfg.cache_line_size = opts_.line_size;
  cfg.cache_maintenance = opts_.cache_maintenance;
  for (size_t i = 0; i < pool_ranges.size(); ++i) {
    const PoolSpec& spec = opts_.pools[i];
    auto pool = std::make_unique<BouncePool>();
    pool_meta_.emplace_back(BouncePool::metadata_size(spec.bytes, spec.slot_size));
    auto pr = pool->init(pool_ranges[i].base, spec.bytes, phys_to_virt(pool_ranges[i].base.value()),
                         pool_meta_.back().data(), pool_meta_.back().size(), spec.slot_size);
    KASSERT(pr.ok(), "bounce pool init failed");
    if (opts_.cpu_caches != 0) {
      auto cr = pool->enable_cpu_caches(&HostPlatform::host_current_cpu, opts_.cpu_caches);
      KASSERT(cr.ok(), "bounce pool CPU caches");
    }
    cfg.pools[cfg.num_pools++] = pool.get();
    pools_.push_back(std::move(pool));
  }
  for (size_t g = 0; g < opts_.grown_pools; ++g) {
    grown_pools_.push_back(std::make_unique<BouncePool>());
    if (g < KernelDmaOp::kMaxGrownPools) cfg.grow_pools[g] = grown_pools_.back().get();
  }
  cfg.max_grown_pools = opts_.grown_pools;
  cfg.grow_limit = opts_.grow_limit;
  cfg.grow_step = opts_.grow_step;
  op_ = std::make_unique<HostDmaOp>(cfg, model_.get(), arena_, arena_size_, opts_.uncached,
                                    opts_.cache_policy);
}

unsigned HostPlatform::host_current_cpu() {
  static std::atomic<unsigned> next{0};
  thread_local unsigned id = next.fetch_add(1, std::memory_order_relaxed);
  return id;
}

HostPlatform::~HostPlatform() {
  for (Held& h : held_) {
    for (auto& b : h.blocks) (void)pfa_.free(PhysAddr(b.first), b.second);
  }
  // The library's objects have trivial destructors; their end-of-life checks (the misuse
  // checker's leak report, the allocators' debug "everything given back") run here, in the order
  // the members are destroyed.
  if (op_ != nullptr) op_->shutdown();  // Gives the grown pools back (trim_bounce_pools).
  for (auto& p : pools_) p->shutdown();
  pfa_.shutdown();
}

HostPlatform::ArenaMapping::~ArenaMapping() {
  if (base != nullptr) munmap(base, size);
}

uint8_t* HostPlatform::buffer_above(uint64_t min_phys, size_t bytes) {
  unsigned order = PageFrameAllocator::order_for(bytes);
  KASSERT(order <= PageFrameAllocator::kMaxOrder, "buffer too large");
  Held h{};
  // Allocations come from the highest memory first; take blocks until one lies high enough,
  // holding the rejected ones so they are not handed out again, then give those back.
  std::vector<std::pair<uint64_t, unsigned>> rejected;
  while (true) {
    auto pa = pfa_.alloc(order);
    KASSERT(pa.ok(), "no memory above the requested address");
    if (pa->value() >= min_phys) {
      h.ptr = phys_to_virt(pa->value());
      h.blocks.emplace_back(pa->value(), order);
      break;
    }
    rejected.emplace_back(pa->value(), order);
  }
  for (auto& b : rejected) (void)pfa_.free(PhysAddr(b.first), b.second);
  held_.push_back(std::move(h));
  return held_.back().ptr;
}

void HostPlatform::release_buffer(const uint8_t* p) {
  for (auto it = held_.begin(); it != held_.end(); ++it) {
    if (it->ptr == p) {
      for (auto& b : it->blocks) {
        auto r = pfa_.free(PhysAddr(b.first), b.second);
        KASSERT(r.ok(), "release_buffer: free failed");
      }
      held_.erase(it);
      return;
    }
  }
  KASSERT(false, "release_buffer of an unknown buffer");
}
