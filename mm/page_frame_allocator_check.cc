// PageFrameAllocator's invariant checker (check_invariants and its two halves): for tests,
// fuzzers and a kernel's own debugging. In a file of its own, so that it is a member of libdma.a
// that a kernel's link pulls in only when the kernel calls it.
#include "dmakit/page_frame_allocator.h"
#include "dmakit/support/compiler.h"
#include "mm/page_frame_allocator_internal.h"

using namespace pfa_internal;  // NOLINT(google-build-using-namespace): the file's own helpers

bool PageFrameAllocator::slot_bit(unsigned o, uint64_t pos, bool allocated) const {
  const OrderMap& m = maps_[o];
  return ((m.level[0][(2 * (pos >> 6)) + (allocated ? 1 : 0)] >> (pos & 63)) & 1) != 0;
}

// Checks each order's map: every summary bit says whether the free word below is non-zero, no
// bit past the end of a level is set (free or allocated), and no slot is both free and allocated.
SUPPORT_COLD bool PageFrameAllocator::check_maps() const {
  for (unsigned o = 0; o <= kMaxOrder; ++o) {
    const OrderMap& m = maps_[o];
    if (m.level[m.top] != &top_words_[o][0]) return false;
    uint64_t words0 = (m.slots + 63) / 64;
    // Nothing is set between the previous hint and the window, when it lies below the window (it
    // is ignored otherwise).
    if (prev_[o] != kNoPrev) {
      for (uint64_t i = prev_[o] + 1; i + kWindow <= hint_[o]; ++i) {
        if (*free_word(m, i) != 0) return false;
      }
    }
    // Nothing is free in level 0 above the hint's word but the far block, if any.
    if (hint_[o] >= support::max<uint64_t>(1, words0)) return false;
    uint64_t far = far_[o];
    if (far != kNoFar &&
        ((far >> 6) <= hint_[o] || (far >> 6) >= words0 || !slot_bit(o, far, false))) {
      return false;
    }
    for (uint64_t i = hint_[o] + 1; i < words0; ++i) {
      uint64_t allowed = far != kNoFar && (far >> 6) == i ? 1ull << (far & 63) : 0;
      if (*free_word(m, i) != allowed) return false;
    }
    if (m.top > 0 && top_words_[o][1] != 0) return false;  // Unused then.
    uint64_t bits = m.slots;
    for (unsigned l = 0; l <= m.top; ++l) {
      uint64_t words = l == m.top ? 1 : (bits + 63) / 64;
      for (uint64_t i = 0; i < words; ++i) {
        uint64_t w = *level_word(m, l, i);
        // The bits of word i that stand for slots (or words below): the rest must be clear.
        uint64_t valid = ~0ull;
        if (i * 64 >= bits) {
          valid = 0;
        } else if (bits - (i * 64) < 64) {
          valid = bits_up_to(bits - (i * 64) - 1);
        }
        if ((w & ~valid) != 0) return false;
        if (l == 0 && i < words0) {
          uint64_t a = *alloc_word(m, i);
          if ((a & ~valid) != 0 || (a & w) != 0) return false;
        }
        bool window = l == 0 && ((i <= hint_[o] && hint_[o] - i < kWindow) ||
                                 (far != kNoFar && i == (far >> 6)));
        if (l < m.top) {
          bool summary = ((*level_word(m, l + 1, i >> 6) >> (i & 63)) & 1) != 0;
          // A summary bit is set exactly when the word below is non-empty, except that a word of
          // the window, or the far block's, may be non-empty without it.
          if (summary && w == 0) return false;
          if (!summary && w != 0 && !window) return false;
        }
      }
      bits = words;
    }
  }
  return true;
}

// Walks every range page by page: a page either heads exactly one block (a free or an allocated
// slot of exactly one order), which lies in the range and in none of whose other pages any slot
// of any order is set, or is reserved (no slot set). The blocks must cover exactly the managed
// pages of each range, the free ones exactly the free-page counter, and no free block may have a
// free buddy of its order (everything is coalesced).
SUPPORT_COLD bool PageFrameAllocator::check_blocks() const {
  uint64_t managed = 0;
  uint64_t free = 0;
  uint64_t heads = 0;  // Blocks found, free or allocated.
  for (size_t i = 0; i < num_ranges_; ++i) {
    const Range& r = ranges_[i];
    uint64_t range_managed = 0;
    uint64_t range_free = 0;
    // The slot of order o holding the block at pfn, or kNoSlot when no such block fits the range.
    auto slot_of = [&](uint64_t pfn, unsigned o) -> uint64_t {
      if ((pfn & ((1ull << o) - 1)) != 0) return kNoSlot;
      if (pfn < r.start_pfn || pfn - r.start_pfn + (1ull << o) > r.pages) return kNoSlot;
      return (pfn >> o) - r.delta[o];
    };
    uint64_t p = r.start_pfn;
    uint64_t end = r.start_pfn + r.pages;
    while (p < end) {
      unsigned found = kMaxOrder + 1;
      bool is_free = false;
      for (unsigned o = 0; o <= kMaxOrder; ++o) {
        uint64_t pos = slot_of(p, o);
        if (pos == kNoSlot) continue;
        bool f = slot_bit(o, pos, false);
        bool a = slot_bit(o, pos, true);
        if (!f && !a) continue;
        if (found <= kMaxOrder) return false;  // Two blocks start here.
        found = o;
        is_free = f;
      }
      if (found > kMaxOrder) {  // Reserved.
        ++p;
        continue;
      }
      uint64_t pages = 1ull << found;
      // No slot of any order, free or allocated, starts inside the block.
      for (uint64_t q = p + 1; q < p + pages; ++q) {
        for (unsigned o = 0; o <= kMaxOrder; ++o) {
          uint64_t pos = slot_of(q, o);
          if (pos != kNoSlot && (slot_bit(o, pos, false) || slot_bit(o, pos, true))) return false;
        }
      }
      if (is_free) {
        range_free += pages;
        uint64_t buddy = p ^ pages;
        uint64_t bpos = slot_of(buddy, found);
        if (found < kMaxOrder && bpos != kNoSlot && slot_bit(found, bpos, false)) return false;
      }
      range_managed += pages;
      ++heads;
      p += pages;
    }
    if (range_managed != managed_per_range_[i]) return false;
    managed += range_managed;
    free += range_free;
  }
  // And no bit is set outside the ranges' slots (the unused slots around each range).
  uint64_t bits = 0;
  for (unsigned o = 0; o <= kMaxOrder; ++o) {
    for (uint64_t i = 0; i < (maps_[o].slots + 63) / 64; ++i) {
      bits += static_cast<uint64_t>(__builtin_popcountll(*free_word(maps_[o], i)));
      bits += static_cast<uint64_t>(__builtin_popcountll(*alloc_word(maps_[o], i)));
    }
  }
  return managed == managed_pages_ && free == free_pages_ && bits == heads;
}

SUPPORT_COLD bool PageFrameAllocator::check_invariants() const {
  support::Guard guard{&lock_};
  if (!initialized_) {
    if (free_pages_locked() != 0) return false;
    for (const auto& w : top_words_) {
      if (w[0] != 0 || w[1] != 0) return false;
    }
    return true;
  }
  if (!check_maps()) return false;
  if (!check_blocks()) return false;
  return free_pages_locked() <= managed_pages_;
}
