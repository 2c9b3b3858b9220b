// DmaPool: block geometry, boundaries, reuse, errors, and what is reported.
#include "dmakit/dma_pool.h"

#include <gtest/gtest.h>

#include <algorithm>
#include <cstring>
#include <map>
#include <set>
#include <vector>

#include "arch/host/host_platform.h"
#include "dmakit/support/fault_injection.h"
#include "tests/host/dma/hooked_dma_op.h"

namespace {

class DmaPoolTest : public testing::Test {
 protected:
  DmaPoolTest() : plat_(HostPlatform::default_options()), dev_(&plat_.op(), 0xFFFF'FFFFull) {}
  HostPlatform plat_;
  DeviceDma dev_;
};

TEST_F(DmaPoolTest, BlocksAreAlignedZeroedAndDistinct) {
  DmaPool pool;
  ASSERT_TRUE(pool.init(&dev_, 48, 64).ok());
  std::set<uint64_t> seen;
  std::vector<DmaPoolBlock> blocks;
  for (int i = 0; i < 200; ++i) {
    auto b = pool.alloc();
    ASSERT_TRUE(b.ok());
    EXPECT_EQ(b->dma.value() % 64, 0u);
    auto* p = static_cast<uint8_t*>(b->cpu);
    for (int j = 0; j < 48; ++j) ASSERT_EQ(p[j], 0);
    std::fill(p, p + 48, 0xEE);
    EXPECT_TRUE(seen.insert(b->dma.value()).second);
    blocks.push_back(*b);
  }
  EXPECT_EQ(pool.stats().blocks_in_use, 200u);
  EXPECT_GE(pool.stats().chunks, 4u);
  for (auto& b : blocks) ASSERT_TRUE(pool.free(b.cpu).ok());
  EXPECT_EQ(pool.stats().blocks_in_use, 0u);
}

TEST_F(DmaPoolTest, DmaAndCpuAddressesAgree) {
  DmaPool pool;
  ASSERT_TRUE(pool.init(&dev_, 16, 16).ok());
  auto b = pool.alloc();
  ASSERT_TRUE(b.ok());
  EXPECT_EQ(plat_.op().virt_to_phys(b->cpu)->value(), b->dma.value());
  ASSERT_TRUE(pool.free(b->cpu).ok());
}

TEST_F(DmaPoolTest, BlocksNeverCrossTheBoundary) {
  DmaPool pool;
  ASSERT_TRUE(pool.init(&dev_, 96, 32, 256).ok());
  std::vector<DmaPoolBlock> blocks;
  for (int i = 0; i < 100; ++i) {
    auto b = pool.alloc();
    ASSERT_TRUE(b.ok());
    EXPECT_EQ(b->dma.value() / 256, (b->dma.value() + 95) / 256) << std::hex << b->dma.value();
    blocks.push_back(*b);
  }
  for (auto& b : blocks) ASSERT_TRUE(pool.free(b.cpu).ok());
}

TEST_F(DmaPoolTest, FreedBlocksAreReusedBeforeNewChunks) {
  DmaPool pool;
  ASSERT_TRUE(pool.init(&dev_, 64, 64).ok());
  auto a = pool.alloc();
  ASSERT_TRUE(a.ok());
  size_t chunks = pool.stats().chunks;
  ASSERT_TRUE(pool.free(a->cpu).ok());
  auto b = pool.alloc();
  ASSERT_TRUE(b.ok());
  EXPECT_EQ(b->cpu, a->cpu);
  EXPECT_EQ(pool.stats().chunks, chunks);
  ASSERT_TRUE(pool.free(b->cpu).ok());
}

TEST_F(DmaPoolTest, LargeBlocksGetLargerChunks) {
  DmaPool pool;
  ASSERT_TRUE(pool.init(&dev_, 6000, 64).ok());
  auto a = pool.alloc();
  ASSERT_TRUE(a.ok());
  EXPECT_GE(pool.stats().blocks_per_chunk, 1u);
  ASSERT_TRUE(pool.free(a->cpu).ok());
}

TEST_F(DmaPoolTest, BadFreesAreRejected) {
  DmaPool pool;
  ASSERT_TRUE(pool.init(&dev_, 32, 32).ok());
  auto a = pool.alloc();
  ASSERT_TRUE(a.ok());
  int local = 0;
  EXPECT_EQ(pool.free(&local).code(), ErrorCode::kNotFound);
  EXPECT_EQ(pool.free(static_cast<uint8_t*>(a->cpu) + 1).code(), ErrorCode::kNotFound);
  ASSERT_TRUE(pool.free(a->cpu).ok());
  EXPECT_EQ(pool.free(a->cpu).code(), ErrorCode::kNotFound);  // Double free.
  EXPECT_EQ(pool.stats().blocks_in_use, 0u);
}

TEST_F(DmaPoolTest, BadGeometryIsALayoutError) {
  DmaPool a, b, c, d, e;
  EXPECT_EQ(a.init(&dev_, 0, 8).code(), ErrorCode::kLayoutError);
  EXPECT_EQ(b.init(&dev_, 8, 12).code(), ErrorCode::kLayoutError);
  EXPECT_EQ(c.init(&dev_, 8, 8, 100).code(), ErrorCode::kLayoutError);
  EXPECT_EQ(d.init(&dev_, 512, 8, 256).code(), ErrorCode::kLayoutError);
  EXPECT_EQ(e.init(&dev_, 8ull << 20, 8).code(), ErrorCode::kLayoutError);
  DmaPool f;
  ASSERT_TRUE(f.init(&dev_, 8, 8).ok());
  EXPECT_EQ(f.init(&dev_, 8, 8).code(), ErrorCode::kInvalidArgument);
  DmaPool g;
  EXPECT_EQ(g.alloc().code(), ErrorCode::kInvalidArgument);
}

TEST_F(DmaPoolTest, UnreachableMaskIsReported) {
  DeviceDma tiny(&plat_.op(), 0xFFFF);
  DmaPool pool;
  ASSERT_TRUE(pool.init(&tiny, 32, 32).ok());
  EXPECT_EQ(pool.alloc().code(), ErrorCode::kDmaMaskNotMatch);
}

TEST_F(DmaPoolTest, DestroyingThePoolReturnsEveryPage) {
  uint64_t before = plat_.pfa().free_pages();
  {
    DmaPool pool;
    ASSERT_TRUE(pool.init(&dev_, 256, 256).ok());
    std::vector<void*> v;
    for (int i = 0; i < 100; ++i) v.push_back(pool.alloc()->cpu);
    EXPECT_LT(plat_.pfa().free_pages(), before);
    for (void* p : v) ASSERT_TRUE(pool.free(p).ok());
  }
  EXPECT_EQ(plat_.pfa().free_pages(), before);
}

TEST_F(DmaPoolTest, DestroyedWithBlocksOutIsReported) {
  EXPECT_DEATH(
      {
        auto* pool = new DmaPool;
        if (!pool->init(&dev_, 32, 32).ok()) std::abort();
        (void)pool->alloc();
        delete pool;
      },
      "blocks still allocated");
}

#if KDEBUG_ENABLED  // Blocks are poisoned in debug builds only.
TEST_F(DmaPoolTest, WriteAfterFreeIsReported) {
  EXPECT_DEATH(
      {
        DmaPool pool;
        if (!pool.init(&dev_, 32, 32).ok()) std::abort();
        auto b = pool.alloc();
        void* p = b->cpu;
        if (!pool.free(p).ok()) std::abort();
        static_cast<uint8_t*>(p)[20] = 1;  // Use after free.
        (void)pool.alloc();
      },
      "written after free");
}
#endif

// ---- Geometry: every geometry init accepts can be served (issue "Data safety", item 3). ----

struct Geometry {
  size_t block_size;
  size_t align;
  size_t boundary;
  size_t blocks_per_chunk;  // What a 4 KiB chunk holds when no block crosses the boundary.
};

class DmaPoolGeometryTest : public DmaPoolTest, public testing::WithParamInterface<Geometry> {};

// Blocks as large as their boundary: before, the chunk header pushed every block across it and
// the first alloc panicked.
TEST_P(DmaPoolGeometryTest, EveryBlockOfSeveralChunksIsServed) {
  const Geometry g = GetParam();
  uint64_t free_before = plat_.pfa().free_pages();
  DmaPool pool;
  ASSERT_TRUE(pool.init(&dev_, g.block_size, g.align, g.boundary).ok());
  EXPECT_EQ(pool.stats().blocks_per_chunk, g.blocks_per_chunk);
  const size_t chunk = pool.stats().chunk_size;
  ASSERT_GE(chunk, 4096u);
  constexpr size_t kChunks = 4;
  const size_t n = kChunks * g.blocks_per_chunk;
  std::vector<DmaPoolBlock> blocks;
  std::set<uint64_t> seen;
  std::map<uint64_t, size_t> per_chunk;  // Chunk base (DMA) -> blocks handed out from it.
  for (size_t i = 0; i < n; ++i) {
    auto b = pool.alloc();
    ASSERT_TRUE(b.ok()) << i;
    uint64_t d = b->dma.value();
    EXPECT_EQ(d % g.align, 0u) << std::hex << d;
    EXPECT_EQ(d / g.boundary, (d + g.block_size - 1) / g.boundary) << std::hex << d;
    EXPECT_EQ(d / chunk, (d + g.block_size - 1) / chunk) << "block outside its chunk";
    EXPECT_EQ(plat_.op().virt_to_phys(b->cpu)->value(), d);
    EXPECT_TRUE(seen.insert(d).second) << "handed out twice: " << std::hex << d;
    ++per_chunk[d - d % chunk];
    auto* p = static_cast<uint8_t*>(b->cpu);
    for (size_t j = 0; j < g.block_size; ++j) ASSERT_EQ(p[j], 0) << i << " " << j;
    std::memset(p, 0x5A, g.block_size);
    blocks.push_back(*b);
  }
  // Every block of every chunk was used before a new chunk was taken.
  EXPECT_EQ(pool.stats().chunks, kChunks);
  EXPECT_EQ(per_chunk.size(), kChunks);
  for (auto& [base, count] : per_chunk) EXPECT_EQ(count, g.blocks_per_chunk) << std::hex << base;
  // No two blocks overlap.
  std::vector<uint64_t> sorted(seen.begin(), seen.end());
  for (size_t i = 1; i < sorted.size(); ++i) EXPECT_GE(sorted[i] - sorted[i - 1], g.block_size);
  for (auto& b : blocks) ASSERT_TRUE(pool.free(b.cpu).ok());
  EXPECT_EQ(pool.stats().blocks_in_use, 0u);
  EXPECT_LT(plat_.pfa().free_pages(), free_before);
}

INSTANTIATE_TEST_SUITE_P(BoundarySized, DmaPoolGeometryTest,
                         testing::Values(Geometry{4096, 8, 4096, 1}, Geometry{2048, 64, 2048, 2},
                                         Geometry{512, 8, 512, 8}, Geometry{1000, 8, 1024, 4},
                                         Geometry{96, 32, 256, 32}, Geometry{24, 8, 64, 128}),
                         [](const testing::TestParamInfo<Geometry>& info) {
                           return std::to_string(info.param.block_size) + "_" +
                                  std::to_string(info.param.align) + "_" +
                                  std::to_string(info.param.boundary);
                         });

// A geometry that can hold no block is refused by init, before any memory is taken; the pool
// stays uninitialised (alloc says so) and can still be set up with a good geometry.
TEST_F(DmaPoolTest, GeometryHoldingNoBlockIsRefusedByInit) {
  uint64_t free_before = plat_.pfa().free_pages();
  DmaPool pool;
  // 200 bytes aligned to 256 is a 256-byte stride: it cannot fit under a 128-byte boundary.
  EXPECT_EQ(pool.init(&dev_, 200, 256, 128).code(), ErrorCode::kLayoutError);
  // A block larger than its boundary.
  EXPECT_EQ(pool.init(&dev_, 4097, 8, 4096).code(), ErrorCode::kLayoutError);
  // A block larger than the largest chunk.
  EXPECT_EQ(pool.init(&dev_, (4ull << 20) + 1, 8).code(), ErrorCode::kLayoutError);
  EXPECT_EQ(pool.alloc().code(), ErrorCode::kInvalidArgument);
  EXPECT_EQ(pool.stats().chunks, 0u);
  EXPECT_EQ(plat_.pfa().free_pages(), free_before);
  ASSERT_TRUE(pool.init(&dev_, 4096, 4096, 4096).ok());
  auto b = pool.alloc();
  ASSERT_TRUE(b.ok());
  ASSERT_TRUE(pool.free(b->cpu).ok());
}

// Chunks are aligned in physical memory; a bus offset that breaks the alignment or the boundary
// the pool promises in DMA addresses is refused up front.
TEST_F(DmaPoolTest, BusOffsetMustKeepTheDmaLayout) {
  HookedDmaOp op(&plat_.op());
  op.bus_offset = 0x100;
  DeviceDma dev(&op, 0xFFFF'FFFFull);
  DmaPool bad_boundary, bad_align;
  EXPECT_EQ(bad_boundary.init(&dev, 64, 64, 4096).code(), ErrorCode::kLayoutError);
  EXPECT_EQ(bad_align.init(&dev, 64, 512).code(), ErrorCode::kLayoutError);
  DmaPool pool;
  ASSERT_TRUE(pool.init(&dev, 64, 256, 256).ok());
  auto b = pool.alloc();
  ASSERT_TRUE(b.ok());
  EXPECT_EQ(b->dma.value(), plat_.op().virt_to_phys(b->cpu)->value() + 0x100);
  EXPECT_EQ(b->dma.value() % 256, 0u);
  ASSERT_TRUE(pool.free(b->cpu).ok());
}

// ---- Metadata out of band (item 4): what a device writes into freed blocks cannot steer the
// pool. ----

class DmaPoolDeviceGarbageTest : public DmaPoolTest {
 protected:
  static void count_report(void* ctx, const DmaPool&, const void*, size_t) {
    ++*static_cast<size_t*>(ctx);
  }
};

TEST_F(DmaPoolDeviceGarbageTest, GarbageInFreedBlocksCannotCorruptThePool) {
  HostDevice device(&plat_, 0xFFFF'FFFFull, /*coherent=*/false);
  DmaPool pool;
  constexpr size_t kSize = 64;
  ASSERT_TRUE(pool.init(&dev_, kSize, 64).ok());
  size_t reports = 0;
  pool.set_corruption_report(&count_report, &reports);
  const size_t per_chunk = pool.stats().blocks_per_chunk;
  const size_t n = 3 * per_chunk;
  std::vector<DmaPoolBlock> blocks;
  for (size_t i = 0; i < n; ++i) {
    auto b = pool.alloc();
    ASSERT_TRUE(b.ok());
    blocks.push_back(*b);
  }
  // Live blocks (odd indices) carry a pattern naming them; even ones are freed and then the
  // "device" (a stale descriptor) writes into them.
  auto pattern = [](size_t i) { return static_cast<uint8_t>(0x80 | (i % 127)); };
  std::vector<DmaPoolBlock> live, freed;
  for (size_t i = 0; i < n; ++i) {
    if (i % 2 == 1) {
      std::memset(blocks[i].cpu, pattern(i), kSize);
      live.push_back(blocks[i]);
    } else {
      ASSERT_TRUE(pool.free(blocks[i].cpu).ok());
      freed.push_back(blocks[i]);
    }
  }
  for (size_t k = 0; k < freed.size(); ++k) {
    const DmaPoolBlock& f = freed[k];
    const DmaPoolBlock& victim = live[k % live.size()];
    uint8_t garbage[kSize];
    switch (k % 4) {
      case 0: {  // Offsets of live blocks inside the chunk, at the start (an in-band free link).
        auto off = static_cast<uint32_t>(victim.dma.value() % 4096);
        for (size_t j = 0; j < kSize; j += 4) std::memcpy(garbage + j, &off, 4);
        device.write(f.dma, garbage, 4);  // Only the first word: the rest stays poisoned.
        continue;
      }
      case 1: {  // CPU pointers to live blocks.
        uintptr_t v = reinterpret_cast<uintptr_t>(victim.cpu);
        for (size_t j = 0; j < kSize; j += sizeof(v)) std::memcpy(garbage + j, &v, sizeof(v));
        break;
      }
      case 2: {  // DMA addresses of live blocks.
        uint64_t v = victim.dma.value();
        for (size_t j = 0; j < kSize; j += sizeof(v)) std::memcpy(garbage + j, &v, sizeof(v));
        break;
      }
      default:  // Noise.
        for (size_t j = 0; j < kSize; ++j) garbage[j] = static_cast<uint8_t>(j * 37 + k);
        break;
    }
    device.write(f.dma, garbage, kSize);
  }
  // Allocation goes on: the freed blocks come back (and more after them), each zeroed, none a
  // live block, none twice.
  std::set<uint64_t> handed;
  for (const auto& l : live) handed.insert(l.dma.value());
  std::vector<DmaPoolBlock> again;
  for (size_t i = 0; i < freed.size() + per_chunk; ++i) {
    auto b = pool.alloc();
    ASSERT_TRUE(b.ok()) << i;
    EXPECT_TRUE(handed.insert(b->dma.value()).second) << "handed out twice " << i;
    EXPECT_EQ(plat_.op().virt_to_phys(b->cpu)->value(), b->dma.value());
    auto* p = static_cast<uint8_t*>(b->cpu);
    for (size_t j = 0; j < kSize; ++j) ASSERT_EQ(p[j], 0) << i << " " << j;
    std::memset(p, 0x11, kSize);
    again.push_back(*b);
  }
  for (size_t i = 0; i < live.size(); ++i) {
    auto* p = static_cast<uint8_t*>(live[i].cpu);
    for (size_t j = 0; j < kSize; ++j) ASSERT_EQ(p[j], pattern(2 * i + 1)) << i << " " << j;
  }
  // Debug builds report each block written after free once (and carry on); release builds do
  // not look.
  EXPECT_EQ(reports, KDEBUG_ENABLED ? freed.size() : 0u);
  EXPECT_EQ(pool.stats().writes_after_free, KDEBUG_ENABLED ? freed.size() : 0u);
  EXPECT_EQ(pool.stats().blocks_in_use, live.size() + again.size());
  for (auto& b : live) ASSERT_TRUE(pool.free(b.cpu).ok());
  for (auto& b : again) ASSERT_TRUE(pool.free(b.cpu).ok());
  for (auto& b : again) EXPECT_EQ(pool.free(b.cpu).code(), ErrorCode::kNotFound);
  EXPECT_EQ(pool.stats().blocks_in_use, 0u);
}

// No pool bookkeeping lives in the chunks: every byte of a chunk is a block's (or unused
// padding) and a device may overwrite all of it while every block is free.
TEST_F(DmaPoolDeviceGarbageTest, AWholeChunkOverwrittenByTheDeviceIsHarmless) {
  HostDevice device(&plat_, 0xFFFF'FFFFull, /*coherent=*/false);
  DmaPool pool;
  ASSERT_TRUE(pool.init(&dev_, 32, 32).ok());
  size_t reports = 0;
  pool.set_corruption_report(&count_report, &reports);
  auto first = pool.alloc();
  ASSERT_TRUE(first.ok());
  const size_t per_chunk = pool.stats().blocks_per_chunk;
  const size_t chunk = pool.stats().chunk_size;
  DmaAddr base(first->dma.value() - first->dma.value() % chunk);
  ASSERT_TRUE(pool.free(first->cpu).ok());
  device.fill(base, 0xFF, chunk);
  std::set<uint64_t> seen;
  std::vector<void*> v;
  for (size_t i = 0; i < per_chunk; ++i) {
    auto b = pool.try_alloc();  // The chunk is all there is: try_alloc must serve all of it.
    ASSERT_TRUE(b.ok()) << i;
    EXPECT_TRUE(seen.insert(b->dma.value()).second);
    EXPECT_EQ(b->dma.value() / chunk, base.value() / chunk);
    auto* p = static_cast<uint8_t*>(b->cpu);
    for (size_t j = 0; j < 32; ++j) ASSERT_EQ(p[j], 0);
    v.push_back(b->cpu);
  }
  EXPECT_EQ(pool.try_alloc().code(), ErrorCode::kNoMemory);
  EXPECT_EQ(reports, KDEBUG_ENABLED ? per_chunk : 0u);
  for (void* p : v) ASSERT_TRUE(pool.free(p).ok());
}

#if KDEBUG_ENABLED  // Poisoning is a debug-build check.
// Without a report hook a debug build stops at the first block written after free.
TEST_F(DmaPoolDeviceGarbageTest, DeviceWriteAfterFreeStopsADebugBuildWithoutAHook) {
  EXPECT_DEATH(
      {
        HostDevice device(&plat_, 0xFFFF'FFFFull, false);
        DmaPool pool;
        if (!pool.init(&dev_, 32, 32).ok()) std::abort();
        auto b = pool.alloc();
        if (!pool.free(b->cpu).ok()) std::abort();
        uint32_t v = 0;
        device.write(b->dma, &v, sizeof(v));
        (void)pool.alloc();
      },
      "written after free");
}
#endif  // KDEBUG_ENABLED

// ---- Calling contexts (item 10): try_alloc never grows, reserve pre-grows. ----

TEST_F(DmaPoolTest, TryAllocFailsCleanlyWhenEmptyAndSucceedsAfterReserve) {
  uint64_t free_before = plat_.pfa().free_pages();
  DmaPool pool;
  ASSERT_TRUE(pool.init(&dev_, 100, 16).ok());
  EXPECT_EQ(pool.try_alloc().code(), ErrorCode::kNoMemory);
  EXPECT_EQ(pool.stats().chunks, 0u);
  EXPECT_EQ(plat_.pfa().free_pages(), free_before);  // try_alloc took no memory.
  const size_t per_chunk = pool.stats().blocks_per_chunk;
  ASSERT_TRUE(pool.reserve(per_chunk + 1).ok());
  EXPECT_EQ(pool.stats().chunks, 2u);
  EXPECT_EQ(pool.stats().free_blocks, 2 * per_chunk);
  ASSERT_TRUE(pool.reserve(per_chunk).ok());  // Already there: nothing more.
  EXPECT_EQ(pool.stats().chunks, 2u);
  std::set<void*> seen;
  for (size_t i = 0; i < 2 * per_chunk; ++i) {
    auto b = pool.try_alloc();
    ASSERT_TRUE(b.ok()) << i;
    EXPECT_TRUE(seen.insert(b->cpu).second);
    for (size_t j = 0; j < 100; ++j) ASSERT_EQ(static_cast<uint8_t*>(b->cpu)[j], 0);
  }
  EXPECT_EQ(pool.try_alloc().code(), ErrorCode::kNoMemory);
  EXPECT_EQ(pool.stats().chunks, 2u);
  EXPECT_EQ(pool.stats().blocks_in_use, 2 * per_chunk);
  ASSERT_TRUE(pool.free(*seen.begin()).ok());
  auto b = pool.try_alloc();
  ASSERT_TRUE(b.ok());
  EXPECT_EQ(b->cpu, *seen.begin());
  for (void* p : seen) ASSERT_TRUE(pool.free(p).ok());
  DmaPool uninit;
  EXPECT_EQ(uninit.try_alloc().code(), ErrorCode::kInvalidArgument);
  EXPECT_EQ(uninit.reserve(1).code(), ErrorCode::kInvalidArgument);
}

// The chunk table is fixed: a pool holds at most kMaxChunks chunks. Reaching it is kNoMemory with
// nothing changed; reserving more than it could ever hold is kOutOfRange.
TEST_F(DmaPoolTest, TheChunkTableLimitIsAnErrorNotAPanic) {
  DmaPool pool;
  ASSERT_TRUE(pool.init(&dev_, 4096, 4096).ok());
  const size_t max = pool.stats().max_blocks;
  EXPECT_EQ(max, DmaPool::kMaxChunks * pool.stats().blocks_per_chunk);
  EXPECT_EQ(pool.reserve(max + 1).code(), ErrorCode::kOutOfRange);
  EXPECT_EQ(pool.stats().chunks, 0u);
  std::vector<void*> v;
  for (size_t i = 0; i < max; ++i) {
    auto b = pool.alloc();
    ASSERT_TRUE(b.ok()) << i;
    v.push_back(b->cpu);
  }
  uint64_t pages = plat_.pfa().free_pages();
  EXPECT_EQ(pool.alloc().code(), ErrorCode::kNoMemory);
  EXPECT_EQ(pool.reserve(1).code(), ErrorCode::kNoMemory);
  EXPECT_EQ(plat_.pfa().free_pages(), pages);
  EXPECT_EQ(pool.stats().blocks_in_use, max);
  EXPECT_EQ(pool.stats().chunks, DmaPool::kMaxChunks);
  ASSERT_TRUE(pool.free(v.back()).ok());
  v.pop_back();
  auto b = pool.alloc();
  ASSERT_TRUE(b.ok());
  v.push_back(b->cpu);
  for (void* p : v) ASSERT_TRUE(pool.free(p).ok());
}

#if DMA_FAULT_INJECTION  // Fault injection: debug builds only.
// A reserve that runs out of memory half way gives back what it added.
TEST_F(DmaPoolTest, FailedReserveGivesBackTheChunksItAdded) {
  DmaPool pool;
  ASSERT_TRUE(pool.init(&dev_, 1024, 64).ok());
  auto keep = pool.alloc();
  ASSERT_TRUE(keep.ok());
  uint64_t pages = plat_.pfa().free_pages();
  DmaPool::Stats before = pool.stats();
  support::FaultInjector::fail_nth(support::FaultSite::kPageAlloc, 3);
  EXPECT_EQ(pool.reserve(10 * before.blocks_per_chunk).code(), ErrorCode::kNoMemory);
  support::FaultInjector::disarm_all();
  EXPECT_EQ(plat_.pfa().free_pages(), pages);
  EXPECT_EQ(pool.stats().chunks, before.chunks);
  EXPECT_EQ(pool.stats().free_blocks, before.free_blocks);
  ASSERT_TRUE(pool.free(keep->cpu).ok());
}
#endif  // DMA_FAULT_INJECTION

}  // namespace
