// PageFrameAllocator: physical pages in naturally aligned blocks of 2^order pages, under an
// optional address limit (a DMA mask), for the DMA subsystem.
//
// The scheme (the implementation file opens with the details and the cost of each operation):
// a binary buddy allocator over several physical ranges with holes and reserved pieces. One byte
// of metadata per page (in a caller-provided buffer) records whether the page heads a free block
// and of which order, or heads an allocated block, or lies inside one. Free lists are doubly
// linked through the free pages themselves (reached through the direct map), and are split by
// address band (power-of-two bands of physical address), with a bitmap of non-empty lists, so that
// an allocation under a limit finds a block in O(1) without walking memory above the limit.
//
// Every method takes the allocator's spinlock, which does not mask interrupts: a kernel that
// allocates or frees from interrupt context must call with interrupts masked on every CPU that
// can take the lock. No method allocates memory or sleeps, so all may be called with interrupts
// off.
#pragma once

#include "support/addr.h"
#include "support/fault_injection.h"
#include "support/result.h"
#include "support/span.h"
#include "support/spinlock.h"
#include "support/types.h"

class PageFrameAllocator {
 public:
  static constexpr uint64_t kPageSize = 4096;
  static constexpr unsigned kPageShift = 12;
  static constexpr unsigned kMaxOrder = 10;  // Largest block: 2^10 pages = 4 MiB.
  static constexpr size_t kMaxRanges = 16;
  // Address bands: band 0 is [0, 4 MiB), band b >= 1 is [2^(21+b), 2^(22+b)).
  static constexpr unsigned kBandShift = 22;
  static constexpr unsigned kNumBands = 64 - kBandShift + 1;

  // Per-range figures are indexed like range(i): managed ranges in ascending address order.
  struct Stats {
    uint64_t managed_pages = 0;  // Pages handed to the allocator (ranges minus reserved).
    uint64_t free_pages = 0;
    uint64_t free_pages_per_range[kMaxRanges] = {};
    uint64_t managed_pages_per_range[kMaxRanges] = {};
    uint64_t free_pages_per_band[kNumBands] = {};
    size_t num_ranges = 0;
    uint64_t metadata_bytes = 0;
  };

  PageFrameAllocator() = default;
  PageFrameAllocator(const PageFrameAllocator&) = delete;
  PageFrameAllocator& operator=(const PageFrameAllocator&) = delete;
  // In debug builds, asserts that every page was given back (as Pigweed's allocators do).
  ~PageFrameAllocator();

  // Bytes of metadata `init` needs for these RAM ranges: one byte per whole page of each range
  // (after trimming inward to page boundaries). Under 0.025% of the memory described.
  static size_t metadata_size(support::Span<const PhysRange> ranges);

  // Takes ownership of the pages in `ranges` minus `reserved` (both may be unsorted; ranges are
  // trimmed inward to page boundaries, reserved pieces outward; ranges left empty by trimming are
  // dropped; reserved pieces outside every range are ignored). `direct_map_offset` is added to a
  // physical address to reach it from the CPU: the allocator writes its free-list links into free
  // pages, and never touches holes, reserved pages or allocated pages. `metadata` is caller-owned,
  // stays owned by the caller, must outlive the allocator and must not lie in a managed page
  // (reserve it). Call once, before any other method; a failed call leaves the allocator as it
  // was, so it may be called again.
  // Errors: kInvalidArgument (more than kMaxRanges ranges, overlapping ranges, a range that wraps
  // past 2^64, called twice), kNoMemory (metadata buffer smaller than metadata_size(ranges)).
  Result<void> init(support::Span<const PhysRange> ranges, support::Span<const PhysRange> reserved,
                    uintptr_t direct_map_offset, void* metadata, size_t metadata_bytes)
      TA_EXCL(lock_);

  // Allocates a block of 2^order pages whose last byte lies at or below `limit` and whose start
  // is aligned to `align` bytes (a power of two; blocks are always aligned to their own size, so
  // an align at or below the block size costs nothing; a larger one takes a block of the align's
  // size and gives back the rest at once). The caller owns the block until free(); its contents
  // are undefined. Prefers high memory, keeping low memory for constrained devices.
  // Cost: at most kMaxOrder + 1 bitmap tests, independent of how full memory is. A page-aligned
  // request with no limit, or with a limit of the form 2^n - 1 (n >= 22, i.e. every DMA mask of
  // at least 22 bits), takes the inline fast path: served from its own order it is straight-line
  // code, and such a limit adds a check, a shift and an AND. Only a limit of another form can
  // cost more, and only when no block lies wholly in a band below the limit: then the free lists
  // of the one band holding `limit` are walked (for a limit under 4 MiB, that band holds at most
  // 1024 pages).
  // Errors: kLayoutError (order > kMaxOrder, align not a power of two or above 2^kMaxOrder pages),
  // kDmaMaskNotMatch (no block of this order and alignment could lie under `limit` even with all
  // memory free: addr = lowest managed address, mask = limit), kNoMemory (nothing free under the
  // limit right now). On error the allocator is unchanged. With DMA_FAULT_INJECTION, the site
  // FaultSite::kPageAlloc makes a valid request fail with kNoMemory.
  [[gnu::always_inline]] Result<PhysAddr> alloc(unsigned order, uint64_t limit = ~0ull,
                                                uint64_t align = kPageSize) TA_EXCL(lock_) {
#if DMA_PAGE_POISON
    // Debug option (on in the host tests): freed blocks are poisoned, allocations verify it.
    Result<PhysAddr> r = alloc_fast(order, limit, align);
    if (r.ok()) check_poison(*r, order);
    return r;
  }

  [[gnu::always_inline]] Result<PhysAddr> alloc_fast(unsigned order, uint64_t limit, uint64_t align)
      TA_EXCL(lock_) {
#endif
    // Inline so that the common cases return their address in a register and the caller builds
    // the Result; everything else is out of line. Forced: with a limit known only at run time,
    // both fast paths stay and exceed the inliner's default budget, and a call returning the
    // Result through memory would cost more than the mask does. With a constant limit (the
    // default, say) the compiler keeps only one of them.
    if (__builtin_expect(order <= kMaxOrder && align == kPageSize, 1)) {
      if (__builtin_expect(limit == ~0ull, 1)) {
        if (FAULT_POINT(kPageAlloc)) return ErrorCode::kNoMemory;
        uint64_t a = alloc_unconstrained(order);
        if (__builtin_expect(a != kAllocFailed, 1)) return PhysAddr(a);
        return ErrorCode::kNoMemory;
      }
      if (ends_at_band_boundary(limit)) {
        if (FAULT_POINT(kPageAlloc)) return ErrorCode::kNoMemory;
        uint64_t a = alloc_in_bands(order, bands_below(limit));
        if (__builtin_expect(a != kAllocFailed, 1)) return PhysAddr(a);
        return exhausted(order, order, limit);
      }
    }
    return alloc_constrained(order, limit, align);
  }

  // Returns a block from alloc with the same order. Coalesces with free buddies (never across
  // ranges). Cost: O(kMaxOrder) plus a scan of the (at most kMaxRanges) ranges.
  // Errors: kNotFound (addr is not the head of an allocated block of that order: never allocated,
  // already freed, wrong order, inside a block, outside every range); the allocator is unchanged
  // then. Checked in every build.
  Result<void> free(PhysAddr addr, unsigned order) TA_EXCL(lock_) {
    if (__builtin_expect(free_block(addr.value(), order), 1)) return support::ok();
    return ErrorCode::kNotFound;
  }

  // Smallest order whose block holds `bytes` (bytes > 0); kMaxOrder + 1 if none does.
  static unsigned order_for(uint64_t bytes);

  // Lowest address of any managed page, and one past the highest (0, 0 before init).
  PhysAddr lowest_address() const { return lowest_; }
  PhysAddr highest_address() const { return highest_; }
  uintptr_t direct_map_offset() const { return direct_map_offset_; }
  void* phys_to_virt(PhysAddr p) const {
    return reinterpret_cast<void*>(static_cast<uintptr_t>(p.value()) + direct_map_offset_);
  }

  // Number of managed ranges, and range i (0 <= i < num_ranges(), ascending addresses) after
  // trimming to pages. Fixed by init.
  size_t num_ranges() const { return num_ranges_; }
  PhysRange range(size_t i) const;

  // A snapshot of the counters. O(bands + ranges).
  Stats stats() const TA_EXCL(lock_);
  // Free pages overall (the sum of the per-band counters). O(bands).
  uint64_t free_pages() const TA_EXCL(lock_);

  // Number of free blocks of exactly `order` (0 if order > kMaxOrder). Walks the free lists:
  // O(free blocks of that order); for tests and reports, not for hot paths.
  uint64_t free_blocks(unsigned order) const TA_EXCL(lock_);

  // Checks every internal invariant (free lists well formed, every free block's metadata matches,
  // no overlap, buddies fully coalesced, counters equal the sum of the lists). O(pages). For
  // tests; returns false and stops at the first violation.
  bool check_invariants() const TA_EXCL(lock_);

 private:
  // A node of a circular doubly linked free list; each list's sentinel lives in heads_.
  struct Link {
    Link* next;
    Link* prev;
  };
  // Lives in the first bytes of every free block. The block's metadata byte and range are kept
  // here so that taking a block from a list needs no address arithmetic or range lookup.
  struct FreeBlock : Link {
    uint8_t* meta;   // The block's head byte in its range's metadata.
    uint32_t range;  // Index into ranges_.
  };
  // Immutable after init. 32 bytes, so that indexing is a shift.
  struct Range {
    uint64_t start_pfn = 0;
    uint64_t pages = 0;
    uint8_t* meta = nullptr;  // One byte per page of [start_pfn, start_pfn + pages).
    uint32_t index = 0;       // Its own index in ranges_ (cheaper than pointer arithmetic).
  };
  static constexpr size_t kNoRange = kMaxRanges;
  // Lists per order are padded to 64 bands so that a list head is found with shifts only.
  static constexpr unsigned kBandSlots = 64;
  static_assert(kNumBands <= kBandSlots, "band masks are 64 bits wide");

  // Band of a page: bands are at least 4 MiB wide and aligned, so a block never straddles two.
  // It is the bit width of x = pfn >> 10, computed as log2(2x + 1) to need no branch for x == 0.
  static unsigned band_of_pfn(uint64_t pfn) {
    return 63u - static_cast<unsigned>(__builtin_clzll((pfn >> (kBandShift - kPageShift - 1)) | 1));
  }
  size_t range_index(uint64_t pfn) const;
  FreeBlock* block_at(uint64_t pfn) const {
    return reinterpret_cast<FreeBlock*>(static_cast<uintptr_t>(pfn << kPageShift) +
                                        direct_map_offset_);
  }
  uint64_t phys_of(const Link* l) const {
    return static_cast<uint64_t>(reinterpret_cast<uintptr_t>(l) - direct_map_offset_);
  }
  Link* head(unsigned order, unsigned band) TA_REQ(lock_) { return &heads_[order][band]; }
  void push_free(uint64_t pfn, unsigned order, unsigned band, uint32_t range, uint8_t* meta)
      TA_REQ(lock_);
  void unlink_free(Link* b, unsigned order, unsigned band) TA_REQ(lock_);
  // True when limit + 1 is the end of a band: limit = 2^n - 1 with n >= kBandShift (including
  // no limit, n = 64). Then the bands wholly at or below it are exactly bands_below(limit).
  static constexpr bool ends_at_band_boundary(uint64_t limit) {
    return ((limit + 1) & limit) == 0 && limit >= (1ull << kBandShift) - 1;
  }
  // Bit b set for each band b lying wholly at or below `limit`, for a limit with
  // ends_at_band_boundary(limit): with limit = 2^n - 1 those are bands 0 .. n - 22, and
  // limit >> 21 = 2^(n - 21) - 1 has exactly those bits set.
  static constexpr uint64_t bands_below(uint64_t limit) { return limit >> (kBandShift - 1); }
  // Returned by alloc_unconstrained and alloc_in_bands when nothing is free (no address is odd).
  static constexpr uint64_t kAllocFailed = 1;
  uint64_t alloc_unconstrained(unsigned order) TA_EXCL(lock_);
  uint64_t alloc_split_and_unlock(unsigned order) TA_REL(lock_);
  // The same under a limit that ends at a band boundary, for the bands in `allowed`.
  uint64_t alloc_in_bands(unsigned order, uint64_t allowed) TA_EXCL(lock_);
  uint64_t alloc_split_in_bands_and_unlock(unsigned order, uint64_t allowed) TA_REL(lock_);
  // The bodies both pairs share (defined and used in the .cc only), forced inline into each so
  // that the unconstrained pair needs no mask at all.
  template <bool kInBands>
  inline uint64_t alloc_from(unsigned order, uint64_t allowed) TA_EXCL(lock_);
  inline uint64_t split_from_and_unlock(unsigned order, uint64_t allowed) TA_REL(lock_);
  // The error of a valid request under `limit` that found nothing: kDmaMaskNotMatch when no
  // block of 2^order pages aligned to 2^need pages could ever lie under it, else kNoMemory.
  // Returns the Result itself so that the inline caller passes its own return slot on.
  Result<PhysAddr> exhausted(unsigned order, unsigned need, uint64_t limit) const;
  bool free_block(uint64_t addr, unsigned order) TA_EXCL(lock_);
#if DMA_PAGE_POISON
  static constexpr uint8_t kPoisonByte = 0x6B;
  static constexpr uint64_t kPoisonSkip = 32;  // Bytes of a free block head's list link.
  void check_poison(PhysAddr addr, unsigned order) const;
#endif
  bool merge_and_unlock(uint64_t pfn, unsigned order, unsigned band, uint32_t ri) TA_REL(lock_);
  PhysAddr take(Link* b, unsigned have, unsigned order, unsigned band) TA_REQ(lock_);
  Result<PhysAddr> alloc_constrained(unsigned order, uint64_t limit, uint64_t align) TA_EXCL(lock_);
  uint64_t free_pages_locked() const TA_REQ(lock_);
  bool check_lists(uint64_t* per_band, uint64_t* per_range, uint64_t* blocks) const TA_REQ(lock_);
  bool check_metadata(const uint64_t* per_range, uint64_t blocks) const TA_REQ(lock_);

  mutable support::SpinLock lock_;
  Range ranges_[kMaxRanges];
  size_t num_ranges_ = 0;
  uintptr_t direct_map_offset_ = 0;
  PhysAddr lowest_;
  PhysAddr highest_;
  bool initialized_ = false;
  uint64_t managed_pages_ = 0;
  uint64_t managed_per_range_[kMaxRanges] = {};
  uint64_t metadata_bytes_ = 0;
  // Bit b of band_mask_[o] set: list (o, b) is not empty.
  uint64_t band_mask_[kMaxOrder + 1] TA_GUARDED(lock_) = {};
  // Free pages per band and per range (the total is their sum: one counter less on hot paths).
  uint64_t free_per_band_[kNumBands] TA_GUARDED(lock_) = {};
  uint64_t free_per_range_[kMaxRanges] TA_GUARDED(lock_) = {};
  // Free-list sentinels per order and band (set up by init).
  Link heads_[kMaxOrder + 1][kBandSlots] TA_GUARDED(lock_) = {};
};
