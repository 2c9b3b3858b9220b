// LinuxIova: see bench/linux_iova.h.
#include "bench/linux_iova.h"

#include <cstdlib>

namespace bench {

namespace {

constexpr uint64_t kAnchor = ~0ull;

unsigned order_base_2(uint64_t n) {
  unsigned o = 0;
  while ((uint64_t{1} << o) < n) ++o;
  return o;
}

}  // namespace

LinuxIova::LinuxIova(uint64_t start_pfn, uint64_t end_pfn)
    : start_pfn_(start_pfn), dma_32bit_pfn_(uint64_t{1} << 20), max32_alloc_size_(1ull << 20) {
  (void)end_pfn;  // Requests stay under it through their limit, as with Linux's dma_limit.
  anchor_ = tree_.insert(Node{kAnchor, kAnchor}).first;
  cached_ = anchor_;
  cached32_ = anchor_;
  for (Rcache& r : rcaches_) {
    r.cpu.loaded = new_mag();
    r.cpu.prev = new_mag();
  }
}

LinuxIova::~LinuxIova() {
  for (Magazine* m : mags_) delete m;
}

LinuxIova::Magazine* LinuxIova::new_mag() {
  if (!spare_.empty()) {
    Magazine* m = spare_.back();
    spare_.pop_back();
    m->size = 0;
    return m;
  }
  auto* m = new Magazine;
  mags_.push_back(m);
  return m;
}

LinuxIova::It LinuxIova::cached_node(uint64_t limit_pfn) {
  return limit_pfn <= dma_32bit_pfn_ ? cached32_ : cached_;
}

uint64_t LinuxIova::alloc_tree(uint64_t size, uint64_t limit_pfn) {
  // alloc_iova passes an exclusive limit.
  uint64_t high_pfn = limit_pfn + 1;
  uint64_t low_pfn = start_pfn_;
  uint64_t align_mask = ~0ull << order_base_2(size);
  support::Guard guard{&tree_lock_};
  if (high_pfn <= dma_32bit_pfn_ && size >= max32_alloc_size_) return 0;
  It curr = cached_node(high_pfn);
  bool have = true;
  uint64_t retry_pfn = curr->pfn_hi;
  It prev;
  uint64_t new_pfn = 0;
  for (;;) {
    do {
      high_pfn = std::min(high_pfn, curr->pfn_lo);
      new_pfn = (high_pfn - size) & align_mask;
      prev = curr;
      if (curr == tree_.begin()) {
        have = false;
      } else {
        --curr;
      }
    } while (have && new_pfn <= curr->pfn_hi && new_pfn >= low_pfn);
    if (high_pfn < size || new_pfn < low_pfn) {
      if (low_pfn == start_pfn_ && retry_pfn < limit_pfn + 1) {
        high_pfn = limit_pfn + 1;
        low_pfn = retry_pfn + 1;
        curr = tree_.lower_bound(Node{limit_pfn + 1, 0});  // iova_find_limit
        have = true;
        continue;
      }
      max32_alloc_size_ = size;
      return 0;
    }
    break;
  }
  It n = tree_.emplace_hint(prev, Node{new_pfn, new_pfn + size - 1});
  if (n->pfn_hi < dma_32bit_pfn_) {
    cached32_ = n;
  } else {
    cached_ = n;
  }
  return new_pfn;
}

void LinuxIova::free_tree(uint64_t pfn) {
  support::Guard guard{&tree_lock_};
  // find_iova: the node containing pfn.
  It it = tree_.upper_bound(Node{pfn, 0});
  if (it == tree_.begin()) std::abort();
  --it;
  if (pfn > it->pfn_hi) std::abort();
  // __cached_rbnode_delete_update
  if (it == cached32_ || (it->pfn_hi < dma_32bit_pfn_ && it->pfn_lo >= cached32_->pfn_lo)) {
    cached32_ = std::next(it);
  }
  if (it->pfn_lo < dma_32bit_pfn_) max32_alloc_size_ = dma_32bit_pfn_;
  if (it->pfn_lo >= cached_->pfn_lo) cached_ = std::next(it);
  tree_.erase(it);
}

bool LinuxIova::pop_under(Magazine* m, uint64_t limit_pfn, uint64_t* pfn) {
  for (unsigned i = m->size; i-- > 0;) {
    if (m->pfns[i] <= limit_pfn) {
      *pfn = m->pfns[i];
      m->pfns[i] = m->pfns[--m->size];
      return true;
    }
  }
  return false;
}

uint64_t LinuxIova::rcache_get(unsigned order, uint64_t limit_pfn) {
  Rcache& rc = rcaches_[order];
  CpuRcache& c = rc.cpu;
  uint64_t pfn = 0;
  bool has = false;
  support::Guard guard{&c.lock};
  if (c.loaded->size != 0) {
    has = true;
  } else if (c.prev->size != 0) {
    std::swap(c.loaded, c.prev);
    has = true;
  } else {
    support::Guard dg{&rc.lock};
    if (rc.depot_size > 0) {
      spare_.push_back(c.loaded);
      c.loaded = rc.depot[--rc.depot_size];
      has = true;
    }
  }
  if (has && pop_under(c.loaded, limit_pfn, &pfn)) return pfn;
  return 0;
}

void LinuxIova::free_mag_pfns(Magazine* m, unsigned order) {
  for (unsigned i = 0; i < m->size; ++i) free_tree(m->pfns[i]);
  m->size = 0;
}

bool LinuxIova::rcache_insert(uint64_t pfn, unsigned order) {
  Rcache& rc = rcaches_[order];
  CpuRcache& c = rc.cpu;
  Magazine* to_free = nullptr;
  {
    support::Guard guard{&c.lock};
    if (c.loaded->size == kMagSize) {
      if (c.prev->size != kMagSize) {
        std::swap(c.loaded, c.prev);
      } else {
        Magazine* fresh = new_mag();
        {
          support::Guard dg{&rc.lock};
          if (rc.depot_size < kMaxDepot) {
            rc.depot[rc.depot_size++] = c.loaded;
          } else {
            to_free = c.loaded;
          }
        }
        c.loaded = fresh;
      }
    }
    c.loaded->pfns[c.loaded->size++] = pfn;
  }
  if (to_free != nullptr) {
    free_mag_pfns(to_free, order);
    spare_.push_back(to_free);
  }
  return true;
}

void LinuxIova::flush_rcaches() {
  for (unsigned o = 0; o < kRangeCacheMaxOrder; ++o) {
    Rcache& rc = rcaches_[o];
    free_mag_pfns(rc.cpu.loaded, o);
    free_mag_pfns(rc.cpu.prev, o);
    while (rc.depot_size > 0) {
      Magazine* m = rc.depot[--rc.depot_size];
      free_mag_pfns(m, o);
      spare_.push_back(m);
    }
  }
}

uint64_t LinuxIova::alloc_fast(uint64_t pages, uint64_t limit_pfn) {
  unsigned order = order_base_2(pages);
  if (order < kRangeCacheMaxOrder) {
    // __iova_rcache_get is given limit_pfn + 1 - size: the range must end under the limit.
    uint64_t pfn = rcache_get(order, limit_pfn + 1 - pages);
    if (pfn != 0) return pfn;
  }
  uint64_t pfn = alloc_tree(pages, limit_pfn);
  if (pfn == 0) {
    flush_rcaches();
    pfn = alloc_tree(pages, limit_pfn);
  }
  return pfn;
}

void LinuxIova::free_fast(uint64_t pfn, uint64_t pages) {
  unsigned order = order_base_2(pages);
  if (order < kRangeCacheMaxOrder && rcache_insert(pfn, order)) return;
  free_tree(pfn);
}

}  // namespace bench
