// The three architectures' page-table formats (arch/<arch>/dma/<arch>_page_format.h) driven by
// DirectMapAttributes over page tables built in host memory, each in its real entry encoding, as
// a kernel describes them (dmakit_page_tables): tables reached at phys + table_offset, with a
// zero offset (identity-mapped tables) and a non-zero one (tables reached through an upper-half
// direct map at a base no port of the test kernel uses), split tables from the kernel's
// callbacks. The expectations are checked by a walker written here from the architecture
// manuals, not by the formats' own accessors. A missing or unusable description is kNotSupported
// and changes nothing.
#include <gtest/gtest.h>

#include <memory>
#include <vector>

#include "arch/aarch64/dma/aarch64_page_format.h"
#include "arch/riscv64/dma/riscv64_page_format.h"
#include "arch/x86_64/dma/x86_64_page_format.h"
#include "mm/direct_map_attributes.h"

namespace {

using Pte = uint64_t;
constexpr uint64_t kPage = 4096;
constexpr uint64_t k2M = 2ull << 20;
constexpr uint64_t k1G = 1ull << 30;

uint64_t level_size(int level) {
  return 1ull << (12 + 9 * level);
}
size_t index_at(uint64_t va, int level) {
  return (va >> (12 + 9 * level)) & 511;
}

// The live part of a format on the host: a plain store (no TLB).
template <typename Base>
struct HostFormat : Base {
  using Base::Base;
  void replace(Pte* slot, Pte value, uintptr_t, int) const { *slot = value; }
};

// AArch64, 4 KiB granule, 48-bit VA: MAIR index 1 write-back, 2 non-cacheable, 0 device.
struct A64 {
  using Format = HostFormat<Aarch64PageFormat>;
  static constexpr unsigned kLevels = 4;
  static constexpr uintptr_t kUpperBase = 0xFFFF'A000'0000'0000ull;
  static constexpr unsigned kWb = 1, kUc = 2, kDevice = 0;
  static constexpr Pte kOaMask = 0x0000'FFFF'FFFF'F000ull;
  // SH inner shareable (9:8), AP (7:6) = 0, PXN|UXN (54:53), nG (11).
  static constexpr Pte kKeep = (3ull << 8) | (1ull << 11) | (3ull << 53);
  static constexpr Pte kHw = 1ull << 10;  // AF, set by hardware with TCR_EL1.HA.
  static Format format(const dmakit_page_tables* pt) { return Format(pt); }
  static void encode(dmakit_page_tables* pt) { pt->aarch64 = {kWb, kUc}; }
  static void break_encoding(dmakit_page_tables* pt) { pt->aarch64 = {kWb, kWb}; }
  static Pte leaf(uint64_t pa, int level, unsigned attr) {
    return pa | 1 | (level == 0 ? 2 : 0) | (Pte{attr} << 2) | kKeep;
  }
  static Pte table(uint64_t phys) { return phys | 3; }
  static bool valid(Pte e) { return (e & 1) != 0; }
  static bool is_leaf(Pte e, int level) { return level == 0 || (e & 2) == 0; }
  static uint64_t next(Pte e) { return e & kOaMask; }
  static uint64_t leaf_pa(Pte e, int level) { return e & kOaMask & ~(level_size(level) - 1); }
  static unsigned attr(Pte e, int) { return static_cast<unsigned>((e >> 2) & 7); }
};

// RISC-V Sv39 with Svpbmt: PBMT 0 (PMA) cacheable, 1 NC, 2 IO.
struct Rv {
  using Format = HostFormat<Riscv64PageFormat>;
  static constexpr unsigned kLevels = 3;
  // Not the test kernel's upper-half base (0xFFFF'FFC0'0000'0000): a kernel may place its direct
  // map anywhere in the upper half.
  static constexpr uintptr_t kUpperBase = 0xFFFF'FFE0'0000'0000ull;
  static constexpr unsigned kWb = 0, kUc = 1, kDevice = 2;
  static constexpr Pte kPpnMask = ((1ull << 44) - 1) << 10;
  static constexpr Pte kKeep = (1ull << 1) | (1ull << 2) | (1ull << 5) | (1ull << 6);  // R W G A
  static constexpr Pte kHw = 1ull << 7;                                                // D
  static Format format(const dmakit_page_tables* pt) { return Format(pt, true); }
  static void encode(dmakit_page_tables*) {}
  static void break_encoding(dmakit_page_tables* pt) { pt->levels = 5; }
  static Pte leaf(uint64_t pa, int, unsigned attr) {
    return ((pa >> 12) << 10) | 1 | kKeep | (Pte{attr} << 61);
  }
  static Pte table(uint64_t phys) { return ((phys >> 12) << 10) | 1; }
  static bool valid(Pte e) { return (e & 1) != 0; }
  static bool is_leaf(Pte e, int) { return (e & 0xE) != 0; }
  static uint64_t next(Pte e) { return ((e & kPpnMask) >> 10) << 12; }
  static uint64_t leaf_pa(Pte e, int) { return next(e); }
  static unsigned attr(Pte e, int) { return static_cast<unsigned>((e >> 61) & 3); }
};

// x86-64 4-level paging with the PAT layout WB, WT, UC-, UC, WC, WP, UC-, UC: write-back index
// 0, uncached index 6 (PAT and PCD: the PAT bit is at a different place in 4 KiB and large
// entries), strong UC index 3 as "device".
struct X86 {
  using Format = HostFormat<X86PageFormat>;
  static constexpr unsigned kLevels = 4;
  static constexpr uintptr_t kUpperBase = 0xFFFF'8880'0000'0000ull;
  static constexpr unsigned kWb = 0, kUc = 6, kDevice = 3;
  static constexpr Pte kAddr = 0x000F'FFFF'FFFF'F000ull;
  static constexpr Pte kKeep = (1ull << 1) | (1ull << 5) | (1ull << 8) | (1ull << 63);  // W A G NX
  static constexpr Pte kHw = 1ull << 6;                                                 // D
  static Format format(const dmakit_page_tables* pt) { return Format(pt); }
  static void encode(dmakit_page_tables* pt) { pt->x86_64 = {kWb, kUc, DMAKIT_X86_PAT_NONE}; }
  static void break_encoding(dmakit_page_tables* pt) { pt->x86_64 = {kWb, 8, DMAKIT_X86_PAT_NONE}; }
  static Pte pat_bit(int level) { return level == 0 ? 1ull << 7 : 1ull << 12; }
  static Pte leaf(uint64_t pa, int level, unsigned attr) {
    Pte e = pa | 1 | kKeep | (level > 0 ? 1ull << 7 : 0);
    if ((attr & 1) != 0) e |= 1ull << 3;
    if ((attr & 2) != 0) e |= 1ull << 4;
    if ((attr & 4) != 0) e |= pat_bit(level);
    return e;
  }
  static Pte table(uint64_t phys) { return phys | 3; }
  static bool valid(Pte e) { return (e & 1) != 0; }
  static bool is_leaf(Pte e, int level) { return level == 0 || (e & (1ull << 7)) != 0; }
  static uint64_t next(Pte e) { return e & kAddr; }
  static uint64_t leaf_pa(Pte e, int level) { return e & kAddr & ~(level_size(level) - 1); }
  static unsigned attr(Pte e, int level) {
    return static_cast<unsigned>(((e >> 3) & 1) | (((e >> 4) & 1) << 1)) |
           ((e & pat_bit(level)) != 0 ? 4u : 0u);
  }
};

struct alignas(4096) Table {
  Pte e[512];
};

// The kernel's split tables: host pages, "physical" address = host address - table_offset.
class TablePool {
 public:
  TablePool(size_t n, uintptr_t offset) : pages_(new Table[n]()), used_(n, false), off_(offset) {}
  static int alloc(void* ctx, uint64_t* phys) {
    auto* self = static_cast<TablePool*>(ctx);
    for (size_t i = 0; i < self->used_.size(); ++i) {
      if (!self->used_[i]) {
        self->used_[i] = true;
        *phys = reinterpret_cast<uintptr_t>(&self->pages_[i]) - self->off_;
        return 1;
      }
    }
    return 0;
  }
  static void free(void* ctx, uint64_t phys) {
    auto* self = static_cast<TablePool*>(ctx);
    const uintptr_t host = static_cast<uintptr_t>(phys) + self->off_;
    const size_t i = (host - reinterpret_cast<uintptr_t>(self->pages_.get())) / sizeof(Table);
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
  uintptr_t off_;
};

struct Translation {
  bool mapped = false;
  uint64_t pa = 0;
  unsigned attr = 0;
  Pte keep = 0;
  bool operator==(const Translation&) const = default;
};

// A kernel's direct map of physical [0, 2 GiB + 4 MiB) at `offset`: [0, 1 GiB) one 1 GiB leaf;
// [1 GiB, 2 GiB) a boot table of 2 MiB leaves; [2 GiB, 2 GiB + 2 MiB) device memory in 4 KiB
// pages; [2 GiB + 2 MiB, 2 GiB + 4 MiB) RAM in 4 KiB pages; the direct map ends there. Tables (boot
// and split) are reached at phys + offset as well, as in a kernel that reaches its tables through
// the direct map.
template <typename A>
class Machine {
 public:
  explicit Machine(uintptr_t offset) : off_(offset), pool_(8, offset) {
    root_ = new_table();
    map(0, k1G, 2, A::kWb);
    map(k1G, k1G, 1, A::kWb);
    map(2 * k1G, k2M, 0, A::kDevice);
    map(2 * k1G + k2M, k2M, 0, A::kWb);
    pt_.root = phys_of(root_);
    pt_.levels = A::kLevels;
    pt_.table_offset = off_;
    pt_.va_base = off_;
    pt_.va_size = 2 * k1G + 4 * k2M;
    pt_.alloc_table = &TablePool::alloc;
    pt_.free_table = &TablePool::free;
    pt_.table_ctx = &pool_;
    A::encode(&pt_);
  }

  uint64_t phys_of(const Pte* t) const { return reinterpret_cast<uintptr_t>(t) - off_; }
  Pte* at(uint64_t phys) const {
    return reinterpret_cast<Pte*>(static_cast<uintptr_t>(phys) + off_);
  }
  uintptr_t va(uint64_t pa) const { return pa + off_; }

  Translation translate(uint64_t pa) const {
    const uintptr_t v = va(pa);
    const Pte* t = root_;
    for (int l = static_cast<int>(A::kLevels) - 1; l >= 0; --l) {
      const Pte e = t[index_at(v, l)];
      if (!A::valid(e)) return {};
      if (A::is_leaf(e, l)) {
        return Translation{true, A::leaf_pa(e, l) + (v & (level_size(l) - 1)), A::attr(e, l),
                           e & A::kKeep};
      }
      t = at(A::next(e));
    }
    return {};
  }
  void expect_pages(uint64_t pa, uint64_t size, unsigned attr) const {
    for (uint64_t p = pa; p < pa + size; p += kPage) {
      const Translation t = translate(p);
      ASSERT_TRUE(t.mapped) << std::hex << p;
      EXPECT_EQ(t.pa, p) << std::hex << p;
      EXPECT_EQ(t.attr, attr) << std::hex << p;
      EXPECT_EQ(t.keep, A::kKeep) << std::hex << p;
    }
  }
  // Every entry of the tree; a table pointer as a marker, wherever the table lives.
  void dump(const Pte* t, int level, std::vector<Pte>* out) const {
    for (size_t i = 0; i < 512; ++i) {
      const Pte e = t[i];
      if (A::valid(e) && !A::is_leaf(e, level)) {
        out->push_back(0xDEAD'0000ull | static_cast<Pte>(level));
        dump(at(A::next(e)), level - 1, out);
      } else {
        out->push_back(e);
      }
    }
  }
  std::vector<Pte> dump_all() const {
    std::vector<Pte> v;
    dump(root_, static_cast<int>(A::kLevels) - 1, &v);
    return v;
  }
  // The entry mapping pa at `level` (which must exist).
  Pte* slot(uint64_t pa, int level) const {
    Pte* t = root_;
    for (int l = static_cast<int>(A::kLevels) - 1; l > level; --l)
      t = at(A::next(t[index_at(va(pa), l)]));
    return &t[index_at(va(pa), level)];
  }

  const dmakit_page_tables& pt() const { return pt_; }
  dmakit_page_tables& pt() { return pt_; }
  TablePool& pool() { return pool_; }

 private:
  Pte* new_table() {
    tables_.push_back(std::make_unique<Table>());
    return tables_.back()->e;
  }
  void map(uint64_t pa, uint64_t size, int level, unsigned attr) {
    for (uint64_t off = 0; off < size; off += level_size(level)) {
      const uintptr_t v = va(pa + off);
      Pte* t = root_;
      for (int l = static_cast<int>(A::kLevels) - 1; l > level; --l) {
        Pte& e = t[index_at(v, l)];
        if (!A::valid(e)) e = A::table(phys_of(new_table()));
        t = at(A::next(e));
      }
      t[index_at(v, level)] = A::leaf(pa + off, level, attr);
    }
  }

  uintptr_t off_;
  std::vector<std::unique_ptr<Table>> tables_;
  Pte* root_ = nullptr;
  TablePool pool_;
  dmakit_page_tables pt_ = {};
};

template <typename A>
class PageFormatTest : public testing::Test {
 protected:
  // Zero (identity-mapped tables and direct map) and an upper-half base.
  static std::vector<uintptr_t> offsets() { return {0, A::kUpperBase}; }
};
using Arches = testing::Types<A64, Rv, X86>;
TYPED_TEST_SUITE(PageFormatTest, Arches);

TYPED_TEST(PageFormatTest, PagesInsideALargeLeafSplitChangeAndMergeBack) {
  using A = TypeParam;
  for (uintptr_t off : TestFixture::offsets()) {
    SCOPED_TRACE(testing::Message() << "offset 0x" << std::hex << off);
    Machine<A> m(off);
    const std::vector<Pte> before = m.dump_all();
    DirectMapAttributes<typename A::Format> attrs(&m.pt(), A::format(&m.pt()));
    ASSERT_TRUE(attrs.usable());
    const uint64_t pa = 5 * k2M + 3 * kPage;  // Inside the 1 GiB leaf.
    ASSERT_TRUE(attrs.set(m.va(pa), 3 * kPage, PageAttr::kUncached).ok());
    EXPECT_EQ(attrs.tables_in_use(), 2u);  // 1 GiB -> 2 MiB leaves -> 4 KiB pages.
    EXPECT_EQ(m.pool().in_use(), 2u);
    m.expect_pages(pa, 3 * kPage, A::kUc);
    m.expect_pages(pa - 8 * kPage, 8 * kPage, A::kWb);
    m.expect_pages(pa + 3 * kPage, 8 * kPage, A::kWb);
    m.expect_pages(0, 4 * kPage, A::kWb);
    m.expect_pages(k1G - 4 * kPage, 4 * kPage, A::kWb);
    ASSERT_TRUE(attrs.set(m.va(pa), 3 * kPage, PageAttr::kCached).ok());
    EXPECT_EQ(attrs.tables_in_use(), 0u);
    EXPECT_EQ(m.pool().in_use(), 0u);
    EXPECT_EQ(m.dump_all(), before);
  }
}

TYPED_TEST(PageFormatTest, ALargeLeafOfABootTableChangesWhole) {
  using A = TypeParam;
  for (uintptr_t off : TestFixture::offsets()) {
    SCOPED_TRACE(testing::Message() << "offset 0x" << std::hex << off);
    Machine<A> m(off);
    const std::vector<Pte> before = m.dump_all();
    DirectMapAttributes<typename A::Format> attrs(&m.pt(), A::format(&m.pt()));
    const uint64_t pa = k1G + 3 * k2M;
    ASSERT_TRUE(attrs.set(m.va(pa), k2M, PageAttr::kUncached).ok());
    EXPECT_EQ(attrs.tables_in_use(), 0u);
    EXPECT_EQ(A::attr(*m.slot(pa, 1), 1), A::kUc);
    m.expect_pages(pa, k2M, A::kUc);
    m.expect_pages(pa - k2M, k2M, A::kWb);
    m.expect_pages(pa + k2M, k2M, A::kWb);
    // Then one page of the next 2 MiB leaf: split, and merged again on the way back.
    ASSERT_TRUE(attrs.set(m.va(pa + k2M), kPage, PageAttr::kUncached).ok());
    EXPECT_EQ(attrs.tables_in_use(), 1u);
    m.expect_pages(pa + k2M, kPage, A::kUc);
    m.expect_pages(pa + k2M + kPage, 8 * kPage, A::kWb);
    ASSERT_TRUE(attrs.set(m.va(pa), k2M + kPage, PageAttr::kCached).ok());
    EXPECT_EQ(attrs.tables_in_use(), 0u);
    EXPECT_EQ(m.pool().in_use(), 0u);
    EXPECT_EQ(m.dump_all(), before);
  }
}

TYPED_TEST(PageFormatTest, BitsTheHardwareSetDoNotKeepASplitAlive) {
  using A = TypeParam;
  Machine<A> m(A::kUpperBase);
  DirectMapAttributes<typename A::Format> attrs(&m.pt(), A::format(&m.pt()));
  const uint64_t pa = k1G + 7 * k2M + 4 * kPage;
  ASSERT_TRUE(attrs.set(m.va(pa), kPage, PageAttr::kUncached).ok());
  ASSERT_EQ(attrs.tables_in_use(), 1u);
  // The CPU marks a neighbouring page (accessed / dirty) meanwhile.
  *m.slot(pa + kPage, 0) |= A::kHw;
  ASSERT_TRUE(attrs.set(m.va(pa), kPage, PageAttr::kCached).ok());
  EXPECT_EQ(attrs.tables_in_use(), 0u);
  EXPECT_EQ(m.pool().in_use(), 0u);
  // Merged back into the 2 MiB leaf, which keeps what the hardware recorded.
  EXPECT_EQ(*m.slot(pa, 1), A::leaf(k1G + 7 * k2M, 1, A::kWb) | A::kHw);
}

TYPED_TEST(PageFormatTest, DeviceMemoryAndRangesOutsideTheDirectMapAreRefused) {
  using A = TypeParam;
  Machine<A> m(A::kUpperBase);
  const std::vector<Pte> before = m.dump_all();
  DirectMapAttributes<typename A::Format> attrs(&m.pt(), A::format(&m.pt()));
  EXPECT_EQ(attrs.set(m.va(2 * k1G - kPage), 2 * kPage, PageAttr::kUncached).code(),
            ErrorCode::kInvalidArgument);
  EXPECT_EQ(attrs.set(m.va(2 * k1G + 4 * k2M), kPage, PageAttr::kUncached).code(),
            ErrorCode::kInvalidArgument);
  EXPECT_EQ(attrs.set(m.va(0) - kPage, 2 * kPage, PageAttr::kUncached).code(),
            ErrorCode::kInvalidArgument);
  EXPECT_EQ(m.dump_all(), before);
  EXPECT_EQ(m.pool().in_use(), 0u);
}

TYPED_TEST(PageFormatTest, AMissingOrUnusableDescriptionIsNotSupported) {
  using A = TypeParam;
  Machine<A> m(A::kUpperBase);
  const std::vector<Pte> before = m.dump_all();
  const uintptr_t va = m.va(5 * k2M);
  {
    DirectMapAttributes<typename A::Format> attrs(nullptr, A::format(nullptr));
    EXPECT_FALSE(attrs.usable());
    EXPECT_EQ(attrs.set(va, kPage, PageAttr::kUncached).code(), ErrorCode::kNotSupported);
  }
  auto expect_refused = [&](dmakit_page_tables pt, const char* what) {
    SCOPED_TRACE(what);
    DirectMapAttributes<typename A::Format> attrs(&pt, A::format(&pt));
    EXPECT_FALSE(attrs.usable());
    EXPECT_EQ(attrs.set(va, kPage, PageAttr::kUncached).code(), ErrorCode::kNotSupported);
  };
  dmakit_page_tables pt = m.pt();
  pt.alloc_table = nullptr;
  expect_refused(pt, "no alloc_table");
  pt = m.pt();
  pt.free_table = nullptr;
  expect_refused(pt, "no free_table");
  pt = m.pt();
  pt.levels = 2;
  expect_refused(pt, "two levels");
  pt = m.pt();
  pt.root += 8;
  expect_refused(pt, "misaligned root");
  pt = m.pt();
  pt.va_size = 0;
  expect_refused(pt, "empty direct map");
  pt = m.pt();
  A::break_encoding(&pt);
  expect_refused(pt, "encodings the format cannot use");
  EXPECT_EQ(m.dump_all(), before);
  EXPECT_EQ(m.pool().in_use(), 0u);
}

TEST(Riscv64PageFormat, WithoutSvpbmtThereIsNoUncachedEncoding) {
  Machine<Rv> m(0);
  DirectMapAttributes<Rv::Format> attrs(&m.pt(), Rv::Format(&m.pt(), /*svpbmt=*/false));
  EXPECT_EQ(attrs.set(m.va(5 * k2M), kPage, PageAttr::kUncached).code(), ErrorCode::kNotSupported);
}

TEST(X86PageFormat, ThePatBitMovesBetweenLargeAndSmallEntries) {
  const dmakit_page_tables pt = [] {
    dmakit_page_tables p = {};
    p.levels = 4;
    p.x86_64 = {0, 6, DMAKIT_X86_PAT_NONE};
    return p;
  }();
  const X86PageFormat f(&pt);
  const Pte large = X86::leaf(k1G, 1, 6);
  EXPECT_EQ(f.attr_of(large, 1), PageAttr::kUncached);
  EXPECT_NE(large & (1ull << 12), 0u);
  const Pte small = f.split_leaf(large, 1, 3);
  EXPECT_EQ(small, X86::leaf(k1G + 3 * kPage, 0, 6));
  EXPECT_EQ(f.attr_of(small, 0), PageAttr::kUncached);
  EXPECT_EQ(f.with_attr(small, 0, PageAttr::kCached), X86::leaf(k1G + 3 * kPage, 0, 0));
  EXPECT_EQ(f.with_attr(X86::leaf(k1G, 1, 0), 1, PageAttr::kUncached), large);
}

// The test layout's WC entry (index 4: the PAT bit alone) in a 4 KiB page split out of a 1 GiB
// leaf, and in a whole 2 MiB leaf (the PAT bit at bit 12); both restore to the boot tables.
TEST(X86PageFormat, WriteCombineUsesTheKernelsWcIndex) {
  constexpr unsigned kWc = 4;
  for (uintptr_t off : {uintptr_t{0}, X86::kUpperBase}) {
    SCOPED_TRACE(testing::Message() << "offset 0x" << std::hex << off);
    Machine<X86> m(off);
    m.pt().x86_64.pat_wc = kWc;
    const std::vector<Pte> before = m.dump_all();
    DirectMapAttributes<X86::Format> attrs(&m.pt(), X86::format(&m.pt()));
    ASSERT_TRUE(attrs.usable());
    const uint64_t pa = 5 * k2M + 3 * kPage;
    ASSERT_TRUE(attrs.set(m.va(pa), 3 * kPage, PageAttr::kWriteCombine).ok());
    m.expect_pages(pa, 3 * kPage, kWc);
    m.expect_pages(pa - 4 * kPage, 4 * kPage, X86::kWb);
    m.expect_pages(pa + 3 * kPage, 4 * kPage, X86::kWb);
    const uint64_t big = k1G + 3 * k2M;
    ASSERT_TRUE(attrs.set(m.va(big), k2M, PageAttr::kWriteCombine).ok());
    EXPECT_EQ(X86::attr(*m.slot(big, 1), 1), kWc);
    EXPECT_NE(*m.slot(big, 1) & (1ull << 12), 0u);
    // A write-combining page may become uncached and back without passing through cached.
    ASSERT_TRUE(attrs.set(m.va(pa), kPage, PageAttr::kUncached).ok());
    m.expect_pages(pa, kPage, X86::kUc);
    ASSERT_TRUE(attrs.set(m.va(pa), 3 * kPage, PageAttr::kCached).ok());
    ASSERT_TRUE(attrs.set(m.va(big), k2M, PageAttr::kCached).ok());
    EXPECT_EQ(attrs.tables_in_use(), 0u);
    EXPECT_EQ(m.pool().in_use(), 0u);
    EXPECT_EQ(m.dump_all(), before);
  }
}

// A kernel whose PAT has no WC entry says so with DMAKIT_X86_PAT_NONE (and an index that is the
// write-back or the uncached one names no WC entry either): write-combining is kNotSupported,
// nothing changes, and the other attributes still work.
TEST(X86PageFormat, WithoutAWcIndexWriteCombineIsNotSupported) {
  for (uint8_t wc :
       {uint8_t{DMAKIT_X86_PAT_NONE}, uint8_t{X86::kWb}, uint8_t{X86::kUc}, uint8_t{8}}) {
    SCOPED_TRACE(testing::Message() << "pat_wc " << unsigned{wc});
    Machine<X86> m(0);
    m.pt().x86_64.pat_wc = wc;
    const std::vector<Pte> before = m.dump_all();
    DirectMapAttributes<X86::Format> attrs(&m.pt(), X86::format(&m.pt()));
    ASSERT_TRUE(attrs.usable());
    EXPECT_EQ(attrs.set(m.va(5 * k2M), kPage, PageAttr::kWriteCombine).code(),
              ErrorCode::kNotSupported);
    EXPECT_EQ(m.pool().in_use(), 0u);
    EXPECT_EQ(m.dump_all(), before);
    ASSERT_TRUE(attrs.set(m.va(5 * k2M), kPage, PageAttr::kUncached).ok());
    m.expect_pages(5 * k2M, kPage, X86::kUc);
    ASSERT_TRUE(attrs.set(m.va(5 * k2M), kPage, PageAttr::kCached).ok());
    EXPECT_EQ(m.dump_all(), before);
  }
}

// The other formats have no write-combining encoding of their own (their DmaOps use the
// uncached one for it): DirectMapAttributes refuses it rather than writing a cached entry.
TYPED_TEST(PageFormatTest, WriteCombineWithoutAnEncodingChangesNothing) {
  using A = TypeParam;
  Machine<A> m(0);
  const std::vector<Pte> before = m.dump_all();
  DirectMapAttributes<typename A::Format> attrs(&m.pt(), A::format(&m.pt()));
  ASSERT_TRUE(attrs.usable());
  EXPECT_EQ(attrs.set(m.va(5 * k2M), kPage, PageAttr::kWriteCombine).code(),
            ErrorCode::kNotSupported);
  EXPECT_EQ(m.dump_all(), before);
}

}  // namespace
