// Host tests of PageFrameAllocator over simulated physical memory.
//
// Each test builds a private allocator over a window of anonymous memory that pretends to be
// physical memory at some base (direct_map_offset = window pointer - base). Windows that span
// gigabytes are reserved with MAP_NORESERVE: only the pages the allocator or a test touches are
// ever backed. An independent model (page states computed from the layout, live blocks in a
// std::map) checks every answer, including that a kNoMemory really means that no suitable block
// exists.
#include "dmakit/page_frame_allocator.h"

#include <gtest/gtest.h>
#include <sys/mman.h>

#include <algorithm>
#include <atomic>
#include <cstdint>
#include <cstring>
#include <iterator>
#include <map>
#include <memory>
#include <new>
#include <random>
#include <thread>
#include <vector>

namespace {

using Pfa = PageFrameAllocator;
constexpr uint64_t kPage = Pfa::kPageSize;
constexpr uint64_t kKiB = 1ull << 10;
constexpr uint64_t kMiB = 1ull << 20;
constexpr uint64_t kGiB = 1ull << 30;
constexpr uint64_t kNoLimit = ~0ull;
constexpr uint64_t kMaxBlock = kPage << Pfa::kMaxOrder;

PhysRange R(uint64_t base, uint64_t size) {
  return PhysRange{PhysAddr(base), size};
}

support::Span<const PhysRange> span_of(const std::vector<PhysRange>& v) {
  return support::Span<const PhysRange>(v.data(), v.size());
}

uint64_t block_bytes(unsigned order) {
  return kPage << order;
}

unsigned band_of(uint64_t addr) {
  uint64_t x = addr >> Pfa::kBandShift;
  return x == 0 ? 0u : 64u - static_cast<unsigned>(__builtin_clzll(x));
}

// Anonymous memory standing in for physical [base, base + size).
class SimMemory {
 public:
  SimMemory(uint64_t base, uint64_t size) : base_(base), size_(size) {
    void* p = mmap(nullptr, size, PROT_READ | PROT_WRITE,
                   MAP_PRIVATE | MAP_ANONYMOUS | MAP_NORESERVE, -1, 0);
    EXPECT_NE(p, MAP_FAILED);
    mem_ = static_cast<uint8_t*>(p == MAP_FAILED ? nullptr : p);
  }
  ~SimMemory() {
    if (mem_ != nullptr) munmap(mem_, size_);
  }
  SimMemory(const SimMemory&) = delete;
  SimMemory& operator=(const SimMemory&) = delete;

  uintptr_t offset() const { return reinterpret_cast<uintptr_t>(mem_) - base_; }
  uint8_t* virt(uint64_t phys) const { return mem_ + (phys - base_); }
  // Changes the protection of the whole window (PROT_NONE: nobody may touch "physical memory").
  void protect(int prot) { ASSERT_EQ(mprotect(mem_, size_, prot), 0); }

 private:
  uint64_t base_;
  uint64_t size_;
  uint8_t* mem_ = nullptr;
};

struct Layout {
  const char* name;
  uint64_t window_base;
  uint64_t window_size;
  std::vector<PhysRange> ranges;
  std::vector<PhysRange> reserved;
};

// Typical AArch64 virt: RAM at 1 GiB, device tree at its base, a kernel image inside.
Layout single_range_layout() {
  return {"single_1g",
          1 * kGiB,
          16 * kMiB,
          {R(1 * kGiB, 16 * kMiB)},
          {R(1 * kGiB, 0x1000), R(1 * kGiB + 0x80000, 0x14'3210)}};
}

// Low memory over bands 0..4 with holes, unaligned edges, a range crossing a band boundary.
Layout low_multi_layout() {
  return {"low_multi",
          0,
          64 * kMiB,
          {R(0x3C0'0000, 4 * kMiB), R(0x1000, 0x17'F800), R(0x30'0000, 2 * kMiB),
           R(0x9F'0000, 0x22'0000), R(0x1FF'0000, 0x21'0000)},
          {R(0x3'0800, 0x100), R(0x31'0000, 0x8000), R(0xA0'0000, 0x1001), R(0x3FF'F000, 0x1000)}};
}

// Two touching ranges on either side of 4 GiB (they must not be merged).
Layout across_4g_layout() {
  return {"across_4g",
          0xFF00'0000,
          32 * kMiB,
          {R(0xFF80'0000, 8 * kMiB), R(0x1'0000'0000, 8 * kMiB)},
          {R(0xFFF0'0000, 0x2000)}};
}

// Sparse ranges gigabytes apart (RISC-V-like base at 2 GiB), bands 9, 10 and 12.
Layout sparse_high_layout() {
  return {
      "sparse_high",
      2 * kGiB,
      8 * kGiB,
      {R(0x2'7FC0'0000, 4 * kMiB), R(0x8020'0000, 4 * kMiB), R(0x1'3FF0'0800, 3 * kMiB + 0x800)},
      {R(0x8020'0000, 0x1234), R(0x2'7FD0'0000, 0x3000)}};
}

std::vector<Layout> all_layouts() {
  return {single_range_layout(), low_multi_layout(), across_4g_layout(), sparse_high_layout()};
}

// The test's own idea of the managed memory of a layout, computed without the allocator.
struct ModelRange {
  uint64_t start_pfn;
  uint64_t end_pfn;
  std::vector<uint8_t> state;  // kUnmanaged, kFree or kUsed, per page.
  uint64_t managed = 0;
  uint64_t free = 0;
};
constexpr uint8_t kUnmanaged = 0;
constexpr uint8_t kFree = 1;
constexpr uint8_t kUsed = 2;

class Model {
 public:
  explicit Model(const Layout& l) {
    std::vector<PhysRange> sorted = l.ranges;
    std::sort(sorted.begin(), sorted.end(),
              [](const PhysRange& a, const PhysRange& b) { return a.base < b.base; });
    for (const PhysRange& r : sorted) {
      uint64_t s = (r.base.value() + kPage - 1) / kPage;
      uint64_t e = r.end().value() / kPage;
      if (s >= e) continue;
      ModelRange m{s, e, std::vector<uint8_t>(e - s, kFree)};
      for (const PhysRange& res : l.reserved) {
        uint64_t rs = res.base.value() / kPage;
        uint64_t re = (res.end().value() + kPage - 1) / kPage;
        for (uint64_t p = std::max(rs, s); p < std::min(re, e); ++p) m.state[p - s] = kUnmanaged;
      }
      for (uint8_t st : m.state) m.managed += st == kFree ? 1 : 0;
      m.free = m.managed;
      ranges_.push_back(std::move(m));
    }
    for (const ModelRange& m : ranges_) {
      managed_ += m.managed;
      free_ += m.free;
      for (uint64_t p = m.start_pfn; p < m.end_pfn; ++p) {
        if (m.state[p - m.start_pfn] == kFree) {
          free_per_band_[band_of(p * kPage)]++;
          if (lowest_ == 0 && !seen_) lowest_ = p * kPage;
          seen_ = true;
        }
      }
    }
  }

  const std::vector<ModelRange>& ranges() const { return ranges_; }
  uint64_t managed() const { return managed_; }
  uint64_t free() const { return free_; }
  uint64_t lowest() const { return lowest_; }
  const std::map<uint64_t, unsigned>& live() const { return live_; }
  uint64_t free_in_band(unsigned b) const { return free_per_band_[b]; }

  // Index of the range holding [addr, addr + bytes), or -1 when no single range does.
  int range_holding(uint64_t addr, uint64_t bytes) const {
    for (size_t i = 0; i < ranges_.size(); ++i) {
      const ModelRange& m = ranges_[i];
      if (addr >= m.start_pfn * kPage && addr + bytes <= m.end_pfn * kPage) {
        return static_cast<int>(i);
      }
    }
    return -1;
  }

  // Records an allocation; fails the test if it overlaps a live block or unmanaged memory.
  void on_alloc(uint64_t addr, unsigned order) {
    uint64_t bytes = block_bytes(order);
    auto next = live_.lower_bound(addr);
    if (next != live_.end()) ASSERT_GE(next->first, addr + bytes) << "overlaps a live block";
    if (next != live_.begin()) {
      auto prev = std::prev(next);
      ASSERT_LE(prev->first + block_bytes(prev->second), addr) << "overlaps a live block";
    }
    int ri = range_holding(addr, bytes);
    ASSERT_GE(ri, 0) << "block straddles ranges or lies outside them: 0x" << std::hex << addr;
    ModelRange& m = ranges_[static_cast<size_t>(ri)];
    for (uint64_t p = addr / kPage; p < (addr + bytes) / kPage; ++p) {
      ASSERT_EQ(m.state[p - m.start_pfn], kFree) << "page 0x" << std::hex << p * kPage;
      m.state[p - m.start_pfn] = kUsed;
    }
    m.free -= bytes / kPage;
    free_ -= bytes / kPage;
    free_per_band_[band_of(addr)] -= bytes / kPage;
    live_[addr] = order;
  }

  void on_free(uint64_t addr) {
    auto it = live_.find(addr);
    ASSERT_NE(it, live_.end());
    uint64_t bytes = block_bytes(it->second);
    ModelRange& m = ranges_[static_cast<size_t>(range_holding(addr, bytes))];
    for (uint64_t p = addr / kPage; p < (addr + bytes) / kPage; ++p) {
      m.state[p - m.start_pfn] = kFree;
    }
    m.free += bytes / kPage;
    free_ += bytes / kPage;
    free_per_band_[band_of(addr)] += bytes / kPage;
    live_.erase(it);
  }

  // True when an aligned chunk of 2^need pages, wholly free and inside one range, exists whose
  // first 2^order pages end at or below `limit`: exactly when the allocator must succeed.
  bool chunk_available(unsigned order, unsigned need, uint64_t limit) const {
    uint64_t n = 1ull << need;
    for (const ModelRange& m : ranges_) {
      for (uint64_t c = (m.start_pfn + n - 1) / n * n; c + n <= m.end_pfn; c += n) {
        if (c * kPage + block_bytes(order) - 1 > limit) break;
        bool all_free = true;
        for (uint64_t p = c; p < c + n && all_free; ++p)
          all_free = m.state[p - m.start_pfn] == kFree;
        if (all_free) return true;
      }
    }
    return false;
  }

 private:
  std::vector<ModelRange> ranges_;
  std::map<uint64_t, unsigned> live_;
  uint64_t managed_ = 0;
  uint64_t free_ = 0;
  uint64_t lowest_ = 0;
  bool seen_ = false;
  uint64_t free_per_band_[Pfa::kNumBands] = {};
};

// An allocator over a layout's simulated memory, with its metadata buffer. When the test has
// already failed, the allocator's destructor is skipped: blocks may still be out, and its debug
// check would abort the whole run instead of letting the failure be reported.
class Harness {
 public:
  explicit Harness(const Layout& l)
      : layout_(l),
        mem_(l.window_base, l.window_size),
        meta_(Pfa::metadata_size(span_of(l.ranges))) {
    new (storage_) Pfa();
  }
  ~Harness() {
    if (!::testing::Test::HasFailure()) pfa().shutdown();
  }
  Harness(const Harness&) = delete;
  Harness& operator=(const Harness&) = delete;

  Result<void> init() {
    return pfa().init(span_of(layout_.ranges), span_of(layout_.reserved), mem_.offset(),
                      meta_.data(), meta_.size());
  }
  Pfa& pfa() { return *std::launder(reinterpret_cast<Pfa*>(storage_)); }
  SimMemory& mem() { return mem_; }
  std::vector<uint8_t>& meta() { return meta_; }
  const Layout& layout() const { return layout_; }

 private:
  Layout layout_;
  SimMemory mem_;
  std::vector<uint8_t> meta_;
  alignas(Pfa) unsigned char storage_[sizeof(Pfa)];
};

bool same_stats(const Pfa::Stats& a, const Pfa::Stats& b) {
  return std::memcmp(&a, &b, sizeof(a)) == 0;
}

std::vector<uint64_t> free_blocks_by_order(const Pfa& pfa) {
  std::vector<uint64_t> v;
  for (unsigned o = 0; o <= Pfa::kMaxOrder; ++o) v.push_back(pfa.free_blocks(o));
  return v;
}

// Checks the allocator's statistics against the model.
void expect_stats_match(const Pfa& pfa, const Model& m) {
  Pfa::Stats s = pfa.stats();
  EXPECT_EQ(s.managed_pages, m.managed());
  EXPECT_EQ(s.free_pages, m.free());
  EXPECT_EQ(pfa.free_pages(), m.free());
  ASSERT_EQ(s.num_ranges, m.ranges().size());
  for (size_t i = 0; i < s.num_ranges; ++i) {
    EXPECT_EQ(s.managed_pages_per_range[i], m.ranges()[i].managed) << "range " << i;
    EXPECT_EQ(s.free_pages_per_range[i], m.ranges()[i].free) << "range " << i;
  }
  for (unsigned b = 0; b < Pfa::kNumBands; ++b) {
    EXPECT_EQ(s.free_pages_per_band[b], m.free_in_band(b)) << "band " << b;
  }
}

// Frees every live block of the model.
void free_all(Pfa& pfa, Model& m) {
  while (!m.live().empty()) {
    auto [addr, order] = *m.live().begin();
    ASSERT_TRUE(pfa.free(PhysAddr(addr), order).ok());
    m.on_free(addr);
  }
}

uint64_t tag_of(uint64_t addr) {
  return addr * 0x9E37'79B9'7F4A'7C15ull ^ 0x5A5A'5A5A'5A5A'5A5Aull;
}

// ---------------------------------------------------------------------------------------------
// Static helpers.

TEST(PageFrameAllocatorTest, OrderForRoundsUpToWholeBlocks) {
  EXPECT_EQ(Pfa::order_for(1), 0u);
  EXPECT_EQ(Pfa::order_for(kPage), 0u);
  EXPECT_EQ(Pfa::order_for(kPage + 1), 1u);
  EXPECT_EQ(Pfa::order_for(2 * kPage), 1u);
  EXPECT_EQ(Pfa::order_for(3 * kPage), 2u);
  EXPECT_EQ(Pfa::order_for(64 * kKiB), 4u);
  EXPECT_EQ(Pfa::order_for(kMaxBlock), Pfa::kMaxOrder);
  EXPECT_EQ(Pfa::order_for(kMaxBlock + 1), Pfa::kMaxOrder + 1);
  EXPECT_EQ(Pfa::order_for(~0ull), Pfa::kMaxOrder + 1);
}

TEST(PageFrameAllocatorTest, MetadataSizeCountsWholePagesOfEachRange) {
  std::vector<PhysRange> ranges = {R(0x1000, 0x3000), R(0x10'0800, 0x2000), R(0x20'0000, 0x800),
                                   R(0x40'0000, 0)};
  // 3 pages, then [0x100800, 0x102800) holds one whole page, then nothing, then nothing: every
  // order has at most 64 slots (the blocks and three unused slots per range), so every bitmap is
  // its top word pair, which the allocator object holds; what remains is the alignment slack, so
  // that a static buffer sized by it is never an array of 0 bytes.
  EXPECT_EQ(Pfa::metadata_size(span_of(ranges)), 63u);
  // 4096 pages: a buffer from here on. Order 0 has 4096 + 3 slots: 65 word pairs and 2 summary
  // words; orders 1..6 have 33, 17, 9, 5, 3 and 2 pairs (order 1's summary is its top word);
  // order 7 (35 slots) and up fit the object. Plus 63 bytes to start at a cache line.
  std::vector<PhysRange> big = {R(1 * kGiB, 16 * kMiB)};
  EXPECT_EQ(Pfa::metadata_size(span_of(big)),
            (130u + 2u + 66u + 34u + 18u + 10u + 6u + 4u) * 8u + 63u);
  EXPECT_EQ(Pfa::metadata_size(support::Span<const PhysRange>()), 0u);
}

TEST(PageFrameAllocatorTest, MetadataUnderOneThousandthOf16GiB) {
  // An x86-like 16 GiB map: low memory, a PCI hole below 4 GiB, the rest above.
  std::vector<PhysRange> ranges = {R(0, 0x9'F000), R(1 * kMiB, 3 * kGiB - 1 * kMiB),
                                   R(4 * kGiB, 13 * kGiB)};
  uint64_t managed = 0;
  for (const PhysRange& r : ranges) managed += r.size;
  size_t meta = Pfa::metadata_size(span_of(ranges));
  EXPECT_LE(static_cast<double>(meta) / static_cast<double>(managed), 0.001);
  // Two bits per slot (free, allocated), about two slots per page over the orders (1 + 1/2 +
  // 1/4 + ...): half a byte per page, with the summaries about 1/256 of a byte more.
  uint64_t pages = managed / kPage;
  EXPECT_GE(meta, pages / 2 - pages / 1024);
  EXPECT_LE(meta, pages / 2 + pages / 128 + 1000);
}

// What an operation touches has to stay in the cache when RAM is large: the metadata is about
// half a byte per page (a state byte per page alone was twice that), i.e. 2 MiB for 16 GiB.
TEST(PageFrameAllocatorOutOfBandTest, MetadataIsHalfAByteAPage) {
  for (uint64_t bytes : {256 * kMiB, 1 * kGiB, 16 * kGiB}) {
    std::vector<PhysRange> ranges = {R(4 * kGiB, bytes)};
    uint64_t pages = bytes / kPage;
    EXPECT_LE(Pfa::metadata_size(span_of(ranges)), pages / 2 + pages / 64)
        << "bytes 0x" << std::hex << bytes;
  }
}

// ---------------------------------------------------------------------------------------------
// Before and during init.

TEST(PageFrameAllocatorTest, BeforeInitNothingIsManaged) {
  Pfa pfa;
  EXPECT_EQ(pfa.alloc(0).code(), ErrorCode::kNoMemory);
  EXPECT_EQ(pfa.free(PhysAddr(0x4000'0000), 0).code(), ErrorCode::kNotFound);
  Pfa::Stats s = pfa.stats();
  EXPECT_EQ(s.managed_pages, 0u);
  EXPECT_EQ(s.free_pages, 0u);
  EXPECT_EQ(s.num_ranges, 0u);
  EXPECT_EQ(pfa.lowest_address(), PhysAddr(0));
  EXPECT_EQ(pfa.highest_address(), PhysAddr(0));
  EXPECT_EQ(pfa.free_blocks(0), 0u);
  EXPECT_TRUE(pfa.check_invariants());
}

TEST(PageFrameAllocatorTest, InitSingleRangeBuildsMaximalBlocks) {
  Layout l{"plain", 1 * kGiB, 16 * kMiB, {R(1 * kGiB, 16 * kMiB)}, {}};
  Harness h(l);
  ASSERT_TRUE(h.init().ok());
  Pfa& pfa = h.pfa();
  EXPECT_TRUE(pfa.check_invariants());
  Pfa::Stats s = pfa.stats();
  EXPECT_EQ(s.managed_pages, 4096u);
  EXPECT_EQ(s.free_pages, 4096u);
  EXPECT_EQ(s.num_ranges, 1u);
  EXPECT_EQ(s.managed_pages_per_range[0], 4096u);
  EXPECT_EQ(s.free_pages_per_range[0], 4096u);
  // See MetadataSizeCountsWholePagesOfEachRange.
  EXPECT_EQ(s.metadata_bytes, (130u + 2u + 66u + 34u + 18u + 10u + 6u + 4u) * 8u + 63u);
  EXPECT_EQ(s.metadata_bytes, Pfa::metadata_size(span_of(l.ranges)));
  EXPECT_EQ(s.free_pages_per_band[band_of(1 * kGiB)], 4096u);
  EXPECT_EQ(pfa.free_blocks(Pfa::kMaxOrder), 4u);
  for (unsigned o = 0; o < Pfa::kMaxOrder; ++o) EXPECT_EQ(pfa.free_blocks(o), 0u);
  EXPECT_EQ(pfa.free_blocks(Pfa::kMaxOrder + 1), 0u);
  EXPECT_EQ(pfa.lowest_address(), PhysAddr(1 * kGiB));
  EXPECT_EQ(pfa.highest_address(), PhysAddr(1 * kGiB + 16 * kMiB));
  EXPECT_EQ(pfa.num_ranges(), 1u);
  EXPECT_EQ(pfa.range(0).base, PhysAddr(1 * kGiB));
  EXPECT_EQ(pfa.range(0).size, 16 * kMiB);
  EXPECT_EQ(pfa.direct_map_offset(), h.mem().offset());
  EXPECT_EQ(pfa.phys_to_virt(PhysAddr(1 * kGiB + 0x5000)), h.mem().virt(1 * kGiB + 0x5000));
}

// Buddies across a range's edge: a block's buddy outside its range, and a block that would run
// past the range's end, fall on unused slots; blocks never merge into the next range however its
// slots line up with this one's. Ranges of 3 pages, 2 pages apart: [P, P+3) and [P+5, P+8).
TEST(PageFrameAllocatorTest, NoMergeOrFreeAcrossARangeEdge) {
  constexpr uint64_t kBase = 1 * kGiB;
  Layout l{"edges", kBase, 1 * kMiB, {R(kBase, 3 * kPage), R(kBase + 5 * kPage, 3 * kPage)}, {}};
  Harness h(l);
  ASSERT_TRUE(h.init().ok());
  Pfa& pfa = h.pfa();
  std::vector<PhysAddr> pages;
  for (int i = 0; i < 6; ++i) {
    auto r = pfa.alloc(0);
    ASSERT_TRUE(r.ok());
    pages.push_back(*r);
  }
  EXPECT_EQ(pfa.alloc(0).code(), ErrorCode::kNoMemory);
  // Pages P+2 and P+6 are order-0 blocks whose order-1 blocks would reach outside their range
  // (P+2, P+3) or hold an allocated page of another block (P+6, P+7).
  EXPECT_EQ(pfa.free(PhysAddr(kBase + 2 * kPage), 1).code(), ErrorCode::kNotFound);
  EXPECT_EQ(pfa.free(PhysAddr(kBase + 6 * kPage), 1).code(), ErrorCode::kNotFound);
  EXPECT_TRUE(pfa.check_invariants());
  for (PhysAddr a : pages) ASSERT_TRUE(pfa.free(a, 0).ok());
  EXPECT_TRUE(pfa.check_invariants());
  // [P, P+2) and [P+6, P+8) merged; P+2 and P+5 stay single pages (their buddies P+3 and P+4
  // are outside both ranges).
  EXPECT_EQ(pfa.free_blocks(0), 2u);
  EXPECT_EQ(pfa.free_blocks(1), 2u);
  for (unsigned o = 2; o <= Pfa::kMaxOrder; ++o) EXPECT_EQ(pfa.free_blocks(o), 0u);
  EXPECT_EQ(pfa.free_pages(), 6u);
}

TEST(PageFrameAllocatorTest, InitTrimsRangesInwardAndReservedOutward) {
  // Range [0x1000800, 0x1009800) holds pages 0x1001000..0x1009000 (8 pages); the reserved piece
  // [0x1003100, 0x1004100) covers pages 0x1003000 and 0x1004000.
  Layout l{"trim", 0x100'0000, 1 * kMiB, {R(0x100'0800, 0x9000)}, {R(0x100'3100, 0x1000)}};
  Harness h(l);
  ASSERT_TRUE(h.init().ok());
  Pfa& pfa = h.pfa();
  EXPECT_TRUE(pfa.check_invariants());
  EXPECT_EQ(pfa.range(0).base, PhysAddr(0x100'1000));
  EXPECT_EQ(pfa.range(0).size, 8 * kPage);
  EXPECT_EQ(pfa.stats().managed_pages, 6u);
  EXPECT_EQ(pfa.lowest_address(), PhysAddr(0x100'1000));
  EXPECT_EQ(pfa.highest_address(), PhysAddr(0x100'9000));
  std::vector<uint64_t> got;
  for (;;) {
    auto r = pfa.alloc(0);
    if (!r.ok()) {
      EXPECT_EQ(r.code(), ErrorCode::kNoMemory);
      break;
    }
    got.push_back(r->value());
  }
  std::sort(got.begin(), got.end());
  std::vector<uint64_t> want = {0x100'1000, 0x100'2000, 0x100'5000,
                                0x100'6000, 0x100'7000, 0x100'8000};
  EXPECT_EQ(got, want);
  for (uint64_t a : got) ASSERT_TRUE(pfa.free(PhysAddr(a), 0).ok());
  EXPECT_TRUE(pfa.check_invariants());
}

TEST(PageFrameAllocatorTest, InitTwiceFailsAndKeepsTheFirstState) {
  Harness h(single_range_layout());
  ASSERT_TRUE(h.init().ok());
  Pfa::Stats before = h.pfa().stats();
  std::vector<uint8_t> other_meta(16 * kKiB);
  std::vector<PhysRange> other = {R(2 * kGiB, 1 * kMiB)};
  auto r = h.pfa().init(span_of(other), {}, 0, other_meta.data(), other_meta.size());
  EXPECT_EQ(r.code(), ErrorCode::kInvalidArgument);
  EXPECT_TRUE(same_stats(before, h.pfa().stats()));
  EXPECT_EQ(h.pfa().lowest_address(), PhysAddr(1 * kGiB + kPage));
  EXPECT_TRUE(h.pfa().check_invariants());
}

TEST(PageFrameAllocatorTest, InitRejectsTooManyRanges) {
  std::vector<PhysRange> ranges;
  for (uint64_t i = 0; i <= Pfa::kMaxRanges; ++i) ranges.push_back(R(i * 2 * kMiB, kMiB));
  std::vector<uint8_t> meta(Pfa::metadata_size(span_of(ranges)));
  Pfa pfa;
  EXPECT_EQ(pfa.init(span_of(ranges), {}, 0, meta.data(), meta.size()).code(),
            ErrorCode::kInvalidArgument);
  EXPECT_EQ(pfa.stats().managed_pages, 0u);
  // Exactly kMaxRanges is fine.
  ranges.pop_back();
  SimMemory mem(0, 2 * kMiB * Pfa::kMaxRanges);
  ASSERT_TRUE(pfa.init(span_of(ranges), {}, mem.offset(), meta.data(), meta.size()).ok());
  EXPECT_EQ(pfa.num_ranges(), Pfa::kMaxRanges);
  EXPECT_EQ(pfa.stats().managed_pages, Pfa::kMaxRanges * kMiB / kPage);
  EXPECT_TRUE(pfa.check_invariants());
}

TEST(PageFrameAllocatorTest, InitRejectsOverlappingAndWrappingRanges) {
  std::vector<uint8_t> meta(64 * kKiB);
  Pfa pfa;
  std::vector<PhysRange> overlap = {R(0x80'0000, kMiB), R(0x10'0000, kMiB),
                                    R(0x40'0000, 0x40'0800)};  // Last two overlap by 0x800.
  EXPECT_EQ(pfa.init(span_of(overlap), {}, 0, meta.data(), meta.size()).code(),
            ErrorCode::kInvalidArgument);
  std::vector<PhysRange> wrap = {R(~0ull - 0xFFFF, 0x2'0000)};
  EXPECT_EQ(pfa.init(span_of(wrap), {}, 0, meta.data(), meta.size()).code(),
            ErrorCode::kInvalidArgument);
  EXPECT_EQ(pfa.num_ranges(), 0u);
  EXPECT_TRUE(pfa.check_invariants());
  // Touching ranges are not overlapping.
  std::vector<PhysRange> touching = {R(0x20'0000, kMiB), R(0x10'0000, kMiB)};
  SimMemory mem(0, 4 * kMiB);
  ASSERT_TRUE(pfa.init(span_of(touching), {}, mem.offset(), meta.data(), meta.size()).ok());
  EXPECT_EQ(pfa.num_ranges(), 2u);
  EXPECT_TRUE(pfa.check_invariants());
}

TEST(PageFrameAllocatorTest, InitFailsCleanlyWithTooLittleMetadataThenSucceeds) {
  Harness h(low_multi_layout());
  std::vector<uint8_t> small(h.meta().size() - 1);
  Layout l = h.layout();
  auto r = h.pfa().init(span_of(l.ranges), span_of(l.reserved), h.mem().offset(), small.data(),
                        small.size());
  EXPECT_EQ(r.code(), ErrorCode::kNoMemory);
  EXPECT_EQ(h.pfa().init(span_of(l.ranges), {}, h.mem().offset(), nullptr, h.meta().size()).code(),
            ErrorCode::kNoMemory);
  EXPECT_EQ(h.pfa().stats().managed_pages, 0u);
  EXPECT_EQ(h.pfa().num_ranges(), 0u);
  ASSERT_TRUE(h.init().ok());
  EXPECT_TRUE(h.pfa().check_invariants());
}

TEST(PageFrameAllocatorTest, InitSortsRangesAndDropsEmptyOnes) {
  Harness h(low_multi_layout());
  ASSERT_TRUE(h.init().ok());
  Model m(h.layout());
  Pfa& pfa = h.pfa();
  ASSERT_EQ(pfa.num_ranges(), m.ranges().size());
  for (size_t i = 0; i < pfa.num_ranges(); ++i) {
    EXPECT_EQ(pfa.range(i).base.value(), m.ranges()[i].start_pfn * kPage);
    EXPECT_EQ(pfa.range(i).size, (m.ranges()[i].end_pfn - m.ranges()[i].start_pfn) * kPage);
    if (i > 0) EXPECT_LT(pfa.range(i - 1).base, pfa.range(i).base);
  }
  expect_stats_match(pfa, m);
  EXPECT_EQ(pfa.lowest_address().value(), m.lowest());
  // A range smaller than a page disappears.
  std::vector<PhysRange> ranges = {R(0x10'0100, 0x800), R(0x20'0000, 0x2000)};
  std::vector<uint8_t> meta(Pfa::metadata_size(span_of(ranges)));
  SimMemory mem(0, 4 * kMiB);
  Pfa other;
  ASSERT_TRUE(other.init(span_of(ranges), {}, mem.offset(), meta.data(), meta.size()).ok());
  EXPECT_EQ(other.num_ranges(), 1u);
  EXPECT_EQ(other.range(0).base, PhysAddr(0x20'0000));
  EXPECT_TRUE(other.check_invariants());
}

TEST(PageFrameAllocatorTest, RangeStartingAtPhysicalZeroIsManaged) {
  Layout l{"zero", 0, 8 * kMiB, {R(0, 8 * kMiB)}, {}};
  Harness h(l);
  ASSERT_TRUE(h.init().ok());
  EXPECT_TRUE(h.pfa().check_invariants());
  EXPECT_EQ(h.pfa().free_blocks(Pfa::kMaxOrder), 2u);
  EXPECT_EQ(h.pfa().lowest_address(), PhysAddr(0));
  // Under a 4 MiB - 1 limit only the block at 0 qualifies.
  auto r = h.pfa().alloc(Pfa::kMaxOrder, 4 * kMiB - 1);
  ASSERT_TRUE(r.ok());
  EXPECT_EQ(*r, PhysAddr(0));
  ASSERT_TRUE(h.pfa().free(*r, Pfa::kMaxOrder).ok());
}

// ---------------------------------------------------------------------------------------------
// alloc.

TEST(PageFrameAllocatorTest, AllocEveryOrderIsNaturallyAlignedAndCounted) {
  Harness h(single_range_layout());
  ASSERT_TRUE(h.init().ok());
  Model m(h.layout());
  for (unsigned o = 0; o <= Pfa::kMaxOrder; ++o) {
    auto r = h.pfa().alloc(o);
    ASSERT_TRUE(r.ok()) << "order " << o;
    EXPECT_EQ(r->value() % block_bytes(o), 0u);
    m.on_alloc(r->value(), o);
    EXPECT_TRUE(h.pfa().check_invariants());
    expect_stats_match(h.pfa(), m);
  }
  free_all(h.pfa(), m);
  expect_stats_match(h.pfa(), m);
  EXPECT_TRUE(h.pfa().check_invariants());
}

TEST(PageFrameAllocatorTest, AllocRejectsBadOrderAndAlignment) {
  Harness h(single_range_layout());
  ASSERT_TRUE(h.init().ok());
  Pfa::Stats before = h.pfa().stats();
  EXPECT_EQ(h.pfa().alloc(Pfa::kMaxOrder + 1).code(), ErrorCode::kLayoutError);
  EXPECT_EQ(h.pfa().alloc(100).code(), ErrorCode::kLayoutError);
  EXPECT_EQ(h.pfa().alloc(0, kNoLimit, 0).code(), ErrorCode::kLayoutError);
  EXPECT_EQ(h.pfa().alloc(0, kNoLimit, 3 * kPage).code(), ErrorCode::kLayoutError);
  EXPECT_EQ(h.pfa().alloc(0, kNoLimit, kPage + 1).code(), ErrorCode::kLayoutError);
  EXPECT_EQ(h.pfa().alloc(0, kNoLimit, 2 * kMaxBlock).code(), ErrorCode::kLayoutError);
  EXPECT_EQ(h.pfa().alloc(0, kNoLimit, 1ull << 63).code(), ErrorCode::kLayoutError);
  EXPECT_TRUE(same_stats(before, h.pfa().stats()));
  // Small alignments (below a page) are always met.
  auto r = h.pfa().alloc(0, kNoLimit, 1);
  ASSERT_TRUE(r.ok());
  ASSERT_TRUE(h.pfa().free(*r, 0).ok());
  auto r64 = h.pfa().alloc(0, kNoLimit, 64);
  ASSERT_TRUE(r64.ok());
  ASSERT_TRUE(h.pfa().free(*r64, 0).ok());
  EXPECT_TRUE(same_stats(before, h.pfa().stats()));
}

TEST(PageFrameAllocatorTest, AlignmentAboveBlockSizeGivesBackTheExcess) {
  Harness h(low_multi_layout());
  ASSERT_TRUE(h.init().ok());
  Model m(h.layout());
  Pfa::Stats initial = h.pfa().stats();
  for (uint64_t align = kPage; align <= kMaxBlock; align <<= 1) {
    for (unsigned order : {0u, 1u, 3u}) {
      auto r = h.pfa().alloc(order, kNoLimit, align);
      if (block_bytes(order) > align || m.chunk_available(order, Pfa::order_for(align), kNoLimit)) {
        ASSERT_TRUE(r.ok()) << "align " << align << " order " << order;
      }
      if (!r.ok()) continue;
      EXPECT_EQ(r->value() % align, 0u) << "align " << align;
      m.on_alloc(r->value(), order);
      // Only the block itself left the free pool: the rest of the aligned chunk came back.
      EXPECT_EQ(h.pfa().free_pages(), m.free());
      ASSERT_TRUE(h.pfa().check_invariants());
    }
  }
  free_all(h.pfa(), m);
  EXPECT_TRUE(same_stats(initial, h.pfa().stats()));
  EXPECT_TRUE(h.pfa().check_invariants());
}

TEST(PageFrameAllocatorTest, LimitBelowAllMemoryIsDmaMaskNotMatch) {
  Harness h(single_range_layout());  // Managed memory starts at 1 GiB + 4 KiB.
  ASSERT_TRUE(h.init().ok());
  Pfa::Stats before = h.pfa().stats();
  const uint64_t lowest = 1 * kGiB + kPage;
  for (uint64_t limit :
       {uint64_t{0}, (uint64_t{1} << 28) - 1, 1 * kGiB - 1, lowest - 1, lowest + kPage - 2}) {
    auto r = h.pfa().alloc(0, limit);
    ASSERT_FALSE(r.ok());
    EXPECT_EQ(r.code(), ErrorCode::kDmaMaskNotMatch) << std::hex << limit;
    EXPECT_EQ(r.error().addr, lowest);
    EXPECT_EQ(r.error().mask, limit);
  }
  // Some pages lie under the limit, but no block of order 3 ever could (the first 32 KiB-aligned
  // block starts at 1 GiB + 32 KiB).
  auto r = h.pfa().alloc(3, 1 * kGiB + 40 * kKiB);
  EXPECT_EQ(r.code(), ErrorCode::kDmaMaskNotMatch);
  // An alignment can push the earliest start above the limit too.
  EXPECT_EQ(h.pfa().alloc(0, 1 * kGiB + 40 * kKiB, 64 * kKiB).code(), ErrorCode::kDmaMaskNotMatch);
  EXPECT_TRUE(same_stats(before, h.pfa().stats()));
  // The first page that fits is handed out.
  auto first = h.pfa().alloc(0, lowest + kPage - 1);
  ASSERT_TRUE(first.ok());
  EXPECT_EQ(*first, PhysAddr(lowest));
  ASSERT_TRUE(h.pfa().free(*first, 0).ok());
}

TEST(PageFrameAllocatorTest, ExhaustionIsNoMemoryAndChangesNothing) {
  Harness h(across_4g_layout());
  ASSERT_TRUE(h.init().ok());
  Model m(h.layout());
  std::vector<uint64_t> got;
  for (;;) {
    auto r = h.pfa().alloc(2);
    if (!r.ok()) {
      EXPECT_EQ(r.code(), ErrorCode::kNoMemory);
      break;
    }
    m.on_alloc(r->value(), 2);
  }
  EXPECT_FALSE(m.chunk_available(2, 2, kNoLimit));
  // Pages cut off into smaller pieces by the reserved piece are still free: take them too.
  for (;;) {
    auto r = h.pfa().alloc(0);
    if (!r.ok()) break;
    m.on_alloc(r->value(), 0);
  }
  Pfa::Stats full = h.pfa().stats();
  for (unsigned o = 0; o <= Pfa::kMaxOrder; ++o) {
    EXPECT_EQ(h.pfa().alloc(o).code(), ErrorCode::kNoMemory);
  }
  EXPECT_EQ(h.pfa().alloc(0).code(), ErrorCode::kNoMemory);
  EXPECT_EQ(h.pfa().alloc(0).code(), ErrorCode::kNoMemory);  // Keep going: still clean.
  EXPECT_EQ(h.pfa().alloc(0, 0xFFFF'FFFF).code(), ErrorCode::kNoMemory);
  EXPECT_TRUE(same_stats(full, h.pfa().stats()));
  EXPECT_TRUE(h.pfa().check_invariants());
  EXPECT_EQ(h.pfa().free_pages(), 0u);
  // Freeing one block makes exactly that memory available again.
  uint64_t one = m.live().begin()->first;
  unsigned one_order = m.live().begin()->second;
  ASSERT_TRUE(h.pfa().free(PhysAddr(one), one_order).ok());
  m.on_free(one);
  auto r = h.pfa().alloc(one_order);
  ASSERT_TRUE(r.ok());
  EXPECT_EQ(r->value(), one);
  m.on_alloc(r->value(), one_order);
  free_all(h.pfa(), m);
  expect_stats_match(h.pfa(), m);
  EXPECT_EQ(h.pfa().free_blocks(Pfa::kMaxOrder), 3u);  // 2 + 2 blocks minus one reserved-split.
}

TEST(PageFrameAllocatorTest, UnconstrainedAllocationPrefersHighMemory) {
  Harness h(sparse_high_layout());
  ASSERT_TRUE(h.init().ok());
  auto r = h.pfa().alloc(0);
  ASSERT_TRUE(r.ok());
  EXPECT_EQ(band_of(r->value()), band_of(0x2'7FC0'0000));
  auto low = h.pfa().alloc(0, 0xFFFF'FFFF);
  ASSERT_TRUE(low.ok());
  EXPECT_EQ(band_of(low->value()), band_of(0x8020'0000));
  auto mid = h.pfa().alloc(0, 0x1'FFFF'FFFF);
  ASSERT_TRUE(mid.ok());
  EXPECT_EQ(band_of(mid->value()), band_of(0x1'3FF0'0800));
  for (auto* p : {&r, &low, &mid}) ASSERT_TRUE(h.pfa().free(**p, 0).ok());
  EXPECT_TRUE(h.pfa().check_invariants());
}

// Allocates single pages until the allocator says no, recording each in the model.
void take_every_page(Harness& h, Model& m) {
  for (;;) {
    auto r = h.pfa().alloc(0);
    if (!r.ok()) break;
    m.on_alloc(r->value(), 0);
  }
}

// A page freed far above the others sends the next searches back to the blocks below it, whose
// bitmap words the allocator may have left without summary bits while it remembered where it
// came from: both an unconstrained search and one under a limit must still find them.
TEST(PageFrameAllocatorTest, BlocksBelowAFarFreeAreFoundAgain) {
  for (bool limited : {false, true}) {
    SCOPED_TRACE(limited ? "under a limit" : "no limit");
    Harness h({"plain_16m", 1 * kGiB, 16 * kMiB, {R(1 * kGiB, 16 * kMiB)}, {}});
    ASSERT_TRUE(h.init().ok());
    Model m(h.layout());
    take_every_page(h, m);
    // Page 10 of bitmap word w (the range starts on a word boundary); its buddy stays allocated.
    auto page = [](uint64_t w) { return (1 * kGiB) + (((64 * w) + 10) * kPage); };
    auto give_back = [&](uint64_t a) {
      ASSERT_TRUE(h.pfa().free(PhysAddr(a), 0).ok());
      m.on_free(a);
    };
    auto take = [&](uint64_t limit) -> uint64_t {
      auto r = h.pfa().alloc(0, limit);
      if (!r.ok()) return 0;
      m.on_alloc(r->value(), 0);
      return r->value();
    };
    constexpr uint64_t kL = 40;
    uint64_t limit = limited ? page(kL + 3) : kNoLimit;
    give_back(page(kL - 2));  // The block to be found again.
    give_back(page(kL));
    EXPECT_EQ(take(limit), page(kL));
    give_back(page(kL + 4));  // Far above.
    if (!limited) {
      EXPECT_EQ(take(limit), page(kL + 4));
      give_back(page(kL + 2));
      EXPECT_EQ(take(limit), page(kL + 2));
    }
    EXPECT_TRUE(h.pfa().check_invariants());
    EXPECT_EQ(take(limit), page(kL - 2));
    EXPECT_TRUE(h.pfa().check_invariants());
    free_all(h.pfa(), m);
  }
}

// Blocks freed far above the allocator's hint are kept aside as its far block. Every path that
// meets one must still give out the highest free block of the smallest fitting order: the far
// block itself, a second block freed above it or between it and the hint, the far block merged
// away by its buddy, and a search under a limit below it.
TEST(PageFrameAllocatorTest, BlocksFreedFarAboveAreTakenHighestFirst) {
  // Page 10 (or 11, its buddy) of bitmap word w: the range starts on a word boundary.
  auto page = [](uint64_t w, uint64_t p = 10) { return (1 * kGiB) + (((64 * w) + p) * kPage); };
  struct Step {
    const char* name;
    std::vector<uint64_t> freed;  // Order-0 pages given back, in this order.
    unsigned order;               // Then alloc(order, limit) until the expected list is done.
    uint64_t limit;
    std::vector<uint64_t> expected;
  };
  const std::vector<Step> steps = {
      {"one far block", {page(40)}, 0, kNoLimit, {page(40), page(11), page(10)}},
      {"a second one above it", {page(40), page(50)}, 0, kNoLimit, {page(50), page(40)}},
      {"a second one below it", {page(40), page(30)}, 0, kNoLimit, {page(40), page(30)}},
      {"one just above the hint", {page(12), page(40)}, 0, kNoLimit, {page(40), page(12)}},
      {"the far block merged with its buddy",
       {page(40), page(40, 11)},
       0,
       kNoLimit,
       {page(11), page(10)}},
      {"under a limit below it", {page(40)}, 0, page(30), {page(11), page(10)}},
      {"under a limit above it", {page(40)}, 0, page(45), {page(40), page(11), page(10)}},
  };
  for (const Step& st : steps) {
    SCOPED_TRACE(st.name);
    Harness h({"plain_16m", 1 * kGiB, 16 * kMiB, {R(1 * kGiB, 16 * kMiB)}, {}});
    ASSERT_TRUE(h.init().ok());
    Model m(h.layout());
    take_every_page(h, m);
    for (uint64_t a : {page(10), page(11)}) {  // The hint's words.
      ASSERT_TRUE(h.pfa().free(PhysAddr(a), 0).ok());
      m.on_free(a);
    }
    for (uint64_t a : st.freed) {
      ASSERT_TRUE(h.pfa().free(PhysAddr(a), 0).ok());
      m.on_free(a);
      ASSERT_TRUE(h.pfa().check_invariants());
    }
    for (uint64_t want : st.expected) {
      auto r = h.pfa().alloc(st.order, st.limit);
      ASSERT_TRUE(r.ok());
      EXPECT_EQ(r->value(), want) << std::hex << r->value() << " != " << want;
      m.on_alloc(r->value(), st.order);
      ASSERT_TRUE(h.pfa().check_invariants());
    }
    if (st.limit < page(40)) {  // What the limit left is still there, the far block first.
      auto r = h.pfa().alloc(0);
      ASSERT_TRUE(r.ok());
      EXPECT_EQ(r->value(), page(40));
      m.on_alloc(r->value(), 0);
    }
    if (st.freed.size() == 2 && st.freed[1] == page(40, 11)) {  // The merged pair, whole.
      auto r = h.pfa().alloc(1);
      ASSERT_TRUE(r.ok());
      EXPECT_EQ(r->value(), page(40));
      m.on_alloc(r->value(), 1);
    }
    expect_stats_match(h.pfa(), m);
    EXPECT_TRUE(h.pfa().check_invariants());
    free_all(h.pfa(), m);
  }
}

// Allocates under `limit` until the allocator says no; checks every block and that nothing
// suitable was left behind; frees everything and checks the state returned to `initial`.
void exhaust_under_limit(Harness& h, uint64_t limit, unsigned order, uint64_t align,
                         const Pfa::Stats& initial) {
  Model m(h.layout());
  unsigned need = std::max(order, Pfa::order_for(align));
  for (;;) {
    auto r = h.pfa().alloc(order, limit, align);
    if (!r.ok()) {
      if (r.code() == ErrorCode::kDmaMaskNotMatch) {
        uint64_t earliest =
            (m.lowest() + block_bytes(need) - 1) / block_bytes(need) * block_bytes(need);
        EXPECT_GT(earliest + block_bytes(order) - 1, limit);
        EXPECT_EQ(r.error().addr, m.lowest());
        EXPECT_EQ(r.error().mask, limit);
      } else {
        EXPECT_EQ(r.code(), ErrorCode::kNoMemory);
      }
      EXPECT_FALSE(m.chunk_available(order, need, limit))
          << "limit 0x" << std::hex << limit << " order " << std::dec << order;
      break;
    }
    uint64_t a = r->value();
    EXPECT_LE(a + block_bytes(order) - 1, limit) << std::hex << a;
    EXPECT_EQ(a % std::max(align, block_bytes(order)), 0u);
    m.on_alloc(a, order);
    if (::testing::Test::HasFatalFailure()) return;
  }
  expect_stats_match(h.pfa(), m);
  EXPECT_TRUE(h.pfa().check_invariants());
  free_all(h.pfa(), m);
  EXPECT_TRUE(same_stats(initial, h.pfa().stats()));
  EXPECT_TRUE(h.pfa().check_invariants());
}

TEST(PageFrameAllocatorTest, LimitsAreHonouredAndExhaustive) {
  Harness h(low_multi_layout());
  ASSERT_TRUE(h.init().ok());
  Pfa::Stats initial = h.pfa().stats();
  std::vector<uint64_t> limits = {kNoLimit,         (1ull << 26) - 1, (1ull << 25) - 1,
                                  (1ull << 24) - 1, (1ull << 23) - 1, (1ull << 22) - 1,
                                  (1ull << 21) - 1, (1ull << 20) - 1, 0x3FF'FFFF - 0x1000,
                                  0x3E0'0000,       0x200'0FFF,       0x20F'FFFF,
                                  0xB0'0000,        0x40'0FFF,        0x31'7FFF,
                                  0x2'0000,         0x1FFF,           0xFFF};
  for (uint64_t limit : limits) {
    for (unsigned order : {0u, 2u, 5u, 9u}) {
      exhaust_under_limit(h, limit, order, kPage, initial);
      if (HasFatalFailure()) return;
    }
  }
}

TEST(PageFrameAllocatorTest, LimitsAndAlignmentAcrossManyLayouts) {
  std::mt19937_64 rng(7);
  for (const Layout& l : all_layouts()) {
    SCOPED_TRACE(l.name);
    Harness h(l);
    ASSERT_TRUE(h.init().ok());
    Pfa::Stats initial = h.pfa().stats();
    uint64_t lo = h.pfa().lowest_address().value();
    uint64_t hi = h.pfa().highest_address().value();
    for (int i = 0; i < 12; ++i) {
      uint64_t limit = lo + rng() % (hi - lo);
      unsigned order = static_cast<unsigned>(rng() % 8);
      uint64_t align = kPage << (rng() % 11);
      exhaust_under_limit(h, limit, order, align, initial);
      if (HasFatalFailure()) return;
    }
    exhaust_under_limit(h, 0xFFFF'FFFF, 0, kPage, initial);
    exhaust_under_limit(h, kNoLimit, Pfa::kMaxOrder, kPage, initial);
  }
}

TEST(PageFrameAllocatorTest, StraddlingBandIsSearchedWhenLowerBandsAreEmpty) {
  // All memory in one band ([1 GiB, 2 GiB)); a limit in its middle is not of the form 2^n - 1.
  Layout l{"straddle", 1 * kGiB, 32 * kMiB, {R(1 * kGiB, 32 * kMiB)}, {}};
  Harness h(l);
  ASSERT_TRUE(h.init().ok());
  Model m(h.layout());
  const uint64_t limit = 1 * kGiB + 10 * kMiB + 0x1234;
  // Fill the memory above the limit first so that the walk has non-fitting blocks to skip.
  for (;;) {
    auto r = h.pfa().alloc(0);
    ASSERT_TRUE(r.ok());
    if (r->value() < limit) {
      ASSERT_TRUE(h.pfa().free(*r, 0).ok());
      break;
    }
    m.on_alloc(r->value(), 0);
  }
  for (int i = 0; i < 100; ++i) {
    auto r = h.pfa().alloc(i % 3 == 0 ? 4u : 0u, limit);
    ASSERT_TRUE(r.ok());
    EXPECT_LE(r->value() + block_bytes(i % 3 == 0 ? 4u : 0u) - 1, limit);
    m.on_alloc(r->value(), i % 3 == 0 ? 4u : 0u);
  }
  EXPECT_TRUE(h.pfa().check_invariants());
  free_all(h.pfa(), m);
  EXPECT_EQ(h.pfa().free_blocks(Pfa::kMaxOrder), 8u);
}

// DMA masks (limits 2^n - 1) of every width, from below a page to no limit: each is a slot bound
// per order, ending mid-word or at a word boundary. All must give the model's answers.
uint64_t mask_of_bits(unsigned n) {
  return n >= 64 ? kNoLimit : (uint64_t{1} << n) - 1;
}

TEST(PageFrameAllocatorTest, DmaMasksOfEveryWidthAreHonouredAndExhaustive) {
  // sparse_high starts at 2 GiB (no memory under masks of up to 31 bits); low_multi starts at
  // 4 KiB and spans bands 0..4, so its small masks split band 0 and its larger ones end inside it.
  for (const Layout& l : {sparse_high_layout(), low_multi_layout(), across_4g_layout()}) {
    SCOPED_TRACE(l.name);
    Harness h(l);
    ASSERT_TRUE(h.init().ok());
    Pfa::Stats initial = h.pfa().stats();
    for (unsigned n : {12u, 16u, 20u, 21u, 22u, 23u, 24u, 26u, 31u, 32u, 33u, 34u, 40u, 63u, 64u}) {
      for (unsigned order : {0u, 1u, 9u, Pfa::kMaxOrder}) {
        SCOPED_TRACE(testing::Message() << "mask bits " << n << " order " << order);
        exhaust_under_limit(h, mask_of_bits(n), order, kPage, initial);
        if (HasFatalFailure()) return;
      }
    }
  }
}

TEST(PageFrameAllocatorTest, MaskUnderAllMemoryIsDmaMaskNotMatchOnTheFastPath) {
  Harness h(sparse_high_layout());  // Lowest managed page: 2 GiB + 2 MiB + 8 KiB.
  ASSERT_TRUE(h.init().ok());
  Pfa::Stats before = h.pfa().stats();
  const uint64_t lowest = h.pfa().lowest_address().value();
  ASSERT_EQ(lowest, 0x8020'2000u);
  for (unsigned n : {22u, 28u, 30u, 31u}) {
    for (unsigned order : {0u, 9u, Pfa::kMaxOrder}) {
      auto r = h.pfa().alloc(order, mask_of_bits(n));
      ASSERT_FALSE(r.ok());
      EXPECT_EQ(r.code(), ErrorCode::kDmaMaskNotMatch) << "bits " << n << " order " << order;
      EXPECT_EQ(r.error().addr, lowest);
      EXPECT_EQ(r.error().mask, mask_of_bits(n));
    }
  }
  EXPECT_TRUE(same_stats(before, h.pfa().stats()));
  // The first mask that reaches memory gets a block of it.
  auto r = h.pfa().alloc(0, mask_of_bits(32));
  ASSERT_TRUE(r.ok());
  EXPECT_LE(r->value(), 0xFFFF'FFFFu);
  ASSERT_TRUE(h.pfa().free(*r, 0).ok());
}

TEST(PageFrameAllocatorTest, MaskWithFreeMemoryOnlyAboveItIsNoMemory) {
  Harness h(sparse_high_layout());
  ASSERT_TRUE(h.init().ok());
  Model m(h.layout());
  const uint64_t mask = mask_of_bits(32);
  // Take every block of each order under 4 GiB, largest first, through the fast path.
  for (unsigned order = Pfa::kMaxOrder + 1; order-- > 0;) {
    for (;;) {
      auto r = h.pfa().alloc(order, mask);
      if (!r.ok()) {
        EXPECT_EQ(r.code(), ErrorCode::kNoMemory) << "order " << order;
        EXPECT_FALSE(m.chunk_available(order, order, mask)) << "order " << order;
        break;
      }
      EXPECT_LE(r->value() + block_bytes(order) - 1, mask);
      m.on_alloc(r->value(), order);
      ASSERT_FALSE(HasFatalFailure());
    }
  }
  // Memory is still free above the mask, and an unconstrained request gets it; the masked one
  // still fails cleanly, with the allocator unchanged.
  Pfa::Stats full = h.pfa().stats();
  EXPECT_GT(full.free_pages, 0u);
  for (unsigned order : {0u, 9u}) {
    auto r = h.pfa().alloc(order, mask);
    EXPECT_EQ(r.code(), ErrorCode::kNoMemory);
  }
  EXPECT_TRUE(same_stats(full, h.pfa().stats()));
  auto high = h.pfa().alloc(9);
  ASSERT_TRUE(high.ok());
  EXPECT_GT(high->value(), mask);
  m.on_alloc(high->value(), 9);
  // A wider mask reaches the memory above 4 GiB.
  auto wide = h.pfa().alloc(0, mask_of_bits(36));
  ASSERT_TRUE(wide.ok());
  EXPECT_GT(wide->value(), mask);
  m.on_alloc(wide->value(), 0);
  expect_stats_match(h.pfa(), m);
  EXPECT_TRUE(h.pfa().check_invariants());
  free_all(h.pfa(), m);
  EXPECT_TRUE(h.pfa().check_invariants());
}

// The fast path (page alignment) and the general path (an alignment equal to the block size,
// which asks for nothing more) must choose the same block: the highest allowed band's first.
TEST(PageFrameAllocatorTest, FastAndGeneralPathsChooseTheSameBlockUnderAMask) {
  std::mt19937_64 rng(11);
  for (const Layout& l : all_layouts()) {
    SCOPED_TRACE(l.name);
    Harness h(l);
    ASSERT_TRUE(h.init().ok());
    Model m(h.layout());
    const unsigned widths[] = {22, 24, 26, 31, 32, 33, 34, 64};
    for (int i = 0; i < 600; ++i) {
      if (!m.live().empty() && rng() % 3 == 0) {
        auto it = m.live().begin();
        std::advance(it, static_cast<long>(rng() % m.live().size()));
        auto [addr, order] = *it;
        ASSERT_TRUE(h.pfa().free(PhysAddr(addr), order).ok());
        m.on_free(addr);
        continue;
      }
      unsigned order = 1 + static_cast<unsigned>(rng() % Pfa::kMaxOrder);
      uint64_t mask = mask_of_bits(widths[rng() % std::size(widths)]);
      auto fast = h.pfa().alloc(order, mask);
      auto general = h.pfa().alloc(order, mask, block_bytes(order));
      if (!fast.ok()) {
        ASSERT_FALSE(general.ok());
        EXPECT_EQ(fast.code(), general.code());
        EXPECT_EQ(fast.error().addr, general.error().addr);
        EXPECT_EQ(fast.error().mask, general.error().mask);
        EXPECT_FALSE(m.chunk_available(order, order, mask));
        continue;
      }
      // `general` saw the state after `fast`'s allocation; undo both and ask again.
      if (general.ok()) ASSERT_TRUE(h.pfa().free(*general, order).ok());
      ASSERT_TRUE(h.pfa().free(*fast, order).ok());
      auto again = h.pfa().alloc(order, mask, block_bytes(order));
      ASSERT_TRUE(again.ok());
      EXPECT_EQ(*again, *fast) << "order " << order << " mask 0x" << std::hex << mask;
      EXPECT_LE(again->value() + block_bytes(order) - 1, mask);
      m.on_alloc(again->value(), order);
      ASSERT_FALSE(HasFatalFailure());
    }
    EXPECT_TRUE(h.pfa().check_invariants());
    expect_stats_match(h.pfa(), m);
    free_all(h.pfa(), m);
  }
}

// ---------------------------------------------------------------------------------------------
// free.

TEST(PageFrameAllocatorTest, FreeOfNeverAllocatedIsNotFound) {
  Harness h(low_multi_layout());
  ASSERT_TRUE(h.init().ok());
  Pfa::Stats before = h.pfa().stats();
  for (unsigned o = 0; o <= Pfa::kMaxOrder; ++o) {
    EXPECT_EQ(h.pfa().free(PhysAddr(0x3C0'0000), o).code(), ErrorCode::kNotFound);  // Free head.
    EXPECT_EQ(h.pfa().free(PhysAddr(0x3C0'1000), o).code(), ErrorCode::kNotFound);  // Interior.
  }
  EXPECT_TRUE(same_stats(before, h.pfa().stats()));
  EXPECT_TRUE(h.pfa().check_invariants());
}

TEST(PageFrameAllocatorTest, DoubleFreeIsNotFound) {
  Harness h(single_range_layout());
  ASSERT_TRUE(h.init().ok());
  auto a = h.pfa().alloc(3);
  auto b = h.pfa().alloc(3);
  ASSERT_TRUE(a.ok() && b.ok());
  ASSERT_TRUE(h.pfa().free(*a, 3).ok());
  Pfa::Stats after_one = h.pfa().stats();
  EXPECT_EQ(h.pfa().free(*a, 3).code(), ErrorCode::kNotFound);
  EXPECT_TRUE(same_stats(after_one, h.pfa().stats()));
  ASSERT_TRUE(h.pfa().free(*b, 3).ok());
  Pfa::Stats all = h.pfa().stats();
  EXPECT_EQ(h.pfa().free(*b, 3).code(), ErrorCode::kNotFound);
  EXPECT_EQ(h.pfa().free(*a, 3).code(), ErrorCode::kNotFound);
  EXPECT_TRUE(same_stats(all, h.pfa().stats()));
  EXPECT_TRUE(h.pfa().check_invariants());
}

TEST(PageFrameAllocatorTest, FreeWithWrongOrderOrInsideABlockIsNotFound) {
  Harness h(single_range_layout());
  ASSERT_TRUE(h.init().ok());
  auto a = h.pfa().alloc(4);
  ASSERT_TRUE(a.ok());
  Pfa::Stats before = h.pfa().stats();
  for (unsigned o : {0u, 3u, 5u, Pfa::kMaxOrder, Pfa::kMaxOrder + 1, 200u}) {
    EXPECT_EQ(h.pfa().free(*a, o).code(), ErrorCode::kNotFound) << o;
  }
  EXPECT_EQ(h.pfa().free(*a + kPage, 0).code(), ErrorCode::kNotFound);
  EXPECT_EQ(h.pfa().free(*a + 8 * kPage, 3).code(), ErrorCode::kNotFound);
  EXPECT_EQ(h.pfa().free(*a + 8, 4).code(), ErrorCode::kNotFound);  // Not page aligned.
  EXPECT_TRUE(same_stats(before, h.pfa().stats()));
  EXPECT_TRUE(h.pfa().check_invariants());
  ASSERT_TRUE(h.pfa().free(*a, 4).ok());
}

TEST(PageFrameAllocatorTest, FreeOutsideManagedMemoryIsNotFound) {
  Harness h(low_multi_layout());
  ASSERT_TRUE(h.init().ok());
  Pfa::Stats before = h.pfa().stats();
  for (uint64_t a : {0x0ull,         // Below the first range (page 0 is not managed).
                     0x20'0000ull,   // A hole.
                     0x3'0000ull,    // A reserved page inside a range.
                     0x3FF'F000ull,  // The reserved last page.
                     0x400'0000ull,  // Just past the end.
                     0x1'0000'0000ull, ~0ull & ~(kPage - 1)}) {
    EXPECT_EQ(h.pfa().free(PhysAddr(a), 0).code(), ErrorCode::kNotFound) << std::hex << a;
  }
  EXPECT_TRUE(same_stats(before, h.pfa().stats()));
}

// ---------------------------------------------------------------------------------------------
// Coalescing and ranges.

TEST(PageFrameAllocatorTest, FreeingEverythingCoalescesBackToTheInitialBlocks) {
  for (const Layout& l : all_layouts()) {
    SCOPED_TRACE(l.name);
    Harness h(l);
    ASSERT_TRUE(h.init().ok());
    Model m(h.layout());
    Pfa::Stats initial = h.pfa().stats();
    std::vector<uint64_t> initial_blocks = free_blocks_by_order(h.pfa());
    std::vector<uint64_t> pages;
    for (;;) {
      auto r = h.pfa().alloc(0);
      if (!r.ok()) break;
      pages.push_back(r->value());
      m.on_alloc(r->value(), 0);
    }
    ASSERT_EQ(pages.size(), m.managed());
    EXPECT_EQ(h.pfa().free_pages(), 0u);
    for (unsigned o = 0; o <= Pfa::kMaxOrder; ++o) EXPECT_EQ(h.pfa().free_blocks(o), 0u);
    std::shuffle(pages.begin(), pages.end(), std::mt19937_64(42));
    for (uint64_t a : pages) {
      ASSERT_TRUE(h.pfa().free(PhysAddr(a), 0).ok());
      m.on_free(a);
    }
    EXPECT_TRUE(h.pfa().check_invariants());
    EXPECT_TRUE(same_stats(initial, h.pfa().stats()));
    EXPECT_EQ(free_blocks_by_order(h.pfa()), initial_blocks);
  }
}

TEST(PageFrameAllocatorTest, BuddiesInAdjacentRangesAreNeverMerged) {
  // [0x800000, 0xA00000) and [0xA00000, 0xC00000) touch inside one 4 MiB-aligned block.
  Layout l{"adjacent", 8 * kMiB, 4 * kMiB, {R(0xA0'0000, 2 * kMiB), R(0x80'0000, 2 * kMiB)}, {}};
  Harness h(l);
  ASSERT_TRUE(h.init().ok());
  EXPECT_EQ(h.pfa().free_blocks(Pfa::kMaxOrder), 0u);
  EXPECT_EQ(h.pfa().free_blocks(Pfa::kMaxOrder - 1), 2u);
  EXPECT_EQ(h.pfa().alloc(Pfa::kMaxOrder).code(), ErrorCode::kNoMemory);
  auto a = h.pfa().alloc(9);
  auto b = h.pfa().alloc(9);
  ASSERT_TRUE(a.ok() && b.ok());
  ASSERT_TRUE(h.pfa().free(*a, 9).ok());
  ASSERT_TRUE(h.pfa().free(*b, 9).ok());
  EXPECT_EQ(h.pfa().free_blocks(Pfa::kMaxOrder), 0u);
  EXPECT_EQ(h.pfa().free_blocks(Pfa::kMaxOrder - 1), 2u);
  EXPECT_TRUE(h.pfa().check_invariants());
}

TEST(PageFrameAllocatorTest, BlocksNeverStraddleRangesAndStatsFollowEachRange) {
  for (const Layout& l : all_layouts()) {
    SCOPED_TRACE(l.name);
    Harness h(l);
    ASSERT_TRUE(h.init().ok());
    for (unsigned order = 0; order <= Pfa::kMaxOrder; ++order) {
      Model m(h.layout());
      for (;;) {
        auto r = h.pfa().alloc(order);
        if (!r.ok()) break;
        m.on_alloc(r->value(), order);  // Fails if the block is not inside one range.
        if (HasFatalFailure()) return;
      }
      EXPECT_FALSE(m.chunk_available(order, order, kNoLimit));
      expect_stats_match(h.pfa(), m);
      free_all(h.pfa(), m);
    }
    EXPECT_TRUE(h.pfa().check_invariants());
  }
}

TEST(PageFrameAllocatorTest, ReservedPiecesAndHolesAreNeverTouched) {
  Layout l = low_multi_layout();
  Harness h(l);
  Model m(l);
  // Paint every byte of the window that is not a managed page.
  auto unmanaged = [&](uint64_t page) {
    for (const ModelRange& r : m.ranges()) {
      if (page / kPage >= r.start_pfn && page / kPage < r.end_pfn) {
        return r.state[page / kPage - r.start_pfn] == kUnmanaged;
      }
    }
    return true;
  };
  for (uint64_t p = 0; p < l.window_size; p += kPage) {
    if (unmanaged(p)) std::memset(h.mem().virt(p), 0xA5, kPage);
  }
  ASSERT_TRUE(h.init().ok());
  std::mt19937_64 rng(3);
  for (int i = 0; i < 3000; ++i) {
    if (m.live().empty() || rng() % 2 == 0) {
      unsigned order = static_cast<unsigned>(rng() % 6);
      auto r = h.pfa().alloc(order);
      if (r.ok()) {
        m.on_alloc(r->value(), order);
        ASSERT_FALSE(HasFatalFailure());
        std::memset(h.mem().virt(r->value()), 0x3C, block_bytes(order));
      }
    } else {
      auto it = m.live().begin();
      std::advance(it, static_cast<long>(rng() % m.live().size()));
      uint64_t a = it->first;
      ASSERT_TRUE(h.pfa().free(PhysAddr(a), it->second).ok());
      m.on_free(a);
    }
  }
  free_all(h.pfa(), m);
  for (uint64_t p = 0; p < l.window_size; p += kPage) {
    if (!unmanaged(p)) continue;
    const uint8_t* v = h.mem().virt(p);
    for (uint64_t i = 0; i < kPage; ++i) ASSERT_EQ(v[i], 0xA5) << std::hex << p + i;
  }
}

// ---------------------------------------------------------------------------------------------
// Random operation sequences against the model.

class PageFrameAllocatorRandomTest : public ::testing::TestWithParam<int> {};

TEST_P(PageFrameAllocatorRandomTest, RandomOperationsKeepEveryInvariant) {
  Layout l = all_layouts()[static_cast<size_t>(GetParam())];
  for (uint64_t seed : {1ull, 2ull}) {
    SCOPED_TRACE(testing::Message() << l.name << " seed " << seed);
    Harness h(l);
    ASSERT_TRUE(h.init().ok());
    Pfa& pfa = h.pfa();
    Model m(l);
    Pfa::Stats initial = pfa.stats();
    std::vector<uint64_t> initial_blocks = free_blocks_by_order(pfa);
    std::mt19937_64 rng(seed);
    uint64_t lo = pfa.lowest_address().value();
    uint64_t hi = pfa.highest_address().value();
    int allocs = 0;
    int no_memory = 0;
    int mask_errors = 0;
    for (int step = 0; step < 3000; ++step) {
      uint64_t roll = rng() % 100;
      if (m.live().empty() || roll < 55) {
        uint64_t o = rng() % 100;
        unsigned order = static_cast<unsigned>(o < 50 ? o % 3 : o < 85 ? 3 + o % 4 : 7 + o % 4);
        uint64_t limit = kNoLimit;
        uint64_t which = rng() % 100;
        if (which < 25) {
          limit = (1ull << (20 + rng() % 16)) - 1;
        } else if (which < 50) {
          limit = lo + rng() % (hi - lo);
        } else if (which < 53) {
          limit = lo == 0 ? 0 : rng() % lo;
        }
        uint64_t align = kPage;
        uint64_t a_roll = rng() % 100;
        if (a_roll < 15) align = kPage << (rng() % 11);
        bool bad_align = a_roll >= 97;
        if (bad_align) align = 3 * kPage;
        Pfa::Stats before = pfa.stats();
        auto r = pfa.alloc(order, limit, align);
        unsigned need = std::max(order, Pfa::order_for(align));
        if (bad_align) {
          ASSERT_EQ(r.code(), ErrorCode::kLayoutError);
        } else if (r.ok()) {
          uint64_t a = r->value();
          ASSERT_LE(a + block_bytes(order) - 1, limit);
          ASSERT_EQ(a % std::max(align, block_bytes(order)), 0u);
          m.on_alloc(a, order);
          ASSERT_FALSE(HasFatalFailure());
          uint64_t tag = tag_of(a);
          std::memcpy(h.mem().virt(a), &tag, sizeof(tag));
          std::memcpy(h.mem().virt(a + block_bytes(order) - sizeof(tag)), &tag, sizeof(tag));
          ++allocs;
        } else {
          if (r.code() == ErrorCode::kDmaMaskNotMatch) {
            ++mask_errors;
            ASSERT_EQ(r.error().addr, m.lowest());
            ASSERT_EQ(r.error().mask, limit);
          } else {
            ASSERT_EQ(r.code(), ErrorCode::kNoMemory);
            ++no_memory;
          }
          ASSERT_FALSE(m.chunk_available(order, need, limit))
              << "order " << order << " limit 0x" << std::hex << limit << " align " << align;
          ASSERT_TRUE(same_stats(before, pfa.stats()));
        }
      } else {
        auto it = m.live().begin();
        std::advance(it, static_cast<long>(rng() % m.live().size()));
        uint64_t a = it->first;
        unsigned order = it->second;
        if (rng() % 20 == 0) {
          Pfa::Stats before = pfa.stats();
          unsigned wrong = order == 0 ? 1 : order - 1;
          ASSERT_EQ(pfa.free(PhysAddr(a), wrong).code(), ErrorCode::kNotFound);
          if (order > 0) {
            ASSERT_EQ(pfa.free(PhysAddr(a + kPage), 0).code(), ErrorCode::kNotFound);
          }
          ASSERT_TRUE(same_stats(before, pfa.stats()));
        }
        uint64_t tag = 0;
        std::memcpy(&tag, h.mem().virt(a), sizeof(tag));
        ASSERT_EQ(tag, tag_of(a));
        std::memcpy(&tag, h.mem().virt(a + block_bytes(order) - sizeof(tag)), sizeof(tag));
        ASSERT_EQ(tag, tag_of(a));
        ASSERT_TRUE(pfa.free(PhysAddr(a), order).ok());
        m.on_free(a);
        if (rng() % 10 == 0) ASSERT_EQ(pfa.free(PhysAddr(a), order).code(), ErrorCode::kNotFound);
      }
      ASSERT_TRUE(pfa.check_invariants()) << "step " << step;
      ASSERT_EQ(pfa.free_pages(), m.free());
      if (step % 64 == 0) {
        expect_stats_match(pfa, m);
        ASSERT_FALSE(HasFailure());
      }
    }
    EXPECT_GT(allocs, 500);
    EXPECT_GT(no_memory + mask_errors, 0);
    free_all(pfa, m);
    EXPECT_TRUE(pfa.check_invariants());
    EXPECT_TRUE(same_stats(initial, pfa.stats()));
    EXPECT_EQ(free_blocks_by_order(pfa), initial_blocks);
  }
}

INSTANTIATE_TEST_SUITE_P(Layouts, PageFrameAllocatorRandomTest, ::testing::Range(0, 4),
                         [](const ::testing::TestParamInfo<int>& info) {
                           return std::string(all_layouts()[static_cast<size_t>(info.param)].name);
                         });

// ---------------------------------------------------------------------------------------------
// Data integrity, concurrency, checker and destructor.

// Host-only: the free-list links live in free pages only, so whole allocated blocks keep every
// byte written into them across any number of other allocations and frees.
TEST(PageFrameAllocatorTest, DataInAllocatedBlocksIsNeverClobbered) {
  Harness h(single_range_layout());
  ASSERT_TRUE(h.init().ok());
  Model m(h.layout());
  auto fill = [&](uint64_t a, unsigned order) {
    uint64_t* p = reinterpret_cast<uint64_t*>(h.mem().virt(a));
    for (uint64_t i = 0; i < block_bytes(order) / 8; ++i) p[i] = tag_of(a + i * 8);
  };
  auto intact = [&](uint64_t a, unsigned order) {
    const uint64_t* p = reinterpret_cast<const uint64_t*>(h.mem().virt(a));
    for (uint64_t i = 0; i < block_bytes(order) / 8; ++i) {
      if (p[i] != tag_of(a + i * 8)) return false;
    }
    return true;
  };
  std::mt19937_64 rng(11);
  for (int i = 0; i < 4000; ++i) {
    if (m.live().size() < 8 || rng() % 2 == 0) {
      unsigned order = static_cast<unsigned>(rng() % 7);
      auto r = h.pfa().alloc(order);
      if (!r.ok()) continue;
      m.on_alloc(r->value(), order);
      fill(r->value(), order);
    } else {
      auto it = m.live().begin();
      std::advance(it, static_cast<long>(rng() % m.live().size()));
      auto [a, order] = *it;
      ASSERT_TRUE(intact(a, order)) << std::hex << a;
      ASSERT_TRUE(h.pfa().free(PhysAddr(a), order).ok());
      m.on_free(a);
    }
  }
  for (auto [a, order] : m.live()) EXPECT_TRUE(intact(a, order)) << std::hex << a;
  free_all(h.pfa(), m);
}

TEST(PageFrameAllocatorTest, ConcurrentAllocAndFreeStayConsistent) {
  Harness h(low_multi_layout());
  ASSERT_TRUE(h.init().ok());
  Pfa& pfa = h.pfa();
  uint64_t initial = pfa.free_pages();
  std::atomic<int> errors{0};
  auto worker = [&](uint64_t seed) {
    std::mt19937_64 rng(seed);
    std::vector<std::pair<uint64_t, unsigned>> mine;
    for (int i = 0; i < 4000; ++i) {
      if (mine.size() < 32 && (mine.empty() || rng() % 2 == 0)) {
        unsigned order = static_cast<unsigned>(rng() % 4);
        auto r = pfa.alloc(order, rng() % 2 == 0 ? kNoLimit : (1ull << 24) - 1);
        if (!r.ok()) continue;
        uint64_t tag = tag_of(r->value()) ^ seed;
        std::memcpy(h.mem().virt(r->value()), &tag, sizeof(tag));
        mine.emplace_back(r->value(), order);
      } else {
        size_t k = static_cast<size_t>(rng() % mine.size());
        auto [a, order] = mine[k];
        uint64_t tag = 0;
        std::memcpy(&tag, h.mem().virt(a), sizeof(tag));
        if (tag != (tag_of(a) ^ seed)) errors++;  // Someone else was handed our block.
        if (!pfa.free(PhysAddr(a), order).ok()) errors++;
        mine[k] = mine.back();
        mine.pop_back();
      }
    }
    for (auto [a, order] : mine) {
      if (!pfa.free(PhysAddr(a), order).ok()) errors++;
    }
  };
  std::thread t1(worker, 100);
  std::thread t2(worker, 200);
  t1.join();
  t2.join();
  EXPECT_EQ(errors.load(), 0);
  EXPECT_EQ(pfa.free_pages(), initial);
  EXPECT_TRUE(pfa.check_invariants());
}

TEST(PageFrameAllocatorTest, CheckInvariantsDetectsCorruption) {
  Harness h(single_range_layout());
  ASSERT_TRUE(h.init().ok());
  Pfa& pfa = h.pfa();
  auto a = pfa.alloc(0);
  auto b = pfa.alloc(2);
  ASSERT_TRUE(a.ok() && b.ok());
  ASSERT_TRUE(pfa.check_invariants());
  uint64_t first_pfn = pfa.range(0).base.value() / kPage;
  std::vector<uint8_t>& meta = h.meta();
  // Order 0's level 0 starts the buffer (from its first cache line): a free and an allocated
  // word per 64 slots. Slot 0 is unused, then the range's pages from the slot of their parity.
  auto* words =
      reinterpret_cast<uint64_t*>((reinterpret_cast<uintptr_t>(meta.data()) + 63) & ~uintptr_t{63});
  uint64_t base = 1 + ((first_pfn - 1) & 1);
  auto flip = [&](uint64_t pfn, bool allocated) {
    uint64_t pos = pfn - first_pfn + base;
    words[(2 * (pos >> 6)) + (allocated ? 1 : 0)] ^= 1ull << (pos & 63);
  };
  // A page inside an allocated block claiming to head one, as allocated or as free.
  for (bool allocated : {true, false}) {
    flip(b->value() / kPage + 1, allocated);
    EXPECT_FALSE(pfa.check_invariants()) << allocated;
    flip(b->value() / kPage + 1, allocated);
    ASSERT_TRUE(pfa.check_invariants());
  }
  // An allocated block claiming to be free too, or not allocated any more.
  flip(a->value() / kPage, false);
  EXPECT_FALSE(pfa.check_invariants());
  flip(a->value() / kPage, false);
  flip(a->value() / kPage, true);
  EXPECT_FALSE(pfa.check_invariants());
  flip(a->value() / kPage, true);
  ASSERT_TRUE(pfa.check_invariants());
  // Any bit of order 0's first and last word pairs flipped (4096 + 3 slots: 65 pairs), the
  // unused slots and the bits past the end included.
  for (uint64_t* w : {&words[0], &words[1], &words[128], &words[129]}) {
    for (unsigned bit = 0; bit < 64; ++bit) {
      *w ^= 1ull << bit;
      EXPECT_FALSE(pfa.check_invariants()) << "word " << (w - words) << " bit " << bit;
      *w ^= 1ull << bit;
    }
  }
  ASSERT_TRUE(pfa.check_invariants());
  // A reserved page turned into an allocated head: the device-tree page at the base is reserved.
  flip(first_pfn, true);
  EXPECT_FALSE(pfa.check_invariants());
  flip(first_pfn, true);
  EXPECT_TRUE(pfa.check_invariants());
  ASSERT_TRUE(pfa.free(*a, 0).ok());
  ASSERT_TRUE(pfa.free(*b, 2).ok());
}

#if defined(DMA_FAULT_INJECTION) && DMA_FAULT_INJECTION
// Every allocation of a sequence, in turn, made to fail: the error is kNoMemory, nothing changes,
// and the sequence completes normally once the fault has passed.
TEST(PageFrameAllocatorTest, InjectedFailureAtEveryAllocationOfASequence) {
  struct Request {
    unsigned order;
    uint64_t limit;
    uint64_t align;
  };
  const Request seq[] = {{0, kNoLimit, kPage},           {3, kNoLimit, kPage},
                         {0, 0x3FF'FFFF, kPage},         {2, 0x200'0FFF, kPage},
                         {0, kNoLimit, 64 * kKiB},       {9, kNoLimit, kPage},
                         {1, (1ull << 24) - 1, 1 * kMiB}};
  Harness h(low_multi_layout());
  ASSERT_TRUE(h.init().ok());
  Pfa::Stats initial = h.pfa().stats();
  support::FaultInjector::disarm_all();
  for (uint64_t n = 1; n <= std::size(seq); ++n) {
    SCOPED_TRACE(testing::Message() << "failing allocation " << n);
    support::FaultInjector::fail_nth(support::FaultSite::kPageAlloc, n);
    std::vector<std::pair<PhysAddr, unsigned>> got;
    for (uint64_t i = 1; i <= std::size(seq); ++i) {
      const Request& q = seq[i - 1];
      Pfa::Stats before = h.pfa().stats();
      auto r = h.pfa().alloc(q.order, q.limit, q.align);
      if (i == n) {
        EXPECT_EQ(r.code(), ErrorCode::kNoMemory);
        EXPECT_TRUE(same_stats(before, h.pfa().stats()));
        continue;
      }
      ASSERT_TRUE(r.ok()) << "request " << i;
      got.emplace_back(*r, q.order);
    }
    EXPECT_EQ(support::FaultInjector::hits(support::FaultSite::kPageAlloc), std::size(seq));
    // Invalid requests fail for their own reason and are not counted as allocations.
    EXPECT_EQ(h.pfa().alloc(Pfa::kMaxOrder + 1).code(), ErrorCode::kLayoutError);
    EXPECT_EQ(support::FaultInjector::hits(support::FaultSite::kPageAlloc), std::size(seq));
    for (auto [a, order] : got) ASSERT_TRUE(h.pfa().free(a, order).ok());
    EXPECT_TRUE(same_stats(initial, h.pfa().stats()));
    EXPECT_TRUE(h.pfa().check_invariants());
  }
  support::FaultInjector::disarm_all();
}
#endif

// ---------------------------------------------------------------------------------------------
// Metadata out of band: the allocator never reads or writes a managed page (only the debug
// poisoning layer may, and these tests turn it off), so what a device writes into a page it no
// longer owns cannot steer the allocator.

// Allocates or frees at random, with mixed orders, limits and alignments, checking every answer
// against the model (placement, and that a failure means that nothing suitable was free). Never
// touches the blocks itself.
void churn_without_touching(Harness& h, Model& m, uint64_t seed, int steps, int check_every) {
  Pfa& pfa = h.pfa();
  std::mt19937_64 rng(seed);
  uint64_t lo = pfa.lowest_address().value();
  uint64_t hi = pfa.highest_address().value();
  for (int step = 0; step < steps; ++step) {
    if (m.live().empty() || rng() % 100 < 55) {
      uint64_t o = rng() % 100;
      unsigned order = static_cast<unsigned>(o < 50 ? o % 3 : o < 85 ? 3 + o % 4 : 7 + o % 4);
      uint64_t limit = kNoLimit;
      uint64_t which = rng() % 100;
      if (which < 25) {
        limit = (1ull << (20 + rng() % 16)) - 1;
      } else if (which < 50) {
        limit = lo + rng() % (hi - lo);
      }
      uint64_t align = rng() % 100 < 15 ? kPage << (rng() % 11) : kPage;
      auto r = pfa.alloc(order, limit, align);
      if (r.ok()) {
        ASSERT_LE(r->value() + block_bytes(order) - 1, limit);
        ASSERT_EQ(r->value() % std::max(align, block_bytes(order)), 0u);
        m.on_alloc(r->value(), order);
        ASSERT_FALSE(::testing::Test::HasFatalFailure());
      } else {
        ASSERT_TRUE(r.code() == ErrorCode::kNoMemory || r.code() == ErrorCode::kDmaMaskNotMatch);
        ASSERT_FALSE(m.chunk_available(order, std::max(order, Pfa::order_for(align)), limit))
            << "order " << order << " limit 0x" << std::hex << limit << " align " << align;
      }
    } else {
      auto it = m.live().begin();
      std::advance(it, static_cast<long>(rng() % m.live().size()));
      auto [a, order] = *it;
      ASSERT_TRUE(pfa.free(PhysAddr(a), order).ok());
      m.on_free(a);
    }
    if (step % check_every == 0) {
      ASSERT_TRUE(pfa.check_invariants()) << "step " << step;
      ASSERT_EQ(pfa.free_pages(), m.free());
    }
  }
}

// The whole of "physical memory" is PROT_NONE from before init to the end: any access by the
// allocator to a managed page (a free-list link, say) is a fault.
TEST(PageFrameAllocatorOutOfBandTest, ManagedMemoryIsNeverAccessed) {
  for (const Layout& l : all_layouts()) {
    SCOPED_TRACE(l.name);
    Harness h(l);
    h.pfa().set_poisoning(false);  // The debug layer is the one part allowed to touch pages.
    h.mem().protect(PROT_NONE);
    ASSERT_TRUE(h.init().ok());
    Model m(l);
    EXPECT_TRUE(h.pfa().check_invariants());
    expect_stats_match(h.pfa(), m);
    churn_without_touching(h, m, 5, 6000, 16);
    if (HasFatalFailure()) return;
    free_all(h.pfa(), m);
    EXPECT_TRUE(h.pfa().check_invariants());
    expect_stats_match(h.pfa(), m);
  }
}

// What the test expects in every page of a window: a seed per page, each word of the page a
// function of it. The words look like what a stale DMA descriptor or a corrupting device leaves
// behind: pointers into the simulated RAM (virtual and physical), into the allocator's metadata,
// into the allocator object itself, small integers and all ones.
class PageContents {
 public:
  PageContents(Harness& h, const Layout& l)
      : mem_(h.mem()),
        base_(l.window_base),
        size_(l.window_size),
        seeds_(l.window_size / kPage, 0),
        meta_(reinterpret_cast<uintptr_t>(h.meta().data())),
        meta_size_(h.meta().size()),
        pfa_(reinterpret_cast<uintptr_t>(&h.pfa())) {}

  void write(uint64_t phys, uint64_t seed) {
    seeds_[(phys - base_) / kPage] = seed;
    auto* w = reinterpret_cast<uint64_t*>(mem_.virt(phys));
    for (uint64_t i = 0; i < kPage / 8; ++i) w[i] = word(seed, i);
  }
  bool intact(uint64_t phys) const {
    uint64_t seed = seeds_[(phys - base_) / kPage];
    const auto* w = reinterpret_cast<const uint64_t*>(mem_.virt(phys));
    for (uint64_t i = 0; i < kPage / 8; ++i) {
      if (w[i] != word(seed, i)) return false;
    }
    return true;
  }
  // The first page of the window that does not hold what it should, or ~0 if all do.
  uint64_t first_changed() const {
    for (uint64_t p = base_; p < base_ + size_; p += kPage) {
      if (!intact(p)) return p;
    }
    return ~0ull;
  }

 private:
  uint64_t word(uint64_t seed, uint64_t i) const {
    uint64_t x = (seed * 0x9E37'79B9'7F4A'7C15ull) ^ (i * 0xBF58'476D'1CE4'E5B9ull);
    x ^= x >> 31;
    x *= 0x94D0'49BB'1331'11EBull;
    x ^= x >> 29;
    uint64_t r = x >> 8;
    switch (x % 6) {
      case 0:  // A page of the window, as a CPU pointer (a list link would look like this).
        return reinterpret_cast<uint64_t>(mem_.virt(base_ + r % size_ / kPage * kPage));
      case 1:  // Anywhere in the window, as a physical address.
        return base_ + r % size_;
      case 2:  // Into the allocator's own metadata.
        return meta_ + r % meta_size_;
      case 3:  // Into the allocator object.
        return pfa_ + r % sizeof(Pfa);
      case 4:
        return r % 64;
      default:
        return ~0ull;
    }
  }

  SimMemory& mem_;
  uint64_t base_;
  uint64_t size_;
  std::vector<uint64_t> seeds_;
  uintptr_t meta_;
  size_t meta_size_;
  uintptr_t pfa_;
};

// A device writes pointer-looking garbage into every block after it is freed, and at times into
// any free page. Allocation and freeing go on exactly as the model says; the allocator writes
// nothing into a block when it frees it, nothing into free memory, and nothing outside a block
// when it hands it out (every page of the window keeps what the test last wrote there).
TEST(PageFrameAllocatorOutOfBandTest, GarbageInFreedPagesIsNeverTrusted) {
  for (const Layout& l : {low_multi_layout(), single_range_layout()}) {
    SCOPED_TRACE(l.name);
    Harness h(l);
    h.pfa().set_poisoning(false);
    Model m(l);
    PageContents pages(h, l);
    uint64_t seed = 1;
    for (uint64_t p = l.window_base; p < l.window_base + l.window_size; p += kPage) {
      pages.write(p, seed++);
    }
    ASSERT_TRUE(h.init().ok());
    ASSERT_EQ(pages.first_changed(), ~0ull);
    Pfa& pfa = h.pfa();
    std::mt19937_64 rng(21);
    uint64_t lo = pfa.lowest_address().value();
    uint64_t hi = pfa.highest_address().value();
    int allocs = 0;
    for (int step = 0; step < 2000; ++step) {
      if (m.live().empty() || rng() % 100 < 55) {
        unsigned order = static_cast<unsigned>(rng() % 100 < 70 ? rng() % 3 : rng() % 7);
        uint64_t limit = rng() % 4 == 0 ? lo + rng() % (hi - lo) : kNoLimit;
        auto r = pfa.alloc(order, limit);
        if (!r.ok()) {
          ASSERT_FALSE(m.chunk_available(order, order, limit));
        } else {
          ++allocs;
          m.on_alloc(r->value(), order);
          ASSERT_FALSE(HasFatalFailure());
          for (uint64_t p = r->value(); p < r->value() + block_bytes(order); p += kPage) {
            ASSERT_TRUE(pages.intact(p)) << "a free page was written: 0x" << std::hex << p;
            pages.write(p, seed++);  // The new owner's data.
          }
        }
      } else {
        auto it = m.live().begin();
        std::advance(it, static_cast<long>(rng() % m.live().size()));
        auto [a, order] = *it;
        ASSERT_TRUE(pfa.free(PhysAddr(a), order).ok());
        m.on_free(a);
        for (uint64_t p = a; p < a + block_bytes(order); p += kPage) {
          ASSERT_TRUE(pages.intact(p)) << "free wrote into the block: 0x" << std::hex << p;
          pages.write(p, seed++);  // The device writes after free.
        }
      }
      if (step % 5 == 0) {
        // A stale descriptor hits some page that is free now.
        const ModelRange& mr = m.ranges()[rng() % m.ranges().size()];
        uint64_t pfn = mr.start_pfn + rng() % (mr.end_pfn - mr.start_pfn);
        if (mr.state[pfn - mr.start_pfn] == kFree) pages.write(pfn * kPage, seed++);
      }
      ASSERT_TRUE(pfa.check_invariants()) << "step " << step;
      ASSERT_EQ(pfa.free_pages(), m.free());
      if (step % 1000 == 999) ASSERT_EQ(pages.first_changed(), ~0ull) << "step " << step;
    }
    EXPECT_GT(allocs, 700);
    free_all(pfa, m);
    EXPECT_EQ(pages.first_changed(), ~0ull);
    EXPECT_TRUE(pfa.check_invariants());
    expect_stats_match(pfa, m);
  }
}

// Layouts for the metadata budget, each describing about `bytes` of RAM.
std::vector<PhysRange> budget_layout(int kind, uint64_t bytes) {
  std::vector<PhysRange> v;
  switch (kind) {
    case 0:  // One aligned range.
      v.push_back(R(1 * kGiB, bytes));
      break;
    case 1:  // One range at an odd base, not a whole number of pages.
      v.push_back(R(0x8020'1800, bytes - 0x1800));
      break;
    case 2:  // The most ranges there can be, equal, with equal holes between them.
      for (uint64_t i = 0; i < Pfa::kMaxRanges; ++i) {
        uint64_t each = bytes / Pfa::kMaxRanges;
        v.push_back(R(4 * kGiB + 2 * i * each, each));
      }
      break;
    case 3:  // x86-like: 636 KiB of low memory, then the rest from 1 MiB (with a hole at 3 GiB).
      v.push_back(R(0, 0x9'F000));
      if (bytes <= 3 * kGiB) {
        v.push_back(R(1 * kMiB, bytes - 1 * kMiB));
      } else {
        v.push_back(R(1 * kMiB, 3 * kGiB - 1 * kMiB));
        v.push_back(R(4 * kGiB, bytes - 3 * kGiB));
      }
      break;
    default:  // Seven ranges of uneven, unaligned sizes, odd pages apart.
      for (uint64_t i = 0; i < 7; ++i) {
        uint64_t each = bytes / 7 / kPage * kPage - 0x800 * (i % 2);
        v.push_back(R(2 * kGiB + i * (bytes / 7 + 5 * kPage) + 0x800 * (i % 3), each));
      }
      break;
  }
  return v;
}

// metadata_size() / managed bytes <= 0.1% from 1 MiB to 64 GiB, over several layouts; and the
// allocator runs within exactly that much metadata, with RAM inaccessible.
TEST(PageFrameAllocatorOutOfBandTest, MetadataBudgetHoldsFrom1MiBTo64GiB) {
  for (uint64_t bytes = 1 * kMiB; bytes <= 64 * kGiB; bytes *= 4) {
    for (int kind = 0; kind < 5; ++kind) {
      SCOPED_TRACE(testing::Message() << "bytes 0x" << std::hex << bytes << " layout " << kind);
      std::vector<PhysRange> ranges = budget_layout(kind, bytes);
      uint64_t managed = 0;
      uint64_t lo = ~0ull;
      uint64_t hi = 0;
      for (const PhysRange& r : ranges) {
        uint64_t s = (r.base.value() + kPage - 1) / kPage * kPage;
        uint64_t e = r.end().value() / kPage * kPage;
        if (e > s) managed += e - s;
        lo = std::min(lo, r.base.value() / kPage * kPage);
        hi = std::max(hi, (r.end().value() + kPage - 1) / kPage * kPage);
      }
      size_t meta_bytes = Pfa::metadata_size(span_of(ranges));
      EXPECT_LE(static_cast<double>(meta_bytes), 0.001 * static_cast<double>(managed));

      SimMemory mem(lo, hi - lo);
      mem.protect(PROT_NONE);
      std::vector<uint8_t> meta(meta_bytes);
      Pfa pfa;
      pfa.set_poisoning(false);
      ASSERT_TRUE(pfa.init(span_of(ranges), {}, mem.offset(), meta.data(), meta.size()).ok());
      EXPECT_EQ(pfa.stats().metadata_bytes, meta_bytes);
      EXPECT_EQ(pfa.free_pages() * kPage, managed);
      std::vector<std::pair<PhysAddr, unsigned>> got;
      for (unsigned order : {0u, 3u, 9u, Pfa::kMaxOrder, 0u, 1u}) {
        for (uint64_t limit : {kNoLimit, uint64_t{0xFFFF'FFFF}, lo + (hi - lo) / 2}) {
          auto r = pfa.alloc(order, limit);
          if (r.ok()) got.emplace_back(*r, order);
        }
      }
      EXPECT_FALSE(got.empty());
      if (bytes <= 1 * kGiB || kind == 0) EXPECT_TRUE(pfa.check_invariants());
      for (auto [a, order] : got) ASSERT_TRUE(pfa.free(a, order).ok());
      EXPECT_EQ(pfa.free_pages() * kPage, managed);
      if (bytes <= 1 * kGiB) EXPECT_TRUE(pfa.check_invariants());
    }
  }
}

#if KDEBUG_ENABLED
TEST(PageFrameAllocatorDeathTest, ShutdownAssertsWhenPagesAreStillAllocated) {
  GTEST_FLAG_SET(death_test_style, "threadsafe");
  EXPECT_DEATH(
      {
        Harness h(single_range_layout());
        if (!h.init().ok()) std::abort();
        auto r = h.pfa().alloc(0);
        if (!r.ok()) std::abort();
      },
      "shut down with pages still allocated");
}
#endif

}  // namespace
