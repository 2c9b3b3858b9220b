// A BouncePool over host memory for the pool's host tests: a buffer that pretends to sit at a
// physical address, with its metadata from metadata_size().
#pragma once

#include <gtest/gtest.h>

#include <cstdint>
#include <new>
#include <vector>

#include "dmakit/bounce_pool.h"

namespace bounce_test {

inline constexpr uint64_t kBase = 0x8000'0000;

inline BouncePool::Options slot_options(size_t slot_size) {
  BouncePool::Options o;
  o.slot_size = slot_size;
  return o;
}

// Options for a pool whose single allocation may take all of it: for tests of the allocator itself
// (exhaustion, coalescing), not of the mapping limit.
inline BouncePool::Options whole_pool_options(size_t bytes,
                                              size_t slot_size = BouncePool::kDefaultSlotSize) {
  BouncePool::Options o = slot_options(slot_size);
  o.max_mapping = bytes;
  return o;
}

// The CPU the calling thread runs on, as a pool with CPU caches sees it (each test thread sets
// its own), and the function such a pool is given.
inline thread_local unsigned g_cpu = 0;
inline unsigned current_cpu() {
  return g_cpu;
}

// Everything a refused call must leave as it was.
struct Snapshot {
  BouncePool::Stats stats;
  size_t free_blocks;
};

inline Snapshot snapshot(const BouncePool& p) {
  return Snapshot{p.stats(), p.free_block_count()};
}

inline void expect_unchanged(const Snapshot& a, const Snapshot& b) {
  EXPECT_EQ(a.stats.used_slots, b.stats.used_slots);
  EXPECT_EQ(a.stats.cached_slots, b.stats.cached_slots);
  EXPECT_EQ(a.stats.high_water_slots, b.stats.high_water_slots);
  EXPECT_EQ(a.stats.allocations, b.stats.allocations);
  EXPECT_EQ(a.stats.failures, b.stats.failures);
  EXPECT_EQ(a.free_blocks, b.free_blocks);
}

// `mem` is what cpu_addr() points into. Destroying a TestPool shuts the pool down (its debug check
// that every slot came back), except when a test has already failed with slots still out: the
// check would abort the whole run and hide the other tests' results.
struct TestPool {
  explicit TestPool(size_t bytes, size_t slot_size = BouncePool::kDefaultSlotSize,
                    uint64_t base = kBase)
      : TestPool(bytes, slot_options(slot_size), base) {}
  TestPool(size_t bytes, const BouncePool::Options& options, uint64_t base = kBase)
      : mem(bytes),
        meta(BouncePool::metadata_size(bytes, options.slot_size) / sizeof(uint64_t) + 1 + 8),
        pool(*new(storage) BouncePool) {
    // The metadata starts on a cache line, as a kernel's static buffer would: where the pool
    // places a CPU cache's small blocks depends on the record lines, so the tests' slot numbers
    // must not depend on where the heap put the vector.
    auto at = reinterpret_cast<uintptr_t>(meta.data());
    size_t skip = ((64 - at % 64) % 64) / sizeof(uint64_t);
    auto r = pool.init(PhysAddr(base), bytes, mem.data(), meta.data() + skip,
                       (meta.size() - skip) * sizeof(uint64_t), options);
    EXPECT_TRUE(r.ok()) << error_code_name(r.code());
  }
  ~TestPool() {
    if (!testing::Test::HasFailure() || pool.stats().used_slots == 0) pool.shutdown();
  }
  TestPool(const TestPool&) = delete;
  TestPool& operator=(const TestPool&) = delete;
  uint8_t* data(const BounceSlot& s) { return static_cast<uint8_t*>(pool.cpu_addr(s.addr)); }

  std::vector<uint8_t> mem;
  std::vector<uint64_t> meta;
  alignas(BouncePool) unsigned char storage[sizeof(BouncePool)];
  BouncePool& pool;
};

}  // namespace bounce_test
