// IovaAllocator: I/O virtual address ranges of one IOMMU domain.
//
// Scheme. Two layers, as Linux's IOVA allocator (a per-CPU "rcache" of magazines above a shared
// allocator), with a different shared allocator:
//   - The shared layer is a binary buddy allocator over the window [base, end) of I/O addresses,
//     in 4 KiB pages: the library's PageFrameAllocator, run over I/O page numbers instead of
//     physical ones (it never touches the "memory" it manages, and its bookkeeping, one byte per
//     page plus bitmaps with summary levels, lives in a buffer taken from the platform's
//     allocator). A range of n pages is a block of 2^ceil(log2 n) pages, aligned to its size,
//     taken as the highest free block whose last byte lies under the device's limit. Its cost is
//     a few find-last-set steps per order, independent of how full the window is: no scan of
//     allocated ranges, unlike Linux's red-black tree walk.
//   - Above it, per CPU and per size class (orders 0 to kCacheOrders - 1, i.e. up to 128 KiB),
//     two magazines of up to kMagazineSize recently freed ranges (Bonwick's magazines, as
//     Linux's iova_rcache): a free pushes onto the CPU's loaded magazine, an allocation pops from
//     it; when the loaded one is full (empty) the two are swapped, and when both are, a full
//     magazine goes to (comes from) a per-size-class depot of kDepotSize magazines. Only when the
//     depot has none either does a range go back to (come from) the buddy layer. Each CPU's
//     caches have their own interrupt-masking spinlock (taken by its CPU without contention), so
//     a migrated or interrupted caller stays correct.
// A cached range is still allocated in the buddy layer; allocated_pages() counts only what
// callers hold, cached_pages() what the caches hold. flush_caches() returns every cached range.
// An allocation that the buddy layer cannot satisfy flushes the caches once and retries before
// it fails with kNoMemory, so ranges stranded in another CPU's cache do not cause a failure.
//
// Cost: a cached allocation or free is a lock pair and a magazine push or pop (a pop under a
// limit may look through one magazine for a range under it); the buddy layer's is the page-frame
// allocator's. Memory: the buddy bookkeeping (about half a byte per page of window) and
// num_cpus * kCacheOrders * 2 + kCacheOrders * kDepotSize magazines of kMagazineSize entries.
//
// Calling contexts (dmakit/dma_op.h): init and destroy thread only; alloc, free, flush_caches and
// the counters any context.
#pragma once

#include "dmakit/kernel_hooks.h"
#include "dmakit/page_frame_allocator.h"
#include "dmakit/support/bitops.h"
#include "dmakit/support/result.h"
#include "dmakit/support/spinlock.h"
#include "dmakit/support/thread_annotations.h"
#include "dmakit/support/types.h"

// A range of I/O virtual addresses [base, base + size).
struct IovaRange {
  uint64_t base = 0;
  uint64_t size = 0;
};

class IovaAllocator {
 public:
  static constexpr uint64_t kPageSize = 4096;
  // The largest range: a block of 2^kMaxOrder pages (4 MiB).
  static constexpr unsigned kMaxOrder = PageFrameAllocator::kMaxOrder;
  static constexpr uint64_t kMaxSize = kPageSize << kMaxOrder;
  static constexpr unsigned kCacheOrders = 6;
  static constexpr unsigned kMagazineSize = 32;
  static constexpr unsigned kDepotSize = 8;
  static constexpr unsigned kMaxCpus = 64;

  struct Config {
    // The window: I/O addresses [base, end), page aligned, base < end, at most 2^32 pages.
    uint64_t base = 0;
    uint64_t end = 0;
    // Pieces of the window never handed out (the MSI doorbells a domain maps at fixed addresses);
    // rounded outward to pages. The caller keeps the array until init returns.
    const IovaRange* reserved = nullptr;
    size_t num_reserved = 0;
    // Where the bookkeeping comes from; must outlive this object. Required.
    PageFrameAllocator* pfa = nullptr;
    // CPUs with a cache (1 to kMaxCpus); 0: the kernel hooks' max_cpus (dmakit/kernel_hooks.h),
    // 1 when that is 0. CPUs are named by the hooks' cpu_id (CPU 0 for all without it); a CPU
    // index at or above num_cpus uses no cache.
    unsigned num_cpus = 0;
  };

  constexpr IovaAllocator() = default;
  IovaAllocator(const IovaAllocator&) = delete;
  IovaAllocator& operator=(const IovaAllocator&) = delete;

  // Sets the allocator up over cfg's window. Thread only, once (again after destroy).
  // Errors: kInvalidArgument (window empty, misaligned or too large, pfa null, num_cpus above
  // kMaxCpus, more than PageFrameAllocator::kMaxRanges - 1 reserved pieces, already
  // initialised), kNoMemory (no memory for the bookkeeping). On error nothing is allocated.
  Result<void> init(const Config& cfg);

  // Flushes the caches and gives the bookkeeping back to the allocator. Thread only.
  // Errors: kBusy (ranges are still allocated: nothing changes except that the caches are
  // flushed).
  Result<void> destroy();

  // A range of `size` bytes (rounded up to a power-of-two number of pages; 1 to kMaxSize), aligned
  // to its rounded size, whose last byte is at or below `limit` (the device's DMA mask). Returns
  // its first address. Any context.
  // Errors: kLayoutError (size 0 or above kMaxSize), kNoMemory (no free range under the limit:
  // the window is full, or the limit lies below it). The allocator is unchanged on error.
  Result<uint64_t> alloc(uint64_t size, uint64_t limit) {
    // One page from the CPU's loaded magazine in line; everything else out of line.
    if (size - 1 < kPageSize) [[likely]] {
      if (CpuCache* c = cache_of(0); c != nullptr) [[likely]] {
        c->lock.lock();
        Magazine* m = c->loaded;
        uint32_t n = m->count;
        if (n != 0 && m->iova[n - 1] + (kPageSize - 1) <= limit) [[likely]] {
          m->count = n - 1;
          uint64_t iova = m->iova[n - 1];
          c->lock.unlock();
          return iova;
        }
        c->lock.unlock();
      }
    }
    return alloc_slow(size, limit);
  }

  // Returns a range from alloc, with the same size. Precondition: allocated and not freed (a
  // range that reaches the buddy layer is checked there, and a bad one panics). Any context.
  void free(uint64_t iova, uint64_t size) {
    if (size - 1 < kPageSize) [[likely]] {
      if (CpuCache* c = cache_of(0); c != nullptr) [[likely]] {
        c->lock.lock();
        Magazine* m = c->loaded;
        if (m->count < kMagazineSize) [[likely]] {
          m->iova[m->count++] = iova;
          c->lock.unlock();
          return;
        }
        c->lock.unlock();
      }
    }
    free_slow(iova, size);
  }

  // Returns every cached range to the buddy layer. Any context (O(CPUs * kCacheOrders) lock
  // pairs, up to all cached ranges freed).
  void flush_caches();

  // Pages callers hold now (allocations minus frees, in rounded pages), and pages sitting in the
  // caches. Any context; exact when no call is in flight. O(CPUs * kCacheOrders) lock pairs: the
  // fast paths keep no counters, so these add up the magazines.
  uint64_t allocated_pages() const { return buddy_pages() - cached_pages(); }
  uint64_t cached_pages() const;
  // Free pages of the buddy layer (the window minus reserved pieces, allocated and cached
  // ranges). Any context.
  uint64_t free_pages() const { return space_.free_pages(); }
  uint64_t window_pages() const { return window_pages_; }
  uint64_t base() const { return base_; }
  uint64_t end() const { return end_; }
  bool initialized() const { return pfa_ != nullptr; }

  // The order (log2 of pages) of a range of `size` bytes; kMaxOrder + 1 when it is too large.
  static unsigned order_of(uint64_t size) {
    return size <= kPageSize ? 0 : support::log2_ceil(size) - PageFrameAllocator::kPageShift;
  }

 private:
  struct Magazine {
    uint32_t count;
    uint64_t iova[kMagazineSize];
  };
  // One CPU's caches of one size class, in a cache line of its own.
  struct alignas(64) CpuCache {
    support::SpinLock lock;
    Magazine* loaded TA_GUARDED(lock);
    Magazine* prev TA_GUARDED(lock);
  };
  // Full magazines of one size class and empty ones to swap with.
  struct Depot {
    support::SpinLock lock;
    Magazine* full[kDepotSize] TA_GUARDED(lock);
    Magazine* empty[kDepotSize] TA_GUARDED(lock);
    unsigned num_full TA_GUARDED(lock);
    unsigned num_empty TA_GUARDED(lock);
  };

  CpuCache* cache_of(unsigned order) const {
    const dmakit_kernel_hooks& hooks = dma::kernel_hooks();
    unsigned cpu = hooks.cpu_id != nullptr ? hooks.cpu_id() : 0;
    if (cpu >= num_cpus_) return nullptr;
    return &caches_[size_t{cpu} * kCacheOrders + order];
  }
  Result<uint64_t> alloc_slow(uint64_t size, uint64_t limit);
  void free_slow(uint64_t iova, uint64_t size);
  // The magazines' slow paths, with the CPU cache's lock held: the previous magazine and the
  // depot.
  bool cache_alloc_locked(CpuCache* c, unsigned order, uint64_t limit, uint64_t* iova)
      TA_REQ(c->lock);
  void cache_free_locked(CpuCache* c, unsigned order, uint64_t iova) TA_REQ(c->lock);
  // Pages allocated from the buddy layer (callers' and cached).
  uint64_t buddy_pages() const { return __atomic_load_n(&buddy_pages_, __ATOMIC_RELAXED); }
  // Takes a range under `limit` out of `m`, or returns false.
  static bool pop_under(Magazine* m, uint64_t limit, uint64_t size, uint64_t* iova);
  // Returns the ranges of `m` to the buddy layer and empties it.
  void drain(Magazine* m, unsigned order);
  Result<uint64_t> buddy_alloc(unsigned order, uint64_t limit);

  PageFrameAllocator space_;
  PageFrameAllocator* pfa_ = nullptr;
  uint64_t base_ = 0;
  uint64_t end_ = 0;
  uint64_t window_pages_ = 0;
  // The bookkeeping and the caches, from pfa_.
  uint64_t meta_pa_ = 0;
  unsigned meta_order_ = 0;
  uint64_t cache_pa_ = 0;
  unsigned cache_order_ = 0;
  CpuCache* caches_ = nullptr;  // num_cpus_ * kCacheOrders, CPU-major.
  Depot* depots_ = nullptr;     // kCacheOrders.
  unsigned num_cpus_ = 0;
  uint64_t buddy_pages_ = 0;  // Atomic.
};
