#include "bench/scenarios.h"

#include <sys/mman.h>

#include <cmath>
#include <cstdio>
#include <cstdlib>

namespace bench {
namespace {

[[noreturn]] void die(const char* what) {
  std::fprintf(stderr, "bench: %s\n", what);
  std::exit(2);
}

constexpr uint64_t kPage = PageFrameAllocator::kPageSize;
// 4 MiB aligned, so that the 4 MiB regions of PfaOrder9Frag are naturally aligned blocks.
constexpr uint64_t kPfaRamBase = 1 * kGiB;

// Asks for transparent huge pages over the simulated RAM: a kernel's direct map uses large pages
// too, and filling a GiB of simulated RAM page by page is otherwise dominated by the host's page
// faults. Only the time-based figures can change with this; instruction counts cannot.
void prefer_huge_pages(HostPlatform* plat) {
  (void)madvise(plat->phys_to_virt(plat->arena_phys()), plat->arena_size(), MADV_HUGEPAGE);
}

std::unique_ptr<PfaMemory> pfa_platform(uint64_t base, uint64_t bytes) {
  return std::make_unique<PfaMemory>(base, bytes);
}

double used_fraction(const PageFrameAllocator& pfa) {
  PageFrameAllocator::Stats s = pfa.stats();
  return 1.0 - static_cast<double>(s.free_pages) / static_cast<double>(s.managed_pages);
}

// Takes every page of the allocator as a single page, in the allocator's order.
std::vector<PhysAddr> take_all_pages(PageFrameAllocator* pfa) {
  std::vector<PhysAddr> all;
  all.reserve(pfa->free_pages());
  while (true) {
    auto r = pfa->alloc(0);
    if (!r.ok()) break;
    all.push_back(*r);
  }
  if (pfa->free_pages() != 0) die("could not take every page");
  return all;
}

void free_or_die(PageFrameAllocator* pfa, PhysAddr a, unsigned order) {
  if (!pfa->free(a, order).ok()) die("free failed");
}

// What the stand-in does with a block it is handed back: nothing, but the load stays.
inline void benchmark_keep(uint64_t v) {
  asm volatile("" : : "r"(v));
}

}  // namespace

// ---- PfaMemory ----

PfaMemory::PfaMemory(uint64_t base, uint64_t bytes) {
  constexpr size_t kHuge = 2 * kMiB;
  PhysRange ram{PhysAddr(base), bytes};
  size_t need = PageFrameAllocator::metadata_size(support::Span<const PhysRange>(&ram, 1));
  // Whole huge pages, aligned: one more than needed, to align the start.
  meta_map_bytes_ = (need + kHuge - 1) / kHuge * kHuge + kHuge;
  meta_map_ = mmap(nullptr, meta_map_bytes_, PROT_READ | PROT_WRITE,
                   MAP_PRIVATE | MAP_ANONYMOUS | MAP_NORESERVE, -1, 0);
  if (meta_map_ == MAP_FAILED) die("mmap of the allocator metadata failed");
  auto at = (reinterpret_cast<uintptr_t>(meta_map_) + kHuge - 1) & ~uintptr_t{kHuge - 1};
  (void)madvise(reinterpret_cast<void*>(at), meta_map_bytes_ - kHuge, MADV_HUGEPAGE);
  pfa_.set_poisoning(false);
  // The direct-map offset is never used: nothing here reaches a page through it.
  auto r =
      pfa_.init(support::Span<const PhysRange>(&ram, 1), {}, 0, reinterpret_cast<void*>(at), need);
  if (!r.ok()) die("page-frame allocator init failed");
}

PfaMemory::~PfaMemory() {
  munmap(meta_map_, meta_map_bytes_);
}

// ---- PfaOrder0Ring ----

PfaOrder0Ring::PfaOrder0Ring(uint64_t ram_bytes, uint64_t seed)
    : plat_(pfa_platform(kPfaRamBase, ram_bytes)), pfa_(&plat_->pfa()) {
  Rng rng(seed);
  held_ = take_all_pages(pfa_);
  total_pages_ = held_.size();
  if (total_pages_ < 2 * kRing) die("memory too small for the ring");
  shuffle(held_, rng);
  ring_.assign(held_.end() - static_cast<ptrdiff_t>(kRing), held_.end());
  held_.resize(held_.size() - kRing);
}

void PfaOrder0Ring::set_occupancy(double occupancy) {
  auto want = static_cast<uint64_t>(std::llround(occupancy * static_cast<double>(total_pages_)));
  uint64_t background = want > kRing ? want - kRing : 0;
  if (background > held_.size()) die("set_occupancy can only lower the occupancy");
  while (held_.size() > background) {
    free_or_die(pfa_, held_.back(), 0);
    held_.pop_back();
  }
  run(4 * kRing);  // The ring now holds pages the allocator chose in this state.
}

PfaOrder0Ring::~PfaOrder0Ring() {
  for (PhysAddr a : ring_) free_or_die(pfa_, a, 0);
  for (PhysAddr a : held_) free_or_die(pfa_, a, 0);
}

void PfaOrder0Ring::run(uint64_t pairs) {
  for (uint64_t i = 0; i < pairs; ++i) {
    auto r = pfa_->alloc(0);
    if (!r.ok()) die("order-0 alloc failed");
    PhysAddr oldest = ring_[head_];
    ring_[head_] = *r;
    head_ = (head_ + 1) & (kRing - 1);
    if (!pfa_->free(oldest, 0).ok()) die("order-0 free failed");
  }
}

double PfaOrder0Ring::occupancy() const {
  return used_fraction(*pfa_);
}

// ---- PfaMixed ----

PfaMixed::PfaMixed(double target, uint64_t ram_bytes, uint64_t seed, unsigned max_order,
                   bool stand_in)
    : plat_(pfa_platform(kPfaRamBase, ram_bytes)),
      pfa_(&plat_->pfa()),
      base_(kPfaRamBase),
      rng_(seed),
      orders_(max_order + 1) {
  if (max_order >= kStandInBit || (ram_bytes / kPage) >= kStandInPages) {
    die("mixed: too many orders or pages for the live-block table's entries");
  }
  uint64_t total = pfa_->free_pages();
  target_pages_ = static_cast<uint64_t>(std::llround(target * static_cast<double>(total)));
  slack_pages_ = total / 50;
  // Fill to the target with random orders, then let the random mix run until it is a steady state.
  while (used_pages_ < target_pages_) {
    auto order = static_cast<unsigned>(rng_.below(orders_));
    auto r = pfa_->alloc(order);
    if (!r.ok()) die("mixed fill failed");
    live_.push_back(make_block(*r, order, false));
    used_pages_ += 1ull << order;
  }
  for (size_t& v : ahead_) v = draw_victim();
  run(200'000);
  allocs_ = frees_ = failures_ = 0;
  // The stand-in's fake addresses lie above the simulated RAM.
  stand_in_ = stand_in;
  stand_in_next_ = 0;
}

size_t PfaMixed::draw_victim() {
  size_t k = index_below(rng_.next(), live_.size());
  __builtin_prefetch(&live_[k], 1);
  return k;
}

size_t PfaMixed::next_victim() {
  size_t k = ahead_[ahead_head_];
  // Drawn when the table was up to kAhead entries longer: past its end now (rarely, at 16 GiB
  // about once in 20,000 frees), the last entry is the victim.
  if (k >= live_.size()) k = live_.size() - 1;
  ahead_[ahead_head_] = draw_victim();
  ahead_head_ = (ahead_head_ + 1) % kAhead;
  return k;
}

PfaMixed::Block PfaMixed::make_block(PhysAddr a, unsigned order, bool stand_in) const {
  uint64_t page = (a.value() - base_) / kPage;
  return static_cast<Block>((page << kPageNumberShift) | (stand_in ? kStandInBit : 0) | order);
}

PhysAddr PfaMixed::block_addr(Block b) const {
  return PhysAddr(base_ + (uint64_t{b >> kPageNumberShift} * kPage));
}

PfaMixed::~PfaMixed() {
  for (Block b : live_) {
    if ((b & kStandInBit) == 0) free_or_die(pfa_, block_addr(b), block_order(b));
  }
}

void PfaMixed::run(uint64_t ops) {
  if (stand_in_) {
    run_loop<true>(ops);
  } else {
    run_loop<false>(ops);
  }
}

template <bool kStandIn>
void PfaMixed::run_loop(uint64_t ops) {
  for (uint64_t i = 0; i < ops; ++i) {
    bool alloc;
    if (live_.empty() || used_pages_ + slack_pages_ < target_pages_) {
      alloc = true;
    } else if (used_pages_ > target_pages_ + slack_pages_) {
      alloc = false;
    } else {
      alloc = (rng_.next() & 1) != 0;
    }
    if (alloc) {
      auto order = static_cast<unsigned>(rng_.below(orders_));
      auto r = [&]() -> Result<PhysAddr> {
        if constexpr (kStandIn) {
          PhysAddr a(base_ + (stand_in_next_ * kPage));
          stand_in_next_ = (stand_in_next_ + (1ull << order)) & (kStandInPages - 1);
          return a;
        } else {
          return pfa_->alloc(order);
        }
      }();
      ++allocs_;
      if (r.ok()) {
        live_.push_back(make_block(*r, order, kStandIn));
        used_pages_ += 1ull << order;
      } else {
        ++failures_;
      }
    } else {
      size_t k = next_victim();
      Block b = live_[k];
      live_[k] = live_.back();
      live_.pop_back();
      unsigned order = block_order(b);
      if (kStandIn) {
        benchmark_keep(block_addr(b).value());
      } else if (!pfa_->free(block_addr(b), order).ok()) {
        die("mixed free failed");
      }
      ++frees_;
      used_pages_ -= 1ull << order;
    }
  }
}

double PfaMixed::occupancy() const {
  return used_fraction(*pfa_);
}

// ---- PfaOrder9Frag ----

PfaOrder9Frag::PfaOrder9Frag(uint64_t ram_bytes, uint64_t seed)
    : plat_(pfa_platform(kPfaRamBase, ram_bytes)), pfa_(&plat_->pfa()) {
  constexpr uint64_t kRegion = 4 * kMiB;
  constexpr uint64_t kPagesPerRegion = kRegion / kPage;
  if (ram_bytes % kRegion != 0) die("order-9 scenario needs whole 4 MiB regions");
  Rng rng(seed);
  std::vector<PhysAddr> all = take_all_pages(pfa_);
  if (all.size() != ram_bytes / kPage) die("unexpected page count");
  size_t regions = static_cast<size_t>(ram_bytes / kRegion);
  std::vector<size_t> order(regions);
  for (size_t i = 0; i < regions; ++i) order[i] = i;
  shuffle(order, rng);
  std::vector<bool> whole(regions, false);
  for (size_t i = 0; i < regions / 8; ++i) whole[order[i]] = true;
  std::vector<uint64_t> pages(kPagesPerRegion);
  for (size_t r = 0; r < regions; ++r) {
    uint64_t base = kPfaRamBase + r * kRegion;
    for (uint64_t p = 0; p < kPagesPerRegion; ++p) pages[p] = base + p * kPage;
    uint64_t keep = 0;
    if (!whole[r]) {
      shuffle(pages, rng);
      keep = kPagesPerRegion / 2;
    }
    for (uint64_t p = 0; p < kPagesPerRegion; ++p) {
      if (p < keep) {
        held_.push_back(PhysAddr(pages[p]));
      } else {
        free_or_die(pfa_, PhysAddr(pages[p]), 0);
      }
    }
  }
  for (size_t i = 0; i < kRing; ++i) {
    auto a = pfa_->alloc(9);
    if (!a.ok()) die("order-9 ring setup failed");
    ring_.push_back(*a);
  }
  run(4 * kRing);
}

PfaOrder9Frag::~PfaOrder9Frag() {
  for (PhysAddr a : ring_) free_or_die(pfa_, a, 9);
  for (PhysAddr a : held_) free_or_die(pfa_, a, 0);
}

void PfaOrder9Frag::run(uint64_t pairs) {
  for (uint64_t i = 0; i < pairs; ++i) {
    auto r = pfa_->alloc(9);
    if (!r.ok()) die("order-9 alloc failed");
    PhysAddr oldest = ring_[head_];
    ring_[head_] = *r;
    head_ = (head_ + 1) % kRing;
    if (!pfa_->free(oldest, 9).ok()) die("order-9 free failed");
  }
}

double PfaOrder9Frag::occupancy() const {
  return used_fraction(*pfa_);
}

// ---- PfaOrder9Masked ----

PfaOrder9Masked::PfaOrder9Masked(bool masked)
    : plat_(pfa_platform(kLimit + 1 - 256 * kMiB, 2560 * kMiB)),
      pfa_(&plat_->pfa()),
      limit_(masked ? kLimit : ~0ull) {
  for (size_t i = 0; i < kRing; ++i) {
    auto a = pfa_->alloc(9, limit_);
    if (!a.ok()) die("masked ring setup failed");
    ring_.push_back(*a);
  }
  run(4 * kRing);
}

PfaOrder9Masked::~PfaOrder9Masked() {
  free_batch();
  for (PhysAddr a : ring_) free_or_die(pfa_, a, 9);
}

void PfaOrder9Masked::run(uint64_t pairs) {
  for (uint64_t i = 0; i < pairs; ++i) {
    auto r = pfa_->alloc(9, limit_);
    if (!r.ok()) die("order-9 alloc failed");
    if (r->value() + (kPage << 9) - 1 > limit_) die("order-9 block above the limit");
    PhysAddr oldest = ring_[head_];
    ring_[head_] = *r;
    head_ = (head_ + 1) % kRing;
    if (!pfa_->free(oldest, 9).ok()) die("order-9 free failed");
  }
}

void PfaOrder9Masked::alloc_batch(size_t n) {
  for (size_t i = 0; i < n; ++i) {
    auto r = pfa_->alloc(9, limit_);
    if (!r.ok()) die("order-9 alloc failed");
    batch_.push_back(*r);
  }
}

void PfaOrder9Masked::free_batch() {
  for (PhysAddr a : batch_) free_or_die(pfa_, a, 9);
  batch_.clear();
}

double PfaOrder9Masked::free_above_limit() const {
  PageFrameAllocator::Stats s = pfa_->stats();
  uint64_t above = 0;
  for (unsigned b = 0; b < PageFrameAllocator::kNumBands; ++b) {
    uint64_t band_start = b == 0 ? 0 : 1ull << (PageFrameAllocator::kBandShift - 1 + b);
    if (band_start > kLimit) above += s.free_pages_per_band[b];
  }
  return static_cast<double>(above) / static_cast<double>(s.free_pages);
}

// ---- BounceRing ----

namespace {
constexpr size_t kMinMapping = 2 * kKiB;
constexpr size_t kMaxMapping = 64 * kKiB;
}  // namespace

size_t BounceRing::random_size() {
  return kMinMapping + static_cast<size_t>(rng_.below(kMaxMapping - kMinMapping + 1));
}

BounceRing::BounceRing(double target_occupancy, size_t size, DmaDirection dir, uint64_t seed,
                       unsigned cpu_caches)
    : rng_(seed), dir_(dir), size_(size) {
  HostPlatform::Options o;
  // 512 MiB of RAM at physical 0; the pool takes the top 64 MiB under the device's 256 MiB
  // limit, the buffers come from above it. (RAM starts at 0 rather than near 4 GiB because
  // KernelDmaOp::virt_to_phys rejects a direct-map offset that wraps, which it does when the
  // simulated RAM is mapped at a host address below its physical address, as under valgrind.)
  o.ram.push_back(PhysRange{PhysAddr(0), 512 * kMiB});
  o.pools.push_back(HostPlatform::PoolSpec{kPoolBytes, kDeviceLimit});
  o.platform_coherent = true;
  // Per-CPU slot caches sized for a 4-CPU machine by default: each CPU may keep 256 slots
  // (512 KiB); the kernel turns them on (testkernel/kernel_main.cc).
  o.cpu_caches = cpu_caches;
  plat_ = std::make_unique<HostPlatform>(o);
  prefer_huge_pages(plat_.get());
  op_ = &plat_->op();
  pool_ = &plat_->pool(0);
  dev_.dma_mask = kDeviceLimit;
  dev_.coherence = DmaCoherence::kCoherent;
  dev_.name = "bench-28bit";

  background_src_ = plat_->buffer_above(kDeviceLimit + 1, kMaxMapping);
  for (size_t i = 0; i < kRing; ++i) {
    sources_.push_back(plat_->buffer_above(kDeviceLimit + 1, size));
  }

  BouncePool::Stats st = pool_->stats();
  auto target =
      static_cast<uint64_t>(std::llround(target_occupancy * static_cast<double>(st.total_slots)));
  auto top_up = [&] {
    while (pool_->stats().used_slots < target) {
      auto h = op_->map_single(dev_, background_src_, random_size(), 0, DmaDirection::kToDevice);
      if (!h.ok()) break;  // Fragmented: no room for this size right now.
      background_.push_back(*h);
    }
  };
  // The measured ring first, then the background up to the target (ring included), so that the
  // ring's unmap-then-map always has room: a fragmented pool at 95% may have no free 64 KiB run
  // for a newcomer, which is a failure to map, not a cost to measure.
  for (size_t i = 0; i < kRing; ++i) ring_.push_back(map_or_die(sources_[i], size_));
  uint64_t ring_slots = pool_->stats().used_slots;
  top_up();
  // Age the pool: as many random replacements as there are mappings.
  size_t n = background_.size();
  for (size_t k = 0; k < n && !background_.empty(); ++k) {
    size_t i = static_cast<size_t>(rng_.below(background_.size()));
    op_->unmap_single(background_[i]);
    background_[i] = background_.back();
    background_.pop_back();
    top_up();
  }
  background_occupancy_ = static_cast<double>(pool_->stats().used_slots - ring_slots) /
                          static_cast<double>(st.total_slots);
  run(16 * kRing);
}

BounceRing::~BounceRing() {
  for (const DmaMapHandle& h : ring_) op_->unmap_single(h);
  for (const DmaMapHandle& h : background_) op_->unmap_single(h);
  if (pool_->stats().used_slots != 0) die("bounce slots leaked");
}

// Reports a map_single that failed or did not bounce, and exits.
[[noreturn, gnu::noinline]] void bad_bounced_map(const Result<DmaMapHandle>& r, uint8_t* buf,
                                                 size_t size) {
  if (!r.ok()) {
    std::fprintf(stderr, "bench: map_single of %zu bytes at %p: error %d\n", size,
                 static_cast<void*>(buf), static_cast<int>(r.error().code));
    die("bounced map_single failed");
  }
  die("mapping was expected to bounce");
}

DmaMapHandle BounceRing::map_or_die(uint8_t* buf, size_t size) {
  auto r = op_->map_single(dev_, buf, size, 0, dir_);
  if (!r.ok() || !r->bounced()) bad_bounced_map(r, buf, size);
  return *r;
}

void BounceRing::run(uint64_t ops) {
  // What a driver's completion-and-resubmit path does: unmap the finished buffer, map it again
  // and keep the new handle in place of the old one (with map_or_die's checks).
  for (uint64_t i = 0; i < ops; ++i) {
    DmaMapHandle& h = ring_[head_];
    op_->unmap_single(h);
    auto r = op_->map_single(dev_, sources_[head_], size_, 0, dir_);
    if (!r.ok() || !r->bounced()) [[unlikely]] {
      bad_bounced_map(r, sources_[head_], size_);
    }
    h = *r;
    head_ = (head_ + 1) % kRing;
  }
}

void BounceRing::run_churn(uint64_t ops) {
  for (uint64_t k = 0; k < ops; ++k) {
    size_t i = static_cast<size_t>(rng_.below(background_.size()));
    size_t old_size = background_[i].size;
    op_->unmap_single(background_[i]);
    auto h = op_->map_single(dev_, background_src_, random_size(), 0, DmaDirection::kToDevice);
    if (h.ok()) {
      background_[i] = *h;
      continue;
    }
    ++churn_misses_;
    auto again = op_->map_single(dev_, background_src_, old_size, 0, DmaDirection::kToDevice);
    if (!again.ok()) die("churn: the size just unmapped did not fit again");
    background_[i] = *again;
  }
}

void BounceRing::record(uint64_t ops, std::vector<Placement>* out) {
  for (uint64_t i = 0; i < ops; ++i) {
    op_->unmap_single(ring_[head_]);
    ring_[head_] = map_or_die(sources_[head_], size_);
    out->push_back(Placement{sources_[head_], static_cast<uint8_t*>(ring_[head_].bounce_cpu)});
    head_ = (head_ + 1) % kRing;
  }
}

double BounceRing::occupancy() const {
  BouncePool::Stats st = pool_->stats();
  return static_cast<double>(st.used_slots) / static_cast<double>(st.total_slots);
}

// ---- DirectMap ----

DirectMap::DirectMap() {
  HostPlatform::Options o = HostPlatform::default_options();
  o.ram[0].base = PhysAddr(0);  // See BounceRing: keeps the direct-map offset from wrapping.
  plat_ = std::make_unique<HostPlatform>(o);
  op_ = &plat_->op();
  dev_.dma_mask = ~0ull;
  dev_.coherence = DmaCoherence::kCoherent;
  dev_.name = "bench-64bit";
  buf_ = plat_->buffer_above(0, 4096);
  run(16);
}

DirectMap::~DirectMap() = default;

void DirectMap::run(uint64_t ops) {
  for (uint64_t i = 0; i < ops; ++i) {
    auto h = op_->map_single(dev_, buf_, 4096, 0, DmaDirection::kToDevice);
    if (!h.ok() || h->bounced()) die("direct map_single failed");
    op_->unmap_single(*h);
  }
}

// ---- Metadata ----

double pfa_metadata_fraction_16g(uint64_t* metadata_bytes, uint64_t* managed_bytes) {
  PhysRange ram{PhysAddr(4 * kGiB), 16 * kGiB};
  size_t meta = PageFrameAllocator::metadata_size(support::Span<const PhysRange>(&ram, 1));
  HostPlatform::Options o;
  o.ram.push_back(ram);
  HostPlatform plat(o);
  PageFrameAllocator::Stats s = plat.pfa().stats();
  *metadata_bytes = meta + sizeof(PageFrameAllocator);
  *managed_bytes = s.managed_pages * kPage;
  if (s.metadata_bytes != meta || *managed_bytes != ram.size) return -1.0;
  return static_cast<double>(*metadata_bytes) / static_cast<double>(*managed_bytes);
}

}  // namespace bench
