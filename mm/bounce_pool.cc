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
// Per-CPU caches (optional, bounce_pool.h): a few blocks per CPU in front of the shared cache.
// The newest is in a word of its own (`hot`: first slot, slot count, and a count of the requests
// it served) that a pop takes and a push fills with one compare-and-swap each, so that an
// interrupt or a migration in the middle of a push or pop cannot hand one block to two callers
// without any lock; the others are on a stack under a lock of the cache's own that its CPU takes
// without contention, only when `hot` does not serve (a request of another size that the stack
// may hold, per a lock-free bitmap of its sizes; a push that finds `hot` taken moves that block
// onto the stack). They hold blocks marked kCachedBit like the shared cache's. A request that still
// finds no room after the shared cache went back takes every CPU's cache back too (each under its
// lock, then the pool's lock) and tries once more: a CPU cache never causes a kNoMemory either,
// whether or not its CPU calls in again.
//
// Costs, with S slots and C CPUs with caches: init O(S) (clears the records); alloc O(1): a cache
// pop, or a few bit scans and at most one list move and one insertion (plus, only before a
// kNoMemory, one drain of at most kQuickSlots * kQuickDepth blocks, and of the C CPU caches); free
// O(1): validation, then a cache push, or at most two merges with physical neighbours, one removal
// and one list move or insertion; drain_cache O(C); stats O(C) (a lock pair per CPU cache);
// check_invariants O(S);
// free_block_count O(free blocks). No operation walks the slots or a free list on the alloc/free
// path, so the cost does not depend on occupancy (Linux's swiotlb scans its slot array).
//
// Limits and devices: a request above max_mapping_size() is refused before anything is counted.
// The head of every used block also records, in a second out-of-band array (owners_), the device
// it was made for; a free block or one in a cache has no owner (its record says so, not owners_),
// so a block a CPU parks in its cache stops counting for anybody at once, lock-free. Who holds
// how much is therefore read off the block chain (O(blocks), under the lock): device_slots() and
// the kNoMemory report do that, nothing on the alloc/free path does. A device with a quota is
// counted exactly instead, in a small table under the lock (quota_counts_): its requests skip the
// per-CPU cache, and its blocks carry kQuotaBit so that their frees take the lock too. The
// alloc/free fast path pays one store of the owner and one more term in the "unconstrained?"
// test, nothing for the free.
//
// Reports: the n-th kNoMemory of a pool prints one line (the request, the pool's occupancy and the
// three largest holders) when n is a power of two up to 1024 and every 1024th after that, so a
// storm of failures prints a few lines, each saying how many were not shown. A refused free
// prints one line in debug builds. Lines are formatted under the lock into a stack buffer and
// handed to the sink after it is released.
#include "dmakit/bounce_pool.h"

#include "dmakit/support/assert.h"
#include "dmakit/support/bitops.h"
#include "dmakit/support/compiler.h"
#include "dmakit/support/fault_injection.h"
#include "dmakit/support/mem.h"
#include "mm/bounce_pool_internal.h"
#include "support/report_line.h"

using namespace bounce_internal;  // NOLINT(google-build-using-namespace): the file's own helpers

namespace {

BouncePool::ReportSink g_report_sink;
void* g_report_ctx;

// Whether the n-th failure of a pool (n >= 1) prints its line.
bool report_due(uint64_t n) {
  return n <= 1024 ? support::is_pow2(n) : n % 1024 == 0;
}

// One report line (support/report_line.h) with the pool's word for a device.
class Line : public support::ReportLine<Line> {
 public:
  // "'name' (#id)", "'name'" (anonymous), "#id" (no name) or "anonymous".
  Line& device(uint32_t id, const char* name) {
    if (name != nullptr) {
      str("'").str(name).str("'");
      if (id != 0) str(" (#").dec(id).str(")");
    } else if (id != 0) {
      str("#").dec(id);
    } else {
      str("anonymous");
    }
    return *this;
  }
};

void emit(const Line& line) {
  BouncePool::ReportSink sink = __atomic_load_n(&g_report_sink, __ATOMIC_ACQUIRE);
  void* ctx = __atomic_load_n(&g_report_ctx, __ATOMIC_ACQUIRE);
  if (sink != nullptr) sink(ctx, line.c_str());
}

}  // namespace

void BouncePool::set_report_sink(ReportSink sink, void* ctx, ReportSink* old_sink, void** old_ctx) {
  if (old_sink != nullptr) *old_sink = __atomic_load_n(&g_report_sink, __ATOMIC_ACQUIRE);
  if (old_ctx != nullptr) *old_ctx = __atomic_load_n(&g_report_ctx, __ATOMIC_ACQUIRE);
  __atomic_store_n(&g_report_ctx, ctx, __ATOMIC_RELEASE);
  __atomic_store_n(&g_report_sink, sink, __ATOMIC_RELEASE);
}

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

SUPPORT_COLD void BouncePool::drain_locked() {
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

SUPPORT_COLD void BouncePool::shutdown() const {
  // Taken only to read used_slots_ under the lock's rules; the pool must be idle by now anyway.
  // Blocks in CPU caches count as given back, like those in the shared cache.
  support::Guard<support::SpinLock> guard{&lock_};
  KDEBUG_ASSERT(used_slots_ == cpu_cached_slots(),
                "BouncePool shut down with bounce slots still in use");
}

namespace {
unsigned every_caller_is_cpu_zero() {
  return 0;
}
}  // namespace

SUPPORT_COLD Result<void> BouncePool::enable_cpu_caches(CurrentCpuFn current_cpu,
                                                        unsigned num_cpus) {
  const dmakit_kernel_hooks& hooks = dma::kernel_hooks();
  if (current_cpu == nullptr) {
    current_cpu = hooks.cpu_id != nullptr ? hooks.cpu_id : &every_caller_is_cpu_zero;
  }
  if (num_cpus == 0) {
    num_cpus = hooks.cpu_id == nullptr || hooks.max_cpus == 0 ? 1 : hooks.max_cpus;
    num_cpus = support::min(num_cpus, kMaxCpus);  // Higher CPUs take the pool's lock.
  }
  support::Guard<support::SpinLock> guard{&lock_};
  if (num_cpus > kMaxCpus || !initialized_ || current_cpu_ != nullptr) {
    return ErrorCode::kInvalidArgument;
  }
  cpu_cache_budget_ = cache_budget_ / num_cpus;
  cpu_cache_max_block_ = support::min(kQuickSlots - 1, cpu_cache_budget_);
  for (unsigned c = 0; c < num_cpus; ++c) set_held(&cpu_caches_[c], 0);
  num_cpu_caches_ = num_cpus;
  current_cpu_ = current_cpu;
  return support::ok();
}

SUPPORT_COLD uint64_t BouncePool::reclaim_cpu_caches() {
  uint64_t reclaimed = 0;
  for (unsigned c = 0; c < num_cpu_caches_; ++c) {
    CpuCache& cc = cpu_caches_[c];
    support::Guard<support::SpinLock> cache_guard{&cc.lock};
    uint64_t hot = hot_collect(&cc, 0);
    if (cc.count == 0 && hot == 0) continue;
    support::Guard<support::SpinLock> guard{&lock_};
    for (uint32_t i = 0; i < cc.count; ++i) {
      store_used(used_slots_ - cc.slots[i]);
      reclaimed += cc.slots[i];
      release(cc.first[i], cc.slots[i]);
    }
    if (hot != 0) {
      store_used(used_slots_ - hot_slots(hot));
      reclaimed += hot_slots(hot);
      release(static_cast<uint32_t>(hot), hot_slots(hot));
    }
    cc.count = 0;
    set_held(&cc, 0);
    __atomic_store_n(&cc.sizes, uint64_t{0}, __ATOMIC_RELAXED);
  }
  return reclaimed;
}

uint64_t BouncePool::hot_collect(CpuCache* cc, uint32_t n) {
  uint64_t hot = __atomic_load_n(&cc->hot, __ATOMIC_RELAXED);
  for (;;) {
    const uint32_t slots = hot_slots(hot);
    const bool take = slots != 0 && (n == 0 || slots == n);
    if (!take && (hot >> kHotCountShift) == 0) return 0;
    // Only this CPU's lock-free pop and push change `hot` besides the lock's holder: a lost race
    // reloads it and decides again.
    if (__atomic_compare_exchange_n(&cc->hot, &hot, take ? 0 : hot & kHotBlockMask, false,
                                    __ATOMIC_ACQ_REL, __ATOMIC_RELAXED)) {
      __atomic_store_n(&cc->allocations, cc->allocations + (hot >> kHotCountShift),
                       __ATOMIC_RELAXED);
      return take ? hot & kHotBlockMask : 0;
    }
  }
}

BouncePool::Cached BouncePool::pop_stacked(unsigned cpu, uint32_t n, size_t size, uint32_t owner) {
  const uint32_t first = cpu_cache_pop(&cpu_caches_[cpu], n);
  if (first == num_slots_) return Cached{cpu | kStackMissed, 0};
  claim_record(first, n, 0, size, owner);
  return Cached{first, n};
}

uint32_t BouncePool::cpu_cache_pop(CpuCache* cc, uint32_t n) {
  uint32_t first = num_slots_;
  {
    support::Guard<support::SpinLock> guard{&cc->lock};
    // `hot` first: it holds the newest block.
    uint64_t hot = hot_collect(cc, n);
    if (hot != 0) {
      first = static_cast<uint32_t>(hot);
    } else {
      for (uint32_t i = cc->count; i-- > 0;) {
        if (cc->slots[i] != n) continue;
        first = cc->first[i];
        uint32_t top = --cc->count;
        for (; i < top; ++i) {  // Keeps the stack in age order.
          cc->first[i] = cc->first[i + 1];
          cc->slots[i] = cc->slots[i + 1];
        }
        set_held(cc, cc->held - n);
        stack_sizes(cc);
        break;
      }
    }
    if (first != num_slots_) {
      __atomic_store_n(&cc->allocations, cc->allocations + 1, __ATOMIC_RELAXED);
    }
  }
  // The block is the caller's now (in no cache, still marked cached until claim): checked
  // with interrupts back on.
  if (KDEBUG_ENABLED && poison_ && first != num_slots_) check_poison(first, n);
  return first;
}

void BouncePool::cpu_cache_push_locked(CpuCache* cc, uint32_t first, uint32_t n) {
  SlotRecord& r = owned_record(first);
  support::Guard<support::SpinLock> guard{&cc->lock};
  // Published in `hot` at once, with `hot`'s count kept; what it held goes onto the stack, or, if
  // the stack has no room for it (depth or budget), back with the whole stack (the oldest
  // first). Until then the cache may hold more than its limits, which only this lock's holder
  // can see.
  __atomic_store_n(&r.size_free, n | kCachedBit, __ATOMIC_RELAXED);
  uint64_t hot = __atomic_load_n(&cc->hot, __ATOMIC_RELAXED);
  while (!__atomic_compare_exchange_n(
      &cc->hot, &hot, (hot & ~kHotBlockMask) | first | (uint64_t{n} << kHotSlotsShift), false,
      __ATOMIC_ACQ_REL, __ATOMIC_RELAXED)) {
  }
  const uint64_t old = hot_slots(hot) != 0 ? hot & kHotBlockMask : 0;
  if ((old != 0 && cc->count == kCpuCacheDepth - 1) ||
      cc->held + hot_slots(old) + n > cpu_cache_budget_) {
    make_room(cc, old);
  } else if (old != 0) {
    stack_push(cc, old);
  }
}

void BouncePool::make_room(CpuCache* cc, uint64_t extra) {
  support::Guard<support::SpinLock> guard{&lock_};
  // Everything goes back, oldest first, once the lock is taken anyway: a CPU whose frees keep
  // filling its cache with sizes it does not ask for again (random sizes) then pays one lock per
  // kCpuCacheDepth frees, and one that reuses its sizes refills the cache at once.
  for (uint32_t i = 0; i < cc->count; ++i) {
    store_used(used_slots_ - cc->slots[i]);
    // Into the shared cache if it has room (any CPU may take it from there), else merged.
    stash_or_release(cc->first[i], cc->slots[i]);
  }
  cc->count = 0;
  set_held(cc, 0);
  __atomic_store_n(&cc->sizes, uint64_t{0}, __ATOMIC_RELAXED);
  if (extra != 0) {
    store_used(used_slots_ - hot_slots(extra));
    stash_or_release(static_cast<uint32_t>(extra), hot_slots(extra));
  }
}

SUPPORT_COLD Result<void> BouncePool::retire() {
  // The CPU caches first, each under its own lock (which comes before the pool's); then, under
  // the pool's lock, nothing may be left in use. A block a CPU caches again after the reclaim
  // counts in used_slots_ (cached blocks do), so the test below sees it: kBusy, never a retired
  // pool with a block in some CPU's cache. Once retired_ is set under the lock, every allocation
  // goes to take_locked (the CPU caches are empty and only a live allocation, which the pool no
  // longer hands out, could refill them), which finds no free block.
  reclaim_cpu_caches();
  support::Guard<support::SpinLock> guard{&lock_};
  if (!initialized_ || retired_) return ErrorCode::kInvalidArgument;
  if (used_slots_ != 0) return ErrorCode::kBusy;
  drain_locked();
  // No free block any more: the locked path finds no room (carve and the shared cache stop at the
  // bitmaps and the cache heads, before any record), so it needs no test of its own for this.
  fl_bitmap_ = 0;
  for (uint32_t& m : sl_bitmap_) m = 0;
  for (uint32_t& h : heads_) h = num_slots_;
  retired_ = true;
  return support::ok();
}

// Precondition (init of a retired pool): nobody calls into the pool; retire() emptied the CPU
// caches.
void BouncePool::reset_cpu_caches() {
  for (unsigned c = 0; c < num_cpu_caches_; ++c) {
    CpuCache& cc = cpu_caches_[c];
    support::Guard<support::SpinLock> cache_guard{&cc.lock};
    __atomic_store_n(&cc.hot, uint64_t{0}, __ATOMIC_RELAXED);
    __atomic_store_n(&cc.allocations, uint64_t{0}, __ATOMIC_RELAXED);
  }
  current_cpu_ = nullptr;
  num_cpu_caches_ = 0;
  cpu_cache_budget_ = 0;
  cpu_cache_max_block_ = 0;
  __atomic_store_n(&bytes_bounced_, uint64_t{0}, __ATOMIC_RELAXED);
}

uint64_t BouncePool::cpu_cached_slots() const {
  uint64_t n = 0;
  for (unsigned i = 0; i < num_cpu_caches_; ++i) {
    n += __atomic_load_n(&cpu_caches_[i].held, __ATOMIC_RELAXED) +
         hot_slots(__atomic_load_n(&cpu_caches_[i].hot, __ATOMIC_RELAXED));
  }
  return n;
}

SUPPORT_COLD Result<void> BouncePool::init(PhysAddr base, size_t bytes, void* cpu_base,
                                           void* metadata, size_t metadata_bytes,
                                           const Options& options) {
  size_t slot_size = options.slot_size;
  bool reuse = false;
  if (initialized_) {
    // Only a retired pool may be set up again (over new memory).
    support::Guard<support::SpinLock> guard{&lock_};
    if (!retired_) return ErrorCode::kInvalidArgument;
    reuse = true;
  }
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
  size_t max_mapping = options.max_mapping;
  if (max_mapping == 0) max_mapping = support::min(kMaxMapping, bytes);
  if (max_mapping < slot_size || max_mapping > bytes) return ErrorCode::kInvalidArgument;
  if (metadata_bytes < (slots + 1) * (sizeof(SlotRecord) + sizeof(uint32_t))) {
    return ErrorCode::kNoMemory;
  }

  if (reuse) reset_cpu_caches();
  support::Guard<support::SpinLock> guard{&lock_};
  retired_ = false;
  base_ = base;
  bytes_ = bytes;
  cpu_base_ = cpu_base;
  slot_size_ = slot_size;
  max_request_ = support::min<size_t>(max_mapping, kMaxRequest);
  name_ = options.name;
  slot_shift_ = support::log2_floor(slot_size);
  num_slots_ = static_cast<uint32_t>(slots);
  cache_budget_ = num_slots_ / 32;
  meta_ = static_cast<SlotRecord*>(metadata);
  {
    auto at = reinterpret_cast<uintptr_t>(metadata);
    record_phase_ = at % sizeof(SlotRecord) != 0
                        ? 0
                        : static_cast<uint32_t>((kCacheLineBytes - at % kCacheLineBytes) %
                                                kCacheLineBytes / sizeof(SlotRecord));
  }
  owners_ = reinterpret_cast<uint32_t*>(meta_ + num_slots_ + 1);
  uint32_t none = num_slots_;
  for (uint32_t i = 0; i <= num_slots_; ++i) {
    meta_[i] = SlotRecord{0, none, none, none};
    owners_[i] = 0;
  }
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
  store_used(0);
  high_water_ = 0;
  allocations_ = 0;
  failures_ = 0;
  quota_failures_ = 0;
  invalid_frees_ = 0;
  last_reported_failure_ = 0;
  for (QuotaCount& q : quota_counts_) q = QuotaCount{0, 0};
  for (DeviceName& d : names_) d = DeviceName{0, nullptr};
  last_small_cpu_ = kMaxCpus;
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

BouncePool::QuotaCount* BouncePool::quota_count(uint32_t id, bool claim) {
  QuotaCount* unused = nullptr;
  for (QuotaCount& q : quota_counts_) {
    if (q.slots == 0) {
      if (unused == nullptr) unused = &q;
    } else if (q.id == id) {
      return &q;
    }
  }
  if (!claim || unused == nullptr) return nullptr;
  unused->id = id;
  return unused;
}

// alloc's part under the lock: a block of n slots at the phase, marked used for `dev` with the data
// at `offset`; or num_slots_ and why not (with dev's quota count for kOverQuota). `may_drain`:
// whether the shared cache may be given back to the free lists for one more try.
[[gnu::always_inline]] inline uint32_t BouncePool::take_locked(
    uint64_t n, uint64_t phase, uint64_t period_mask, uint64_t offset, size_t size,
    const BounceDevice& dev, Refusal* why, uint64_t* held, bool may_drain) {
  QuotaCount* quota = nullptr;
  uint32_t quota_bit = 0;
  if (dev.quota != 0) [[unlikely]] {
    // The quota in whole slots, rounded up (without overflow for a huge quota).
    uint64_t limit = (dev.quota >> slot_shift_) + ((dev.quota & (slot_size_ - 1)) != 0 ? 1 : 0);
    quota = quota_count(dev.id, /*claim=*/true);
    if (quota == nullptr) {
      *why = Refusal::kQuotaTableFull;
      return num_slots_;
    }
    if (quota->slots + n > limit) {
      *why = Refusal::kOverQuota;
      *held = quota->slots;
      return num_slots_;
    }
    quota_bit = kQuotaBit;
  }
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
  for (bool drained = !may_drain; start == num_slots_; drained = true) {
    start = carve(n, phase, period_mask);
    if (start != num_slots_) {
      // For the report's list of holders: recorded when a block comes from the free lists, not
      // on the cheaper cache paths, which a device reaches only after it has been here.
      if (dev.name != nullptr) names_[dev.id % kNames] = DeviceName{dev.id, dev.name};
      break;
    }
    if (drained) {
      *why = Refusal::kNoRoom;  // The CPU caches may still hold room: alloc_locked's business.
      return num_slots_;
    }
    // The cached blocks may merge into room; runs at most once.
    drain_locked();
  }

  if (KDEBUG_ENABLED && poison_) check_poison(start, static_cast<uint32_t>(n));
  SlotRecord& r = meta_[start];
  r.link_next = static_cast<uint32_t>(offset) | quota_bit;
  r.link_prev = static_cast<uint32_t>(size);
  __atomic_store_n(&owners_[start], dev.id, __ATOMIC_RELAXED);
  if (quota != nullptr) quota->slots += static_cast<uint32_t>(n);
  store_used(used_slots_ + n);
  if (used_slots_ > high_water_) high_water_ = used_slots_;
  ++allocations_;
  return start;
}

Result<BounceSlot> BouncePool::alloc_locked(size_t size, PhysAddr orig, uint64_t min_align_mask,
                                            size_t align, const BounceDevice& dev, bool fault_point,
                                            unsigned cache_cpu) {
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

  Refusal why = Refusal::kNoRoom;
  uint64_t held = 0;
  uint64_t failure = 0;  // The failure's number when its line is due, else 0.
  uint64_t not_shown = 0;
  // A small block for a CPU cache, cut after one for another CPU, ends where a record line ends
  // if there is room for that (see kSpreadSlots): its first record then shares its line only with
  // its own other records and with free slots (or with slots of a request that could not be
  // placed so), not with the other CPU's block. Ending the line, rather than starting it, costs
  // no room when the block is cut from the end of a free block that ends a line (the end of the
  // pool, or where the last such cut began). Only the place of the first slot changes, never n or
  // the data's offset.
  // Only a block the CPU caches may keep (a per-CPU budget of 0 keeps none: nothing to spread).
  const bool small = cache_cpu < kMaxCpus && n < kSpreadSlots && n <= cpu_cache_max_block_;
  const uint64_t spread_phase = (record_phase_ - n) & (kSpreadSlots - 1);
  uint32_t start = num_slots_;
  for (bool reclaimed = false;; reclaimed = true) {
    bool retry = false;
    {
      support::Guard<support::SpinLock> guard{&lock_};
      // Only after another CPU's block: the first small block of all has no neighbour to avoid.
      const bool spread = small && last_small_cpu_ < kMaxCpus && last_small_cpu_ != cache_cpu;
      if (spread) {
        // Without draining the shared cache: the unplaced attempt below may still use it.
        start = take_locked(n, spread_phase, kSpreadSlots - 1, offset, size, dev, &why, &held,
                            /*may_drain=*/false);
      }
      if (!spread || (start == num_slots_ && why == Refusal::kNoRoom)) {
        start = take_locked(n, phase, period_mask, offset, size, dev, &why, &held,
                            /*may_drain=*/true);
      }
      if (small && start != num_slots_) last_small_cpu_ = cache_cpu;
      if (start == num_slots_) [[unlikely]] {
        if (why == Refusal::kNoRoom && !reclaimed && cpu_cached_slots() != 0) {
          retry = true;
        } else if (retired_) {
          // Not the pool's failure: it has no memory any more (no count, no report line, which
          // would read the records).
        } else {
          ++failures_;
          if (why != Refusal::kNoRoom) ++quota_failures_;
          if (report_due(failures_)) {
            failure = failures_;
            not_shown = failures_ - last_reported_failure_ - 1;
            last_reported_failure_ = failures_;
          }
        }
      }
    }
    if (!retry) break;
    // The CPU caches (this CPU's among them) hold slots: taken back under their own locks, which
    // come before the pool's, whether or not their CPUs ever call in again; then one more try.
    reclaim_cpu_caches();
  }
  if (start == num_slots_) [[unlikely]] {
    if (failure != 0) report_no_memory(why, dev, size, n, held, failure, not_shown);
    return ErrorCode::kNoMemory;
  }

  BounceSlot out;
  out.addr = base_ + ((uint64_t{start} << slot_shift_) + offset);
  out.first_slot = start;
  out.num_slots = static_cast<uint32_t>(n);
  out.size = size;
  return out;
}

Result<void> BouncePool::free_block(uint32_t first, uint32_t slots, uint64_t offset,
                                    uint64_t size) {
  {
    support::Guard<support::SpinLock> guard{&lock_};
    // first < num_slots_ and slots <= num_slots_ - first; slots == 0 fails the record check below
    // (a used head is never of size 0).
    if (first < num_slots_ && slots <= num_slots_ - first) {
      SlotRecord& r = meta_[first];
      // A used head of exactly this size (a free or cached head carries a flag, any other slot
      // has size 0), holding data at this offset and of this size. The size word of a block in
      // another CPU's cache may change under us (a double free of it): read atomically.
      uint32_t link = r.link_next;
      if (__atomic_load_n(&r.size_free, __ATOMIC_RELAXED) == slots && slots != 0 &&
          offset == (link & ~kQuotaBit) && size == r.link_prev) {
        if ((link & kQuotaBit) != 0) {
          QuotaCount* q = quota_count(owners_[first], /*claim=*/false);
          KASSERT(q != nullptr && q->slots >= slots, "bounce pool: quota count lost");
          q->slots -= slots;
        }
        store_used(used_slots_ - slots);
        // See set_poisoning. The mapping layer always fills a slot before a device sees it, so
        // the poison never reaches a device.
        if (KDEBUG_ENABLED && poison_)
          support::fill_bytes(slot_cpu(first), kSlotPoison, size_t{slots} << slot_shift_);
        stash_or_release(first, slots);
        return support::ok();
      }
    }
    ++invalid_frees_;
  }
  if (KDEBUG_ENABLED) report_invalid_free(first, slots, offset, size);
  return ErrorCode::kNotFound;
}

SUPPORT_COLD void BouncePool::report_invalid_free(uint32_t first, uint32_t slots, uint64_t offset,
                                                  uint64_t size) {
  Line l;
  {
    support::Guard<support::SpinLock> guard{&lock_};
    if (name_ != nullptr) {
      l.str("bounce-pool '").str(name_).str("'");
    } else {
      l.str("bounce-pool at ").hex(base_.value());
    }
    l.str(": invalid-free: slot ").dec(first).str(" (").dec(slots).str(" slots, size ");
    l.dec(size).str("): ");
    if (first >= num_slots_) {
      l.str("outside the pool");
    } else {
      const SlotRecord& r = meta_[first];
      uint32_t sf = __atomic_load_n(&r.size_free, __ATOMIC_RELAXED);
      if ((sf & kSizeMask) == 0) {
        l.str("not the first slot of a block");
      } else if ((sf & kFreeBit) != 0) {
        l.str("not allocated (free)");
      } else if ((sf & kCachedBit) != 0) {
        l.str("already freed (in a cache)");
      } else {
        // The block's owner may be changing these right now (a racing double free): the line
        // then says something stale, nothing worse.
        l.str("live, but allocated as ").dec(sf).str(" slots, size ");
        l.dec(__atomic_load_n(&r.link_prev, __ATOMIC_RELAXED)).str(" at offset ");
        l.dec(__atomic_load_n(&r.link_next, __ATOMIC_RELAXED) & ~kQuotaBit);
      }
    }
    (void)offset;
  }
  emit(l);
}

SUPPORT_COLD void BouncePool::report_no_memory(Refusal why, const BounceDevice& dev, size_t size,
                                               uint64_t n, uint64_t held, uint64_t failure,
                                               uint64_t not_shown) {
  // The largest holders, from the block chain: up to kTally distinct devices are told apart (the
  // rest are not named), the three largest printed.
  struct Tally {
    uint32_t id;
    uint64_t slots;
  };
  constexpr unsigned kTally = 16;
  Tally tally[kTally];
  unsigned kinds = 0;
  Line l;
  {
    support::Guard<support::SpinLock> guard{&lock_};
    for (uint64_t i = 0; i < num_slots_;) {
      uint32_t sf = __atomic_load_n(&meta_[i].size_free, __ATOMIC_RELAXED);
      uint32_t blk = sf & kSizeMask;
      if (blk == 0) break;  // Cannot happen in a consistent pool; never loop forever.
      if ((sf & (kFreeBit | kCachedBit)) == 0) {
        uint32_t id = __atomic_load_n(&owners_[i], __ATOMIC_RELAXED);
        unsigned k = 0;
        while (k < kinds && tally[k].id != id) ++k;
        if (k < kinds) {
          tally[k].slots += blk;
        } else if (kinds < kTally) {
          tally[kinds++] = Tally{id, blk};
        }
      }
      i += blk;
    }
    if (name_ != nullptr) {
      l.str("bounce-pool '").str(name_).str("'");
    } else {
      l.str("bounce-pool at ").hex(base_.value());
    }
    l.str(why == Refusal::kNoRoom ? ": no-memory: " : ": over-quota: ");
    if (dev.id == 0 && dev.name == nullptr) {
      l.str("an anonymous device");
    } else {
      l.str("device ").device(dev.id, dev.name);
    }
    l.str(" asked for ").dec(size).str(" bytes (").dec(n).str(" slots): ");
    uint64_t in_cpu_caches = cpu_cached_slots();
    if (why == Refusal::kNoRoom) {
      l.dec(used_slots_ - in_cpu_caches).str(" of ").dec(num_slots_).str(" slots in use, ");
      l.dec(cached_slots_ + in_cpu_caches).str(" cached");
    } else if (why == Refusal::kOverQuota) {
      uint64_t limit = (dev.quota >> slot_shift_) + ((dev.quota & (slot_size_ - 1)) != 0 ? 1 : 0);
      l.str("it holds ").dec(held).str(" of its quota of ").dec(limit).str(" slots");
    } else {
      l.str("its quota cannot be counted: ").dec(kQuotaDevices);
      l.str(" devices with quotas hold slots already");
    }
    l.str("; top holders: ");
    if (kinds == 0) l.str("none");
    for (unsigned shown = 0; shown < 3 && shown < kinds; ++shown) {
      unsigned best = shown;
      for (unsigned k = shown + 1; k < kinds; ++k) {
        if (tally[k].slots > tally[best].slots) best = k;
      }
      Tally t = tally[best];
      tally[best] = tally[shown];
      tally[shown] = t;
      const DeviceName& dn = names_[t.id % kNames];
      if (shown != 0) l.str(", ");
      l.device(t.id, dn.id == t.id ? dn.name : nullptr).str(" ").dec(t.slots).str(" slots");
    }
  }
  l.str("; failure #").dec(failure);
  if (not_shown != 0) l.str(" (").dec(not_shown).str(" not shown since the last line)");
  emit(l);
}

uint64_t BouncePool::device_slots(uint32_t id) const {
  support::Guard<support::SpinLock> guard{&lock_};
  uint64_t held = 0;
  for (uint64_t i = 0; i < num_slots_;) {
    uint32_t sf = __atomic_load_n(&meta_[i].size_free, __ATOMIC_RELAXED);
    uint32_t blk = sf & kSizeMask;
    if (blk == 0) break;  // Cannot happen in a consistent pool; never loop forever.
    if ((sf & (kFreeBit | kCachedBit)) == 0 &&
        __atomic_load_n(&owners_[i], __ATOMIC_RELAXED) == id) {
      held += blk;
    }
    i += blk;
  }
  return held;
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
  {
    support::Guard<support::SpinLock> guard{&lock_};
    if (!initialized_) return;
    drain_locked();
  }
  reclaim_cpu_caches();
}

SUPPORT_COLD BouncePool::Stats BouncePool::stats() const {
  Stats s;
  // Requests the CPU caches served, each under its lock (which comes before the pool's), so that
  // a count moving from `hot` to `allocations` is seen once.
  for (unsigned i = 0; i < num_cpu_caches_; ++i) {
    const CpuCache& cc = cpu_caches_[i];
    support::Guard<support::SpinLock> cache_guard{&cc.lock};
    s.allocations += __atomic_load_n(&cc.allocations, __ATOMIC_RELAXED) +
                     (__atomic_load_n(&cc.hot, __ATOMIC_RELAXED) >> kHotCountShift);
  }
  {
    support::Guard<support::SpinLock> guard{&lock_};
    // Blocks in CPU caches are counted in used_slots_ (they are out of the free structure)
    // but are not in use; requests served from CPU caches are counted per CPU.
    uint64_t in_cpu_caches = cpu_cached_slots();
    s.total_slots = num_slots_;
    s.used_slots = used_slots_ - in_cpu_caches;
    s.high_water_slots = high_water_;
    s.allocations += allocations_;
    s.failures = failures_;
    s.quota_failures = quota_failures_;
    s.invalid_frees = invalid_frees_;
    s.cached_slots = cached_slots_ + in_cpu_caches;
  }
  s.bytes_bounced = __atomic_load_n(&bytes_bounced_, __ATOMIC_RELAXED);
  return s;
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
