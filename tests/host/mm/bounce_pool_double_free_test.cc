// The bounce pool catches a double free (or the free of anything that is not a live allocation)
// by itself, misuse checker or not (issue "Data safety", item 9): the request is refused with
// kNotFound and counted, and in debug builds one line through the pool's report sink says what
// the slot is instead. That includes a block parked in a per-CPU cache, which the lock-free free
// path must not take for a live one.
//
// This translation unit sees nothing of the misuse checker (include/dmakit/dma_debug.h): only the
// pool.
#include "dmakit/bounce_pool.h"

#include <gtest/gtest.h>

#include <string>
#include <vector>

#include "tests/host/mm/bounce_test_pool.h"

#ifdef DMA_API_DEBUG_ENABLED
#error "this test must not depend on the misuse checker"
#endif

namespace {

constexpr size_t kSlot = BouncePool::kDefaultSlotSize;
constexpr size_t kMiB = 1024 * 1024;

thread_local unsigned g_cpu = 0;
unsigned current_cpu() {
  return g_cpu;
}

class BouncePoolDoubleFree : public testing::Test {
 protected:
  void SetUp() override {
    g_cpu = 0;
    BouncePool::set_report_sink(&BouncePoolDoubleFree::sink, this);
  }
  void TearDown() override {
    BouncePool::set_report_sink(nullptr, nullptr);
    g_cpu = 0;
  }
  static void sink(void* ctx, const char* line) {
    static_cast<BouncePoolDoubleFree*>(ctx)->lines_.emplace_back(line);
  }
  // In debug builds exactly one new line, which starts with `prefix`; none in release builds.
  void expect_one_line(const std::string& prefix) {
    if (KDEBUG_ENABLED) {
      ASSERT_EQ(lines_.size(), seen_ + 1);
      EXPECT_EQ(lines_.back().rfind(prefix, 0), 0u) << lines_.back();
    } else {
      EXPECT_EQ(lines_.size(), seen_);
    }
    seen_ = lines_.size();
  }
  std::vector<std::string> lines_;
  size_t seen_ = 0;
};

struct Accounting {
  uint64_t used, cached, allocations, invalid;
  size_t free_blocks;
  bool operator==(const Accounting&) const = default;
};
Accounting accounting(const BouncePool& p) {
  BouncePool::Stats s = p.stats();
  return {s.used_slots, s.cached_slots, s.allocations, s.invalid_frees, p.free_block_count()};
}

// The scenario the misuse checker used to be relied on for: freed once into CPU 0's cache, then
// freed again, from CPU 0 (whose lock-free path looks at the block first) and from CPU 1.
TEST_F(BouncePoolDoubleFree, ASlotParkedInACpuCacheIsNotFreedTwice) {
  BouncePool::Options o;
  o.name = "df";
  bounce_test::TestPool t(1 * kMiB, o);
  BouncePool& p = t.pool;
  ASSERT_TRUE(p.enable_cpu_caches(&current_cpu, 2).ok());
  auto a = p.alloc(100);
  ASSERT_TRUE(a.ok());
  ASSERT_TRUE(p.free(*a).ok());
  ASSERT_EQ(p.stats().cached_slots, 1u);  // Parked in CPU 0's cache.
  Accounting before = accounting(p);

  EXPECT_EQ(p.free(*a).code(), ErrorCode::kNotFound);
  expect_one_line("bounce-pool 'df': invalid-free: slot " + std::to_string(a->first_slot) +
                  " (1 slots, size 100): already freed (in a cache)");
  g_cpu = 1;
  EXPECT_EQ(p.free_data(a->first_slot, a->num_slots, t.data(*a), a->size).code(),
            ErrorCode::kNotFound);
  expect_one_line("bounce-pool 'df': invalid-free: slot ");
  g_cpu = 0;
  Accounting after = accounting(p);
  EXPECT_EQ(after.invalid, before.invalid + 2);
  after.invalid = before.invalid;
  EXPECT_TRUE(after == before);
  EXPECT_TRUE(p.check_invariants());

  // Still cached exactly once: CPU 0 gets it back, then a different block.
  auto b = p.alloc(100);
  auto c = p.alloc(100);
  ASSERT_TRUE(b.ok() && c.ok());
  EXPECT_EQ(b->first_slot, a->first_slot);
  EXPECT_NE(c->first_slot, a->first_slot);
  EXPECT_TRUE(p.free(*b).ok());
  EXPECT_TRUE(p.free(*c).ok());
  EXPECT_EQ(lines_.size(), seen_);
}

// Without CPU caches: a block back on the free lists, one in the shared cache, a slot inside a
// live block, and a live block described with the wrong size are each refused and reported.
TEST_F(BouncePoolDoubleFree, EveryKindOfBadFreeIsRefusedAndReported) {
  bounce_test::TestPool t(64 * kSlot);
  BouncePool& p = t.pool;
  std::string name = "bounce-pool at 0x80000000: invalid-free: slot ";
  auto big = p.alloc(kSlot * BouncePool::kQuickSlots);  // Too large for a cache: merged on free.
  ASSERT_TRUE(big.ok());
  ASSERT_TRUE(p.free(*big).ok());
  EXPECT_EQ(p.free(*big).code(), ErrorCode::kNotFound);
  expect_one_line(name + std::to_string(big->first_slot) +
                  " (64 slots, size 131072): not allocated");

  auto small = p.alloc(3000);
  ASSERT_TRUE(small.ok());
  ASSERT_TRUE(p.free(*small).ok());  // Shared cache.
  EXPECT_EQ(p.free(*small).code(), ErrorCode::kNotFound);
  expect_one_line(name + std::to_string(small->first_slot) +
                  " (2 slots, size 3000): already freed (in a cache)");

  auto live = p.alloc(3 * kSlot);
  ASSERT_TRUE(live.ok());
  BounceSlot inner = *live;
  inner.first_slot += 1;
  inner.num_slots = 1;
  inner.addr = inner.addr + kSlot;
  inner.size = 10;
  EXPECT_EQ(p.free(inner).code(), ErrorCode::kNotFound);
  expect_one_line(name + std::to_string(inner.first_slot) +
                  " (1 slots, size 10): not the first slot of a block");
  BounceSlot resized = *live;
  resized.size -= 1;
  EXPECT_EQ(p.free(resized).code(), ErrorCode::kNotFound);
  expect_one_line(name + std::to_string(live->first_slot) + " (3 slots, size " +
                  std::to_string(resized.size) + "): live, but allocated as 3 slots, size " +
                  std::to_string(live->size) + " at offset 0");
  BounceSlot outside = *live;
  outside.first_slot = 64;
  EXPECT_EQ(p.free(outside).code(), ErrorCode::kNotFound);
  expect_one_line(name + "64 (3 slots, size " + std::to_string(live->size) + "): outside the pool");
  EXPECT_EQ(p.stats().invalid_frees, 5u);
  EXPECT_TRUE(p.free(*live).ok());
  p.drain_cache();
  EXPECT_TRUE(p.check_invariants());
  EXPECT_EQ(p.free_block_count(), 1u);
}

}  // namespace
