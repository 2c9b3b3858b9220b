// PageFrameAllocator: a binary buddy allocator with out-of-band bookkeeping, for mask-constrained
// DMA.
//
// The scheme
// ----------
// Memory is a set of up to kMaxRanges page ranges (sorted, disjoint). A block of 2^k pages is
// naturally aligned in physical address (pfn % 2^k == 0) and lies inside one range; its buddy is
// pfn ^ 2^k and is merged only when it lies in the same range and is free with the same order.
// All bookkeeping lives in the caller's metadata buffer and in this object; the allocator never
// reads or writes a managed page, so nothing a device writes into memory it was once given can
// steer it (the free lists of a classic buddy allocator live in the free pages: a stale DMA
// descriptor that writes after free plants a pointer the next allocation writes through).
//
// Slots. For each order k, the slots are the places a block of 2^k pages can lie, numbered
// through the ranges in ascending address order (range r's slots from base[r] on, with slot =
// (pfn >> k) - delta[r]), so slot order is address order across all ranges. Each range's first
// slot has the parity of its first block's number, and an unused slot lies before and after each
// range: a block and its buddy are then the two bits of an aligned pair, and a buddy outside the
// range, or a block that would run past its end, is an unused slot, never set.
//
// Level 0 has two words per 64 slots, side by side: a free bit per slot (a free block lies there)
// and an allocated bit (an allocated block does). Nothing else records a page's state: free()
// checks its argument exactly (its allocated bit at its order must be set), merging asks the
// buddy's free bit, splitting sets the free bits of the upper halves. A free, its merges and its
// check touch one word pair per order involved: one cache line each, of metadata that is about
// half a byte per page (2 MiB for 16 GiB), where a state byte per page alone was twice that, and
// a free list's links are a random line anywhere in RAM. Level l + 1 has a bit per free word of
// level l (a summary bit); the top level is a single word, kept in this object.
// A search for the highest set bit at or below slot q masks q's word at level 0; when that is
// empty it goes up to the summary bits at or below the word before, and once a level has a bit it
// goes down, one find-last-set (clz) and one load per level: at most twice the number of levels.
//
// Refinements make the common cases a word or two each way, as a free list's are:
//   - The hint: per order, a word of level 0 above which nothing is set. The highest free block
//     is usually in it: one load and a find-last-set. A block freed above it raises it; a search
//     that finds it empty lowers it.
//   - The window: the kWindow words ending at the hint need no summary bits (a block freed and
//     taken again near the top of the free memory, where allocation happens, changes one word),
//     and are read directly by every search. The words the window leaves when the hint rises get
//     their summary bits then; when it comes down, the words it passes are empty.
//   - The previous hint: when a block freed far above the window raises the hint, the word it
//     left is remembered (nothing lies between the two), so that once that block is taken
//     again the search reads the words there instead of climbing the summary levels.
//   - The far block: a block freed more than the window above the hint is kept aside (one per
//     order) rather than raising the hint: it is the highest free block, the next allocation of
//     its order takes it, and the one after finds the hint's word as it was, where raising the
//     hint would have cost the old window's summary bits and a search back down. A second block
//     freed above the hint, or a search under a limit, settles it (the hint rises to it).
//   - Exact summaries: a level-0 word that empties (a block taken or merged away) clears its
//     summary bit at once, and so on up while a summary word empties. So a set summary bit always
//     means a non-empty word and a search never goes down into an empty one: its cost does not
//     grow with the number of words that emptied since the last search, which on a large memory
//     was most of it. Words of the window, and the far block's, may lack their bits.
// A request under a limit turns it into a slot bound for each order it tries (the highest slot
// whose block's kept piece ends at or below the limit: a scan of the ranges from the top), so
// every limit is exact: alloc fails only when nothing suitable is free.
// The bitmaps take about four bits per page (two bits per slot, a slot per page for order 0,
// half that for order 1, and so on) plus 1/127 of that for the summaries, 3 unused slots per
// range and order, and 63 bytes to start at a cache line. Bitmaps of 64 slots or fewer are their
// top word pair, in this object: tiny memory uses none of the buffer.
//
// alloc(order, limit, align): need = max(order, log2(align) - 12). For k from need up to
// kMaxOrder, the highest free block of order k whose lowest 2^order pages end at or below the
// limit (high memory first, so that low memory stays for constrained devices; the smallest order
// first, so that large blocks stay whole). It is taken and split down to `order`, keeping the
// lowest piece (aligned to 2^k >= 2^need pages) and freeing the upper halves.
//
// free(addr, order): find the range (one unsigned compare per range, at most kMaxRanges), check
// and clear the allocated bit, then merge upwards while the buddy is a free block of the same
// order (in the same range: see the unused slots), each merge clearing the buddy's free bit.
//
// Costs: alloc without a limit, when the hint's word of the request's order has a block: a load,
// a find-last-set, the slot's range (one compare for the top range, then one per range below),
// and a store to each word of the pair. Otherwise, per order tried, the window's words
// and a search (O(levels)); per split, a bit set (O(1)
// in the window, O(levels) at worst elsewhere). Under a limit, per order tried, a scan of the
// ranges and a bounded search. free: the range (the top one first, then O(kMaxRanges)), a bit
// test, then per merge a bit test and a bit cleared, and one bit set. Levels =
// ceil(log64(slots)) - 1 below the top word: 3 for order 0 of 64 GiB. init O(pages + ranges *
// reserved^2); stats and free_blocks O(pages); check_invariants O(pages * orders); free_pages
// O(1). A block taken or freed touches one word pair per order split or merged and rarely a
// summary word: a few lines of the metadata, which is about 1/8000 of the memory. The
// common cases return a plain register (the header's inline alloc/free build the Result in the
// caller); splitting, merging, searching, alignment and errors are out of line.
#include "dmakit/page_frame_allocator.h"
#include "mm/page_frame_allocator_internal.h"

#include "dmakit/support/assert.h"
#include "dmakit/support/bitops.h"
#include "dmakit/support/compiler.h"
#include "dmakit/support/mem.h"
#include "dmakit/support/utility.h"

using namespace pfa_internal;  // NOLINT(google-build-using-namespace): the file's own helpers

// The state byte encoding and bit helpers: mm/page_frame_allocator_internal.h.

// ---- PagePoisonChecker ----

void PagePoisonChecker::fill(void* block, uint64_t bytes) {
  support::fill_bytes(block, kPattern, static_cast<size_t>(bytes));
}

void PagePoisonChecker::check(const void* block, uint64_t bytes) {
  // Word compares: this runs on every allocation of a poisoning build.
  constexpr uint64_t kWord = 0x0101010101010101ull * kPattern;
  const auto* w = static_cast<const uint64_t*>(block);
  for (uint64_t i = 0; i < bytes / sizeof(uint64_t); ++i) {
    KASSERT(w[i] == kWord, "page written after it was freed (use after free)");
  }
}

// ---- PageFrameAllocator ----

SUPPORT_COLD void PageFrameAllocator::shutdown() const {
#if KDEBUG_ENABLED
  support::Guard guard{&lock_};
  KASSERT(free_pages_locked() == managed_pages_,
          "PageFrameAllocator shut down with pages still allocated");
#endif
}

unsigned PageFrameAllocator::order_for(uint64_t bytes) {
  if (bytes == 0) return 0;
  uint64_t pages = ((bytes - 1) >> kPageShift) + 1;
  unsigned order = support::log2_ceil(pages);
  return order > kMaxOrder ? kMaxOrder + 1 : order;
}

PhysRange PageFrameAllocator::range(size_t i) const {
  KASSERT(i < num_ranges_, "range index out of bounds");
  const Range& r = ranges_[i];
  return PhysRange{PhysAddr(r.start_pfn << kPageShift), r.pages << kPageShift};
}

void PageFrameAllocator::set_poisoning(bool on) {
  KASSERT(!initialized_, "set_poisoning after init");
  poison_.set_enabled(on);
}

SUPPORT_COLD Result<void> PageFrameAllocator::init(support::Span<const PhysRange> ranges,
                                                   support::Span<const PhysRange> reserved,
                                                   uintptr_t direct_map_offset, void* metadata,
                                                   size_t metadata_bytes) {
  support::Guard guard{&lock_};
  if (initialized_) return ErrorCode::kInvalidArgument;
  if (ranges.size() > kMaxRanges) return ErrorCode::kInvalidArgument;

  // Validate everything before writing anything, so a failed call changes nothing.
  PhysRange sorted[kMaxRanges];
  size_t n = 0;
  for (const PhysRange& r : ranges) {
    if (r.size == 0) continue;
    if (support::add_overflows(r.base.value(), r.size)) return ErrorCode::kInvalidArgument;
    size_t i = n++;
    while (i > 0 && sorted[i - 1].base > r.base) {
      sorted[i] = sorted[i - 1];
      --i;
    }
    sorted[i] = r;
  }
  for (size_t i = 0; i + 1 < n; ++i) {
    if (sorted[i].end() > sorted[i + 1].base) return ErrorCode::kInvalidArgument;
  }
  size_t need = metadata_size(ranges);
  if (metadata_bytes < need || (need > 0 && metadata == nullptr)) return ErrorCode::kNoMemory;

  // Ranges, trimmed to pages.
  auto* meta = static_cast<uint8_t*>(metadata);
  num_ranges_ = 0;
  for (size_t i = 0; i < n; ++i) {
    uint64_t s = 0;
    uint64_t e = 0;
    trim_inward(sorted[i], &s, &e);
    if (s == e) continue;
    Range& r = ranges_[num_ranges_++];
    r.start_pfn = s;
    r.pages = e - s;
    r.index = static_cast<uint32_t>(num_ranges_ - 1);
    managed_per_range_[r.index] = 0;
  }

  // The bitmaps, from a cache-line boundary: first every order's level 0 (pairs of words, so no
  // pair straddles two lines), then every order's summary levels from 1 up, each zeroed; the top
  // word (with, for a top level 0, its allocated word) is top_words_[o].
  auto* words = reinterpret_cast<uint64_t*>(
      meta + (support::align_up(reinterpret_cast<uintptr_t>(meta), kMetaAlign) -
              reinterpret_cast<uintptr_t>(meta)));
  uint64_t* const first_word = words;
  for (unsigned o = 0; o <= kMaxOrder; ++o) {
    OrderMap& m = maps_[o];
    m = OrderMap{};
    uint64_t slots = 1;  // Slot 0 is unused: the one before the first range.
    for (size_t i = 0; i < num_ranges_; ++i) {
      Range& r = ranges_[i];
      m.first[i] = first_block(r.start_pfn, o);
      m.count[i] = blocks_in(r.start_pfn, r.start_pfn + r.pages, o);
      // After the unused slot that ends the previous range, one more if the parity of the first
      // slot and block differ; one unused slot after the range.
      uint64_t lo = slots;
      m.base[i] = lo + ((m.first[i] - lo) & 1);
      m.delta[i] = m.first[i] - m.base[i];
      r.delta[o] = m.delta[i];
      r.base[o] = m.base[i];
      slots = m.base[i] + m.count[i] + 1;
    }
    m.slots = slots;
    (void)bitmap_words(slots, &m.top);
    if (m.top > 0) {
      m.level[0] = words;
      words += 2 * ((slots + 63) / 64);
    }
    level0_[o] = m.level[0];
  }
  for (unsigned o = 0; o <= kMaxOrder; ++o) {
    OrderMap& m = maps_[o];
    uint64_t bits = (m.slots + 63) / 64;
    for (unsigned l = 1; l < m.top; ++l) {
      m.level[l] = words;
      bits = (bits + 63) / 64;
      words += bits;
    }
    top_words_[o][0] = 0;
    top_words_[o][1] = 0;
    hint_[o] = 0;
    prev_[o] = kNoPrev;
    m.level[m.top] = &top_words_[o][0];
    if (m.top == 0) level0_[o] = m.level[0];
  }
  if (words != first_word) {
    support::fill_bytes(first_word, 0, static_cast<size_t>(words - first_word) * sizeof(uint64_t));
  }

  direct_map_offset_ = direct_map_offset;

  // Each run of pages between reserved pieces (trimmed outward) becomes the largest naturally
  // aligned blocks that fit.
  uint64_t lowest = 0;
  uint64_t highest = 0;
  uint64_t managed = 0;
  for (size_t i = 0; i < num_ranges_; ++i) {
    Range& r = ranges_[i];
    uint64_t p = r.start_pfn;
    uint64_t end = r.start_pfn + r.pages;
    while (p < end) {
      // The end of the reserved pieces covering p, and the start of the next one above it.
      uint64_t covered = p;
      uint64_t next = end;
      for (const PhysRange& res : reserved) {
        if (res.size == 0) continue;
        uint64_t base = res.base.value();
        uint64_t rs = base >> kPageShift;
        uint64_t re = kPfnLimit;
        if (!support::add_overflows(base, res.size)) {
          uint64_t e = base + res.size;
          re = (e >> kPageShift) + ((e & kPageMask) != 0 ? 1 : 0);
        }
        if (rs <= p && p < re) covered = support::max(covered, re);
        if (rs > p) next = support::min(next, rs);
      }
      if (covered > p) {
        p = covered;
        continue;
      }
      uint64_t q = next;
      if (managed == 0) lowest = p;
      highest = q;
      managed += q - p;
      managed_per_range_[i] += q - p;
      while (p < q) {
        unsigned order = kMaxOrder;
        if (p != 0) order = support::min(order, support::ctz(p));
        order = support::min(order, support::log2_floor(q - p));
        set_slot(order, (p >> order) - r.delta[order]);
        poison_.on_free(phys_to_virt(PhysAddr(p << kPageShift)), kPageSize << order);
        p += 1ull << order;
      }
    }
  }
  if (num_ranges_ != 0) {
    top_index_ = static_cast<uint32_t>(num_ranges_ - 1);
    top_range_ = &ranges_[top_index_];
  }
  managed_pages_ = managed;
  free_pages_ = managed;
  lowest_ = PhysAddr(lowest << kPageShift);
  highest_ = PhysAddr(highest << kPageShift);
  metadata_bytes_ = need;
  initialized_ = true;
  return support::ok();
}

// ---- Bitmaps ----

inline void PageFrameAllocator::set_summary(unsigned o, unsigned l, uint64_t pos) {
  const OrderMap& m = maps_[o];
  for (; l <= m.top; ++l) {
    uint64_t* w = level_word(m, l, pos >> 6);
    uint64_t old = *w;
    *w = old | (1ull << (pos & 63));
    if (old != 0) return;  // A non-zero word already has its bit in the level above.
    pos >>= 6;
  }
}

inline void PageFrameAllocator::set_slot(unsigned o, uint64_t pos) {
  uint64_t* l0 = level0_[o];
  uint64_t i = pos >> 6;
  uint64_t* w = &l0[2 * i];
  uint64_t old = *w;
  *w = old | (1ull << (pos & 63));
  uint64_t h = hint_[o];
  if (__builtin_expect(h - i < kWindow, 1)) {  // In the window (i > h wraps: not).
    // When the words above it in the window are empty, the hint comes down to this word, so
    // that the next allocation finds this block in one load.
    if (i != h && l0[2 * h] == 0 && (i + 1 == h || l0[2 * (h - 1)] == 0)) hint_[o] = i;
    return;
  }
  if (i > h) {
    if (i - h >= kWindow && far_[o] == kNoFar) {
      far_[o] = pos;  // Far above, and the first there: the far block.
    } else {
      free_above(o, pos, old == 0);
    }
    return;
  }
  place_below(o, i, old == 0);
}

// Word i (below the window) has just had a bit set; was_empty: it had none before.
void PageFrameAllocator::place_below(unsigned o, uint64_t i, bool was_empty) {
  // Between the previous hint and the window, which is empty: the previous hint moves up to it
  // (the words it passes are empty; the ones it leaves below have their summary bits).
  if (i > prev_[o]) prev_[o] = i;
  if (was_empty) set_summary(o, 1, i);
}

// Slot pos, above the hint's word, has just been set, and is not the far block (see far_): it
// lies just above the window, or there is a far block already.
[[gnu::noinline]] void PageFrameAllocator::free_above(unsigned o, uint64_t pos, bool was_empty) {
  // A second block above the hint: the far one settles (the hint rises to its word), and this
  // one is placed against the new hint.
  settle_far(o);
  uint64_t i = pos >> 6;
  uint64_t h = hint_[o];
  if (h - i < kWindow) return;  // In the window (f's word or just below it).
  if (i > h) {
    if (i - h < kWindow) {
      raise_hint(o, i);
    } else {
      far_[o] = pos;
    }
    return;
  }
  place_below(o, i, was_empty);  // Between the old hint and the far block's word.
}

// The far block, if any, joins the rest: the hint rises to its word.
void PageFrameAllocator::settle_far(unsigned o) {
  uint64_t f = far_[o];
  if (f == kNoFar) return;
  far_[o] = kNoFar;
  raise_hint(o, f >> 6);
}

// The hint rises to word i: the words of the old window that the new one leaves get their
// summary bits (the new window holds word i, whose summary bit may then stay clear).
[[gnu::noinline]] void PageFrameAllocator::raise_hint(unsigned o, uint64_t i) {
  const OrderMap& m = maps_[o];
  uint64_t h = hint_[o];
  if (i >= kWindow) {
    uint64_t last = support::min(h, i - kWindow);
    for (uint64_t j = h >= kWindow - 1 ? h - (kWindow - 1) : 0; j <= last; ++j) {
      if (*free_word(m, j) != 0) set_summary(o, 1, j);
    }
  }
  // Far up, the old hint is remembered (nothing lies between); just above, the words the window
  // left may hold something.
  prev_[o] = i - h >= kWindow ? h : kNoPrev;
  hint_[o] = i;
}

inline void PageFrameAllocator::clear_slot(unsigned o, uint64_t pos) {
  uint64_t* w = pair_of(o, pos);
  uint64_t left = *w & ~(1ull << (pos & 63));
  *w = left;
  if (left == 0) clear_summary(o, pos >> 6);
}

// Word i of order o's level 0 has just become empty: its summary bit goes (a word of the window
// may have none), and each summary word that empties takes its own bit with it.
[[gnu::noinline]] void PageFrameAllocator::clear_summary(unsigned o, uint64_t i) {
  const OrderMap& m = maps_[o];
  for (unsigned l = 1; l <= m.top; ++l) {
    uint64_t* s = &m.level[l][i >> 6];
    uint64_t old = *s;
    uint64_t left = old & ~(1ull << (i & 63));
    if (left == old) return;  // The bit was clear: the summaries above are as they were.
    *s = left;
    if (left != 0) return;
    i >>= 6;
  }
}

uint64_t PageFrameAllocator::highest_slot(unsigned o) {
  uint64_t f = far_[o];
  if (f != kNoFar) {  // Above everything else.
    far_[o] = kNoFar;
    return f;
  }
  const OrderMap& m = maps_[o];
  // The window first: nothing lies above the hint's word.
  uint64_t h = hint_[o];
  uint64_t low = h >= kWindow - 1 ? h - (kWindow - 1) : 0;
  for (uint64_t i = h;; --i) {
    uint64_t w = *free_word(m, i);
    if (w != 0) {
      hint_[o] = i;  // Lowers the hint: the words it passes are empty.
      return (i << 6) | support::log2_floor(w);
    }
    if (i == low) break;
  }
  // Then the words ending at the previous hint, when the hint jumped up from there and nothing
  // was freed in between: a block freed high above the others has just been taken again.
  uint64_t p = prev_[o];
  prev_[o] = kNoPrev;
  if (p < low) {  // Else the window has come down to it or below: nothing to add.
    low = p >= kWindow - 1 ? p - (kWindow - 1) : 0;
    for (uint64_t i = p;; --i) {
      uint64_t w = *free_word(m, i);
      if (w != 0) {
        hint_[o] = i;
        return (i << 6) | support::log2_floor(w);
      }
      if (i == low) break;
    }
  }
  // Below the window every non-empty word has its summary bit.
  uint64_t pos = low == 0 ? kNoSlot : search_below(o, (low << 6) - 1);
  hint_[o] = pos == kNoSlot ? 0 : pos >> 6;
  return pos;
}

uint64_t PageFrameAllocator::highest_slot_at_or_below(unsigned o, uint64_t q) {
  settle_far(o);
  const OrderMap& m = maps_[o];
  uint64_t h = hint_[o];
  uint64_t low = h >= kWindow - 1 ? h - (kWindow - 1) : 0;
  uint64_t qi = q >> 6;
  if (qi < low) return search_below(o, q);
  // Nothing lies above the hint's word; the window's words are read directly.
  for (uint64_t i = support::min(qi, h);; --i) {
    uint64_t w = *free_word(m, i);
    if (i == qi) w &= bits_up_to(q & 63);
    if (w != 0) return (i << 6) | support::log2_floor(w);
    if (i == low) break;
  }
  return low == 0 ? kNoSlot : search_below(o, (low << 6) - 1);
}

uint64_t PageFrameAllocator::search_below(unsigned o, uint64_t q) {
  const OrderMap& m = maps_[o];
  uint64_t pos = q;
  unsigned l = 0;
  // Up: at level l, the highest set bit at or below `pos`; when its word has none, the bits of
  // the level above at or below the word before it (below the window, a clear summary bit means
  // an empty word, so nothing is skipped).
  uint64_t w;
  for (;;) {
    w = *level_word(m, l, pos >> 6) & bits_up_to(pos & 63);
    if (w != 0) break;
    if (l == m.top || (pos >> 6) == 0) return kNoSlot;
    pos = (pos >> 6) - 1;
    ++l;
  }
  pos = (pos & ~63ull) | support::log2_floor(w);
  // Down: the highest set bit of each word below (a set summary bit means a non-empty word).
  for (; l > 0; --l) {
    uint64_t below = *level_word(m, l - 1, pos);
    KDEBUG_ASSERT(below != 0, "page-frame allocator: summary bit over an empty word");
    pos = (pos << 6) | support::log2_floor(below);
  }
  return pos;
}

uint64_t PageFrameAllocator::slot_limit(unsigned o, unsigned order, uint64_t limit) const {
  uint64_t last = (kPageSize << order) - 1;  // Offset of the kept piece's last byte.
  if (limit < last) return kNoSlot;
  uint64_t block = ((limit - last) >> kPageShift) >> o;  // Highest block number allowed.
  const OrderMap& m = maps_[o];
  for (size_t r = num_ranges_; r-- > 0;) {
    if (m.count[r] == 0 || m.first[r] > block) continue;
    return m.base[r] + support::min(block - m.first[r], m.count[r] - 1);
  }
  return kNoSlot;
}

// ---- alloc ----

// Takes the block (see the header). Splitting is the uncommon case: out of line.
inline uint64_t PageFrameAllocator::take(unsigned have, uint64_t pos, unsigned order,
                                         bool summarized) {
  if (__builtin_expect(have != order, 0)) return take_and_split(have, pos, order);
  uint64_t* w = pair_of(order, pos);
  uint64_t bit = 1ull << (pos & 63);
  uint64_t left = w[0] & ~bit;
  w[0] = left;
  w[1] |= bit;  // Its allocated word.
  if (__builtin_expect(left == 0, 0) && summarized) clear_summary(order, pos >> 6);
  // The top range first (alloc prefers high memory).
  const Range* r = top_range_;
  if (__builtin_expect(pos < r->base[order], 0)) {
    r = &ranges_[range_of_slot(maps_[order], pos)];
  }
  free_pages_ -= 1ull << order;
  return ((pos + r->delta[order]) << order) << kPageShift;
}

[[gnu::noinline]] uint64_t PageFrameAllocator::take_and_split(unsigned have, uint64_t pos,
                                                              unsigned order) {
  const OrderMap& m = maps_[have];
  uint32_t ri = range_of_slot(m, pos);
  const Range& r = ranges_[ri];
  uint64_t pfn = (pos + r.delta[have]) << have;
  clear_slot(have, pos);
  while (have > order) {
    --have;
    uint64_t half = 1ull << have;
    set_slot(have, ((pfn + half) >> have) - r.delta[have]);
  }
  uint64_t p = (pfn >> order) - r.delta[order];
  pair_of(order, p)[1] |= 1ull << (p & 63);
  free_pages_ -= 1ull << order;
  return pfn << kPageShift;
}

// The common case is straight-line code: the hint's word holds a free block of the request's
// own order. It locks by hand so that everything else is a tail call that unlocks.
uint64_t PageFrameAllocator::alloc_highest(unsigned order) {
  lock_.lock();
  uint64_t pos = far_[order];
  bool far = pos != kNoFar;
  if (__builtin_expect(far, 0)) {
    far_[order] = kNoFar;  // Above everything else.
  } else {
    uint64_t i = hint_[order];
    uint64_t w = level0_[order][2 * i];
    if (__builtin_expect(w == 0, 0)) return alloc_search_and_unlock(order);
    pos = (i << 6) | support::log2_floor(w);
  }
  uint64_t a = take(order, pos, order, !far);  // The far block's word has no summary bit.
  lock_.unlock();
  poison_.on_alloc(phys_to_virt(PhysAddr(a)), kPageSize << order);
  return a;
}

[[gnu::noinline]] uint64_t PageFrameAllocator::alloc_search_and_unlock(unsigned order) {
  uint64_t a = kAllocFailed;
  for (unsigned o = order; o <= kMaxOrder; ++o) {
    uint64_t pos = highest_slot(o);
    if (pos != kNoSlot) {
      a = take(o, pos, order);
      break;
    }
  }
  lock_.unlock();
  if (a != kAllocFailed) poison_.on_alloc(phys_to_virt(PhysAddr(a)), kPageSize << order);
  return a;
}

uint64_t PageFrameAllocator::alloc_under(unsigned order, unsigned need, uint64_t limit) {
  uint64_t a = kAllocFailed;
  lock_.lock();
  for (unsigned o = need; o <= kMaxOrder; ++o) {
    uint64_t bound = slot_limit(o, order, limit);
    if (bound == kNoSlot) continue;
    uint64_t pos = highest_slot_at_or_below(o, bound);
    if (pos != kNoSlot) {
      a = take(o, pos, order);
      break;
    }
  }
  lock_.unlock();
  if (a != kAllocFailed) poison_.on_alloc(phys_to_virt(PhysAddr(a)), kPageSize << order);
  return a;
}

[[gnu::noinline]] Result<PhysAddr> PageFrameAllocator::exhausted(unsigned order, unsigned need,
                                                                 uint64_t limit) const {
  // Could anything ever be had under this limit? Even the lowest managed memory, aligned for
  // this request, would have to end at or below it. (Both fields are fixed by init.)
  if (managed_pages_ != 0) {
    uint64_t last = (kPageSize << order) - 1;  // Offset of the block's last byte.
    uint64_t earliest = support::align_up(lowest_.value(), kPageSize << need);
    if (earliest < lowest_.value() || limit < earliest || limit - earliest < last) {
      return Error(ErrorCode::kDmaMaskNotMatch, lowest_.value(), limit);
    }
  }
  return ErrorCode::kNoMemory;
}

// Everything the inline path does not take: an alignment other than a page, invalid arguments.
[[gnu::noinline]] Result<PhysAddr> PageFrameAllocator::alloc_constrained(unsigned order,
                                                                         uint64_t limit,
                                                                         uint64_t align) {
  if (order > kMaxOrder) return ErrorCode::kLayoutError;
  if (align == 0 || (align & (align - 1)) != 0 || align > (kPageSize << kMaxOrder)) {
    return ErrorCode::kLayoutError;
  }
  if (FAULT_POINT(kPageAlloc)) return ErrorCode::kNoMemory;
  // A larger alignment is met by taking a block of the alignment's size (blocks are naturally
  // aligned) and keeping its lowest piece.
  unsigned need = order;
  if (align > kPageSize) need = support::max(order, support::log2_floor(align) - kPageShift);
  uint64_t a = alloc_under(order, need, limit);
  if (a != kAllocFailed) return PhysAddr(a);
  return exhausted(order, need, limit);
}

// ---- free ----

// The range below the top one that holds pfn, or nullptr.
const PageFrameAllocator::Range* PageFrameAllocator::lower_range(uint64_t pfn) const {
  for (size_t i = num_ranges_ > 0 ? num_ranges_ - 1 : 0; i-- > 0;) {
    if (pfn - ranges_[i].start_pfn < ranges_[i].pages) return &ranges_[i];
  }
  return nullptr;
}

// The body of free (see the header): false when addr is not the head of an allocated block of
// that order. Locks by hand so that merging, which unlocks, is a tail call.
bool PageFrameAllocator::free_block(uint64_t a, unsigned order) {
  uint64_t pfn = a >> kPageShift;
  // Ranges are immutable after init: found without the lock, one unsigned compare per range,
  // from the top down because alloc prefers high memory.
  const Range* r = top_range_;
  if (__builtin_expect(pfn - r->start_pfn >= r->pages, 0)) {  // Wraps below the range.
    r = lower_range(pfn);
    if (r == nullptr) return false;
  }
  // Aligned to the block (which includes the page). A block that runs past the range's end has
  // the slot after the range's last, which is never set.
  if (order > kMaxOrder || (a & ((kPageSize << order) - 1)) != 0) return false;

  lock_.lock();
  // (Computed under the lock, so that little need survive the kernel's irq_save hook.)
  uint64_t pos = (pfn >> order) - r->delta[order];
  uint64_t bit = 1ull << (pos & 63);
  uint64_t* w = pair_of(order, pos);
  uint64_t allocated = w[1];
  if ((allocated & bit) == 0) {  // Not an allocated block of this order.
    lock_.unlock();
    return false;
  }
  w[1] = allocated ^ bit;
  // The block is ours again; the poisoning layer fills it before anyone can take it.
  poison_.on_free(phys_to_virt(PhysAddr(a)), kPageSize << order);
  free_pages_ += 1ull << order;
  // The block's and its buddy's bits (slots have the parity of their block numbers, so buddies
  // are the aligned bit pairs of a word); the buddy's stays clear when it lies outside the range.
  // The block's own free bit is clear: any bit of the pair is the buddy's.
  // (At kMaxOrder, merge_and_unlock merges nothing.)
  if (((w[0] >> (pos & 62)) & 3) != 0) {
    return merge_and_unlock(pfn, order, *r);
  }
  set_slot(order, pos);
  lock_.unlock();
  return true;
}

// Frees the block at pfn (its allocated bit already cleared) whose buddy of the same order is
// free: merges upwards while the buddy is a free block of the current order (a buddy outside
// the range has a slot that is never set).
[[gnu::noinline]] bool PageFrameAllocator::merge_and_unlock(uint64_t pfn, unsigned order,
                                                            const Range& r) {
  while (order < kMaxOrder) {
    uint64_t bpos = ((pfn >> order) ^ 1) - r.delta[order];
    uint64_t* w = pair_of(order, bpos);
    uint64_t mask = 1ull << (bpos & 63);
    uint64_t v = *w;
    if ((v & mask) == 0) break;
    *w = v & ~mask;
    if ((v & ~mask) == 0) clear_summary(order, bpos >> 6);
    if (bpos == far_[order]) far_[order] = kNoFar;  // The far block was the buddy.
    pfn &= ~(1ull << order);
    ++order;
  }
  set_slot(order, (pfn >> order) - r.delta[order]);
  lock_.unlock();
  return true;
}

// ---- Statistics and checks ----

uint64_t PageFrameAllocator::free_pages_locked() const {
  return free_pages_;
}

SUPPORT_COLD PageFrameAllocator::Stats PageFrameAllocator::stats() const {
  Stats s;
  support::Guard guard{&lock_};
  s.managed_pages = managed_pages_;
  s.free_pages = free_pages_locked();
  for (size_t i = 0; i < num_ranges_; ++i) s.managed_pages_per_range[i] = managed_per_range_[i];
  count_free(s.free_pages_per_range, s.free_pages_per_band);
  s.num_ranges = num_ranges_;
  s.metadata_bytes = metadata_bytes_;
  return s;
}

// Every free block is a set bit of level 0 of its order's map.
void PageFrameAllocator::count_free(uint64_t* per_range, uint64_t* per_band) const {
  for (unsigned o = 0; o <= kMaxOrder; ++o) {
    const OrderMap& m = maps_[o];
    for (uint64_t i = 0; i < (m.slots + 63) / 64; ++i) {
      for (uint64_t w = *free_word(m, i); w != 0; w &= w - 1) {
        uint64_t pos = (i * 64) + support::ctz(w);
        uint32_t r = range_of_slot(m, pos);
        uint64_t pfn = (pos + m.delta[r]) << o;
        per_range[r] += 1ull << o;
        per_band[band_of_pfn(pfn)] += 1ull << o;
      }
    }
  }
}

uint64_t PageFrameAllocator::free_pages() const {
  support::Guard guard{&lock_};
  return free_pages_locked();
}

uint64_t PageFrameAllocator::free_blocks(unsigned order) const {
  if (order > kMaxOrder) return 0;
  support::Guard guard{&lock_};
  if (!initialized_) return 0;
  const OrderMap& m = maps_[order];
  uint64_t count = 0;
  for (uint64_t i = 0; i < (m.slots + 63) / 64; ++i) {
    count += static_cast<uint64_t>(__builtin_popcountll(*free_word(m, i)));
  }
  return count;
}
