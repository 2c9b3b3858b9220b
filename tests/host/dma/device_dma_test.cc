// DeviceDma and the RAII types: resources come back when the objects die, moves transfer them.
#include "dma/device_dma.h"

#include <gtest/gtest.h>

#include <cstring>
#include <vector>

#include "arch/host/host_platform.h"
#include "dma/dma_buffer_pool.h"
#include "support/fault_injection.h"

namespace {

constexpr uint64_t kMask32 = 0xFFFF'FFFFull;

class DeviceDmaTest : public testing::Test {
 protected:
  DeviceDmaTest() : plat_(HostPlatform::default_options()), dev_(&plat_.op(), kMask32) {}
  ~DeviceDmaTest() override { support::FaultInjector::disarm_all(); }
  uint8_t* buffer(size_t bytes) {
    auto pa = plat_.pfa().alloc(PageFrameAllocator::order_for(bytes));
    EXPECT_TRUE(pa.ok());
    held_.push_back({pa->value(), PageFrameAllocator::order_for(bytes)});
    return plat_.phys_to_virt(pa->value());
  }
  void TearDown() override {
    for (auto& b : held_) ASSERT_TRUE(plat_.pfa().free(PhysAddr(b.first), b.second).ok());
  }
  HostPlatform plat_;
  DeviceDma dev_;
  std::vector<std::pair<uint64_t, unsigned>> held_;
};

TEST_F(DeviceDmaTest, ConstraintsComeFromThePlatformAndOverrides) {
  EXPECT_EQ(dev_.dma_mask(), kMask32);
  EXPECT_FALSE(dev_.constraints().coherent);
  dev_.set_coherent(true);
  dev_.set_force_bounce(true);
  dev_.set_min_align_mask(0xFFF);
  dev_.set_dma_mask(0xFFFF);
  EXPECT_TRUE(dev_.constraints().coherent);
  EXPECT_TRUE(dev_.constraints().force_bounce);
  EXPECT_EQ(dev_.constraints().min_align_mask, 0xFFFu);
  EXPECT_EQ(dev_.dma_mask(), 0xFFFFu);
  EXPECT_EQ(dev_.op(), &plat_.op());
}

TEST_F(DeviceDmaTest, StreamingMappingUnmapsWhenDestroyed) {
  uint8_t* buf = buffer(4096);
  {
    auto m = dev_.map(buf, 4096, DmaDirection::kToDevice);
    ASSERT_TRUE(m.ok());
    EXPECT_TRUE(m->valid());
    EXPECT_EQ(m->size(), 4096u);
    EXPECT_EQ(m->direction(), DmaDirection::kToDevice);
    EXPECT_EQ(plat_.op().stats().live_maps, 1u);
  }
  EXPECT_EQ(plat_.op().stats().live_maps, 0u);
}

TEST_F(DeviceDmaTest, StreamingMappingMovesOwnership) {
  uint8_t* buf = buffer(4096);
  dev_.set_force_bounce(true);
  auto m = dev_.map(buf, 4096, DmaDirection::kFromDevice);
  ASSERT_TRUE(m.ok());
  StreamingMapping a = std::move(*m);
  EXPECT_FALSE(m->valid());
  EXPECT_TRUE(a.valid());
  EXPECT_TRUE(a.bounced());
  StreamingMapping b;
  b = std::move(a);
  EXPECT_FALSE(a.valid());
  EXPECT_EQ(plat_.op().stats().live_maps, 1u);
  EXPECT_EQ(a.sync_for_cpu().code(), ErrorCode::kInvalidArgument);
  b.unmap();
  b.unmap();  // Idempotent.
  EXPECT_EQ(plat_.op().stats().live_maps, 0u);
  EXPECT_EQ(plat_.pool(0).stats().used_slots, 0u);
}

TEST_F(DeviceDmaTest, MoveAssignOverALiveMappingUnmapsTheOldOne) {
  uint8_t* buf = buffer(8192);
  auto m1 = dev_.map(buf, 4096, DmaDirection::kToDevice);
  auto m2 = dev_.map(buf + 4096, 4096, DmaDirection::kToDevice);
  ASSERT_TRUE(m1.ok() && m2.ok());
  EXPECT_EQ(plat_.op().stats().live_maps, 2u);
  *m1 = std::move(*m2);
  EXPECT_EQ(plat_.op().stats().live_maps, 1u);
}

TEST_F(DeviceDmaTest, SyncForCpuAndDeviceMoveData) {
  uint8_t* buf = buffer(4096);
  std::memset(buf, 0, 4096);
  dev_.set_force_bounce(true);
  auto m = dev_.map(buf, 4096, DmaDirection::kBidirectional);
  ASSERT_TRUE(m.ok());
  HostDevice hw(&plat_, kMask32, false);
  hw.fill(m->dma_addr(), 0x66, 16);
  ASSERT_TRUE(m->sync_for_cpu(0, 16).ok());
  EXPECT_EQ(buf[15], 0x66);
  buf[20] = 0x77;
  ASSERT_TRUE(m->sync_for_device(20, 1).ok());
  uint8_t b = 0;
  hw.read(m->dma_addr() + 20, &b, 1);
  EXPECT_EQ(b, 0x77);
  EXPECT_EQ(m->sync_for_cpu(4000, 100).code(), ErrorCode::kOutOfRange);
  ASSERT_TRUE(m->sync_for_device().ok());
  ASSERT_TRUE(m->sync_for_cpu().ok());
}

TEST_F(DeviceDmaTest, MapErrorsPropagate) {
  uint8_t* buf = buffer(4096);
  EXPECT_EQ(dev_.map(buf, 0, DmaDirection::kToDevice).code(), ErrorCode::kLayoutError);
  dev_.set_dma_mask(0xFFFF);
  auto e = dev_.map(buf, 16, DmaDirection::kToDevice);
  EXPECT_EQ(e.code(), ErrorCode::kDmaMaskNotMatch);
  EXPECT_EQ(e.error().mask, 0xFFFFu);
}

struct Descriptor {
  uint64_t addr;
  uint32_t len;
  uint16_t flags;
  uint16_t next;
};

TEST_F(DeviceDmaTest, DArrayIsZeroedTypedAndFreedOnDestruction) {
  uint64_t before = plat_.pfa().free_pages();
  {
    auto a = dev_.alloc_array<Descriptor>(256);
    ASSERT_TRUE(a.ok());
    EXPECT_EQ(a->size(), 256u);
    EXPECT_EQ(a->bytes(), 256 * sizeof(Descriptor));
    EXPECT_EQ((*a)[255].len, 0u);
    (*a)[3].len = 99;
    EXPECT_EQ(a->dma_addr(3).value(), a->dma_addr(0).value() + 3 * sizeof(Descriptor));
    EXPECT_LE(a->dma_addr(255).value(), kMask32);
    EXPECT_LT(plat_.pfa().free_pages(), before);
    DArray<Descriptor> moved = std::move(*a);
    EXPECT_FALSE(a->valid());
    EXPECT_EQ(moved[3].len, 99u);
  }
  EXPECT_EQ(plat_.pfa().free_pages(), before);
}

TEST_F(DeviceDmaTest, DArrayRejectsBadCounts) {
  EXPECT_EQ(dev_.alloc_array<Descriptor>(0).code(), ErrorCode::kLayoutError);
  EXPECT_EQ(dev_.alloc_array<Descriptor>(~size_t{0} / 8).code(), ErrorCode::kLayoutError);
}

TEST_F(DeviceDmaTest, DBoxHoldsOneObject) {
  uint64_t before = plat_.pfa().free_pages();
  {
    auto b = dev_.alloc_box<Descriptor>();
    ASSERT_TRUE(b.ok());
    (*b)->flags = 7;
    EXPECT_EQ((**b).flags, 7);
    EXPECT_EQ(b->dma_addr().value() % alignof(Descriptor), 0u);
    EXPECT_NE(b->get(), nullptr);
  }
  EXPECT_EQ(plat_.pfa().free_pages(), before);
}

TEST_F(DeviceDmaTest, CoherentMemoryNeedsNoSyncForACoherentDevice) {
  auto o = HostPlatform::default_options();
  o.platform_coherent = true;
  HostPlatform p(o);
  DeviceDma dev(&p.op(), kMask32);
  auto ring = dev.alloc_array<uint32_t>(64);
  ASSERT_TRUE(ring.ok());
  (*ring)[5] = 0xDEADBEEF;
  HostDevice hw(&p, kMask32, true);
  uint32_t seen = 0;
  hw.read(ring->dma_addr(5), &seen, sizeof(seen));
  EXPECT_EQ(seen, 0xDEADBEEFu);  // No flush: the device snoops.
}

TEST_F(DeviceDmaTest, StreamingBufferOfANonCoherentDeviceNeedsTheSync) {
  uint8_t* buf = buffer(4096);
  auto m = dev_.map(buf, 4096, DmaDirection::kToDevice);
  ASSERT_TRUE(m.ok());
  buf[0] = 0x44;  // After the map: invisible until synced.
  HostDevice hw(&plat_, kMask32, false);
  uint8_t b = 0;
  hw.read(m->dma_addr(), &b, 1);
  EXPECT_NE(b, 0x44);
  ASSERT_TRUE(m->sync_for_device(0, 1).ok());
  hw.read(m->dma_addr(), &b, 1);
  EXPECT_EQ(b, 0x44);
}

TEST_F(DeviceDmaTest, BufferPoolLendsAndTakesBack) {
  uint64_t before = plat_.pfa().free_pages();
  {
    DmaBufferPool pool;
    ASSERT_TRUE(pool.init(&dev_, 4, 2048).ok());
    EXPECT_EQ(pool.count(), 4u);
    EXPECT_EQ(pool.available(), 4u);
    EXPECT_EQ(pool.buffer_size(), 2048u);
    std::vector<PooledBuffer> out;
    for (int i = 0; i < 4; ++i) {
      auto b = pool.acquire();
      ASSERT_TRUE(b.ok());
      EXPECT_EQ(b->size(), 2048u);
      EXPECT_LE(b->dma_addr().value() + 2047, kMask32);
      std::memset(b->data(), i, 2048);
      out.push_back(std::move(*b));
    }
    EXPECT_EQ(pool.acquire().code(), ErrorCode::kNoMemory);
    EXPECT_EQ(out[2].data()[100], 2);
    out.pop_back();
    EXPECT_EQ(pool.available(), 1u);
    auto again = pool.acquire();
    ASSERT_TRUE(again.ok());
    again->release();
    again->release();  // Idempotent.
    out.clear();
    EXPECT_EQ(pool.available(), 4u);
    EXPECT_EQ(pool.init(&dev_, 1, 64).code(), ErrorCode::kInvalidArgument);
  }
  EXPECT_EQ(plat_.pfa().free_pages(), before);
}

TEST_F(DeviceDmaTest, BufferPoolRejectsBadSizes) {
  DmaBufferPool a, b, c;
  EXPECT_EQ(a.init(&dev_, 0, 64).code(), ErrorCode::kLayoutError);
  EXPECT_EQ(b.init(&dev_, 65, 64).code(), ErrorCode::kLayoutError);
  EXPECT_EQ(c.init(&dev_, 1, 0).code(), ErrorCode::kLayoutError);
}

TEST_F(DeviceDmaTest, BufferPoolInitFailingAtEveryAllocationLeaksNothing) {
  uint64_t before = plat_.pfa().free_pages();
  for (uint64_t n = 1; n <= 8; ++n) {
    DmaBufferPool pool;
    support::FaultInjector::fail_nth(support::FaultSite::kPageAlloc, n);
    EXPECT_EQ(pool.init(&dev_, 8, 4096).code(), ErrorCode::kNoMemory) << n;
    EXPECT_EQ(plat_.pfa().free_pages(), before) << n;
  }
  support::FaultInjector::disarm_all();
}

TEST_F(DeviceDmaTest, BufferPoolDestroyedWithBuffersOutIsReported) {
  EXPECT_DEATH(
      {
        auto* pool = new DmaBufferPool;
        if (!pool->init(&dev_, 2, 64).ok()) std::abort();
        auto b = pool->acquire();
        PooledBuffer keep = std::move(*b);
        delete pool;
        (void)keep.valid();
      },
      "buffers still lent out");
}

}  // namespace
