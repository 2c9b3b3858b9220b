// Bounce pools that adapt (issue 15, item 7): when the pool a device would bounce into is full,
// another pool under its mask takes the mapping; only when every reachable pool is full does the
// map fail, and then nothing is held.
#include <gtest/gtest.h>

#include <vector>

#include "arch/host/host_platform.h"
#include "dmakit/device_dma.h"

namespace {

constexpr uint64_t kRamBase = 0x4000'0000;
constexpr uint64_t kMiB = 1ull << 20;
constexpr uint64_t kMaskLow = kRamBase + 16 * kMiB - 1;
constexpr size_t kChunk = 256 * 1024;  // One max-size mapping fills the high pool.

// Pool 0: 256 KiB at the top of RAM (under 4 GiB); pool 1: 1 MiB in the lowest 16 MiB.
HostPlatform::Options options() {
  HostPlatform::Options o;
  o.ram.push_back(PhysRange{PhysAddr(kRamBase), 64 * kMiB});
  o.pools.push_back(HostPlatform::PoolSpec{kChunk, 0xFFFF'FFFFull});
  o.pools.push_back(HostPlatform::PoolSpec{kMiB, kMaskLow});
  o.platform_coherent = true;
  return o;
}

class BounceFallbackTest : public testing::Test {
 protected:
  BounceFallbackTest() : plat_(options()), dev_(&plat_.op(), 0xFFFF'FFFFull) {
    dev_.set_force_bounce(true);
    buf_.resize(kChunk);
  }
  uint8_t* buffer() {
    uint8_t* p = plat_.buffer_above(kMaskLow + 1, kChunk);
    held_.push_back(p);
    return p;
  }
  void TearDown() override {
    for (uint8_t* p : held_) plat_.release_buffer(p);
  }
  uint64_t used(size_t i) { return plat_.pool(i).stats().used_slots; }

  HostPlatform plat_;
  DeviceDma dev_;
  std::vector<uint8_t> buf_;
  std::vector<uint8_t*> held_;
};

TEST_F(BounceFallbackTest, AFullPoolFallsBackToAnotherUnderTheMask) {
  ASSERT_GT(plat_.pool(0).base().value(), plat_.pool(1).base().value());
  auto a = dev_.map(buffer(), kChunk, DmaDirection::kToDevice);
  ASSERT_TRUE(a.ok());
  EXPECT_TRUE(plat_.pool(0).contains(PhysAddr(a->dma_addr().value())));  // The highest first.
  auto b = dev_.map(buffer(), kChunk, DmaDirection::kToDevice);
  ASSERT_TRUE(b.ok()) << "the high pool is full; the low one has room";
  EXPECT_TRUE(plat_.pool(1).contains(PhysAddr(b->dma_addr().value())));
#if DMA_STATS
  EXPECT_EQ(plat_.op().stats().pool_fallbacks, 1u);
#endif
  b->unmap();
  a->unmap();
  EXPECT_EQ(used(0), 0u);
  EXPECT_EQ(used(1), 0u);
}

TEST_F(BounceFallbackTest, FallbackOnlyToPoolsTheDeviceReaches) {
  // A device reaching only the high pool's range and above, not the low pool: no fallback.
  DmaConstraints c;
  c.coherence = DmaCoherence::kCoherent;
  c.force_bounce = true;
  c.bus_offset = 0 - (kRamBase + 32 * kMiB);  // Physical RAM + 32 MiB is device address 0.
  c.dma_mask = 32 * kMiB - 1;
  DeviceDma dev(&plat_.op(), c);
  auto a = dev.map(buffer(), kChunk, DmaDirection::kToDevice);
  ASSERT_TRUE(a.ok());
  uint64_t low_before = used(1);
  auto b = dev.map(buffer(), kChunk, DmaDirection::kToDevice);
  EXPECT_EQ(b.code(), ErrorCode::kNoMemory);
  EXPECT_EQ(used(1), low_before);
}

TEST_F(BounceFallbackTest, EveryPoolFullIsNoMemoryAndHoldsNothing) {
  std::vector<StreamingMapping> live;
  for (;;) {
    auto m = dev_.map(buffer(), kChunk, DmaDirection::kToDevice);
    if (!m.ok()) {
      EXPECT_EQ(m.code(), ErrorCode::kNoMemory);
      break;
    }
    live.push_back(std::move(*m));
    ASSERT_LT(live.size(), 10u);
  }
  EXPECT_EQ(live.size(), 1u + kMiB / kChunk);  // The high pool's one, then the low pool's four.
  uint64_t u0 = used(0), u1 = used(1);
  EXPECT_EQ(dev_.map(buffer(), 64, DmaDirection::kToDevice).code(), ErrorCode::kNoMemory);
  EXPECT_EQ(used(0), u0);
  EXPECT_EQ(used(1), u1);
  live.clear();
  EXPECT_EQ(used(0), 0u);
  EXPECT_EQ(used(1), 0u);
}

}  // namespace
