// IoPageTable: the scheme and costs are in include/dmakit/io_page_table.h.
#include "dmakit/io_page_table.h"

#include "dmakit/support/assert.h"
#include "dmakit/support/bitops.h"
#include "dmakit/support/mem.h"

namespace {

uint64_t load_entry(const uint64_t* e) {
  return __atomic_load_n(e, __ATOMIC_ACQUIRE);
}

}  // namespace

Result<void> IoPageTable::init(const Config& cfg) {
  if (fmt_ != nullptr || cfg.format == nullptr || cfg.pfa == nullptr) {
    return ErrorCode::kInvalidArgument;
  }
  const IoPageTableFormat& f = *cfg.format;
  if ((f.levels != 3 && f.levels != 4) || f.table_entry == nullptr || f.page_entry == nullptr ||
      f.entry_valid == nullptr || f.entry_addr == nullptr ||
      (!f.coherent_walk && cfg.cache_op == nullptr)) {
    return ErrorCode::kInvalidArgument;
  }
  fmt_ = cfg.format;
  pfa_ = cfg.pfa;
  cache_op_ = cfg.cache_op;
  levels_ = f.levels;
  coherent_walk_ = f.coherent_walk;
  span_ = uint64_t{1} << (12 + 9 * levels_);
  uint64_t root = new_table();
  if (root == 0) {
    fmt_ = nullptr;
    return ErrorCode::kNoMemory;
  }
  root_ = PhysAddr(root);
  return support::ok();
}

uint64_t IoPageTable::new_table() {
  auto pa = pfa_->alloc(0);
  if (!pa.ok()) return 0;
  void* t = pfa_->phys_to_virt(*pa);
  support::fill_bytes(t, 0, kPageSize);
  // The walker must never see the page's old contents through the entry installed next.
  clean(t, kPageSize);
  __atomic_fetch_add(&table_pages_, uint64_t{1}, __ATOMIC_RELAXED);
  return pa->value();
}

void IoPageTable::free_tables(uint64_t pa, unsigned level) {
  if (level + 1 < levels_) {
    uint64_t* t = table_at(pa);
    for (unsigned i = 0; i < kEntriesPerTable; ++i) {
      uint64_t e = t[i];
      if (fmt_->entry_valid(e)) free_tables(fmt_->entry_addr(e), level + 1);
    }
  }
  KASSERT(pfa_->free(PhysAddr(pa), 0).ok(), "IoPageTable: a table page was not allocated");
}

void IoPageTable::destroy() {
  if (fmt_ == nullptr) return;
  free_tables(root_.value(), 0);
  fmt_ = nullptr;
  pfa_ = nullptr;
  cache_op_ = nullptr;
  root_ = PhysAddr();
  table_pages_ = 0;
  for (uint64_t& w : walk_cache_) w = 0;
}

uint64_t* IoPageTable::walk(uint64_t iova, bool create) {
  uint64_t table = root_.value();
  for (unsigned level = 0; level + 1 < levels_; ++level) {
    uint64_t* slot = &table_at(table)[index(iova, level)];
    uint64_t e = load_entry(slot);
    if (e == 0) {
      if (!create) return nullptr;
      uint64_t fresh = new_table();
      if (fresh == 0) return nullptr;
      uint64_t want = fmt_->table_entry(fresh);
      if (__atomic_compare_exchange_n(slot, &e, want, false, __ATOMIC_ACQ_REL, __ATOMIC_ACQUIRE)) {
        clean(slot, sizeof(*slot));
        e = want;
      } else {
        // Another CPU installed a table here first (e now holds its entry): use that one.
        __atomic_fetch_sub(&table_pages_, uint64_t{1}, __ATOMIC_RELAXED);
        KASSERT(pfa_->free(PhysAddr(fresh), 0).ok(), "IoPageTable: lost table not freed");
      }
    }
    table = fmt_->entry_addr(e);
  }
  uint64_t pfn = table >> 12;
  if (pfn <= kPfnMask) {
    uint64_t block = iova >> 21;
    // Release, paired with leaf_table's acquire: a CPU that finds the table through the cache
    // must also see it zeroed (the fill of new_table), as one that walks to it through the CAS.
    __atomic_store_n(&walk_cache_[block % kWalkCacheSize], (block << kTagShift) | (pfn << 1) | 1,
                     __ATOMIC_RELEASE);
  }
  return table_at(table);
}

uint64_t* IoPageTable::leaf_table_const(uint64_t iova) const {
  uint64_t* t = table_at(root_.value());
  for (unsigned level = 0; level + 1 < levels_; ++level) {
    uint64_t e = load_entry(&t[index(iova, level)]);
    if (!fmt_->entry_valid(e)) return nullptr;
    t = table_at(fmt_->entry_addr(e));
  }
  return t;
}

Result<void> IoPageTable::map_range(uint64_t iova, PhysAddr pa, uint64_t size, unsigned perm) {
  if (size == 0 || !support::is_aligned(iova | pa.value() | size, kPageSize) ||
      support::add_overflows(iova, size) || support::add_overflows(pa.value(), size)) {
    return ErrorCode::kLayoutError;
  }
  if (iova + size > span_) return ErrorCode::kOutOfRange;
  if (perm == 0 || (perm & ~unsigned{kIommuRead | kIommuWrite}) != 0) {
    return ErrorCode::kInvalidArgument;
  }
  uint64_t done = 0;
  ErrorCode failure = ErrorCode::kOk;
  while (done < size) {
    uint64_t va = iova + done;
    uint64_t* leaf = leaf_table(va, /*create=*/true);
    if (leaf == nullptr) {
      failure = ErrorCode::kNoMemory;
      break;
    }
    // The pages of this leaf table: up to its end or the range's.
    unsigned first = index(va, levels_ - 1);
    uint64_t n = support::min<uint64_t>(kEntriesPerTable - first, (size - done) / kPageSize);
    unsigned i = 0;
    for (; i < n; ++i) {
      uint64_t* slot = &leaf[first + i];
      if (load_entry(slot) != 0) break;
      __atomic_store_n(slot, fmt_->page_entry(pa.value() + done + (i * kPageSize), perm),
                       __ATOMIC_RELEASE);
    }
    if (i > 0) clean(&leaf[first], i * sizeof(uint64_t));
    done += uint64_t{i} * kPageSize;
    if (i < n) {
      failure = ErrorCode::kInvalidArgument;
      break;
    }
  }
  if (failure != ErrorCode::kOk) {
    if (done > 0) unmap(iova, done);
    return failure;
  }
  return support::ok();
}

uint64_t IoPageTable::unmap_range(uint64_t iova, uint64_t size) {
  KDEBUG_ASSERT(support::is_aligned(iova | size, kPageSize) && iova + size <= span_,
                "IoPageTable::unmap: misaligned or beyond the table");
  uint64_t cleared = 0;
  uint64_t done = 0;
  while (done < size) {
    uint64_t va = iova + done;
    unsigned first = index(va, levels_ - 1);
    uint64_t n = support::min<uint64_t>(kEntriesPerTable - first, (size - done) / kPageSize);
    done += n * kPageSize;
    uint64_t* leaf = leaf_table(va, /*create=*/false);
    if (leaf == nullptr) continue;
    for (uint64_t i = 0; i < n; ++i) {
      uint64_t* slot = &leaf[first + i];
      if (load_entry(slot) != 0) {
        __atomic_store_n(slot, uint64_t{0}, __ATOMIC_RELEASE);
        ++cleared;
      }
    }
    clean(&leaf[first], n * sizeof(uint64_t));
  }
  return cleared;
}

uint64_t IoPageTable::lookup(uint64_t iova) const {
  if (fmt_ == nullptr || iova >= span_) return 0;
  uint64_t* leaf = leaf_table_const(iova);
  if (leaf == nullptr) return 0;
  uint64_t e = load_entry(&leaf[index(iova, levels_ - 1)]);
  return fmt_->entry_valid(e) ? e : 0;
}
