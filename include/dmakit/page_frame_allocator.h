// PageFrameAllocator: physical pages in naturally aligned blocks of 2^order pages, under an
// optional address limit (a DMA mask), for the DMA subsystem.
//
// The scheme (the implementation file opens with the details and the cost of each operation):
// a binary buddy allocator over several physical ranges with holes and reserved pieces, whose
// bookkeeping lives entirely out of band, in a caller-provided buffer that is not managed memory.
// For each order there are two bits per place a block of that order can lie (a slot), over all
// ranges in address order: one set when a free block lies there, one set when an allocated block
// does (free() checks its argument against it). The two words of 64 slots sit side by side, so
// that checking, freeing and merging a block at one order touches one cache line of metadata;
// about half a byte per page in all, which stays cache-resident for far more memory than the
// pages themselves. The free bits have a summary above them (one bit per non-zero 64-bit word,
// level by level up to a single word), so that "the highest free block of order k at or below an
// address" is a few find-last-set steps. The allocator never reads or writes the pages it
// manages: a device that writes into a page after it was freed cannot plant anything the
// allocator trusts.
//
// Debug page poisoning (PagePoisonChecker, below) is a layer beside the allocator: it fills
// blocks when they become free and checks the fill when they are handed out again, through the
// direct map. It is the only code that touches managed pages, and it exists only in builds with
// DMA_PAGE_POISON.
//
// Calling contexts (dmakit/dma_op.h): init and the calls made before it (metadata_size, the
// poisoning switch) are thread or interrupts off, before the allocator is shared; every other
// method is any context. They take the allocator's
// spinlock, which masks interrupts through the kernel's hooks while held, and none allocates
// memory or sleeps.
#pragma once

#include "dmakit/support/addr.h"
#include "dmakit/support/bitops.h"
#include "dmakit/support/fault_injection.h"
#include "dmakit/support/result.h"
#include "dmakit/support/span.h"
#include "dmakit/support/spinlock.h"
#include "dmakit/support/types.h"

// The debug layer beside the allocator (as Zircon's pmm_checker sits beside pmm_node): fills
// every block the allocator gets back with a pattern and checks the pattern when the block is
// handed out again, so that a write after free (by the CPU or a device) is reported at the next
// allocation instead of corrupting the next owner's data silently. The allocator calls on_free()
// before a freed block can be handed out again, and on_alloc() on a block it has just taken; in
// a build without DMA_PAGE_POISON both are empty and the checker costs nothing.
class PagePoisonChecker {
 public:
#if defined(DMA_PAGE_POISON) && DMA_PAGE_POISON
  static constexpr bool kAvailable = true;
#else
  static constexpr bool kAvailable = false;
#endif
  static constexpr uint8_t kPattern = 0x6B;

  // Turns checking on or off (on by default where available; cannot be turned on elsewhere). Off
  // suits memory that is not backed, or that a test deliberately writes after free.
  void set_enabled(bool on) { enabled_ = on && kAvailable; }
  bool enabled() const { return kAvailable && enabled_; }

  // `block` (bytes long, CPU-addressable) is free from now on: fills it with kPattern.
  void on_free(void* block, uint64_t bytes) const {
    if (enabled()) fill(block, bytes);
  }
  // `block` has just been allocated: panics ("page written after it was freed") unless every byte
  // still holds kPattern.
  void on_alloc(const void* block, uint64_t bytes) const {
    if (enabled()) check(block, bytes);
  }

 private:
  static void fill(void* block, uint64_t bytes);
  static void check(const void* block, uint64_t bytes);

  bool enabled_ = kAvailable;
};

class PageFrameAllocator {
 public:
  static constexpr uint64_t kPageSize = 4096;
  static constexpr unsigned kPageShift = 12;
  static constexpr unsigned kMaxOrder = 10;  // Largest block: 2^10 pages = 4 MiB.
  static constexpr size_t kMaxRanges = 16;
  // Address bands, for the statistics: band 0 is [0, 4 MiB), band b >= 1 is [2^(21+b), 2^(22+b)).
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

  // Before init every order's map is its (empty) top word, so that alloc finds nothing.
  // constexpr, and the destructor trivial, so that a kernel without C++ start-up code can hold
  // the allocator as a static: `constinit PageFrameAllocator g_pfa;` runs no code before init().
  constexpr PageFrameAllocator() {
    for (unsigned o = 0; o <= kMaxOrder; ++o) {
      maps_[o].level[0] = &top_words_[o][0];
      level0_[o] = &top_words_[o][0];
    }
  }
  PageFrameAllocator(const PageFrameAllocator&) = delete;
  PageFrameAllocator& operator=(const PageFrameAllocator&) = delete;

  // Ends the allocator's use before its storage or metadata is reused (a static never needs
  // this): in debug builds (KDEBUG_ENABLED) panics ("shut down with pages still allocated")
  // unless every page was given back, as Pigweed's allocators check in their destructors. Nothing
  // else changes. Any context.
  void shutdown() const TA_EXCL(lock_);

  // Bytes of metadata `init` needs for these RAM ranges (after trimming inward to page
  // boundaries): the free and allocated bitmaps of every order (about four bits per page) with
  // the free bitmaps' summaries, and a few bytes to align the buffer (so never 0 for ranges that
  // hold a page, even when every order's bitmaps fit in the allocator object). At most 0.1% of
  // the memory described, for 1 MiB or more. Any alignment will do.
  // constexpr: a kernel with a fixed RAM layout sizes a static buffer with it,
  // `alignas(8) uint8_t meta[PageFrameAllocator::metadata_size(kRam)];` (kRam a constexpr array).
  static constexpr size_t metadata_size(support::Span<const PhysRange> ranges) {
    uint64_t pages = 0;
    uint64_t slots[kMaxOrder + 1] = {};
    for (const PhysRange& r : ranges) {
      uint64_t s = 0;
      uint64_t e = 0;
      if (!trim_inward(r, &s, &e) || s == e) continue;
      pages += e - s;
      for (unsigned o = 0; o <= kMaxOrder; ++o) slots[o] += blocks_in(s, e, o) + kRangeSlack;
    }
    uint64_t words = 0;
    for (uint64_t n : slots) {
      unsigned top = 0;
      words += bitmap_words(n, &top);
    }
    if (pages == 0) return 0;
    return static_cast<size_t>(kAlignSlack + (words * sizeof(uint64_t)));
  }

  // Turns the debug poisoning layer off (or on again, where the build has it: DMA_PAGE_POISON).
  // Call before init. With it off, the allocator touches no managed page at any time.
  void set_poisoning(bool on);

  // Takes ownership of the pages in `ranges` minus `reserved` (both may be unsorted; ranges are
  // trimmed inward to page boundaries, reserved pieces outward; ranges left empty by trimming are
  // dropped; reserved pieces outside every range are ignored). The allocator never reads or
  // writes the pages it manages; `direct_map_offset` (added to a physical address to reach it
  // from the CPU) serves phys_to_virt() and the poisoning layer only. `metadata` is caller-owned,
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
  // are undefined. Prefers high memory, keeping low memory for constrained devices: it takes the
  // highest suitable free block of the smallest order that has one.
  // Cost: usually one bitmap load and a find-last-set; otherwise, per order tried (from the
  // request's own up to kMaxOrder, stopping at the first that has a suitable block), a few word
  // loads and a find-last-set per summary level; a limit adds a scan of the ranges from the top.
  // Independent of how full memory is. Any limit is exact: a request fails only when no
  // suitable block is free.
  // Errors: kLayoutError (order > kMaxOrder, align not a power of two or above 2^kMaxOrder pages),
  // kDmaMaskNotMatch (no block of this order and alignment could lie under `limit` even with all
  // memory free: addr = lowest managed address, mask = limit), kNoMemory (nothing free under the
  // limit right now). On error the allocator is unchanged. With DMA_FAULT_INJECTION, the site
  // FaultSite::kPageAlloc makes a valid request fail with kNoMemory.
  [[gnu::always_inline]] Result<PhysAddr> alloc(unsigned order, uint64_t limit = ~0ull,
                                                uint64_t align = kPageSize) TA_EXCL(lock_) {
    // Inline so that the common cases return their address in a register and the caller builds
    // the Result; everything else is out of line. With a constant limit (the default, say) the
    // compiler keeps only one of the two calls.
    if (__builtin_expect(order <= kMaxOrder && align == kPageSize, 1)) {
      if (FAULT_POINT(kPageAlloc)) return ErrorCode::kNoMemory;
      uint64_t a = limit == ~0ull ? alloc_highest(order) : alloc_under(order, order, limit);
      if (__builtin_expect(a != kAllocFailed, 1)) return PhysAddr(a);
      return exhausted(order, order, limit);
    }
    return alloc_constrained(order, limit, align);
  }

  // Returns a block from alloc with the same order. Coalesces with free buddies (never across
  // ranges). Writes nothing into the block (only the poisoning layer does). Cost: a scan of the
  // (at most kMaxRanges) ranges, a bit test, then per merge a bit test and a bit cleared in the
  // next order's bitmap, and one bit set.
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

  // A snapshot of the counters. The free pages per range and per band are counted from the
  // bitmaps: O(pages / 64); for reports and tests, not for hot paths.
  Stats stats() const TA_EXCL(lock_);
  // Free pages overall (a counter). O(1).
  uint64_t free_pages() const TA_EXCL(lock_);

  // Number of free blocks of exactly `order` (0 if order > kMaxOrder): a population count of
  // that order's bitmap, O(pages / 2^order / 64); for tests and reports, not for hot paths.
  uint64_t free_blocks(unsigned order) const TA_EXCL(lock_);

  // Checks every internal invariant (a non-zero word has its summary bit set, bits past the end
  // are clear, no slot is both free and allocated, the blocks lie in one range each, do not
  // overlap and cover exactly the managed pages, buddies are fully coalesced, counters equal the
  // sums). O(pages * orders). For tests; returns false and stops at the first violation.
  bool check_invariants() const TA_EXCL(lock_);

 private:
  // The bitmaps start at a cache-line boundary, whatever the buffer's alignment.
  static constexpr uint64_t kMetaAlign = 64;
  static constexpr uint64_t kAlignSlack = kMetaAlign - 1;
  // Pages of `r` after trimming inward to page boundaries: [*start, *end), possibly empty.
  // Returns false when the range wraps past 2^64.
  static constexpr bool trim_inward(const PhysRange& r, uint64_t* start, uint64_t* end) {
    uint64_t base = r.base.value();
    if (support::add_overflows(base, r.size)) return false;
    *start = (base >> kPageShift) + ((base & (kPageSize - 1)) != 0 ? 1 : 0);
    *end = (base + r.size) >> kPageShift;
    if (*end < *start) *end = *start;
    return true;
  }
  // Slots of each order a range may take beyond its blocks (see OrderMap): one unused before
  // it, one to give its first slot the parity of its first block, one unused after it.
  static constexpr uint64_t kRangeSlack = 3;
  // Blocks of 2^order pages that fit in pages [start, end): the first one's number, and how many.
  static constexpr uint64_t first_block(uint64_t start, unsigned order) {
    return (start + (1ull << order) - 1) >> order;
  }
  static constexpr uint64_t blocks_in(uint64_t start, uint64_t end, unsigned order) {
    uint64_t first = first_block(start, order);
    uint64_t last = end >> order;  // One past the last block.
    return last > first ? last - first : 0;
  }
  // Words of one order's bitmaps for `slots` slots: level 0 (two words per 64 slots, the free
  // and the allocated bits) and the free bits' summary levels, the top level excluded (it lives
  // in the allocator object, and when it is level 0 its allocated word does too); *top receives
  // the index of the top level.
  static constexpr uint64_t bitmap_words(uint64_t slots, unsigned* top) {
    uint64_t words = 0;
    uint64_t bits = slots;
    unsigned level = 0;
    while (bits > 64) {
      uint64_t w = (bits + 63) / 64;
      words += level == 0 ? 2 * w : w;
      bits = w;
      ++level;
    }
    *top = level;
    return words;
  }

  // Immutable after init.
  struct Range {
    uint64_t start_pfn = 0;
    uint64_t pages = 0;
    uint32_t index = 0;  // Its own index in ranges_ (cheaper than pointer arithmetic).
    // Per order, block number (pfn >> order) minus slot: the same as maps_[order].delta[index],
    // kept here so that free reads one line for its range.
    uint64_t delta[kMaxOrder + 1] = {};
    // Per order, the range's first slot: maps_[order].base[index], kept here so that alloc tells
    // whether a slot lies in the top range without reaching into the order's map.
    uint64_t base[kMaxOrder + 1] = {};
  };
  // 64^9 > 2^52 bits, more than the blocks of any order in a 64-bit address space.
  static constexpr unsigned kMaxLevels = 9;
  // The blocks of one order. A slot is a place a block of this order can lie (naturally
  // aligned, wholly inside one range); slots are numbered through the ranges in address order,
  // range r's from base[r] on, with base[r] of the parity of its first block's number and at
  // least one unused slot before and after each range. So a block and its buddy are always the
  // two bits of an aligned pair in one word, and a buddy outside the range, or a block that runs
  // past its end, falls on a slot that is never set: free and merge test bits without checking
  // the range's bounds. Level 0 holds two words per 64 slots, side by side: in word 2i,
  // bit p % 64 of slot p = 64i + p % 64 is set when a free block lies there, in word 2i + 1 when
  // an allocated one does (free_word / alloc_word). Bit i of level l + 1 summarises free word i
  // of level l (see set_slot); level `top` is one word (top_words_[order][0]; when that is level
  // 0, its allocated word is top_words_[order][1]).
  // The pointers and numbers are fixed by init; the words they point to are guarded by lock_.
  struct OrderMap {
    uint64_t* level[kMaxLevels] = {};
    unsigned top = 0;
    uint64_t slots = 0;
    uint64_t base[kMaxRanges] = {};   // First slot of range r (for an empty range: the next's).
    uint64_t delta[kMaxRanges] = {};  // Block number (pfn >> order) minus slot, for range r.
    uint64_t first[kMaxRanges] = {};  // Block number of range r's first slot.
    uint64_t count[kMaxRanges] = {};  // Slots of range r.
  };
  // No slot has this number (slots count blocks of at least a page in a 64-bit address space).
  static constexpr uint64_t kNoSlot = ~0ull;

  // Band of a page: bands are at least 4 MiB wide and aligned, so a block never straddles two.
  // It is the bit width of x = pfn >> 10, computed as log2(2x + 1) to need no branch for x == 0.
  static unsigned band_of_pfn(uint64_t pfn) {
    return 63u - static_cast<unsigned>(__builtin_clzll((pfn >> (kBandShift - kPageShift - 1)) | 1));
  }
  const Range* lower_range(uint64_t pfn) const;
  // The range holding slot `pos` of `m` (the highest range whose first slot is at or below it).
  uint32_t range_of_slot(const OrderMap& m, uint64_t pos) const {
    uint32_t r = top_index_;
    if (__builtin_expect(m.base[r] > pos, 0)) {
      do --r;
      while (m.base[r] > pos);
    }
    return r;
  }
  static uint64_t* free_word(const OrderMap& m, uint64_t i) { return &m.level[0][2 * i]; }
  // The free word of the word pair holding slot `pos` of order o (level0_: no OrderMap access).
  uint64_t* pair_of(unsigned o, uint64_t pos) const TA_REQ(lock_) {
    return level0_[o] + 2 * (pos >> 6);
  }
  static uint64_t* alloc_word(const OrderMap& m, uint64_t i) { return &m.level[0][(2 * i) + 1]; }
  // Word i of level l: a free word at level 0, a summary word above.
  static uint64_t* level_word(const OrderMap& m, unsigned l, uint64_t i) {
    return &m.level[l][i << (l == 0 ? 1 : 0)];
  }
  // Bitmap operations on order o's map. The hint (hint_[o]) is a word of level 0 above which no
  // bit is set, and the window is the kWindow words ending at it. A summary bit is set when the
  // word below becomes non-empty, except for a level-0 word in the window (set when the window
  // moves off it), and cleared when the word below empties (clear_summary). So a block freed
  // and taken again near the top of the free memory, the common case, costs one word each way,
  // and below the window a summary bit says exactly whether the word below is empty.
  static constexpr uint64_t kWindow = 3;
  // When a block freed far above the window raised the hint, prev_[o] is the word the hint left
  // (kNoPrev otherwise; a block freed between the two moves it up to that block's word), and
  // nothing lies between it and the window: once the high block is taken again, highest_slot
  // reads the words ending at prev_[o] before it climbs the summary levels.
  static constexpr uint64_t kNoPrev = ~0ull;
  // The far block: a free block of order o above the hint's word, the only one there, left out
  // of the hint and the window (far_[o] is its slot, kNoFar when there is none). A block freed
  // above the hint becomes it, where raising the hint to it would cost the old window's summary
  // bits, and taking it again a search back down to the previous hint; the next allocation of
  // its order takes it, and the one after finds the hint's word as it was. A second block freed
  // above the hint, or a search under a limit, settles it: the hint rises to it as before. A
  // merge that takes it in ends it (the merged block is placed as any freed block is).
  static constexpr uint64_t kNoFar = ~0ull;
  void free_above(unsigned o, uint64_t pos, bool was_empty) TA_REQ(lock_);
  void settle_far(unsigned o) TA_REQ(lock_);
  void place_below(unsigned o, uint64_t i, bool was_empty) TA_REQ(lock_);
  void set_slot(unsigned o, uint64_t pos) TA_REQ(lock_);
  void set_summary(unsigned o, unsigned level, uint64_t pos) TA_REQ(lock_);
  void raise_hint(unsigned o, uint64_t i) TA_REQ(lock_);
  void clear_slot(unsigned o, uint64_t pos) TA_REQ(lock_);
  // The highest set slot (at or below slot q), or kNoSlot: the window's words one by one, then
  // search_below, which climbs the summary levels from q and goes down again.
  uint64_t highest_slot(unsigned o) TA_REQ(lock_);
  uint64_t highest_slot_at_or_below(unsigned o, uint64_t q) TA_REQ(lock_);
  uint64_t search_below(unsigned o, uint64_t q) TA_REQ(lock_);
  // The highest slot of order o whose block's first 2^order pages end at or below `limit`.
  uint64_t slot_limit(unsigned o, unsigned order, uint64_t limit) const;

  // Returned by alloc_highest and alloc_under when nothing is free (no address is odd).
  static constexpr uint64_t kAllocFailed = 1;
  // No limit, page alignment: the highest free block of the smallest order >= `order`.
  uint64_t alloc_highest(unsigned order) TA_EXCL(lock_);
  uint64_t alloc_search_and_unlock(unsigned order) TA_REL(lock_);
  // Blocks of 2^order pages aligned to 2^need pages whose first 2^order pages end at or below
  // `limit`: the highest of the smallest order >= need that has one.
  uint64_t alloc_under(unsigned order, unsigned need, uint64_t limit) TA_EXCL(lock_);
  // Takes the free block in slot `pos` of order `have`, splits it down to 2^order pages keeping
  // the lowest piece, marks that piece allocated and returns its address.
  // summarized: the word may have a summary bit (false for the far block's).
  uint64_t take(unsigned have, uint64_t pos, unsigned order, bool summarized = true) TA_REQ(lock_);
  void clear_summary(unsigned o, uint64_t i) TA_REQ(lock_);
  uint64_t take_and_split(unsigned have, uint64_t pos, unsigned order) TA_REQ(lock_);
  // The error of a valid request under `limit` that found nothing: kDmaMaskNotMatch when no
  // block of 2^order pages aligned to 2^need pages could ever lie under it, else kNoMemory.
  // Returns the Result itself so that the inline caller passes its own return slot on.
  Result<PhysAddr> exhausted(unsigned order, unsigned need, uint64_t limit) const;
  Result<PhysAddr> alloc_constrained(unsigned order, uint64_t limit, uint64_t align) TA_EXCL(lock_);
  bool free_block(uint64_t addr, unsigned order) TA_EXCL(lock_);
  bool merge_and_unlock(uint64_t pfn, unsigned order, const Range& r) TA_REL(lock_);
  uint64_t free_pages_locked() const TA_REQ(lock_);
  bool check_maps() const TA_REQ(lock_);
  void count_free(uint64_t* per_range, uint64_t* per_band) const TA_REQ(lock_);
  bool check_blocks() const TA_REQ(lock_);
  // Whether slot `pos` of order o holds a free (or, with `allocated`, an allocated) block.
  bool slot_bit(unsigned o, uint64_t pos, bool allocated) const TA_REQ(lock_);

  mutable support::SpinLock lock_;
  Range ranges_[kMaxRanges];
  size_t num_ranges_ = 0;
  const Range no_range_;                 // Holds nothing: the top range before init.
  const Range* top_range_ = &no_range_;  // The highest range, where free() looks first.
  uint32_t top_index_ = 0;               // Its index (0 before init).
  uintptr_t direct_map_offset_ = 0;
  PhysAddr lowest_;
  PhysAddr highest_;
  bool initialized_ = false;
  uint64_t managed_pages_ = 0;
  uint64_t managed_per_range_[kMaxRanges] = {};
  uint64_t metadata_bytes_ = 0;
  PagePoisonChecker poison_;
  // The top word of each order's map (and, when the top is level 0, its allocated word).
  uint64_t top_words_[kMaxOrder + 1][2] TA_GUARDED(lock_) = {};
  // Each order's level 0 (maps_[o].level[0]), side by side for the hot paths.
  uint64_t* level0_[kMaxOrder + 1] = {};
  // For each order, a word of level 0 above which no bit is set (raised by set_slot, lowered by
  // a search that finds it empty): the highest free block is usually found in one load.
  uint64_t hint_[kMaxOrder + 1] TA_GUARDED(lock_) = {};
  uint64_t far_[kMaxOrder + 1] TA_GUARDED(lock_) = {kNoFar, kNoFar, kNoFar, kNoFar, kNoFar, kNoFar,
                                                    kNoFar, kNoFar, kNoFar, kNoFar, kNoFar};
  uint64_t prev_[kMaxOrder + 1] TA_GUARDED(lock_) = {kNoPrev, kNoPrev, kNoPrev, kNoPrev,
                                                     kNoPrev, kNoPrev, kNoPrev, kNoPrev,
                                                     kNoPrev, kNoPrev, kNoPrev};
  // Free pages overall (per range and per band, stats() counts them from the bitmaps: one
  // counter is all the hot paths update).
  uint64_t free_pages_ TA_GUARDED(lock_) = 0;
  OrderMap maps_[kMaxOrder + 1];
};
