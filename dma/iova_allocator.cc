// IovaAllocator: the scheme and costs are in include/dmakit/iova_allocator.h.
#include "dmakit/iova_allocator.h"

#include "dmakit/kernel_hooks.h"
#include "dmakit/support/assert.h"
#include "dmakit/support/bitops.h"
#include "dmakit/support/mem.h"
#include "dmakit/support/utility.h"

Result<void> IovaAllocator::init(const Config& cfg) {
  if (pfa_ != nullptr || cfg.pfa == nullptr || cfg.base >= cfg.end ||
      !support::is_aligned(cfg.base | cfg.end, kPageSize) || cfg.num_cpus > kMaxCpus ||
      (cfg.num_reserved > 0 && cfg.reserved == nullptr)) {
    return ErrorCode::kInvalidArgument;
  }
  const dmakit_kernel_hooks& hooks = dma::kernel_hooks();
  unsigned cpus = cfg.num_cpus;
  if (cpus == 0) cpus = hooks.cpu_id == nullptr || hooks.max_cpus == 0 ? 1 : hooks.max_cpus;
  if (cpus > kMaxCpus) cpus = kMaxCpus;

  PhysRange window{PhysAddr(cfg.base), cfg.end - cfg.base};
  size_t meta_bytes = PageFrameAllocator::metadata_size(support::Span<const PhysRange>(&window, 1));
  unsigned meta_order = PageFrameAllocator::order_for(meta_bytes);
  if (meta_order > PageFrameAllocator::kMaxOrder) return ErrorCode::kInvalidArgument;

  size_t num_caches = size_t{cpus} * kCacheOrders;
  size_t num_mags = (num_caches * 2) + (size_t{kCacheOrders} * kDepotSize);
  size_t caches_bytes = num_caches * sizeof(CpuCache);
  size_t depots_bytes = kCacheOrders * sizeof(Depot);
  size_t cache_bytes = caches_bytes + depots_bytes + (num_mags * sizeof(Magazine));
  unsigned cache_order = PageFrameAllocator::order_for(cache_bytes);

  // Reserved pieces, as physical ranges for the buddy layer (which rounds them outward).
  constexpr size_t kMaxReserved = 16;
  if (cfg.num_reserved > kMaxReserved) return ErrorCode::kInvalidArgument;
  PhysRange reserved[kMaxReserved];
  for (size_t i = 0; i < cfg.num_reserved; ++i) {
    reserved[i] = PhysRange{PhysAddr(cfg.reserved[i].base), cfg.reserved[i].size};
  }

  TRY_ASSIGN(PhysAddr meta, cfg.pfa->alloc(meta_order));
  auto cache = cfg.pfa->alloc(cache_order);
  if (!cache.ok()) {
    KASSERT(cfg.pfa->free(meta, meta_order).ok(), "IovaAllocator: metadata not freed");
    return cache.error();
  }
  // The buddy layer never touches the pages it manages: they are I/O addresses, not memory.
  space_.set_poisoning(false);
  auto r = space_.init(support::Span<const PhysRange>(&window, 1),
                       support::Span<const PhysRange>(reserved, cfg.num_reserved), 0,
                       cfg.pfa->phys_to_virt(meta), PageFrameAllocator::kPageSize << meta_order);
  if (!r.ok()) {
    KASSERT(cfg.pfa->free(meta, meta_order).ok(), "IovaAllocator: metadata not freed");
    KASSERT(cfg.pfa->free(*cache, cache_order).ok(), "IovaAllocator: caches not freed");
    return r.error();
  }

  auto* p = static_cast<uint8_t*>(cfg.pfa->phys_to_virt(*cache));
  support::fill_bytes(p, 0, cache_bytes);
  caches_ = reinterpret_cast<CpuCache*>(p);
  depots_ = reinterpret_cast<Depot*>(p + caches_bytes);
  auto* mags = reinterpret_cast<Magazine*>(p + caches_bytes + depots_bytes);
  size_t next_mag = 0;
  for (size_t i = 0; i < num_caches; ++i) {
    CpuCache* c = new (&caches_[i]) CpuCache();
    support::Guard guard{&c->lock};
    c->loaded = &mags[next_mag++];
    c->prev = &mags[next_mag++];
    c->loaded->count = 0;
    c->prev->count = 0;
  }
  for (unsigned o = 0; o < kCacheOrders; ++o) {
    Depot* d = new (&depots_[o]) Depot();
    support::Guard guard{&d->lock};
    d->num_full = 0;
    d->num_empty = kDepotSize;
    for (unsigned i = 0; i < kDepotSize; ++i) {
      d->empty[i] = &mags[next_mag++];
      d->empty[i]->count = 0;
      d->full[i] = nullptr;
    }
  }
  pfa_ = cfg.pfa;
  base_ = cfg.base;
  end_ = cfg.end;
  window_pages_ = (cfg.end - cfg.base) / kPageSize;
  meta_pa_ = meta.value();
  meta_order_ = meta_order;
  cache_pa_ = cache->value();
  cache_order_ = cache_order;
  num_cpus_ = cpus;
  buddy_pages_ = 0;
  return support::ok();
}

Result<void> IovaAllocator::destroy() {
  if (pfa_ == nullptr) return support::ok();
  flush_caches();
  if (allocated_pages() != 0) return ErrorCode::kBusy;
  space_.shutdown();
  KASSERT(pfa_->free(PhysAddr(meta_pa_), meta_order_).ok(), "IovaAllocator: metadata not freed");
  KASSERT(pfa_->free(PhysAddr(cache_pa_), cache_order_).ok(), "IovaAllocator: caches not freed");
  pfa_ = nullptr;
  caches_ = nullptr;
  depots_ = nullptr;
  return support::ok();
}

bool IovaAllocator::pop_under(Magazine* m, uint64_t limit, uint64_t size, uint64_t* iova) {
  // Most recently freed first; a range above the limit (another device of the domain with a
  // larger mask freed it) is skipped, and the last entry takes its place.
  for (uint32_t i = m->count; i > 0; --i) {
    uint64_t a = m->iova[i - 1];
    if (a + (size - 1) <= limit) {
      m->iova[i - 1] = m->iova[m->count - 1];
      --m->count;
      *iova = a;
      return true;
    }
  }
  return false;
}

bool IovaAllocator::cache_alloc_locked(CpuCache* c, unsigned order, uint64_t limit,
                                       uint64_t* iova) {
  uint64_t size = kPageSize << order;
  if (pop_under(c->loaded, limit, size, iova)) return true;
  if (pop_under(c->prev, limit, size, iova)) {
    support::swap(c->loaded, c->prev);
    return true;
  }
  // Both magazines hold nothing usable: trade an empty one for a full one of the depot.
  Depot* d = &depots_[order];
  Magazine* full = nullptr;
  {
    support::Guard dguard{&d->lock};
    if (d->num_full == 0 || c->loaded->count != 0) return false;
    full = d->full[--d->num_full];
    d->empty[d->num_empty++] = c->loaded;
  }
  c->loaded = full;
  return pop_under(c->loaded, limit, size, iova);
}

void IovaAllocator::cache_free_locked(CpuCache* c, unsigned order, uint64_t iova) {
  if (c->prev->count < kMagazineSize) {
    support::swap(c->loaded, c->prev);
  } else {
    // Both full: the previous one goes to the depot in exchange for an empty one, or back to
    // the buddy layer when the depot is full.
    Depot* d = &depots_[order];
    Magazine* empty = nullptr;
    {
      support::Guard dguard{&d->lock};
      if (d->num_empty > 0) {
        empty = d->empty[--d->num_empty];
        d->full[d->num_full++] = c->prev;
      }
    }
    if (empty != nullptr) {
      c->prev = empty;
    } else {
      drain(c->prev, order);
    }
    support::swap(c->loaded, c->prev);
  }
  c->loaded->iova[c->loaded->count++] = iova;
}

void IovaAllocator::drain(Magazine* m, unsigned order) {
  for (uint32_t i = 0; i < m->count; ++i) {
    KASSERT(space_.free(PhysAddr(m->iova[i]), order).ok(), "IovaAllocator: cached range bad");
  }
  __atomic_fetch_sub(&buddy_pages_, uint64_t{m->count} << order, __ATOMIC_RELAXED);
  m->count = 0;
}

Result<uint64_t> IovaAllocator::buddy_alloc(unsigned order, uint64_t limit) {
  auto a = space_.alloc(order, limit);
  if (!a.ok() && cached_pages() != 0) {
    flush_caches();
    auto b = space_.alloc(order, limit);
    if (!b.ok()) return ErrorCode::kNoMemory;
    __atomic_fetch_add(&buddy_pages_, uint64_t{1} << order, __ATOMIC_RELAXED);
    return b->value();
  }
  if (!a.ok()) return ErrorCode::kNoMemory;
  __atomic_fetch_add(&buddy_pages_, uint64_t{1} << order, __ATOMIC_RELAXED);
  return a->value();
}

Result<uint64_t> IovaAllocator::alloc_slow(uint64_t size, uint64_t limit) {
  if (size - 1 >= kMaxSize) return ErrorCode::kLayoutError;  // 0 wraps round.
  unsigned order = order_of(size);
  if (order < kCacheOrders) {
    CpuCache* c = cache_of(order);
    if (c != nullptr) {
      support::Guard guard{&c->lock};
      // The common case first: the most recently freed range of the loaded magazine.
      Magazine* m = c->loaded;
      uint32_t n = m->count;
      if (n != 0 && m->iova[n - 1] + ((kPageSize << order) - 1) <= limit) {
        m->count = n - 1;
        return m->iova[n - 1];
      }
      uint64_t iova = 0;
      if (cache_alloc_locked(c, order, limit, &iova)) return iova;
    }
  }
  return buddy_alloc(order, limit);
}

void IovaAllocator::free_slow(uint64_t iova, uint64_t size) {
  unsigned order = order_of(size);
  KDEBUG_ASSERT(order <= kMaxOrder && support::is_aligned(iova, kPageSize << order),
                "IovaAllocator::free: not a range of this size");
  if (order < kCacheOrders) {
    CpuCache* c = cache_of(order);
    if (c != nullptr) {
      support::Guard guard{&c->lock};
      Magazine* m = c->loaded;
      if (m->count < kMagazineSize) {
        m->iova[m->count++] = iova;
        return;
      }
      cache_free_locked(c, order, iova);
      return;
    }
  }
  KASSERT(space_.free(PhysAddr(iova), order).ok(), "IovaAllocator::free: range not allocated");
  __atomic_fetch_sub(&buddy_pages_, uint64_t{1} << order, __ATOMIC_RELAXED);
}

uint64_t IovaAllocator::cached_pages() const {
  if (pfa_ == nullptr) return 0;
  uint64_t pages = 0;
  for (size_t i = 0; i < size_t{num_cpus_} * kCacheOrders; ++i) {
    CpuCache* c = &caches_[i];
    unsigned order = static_cast<unsigned>(i % kCacheOrders);
    support::Guard guard{&c->lock};
    pages += uint64_t{c->loaded->count + c->prev->count} << order;
  }
  for (unsigned o = 0; o < kCacheOrders; ++o) {
    Depot* d = &depots_[o];
    support::Guard guard{&d->lock};
    for (unsigned i = 0; i < d->num_full; ++i) pages += uint64_t{d->full[i]->count} << o;
  }
  return pages;
}

void IovaAllocator::flush_caches() {
  if (pfa_ == nullptr) return;
  for (size_t i = 0; i < size_t{num_cpus_} * kCacheOrders; ++i) {
    CpuCache* c = &caches_[i];
    unsigned order = static_cast<unsigned>(i % kCacheOrders);
    support::Guard guard{&c->lock};
    drain(c->loaded, order);
    drain(c->prev, order);
  }
  for (unsigned o = 0; o < kCacheOrders; ++o) {
    Depot* d = &depots_[o];
    support::Guard guard{&d->lock};
    while (d->num_full > 0) {
      Magazine* m = d->full[--d->num_full];
      drain(m, o);
      d->empty[d->num_empty++] = m;
    }
  }
}
