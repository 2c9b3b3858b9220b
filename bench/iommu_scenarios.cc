// The IOMMU scenarios: see bench/iommu_scenarios.h.
#include "bench/iommu_scenarios.h"

#include <cstdio>
#include <cstdlib>

namespace bench {

namespace {

[[noreturn]] void fail(const char* what) {
  std::fprintf(stderr, "bench: %s\n", what);
  std::exit(1);
}

HostPlatform::Options iommu_platform() {
  HostPlatform::Options o;
  // RAM at physical 0, as the other scenarios (see BounceRing): no bounce pool needed.
  o.ram.push_back(PhysRange{PhysAddr(0), 256 * kMiB});
  o.platform_coherent = true;
  return o;
}

}  // namespace

// ---- IommuMapUnmap ----

IommuMapUnmap::IommuMapUnmap(double occupancy, uint64_t seed) {
  plat_ = std::make_unique<HostPlatform>(iommu_platform());
  unit_ = std::make_unique<HostIommu>(plat_.get(), HostIommu::Options{});
  IommuDomain::Config c;
  c.unit = unit_.get();
  c.domain_id = 1;
  c.platform = &plat_->op();
  c.window_base = kIovaBase;
  c.window_size = kIovaPages * 4096;
  c.num_cpus = 1;
  if (!dom_.init(c).ok()) fail("IommuDomain::init failed");
  if (!dom_.attach(0x10).ok()) fail("attach failed");
  op_ = &dom_;
  dev_.dma_mask = kIovaLimit;
  dev_.coherence = DmaCoherence::kCoherent;
  dev_.name = "bench-iommu-28bit";
  buf_ = plat_->buffer_above(0, 4096);
  // The whole window, then a random selection given back down to the occupancy (leaving room for
  // the measured mapping).
  for (;;) {
    auto h = op_->map_single(dev_, buf_, 4096, 0, DmaDirection::kToDevice);
    if (!h.ok()) break;
    background_.push_back(*h);
  }
  Rng rng(seed);
  shuffle(background_, rng);
  auto keep = static_cast<size_t>(occupancy * static_cast<double>(kIovaPages));
  if (keep >= background_.size()) keep = background_.size() - 1;
  while (background_.size() > keep) {
    op_->unmap_single(background_.back());
    background_.pop_back();
  }
  dom_.iova_allocator().flush_caches();
  run(64);
}

IommuMapUnmap::~IommuMapUnmap() {
  for (const DmaMapHandle& h : background_) op_->unmap_single(h);
  dom_.detach(0x10);
  if (!dom_.destroy().ok()) fail("IommuDomain::destroy failed");
  plat_->release_buffer(buf_);
}

void IommuMapUnmap::run(uint64_t ops) {
  for (uint64_t i = 0; i < ops; ++i) {
    auto h = op_->map_single(dev_, buf_, 4096, 0, DmaDirection::kToDevice);
    if (!h.ok()) fail("iommu map_single failed");
    op_->unmap_single(*h);
  }
}

double IommuMapUnmap::occupancy() const {
  return static_cast<double>(background_.size() + 1) / static_cast<double>(kIovaPages);
}

// ---- IovaPair ----

IovaPair::IovaPair(double occupancy, uint64_t pages, uint64_t seed) : bytes_(pages * 4096) {
  plat_ = std::make_unique<HostPlatform>(iommu_platform());
  IovaAllocator::Config c;
  c.base = kIovaBase;
  c.end = kIovaBase + kIovaPages * 4096;
  c.pfa = &plat_->pfa();
  c.num_cpus = 1;
  if (!iova_.init(c).ok()) fail("IovaAllocator::init failed");
  bool ringed = pages > 32;
  if (ringed) {
    auto r = iova_.alloc(bytes_, kIovaLimit);
    if (!r.ok()) fail("ring range");
    ring_ = *r;
  }
  for (;;) {
    auto a = iova_.alloc(4096, kIovaLimit);
    if (!a.ok()) break;
    background_.push_back(*a);
  }
  Rng rng(seed);
  shuffle(background_, rng);
  auto keep = static_cast<size_t>(occupancy * static_cast<double>(kIovaPages));
  size_t reserve = ringed ? pages : 1;
  if (keep + reserve > kIovaPages) keep = kIovaPages - reserve;
  while (background_.size() > keep) {
    iova_.free(background_.back(), 4096);
    background_.pop_back();
  }
  iova_.flush_caches();
  run(64);
}

IovaPair::~IovaPair() {
  for (uint64_t a : background_) iova_.free(a, 4096);
  if (ring_ != 0) iova_.free(ring_, bytes_);
  if (!iova_.destroy().ok()) fail("IovaAllocator::destroy failed");
}

void IovaPair::run(uint64_t ops) {
  if (ring_ != 0) {
    for (uint64_t i = 0; i < ops; ++i) {
      iova_.free(ring_, bytes_);
      auto a = iova_.alloc(bytes_, kIovaLimit);
      if (!a.ok()) fail("iova ring alloc failed");
      ring_ = *a;
    }
    return;
  }
  for (uint64_t i = 0; i < ops; ++i) {
    auto a = iova_.alloc(bytes_, kIovaLimit);
    if (!a.ok()) fail("iova alloc failed");
    iova_.free(*a, bytes_);
  }
}

double IovaPair::occupancy() const {
  return static_cast<double>(iova_.allocated_pages()) / static_cast<double>(kIovaPages);
}

// ---- LinuxIovaPair ----

LinuxIovaPair::LinuxIovaPair(double occupancy, uint64_t pages, uint64_t seed)
    : iova_(kIovaBase / 4096, kIovaBase / 4096 + kIovaPages), pages_(pages) {
  const uint64_t limit_pfn = kIovaBase / 4096 + kIovaPages - 1;
  bool ringed = pages > 32;
  if (ringed) {
    ring_ = iova_.alloc_fast(pages, limit_pfn);
    if (ring_ == 0) fail("linux ring range");
  }
  for (;;) {
    uint64_t a = iova_.alloc_tree(1, limit_pfn);
    if (a == 0) break;
    background_.push_back(a);
  }
  Rng rng(seed);
  shuffle(background_, rng);
  auto keep = static_cast<size_t>(occupancy * static_cast<double>(kIovaPages));
  size_t reserve = ringed ? pages : 1;
  if (keep + reserve > kIovaPages) keep = kIovaPages - reserve;
  while (background_.size() > keep) {
    iova_.free_tree(background_.back());
    background_.pop_back();
  }
  run(64);
}

void LinuxIovaPair::run(uint64_t ops) {
  const uint64_t limit_pfn = kIovaBase / 4096 + kIovaPages - 1;
  if (ring_ != 0) {
    for (uint64_t i = 0; i < ops; ++i) {
      iova_.free_fast(ring_, pages_);
      ring_ = iova_.alloc_fast(pages_, limit_pfn);
      if (ring_ == 0) fail("linux ring alloc failed");
    }
    return;
  }
  for (uint64_t i = 0; i < ops; ++i) {
    uint64_t a = iova_.alloc_fast(pages_, limit_pfn);
    if (a == 0) fail("linux iova alloc failed");
    iova_.free_fast(a, pages_);
  }
}

double LinuxIovaPair::occupancy() const {
  return static_cast<double>(iova_.tree_nodes()) / static_cast<double>(kIovaPages);
}

}  // namespace bench
