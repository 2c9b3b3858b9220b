// DirectMapAttributes<Format>: changes the memory attribute (cacheable / non-cacheable) of pages
// of a kernel's direct map in place, splitting the large leaves that cover them and putting the
// large leaves back once all their pages have their original attribute again. It is how
// KernelDmaOp::alloc_coherent makes memory uncached for a device that does not snoop the caches
// (include/dmakit/kernel_dma_op.h). The kernel describes its tables (dmakit/page_tables.h: root,
// how to reach a table's memory, the editable range, where split tables come from); each
// architecture supplies the entry format (`Format`, below). Nothing else is assumed: without a
// description every call is kNotSupported.
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
// A table whose physical address is p is read and written at p + table_offset.
//
// set(va, bytes, attr), under one spinlock:
//   0. check: the range lies in the described direct map, and every page of it is mapped by a
//      leaf whose attribute is cacheable or non-cacheable (never device memory); otherwise
//      kInvalidArgument, nothing changed;
//   1. split: every large leaf whose attribute differs from `attr` and which covers pages both
//      inside and outside the range is replaced by a table from the kernel's alloc_table holding
//      512 leaves of the next size that translate exactly as the large leaf did (same addresses,
//      attribute and permissions); repeated until every leaf lies wholly inside or wholly outside
//      the range. A record remembers the table and the leaf it replaced;
//   2. change each leaf inside the range (4 KiB pages, or a whole 2 MiB / 1 GiB leaf that the
//      range covers) to `attr`;
//   3. merge: for every 2 MiB, then 1 GiB, region the range touched whose table is one of the
//      records, if all 512 entries are again what the split wrote (up to the bits the hardware
//      sets by itself, Format::hw_bits: accessed / dirty), put the original leaf back and give
//      the table back to the kernel (free_table).
// A split that gets no table (alloc_table fails, or kMaxSplitTables records are live) runs step 3
// over the range and fails with kNoMemory: the map is then exactly as before the call. Every
// entry is replaced through Format::replace, which does what the architecture requires for a
// live entry (break-before-make on AArch64; TLB invalidation everywhere). The map is therefore
// always the kernel's map plus the splits that live non-default pages need: split tables are
// bounded by the number of distinct 2 MiB (and 1 GiB) regions that hold such pages, and go back
// to zero when they are all restored.
//
// Cost: O(leaves in the range) entry updates (one TLB invalidation each: one per 4 KiB page, or
// one for a whole 2 MiB leaf) plus, per split, 512 entry writes, and per touched region at most
// one 512-entry scan to merge.
//
// What `Format` provides (const methods; entries are uint64_t):
//   bool usable()                     the description's encodings are valid for this format
//   int top_level()                   level of the root table's entries (levels - 1)
//   bool present(Pte e)
//   bool is_leaf(Pte e, int level)    a leaf (page or block) rather than a table pointer
//   uint64_t table_phys(Pte e)        physical address of the table a table entry points at
//   Pte table_entry(uint64_t phys)    the entry pointing at the table at `phys` (a split table)
//   PageAttr attr_of(Pte leaf, int level)
//   Pte with_attr(Pte leaf, int level, PageAttr attr)      attr is kCached or kUncached, or
//                                     kWriteCombine when write_combine() says so
//   bool write_combine()              optional: the description has a write-combining encoding
//                                     (a Format without this method has none: set() answers
//                                     kNotSupported to kWriteCombine)
//   Pte split_leaf(Pte leaf, int level, size_t i)          the i-th level-1 piece of a leaf
//   Pte hw_bits()                     leaf bits the hardware may set on its own (A/D)
//   void replace(Pte* slot, Pte value, uintptr_t va, int level)
//       stores `value` into the live entry `slot`, which maps the level-sized region at `va`,
//       with the barriers and TLB invalidation that make the new entry the only one in use
//       (including every TLB entry of the region when a leaf becomes a table or back).
// The pure part (all but replace) is in arch/<arch>/dma/<arch>_page_format.h, host-testable.
//
// Threading: set() may be called from any CPU; calls serialize on the lock. Other CPUs may keep
// using the rest of the direct map meanwhile only where Format::replace needs no break (x86-64,
// RISC-V); on AArch64 a split or merge briefly unmaps its whole 2 MiB or 1 GiB region, so the
// kernel must not touch other memory of that region on another CPU at the time. Never from
// interrupt context. Memory comes only from the kernel's alloc_table.
#pragma once

#include "dmakit/kernel_hooks.h"
#include "dmakit/page_tables.h"
#include "dmakit/support/assert.h"
#include "dmakit/support/bitops.h"
#include "dmakit/support/result.h"
#include "dmakit/support/spinlock.h"
#include "dmakit/support/types.h"

// What a leaf's memory attribute is, as far as the direct map is concerned.
enum class PageAttr : uint8_t {
  kCached,        // The direct map's normal attribute (write-back cacheable).
  kUncached,      // Normal memory, not cacheable (AArch64 Normal-NC, Svpbmt NC, x86 PAT UC-).
  kWriteCombine,  // Not cacheable, stores combined (x86 PAT WC); only a Format that has it.
  kOther,         // Anything else (device memory): never changed here.
};

// Whether a description has everything DirectMapAttributes needs (the arch-specific encodings
// are the Format's to check). A null pointer is a missing description.
inline bool page_tables_usable(const dmakit_page_tables* pt) {
  return pt != nullptr && (pt->levels == 3 || pt->levels == 4) && pt->root % 4096 == 0 &&
         pt->alloc_table != nullptr && pt->free_table != nullptr && pt->va_size != 0 &&
         support::is_aligned(pt->va_base, 4096) && support::is_aligned(pt->va_size, 4096);
}

// The entry update of an architecture that may change a live leaf in place (RISC-V, x86-64: no
// break-before-make rule): store the new entry, then drop the old translation from every CPU
// through the kernel's tlb_flush_kernel_range hook (dmakit/kernel_hooks.h), or, without it, from
// this CPU only with `local_page(va)` for a page (level 0) and `local_all()` for a larger leaf or
// a table (which also drops the walk caches). `span`: the bytes the entry maps.
template <typename Pte, typename LocalPage, typename LocalAll>
inline void replace_in_place(Pte* slot, Pte value, uintptr_t va, uint64_t span, int level,
                             LocalPage local_page, LocalAll local_all) {
  __atomic_store_n(slot, value, __ATOMIC_SEQ_CST);
  const auto flush = dma::kernel_hooks().tlb_flush_kernel_range;
  if (flush != nullptr) {
    flush(va, static_cast<size_t>(span));
  } else if (level == 0) {
    local_page(va);
  } else {
    local_all();
  }
}

template <typename Format>
class DirectMapAttributes {
 public:
  using Pte = uint64_t;
  static constexpr size_t kEntries = 512;
  static constexpr uint64_t kPageSize = 4096;
  // Split tables live at once: one per distinct 2 MiB (or 1 GiB) region holding pages whose
  // attribute differs from their neighbours'.
  static constexpr size_t kMaxSplitTables = 64;

  // `pt`: the kernel's description, copied (null, or one page_tables_usable rejects, or a Format
  // that rejects its encodings: every set() is kNotSupported). `format`: the entry format, built
  // from the same description.
  DirectMapAttributes(const dmakit_page_tables* pt, const Format& format)
      : format_(format),
        usable_(page_tables_usable(pt) && format.usable()),
        pt_(usable_ ? *pt : dmakit_page_tables{}) {}
  DirectMapAttributes(const DirectMapAttributes&) = delete;
  DirectMapAttributes& operator=(const DirectMapAttributes&) = delete;

  bool usable() const { return usable_; }

  // Gives every 4 KiB page of [va, va + bytes) the attribute `attr` (kCached, kUncached, or
  // kWriteCombine where the Format has it); see
  // the scheme above. va and bytes must be page aligned. The caller owns the pages and does not
  // access them during the call; the cache maintenance that an attribute change needs is the
  // caller's (clean and invalidate before and after making pages uncached).
  // Errors: kNotSupported (no usable description; kWriteCombine without an encoding for it:
  // nothing changed), kLayoutError (misaligned, empty or wrapping
  // range, attr kOther), kInvalidArgument (outside the described direct map, or a page is
  // unmapped or device memory; nothing changed), kNoMemory (no table for a split; nothing
  // changed). Restoring kCached over a range this object made kUncached or kWriteCombine never
  // fails.
  Result<void> set(uintptr_t va, uint64_t bytes, PageAttr attr) TA_EXCL(lock_) {
    if (attr == PageAttr::kOther) return ErrorCode::kLayoutError;
    if (attr == PageAttr::kWriteCombine && !has_write_combine()) return ErrorCode::kNotSupported;
    TRY(check_request(va, bytes));
    support::Guard<support::RawSpinLock> guard{&lock_};
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

  // Splits every large leaf over [va, va + bytes) down to 4 KiB pages, for good: those tables
  // (and any split table set() made there before) are never merged back nor given back to the
  // kernel. Afterwards set() within the range replaces only the 4 KiB entries of the pages it
  // changes, so on AArch64 its break-before-make unmaps nothing but the caller's own pages:
  // another CPU using the rest of the direct map can never fault. The splits themselves break
  // their regions: call it while no other CPU uses them (at boot). Costs one table per 2 MiB
  // (and per 1 GiB) of the range. Errors: as set(); kNoMemory when alloc_table runs out (the
  // splits made so far stay: they translate exactly as before).
  Result<void> split_to_pages(uintptr_t va, uint64_t bytes) TA_EXCL(lock_) {
    TRY(check_request(va, bytes));
    support::Guard<support::RawSpinLock> guard{&lock_};
    const uintptr_t end = va + bytes;
    TRY(check(va, end));
    for (uintptr_t p = va; p - va < end - va;) {
      Pte* t = table_at(pt_.root);
      for (int l = format_.top_level(); l > 0; --l) {
        Pte* slot = &t[index_at(p, l)];
        if (format_.is_leaf(*slot, l)) {
          TRY(split_table(slot, l, support::align_down(p, level_size(l)), /*record=*/false));
        } else {
          forget(format_.table_phys(*slot));
        }
        t = table_at(format_.table_phys(*slot));
      }
      // Every entry of this last table is a 4 KiB page now.
      const uintptr_t next = next_region(p, 1);
      if (next == 0) break;
      p = next;
    }
    return support::ok();
  }

  // Tables split_to_pages made (or took over): lent by the kernel for good.
  size_t permanent_tables() const TA_EXCL(lock_) {
    support::Guard<support::RawSpinLock> guard{&lock_};
    return permanent_;
  }

  // Split tables currently live (0 when no page has a non-default attribute).
  size_t tables_in_use() const TA_EXCL(lock_) {
    support::Guard<support::RawSpinLock> guard{&lock_};
    return in_use_;
  }
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
  bool has_write_combine() const {
    if constexpr (requires(const Format& f) { f.write_combine(); }) {
      return format_.write_combine();
    } else {
      return false;
    }
  }

  struct Record {
    uint64_t table;  // Physical address of the split table.
    Pte leaf;        // The leaf it replaced.
  };
  static_assert(kMaxSplitTables == 64, "used_ is one bit per record");

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
  Pte* table_at(uint64_t phys) const {
    return reinterpret_cast<Pte*>(static_cast<uintptr_t>(phys) + pt_.table_offset);
  }

  // Errors: kNotSupported (no usable description; kWriteCombine without an encoding for it:
  // nothing changed), kLayoutError (misaligned, empty or
  // wrapping), kInvalidArgument (outside the described direct map).
  Result<void> check_request(uintptr_t va, uint64_t bytes) const {
    if (!usable_) return ErrorCode::kNotSupported;
    if (bytes == 0 || !support::is_aligned(va, kPageSize) ||
        !support::is_aligned(bytes, kPageSize) || support::add_overflows(va, bytes)) {
      return ErrorCode::kLayoutError;
    }
    if (va < pt_.va_base || va - pt_.va_base >= pt_.va_size ||
        bytes > pt_.va_size - (va - pt_.va_base)) {
      return ErrorCode::kInvalidArgument;
    }
    return support::ok();
  }

  // Descends from the root towards va's entry at level `stop`; stops early at an entry that is
  // not present or is a leaf. Returns that entry and its level.
  Pte* find(uintptr_t va, int stop, int* level) const {
    Pte* t = table_at(pt_.root);
    for (int l = format_.top_level();; --l) {
      Pte* slot = &t[index_at(va, l)];
      if (l == stop || !format_.present(*slot) || format_.is_leaf(*slot, l)) {
        *level = l;
        return slot;
      }
      t = table_at(format_.table_phys(*slot));
    }
  }

  // Step 0: every page mapped, by a leaf we may change.
  Result<void> check(uintptr_t va, uintptr_t end) const TA_REQ(lock_) {
    for (uintptr_t p = va; p - va < end - va;) {
      int l = 0;
      Pte* slot = find(p, 0, &l);
      if (!format_.present(*slot) || !format_.is_leaf(*slot, l)) {
        return ErrorCode::kInvalidArgument;
      }
      if (format_.attr_of(*slot, l) == PageAttr::kOther) return ErrorCode::kInvalidArgument;
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
      if (l == 0 || format_.attr_of(*slot, l) == attr || inside(p, l, va, end)) {
        uintptr_t next = next_region(p, l);
        if (next == 0) break;
        p = next;
        continue;
      }
      TRY(split_table(slot, l, support::align_down(p, level_size(l)), /*record=*/true));
      // Descend again from the same address: the new table holds the next level's leaves.
    }
    return support::ok();
  }

  // Replaces the leaf at `slot` by a table of its 512 pieces. `record`: remembered for merging
  // (set); else for good (split_to_pages).
  Result<void> split_table(Pte* slot, int level, uintptr_t region, bool record) TA_REQ(lock_) {
    const int rec = record ? free_record() : -1;
    if (record && rec < 0) return ErrorCode::kNoMemory;
    uint64_t phys = 0;
    if (pt_.alloc_table(pt_.table_ctx, &phys) == 0) return ErrorCode::kNoMemory;
    KASSERT(phys % kPageSize == 0, "alloc_table: a misaligned table");
    Pte* t = table_at(phys);
    const Pte leaf = *slot;
    for (size_t i = 0; i < kEntries; ++i) t[i] = format_.split_leaf(leaf, level, i);
    if (record) {
      records_[rec] = Record{phys, leaf};
      used_ |= uint64_t{1} << rec;
      ++in_use_;
    } else {
      ++permanent_;
    }
    format_.replace(slot, format_.table_entry(phys), region, level);
    ++splits_;
    return support::ok();
  }

  // Step 2.
  void set_pages(uintptr_t va, uintptr_t end, PageAttr attr) TA_REQ(lock_) {
    for (uintptr_t p = va; p - va < end - va;) {
      int l = 0;
      Pte* slot = find(p, 0, &l);
      if (format_.attr_of(*slot, l) != attr) {
        KASSERT(inside(p, l, va, end), "DirectMapAttributes: a leaf crossing the range survived");
        format_.replace(slot, format_.with_attr(*slot, l, attr),
                        support::align_down(p, level_size(l)), l);
      }
      uintptr_t next = next_region(p, l);
      if (next == 0) break;
      p = next;
    }
  }

  // Step 3: the regions at each level, lowest level first, so that a 1 GiB table sees its 2 MiB
  // leaves already merged.
  void merge_range(uintptr_t va, uintptr_t end) TA_REQ(lock_) {
    for (int level = 1; level <= format_.top_level(); ++level) {
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
    if (found != level || !format_.present(*slot) || format_.is_leaf(*slot, level)) return;
    const uint64_t phys = format_.table_phys(*slot);
    const int idx = record_of(phys);
    if (idx < 0) return;  // A table of the kernel's own map: never ours to merge.
    const Pte leaf = records_[idx].leaf;
    const Pte* t = table_at(phys);
    const Pte hw = format_.hw_bits();
    Pte seen = 0;  // Accessed / dirty as the hardware left them, carried into the merged leaf.
    for (size_t i = 0; i < kEntries; ++i) {
      if ((t[i] & ~hw) != (format_.split_leaf(leaf, level, i) & ~hw)) return;
      seen |= t[i] & hw;
    }
    format_.replace(slot, leaf | seen, region, level);
    used_ &= ~(uint64_t{1} << idx);
    --in_use_;
    pt_.free_table(pt_.table_ctx, phys);
    ++merges_;
  }

  // A split table set() made becomes permanent (split_to_pages).
  void forget(uint64_t phys) TA_REQ(lock_) {
    const int idx = record_of(phys);
    if (idx < 0) return;
    used_ &= ~(uint64_t{1} << idx);
    --in_use_;
    ++permanent_;
  }

  int free_record() const TA_REQ(lock_) {
    for (size_t i = 0; i < kMaxSplitTables; ++i) {
      if ((used_ & (uint64_t{1} << i)) == 0) return static_cast<int>(i);
    }
    return -1;
  }
  int record_of(uint64_t phys) const TA_REQ(lock_) {
    for (size_t i = 0; i < kMaxSplitTables; ++i) {
      if ((used_ & (uint64_t{1} << i)) != 0 && records_[i].table == phys) {
        return static_cast<int>(i);
      }
    }
    return -1;
  }

  // Never one that masks interrupts: set() calls the kernel's TLB hook while holding it, and a
  // hook that sends IPIs needs the CPUs spinning here to take them.
  mutable support::RawSpinLock lock_;
  const Format format_;
  const bool usable_;
  const dmakit_page_tables pt_;
  size_t in_use_ TA_GUARDED(lock_) = 0;
  uint64_t splits_ TA_GUARDED(lock_) = 0;
  uint64_t merges_ TA_GUARDED(lock_) = 0;
  size_t permanent_ TA_GUARDED(lock_) = 0;
  uint64_t used_ TA_GUARDED(lock_) = 0;  // Bit i: records_[i] is live.
  Record records_[kMaxSplitTables] TA_GUARDED(lock_) = {};
};
