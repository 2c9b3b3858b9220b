// DmaPool from several threads: growth runs outside the pool's lock, a grower racing another one
// loses nothing, and blocks stay distinct while the pool grows under concurrent alloc and free.
// Each host thread stands for a CPU. Built into the host suite (ASan/UBSan) and meant to be run
// under ThreadSanitizer as well (the device is coherent, so the cache model, which is not
// thread-safe, is never touched).
#include <gtest/gtest.h>

#include <atomic>
#include <chrono>
#include <cstring>
#include <future>
#include <mutex>
#include <set>
#include <thread>
#include <vector>

#include "arch/host/host_platform.h"
#include "dmakit/dma_pool.h"
#include "tests/host/dma/hooked_dma_op.h"

namespace {

using namespace std::chrono_literals;

class DmaPoolThreadsTest : public testing::Test {
 protected:
  DmaPoolThreadsTest()
      : plat_(HostPlatform::default_options()), op_(&plat_.op()), dev_(&op_, 0xFFFF'FFFFull) {
    dev_.set_coherent(true);
  }
  HostPlatform plat_;
  HookedDmaOp op_;
  DeviceDma dev_;
};

// While one CPU grows the pool (inside alloc_coherent), another frees, looks and takes a block
// without waiting for it. Before, the pool's spinlock was held across alloc_coherent (which may
// edit page tables): the other CPU spun until the growth was done.
TEST_F(DmaPoolThreadsTest, ConcurrentGrowthRunsOutsideThePoolsLock) {
  DmaPool pool;
  ASSERT_TRUE(pool.init(&dev_, 64, 64).ok());
  const size_t per_chunk = pool.stats().blocks_per_chunk;
  std::vector<DmaPoolBlock> blocks;
  for (size_t i = 0; i < per_chunk; ++i) {
    auto b = pool.alloc();
    ASSERT_TRUE(b.ok());
    blocks.push_back(*b);
  }
  ASSERT_EQ(pool.stats().chunks, 1u);
  // The other CPU's work, joined only after the growth: if it waits for the lock, the grower
  // gives up waiting for it after a while and finishes, so the test fails instead of hanging.
  std::future<bool> other;
  bool other_cpu_waited = false;
  op_.once_in_alloc_coherent = [&] {
    other = std::async(std::launch::async, [&] {
      if (!pool.free(blocks.back().cpu).ok()) return false;
      return pool.stats().blocks_in_use == per_chunk - 1;  // This alloc has taken nothing yet.
    });
    other_cpu_waited = other.wait_for(10s) != std::future_status::ready;
  };
  auto grown = pool.alloc();  // The chunk is full: grows.
  ASSERT_TRUE(other.valid());
  EXPECT_TRUE(other.get());
  ASSERT_TRUE(grown.ok());
  EXPECT_FALSE(other_cpu_waited) << "the pool's lock was held across alloc_coherent";
  EXPECT_EQ(pool.stats().chunks, 2u);
  blocks.pop_back();
  blocks.push_back(*grown);
  for (auto& b : blocks) ASSERT_TRUE(pool.free(b.cpu).ok());
  EXPECT_EQ(pool.stats().blocks_in_use, 0u);
}

// Two CPUs find the pool empty and both grow it: each gets its own block, both chunks are kept
// (the second grower's surplus serves later allocations) and every block is handed out once.
TEST_F(DmaPoolThreadsTest, ConcurrentGrowersRacingBothSucceed) {
  DmaPool pool;
  ASSERT_TRUE(pool.init(&dev_, 512, 64).ok());
  const size_t per_chunk = pool.stats().blocks_per_chunk;
  std::future<Result<DmaPoolBlock>> other;
  bool second_waited = false;
  op_.once_in_alloc_coherent = [&] {
    // The first grower is inside alloc_coherent; another CPU's alloc also finds no room.
    other = std::async(std::launch::async, [&] { return pool.alloc(); });
    second_waited = other.wait_for(10s) != std::future_status::ready;
  };
  auto first = pool.alloc();
  ASSERT_TRUE(other.valid());
  Result<DmaPoolBlock> second = other.get();
  ASSERT_TRUE(first.ok());
  EXPECT_FALSE(second_waited) << "the second CPU waited for the first one's growth";
  ASSERT_TRUE(second.ok());
  EXPECT_NE(first->cpu, second->cpu);
  EXPECT_EQ(op_.alloc_coherent_calls.load(), 2);
  EXPECT_EQ(pool.stats().chunks, 2u);
  EXPECT_EQ(pool.stats().free_blocks, 2 * per_chunk - 2);
  std::set<void*> seen{first->cpu, second->cpu};
  std::vector<void*> rest;
  for (size_t i = 0; i < 2 * per_chunk - 2; ++i) {
    auto b = pool.try_alloc();
    ASSERT_TRUE(b.ok()) << i;
    EXPECT_TRUE(seen.insert(b->cpu).second);
    rest.push_back(b->cpu);
  }
  EXPECT_EQ(pool.try_alloc().code(), ErrorCode::kNoMemory);
  for (void* p : seen) ASSERT_TRUE(pool.free(p).ok());
}

// Several CPUs allocate, write, check and free while the pool grows: every block live at a time
// is distinct, and a block's contents are only ever its owner's.
TEST_F(DmaPoolThreadsTest, ConcurrentAllocAndFreeWhileGrowingKeepBlocksDistinct) {
  DmaPool pool;
  constexpr size_t kSize = 48;
  ASSERT_TRUE(pool.init(&dev_, kSize, 16).ok());
  ASSERT_TRUE(pool.reserve(8).ok());  // Some blocks already there for try_alloc.
  std::mutex live_mutex;
  std::set<void*> live;
  std::atomic<int> errors{0};
  std::atomic<int> try_alloc_served{0};
  constexpr int kThreads = 4;
  constexpr size_t kHeld = 120;  // Per thread: several chunks' worth in all.
  auto worker = [&](int id) {
    std::vector<DmaPoolBlock> mine;
    uint32_t seed = static_cast<uint32_t>(id) * 7919u + 1;
    for (int round = 0; round < 3000; ++round) {
      seed = seed * 1103515245u + 12345u;
      bool take = mine.size() < kHeld && (mine.empty() || (seed >> 16) % 3 != 0);
      if (take) {
        bool atomic_ctx = (seed >> 8) % 4 == 0;
        auto b = atomic_ctx ? pool.try_alloc() : pool.alloc();
        if (!b.ok()) {
          if (!atomic_ctx || b.code() != ErrorCode::kNoMemory) ++errors;
          continue;
        }
        if (atomic_ctx) ++try_alloc_served;
        auto* p = static_cast<uint8_t*>(b->cpu);
        for (size_t j = 0; j < kSize; ++j) {
          if (p[j] != 0) ++errors;
        }
        {
          std::lock_guard<std::mutex> g(live_mutex);
          if (!live.insert(b->cpu).second) ++errors;
        }
        std::memset(p, id + 1, kSize);
        mine.push_back(*b);
      } else {
        size_t k = (seed >> 4) % mine.size();
        DmaPoolBlock b = mine[k];
        mine[k] = mine.back();
        mine.pop_back();
        auto* p = static_cast<uint8_t*>(b.cpu);
        for (size_t j = 0; j < kSize; ++j) {
          if (p[j] != id + 1) ++errors;
        }
        {
          std::lock_guard<std::mutex> g(live_mutex);
          live.erase(b.cpu);
        }
        if (!pool.free(b.cpu).ok()) ++errors;
      }
    }
    for (auto& b : mine) {
      {
        std::lock_guard<std::mutex> g(live_mutex);
        live.erase(b.cpu);
      }
      if (!pool.free(b.cpu).ok()) ++errors;
    }
  };
  std::vector<std::thread> threads;
  for (int i = 0; i < kThreads; ++i) threads.emplace_back(worker, i);
  for (auto& t : threads) t.join();
  EXPECT_EQ(errors.load(), 0);
  EXPECT_GT(try_alloc_served.load(), 0);
  DmaPool::Stats s = pool.stats();
  EXPECT_EQ(s.blocks_in_use, 0u);
  EXPECT_EQ(s.free_blocks, s.chunks * s.blocks_per_chunk);
  EXPECT_GE(s.chunks * s.blocks_per_chunk, kHeld);  // It grew while threads were running.
}

}  // namespace
