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
// are neighbours. One more record, at index S (the number of slots), is a sentinel that is never
// free; S also stands for "no slot" in links, so neighbour and list updates need no bounds checks.
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
// The cache: in front of all this sits a stack of recently freed blocks per exact slot count
// (fewer than kQuickSlots slots, at most kQuickDepth per count, at most 1/32 of the pool in all),
// linked through their records and marked kCachedBit: to their neighbours they still look used,
// so they are not merged. free() pushes a block there when it fits the limits; alloc() pops one
// when the size matches and the block's first slot has the required phase. That is the common
// case of a driver mapping and unmapping buffers of the same sizes, and it costs a fraction of a
// TLSF split and merge. When the free lists cannot satisfy a request, alloc gives the whole cache
// back to them (merging each block) and tries again, so the cache never causes a kNoMemory.
//
// Costs, with S slots: init O(S) (clears the records); alloc O(1): a cache pop, or a few bit scans
// and at most one list move and one insertion (plus, only before a kNoMemory, one drain of at most
// kQuickSlots * kQuickDepth blocks); free O(1): validation, then a cache push, or at most two
// merges with physical neighbours, one removal and one list move or insertion; drain_cache and
// stats O(1); check_invariants O(S); free_block_count O(free blocks). No operation walks the
// slots or a free list on the alloc/free path, so the cost does not depend on occupancy (Linux's
// swiotlb scans its slot array).
#include "mm/bounce_pool.h"

#include "support/assert.h"
#include "support/bitops.h"
#include "support/fault_injection.h"
#include "support/mem.h"

namespace {

constexpr unsigned kSlMask = 15;  // (1 << kSlBits) - 1

inline unsigned log2_32(uint32_t x) {
  return 31u - static_cast<unsigned>(__builtin_clz(x));
}

// Size class of a block of n >= 1 slots (the list it lives on), as fl * 16 + sl. Sizes below 32
// map to themselves; above, each power-of-two range is split into 16 equal classes.
inline unsigned size_class(uint32_t n) {
  unsigned shift = log2_32(n | 16u) - 4u;
  return (shift << 4) + (n >> shift);
}

// Smallest class whose every block has at least n slots; n < 2^30, so the sum cannot overflow.
inline unsigned search_class(uint32_t n) {
  unsigned shift = log2_32(n | 16u) - 4u;
  return size_class(n + (1u << shift) - 1u);
}

}  // namespace

static_assert(BouncePool::kQuickDepth <= 2, "alloc looks at the top two blocks of a cache stack");

// The list helpers are forced inline: alloc and free use them at a few sites each, and a call
// costs more than a helper's own handful of instructions.
[[gnu::always_inline]] inline void BouncePool::insert_free(uint32_t head, unsigned cls) {
  uint32_t old = heads_[cls];
  SlotRecord& r = meta_[head];
  r.link_next = old;
  r.link_prev = num_slots_;
  meta_[old].link_prev = head;  // The sentinel's links are scratch.
  heads_[cls] = head;
  sl_bitmap_[cls >> kSlBits] |= 1u << (cls & kSlMask);
  fl_bitmap_ |= 1u << (cls >> kSlBits);
}

[[gnu::always_inline]] inline void BouncePool::remove_free(uint32_t head, unsigned cls) {
  const SlotRecord& r = meta_[head];
  uint32_t next = r.link_next;
  uint32_t prev = r.link_prev;
  meta_[next].link_prev = prev;  // The sentinel's links are scratch.
  if (prev != num_slots_) {
    meta_[prev].link_next = next;
    return;
  }
  heads_[cls] = next;
  if (next == num_slots_) {
    unsigned fl = cls >> kSlBits;
    sl_bitmap_[fl] &= ~(1u << (cls & kSlMask));
    if (sl_bitmap_[fl] == 0) fl_bitmap_ &= ~(1u << fl);
  }
}

// A free block keeps its head and changes size; it moves lists only if its class changes, which
// a large block seldom does.
[[gnu::always_inline]] inline void BouncePool::resize_free(uint32_t head, uint32_t old_size,
                                                           uint32_t new_size) {
  meta_[head].size_free = new_size | kFreeBit;
  unsigned old_cls = size_class(old_size);
  unsigned new_cls = size_class(new_size);
  if (old_cls != new_cls) {
    remove_free(head, old_cls);
    insert_free(head, new_cls);
  }
}

// Head of a block of at least `need` slots (need <= num_slots_) and its class, or the sentinel.
[[gnu::always_inline]] inline uint32_t BouncePool::find_block(uint64_t need, unsigned* cls) const {
  unsigned c = search_class(static_cast<uint32_t>(need));
  unsigned fl = c >> kSlBits;
  uint32_t sl_map = sl_bitmap_[fl] & (~0u << (c & kSlMask));
  if (sl_map == 0) {
    // fl <= 27 because need < 2^30, so the shift stays below 32.
    uint32_t fl_map = fl_bitmap_ & (~0u << (fl + 1));
    if (fl_map == 0) return num_slots_;
    fl = support::ctz(fl_map);
    sl_map = sl_bitmap_[fl];
  }
  c = (fl << kSlBits) + support::ctz(sl_map);
  *cls = c;
  return heads_[c];
}

// Takes n slots from the free lists, the first at an index congruent to `phase` modulo
// period_mask + 1, and marks them a used block of n slots. Returns the first slot, or the
// sentinel index when no free block can hold them.
inline uint32_t BouncePool::carve(uint64_t n, uint64_t phase, uint64_t period_mask) {
  uint64_t need = n + period_mask;
  unsigned cls = 0;
  uint32_t block = need <= num_slots_ ? find_block(need, &cls) : num_slots_;
  if (block == num_slots_) {
    // Good fit found nothing: try the first of the largest blocks for an exact fit.
    if (fl_bitmap_ == 0) return num_slots_;
    unsigned fl = log2_32(fl_bitmap_);
    cls = (fl << kSlBits) + log2_32(sl_bitmap_[fl]);
    block = heads_[cls];
  }
  uint32_t block_size = meta_[block].size_free & kSizeMask;
  uint64_t block_end = uint64_t{block} + block_size;
  // The last suitable start in the block: the allocation takes the block's end, so that the
  // block's head, and usually its list, stay as they are.
  if (n > block_size) return num_slots_;  // Only possible on the exact-fit path.
  uint64_t slack = (block_end - n - phase) & period_mask;
  if (slack > block_size - n) return num_slots_;  // Likewise.
  uint64_t s = block_end - n - slack;

  auto start = static_cast<uint32_t>(s);
  auto slots = static_cast<uint32_t>(n);
  uint32_t end = start + slots;
  if (start == block) {
    remove_free(block, cls);
  } else {
    uint32_t front = start - block;
    meta_[block].size_free = front | kFreeBit;
    unsigned front_cls = size_class(front);
    if (front_cls != cls) {
      remove_free(block, cls);
      insert_free(block, front_cls);
    }
    meta_[start].prev_phys = block;
  }
  meta_[start].size_free = slots;
  if (end != block_end) {
    // Alignment slack behind the data (< P slots) goes back as its own free block; its next
    // neighbour is used (or the sentinel), so it needs no merging.
    uint32_t tail = static_cast<uint32_t>(block_end) - end;
    SlotRecord& t = meta_[end];
    t.size_free = tail | kFreeBit;
    t.prev_phys = start;
    insert_free(end, size_class(tail));
    meta_[end + tail].prev_phys = end;
  } else {
    meta_[end].prev_phys = start;
  }
  return start;
}

// Puts the used block [first, first + slots) on the free lists, merged with free neighbours.
[[gnu::always_inline]] inline void BouncePool::release(uint32_t first, uint32_t slots) {
  SlotRecord& r = meta_[first];
  uint32_t size = slots;
  uint32_t end = first + slots;  // <= num_slots_: the sentinel at worst, which is never free.
  SlotRecord& next = meta_[end];
  // Neighbours' size fields are read atomically: a neighbour may be in another CPU's cache,
  // whose owner marks it cached or used again without the lock. Either way it is not free, and
  // only free blocks (which no CPU cache holds) are written here.
  if ((__atomic_load_n(&next.size_free, __ATOMIC_RELAXED) & kFreeBit) != 0) {
    uint32_t next_size = next.size_free & kSizeMask;
    remove_free(end, size_class(next_size));
    next.size_free = 0;
    size += next_size;
    end += next_size;
  }
  uint32_t head = first;
  uint32_t prev = r.prev_phys;  // The sentinel for slot 0.
  if ((__atomic_load_n(&meta_[prev].size_free, __ATOMIC_RELAXED) & kFreeBit) != 0) {
    // Grow the free block in front: its head stays, and its list too unless the class changes.
    uint32_t prev_size = meta_[prev].size_free & kSizeMask;
    r.size_free = 0;
    resize_free(prev, prev_size, prev_size + size);
    head = prev;
  } else {
    r.size_free = size | kFreeBit;
    insert_free(first, size_class(size));
  }
  meta_[end].prev_phys = head;
}

void BouncePool::drain_locked() {
  for (uint32_t n = 1; n < kQuickSlots; ++n) {
    uint32_t b = cache_head_[n];
    while (b != num_slots_) {
      uint32_t next = meta_[b].link_next;
      release(b, n);
      b = next;
    }
    cache_head_[n] = num_slots_;
    cache_count_[n] = 0;
  }
  cached_slots_ = 0;
  cached_blocks_ = 0;
}

BouncePool::~BouncePool() {
  // Taken only to read used_slots_ under the lock's rules; the pool must be idle by now anyway.
  // Blocks in CPU caches count as given back, like those in the shared cache.
  support::Guard<support::SpinLock> guard{&lock_};
  KDEBUG_ASSERT(used_slots_ == cpu_cached_slots(),
                "BouncePool destroyed with bounce slots still in use");
}

Result<void> BouncePool::enable_cpu_caches(CurrentCpuFn current_cpu, unsigned num_cpus) {
  support::Guard<support::SpinLock> guard{&lock_};
  if (current_cpu == nullptr || num_cpus == 0 || num_cpus > kMaxCpus || !initialized_ ||
      current_cpu_ != nullptr) {
    return ErrorCode::kInvalidArgument;
  }
  cpu_cache_budget_ = cache_budget_ / num_cpus;
  cpu_cache_max_block_ = support::min(kQuickSlots - 1, cpu_cache_budget_);
  num_cpu_caches_ = num_cpus;
  current_cpu_ = current_cpu;
  return support::ok();
}

void BouncePool::drain_my_cpu_cache() {
  if (current_cpu_ == nullptr) return;
  unsigned cpu = current_cpu_();
  if (cpu >= num_cpu_caches_) return;
  CpuCache& cc = cpu_caches_[cpu];
  __atomic_store_n(&cc.drain, 0u, __ATOMIC_RELAXED);
  for (uint32_t i = 0; i < cc.count; ++i) {
    used_slots_ -= cc.slots[i];
    release(cc.first[i], cc.slots[i]);
  }
  cc.count = 0;
  __atomic_store_n(&cc.held, 0u, __ATOMIC_RELAXED);
}

void BouncePool::make_room(CpuCache* cc, uint32_t n) {
  support::Guard<support::SpinLock> guard{&lock_};
  // Everything goes back, oldest first, once the lock is taken anyway: a CPU whose frees keep
  // filling its cache with sizes it does not ask for again (random sizes) then pays one lock per
  // kCpuCacheDepth frees, and one that reuses its sizes refills the cache at once.
  (void)n;
  uint32_t drop = 0;
  uint32_t freed = 0;
  while (drop < cc->count) {
    used_slots_ -= cc->slots[drop];
    // Into the shared cache if it has room (any CPU may take it from there), else merged.
    stash_or_release(cc->first[drop], cc->slots[drop]);
    freed += cc->slots[drop];
    ++drop;
  }
  for (uint32_t i = drop; i < cc->count; ++i) {
    cc->first[i - drop] = cc->first[i];
    cc->slots[i - drop] = cc->slots[i];
  }
  cc->count -= drop;
  __atomic_store_n(&cc->held, cc->held - freed, __ATOMIC_RELAXED);
}

void BouncePool::request_cpu_drains() {
  // The calling CPU has just given its own cache back; only the others are asked.
  unsigned me = current_cpu_ != nullptr ? current_cpu_() : num_cpu_caches_;
  for (unsigned i = 0; i < num_cpu_caches_; ++i) {
    if (i != me) __atomic_store_n(&cpu_caches_[i].drain, 1u, __ATOMIC_RELAXED);
  }
}

uint64_t BouncePool::cpu_cached_slots() const {
  uint64_t n = 0;
  for (unsigned i = 0; i < num_cpu_caches_; ++i) {
    n += __atomic_load_n(&cpu_caches_[i].held, __ATOMIC_RELAXED);
  }
  return n;
}

uint64_t BouncePool::cpu_cached_blocks() const {
  uint64_t n = 0;
  for (unsigned i = 0; i < num_cpu_caches_; ++i) {
    n += __atomic_load_n(&cpu_caches_[i].count, __ATOMIC_RELAXED);
  }
  return n;
}

size_t BouncePool::metadata_size(size_t bytes, size_t slot_size) {
  if (!support::is_pow2(slot_size) || slot_size < kMinSlotSize || slot_size > kMaxSlotSize) {
    return 0;
  }
  return (bytes / slot_size + 1) * sizeof(SlotRecord);
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
  if (metadata_bytes < (slots + 1) * sizeof(SlotRecord)) return ErrorCode::kNoMemory;

  support::Guard<support::SpinLock> guard{&lock_};
  base_ = base;
  bytes_ = bytes;
  cpu_base_ = cpu_base;
  slot_size_ = slot_size;
  max_request_ = support::min<size_t>(bytes, kMaxRequest);
  slot_shift_ = support::log2_floor(slot_size);
  num_slots_ = static_cast<uint32_t>(slots);
  cache_budget_ = num_slots_ / 32;
  meta_ = static_cast<SlotRecord*>(metadata);
  uint32_t none = num_slots_;
  for (uint32_t i = 0; i <= num_slots_; ++i) meta_[i] = SlotRecord{0, none, none, none};
  fl_bitmap_ = 0;
  for (uint32_t& m : sl_bitmap_) m = 0;
  for (uint32_t& h : heads_) h = none;
  for (uint32_t& h : cache_head_) h = none;
  for (uint8_t& c : cache_count_) c = 0;
  cached_slots_ = 0;
  cached_blocks_ = 0;
  meta_[0].size_free = num_slots_ | kFreeBit;
  insert_free(0, size_class(num_slots_));
  meta_[num_slots_].prev_phys = 0;
  used_slots_ = 0;
  high_water_ = 0;
  allocations_ = 0;
  failures_ = 0;
  initialized_ = true;
  if (poison_) support::fill_bytes(cpu_base_, kSlotPoison, bytes);
  return support::ok();
}

void BouncePool::check_poison(uint32_t first, uint32_t slots) const {
  const auto* p = static_cast<const uint8_t*>(slot_cpu(first));
  size_t n = size_t{slots} << slot_shift_;
  for (size_t i = 0; i < n; ++i) {
    KASSERT(p[i] == kSlotPoison, "bounce slot written after it was freed (use after free)");
  }
}

Result<BounceSlot> BouncePool::alloc_locked(size_t size, PhysAddr orig, uint64_t min_align_mask,
                                            size_t align, bool fault_point) {
  // size - 1 wraps for 0; max_request_ is 0 before init.
  if (size - 1 >= max_request_) return ErrorCode::kLayoutError;
  uint64_t slot_mask = slot_size_ - 1;
  uint64_t offset = 0;
  uint64_t n = 0;
  uint64_t phase = 0;
  uint64_t period_mask = 0;
  if ((min_align_mask | align) == 0) [[likely]] {
    // No constraint on the address: any slot will do. n <= num_slots_ as size <= bytes_.
    n = (size + slot_mask) >> slot_shift_;
  } else {
    uint64_t align_mask = align == 0 ? 0 : align - 1;
    uint64_t target = orig.value() & min_align_mask;
    // align a power of two, min_align_mask of the form 2^k - 1, and the two compatible.
    if (((align & align_mask) | (min_align_mask & (min_align_mask + 1)) | (target & align_mask)) !=
        0) {
      return ErrorCode::kLayoutError;
    }
    // The address must satisfy addr & low == target.
    uint64_t low = min_align_mask | align_mask;
    offset = target & slot_mask;
    n = (offset + size + slot_mask) >> slot_shift_;
    // The first slot's index must be congruent to `phase` modulo period_mask + 1.
    period_mask = low >> slot_shift_;
    phase = ((target - base_.value()) & low) >> slot_shift_;
    if (phase + n > num_slots_) return ErrorCode::kLayoutError;
  }
  if (fault_point && FAULT_POINT(kBounceSlot)) return ErrorCode::kNoMemory;

  support::Guard<support::SpinLock> guard{&lock_};
  if (current_cpu_ != nullptr) drain_my_cpu_cache_if_asked();
  uint32_t start = num_slots_;
  if (n < kQuickSlots && cache_head_[n] != num_slots_) {
    // The top of the stack, or else the one below it, if its first slot has the right phase.
    uint32_t c = cache_head_[n];
    if (((c - phase) & period_mask) == 0) {
      cache_head_[n] = meta_[c].link_next;
      start = c;
    } else {
      uint32_t below = meta_[c].link_next;
      if (below != num_slots_ && ((below - phase) & period_mask) == 0) {
        meta_[c].link_next = meta_[below].link_next;
        start = below;
      }
    }
    if (start != num_slots_) {
      --cache_count_[n];
      cached_slots_ -= static_cast<uint32_t>(n);
      --cached_blocks_;
      meta_[start].size_free = static_cast<uint32_t>(n);
    }
  }
  for (bool drained = false; start == num_slots_; drained = true) {
    start = carve(n, phase, period_mask);
    if (start != num_slots_) break;
    if (drained) {
      ++failures_;
      request_cpu_drains();  // Other CPUs' caches may hold room; they give it back soon.
      return ErrorCode::kNoMemory;
    }
    // The cached blocks may merge into room; runs at most once.
    drain_locked();
    drain_my_cpu_cache();
  }

  if (KDEBUG_ENABLED && poison_) check_poison(start, static_cast<uint32_t>(n));
  SlotRecord& r = meta_[start];
  r.link_next = static_cast<uint32_t>(offset);
  r.link_prev = static_cast<uint32_t>(size);
  used_slots_ += n;
  if (used_slots_ > high_water_) high_water_ = used_slots_;
  ++allocations_;

  BounceSlot out;
  out.addr = base_ + ((uint64_t{start} << slot_shift_) + offset);
  out.first_slot = start;
  out.num_slots = static_cast<uint32_t>(n);
  out.size = size;
  return out;
}

Result<void> BouncePool::free_block(uint32_t first, uint32_t slots, uint64_t offset,
                                    uint64_t size) {
  support::Guard<support::SpinLock> guard{&lock_};
  if (current_cpu_ != nullptr) drain_my_cpu_cache_if_asked();
  // first < num_slots_ and slots <= num_slots_ - first; slots == 0 fails the record check below
  // (a used head is never of size 0).
  if (first >= num_slots_ || slots > num_slots_ - first) return ErrorCode::kNotFound;
  SlotRecord& r = meta_[first];
  // A used head of exactly this size (a free or cached head carries a flag, any other slot has
  // size 0), holding data at this offset and of this size.
  if (r.size_free != slots || slots == 0 || offset != r.link_next || size != r.link_prev) {
    return ErrorCode::kNotFound;
  }

  used_slots_ -= slots;
  // See set_poisoning. The mapping layer always fills a slot before a device sees it, so the
  // poison never reaches a device.
  if (KDEBUG_ENABLED && poison_)
    support::fill_bytes(slot_cpu(first), kSlotPoison, size_t{slots} << slot_shift_);
  stash_or_release(first, slots);
  return support::ok();
}

void BouncePool::stash_or_release(uint32_t first, uint32_t slots) {
  if (slots < kQuickSlots && cache_count_[slots] < kQuickDepth &&
      cached_slots_ + slots <= cache_budget_) {
    SlotRecord& r = meta_[first];
    r.size_free = slots | kCachedBit;
    r.link_next = cache_head_[slots];
    cache_head_[slots] = first;
    ++cache_count_[slots];
    cached_slots_ += slots;
    ++cached_blocks_;
    return;
  }
  release(first, slots);
}

void BouncePool::drain_cache() {
  support::Guard<support::SpinLock> guard{&lock_};
  if (!initialized_) return;
  drain_locked();
  drain_my_cpu_cache();
  request_cpu_drains();
}

void BouncePool::drain_my_cpu_cache_if_asked() {
  unsigned cpu = current_cpu_();
  if (cpu < num_cpu_caches_ && __atomic_load_n(&cpu_caches_[cpu].drain, __ATOMIC_RELAXED) != 0) {
    drain_my_cpu_cache();
  }
}

BouncePool::Stats BouncePool::stats() const {
  Stats s;
  {
    support::Guard<support::SpinLock> guard{&lock_};
    // Blocks in CPU caches are counted in used_slots_ (they are out of the free structure)
    // but are not in use; requests served from CPU caches are counted per CPU.
    uint64_t in_cpu_caches = cpu_cached_slots();
    s.total_slots = num_slots_;
    s.used_slots = used_slots_ - in_cpu_caches;
    s.high_water_slots = high_water_;
    s.allocations = allocations_;
    for (unsigned i = 0; i < num_cpu_caches_; ++i) {
      s.allocations += __atomic_load_n(&cpu_caches_[i].allocations, __ATOMIC_RELAXED);
    }
    s.failures = failures_;
    s.cached_slots = cached_slots_ + in_cpu_caches;
  }
  s.bytes_bounced = __atomic_load_n(&bytes_bounced_, __ATOMIC_RELAXED);
  return s;
}

bool BouncePool::check_invariants() const {
  support::Guard<support::SpinLock> guard{&lock_};
  if (!initialized_) return num_slots_ == 0 && fl_bitmap_ == 0 && used_slots_ == 0;
  const uint32_t none = num_slots_;

  // The physical chain: blocks tile the pool, back links agree, free blocks are coalesced.
  uint64_t used = 0;
  uint64_t cached = 0;
  uint64_t cached_blocks = 0;
  uint64_t free_blocks = 0;
  uint32_t prev = none;
  bool prev_free = false;
  for (uint64_t i = 0; i < num_slots_;) {
    const SlotRecord& r = meta_[i];
    uint32_t size = r.size_free & kSizeMask;
    if (size == 0 || i + size > num_slots_ || r.prev_phys != prev) return false;
    for (uint64_t j = i + 1; j < i + size; ++j) {
      if (meta_[j].size_free != 0) return false;
    }
    bool is_free = (r.size_free & kFreeBit) != 0;
    bool is_cached = (r.size_free & kCachedBit) != 0;
    if (is_free && is_cached) return false;
    if (is_free) {
      if (prev_free) return false;
      ++free_blocks;
    } else if (is_cached) {
      if (size >= kQuickSlots) return false;
      cached += size;
      ++cached_blocks;
    } else {
      used += size;
      // The block is exactly as many slots as the data (offset + size) needs.
      if (r.link_next >= slot_size_ || r.link_prev == 0) return false;
      uint64_t data_end = uint64_t{r.link_next} + r.link_prev;
      if (((data_end + slot_size_ - 1) >> slot_shift_) != size) return false;
    }
    prev = static_cast<uint32_t>(i);
    prev_free = is_free;
    i += size;
  }
  if (meta_[none].size_free != 0) return false;  // The sentinel is never free.

  // The CPU caches: cached heads of the recorded sizes, within their limits. Their slots are
  // counted in used_slots_ (out of the free structure), not in cached_slots_.
  uint64_t cpu_slots = 0;
  uint64_t cpu_blocks = 0;
  for (unsigned c = 0; c < num_cpu_caches_; ++c) {
    const CpuCache& cc = cpu_caches_[c];
    if (cc.count > kCpuCacheDepth) return false;
    uint64_t held = 0;
    for (uint32_t i = 0; i < cc.count; ++i) {
      uint32_t b = cc.first[i];
      if (b >= num_slots_ || cc.slots[i] == 0 || cc.slots[i] >= kQuickSlots ||
          meta_[b].size_free != (cc.slots[i] | kCachedBit)) {
        return false;
      }
      held += cc.slots[i];
    }
    if (held != cc.held || held > cpu_cache_budget_) return false;
    cpu_slots += held;
    cpu_blocks += cc.count;
  }

  if (used + cpu_slots != used_slots_ || high_water_ < used_slots_) return false;
  if (cached != cached_slots_ + cpu_slots || cached_blocks != cached_blocks_ + cpu_blocks ||
      cached_slots_ > cache_budget_) {
    return false;
  }

  // The cache: each stack holds blocks of its size only, as many as its count says.
  uint64_t stacked = 0;
  for (uint32_t n = 0; n < kQuickSlots; ++n) {
    uint32_t depth = 0;
    for (uint32_t b = cache_head_[n]; b != none; b = meta_[b].link_next) {
      if (b > num_slots_ || ++depth > kQuickDepth || meta_[b].size_free != (n | kCachedBit)) {
        return false;
      }
    }
    if (depth != cache_count_[n]) return false;
    stacked += depth;
  }
  if (stacked != cached_blocks_) return false;

  // The lists: each free block exactly once, on its class's list, links and bitmaps consistent.
  uint64_t listed = 0;
  for (unsigned fl = 0; fl < kFlBits; ++fl) {
    if (((fl_bitmap_ >> fl) & 1u) != (sl_bitmap_[fl] != 0 ? 1u : 0u)) return false;
    for (unsigned sl = 0; sl <= kSlMask; ++sl) {
      unsigned c = (fl << kSlBits) + sl;
      uint32_t b = heads_[c];
      if ((b != none) != (((sl_bitmap_[fl] >> sl) & 1u) != 0)) return false;
      uint32_t back = none;
      while (b != none) {
        if (b > num_slots_ || ++listed > free_blocks) return false;
        const SlotRecord& r = meta_[b];
        uint32_t size = r.size_free & kSizeMask;
        if ((r.size_free & kFreeBit) == 0 || size == 0 || size_class(size) != c ||
            r.link_prev != back) {
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
  for (uint32_t head : heads_) {
    for (uint32_t b = head; b < num_slots_ && count <= num_slots_; b = meta_[b].link_next) {
      ++count;
    }
  }
  return count;
}
