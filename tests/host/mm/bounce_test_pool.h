// A BouncePool over host memory for the pool's host tests: a buffer that pretends to sit at a
// physical address, with its metadata from metadata_size().
#pragma once

#include <gtest/gtest.h>

#include <cstdint>
#include <new>
#include <vector>

#include "mm/bounce_pool.h"

namespace bounce_test {

inline constexpr uint64_t kBase = 0x8000'0000;

// `mem` is what cpu_addr() points into. When a test has already failed with slots still out, the
// pool is not destroyed: its debug assertion would abort the whole run and hide the other tests'
// results.
struct TestPool {
  explicit TestPool(size_t bytes, size_t slot_size = BouncePool::kDefaultSlotSize,
                    uint64_t base = kBase)
      : mem(bytes),
        meta(BouncePool::metadata_size(bytes, slot_size) / sizeof(uint64_t) + 1),
        pool(*new(storage) BouncePool) {
    auto r = pool.init(PhysAddr(base), bytes, mem.data(), meta.data(),
                       meta.size() * sizeof(uint64_t), slot_size);
    EXPECT_TRUE(r.ok()) << error_code_name(r.code());
  }
  ~TestPool() {
    if (!testing::Test::HasFailure() || pool.stats().used_slots == 0) pool.~BouncePool();
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
