// The generic mapping layer against the host cache model: direct and bounced maps in every
// direction, the mask decision, every error path, and what a missing sync looks like.
#include "dmakit/kernel_dma_op.h"

#include <gtest/gtest.h>

#include <atomic>
#include <cstring>
#include <random>
#include <thread>
#include <vector>

#include "arch/host/host_platform.h"
#include "dmakit/support/fault_injection.h"

namespace {

constexpr uint64_t kMask30 = (1ull << 30) - 1;
constexpr uint64_t kMask32 = 0xFFFF'FFFFull;
constexpr uint64_t kMask64 = ~0ull;

// 128 MiB of RAM straddling 1 GiB, a bounce pool placed under 1 GiB: a 30-bit device reaches the
// lower half directly and needs bouncing for the upper half.
HostPlatform::Options straddling_options() {
  HostPlatform::Options o;
  o.ram.push_back(PhysRange{PhysAddr(0x3C00'0000), 128ull << 20});
  o.pools.push_back(HostPlatform::PoolSpec{4ull << 20, kMask30});
  return o;
}

struct Snapshot {
  uint64_t free_pages;
  uint64_t used_slots;
  uint64_t live_maps;
};

class KernelDmaOpTest : public testing::Test {
 protected:
  KernelDmaOpTest() : plat_(straddling_options()) {}
  ~KernelDmaOpTest() override { support::FaultInjector::disarm_all(); }

  KernelDmaOp& op() { return plat_.op(); }
  DmaConstraints device(uint64_t mask, bool coherent = false) {
    DmaConstraints c;
    c.dma_mask = mask;
    c.coherence = dma_coherence(coherent);
    return c;
  }
  // A buffer in RAM at or above 1 GiB (unreachable by a 30-bit device).
  uint8_t* high_buffer(size_t bytes) { return plat_.buffer_above(1ull << 30, bytes); }
  // A buffer entirely below 1 GiB.
  uint8_t* low_buffer(size_t bytes) {
    auto pa = plat_.pfa().alloc(PageFrameAllocator::order_for(bytes), kMask30);
    EXPECT_TRUE(pa.ok());
    low_.push_back({pa->value(), PageFrameAllocator::order_for(bytes)});
    return plat_.phys_to_virt(pa->value());
  }
  uint64_t phys_of(const void* p) { return op().virt_to_phys(p)->value(); }
  Snapshot snapshot() {
    return {plat_.pfa().free_pages(), plat_.pool(0).stats().used_slots, op().stats().live_maps};
  }
  void expect_unchanged(const Snapshot& s) {
    Snapshot now = snapshot();
    EXPECT_EQ(now.free_pages, s.free_pages);
    EXPECT_EQ(now.used_slots, s.used_slots);
#if DMA_STATS  // KernelDmaOp::stats() counts only with DMA_STATS.
    EXPECT_EQ(now.live_maps, s.live_maps);
#endif
  }
  void TearDown() override {
    for (auto& b : low_) ASSERT_TRUE(plat_.pfa().free(PhysAddr(b.first), b.second).ok());
  }

  HostPlatform plat_;
  std::vector<std::pair<uint64_t, unsigned>> low_;
};

TEST_F(KernelDmaOpTest, PageSizeIs4K) {
  EXPECT_EQ(op().page_size(), 4096u);
}

TEST_F(KernelDmaOpTest, DefaultConstraintsFollowThePlatform) {
  EXPECT_EQ(op().default_constraints().coherence, DmaCoherence::kNonCoherent);
  auto o = straddling_options();
  o.platform_coherent = true;
  HostPlatform coherent(o);
  EXPECT_EQ(coherent.op().default_constraints().coherence, DmaCoherence::kCoherent);
}

TEST_F(KernelDmaOpTest, ReachableBufferIsMappedDirectly) {
  uint8_t* buf = low_buffer(8192);
  auto m = op().map_single(device(kMask30), buf + 100, 5000, 0, DmaDirection::kToDevice);
  ASSERT_TRUE(m.ok());
  EXPECT_FALSE(m->bounced());
  EXPECT_EQ(m->dma_addr.value(), phys_of(buf) + 100);
#if DMA_STATS  // KernelDmaOp::stats() counts only with DMA_STATS.
  EXPECT_EQ(op().stats().direct_maps, 1u);
  EXPECT_EQ(op().stats().bounced_maps, 0u);
#endif
  op().unmap_single(*m);
#if DMA_STATS  // KernelDmaOp::stats() counts only with DMA_STATS.
  EXPECT_EQ(op().stats().live_maps, 0u);
#endif
}

TEST_F(KernelDmaOpTest, ToDeviceCleansSoTheDeviceSeesCpuWrites) {
  uint8_t* buf = low_buffer(4096);
  std::memset(buf, 0x5A, 4096);  // Dirty in the CPU cache, not yet in memory.
  HostDevice dev(&plat_, kMask30, false);
  std::vector<uint8_t> seen(4096);
  dev.read(DmaAddr(phys_of(buf)), seen.data(), seen.size());
  EXPECT_NE(seen[0], 0x5A) << "the model must show un-cleaned data as stale";
  auto m = op().map_single(device(kMask30), buf, 4096, 0, DmaDirection::kToDevice);
  ASSERT_TRUE(m.ok());
  dev.read(m->dma_addr, seen.data(), seen.size());
  EXPECT_EQ(seen, std::vector<uint8_t>(4096, 0x5A));
  op().unmap_single(*m);
}

TEST_F(KernelDmaOpTest, FromDeviceInvalidatesAtUnmap) {
  uint8_t* buf = low_buffer(4096);
  std::memset(buf, 0x11, 4096);
  auto m = op().map_single(device(kMask30), buf, 4096, 0, DmaDirection::kFromDevice);
  ASSERT_TRUE(m.ok());
  HostDevice dev(&plat_, kMask30, false);
  dev.fill(m->dma_addr, 0xC3, 4096);
  op().unmap_single(*m);
  for (size_t i = 0; i < 4096; ++i) ASSERT_EQ(buf[i], 0xC3) << i;
}

TEST_F(KernelDmaOpTest, MissingSyncIsSeenAsStaleData) {
  uint8_t* buf = low_buffer(4096);
  std::memset(buf, 0x11, 4096);
  auto m = op().map_single(device(kMask30), buf, 4096, 0, DmaDirection::kFromDevice);
  ASSERT_TRUE(m.ok());
  HostDevice dev(&plat_, kMask30, false);
  dev.fill(m->dma_addr, 0xC3, 4096);
  // No prepare_read / unmap yet: the CPU still reads its cached copy.
  EXPECT_EQ(buf[0], 0x11);
  EXPECT_EQ(buf[4095], 0x11);
  ASSERT_TRUE(op().prepare_read(*m, 0, 4096, DmaDirection::kFromDevice).ok());
  EXPECT_EQ(buf[0], 0xC3);
  op().unmap_single(*m);
}

TEST_F(KernelDmaOpTest, MissingCleanIsSeenByTheDevice) {
  uint8_t* buf = low_buffer(4096);
  auto m = op().map_single(device(kMask30), buf, 4096, 0, DmaDirection::kToDevice);
  ASSERT_TRUE(m.ok());
  std::memset(buf, 0x77, 64);  // Written after the map, without confirm_write.
  HostDevice dev(&plat_, kMask30, false);
  uint8_t b = 0;
  dev.read(m->dma_addr, &b, 1);
  EXPECT_NE(b, 0x77);
  ASSERT_TRUE(op().confirm_write(*m, 0, 64, DmaDirection::kToDevice).ok());
  dev.read(m->dma_addr, &b, 1);
  EXPECT_EQ(b, 0x77);
  op().unmap_single(*m);
}

TEST_F(KernelDmaOpTest, BidirectionalRoundTrip) {
  uint8_t* buf = low_buffer(4096);
  for (size_t i = 0; i < 4096; ++i) buf[i] = static_cast<uint8_t>(i);
  auto m = op().map_single(device(kMask30), buf, 4096, 0, DmaDirection::kBidirectional);
  ASSERT_TRUE(m.ok());
  HostDevice dev(&plat_, kMask30, false);
  std::vector<uint8_t> data(4096);
  dev.read(m->dma_addr, data.data(), data.size());
  for (size_t i = 0; i < 4096; ++i) ASSERT_EQ(data[i], static_cast<uint8_t>(i));
  for (auto& d : data) d = static_cast<uint8_t>(~d);
  dev.write(m->dma_addr, data.data(), data.size());
  op().unmap_single(*m);
  for (size_t i = 0; i < 4096; ++i) ASSERT_EQ(buf[i], static_cast<uint8_t>(~i));
}

TEST_F(KernelDmaOpTest, UnalignedFromDeviceKeepsNeighboursInSharedLines) {
  uint8_t* page = low_buffer(4096);
  std::memset(page, 0xEE, 4096);
  plat_.model().evict_all();
  // The CPU writes the neighbours just before the map: dirty lines that share bytes with the
  // buffer at both edges.
  std::memset(page, 0xAB, 100);
  std::memset(page + 900, 0xCD, 100);
  uint8_t* buf = page + 100;  // [100, 900): partial lines at both ends.
  auto m = op().map_single(device(kMask30), buf, 800, 0, DmaDirection::kFromDevice);
  ASSERT_TRUE(m.ok());
  HostDevice dev(&plat_, kMask30, false);
  dev.fill(m->dma_addr, 0x42, 800);
  op().unmap_single(*m);
  for (size_t i = 0; i < 100; ++i) ASSERT_EQ(page[i], 0xAB) << i;
  for (size_t i = 100; i < 900; ++i) ASSERT_EQ(page[i], 0x42) << i;
  for (size_t i = 900; i < 1000; ++i) ASSERT_EQ(page[i], 0xCD) << i;
}

TEST_F(KernelDmaOpTest, InvalidateOfPartialLinesKeepsDirtyNeighbours) {
  uint8_t* page = low_buffer(4096);
  plat_.model().evict_all();
  std::memset(page, 0x99, 256);  // Dirty, never cleaned.
  HostDevice dev(&plat_, kMask30, false);
  dev.fill(DmaAddr(phys_of(page) + 64), 0x31, 128);
  // Invalidate [40, 200): lines 0 and 192 are partial and must be cleaned, not dropped.
  op().invalidate(page + 40, 160);
  for (size_t i = 0; i < 40; ++i) ASSERT_EQ(page[i], 0x99) << i;
  for (size_t i = 200; i < 256; ++i) ASSERT_EQ(page[i], 0x99) << i;
  // The whole interior line [64, 128) and [128, 192) come from memory.
  for (size_t i = 64; i < 192; ++i) ASSERT_EQ(page[i], 0x31) << i;
}

TEST_F(KernelDmaOpTest, FlushAndFlushInvalidateReachMemory) {
  uint8_t* page = low_buffer(4096);
  HostDevice dev(&plat_, kMask30, false);
  std::memset(page + 3, 0x61, 10);
  op().flush(page + 3, 10);
  uint8_t b = 0;
  dev.read(DmaAddr(phys_of(page) + 5), &b, 1);
  EXPECT_EQ(b, 0x61);
  std::memset(page + 70, 0x62, 10);
  op().flush_invalidate(page + 70, 10);
  dev.read(DmaAddr(phys_of(page) + 75), &b, 1);
  EXPECT_EQ(b, 0x62);
  op().flush(page, 0);  // Size 0 is a no-op.
  op().invalidate(page, 0);
  op().flush_invalidate(page, 0);
}

TEST_F(KernelDmaOpTest, CoherentDeviceNeedsNoMaintenance) {
  uint8_t* buf = low_buffer(4096);
  std::memset(buf, 0x5A, 4096);
  plat_.model().reset_counters();
  auto m = op().map_single(device(kMask30, true), buf, 4096, 0, DmaDirection::kBidirectional);
  ASSERT_TRUE(m.ok());
  HostDevice dev(&plat_, kMask30, true);
  uint8_t b = 0;
  dev.read(m->dma_addr, &b, 1);
  EXPECT_EQ(b, 0x5A);
  dev.fill(m->dma_addr, 0x21, 4096);
  EXPECT_EQ(buf[10], 0x21);
  op().unmap_single(*m);
  EXPECT_EQ(plat_.model().counters().cleans, 0u);
  EXPECT_EQ(plat_.model().counters().invalidates, 0u);
  EXPECT_EQ(plat_.model().counters().clean_invalidates, 0u);
}

TEST_F(KernelDmaOpTest, BufferAboveMaskIsBouncedToDevice) {
  uint8_t* buf = high_buffer(8192);
  ASSERT_GE(phys_of(buf), 1ull << 30);
  for (size_t i = 0; i < 8192; ++i) buf[i] = static_cast<uint8_t>(i * 7);
  auto m = op().map_single(device(kMask30), buf, 8192, 0, DmaDirection::kToDevice);
  ASSERT_TRUE(m.ok());
  EXPECT_TRUE(m->bounced());
  EXPECT_LE(m->dma_addr.value() + 8191, kMask30);
  HostDevice dev(&plat_, kMask30, false);
  std::vector<uint8_t> seen(8192);
  dev.read(m->dma_addr, seen.data(), seen.size());
  for (size_t i = 0; i < 8192; ++i) ASSERT_EQ(seen[i], static_cast<uint8_t>(i * 7)) << i;
#if DMA_STATS  // KernelDmaOp::stats() counts only with DMA_STATS.
  EXPECT_EQ(op().stats().bounced_maps, 1u);
#endif
  EXPECT_GE(plat_.pool(0).stats().used_slots, 4u);
  op().unmap_single(*m);
  EXPECT_EQ(plat_.pool(0).stats().used_slots, 0u);
  plat_.release_buffer(buf);
}

TEST_F(KernelDmaOpTest, BufferAboveMaskIsBouncedFromDevice) {
  uint8_t* buf = high_buffer(4096);
  std::memset(buf, 0, 4096);
  auto m = op().map_single(device(kMask30), buf + 10, 3000, 0, DmaDirection::kFromDevice);
  ASSERT_TRUE(m.ok());
  ASSERT_TRUE(m->bounced());
  HostDevice dev(&plat_, kMask30, false);
  dev.fill(m->dma_addr, 0x9C, 3000);
  op().unmap_single(*m);
  EXPECT_EQ(buf[9], 0);
  for (size_t i = 10; i < 3010; ++i) ASSERT_EQ(buf[i], 0x9C) << i;
  EXPECT_EQ(buf[3010], 0);
#if DMA_STATS                                    // KernelDmaOp::stats() counts only with DMA_STATS.
  EXPECT_EQ(op().stats().bytes_bounced, 6000u);  // In (hygiene) and out.
#endif
  plat_.release_buffer(buf);
}

TEST_F(KernelDmaOpTest, BounceSlotShowsOriginalBytesWhereDeviceWroteLess) {
  uint8_t* buf = high_buffer(4096);
  std::memset(buf, 0x3E, 4096);
  // Leave stale data in the pool from an earlier mapping.
  uint8_t* other = high_buffer(4096);
  std::memset(other, 0xF0, 4096);
  auto m1 = op().map_single(device(kMask30), other, 4096, 0, DmaDirection::kToDevice);
  ASSERT_TRUE(m1.ok());
  op().unmap_single(*m1);
  auto m = op().map_single(device(kMask30), buf, 4096, 0, DmaDirection::kFromDevice);
  ASSERT_TRUE(m.ok());
  HostDevice dev(&plat_, kMask30, false);
  dev.fill(m->dma_addr, 0x01, 1000);  // Writes less than the whole buffer.
  op().unmap_single(*m);
  for (size_t i = 0; i < 1000; ++i) ASSERT_EQ(buf[i], 0x01) << i;
  for (size_t i = 1000; i < 4096; ++i) ASSERT_EQ(buf[i], 0x3E) << i;
  plat_.release_buffer(buf);
  plat_.release_buffer(other);
}

TEST_F(KernelDmaOpTest, ForceBounceBouncesReachableBuffers) {
  uint8_t* buf = low_buffer(4096);
  DmaConstraints c = device(kMask30);
  c.force_bounce = true;
  auto m = op().map_single(c, buf, 4096, 0, DmaDirection::kToDevice);
  ASSERT_TRUE(m.ok());
  EXPECT_TRUE(m->bounced());
  op().unmap_single(*m);
}

TEST_F(KernelDmaOpTest, MinAlignMaskIsPreservedInTheBounceSlot) {
  uint8_t* buf = high_buffer(16384);
  DmaConstraints c = device(kMask30);
  c.min_align_mask = 0xFFF;
  for (size_t off : {0ul, 1ul, 0x234ul, 0xFFFul}) {
    auto m = op().map_single(c, buf + off, 2000, 0, DmaDirection::kToDevice);
    ASSERT_TRUE(m.ok());
    ASSERT_TRUE(m->bounced());
    EXPECT_EQ(m->dma_addr.value() & 0xFFF, (phys_of(buf) + off) & 0xFFF);
    op().unmap_single(*m);
  }
  plat_.release_buffer(buf);
}

TEST_F(KernelDmaOpTest, MisalignedBufferIsBouncedToAnAlignedSlot) {
  uint8_t* buf = low_buffer(8192);
  auto m = op().map_single(device(kMask30), buf + 8, 512, 4096, DmaDirection::kToDevice);
  ASSERT_TRUE(m.ok());
  EXPECT_TRUE(m->bounced());
  EXPECT_EQ(m->dma_addr.value() % 4096, 0u);
  op().unmap_single(*m);
  auto d = op().map_single(device(kMask30), buf, 512, 4096, DmaDirection::kToDevice);
  ASSERT_TRUE(d.ok());
  EXPECT_FALSE(d->bounced());
  op().unmap_single(*d);
}

TEST_F(KernelDmaOpTest, BusOffsetIsAppliedAndChecked) {
  uint8_t* buf = low_buffer(4096);
  DmaConstraints c = device(kMask32);
  c.bus_offset = 0x8000'0000;
  auto m = op().map_single(c, buf, 4096, 0, DmaDirection::kToDevice);
  ASSERT_TRUE(m.ok());
  EXPECT_FALSE(m->bounced());
  EXPECT_EQ(m->dma_addr.value(), phys_of(buf) + 0x8000'0000);
  op().unmap_single(*m);
  // With the offset, the high buffer (>= 1 GiB + 2 GiB = 3 GiB... still < 4 GiB) is reachable;
  // a 31-bit mask is not: phys limit becomes 0x7FFF'FFFF - 0x8000'0000 < 0.
  c.dma_mask = 0x7FFF'FFFF;
  auto e = op().map_single(c, buf, 4096, 0, DmaDirection::kToDevice);
  ASSERT_FALSE(e.ok());
  EXPECT_EQ(e.code(), ErrorCode::kDmaMaskNotMatch);
}

TEST_F(KernelDmaOpTest, MaskOnlyOverloadUsesPlatformDefaults) {
  uint8_t* buf = low_buffer(4096);
  auto m = op().map_single(kMask64, buf, 4096, 0, DmaDirection::kToDevice);
  ASSERT_TRUE(m.ok());
  EXPECT_FALSE(m->coherent_device);
  op().unmap_single(*m);
}

TEST_F(KernelDmaOpTest, BadLayoutsAreRejectedAndNothingChanges) {
  uint8_t* buf = low_buffer(4096);
  Snapshot s = snapshot();
  EXPECT_EQ(op().map_single(device(kMask30), buf, 0, 0, DmaDirection::kToDevice).code(),
            ErrorCode::kLayoutError);
  EXPECT_EQ(op().map_single(device(kMask30), buf, 16, 3, DmaDirection::kToDevice).code(),
            ErrorCode::kLayoutError);
  EXPECT_EQ(op().map_single(device(kMask30), nullptr, 16, 0, DmaDirection::kToDevice).code(),
            ErrorCode::kLayoutError);
  auto* wrap = reinterpret_cast<uint8_t*>(~uintptr_t{0} - 10);
  EXPECT_EQ(op().map_single(device(kMask30), wrap, 100, 0, DmaDirection::kToDevice).code(),
            ErrorCode::kLayoutError);
  expect_unchanged(s);
#if DMA_STATS  // KernelDmaOp::stats() counts only with DMA_STATS.
  EXPECT_EQ(op().stats().map_errors, 4u);
#endif
}

TEST_F(KernelDmaOpTest, ZeroMaskIsInvalid) {
  uint8_t* buf = low_buffer(4096);
  EXPECT_EQ(op().map_single(device(0), buf, 16, 0, DmaDirection::kToDevice).code(),
            ErrorCode::kInvalidArgument);
}

TEST_F(KernelDmaOpTest, AddressOutsideTheDirectMapIsInvalid) {
  std::vector<uint8_t> heap(4096);
  EXPECT_EQ(op().map_single(device(kMask64), heap.data(), 16, 0, DmaDirection::kToDevice).code(),
            ErrorCode::kInvalidArgument);
}

TEST_F(KernelDmaOpTest, MaskUnderAllMemoryFailsWithAddressAndMask) {
  uint8_t* buf = high_buffer(4096);
  Snapshot s = snapshot();
  auto m = op().map_single(device((1ull << 28) - 1), buf, 4096, 0, DmaDirection::kToDevice);
  ASSERT_FALSE(m.ok());
  EXPECT_EQ(m.code(), ErrorCode::kDmaMaskNotMatch);
  EXPECT_EQ(m.error().mask, (1ull << 28) - 1);
  EXPECT_EQ(m.error().addr, phys_of(buf) + 4095);
  expect_unchanged(s);
  plat_.release_buffer(buf);
}

TEST_F(KernelDmaOpTest, MappingLargerThanThePoolIsALayoutError) {
  // 5 MiB of RAM above the mask (the direct map makes it one contiguous piece): more than the
  // 4 MiB pool can ever hold, which is a layout error, not a transient kNoMemory.
  Snapshot s = snapshot();
  auto m = op().map_single(device(kMask30), plat_.phys_to_virt(1ull << 30), 5ull << 20, 0,
                           DmaDirection::kToDevice);
  EXPECT_EQ(m.code(), ErrorCode::kLayoutError);
  expect_unchanged(s);
}

TEST_F(KernelDmaOpTest, ExhaustedPoolReturnsNoMemoryThenRecovers) {
  uint8_t* buf = high_buffer(256 * 1024);
  std::vector<DmaMapHandle> live;
  while (true) {
    auto m = op().map_single(device(kMask30), buf, 256 * 1024, 0, DmaDirection::kToDevice);
    if (!m.ok()) {
      EXPECT_EQ(m.code(), ErrorCode::kNoMemory);
      break;
    }
    live.push_back(*m);
    ASSERT_LT(live.size(), 100u);
  }
  EXPECT_GE(live.size(), 10u);
  Snapshot s = snapshot();
  EXPECT_EQ(op().map_single(device(kMask30), buf, 256 * 1024, 0, DmaDirection::kToDevice).code(),
            ErrorCode::kNoMemory);
  expect_unchanged(s);
  op().unmap_single(live.back());
  live.pop_back();
  auto again = op().map_single(device(kMask30), buf, 256 * 1024, 0, DmaDirection::kToDevice);
  ASSERT_TRUE(again.ok());
  live.push_back(*again);
  for (auto& h : live) op().unmap_single(h);
  EXPECT_EQ(plat_.pool(0).stats().used_slots, 0u);
  plat_.release_buffer(buf);
}

TEST_F(KernelDmaOpTest, SyncRangesAreChecked) {
  uint8_t* buf = low_buffer(4096);
  auto m = op().map_single(device(kMask30), buf, 1000, 0, DmaDirection::kBidirectional);
  ASSERT_TRUE(m.ok());
  EXPECT_TRUE(op().prepare_read(*m, 0, 1000, DmaDirection::kBidirectional).ok());
  EXPECT_TRUE(op().prepare_read(*m, 1000, 0, DmaDirection::kBidirectional).ok());
  EXPECT_EQ(op().prepare_read(*m, 999, 2, DmaDirection::kBidirectional).code(),
            ErrorCode::kOutOfRange);
  EXPECT_EQ(op().confirm_write(*m, 1001, 0, DmaDirection::kBidirectional).code(),
            ErrorCode::kOutOfRange);
  EXPECT_EQ(op().confirm_write(*m, 1, ~size_t{0}, DmaDirection::kBidirectional).code(),
            ErrorCode::kOutOfRange);
  op().unmap_single(*m);
}

TEST_F(KernelDmaOpTest, PartialSyncOfABouncedMapping) {
  uint8_t* buf = high_buffer(4096);
  std::memset(buf, 0, 4096);
  auto m = op().map_single(device(kMask30), buf, 4096, 0, DmaDirection::kBidirectional);
  ASSERT_TRUE(m.ok());
  ASSERT_TRUE(m->bounced());
  HostDevice dev(&plat_, kMask30, false);
  dev.fill(m->dma_addr + 100, 0xAA, 50);
  ASSERT_TRUE(op().prepare_read(*m, 100, 50, DmaDirection::kBidirectional).ok());
  EXPECT_EQ(buf[100], 0xAA);
  EXPECT_EQ(buf[149], 0xAA);
  EXPECT_EQ(buf[150], 0);
  std::memset(buf + 2000, 0xBB, 10);
  ASSERT_TRUE(op().confirm_write(*m, 2000, 10, DmaDirection::kBidirectional).ok());
  uint8_t b = 0;
  dev.read(m->dma_addr + 2005, &b, 1);
  EXPECT_EQ(b, 0xBB);
  // The direction argument decides: a to-device sync never copies out.
  dev.fill(m->dma_addr + 3000, 0xCC, 1);
  ASSERT_TRUE(op().prepare_read(*m, 3000, 1, DmaDirection::kToDevice).ok());
  EXPECT_EQ(buf[3000], 0);
  op().unmap_single(*m);
  plat_.release_buffer(buf);
}

#if DMA_FAULT_INJECTION  // Fault injection: debug builds only.
TEST_F(KernelDmaOpTest, InjectedMappingFailureLeavesNothingBehind) {
  uint8_t* buf = high_buffer(4096);
  Snapshot s = snapshot();
  support::FaultInjector::fail_nth(support::FaultSite::kMapping, 1);
  auto m = op().map_single(device(kMask30), buf, 4096, 0, DmaDirection::kToDevice);
  EXPECT_EQ(m.code(), ErrorCode::kNoMemory);
  expect_unchanged(s);
  auto ok = op().map_single(device(kMask30), buf, 4096, 0, DmaDirection::kToDevice);
  ASSERT_TRUE(ok.ok());
  op().unmap_single(*ok);
  plat_.release_buffer(buf);
}
#endif

// ---- The inline fast path (coherent devices) against the general path ----

// Every error the general path reports, a coherent device (fast path first) gets too.
TEST_F(KernelDmaOpTest, FastPathReportsTheSameErrorsAsTheGeneralPath) {
  uint8_t* buf = low_buffer(4096);
  std::vector<uint8_t> heap(4096);
  auto* wrap = reinterpret_cast<uint8_t*>(~uintptr_t{0} - 10);
  uint8_t* ram_end = plat_.phys_to_virt(0x3C00'0000 + (128ull << 20));
  struct Case {
    uint8_t* addr;
    size_t size;
    size_t align;
    uint64_t mask;
    ErrorCode want;
  };
  const Case cases[] = {
      {buf, 0, 0, kMask30, ErrorCode::kLayoutError},
      {nullptr, 16, 0, kMask30, ErrorCode::kLayoutError},
      {buf, 16, 3, kMask30, ErrorCode::kLayoutError},
      {wrap, 100, 0, kMask30, ErrorCode::kLayoutError},
      {buf, 16, 0, 0, ErrorCode::kInvalidArgument},
      {heap.data(), 16, 0, kMask64, ErrorCode::kInvalidArgument},
      {ram_end - 4096, 8192, 0, kMask64, ErrorCode::kInvalidArgument},  // Runs off the end of RAM.
  };
  Snapshot s = snapshot();
  for (bool coherent : {false, true}) {
    for (const Case& k : cases) {
      auto m = op().map_single(device(k.mask, coherent), k.addr, k.size, k.align,
                               DmaDirection::kToDevice);
      EXPECT_EQ(m.code(), k.want) << "coherent=" << coherent << " size=" << k.size;
    }
  }
  expect_unchanged(s);
}

// The fast path's reach test is exact: last byte at the mask maps directly, one past bounces.
TEST_F(KernelDmaOpTest, FastPathMaskAndBusOffsetEdges) {
  uint8_t* buf = high_buffer(4096);
  uint64_t last = phys_of(buf) + 4095;
  auto expect_direct = [&](DmaConstraints c, uint64_t dma) {
    auto m = op().map_single(c, buf, 4096, 0, DmaDirection::kToDevice);
    ASSERT_TRUE(m.ok());
    EXPECT_FALSE(m->bounced());
    EXPECT_EQ(m->dma_addr.value(), dma);
    EXPECT_TRUE(m->coherent_device);
    op().unmap_single(*m);
  };
  auto expect_bounced = [&](DmaConstraints c) {
    auto m = op().map_single(c, buf, 4096, 0, DmaDirection::kToDevice);
    ASSERT_TRUE(m.ok());
    EXPECT_TRUE(m->bounced());
    EXPECT_LE(m->dma_addr.value() + 4095, c.dma_mask);
    op().unmap_single(*m);
  };
  expect_direct(device(last, true), phys_of(buf));
  expect_bounced(device(last - 1, true));
  DmaConstraints c = device(last + 0x1000, true);
  c.bus_offset = 0x1000;  // The device's last address lands exactly on the mask.
  expect_direct(c, phys_of(buf) + 0x1000);
  c.bus_offset = 0x1001;  // One past it: bounced (the pool lies low enough).
  expect_bounced(c);
  c = device(0x7FFF'FFFF, true);
  c.bus_offset = 0x8000'0000;  // Above the mask: nothing is reachable.
  EXPECT_EQ(op().map_single(c, buf, 4096, 0, DmaDirection::kToDevice).code(),
            ErrorCode::kDmaMaskNotMatch);
  c = device(kMask64, true);
  c.bus_offset = ~uint64_t{0} - 4095;  // -4096 (mod 2^64): the device sees RAM one page lower.
  expect_direct(c, phys_of(buf) - 0x1000);
#if DMA_STATS  // KernelDmaOp::stats() counts only with DMA_STATS.
  EXPECT_EQ(op().stats().live_maps, 0u);
#endif
  plat_.release_buffer(buf);
}

#if DMA_FAULT_INJECTION  // Fault injection: debug builds only.
// An injected kMapping fault on either fast path (direct, bounce) is one hit and changes nothing.
TEST_F(KernelDmaOpTest, InjectedMappingFailureOnTheFastPaths) {
  uint8_t* high = high_buffer(4096);
  uint8_t* low = low_buffer(4096);
  for (uint8_t* buf : {low, high}) {
    Snapshot s = snapshot();
    support::FaultInjector::fail_nth(support::FaultSite::kMapping, 1);
    auto m = op().map_single(device(kMask30, true), buf, 4096, 0, DmaDirection::kToDevice);
    EXPECT_EQ(m.code(), ErrorCode::kNoMemory);
    EXPECT_EQ(support::FaultInjector::hits(support::FaultSite::kMapping), 1u);
    expect_unchanged(s);
    auto ok = op().map_single(device(kMask30, true), buf, 4096, 0, DmaDirection::kToDevice);
    ASSERT_TRUE(ok.ok());
    EXPECT_EQ(ok->bounced(), buf == high);
    op().unmap_single(*ok);
    support::FaultInjector::disarm_all();
  }
  plat_.release_buffer(high);
}
#endif

// The fast window leaves out physical page 0 and the page at CPU address 0.
TEST(KernelDmaOpFastWindow, LeavesOutPageZeroAndTheNullPage) {
  constexpr uint64_t kPage = 4096;
  // An ordinary direct map high in the address space: only physical page 0 goes.
  DirectWindow w = fast_direct_window(0, 1ull << 30, 0xFFFF'8000'0000'0000ull);
  EXPECT_EQ(w.lo, kPage);
  EXPECT_EQ(w.span, (1ull << 30) - kPage);
  // RAM from 1 MiB, direct map far away: unchanged.
  w = fast_direct_window(1ull << 20, 1ull << 30, 0xFFFF'8000'0000'0000ull);
  EXPECT_EQ(w.lo, 1ull << 20);
  EXPECT_EQ(w.span, (1ull << 30) - (1ull << 20));
  // Identity map (offset 0) of RAM from 0: the null page is page 0.
  w = fast_direct_window(0, 1ull << 20, 0);
  EXPECT_EQ(w.lo, kPage);
  // CPU address 0 is physical 1 MiB, the start of RAM: the window starts one page later.
  w = fast_direct_window(1ull << 20, 2ull << 20, 0 - (uintptr_t{1} << 20));
  EXPECT_EQ(w.lo, (1ull << 20) + kPage);
  EXPECT_EQ(w.lo + w.span, 2ull << 20);
  // CPU address 0 is in the middle of RAM: the window ends before it.
  w = fast_direct_window(1ull << 20, 4ull << 20, 0 - (uintptr_t{2} << 20));
  EXPECT_EQ(w.lo, 1ull << 20);
  EXPECT_EQ(w.lo + w.span, 2ull << 20);
  // Nothing left: an empty window.
  w = fast_direct_window(0, kPage, 0);
  EXPECT_EQ(w.span, 0u);
}

// The straddling layout with one CPU's slot caches on.
HostPlatform::Options cpu_cache_options() {
  HostPlatform::Options o = straddling_options();
  o.cpu_caches = 1;
  return o;
}

// A coherent device with a 30-bit mask: every buffer above 1 GiB bounces.
DmaConstraints coherent_30bit() {
  DmaConstraints c;
  c.dma_mask = kMask30;
  c.coherence = DmaCoherence::kCoherent;
  return c;
}

// With per-CPU slot caches on, a bounced unmap + map of the same size reuses the slot.
TEST(KernelDmaOpCpuCaches, BouncedMapReusesTheSlotOfThisCpu) {
  HostPlatform p(cpu_cache_options());
  uint8_t* buf = p.buffer_above(1ull << 30, 4096);
  DmaConstraints c = coherent_30bit();
  std::memset(buf, 0x3C, 4096);
  auto a = p.op().map_single(c, buf, 4096, 0, DmaDirection::kBidirectional);
  ASSERT_TRUE(a.ok());
  ASSERT_TRUE(a->bounced());
  uint64_t first_dma = a->dma_addr.value();
  p.op().unmap_single(*a);
  EXPECT_EQ(p.pool(0).stats().used_slots, 0u);
  EXPECT_EQ(p.pool(0).stats().cached_slots, 2u);
  auto b = p.op().map_single(c, buf, 4096, 0, DmaDirection::kBidirectional);
  ASSERT_TRUE(b.ok());
  EXPECT_EQ(b->dma_addr.value(), first_dma);
  EXPECT_EQ(std::memcmp(b->bounce_cpu, buf, 4096), 0);  // Copied in again.
  EXPECT_EQ(p.pool(0).stats().cached_slots, 0u);
  p.op().unmap_single(*b);
  p.pool(0).drain_cache();
  EXPECT_TRUE(p.pool(0).check_invariants());
  EXPECT_EQ(p.pool(0).free_block_count(), 1u);
  p.release_buffer(buf);
}

// Two pools, both with CPU caches: the cached path (a device without bus offset, min_align_mask
// or quota) takes the highest pool under the mask, as the general path does, and its slot comes
// back from this CPU's cache of that pool; a mask that reaches only the lower pool stays there.
TEST(KernelDmaOpCpuCaches, TheCachedPathUsesTheHighestPoolUnderTheMask) {
  HostPlatform::Options o = straddling_options();
  o.pools.push_back(HostPlatform::PoolSpec{1ull << 20, 0x3CFF'FFFF});  // Pool 1, below pool 0.
  o.cpu_caches = 1;
  HostPlatform p(o);
  ASSERT_LT(p.pool(1).base().value(), p.pool(0).base().value());
  uint8_t* buf = p.buffer_above(1ull << 30, 4096);
  auto in_pool = [&](const DmaMapHandle& h, size_t i) {
    uint64_t d = h.dma_addr.value() - p.pool(i).base().value();
    return h.bounce_pool_index == i && d < p.pool(i).bytes();
  };
  for (uint64_t mask : {kMask30, uint64_t{0x3CFF'FFFF}}) {
    const size_t want = mask == kMask30 ? 0 : 1;
    DmaConstraints c;
    c.dma_mask = mask;
    c.coherence = DmaCoherence::kCoherent;
    const uint64_t other_allocations = p.pool(1 - want).stats().allocations;
    uint64_t first_dma = 0;
    for (int round = 0; round < 3; ++round) {
      std::memset(buf, 0x40 + round, 4096);
      auto h = p.op().map_single(c, buf, 4096, 0, DmaDirection::kBidirectional);
      ASSERT_TRUE(h.ok()) << mask;
      EXPECT_TRUE(in_pool(*h, want)) << mask << " round " << round;
      if (round == 0) first_dma = h->dma_addr.value();
      EXPECT_EQ(h->dma_addr.value(), first_dma) << round;  // The cached slot, every time.
      EXPECT_EQ(std::memcmp(h->bounce_cpu, buf, 4096), 0);
      std::memset(h->bounce_cpu, 0x70 + round, 4096);  // The device writes the slot.
      p.op().unmap_single(*h);
      EXPECT_EQ(buf[0], 0x70 + round);  // Copied out.
      EXPECT_EQ(buf[4095], 0x70 + round);
    }
    EXPECT_EQ(p.pool(want).stats().cached_slots, 2u);
    EXPECT_EQ(p.pool(want).stats().allocations, 3u);
    EXPECT_EQ(p.pool(1 - want).stats().allocations, other_allocations);
  }
  for (size_t i = 0; i < 2; ++i) {
    p.pool(i).drain_cache();
    EXPECT_TRUE(p.pool(i).check_invariants());
    EXPECT_EQ(p.pool(i).free_block_count(), 1u);
  }
  p.release_buffer(buf);
}

// Devices that the cached path does not serve (a bus offset, min_align_mask, a quota) still
// bounce through a pool with CPU caches, each with its own constraint kept.
TEST(KernelDmaOpCpuCaches, ConstrainedDevicesBounceThroughTheGeneralPath) {
  HostPlatform p(cpu_cache_options());
  uint8_t* buf = p.buffer_above(1ull << 30, 8192);
  DmaConstraints plain = coherent_30bit();
  DmaConstraints keep = plain;
  keep.min_align_mask = 0xFFF;
  DmaConstraints quota = plain;
  quota.bounce_quota = 8192;
  quota.device_id = 7;
  DmaConstraints offset = plain;
  offset.bus_offset = 0x1000'0000;
  offset.dma_mask = kMask30 + 0x1000'0000;
  for (int round = 0; round < 3; ++round) {
    auto k = p.op().map_single(keep, buf + 0x234, 100, 0, DmaDirection::kToDevice);
    ASSERT_TRUE(k.ok());
    EXPECT_EQ(k->dma_addr.value() & 0xFFF, 0x234u);
    auto q = p.op().map_single(quota, buf, 4096, 0, DmaDirection::kToDevice);
    ASSERT_TRUE(q.ok());
    EXPECT_EQ(p.op().map_single(quota, buf, 4097, 0, DmaDirection::kToDevice).code(),
              ErrorCode::kNoMemory);  // 4096 + 4097 bytes: five slots over a quota of four.
    auto f = p.op().map_single(offset, buf, 4096, 0, DmaDirection::kToDevice);
    ASSERT_TRUE(f.ok());
    EXPECT_EQ(f->dma_addr.value() - 0x1000'0000 - p.pool(0).base().value() < p.pool(0).bytes(),
              true);
    for (const DmaMapHandle& h : {*k, *q, *f}) p.op().unmap_single(h);
  }
  EXPECT_EQ(p.pool(0).stats().used_slots, 0u);
  p.pool(0).drain_cache();
  EXPECT_TRUE(p.pool(0).check_invariants());
  EXPECT_EQ(p.pool(0).free_block_count(), 1u);
  p.release_buffer(buf);
}

// Every way through the cached path gives the same handle and data as the general path: the
// newest block of this CPU's cache, an older block from the cache's stack, a block from the pool's
// lock (the cache has none of the size), and a refusal (a size over max_mapping_size, a full pool)
// with the general path's error and nothing held.
TEST(KernelDmaOpCpuCaches, EveryWayThroughTheCachedPathBuildsTheSameHandle) {
  HostPlatform p(cpu_cache_options());
  BouncePool& pool = p.pool(0);
  uint8_t* buf = p.buffer_above(1ull << 30, 8192);
  DmaConstraints c = coherent_30bit();
  c.device_id = 5;
  auto expect_handle = [&](const DmaMapHandle& h, size_t size, DmaDirection dir) {
    EXPECT_EQ(h.cpu_addr, buf);
    EXPECT_EQ(h.size, size);
    EXPECT_EQ(h.device_id, 5u);
    EXPECT_EQ(h.direction, dir);
    EXPECT_TRUE(h.coherent_device);
    EXPECT_FALSE(h.skip_cpu_sync);
    EXPECT_EQ(h.bounce_pool_index, 0u);
    EXPECT_EQ(h.bounce_num_slots, (size + pool.slot_size() - 1) / pool.slot_size());
    EXPECT_EQ(h.dma_addr.value(),
              pool.base().value() + uint64_t{h.bounce_first_slot} * pool.slot_size());
    EXPECT_EQ(h.bounce_cpu, pool.cpu_addr(PhysAddr(h.dma_addr.value())));
    EXPECT_EQ(std::memcmp(h.bounce_cpu, buf, size), 0);  // Copied in.
  };
  std::memset(buf, 0x11, 8192);
  // The cache is empty: the pool's lock.
  auto a = p.op().map_single(c, buf, 4096, 0, DmaDirection::kToDevice);
  ASSERT_TRUE(a.ok());
  expect_handle(*a, 4096, DmaDirection::kToDevice);
  p.op().unmap_single(*a);  // Into `hot`.
  // Another size: `hot` does not serve, nor the stack (empty): the pool's lock again.
  std::memset(buf, 0x22, 8192);
  auto b = p.op().map_single(c, buf, 2048, 0, DmaDirection::kFromDevice);
  ASSERT_TRUE(b.ok());
  expect_handle(*b, 2048, DmaDirection::kFromDevice);
  EXPECT_NE(b->bounce_first_slot, a->bounce_first_slot);
  std::memset(b->bounce_cpu, 0x33, 2048);  // The device writes.
  p.op().unmap_single(*b);                 // Into `hot`; a's block onto the stack.
  EXPECT_EQ(buf[0], 0x33);
  EXPECT_EQ(buf[2047], 0x33);
  EXPECT_EQ(buf[2048], 0x22);
  // a's size again: `hot` holds b's block, the stack a's: taken from the stack.
  std::memset(buf, 0x44, 8192);
  auto c2 = p.op().map_single(c, buf, 4096, 0, DmaDirection::kBidirectional);
  ASSERT_TRUE(c2.ok());
  expect_handle(*c2, 4096, DmaDirection::kBidirectional);
  EXPECT_EQ(c2->dma_addr.value(), a->dma_addr.value());
  // b's size again: the newest block, `hot`.
  auto d = p.op().map_single(c, buf, 2000, 0, DmaDirection::kToDevice);
  ASSERT_TRUE(d.ok());
  expect_handle(*d, 2000, DmaDirection::kToDevice);
  EXPECT_EQ(d->dma_addr.value(), b->dma_addr.value());
  EXPECT_TRUE(pool.check_invariants());
  // Refused: over max_mapping_size (the general path's kLayoutError), nothing held.
  const uint64_t used = pool.stats().used_slots;
  uint8_t* big = p.buffer_above(1ull << 30, pool.max_mapping_size() + 1);
  EXPECT_EQ(
      p.op().map_single(c, big, pool.max_mapping_size() + 1, 0, DmaDirection::kToDevice).code(),
      ErrorCode::kLayoutError);
  EXPECT_EQ(pool.stats().used_slots, used);
  // Refused: the pool full (kNoMemory, no other pool to fall back to), nothing held.
  std::vector<DmaMapHandle> all;
  for (;;) {
    auto h = p.op().map_single(c, big, pool.max_mapping_size(), 0, DmaDirection::kToDevice);
    if (!h.ok()) {
      EXPECT_EQ(h.code(), ErrorCode::kNoMemory);
      break;
    }
    all.push_back(*h);
  }
  EXPECT_FALSE(all.empty());
  for (const DmaMapHandle& h : all) p.op().unmap_single(h);
  EXPECT_EQ(pool.stats().used_slots, used);
  p.op().unmap_single(*c2);
  p.op().unmap_single(*d);
  EXPECT_EQ(pool.stats().used_slots, 0u);
  pool.drain_cache();
  EXPECT_TRUE(pool.check_invariants());
  EXPECT_EQ(pool.free_block_count(), 1u);
  p.release_buffer(big);
  p.release_buffer(buf);
}

// The CPU a caller of the test below runs on: set by the caller itself before each call, so that
// it moves between CPUs as a preempted thread of a real kernel does.
thread_local unsigned t_test_cpu = 0;
unsigned test_cpu() {
  return t_test_cpu;
}

// Callers that move between two CPUs between any two calls, four of them at once (so that two
// share a CPU index at the same moment, as a handler and the code it interrupted do), bounce
// through the cached path of KernelDmaOp (map_cached and unmap_bounced: the newest block, the
// stack, the pool's lock): every mapping's slot holds its own caller's bytes from map to unmap,
// every unmap copies back what the device wrote, and afterwards every slot is back.
TEST(KernelDmaOpCpuCaches, ConcurrentCallersMovingBetweenCpusKeepTheirBytesApart) {
  constexpr unsigned kThreads = 4;
  constexpr unsigned kCpus = 2;
  constexpr size_t kBuf = 8192;
  constexpr int kOps = 6000;
  HostPlatform p(straddling_options());
  BouncePool& pool = p.pool(0);
  ASSERT_TRUE(pool.enable_cpu_caches(&test_cpu, kCpus).ok());
  ASSERT_LE(3 * pool.slot_size(), kBuf);
  std::vector<uint8_t*> bufs;
  for (unsigned t = 0; t < 2 * kThreads; ++t) bufs.push_back(p.buffer_above(1ull << 30, kBuf));
  std::atomic<int> bad_map{0};
  std::atomic<int> bad_slot{0};
  std::atomic<int> bad_copy_back{0};
  std::atomic<int> bounced{0};
  std::vector<std::thread> threads;
  for (unsigned id = 0; id < kThreads; ++id) {
    threads.emplace_back([&, id] {
      std::mt19937 rng(700 + id);
      DmaConstraints c = coherent_30bit();
      c.device_id = id + 1;
      struct Live {
        DmaMapHandle h;
        uint8_t* buf = nullptr;
        uint8_t tag = 0;
      };
      Live live[2];  // Two at a time: a second size keeps the stack of the CPU caches busy.
      for (int op = 0; op < kOps; ++op) {
        Live& l = live[rng() % 2];
        if (l.buf != nullptr) {
          t_test_cpu = static_cast<unsigned>(rng() % kCpus);
          const size_t size = l.h.size;
          std::memset(l.h.bounce_cpu, static_cast<uint8_t>(~l.tag), size);  // The device writes.
          p.op().unmap_single(l.h);
          for (size_t i = 0; i < size; ++i) {
            if (l.buf[i] != static_cast<uint8_t>(~l.tag)) {
              bad_copy_back.fetch_add(1);
              break;
            }
          }
          l.buf = nullptr;
          continue;
        }
        uint8_t* buf = bufs[(2 * id) + static_cast<size_t>(&l - live)];
        // Three sizes (one, two and three slots' worth) so that the newest block often has
        // another size than the next request, and the stack and the pool's lock answer it.
        const size_t size = (1 + rng() % 3) * pool.slot_size() - rng() % 64;
        const auto tag = static_cast<uint8_t>(rng());
        std::memset(buf, tag, size);
        t_test_cpu = static_cast<unsigned>(rng() % kCpus);
        auto m = p.op().map_single(c, buf, size, 0, DmaDirection::kBidirectional);
        if (!m.ok() || !m->bounced() || m->size != size) {
          bad_map.fetch_add(1);
          continue;
        }
        bounced.fetch_add(1);
        if (rng() % 4 == 0) std::this_thread::yield();
        const auto* slot = static_cast<const uint8_t*>(m->bounce_cpu);
        for (size_t i = 0; i < size; ++i) {
          if (slot[i] != tag) {
            bad_slot.fetch_add(1);
            break;
          }
        }
        l = Live{*m, buf, tag};
      }
      for (Live& l : live) {
        if (l.buf != nullptr) p.op().unmap_single(l.h);
      }
    });
  }
  for (std::thread& th : threads) th.join();
  EXPECT_EQ(bad_map.load(), 0);
  EXPECT_EQ(bad_slot.load(), 0);
  EXPECT_EQ(bad_copy_back.load(), 0);
  EXPECT_GT(bounced.load(), 0);
  EXPECT_EQ(p.op().stats().live_maps, 0u);
  EXPECT_EQ(pool.stats().used_slots, 0u);
  pool.drain_cache();
  EXPECT_TRUE(pool.check_invariants());
  EXPECT_EQ(pool.stats().cached_slots, 0u);
  EXPECT_EQ(pool.free_block_count(), 1u);
  for (uint8_t* b : bufs) p.release_buffer(b);
}

#if DMA_FAULT_INJECTION  // Fault injection: debug builds only.
// The kBounceSlot fault on the cached path is one kNoMemory from the pool (evaluated once, the
// cached slot left where it was), after which the map goes to the other pools like any full
// pool's: none here, so the map fails; the next one takes the cached slot.
TEST(KernelDmaOpCpuCaches, ASlotFaultOnTheCachedPathIsOneFullPool) {
  HostPlatform p(cpu_cache_options());
  uint8_t* buf = p.buffer_above(1ull << 30, 4096);
  DmaConstraints c = coherent_30bit();
  auto a = p.op().map_single(c, buf, 4096, 0, DmaDirection::kToDevice);
  ASSERT_TRUE(a.ok());
  p.op().unmap_single(*a);
  ASSERT_EQ(p.pool(0).stats().cached_slots, 2u);
  support::FaultInjector::fail_nth(support::FaultSite::kBounceSlot, 1);
  EXPECT_EQ(p.op().map_single(c, buf, 4096, 0, DmaDirection::kToDevice).code(),
            ErrorCode::kNoMemory);
  EXPECT_EQ(support::FaultInjector::hits(support::FaultSite::kBounceSlot), 1u);
  EXPECT_EQ(p.pool(0).stats().cached_slots, 2u);
  auto b = p.op().map_single(c, buf, 4096, 0, DmaDirection::kToDevice);
  ASSERT_TRUE(b.ok());
  EXPECT_EQ(b->dma_addr.value(), a->dma_addr.value());
  p.op().unmap_single(*b);
  support::FaultInjector::disarm_all();
  p.release_buffer(buf);
}
#endif  // DMA_FAULT_INJECTION

// ---- alloc_coherent ----

TEST_F(KernelDmaOpTest, CoherentAllocationIsZeroedReachableAndAligned) {
  uint64_t before = plat_.pfa().free_pages();
  auto h = op().alloc_coherent(device(kMask30), Layout{10000, 16384});
  ASSERT_TRUE(h.ok());
  EXPECT_EQ(h->dma_addr.value(), h->phys.value());
  EXPECT_LE(h->phys.value() + 10000 - 1, kMask30);
  EXPECT_EQ(h->phys.value() % 16384, 0u);
  auto* p = static_cast<uint8_t*>(h->cpu_addr);
  for (size_t i = 0; i < 10000; ++i) ASSERT_EQ(p[i], 0) << i;
  // The zeroes are in memory too: a device reads zeroes.
  HostDevice dev(&plat_, kMask30, false);
  uint8_t b = 1;
  dev.read(h->dma_addr + 9999, &b, 1);
  EXPECT_EQ(b, 0);
  EXPECT_EQ(plat_.pfa().free_pages(), before - 4);
  op().dealloc_coherent(*h);
  EXPECT_EQ(plat_.pfa().free_pages(), before);
}

TEST_F(KernelDmaOpTest, CoherentAllocationReusedMemoryIsZeroed) {
  auto h = op().alloc_coherent(device(kMask64), Layout{4096, 1});
  ASSERT_TRUE(h.ok());
  std::memset(h->cpu_addr, 0xFF, 4096);
  PhysAddr first = h->phys;
  op().dealloc_coherent(*h);
  auto h2 = op().alloc_coherent(device(kMask64), Layout{4096, 1});
  ASSERT_TRUE(h2.ok());
  EXPECT_EQ(h2->phys, first);                              // Reused block...
  EXPECT_EQ(static_cast<uint8_t*>(h2->cpu_addr)[123], 0);  // ...comes back zeroed.
  op().dealloc_coherent(*h2);
}

TEST_F(KernelDmaOpTest, CoherentAllocationErrors) {
  uint64_t before = plat_.pfa().free_pages();
  EXPECT_EQ(op().alloc_coherent(device(kMask64), Layout{0, 1}).code(), ErrorCode::kLayoutError);
  EXPECT_EQ(op().alloc_coherent(device(kMask64), Layout{64, 24}).code(), ErrorCode::kLayoutError);
  EXPECT_EQ(op().alloc_coherent(device(kMask64), Layout{64ull << 20, 1}).code(),
            ErrorCode::kLayoutError);
  EXPECT_EQ(op().alloc_coherent(device(0), Layout{64, 1}).code(), ErrorCode::kInvalidArgument);
  auto low = op().alloc_coherent(device((1ull << 28) - 1), Layout{64, 1});
  ASSERT_FALSE(low.ok());
  EXPECT_EQ(low.code(), ErrorCode::kDmaMaskNotMatch);
  EXPECT_EQ(low.error().mask, (1ull << 28) - 1);
  EXPECT_EQ(plat_.pfa().free_pages(), before);
}

TEST_F(KernelDmaOpTest, CoherentAllocationExhaustionIsNoMemory) {
  std::vector<DmaHandle> hs;
  while (true) {
    auto h = op().alloc_coherent(device(kMask30), Layout{1u << 20, 1});
    if (!h.ok()) {
      EXPECT_EQ(h.code(), ErrorCode::kNoMemory);
      break;
    }
    hs.push_back(*h);
    ASSERT_LT(hs.size(), 200u);
  }
  EXPECT_GT(hs.size(), 10u);
  for (auto& h : hs) op().dealloc_coherent(h);
#if DMA_STATS  // KernelDmaOp::stats() counts only with DMA_STATS.
  EXPECT_EQ(op().stats().coherent_live, 0u);
#endif
}

#if DMA_FAULT_INJECTION  // Fault injection: debug builds only.
TEST_F(KernelDmaOpTest, InjectedPageFailureInAllocCoherent) {
  uint64_t before = plat_.pfa().free_pages();
  support::FaultInjector::fail_nth(support::FaultSite::kPageAlloc, 1);
  EXPECT_EQ(op().alloc_coherent(device(kMask64), Layout{4096, 1}).code(), ErrorCode::kNoMemory);
  EXPECT_EQ(plat_.pfa().free_pages(), before);
}
#endif

#if DMA_FAULT_INJECTION  // Fault injection: debug builds only.
TEST_F(KernelDmaOpTest, InjectedSlotFailureInMap) {
  uint8_t* buf = high_buffer(4096);
  Snapshot s = snapshot();
  support::FaultInjector::fail_nth(support::FaultSite::kBounceSlot, 1);
  EXPECT_EQ(op().map_single(device(kMask30), buf, 4096, 0, DmaDirection::kToDevice).code(),
            ErrorCode::kNoMemory);
  expect_unchanged(s);
  plat_.release_buffer(buf);
}
#endif

TEST(KernelDmaOpPools, HighestPoolUnderTheMaskIsChosen) {
  HostPlatform::Options o;
  o.ram.push_back(PhysRange{PhysAddr(0x0), 64ull << 20});
  o.ram.push_back(PhysRange{PhysAddr(0x1'0000'0000), 64ull << 20});
  o.pools.push_back(HostPlatform::PoolSpec{2ull << 20, (1ull << 24) - 1});  // Under 16 MiB.
  o.pools.push_back(HostPlatform::PoolSpec{2ull << 20, kMask32});
  HostPlatform p(o);
  uint8_t* buf = p.buffer_above(1ull << 32, 4096);
  DmaConstraints c32;
  c32.dma_mask = kMask32;
  auto m = p.op().map_single(c32, buf, 4096, 0, DmaDirection::kToDevice);
  ASSERT_TRUE(m.ok());
  EXPECT_EQ(m->bounce_pool_index, 1u);
  DmaConstraints c24;
  c24.dma_mask = (1ull << 24) - 1;
  auto m2 = p.op().map_single(c24, buf, 4096, 0, DmaDirection::kToDevice);
  ASSERT_TRUE(m2.ok());
  EXPECT_EQ(m2->bounce_pool_index, 0u);
  EXPECT_LE(m2->dma_addr.value() + 4095, (1ull << 24) - 1);
  p.op().unmap_single(*m);
  p.op().unmap_single(*m2);
  p.release_buffer(buf);
}

}  // namespace
