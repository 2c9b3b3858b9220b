// BouncePool's invariant checker (check_invariants): for tests, fuzzers and a kernel's own
// debugging. In a file of its own, so that it is a member of libdma.a that a kernel's link pulls
// in only when the kernel calls it.
#include "dmakit/bounce_pool.h"
#include "dmakit/support/compiler.h"
#include "mm/bounce_pool_internal.h"

using namespace bounce_internal;  // NOLINT(google-build-using-namespace): the pool's own helpers

SUPPORT_COLD bool BouncePool::check_invariants() const {
  // Every CPU cache's lock (in index order, released in reverse), then the pool's: a snapshot in
  // which no cache changes.
  for (unsigned c = 0; c < num_cpu_caches_; ++c) lock_cpu_cache(c);
  bool ok = check_invariants_caches_locked();
  for (unsigned c = num_cpu_caches_; c-- > 0;) unlock_cpu_cache(c);
  return ok;
}

void BouncePool::lock_cpu_cache(unsigned c) const {
  cpu_caches_[c].lock.lock();
}

void BouncePool::unlock_cpu_cache(unsigned c) const {
  cpu_caches_[c].lock.unlock();
}

bool BouncePool::check_cpu_caches(uint64_t* slots, uint64_t* blocks) const {
  uint64_t cpu_slots = 0;
  uint64_t cpu_blocks = 0;
  for (unsigned c = 0; c < num_cpu_caches_; ++c) {
    const CpuCache& cc = cpu_caches_[c];
    if (cc.count > kCpuCacheDepth - 1) return false;
    uint64_t held = 0;
    for (uint32_t i = 0; i < cc.count; ++i) {
      uint32_t b = cc.first[i];
      if (b >= num_slots_ || cc.slots[i] == 0 || cc.slots[i] >= kQuickSlots ||
          meta_[b].size_free != (cc.slots[i] | kCachedBit)) {
        return false;
      }
      held += cc.slots[i];
    }
    if (held != cc.held) return false;
    // `room` follows `held` (set_held).
    const uint32_t left = cc.held < cpu_cache_budget_ ? cpu_cache_budget_ - cc.held : 0;
    if (cc.room != support::min(cpu_cache_max_block_, left)) return false;
    // `hot` changes without the lock; the caller checks a pool nobody uses.
    uint64_t hot = __atomic_load_n(&cc.hot, __ATOMIC_RELAXED);
    uint32_t hot_n = hot_slots(hot);
    if (hot_n != 0) {
      uint32_t b = static_cast<uint32_t>(hot);
      if (b >= num_slots_ || hot_n > cpu_cache_max_block_ ||
          meta_[b].size_free != (hot_n | kCachedBit)) {
        return false;
      }
      held += hot_n;
    }
    if (held > cpu_cache_budget_) return false;
    cpu_slots += held;
    cpu_blocks += cc.count + (hot_n != 0 ? 1 : 0);
  }
  *slots = cpu_slots;
  *blocks = cpu_blocks;
  return true;
}

SUPPORT_COLD bool BouncePool::check_invariants_caches_locked() const {
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
  uint64_t quota_held[kQuotaDevices] = {};
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
      uint32_t offset = r.link_next & ~kQuotaBit;
      if (offset >= slot_size_ || r.link_prev == 0) return false;
      uint64_t data_end = uint64_t{offset} + r.link_prev;
      if (((data_end + slot_size_ - 1) >> slot_shift_) != size) return false;
      // A block of a device with a quota counts in that device's entry.
      if ((r.link_next & kQuotaBit) != 0) {
        unsigned q = 0;
        while (q < kQuotaDevices &&
               (quota_counts_[q].slots == 0 || quota_counts_[q].id != owners_[i])) {
          ++q;
        }
        if (q == kQuotaDevices) return false;
        quota_held[q] += size;
      }
    }
    prev = static_cast<uint32_t>(i);
    prev_free = is_free;
    i += size;
  }
  if (meta_[none].size_free != 0) return false;  // The sentinel is never free.
  for (unsigned q = 0; q < kQuotaDevices; ++q) {
    if (quota_held[q] != quota_counts_[q].slots) return false;
  }

  // The CPU caches: cached heads of the recorded sizes, within their limits. Their slots are
  // counted in used_slots_ (out of the free structure), not in cached_slots_.
  uint64_t cpu_slots = 0;
  uint64_t cpu_blocks = 0;
  if (!check_cpu_caches(&cpu_slots, &cpu_blocks)) return false;

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
