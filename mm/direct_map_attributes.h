// DirectMapAttributes<Arch>: changes the memory attribute (cacheable / non-cacheable) of pages of
// the kernel's direct map in place, splitting the large leaves that cover them and putting the
// large leaves back once all their pages have their original attribute again. It is how
// KernelDmaOp::alloc_coherent makes memory uncached for a device that does not snoop the caches
// (include/dmakit/kernel_dma_op.h); each architecture supplies the page-table format (`Arch`, below).
//
// Why in place, not an uncached alias window: an alias would leave the direct map's cacheable
// mapping of the same pages alive, and on AArch64 a cacheable alias of Normal Non-cacheable
// memory can pull lines into the cache behind the device's back (speculative fills) and
// interferes with the architecture's mismatched-attribute rules; x86 documents machine checks
// for a page mapped with two memory types. Changing the one mapping the kernel has keeps exactly
// one attribute per physical page, and the pointer alloc_coherent returns stays a direct-map
// address (virt_to_phys keeps working).
//
// The tables: 512 entries of 8 bytes, 9 bits of virtual address per level; level 0 maps 4 KiB,
// level 1 2 MiB, level 2 1 GiB (x86-64 4-level paging, AArch64 4 KiB granule, RISC-V Sv39/48).
//
// set(va, bytes, attr), under one spinlock:
//   0. check: every page of the range is mapped by a leaf whose attribute is cacheable or
//      non-cacheable (never device memory); otherwise kInvalidArgument, nothing changed;
//   1. split: every large leaf whose attribute differs from `attr` and which covers pages both
//      inside and outside the range is replaced by a table from the pool holding 512 leaves of
//      the next size that translate exactly as the large leaf did (same addresses, attribute and
//      permissions); repeated until every leaf lies wholly inside or wholly outside the range.
//      The pool page remembers the leaf it replaced;
//   2. change each leaf inside the range (4 KiB pages, or a whole 2 MiB / 1 GiB leaf that the
//      range covers) to `attr`;
//   3. merge: for every 2 MiB, then 1 GiB, region the range touched whose table came from the
//      pool, if all 512 entries are again exactly what the split wrote, put the original leaf
//      back and return the table to the pool.
// A split that finds the pool empty runs step 3 over the range and fails with kNoMemory: the map
// is then exactly as before the call. Every entry is replaced through Arch::replace, which does
// what the architecture requires for a live entry (break-before-make on AArch64; TLB
// invalidation everywhere). The map is therefore always the boot map plus the splits that live
// non-default pages need: pool use is bounded by the number of distinct 2 MiB (and 1 GiB)
// regions that hold such pages, and goes back to zero when they are all restored.
//
// Cost: O(leaves in the range) entry updates (one TLB invalidation each: one per 4 KiB page, or
// one for a whole 2 MiB leaf) plus, per split, 512 entry writes, and per touched region at most
// one 512-entry scan to merge.
//
// What `Arch` provides (all static; entries are uint64_t):
//   kTopLevel                         level of the root table's entries (3 for 4-level paging)
//   Pte* root()                       the root table, CPU-addressable
//   bool present(Pte e)
//   bool is_leaf(Pte e, int level)    a leaf (page or block) rather than a table pointer
//   Pte* table_of(Pte e)              CPU pointer to the table a table entry points at
//   Pte table_entry(const Pte* t)     the entry pointing at table `t` (one of the pool's pages)
//   PageAttr attr_of(Pte leaf, int level)
//   Pte with_attr(Pte leaf, int level, PageAttr attr)      attr is kCached or kUncached
//   Pte split_leaf(Pte leaf, int level, size_t i)          the i-th level-1 piece of a leaf
//   void replace(Pte* slot, Pte value, uintptr_t va, int level)
//       stores `value` into the live entry `slot`, which maps the level-sized region at `va`,
//       with the barriers and TLB invalidation that make the new entry the only one in use
//       (including every TLB entry of the region when a leaf becomes a table or back).
//
// Threading: set() may be called from any CPU; calls serialize on the lock. Other CPUs may keep
// using the rest of the direct map meanwhile only where Arch::replace needs no break (x86-64,
// RISC-V); on AArch64 a split or merge briefly unmaps its whole 2 MiB or 1 GiB region, so the
// kernel must not touch other memory of that region on another CPU at the time (the test kernel
// runs on one CPU). Never from interrupt context. No memory is allocated except pool pages.
#pragma once

#include "dmakit/support/assert.h"
#include "dmakit/support/bitops.h"
#include "dmakit/support/result.h"
#include "dmakit/support/spinlock.h"
#include "dmakit/support/types.h"

// What a leaf's memory attribute is, as far as the direct map is concerned.
enum class PageAttr : uint8_t {
  kCached,    // The direct map's normal attribute (write-back cacheable).
  kUncached,  // Normal memory, not cacheable (AArch64 Normal-NC, Svpbmt NC, x86 PAT UC-).
  kOther,     // Anything else (device memory): never changed here.
};

template <typename Arch>
class DirectMapAttributes {
 public:
  using Pte = uint64_t;
  static constexpr size_t kEntries = 512;
  static constexpr uint64_t kPageSize = 4096;
  static constexpr size_t kMaxPoolPages = 256;

  struct alignas(4096) Table {
    Pte e[kEntries];
  };

  // `pool`: `pages` tables (1 .. kMaxPoolPages) that Arch::table_of and Arch::table_entry can
  // address, used for nothing else. The caller keeps ownership; the pool must outlive the object.
  // constexpr, so that a port can have a constant-initialized instance over a static pool.
  constexpr DirectMapAttributes(Table* pool, size_t pages) : pool_(pool), pool_pages_(pages) {}
  DirectMapAttributes(const DirectMapAttributes&) = delete;
  DirectMapAttributes& operator=(const DirectMapAttributes&) = delete;

  // Gives every 4 KiB page of [va, va + bytes) the attribute `attr` (kCached or kUncached); see
  // the scheme above. va and bytes must be page aligned. The caller owns the pages and does not
  // access them during the call; the cache maintenance that an attribute change needs is the
  // caller's (clean and invalidate before and after making pages uncached).
  // Errors: kLayoutError (misaligned, empty or wrapping range, attr kOther), kInvalidArgument (a
  // page is unmapped or device memory; nothing changed), kNoMemory (the table pool is exhausted;
  // nothing changed). Restoring kCached over a range this object made kUncached never fails.
  Result<void> set(uintptr_t va, uint64_t bytes, PageAttr attr) TA_EXCL(lock_) {
    if (bytes == 0 || !support::is_aligned(va, kPageSize) ||
        !support::is_aligned(bytes, kPageSize) || support::add_overflows(va, bytes) ||
        attr == PageAttr::kOther) {
      return ErrorCode::kLayoutError;
    }
    support::Guard<support::RawSpinLock> guard{&lock_};
    KASSERT(pool_ != nullptr && pool_pages_ > 0 && pool_pages_ <= kMaxPoolPages,
            "DirectMapAttributes: bad table pool");
    const uintptr_t end = va + bytes;
    TRY(check(va, end));
    auto split = split_range(va, end, attr);
    if (!split.ok()) {
      merge_range(va, end);
      return split;
    }
    set_pages(va, end, attr);
    merge_range(va, end);
    return support::ok();
  }

  // Pool pages currently holding split tables (0 when no page has a non-default attribute).
  size_t tables_in_use() const TA_EXCL(lock_) {
    support::Guard<support::RawSpinLock> guard{&lock_};
    return in_use_;
  }
  size_t capacity() const { return pool_pages_; }
  // Splits and merges done so far (for reports and tests).
  uint64_t splits() const TA_EXCL(lock_) {
    support::Guard<support::RawSpinLock> guard{&lock_};
    return splits_;
  }
  uint64_t merges() const TA_EXCL(lock_) {
    support::Guard<support::RawSpinLock> guard{&lock_};
    return merges_;
  }

 private:
  static constexpr uint64_t level_size(int level) {
    return uint64_t{1} << (12 + 9 * static_cast<unsigned>(level));
  }
  static constexpr size_t index_at(uintptr_t va, int level) {
    return static_cast<size_t>((va >> (12 + 9 * static_cast<unsigned>(level))) & (kEntries - 1));
  }
  // The first address after the level-sized region holding va (0 on wrap-around: the end).
  static uintptr_t next_region(uintptr_t va, int level) {
    return support::align_down(va, level_size(level)) + level_size(level);
  }

  // Descends from the root towards va's entry at level `stop`; stops early at an entry that is
  // not present or is a leaf. Returns that entry and its level.
  Pte* find(uintptr_t va, int stop, int* level) const {
    Pte* t = Arch::root();
    for (int l = Arch::kTopLevel;; --l) {
      Pte* slot = &t[index_at(va, l)];
      if (l == stop || !Arch::present(*slot) || Arch::is_leaf(*slot, l)) {
        *level = l;
        return slot;
      }
      t = Arch::table_of(*slot);
    }
  }

  // Step 0: every page mapped, by a leaf we may change.
  Result<void> check(uintptr_t va, uintptr_t end) const TA_REQ(lock_) {
    for (uintptr_t p = va; p - va < end - va;) {
      int l = 0;
      Pte* slot = find(p, 0, &l);
      if (!Arch::present(*slot) || !Arch::is_leaf(*slot, l)) return ErrorCode::kInvalidArgument;
      if (Arch::attr_of(*slot, l) == PageAttr::kOther) return ErrorCode::kInvalidArgument;
      uintptr_t next = next_region(p, l);
      if (next == 0) break;
      p = next;
    }
    return support::ok();
  }

  // Whether the level-sized leaf holding p lies wholly inside [va, end).
  static bool inside(uintptr_t p, int level, uintptr_t va, uintptr_t end) {
    uintptr_t base = support::align_down(p, level_size(level));
    return base >= va && level_size(level) <= end - base;
  }

  // Step 1.
  Result<void> split_range(uintptr_t va, uintptr_t end, PageAttr attr) TA_REQ(lock_) {
    for (uintptr_t p = va; p - va < end - va;) {
      int l = 0;
      Pte* slot = find(p, 0, &l);
      if (l == 0 || Arch::attr_of(*slot, l) == attr || inside(p, l, va, end)) {
        uintptr_t next = next_region(p, l);
        if (next == 0) break;
        p = next;
        continue;
      }
      TRY(split(slot, l, support::align_down(p, level_size(l))));
      // Descend again from the same address: the new table holds the next level's leaves.
    }
    return support::ok();
  }

  Result<void> split(Pte* slot, int level, uintptr_t region) TA_REQ(lock_) {
    int idx = alloc_table();
    if (idx < 0) return ErrorCode::kNoMemory;
    Table* t = &pool_[idx];
    const Pte leaf = *slot;
    for (size_t i = 0; i < kEntries; ++i) t->e[i] = Arch::split_leaf(leaf, level, i);
    original_[idx] = leaf;
    Arch::replace(slot, Arch::table_entry(t->e), region, level);
    ++splits_;
    return support::ok();
  }

  // Step 2.
  void set_pages(uintptr_t va, uintptr_t end, PageAttr attr) TA_REQ(lock_) {
    for (uintptr_t p = va; p - va < end - va;) {
      int l = 0;
      Pte* slot = find(p, 0, &l);
      if (Arch::attr_of(*slot, l) != attr) {
        KASSERT(inside(p, l, va, end), "DirectMapAttributes: a leaf crossing the range survived");
        Arch::replace(slot, Arch::with_attr(*slot, l, attr), support::align_down(p, level_size(l)),
                      l);
      }
      uintptr_t next = next_region(p, l);
      if (next == 0) break;
      p = next;
    }
  }

  // Step 3: the regions at each level, lowest level first, so that a 1 GiB table sees its 2 MiB
  // leaves already merged.
  void merge_range(uintptr_t va, uintptr_t end) TA_REQ(lock_) {
    for (int level = 1; level <= Arch::kTopLevel; ++level) {
      const uintptr_t last = end - 1;
      for (uintptr_t r = support::align_down(va, level_size(level));;) {
        try_merge(r, level);
        if (r >= support::align_down(last, level_size(level))) break;
        r += level_size(level);
      }
    }
  }

  void try_merge(uintptr_t region, int level) TA_REQ(lock_) {
    int found = 0;
    Pte* slot = find(region, level, &found);
    if (found != level || !Arch::present(*slot) || Arch::is_leaf(*slot, level)) return;
    Pte* t = Arch::table_of(*slot);
    int idx = pool_index(t);
    if (idx < 0) return;  // A table of the boot map: never ours to merge.
    const Pte leaf = original_[idx];
    for (size_t i = 0; i < kEntries; ++i) {
      if (t[i] != Arch::split_leaf(leaf, level, i)) return;
    }
    Arch::replace(slot, leaf, region, level);
    free_table(idx);
    ++merges_;
  }

  int alloc_table() TA_REQ(lock_) {
    for (size_t i = 0; i < pool_pages_; ++i) {
      if (!used_[i]) {
        used_[i] = true;
        ++in_use_;
        return static_cast<int>(i);
      }
    }
    return -1;
  }
  void free_table(int idx) TA_REQ(lock_) {
    KASSERT(used_[idx], "DirectMapAttributes: freeing a free table");
    used_[idx] = false;
    --in_use_;
  }
  int pool_index(const Pte* t) const TA_REQ(lock_) {
    auto p = reinterpret_cast<uintptr_t>(t);
    auto base = reinterpret_cast<uintptr_t>(pool_);
    if (p < base || p - base >= pool_pages_ * sizeof(Table) || (p - base) % sizeof(Table) != 0) {
      return -1;
    }
    size_t idx = (p - base) / sizeof(Table);
    return used_[idx] ? static_cast<int>(idx) : -1;
  }

  // Thread context only, and held across TLB maintenance that may wait for other CPUs: a lock
  // that leaves interrupts alone (support/spinlock.h).
  mutable support::RawSpinLock lock_;
  Table* const pool_;
  const size_t pool_pages_;
  size_t in_use_ TA_GUARDED(lock_) = 0;
  uint64_t splits_ TA_GUARDED(lock_) = 0;
  uint64_t merges_ TA_GUARDED(lock_) = 0;
  bool used_[kMaxPoolPages] TA_GUARDED(lock_) = {};
  Pte original_[kMaxPoolPages] TA_GUARDED(lock_) = {};
};
