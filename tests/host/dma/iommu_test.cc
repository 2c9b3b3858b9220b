// The generic IOMMU layer on the host model (arch/host/iommu_model.h): I/O page tables, the IOVA
// allocator, and IommuDomain as the DmaOp of DeviceDma, with device accesses through the model's
// IOTLB.
#include "dmakit/iommu.h"

#include <gtest/gtest.h>

#include <algorithm>
#include <atomic>
#include <cstring>
#include <thread>
#include <vector>

#include "arch/host/host_platform.h"
#include "arch/host/iommu_model.h"
#include "dmakit/device_dma.h"
#include "dmakit/scatter_gather.h"
#include "dmakit/support/fault_injection.h"

namespace {

constexpr uint64_t kRamBase = 0x1'0000'0000ull;  // All RAM above 4 GiB.
constexpr uint64_t kMask28 = (1ull << 28) - 1;
constexpr uint32_t kDev = 0x10;  // 00:02.0
constexpr uint32_t kDev2 = 0x18;

HostPlatform::Options options(bool coherent = true) {
  HostPlatform::Options o;
  o.ram.push_back(PhysRange{PhysAddr(kRamBase), 64ull << 20});
  o.pools.push_back(HostPlatform::PoolSpec{4ull << 20, (1ull << 40) - 1});
  o.platform_coherent = coherent;
  return o;
}

// ---- IoPageTable ----

class IoPageTableTest : public testing::Test {
 protected:
  IoPageTableTest() : plat_(options()), unit_(&plat_, HostIommu::Options{}) {}
  void SetUp() override {
    free_at_start_ = plat_.pfa().free_pages();
    ASSERT_TRUE(pt_.init(IoPageTable::Config{&unit_.format(), &plat_.pfa(), &plat_.op()}).ok());
  }
  void TearDown() override {
    support::FaultInjector::disarm_all();
    pt_.destroy();
    EXPECT_EQ(plat_.pfa().free_pages(), free_at_start_);
  }
  HostPlatform plat_;
  HostIommu unit_;
  IoPageTable pt_;
  uint64_t free_at_start_ = 0;
};

TEST_F(IoPageTableTest, MapLookupUnmap) {
  ASSERT_TRUE(pt_.map(0x20'0000 - 0x2000, PhysAddr(kRamBase), 0x4000, kIommuRead).ok());
  // The range crosses a 2 MiB boundary: two leaf tables.
  for (uint64_t i = 0; i < 4; ++i) {
    uint64_t e = pt_.lookup(0x20'0000 - 0x2000 + i * 4096);
    EXPECT_EQ(e & HostIommu::kAddrMask, kRamBase + i * 4096);
    EXPECT_EQ(e & (HostIommu::kRead | HostIommu::kWrite), HostIommu::kRead);
  }
  EXPECT_EQ(pt_.lookup(0x20'0000 + 0x2000), 0u);
  EXPECT_EQ(pt_.unmap(0x20'0000 - 0x2000, 0x4000), 4u);
  EXPECT_EQ(pt_.lookup(0x20'0000 - 0x2000), 0u);
}

TEST_F(IoPageTableTest, BadInputChangesNothing) {
  EXPECT_EQ(pt_.map(0x1001, PhysAddr(kRamBase), 4096, kIommuRead).code(), ErrorCode::kLayoutError);
  EXPECT_EQ(pt_.map(0x1000, PhysAddr(kRamBase), 0, kIommuRead).code(), ErrorCode::kLayoutError);
  EXPECT_EQ(pt_.map(0x1000, PhysAddr(kRamBase), 4096, 0).code(), ErrorCode::kInvalidArgument);
  EXPECT_EQ(pt_.map(pt_.span() - 4096, PhysAddr(kRamBase), 8192, kIommuRead).code(),
            ErrorCode::kOutOfRange);
  // Overlapping an existing mapping: refused, and the pages before the overlap are not left
  // mapped.
  ASSERT_TRUE(pt_.map(0x5000, PhysAddr(kRamBase), 4096, kIommuRead).ok());
  EXPECT_EQ(pt_.map(0x3000, PhysAddr(kRamBase + 0x10000), 0x4000, kIommuWrite).code(),
            ErrorCode::kInvalidArgument);
  EXPECT_EQ(pt_.lookup(0x3000), 0u);
  EXPECT_EQ(pt_.lookup(0x4000), 0u);
  EXPECT_EQ(pt_.lookup(0x5000) & HostIommu::kAddrMask, kRamBase);
  EXPECT_EQ(pt_.lookup(0x6000), 0u);
}

#if DMA_FAULT_INJECTION  // Fault injection: debug builds only.
TEST_F(IoPageTableTest, NoMemoryLeavesNothingMapped) {
  // 4 MiB from 1 MiB: three leaf tables, the later ones cannot be had.
  support::FaultInjector::fail_nth(support::FaultSite::kPageAlloc, 4);
  uint64_t iova = 0x10'0000;
  EXPECT_EQ(pt_.map(iova, PhysAddr(kRamBase), 4ull << 20, kIommuRead | kIommuWrite).code(),
            ErrorCode::kNoMemory);
  for (uint64_t a = iova; a < iova + (4ull << 20); a += 4096) ASSERT_EQ(pt_.lookup(a), 0u) << a;
}
#endif

TEST_F(IoPageTableTest, NonCoherentWalkerSeesCleanedEntries) {
  // A walker that does not snoop: the model reads memory, not the CPU's cache.
  HostIommu::Options o;
  o.coherent_walk = false;
  HostIommu nc(&plat_, o);
  IoPageTable pt;
  ASSERT_TRUE(pt.init(IoPageTable::Config{&nc.format(), &plat_.pfa(), &plat_.op()}).ok());
  ASSERT_TRUE(pt.map(0x7000, PhysAddr(kRamBase + 0x3000), 4096, kIommuRead).ok());
  // Read the leaf through the memory side of the cache model by walking like a device.
  uint64_t table = pt.root().value();
  for (unsigned level = 0; level < 4; ++level) {
    unsigned shift = 12 + 9 * (3 - level);
    uint64_t e = 0;
    HostDevice reader(&plat_, ~0ull, /*coherent=*/false);
    reader.read(DmaAddr(table + ((uint64_t{0x7000} >> shift) & 511) * 8), &e, sizeof(e));
    ASSERT_NE(e & HostIommu::kValid, 0u) << "level " << level;
    table = e & HostIommu::kAddrMask;
  }
  EXPECT_EQ(table, kRamBase + 0x3000);
  pt.destroy();
}

// ---- IovaAllocator ----

class IovaAllocatorTest : public testing::Test {
 protected:
  IovaAllocatorTest() : plat_(options()) {}
  void init(uint64_t base, uint64_t end, const IovaRange* reserved = nullptr, size_t n = 0) {
    free_at_start_ = plat_.pfa().free_pages();
    IovaAllocator::Config c;
    c.base = base;
    c.end = end;
    c.reserved = reserved;
    c.num_reserved = n;
    c.pfa = &plat_.pfa();
    c.num_cpus = 1;
    ASSERT_TRUE(iova_.init(c).ok());
  }
  void TearDown() override {
    support::FaultInjector::disarm_all();
    ASSERT_TRUE(iova_.destroy().ok());
    EXPECT_EQ(plat_.pfa().free_pages(), free_at_start_);
  }
  HostPlatform plat_;
  IovaAllocator iova_;
  uint64_t free_at_start_ = 0;
};

TEST_F(IovaAllocatorTest, SizeAlignedUnderTheLimit) {
  init(0x10'0000, 0x1000'0000);
  auto a = iova_.alloc(3 * 4096, kMask28 >> 4);  // Rounded to 4 pages, under 16 MiB.
  ASSERT_TRUE(a.ok());
  EXPECT_EQ(*a % (4 * 4096), 0u);
  EXPECT_LE(*a + 4 * 4096 - 1, kMask28 >> 4);
  EXPECT_GE(*a, 0x10'0000u);
  EXPECT_EQ(iova_.allocated_pages(), 4u);
  iova_.free(*a, 3 * 4096);
  EXPECT_EQ(iova_.allocated_pages(), 0u);
  EXPECT_EQ(iova_.alloc(0, ~0ull).code(), ErrorCode::kLayoutError);
  EXPECT_EQ(iova_.alloc(IovaAllocator::kMaxSize + 1, ~0ull).code(), ErrorCode::kLayoutError);
  // A limit below the window: nothing reachable.
  EXPECT_EQ(iova_.alloc(4096, 0xF'FFFF).code(), ErrorCode::kNoMemory);
}

TEST_F(IovaAllocatorTest, FreedRangeComesBackFromTheCache) {
  init(0x10'0000, 0x100'0000);
  auto a = iova_.alloc(4096, ~0ull);
  ASSERT_TRUE(a.ok());
  uint64_t free_before = iova_.free_pages();
  iova_.free(*a, 4096);
  EXPECT_EQ(iova_.cached_pages(), 1u);
  EXPECT_EQ(iova_.free_pages(), free_before);  // Still allocated in the buddy layer.
  auto b = iova_.alloc(4096, ~0ull);
  ASSERT_TRUE(b.ok());
  EXPECT_EQ(*b, *a);
  EXPECT_EQ(iova_.cached_pages(), 0u);
  iova_.free(*b, 4096);
  iova_.flush_caches();
  EXPECT_EQ(iova_.cached_pages(), 0u);
  EXPECT_EQ(iova_.free_pages(), iova_.window_pages());
}

TEST_F(IovaAllocatorTest, ExhaustionIsNoMemoryAndEverythingComesBack) {
  init(0x10'0000, 0x10'0000 + 64 * 4096);
  std::vector<uint64_t> got;
  for (;;) {
    auto a = iova_.alloc(4096, ~0ull);
    if (!a.ok()) {
      EXPECT_EQ(a.code(), ErrorCode::kNoMemory);
      break;
    }
    got.push_back(*a);
  }
  EXPECT_EQ(got.size(), 64u);
  // Frees pass through the magazines and the depot; a full window then comes back whole.
  for (uint64_t a : got) iova_.free(a, 4096);
  EXPECT_EQ(iova_.allocated_pages(), 0u);
  auto big = iova_.alloc(64 * 4096, ~0ull);  // Needs the cached pages flushed and merged.
  ASSERT_TRUE(big.ok());
  EXPECT_EQ(*big, 0x10'0000u);
  iova_.free(*big, 64 * 4096);
}

TEST_F(IovaAllocatorTest, ReservedPiecesAreNeverHandedOut) {
  IovaRange r{0x10'0000 + 8 * 4096, 4096};
  init(0x10'0000, 0x10'0000 + 16 * 4096, &r, 1);
  std::vector<uint64_t> got;
  for (;;) {
    auto a = iova_.alloc(4096, ~0ull);
    if (!a.ok()) break;
    EXPECT_NE(*a, r.base);
    got.push_back(*a);
  }
  EXPECT_EQ(got.size(), 15u);
  for (uint64_t a : got) iova_.free(a, 4096);
}

TEST_F(IovaAllocatorTest, CostIsFlatWithOccupancyNoLinearScan) {
  // 95% of a 16384-page window taken in single pages, then one allocation under a limit that
  // leaves only the low end: it must find the few free pages there without walking the
  // allocations (the buddy layer's summary bitmaps). Checked functionally: the result is right.
  init(0x10'0000, 0x10'0000 + 16384 * 4096);
  std::vector<uint64_t> got;
  for (int i = 0; i < 16384 * 95 / 100; ++i) {
    auto a = iova_.alloc(4096, ~0ull);
    ASSERT_TRUE(a.ok());
    got.push_back(*a);
  }
  // Give the lowest allocated page back to the buddy layer: a request under a limit just above
  // it finds it among 15564 allocated pages.
  auto lowest = std::min_element(got.begin(), got.end());
  uint64_t want = *lowest;
  got.erase(lowest);
  iova_.free(want, 4096);
  iova_.flush_caches();
  auto low = iova_.alloc(4096, want + 4095);
  ASSERT_TRUE(low.ok()) << error_code_name(low.code());
  EXPECT_EQ(*low, want);
  iova_.free(*low, 4096);
  for (uint64_t a : got) iova_.free(a, 4096);
}

// ---- IommuDomain ----

class IommuDomainTest : public testing::Test {
 protected:
  explicit IommuDomainTest(bool coherent = true, HostIommu::Options uo = HostIommu::Options{})
      : plat_(options(coherent)), unit_(&plat_, uo) {}
  void SetUp() override { init_domain(); }
  void init_domain(bool deferred = false, uint64_t window = 64ull << 20) {
    free_at_start_ = plat_.pfa().free_pages();
    IommuDomain::Config c;
    c.unit = &unit_;
    c.domain_id = 1;
    c.platform = &plat_.op();
    c.deferred = deferred;
    c.window_size = window;
    c.num_cpus = 4;
    ASSERT_TRUE(dom_.init(c).ok());
    ASSERT_TRUE(dom_.attach(kDev).ok());
  }
  void TearDown() override {
    support::FaultInjector::disarm_all();
    dom_.detach(kDev);
    ASSERT_TRUE(dom_.destroy().ok());
    for (uint64_t p : pages_) EXPECT_TRUE(plat_.pfa().free(PhysAddr(p), 0).ok());
    pages_.clear();
    EXPECT_EQ(plat_.pfa().free_pages(), free_at_start_);
    EXPECT_EQ(DmaDebug::live_entries(), 0u);
  }
  uint8_t* page() {
    auto pa = plat_.pfa().alloc(0);
    EXPECT_TRUE(pa.ok());
    pages_.push_back(pa->value());
    return plat_.phys_to_virt(pa->value());
  }
  void deferred_body(IommuDomain& dom);
  static void collect(void* ctx, const IommuFault& f) {
    static_cast<std::vector<IommuFault>*>(ctx)->push_back(f);
  }
  std::vector<IommuFault> faults() {
    std::vector<IommuFault> v;
    unit_.drain_faults(&collect, &v);
    return v;
  }
  HostPlatform plat_;
  HostIommu unit_;
  IommuDomain dom_;
  std::vector<uint64_t> pages_;
  uint64_t free_at_start_ = 0;
};

TEST_F(IommuDomainTest, PermissionsFollowTheDirection) {
  DeviceDma dev(&dom_, ~0ull);
  uint8_t* buf = page();
  {
    auto m = dev.map(buf + 100, 200, DmaDirection::kToDevice);
    ASSERT_TRUE(m.ok());
    EXPECT_FALSE(m->bounced());
    EXPECT_EQ(m->dma_addr().value() & 4095, 100u);  // The offset in the page is kept.
    uint64_t iova = m->dma_addr().value();
    EXPECT_TRUE(unit_.device_access(kDev, iova, /*write=*/false).ok());
    EXPECT_EQ(unit_.device_access(kDev, iova, /*write=*/true).code(), ErrorCode::kInvalidArgument);
    auto f = faults();
    ASSERT_EQ(f.size(), 1u);
    EXPECT_EQ(f[0].device_id, kDev);
    EXPECT_EQ(f[0].iova, iova);
    EXPECT_TRUE(f[0].write);
    EXPECT_STREQ(f[0].reason, "permission");
  }
  {
    auto m = dev.map(buf, 4096, DmaDirection::kFromDevice);
    ASSERT_TRUE(m.ok());
    EXPECT_TRUE(unit_.device_access(kDev, m->dma_addr().value(), true).ok());
    EXPECT_FALSE(unit_.device_access(kDev, m->dma_addr().value(), false).ok());
  }
  {
    auto m = dev.map(buf, 4096, DmaDirection::kBidirectional);
    ASSERT_TRUE(m.ok());
    EXPECT_TRUE(unit_.device_access(kDev, m->dma_addr().value(), true).ok());
    EXPECT_TRUE(unit_.device_access(kDev, m->dma_addr().value(), false).ok());
  }
  faults();
}

TEST_F(IommuDomainTest, StrictUnmapRemovesTheIotlbEntry) {
  DeviceDma dev(&dom_, ~0ull);
  uint8_t* buf = page();
  uint64_t iova = 0;
  {
    auto m = dev.map(buf, 4096, DmaDirection::kFromDevice);
    ASSERT_TRUE(m.ok());
    iova = m->dma_addr().value();
    uint8_t data[16] = {1, 2, 3};
    ASSERT_TRUE(unit_.device_write(kDev, iova, data, sizeof(data)).ok());  // Now cached.
    EXPECT_GT(unit_.iotlb_valid_entries(), 0u);
  }
  std::memset(buf, 0x5A, 4096);
  uint8_t late[16] = {9, 9, 9};
  EXPECT_FALSE(unit_.device_write(kDev, iova, late, sizeof(late)).ok());
  EXPECT_EQ(buf[0], 0x5A);  // Memory unchanged.
  auto f = faults();
  ASSERT_EQ(f.size(), 1u);
  EXPECT_EQ(f[0].iova, iova);
  EXPECT_STREQ(f[0].reason, "not mapped");
}

// A unit in caching mode (VT-d's CAP.CM) caches the walks that found nothing: an address a device
// touched while unmapped stays unreachable after it is mapped, unless the map invalidates it.
class CachingModeIommuTest : public IommuDomainTest {
 protected:
  static HostIommu::Options caching() {
    HostIommu::Options o;
    o.caching_mode = true;
    return o;
  }
  CachingModeIommuTest() : IommuDomainTest(/*coherent=*/true, caching()) {}
};

TEST_F(CachingModeIommuTest, AMappingIsReachableAfterAFaultCachedTheAddress) {
  DeviceDma dev(&dom_, ~0ull);
  uint8_t* buf = page();
  uint64_t iova = 0;
  {
    auto m = dev.map(buf, 4096, DmaDirection::kFromDevice);
    ASSERT_TRUE(m.ok());
    iova = m->dma_addr().value();
  }
  // Unmapped now: the device's access faults, and the unit caches that it found nothing.
  uint8_t b = 0;
  EXPECT_FALSE(unit_.device_write(kDev, iova, &b, 1).ok());
  ASSERT_EQ(faults().size(), 1u);
  auto m = dev.map(buf, 4096, DmaDirection::kFromDevice);
  ASSERT_TRUE(m.ok());
  ASSERT_EQ(m->dma_addr().value(), iova);  // The per-CPU cache hands the same range back.
  uint8_t data[8] = {1, 2, 3, 4, 5, 6, 7, 8};
  EXPECT_TRUE(unit_.device_write(kDev, iova, data, sizeof(data)).ok());
  EXPECT_TRUE(faults().empty());
}

TEST_F(IommuDomainTest, NeverMappedAddressFaults) {
  uint8_t b = 0;
  EXPECT_FALSE(unit_.device_read(kDev, 0x1234'5000, &b, 1).ok());
  auto f = faults();
  ASSERT_EQ(f.size(), 1u);
  EXPECT_EQ(f[0].iova, 0x1234'5000u);
  EXPECT_FALSE(f[0].write);
}

TEST_F(IommuDomainTest, Device28BitReachesHighRamWithoutBouncing) {
  DeviceDma dev(&dom_, kMask28);
  uint8_t* buf = page();
  ASSERT_GE(plat_.op().virt_to_phys(buf)->value(), 1ull << 32);
  auto m = dev.map(buf, 4096, DmaDirection::kFromDevice);
  ASSERT_TRUE(m.ok());
  EXPECT_FALSE(m->bounced());
  EXPECT_LE(m->dma_addr().value() + 4095, kMask28);
  std::vector<uint8_t> data(4096, 0xC3);
  ASSERT_TRUE(unit_.device_write(kDev, m->dma_addr().value(), data.data(), 4096).ok());
  m->unmap();
  EXPECT_EQ(std::memcmp(buf, data.data(), 4096), 0);
  // Coherent memory too: pages anywhere, an address under the mask.
  auto arr = dev.alloc_array<uint32_t>(1024);
  ASSERT_TRUE(arr.ok());
  EXPECT_LE(arr->dma_addr(0).value() + 4095, kMask28);
  uint32_t v = 0xA5A5'0001;
  ASSERT_TRUE(unit_.device_write(kDev, arr->dma_addr(5).value(), &v, 4).ok());
  EXPECT_EQ(arr->read(5), v);
}

TEST_F(IommuDomainTest, ScatterGatherBecomesOneSegment) {
  DeviceDma dev(&dom_, kMask28);
  uint8_t* bufs[4];
  for (auto& b : bufs) b = page();
  SgEntry e[4];
  for (int i = 0; i < 4; ++i) e[i] = SgEntry{bufs[3 - i], 4096};  // Physically out of order.
  SgList<4> sg;
  ASSERT_TRUE(sg.map(dev, e, DmaDirection::kFromDevice).ok());
  ASSERT_EQ(sg.segments().size(), 1u);
  EXPECT_EQ(sg.segments()[0].size, 4u * 4096);
  std::vector<uint8_t> data(4 * 4096);
  for (size_t i = 0; i < data.size(); ++i) data[i] = static_cast<uint8_t>(i / 4096 + 1);
  ASSERT_TRUE(
      unit_.device_write(kDev, sg.segments()[0].addr.value(), data.data(), data.size()).ok());
  sg.mapping().unmap();
  for (int i = 0; i < 4; ++i) EXPECT_EQ(bufs[3 - i][10], i + 1);
  EXPECT_EQ(dom_.iova_allocator().allocated_pages(), 0u);
}

TEST_F(IommuDomainTest, ExhaustionReturnsNoMemoryAndLeaksNothing) {
  uint64_t free_pages = plat_.pfa().free_pages();
  IommuDomain small;
  IommuDomain::Config c;
  c.unit = &unit_;
  c.domain_id = 2;
  c.platform = &plat_.op();
  c.window_size = 16 * 4096;
  ASSERT_TRUE(small.init(c).ok());
  DeviceDma dev(&small, ~0ull);
  uint8_t* buf = page();
  {
    std::vector<StreamingMapping> maps;
    for (;;) {
      auto m = dev.map(buf, 4096, DmaDirection::kToDevice);
      if (!m.ok()) {
        EXPECT_EQ(m.code(), ErrorCode::kNoMemory);
        break;
      }
      maps.push_back(std::move(*m));
    }
    EXPECT_EQ(maps.size(), 16u);
    // Larger than the I/O space left: kNoMemory with nothing mapped.
    maps.pop_back();
    auto two = dev.map(buf, 8192 - 64, DmaDirection::kToDevice);
    EXPECT_EQ(two.code(), ErrorCode::kNoMemory);
    EXPECT_EQ(small.live_mappings(), 15u);
    // A mask below the window: kNoMemory too.
    DeviceDma low(&small, 0xFFFF);
    EXPECT_EQ(low.map(buf, 64, DmaDirection::kToDevice).code(), ErrorCode::kNoMemory);
  }
  EXPECT_EQ(small.live_mappings(), 0u);
  EXPECT_EQ(small.iova_allocator().allocated_pages(), 0u);
  ASSERT_TRUE(small.destroy().ok());
  EXPECT_EQ(plat_.pfa().free_pages(), free_pages - 1);  // All but `buf` came back.
}

TEST_F(IommuDomainTest, BadInputAsKernelDmaOp) {
  DeviceDma dev(&dom_, ~0ull);
  uint8_t* buf = page();
  EXPECT_EQ(dom_.map_single(~0ull, buf, 0, 0, DmaDirection::kToDevice).code(),
            ErrorCode::kLayoutError);
  EXPECT_EQ(dom_.map_single(~0ull, nullptr, 8, 0, DmaDirection::kToDevice).code(),
            ErrorCode::kLayoutError);
  EXPECT_EQ(dom_.map_single(~0ull, buf, 8, 3, DmaDirection::kToDevice).code(),
            ErrorCode::kLayoutError);
  EXPECT_EQ(dom_.map_single(0, buf, 8, 0, DmaDirection::kToDevice).code(),
            ErrorCode::kInvalidArgument);
  EXPECT_EQ(
      dom_.map_single(~0ull, buf, IovaAllocator::kMaxSize + 1, 0, DmaDirection::kToDevice).code(),
      ErrorCode::kLayoutError);
  EXPECT_EQ(dom_.live_mappings(), 0u);
  EXPECT_EQ(dom_.iova_allocator().allocated_pages(), 0u);
}

TEST_F(IommuDomainTest, MapFixedIdentityForMsiPages) {
  // Outside the window: allowed. Inside it: refused (an allocation could collide).
  ASSERT_TRUE(dom_.map_fixed(0x8090000, PhysAddr(0x8090000), 4096, kIommuWrite).ok());
  EXPECT_EQ(unit_.device_access(kDev, 0x8090040, true).value(), 0x8090040u);
  EXPECT_EQ(
      dom_.map_fixed(IommuDomain::kDefaultWindowBase, PhysAddr(kRamBase), 4096, kIommuWrite).code(),
      ErrorCode::kInvalidArgument);
  dom_.unmap_fixed(0x8090000, 4096);
  EXPECT_FALSE(unit_.device_access(kDev, 0x8090040, true).ok());
  faults();
}

TEST_F(IommuDomainTest, TwoDomainsCannotReachEachOther) {
  IommuDomain other;
  IommuDomain::Config c;
  c.unit = &unit_;
  c.domain_id = 2;
  c.platform = &plat_.op();
  c.window_size = 1 << 24;
  ASSERT_TRUE(other.init(c).ok());
  ASSERT_TRUE(other.attach(kDev2).ok());
  DeviceDma a(&dom_, ~0ull);
  DeviceDma b(&other, ~0ull);
  uint8_t* buf = page();
  {
    auto m = a.map(buf, 4096, DmaDirection::kBidirectional);
    ASSERT_TRUE(m.ok());
    uint8_t x = 1;
    EXPECT_TRUE(unit_.device_write(kDev, m->dma_addr().value(), &x, 1).ok());
    EXPECT_FALSE(unit_.device_write(kDev2, m->dma_addr().value(), &x, 1).ok());
    auto f = faults();
    ASSERT_EQ(f.size(), 1u);
    EXPECT_EQ(f[0].device_id, kDev2);
  }
  other.detach(kDev2);
  ASSERT_TRUE(other.destroy().ok());
}

TEST_F(IommuDomainTest, DeferredModeWindowEndsAtTheFlush) {
  IommuDomain deferred;
  IommuDomain::Config c;
  c.unit = &unit_;
  c.domain_id = 3;
  c.platform = &plat_.op();
  c.deferred = true;
  ASSERT_TRUE(deferred.init(c).ok());
  ASSERT_TRUE(deferred.attach(kDev2).ok());
  deferred_body(deferred);
  deferred.detach(kDev2);
  ASSERT_TRUE(deferred.destroy().ok());
}

void IommuDomainTest::deferred_body(IommuDomain& dom) {
  DeviceDma dev(&dom, ~0ull);
  uint8_t* buf = page();
  uint64_t iova = 0;
  {
    auto m = dev.map(buf, 4096, DmaDirection::kFromDevice);
    ASSERT_TRUE(m.ok());
    iova = m->dma_addr().value();
    uint8_t x = 1;
    ASSERT_TRUE(unit_.device_write(kDev2, iova, &x, 1).ok());
  }
  // Inside the window: the stale IOTLB entry still lets the device through, and the range is
  // not handed out again.
  EXPECT_EQ(dom.deferred_pending(), 1u);
  uint8_t y = 2;
  EXPECT_TRUE(unit_.device_write(kDev2, iova, &y, 1).ok());
  EXPECT_EQ(buf[0], 2);
  auto again = dev.map(buf, 4096, DmaDirection::kFromDevice);
  ASSERT_TRUE(again.ok());
  EXPECT_NE(again->dma_addr().value(), iova);
  again->unmap();
  dom.flush_deferred();
  EXPECT_EQ(dom.deferred_pending(), 0u);
  EXPECT_FALSE(unit_.device_write(kDev2, iova, &y, 1).ok());
  faults();
  // The queue flushes by itself when full.
  uint64_t inv = unit_.invalidations();
  for (size_t i = 0; i < IommuDomain::kFlushQueueSize + 1; ++i) {
    auto m = dev.map(buf, 4096, DmaDirection::kToDevice);
    ASSERT_TRUE(m.ok());
  }
  EXPECT_EQ(unit_.invalidations(), inv + 1);
  EXPECT_EQ(dom.deferred_pending(), 1u);
}

TEST_F(IommuDomainTest, ConcurrentMapUnmap) {
  constexpr int kThreads = 4;
  constexpr int kRounds = 300;
  std::vector<uint8_t*> bufs;
  for (int t = 0; t < kThreads; ++t) bufs.push_back(page());
  std::atomic<int> failures{0};
  std::vector<std::thread> threads;
  for (int t = 0; t < kThreads; ++t) {
    threads.emplace_back([&, t] {
      DeviceDma dev(&dom_, t % 2 == 0 ? ~0ull : kMask28);
      for (int r = 0; r < kRounds; ++r) {
        size_t size = 64u << (r % 7);  // Up to the whole page.
        auto m = dev.map(bufs[static_cast<size_t>(t)], size, DmaDirection::kFromDevice);
        if (!m.ok()) {
          failures++;
          continue;
        }
        uint8_t v = static_cast<uint8_t>(r);
        if (!unit_.device_write(kDev, m->dma_addr().value(), &v, 1).ok()) failures++;
      }
    });
  }
  for (auto& th : threads) th.join();
  EXPECT_EQ(failures.load(), 0);
  EXPECT_EQ(dom_.live_mappings(), 0u);
  EXPECT_EQ(dom_.iova_allocator().allocated_pages(), 0u);
}

#if DMA_API_DEBUG_ENABLED
TEST_F(IommuDomainTest, MisuseCheckerCoversDomainMappings) {
  DmaDebug::reset();
  DeviceDma dev(&dom_, ~0ull);
  uint8_t* buf = page();
  auto h = dom_.map_single(~0ull, buf, 64, 0, DmaDirection::kToDevice);
  ASSERT_TRUE(h.ok());
  dom_.unmap_single(*h);
  uint64_t allocated = dom_.iova_allocator().allocated_pages();
  dom_.unmap_single(*h);  // Double unmap: reported and refused.
  EXPECT_EQ(DmaDebug::count(DmaDebugKind::kNotMapped), 1u);
  EXPECT_EQ(dom_.iova_allocator().allocated_pages(), allocated);
  DmaDebug::reset();
}
#endif

// ---- The issue-15 calls behind an IOMMU ----

constexpr uint64_t kMmio = 0x4000'0000ull;  // Below RAM: another device's registers.

TEST_F(IommuDomainTest, MapPageGoesThroughTheDomain) {
  DmaConstraints c = dom_.default_constraints();
  c.dma_mask = kMask28;
  uint8_t* buf = page();
  uint64_t pa = pages_.back();
  std::memset(buf, 0x11, 4096);
  auto h = dom_.map_page(c, PhysAddr(pa), 100, 200, DmaDirection::kFromDevice);
  ASSERT_TRUE(h.ok()) << error_code_name(h.code());
  EXPECT_FALSE(h->bounced());
  EXPECT_LE(h->dma_addr.value(), kMask28);  // An IOVA, not the page's high address.
  EXPECT_EQ(h->dma_addr.value() & 4095, 100u);
  EXPECT_EQ(dom_.live_mappings(), 1u);
  auto seen = unit_.device_access(kDev, h->dma_addr.value(), /*write=*/true);
  ASSERT_TRUE(seen.ok());
  EXPECT_EQ(*seen, pa + 100);
  std::vector<uint8_t> data(200, 0x5a);
  ASSERT_TRUE(unit_.device_write(kDev, h->dma_addr.value(), data.data(), 200).ok());
  dom_.unmap_single(*h);
  EXPECT_EQ(buf[99], 0x11);
  EXPECT_EQ(buf[100], 0x5a);
  EXPECT_EQ(buf[299], 0x5a);
  EXPECT_EQ(buf[300], 0x11);
  EXPECT_EQ(dom_.live_mappings(), 0u);
  EXPECT_EQ(dom_.iova_allocator().allocated_pages(), 0u);
}

TEST_F(IommuDomainTest, MapPageBadInputChangesNothing) {
  DmaConstraints c = dom_.default_constraints();
  page();
  uint64_t pa = pages_.back();
  uint64_t tables = dom_.page_table().table_pages();
  auto dir = DmaDirection::kToDevice;
  EXPECT_EQ(dom_.map_page(c, PhysAddr(pa + 8), 0, 8, dir).code(), ErrorCode::kInvalidArgument);
  EXPECT_EQ(dom_.map_page(c, PhysAddr(pa), 4096, 1, dir).code(), ErrorCode::kOutOfRange);
  EXPECT_EQ(dom_.map_page(c, PhysAddr(pa), 4000, 200, dir).code(), ErrorCode::kOutOfRange);
  EXPECT_EQ(dom_.map_page(c, PhysAddr(pa), 0, 0, dir).code(), ErrorCode::kLayoutError);
  // Not RAM: MMIO is mapped with map_resource.
  EXPECT_EQ(dom_.map_page(c, PhysAddr(kMmio), 0, 8, dir).code(), ErrorCode::kInvalidArgument);
  DmaConstraints zero = c;
  zero.dma_mask = 0;
  EXPECT_EQ(dom_.map_page(zero, PhysAddr(pa), 0, 8, dir).code(), ErrorCode::kInvalidArgument);
  EXPECT_EQ(dom_.live_mappings(), 0u);
  EXPECT_EQ(dom_.iova_allocator().allocated_pages(), 0u);
  EXPECT_EQ(dom_.page_table().table_pages(), tables);
}

TEST_F(IommuDomainTest, MapResourceGivesThePeerAnIova) {
  DmaConstraints c = dom_.default_constraints();
  c.dma_mask = kMask28;
  auto a = dom_.map_resource(c, PhysAddr(kMmio + 0x1100), 0x2000, DmaDirection::kToDevice);
  ASSERT_TRUE(a.ok()) << error_code_name(a.code());
  uint64_t iova = a->value();
  EXPECT_LE(iova + 0x1fff, kMask28);
  EXPECT_EQ(iova & 4095, 0x100u);
  EXPECT_EQ(dom_.live_mappings(), 1u);
  // Two pages span three: every byte of the range translates to its MMIO address.
  for (uint64_t off : {uint64_t{0}, uint64_t{0xf00}, uint64_t{0x1fff}}) {
    auto seen = unit_.device_access(kDev, iova + off, /*write=*/false);
    ASSERT_TRUE(seen.ok()) << off;
    EXPECT_EQ(*seen, kMmio + 0x1100 + off);
  }
  // kToDevice: the device reads the peer's registers, never writes them.
  EXPECT_FALSE(unit_.device_access(kDev, iova, /*write=*/true).ok());
  dom_.unmap_resource(c, *a, 0x2000, DmaDirection::kToDevice);
  EXPECT_FALSE(unit_.device_access(kDev, iova, /*write=*/false).ok());  // Strict: gone now.
  faults();
  EXPECT_EQ(dom_.live_mappings(), 0u);
  EXPECT_EQ(dom_.iova_allocator().allocated_pages(), 0u);
  EXPECT_EQ(dom_.page_table().lookup(iova), 0u);

  auto b = dom_.map_resource(c, PhysAddr(kMmio), 4096, DmaDirection::kBidirectional);
  ASSERT_TRUE(b.ok());
  EXPECT_TRUE(unit_.device_access(kDev, b->value(), /*write=*/true).ok());
  EXPECT_TRUE(unit_.device_access(kDev, b->value(), /*write=*/false).ok());
  dom_.unmap_resource(c, *b, 4096, DmaDirection::kBidirectional);
  EXPECT_EQ(dom_.live_mappings(), 0u);
}

TEST_F(IommuDomainTest, MapResourceBadInputChangesNothing) {
  DmaConstraints c = dom_.default_constraints();
  uint64_t tables = dom_.page_table().table_pages();
  auto dir = DmaDirection::kToDevice;
  EXPECT_EQ(dom_.map_resource(c, PhysAddr(kMmio), 0, dir).code(), ErrorCode::kLayoutError);
  EXPECT_EQ(dom_.map_resource(c, PhysAddr(~0ull - 10), 100, dir).code(), ErrorCode::kLayoutError);
  // RAM, wholly or in part: map_single / map_page are for RAM.
  EXPECT_EQ(dom_.map_resource(c, PhysAddr(kRamBase), 4096, dir).code(),
            ErrorCode::kInvalidArgument);
  EXPECT_EQ(dom_.map_resource(c, PhysAddr(kRamBase - 4096), 8192, dir).code(),
            ErrorCode::kInvalidArgument);
  DmaConstraints zero = c;
  zero.dma_mask = 0;
  EXPECT_EQ(dom_.map_resource(zero, PhysAddr(kMmio), 4096, dir).code(),
            ErrorCode::kInvalidArgument);
  DmaConstraints offset = c;
  offset.bus_offset = 0x1000;
  EXPECT_EQ(dom_.map_resource(offset, PhysAddr(kMmio), 4096, dir).code(),
            ErrorCode::kInvalidArgument);
  EXPECT_EQ(dom_.map_resource(c, PhysAddr(kMmio), IovaAllocator::kMaxSize + 1, dir).code(),
            ErrorCode::kLayoutError);
  EXPECT_EQ(dom_.live_mappings(), 0u);
  EXPECT_EQ(dom_.iova_allocator().allocated_pages(), 0u);
  EXPECT_EQ(dom_.page_table().table_pages(), tables);
}

TEST_F(IommuDomainTest, CheckMaskAgainstTheWindow) {
  // The window is [1 MiB, 65 MiB).
  DmaConstraints c = dom_.default_constraints();
  for (DmaMaskKind kind : {DmaMaskKind::kStreaming, DmaMaskKind::kCoherent}) {
    c.dma_mask = kMask28;
    EXPECT_TRUE(dom_.check_mask(c, kind).ok());
    c.dma_mask = (1ull << 21) - 1;  // Reaches the window's first MiB.
    EXPECT_TRUE(dom_.check_mask(c, kind).ok());
    c.dma_mask = (1ull << 20) - 1;  // Ends just below the window.
    auto r = dom_.check_mask(c, kind);
    ASSERT_EQ(r.code(), ErrorCode::kDmaMaskNotMatch);
    EXPECT_EQ(r.error().addr, IommuDomain::kDefaultWindowBase);
    EXPECT_EQ(r.error().mask, c.dma_mask);
    c.dma_mask = 0;
    EXPECT_EQ(dom_.check_mask(c, kind).code(), ErrorCode::kInvalidArgument);
  }
  // What check_mask refuses, map_single cannot serve either.
  c.dma_mask = (1ull << 20) - 1;
  uint8_t* buf = page();
  EXPECT_FALSE(dom_.map_single(c, buf, 8, 0, DmaDirection::kToDevice).ok());
  // The window's top is 65 MiB - 1: 27 bits.
  EXPECT_EQ(dom_.required_mask(dom_.default_constraints()), (1ull << 27) - 1);
}

TEST_F(IommuDomainTest, NeedSyncOnlyForBouncedIova) {
  DmaConstraints c = dom_.default_constraints();
  uint8_t* buf = page();
  auto direct = dom_.map_single(c, buf, 4096, 0, DmaDirection::kFromDevice);
  ASSERT_TRUE(direct.ok());
  EXPECT_FALSE(dom_.need_sync(c, direct->dma_addr));
  DmaConstraints fb = c;
  fb.force_bounce = true;
  auto bounced = dom_.map_single(fb, buf, 64, 0, DmaDirection::kFromDevice);
  ASSERT_TRUE(bounced.ok());
  ASSERT_TRUE(bounced->bounced());
  EXPECT_TRUE(dom_.need_sync(c, bounced->dma_addr));
  DmaConstraints nc = c;
  nc.coherence = DmaCoherence::kNonCoherent;
  EXPECT_TRUE(dom_.need_sync(nc, direct->dma_addr));
  dom_.unmap_single(*bounced);
  dom_.unmap_single(*direct);
}

TEST_F(IommuDomainTest, OptMappingSizeIsTheLargestCachedIovaRange) {
  DmaConstraints c = dom_.default_constraints();
  const size_t cached = size_t{IovaAllocator::kPageSize} << (IovaAllocator::kCacheOrders - 1);
  EXPECT_EQ(dom_.opt_mapping_size(c), cached);
  EXPECT_LE(dom_.opt_mapping_size(c), dom_.max_mapping_size(c));
  // A page-aligned buffer of that size takes a range the caches hold: it comes back from them.
  auto pa = plat_.pfa().alloc(IovaAllocator::kCacheOrders - 1);
  ASSERT_TRUE(pa.ok());
  uint8_t* buf = plat_.phys_to_virt(pa->value());
  auto m = dom_.map_single(c, buf, cached, 0, DmaDirection::kToDevice);
  ASSERT_TRUE(m.ok());
  uint64_t iova = m->dma_addr.value();
  dom_.unmap_single(*m);
  auto again = dom_.map_single(c, buf, cached, 0, DmaDirection::kToDevice);
  ASSERT_TRUE(again.ok());
  EXPECT_EQ(again->dma_addr.value(), iova);
  dom_.unmap_single(*again);
  EXPECT_TRUE(plat_.pfa().free(*pa, IovaAllocator::kCacheOrders - 1).ok());
}

class NonCoherentIommuTest : public IommuDomainTest {
 protected:
  NonCoherentIommuTest() : IommuDomainTest(/*coherent=*/false) {}
};

TEST_F(NonCoherentIommuTest, ReceiveBufferSharingLinesIsBouncedAndMapped) {
  DeviceDma dev(&dom_, kMask28);
  uint8_t* buf = page();
  std::memset(buf, 0x11, 4096);
  auto m = dev.map(buf + 8, 100, DmaDirection::kFromDevice);
  ASSERT_TRUE(m.ok());
  EXPECT_TRUE(m->bounced());
  EXPECT_LE(m->dma_addr().value(), kMask28);
  std::vector<uint8_t> data(100, 0x77);
  ASSERT_TRUE(unit_.device_write(kDev, m->dma_addr().value(), data.data(), 100, false).ok());
  m->unmap();
  EXPECT_EQ(buf[7], 0x11);
  EXPECT_EQ(buf[8], 0x77);
  EXPECT_EQ(buf[107], 0x77);
  EXPECT_EQ(buf[108], 0x11);
}

TEST_F(NonCoherentIommuTest, AlignedReceiveBufferIsInvalidatedAtUnmap) {
  DeviceDma dev(&dom_, kMask28);
  uint8_t* buf = page();
  std::memset(buf, 0x11, 4096);  // Dirty in the CPU's cache.
  auto m = dev.map(buf, 4096, DmaDirection::kFromDevice);
  ASSERT_TRUE(m.ok());
  EXPECT_FALSE(m->bounced());
  std::vector<uint8_t> data(4096, 0x99);
  ASSERT_TRUE(unit_.device_write(kDev, m->dma_addr().value(), data.data(), 4096, false).ok());
  m->unmap();
  EXPECT_EQ(std::memcmp(buf, data.data(), 4096), 0);
}

TEST_F(NonCoherentIommuTest, SkipCpuSyncLeavesTheCachesAlone) {
  DmaConstraints c = dom_.default_constraints();
  c.dma_mask = kMask28;
  uint8_t* buf = page();
  std::memset(buf, 0x11, 4096);  // Dirty in the CPU's cache, memory still 0.
  // Bad attribute: nothing mapped.
  EXPECT_EQ(
      dom_.map_single_attrs(c, buf, 4096, 0, DmaDirection::kFromDevice, kDmaAttrsAlloc).code(),
      ErrorCode::kInvalidArgument);
  EXPECT_EQ(dom_.live_mappings(), 0u);
  EXPECT_EQ(dom_.iova_allocator().allocated_pages(), 0u);
  auto h =
      dom_.map_single_attrs(c, buf, 4096, 0, DmaDirection::kBidirectional, kDmaAttrSkipCpuSync);
  ASSERT_TRUE(h.ok()) << error_code_name(h.code());
  EXPECT_FALSE(h->bounced());
  EXPECT_TRUE(h->skip_cpu_sync);
  EXPECT_LE(h->dma_addr.value(), kMask28);
  // No clean at map: the device reads memory without the CPU's bytes.
  uint8_t seen = 0xff;
  ASSERT_TRUE(unit_.device_read(kDev, h->dma_addr.value(), &seen, 1, false).ok());
  EXPECT_EQ(seen, 0u);
  std::vector<uint8_t> data(4096, 0x99);
  ASSERT_TRUE(unit_.device_write(kDev, h->dma_addr.value(), data.data(), 4096, false).ok());
  dom_.unmap_single(*h);
  // No invalidate at unmap: the CPU still sees its cached bytes.
  EXPECT_EQ(buf[0], 0x11);
  EXPECT_EQ(dom_.live_mappings(), 0u);
  EXPECT_EQ(dom_.iova_allocator().allocated_pages(), 0u);

  // Bounced with the attribute: the slot gets the data, nothing is copied out at unmap.
  DmaConstraints fb = c;
  fb.force_bounce = true;
  auto b = dom_.map_single_attrs(fb, buf, 64, 0, DmaDirection::kFromDevice, kDmaAttrSkipCpuSync);
  ASSERT_TRUE(b.ok());
  ASSERT_TRUE(b->bounced());
  EXPECT_TRUE(b->skip_cpu_sync);
  std::vector<uint8_t> small(64, 0x77);
  ASSERT_TRUE(unit_.device_write(kDev, b->dma_addr.value(), small.data(), 64, false).ok());
  dom_.unmap_single(*b);
  EXPECT_EQ(buf[0], 0x11);
  EXPECT_EQ(dom_.live_mappings(), 0u);
}

TEST_F(NonCoherentIommuTest, AllocNoncoherentIsCachedAndMappedAtAnIova) {
  DmaConstraints c = dom_.default_constraints();
  c.dma_mask = kMask28;
  // Pages held by the allocation or by the page tables (which keep what they grew).
  auto held = [&] { return plat_.pfa().free_pages() + dom_.page_table().table_pages(); };
  uint64_t free_pages = held();
  EXPECT_EQ(dom_.alloc_noncoherent(c, Layout{0, 1}).code(), ErrorCode::kLayoutError);
  DmaConstraints zero = c;
  zero.dma_mask = 0;
  EXPECT_EQ(dom_.alloc_noncoherent(zero, Layout{4096, 1}).code(), ErrorCode::kInvalidArgument);
  EXPECT_EQ(dom_.live_mappings(), 0u);
  EXPECT_EQ(held(), free_pages);
  auto h = dom_.alloc_noncoherent(c, Layout{8192, 1});
  ASSERT_TRUE(h.ok()) << error_code_name(h.code());
  EXPECT_FALSE(h->remapped);  // Cacheable, unlike alloc_coherent's for this device.
  EXPECT_LE(h->dma_addr.value() + 8191, kMask28);
  EXPECT_EQ(dom_.live_mappings(), 1u);
  auto* p = static_cast<uint8_t*>(h->cpu_addr);
  EXPECT_EQ(p[0], 0u);
  std::vector<uint8_t> data(8192, 0x3c);
  ASSERT_TRUE(unit_.device_write(kDev, h->dma_addr.value(), data.data(), 8192, false).ok());
  ASSERT_TRUE(
      dom_.sync_noncoherent(*h, 0, 8192, DmaDirection::kFromDevice, DmaSyncTarget::kForCpu).ok());
  EXPECT_EQ(std::memcmp(p, data.data(), 8192), 0);
  uint64_t iova = h->dma_addr.value();
  dom_.dealloc_noncoherent(*h);
  EXPECT_FALSE(unit_.device_access(kDev, iova, /*write=*/false).ok());
  faults();
  EXPECT_EQ(dom_.live_mappings(), 0u);
  EXPECT_EQ(dom_.iova_allocator().allocated_pages(), 0u);
  EXPECT_EQ(held(), free_pages);
}

}  // namespace
