// HostIommu: a model of one hardware IOMMU (an IommuUnit) for the host tests, the fuzzers and the
// benchmarks. It has its own I/O page-table entry format, walks the tables the generic layer
// builds (through the simulated machine's direct map), caches every translation it walks in an
// IOTLB until it is invalidated, and records faults the way a driver's event queue would.
//
// The IOTLB is direct-mapped (Options::iotlb_entries entries, indexed by domain and I/O page): a
// translation stays cached until invalidate() removes it or another translation takes its entry.
// So an unmap whose invalidation is skipped leaves the device able to reach the old page, and a
// test that unmaps and then accesses the same address sees it.
//
// Entry format (HostIommu::kFormat): bit 0 valid, bit 1 table (non-leaf), bit 2 the device may
// read, bit 3 it may write, bits 12..51 the address. Options::write_only = false models a
// hardware without write-only entries (VT-d's second level grants read with write).
//
// Thread-safe: one lock (a support::SpinLock, so the benchmarks measure a cheap one) guards the
// contexts, the IOTLB and the fault log; device accesses from several threads are fine.
#pragma once

#include <cstdint>
#include <unordered_map>
#include <unordered_set>
#include <vector>

#include "arch/host/host_platform.h"
#include "dmakit/iommu_unit.h"
#include "dmakit/support/spinlock.h"

class HostIommu final : public IommuUnit {
 public:
  struct Options {
    uint8_t levels = 4;
    uint8_t iova_bits = 48;
    bool coherent_walk = true;
    bool write_only = true;
    uint32_t max_domains = 256;
    size_t iotlb_entries = 512;  // A power of two.
    // VT-d's caching mode: a walk that finds no translation is cached too (a negative entry,
    // faulting until invalidated), and invalidate_on_map() says so.
    bool caching_mode = false;
  };

  static constexpr uint64_t kValid = 1;
  static constexpr uint64_t kTable = 2;
  static constexpr uint64_t kRead = 4;
  static constexpr uint64_t kWrite = 8;
  static constexpr uint64_t kAddrMask = 0x000F'FFFF'FFFF'F000ull;

  // `platform` gives the memory the tables live in and the device accesses reach.
  HostIommu(HostPlatform* platform, const Options& opts);

  // IommuUnit.
  const char* name() const override { return "host-iommu"; }
  const IoPageTableFormat& format() const override { return format_; }
  uint8_t iova_bits() const override { return opts_.iova_bits; }
  bool covers(uint32_t device_id) const override { return uncovered_.count(device_id) == 0; }
  Result<void> attach(uint32_t device_id, uint32_t domain, PhysAddr root) override;
  void detach(uint32_t device_id) override;
  void invalidate(uint32_t domain, uint64_t iova, uint64_t size) override;
  uint32_t max_domains() const override { return opts_.max_domains; }
  bool invalidate_on_map() const override { return opts_.caching_mode; }
  size_t drain_faults(void (*sink)(void* ctx, const IommuFault& fault), void* ctx) override;

  // Makes covers() false for `device_id` (attach then fails with kInvalidArgument).
  void set_uncovered(uint32_t device_id) { uncovered_.insert(device_id); }

  // One access of device `device_id` to I/O address `iova`: the IOTLB first, else a walk of the
  // domain's tables (whose result is cached). Returns the physical address, or records a fault
  // (no context, not mapped, permission) and returns kNotFound / kInvalidArgument (permission).
  Result<uint64_t> device_access(uint32_t device_id, uint64_t iova, bool write);
  // DMA of `len` bytes through the IOMMU, page by page, into / out of simulated RAM (through the
  // cache model, as HostDevice does). Stops at the first fault (the bytes before it were moved,
  // as with real hardware) and returns its error.
  Result<void> device_write(uint32_t device_id, uint64_t iova, const void* src, size_t len,
                            bool coherent = true);
  Result<void> device_read(uint32_t device_id, uint64_t iova, void* dst, size_t len,
                           bool coherent = true);

  // Counters for tests.
  uint64_t invalidations() const;
  size_t iotlb_valid_entries() const;
  // Faults recorded and not drained yet.
  size_t pending_faults() const;

 private:
  struct Context {
    uint32_t domain;
    uint64_t root;
  };
  struct TlbEntry {
    bool valid;
    uint32_t domain;
    uint64_t page;  // iova >> 12
    uint64_t pa;    // page address
    uint64_t perm;  // kRead | kWrite; 0 with pa 0: a cached "not mapped" (caching mode)
  };
  size_t tlb_index(uint32_t domain, uint64_t page) const {
    return static_cast<size_t>((page ^ (uint64_t{domain} * 0x9E37'79B9ull)) & (tlb_.size() - 1));
  }
  void fault(uint32_t device_id, uint64_t iova, bool write, const char* reason);

  HostPlatform* platform_;
  Options opts_;
  IoPageTableFormat format_;
  mutable support::SpinLock lock_;
  std::unordered_map<uint32_t, Context> contexts_;
  std::unordered_set<uint32_t> uncovered_;
  std::vector<TlbEntry> tlb_;
  std::vector<IommuFault> faults_;
  uint64_t invalidations_ = 0;
};
