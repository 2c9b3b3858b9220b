// DirectMapAttributes over a fake four-level page table: splits go exactly as deep as needed,
// attributes change on exactly the requested pages, every translation stays the same, merges
// restore the boot map entry for entry, and failures (pool exhausted, unmapped or device pages,
// bad ranges) change nothing.
#include "mm/direct_map_attributes.h"

#include <gtest/gtest.h>

#include <map>
#include <memory>
#include <vector>

namespace {

// A made-up entry format: bit 0 present, bit 1 "table" (levels above 0), bits 3:2 the attribute
// (0 cached, 1 uncached, 2 device), bits 51:12 the address (a host pointer for tables).
using Pte = uint64_t;
constexpr Pte kPresent = 1;
constexpr Pte kTable = 2;
constexpr unsigned kAttrShift = 2;
constexpr Pte kAttrMask = 3ull << kAttrShift;
constexpr Pte kAddrMask = 0x000F'FFFF'FFFF'F000ull;
constexpr Pte kOtherBits = 0x70ull << 52;  // "Permissions": must survive splits.

constexpr uint64_t kPage = 4096;
constexpr uint64_t k2M = 2ull << 20;
constexpr uint64_t k1G = 1ull << 30;
constexpr uintptr_t kBase = 0xFFFF'8000'0000'0000ull;  // Direct map: va = kBase + pa.

uint64_t level_size(int level) {
  return 1ull << (12 + 9 * level);
}
size_t index_at(uint64_t va, int level) {
  return (va >> (12 + 9 * level)) & 511;
}

struct Replace {
  uintptr_t va;
  int level;
};

// The fake machine's root table and the log of replace() calls (the Arch hooks are static).
Pte* g_root = nullptr;
std::vector<Replace> g_replaces;

struct FakeFormat {
  static Pte* table_of(Pte e) { return reinterpret_cast<Pte*>(e & kAddrMask); }
  static Pte table_ptr_entry(const Pte* t) {
    return reinterpret_cast<uintptr_t>(t) | kPresent | kTable;
  }
  bool usable() const { return true; }
  int top_level() const { return 3; }
  static bool present(Pte e) { return (e & kPresent) != 0; }
  static bool is_leaf(Pte e, int level) { return level == 0 || (e & kTable) == 0; }
  uint64_t table_phys(Pte e) const { return e & kAddrMask; }
  Pte table_entry(uint64_t phys) const { return phys | kPresent | kTable; }
  static PageAttr attr_of(Pte e, int) {
    switch ((e & kAttrMask) >> kAttrShift) {
      case 0:
        return PageAttr::kCached;
      case 1:
        return PageAttr::kUncached;
      default:
        return PageAttr::kOther;
    }
  }
  Pte with_attr(Pte e, int, PageAttr a) const {
    return (e & ~kAttrMask) | (a == PageAttr::kUncached ? 1ull << kAttrShift : 0);
  }
  Pte split_leaf(Pte e, int level, size_t i) const {
    return ((e & kAddrMask) + i * level_size(level - 1)) | (e & ~kAddrMask);
  }
  Pte hw_bits() const { return 0; }
  void replace(Pte* slot, Pte value, uintptr_t va, int level) const {
    EXPECT_EQ(va % level_size(level), 0u) << "replace of a misaligned region";
    *slot = value;
    g_replaces.push_back(Replace{va, level});
  }
};

struct alignas(4096) Table {
  Pte e[512];
};

// The kernel's side of split tables: `n` host pages ("physical" address = host address, so the
// description's table_offset is 0), handed out by alloc_table and taken back by free_table.
class TablePool {
 public:
  explicit TablePool(size_t n) : pages_(new Table[n]()), used_(n, false) {}
  static int alloc(void* ctx, uint64_t* phys) {
    auto* self = static_cast<TablePool*>(ctx);
    for (size_t i = 0; i < self->used_.size(); ++i) {
      if (!self->used_[i]) {
        self->used_[i] = true;
        *phys = reinterpret_cast<uintptr_t>(&self->pages_[i]);
        return 1;
      }
    }
    return 0;
  }
  static void free(void* ctx, uint64_t phys) {
    auto* self = static_cast<TablePool*>(ctx);
    const size_t i = (phys - reinterpret_cast<uintptr_t>(self->pages_.get())) / sizeof(Table);
    ASSERT_LT(i, self->used_.size());
    ASSERT_TRUE(self->used_[i]) << "free_table of a free page";
    self->used_[i] = false;
  }
  size_t in_use() const {
    size_t n = 0;
    for (bool u : used_) n += u ? 1 : 0;
    return n;
  }

 private:
  std::unique_ptr<Table[]> pages_;
  std::vector<bool> used_;
};

dmakit_page_tables describe(TablePool* pool) {
  dmakit_page_tables pt = {};
  pt.root = reinterpret_cast<uintptr_t>(g_root);
  pt.levels = 4;
  pt.table_offset = 0;
  pt.va_base = kBase;
  pt.va_size = 1ull << 47;
  pt.alloc_table = &TablePool::alloc;
  pt.free_table = &TablePool::free;
  pt.table_ctx = pool;
  return pt;
}

using Attrs = DirectMapAttributes<FakeFormat>;

struct Translation {
  bool mapped = false;
  uint64_t pa = 0;
  PageAttr attr = PageAttr::kOther;
  Pte other_bits = 0;
  bool operator==(const Translation&) const = default;
};

Translation translate(uintptr_t va) {
  Pte* t = g_root;
  for (int l = 3; l >= 0; --l) {
    Pte e = t[index_at(va, l)];
    if (!FakeFormat::present(e)) return {};
    if (FakeFormat::is_leaf(e, l)) {
      return Translation{true, (e & kAddrMask) + (va & (level_size(l) - 1)),
                         FakeFormat::attr_of(e, l), e & kOtherBits};
    }
    t = FakeFormat::table_of(e);
  }
  return {};
}

// The whole tree, entry by entry, tables followed by value: equal dumps mean equal maps with the
// same structure (large leaves where they were).
void dump(const Pte* t, int level, std::vector<Pte>* out) {
  for (size_t i = 0; i < 512; ++i) {
    Pte e = t[i];
    if (FakeFormat::present(e) && !FakeFormat::is_leaf(e, level)) {
      out->push_back(0xDEAD'0000ull | static_cast<Pte>(level));  // A table, wherever it lives.
      dump(FakeFormat::table_of(e), level - 1, out);
    } else {
      out->push_back(e);
    }
  }
}
std::vector<Pte> dump_all() {
  std::vector<Pte> v;
  dump(g_root, 3, &v);
  return v;
}

class DirectMapAttributesTest : public testing::Test {
 protected:
  static constexpr size_t kPoolPages = 8;

  DirectMapAttributesTest() : root_(new_table()), pool_(kPoolPages), attrs_(&pt_, FakeFormat{}) {
    g_replaces.clear();
    // Physical [0, 2 GiB): 1 GiB leaves. [2 GiB, 3 GiB): a boot table of 2 MiB leaves, except
    // [3 GiB - 2 MiB, 3 GiB) in 4 KiB pages. [3 GiB, 3 GiB + 2 MiB): device memory (a 2 MiB
    // leaf). [3 GiB + 2 MiB, 3 GiB + 4 MiB): not mapped. Then [3 GiB + 4 MiB, 4 GiB): 2 MiB.
    map(0, 2 * k1G, 2);
    map(2 * k1G, k1G - k2M, 1);
    map(3 * k1G - k2M, k2M, 0);
    map(3 * k1G, k2M, 1, 2);
    map(3 * k1G + 2 * k2M, k1G - 2 * k2M, 1);
    before_ = dump_all();
    g_replaces.clear();
  }
  ~DirectMapAttributesTest() override { g_root = nullptr; }

  Pte* new_table() {
    tables_.push_back(std::make_unique<Table>());
    g_root = g_root != nullptr ? g_root : tables_.back()->e;
    return tables_.back()->e;
  }
  // Maps [pa, pa + size) at kBase + pa with leaves of `level`, attribute `attr`.
  void map(uint64_t pa, uint64_t size, int level, unsigned attr = 0) {
    for (uint64_t off = 0; off < size; off += level_size(level)) {
      uintptr_t va = kBase + pa + off;
      Pte* t = g_root;
      for (int l = 3; l > level; --l) {
        Pte& e = t[index_at(va, l)];
        if (!FakeFormat::present(e)) e = FakeFormat::table_ptr_entry(new_table());
        t = FakeFormat::table_of(e);
      }
      t[index_at(va, level)] = (pa + off) | kPresent | (Pte{attr} << kAttrShift) | kOtherBits;
    }
  }
  Result<void> set(uint64_t pa, uint64_t size, PageAttr a) {
    return attrs_.set(kBase + pa, size, a);
  }
  // Every page of [pa, pa + size) translates to itself with attribute `a`.
  void expect_pages(uint64_t pa, uint64_t size, PageAttr a) {
    for (uint64_t p = pa; p < pa + size; p += kPage) {
      Translation t = translate(kBase + p);
      ASSERT_TRUE(t.mapped) << std::hex << p;
      EXPECT_EQ(t.pa, p);
      EXPECT_EQ(t.attr, a) << std::hex << p;
      EXPECT_EQ(t.other_bits, kOtherBits);
    }
  }

  std::vector<std::unique_ptr<Table>> tables_;  // The boot map's tables.
  Pte* root_;
  TablePool pool_;
  dmakit_page_tables pt_ = describe(&pool_);
  Attrs attrs_;
  std::vector<Pte> before_;
};

TEST_F(DirectMapAttributesTest, SplitsAGigabyteDownToPagesAndMergesBack) {
  const uint64_t pa = k1G + 5 * k2M + 3 * kPage;
  ASSERT_TRUE(set(pa, 3 * kPage, PageAttr::kUncached).ok());
  EXPECT_EQ(attrs_.tables_in_use(), 2u);  // 1 GiB -> 2 MiB leaves -> 4 KiB pages.
  expect_pages(pa, 3 * kPage, PageAttr::kUncached);
  // Around it, within and beyond the split regions: unchanged.
  expect_pages(pa - 8 * kPage, 8 * kPage, PageAttr::kCached);
  expect_pages(pa + 3 * kPage, 8 * kPage, PageAttr::kCached);
  expect_pages(k1G, 16 * kPage, PageAttr::kCached);
  expect_pages(2 * k1G - 16 * kPage, 16 * kPage, PageAttr::kCached);
  ASSERT_TRUE(set(pa, 3 * kPage, PageAttr::kCached).ok());
  EXPECT_EQ(attrs_.tables_in_use(), 0u);
  EXPECT_EQ(attrs_.splits(), 2u);
  EXPECT_EQ(attrs_.merges(), 2u);
  EXPECT_EQ(dump_all(), before_);
}

TEST_F(DirectMapAttributesTest, EveryReplaceIsLoggedAtItsLevel) {
  const uint64_t pa = 7 * k2M;
  ASSERT_TRUE(set(pa, 2 * kPage, PageAttr::kUncached).ok());
  // Two splits (levels 2 and 1), two pages (level 0).
  ASSERT_EQ(g_replaces.size(), 4u);
  EXPECT_EQ(g_replaces[0].level, 2);
  EXPECT_EQ(g_replaces[0].va, kBase);
  EXPECT_EQ(g_replaces[1].level, 1);
  EXPECT_EQ(g_replaces[1].va, kBase + pa);
  EXPECT_EQ(g_replaces[2].level, 0);
  EXPECT_EQ(g_replaces[3].va, kBase + pa + kPage);
  g_replaces.clear();
  ASSERT_TRUE(set(pa, 2 * kPage, PageAttr::kCached).ok());
  // Two pages back, then the merges, lowest level first.
  ASSERT_EQ(g_replaces.size(), 4u);
  EXPECT_EQ(g_replaces[2].level, 1);
  EXPECT_EQ(g_replaces[3].level, 2);
  EXPECT_EQ(dump_all(), before_);
}

TEST_F(DirectMapAttributesTest, RangesAcrossLargeLeavesSplitEachOne) {
  // Across the 1 GiB boundary between two 1 GiB leaves: both split.
  const uint64_t pa = k1G - 2 * kPage;
  ASSERT_TRUE(set(pa, 4 * kPage, PageAttr::kUncached).ok());
  EXPECT_EQ(attrs_.tables_in_use(), 4u);
  expect_pages(pa, 4 * kPage, PageAttr::kUncached);
  expect_pages(pa - 4 * kPage, 4 * kPage, PageAttr::kCached);
  expect_pages(pa + 4 * kPage, 4 * kPage, PageAttr::kCached);
  ASSERT_TRUE(set(pa, 4 * kPage, PageAttr::kCached).ok());
  EXPECT_EQ(attrs_.tables_in_use(), 0u);
  EXPECT_EQ(dump_all(), before_);
}

TEST_F(DirectMapAttributesTest, ARegionMergesOnlyWhenItsLastPageIsBack) {
  const uint64_t a = 2 * k1G + 3 * k2M;  // Inside the boot table of 2 MiB leaves.
  const uint64_t b = a + 9 * kPage;
  ASSERT_TRUE(set(a, kPage, PageAttr::kUncached).ok());
  ASSERT_TRUE(set(b, 2 * kPage, PageAttr::kUncached).ok());
  EXPECT_EQ(attrs_.tables_in_use(), 1u);  // One 2 MiB leaf split; the boot table is not ours.
  ASSERT_TRUE(set(a, kPage, PageAttr::kCached).ok());
  EXPECT_EQ(attrs_.tables_in_use(), 1u);
  expect_pages(a, kPage, PageAttr::kCached);
  expect_pages(b, 2 * kPage, PageAttr::kUncached);
  ASSERT_TRUE(set(b, 2 * kPage, PageAttr::kCached).ok());
  EXPECT_EQ(attrs_.tables_in_use(), 0u);
  EXPECT_EQ(dump_all(), before_);
}

TEST_F(DirectMapAttributesTest, PagesOfABootTableChangeWithoutSplitsAndStayPages) {
  const uint64_t pa = 3 * k1G - k2M + 10 * kPage;
  ASSERT_TRUE(set(pa, 5 * kPage, PageAttr::kUncached).ok());
  EXPECT_EQ(attrs_.tables_in_use(), 0u);
  EXPECT_EQ(attrs_.splits(), 0u);
  expect_pages(pa, 5 * kPage, PageAttr::kUncached);
  ASSERT_TRUE(set(pa, 5 * kPage, PageAttr::kCached).ok());
  // Not merged into a 2 MiB leaf: the boot map had pages here.
  EXPECT_EQ(attrs_.merges(), 0u);
  EXPECT_EQ(dump_all(), before_);
}

TEST_F(DirectMapAttributesTest, AnExhaustedPoolFailsAndChangesNothing) {
  // Each 4 KiB page in its own 1 GiB leaf's own 2 MiB region needs two tables; the pool has 8.
  std::vector<uint64_t> done;
  Result<void> r = support::ok();
  for (uint64_t i = 0; i < 8; ++i) {
    const uint64_t pa = (i % 2) * k1G + (i / 2) * k2M;
    std::vector<Pte> snapshot = dump_all();
    size_t in_use = attrs_.tables_in_use();
    r = set(pa, kPage, PageAttr::kUncached);
    if (!r.ok()) {
      EXPECT_EQ(dump_all(), snapshot);
      EXPECT_EQ(attrs_.tables_in_use(), in_use);
      break;
    }
    done.push_back(pa);
  }
  ASSERT_FALSE(r.ok());
  EXPECT_EQ(r.code(), ErrorCode::kNoMemory);
  // 2 + 2 tables for the first page of each gigabyte, then one per 2 MiB region: 6 pages fit.
  EXPECT_EQ(done.size(), 6u);
  for (uint64_t pa : done) ASSERT_TRUE(set(pa, kPage, PageAttr::kCached).ok());
  EXPECT_EQ(attrs_.tables_in_use(), 0u);
  EXPECT_EQ(dump_all(), before_);
}

TEST_F(DirectMapAttributesTest, AFailedSplitHalfwayUndoesItsOwnSplits) {
  // [2 GiB - 4 KiB, 2 GiB + 4 KiB) needs two tables for the last page of the 1 GiB leaf, then one
  // for the first 2 MiB leaf of the boot table: the third split finds the pool of two empty, and
  // the two splits already made are undone.
  TablePool small_pool(2);
  const dmakit_page_tables pt = describe(&small_pool);
  Attrs small(&pt, FakeFormat{});
  const uint64_t pa = 2 * k1G - kPage;
  auto r = small.set(kBase + pa, 2 * kPage, PageAttr::kUncached);
  EXPECT_EQ(r.code(), ErrorCode::kNoMemory);
  EXPECT_EQ(small.tables_in_use(), 0u);
  EXPECT_EQ(small.splits(), 2u);
  EXPECT_EQ(small.merges(), 2u);
  EXPECT_EQ(dump_all(), before_);
  expect_pages(pa, 2 * kPage, PageAttr::kCached);
}

TEST_F(DirectMapAttributesTest, UnmappedOrDevicePagesAreRefusedUpFront) {
  // A range that starts in RAM and runs into device memory, then into the hole.
  EXPECT_EQ(set(3 * k1G - kPage, 2 * kPage, PageAttr::kUncached).code(),
            ErrorCode::kInvalidArgument);
  EXPECT_EQ(set(3 * k1G + k2M + 0, 2 * k2M, PageAttr::kUncached).code(),
            ErrorCode::kInvalidArgument);
  EXPECT_EQ(set(3 * k1G + 2 * k2M - kPage, 2 * kPage, PageAttr::kUncached).code(),
            ErrorCode::kInvalidArgument);
  EXPECT_EQ(attrs_.set(0x1000, kPage, PageAttr::kUncached).code(), ErrorCode::kInvalidArgument);
  EXPECT_TRUE(g_replaces.empty());
  EXPECT_EQ(dump_all(), before_);
}

TEST_F(DirectMapAttributesTest, BadRangesAreLayoutErrors) {
  EXPECT_EQ(set(kPage, 0, PageAttr::kUncached).code(), ErrorCode::kLayoutError);
  EXPECT_EQ(set(kPage + 8, kPage, PageAttr::kUncached).code(), ErrorCode::kLayoutError);
  EXPECT_EQ(set(kPage, kPage + 1, PageAttr::kUncached).code(), ErrorCode::kLayoutError);
  EXPECT_EQ(set(kPage, kPage, PageAttr::kOther).code(), ErrorCode::kLayoutError);
  EXPECT_EQ(attrs_.set(~uintptr_t{0} - kPage + 1, 2 * kPage, PageAttr::kUncached).code(),
            ErrorCode::kLayoutError);
  EXPECT_EQ(dump_all(), before_);
}

TEST_F(DirectMapAttributesTest, AlreadyRightMeansNothingToDo) {
  ASSERT_TRUE(set(k2M, 4 * k2M, PageAttr::kCached).ok());
  EXPECT_TRUE(g_replaces.empty());
  ASSERT_TRUE(set(k2M, kPage, PageAttr::kUncached).ok());
  g_replaces.clear();
  ASSERT_TRUE(set(k2M, kPage, PageAttr::kUncached).ok());
  EXPECT_TRUE(g_replaces.empty());
  ASSERT_TRUE(set(k2M, kPage, PageAttr::kCached).ok());
  EXPECT_EQ(dump_all(), before_);
}

TEST_F(DirectMapAttributesTest, ALargeLeafWhollyInsideChangesWithoutSplitting) {
  // Exactly one 2 MiB region: the 1 GiB leaf splits, the 2 MiB leaf changes as a whole (one
  // entry, one replace) and comes back whole.
  ASSERT_TRUE(set(4 * k2M, k2M, PageAttr::kUncached).ok());
  EXPECT_EQ(attrs_.tables_in_use(), 1u);
  ASSERT_EQ(g_replaces.size(), 2u);
  EXPECT_EQ(g_replaces[1].level, 1);
  expect_pages(4 * k2M, k2M, PageAttr::kUncached);
  expect_pages(3 * k2M, k2M, PageAttr::kCached);
  expect_pages(5 * k2M, k2M, PageAttr::kCached);
  ASSERT_TRUE(set(4 * k2M, k2M, PageAttr::kCached).ok());
  EXPECT_EQ(attrs_.tables_in_use(), 0u);
  EXPECT_EQ(dump_all(), before_);
  // Half of a 2 MiB leaf and the whole next one: one split, one whole leaf.
  ASSERT_TRUE(set(7 * k2M + k2M / 2, k2M + k2M / 2, PageAttr::kUncached).ok());
  EXPECT_EQ(attrs_.tables_in_use(), 2u);
  expect_pages(7 * k2M + k2M / 2, k2M + k2M / 2, PageAttr::kUncached);
  expect_pages(7 * k2M, k2M / 2, PageAttr::kCached);
  ASSERT_TRUE(set(7 * k2M + k2M / 2, k2M + k2M / 2, PageAttr::kCached).ok());
  EXPECT_EQ(dump_all(), before_);
}

TEST_F(DirectMapAttributesTest, SplitTablesComeFromTheKernelAndGoBack) {
  const uint64_t pa = k1G + 5 * k2M + 3 * kPage;
  ASSERT_TRUE(set(pa, kPage, PageAttr::kUncached).ok());
  EXPECT_EQ(pool_.in_use(), 2u);
  EXPECT_EQ(attrs_.tables_in_use(), 2u);
  ASSERT_TRUE(set(pa, kPage, PageAttr::kCached).ok());
  EXPECT_EQ(pool_.in_use(), 0u);
}

TEST_F(DirectMapAttributesTest, AtMostKMaxSplitTablesLiveAtOnce) {
  // The kernel has pages to spare; the library's records are the limit. One page in each of
  // kMaxSplitTables + 1 distinct 2 MiB leaves of the boot table: one split each.
  TablePool big(Attrs::kMaxSplitTables + 8);
  const dmakit_page_tables pt = describe(&big);
  Attrs attrs(&pt, FakeFormat{});
  std::vector<uint64_t> done;
  for (size_t i = 0; i < Attrs::kMaxSplitTables; ++i) {
    const uint64_t pa = 2 * k1G + i * k2M;
    ASSERT_TRUE(attrs.set(kBase + pa, kPage, PageAttr::kUncached).ok()) << i;
    done.push_back(pa);
  }
  EXPECT_EQ(attrs.tables_in_use(), Attrs::kMaxSplitTables);
  const std::vector<Pte> snapshot = dump_all();
  const uint64_t one_more = 2 * k1G + Attrs::kMaxSplitTables * k2M;
  EXPECT_EQ(attrs.set(kBase + one_more, kPage, PageAttr::kUncached).code(), ErrorCode::kNoMemory);
  EXPECT_EQ(dump_all(), snapshot);
  EXPECT_EQ(big.in_use(), Attrs::kMaxSplitTables);
  for (uint64_t pa : done) ASSERT_TRUE(attrs.set(kBase + pa, kPage, PageAttr::kCached).ok());
  EXPECT_EQ(big.in_use(), 0u);
  EXPECT_EQ(dump_all(), before_);
}

TEST_F(DirectMapAttributesTest, OutsideTheDescribedDirectMapIsRefused) {
  dmakit_page_tables pt = describe(&pool_);
  pt.va_base = kBase + k1G;
  pt.va_size = k1G;
  Attrs attrs(&pt, FakeFormat{});
  EXPECT_EQ(attrs.set(kBase + k1G - kPage, 2 * kPage, PageAttr::kUncached).code(),
            ErrorCode::kInvalidArgument);
  EXPECT_EQ(attrs.set(kBase + 2 * k1G - kPage, 2 * kPage, PageAttr::kUncached).code(),
            ErrorCode::kInvalidArgument);
  EXPECT_TRUE(g_replaces.empty());
  ASSERT_TRUE(attrs.set(kBase + 2 * k1G - kPage, kPage, PageAttr::kUncached).ok());
  ASSERT_TRUE(attrs.set(kBase + 2 * k1G - kPage, kPage, PageAttr::kCached).ok());
  EXPECT_EQ(dump_all(), before_);
}

// After split_to_pages, changing pages of the range replaces only their own 4 KiB entries: on
// AArch64 the break-before-make then unmaps nothing another CPU could be using.
TEST_F(DirectMapAttributesTest, AfterSplitToPagesOnlyTheChangedPagesAreReplaced) {
  TablePool big(16);
  const dmakit_page_tables pt = describe(&big);
  Attrs attrs(&pt, FakeFormat{});
  const uint64_t lo = 4 * k2M;  // Inside the first 1 GiB leaf: 1 + 4 tables.
  ASSERT_TRUE(attrs.split_to_pages(kBase + lo, 4 * k2M).ok());
  EXPECT_EQ(attrs.permanent_tables(), 5u);
  EXPECT_EQ(big.in_use(), 5u);
  EXPECT_EQ(attrs.tables_in_use(), 0u);
  expect_pages(lo - 4 * kPage, 4 * k2M + 8 * kPage, PageAttr::kCached);
  const std::vector<Pte> split = dump_all();
  g_replaces.clear();
  const uint64_t pa = lo + k2M - kPage;  // Two pages across a 2 MiB boundary.
  ASSERT_TRUE(attrs.set(kBase + pa, 2 * kPage, PageAttr::kUncached).ok());
  ASSERT_TRUE(attrs.set(kBase + pa, 2 * kPage, PageAttr::kCached).ok());
  ASSERT_EQ(g_replaces.size(), 4u);
  for (const Replace& r : g_replaces) {
    EXPECT_EQ(r.level, 0);
    EXPECT_TRUE(r.va == kBase + pa || r.va == kBase + pa + kPage) << std::hex << r.va;
  }
  EXPECT_EQ(dump_all(), split);  // Not merged back.
  EXPECT_EQ(big.in_use(), 5u);
}

TEST_F(DirectMapAttributesTest, SplitToPagesKeepsATableSetMadeBefore) {
  TablePool big(16);
  const dmakit_page_tables pt = describe(&big);
  Attrs attrs(&pt, FakeFormat{});
  const uint64_t pa = 2 * k1G + 5 * k2M + 7 * kPage;  // In the boot table of 2 MiB leaves.
  ASSERT_TRUE(attrs.set(kBase + pa, kPage, PageAttr::kUncached).ok());
  ASSERT_EQ(attrs.tables_in_use(), 1u);
  ASSERT_TRUE(attrs.split_to_pages(kBase + 2 * k1G + 5 * k2M, 2 * k2M).ok());
  EXPECT_EQ(attrs.tables_in_use(), 0u);
  EXPECT_EQ(attrs.permanent_tables(), 2u);  // The one set() made, and the next 2 MiB.
  ASSERT_TRUE(attrs.set(kBase + pa, kPage, PageAttr::kCached).ok());
  EXPECT_EQ(attrs.merges(), 0u);
  EXPECT_EQ(big.in_use(), 2u);
  expect_pages(2 * k1G + 5 * k2M, 2 * k2M, PageAttr::kCached);
}

TEST_F(DirectMapAttributesTest, SplitToPagesFailsCleanlyOnBadRequests) {
  TablePool two(2);
  const dmakit_page_tables pt = describe(&two);
  Attrs attrs(&pt, FakeFormat{});
  EXPECT_EQ(attrs.split_to_pages(kBase + kPage + 8, kPage).code(), ErrorCode::kLayoutError);
  EXPECT_EQ(attrs.split_to_pages(kBase, 0).code(), ErrorCode::kLayoutError);
  EXPECT_EQ(attrs.split_to_pages(0x1000, kPage).code(), ErrorCode::kInvalidArgument);
  EXPECT_EQ(attrs.split_to_pages(kBase + 3 * k1G, kPage).code(), ErrorCode::kInvalidArgument);
  EXPECT_EQ(dump_all(), before_);
  // Three tables needed, two available: what was split stays, translating as before.
  EXPECT_EQ(attrs.split_to_pages(kBase, 2 * k2M).code(), ErrorCode::kNoMemory);
  EXPECT_EQ(two.in_use(), 2u);
  expect_pages(0, 2 * k2M, PageAttr::kCached);
  Attrs none(nullptr, FakeFormat{});
  EXPECT_EQ(none.split_to_pages(kBase, kPage).code(), ErrorCode::kNotSupported);
}

}  // namespace
