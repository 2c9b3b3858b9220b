// PageFrameAllocator: a binary buddy allocator with address bands, for mask-constrained DMA.
//
// The scheme
// ----------
// Memory is a set of up to kMaxRanges page ranges (sorted, disjoint), each with one metadata byte
// per page: kMetaFree|k heads a free block of 2^k pages, kMetaAllocated|k heads an allocated one,
// kMetaInterior is any other page of a block, kMetaReserved a page that is not managed. Only block
// heads carry a head marker, so splitting and merging rewrite one byte each, and free() can check
// its argument exactly: the byte at addr must be kMetaAllocated|order.
//
// A block of 2^k pages is naturally aligned in physical address (pfn % 2^k == 0) and lies inside
// one range; its buddy is pfn ^ 2^k and is merged only when it lies in the same range and its
// byte says kMetaFree|k. Free blocks are kept in circular doubly linked lists whose nodes are the
// first bytes of the free blocks themselves (through the direct map; a node also records the
// block's metadata byte and range); the sentinels live in this object. There is one list per
// (order, band), a band being a power-of-two slice of physical address space (band 0 = [0, 4 MiB),
// band b = [2^(21+b), 2^(22+b))). A block is at most 4 MiB and aligned, so it never straddles two
// bands, and the buddies it merges with are in its band. band_mask_[k] has bit b set when list
// (k, b) is not empty.
//
// alloc(order, limit, align): `need` = max(order, log2(align) - 12). The bands lying wholly at or
// below `limit` form a bit mask computed in a few instructions; for each k from `need` up to
// kMaxOrder, band_mask_[k] & that mask, if not zero, names the highest such band (high memory is
// used first so that low memory stays for constrained devices); its first block is unlinked and
// split down to `order`, keeping the lowest piece (which is therefore aligned to 2^need pages)
// and pushing the upper halves onto their lists. A limit of the form 2^n - 1 (n >= 22) ends
// exactly at a band boundary, so this is all there is, and the mask of bands under it is just
// limit >> 21: such a request (page-aligned) takes the same inline fast path as one without a
// limit, for a check, a shift and an AND more. Any other limit leaves one band straddling it; only
// when the bands wholly below the limit hold nothing large enough are that band's lists (orders >=
// need) walked for the first block whose kept piece ends at or below the limit.
//
// free(addr, order): find the range (one unsigned compare per range, at most kMaxRanges), check
// the metadata byte, then merge upwards while the buddy is a free block of the same order in the
// same range, each merge unlinking the buddy in O(1).
//
// Costs: alloc O(kMaxOrder) bitmap tests plus O(kMaxOrder) splits (the straddling-band walk
// aside, see above); free O(kMaxRanges + kMaxOrder); stats and free_pages O(bands + ranges); init
// O(pages); check_invariants and free_blocks O(pages). Metadata: one byte per page (1/4096 of
// memory). Free-page counters (per band, per range) change once per operation, not per split or
// merge. The common cases (a page-aligned request with no limit or a band-boundary limit, served
// from a list of its own order; a free whose buddy is not free) are straight-line code returning
// a plain register (the header's inline alloc/free build the Result in the caller); splitting,
// merging, alignment, other limits and errors are out of line, so the hot paths need few
// registers. Measured at -O2 on x86-64 under callgrind: about 33 instructions for such an alloc
// and 85 for such a free, lock included; an order-9 allocation under a 4 GiB limit costs about
// 1.13 times the same without a limit (bench: pfa_masked_order9_ratio).
#include "mm/page_frame_allocator.h"

#include "support/assert.h"
#include "support/bitops.h"
#include "support/mem.h"
#include "support/utility.h"

namespace {

constexpr uint8_t kMetaInterior = 0x00;
constexpr uint8_t kMetaFree = 0x40;
constexpr uint8_t kMetaAllocated = 0x80;
constexpr uint8_t kMetaReserved = 0xff;
constexpr uint8_t kMetaKindMask = 0xc0;
constexpr uint8_t kMetaOrderMask = 0x3f;

constexpr uint8_t meta_byte(uint8_t kind, unsigned order) {
  return static_cast<uint8_t>(kind | order);
}

constexpr uint64_t kPageMask = PageFrameAllocator::kPageSize - 1;
// One past the last page frame of the 64-bit address space.
constexpr uint64_t kPfnLimit = 1ull << (64 - PageFrameAllocator::kPageShift);

// Pages of `r` after trimming inward to page boundaries: [*start, *end), possibly empty.
// Returns false when the range wraps past 2^64.
bool trim_inward(const PhysRange& r, uint64_t* start, uint64_t* end) {
  uint64_t base = r.base.value();
  if (support::add_overflows(base, r.size)) return false;
  *start = (base >> PageFrameAllocator::kPageShift) + ((base & kPageMask) != 0 ? 1 : 0);
  *end = (base + r.size) >> PageFrameAllocator::kPageShift;
  if (*end < *start) *end = *start;
  return true;
}

}  // namespace

PageFrameAllocator::~PageFrameAllocator() {
#if KDEBUG_ENABLED
  support::Guard guard{&lock_};
  KASSERT(free_pages_locked() == managed_pages_,
          "PageFrameAllocator destroyed with pages still allocated");
#endif
}

size_t PageFrameAllocator::metadata_size(support::Span<const PhysRange> ranges) {
  uint64_t total = 0;
  for (const PhysRange& r : ranges) {
    uint64_t s = 0;
    uint64_t e = 0;
    if (trim_inward(r, &s, &e)) total += e - s;
  }
  return static_cast<size_t>(total);
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

Result<void> PageFrameAllocator::init(support::Span<const PhysRange> ranges,
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

  // Ranges, trimmed to pages, each with its slice of the metadata, all pages "interior".
  uint8_t* meta = static_cast<uint8_t*>(metadata);
  num_ranges_ = 0;
  for (size_t i = 0; i < n; ++i) {
    uint64_t s = 0;
    uint64_t e = 0;
    trim_inward(sorted[i], &s, &e);
    if (s == e) continue;
    Range& r = ranges_[num_ranges_++];
    r.start_pfn = s;
    r.pages = e - s;
    r.meta = meta;
    r.index = static_cast<uint32_t>(num_ranges_ - 1);
    managed_per_range_[r.index] = 0;
    support::fill_bytes(meta, kMetaInterior, static_cast<size_t>(r.pages));
    meta += r.pages;
  }

  // Reserved pieces, trimmed outward.
  for (const PhysRange& res : reserved) {
    if (res.size == 0) continue;
    uint64_t base = res.base.value();
    uint64_t rs = base >> kPageShift;
    uint64_t re = kPfnLimit;
    if (!support::add_overflows(base, res.size)) {
      uint64_t end = base + res.size;
      re = (end >> kPageShift) + ((end & kPageMask) != 0 ? 1 : 0);
    }
    for (size_t i = 0; i < num_ranges_; ++i) {
      Range& r = ranges_[i];
      uint64_t lo = support::max(rs, r.start_pfn);
      uint64_t hi = support::min(re, r.start_pfn + r.pages);
      if (lo < hi) {
        support::fill_bytes(r.meta + (lo - r.start_pfn), kMetaReserved,
                            static_cast<size_t>(hi - lo));
      }
    }
  }

  direct_map_offset_ = direct_map_offset;
  for (auto& order_heads : heads_) {
    for (Link& h : order_heads) {
      h.next = &h;
      h.prev = &h;
    }
  }
  for (uint64_t& m : band_mask_) m = 0;
  for (uint64_t& f : free_per_band_) f = 0;
  for (uint64_t& f : free_per_range_) f = 0;

  // Each run of unreserved pages becomes the largest naturally aligned blocks that fit.
  uint64_t lowest = 0;
  uint64_t highest = 0;
  uint64_t managed = 0;
  for (size_t i = 0; i < num_ranges_; ++i) {
    Range& r = ranges_[i];
    uint64_t p = r.start_pfn;
    uint64_t end = r.start_pfn + r.pages;
    while (p < end) {
      if (r.meta[p - r.start_pfn] == kMetaReserved) {
        ++p;
        continue;
      }
      uint64_t q = p;
      while (q < end && r.meta[q - r.start_pfn] != kMetaReserved) ++q;
      if (managed == 0) lowest = p;
      highest = q;
      managed += q - p;
      managed_per_range_[i] += q - p;
      while (p < q) {
        unsigned order = kMaxOrder;
        if (p != 0) order = support::min(order, support::ctz(p));
        order = support::min(order, support::log2_floor(q - p));
        unsigned band = band_of_pfn(p);
        uint8_t* m = r.meta + (p - r.start_pfn);
        *m = meta_byte(kMetaFree, order);
#if DMA_PAGE_POISON
        support::fill_bytes(phys_to_virt(PhysAddr(p << kPageShift)), kPoisonByte,
                            kPageSize << order);
#endif
        push_free(p, order, band, static_cast<uint32_t>(i), m);
        free_per_band_[band] += 1ull << order;
        p += 1ull << order;
      }
    }
    free_per_range_[i] = managed_per_range_[i];
  }
  managed_pages_ = managed;
  lowest_ = PhysAddr(lowest << kPageShift);
  highest_ = PhysAddr(highest << kPageShift);
  metadata_bytes_ = need;
  initialized_ = true;
  return support::ok();
}

inline void PageFrameAllocator::push_free(uint64_t pfn, unsigned order, unsigned band,
                                          uint32_t range, uint8_t* meta) {
  // The block's first bytes become a list node; placement new starts the node's lifetime there.
  FreeBlock* b = new (block_at(pfn)) FreeBlock;
  Link* h = head(order, band);
  Link* first = h->next;
  b->next = first;
  b->prev = h;
  b->meta = meta;
  b->range = range;
  first->prev = b;
  h->next = b;
  if (first == h) band_mask_[order] |= 1ull << band;  // The list was empty.
}

inline void PageFrameAllocator::unlink_free(Link* b, unsigned order, unsigned band) {
  Link* next = b->next;
  Link* prev = b->prev;
  prev->next = next;
  next->prev = prev;
  // Both neighbours are the same node only when that node is the sentinel: the list is empty.
  if (next == prev) band_mask_[order] &= ~(1ull << band);
}

// Unlinks the free block `b` of 2^have pages from list (have, band), splits it down to 2^order
// keeping the lowest piece (pushing the upper halves), and marks that piece allocated.
PhysAddr PageFrameAllocator::take(Link* b, unsigned have, unsigned order, unsigned band) {
  unlink_free(b, have, band);
  FreeBlock* fb = static_cast<FreeBlock*>(b);
  uint8_t* meta = fb->meta;
  uint32_t ri = fb->range;
  uint64_t phys = phys_of(b);
  uint64_t pfn = phys >> kPageShift;
  while (have > order) {
    --have;
    uint64_t half = 1ull << have;
    meta[half] = meta_byte(kMetaFree, have);
    push_free(pfn + half, have, band, ri, meta + half);
  }
  *meta = meta_byte(kMetaAllocated, order);
  uint64_t pages = 1ull << order;
  free_per_band_[band] -= pages;
  free_per_range_[ri] -= pages;
  return PhysAddr(phys);
}

// The fast paths of alloc (see the header): a page-aligned request with no limit, or with a limit
// that ends at a band boundary, both served by the highest non-empty list of the allowed bands.
// They lock by hand rather than with a Guard so that the out-of-line continuation, which releases
// the lock itself, is a tail call; with the result in a register, the hot path needs few
// registers. Nothing found is kAllocFailed; the inline caller turns it into the right error.
template <bool kInBands>
[[gnu::always_inline]] inline uint64_t PageFrameAllocator::alloc_from(unsigned order,
                                                                      uint64_t allowed) {
  lock_.lock();
  uint64_t m = band_mask_[order] & allowed;
  if (__builtin_expect(m == 0, 0)) {
    if constexpr (kInBands) {
      return alloc_split_in_bands_and_unlock(order, allowed);
    } else {
      return alloc_split_and_unlock(order);
    }
  }
  unsigned band = support::log2_floor(m);  // Highest band first.
  Link* b = head(order, band)->next;
  unlink_free(b, order, band);
  FreeBlock* fb = static_cast<FreeBlock*>(b);
  *fb->meta = meta_byte(kMetaAllocated, order);
  uint64_t pages = 1ull << order;
  free_per_band_[band] -= pages;
  free_per_range_[fb->range] -= pages;
  lock_.unlock();
  return phys_of(b);
}

// The request's own list (within the allowed bands) is empty: split the smallest larger block.
[[gnu::always_inline]] inline uint64_t PageFrameAllocator::split_from_and_unlock(unsigned order,
                                                                                 uint64_t allowed) {
  unsigned o = order + 1;
  while (o <= kMaxOrder && (band_mask_[o] & allowed) == 0) ++o;
  if (o > kMaxOrder) {
    lock_.unlock();
    return kAllocFailed;
  }
  unsigned band = support::log2_floor(band_mask_[o] & allowed);
  PhysAddr a = take(head(o, band)->next, o, order, band);
  lock_.unlock();
  return a.value();
}

uint64_t PageFrameAllocator::alloc_unconstrained(unsigned order) {
  return alloc_from<false>(order, ~0ull);
}

[[gnu::noinline]] uint64_t PageFrameAllocator::alloc_split_and_unlock(unsigned order) {
  return split_from_and_unlock(order, ~0ull);
}

uint64_t PageFrameAllocator::alloc_in_bands(unsigned order, uint64_t allowed) {
  static_assert(bands_below(~0ull) == (1ull << kNumBands) - 1, "no limit allows every band");
  static_assert(bands_below((1ull << kBandShift) - 1) == 1, "a 4 MiB limit allows band 0 only");
  static_assert(bands_below(0xFFFF'FFFFull) == (1ull << 11) - 1, "4 GiB ends with band 10");
  static_assert(!ends_at_band_boundary((1ull << (kBandShift - 1)) - 1), "2 MiB straddles band 0");
  return alloc_from<true>(order, allowed);
}

[[gnu::noinline]] uint64_t PageFrameAllocator::alloc_split_in_bands_and_unlock(unsigned order,
                                                                               uint64_t allowed) {
  return split_from_and_unlock(order, allowed);
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

// Everything the fast paths do not take: an alignment above the block size, a limit that does
// not end at a band boundary, invalid arguments.
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

  // Bands wholly at or below the limit, and the one band straddling it (none when limit + 1 is
  // the end of a band, as for every DMA mask 2^n - 1 with n >= 22, and for no limit at all).
  uint64_t allowed = ~0ull;
  unsigned s = 0;
  bool straddles = false;
  if (ends_at_band_boundary(limit)) {
    allowed = bands_below(limit);
  } else {
    s = band_of_pfn(limit >> kPageShift);
    allowed = (1ull << s) - 1;
    straddles = true;
  }
  uint64_t last = (kPageSize << order) - 1;  // Offset of the kept piece's last byte.

  {
    support::Guard guard{&lock_};
    for (unsigned o = need; o <= kMaxOrder; ++o) {
      uint64_t m = band_mask_[o] & allowed;
      if (m != 0) {
        unsigned band = support::log2_floor(m);
        return take(head(o, band)->next, o, order, band);
      }
    }
    if (straddles) {
      for (unsigned o = need; o <= kMaxOrder; ++o) {
        if ((band_mask_[o] & (1ull << s)) == 0) continue;
        Link* h = head(o, s);
        for (Link* l = h->next; l != h; l = l->next) {
          if (phys_of(l) + last <= limit) return take(l, o, order, s);
        }
      }
    }
  }
  return exhausted(order, need, limit);
}

size_t PageFrameAllocator::range_index(uint64_t pfn) const {
  for (size_t i = 0; i < num_ranges_; ++i) {
    if (pfn - ranges_[i].start_pfn < ranges_[i].pages) return i;
  }
  return kNoRange;
}

// The body of free (see the header): false when addr is not the head of an allocated block of
// that order. Locks by hand, like alloc_unconstrained, so that merging is a tail call.
#if DMA_PAGE_POISON
void PageFrameAllocator::check_poison(PhysAddr addr, unsigned order) const {
  static_assert(sizeof(FreeBlock) <= kPoisonSkip, "the skipped bytes must cover the link");
  // Every byte but the free-list link that a free block head carries must still be poison. Link
  // headers only ever sit at page boundaries (block heads), so those bytes are skipped per page.
  // Word compares: this runs on every allocation of a poisoning build.
  constexpr uint64_t kPoisonWord = 0x0101010101010101ull * kPoisonByte;
  const auto* p = static_cast<const uint8_t*>(phys_to_virt(addr));
  for (uint64_t page = 0; page < (1ull << order); ++page, p += kPageSize) {
    const auto* w = reinterpret_cast<const uint64_t*>(p + kPoisonSkip);
    for (uint64_t i = 0; i < (kPageSize - kPoisonSkip) / 8; ++i) {
      KASSERT(w[i] == kPoisonWord, "page written after it was freed (use after free)");
    }
  }
}
#endif

bool PageFrameAllocator::free_block(uint64_t a, unsigned order) {
  uint64_t pfn = a >> kPageShift;
  // Ranges are immutable after init: found without the lock, one unsigned compare per range,
  // from the top down because alloc prefers high memory.
  const Range* r = ranges_ + num_ranges_;
  uint64_t off = 0;
  do {
    if (r == ranges_) return false;
    --r;
    off = pfn - r->start_pfn;
  } while (off >= r->pages);
  // One compare for both: misaligned (some low bit set) or order > kMaxOrder.
  if ((((a & kPageMask) << 8) | order) > kMaxOrder) return false;
  uint8_t* meta = r->meta;
  uint32_t ri = r->index;

  lock_.lock();
  if (meta[off] != meta_byte(kMetaAllocated, order)) {
    lock_.unlock();
    return false;
  }
#if DMA_PAGE_POISON
  // The block is ours again: poison it so a write after free is seen at the next alloc.
  support::fill_bytes(phys_to_virt(PhysAddr(a)), kPoisonByte, kPageSize << order);
#endif
  unsigned band = band_of_pfn(pfn);
  uint64_t pages = 1ull << order;
  free_per_band_[band] += pages;
  free_per_range_[ri] += pages;
  uint64_t boff = (pfn ^ pages) - r->start_pfn;  // Wraps to a huge value below the range.
  if (boff < r->pages && meta[boff] == meta_byte(kMetaFree, order) && order < kMaxOrder) {
    return merge_and_unlock(pfn, order, band, ri);
  }
  meta[off] = meta_byte(kMetaFree, order);
  push_free(pfn, order, band, ri, meta + off);
  lock_.unlock();
  return true;
}

// Frees the block at pfn (its metadata still says allocated) whose buddy of the same order is
// free: merges upwards while the buddy is a free block of the current order in the same range.
[[gnu::noinline]] bool PageFrameAllocator::merge_and_unlock(uint64_t pfn, unsigned order,
                                                            unsigned band, uint32_t ri) {
  const Range& r = ranges_[ri];
  uint8_t* meta = r.meta;
  uint64_t start = r.start_pfn;
  while (order < kMaxOrder) {
    uint64_t bit = 1ull << order;
    uint64_t boff = (pfn ^ bit) - start;
    if (boff >= r.pages || meta[boff] != meta_byte(kMetaFree, order)) break;
    unlink_free(block_at(pfn ^ bit), order, band);
    meta[(pfn | bit) - start] = kMetaInterior;  // The upper of the two heads.
    pfn &= ~bit;
    ++order;
  }
  uint8_t* m = meta + (pfn - start);
  *m = meta_byte(kMetaFree, order);
  push_free(pfn, order, band, ri, m);
  lock_.unlock();
  return true;
}

uint64_t PageFrameAllocator::free_pages_locked() const {
  uint64_t total = 0;
  for (uint64_t f : free_per_band_) total += f;
  return total;
}

PageFrameAllocator::Stats PageFrameAllocator::stats() const {
  Stats s;
  support::Guard guard{&lock_};
  s.managed_pages = managed_pages_;
  s.free_pages = free_pages_locked();
  for (size_t i = 0; i < num_ranges_; ++i) {
    s.free_pages_per_range[i] = free_per_range_[i];
    s.managed_pages_per_range[i] = managed_per_range_[i];
  }
  for (unsigned b = 0; b < kNumBands; ++b) s.free_pages_per_band[b] = free_per_band_[b];
  s.num_ranges = num_ranges_;
  s.metadata_bytes = metadata_bytes_;
  return s;
}

uint64_t PageFrameAllocator::free_pages() const {
  support::Guard guard{&lock_};
  return free_pages_locked();
}

uint64_t PageFrameAllocator::free_blocks(unsigned order) const {
  if (order > kMaxOrder) return 0;
  support::Guard guard{&lock_};
  if (!initialized_) return 0;
  uint64_t count = 0;
  for (const Link& h : heads_[order]) {
    for (const Link* l = h.next; l != &h; l = l->next) ++count;
  }
  return count;
}

// Walks every list. Each node is validated (page aligned, inside a range, metadata says it heads
// a free block of the list's order, right band) before it is dereferenced, so a corrupted link
// is reported rather than followed.
bool PageFrameAllocator::check_lists(uint64_t* per_band, uint64_t* per_range,
                                     uint64_t* blocks) const {
  for (unsigned o = 0; o <= kMaxOrder; ++o) {
    for (unsigned b = 0; b < kBandSlots; ++b) {
      const Link* h = &heads_[o][b];
      bool nonempty = h->next != h;
      if (nonempty != (((band_mask_[o] >> b) & 1) != 0)) return false;
      if (nonempty && b >= kNumBands) return false;
      const Link* prev = h;
      uint64_t steps = 0;
      for (const Link* l = h->next; l != h; l = l->next) {
        if (++steps > managed_pages_) return false;  // A cycle that misses the sentinel.
        uint64_t phys = phys_of(l);
        if ((phys & kPageMask) != 0) return false;
        uint64_t pfn = phys >> kPageShift;
        size_t ri = range_index(pfn);
        if (ri == kNoRange) return false;
        const Range& r = ranges_[ri];
        uint64_t pages = 1ull << o;
        if ((pfn & (pages - 1)) != 0 || pfn + pages > r.start_pfn + r.pages) return false;
        if (band_of_pfn(pfn) != b) return false;
        uint8_t* m = r.meta + (pfn - r.start_pfn);
        if (*m != meta_byte(kMetaFree, o)) return false;
        const FreeBlock* fb = static_cast<const FreeBlock*>(l);
        if (l->prev != prev || fb->meta != m || fb->range != ri) return false;
        per_band[b] += pages;
        per_range[ri] += pages;
        ++*blocks;
        prev = l;
      }
      if (h->prev != prev) return false;
    }
  }
  return true;
}

// Walks every range's metadata block by block: each page is reserved or belongs to exactly one
// block, whose head is aligned and whose other pages are interior; no free block has a free
// buddy of its order (everything is coalesced); the free heads are exactly the listed blocks.
bool PageFrameAllocator::check_metadata(const uint64_t* per_range, uint64_t blocks) const {
  uint64_t free_heads = 0;
  uint64_t managed = 0;
  for (size_t i = 0; i < num_ranges_; ++i) {
    const Range& r = ranges_[i];
    uint64_t range_managed = 0;
    uint64_t range_free = 0;
    uint64_t p = 0;
    while (p < r.pages) {
      uint8_t m = r.meta[p];
      if (m == kMetaReserved) {
        ++p;
        continue;
      }
      uint8_t kind = m & kMetaKindMask;
      unsigned o = m & kMetaOrderMask;
      if ((kind != kMetaFree && kind != kMetaAllocated) || o > kMaxOrder) return false;
      uint64_t pfn = r.start_pfn + p;
      uint64_t pages = 1ull << o;
      if ((pfn & (pages - 1)) != 0 || p + pages > r.pages) return false;
      for (uint64_t q = 1; q < pages; ++q) {
        if (r.meta[p + q] != kMetaInterior) return false;
      }
      if (kind == kMetaFree) {
        ++free_heads;
        range_free += pages;
        uint64_t boff = (pfn ^ pages) - r.start_pfn;
        if (o < kMaxOrder && boff < r.pages && r.meta[boff] == m) return false;
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

bool PageFrameAllocator::check_invariants() const {
  support::Guard guard{&lock_};
  if (!initialized_) {
    if (free_pages_locked() != 0) return false;
    for (uint64_t m : band_mask_) {
      if (m != 0) return false;
    }
    return true;
  }
  uint64_t per_band[kNumBands] = {};
  uint64_t per_range[kMaxRanges] = {};
  uint64_t blocks = 0;
  if (!check_lists(per_band, per_range, &blocks)) return false;
  if (!check_metadata(per_range, blocks)) return false;
  for (unsigned b = 0; b < kNumBands; ++b) {
    if (per_band[b] != free_per_band_[b]) return false;
  }
  return free_pages_locked() <= managed_pages_;
}
