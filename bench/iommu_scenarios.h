// The IOMMU layer's measured situations (issue 14, Performance), on the host model
// (arch/host/iommu_model.h), for the callgrind driver (bench/ir_count.cc). Like the scenarios of
// bench/scenarios.h, each builds its state uninstrumented in the constructor and run(n) keeps it.
#pragma once

#include <cstdint>
#include <memory>
#include <vector>

#include "arch/host/host_platform.h"
#include "arch/host/iommu_model.h"
#include "bench/linux_iova.h"
#include "bench/scenarios.h"
#include "dmakit/iommu.h"

namespace bench {

// The I/O address space of these scenarios: 16384 pages (64 MiB) from 1 MiB, under a 28-bit
// device's mask.
inline constexpr uint64_t kIovaBase = 1 * kMiB;
inline constexpr uint64_t kIovaPages = 16384;
inline constexpr uint64_t kIovaLimit = 256 * kMiB - 1;

// An IommuDomain (strict) on the host IOMMU, its window filled to `occupancy` with single-page
// streaming mappings at scattered addresses (the whole window mapped, then a random selection
// unmapped). run(n): n times, map a 4 KiB kToDevice buffer and unmap it (DmaOp::map_single +
// unmap_single, through the DmaOp interface as a driver calls them).
class IommuMapUnmap {
 public:
  IommuMapUnmap(double occupancy, uint64_t seed);
  ~IommuMapUnmap();
  void run(uint64_t ops);
  double occupancy() const;

 private:
  std::unique_ptr<HostPlatform> plat_;
  std::unique_ptr<HostIommu> unit_;
  IommuDomain dom_;
  DmaOp* op_;
  DmaConstraints dev_;
  uint8_t* buf_;
  std::vector<DmaMapHandle> background_;
};

// The IOVA allocator alone over the same window, filled to `occupancy` with single pages the same
// way. run(n): n times, allocate `pages` pages under the 28-bit limit and free them. For more
// than 32 pages (past the per-CPU caches) one range of that size is allocated before the
// background fill, so that a place for it exists at any occupancy, and run() frees and
// allocates it again.
class IovaPair {
 public:
  IovaPair(double occupancy, uint64_t pages, uint64_t seed);
  ~IovaPair();
  void run(uint64_t ops);
  double occupancy() const;

 private:
  std::unique_ptr<HostPlatform> plat_;
  IovaAllocator iova_;
  uint64_t bytes_;
  uint64_t ring_ = 0;
  std::vector<uint64_t> background_;
};

// The same with the model of Linux's allocator (bench/linux_iova.h): alloc_iova_fast /
// free_iova_fast.
class LinuxIovaPair {
 public:
  LinuxIovaPair(double occupancy, uint64_t pages, uint64_t seed);
  void run(uint64_t ops);
  double occupancy() const;

 private:
  LinuxIova iova_;
  uint64_t pages_;
  uint64_t ring_ = 0;
  std::vector<uint64_t> background_;
};

}  // namespace bench
