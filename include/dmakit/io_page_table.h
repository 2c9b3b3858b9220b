// IoPageTable: one I/O address space's radix page table, in the entry format of an IommuUnit
// (dmakit/iommu_unit.h, IoPageTableFormat), built by common code for every IOMMU driver.
//
// Scheme. format.levels tables of 512 entries from the root to the 4 KiB leaves, 9 bits of the
// IOVA per level. Every table is one zeroed order-0 page of the page-frame allocator, reached by
// the CPU through the direct map. A missing intermediate table is allocated, zeroed (and cleaned,
// for a walker that does not snoop) and installed with one compare-and-swap: two CPUs that race
// to install the same table both see the winner's, and the loser gives its page back. So map and
// unmap take no lock, and may run concurrently on several CPUs for disjoint IOVA ranges; the
// caller (the IOVA allocator) keeps the ranges disjoint. Leaf entries are written with single
// 64-bit atomic stores. Intermediate tables are never freed while the table lives: they are
// freed all at once by destroy() (the domain's teardown). An IOVA range that the allocator
// hands out again reuses the same tables, so the table memory is bounded by the part of the I/O
// address space in use at the busiest moment (one page per 2 MiB of it, plus the upper levels).
//
// Entries the generic code did not write are zero, and every valid entry of every supported
// format is non-zero, so the walk tells a missing table or an unused leaf by a zero entry without
// calling the format; format.entry_addr decodes the tables it follows.
//
// Walk cache: leaf tables are never freed while the table lives, so the CPU pointer of a leaf
// table, once found, stays right. A small direct-mapped cache of (2 MiB block, leaf table)
// pairs, each packed into one 64-bit word written and read atomically, lets map and unmap of a
// recently used block skip the upper levels. A stale or missing word only costs a walk.
//
// Cost: map and unmap find the leaf table of each 2 MiB of the range (one load from the walk
// cache, or a walk of format.levels - 1 entries), then touch one entry per page. A walker that does
// not snoop (!format.coherent_walk) costs a cache clean per changed leaf table range and per new
// table.
//
// Calling contexts (dmakit/dma_op.h): init and destroy are thread only; map, unmap and lookup are
// any context (the page-frame allocator's allocation is any context).
#pragma once

#include "dmakit/dma_op.h"
#include "dmakit/iommu_unit.h"
#include "dmakit/page_frame_allocator.h"
#include "dmakit/support/addr.h"
#include "dmakit/support/result.h"
#include "dmakit/support/types.h"

class IoPageTable {
 public:
  static constexpr uint64_t kPageSize = 4096;
  static constexpr unsigned kEntriesPerTable = 512;

  struct Config {
    // The entry format (the IommuUnit's; must outlive this object). Required, with every
    // function pointer set and levels 3 or 4.
    const IoPageTableFormat* format = nullptr;
    // Where the tables come from (order 0 pages) and how the CPU reaches them (its direct map).
    // Required; must outlive this object.
    PageFrameAllocator* pfa = nullptr;
    // Cleans the entries the generic code writes when the walker does not snoop (DmaOp::flush).
    // Required when !format->coherent_walk.
    DmaOp* cache_op = nullptr;
  };

  constexpr IoPageTable() = default;
  IoPageTable(const IoPageTable&) = delete;
  IoPageTable& operator=(const IoPageTable&) = delete;

  // Allocates the (empty) root table. Thread only, once.
  // Errors: kInvalidArgument (a required field missing, levels not 3 or 4, called twice),
  // kNoMemory (no page for the root). On error nothing is allocated.
  Result<void> init(const Config& cfg);

  // Gives every table page back to the allocator. Precondition: no IOMMU walks the table any
  // more (every device detached, the unit's caches invalidated). Leaves the object as built by
  // the default constructor. Thread only.
  void destroy();

  // Physical address of the root table, for IommuUnit::attach. Precondition: initialised.
  PhysAddr root() const { return root_; }
  // Bytes of I/O address space the table spans: 2^(12 + 9 * levels).
  uint64_t span() const { return span_; }

  // Maps the IOVA range [iova, iova + size) to the physical range [pa, pa + size) with the
  // IommuPerm bits `perm` (non-zero). iova, pa and size page aligned, size non-zero.
  // All or nothing: on error no page of the range is mapped (intermediate tables allocated on
  // the way stay, empty, until destroy). Entries are cleaned for a walker that does not snoop
  // before this returns; an IOMMU does not cache invalid entries, so no invalidation is needed.
  // Any context; concurrent calls must concern disjoint ranges.
  // Errors: kLayoutError (misaligned, size 0, wraps), kOutOfRange (beyond span()), kInvalidArgument
  // (perm 0 or unknown bits, a page of the range already mapped: nothing changed), kNoMemory (no
  // page for an intermediate table).
  Result<void> map(uint64_t iova, PhysAddr pa, uint64_t size, unsigned perm) {
    // One page (a streaming mapping's common case) in line; anything else out of line.
    if (size == kPageSize && ((iova | pa.value()) & (kPageSize - 1)) == 0 && iova < span_ &&
        perm - 1 < (kIommuRead | kIommuWrite)) [[likely]] {
      uint64_t* leaf = leaf_table(iova, /*create=*/true);
      if (leaf == nullptr) return ErrorCode::kNoMemory;
      uint64_t* slot = &leaf[index(iova, levels_ - 1)];
      if (__atomic_load_n(slot, __ATOMIC_RELAXED) != 0) return ErrorCode::kInvalidArgument;
      __atomic_store_n(slot, fmt_->page_entry(pa.value(), perm), __ATOMIC_RELEASE);
      clean(slot, sizeof(*slot));
      return support::ok();
    }
    return map_range(iova, pa, size, perm);
  }

  // Clears the leaf entries of [iova, iova + size) (page aligned; pages not mapped are skipped)
  // and cleans them for a walker that does not snoop. The caller then invalidates the IOMMU's
  // cached translations (IommuUnit::invalidate) before it reuses the range or the pages. Any
  // context; concurrent calls must concern disjoint ranges. Returns the number of pages that
  // were mapped.
  uint64_t unmap(uint64_t iova, uint64_t size) {
    if (size == kPageSize && iova < span_) [[likely]] {
      uint64_t* leaf = leaf_table(iova, /*create=*/false);
      if (leaf == nullptr) return 0;
      uint64_t* slot = &leaf[index(iova, levels_ - 1)];
      if (__atomic_load_n(slot, __ATOMIC_RELAXED) == 0) return 0;
      __atomic_store_n(slot, uint64_t{0}, __ATOMIC_RELEASE);
      clean(slot, sizeof(*slot));
      return 1;
    }
    return unmap_range(iova, size);
  }

  // The leaf entry of the page holding `iova` (0 when it is not mapped), for tests and reports.
  // Any context.
  uint64_t lookup(uint64_t iova) const;

  // Table pages held now (root included). Any context.
  uint64_t table_pages() const { return __atomic_load_n(&table_pages_, __ATOMIC_RELAXED); }

 private:
  // The CPU pointer of the table at physical address `pa`.
  uint64_t* table_at(uint64_t pa) const {
    return static_cast<uint64_t*>(pfa_->phys_to_virt(PhysAddr(pa)));
  }
  unsigned index(uint64_t iova, unsigned level) const {
    return static_cast<unsigned>((iova >> (12 + 9 * (levels_ - 1 - level))) & 511);
  }
  // The leaf table covering `iova`; null when `create` is false and it does not exist, or when
  // a table could not be allocated (kNoMemory for the caller).
  uint64_t* leaf_table(uint64_t iova, bool create) {
    uint64_t block = iova >> 21;
    uint64_t w = __atomic_load_n(&walk_cache_[block % kWalkCacheSize], __ATOMIC_ACQUIRE);
    if ((w & 1) != 0 && (w >> kTagShift) == block) {
      return table_at(((w >> 1) & kPfnMask) << 12);
    }
    return walk(iova, create);
  }
  uint64_t* walk(uint64_t iova, bool create);
  Result<void> map_range(uint64_t iova, PhysAddr pa, uint64_t size, unsigned perm);
  uint64_t unmap_range(uint64_t iova, uint64_t size);
  uint64_t* leaf_table_const(uint64_t iova) const;
  // A fresh zeroed (and cleaned) table, 0 if none.
  uint64_t new_table();
  void free_tables(uint64_t pa, unsigned level);
  void clean(const void* p, size_t bytes) const {
    if (!coherent_walk_) cache_op_->flush(p, bytes);
  }

  // Walk-cache words: valid bit 0, the leaf table's page frame number in bits 1-36, the 2 MiB
  // block number (iova >> 21, at most 27 bits) from bit 37.
  static constexpr unsigned kWalkCacheSize = 64;
  static constexpr unsigned kTagShift = 37;
  static constexpr uint64_t kPfnMask = (uint64_t{1} << 36) - 1;
  uint64_t walk_cache_[kWalkCacheSize] = {};

  const IoPageTableFormat* fmt_ = nullptr;
  PageFrameAllocator* pfa_ = nullptr;
  DmaOp* cache_op_ = nullptr;
  PhysAddr root_;
  uint64_t span_ = 0;
  uint64_t table_pages_ = 0;  // Atomic.
  unsigned levels_ = 0;
  bool coherent_walk_ = true;
};
