// Scatter-gather: merging, splitting at size limits and boundaries, bounced entries, and that an
// error leaves nothing mapped.
#include "dmakit/scatter_gather.h"

#include <gtest/gtest.h>

#include <cstring>
#include <vector>

#include "arch/host/host_platform.h"
#include "dmakit/support/fault_injection.h"

namespace {

constexpr uint64_t kMask64 = ~0ull;
constexpr uint64_t kMask30 = (1ull << 30) - 1;

HostPlatform::Options options() {
  HostPlatform::Options o;
  o.ram.push_back(PhysRange{PhysAddr(0x3C00'0000), 128ull << 20});
  o.pools.push_back(HostPlatform::PoolSpec{4ull << 20, kMask30});
  return o;
}

class ScatterGatherTest : public testing::Test {
 protected:
  ScatterGatherTest() : plat_(options()), dev_(&plat_.op(), kMask64) {}
  ~ScatterGatherTest() override { support::FaultInjector::disarm_all(); }
  // A 64 KiB physically contiguous scratch area below 1 GiB.
  uint8_t* low_area() {
    if (low_ == nullptr) {
      auto pa = plat_.pfa().alloc(4, kMask30);
      EXPECT_TRUE(pa.ok());
      low_phys_ = pa->value();
      low_ = plat_.phys_to_virt(low_phys_);
    }
    return low_;
  }
  void TearDown() override {
    if (low_ != nullptr) ASSERT_TRUE(plat_.pfa().free(PhysAddr(low_phys_), 4).ok());
  }
  HostPlatform plat_;
  DeviceDma dev_;
  uint8_t* low_ = nullptr;
  uint64_t low_phys_ = 0;
};

TEST_F(ScatterGatherTest, TouchingBuffersMergeIntoOneSegment) {
  uint8_t* a = low_area();
  SgEntry e[] = {{a, 1000}, {a + 1000, 3000}, {a + 4000, 96}};
  SgList<4> sg;
  ASSERT_TRUE(sg.map(dev_, e, DmaDirection::kToDevice).ok());
  ASSERT_EQ(sg.segments().size(), 1u);
  EXPECT_EQ(sg.segments()[0].addr.value(), low_phys_);
  EXPECT_EQ(sg.segments()[0].size, 4096u);
  EXPECT_EQ(sg.mapping().num_buffers(), 3u);
#if DMA_STATS  // KernelDmaOp::stats() counts only with DMA_STATS.
  EXPECT_EQ(plat_.op().stats().live_maps, 3u);
#endif
}

TEST_F(ScatterGatherTest, GapsMakeSeparateSegments) {
  uint8_t* a = low_area();
  SgEntry e[] = {{a, 100}, {a + 200, 100}, {a + 300, 100}};
  SgList<4> sg;
  ASSERT_TRUE(sg.map(dev_, e, DmaDirection::kToDevice).ok());
  ASSERT_EQ(sg.segments().size(), 2u);
  EXPECT_EQ(sg.segments()[0].size, 100u);
  EXPECT_EQ(sg.segments()[1].addr.value(), low_phys_ + 200);
  EXPECT_EQ(sg.segments()[1].size, 200u);
}

TEST_F(ScatterGatherTest, MaxSegmentSizeSplits) {
  uint8_t* a = low_area();
  SgEntry e[] = {{a, 10000}};
  SgLimits lim;
  lim.max_segment_size = 4096;
  SgList<1, 4> sg;
  ASSERT_TRUE(sg.map(dev_, e, DmaDirection::kToDevice, lim).ok());
  ASSERT_EQ(sg.segments().size(), 3u);
  EXPECT_EQ(sg.segments()[0].size, 4096u);
  EXPECT_EQ(sg.segments()[1].size, 4096u);
  EXPECT_EQ(sg.segments()[2].size, 10000u - 8192u);
  EXPECT_EQ(sg.segments()[2].addr.value(), low_phys_ + 8192);
}

TEST_F(ScatterGatherTest, SegmentsNeverCrossTheBoundary) {
  uint8_t* a = low_area();
  SgEntry e[] = {{a + 100, 3000}, {a + 3100, 6000}};
  SgLimits lim;
  lim.segment_boundary_mask = 0xFFF;
  SgList<2, 8> sg;
  ASSERT_TRUE(sg.map(dev_, e, DmaDirection::kToDevice, lim).ok());
  uint64_t total = 0;
  for (const DmaSegment& s : sg.segments()) {
    EXPECT_EQ(s.addr.value() / 4096, (s.addr.value() + s.size - 1) / 4096);
    total += s.size;
  }
  EXPECT_EQ(total, 9000u);
  EXPECT_EQ(sg.segments().size(), 3u);  // [100,4096) [4096,8192) [8192,9100)
}

TEST_F(ScatterGatherTest, BouncedEntriesCarryTheirData) {
  uint8_t* hi1 = plat_.buffer_above(1ull << 30, 4096);
  uint8_t* hi2 = plat_.buffer_above(1ull << 30, 4096);
  std::memset(hi1, 0x11, 4096);
  std::memset(hi2, 0x22, 4096);
  DeviceDma dev30(&plat_.op(), kMask30);
  SgEntry e[] = {{hi1, 4096}, {hi2 + 10, 2000}};
  {
    SgList<2> sg;
    ASSERT_TRUE(sg.map(dev30, e, DmaDirection::kToDevice).ok());
    HostDevice hw(&plat_, kMask30, false);
    std::vector<uint8_t> got;
    for (const DmaSegment& s : sg.segments()) {
      std::vector<uint8_t> part(s.size);
      hw.read(s.addr, part.data(), part.size());
      got.insert(got.end(), part.begin(), part.end());
    }
    ASSERT_EQ(got.size(), 6096u);
    EXPECT_EQ(got[0], 0x11);
    EXPECT_EQ(got[4095], 0x11);
    EXPECT_EQ(got[4096], 0x22);
#if DMA_STATS  // KernelDmaOp::stats() counts only with DMA_STATS.
    EXPECT_EQ(plat_.op().stats().bounced_maps, 2u);
#endif
  }
  EXPECT_EQ(plat_.pool(0).stats().used_slots, 0u);
  plat_.release_buffer(hi1);
  plat_.release_buffer(hi2);
}

TEST_F(ScatterGatherTest, FromDeviceSyncAndUnmapBringDataBack) {
  uint8_t* a = low_area();
  std::memset(a, 0, 8192);
  SgEntry e[] = {{a, 512}, {a + 4096, 512}};
  SgList<2> sg;
  ASSERT_TRUE(sg.map(dev_, e, DmaDirection::kFromDevice).ok());
  HostDevice hw(&plat_, kMask64, false);
  for (const DmaSegment& s : sg.segments()) hw.fill(s.addr, 0x5E, s.size);
  ASSERT_TRUE(sg.mapping().sync_for_cpu().ok());
  EXPECT_EQ(a[0], 0x5E);
  EXPECT_EQ(a[4096 + 511], 0x5E);
  EXPECT_EQ(a[512], 0);
  ASSERT_TRUE(sg.mapping().sync_for_device().ok());
  sg.mapping().unmap();
  EXPECT_EQ(sg.mapping().sync_for_cpu().code(), ErrorCode::kInvalidArgument);
#if DMA_STATS  // KernelDmaOp::stats() counts only with DMA_STATS.
  EXPECT_EQ(plat_.op().stats().live_maps, 0u);
#endif
}

TEST_F(ScatterGatherTest, BadInputsAreRejected) {
  uint8_t* a = low_area();
  SgList<2> sg;
  SgEntry zero[] = {{a, 0}};
  EXPECT_EQ(sg.map(dev_, zero, DmaDirection::kToDevice).code(), ErrorCode::kLayoutError);
  EXPECT_EQ(sg.map(dev_, support::Span<const SgEntry>(), DmaDirection::kToDevice).code(),
            ErrorCode::kLayoutError);
  SgEntry one[] = {{a, 10}};
  SgLimits bad;
  bad.segment_boundary_mask = 0x1234;
  EXPECT_EQ(sg.map(dev_, one, DmaDirection::kToDevice, bad).code(), ErrorCode::kLayoutError);
  SgLimits none;
  none.max_segment_size = 0;
  EXPECT_EQ(sg.map(dev_, one, DmaDirection::kToDevice, none).code(), ErrorCode::kLayoutError);
  SgEntry three[] = {{a, 10}, {a + 20, 10}, {a + 40, 10}};
  EXPECT_EQ(sg.map(dev_, three, DmaDirection::kToDevice).code(), ErrorCode::kOutOfRange);
#if DMA_STATS  // KernelDmaOp::stats() counts only with DMA_STATS.
  EXPECT_EQ(plat_.op().stats().live_maps, 0u);
#endif
}

TEST_F(ScatterGatherTest, TooFewSegmentsUnmapsEverything) {
  uint8_t* a = low_area();
  SgEntry e[] = {{a, 100}, {a + 200, 100}};
  SgList<2, 1> sg;
  EXPECT_EQ(sg.map(dev_, e, DmaDirection::kToDevice).code(), ErrorCode::kOutOfRange);
#if DMA_STATS  // KernelDmaOp::stats() counts only with DMA_STATS.
  EXPECT_EQ(plat_.op().stats().live_maps, 0u);
#endif
}

#if DMA_FAULT_INJECTION  // Fault injection: debug builds only.
TEST_F(ScatterGatherTest, FailureAtEveryMappingLeavesNothingMapped) {
  uint8_t* hi = plat_.buffer_above(1ull << 30, 16384);
  DeviceDma dev30(&plat_.op(), kMask30);
  SgEntry e[] = {{hi, 4096}, {hi + 4096, 4096}, {hi + 8192, 4096}, {hi + 12288, 4096}};
  for (uint64_t n = 1; n <= 4; ++n) {
    for (auto site : {support::FaultSite::kMapping, support::FaultSite::kBounceSlot}) {
      support::FaultInjector::fail_nth(site, n);
      SgList<4> sg;
      EXPECT_EQ(sg.map(dev30, e, DmaDirection::kToDevice).code(), ErrorCode::kNoMemory);
#if DMA_STATS  // KernelDmaOp::stats() counts only with DMA_STATS.
      EXPECT_EQ(plat_.op().stats().live_maps, 0u);
#endif
      EXPECT_EQ(plat_.pool(0).stats().used_slots, 0u);
      support::FaultInjector::disarm_all();
    }
  }
  plat_.release_buffer(hi);
}
#endif

TEST_F(ScatterGatherTest, MoveKeepsOneOwner) {
  uint8_t* a = low_area();
  DmaMapHandle handles[1];
  DmaSegment segs[1];
  SgEntry e[] = {{a, 64}};
  auto m =
      SgMapping::map(dev_, e, DmaDirection::kToDevice, SgLimits{},
                     support::Span<DmaMapHandle>(handles, 1), support::Span<DmaSegment>(segs, 1));
  ASSERT_TRUE(m.ok());
  SgMapping owner = std::move(*m);
  EXPECT_FALSE(m->valid());
  EXPECT_TRUE(owner.valid());
  SgMapping other;
  other = std::move(owner);
#if DMA_STATS  // KernelDmaOp::stats() counts only with DMA_STATS.
  EXPECT_EQ(plat_.op().stats().live_maps, 1u);
#endif
  other.unmap();
#if DMA_STATS  // KernelDmaOp::stats() counts only with DMA_STATS.
  EXPECT_EQ(plat_.op().stats().live_maps, 0u);
#endif
}

}  // namespace

// ---- Receive buffers of a non-coherent device that share cache lines ---------------------------

class SgSharedLineTest : public ScatterGatherTest {
 protected:
  SgSharedLineTest() : rx_(&plat_.op(), kMask64) { rx_.set_coherent(false); }
  DeviceDma rx_;
};

// A large receive buffer whose first and last lines hold other data: the two partial lines are
// bounced on their own, the aligned middle goes to the device directly, and every device byte
// and every neighbour's CPU write survives.
TEST_F(SgSharedLineTest, LargeBufferSplitsAtItsPartialEdgeLines) {
  uint8_t* a = low_area();
  constexpr size_t kOff = 40;
  constexpr size_t kSize = 5 * 4096 + 17;
  std::memset(a, 0x11, 8 * 4096);
  SgEntry e[] = {{a + kOff, kSize}};
  SgList<1> sg;
  ASSERT_TRUE(sg.map(rx_, e, DmaDirection::kFromDevice).ok());
  ASSERT_EQ(sg.mapping().num_buffers(), 3u);
  ASSERT_EQ(sg.segments().size(), 3u);
  EXPECT_EQ(sg.segments()[0].size, 64 - kOff);
  EXPECT_EQ(sg.segments()[1].addr.value(), low_phys_ + 64);
  EXPECT_EQ(sg.segments()[1].size, (kOff + kSize) / 64 * 64 - 64);
  EXPECT_EQ(sg.segments()[2].size, (kOff + kSize) % 64);
  EXPECT_EQ(plat_.pool(0).stats().used_slots, 2u) << "only the two edge lines take slots";
  // The CPU writes the neighbours while the device writes the buffer, piece by piece.
  for (size_t i = 0; i < kOff; ++i) a[i] = 0xA0;
  for (size_t i = kOff + kSize; i < kOff + kSize + 64; ++i) a[i] = 0xB0;
  HostDevice dev(&plat_, kMask64, false);
  size_t done = 0;
  for (const DmaSegment& s : sg.segments()) {
    std::vector<uint8_t> data(s.size);
    for (size_t i = 0; i < s.size; ++i) data[i] = static_cast<uint8_t>((done + i) * 13 + 1);
    dev.write(s.addr, data.data(), data.size());
    done += s.size;
  }
  ASSERT_EQ(done, kSize);
  plat_.model().evict_all();
  sg.mapping().unmap();
  plat_.model().evict_all();
  for (size_t i = 0; i < kSize; ++i) {
    ASSERT_EQ(a[kOff + i], static_cast<uint8_t>(i * 13 + 1)) << "device byte " << i;
  }
  for (size_t i = 0; i < kOff; ++i) ASSERT_EQ(a[i], 0xA0) << i;
  for (size_t i = kOff + kSize; i < kOff + kSize + 64; ++i) ASSERT_EQ(a[i], 0xB0) << i;
  EXPECT_EQ(plat_.pool(0).stats().used_slots, 0u);
  EXPECT_EQ(plat_.op().stats().live_maps, 0u);
}

// Without room for more handles (a caller's own storage of one per buffer) the buffer is mapped
// whole, which bounces it whole; small buffers are never split.
TEST_F(SgSharedLineTest, NoRoomOrSmallBufferMapsWhole) {
  uint8_t* a = low_area();
  SgEntry big[] = {{a + 8, 5 * 4096}};
  DmaMapHandle handles[1];
  DmaSegment segments[3];
  auto m = SgMapping::map(rx_, big, DmaDirection::kBidirectional, SgLimits{},
                          support::Span<DmaMapHandle>(handles, 1),
                          support::Span<DmaSegment>(segments, 3));
  ASSERT_TRUE(m.ok());
  EXPECT_EQ(m->num_buffers(), 1u);
  EXPECT_TRUE(handles[0].bounced());
  m->unmap();
  SgEntry small[] = {{a + 8, 3000}};
  SgList<1> sg;
  ASSERT_TRUE(sg.map(rx_, small, DmaDirection::kFromDevice).ok());
  EXPECT_EQ(sg.mapping().num_buffers(), 1u);
  EXPECT_EQ(sg.segments().size(), 1u);
  // A buffer the device only reads is never split (nothing it writes can be lost).
  SgList<1> tx;
  ASSERT_TRUE(tx.map(rx_, big, DmaDirection::kToDevice).ok());
  EXPECT_EQ(tx.mapping().num_buffers(), 1u);
  EXPECT_EQ(plat_.pool(0).stats().used_slots, 2u);  // The small receive buffer's 3000 bytes.
}
