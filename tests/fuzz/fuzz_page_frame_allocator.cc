// libFuzzer target: random operation sequences on a PageFrameAllocator over a few ranges of real
// (host) memory with holes and reserved pieces, checked against a shadow map of every page.
//
// The input first describes the memory (where physical memory starts, 1-4 ranges, 0-3 reserved
// pieces), then a sequence of operations: alloc (any order, limit and alignment, valid or not),
// free of a live block, free of something that is not a live block (never allocated, already
// freed, wrong order, inside a block), and arming the kPageAlloc fault point. After every step:
//   - check_invariants() holds and free_pages() equals the shadow's count of free pages;
//   - a block handed out lies in one range, avoids reserved pages, overlaps no live block, is
//     aligned to its size and to the requested alignment, and ends at or below the limit;
//   - the pages of every live block keep the tags written into them (the allocator never writes
//     allocated memory);
//   - an alloc that fails with kNoMemory or kDmaMaskNotMatch really had nothing to give: no free,
//     naturally aligned run of the needed size in one range whose kept piece is under the limit;
//   - a bad free is refused (kNotFound) and changes nothing.
// At the end every block is freed and all memory must be free again.
#include <sys/mman.h>

#include <cstddef>
#include <cstdint>
#include <cstring>
#include <map>
#include <vector>

#include "dmakit/page_frame_allocator.h"
#include "dmakit/support/fault_injection.h"
#include "tests/fuzz/common/fuzz_input.h"

namespace {

constexpr uint64_t kPage = PageFrameAllocator::kPageSize;
constexpr size_t kArenaPages = 4096;  // 16 MiB of host memory stands for physical memory.
constexpr size_t kMaxOps = 400;

enum Page : uint8_t { kUnmanaged = 0, kFree, kUsed };

uint8_t* arena() {
  static uint8_t* a = [] {
    void* m = mmap(nullptr, kArenaPages * kPage, PROT_READ | PROT_WRITE,
                   MAP_PRIVATE | MAP_ANONYMOUS | MAP_NORESERVE, -1, 0);
    if (m == MAP_FAILED) fuzz_fail(__FILE__, __LINE__, "mmap");
    return static_cast<uint8_t*>(m);
  }();
  return a;
}

struct Block {
  unsigned order;
  uint64_t tag;
};

class Harness {
 public:
  explicit Harness(FuzzInput& in) : in_(in) {}
  // The end-of-life check (in debug builds: everything given back), which run() leaves true.
  ~Harness() { pfa_.shutdown(); }

  void run() {
    if (!setup()) return;
    for (size_t step = 0; step < kMaxOps && !in_.done(); ++step) {
      switch (in_.pick(8)) {
        case 0:
        case 1:
        case 2:
          alloc();
          break;
        case 3:
        case 4:
          free_live();
          break;
        case 5:
          bad_free();
          break;
        case 6:
          fault_nth_ = in_.range(1, 3);
          support::FaultInjector::fail_nth(support::FaultSite::kPageAlloc, fault_nth_);
          break;
        default:
          // Walks all of memory (and, with DMA_PAGE_POISON, checks every freed byte): kept rare.
          if (in_.range(0, 15) == 0) alloc_free_all_of_one_order();
          break;
      }
      check();
    }
    support::FaultInjector::disarm_all();
    while (!live_.empty()) free_block(live_.begin()->first);
    check();
    FUZZ_CHECK(pfa_.free_pages() == managed_);
  }

 private:
  // Physical address of arena page i, and back.
  uint64_t phys_of_page(size_t i) const { return base_ + i * kPage; }
  size_t page_of(uint64_t phys) const { return static_cast<size_t>((phys - base_) / kPage); }
  uint8_t* cpu(uint64_t phys) const { return arena() + (phys - base_); }

  bool setup() {
    // Where "physical memory" starts: low, at 1 GiB, just under 4 GiB (bands and masks
    // straddle), or far up.
    static constexpr uint64_t kBases[] = {0x0, 0x4000'0000, 0xFF00'0000, 0x8'0000'0000,
                                          0x1'0000'0000 - 0x80'0000};
    base_ = kBases[in_.pick(5)] + in_.range(0, 15) * (1u << 22);
    std::vector<PhysRange> ranges;
    size_t n = in_.range(1, 4);
    for (size_t i = 0; i < n; ++i) {
      // Ranges may start and end off page boundaries (trimmed inward) and may overlap (init
      // must then refuse).
      uint64_t start =
          in_.range(0, kArenaPages - 1) * kPage + (in_.boolean() ? in_.range(0, 4095) : 0);
      uint64_t len = in_.range(1, kArenaPages) * kPage - (in_.boolean() ? in_.range(0, 4095) : 0);
      if (start + len > kArenaPages * kPage) len = kArenaPages * kPage - start;
      ranges.push_back(PhysRange{PhysAddr(base_ + start), len});
    }
    std::vector<PhysRange> reserved;
    size_t r = in_.range(0, 3);
    for (size_t i = 0; i < r; ++i) {
      uint64_t start = in_.range(0, kArenaPages * kPage - 1);
      uint64_t len = in_.range(1, 64 * kPage);
      reserved.push_back(PhysRange{PhysAddr(base_ + start), len});
    }
    // Shadow: pages wholly inside some range, minus pages touching a reserved piece.
    bool overlap = false;
    for (size_t i = 0; i < ranges.size(); ++i) {
      for (size_t j = i + 1; j < ranges.size(); ++j) {
        uint64_t a0 = ranges[i].base.value(), a1 = a0 + ranges[i].size;
        uint64_t b0 = ranges[j].base.value(), b1 = b0 + ranges[j].size;
        if (a0 < b1 && b0 < a1) overlap = true;
      }
    }
    meta_.resize(PageFrameAllocator::metadata_size(
        support::Span<const PhysRange>(ranges.data(), ranges.size())));
    auto res = pfa_.init(support::Span<const PhysRange>(ranges.data(), ranges.size()),
                         support::Span<const PhysRange>(reserved.data(), reserved.size()),
                         reinterpret_cast<uintptr_t>(arena()) - base_, meta_.data(), meta_.size());
    if (!res.ok()) {
      // Overlapping ranges are the only invalid description this harness makes.
      FUZZ_CHECK(overlap && res.code() == ErrorCode::kInvalidArgument);
      return false;
    }
    FUZZ_CHECK(!overlap);
    pages_.assign(kArenaPages, kUnmanaged);
    for (const PhysRange& rg : ranges) {
      uint64_t s = (rg.base.value() + kPage - 1) / kPage * kPage;
      uint64_t e = (rg.base.value() + rg.size) / kPage * kPage;
      for (uint64_t p = s; p < e; p += kPage) pages_[page_of(p)] = kFree;
    }
    for (const PhysRange& rs : reserved) {
      uint64_t s = rs.base.value() / kPage * kPage;
      uint64_t e = rs.base.value() + rs.size;
      for (uint64_t p = s; p < e && p < base_ + kArenaPages * kPage; p += kPage) {
        pages_[page_of(p)] = kUnmanaged;
      }
    }
    managed_ = 0;
    for (uint8_t p : pages_) managed_ += p == kFree;
    FUZZ_CHECK(pfa_.free_pages() == managed_);
    // The allocator's view of the ranges must match: every managed page lies in one.
    for (size_t i = 0; i < kArenaPages; ++i) {
      if (pages_[i] == kFree) FUZZ_CHECK(in_some_range(phys_of_page(i), 1));
    }
    return true;
  }

  bool in_some_range(uint64_t phys, uint64_t pages) const {
    for (size_t i = 0; i < pfa_.num_ranges(); ++i) {
      PhysRange r = pfa_.range(i);
      if (phys >= r.base.value() && phys + pages * kPage <= r.end().value()) return true;
    }
    return false;
  }

  // Is there a run the allocator should have found? See the file comment.
  bool could_allocate(unsigned order, uint64_t limit, uint64_t align) const {
    unsigned need = order;
    while ((kPage << need) < align) ++need;
    uint64_t run = uint64_t{1} << need;
    uint64_t kept_last = (kPage << order) - 1;
    for (size_t i = 0; i < kArenaPages; ++i) {
      uint64_t phys = phys_of_page(i);
      if (phys % (kPage << need) != 0) continue;
      if (i + run > kArenaPages) break;
      if (phys + kept_last > limit || phys + kept_last < phys) continue;
      if (!in_some_range(phys, run)) continue;
      bool all_free = true;
      for (uint64_t k = 0; k < run && all_free; ++k) all_free = pages_[i + k] == kFree;
      if (all_free) return true;
    }
    return false;
  }

  void alloc() {
    unsigned order = static_cast<unsigned>(in_.range(0, PageFrameAllocator::kMaxOrder + 1));
    uint64_t limit;
    switch (in_.pick(4)) {
      case 0:
        limit = ~0ull;
        break;
      case 1:
        limit = (uint64_t{1} << in_.range(12, 40)) - 1;  // A DMA mask.
        break;
      default:
        limit = base_ + in_.range(0, kArenaPages * kPage + kPage);  // Anywhere in memory.
        break;
    }
    uint64_t align = in_.boolean() ? kPage : (uint64_t{1} << in_.range(0, 24));
    if (in_.range(0, 15) == 0) align = in_.range(0, 1u << 20);  // Possibly not a power of two.
    uint64_t before = pfa_.free_pages();
    uint64_t hits = support::FaultInjector::hits(support::FaultSite::kPageAlloc);
    auto r = pfa_.alloc(order, limit, align);
    bool injected = injected_since(hits);
    bool valid_align = align != 0 && (align & (align - 1)) == 0 &&
                       align <= (kPage << PageFrameAllocator::kMaxOrder);
    if (!r.ok()) {
      FUZZ_CHECK(pfa_.free_pages() == before);
      ErrorCode c = r.code();
      if (order > PageFrameAllocator::kMaxOrder || !valid_align) {
        FUZZ_CHECK(c == ErrorCode::kLayoutError);
        return;
      }
      if (injected) {
        FUZZ_CHECK(c == ErrorCode::kNoMemory);
        return;
      }
      FUZZ_CHECK(c == ErrorCode::kNoMemory || c == ErrorCode::kDmaMaskNotMatch);
      FUZZ_CHECK(!could_allocate(order, limit, align));
      return;
    }
    FUZZ_CHECK(!injected);
    FUZZ_CHECK(order <= PageFrameAllocator::kMaxOrder && valid_align);
    uint64_t pa = r->value();
    uint64_t pages = uint64_t{1} << order;
    FUZZ_CHECK(pa >= base_ && pa + pages * kPage <= base_ + kArenaPages * kPage);
    FUZZ_CHECK(pa % (kPage << order) == 0);
    FUZZ_CHECK(pa % align == 0);
    FUZZ_CHECK(pa + pages * kPage - 1 <= limit);
    FUZZ_CHECK(in_some_range(pa, pages));
    size_t first = page_of(pa);
    for (uint64_t k = 0; k < pages; ++k) {
      FUZZ_CHECK(pages_[first + k] == kFree);  // Not reserved, not a hole, not live.
      pages_[first + k] = kUsed;
    }
    FUZZ_CHECK(pfa_.free_pages() == before - pages);
    uint64_t tag = (pa * 0x9E37'79B9'7F4A'7C15ull) ^ order;
    for (uint64_t k = 0; k < pages; ++k) {
      uint8_t* p = cpu(pa + k * kPage);
      std::memcpy(p, &tag, sizeof(tag));
      std::memcpy(p + kPage - sizeof(tag), &tag, sizeof(tag));
    }
    live_[pa] = Block{order, tag};
  }

  // Whether the armed kPageAlloc fault fired in the call that started with `hits` calls seen.
  bool injected_since(uint64_t hits) {
    uint64_t now = support::FaultInjector::hits(support::FaultSite::kPageAlloc);
    bool fired = fault_nth_ != 0 && now > hits && now == fault_nth_;
    if (fired) fault_nth_ = 0;  // The injector disarmed itself.
    return fired;
  }

  void free_block(uint64_t pa) {
    Block b = live_[pa];
    uint64_t pages = uint64_t{1} << b.order;
    for (uint64_t k = 0; k < pages; ++k) {
      uint8_t* p = cpu(pa + k * kPage);
      uint64_t head, tail;
      std::memcpy(&head, p, sizeof(head));
      std::memcpy(&tail, p + kPage - sizeof(tail), sizeof(tail));
      FUZZ_CHECK(head == b.tag && tail == b.tag);  // Nobody wrote into an allocated block.
    }
    uint64_t before = pfa_.free_pages();
    FUZZ_CHECK(pfa_.free(PhysAddr(pa), b.order).ok());
    FUZZ_CHECK(pfa_.free_pages() == before + pages);
    for (uint64_t k = 0; k < pages; ++k) pages_[page_of(pa) + k] = kFree;
    live_.erase(pa);
    freed_.push_back({pa, b.order});
  }

  void free_live() {
    if (live_.empty()) return;
    auto it = live_.begin();
    std::advance(it, static_cast<long>(in_.pick(live_.size())));
    free_block(it->first);
  }

  void bad_free() {
    uint64_t pa;
    unsigned order;
    switch (in_.pick(4)) {
      case 0:  // Already freed.
        if (freed_.empty()) return;
        pa = freed_[in_.pick(freed_.size())].first;
        order = freed_[in_.pick(freed_.size())].second;
        break;
      case 1:  // Inside a live block.
        if (live_.empty()) return;
        pa = live_.begin()->first +
             in_.range(1, (uint64_t{1} << live_.begin()->second.order)) * kPage -
             (in_.boolean() ? 0 : 1);
        order = live_.begin()->second.order;
        break;
      case 2:  // A live block with the wrong order.
        if (live_.empty()) return;
        pa = live_.begin()->first;
        order = static_cast<unsigned>(in_.range(0, PageFrameAllocator::kMaxOrder + 2));
        break;
      default:  // Anywhere at all.
        pa = in_.boolean() ? in_.u64() : base_ + in_.range(0, kArenaPages * kPage);
        order = static_cast<unsigned>(in_.range(0, 12));
        break;
    }
    auto it = live_.find(pa);
    if (it != live_.end() && it->second.order == order) return;  // That would be a real free.
    uint64_t before = pfa_.free_pages();
    auto r = pfa_.free(PhysAddr(pa), order);
    FUZZ_CHECK(!r.ok() && r.code() == ErrorCode::kNotFound);
    FUZZ_CHECK(pfa_.free_pages() == before);
  }

  // Takes every block of one small order it can, then gives them all back: exhaustion paths.
  void alloc_free_all_of_one_order() {
    unsigned order = static_cast<unsigned>(in_.range(0, 4));
    std::vector<uint64_t> got;
    for (;;) {
      uint64_t hits = support::FaultInjector::hits(support::FaultSite::kPageAlloc);
      auto r = pfa_.alloc(order);
      bool injected = injected_since(hits);
      if (!r.ok()) {
        FUZZ_CHECK(r.code() == ErrorCode::kNoMemory || r.code() == ErrorCode::kDmaMaskNotMatch);
        if (!injected) FUZZ_CHECK(!could_allocate(order, ~0ull, kPage));
        break;
      }
      FUZZ_CHECK(!injected);
      size_t first = page_of(r->value());
      for (uint64_t k = 0; k < (uint64_t{1} << order); ++k) {
        FUZZ_CHECK(pages_[first + k] == kFree);
        pages_[first + k] = kUsed;
      }
      got.push_back(r->value());
    }
    for (uint64_t pa : got) {
      FUZZ_CHECK(pfa_.free(PhysAddr(pa), order).ok());
      for (uint64_t k = 0; k < (uint64_t{1} << order); ++k) pages_[page_of(pa) + k] = kFree;
    }
  }

  void check() {
    FUZZ_CHECK(pfa_.check_invariants());
    uint64_t free_pages = 0;
    for (uint8_t p : pages_) free_pages += p == kFree;
    FUZZ_CHECK(pfa_.free_pages() == free_pages);
  }

  FuzzInput& in_;
  uint64_t base_ = 0;
  std::vector<uint8_t> meta_;
  std::vector<uint8_t> pages_;
  uint64_t managed_ = 0;
  std::map<uint64_t, Block> live_;
  std::vector<std::pair<uint64_t, unsigned>> freed_;
  uint64_t fault_nth_ = 0;  // Armed kPageAlloc fault, 0 when none.
  PageFrameAllocator pfa_;
};

}  // namespace

extern "C" int LLVMFuzzerTestOneInput(const uint8_t* data, size_t size) {
  support::FaultInjector::disarm_all();
  FuzzInput in(data, size);
  Harness h(in);
  h.run();
  support::FaultInjector::disarm_all();
  return 0;
}
