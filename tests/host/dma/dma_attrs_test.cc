// Attributes on mappings and allocations (issue 15, item 5): kDmaAttrSkipCpuSync,
// kDmaAttrWriteCombine (alloc_wc), kDmaAttrNoKernelMapping and kDmaAttrWeakOrdering. The cache
// model shows which maintenance happened; refusals leave every counter as it was.
#include <gtest/gtest.h>

#include <cstring>

#include "arch/host/host_platform.h"
#include "dmakit/device_dma.h"

namespace {

constexpr uint64_t kMask32 = 0xFFFF'FFFFull;

class DmaAttrsTest : public testing::Test {
 protected:
  explicit DmaAttrsTest(const HostPlatform::Options& o = HostPlatform::default_options())
      : plat_(o), dev_(&plat_.op(), kMask32), hw_(&plat_, kMask32, /*coherent=*/false) {}
  uint8_t* page() {
    auto pa = plat_.pfa().alloc(0);
    EXPECT_TRUE(pa.ok());
    held_.push_back(pa->value());
    return plat_.phys_to_virt(pa->value());
  }
  void TearDown() override {
    for (uint64_t p : held_) ASSERT_TRUE(plat_.pfa().free(PhysAddr(p), 0).ok());
  }
  struct Counters {
    uint64_t free_pages;
    uint64_t used_slots;
    uint64_t attribute_changes;
  };
  Counters counters() {
    return {plat_.pfa().free_pages(), plat_.pool(0).stats().used_slots,
            plat_.op().attribute_changes()};
  }
  void expect_same(const Counters& a) {
    Counters b = counters();
    EXPECT_EQ(a.free_pages, b.free_pages);
    EXPECT_EQ(a.used_slots, b.used_slots);
    EXPECT_EQ(a.attribute_changes, b.attribute_changes);
  }

  HostPlatform plat_;
  DeviceDma dev_;  // Does not snoop.
  HostDevice hw_;
  std::vector<uint64_t> held_;
};

// ---- kDmaAttrSkipCpuSync ----

TEST_F(DmaAttrsTest, SkipCpuSyncLeavesTheCleanToTheDriver) {
  uint8_t* buf = page();
  std::memset(buf, 0x77, 256);  // Dirty in the CPU's cache.
  auto m = dev_.map_attrs(buf, 256, DmaDirection::kToDevice, kDmaAttrSkipCpuSync);
  ASSERT_TRUE(m.ok());
  ASSERT_FALSE(m->bounced());
  EXPECT_TRUE(m->handle().skip_cpu_sync);
  uint8_t seen = 0;
  hw_.read(m->dma_addr(), &seen, 1);
  EXPECT_NE(seen, 0x77);                         // Not cleaned at map.
  ASSERT_TRUE(m->sync_for_device(0, 256).ok());  // The driver's own sync.
  hw_.read(m->dma_addr(), &seen, 1);
  EXPECT_EQ(seen, 0x77);
}

TEST_F(DmaAttrsTest, WithoutTheAttributeTheMapCleans) {
  uint8_t* buf = page();
  std::memset(buf, 0x77, 256);
  auto m = dev_.map_attrs(buf, 256, DmaDirection::kToDevice, kDmaAttrWeakOrdering);
  ASSERT_TRUE(m.ok());
  EXPECT_FALSE(m->handle().skip_cpu_sync);
  uint8_t seen = 0;
  hw_.read(m->dma_addr(), &seen, 1);
  EXPECT_EQ(seen, 0x77);
}

TEST_F(DmaAttrsTest, SkipCpuSyncUnmapDoesNotCopyOutOfTheBounceSlot) {
  uint8_t* buf = page();
  std::memset(buf, 0x11, 512);
  DeviceDma coh(&plat_.op(), kMask32);
  coh.set_coherent(true);
  coh.set_force_bounce(true);
  HostDevice hw(&plat_, kMask32, /*coherent=*/true);
  {
    auto m = coh.map_attrs(buf, 512, DmaDirection::kFromDevice, kDmaAttrSkipCpuSync);
    ASSERT_TRUE(m.ok());
    ASSERT_TRUE(m->bounced());
    hw.fill(m->dma_addr(), 0x22, 512);
  }  // Unmapped: no copy out.
  EXPECT_EQ(buf[0], 0x11);
  {
    auto m = coh.map_attrs(buf, 512, DmaDirection::kFromDevice, kDmaAttrSkipCpuSync);
    ASSERT_TRUE(m.ok());
    hw.fill(m->dma_addr(), 0x33, 512);
    ASSERT_TRUE(m->sync_for_cpu(0, 256).ok());  // The driver syncs what it reads.
  }
  EXPECT_EQ(buf[0], 0x33);
  EXPECT_EQ(buf[255], 0x33);
  EXPECT_EQ(buf[256], 0x11);
  EXPECT_EQ(plat_.pool(0).stats().used_slots, 0u);
}

TEST_F(DmaAttrsTest, AllocationAttributesOnAMapAreRefused) {
  uint8_t* buf = page();
  Counters before = counters();
  EXPECT_EQ(dev_.map_attrs(buf, 64, DmaDirection::kToDevice, kDmaAttrWriteCombine).code(),
            ErrorCode::kInvalidArgument);
  EXPECT_EQ(dev_.map_attrs(buf, 64, DmaDirection::kToDevice, kDmaAttrNoKernelMapping).code(),
            ErrorCode::kInvalidArgument);
  EXPECT_EQ(dev_.map_attrs(buf, 64, DmaDirection::kToDevice, 1u << 9).code(),
            ErrorCode::kInvalidArgument);
  expect_same(before);
}

// ---- alloc_wc and the allocation attributes ----

TEST_F(DmaAttrsTest, AllocWcIsNotCachedForAnyDevice) {
  for (bool coherent : {false, true}) {
    DeviceDma dev(&plat_.op(), kMask32);
    dev.set_coherent(coherent);
    uint64_t changes = plat_.op().attribute_changes();
    auto a = dev.alloc_wc<uint32_t>(256);
    ASSERT_TRUE(a.ok()) << coherent;
    EXPECT_TRUE(a->handle().write_combine);
    EXPECT_TRUE(a->handle().remapped);
    EXPECT_EQ(plat_.op().attribute_changes(), changes + 1);
    a->write(9, 0xABCD1234);
    uint32_t seen = 0;
    hw_.read(a->dma_addr(9), &seen, sizeof(seen));  // No clean: the CPU does not cache it.
    EXPECT_EQ(seen, 0xABCD1234u);
    a->reset();
    EXPECT_EQ(plat_.op().attribute_changes(), changes + 2);  // Cacheable again.
  }
}

TEST_F(DmaAttrsTest, BadAllocationAttributesAreRefused) {
  Counters before = counters();
  EXPECT_EQ(dev_.alloc_attrs<uint8_t>(64, kDmaAttrWriteCombine | kDmaAttrNoKernelMapping).code(),
            ErrorCode::kInvalidArgument);
  EXPECT_EQ(dev_.alloc_attrs<uint8_t>(64, kDmaAttrSkipCpuSync).code(), ErrorCode::kInvalidArgument);
  EXPECT_EQ(dev_.alloc_attrs<uint8_t>(64, 1u << 12).code(), ErrorCode::kInvalidArgument);
  EXPECT_EQ(dev_.alloc_attrs<uint8_t>(0, kDmaAttrWriteCombine).code(), ErrorCode::kLayoutError);
  DeviceDma below(&plat_.op(), 0xFFFF);
  EXPECT_EQ(below.alloc_wc<uint8_t>(64).code(), ErrorCode::kDmaMaskNotMatch);
  expect_same(before);
}

TEST_F(DmaAttrsTest, NoKernelMappingSkipsTheUncachedRemap) {
  Counters before = counters();
  {
    auto a = dev_.alloc_attrs<uint8_t>(8192, kDmaAttrNoKernelMapping | kDmaAttrWeakOrdering);
    ASSERT_TRUE(a.ok());
    EXPECT_FALSE(a->handle().remapped);
    EXPECT_EQ(plat_.op().attribute_changes(), before.attribute_changes);
    // The device sees zeroes (cleaned once), and what it writes stays in memory.
    uint8_t seen[64];
    hw_.read(a->dma_addr(100), seen, sizeof(seen));
    for (uint8_t b : seen) EXPECT_EQ(b, 0);
    hw_.fill(a->dma_addr(0), 0x5C, 8192);
    hw_.read(a->dma_addr(4000), seen, sizeof(seen));
    EXPECT_EQ(seen[0], 0x5C);
  }
  expect_same(before);
}

TEST_F(DmaAttrsTest, WeakOrderingAloneIsAPlainCoherentAllocation) {
  auto a = dev_.alloc_attrs<uint32_t>(16, kDmaAttrWeakOrdering);
  ASSERT_TRUE(a.ok());
  EXPECT_TRUE(a->handle().remapped);  // Uncached for this non-coherent device, as alloc_array.
  EXPECT_FALSE(a->handle().write_combine);
}

HostPlatform::Options no_wc() {
  auto o = HostPlatform::default_options();
  o.uncached.write_combine = false;
  return o;
}

class DmaAttrsNoWcTest : public DmaAttrsTest {
 protected:
  DmaAttrsNoWcTest() : DmaAttrsTest(no_wc()) {}
};

TEST_F(DmaAttrsNoWcTest, AllocWcWithoutTheEncodingIsNotSupportedAndLeavesNothing) {
  Counters before = counters();
  EXPECT_EQ(dev_.alloc_wc<uint32_t>(256).code(), ErrorCode::kNotSupported);
  DeviceDma coh(&plat_.op(), kMask32);
  coh.set_coherent(true);
  EXPECT_EQ(coh.alloc_wc<uint32_t>(256).code(), ErrorCode::kNotSupported);
  expect_same(before);
  EXPECT_TRUE(dev_.alloc_array<uint32_t>(256).ok());  // Uncached memory is still there.
}

}  // namespace
