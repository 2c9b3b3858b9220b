// BouncePool::retire and setting a retired pool up again (what KernelDmaOp's grown pools do): a
// pool in use refuses to retire, a retired one refuses every allocation without touching its
// memory or records, and init over new memory makes it a fresh pool.
#include <gtest/gtest.h>

#include <vector>

#include "dmakit/bounce_pool.h"
#include "tests/host/mm/bounce_test_pool.h"

namespace {

using bounce_test::current_cpu;
using bounce_test::kBase;
constexpr size_t kBytes = 1024 * 1024;

struct Region {
  std::vector<uint8_t> mem = std::vector<uint8_t>(kBytes);
  std::vector<uint8_t> meta = std::vector<uint8_t>(BouncePool::metadata_size(kBytes));
};

TEST(BouncePoolRetireTest, RetiresOnlyWhenNothingIsInUseAndThenRefusesEverything) {
  Region r;
  BouncePool pool;
  ASSERT_TRUE(pool.init(PhysAddr(kBase), kBytes, r.mem.data(), r.meta.data(), r.meta.size()).ok());
  ASSERT_TRUE(pool.enable_cpu_caches(&current_cpu, 2).ok());
  auto a = pool.alloc(4096);
  ASSERT_TRUE(a.ok());
  EXPECT_EQ(pool.retire().code(), ErrorCode::kBusy);
  ASSERT_TRUE(pool.free(*a).ok());  // Into this CPU's cache: still no obstacle.
  EXPECT_EQ(pool.stats().cached_slots, 2u);
  ASSERT_TRUE(pool.retire().ok());
  EXPECT_EQ(pool.retire().code(), ErrorCode::kInvalidArgument);
  // The records and the memory are someone else's now: scribbled over, they are never read.
  std::fill(r.meta.begin(), r.meta.end(), 0xFF);
  std::fill(r.mem.begin(), r.mem.end(), 0xEE);
  const uint64_t failures = pool.stats().failures;
  EXPECT_EQ(pool.alloc(4096).code(), ErrorCode::kNoMemory);  // Through the CPU cache path.
  EXPECT_EQ(pool.alloc(100, PhysAddr(0x123), 0xFFF).code(), ErrorCode::kNoMemory);  // Locked.
  BounceDevice quota{7, "q", 8192};
  EXPECT_EQ(pool.alloc(2048, PhysAddr(0), 0, 0, quota).code(), ErrorCode::kNoMemory);
  EXPECT_EQ(pool.stats().failures, failures) << "a retired pool's refusals are not failures";
  EXPECT_EQ(pool.stats().used_slots, 0u);
}

TEST(BouncePoolRetireTest, ARetiredPoolIsSetUpAgainOverNewMemory) {
  Region r1;
  Region r2;
  BouncePool pool;
  ASSERT_TRUE(
      pool.init(PhysAddr(kBase), kBytes, r1.mem.data(), r1.meta.data(), r1.meta.size()).ok());
  ASSERT_TRUE(pool.enable_cpu_caches(&current_cpu, 2).ok());
  // Not retired: a second init is refused, nothing changes.
  EXPECT_EQ(
      pool.init(PhysAddr(kBase + kBytes), kBytes, r2.mem.data(), r2.meta.data(), r2.meta.size())
          .code(),
      ErrorCode::kInvalidArgument);
  EXPECT_EQ(pool.base().value(), kBase);
  auto a = pool.alloc(2048);
  ASSERT_TRUE(a.ok());
  ASSERT_TRUE(pool.free(*a).ok());
  ASSERT_TRUE(pool.retire().ok());
  ASSERT_TRUE(
      pool.init(PhysAddr(kBase + kBytes), kBytes, r2.mem.data(), r2.meta.data(), r2.meta.size())
          .ok());
  EXPECT_EQ(pool.cpu_cache_fn(), nullptr) << "CPU caches are off until enabled again";
  ASSERT_TRUE(pool.enable_cpu_caches(&current_cpu, 2).ok());
  EXPECT_EQ(pool.base().value(), kBase + kBytes);
  EXPECT_EQ(pool.stats().allocations, 0u);
  auto b = pool.alloc(128 * 1024);
  ASSERT_TRUE(b.ok());
  EXPECT_TRUE(pool.contains(b->addr));
  EXPECT_GE(b->addr.value(), kBase + kBytes);
  ASSERT_TRUE(pool.free(*b).ok());
  pool.drain_cache();
  EXPECT_TRUE(pool.check_invariants());
  EXPECT_EQ(pool.free_block_count(), 1u);
}

}  // namespace
