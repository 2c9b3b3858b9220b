// Cacheable contiguous DMA memory with explicit syncs (issue 15, item 1): DmaOp::alloc_noncoherent,
// ContiguousArray / ContiguousBox, and DmaBufferPool's cacheable receive buffers. The host cache
// model shows what a missing sync would lose; refusals leave the allocator as it was.
#include <gtest/gtest.h>

#include <cstring>

#include "arch/host/host_platform.h"
#include "dmakit/device_dma.h"
#include "dmakit/dma_buffer_pool.h"

namespace {

constexpr uint64_t kMask32 = 0xFFFF'FFFFull;

struct Desc {
  uint32_t addr;
  uint32_t len;
};

class ContiguousArrayTest : public testing::Test {
 protected:
  ContiguousArrayTest()
      : plat_(HostPlatform::default_options()),
        dev_(&plat_.op(), kMask32),
        hw_(&plat_, kMask32, /*coherent=*/false) {}

  HostPlatform plat_;
  DeviceDma dev_;  // Does not snoop (the host platform's default).
  HostDevice hw_;
};

TEST_F(ContiguousArrayTest, MemoryStaysCacheableForANonCoherentDevice) {
  uint64_t changes = plat_.op().attribute_changes();
  auto a = dev_.alloc_noncoherent<uint32_t>(1024);
  ASSERT_TRUE(a.ok());
  EXPECT_EQ(a->size(), 1024u);
  EXPECT_EQ(a->bytes(), 4096u);
  EXPECT_FALSE(a->handle().remapped);
  EXPECT_EQ(plat_.op().attribute_changes(), changes);  // No page-table change.
  EXPECT_EQ((*a)[17], 0u);                             // Zeroed.
  EXPECT_LE(a->dma_addr(1023).value() + 3, kMask32);
  uint32_t seen = 1;
  hw_.read(a->dma_addr(5), &seen, sizeof(seen));  // The zeroes are in memory.
  EXPECT_EQ(seen, 0u);
}

TEST_F(ContiguousArrayTest, SyncForDeviceMakesCpuWritesVisible) {
  auto a = dev_.alloc_noncoherent<uint32_t>(1024);
  ASSERT_TRUE(a.ok());
  (*a)[3] = 0xC0FFEE;
  uint32_t seen = 0;
  hw_.read(a->dma_addr(3), &seen, sizeof(seen));
  EXPECT_NE(seen, 0xC0FFEEu);  // Still in the CPU's cache.
  ASSERT_TRUE(
      a->sync_for_device(3 * sizeof(uint32_t), sizeof(uint32_t), DmaDirection::kToDevice).ok());
  hw_.read(a->dma_addr(3), &seen, sizeof(seen));
  EXPECT_EQ(seen, 0xC0FFEEu);
}

TEST_F(ContiguousArrayTest, SyncForCpuMakesDeviceWritesVisible) {
  auto a = dev_.alloc_noncoherent<uint8_t>(8192);
  ASSERT_TRUE(a.ok());
  // The CPU read the buffer earlier: its lines are cached.
  EXPECT_EQ((*a)[4096], 0);
  ASSERT_TRUE(a->sync_for_device(DmaDirection::kFromDevice).ok());
  hw_.fill(a->dma_addr(4096), 0x5A, 256);
  // A read now could return the stale cached zero; sync_for_cpu drops those lines.
  ASSERT_TRUE(a->sync_for_cpu(4096, 256, DmaDirection::kFromDevice).ok());
  for (size_t i = 4096; i < 4096 + 256; ++i) ASSERT_EQ((*a)[i], 0x5A) << i;
  EXPECT_EQ((*a)[4096 + 256], 0);
}

TEST_F(ContiguousArrayTest, BadRangesAreRefusedAndChangeNothing) {
  auto a = dev_.alloc_noncoherent<uint32_t>(16);
  ASSERT_TRUE(a.ok());
  (*a)[0] = 7;
  EXPECT_EQ(a->sync_for_device(0, 65).code(), ErrorCode::kOutOfRange);
  EXPECT_EQ(a->sync_for_cpu(64, 1).code(), ErrorCode::kOutOfRange);
  EXPECT_EQ(a->sync_for_cpu(~size_t{0}, 2).code(), ErrorCode::kOutOfRange);
  uint32_t seen = 1;
  hw_.read(a->dma_addr(0), &seen, sizeof(seen));
  EXPECT_EQ(seen, 0u);                          // The refused sync cleaned nothing.
  EXPECT_TRUE(a->sync_for_device(64, 0).ok());  // Empty range at the end.
  ContiguousArray<uint32_t> empty;
  EXPECT_EQ(empty.sync_for_device(0, 0).code(), ErrorCode::kInvalidArgument);
  EXPECT_EQ(empty.sync_for_cpu().code(), ErrorCode::kInvalidArgument);
}

TEST_F(ContiguousArrayTest, BadLayoutsAndMasksAreRefusedAndChangeNothing) {
  uint64_t free_before = plat_.pfa().free_pages();
  EXPECT_EQ(dev_.alloc_noncoherent<uint32_t>(0).code(), ErrorCode::kLayoutError);
  EXPECT_EQ(dev_.alloc_noncoherent<uint64_t>(~size_t{0} / 4).code(), ErrorCode::kLayoutError);
  EXPECT_EQ(dev_.alloc_noncoherent<uint8_t>(64, 3).code(), ErrorCode::kLayoutError);
  DeviceDma below(&plat_.op(), 0xFFFF);  // Below all RAM.
  EXPECT_EQ(below.alloc_noncoherent<uint8_t>(64).code(), ErrorCode::kDmaMaskNotMatch);
  EXPECT_EQ(plat_.pfa().free_pages(), free_before);
}

TEST_F(ContiguousArrayTest, FreedOnDestructionResetAndMove) {
  uint64_t free_before = plat_.pfa().free_pages();
  {
    auto a = dev_.alloc_noncoherent<uint8_t>(3 * 4096);
    ASSERT_TRUE(a.ok());
    EXPECT_LT(plat_.pfa().free_pages(), free_before);
    ContiguousArray<uint8_t> b = std::move(*a);
    EXPECT_FALSE(a->valid());
    EXPECT_TRUE(b.valid());
    auto c = dev_.alloc_noncoherent<uint8_t>(64);
    ASSERT_TRUE(c.ok());
    b = std::move(*c);  // Frees b's old memory.
    b.reset();
    b.reset();  // Idempotent.
    EXPECT_EQ(plat_.pfa().free_pages(), free_before);
    auto d = dev_.alloc_noncoherent<uint8_t>(64);
    ASSERT_TRUE(d.ok());
    DmaHandle h = d->release();
    EXPECT_FALSE(d->valid());
    plat_.op().dealloc_noncoherent(h);
  }
  EXPECT_EQ(plat_.pfa().free_pages(), free_before);
}

TEST_F(ContiguousArrayTest, ContiguousBoxHoldsOneObject) {
  auto b = dev_.alloc_noncoherent_box<Desc>();
  ASSERT_TRUE(b.ok());
  (*b)->addr = 0x1000;
  b->get()->len = 512;
  ASSERT_TRUE(b->sync_for_device(DmaDirection::kToDevice).ok());
  Desc seen{};
  hw_.read(b->dma_addr(), &seen, sizeof(seen));
  EXPECT_EQ(seen.addr, 0x1000u);
  EXPECT_EQ(seen.len, 512u);
  Desc back{7, 9};
  hw_.write(b->dma_addr(), &back, sizeof(back));
  ASSERT_TRUE(b->sync_for_cpu(DmaDirection::kBidirectional).ok());
  EXPECT_EQ((**b).addr, 7u);
  EXPECT_EQ((**b).len, 9u);
}

TEST_F(ContiguousArrayTest, CoherentDeviceNeedsNoSync) {
  auto o = HostPlatform::default_options();
  o.platform_coherent = true;
  HostPlatform p(o);
  DeviceDma dev(&p.op(), kMask32);
  HostDevice hw(&p, kMask32, /*coherent=*/true);
  auto a = dev.alloc_noncoherent<uint32_t>(16);
  ASSERT_TRUE(a.ok());
  (*a)[2] = 42;
  uint32_t seen = 0;
  hw.read(a->dma_addr(2), &seen, sizeof(seen));
  EXPECT_EQ(seen, 42u);
  EXPECT_TRUE(a->sync_for_device().ok());
}

TEST_F(ContiguousArrayTest, FollowsTheCoherentMask) {
  constexpr uint64_t kLow = 0x4000'0000 + (8ull << 20) - 1;
  ASSERT_TRUE(dev_.set_coherent_mask(kLow).ok());
  auto a = dev_.alloc_noncoherent<uint8_t>(4096);
  ASSERT_TRUE(a.ok());
  EXPECT_LE(a->dma_addr(4095).value(), kLow);
}

// ---- DmaBufferPool's receive buffers ----

TEST_F(ContiguousArrayTest, BufferPoolReceiveBuffersOfANonCoherentDeviceAreCacheable) {
  uint64_t changes = plat_.op().attribute_changes();
  uint64_t free_before = plat_.pfa().free_pages();
  {
    DmaBufferPool pool;
    ASSERT_TRUE(pool.init(&dev_, 4, 2048, DmaDirection::kFromDevice).ok());
    EXPECT_TRUE(pool.cacheable());
    EXPECT_EQ(plat_.op().attribute_changes(), changes);  // Nothing remapped uncached.
    auto b = pool.acquire();
    ASSERT_TRUE(b.ok());
    EXPECT_EQ(b->data()[0], 0);  // The CPU looked: the line is cached.
    ASSERT_TRUE(b->sync_for_device().ok());
    hw_.fill(b->dma_addr(), 0xA5, 2048);
    ASSERT_TRUE(b->sync_for_cpu(0, 2048).ok());
    EXPECT_EQ(b->data()[0], 0xA5);
    EXPECT_EQ(b->data()[2047], 0xA5);
    EXPECT_EQ(b->sync_for_cpu(1, 2048).code(), ErrorCode::kOutOfRange);
    PooledBuffer none;
    EXPECT_EQ(none.sync_for_cpu(0, 0).code(), ErrorCode::kInvalidArgument);
  }
  EXPECT_EQ(plat_.pfa().free_pages(), free_before);
}

TEST_F(ContiguousArrayTest, BufferPoolKeepsCoherentMemoryOtherwise) {
  uint64_t changes = plat_.op().attribute_changes();
  DmaBufferPool tx;
  ASSERT_TRUE(tx.init(&dev_, 2, 512).ok());  // Bidirectional: coherent, as before.
  EXPECT_FALSE(tx.cacheable());
  EXPECT_EQ(plat_.op().attribute_changes(), changes + 2);  // Both remapped uncached.
  auto b = tx.acquire();
  ASSERT_TRUE(b.ok());
  b->data()[0] = 0x11;
  ASSERT_TRUE(b->sync_for_device(0, 1).ok());  // Free on coherent memory, and harmless.
  uint8_t seen = 0;
  hw_.read(b->dma_addr(), &seen, 1);
  EXPECT_EQ(seen, 0x11);
}

}  // namespace
