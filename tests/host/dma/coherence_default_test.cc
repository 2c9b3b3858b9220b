// One coherence default: constraints that do not name a coherence (DmaConstraints{}, a DeviceDma
// built from them) get the platform's, on every entry point: map_single's fast and general paths,
// alloc_coherent, max_mapping_size and DeviceDma.
#include <gtest/gtest.h>

#include <cstring>
#include <vector>

#include "arch/host/host_platform.h"
#include "dmakit/device_dma.h"
#include "dmakit/kernel_dma_op.h"

namespace {

constexpr uint64_t kMask32 = 0xFFFF'FFFFull;

HostPlatform::Options platform(bool coherent) {
  HostPlatform::Options o = HostPlatform::default_options();
  o.platform_coherent = coherent;
  return o;
}

class CoherenceDefaultTest : public testing::TestWithParam<bool> {
 protected:
  CoherenceDefaultTest() : plat_(platform(GetParam())) {}
  void TearDown() override {
    for (auto& b : held_) ASSERT_TRUE(plat_.pfa().free(PhysAddr(b.first), b.second).ok());
  }
  bool platform_coherent() const { return GetParam(); }
  uint8_t* buffer(size_t bytes) {
    unsigned order = PageFrameAllocator::order_for(bytes);
    auto pa = plat_.pfa().alloc(order);
    EXPECT_TRUE(pa.ok());
    held_.push_back({pa->value(), order});
    return plat_.phys_to_virt(pa->value());
  }
  uint64_t phys_of(const void* p) { return plat_.op().virt_to_phys(p)->value(); }

  HostPlatform plat_;
  std::vector<std::pair<uint64_t, unsigned>> held_;
};

// A receive buffer that shares its cache lines with other data: bounced for a device that does
// not snoop (its unmap's invalidate would lose the neighbours' bytes), mapped as it is for one
// that does.
TEST_P(CoherenceDefaultTest, UnnamedCoherenceFollowsThePlatformForSharedLines) {
  uint8_t* buf = buffer(4096);
  DmaConstraints c;  // Coherence not named.
  c.dma_mask = kMask32;
  auto m = plat_.op().map_single(c, buf + 1, 100, 0, DmaDirection::kFromDevice);
  ASSERT_TRUE(m.ok());
  EXPECT_EQ(m->bounced(), !platform_coherent());
  EXPECT_EQ(m->coherent_device, platform_coherent());
  plat_.op().unmap_single(*m);
}

// The fast path's case (reachable, in the direct map, no alignment asked): a device that snoops
// gets no cache maintenance, so a CPU store still in the cache stays out of memory; one that does
// not gets its range cleaned, so memory holds the store.
TEST_P(CoherenceDefaultTest, UnnamedCoherenceFollowsThePlatformForCacheMaintenance) {
  uint8_t* buf = buffer(4096);
  std::memset(buf, 0x5A, 4096);  // Dirty in the CPU cache.
  DmaConstraints c;
  c.dma_mask = kMask32;
  auto m = plat_.op().map_single(c, buf, 4096, 0, DmaDirection::kToDevice);
  ASSERT_TRUE(m.ok());
  EXPECT_FALSE(m->bounced());
  EXPECT_EQ(m->coherent_device, platform_coherent());
  // A device that does not snoop reads memory as it is.
  HostDevice memory_view(&plat_, kMask32, /*coherent=*/false);
  uint8_t seen = 0;
  memory_view.read(DmaAddr(phys_of(buf)), &seen, 1);
  EXPECT_EQ(seen == 0x5A, !platform_coherent());
  plat_.op().unmap_single(*m);
}

// Coherent memory is remapped uncached only for a device that does not snoop.
TEST_P(CoherenceDefaultTest, UnnamedCoherenceFollowsThePlatformForCoherentMemory) {
  DmaConstraints c;
  c.dma_mask = kMask32;
  auto h = plat_.op().alloc_coherent(c, Layout{4096, 4096});
  ASSERT_TRUE(h.ok());
  EXPECT_EQ(h->remapped, !platform_coherent());
  EXPECT_EQ(h->coherent_device, platform_coherent());
  plat_.op().dealloc_coherent(*h);
}

// A device that reaches all memory and snoops never bounces: its mappings are not limited.
TEST_P(CoherenceDefaultTest, UnnamedCoherenceFollowsThePlatformForMaxMappingSize) {
  DmaConstraints c;  // 64-bit mask: reaches all memory.
  size_t limit = plat_.op().max_mapping_size(c);
  if (platform_coherent()) {
    EXPECT_EQ(limit, ~size_t{0});
  } else {
    EXPECT_EQ(limit, plat_.pool(0).max_mapping_size());
  }
}

// A DeviceDma built from constraints that name no coherence has the platform's, as one built from
// a mask alone has; and what it maps behaves accordingly.
TEST_P(CoherenceDefaultTest, DeviceDmaFromUnnamedConstraintsHasThePlatformsCoherence) {
  DmaConstraints c;
  c.dma_mask = kMask32;
  DeviceDma from_constraints(&plat_.op(), c);
  DeviceDma from_mask(&plat_.op(), kMask32);
  uint8_t* buf_a = buffer(4096);
  uint8_t* buf_b = buffer(4096);
  auto a = from_constraints.map(buf_a + 1, 100, DmaDirection::kFromDevice);
  auto b = from_mask.map(buf_b + 1, 100, DmaDirection::kFromDevice);
  ASSERT_TRUE(a.ok());
  ASSERT_TRUE(b.ok());
  EXPECT_EQ(a->bounced(), !platform_coherent());
  EXPECT_EQ(b->bounced(), !platform_coherent());
}

INSTANTIATE_TEST_SUITE_P(Platforms, CoherenceDefaultTest, testing::Bool(),
                         [](const testing::TestParamInfo<bool>& p) {
                           return p.param ? std::string("Coherent") : std::string("NonCoherent");
                         });

}  // namespace
