// DmaPool: block geometry, boundaries, reuse, errors, and what is reported.
#include "dma/dma_pool.h"

#include <gtest/gtest.h>

#include <algorithm>
#include <set>
#include <vector>

#include "arch/host/host_platform.h"

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

}  // namespace
