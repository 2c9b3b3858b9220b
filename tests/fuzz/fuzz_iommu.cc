// libFuzzer target: random operation sequences through an IommuDomain (dmakit/iommu.h) on the host
// IOMMU model (arch/host/iommu_model.h), with a device doing DMA through the model's IOTLB.
//
// Each input builds a fresh domain with a small random I/O window (16 to 512 pages), strict or
// deferred invalidation, and drives: map_single of part of one of four buffers for a device with
// a random mask (28, 32 or 64 bits, or one below the window) and direction; scatter-gather lists
// of 1 to 4 pieces; unmap; alloc_coherent / dealloc_coherent; the device reading or writing a
// live mapping, or an address that holds no mapping; flush_deferred; arming the page-allocation
// fault point.
//
// Checked after every step, against a model of the live mappings:
//   - every DMA address lies in the window and under the device's mask, keeps the buffer's
//     offset in its page, and no two live mappings share an I/O page;
//   - the device reaches exactly what is mapped, with the direction's permission: a write into a
//     kToDevice mapping faults, a read of a kFromDevice one faults (the model has write-only
//     entries), an access to an address with no mapping faults (except, in deferred mode, a
//     range unmapped since the last flush, which may still be cached), and each fault is
//     recorded with its address;
//   - data the device writes reaches the CPU's buffer at unmap;
//   - failures: kNoMemory exactly when the window has no room under the mask (or a table page
//     could not be had), with nothing left mapped;
//   - accounting: live mappings, allocated I/O pages (the sum of the live ranges) and the misuse
//     checker's entries equal the model.
// At the end everything is released, the domain destroyed, and every page of the platform's
// allocator is free again.
#include <cstddef>
#include <cstdint>
#include <cstdio>
#include <cstring>
#include <memory>
#include <vector>

#include "arch/host/host_platform.h"
#include "arch/host/iommu_model.h"
#include "dmakit/dma_debug.h"
#include "dmakit/iommu.h"
#include "dmakit/support/fault_injection.h"
#include "tests/fuzz/common/fuzz_input.h"

namespace {

using support::FaultInjector;
using support::FaultSite;

constexpr uint64_t kPage = 4096;
constexpr size_t kRegions = 4;
constexpr size_t kRegionBytes = 64 * 1024;
constexpr size_t kMaxOps = 200;
constexpr uint32_t kDev = 0x10;
constexpr uint64_t kBase = 1ull << 20;

void print_sink(void*, const char* line) {
  std::fprintf(stderr, "%s\n", line);
}

struct World {
  std::unique_ptr<HostPlatform> plat;
  std::unique_ptr<HostIommu> unit;
  uint8_t* region[kRegions] = {};
  uint64_t baseline_free_pages = 0;
};

World& world() {
  static World* w = [] {
    auto* w = new World;
    HostPlatform::Options o;
    o.ram.push_back(PhysRange{PhysAddr(0x1'0000'0000), 64ull << 20});
    o.pools.push_back(HostPlatform::PoolSpec{1ull << 20, (1ull << 40) - 1});
    o.platform_coherent = true;
    w->plat = std::make_unique<HostPlatform>(o);
    w->unit = std::make_unique<HostIommu>(w->plat.get(), HostIommu::Options{});
    for (auto& r : w->region) r = w->plat->buffer_above(0, kRegionBytes);
    w->baseline_free_pages = w->plat->pfa().free_pages();
    DmaDebug::set_sink(&print_sink, nullptr);
    return w;
  }();
  return *w;
}

struct Live {
  DmaMapHandle h[4];
  size_t n = 0;  // Pieces (1 for map_single).
  uint64_t first = 0;
  uint64_t end = 0;  // I/O range [first, end), page aligned.
  DmaDirection dir = DmaDirection::kToDevice;
};

class Harness {
 public:
  explicit Harness(FuzzInput& in) : in_(in), w_(world()) {}

  void run() {
    IommuDomain::Config c;
    c.unit = w_.unit.get();
    c.domain_id = 1;
    c.platform = &w_.plat->op();
    c.deferred = in_.boolean();
    c.window_base = kBase;
    c.window_size = in_.range(16, 512) * kPage;
    c.num_cpus = 1;
    window_end_ = kBase + c.window_size;
    deferred_ = c.deferred;
    dom_ = std::make_unique<IommuDomain>();
    FUZZ_CHECK(dom_->init(c).ok());
    FUZZ_CHECK(dom_->attach(kDev).ok());
    drain();
    for (size_t op = 0; op < kMaxOps && !in_.done(); ++op) {
      step();
      check();
    }
    while (!live_.empty()) unmap(live_.size() - 1);
    for (const DmaHandle& h : coherent_) dom_->dealloc_coherent(h);
    coherent_.clear();
    FaultInjector::disarm_all();
    dom_->detach(kDev);
    FUZZ_CHECK(dom_->destroy().ok());
    drain();
    FUZZ_CHECK(DmaDebug::live_entries() == 0);
    FUZZ_CHECK(w_.plat->pfa().free_pages() == w_.baseline_free_pages);
  }

 private:
  uint64_t mask() {
    switch (in_.pick(4)) {
      case 0:
        return (1ull << 28) - 1;
      case 1:
        return 0xFFFF'FFFFull;
      case 2:
        return kBase - 1;  // Below the window: nothing reachable.
      default:
        return ~0ull;
    }
  }
  DmaDirection direction() { return static_cast<DmaDirection>(in_.pick(3)); }

  bool overlaps_live(uint64_t lo, uint64_t hi) const {
    for (const Live& l : live_) {
      if (lo < l.end && l.first < hi) return true;
    }
    return false;
  }

  void step() {
    switch (in_.pick(8)) {
      case 0:
      case 1:
        map_one();
        break;
      case 2:
        map_list();
        break;
      case 3:
        if (!live_.empty()) unmap(in_.pick(live_.size()));
        break;
      case 4:
        device_access_live();
        break;
      case 5:
        device_access_anywhere();
        break;
      case 6:
        coherent();
        break;
      default:
        if (in_.boolean()) {
          dom_->flush_deferred();
          pending_.clear();
        } else {
          FaultInjector::fail_nth(FaultSite::kPageAlloc, in_.range(1, 4));
        }
        break;
    }
  }

  // The I/O pages a mapping of these pieces needs, and whether the window could hold them under
  // `m` (an upper bound on success: fragmentation may still refuse).
  void record(Live& l, uint64_t m) {
    l.first = ~0ull;
    l.end = 0;
    for (size_t i = 0; i < l.n; ++i) {
      uint64_t a = l.h[i].dma_addr.value();
      FUZZ_CHECK(a >= kBase && a + l.h[i].size <= window_end_);
      FUZZ_CHECK(a + l.h[i].size - 1 <= m);
      FUZZ_CHECK((a & (kPage - 1)) ==
                     (reinterpret_cast<uintptr_t>(l.h[i].cpu_addr) & (kPage - 1)) ||
                 l.h[i].bounced());
      l.first = std::min(l.first, support::align_down(a, kPage));
      l.end = std::max(l.end, support::align_up(a + l.h[i].size, kPage));
    }
    FUZZ_CHECK(!overlaps_live(l.first, l.end));
  }

  void map_one() {
    uint8_t* r = w_.region[in_.pick(kRegions)];
    size_t off = in_.range(0, kRegionBytes - 1);
    size_t size = in_.range(1, kRegionBytes - off);
    uint64_t m = mask();
    DmaDirection dir = direction();
    DmaConstraints c;
    c.dma_mask = m;
    c.coherence = DmaCoherence::kCoherent;
    auto h = dom_->map_single(c, r + off, size, 0, dir);
    FaultInjector::disarm_all();
    if (!h.ok()) {
      FUZZ_CHECK(h.code() == ErrorCode::kNoMemory);
      return;
    }
    FUZZ_CHECK(m >= kBase);
    Live l;
    l.h[0] = *h;
    l.n = 1;
    l.dir = dir;
    record(l, m);
    live_.push_back(l);
  }

  void map_list() {
    size_t n = in_.range(1, 4);
    DmaMapHandle h[4];
    uint8_t* r = w_.region[in_.pick(kRegions)];
    size_t at = 0;
    for (size_t i = 0; i < n; ++i) {
      size_t room = kRegionBytes - at;
      if (room == 0) {
        n = i;
        break;
      }
      size_t size = in_.range(1, std::min<size_t>(room, 3 * kPage));
      h[i] = DmaMapHandle{};
      h[i].cpu_addr = r + at;
      h[i].size = size;
      at += size + in_.range(0, 64);
      if (at > kRegionBytes) at = kRegionBytes;
    }
    if (n == 0) return;
    uint64_t m = mask();
    DmaDirection dir = direction();
    DmaConstraints c;
    c.dma_mask = m;
    c.coherence = DmaCoherence::kCoherent;
    auto res = dom_->map_sg(c, h, n, 0, dir);
    FaultInjector::disarm_all();
    if (!res.ok()) {
      FUZZ_CHECK(res.code() == ErrorCode::kNoMemory);
      return;
    }
    Live l;
    for (size_t i = 0; i < n; ++i) l.h[i] = h[i];
    l.n = n;
    l.dir = dir;
    record(l, m);
    // Pieces that continue each other physically continue each other in I/O space.
    for (size_t i = 1; i < n; ++i) {
      auto* prev_end = static_cast<uint8_t*>(h[i - 1].cpu_addr) + h[i - 1].size;
      if (prev_end == h[i].cpu_addr) {
        FUZZ_CHECK(h[i].dma_addr.value() == h[i - 1].dma_addr.value() + h[i - 1].size);
      }
    }
    live_.push_back(l);
  }

  void unmap(size_t i) {
    Live l = live_[i];
    live_.erase(live_.begin() + static_cast<ptrdiff_t>(i));
    if (l.n == 1) {
      dom_->unmap_single(l.h[0]);
    } else {
      dom_->unmap_sg(l.h, l.n);
    }
    if (deferred_) {
      pending_.push_back(l);
    } else {
      // Strict: the device cannot reach the range any more, cached or not.
      uint8_t b = 0;
      FUZZ_CHECK(!w_.unit->device_read(kDev, l.first, &b, 1).ok());
      drain();
    }
  }

  void device_access_live() {
    if (live_.empty()) return;
    Live& l = live_[in_.pick(live_.size())];
    const DmaMapHandle& h = l.h[in_.pick(l.n)];
    bool write = in_.boolean();
    size_t off = in_.range(0, h.size - 1);
    size_t len = in_.range(1, h.size - off);
    bool allowed = write ? l.dir != DmaDirection::kToDevice : l.dir != DmaDirection::kFromDevice;
    std::vector<uint8_t> data(len);
    for (size_t k = 0; k < len; ++k) data[k] = static_cast<uint8_t>(k * 13 + 5);
    Result<void> r = write ? w_.unit->device_write(kDev, h.dma_addr.value() + off, data.data(), len)
                           : w_.unit->device_read(kDev, h.dma_addr.value() + off, data.data(), len);
    FUZZ_CHECK(r.ok() == allowed);
    if (!allowed) {
      FUZZ_CHECK(drain_expect(h.dma_addr.value() + off, write));
      return;
    }
    if (write && !h.bounced()) {
      // Coherent device: the CPU sees it at once (through the buffer itself).
      auto* cpu = static_cast<uint8_t*>(h.cpu_addr) + off;
      FUZZ_CHECK(std::memcmp(cpu, data.data(), len) == 0);
    }
  }

  void device_access_anywhere() {
    uint64_t iova = in_.range(0, window_end_ + 16 * kPage);
    uint64_t page = support::align_down(iova, kPage);
    if (overlaps_live(page, page + kPage) || dom_->page_table().lookup(page) != 0) return;
    bool maybe_cached = false;
    for (const Live& l : pending_) maybe_cached = maybe_cached || (page >= l.first && page < l.end);
    uint8_t b = 0;
    bool ok = w_.unit->device_read(kDev, iova, &b, 1).ok();
    if (!maybe_cached) {
      FUZZ_CHECK(!ok);
      FUZZ_CHECK(drain_expect(iova, false));
    } else {
      drain();
    }
  }

  void coherent() {
    if (!coherent_.empty() && in_.boolean()) {
      dom_->dealloc_coherent(coherent_.back());
      coherent_.pop_back();
      return;
    }
    uint64_t m = mask();
    DmaConstraints c;
    c.dma_mask = m;
    c.coherence = DmaCoherence::kCoherent;
    auto h = dom_->alloc_coherent(c, Layout{in_.range(1, 3 * kPage), 1});
    FaultInjector::disarm_all();
    if (!h.ok()) {
      FUZZ_CHECK(h.code() == ErrorCode::kNoMemory);
      return;
    }
    uint64_t a = h->dma_addr.value();
    FUZZ_CHECK(a >= kBase && a <= m && a < window_end_);
    for (size_t k = 0; k < h->layout.size; ++k) {
      FUZZ_CHECK(static_cast<uint8_t*>(h->cpu_addr)[k] == 0);
    }
    uint32_t v = 0x5A5A'1234;
    FUZZ_CHECK(w_.unit->device_write(kDev, a, &v, sizeof(v)).ok());
    FUZZ_CHECK(std::memcmp(h->cpu_addr, &v, sizeof(v)) == 0);
    coherent_.push_back(*h);
  }

  void check() {
    FUZZ_CHECK(dom_->live_mappings() == live_pieces() + coherent_.size());
    uint64_t pages = 0;
    for (const Live& l : live_) {
      uint64_t span = l.end - l.first;
      pages += uint64_t{1} << IovaAllocator::order_of(span);
    }
    for (const DmaHandle& h : coherent_) pages += uint64_t{1} << h.order;
    if (deferred_) {
      // Ranges waiting for the batched invalidation are still allocated.
      FUZZ_CHECK(dom_->iova_allocator().allocated_pages() >= pages);
    } else {
      FUZZ_CHECK(dom_->iova_allocator().allocated_pages() == pages);
    }
    // A coherent allocation is tracked twice: the domain's mapping and the platform's pages.
    FUZZ_CHECK(DmaDebug::live_entries() == live_pieces() + 2 * coherent_.size());
    FUZZ_CHECK(w_.unit->pending_faults() == 0);
  }
  size_t live_pieces() const {
    size_t n = 0;
    for (const Live& l : live_) n += l.n;
    return n;
  }

  static void collect(void* ctx, const IommuFault& f) {
    static_cast<std::vector<IommuFault>*>(ctx)->push_back(f);
  }
  void drain() {
    std::vector<IommuFault> v;
    w_.unit->drain_faults(&collect, &v);
  }
  bool drain_expect(uint64_t iova, bool write) {
    std::vector<IommuFault> v;
    w_.unit->drain_faults(&collect, &v);
    return v.size() == 1 && v[0].iova == iova && v[0].write == write && v[0].device_id == kDev;
  }

  FuzzInput& in_;
  World& w_;
  std::unique_ptr<IommuDomain> dom_;
  uint64_t window_end_ = 0;
  bool deferred_ = false;
  std::vector<Live> live_;
  std::vector<Live> pending_;
  std::vector<DmaHandle> coherent_;
};

}  // namespace

extern "C" int LLVMFuzzerTestOneInput(const uint8_t* data, size_t size) {
  FaultInjector::disarm_all();
  FuzzInput in(data, size);
  Harness h(in);
  h.run();
  FaultInjector::disarm_all();
  return 0;
}
