// A model of Linux's IOVA allocator (drivers/iommu/iova.c), written from its published
// description for the comparison in BENCHMARKS.md: the same algorithm, measured the same way as
// IovaAllocator (bench/iommu_scenarios.h).
//
//   - The allocated ranges are nodes of a red-black tree ordered by address (here std::set, the
//     C++ library's red-black tree), with an anchor node at the top of the space. An allocation
//     of `size` pages (size-aligned) under `limit` starts at a cached node (the last node
//     allocated, or the node after the last one freed above it) and walks towards lower addresses
//     with rb_prev until it finds a gap below the current node that holds an aligned range above
//     the previous node; if that runs off the bottom, it retries once from the limit down to the
//     cached position. A failure records the size (max32_alloc_size) so that later requests of at
//     least that size fail at once until something is freed. A free erases the node and moves the
//     cached node up past it when needed.
//   - Above it, the "rcache": per CPU and per size class (orders 0 to 5), a loaded and a previous
//     magazine of kMagSize page frame numbers, and per size class a depot of up to kMaxDepot full
//     magazines (the fixed-size depot of Linux 4.x to 6.6; 6.7 made it a list trimmed by a
//     timer). A miss in the magazines and the depot falls back to the tree; when the tree fails,
//     every CPU's magazines are flushed into it once and the tree is tried again.
// One CPU is modelled (the benchmarks run on one thread). Locks: the tree's spinlock and each
// cache's, support::SpinLock like IovaAllocator's.
#pragma once

#include <cstdint>
#include <set>
#include <vector>

#include "dmakit/support/spinlock.h"

namespace bench {

class LinuxIova {
 public:
  static constexpr unsigned kRangeCacheMaxOrder = 6;  // IOVA_RANGE_CACHE_MAX_SIZE
  static constexpr unsigned kMagSize = 127;           // IOVA_MAG_SIZE
  static constexpr unsigned kMaxDepot = 32;           // MAX_GLOBAL_MAGS

  // Page frames [start_pfn, end_pfn) (end_pfn is where the anchor sits).
  LinuxIova(uint64_t start_pfn, uint64_t end_pfn);

  // alloc_iova_fast: a size-aligned range of `pages` pages (a power of two) whose last frame is
  // at most limit_pfn; 0 when none.
  uint64_t alloc_fast(uint64_t pages, uint64_t limit_pfn);
  // free_iova_fast.
  void free_fast(uint64_t pfn, uint64_t pages);
  // The tree alone (alloc_iova / __free_iova), for the fallback scenarios.
  uint64_t alloc_tree(uint64_t pages, uint64_t limit_pfn);
  void free_tree(uint64_t pfn);
  size_t tree_nodes() const { return tree_.size() - 1; }

 private:
  struct Node {
    uint64_t pfn_lo;
    uint64_t pfn_hi;
    bool operator<(const Node& o) const { return pfn_lo < o.pfn_lo; }
  };
  using It = std::set<Node>::iterator;
  struct Magazine {
    unsigned size = 0;
    uint64_t pfns[kMagSize];
  };
  struct CpuRcache {
    support::SpinLock lock;
    Magazine* loaded;
    Magazine* prev;
  };
  struct Rcache {
    support::SpinLock lock;
    unsigned depot_size = 0;
    Magazine* depot[kMaxDepot];
    CpuRcache cpu;
  };

  It cached_node(uint64_t limit_pfn);
  void flush_rcaches();
  static bool pop_under(Magazine* m, uint64_t limit_pfn, uint64_t* pfn);
  bool rcache_insert(uint64_t pfn, unsigned order);
  uint64_t rcache_get(unsigned order, uint64_t limit_pfn);
  Magazine* new_mag();
  void free_mag_pfns(Magazine* m, unsigned order);

  support::SpinLock tree_lock_;
  std::set<Node> tree_;
  It cached_;    // cached_node
  It cached32_;  // cached32_node
  It anchor_;
  uint64_t start_pfn_;
  uint64_t dma_32bit_pfn_;
  uint64_t max32_alloc_size_;
  Rcache rcaches_[kRangeCacheMaxOrder];
  std::vector<Magazine*> mags_;   // Every magazine ever made, freed at destruction.
  std::vector<Magazine*> spare_;  // Empty magazines (Linux allocates and frees them).

 public:
  ~LinuxIova();
  LinuxIova(const LinuxIova&) = delete;
  LinuxIova& operator=(const LinuxIova&) = delete;
};

}  // namespace bench
