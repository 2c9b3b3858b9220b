// What drivers size and negotiate with (issue 15, items 2 and 4): max_mapping_size,
// opt_mapping_size, cache_alignment, need_sync, the streaming and coherent masks and their
// negotiation (set_dma_mask, set_coherent_mask, set_dma_mask_and_coherent), required_mask and
// addressing_limited. A refused mask leaves both masks and every allocator's accounting as they
// were.
#include <gtest/gtest.h>

#include <vector>

#include "arch/host/host_platform.h"
#include "dmakit/device_dma.h"

namespace {

constexpr uint64_t kRamBase = 0x4000'0000;
constexpr uint64_t kRamBytes = 64ull << 20;
constexpr uint64_t kMask32 = 0xFFFF'FFFFull;
// Reaches the lowest 16 MiB of RAM, where the one bounce pool lies.
constexpr uint64_t kMaskLow = kRamBase + (16ull << 20) - 1;
// Reaches the lowest page of RAM only: managed memory, but no bounce pool.
constexpr uint64_t kMaskOnePage = kRamBase + 0xFFF;
// Below all RAM.
constexpr uint64_t kMaskBelowRam = kRamBase - 1;

HostPlatform::Options options(bool with_pool = true, bool coherent = false) {
  HostPlatform::Options o;
  o.ram.push_back(PhysRange{PhysAddr(kRamBase), kRamBytes});
  if (with_pool) o.pools.push_back(HostPlatform::PoolSpec{4ull << 20, kMaskLow});
  o.platform_coherent = coherent;
  return o;
}

struct Accounting {
  uint64_t free_pages;
  uint64_t used_slots;
};

class DeviceQueriesTest : public testing::Test {
 protected:
  DeviceQueriesTest() : plat_(options()) {}
  Accounting accounting() {
    return {plat_.pfa().free_pages(), plat_.num_pools() > 0 ? plat_.pool(0).stats().used_slots : 0};
  }
  void expect_same(const Accounting& a) {
    Accounting b = accounting();
    EXPECT_EQ(a.free_pages, b.free_pages);
    EXPECT_EQ(a.used_slots, b.used_slots);
  }
  // A page above every bounce pool (given back at teardown).
  uint8_t* high_page() {
    uint8_t* p = plat_.buffer_above(kMaskLow + 1, 4096);
    held_.push_back(p);
    return p;
  }
  void TearDown() override {
    for (uint8_t* p : held_) plat_.release_buffer(p);
  }

  HostPlatform plat_;
  std::vector<uint8_t*> held_;
};

// ---- Item 4: queries ----

TEST_F(DeviceQueriesTest, MaxAndOptMappingSize) {
  DeviceDma all(&plat_.op(), kMask32);
  all.set_coherent(true);
  EXPECT_EQ(all.max_mapping_size(), ~size_t{0});  // Reaches all RAM, snoops: never bounces.
  EXPECT_EQ(all.opt_mapping_size(), all.max_mapping_size());
  DeviceDma low(&plat_.op(), kMaskLow);
  EXPECT_EQ(low.max_mapping_size(), plat_.pool(0).max_mapping_size());
  EXPECT_LE(low.opt_mapping_size(), low.max_mapping_size());
  EXPECT_GT(low.opt_mapping_size(), 0u);
  low.set_force_bounce(true);
  EXPECT_EQ(low.max_mapping_size(), plat_.pool(0).max_mapping_size());
}

TEST_F(DeviceQueriesTest, CacheAlignmentIsThePlatformsLine) {
  DeviceDma dev(&plat_.op(), kMask32);
  EXPECT_EQ(dev.cache_alignment(), 64u);
  auto o = options();
  o.line_size = 128;
  HostPlatform wide(o);
  EXPECT_EQ(DeviceDma(&wide.op(), kMask32).cache_alignment(), 128u);
}

TEST_F(DeviceQueriesTest, NeedSyncOnlyForNonCoherentOrBounced) {
  uint8_t* buf = high_page();
  DeviceDma coh(&plat_.op(), kMask32);
  coh.set_coherent(true);
  auto direct = coh.map(buf, 256, DmaDirection::kFromDevice);
  ASSERT_TRUE(direct.ok());
  ASSERT_FALSE(direct->bounced());
  EXPECT_FALSE(coh.need_sync(direct->dma_addr()));

  DeviceDma coh_low(&plat_.op(), kMaskLow);
  coh_low.set_coherent(true);
  auto bounced = coh_low.map(buf + 1024, 256, DmaDirection::kFromDevice);
  ASSERT_TRUE(bounced.ok());
  ASSERT_TRUE(bounced->bounced());
  EXPECT_TRUE(coh_low.need_sync(bounced->dma_addr()));

  DeviceDma nc(&plat_.op(), kMask32);
  nc.set_coherent(false);
  auto m = nc.map(buf + 2048, 256, DmaDirection::kToDevice);
  ASSERT_TRUE(m.ok());
  ASSERT_FALSE(m->bounced());
  EXPECT_TRUE(nc.need_sync(m->dma_addr()));
}

TEST_F(DeviceQueriesTest, NeedSyncHonoursTheBusOffset) {
  uint8_t* buf = high_page();
  DmaConstraints c;
  c.dma_mask = ~0ull;
  c.bus_offset = 0x10'0000'0000ull;
  c.coherence = DmaCoherence::kCoherent;
  c.force_bounce = true;
  DeviceDma dev(&plat_.op(), c);
  auto m = dev.map(buf, 64, DmaDirection::kToDevice);
  ASSERT_TRUE(m.ok());
  ASSERT_TRUE(m->bounced());
  EXPECT_TRUE(dev.need_sync(m->dma_addr()));
  // The same physical address without the offset is not this device's bounce slot.
  EXPECT_FALSE(dev.need_sync(DmaAddr(m->dma_addr().value() - c.bus_offset + 0x1000'0000'0000)));
}

// ---- Item 2: masks ----

TEST_F(DeviceQueriesTest, RequiredMaskCoversAllRam) {
  DeviceDma dev(&plat_.op(), kMask32);
  // RAM ends at 0x43FF'FFFF: 31 bits.
  EXPECT_EQ(dev.required_mask(), 0x7FFF'FFFFull);
  DmaConstraints c;
  c.bus_offset = 0x1'0000'0000ull;
  DeviceDma shifted(&plat_.op(), c);
  EXPECT_EQ(shifted.required_mask(), 0x1'FFFF'FFFFull);
}

TEST_F(DeviceQueriesTest, AddressingLimitedWhenTheMaskMissesRam) {
  EXPECT_FALSE(DeviceDma(&plat_.op(), kMask32).addressing_limited());
  EXPECT_FALSE(DeviceDma(&plat_.op(), 0x7FFF'FFFFull).addressing_limited());
  EXPECT_TRUE(DeviceDma(&plat_.op(), kMaskLow).addressing_limited());
  EXPECT_TRUE(DeviceDma(&plat_.op(), 0x3FFF'FFFFull).addressing_limited());
}

TEST_F(DeviceQueriesTest, SetDmaMaskTakesAMaskABouncePoolServes) {
  DeviceDma dev(&plat_.op(), kMask32);
  Accounting before = accounting();
  ASSERT_TRUE(dev.set_dma_mask(kMaskLow).ok());  // The pool lies under it.
  EXPECT_EQ(dev.dma_mask(), kMaskLow);
  EXPECT_EQ(dev.coherent_mask(), kMask32);  // Streaming only.
  expect_same(before);
}

TEST_F(DeviceQueriesTest, SetDmaMaskRefusesAMaskNothingServes) {
  DeviceDma dev(&plat_.op(), kMask32);
  Accounting before = accounting();
  auto r = dev.set_dma_mask(kMaskOnePage);  // RAM under it, but no bounce pool.
  EXPECT_EQ(r.code(), ErrorCode::kDmaMaskNotMatch);
  EXPECT_EQ(r.error().mask, kMaskOnePage);
  EXPECT_EQ(dev.set_dma_mask(kMaskBelowRam).code(), ErrorCode::kDmaMaskNotMatch);
  EXPECT_EQ(dev.set_dma_mask(0).code(), ErrorCode::kInvalidArgument);
  EXPECT_EQ(dev.dma_mask(), kMask32);
  EXPECT_EQ(dev.coherent_mask(), kMask32);
  expect_same(before);
}

TEST_F(DeviceQueriesTest, SetCoherentMaskNeedsManagedMemoryUnderIt) {
  DeviceDma dev(&plat_.op(), kMask32);
  Accounting before = accounting();
  EXPECT_EQ(dev.set_coherent_mask(kMaskBelowRam).code(), ErrorCode::kDmaMaskNotMatch);
  EXPECT_EQ(dev.set_coherent_mask(0).code(), ErrorCode::kInvalidArgument);
  EXPECT_EQ(dev.coherent_mask(), kMask32);
  expect_same(before);
  // One page of RAM under it: enough for coherent memory, not for streaming mappings.
  ASSERT_TRUE(dev.set_coherent_mask(kMaskOnePage).ok());
  EXPECT_EQ(dev.coherent_mask(), kMaskOnePage);
  EXPECT_EQ(dev.dma_mask(), kMask32);
}

TEST_F(DeviceQueriesTest, SetDmaMaskAndCoherentChecksBothBeforeChangingEither) {
  DeviceDma dev(&plat_.op(), kMask32);
  Accounting before = accounting();
  // The coherent side would be served, the streaming side not: neither changes.
  EXPECT_EQ(dev.set_dma_mask_and_coherent(kMaskOnePage).code(), ErrorCode::kDmaMaskNotMatch);
  EXPECT_EQ(dev.dma_mask(), kMask32);
  EXPECT_EQ(dev.coherent_mask(), kMask32);
  EXPECT_EQ(dev.set_dma_mask_and_coherent(0).code(), ErrorCode::kInvalidArgument);
  expect_same(before);
  // A driver falls back to a narrower mask that is served.
  ASSERT_TRUE(dev.set_dma_mask_and_coherent(kMaskLow).ok());
  EXPECT_EQ(dev.dma_mask(), kMaskLow);
  EXPECT_EQ(dev.coherent_mask(), kMaskLow);
  expect_same(before);
}

TEST_F(DeviceQueriesTest, WithoutABouncePoolOnlyAMaskReachingAllRamIsServed) {
  HostPlatform p(options(/*with_pool=*/false));
  DeviceDma dev(&p.op(), ~0ull);
  EXPECT_EQ(dev.set_dma_mask(kMaskLow).code(), ErrorCode::kDmaMaskNotMatch);
  EXPECT_EQ(dev.dma_mask(), ~0ull);
  ASSERT_TRUE(dev.set_dma_mask(0x7FFF'FFFFull).ok());
  ASSERT_TRUE(dev.set_coherent_mask(kMaskLow).ok());  // Coherent memory lies under it.
}

TEST_F(DeviceQueriesTest, CoherentAllocationsFollowTheCoherentMask) {
  DeviceDma dev(&plat_.op(), kMask32);
  dev.set_coherent(true);
  ASSERT_TRUE(dev.set_coherent_mask(kMaskLow).ok());
  auto a = dev.alloc_array<uint32_t>(1024);
  ASSERT_TRUE(a.ok());
  EXPECT_LE(a->dma_addr(0).value() + a->bytes() - 1, kMaskLow);
  // The streaming side still uses the wide mask: a high buffer maps directly.
  uint8_t* buf = high_page();
  auto m = dev.map(buf, 64, DmaDirection::kToDevice);
  ASSERT_TRUE(m.ok());
  EXPECT_FALSE(m->bounced());
}

TEST_F(DeviceQueriesTest, TheBusOffsetCountsInTheMaskCheck) {
  DmaConstraints c;
  c.dma_mask = ~0ull;
  c.bus_offset = 0x1'0000'0000ull;  // RAM is seen at 0x1'4000'0000 and up.
  DeviceDma dev(&plat_.op(), c);
  EXPECT_EQ(dev.set_dma_mask_and_coherent(kMask32).code(), ErrorCode::kDmaMaskNotMatch);
  EXPECT_TRUE(dev.set_dma_mask_and_coherent(0x1'FFFF'FFFFull).ok());
}

}  // namespace
