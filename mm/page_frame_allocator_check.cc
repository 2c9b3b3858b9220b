// PageFrameAllocator's invariant checker (check_invariants and its two halves): for tests,
// fuzzers and a kernel's own debugging. In a file of its own, so that it is a member of libdma.a
// that a kernel's link pulls in only when the kernel calls it.
#include "dmakit/page_frame_allocator.h"
#include "dmakit/support/compiler.h"
#include "mm/page_frame_allocator_internal.h"

using namespace pfa_internal;  // NOLINT(google-build-using-namespace): the file's own helpers

// Checks each order's map: every summary bit says whether the word below is non-zero, no bit
// past the end of a level is set, and every set bit of level 0 is a block inside its range whose
// state byte says free with this order. Counts the free pages per band and range, and the blocks.
SUPPORT_COLD bool PageFrameAllocator::check_maps(uint64_t* per_range, uint64_t* blocks) const {
  for (unsigned o = 0; o <= kMaxOrder; ++o) {
    const OrderMap& m = maps_[o];
    if (m.level[m.top] != &top_words_[o]) return false;
    // Nothing is set between the previous hint and the window, when it lies below the window (it
    // is ignored otherwise).
    if (prev_[o] != kNoPrev) {
      for (uint64_t i = prev_[o] + 1; i + kWindow <= hint_[o]; ++i) {
        if (m.level[0][i] != 0) return false;
      }
    }
    // Nothing is set in level 0 above the hint's word.
    if (hint_[o] >= support::max<uint64_t>(1, (m.slots + 63) / 64)) return false;
    for (uint64_t i = hint_[o] + 1; i < (m.slots + 63) / 64; ++i) {
      if (m.level[0][i] != 0) return false;
    }
    uint64_t bits = m.slots;
    for (unsigned l = 0; l <= m.top; ++l) {
      uint64_t words = l == m.top ? 1 : (bits + 63) / 64;
      for (uint64_t i = 0; i < words; ++i) {
        uint64_t w = m.level[l][i];
        // The bits of word i that stand for slots (or words below): the rest must be clear.
        uint64_t valid = ~0ull;
        if (i * 64 >= bits) {
          valid = 0;
        } else if (bits - (i * 64) < 64) {
          valid = bits_up_to(bits - (i * 64) - 1);
        }
        if ((w & ~valid) != 0) return false;
        // A non-empty word has its summary bit (a set one may be stale, see clear_slot), unless
        // it is a level-0 word of the window.
        bool window = l == 0 && i <= hint_[o] && hint_[o] - i < kWindow;
        if (l < m.top && w != 0 && !window && ((m.level[l + 1][i >> 6] >> (i & 63)) & 1) == 0) {
          return false;
        }
      }
      bits = words;
    }
    for (uint64_t i = 0; i < (m.slots + 63) / 64; ++i) {
      for (uint64_t w = m.level[0][i]; w != 0; w &= w - 1) {
        uint64_t pos = (i * 64) + support::ctz(w);
        uint32_t ri = range_of_slot(m, pos);
        if (pos - m.base[ri] >= m.count[ri]) return false;
        const Range& r = ranges_[ri];
        uint64_t pfn = (pos + m.delta[ri]) << o;
        uint64_t pages = 1ull << o;
        if (pfn < r.start_pfn || pfn + pages > r.start_pfn + r.pages) return false;
        if (r.state[pfn - r.start_pfn] != state_byte(kStateFree, o)) return false;
        per_range[ri] += pages;
        ++*blocks;
      }
    }
  }
  return true;
}

// Walks every range's state bytes block by block: each page is reserved or belongs to exactly
// one block, whose head is aligned and whose other pages are interior; no free block has a free
// buddy of its order (everything is coalesced); the free heads are exactly the mapped blocks.
SUPPORT_COLD bool PageFrameAllocator::check_states(const uint64_t* per_range,
                                                   uint64_t blocks) const {
  uint64_t free_heads = 0;
  uint64_t managed = 0;
  for (size_t i = 0; i < num_ranges_; ++i) {
    const Range& r = ranges_[i];
    uint64_t range_managed = 0;
    uint64_t range_free = 0;
    uint64_t p = 0;
    while (p < r.pages) {
      uint8_t s = r.state[p];
      if (s == kStateReserved) {
        ++p;
        continue;
      }
      uint8_t kind = s & kStateKindMask;
      unsigned o = s & kStateOrderMask;
      if ((kind != kStateFree && kind != kStateAllocated) || o > kMaxOrder) return false;
      uint64_t pfn = r.start_pfn + p;
      uint64_t pages = 1ull << o;
      if ((pfn & (pages - 1)) != 0 || p + pages > r.pages) return false;
      for (uint64_t q = 1; q < pages; ++q) {
        if (r.state[p + q] != kStateInterior) return false;
      }
      if (kind == kStateFree) {
        ++free_heads;
        range_free += pages;
        uint64_t boff = (pfn ^ pages) - r.start_pfn;
        if (o < kMaxOrder && boff < r.pages && r.state[boff] == s) return false;
      }
      range_managed += pages;
      p += pages;
    }
    if (range_managed != managed_per_range_[i] || range_free != per_range[i]) return false;
    if (free_per_range_[i] != range_free) return false;
    managed += range_managed;
  }
  return managed == managed_pages_ && free_heads == blocks;
}

SUPPORT_COLD bool PageFrameAllocator::check_invariants() const {
  support::Guard guard{&lock_};
  if (!initialized_) {
    if (free_pages_locked() != 0) return false;
    for (uint64_t w : top_words_) {
      if (w != 0) return false;
    }
    return true;
  }
  uint64_t per_range[kMaxRanges] = {};
  uint64_t blocks = 0;
  if (!check_maps(per_range, &blocks)) return false;
  if (!check_states(per_range, blocks)) return false;
  return free_pages_locked() <= managed_pages_;
}
