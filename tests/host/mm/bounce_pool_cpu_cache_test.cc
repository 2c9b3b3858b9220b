// Host tests of BouncePool's per-CPU caches (enable_cpu_caches): which CPU gets a freed block
// back, what a refused free leaves alone, how a full cache and an exhausted pool give blocks back,
// which requests bypass the caches, poisoning, teardown, fault injection, and several threads
// acting as CPUs. The "current CPU" is a thread_local the test sets, so one thread can act as
// several CPUs and each thread of the stress test as its own.
#include <gtest/gtest.h>

#include <atomic>
#include <cstdint>
#include <initializer_list>
#include <memory>
#include <mutex>
#include <new>
#include <random>
#include <thread>
#include <vector>

#include "dmakit/bounce_pool.h"
#include "dmakit/support/fault_injection.h"
#include "tests/host/mm/bounce_test_pool.h"

namespace {

using bounce_test::expect_unchanged;
using bounce_test::kBase;
using bounce_test::Snapshot;
using bounce_test::snapshot;
constexpr size_t kSlot = BouncePool::kDefaultSlotSize;
constexpr size_t kKiB = 1024;
constexpr size_t kMiB = 1024 * kKiB;

using bounce_test::current_cpu;
using bounce_test::g_cpu;

// A CPU index at or above every pool's num_cpus here: it has no cache and always takes the lock.
constexpr unsigned kUncachedCpu = 63;

// A test pool with the CPU caches on for `cpus` CPUs (0: off), the CPU index from current_cpu;
// one allocation may take the whole pool.
struct TestPool : bounce_test::TestPool {
  explicit TestPool(size_t bytes, unsigned cpus = 0)
      : bounce_test::TestPool(bytes, bounce_test::whole_pool_options(bytes)) {
    if (cpus != 0) {
      auto c = pool.enable_cpu_caches(&current_cpu, cpus);
      EXPECT_TRUE(c.ok()) << error_code_name(c.code());
    }
  }
};

BounceSlot must_alloc(BouncePool& p, size_t size, PhysAddr orig = PhysAddr(0), uint64_t mask = 0,
                      size_t align = 0) {
  auto r = p.alloc(size, orig, mask, align);
  EXPECT_TRUE(r.ok()) << "alloc(" << size << ") on CPU " << g_cpu
                      << " failed: " << error_code_name(r.code());
  return r.ok() ? *r : BounceSlot{};
}

void must_free(BouncePool& p, const BounceSlot& s) {
  auto r = p.free(s);
  EXPECT_TRUE(r.ok()) << "free of slot " << s.first_slot << " on CPU " << g_cpu
                      << " failed: " << error_code_name(r.code());
}

// Drains the shared cache and the caches of `cpus` (each from its own CPU), then expects the pool
// entirely free: one free block, nothing used or cached.
void expect_all_free(BouncePool& p, std::initializer_list<unsigned> cpus) {
  unsigned saved = g_cpu;
  for (unsigned cpu : cpus) {
    g_cpu = cpu;
    p.drain_cache();
  }
  g_cpu = saved;
  EXPECT_TRUE(p.check_invariants());
  BouncePool::Stats s = p.stats();
  EXPECT_EQ(s.used_slots, 0u);
  EXPECT_EQ(s.cached_slots, 0u);
  EXPECT_EQ(p.free_block_count(), 1u);
}

class BouncePoolCpuCache : public testing::Test {
 protected:
  void SetUp() override { g_cpu = 0; }
  void TearDown() override {
    g_cpu = 0;
    support::FaultInjector::disarm_all();
  }
};
using BouncePoolCpuCacheDeathTest = BouncePoolCpuCache;

// ---------------------------------------------------------------------------------------------
// enable_cpu_caches

// Each kInvalidArgument cause is refused without turning the caches on; one valid call works.
TEST_F(BouncePoolCpuCache, EnableRejectsEachInvalidArgumentAndAcceptsOneValidCall) {
  BouncePool uninit;
  EXPECT_EQ(uninit.enable_cpu_caches(&current_cpu, 1).code(), ErrorCode::kInvalidArgument);

  TestPool t(1 * kMiB);  // 512 slots: budget 16, 8 per CPU with 2 CPUs.
  BouncePool& p = t.pool;
  // (A null function and 0 CPUs are not errors: they take the kernel hooks' values, see
  // bounce_pool_irq_test.cc.)
  EXPECT_EQ(p.enable_cpu_caches(&current_cpu, BouncePool::kMaxCpus + 1).code(),
            ErrorCode::kInvalidArgument);

  // Still off: three freed blocks of one size, only kQuickDepth stay (in the shared cache).
  auto free_three = [&] {
    BounceSlot s[3] = {must_alloc(p, kSlot), must_alloc(p, kSlot), must_alloc(p, kSlot)};
    for (const BounceSlot& x : s) must_free(p, x);
    return p.stats().cached_slots;
  };
  EXPECT_EQ(free_three(), uint64_t{BouncePool::kQuickDepth});
  p.drain_cache();

  ASSERT_TRUE(p.enable_cpu_caches(&current_cpu, 2).ok());
  // Second call, even valid, is refused; had it applied, 64 CPUs would leave a budget of 0.
  EXPECT_EQ(p.enable_cpu_caches(&current_cpu, BouncePool::kMaxCpus).code(),
            ErrorCode::kInvalidArgument);
  EXPECT_EQ(free_three(), 3u);  // On: CPU 0 keeps all three.
  EXPECT_TRUE(p.check_invariants());
  expect_all_free(p, {0});

  TestPool most(1 * kMiB);
  EXPECT_TRUE(most.pool.enable_cpu_caches(&current_cpu, BouncePool::kMaxCpus).ok());
}

// ---------------------------------------------------------------------------------------------
// Placement across CPUs

// A bounced map+unmap served by a CPU cache writes the record of its block's first slot (16
// bytes of the metadata, bounce_pool.h) and reads its owner word. Blocks of fewer slots than a
// cache line holds records are placed so that two CPUs' blocks never have their first records in
// one line: otherwise each CPU's map and unmap takes the line from the other (false sharing).
// Checked for the metadata buffer at every 16-byte offset from a line, since a kernel's buffer
// need not be line-aligned.
TEST_F(BouncePoolCpuCache, SmallBlocksOfTwoCpusNeverShareARecordLine) {
  constexpr size_t kBytes = 1 * kMiB;  // 512 slots.
  constexpr size_t kRecordBytes = 16;
  constexpr size_t kLine = 64;
  const size_t meta_bytes = BouncePool::metadata_size(kBytes);
  std::vector<uint8_t> mem(kBytes);
  for (size_t shift = 0; shift < kLine; shift += kRecordBytes) {
    SCOPED_TRACE(testing::Message() << "metadata at +" << shift << " from a line");
    std::vector<uint8_t> raw(meta_bytes + 2 * kLine);
    uintptr_t at = (reinterpret_cast<uintptr_t>(raw.data()) + kLine - 1) / kLine * kLine + shift;
    auto* meta = reinterpret_cast<uint8_t*>(at);
    auto line_of = [&](const BounceSlot& s) { return (at + s.first_slot * kRecordBytes) / kLine; };
    alignas(BouncePool) unsigned char storage[sizeof(BouncePool)];
    BouncePool& p = *new (storage) BouncePool;
    ASSERT_TRUE(p.init(PhysAddr(kBase), kBytes, mem.data(), meta, meta_bytes).ok());
    ASSERT_TRUE(p.enable_cpu_caches(&current_cpu, 2).ok());
    // Each CPU maps blocks of 1, 2 and 3 slots, the two CPUs taking turns, as two CPUs that
    // start mapping at the same time do.
    std::vector<BounceSlot> mine[2];
    for (size_t size : {kSlot, 2 * kSlot, 3 * kSlot, kSlot - 100, 2 * kSlot}) {
      for (unsigned cpu = 0; cpu < 2; ++cpu) {
        g_cpu = cpu;
        mine[cpu].push_back(must_alloc(p, size));
      }
    }
    for (const BounceSlot& a : mine[0]) {
      for (const BounceSlot& b : mine[1]) {
        EXPECT_NE(line_of(a), line_of(b))
            << "CPU 0's block at slot " << a.first_slot << " and CPU 1's at slot " << b.first_slot;
      }
    }
    // Freed into the CPU caches and reused there, they stay apart; then everything comes back.
    for (unsigned cpu = 0; cpu < 2; ++cpu) {
      g_cpu = cpu;
      for (const BounceSlot& s : mine[cpu]) must_free(p, s);
    }
    EXPECT_TRUE(p.check_invariants());
    expect_all_free(p, {0, 1});
    g_cpu = 0;
    p.shutdown();
  }
}

// ---------------------------------------------------------------------------------------------
// Reuse on the same CPU

// A freed block comes back to its CPU's next request of the same slot count, free lists untouched.
TEST_F(BouncePoolCpuCache, AFreedBlockComesBackToTheSameCpuForTheSameSlotCount) {
  TestPool t(1 * kMiB, 2);  // Budget 8 slots per CPU.
  BouncePool& p = t.pool;
  BounceSlot a = must_alloc(p, 4096);  // 2 slots, from the free lists.
  ASSERT_EQ(a.num_slots, 2u);
  size_t blocks = p.free_block_count();
  EXPECT_TRUE(p.check_invariants());

  must_free(p, a);
  BouncePool::Stats s = p.stats();
  EXPECT_EQ(s.used_slots, 0u);
  EXPECT_EQ(s.cached_slots, 2u);
  EXPECT_EQ(s.allocations, 1u);
  EXPECT_EQ(s.high_water_slots, 2u);
  EXPECT_EQ(p.free_block_count(), blocks);  // Not merged.
  EXPECT_TRUE(p.check_invariants());

  BounceSlot b = must_alloc(p, 4000);  // Same slot count, another size.
  EXPECT_EQ(b.addr, a.addr);
  EXPECT_EQ(b.first_slot, a.first_slot);
  EXPECT_EQ(b.num_slots, 2u);
  EXPECT_EQ(b.size, 4000u);
  s = p.stats();
  EXPECT_EQ(s.used_slots, 2u);
  EXPECT_EQ(s.cached_slots, 0u);
  EXPECT_EQ(s.allocations, 2u);
  EXPECT_EQ(p.free_block_count(), blocks);
  EXPECT_TRUE(p.check_invariants());
  // The stale handle (size 4096) no longer describes the block.
  EXPECT_EQ(p.free(a).code(), ErrorCode::kNotFound);

  // kCpuCacheDepth blocks of one size stay (the shared cache keeps only kQuickDepth) and come
  // back newest first.
  std::vector<BounceSlot> four = {b, must_alloc(p, 4096), must_alloc(p, 4096), must_alloc(p, 4096)};
  blocks = p.free_block_count();
  for (const BounceSlot& x : four) must_free(p, x);
  EXPECT_EQ(p.stats().cached_slots, 8u);
  EXPECT_EQ(p.stats().used_slots, 0u);
  EXPECT_EQ(p.free_block_count(), blocks);
  EXPECT_TRUE(p.check_invariants());
  for (size_t i = four.size(); i-- > 0;) {
    BounceSlot c = must_alloc(p, 3000);
    EXPECT_EQ(c.addr, four[i].addr) << i;
    EXPECT_TRUE(p.check_invariants());
    four[i] = c;
  }
  s = p.stats();
  EXPECT_EQ(s.allocations, 9u);  // 2 + 3 from the free lists + 4 from the cache.
  EXPECT_EQ(s.used_slots, 8u);
  EXPECT_EQ(s.cached_slots, 0u);
  EXPECT_EQ(p.free_block_count(), blocks);
  for (const BounceSlot& x : four) must_free(p, x);
  expect_all_free(p, {0});
}

// The newest cached block is handed out again without the cache's lock, the request counted in
// the same step and added to the pool's count every 1024 requests: stats().allocations stays
// exact across those additions, and across blocks of other sizes moving between `hot` and the
// stack.
TEST_F(BouncePoolCpuCache, RequestsServedWithoutTheLockAreCountedExactly) {
  TestPool t(1 * kMiB, 2);
  BouncePool& p = t.pool;
  BounceSlot a = must_alloc(p, kSlot);
  BounceSlot b = must_alloc(p, 3 * kSlot);
  uint64_t allocations = 2;
  for (int i = 0; i < 3000; ++i) {
    BounceSlot old = a;
    must_free(p, a);
    a = must_alloc(p, 100 + static_cast<size_t>(i % 7));
    EXPECT_EQ(a.first_slot, old.first_slot);
    ++allocations;
    if (i % 250 == 0) {
      // Another size through the stack: b's block goes in after a's, and comes back first.
      must_free(p, a);
      must_free(p, b);
      b = must_alloc(p, 3 * kSlot);
      a = must_alloc(p, kSlot);
      EXPECT_EQ(a.first_slot, old.first_slot);
      allocations += 2;
      EXPECT_EQ(p.stats().allocations, allocations) << i;
      EXPECT_TRUE(p.check_invariants());
    }
  }
  EXPECT_EQ(p.stats().allocations, allocations);
  must_free(p, a);
  must_free(p, b);
  EXPECT_EQ(p.stats().allocations, allocations);
  EXPECT_EQ(p.stats().cached_slots, 4u);
  expect_all_free(p, {0});
  EXPECT_EQ(p.stats().allocations, allocations);
}

// A request of another slot count, or from another CPU, does not take a cached block.
TEST_F(BouncePoolCpuCache, OtherSizesAndOtherCpusDoNotTakeACachedBlock) {
  TestPool t(1 * kMiB, 2);
  BouncePool& p = t.pool;
  BounceSlot a = must_alloc(p, 4096);
  must_free(p, a);
  ASSERT_EQ(p.stats().cached_slots, 2u);

  BounceSlot other_size = must_alloc(p, 3 * kSlot);
  EXPECT_NE(other_size.first_slot, a.first_slot);
  g_cpu = 1;
  BounceSlot other_cpu = must_alloc(p, 4096);
  EXPECT_NE(other_cpu.first_slot, a.first_slot);
  g_cpu = kUncachedCpu;  // Takes the lock; does not see CPU 0's cache either.
  BounceSlot uncached = must_alloc(p, 4096);
  EXPECT_NE(uncached.first_slot, a.first_slot);
  EXPECT_EQ(p.stats().cached_slots, 2u);
  EXPECT_TRUE(p.check_invariants());

  g_cpu = 0;
  BounceSlot mine = must_alloc(p, 4096);
  EXPECT_EQ(mine.addr, a.addr);
  EXPECT_EQ(p.stats().cached_slots, 0u);

  // A block goes to the cache of the CPU that frees it, whoever allocated it.
  g_cpu = 1;
  must_free(p, mine);
  g_cpu = 0;
  BounceSlot zero = must_alloc(p, 4096);
  EXPECT_NE(zero.first_slot, mine.first_slot);
  g_cpu = 1;
  BounceSlot one = must_alloc(p, 4096);
  EXPECT_EQ(one.addr, mine.addr);
  EXPECT_TRUE(p.check_invariants());

  for (const BounceSlot& x : {other_size, other_cpu, uncached, zero, one}) must_free(p, x);
  expect_all_free(p, {0, 1});
}

// A CPU index at or above num_cpus has no cache: its frees go to the shared cache, open to all.
TEST_F(BouncePoolCpuCache, ACpuWithoutACacheUsesTheSharedCache) {
  TestPool t(1 * kMiB, 2);
  BouncePool& p = t.pool;
  g_cpu = 2;
  BounceSlot s[3] = {must_alloc(p, kSlot), must_alloc(p, kSlot), must_alloc(p, kSlot)};
  for (const BounceSlot& x : s) must_free(p, x);
  EXPECT_EQ(p.stats().cached_slots, uint64_t{BouncePool::kQuickDepth});  // Shared limit.
  g_cpu = 1;
  BounceSlot got = must_alloc(p, kSlot);
  // s[0] and s[1] were cached; s[2] found the shared stack full and was merged.
  EXPECT_TRUE(got.first_slot == s[0].first_slot || got.first_slot == s[1].first_slot);
  EXPECT_EQ(p.stats().cached_slots, uint64_t{BouncePool::kQuickDepth} - 1);
  must_free(p, got);
  expect_all_free(p, {1});
}

// With a per-CPU budget of 0 slots (tiny pool, many CPUs), nothing is cached per CPU.
TEST_F(BouncePoolCpuCache, AZeroBudgetCachesNothingPerCpu) {
  TestPool t(64 * kSlot, 4);  // Budget 64 / 32 = 2 slots, 2 / 4 = 0 per CPU.
  BouncePool& p = t.pool;
  BounceSlot s[3] = {must_alloc(p, kSlot), must_alloc(p, kSlot), must_alloc(p, kSlot)};
  for (const BounceSlot& x : s) must_free(p, x);
  EXPECT_EQ(p.stats().cached_slots, 2u);  // The shared cache only: depth 2, budget 2.
  EXPECT_TRUE(p.check_invariants());
  g_cpu = 1;  // Shared, so another CPU gets one.
  BounceSlot got = must_alloc(p, kSlot);
  EXPECT_TRUE(got.first_slot == s[0].first_slot || got.first_slot == s[1].first_slot);
  EXPECT_EQ(p.stats().cached_slots, 1u);
  must_free(p, got);
  expect_all_free(p, {0, 1});
}

// ---------------------------------------------------------------------------------------------
// Refused frees

// A double free of a block in a CPU cache is kNotFound from any CPU and changes nothing.
TEST_F(BouncePoolCpuCache, DoubleFreeOfACachedBlockIsRefused) {
  TestPool t(1 * kMiB, 2);
  BouncePool& p = t.pool;
  BounceSlot a = must_alloc(p, 100);
  BounceSlot live = must_alloc(p, 5000);
  must_free(p, a);
  Snapshot before = snapshot(p);
  for (unsigned cpu : {0u, 1u, kUncachedCpu}) {
    g_cpu = cpu;
    EXPECT_EQ(p.free(a).code(), ErrorCode::kNotFound) << cpu;
    EXPECT_EQ(p.free_data(a.first_slot, a.num_slots, t.data(a), a.size).code(),
              ErrorCode::kNotFound)
        << cpu;
    expect_unchanged(before, snapshot(p));
    EXPECT_TRUE(p.check_invariants());
  }
  g_cpu = 0;  // Still cached once: CPU 0 gets it back, and only once.
  BounceSlot b = must_alloc(p, 100);
  EXPECT_EQ(b.addr, a.addr);
  BounceSlot c = must_alloc(p, 100);
  EXPECT_NE(c.first_slot, a.first_slot);
  for (const BounceSlot& x : {live, b, c}) must_free(p, x);
  expect_all_free(p, {0});
}

// A BounceSlot that differs from what alloc returned is kNotFound on any CPU and changes nothing.
TEST_F(BouncePoolCpuCache, AnAlteredSlotIsRefused) {
  TestPool t(1 * kMiB, 2);
  BouncePool& p = t.pool;
  BounceSlot cached = must_alloc(p, 100);
  BounceSlot s = must_alloc(p, 5000);  // 3 slots.
  must_free(p, cached);
  const uint32_t total = static_cast<uint32_t>(p.stats().total_slots);
  std::vector<BounceSlot> bad(12, s);
  bad[0].size += 1;
  bad[1].size -= 1;  // Same slot count, still another size.
  bad[2].addr = s.addr + 1;
  bad[3].addr = s.addr + kSlot;
  bad[4].num_slots += 1;
  bad[5].num_slots -= 1;
  bad[6].num_slots = 0;
  bad[7].first_slot += 1;  // Not a block's head.
  bad[8].first_slot -= 1;
  bad[9].first_slot = total;
  bad[10].first_slot = 0xFFFF'FFFF;
  bad[11].first_slot = total - 1;
  Snapshot before = snapshot(p);
  for (unsigned cpu : {0u, 1u}) {
    g_cpu = cpu;
    for (size_t i = 0; i < bad.size(); ++i) {
      EXPECT_EQ(p.free(bad[i]).code(), ErrorCode::kNotFound) << "cpu " << cpu << " case " << i;
      expect_unchanged(before, snapshot(p));
    }
    const uint8_t* d = t.data(s);
    EXPECT_EQ(p.free_data(s.first_slot, s.num_slots, d + 1, s.size).code(), ErrorCode::kNotFound);
    EXPECT_EQ(p.free_data(s.first_slot, s.num_slots, d, s.size + 1).code(), ErrorCode::kNotFound);
    EXPECT_EQ(p.free_data(s.first_slot, s.num_slots + 1, d, s.size).code(), ErrorCode::kNotFound);
    EXPECT_EQ(p.free_data(s.first_slot, s.num_slots - 1, d, s.size).code(), ErrorCode::kNotFound);
    EXPECT_EQ(p.free_data(s.first_slot + 1, s.num_slots, d, s.size).code(), ErrorCode::kNotFound);
    EXPECT_EQ(p.free_data(total, s.num_slots, d, s.size).code(), ErrorCode::kNotFound);
    EXPECT_EQ(p.free_data(0xFFFF'FFFF, 1, d, s.size).code(), ErrorCode::kNotFound);
    expect_unchanged(before, snapshot(p));
    EXPECT_TRUE(p.check_invariants());
  }
  // The real description is accepted, through free_data too, into CPU 1's cache.
  ASSERT_TRUE(p.free_data(s.first_slot, s.num_slots, t.data(s), s.size).ok());
  EXPECT_EQ(p.stats().cached_slots, 1u + 3u);
  EXPECT_EQ(p.free_data(s.first_slot, s.num_slots, t.data(s), s.size).code(), ErrorCode::kNotFound);
  BounceSlot again = must_alloc(p, 6000);
  EXPECT_EQ(again.addr, s.addr);
  must_free(p, again);
  expect_all_free(p, {0, 1});
}

// ---------------------------------------------------------------------------------------------
// Full caches and draining

// A fifth block, or one over the CPU's budget, sends every cached block back (into the shared
// cache while it has room, else merged into the free lists) and is cached itself.
TEST_F(BouncePoolCpuCache, AFullCacheGivesItsBlocksBack) {
  TestPool t(1 * kMiB, 2);  // 512 slots: shared budget 16, 8 per CPU.
  BouncePool& p = t.pool;
  // alloc takes the end of the free block, so v[0] is the pool's last slot and v[1..4] lie
  // below it, v[4] lowest.
  std::vector<BounceSlot> v;
  for (int i = 0; i < 5; ++i) v.push_back(must_alloc(p, kSlot));
  size_t blocks = p.free_block_count();
  for (int i = 0; i < 4; ++i) must_free(p, v[static_cast<size_t>(i)]);
  EXPECT_EQ(p.stats().cached_slots, 4u);
  EXPECT_EQ(p.free_block_count(), blocks);  // All four in CPU 0's cache.
  // Full: v[0] and v[1] go to the shared cache (two blocks per size), v[2] and v[3] merge into
  // one free block (their neighbours v[1] and v[4] are not free), v[4] is cached.
  must_free(p, v[4]);
  EXPECT_EQ(p.stats().cached_slots, 3u);
  EXPECT_EQ(p.stats().used_slots, 0u);
  EXPECT_EQ(p.free_block_count(), blocks + 1);
  EXPECT_TRUE(p.check_invariants());
  EXPECT_EQ(must_alloc(p, kSlot).first_slot, v[4].first_slot);  // CPU 0's cache.
  EXPECT_EQ(must_alloc(p, kSlot).first_slot, v[1].first_slot);  // The shared cache, newest
  EXPECT_EQ(must_alloc(p, kSlot).first_slot, v[0].first_slot);  // first.
  EXPECT_EQ(p.stats().cached_slots, 0u);

  // Budget, on CPU 1: 5 + 2 slots fit in 8; 2 more do not, so x and y go back (to the shared
  // cache: 7 slots fit its 16) and z is cached.
  g_cpu = 1;
  BounceSlot x = must_alloc(p, 5 * kSlot);
  BounceSlot y = must_alloc(p, 2 * kSlot);
  BounceSlot z = must_alloc(p, 2 * kSlot);
  must_free(p, x);
  must_free(p, y);
  EXPECT_EQ(p.stats().cached_slots, 7u);
  must_free(p, z);
  EXPECT_EQ(p.stats().cached_slots, 9u);
  EXPECT_EQ(p.stats().used_slots, 3u);  // v[0], v[1], v[4], live on CPU 0's behalf.
  EXPECT_TRUE(p.check_invariants());
  EXPECT_EQ(must_alloc(p, 2 * kSlot).addr, z.addr);  // CPU 1's cache.
  EXPECT_EQ(must_alloc(p, 2 * kSlot).addr, y.addr);  // The shared cache.
  EXPECT_EQ(must_alloc(p, 5 * kSlot).addr, x.addr);  // The shared cache.
  EXPECT_EQ(p.stats().cached_slots, 0u);
  must_free(p, x);
  must_free(p, y);
  must_free(p, z);

  // Everything freed (on both CPUs) and both CPUs drained: one free block.
  g_cpu = 0;
  for (size_t i : {size_t{0}, size_t{1}, size_t{4}}) must_free(p, v[i]);
  // x and y in the shared cache, z in CPU 1's, v[0], v[1] and v[4] in CPU 0's: 7 + 2 + 3.
  EXPECT_EQ(p.stats().cached_slots, 12u);
  expect_all_free(p, {0, 1});
}

// drain_cache empties this CPU's cache and every other CPU's, now.
TEST_F(BouncePoolCpuCache, DrainCacheEmptiesThisCpusCacheAndTheOthersNow) {
  TestPool t(1 * kMiB, 2);
  BouncePool& p = t.pool;
  BounceSlot a = must_alloc(p, kSlot);
  must_free(p, a);
  g_cpu = 1;
  BounceSlot b = must_alloc(p, 3 * kSlot);
  BounceSlot keep = must_alloc(p, kSlot);
  must_free(p, b);
  ASSERT_EQ(p.stats().cached_slots, 4u);

  g_cpu = 0;
  p.drain_cache();
  EXPECT_EQ(p.stats().cached_slots, 0u);  // CPU 1's block too, without CPU 1.
  EXPECT_TRUE(p.check_invariants());
  g_cpu = 1;
  BounceSlot c = must_alloc(p, kSlot);
  EXPECT_EQ(p.stats().cached_slots, 0u);
  EXPECT_EQ(p.stats().used_slots, 2u);
  EXPECT_TRUE(p.check_invariants());
  // Served: CPU 1 caches again (three blocks of one size; the shared cache would keep two).
  BounceSlot d = must_alloc(p, kSlot);
  for (const BounceSlot& x : {c, keep, d}) must_free(p, x);
  EXPECT_EQ(p.stats().cached_slots, 3u);
  expect_all_free(p, {1});
}

// Before kNoMemory, a request gives its own CPU's cache back and tries again.
TEST_F(BouncePoolCpuCache, ARequestDrainsItsOwnCpuCacheBeforeFailing) {
  TestPool t(1 * kMiB, 2);  // 512 slots.
  BouncePool& p = t.pool;
  // Two neighbouring 1-slot blocks (alloc takes the end of the free block) and the other 510
  // slots: the pool is full.
  BounceSlot a = must_alloc(p, kSlot);
  BounceSlot b = must_alloc(p, kSlot);
  BounceSlot rest = must_alloc(p, 510 * kSlot);
  ASSERT_EQ(p.free_block_count(), 0u);
  ASSERT_EQ(b.first_slot + 1, a.first_slot);
  must_free(p, a);
  must_free(p, b);
  ASSERT_EQ(p.stats().cached_slots, 2u);
  BounceSlot two = must_alloc(p, 2 * kSlot);  // Only the two cached slots, merged, can hold it.
  EXPECT_EQ(two.first_slot, b.first_slot);
  EXPECT_EQ(p.stats().failures, 0u);
  EXPECT_EQ(p.stats().cached_slots, 0u);
  EXPECT_TRUE(p.check_invariants());
  must_free(p, two);
  must_free(p, rest);
  expect_all_free(p, {0});
}

// ---------------------------------------------------------------------------------------------
// Exhaustion across CPUs (a request that finds the pool exhausted takes back what other CPUs'
// caches hold, without those CPUs: bounce_pool_irq_test.cc, BouncePoolReclaim)

// A CPU whose request failed keeps caching what it frees; another CPU that then finds the pool
// exhausted takes that block out of the first CPU's cache.
TEST_F(BouncePoolCpuCache, AFailedRequestIsServedFromAnotherCpusCache) {
  TestPool t(1 * kMiB, 2);  // 512 slots; per-CPU budget 512 / 32 / 2 = 8 slots.
  BouncePool& p = t.pool;
  BounceSlot x = must_alloc(p, kSlot);
  BounceSlot rest = must_alloc(p, 511 * kSlot);
  ASSERT_EQ(p.free_block_count(), 0u);
  EXPECT_EQ(p.alloc(kSlot).code(), ErrorCode::kNoMemory);  // CPU 0: the pool is full.
  must_free(p, x);  // Into CPU 0's own cache, not the shared one.
  EXPECT_EQ(p.stats().cached_slots, 1u);
  g_cpu = 1;
  BounceSlot again = must_alloc(p, kSlot);  // Reclaimed from CPU 0's cache.
  EXPECT_EQ(again.first_slot, x.first_slot);
  EXPECT_EQ(p.stats().failures, 1u);
  EXPECT_EQ(p.stats().cached_slots, 0u);
  EXPECT_TRUE(p.check_invariants());
  must_free(p, again);
  must_free(p, rest);
  expect_all_free(p, {0, 1});
}

// An alignment of 1 asks for nothing, like 0: such a request is served from the CPU cache.
TEST_F(BouncePoolCpuCache, AlignmentOneUsesTheCpuCache) {
  TestPool t(1 * kMiB, 1);
  BouncePool& p = t.pool;
  BounceSlot a = must_alloc(p, 3000);
  must_free(p, a);
  size_t free_blocks = p.free_block_count();
  auto b = p.alloc(3000, PhysAddr(0), 0, 1);
  ASSERT_TRUE(b.ok());
  EXPECT_EQ(b->addr, a.addr);
  EXPECT_EQ(p.free_block_count(), free_blocks);  // The free lists were not touched.
  must_free(p, *b);
  expect_all_free(p, {0});
}

// ---------------------------------------------------------------------------------------------
// Requests that bypass the CPU caches

// Blocks of kQuickSlots slots or more are never cached; one slot fewer is.
TEST_F(BouncePoolCpuCache, BlocksOfQuickSlotsOrMoreAreNotCached) {
  TestPool t(8 * kMiB, 1);  // 4096 slots: budget 128, all of it for CPU 0.
  BouncePool& p = t.pool;
  BounceSlot big = must_alloc(p, BouncePool::kQuickSlots * kSlot);
  must_free(p, big);
  EXPECT_EQ(p.stats().cached_slots, 0u);
  EXPECT_EQ(p.free_block_count(), 1u);  // Merged back at once.
  EXPECT_TRUE(p.check_invariants());

  BounceSlot below = must_alloc(p, (BouncePool::kQuickSlots - 1) * kSlot);
  must_free(p, below);
  EXPECT_EQ(p.stats().cached_slots, BouncePool::kQuickSlots - 1);
  BounceSlot again = must_alloc(p, (BouncePool::kQuickSlots - 1) * kSlot);
  EXPECT_EQ(again.addr, below.addr);
  must_free(p, again);
  expect_all_free(p, {0});
}

// A block within kQuickSlots but over one CPU's budget goes to the shared cache, open to all CPUs.
TEST_F(BouncePoolCpuCache, BlocksOverTheCpuBudgetGoToTheSharedCache) {
  TestPool t(1 * kMiB, 2);  // 8 slots per CPU, 16 in the shared cache.
  BouncePool& p = t.pool;
  BounceSlot at_budget = must_alloc(p, 8 * kSlot);
  BounceSlot over = must_alloc(p, 9 * kSlot);
  must_free(p, at_budget);  // CPU 0's cache.
  must_free(p, over);       // The shared cache.
  EXPECT_EQ(p.stats().cached_slots, 17u);
  g_cpu = 1;
  BounceSlot a = must_alloc(p, 8 * kSlot);
  EXPECT_NE(a.first_slot, at_budget.first_slot);
  BounceSlot b = must_alloc(p, 9 * kSlot);
  EXPECT_EQ(b.addr, over.addr);
  EXPECT_EQ(p.stats().cached_slots, 8u);
  EXPECT_TRUE(p.check_invariants());
  must_free(p, a);
  must_free(p, b);
  expect_all_free(p, {0, 1});
}

// Requests with min_align_mask or align never take a CPU-cached block, even one that fits them.
TEST_F(BouncePoolCpuCache, ConstrainedRequestsBypassTheCpuCacheAndStillWork) {
  TestPool t(1 * kMiB, 1);
  BouncePool& p = t.pool;
  BounceSlot spacer = must_alloc(p, 100);  // The last slot (odd), so x gets an even one.
  BounceSlot x = must_alloc(p, 100);
  ASSERT_EQ(x.addr.value() % 4096, 0u);
  must_free(p, x);
  ASSERT_EQ(p.stats().cached_slots, 1u);

  PhysAddr orig(x.addr.value() + 0x34);  // x's slot satisfies this mask.
  BounceSlot m = must_alloc(p, 100, orig, 0xFFF);
  EXPECT_EQ(m.addr.value() & 0xFFF, orig.value() & 0xFFF);
  BounceSlot a = must_alloc(p, 100, PhysAddr(0), 0, 4096);
  EXPECT_EQ(a.addr.value() % 4096, 0u);
  BounceSlot s = must_alloc(p, 100, PhysAddr(0), 0, kSlot);  // Any slot qualifies.
  for (const BounceSlot& c : {m, a, s}) EXPECT_NE(c.first_slot, x.first_slot);
  EXPECT_EQ(p.stats().cached_slots, 1u);
  EXPECT_TRUE(p.check_invariants());

  BounceSlot u = must_alloc(p, 100);  // Unconstrained: takes it.
  EXPECT_EQ(u.addr, x.addr);
  // A constrained allocation may be cached on free and serve an unconstrained request.
  must_free(p, m);
  BounceSlot after = must_alloc(p, 200);
  EXPECT_EQ(after.first_slot, m.first_slot);
  EXPECT_EQ(after.addr.value() % kSlot, 0u);
  EXPECT_TRUE(p.check_invariants());
  for (const BounceSlot& c : {spacer, a, s, u, after}) must_free(p, c);
  expect_all_free(p, {0});
}

// ---------------------------------------------------------------------------------------------
// Several threads, each its own CPU

struct Held {
  BounceSlot slot;
  uint8_t tag;
};

// Threads allocate, check and free at random, handing blocks over to be freed by another CPU;
// the accounting and the data stay exact.
TEST_F(BouncePoolCpuCache, ConcurrentThreadsAsCpusKeepAccountingAndDataApart) {
  constexpr unsigned kThreads = 4;
  constexpr int kOps = 4000;
  TestPool t(2 * kMiB, kThreads);  // 1024 slots: budget 32, 8 per CPU.
  BouncePool& p = t.pool;
  std::mutex exchange_mu;
  std::vector<Held> exchange;
  std::atomic<uint64_t> allocations{0}, failures{0}, handed{0};
  std::atomic<int> bad_errors{0}, bad_data{0}, bad_frees{0};

  auto fill = [&](const Held& h) {
    uint8_t* d = t.data(h.slot);
    for (size_t i = 0; i < h.slot.size; ++i) d[i] = static_cast<uint8_t>(h.tag + i);
  };
  auto check_and_free = [&](const Held& h) {
    const uint8_t* d = t.data(h.slot);
    for (size_t i = 0; i < h.slot.size; ++i) {
      if (d[i] != static_cast<uint8_t>(h.tag + i)) {
        ++bad_data;
        break;
      }
    }
    if (!p.free(h.slot).ok()) ++bad_frees;
  };

  auto worker = [&](unsigned cpu) {
    g_cpu = cpu;
    std::mt19937_64 rng(1000 + cpu);
    std::vector<Held> mine;
    for (int op = 0; op < kOps; ++op) {
      unsigned r = static_cast<unsigned>(rng() % 100);
      if (mine.empty() || (r < 50 && mine.size() < 40)) {
        // Half small (at most 4 slots: cacheable), half anything up to 64 KiB.
        size_t size = rng() % 2 == 0 ? 1 + rng() % (8 * kKiB) : 1 + rng() % (64 * kKiB);
        auto res = p.alloc(size);
        if (res.ok()) {
          Held h{*res, static_cast<uint8_t>(rng())};
          fill(h);
          mine.push_back(h);
          ++allocations;
        } else if (res.code() == ErrorCode::kNoMemory) {
          ++failures;
        } else {
          ++bad_errors;
        }
        continue;
      }
      size_t k = rng() % mine.size();
      Held h = mine[k];
      mine[k] = mine.back();
      mine.pop_back();
      if (r < 80) {
        check_and_free(h);
      } else if (r < 90) {
        std::lock_guard<std::mutex> g(exchange_mu);
        exchange.push_back(h);
        ++handed;
      } else {
        mine.push_back(h);
        std::lock_guard<std::mutex> g(exchange_mu);
        if (!exchange.empty()) {  // Taken over: freed later by this CPU.
          mine.push_back(exchange.back());
          exchange.pop_back();
        }
      }
    }
    for (const Held& h : mine) check_and_free(h);
    p.drain_cache();
  };

  std::vector<std::thread> threads;
  for (unsigned cpu = 0; cpu < kThreads; ++cpu) threads.emplace_back(worker, cpu);
  for (std::thread& th : threads) th.join();
  g_cpu = kUncachedCpu;  // Leftovers in the exchange: freed under the lock.
  for (const Held& h : exchange) check_and_free(h);
  p.drain_cache();

  EXPECT_EQ(bad_errors.load(), 0);
  EXPECT_EQ(bad_data.load(), 0);
  EXPECT_EQ(bad_frees.load(), 0);
  EXPECT_GT(handed.load(), 0u);
  EXPECT_TRUE(p.check_invariants());
  BouncePool::Stats s = p.stats();
  EXPECT_EQ(s.used_slots, 0u);
  EXPECT_EQ(s.cached_slots, 0u);
  EXPECT_EQ(s.allocations, allocations.load());
  EXPECT_EQ(s.failures, failures.load());
  EXPECT_EQ(p.free_block_count(), 1u);
}

// ---------------------------------------------------------------------------------------------
// Poisoning and teardown

#if KDEBUG_ENABLED
// A write into a block after it went into a CPU cache is reported when the block is handed out.
TEST_F(BouncePoolCpuCacheDeathTest, WriteAfterFreeIntoACpuCacheIsReported) {
  EXPECT_DEATH(
      {
        g_cpu = 0;
        TestPool t(1 * kMiB, 2);
        BounceSlot s = must_alloc(t.pool, 100);
        uint8_t* d = t.data(s);
        (void)t.pool.free(s);
        d[50] = 0;
        (void)t.pool.alloc(100);
      },
      "use after free");
}

// Blocks in CPU caches do not hide a live one from the destructor's check.
TEST_F(BouncePoolCpuCacheDeathTest, DestroyingAPoolWithLiveSlotsStillAsserts) {
  EXPECT_DEATH(
      {
        auto t = std::make_unique<TestPool>(1 * kMiB, 2);
        BounceSlot cached = must_alloc(t->pool, 100);
        BounceSlot live = must_alloc(t->pool, 100);
        (void)t->pool.free(cached);
        (void)live;
        t.reset();
      },
      "still in use");
}
#endif

// The same writes, made before the block is freed, are not reported.
TEST_F(BouncePoolCpuCache, WritesBeforeFreeAreFine) {
  TestPool t(1 * kMiB, 2);
  BounceSlot s = must_alloc(t.pool, 100);
  t.data(s)[50] = 0;
  must_free(t.pool, s);
  BounceSlot again = must_alloc(t.pool, 100);
  EXPECT_EQ(again.addr, s.addr);
  must_free(t.pool, again);
  expect_all_free(t.pool, {0});
}

// A pool whose blocks are only in CPU caches (on two CPUs) is destroyed without an assertion.
TEST_F(BouncePoolCpuCache, DestroyingAPoolWithBlocksOnlyInCpuCachesIsFine) {
  auto t = std::make_unique<TestPool>(1 * kMiB, 2);
  BouncePool& p = t->pool;
  BounceSlot a = must_alloc(p, 100);
  g_cpu = 1;
  BounceSlot b = must_alloc(p, 3 * kSlot);
  // (CPU 1's block is cut apart from CPU 0's record line: two free blocks, or one.)
  const size_t free_blocks = p.free_block_count();
  g_cpu = 0;
  must_free(p, a);
  g_cpu = 1;
  must_free(p, b);
  ASSERT_EQ(p.stats().cached_slots, 4u);
  ASSERT_EQ(p.stats().used_slots, 0u);
  ASSERT_EQ(p.free_block_count(), free_blocks);  // Nothing merged back.
  t.reset();                                     // Must not assert.
  SUCCEED();
}

// ---------------------------------------------------------------------------------------------
// Fault injection

#if DMA_FAULT_INJECTION  // Fault injection: debug builds only.
// An armed kBounceSlot fault fails alloc with kNoMemory, evaluated once per call on every path.
TEST_F(BouncePoolCpuCache, TheSlotFaultIsEvaluatedOncePerAlloc) {
  using support::FaultInjector;
  using support::FaultSite;
  TestPool t(1 * kMiB, 2);
  BouncePool& p = t.pool;
  BounceSlot a = must_alloc(p, 4096);
  must_free(p, a);
  Snapshot before = snapshot(p);
  auto expect_no_change = [&] {
    Snapshot now = snapshot(p);
    EXPECT_EQ(now.stats.used_slots, before.stats.used_slots);
    EXPECT_EQ(now.stats.cached_slots, before.stats.cached_slots);
    EXPECT_EQ(now.stats.allocations, before.stats.allocations);
    EXPECT_EQ(now.free_blocks, before.free_blocks);
  };

  FaultInjector::fail_nth(FaultSite::kBounceSlot, 1);  // A cache hit.
  EXPECT_EQ(p.alloc(4096).code(), ErrorCode::kNoMemory);
  EXPECT_EQ(FaultInjector::hits(FaultSite::kBounceSlot), 1u);
  expect_no_change();
  FaultInjector::fail_nth(FaultSite::kBounceSlot, 1);  // A cache miss.
  EXPECT_EQ(p.alloc(3 * kSlot).code(), ErrorCode::kNoMemory);
  EXPECT_EQ(FaultInjector::hits(FaultSite::kBounceSlot), 1u);
  expect_no_change();
  FaultInjector::fail_nth(FaultSite::kBounceSlot, 1);  // Constrained: the locked path.
  EXPECT_EQ(p.alloc(100, PhysAddr(0x34), 0xFFF).code(), ErrorCode::kNoMemory);
  EXPECT_EQ(FaultInjector::hits(FaultSite::kBounceSlot), 1u);
  expect_no_change();

  // Not armed: still counted once, hit or miss.
  FaultInjector::fail_nth(FaultSite::kBounceSlot, 0);
  BounceSlot hit = must_alloc(p, 4096);
  EXPECT_EQ(hit.addr, a.addr);
  EXPECT_EQ(FaultInjector::hits(FaultSite::kBounceSlot), 1u);
  FaultInjector::fail_nth(FaultSite::kBounceSlot, 0);
  BounceSlot miss = must_alloc(p, 3 * kSlot);
  EXPECT_EQ(FaultInjector::hits(FaultSite::kBounceSlot), 1u);

  // After CPU 1's failed request took CPU 0's cache back (a miss for CPU 0 now), also once.
  must_free(p, hit);
  g_cpu = 1;
  EXPECT_EQ(p.alloc(1 * kMiB).code(), ErrorCode::kNoMemory);
  g_cpu = 0;
  FaultInjector::fail_nth(FaultSite::kBounceSlot, 1);
  EXPECT_EQ(p.alloc(4096).code(), ErrorCode::kNoMemory);
  EXPECT_EQ(FaultInjector::hits(FaultSite::kBounceSlot), 1u);
  FaultInjector::disarm_all();
  BounceSlot later = must_alloc(p, 4096);
  EXPECT_EQ(p.stats().cached_slots, 0u);  // CPU 0's cache was reclaimed by CPU 1's request.
  EXPECT_TRUE(p.check_invariants());
  must_free(p, later);
  must_free(p, miss);
  expect_all_free(p, {0, 1});
}
#endif

}  // namespace
