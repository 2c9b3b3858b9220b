// map_single's inline case is a special case of its one validation: whatever the general path
// refuses, the inline case refuses too, and an injected mapping fault (a stand-in for running out
// of a resource) fires only for a request that is otherwise valid.
#include <gtest/gtest.h>

#include <vector>

#include "arch/host/host_platform.h"
#include "dmakit/kernel_dma_op.h"
#include "dmakit/support/fault_injection.h"

namespace {

class MapPathTest : public testing::Test {
 protected:
  MapPathTest() : plat_(HostPlatform::default_options()) {}
  ~MapPathTest() override { support::FaultInjector::disarm_all(); }
  void TearDown() override {
    for (auto& b : held_) ASSERT_TRUE(plat_.pfa().free(PhysAddr(b.first), b.second).ok());
  }
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

// A zero mask is kInvalidArgument for every device, even where the bus offset puts the buffer's
// one byte at DMA address 0 (the only address such a mask would reach) and the device snoops, so
// that the request is otherwise the inline case's.
TEST_F(MapPathTest, ZeroMaskIsRefusedOnEveryPath) {
  uint8_t* buf = buffer(4096);
  for (DmaCoherence coherence : {DmaCoherence::kCoherent, DmaCoherence::kNonCoherent}) {
    DmaConstraints c;
    c.coherence = coherence;
    c.dma_mask = 0;
    c.bus_offset = 0 - phys_of(buf);  // The device sees the buffer at DMA address 0.
    auto m = plat_.op().map_single(c, buf, 1, 0, DmaDirection::kToDevice);
    EXPECT_EQ(m.code(), ErrorCode::kInvalidArgument) << "coherence " << static_cast<int>(coherence);
    if (m.ok()) plat_.op().unmap_single(*m);
  }
#if DMA_STATS  // KernelDmaOp::stats() counts only with DMA_STATS.
  EXPECT_EQ(plat_.op().stats().live_maps, 0u);
#endif
}

#if DMA_FAULT_INJECTION  // Fault injection: debug builds only.
// A request the validation refuses gets its own error; the armed fault waits for the next valid
// request, on either path.
TEST_F(MapPathTest, InjectedFaultFiresOnlyForValidRequests) {
  uint8_t* buf = buffer(4096);
  auto* wrap = reinterpret_cast<uint8_t*>(~uintptr_t{0} - 10);
  for (DmaCoherence coherence : {DmaCoherence::kCoherent, DmaCoherence::kNonCoherent}) {
    DmaConstraints c;
    c.coherence = coherence;
    support::FaultInjector::fail_nth(support::FaultSite::kMapping, 1);
    EXPECT_EQ(plat_.op().map_single(c, buf, 16, 3, DmaDirection::kToDevice).code(),
              ErrorCode::kLayoutError);
    EXPECT_EQ(plat_.op().map_single(c, wrap, 100, 0, DmaDirection::kToDevice).code(),
              ErrorCode::kLayoutError);
    DmaConstraints no_mask = c;
    no_mask.dma_mask = 0;
    EXPECT_EQ(plat_.op().map_single(no_mask, buf, 16, 0, DmaDirection::kToDevice).code(),
              ErrorCode::kInvalidArgument);
    EXPECT_EQ(support::FaultInjector::hits(support::FaultSite::kMapping), 0u);
    auto faulted = plat_.op().map_single(c, buf, 16, 0, DmaDirection::kToDevice);
    EXPECT_EQ(faulted.code(), ErrorCode::kNoMemory);
    if (faulted.ok()) plat_.op().unmap_single(*faulted);
    auto ok = plat_.op().map_single(c, buf, 16, 0, DmaDirection::kToDevice);
    ASSERT_TRUE(ok.ok());
    plat_.op().unmap_single(*ok);
  }
}
#endif

}  // namespace
