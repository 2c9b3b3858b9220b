// Several DMA windows per device (issue 15, item 3): translation per window, bounce slots chosen
// in a window, coherent memory inside one, and the queries (required_mask, set_dma_mask) seen
// through them. The Raspberry Pi 4 shape: RAM seen by the device in pieces at other addresses.
#include <gtest/gtest.h>

#include <vector>

#include "arch/host/host_platform.h"
#include "dmakit/device_dma.h"

namespace {

constexpr uint64_t kRamBase = 0x4000'0000;
constexpr uint64_t kMiB = 1ull << 20;
constexpr uint64_t kMaskLow = kRamBase + 16 * kMiB - 1;  // The pool lies in the lowest 16 MiB.
constexpr uint64_t kMask32 = 0xFFFF'FFFFull;

// W0: the lowest 16 MiB of RAM (with the pool) at device address 0; W1: 16 MiB at RAM + 32 MiB,
// seen at 0x1000'0000. RAM between and above is out of the device's reach.
const DmaWindow kWindows[2] = {
    {PhysAddr(kRamBase), DmaAddr(0), 16 * kMiB},
    {PhysAddr(kRamBase + 32 * kMiB), DmaAddr(0x1000'0000), 16 * kMiB},
};

HostPlatform::Options options() {
  HostPlatform::Options o;
  o.ram.push_back(PhysRange{PhysAddr(kRamBase), 64 * kMiB});
  o.pools.push_back(HostPlatform::PoolSpec{4 * kMiB, kMaskLow});
  o.platform_coherent = true;
  return o;
}

class DmaWindowsTest : public testing::Test {
 protected:
  DmaWindowsTest() : plat_(options()), dev_(&plat_.op(), kMask32) {
    EXPECT_TRUE(dev_.set_dma_windows(kWindows, 2).ok());
  }
  void TearDown() override {
    for (uint64_t p : held_) ASSERT_TRUE(plat_.pfa().free(PhysAddr(p), 0).ok());
  }
  // A page of RAM ending at or below `limit` (the allocator gives the highest free one).
  uint64_t page_below(uint64_t limit) {
    auto pa = plat_.pfa().alloc(0, limit);
    EXPECT_TRUE(pa.ok());
    held_.push_back(pa->value());
    return pa->value();
  }
  uint64_t used_slots() { return plat_.pool(0).stats().used_slots; }

  HostPlatform plat_;
  DeviceDma dev_;
  std::vector<uint64_t> held_;
};

TEST_F(DmaWindowsTest, EachWindowTranslatesItsOwnRange) {
  uint64_t p1 = page_below(kRamBase + 48 * kMiB - 1);
  ASSERT_GE(p1, kRamBase + 32 * kMiB);
  auto m = dev_.map(plat_.phys_to_virt(p1), 256, DmaDirection::kToDevice);
  ASSERT_TRUE(m.ok());
  EXPECT_FALSE(m->bounced());
  EXPECT_EQ(m->dma_addr().value(), p1 - (kRamBase + 32 * kMiB) + 0x1000'0000);
  EXPECT_FALSE(dev_.need_sync(m->dma_addr()));
}

TEST_F(DmaWindowsTest, RamBetweenTheWindowsBouncesIntoASlotAWindowReaches) {
  uint64_t gap = page_below(kRamBase + 32 * kMiB - 1);
  ASSERT_GE(gap, kRamBase + 16 * kMiB);
  auto m = dev_.map(plat_.phys_to_virt(gap), 512, DmaDirection::kBidirectional);
  ASSERT_TRUE(m.ok());
  EXPECT_TRUE(m->bounced());
  // The slot lies in the pool, seen through W0 at physical - RAM base.
  uint64_t slot_phys = m->dma_addr().value() + kRamBase;
  EXPECT_TRUE(plat_.pool(0).contains(PhysAddr(slot_phys)));
  EXPECT_TRUE(dev_.need_sync(m->dma_addr()));
}

TEST_F(DmaWindowsTest, AMaskCuttingAWindowLimitsItsReach) {
  // The mask reaches W0 whole and none of W1: a buffer in W1 now bounces.
  ASSERT_TRUE(dev_.set_dma_mask(16 * kMiB - 1).ok());
  uint64_t p1 = page_below(kRamBase + 48 * kMiB - 1);
  auto m = dev_.map(plat_.phys_to_virt(p1), 64, DmaDirection::kToDevice);
  ASSERT_TRUE(m.ok());
  EXPECT_TRUE(m->bounced());
  EXPECT_LE(m->dma_addr().value(), 16 * kMiB - 1);
}

TEST_F(DmaWindowsTest, CoherentMemoryComesFromAWindow) {
  auto a = dev_.alloc_array<uint8_t>(8192);
  ASSERT_TRUE(a.ok());
  uint64_t phys = a->handle().phys.value();
  bool in_w0 = phys >= kRamBase && phys + 8191 < kRamBase + 16 * kMiB;
  bool in_w1 = phys >= kRamBase + 32 * kMiB && phys + 8191 < kRamBase + 48 * kMiB;
  ASSERT_TRUE(in_w0 || in_w1) << std::hex << phys;
  uint64_t want = in_w0 ? phys - kRamBase : phys - (kRamBase + 32 * kMiB) + 0x1000'0000;
  EXPECT_EQ(a->dma_addr(0).value(), want);
}

TEST_F(DmaWindowsTest, RequiredMaskAndMaskChecksGoThroughTheWindows) {
  // The highest device address of RAM: the end of W1, 0x10FF'FFFF.
  EXPECT_EQ(dev_.required_mask(), 0x1FFF'FFFFull);
  uint64_t before = used_slots();
  uint64_t free_before = plat_.pfa().free_pages();
  // Under 0xFFFF only the first 64 KiB of W0: no pool, and RAM is not covered.
  EXPECT_EQ(dev_.set_dma_mask(0xFFFF).code(), ErrorCode::kDmaMaskNotMatch);
  EXPECT_EQ(dev_.dma_mask(), kMask32);
  // Coherent memory: some managed page lies there.
  EXPECT_TRUE(dev_.set_coherent_mask(0xFFFF).ok());
  EXPECT_EQ(used_slots(), before);
  EXPECT_EQ(plat_.pfa().free_pages(), free_before);
}

TEST_F(DmaWindowsTest, NoWindowNoPoolIsAMaskMismatch) {
  // Only W1: no pool reachable; a buffer outside it cannot be mapped.
  DeviceDma dev(&plat_.op(), kMask32);
  ASSERT_TRUE(dev.set_dma_windows(&kWindows[1], 1).ok());
  uint64_t gap = page_below(kRamBase + 32 * kMiB - 1);
  uint64_t before = used_slots();
  auto m = dev.map(plat_.phys_to_virt(gap), 64, DmaDirection::kToDevice);
  EXPECT_EQ(m.code(), ErrorCode::kDmaMaskNotMatch);
  EXPECT_EQ(used_slots(), before);
}

TEST_F(DmaWindowsTest, BadWindowsAreRefusedAndChangeNothing) {
  DeviceDma dev(&plat_.op(), kMask32);
  const DmaWindow empty[1] = {{PhysAddr(kRamBase), DmaAddr(0), 0}};
  const DmaWindow wraps[1] = {{PhysAddr(~0ull - 4095), DmaAddr(0), 8192}};
  EXPECT_EQ(dev.set_dma_windows(empty, 1).code(), ErrorCode::kInvalidArgument);
  EXPECT_EQ(dev.set_dma_windows(wraps, 1).code(), ErrorCode::kInvalidArgument);
  EXPECT_EQ(dev.set_dma_windows(nullptr, 2).code(), ErrorCode::kInvalidArgument);
  EXPECT_EQ(dev.set_dma_windows(kWindows, kMaxDmaWindows + 1).code(), ErrorCode::kInvalidArgument);
  EXPECT_EQ(dev.constraints().num_windows, 0u);
  // Constraints built by hand with a bad window are refused by the DmaOp itself.
  DmaConstraints c;
  c.windows = empty;
  c.num_windows = 1;
  uint64_t page = page_below(kRamBase + 48 * kMiB - 1);
  uint64_t free_before = plat_.pfa().free_pages();
  EXPECT_EQ(
      plat_.op().map_single(c, plat_.phys_to_virt(page), 64, 0, DmaDirection::kToDevice).code(),
      ErrorCode::kInvalidArgument);
  EXPECT_EQ(plat_.op().alloc_coherent(c, Layout{4096, 0}).code(), ErrorCode::kInvalidArgument);
  EXPECT_EQ(plat_.pfa().free_pages(), free_before);
  EXPECT_EQ(used_slots(), 0u);
}

TEST_F(DmaWindowsTest, MapResourceTranslatesThroughAWindow) {
  const DmaWindow mmio[2] = {kWindows[0], {PhysAddr(0x1000'0000), DmaAddr(0x8000'0000), kMiB}};
  DeviceDma dev(&plat_.op(), kMask32);
  ASSERT_TRUE(dev.set_dma_windows(mmio, 2).ok());
  auto d = dev.map_resource(PhysAddr(0x1000'1000), 64, DmaDirection::kToDevice);
  ASSERT_TRUE(d.ok());
  EXPECT_EQ(d->value(), 0x8000'1000ull);
  EXPECT_EQ(dev.map_resource(PhysAddr(0x2000'0000), 64, DmaDirection::kToDevice).code(),
            ErrorCode::kDmaMaskNotMatch);  // In no window.
}

}  // namespace
