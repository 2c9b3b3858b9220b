// Coherent and streaming memory in the host cache model (arch/host/cache_model.h): which buffers
// need a sync and which do not, for coherent and non-coherent devices, and what the uncached
// remap of coherent memory does and why alloc_coherent cleans before it.
#include <gtest/gtest.h>

#include <atomic>
#include <cstring>
#include <thread>
#include <vector>

#include "arch/host/host_platform.h"
#include "dmakit/device_dma.h"
#include "dmakit/dma_pool.h"

namespace {

constexpr uint64_t kMask32 = 0xFFFF'FFFFull;
constexpr size_t kPage = 4096;

class CoherentModelTest : public testing::Test {
 protected:
  explicit CoherentModelTest(HostPlatform::Options o = HostPlatform::default_options())
      : plat_(o), dev_(&plat_.op(), kMask32), hw_(&plat_, kMask32, false) {}
  uint8_t* buffer(size_t bytes) {
    auto pa = plat_.pfa().alloc(PageFrameAllocator::order_for(bytes));
    EXPECT_TRUE(pa.ok());
    held_.push_back({pa->value(), PageFrameAllocator::order_for(bytes)});
    return plat_.phys_to_virt(pa->value());
  }
  void TearDown() override {
    for (auto& b : held_) ASSERT_TRUE(plat_.pfa().free(PhysAddr(b.first), b.second).ok());
  }
  uint8_t device_byte(DmaAddr a) {
    uint8_t b = 0;
    hw_.read(a, &b, 1);
    return b;
  }
  size_t offset_of(const void* p) const {
    return static_cast<size_t>(static_cast<const uint8_t*>(p) -
                               plat_.phys_to_virt(plat_.arena_phys()));
  }

  HostPlatform plat_;
  DeviceDma dev_;  // The platform default: not coherent.
  HostDevice hw_;  // A device that does not snoop.
  std::vector<std::pair<uint64_t, unsigned>> held_;
};

// ---- Coherent devices: nothing to do, and nothing is done ----

TEST_F(CoherentModelTest, ACoherentDeviceNeedsNoSyncForAnything) {
  DeviceDma dev(&plat_.op(), kMask32);
  dev.set_coherent(true);
  HostDevice hw(&plat_, kMask32, true);
  plat_.model().reset_counters();
  // Coherent memory: cacheable (no remap) and shared without syncs both ways.
  auto ring = dev.alloc_array<uint32_t>(64);
  ASSERT_TRUE(ring.ok());
  EXPECT_FALSE(ring->handle().remapped);
  EXPECT_EQ(plat_.model().uncached_pages(), 0u);
  ring->write(3, 0xC0FFEE);
  uint32_t seen = 0;
  hw.read(ring->dma_addr(3), &seen, 4);
  EXPECT_EQ(seen, 0xC0FFEEu);
  const uint32_t v = 0xBEEF;
  hw.write(ring->dma_addr(7), &v, 4);
  EXPECT_EQ(ring->read(7), 0xBEEFu);
  // A streaming buffer: no sync either, in both directions.
  uint8_t* buf = buffer(kPage);
  auto m = dev.map(buf, kPage, DmaDirection::kBidirectional);
  ASSERT_TRUE(m.ok());
  buf[5] = 0x5A;
  uint8_t b = 0;
  hw.read(m->dma_addr() + 5, &b, 1);
  EXPECT_EQ(b, 0x5A);
  const uint8_t w = 0xA5;
  hw.write(m->dma_addr() + 9, &w, 1);
  EXPECT_EQ(buf[9], 0xA5);
  m->unmap();
  // And no cache maintenance was spent on any of it.
  EXPECT_EQ(plat_.model().counters().cleans, 0u);
  EXPECT_EQ(plat_.model().counters().invalidates, 0u);
  EXPECT_EQ(plat_.model().counters().clean_invalidates, 0u);
  EXPECT_EQ(plat_.op().attribute_changes(), 0u);
}

// ---- Non-coherent devices: streaming buffers need the syncs ----

TEST_F(CoherentModelTest, ANonCoherentStreamingBufferNeedsSyncForDevice) {
  uint8_t* buf = buffer(kPage);
  auto m = dev_.map(buf, kPage, DmaDirection::kToDevice);
  ASSERT_TRUE(m.ok());
  EXPECT_FALSE(m->bounced());
  buf[100] = 0x42;  // After the map: in the cache only.
  EXPECT_NE(device_byte(m->dma_addr() + 100), 0x42);
  ASSERT_TRUE(m->sync_for_device(100, 1).ok());
  EXPECT_EQ(device_byte(m->dma_addr() + 100), 0x42);
}

TEST_F(CoherentModelTest, ANonCoherentStreamingBufferNeedsSyncForCpu) {
  uint8_t* buf = buffer(kPage);
  std::memset(buf, 0x11, kPage);
  auto m = dev_.map(buf, kPage, DmaDirection::kFromDevice);
  ASSERT_TRUE(m.ok());
  const uint8_t w = 0x77;
  hw_.write(m->dma_addr() + 200, &w, 1);
  EXPECT_EQ(buf[200], 0x11);  // The CPU's cached copy: stale until the sync.
  ASSERT_TRUE(m->sync_for_cpu(200, 1).ok());
  EXPECT_EQ(buf[200], 0x77);
}

// ---- Non-coherent devices: a CPU store dirties its line, whatever it stores ----

// Hardware marks a line dirty on any store, even one that writes back the bytes already there;
// the later write-back (a clean, or an eviction at the cache's choosing) then puts the whole line
// over what the device wrote meanwhile. A model that compared values would call the line clean
// and keep the device's bytes, hiding a driver that stores into a line a device is writing.
TEST_F(CoherentModelTest, AStoreOfTheSameValueDirtiesTheLineForAClean) {
  uint8_t* buf = buffer(kPage);
  std::memset(buf, 0x11, kPage);
  plat_.op().flush(buf, kPage);  // Synced: memory holds 0x11, every line clean.
  const DmaAddr a(plat_.arena_phys() + offset_of(buf));
  EXPECT_EQ(device_byte(a + 6), 0x11);
  *reinterpret_cast<volatile uint8_t*>(buf + 5) = 0x11;  // The value it already had.
  const uint8_t w = 0x77;
  hw_.write(a + 6, &w, 1);  // Same line, in memory only.
  EXPECT_EQ(device_byte(a + 6), 0x77);
  plat_.op().flush(buf + 5, 1);
  EXPECT_EQ(device_byte(a + 6), 0x11);  // The dirty line went back whole.
  // A line nobody stored to keeps the device's byte through the same clean.
  hw_.write(a + 200, &w, 1);
  plat_.op().flush(buf + 200, 1);
  EXPECT_EQ(device_byte(a + 200), 0x77);
}

TEST_F(CoherentModelTest, AStoreOfTheSameValueDirtiesTheLineForAnEviction) {
  uint8_t* buf = buffer(kPage);
  std::memset(buf, 0x22, kPage);
  plat_.op().flush_invalidate(buf, kPage);
  const DmaAddr a(plat_.arena_phys() + offset_of(buf));
  std::memset(buf + 128, 0x22, 64);  // A whole line, rewritten unchanged.
  std::vector<uint8_t> dev(64, 0x99);
  hw_.write(a + 128, dev.data(), 64);
  hw_.write(a + 192, dev.data(), 64);  // The next line: not stored to.
  plat_.model().evict_all();
  EXPECT_EQ(device_byte(a + 128), 0x22);
  EXPECT_EQ(device_byte(a + 191), 0x22);
  EXPECT_EQ(device_byte(a + 192), 0x99);
}

// ---- Several threads, one non-coherent device, through the model ----

// Each thread streams its own buffers to and from the device, as CPUs of a real machine would:
// the model's state and the store tracking are shared by all of them. Every byte the device reads
// must be what the thread wrote, and every byte the thread reads back what the device wrote.
TEST_F(CoherentModelTest, ConcurrentThreadsStreamingTheirOwnBuffersSeeTheirOwnData) {
  constexpr int kThreads = 4;
  constexpr int kRounds = 60;
  constexpr size_t kBuf = 2 * kPage;
  std::vector<uint8_t*> bufs;
  for (int t = 0; t < kThreads; ++t) bufs.push_back(buffer(kBuf));
  std::atomic<int> wrong_for_device{0};
  std::atomic<int> wrong_for_cpu{0};
  std::atomic<int> map_failures{0};
  std::vector<std::thread> threads;
  for (int t = 0; t < kThreads; ++t) {
    threads.emplace_back([&, t] {
      uint8_t* buf = bufs[static_cast<size_t>(t)];
      std::vector<uint8_t> seen(kBuf);
      for (int r = 0; r < kRounds; ++r) {
        const auto out = static_cast<uint8_t>(t * 37 + r);
        const auto in = static_cast<uint8_t>(~out);
        // Unaligned offsets and lengths: partial lines at both ends.
        const size_t off = static_cast<size_t>(r * 13) % 100;
        const size_t len = 100 + static_cast<size_t>(r * 611) % (kBuf - 200);
        std::memset(buf + off, out, len);
        {
          auto m = dev_.map(buf + off, len, DmaDirection::kToDevice);
          if (!m.ok()) {
            ++map_failures;
            continue;
          }
          hw_.read(m->dma_addr(), seen.data(), len);
          for (size_t i = 0; i < len; ++i) {
            if (seen[i] != out) {
              ++wrong_for_device;
              break;
            }
          }
        }
        {
          auto m = dev_.map(buf + off, len, DmaDirection::kFromDevice);
          if (!m.ok()) {
            ++map_failures;
            continue;
          }
          hw_.fill(m->dma_addr(), in, len);
          m->unmap();
          for (size_t i = 0; i < len; ++i) {
            if (buf[off + i] != in) {
              ++wrong_for_cpu;
              break;
            }
          }
        }
      }
    });
  }
  for (auto& th : threads) th.join();
  EXPECT_EQ(map_failures.load(), 0);
  EXPECT_EQ(wrong_for_device.load(), 0);
  EXPECT_EQ(wrong_for_cpu.load(), 0);
  // The write protection saw the threads' stores (memset after each round's invalidate).
  EXPECT_GT(plat_.model().caught_stores(), 0u);
}

// ---- Non-coherent devices: coherent memory is uncached and needs no sync ----

TEST_F(CoherentModelTest, CoherentMemoryOfANonCoherentDeviceIsUncachedAndNeedsNoSync) {
  auto ring = dev_.alloc_array<uint32_t>(2000);  // 8000 bytes: two pages.
  ASSERT_TRUE(ring.ok());
  EXPECT_TRUE(ring->handle().remapped);
  EXPECT_EQ(plat_.model().uncached_pages(), 2u);
  EXPECT_TRUE(plat_.model().uncached(offset_of(ring->raw_data())));
  EXPECT_TRUE(plat_.model().uncached(offset_of(ring->raw_data()) + kPage));
#if DMA_STATS  // KernelDmaOp::stats() counts only with DMA_STATS.
  EXPECT_EQ(plat_.op().stats().coherent_uncached_live, 1u);
#endif
  // The zeroes reached memory.
  std::vector<uint32_t> dev_view(2000, 0xFFFF'FFFF);
  hw_.read(ring->dma_addr(0), dev_view.data(), 8000);
  for (uint32_t x : dev_view) ASSERT_EQ(x, 0u);
  // CPU -> device and device -> CPU, no syncs; an eviction of everything changes nothing.
  plat_.model().reset_counters();
  ring->write(1500, 0x1234'5678);
  uint32_t seen = 0;
  hw_.read(ring->dma_addr(1500), &seen, 4);
  EXPECT_EQ(seen, 0x1234'5678u);
  const uint32_t v = 0x9ABC;
  hw_.write(ring->dma_addr(10), &v, 4);
  EXPECT_EQ(ring->read(10), 0x9ABCu);
  plat_.model().evict_all();
  EXPECT_EQ(plat_.model().stale_lines(), 0u);
  hw_.read(ring->dma_addr(1500), &seen, 4);
  EXPECT_EQ(seen, 0x1234'5678u);
  EXPECT_EQ(ring->read(10), 0x9ABCu);
  EXPECT_EQ(plat_.model().counters().cleans, 0u);
  EXPECT_EQ(plat_.model().counters().invalidates, 0u);
  // Freed: cacheable again, and the normal rules are back for whoever gets the pages.
  const size_t off = offset_of(ring->raw_data());
  ring->reset();
  EXPECT_EQ(plat_.model().uncached_pages(), 0u);
  EXPECT_FALSE(plat_.model().uncached(off));
#if DMA_STATS  // KernelDmaOp::stats() counts only with DMA_STATS.
  EXPECT_EQ(plat_.op().stats().coherent_uncached_live, 0u);
  EXPECT_EQ(plat_.op().stats().coherent_uncached, 1u);
#endif
  EXPECT_EQ(plat_.op().uncached_regions(), 0u);
}

TEST_F(CoherentModelTest, WithoutTheCleanBeforeTheRemapDirtyLinesComeBackLater) {
  // What alloc_coherent's first clean+invalidate prevents: a page dirtied through the cacheable
  // mapping and made uncached without a clean. The CPU no longer sees its own bytes, and the
  // dirty line, still in the cache, overwrites the device's data when it is evicted.
  uint8_t* page = buffer(kPage);
  std::memset(page, 0xAB, kPage);
  ASSERT_TRUE(plat_.op().set_memory_attribute(page, kPage, KernelDmaOp::MemAttr::kUncached).ok());
  EXPECT_NE(page[0], 0xAB);  // Memory never got the 0xAB.
  EXPECT_GT(plat_.model().stale_lines(), 0u);
  const DmaAddr a(plat_.arena_phys() + offset_of(page));
  const uint8_t w = 0x5C;
  hw_.write(a, &w, 1);
  EXPECT_EQ(page[0], 0x5C);
  plat_.model().evict_all();
  EXPECT_EQ(device_byte(a), 0xAB);  // The device's byte is gone.
  EXPECT_EQ(page[0], 0xAB);
  ASSERT_TRUE(plat_.op().set_memory_attribute(page, kPage, KernelDmaOp::MemAttr::kCached).ok());

  // The same with the clean first: nothing is left behind to come back.
  std::memset(page, 0xCD, kPage);
  plat_.op().flush_invalidate(page, kPage);
  ASSERT_TRUE(plat_.op().set_memory_attribute(page, kPage, KernelDmaOp::MemAttr::kUncached).ok());
  EXPECT_EQ(page[0], 0xCD);
  EXPECT_EQ(plat_.model().stale_lines(), 0u);
  hw_.write(a, &w, 1);
  plat_.model().evict_all();
  EXPECT_EQ(device_byte(a), 0x5C);
  ASSERT_TRUE(plat_.op().set_memory_attribute(page, kPage, KernelDmaOp::MemAttr::kCached).ok());
}

TEST_F(CoherentModelTest, DmaPoolBlocksOfANonCoherentDeviceNeedNoSync) {
  DmaPool pool;
  ASSERT_TRUE(pool.init(&dev_, 16, 16, 4096, "descriptors").ok());
  std::vector<DmaPoolBlock> blocks;
  for (int i = 0; i < 300; ++i) {
    auto b = pool.alloc();
    ASSERT_TRUE(b.ok());
    EXPECT_TRUE(plat_.model().uncached(offset_of(b->cpu)));
    static_cast<uint8_t*>(b->cpu)[3] = static_cast<uint8_t>(i);
    EXPECT_EQ(device_byte(b->dma + 3), static_cast<uint8_t>(i));
    blocks.push_back(*b);
  }
  for (auto& b : blocks) ASSERT_TRUE(pool.free(b.cpu).ok());
}

TEST_F(CoherentModelTest, RemapFailureGivesEverythingBack) {
  // The page-table budget of a real port, in 2 MiB regions: 4 KiB blocks aligned to 2 MiB each
  // need a region of their own.
  HostPlatform::Options o = HostPlatform::default_options();
  o.uncached.region_budget = 3;
  HostPlatform plat(o);
  DeviceDma dev(&plat.op(), kMask32);
  const uint64_t free0 = plat.pfa().free_pages();
  std::vector<DmaHandle> hs;
  for (int i = 0; i < 3; ++i) {
    auto h = plat.op().alloc_coherent(dev.constraints(), Layout{64, 2u << 20});
    ASSERT_TRUE(h.ok());
    hs.push_back(*h);
  }
  const uint64_t free3 = plat.pfa().free_pages();
  auto h = plat.op().alloc_coherent(dev.constraints(), Layout{64, 2u << 20});
  EXPECT_EQ(h.code(), ErrorCode::kNoMemory);
  EXPECT_EQ(plat.pfa().free_pages(), free3);
  EXPECT_EQ(plat.model().uncached_pages(), 3u);
#if DMA_STATS  // KernelDmaOp::stats() counts only with DMA_STATS.
  EXPECT_EQ(plat.op().stats().coherent_live, 3u);
#endif
  // A coherent device is not limited by it.
  DmaConstraints coh = dev.constraints();
  coh.coherence = DmaCoherence::kCoherent;
  auto c = plat.op().alloc_coherent(coh, Layout{64, 2u << 20});
  ASSERT_TRUE(c.ok());
  plat.op().dealloc_coherent(*c);
  for (auto& x : hs) plat.op().dealloc_coherent(x);
  EXPECT_EQ(plat.pfa().free_pages(), free0);
  EXPECT_EQ(plat.model().uncached_pages(), 0u);
  auto again = plat.op().alloc_coherent(dev.constraints(), Layout{64, 2u << 20});
  ASSERT_TRUE(again.ok());
  plat.op().dealloc_coherent(*again);
}

TEST_F(CoherentModelTest, APlatformThatCannotRemapRefusesNonCoherentDevices) {
  // Rather than hand out cacheable memory that a non-snooping device would see stale.
  HostPlatform::Options o = HostPlatform::default_options();
  o.uncached.supported = false;
  HostPlatform plat(o);
  DeviceDma dev(&plat.op(), kMask32);
  const uint64_t free0 = plat.pfa().free_pages();
  EXPECT_EQ(dev.alloc_array<uint8_t>(100).code(), ErrorCode::kNotSupported);
  EXPECT_EQ(plat.pfa().free_pages(), free0);
#if DMA_STATS  // KernelDmaOp::stats() counts only with DMA_STATS.
  EXPECT_EQ(plat.op().stats().coherent_live, 0u);
#endif
  dev.set_coherent(true);
  auto ok = dev.alloc_array<uint8_t>(100);
  EXPECT_TRUE(ok.ok());
}

TEST_F(CoherentModelTest, RemapRefusesWhatIsNotSimulatedRam) {
  uint8_t* page = buffer(kPage);
  using MemAttr = KernelDmaOp::MemAttr;
  EXPECT_EQ(plat_.op().set_memory_attribute(page + 8, kPage, MemAttr::kUncached).code(),
            ErrorCode::kLayoutError);
  EXPECT_EQ(plat_.op().set_memory_attribute(page, 100, MemAttr::kUncached).code(),
            ErrorCode::kLayoutError);
  alignas(4096) static uint8_t outside[kPage];
  EXPECT_EQ(plat_.op().set_memory_attribute(outside, kPage, MemAttr::kUncached).code(),
            ErrorCode::kInvalidArgument);
  EXPECT_EQ(plat_.model().uncached_pages(), 0u);
}

}  // namespace

namespace {

// HostDmaOp runs the decisions of the architecture HostPlatform::Options::cache_policy names:
// each keeps the neighbours of a buffer that shares its first and last lines, and only those
// with an invalidate-only instruction use it.
TEST(HostCachePolicyTest, EveryArchitecturesPolicyKeepsTheNeighboursOfADeviceWrittenBuffer) {
  for (HostCachePolicy policy : {HostCachePolicy::kAArch64, HostCachePolicy::kRiscv64,
                                 HostCachePolicy::kRiscv64NoInval, HostCachePolicy::kX86}) {
    SCOPED_TRACE(static_cast<int>(policy));
    HostPlatform::Options o = HostPlatform::default_options();
    o.cache_policy = policy;
    HostPlatform plat(o);
    EXPECT_EQ(plat.op().policy(), policy);
    HostDevice hw(&plat, kMask32, false);
    auto pa = plat.pfa().alloc(0);
    ASSERT_TRUE(pa.ok());
    uint8_t* page = plat.phys_to_virt(pa->value());
    std::memset(page, 0x11, kPage);
    uint8_t* buf = page + 8;  // [8, 208): partial lines 0 and 192, whole lines 64 and 128.
    // The invalidate primitive itself (map_single would bounce this buffer, which shares lines,
    // and so never invalidate a partial line of it).
    plat.op().flush(page, kPage);
    plat.model().reset_counters();
    *reinterpret_cast<volatile uint8_t*>(page + 7) = 0x22;    // Neighbours, stored during the DMA.
    *reinterpret_cast<volatile uint8_t*>(page + 208) = 0x11;  // The value it had.
    hw.fill(DmaAddr(pa->value() + 8), 0xDD, 200);
    plat.op().invalidate(buf, 200);
    EXPECT_EQ(page[7], 0x22);
    EXPECT_EQ(page[208], 0x11);
    for (size_t i = 64; i < 192; ++i) ASSERT_EQ(page[i], 0xDD) << i;
    uint8_t b = 0;
    hw.read(DmaAddr(pa->value() + 7), &b, 1);
    EXPECT_EQ(b, 0x22);  // Written back by the clean of the partial line.
    const bool has_invalidate =
        policy == HostCachePolicy::kAArch64 || policy == HostCachePolicy::kRiscv64;
    EXPECT_EQ(plat.model().counters().invalidates, has_invalidate ? 2u : 0u);
    EXPECT_EQ(plat.model().counters().clean_invalidates, has_invalidate ? 2u : 4u);
    ASSERT_TRUE(plat.pfa().free(*pa, 0).ok());
  }
}

}  // namespace
