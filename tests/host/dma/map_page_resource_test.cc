// Mapping without a kernel virtual address (issue 15, item 6): map_page (a RAM page by physical
// address and offset) and map_resource (another device's MMIO range, peer to peer). Bad input
// gets its own error and leaves the pools and the allocator as they were.
#include <gtest/gtest.h>

#include <cstring>

#include "arch/host/host_platform.h"
#include "dmakit/device_dma.h"

namespace {

constexpr uint64_t kRamBase = 0x4000'0000;
constexpr uint64_t kMask32 = 0xFFFF'FFFFull;
constexpr uint64_t kMaskLow = kRamBase + (16ull << 20) - 1;  // The pool lies under it.
constexpr uint64_t kMmio = 0x1000'0000;                      // Below RAM: a device's BAR.

HostPlatform::Options options() {
  HostPlatform::Options o;
  o.ram.push_back(PhysRange{PhysAddr(kRamBase), 64ull << 20});
  o.pools.push_back(HostPlatform::PoolSpec{4ull << 20, kMaskLow});
  o.platform_coherent = true;
  return o;
}

class MapPageResourceTest : public testing::Test {
 protected:
  MapPageResourceTest() : plat_(options()), hw_(&plat_, ~0ull, /*coherent=*/true) {}
  void TearDown() override {
    for (uint8_t* p : held_) plat_.release_buffer(p);
  }
  // A RAM page above the pool, by physical address.
  uint64_t high_page() {
    uint8_t* p = plat_.buffer_above(kMaskLow + 1, 4096);
    held_.push_back(p);
    return plat_.op().virt_to_phys(p)->value();
  }
  struct Counters {
    uint64_t free_pages;
    uint64_t used_slots;
  };
  Counters counters() { return {plat_.pfa().free_pages(), plat_.pool(0).stats().used_slots}; }
  void expect_same(const Counters& a) {
    EXPECT_EQ(plat_.pfa().free_pages(), a.free_pages);
    EXPECT_EQ(plat_.pool(0).stats().used_slots, a.used_slots);
  }

  HostPlatform plat_;
  HostDevice hw_;
  std::vector<uint8_t*> held_;
};

TEST_F(MapPageResourceTest, MapPageMapsDirectlyWhenReachable) {
  uint64_t page = high_page();
  uint8_t* cpu = plat_.phys_to_virt(page);
  std::memset(cpu, 0x3C, 4096);
  DeviceDma dev(&plat_.op(), kMask32);
  auto m = dev.map_page(PhysAddr(page), 100, 200, DmaDirection::kToDevice);
  ASSERT_TRUE(m.ok());
  EXPECT_FALSE(m->bounced());
  EXPECT_EQ(m->dma_addr().value(), page + 100);
  EXPECT_EQ(m->size(), 200u);
}

TEST_F(MapPageResourceTest, MapPageBouncesThroughTheDirectMap) {
  uint64_t page = high_page();
  uint8_t* cpu = plat_.phys_to_virt(page);
  std::memset(cpu, 0x3C, 4096);
  DeviceDma dev(&plat_.op(), kMaskLow);
  {
    auto m = dev.map_page(PhysAddr(page), 3000, 1096, DmaDirection::kBidirectional);
    ASSERT_TRUE(m.ok());
    EXPECT_TRUE(m->bounced());
    EXPECT_LE(m->dma_addr().value() + 1095, kMaskLow);
    uint8_t seen = 0;
    hw_.read(m->dma_addr(), &seen, 1);
    EXPECT_EQ(seen, 0x3C);  // Copied in.
    hw_.fill(m->dma_addr() + 10, 0xE1, 20);
  }  // Unmap copies out.
  EXPECT_EQ(cpu[3010], 0xE1);
  EXPECT_EQ(cpu[3029], 0xE1);
  EXPECT_EQ(cpu[3030], 0x3C);
  EXPECT_EQ(plat_.pool(0).stats().used_slots, 0u);
}

TEST_F(MapPageResourceTest, MapPagePastThePageIsOutOfRange) {
  uint64_t page = high_page();
  DeviceDma dev(&plat_.op(), kMaskLow);
  Counters before = counters();
  EXPECT_EQ(dev.map_page(PhysAddr(page), 4096, 1, DmaDirection::kToDevice).code(),
            ErrorCode::kOutOfRange);
  EXPECT_EQ(dev.map_page(PhysAddr(page), 4000, 97, DmaDirection::kToDevice).code(),
            ErrorCode::kOutOfRange);
  EXPECT_EQ(dev.map_page(PhysAddr(page), 0, 4097, DmaDirection::kToDevice).code(),
            ErrorCode::kOutOfRange);
  EXPECT_EQ(dev.map_page(PhysAddr(page), 1, ~size_t{0}, DmaDirection::kToDevice).code(),
            ErrorCode::kOutOfRange);
  EXPECT_EQ(dev.map_page(PhysAddr(page), 0, 0, DmaDirection::kToDevice).code(),
            ErrorCode::kLayoutError);
  EXPECT_EQ(dev.map_page(PhysAddr(page + 8), 0, 8, DmaDirection::kToDevice).code(),
            ErrorCode::kInvalidArgument);  // Not a page address.
  EXPECT_EQ(dev.map_page(PhysAddr(kMmio), 0, 8, DmaDirection::kToDevice).code(),
            ErrorCode::kInvalidArgument);  // Not RAM.
  expect_same(before);
}

TEST_F(MapPageResourceTest, MapResourceAppliesTheBusOffsetAndNeverBounces) {
  DmaConstraints c;
  c.dma_mask = kMask32;
  c.bus_offset = 0x2000'0000;
  DeviceDma dev(&plat_.op(), c);
  Counters before = counters();
  auto d = dev.map_resource(PhysAddr(kMmio), 0x1000, DmaDirection::kFromDevice);
  ASSERT_TRUE(d.ok());
  EXPECT_EQ(d->value(), kMmio + 0x2000'0000);
  dev.unmap_resource(*d, 0x1000, DmaDirection::kFromDevice);
  expect_same(before);
}

TEST_F(MapPageResourceTest, MapResourceRefusesRamMasksAndBadLayouts) {
  DeviceDma dev(&plat_.op(), kMask32);
  Counters before = counters();
  EXPECT_EQ(dev.map_resource(PhysAddr(kRamBase + 0x1000), 64, DmaDirection::kToDevice).code(),
            ErrorCode::kInvalidArgument);
  // Ends inside RAM.
  EXPECT_EQ(dev.map_resource(PhysAddr(kRamBase - 0x1000), 0x2000, DmaDirection::kToDevice).code(),
            ErrorCode::kInvalidArgument);
  EXPECT_EQ(dev.map_resource(PhysAddr(kMmio), 0, DmaDirection::kToDevice).code(),
            ErrorCode::kLayoutError);
  EXPECT_EQ(dev.map_resource(PhysAddr(~0ull - 10), 64, DmaDirection::kToDevice).code(),
            ErrorCode::kLayoutError);
  auto far = dev.map_resource(PhysAddr(0x10'0000'0000ull), 64, DmaDirection::kToDevice);
  EXPECT_EQ(far.code(), ErrorCode::kDmaMaskNotMatch);  // MMIO is never bounced.
  EXPECT_EQ(far.error().mask, kMask32);
  expect_same(before);
}

}  // namespace
