// BouncePool: a two-level segregated-fit (TLSF) allocator over fixed-size slots.
//
// The pool is cut into `num_slots_` slots of `slot_size_` bytes. Slots are grouped into blocks
// (runs of consecutive slots), each free or used, which together tile the pool. Every piece of
// bookkeeping lives out of band, in the caller's metadata buffer: one 16-byte SlotRecord per slot,
// meaningful only for the first slot of a block (its "head"); the records of a block's other slots
// have size 0, so "is this slot a block head" is always answerable. A head records its size in
// slots, whether it is free, the head of the physically previous block, and
//   - when free: the links of a doubly linked free list (slot indices);
//   - when used: the data's offset inside the first slot and the requested size, so free() can
//     check that a BounceSlot is exactly what alloc() returned.
// The next physical block is at head + size. Free blocks are always coalesced: no two free blocks
// are neighbours.
//
// Free blocks sit on one of 32 x 16 lists by size class: the first level is the size's highest set
// bit, the second level the next four bits below it (sizes below 32 slots get a list each). Two
// bitmaps say which lists are non-empty. To allocate n slots, n is rounded up to the next class
// boundary ("good fit"), so that every block on that class's list, or on any higher non-empty list
// found with two bit scans, is large enough: no list is ever walked. If that finds nothing, the
// head of the highest non-empty list (the largest blocks) is tried for an exact fit, so a request
// as large as the whole pool succeeds in an empty pool.
//
// An allocation takes the end of the block it is cut from, and a freed block merges into a free
// block in front of it by growing that block: either way the free block's head stays put and it
// changes lists only when its size class changes, which for a large block is rare. At low
// occupancy an alloc+free pair therefore touches no list at all.
//
// Offset preservation and alignment: the returned address must agree with `orig` on the bits of
// `min_align_mask` and be a multiple of `align`. Both are "addr & low == target" with `low` =
// min_align_mask | (align - 1). The part of `target` below the slot size becomes the data's offset
// in its first slot; the part above it fixes the first slot's index modulo a period P = (low + 1) /
// slot_size. The allocator takes a block of n + P - 1 slots, which always contains a suitable
// start, places the data at the last suitable start, keeps the front as the (shrunk) free block
// and gives the slack behind the data (< P slots) back as a free block of its own. That piece
// never needs merging: its next neighbour is used (free blocks are coalesced), its previous one
// is the new allocation.
//
// Costs, with S slots: init O(S) (clears the records); alloc O(1): a few bit scans, at most one
// list move and one insertion; free O(1): validation, at most two merges with physical
// neighbours, at most one removal and one list move or insertion; stats O(1); check_invariants
// O(S); free_block_count O(free blocks). No operation ever walks the slots or a free list on the
// alloc/free path, so the cost does not depend on occupancy (Linux's swiotlb scans its slot array).
#include "mm/bounce_pool.h"

#include "support/assert.h"
#include "support/bitops.h"

struct BouncePool::SlotRecord {
  // Size of the block in slots (0: this slot is not the first slot of a block), plus kFreeBit.
  uint32_t size_free;
  // Head of the physically previous block; kNone for the block at slot 0.
  uint32_t prev_phys;
  // Free: next block on the same free list (kNone at the end). Used: the data's offset in bytes
  // from the start of the first slot.
  uint32_t link_next;
  // Free: previous block on the same free list (kNone at the head). Used: the requested size
  // (at most kMaxRequest).
  uint32_t link_prev;
};

namespace {

constexpr uint32_t kNone = 0xFFFF'FFFFu;
constexpr uint32_t kFreeBit = 0x8000'0000u;
constexpr uint32_t kSizeMask = ~kFreeBit;
constexpr unsigned kSlCount = 16;  // 1 << kSlBits

// Size class of a block of n >= 1 slots (the list it lives on), as fl * kSlCount + sl. Sizes
// below 32 map to themselves; above, each power-of-two range is split into 16 equal classes.
inline unsigned size_class(uint64_t n) {
  unsigned shift = support::log2_floor(n | 16u) - 4u;
  return shift * kSlCount + static_cast<unsigned>(n >> shift);
}

// Smallest class whose every block has at least n slots.
inline unsigned search_class(uint64_t n) {
  unsigned shift = support::log2_floor(n | 16u) - 4u;
  return size_class(n + (uint64_t{1} << shift) - 1u);
}

}  // namespace

static_assert(sizeof(uint32_t) * 4 == 16, "SlotRecord is four 32-bit words");

// The list helpers are forced inline: alloc and free each use them at a few sites, and a call
// costs more than the helper's own handful of instructions.
[[gnu::always_inline]] inline void BouncePool::insert_free(uint32_t head, uint32_t size) {
  unsigned c = size_class(size);
  unsigned fl = c / kSlCount;
  unsigned sl = c % kSlCount;
  uint32_t old = heads_[fl][sl];
  SlotRecord& r = meta_[head];
  r.link_next = old;
  r.link_prev = kNone;
  if (old != kNone) meta_[old].link_prev = head;
  heads_[fl][sl] = head;
  sl_bitmap_[fl] |= 1u << sl;
  fl_bitmap_ |= 1u << fl;
}

[[gnu::always_inline]] inline void BouncePool::remove_free(uint32_t head, uint32_t size) {
  const SlotRecord& r = meta_[head];
  uint32_t next = r.link_next;
  uint32_t prev = r.link_prev;
  if (next != kNone) meta_[next].link_prev = prev;
  if (prev != kNone) {
    meta_[prev].link_next = next;
    return;
  }
  unsigned c = size_class(size);
  unsigned fl = c / kSlCount;
  unsigned sl = c % kSlCount;
  heads_[fl][sl] = next;
  if (next == kNone) {
    sl_bitmap_[fl] &= ~(1u << sl);
    if (sl_bitmap_[fl] == 0) fl_bitmap_ &= ~(1u << fl);
  }
}

// A free block keeps its head and changes size; it moves lists only if its class changes, which
// a large block seldom does (cheap alloc/free at low occupancy).
[[gnu::always_inline]] inline void BouncePool::resize_free(uint32_t head, uint32_t old_size,
                                                           uint32_t new_size) {
  meta_[head].size_free = new_size | kFreeBit;
  if (size_class(old_size) != size_class(new_size)) {
    remove_free(head, old_size);
    insert_free(head, new_size);
  }
}

[[gnu::always_inline]] inline void BouncePool::set_prev_of_next(uint32_t head, uint32_t size) {
  uint32_t next = head + size;  // <= num_slots_ < 2^31: no overflow.
  if (next < num_slots_) meta_[next].prev_phys = head;
}

[[gnu::always_inline]] inline uint32_t BouncePool::find_block(uint64_t need) const {
  unsigned c = search_class(need);
  unsigned fl = c / kSlCount;
  unsigned sl = c % kSlCount;
  uint32_t sl_map = sl_bitmap_[fl] & (~0u << sl);
  if (sl_map == 0) {
    // fl <= 28 because need < 2^31, so the shift stays below 32.
    uint32_t fl_map = fl_bitmap_ & (~0u << (fl + 1));
    if (fl_map == 0) return kNone;
    fl = support::ctz(fl_map);
    sl_map = sl_bitmap_[fl];
  }
  return heads_[fl][support::ctz(sl_map)];
}

BouncePool::~BouncePool() {
  // Taken only to read used_slots_ under the lock's rules; the pool must be idle by now anyway.
  support::Guard<support::SpinLock> guard{&lock_};
  KDEBUG_ASSERT(used_slots_ == 0, "BouncePool destroyed with bounce slots still in use");
}

size_t BouncePool::metadata_size(size_t bytes, size_t slot_size) {
  if (!support::is_pow2(slot_size) || slot_size < kMinSlotSize || slot_size > kMaxSlotSize) {
    return 0;
  }
  return (bytes / slot_size) * sizeof(SlotRecord);
}

Result<void> BouncePool::init(PhysAddr base, size_t bytes, void* cpu_base, void* metadata,
                              size_t metadata_bytes, size_t slot_size) {
  if (initialized_) return ErrorCode::kInvalidArgument;
  if (!support::is_pow2(slot_size) || slot_size < kMinSlotSize || slot_size > kMaxSlotSize) {
    return ErrorCode::kInvalidArgument;
  }
  if (bytes == 0) return ErrorCode::kLayoutError;
  if (!support::is_aligned(base.value(), slot_size) || !support::is_aligned(bytes, slot_size) ||
      support::add_overflows(base.value(), bytes)) {
    return ErrorCode::kInvalidArgument;
  }
  uint64_t slots = bytes / slot_size;
  if (slots > kMaxSlots) return ErrorCode::kInvalidArgument;
  if (cpu_base == nullptr || metadata == nullptr ||
      reinterpret_cast<uintptr_t>(metadata) % alignof(SlotRecord) != 0) {
    return ErrorCode::kInvalidArgument;
  }
  if (metadata_bytes < slots * sizeof(SlotRecord)) return ErrorCode::kNoMemory;

  support::Guard<support::SpinLock> guard{&lock_};
  base_ = base;
  bytes_ = bytes;
  cpu_base_ = cpu_base;
  slot_size_ = slot_size;
  slot_shift_ = support::log2_floor(slot_size);
  num_slots_ = static_cast<uint32_t>(slots);
  meta_ = static_cast<SlotRecord*>(metadata);
  for (uint32_t i = 0; i < num_slots_; ++i) meta_[i] = SlotRecord{0, kNone, kNone, kNone};
  fl_bitmap_ = 0;
  for (unsigned fl = 0; fl < kFlBits; ++fl) {
    sl_bitmap_[fl] = 0;
    for (unsigned sl = 0; sl < kSlCount; ++sl) heads_[fl][sl] = kNone;
  }
  meta_[0].size_free = num_slots_ | kFreeBit;
  insert_free(0, num_slots_);
  used_slots_ = 0;
  high_water_ = 0;
  allocations_ = 0;
  failures_ = 0;
  initialized_ = true;
  return support::ok();
}

Result<BounceSlot> BouncePool::alloc(size_t size, PhysAddr orig, uint64_t min_align_mask,
                                     size_t align) {
  if (size == 0 || size > max_allocation()) return ErrorCode::kLayoutError;
  if (align == 0) align = 1;
  if (!support::is_pow2(align)) return ErrorCode::kLayoutError;
  if ((min_align_mask & (min_align_mask + 1)) != 0) return ErrorCode::kLayoutError;
  uint64_t target = orig.value() & min_align_mask;
  if ((target & (align - 1)) != 0) return ErrorCode::kLayoutError;

  // The address must satisfy addr & low == target.
  uint64_t low = min_align_mask | (align - 1);
  uint64_t offset = target & (slot_size_ - 1);
  uint64_t n = (offset + size + slot_size_ - 1) >> slot_shift_;
  // The first slot's index must be congruent to `phase` modulo period_mask + 1.
  uint64_t period_mask = low >> slot_shift_;
  uint64_t phase = ((target - base_.value()) & low) >> slot_shift_;
  if (phase + n > num_slots_) return ErrorCode::kLayoutError;
  uint64_t need = n + period_mask;

  support::Guard<support::SpinLock> guard{&lock_};
  uint32_t block = need <= num_slots_ ? find_block(need) : kNone;
  if (block == kNone) {
    // Good fit found nothing: try the first of the largest blocks for an exact fit.
    if (fl_bitmap_ == 0) {
      ++failures_;
      return ErrorCode::kNoMemory;
    }
    unsigned fl = support::log2_floor(fl_bitmap_);
    block = heads_[fl][support::log2_floor(sl_bitmap_[fl])];
  }
  uint32_t block_size = meta_[block].size_free & kSizeMask;
  uint64_t block_end = uint64_t{block} + block_size;
  // The last suitable start in the block: the allocation takes the block's end, so that the
  // block's head, and usually its list, stay as they are.
  uint64_t s = block_end - n - ((block_end - n - phase) & period_mask);
  if (n > block_size || s < block) {  // Only possible on the exact-fit path.
    ++failures_;
    return ErrorCode::kNoMemory;
  }

  auto start = static_cast<uint32_t>(s);
  auto slots = static_cast<uint32_t>(n);
  uint32_t end = start + slots;
  if (start == block) {
    remove_free(block, block_size);
  } else {
    resize_free(block, block_size, start - block);
    meta_[start].prev_phys = block;
  }
  SlotRecord& r = meta_[start];
  r.size_free = slots;
  r.link_next = static_cast<uint32_t>(offset);
  r.link_prev = static_cast<uint32_t>(size);
  if (end != block_end) {
    // Alignment slack behind the data (< P slots) goes back as its own free block; its next
    // neighbour is used or absent, so it needs no merging.
    uint32_t tail = static_cast<uint32_t>(block_end) - end;
    SlotRecord& t = meta_[end];
    t.size_free = tail | kFreeBit;
    t.prev_phys = start;
    insert_free(end, tail);
    set_prev_of_next(end, tail);
  } else {
    set_prev_of_next(start, slots);
  }

  used_slots_ += slots;
  if (used_slots_ > high_water_) high_water_ = used_slots_;
  ++allocations_;

  BounceSlot out;
  out.addr = base_ + ((uint64_t{start} << slot_shift_) + offset);
  out.first_slot = start;
  out.num_slots = slots;
  out.size = size;
  return out;
}

Result<void> BouncePool::free(const BounceSlot& slot) {
  uint32_t first = slot.first_slot;
  uint32_t slots = slot.num_slots;
  support::Guard<support::SpinLock> guard{&lock_};
  if (slots == 0 || first >= num_slots_ || slots > num_slots_ - first) {
    return ErrorCode::kNotFound;
  }
  SlotRecord& r = meta_[first];
  // A used head of exactly this size: a free head carries kFreeBit, any other slot has size 0.
  if (r.size_free != slots) return ErrorCode::kNotFound;
  if (slot.addr.value() != base_.value() + (uint64_t{first} << slot_shift_) + r.link_next ||
      uint64_t{r.link_prev} != slot.size) {
    return ErrorCode::kNotFound;
  }

  used_slots_ -= slots;
  uint32_t size = slots;
  uint32_t end = first + slots;
  if (end < num_slots_ && (meta_[end].size_free & kFreeBit) != 0) {
    uint32_t next_size = meta_[end].size_free & kSizeMask;
    remove_free(end, next_size);
    meta_[end].size_free = 0;
    size += next_size;
    end += next_size;
  }
  uint32_t head = first;
  uint32_t prev = r.prev_phys;
  if (prev != kNone && (meta_[prev].size_free & kFreeBit) != 0) {
    // Grow the free block in front: its head stays, and its list too unless the class changes.
    uint32_t prev_size = meta_[prev].size_free & kSizeMask;
    r.size_free = 0;
    resize_free(prev, prev_size, prev_size + size);
    head = prev;
  } else {
    r.size_free = size | kFreeBit;
    insert_free(first, size);
  }
  if (end < num_slots_) meta_[end].prev_phys = head;
  return support::ok();
}

size_t BouncePool::max_allocation() const {
  return support::min<size_t>(bytes_, kMaxRequest);
}

BouncePool::Stats BouncePool::stats() const {
  Stats s;
  {
    support::Guard<support::SpinLock> guard{&lock_};
    s.total_slots = num_slots_;
    s.used_slots = used_slots_;
    s.high_water_slots = high_water_;
    s.allocations = allocations_;
    s.failures = failures_;
  }
  s.bytes_bounced = __atomic_load_n(&bytes_bounced_, __ATOMIC_RELAXED);
  return s;
}

bool BouncePool::check_invariants() const {
  support::Guard<support::SpinLock> guard{&lock_};
  if (!initialized_) return num_slots_ == 0 && fl_bitmap_ == 0 && used_slots_ == 0;

  // The physical chain: blocks tile the pool, back links agree, free blocks are coalesced.
  uint64_t used = 0;
  uint64_t free_blocks = 0;
  uint32_t prev = kNone;
  bool prev_free = false;
  for (uint64_t i = 0; i < num_slots_;) {
    const SlotRecord& r = meta_[i];
    uint32_t size = r.size_free & kSizeMask;
    if (size == 0 || i + size > num_slots_ || r.prev_phys != prev) return false;
    for (uint64_t j = i + 1; j < i + size; ++j) {
      if (meta_[j].size_free != 0) return false;
    }
    bool is_free = (r.size_free & kFreeBit) != 0;
    if (is_free) {
      if (prev_free) return false;
      ++free_blocks;
    } else {
      used += size;
      if (r.link_next >= slot_size_) return false;
      // The block is exactly as many slots as the data (offset + size) needs.
      uint64_t data_end = uint64_t{r.link_next} + r.link_prev;
      if (r.link_prev == 0 || ((data_end + slot_size_ - 1) >> slot_shift_) != size) return false;
    }
    prev = static_cast<uint32_t>(i);
    prev_free = is_free;
    i += size;
  }
  if (used != used_slots_ || high_water_ < used_slots_) return false;

  // The lists: each free block exactly once, on its class's list, links and bitmaps consistent.
  uint64_t listed = 0;
  for (unsigned fl = 0; fl < kFlBits; ++fl) {
    if (((fl_bitmap_ >> fl) & 1u) != (sl_bitmap_[fl] != 0 ? 1u : 0u)) return false;
    for (unsigned sl = 0; sl < kSlCount; ++sl) {
      uint32_t b = heads_[fl][sl];
      if ((b != kNone) != (((sl_bitmap_[fl] >> sl) & 1u) != 0)) return false;
      uint32_t back = kNone;
      while (b != kNone) {
        if (b >= num_slots_ || ++listed > free_blocks) return false;
        const SlotRecord& r = meta_[b];
        if ((r.size_free & kFreeBit) == 0) return false;
        uint32_t size = r.size_free & kSizeMask;
        if (size == 0 || size_class(size) != fl * kSlCount + sl || r.link_prev != back) {
          return false;
        }
        back = b;
        b = r.link_next;
      }
    }
  }
  return listed == free_blocks;
}

size_t BouncePool::free_block_count() const {
  support::Guard<support::SpinLock> guard{&lock_};
  if (!initialized_) return 0;
  size_t count = 0;
  for (unsigned fl = 0; fl < kFlBits; ++fl) {
    for (unsigned sl = 0; sl < kSlCount; ++sl) {
      for (uint32_t b = heads_[fl][sl]; b != kNone && count <= num_slots_; b = meta_[b].link_next) {
        ++count;
      }
    }
  }
  return count;
}
