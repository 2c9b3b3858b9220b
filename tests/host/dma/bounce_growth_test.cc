// Bounce pools that grow on demand and give idle growth back (issue 15, item 7): when every pool
// under a device's mask is full, the op takes a block from the page-frame allocator under the
// mask and bounces into a pool set up over it; an empty grown pool goes back by the hysteresis or
// by trim_bounce_pools(); limits the kernel sets are kept; bad limits are refused at init.
#include <gtest/gtest.h>

#include <atomic>
#include <random>
#include <thread>
#include <vector>

#include "arch/host/host_platform.h"
#include "dmakit/device_dma.h"

namespace {

constexpr uint64_t kRamBase = 0x4000'0000;
constexpr uint64_t kMiB = 1ull << 20;
constexpr uint64_t kPage = PageFrameAllocator::kPageSize;
constexpr size_t kChunk = 256 * 1024;  // One max-size mapping fills the fixed pool.

HostPlatform::Options options(size_t grown, uint64_t limit, uint64_t step, unsigned cpus = 0) {
  HostPlatform::Options o;
  o.ram.push_back(PhysRange{PhysAddr(kRamBase), 64 * kMiB});
  o.pools.push_back(HostPlatform::PoolSpec{kChunk, 0xFFFF'FFFFull});
  o.platform_coherent = true;
  o.grown_pools = grown;
  o.grow_limit = limit;
  o.grow_step = step;
  o.cpu_caches = cpus;
  return o;
}

class BounceGrowthTest : public testing::Test {
 protected:
  explicit BounceGrowthTest(HostPlatform::Options o = options(2, 2 * kChunk, kChunk))
      : plat_(o), dev_(&plat_.op(), 0xFFFF'FFFFull) {
    dev_.set_force_bounce(true);
  }
  uint8_t* buffer(size_t bytes = kChunk) {
    uint8_t* p = plat_.buffer_above(kRamBase + 32 * kMiB, bytes);
    held_.push_back(p);
    return p;
  }
  void TearDown() override {
    for (uint8_t* p : held_) plat_.release_buffer(p);
  }
  KernelDmaOp::Stats stats() { return plat_.op().stats(); }
  uint64_t free_pages() { return plat_.pfa().free_pages(); }
  // The device's view of a bounced mapping's bytes (bus offset 0: DMA address = physical).
  uint8_t* device_view(DmaAddr a) { return plat_.phys_to_virt(a.value()); }

  HostPlatform plat_;
  DeviceDma dev_;
  std::vector<uint8_t*> held_;
};

TEST_F(BounceGrowthTest, GrowsWhenEveryPoolIsFullAndGivesTheGrowthBack) {
  const uint64_t pages_before = free_pages();
  uint8_t* a_buf = buffer();
  uint8_t* b_buf = buffer();
  const uint64_t pages_start = free_pages();
  auto a = dev_.map(a_buf, kChunk, DmaDirection::kToDevice);
  ASSERT_TRUE(a.ok());
  EXPECT_TRUE(plat_.pool(0).contains(PhysAddr(a->dma_addr().value())));
  EXPECT_EQ(stats().grow_events, 0u);
  for (size_t i = 0; i < kChunk; ++i) b_buf[i] = static_cast<uint8_t>(i * 7 + 3);
  auto b = dev_.map(b_buf, kChunk, DmaDirection::kBidirectional);
  ASSERT_TRUE(b.ok()) << "the fixed pool is full: the op grows";
  EXPECT_FALSE(plat_.pool(0).contains(PhysAddr(b->dma_addr().value())));
  EXPECT_TRUE(plat_.grown_pool(0).contains(PhysAddr(b->dma_addr().value())));
  EXPECT_LE(b->dma_addr().value() + kChunk - 1, 0xFFFF'FFFFull);
  EXPECT_EQ(stats().grow_events, 1u);
  EXPECT_EQ(stats().grown_bytes, kChunk);
  EXPECT_EQ(stats().grown_bytes_high_water, kChunk);
  // The block and a page of slot records came from the allocator.
  EXPECT_EQ(free_pages(), pages_start - kChunk / kPage - 1);
  // The device sees the buffer's bytes; what it writes comes back at unmap.
  EXPECT_EQ(memcmp(device_view(b->dma_addr()), b_buf, kChunk), 0);
  memset(device_view(b->dma_addr()) + 100, 0xA5, 1000);
  b->unmap();
  for (size_t i = 0; i < kChunk; ++i) {
    uint8_t want = i >= 100 && i < 1100 ? 0xA5 : static_cast<uint8_t>(i * 7 + 3);
    ASSERT_EQ(b_buf[i], want) << i;
  }
  // The grown pool is empty, but the fixed pool is still full: the hysteresis keeps it.
  EXPECT_EQ(stats().shrink_events, 0u);
  EXPECT_EQ(stats().grown_bytes, kChunk);
  // The fixed pool's unmap finds it recovered: the idle growth goes back without a trim.
  a->unmap();
  EXPECT_EQ(stats().shrink_events, 1u);
  EXPECT_EQ(stats().grown_bytes, 0u);
  auto t = plat_.op().trim_bounce_pools();
  ASSERT_TRUE(t.ok());
  EXPECT_EQ(*t, 0u);  // Nothing left to trim.
  EXPECT_EQ(stats().shrink_events, 1u);
  EXPECT_EQ(stats().grown_bytes, 0u);
  EXPECT_EQ(stats().grown_bytes_high_water, kChunk);
  EXPECT_EQ(free_pages(), pages_start);
  EXPECT_EQ(plat_.grown_pool(0).retire().code(), ErrorCode::kInvalidArgument);  // Retired.
  EXPECT_EQ(plat_.pool(0).stats().used_slots, 0u);
  for (uint8_t* p : held_) plat_.release_buffer(p);
  held_.clear();
  EXPECT_EQ(free_pages(), pages_before);
}

TEST_F(BounceGrowthTest, AnEmptyGrownPoolGoesBackOnceTheFixedPoolHasRecovered) {
  auto a = dev_.map(buffer(), kChunk, DmaDirection::kToDevice);
  ASSERT_TRUE(a.ok());
  auto b = dev_.map(buffer(), 4096, DmaDirection::kToDevice);
  ASSERT_TRUE(b.ok());
  EXPECT_EQ(stats().grow_events, 1u);
  a->unmap();  // The fixed pool has all its room again.
  EXPECT_EQ(stats().shrink_events, 0u) << "the grown pool still holds a mapping";
  const uint64_t pages = free_pages();
  b->unmap();  // Empty, and its parent recovered: given back at once.
  EXPECT_EQ(stats().shrink_events, 1u);
  EXPECT_EQ(stats().grown_bytes, 0u);
  EXPECT_EQ(free_pages(), pages + kChunk / kPage + 1);
}

TEST_F(BounceGrowthTest, AnIdleGrownPoolWaitsUntilTheFixedPoolsUnmapsFreeHalfOfIt) {
  // The fixed pool in four quarters, then a mapping that grows.
  std::vector<StreamingMapping> quarters;
  for (int i = 0; i < 4; ++i) {
    auto q = dev_.map(buffer(kChunk / 4), kChunk / 4, DmaDirection::kToDevice);
    ASSERT_TRUE(q.ok());
    ASSERT_TRUE(plat_.pool(0).contains(PhysAddr(q->dma_addr().value())));
    quarters.push_back(std::move(*q));
  }
  auto b = dev_.map(buffer(4096), 4096, DmaDirection::kToDevice);
  ASSERT_TRUE(b.ok());
  EXPECT_EQ(stats().grow_events, 1u);
  b->unmap();  // Empty while the fixed pool is full: kept, idle.
  EXPECT_EQ(stats().shrink_events, 0u);
  quarters[0].unmap();  // A quarter free: less than half, still kept.
  EXPECT_EQ(stats().shrink_events, 0u);
  EXPECT_EQ(stats().grown_bytes, kChunk);
  quarters[1].unmap();  // Half free: this unmap gives the idle growth back.
  EXPECT_EQ(stats().shrink_events, 1u);
  EXPECT_EQ(stats().grown_bytes, 0u);
  quarters[2].unmap();
  quarters[3].unmap();
  EXPECT_EQ(stats().shrink_events, 1u);
  EXPECT_EQ(*plat_.op().trim_bounce_pools(), 0u);
}

TEST_F(BounceGrowthTest, AWorkloadAtTheEdgeReusesItsGrownPool) {
  auto a = dev_.map(buffer(), kChunk, DmaDirection::kToDevice);
  ASSERT_TRUE(a.ok());
  uint8_t* buf = buffer(4096);
  for (int i = 0; i < 50; ++i) {
    auto m = dev_.map(buf, 4096, DmaDirection::kToDevice);
    ASSERT_TRUE(m.ok());
    m->unmap();
  }
  EXPECT_EQ(stats().grow_events, 1u);
  EXPECT_EQ(stats().shrink_events, 0u);
  // A mapping in it keeps it from trim; without one, trim gives it back.
  auto m = dev_.map(buf, 4096, DmaDirection::kToDevice);
  ASSERT_TRUE(m.ok());
  EXPECT_EQ(*plat_.op().trim_bounce_pools(), 0u);
  m->unmap();
  EXPECT_EQ(*plat_.op().trim_bounce_pools(), kChunk);
  EXPECT_EQ(*plat_.op().trim_bounce_pools(), 0u);
  a->unmap();
}

TEST_F(BounceGrowthTest, AnExhaustedLimitIsNoMemoryAndChangesNothing) {
  std::vector<StreamingMapping> live;
  for (int i = 0; i < 3; ++i) {  // The fixed pool, then the two steps the limit allows.
    auto m = dev_.map(buffer(), kChunk, DmaDirection::kToDevice);
    ASSERT_TRUE(m.ok()) << i;
    live.push_back(std::move(*m));
  }
  EXPECT_EQ(stats().grow_events, 2u);
  EXPECT_EQ(stats().grown_bytes, 2 * kChunk);
  const uint64_t pages = free_pages();
  const KernelDmaOp::Stats before = stats();
  uint8_t* buf = buffer(4096);
  const uint64_t pages_after_buffer = free_pages();
  (void)pages;
  auto m = dev_.map(buf, 4096, DmaDirection::kToDevice);
  EXPECT_EQ(m.code(), ErrorCode::kNoMemory);
  EXPECT_EQ(free_pages(), pages_after_buffer);
  EXPECT_EQ(stats().grow_events, before.grow_events);
  EXPECT_EQ(stats().grown_bytes, before.grown_bytes);
  EXPECT_EQ(plat_.pool(0).stats().used_slots, kChunk / BouncePool::kDefaultSlotSize);
  live.clear();
  EXPECT_EQ(stats().grown_bytes, 0u) << "every grown pool empty, the fixed one too";
}

TEST_F(BounceGrowthTest, AMaskNoMemoryServesIsStillAMaskMismatch) {
  DeviceDma tiny(&plat_.op(), 0xFFFF);  // Below all RAM: no pool, no allocator memory.
  tiny.set_force_bounce(true);
  auto m = tiny.map(buffer(4096), 4096, DmaDirection::kToDevice);
  EXPECT_EQ(m.code(), ErrorCode::kDmaMaskNotMatch);
  EXPECT_EQ(stats().grow_events, 0u);
}

TEST_F(BounceGrowthTest, AGrownSlotKeepsTheBuffersOffsetBits) {
  auto a = dev_.map(buffer(), kChunk, DmaDirection::kToDevice);
  ASSERT_TRUE(a.ok());
  DmaConstraints c;
  c.coherence = DmaCoherence::kCoherent;
  c.force_bounce = true;
  c.dma_mask = 0xFFFF'FFFFull;
  c.min_align_mask = 0xFFF;
  DeviceDma nvme(&plat_.op(), c);
  uint8_t* buf = buffer(3 * 4096);
  auto m = nvme.map(buf + 0x234, 5000, DmaDirection::kToDevice);
  ASSERT_TRUE(m.ok());
  EXPECT_TRUE(plat_.grown_pool(0).contains(PhysAddr(m->dma_addr().value())));
  EXPECT_EQ(m->dma_addr().value() & 0xFFF, 0x234u);
  m->unmap();
  a->unmap();
}

class BounceGrowthStepTest : public BounceGrowthTest {
 protected:
  BounceGrowthStepTest() : BounceGrowthTest(options(1, kMiB, 16 * kPage)) {}
};

TEST_F(BounceGrowthStepTest, ARequestLargerThanTheStepGrowsByAPowerOfTwoThatHoldsIt) {
  auto a = dev_.map(buffer(), kChunk, DmaDirection::kToDevice);
  ASSERT_TRUE(a.ok());
  auto b = dev_.map(buffer(), 200 * 1024, DmaDirection::kToDevice);
  ASSERT_TRUE(b.ok());
  EXPECT_EQ(stats().grown_bytes, kChunk);
  EXPECT_EQ(plat_.grown_pool(0).bytes(), kChunk);
  b->unmap();
  a->unmap();
}

TEST(BounceGrowthConfigTest, InconsistentLimitsAreRefusedAndTheObjectIsUnchanged) {
  HostPlatform plat(HostPlatform::default_options());
  BouncePool spare[KernelDmaOp::kMaxGrownPools + 1];
  KernelDmaOp::Config good = plat.op().config();
  good.grow_pools[0] = &spare[0];
  good.grow_pools[1] = &spare[1];
  good.max_grown_pools = 2;
  good.grow_limit = 1 * kMiB;
  good.grow_step = 64 * kPage;
  auto bad = [&](auto&& change) {
    KernelDmaOp::Config c = good;
    change(c);
    return c;
  };
  const KernelDmaOp::Config cases[] = {
      bad([](KernelDmaOp::Config& c) { c.grow_step = 3 * kPage; }),  // Not a power of two.
      bad([](KernelDmaOp::Config& c) { c.grow_step = 512; }),        // Less than a page.
      bad([](KernelDmaOp::Config& c) { c.grow_step = 2 * kMiB; }),   // Above the limit.
      bad([](KernelDmaOp::Config& c) {  // Above the allocator's largest block.
        c.grow_limit = 64 * kMiB;
        c.grow_step = 8 * kMiB;
      }),
      bad([](KernelDmaOp::Config& c) { c.max_grown_pools = KernelDmaOp::kMaxGrownPools + 1; }),
      bad([](KernelDmaOp::Config& c) { c.grow_pools[1] = nullptr; }),
      bad([](KernelDmaOp::Config& c) { c.grow_pools[1] = c.grow_pools[0]; }),
      bad([&](KernelDmaOp::Config& c) { c.grow_pools[1] = &plat.pool(0); }),  // Initialised.
      bad([](KernelDmaOp::Config& c) { c.grow_limit = 0; }),
      bad([](KernelDmaOp::Config& c) { c.grow_step = 0; }),
      bad([](KernelDmaOp::Config& c) { c.max_grown_pools = 0; }),
  };
  for (const KernelDmaOp::Config& c : cases) {
    // A fresh object that init refuses stays uninitialised: a good config is taken afterwards.
    struct Fresh final : KernelDmaOp {
      void flush(const void*, size_t) override {}
      void invalidate(const void*, size_t) override {}
      void flush_invalidate(const void*, size_t) override {}
    } fresh;
    EXPECT_EQ(fresh.init(c).code(), ErrorCode::kInvalidArgument);
    EXPECT_EQ(fresh.trim_bounce_pools().code(), ErrorCode::kInvalidArgument);
    EXPECT_TRUE(fresh.init(good).ok());
    EXPECT_EQ(spare[0].bytes(), 0u);
  }
}

// Several threads map and unmap bounced buffers (checking every byte both ways) through growth
// and shrink, while another calls trim_bounce_pools() all the time; afterwards every byte is back
// in the allocator and the fixed pool.
class ConcurrentBounceGrowthTest : public BounceGrowthTest {
 protected:
  static constexpr unsigned kThreads = 4;
  ConcurrentBounceGrowthTest()
      : BounceGrowthTest(options(4, 4 * kChunk, 32 * kPage, kThreads + 2)) {}
};

TEST_F(ConcurrentBounceGrowthTest, ConcurrentMapsGrowShrinkAndTrimWithoutLosingAByte) {
  constexpr size_t kBuf = 64 * 1024;
  constexpr int kRounds = 150;
  std::vector<uint8_t*> bufs;
  for (unsigned t = 0; t < kThreads * 4; ++t) bufs.push_back(buffer(kBuf));
  const uint64_t pages_start = free_pages();
  std::atomic<bool> stop{false};
  std::atomic<int> failures{0};
  std::atomic<uint64_t> no_memory{0};
  std::thread trimmer([&] {
    while (!stop.load(std::memory_order_relaxed)) {
      auto r = plat_.op().trim_bounce_pools();
      if (!r.ok()) failures.fetch_add(1);
      std::this_thread::yield();
    }
  });
  std::vector<std::thread> workers;
  for (unsigned t = 0; t < kThreads; ++t) {
    workers.emplace_back([&, t] {
      std::mt19937 rng(t + 1);
      struct Live {
        StreamingMapping m;
        unsigned buf;
        size_t size;
        uint8_t fill;
      };
      std::vector<Live> live;
      std::vector<unsigned> idle = {t * 4, t * 4 + 1, t * 4 + 2, t * 4 + 3};
      for (int round = 0; round < kRounds; ++round) {
        if (!idle.empty()) {
          unsigned bi = idle.back();
          uint8_t* buf = bufs[bi];
          size_t size = 1 + rng() % kBuf;
          auto fill = static_cast<uint8_t>(rng());
          for (size_t i = 0; i < size; ++i) buf[i] = static_cast<uint8_t>(fill + i);
          auto m = dev_.map(buf, size, DmaDirection::kBidirectional);
          if (m.ok()) {
            uint8_t* seen = device_view(m->dma_addr());
            for (size_t i = 0; i < size; ++i) {
              if (seen[i] != static_cast<uint8_t>(fill + i)) {
                failures.fetch_add(1);
                break;
              }
            }
            // The device answers with the bytes inverted.
            for (size_t i = 0; i < size; ++i) seen[i] = static_cast<uint8_t>(~(fill + i));
            idle.pop_back();
            live.push_back(Live{std::move(*m), bi, size, fill});
          } else if (m.code() == ErrorCode::kNoMemory) {
            no_memory.fetch_add(1);
          } else {
            failures.fetch_add(1);
          }
        }
        if (idle.empty() || (!live.empty() && rng() % 2 == 0)) {
          size_t k = rng() % live.size();
          live[k].m.unmap();
          const uint8_t* b = bufs[live[k].buf];
          for (size_t i = 0; i < live[k].size; ++i) {
            if (b[i] != static_cast<uint8_t>(~(live[k].fill + i))) {
              failures.fetch_add(1);
              break;
            }
          }
          idle.push_back(live[k].buf);
          live.erase(live.begin() + static_cast<ptrdiff_t>(k));
        }
      }
      live.clear();
    });
  }
  for (auto& w : workers) w.join();
  stop.store(true);
  trimmer.join();
  EXPECT_EQ(failures.load(), 0);
  EXPECT_GT(stats().grow_events, 0u);
  (void)plat_.op().trim_bounce_pools();
  EXPECT_EQ(stats().grown_bytes, 0u);
  EXPECT_EQ(stats().grow_events, stats().shrink_events);
  EXPECT_EQ(free_pages(), pages_start);
  plat_.pool(0).drain_cache();
  EXPECT_EQ(plat_.pool(0).stats().used_slots, 0u);
  EXPECT_EQ(plat_.pool(0).free_block_count(), 1u);
  EXPECT_TRUE(plat_.pool(0).check_invariants());
}

}  // namespace
