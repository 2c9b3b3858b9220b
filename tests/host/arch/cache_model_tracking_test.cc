// The cache model's tracking of CPU stores (arch/host/cache_model.h): a store dirties its line
// whatever it writes, through every kind of store the host process makes (plain, crossing a
// page, glibc's rep movs / rep stos), and faults outside the model still reach the handler that
// was there before.
#include <gtest/gtest.h>
#include <sys/mman.h>

#include <atomic>
#include <cstring>
#include <thread>
#include <vector>

#include "arch/host/cache_model.h"

namespace {

constexpr size_t kPage = CacheModel::kPageSize;
constexpr size_t kRegion = 8 * kPage;

class CacheModelTrackingTest : public testing::Test {
 protected:
  CacheModelTrackingTest() : model_(map_.cpu, kRegion, 64, CacheModel::Tracking::kStores) {}
  uint8_t* cpu() { return map_.cpu; }
  uint8_t device_byte(size_t off) {
    uint8_t b = 0;
    model_.device_read(off, &b, 1, false);
    return b;
  }
  // Every line clean, CPU and memory holding v.
  void sync_all(uint8_t v) {
    std::memset(cpu(), v, kRegion);
    model_.clean_invalidate(0, kRegion);
  }

  struct Mapping {  // Unmapped after the model.
    uint8_t* cpu = static_cast<uint8_t*>(
        mmap(nullptr, kRegion, PROT_READ | PROT_WRITE, MAP_PRIVATE | MAP_ANONYMOUS, -1, 0));
    ~Mapping() { munmap(cpu, kRegion); }
  };
  Mapping map_;
  CacheModel model_;
};

TEST_F(CacheModelTrackingTest, AStoreOfTheSameValueDirtiesOnlyItsLine) {
  sync_all(0x5A);
  EXPECT_FALSE(model_.line_dirty(100));
  const uint64_t before = model_.caught_stores();
  *reinterpret_cast<volatile uint8_t*>(cpu() + 100) = 0x5A;
  EXPECT_GT(model_.caught_stores(), before);
  EXPECT_TRUE(model_.line_dirty(64));
  EXPECT_TRUE(model_.line_dirty(127));
  EXPECT_FALSE(model_.line_dirty(128));
  EXPECT_FALSE(model_.line_dirty(63));
  // Written back whole at the next clean, over the device's byte.
  const uint8_t w = 0x99;
  model_.device_write(70, &w, 1, false);
  model_.clean(64, 64);
  EXPECT_EQ(device_byte(70), 0x5A);
  EXPECT_FALSE(model_.line_dirty(64));
  // A second store after that clean is caught again.
  *reinterpret_cast<volatile uint8_t*>(cpu() + 100) = 0x5A;
  EXPECT_TRUE(model_.line_dirty(64));
}

TEST_F(CacheModelTrackingTest, AnInvalidateForgetsTheStoreAndTrackingResumes) {
  sync_all(0x00);
  cpu()[200] = 0;
  EXPECT_TRUE(model_.line_dirty(200));
  model_.invalidate(192, 64);
  EXPECT_FALSE(model_.line_dirty(200));
  const uint8_t w = 0x31;
  model_.device_write(201, &w, 1, false);
  model_.evict_all();
  EXPECT_EQ(device_byte(201), 0x31);  // Nothing dirty went back over it.
  cpu()[199] = 0;
  model_.evict_all();
  EXPECT_EQ(device_byte(201), 0x00);  // Now the line was dirty again.
}

TEST_F(CacheModelTrackingTest, AStoreAcrossAPageBoundaryDirtiesBothLines) {
  sync_all(0x00);
  const uint64_t v = 0;
  __builtin_memcpy(cpu() + kPage - 4, &v, sizeof(v));  // One unaligned 8-byte store.
  EXPECT_TRUE(model_.line_dirty(kPage - 1));
  EXPECT_TRUE(model_.line_dirty(kPage));
  EXPECT_FALSE(model_.line_dirty(kPage + 64));
}

TEST_F(CacheModelTrackingTest, LibraryMemsetAndMemcpyAreTrackedLineByLine) {
  sync_all(0x00);
  // Sizes glibc serves with rep stos / rep movs, and with vector stores.
  std::vector<uint8_t> zeros(3 * kPage, 0);
  std::memset(cpu() + 64, 0, 3 * kPage);
  std::memcpy(cpu() + 4 * kPage + 128, zeros.data(), 2 * kPage);
  std::memset(cpu() + 7 * kPage + 64, 0, 200);
  for (size_t l = 0; l < kRegion; l += 64) {
    const bool stored = (l >= 64 && l < 64 + 3 * kPage) ||
                        (l >= 4 * kPage + 128 && l < 6 * kPage + 128) ||
                        (l >= 7 * kPage + 64 && l < 7 * kPage + 264);
    ASSERT_EQ(model_.line_dirty(l), stored) << "line at " << l;
  }
  // The stores reached the CPU view, and a clean takes them to memory.
  std::memset(cpu() + kPage, 0x6B, kPage);
  model_.clean(kPage, kPage);
  EXPECT_EQ(device_byte(kPage + 17), 0x6B);
}

TEST_F(CacheModelTrackingTest, AWhollyDirtyPageCostsNoMoreFaults) {
  sync_all(0x00);
  std::memset(cpu() + 2 * kPage, 1, kPage);
  const uint64_t caught = model_.caught_stores();
  for (size_t i = 0; i < kPage; i += 8) cpu()[2 * kPage + i] = 2;
  EXPECT_EQ(model_.caught_stores(), caught);
  // Until its next maintenance.
  model_.clean(2 * kPage, 64);
  cpu()[2 * kPage] = 3;
  EXPECT_GT(model_.caught_stores(), caught);
}

TEST_F(CacheModelTrackingTest, PagesNeverMaintainedAreNotProtected) {
  cpu()[5] = 1;
  cpu()[3 * kPage] = 0;
  EXPECT_EQ(model_.caught_stores(), 0u);
  // Known by value until then: a changed byte is dirty, an unchanged one cannot be seen.
  EXPECT_TRUE(model_.line_dirty(5));
  EXPECT_FALSE(model_.line_dirty(3 * kPage));
}

TEST_F(CacheModelTrackingTest, UncachedPagesAreNotTracked) {
  sync_all(0x00);
  model_.set_uncached(kPage, kPage, true);
  const uint64_t caught = model_.caught_stores();
  cpu()[kPage + 10] = 7;
  EXPECT_EQ(model_.caught_stores(), caught);
  EXPECT_EQ(device_byte(kPage + 10), 7);  // Straight to memory.
  model_.set_uncached(kPage, kPage, false);
  cpu()[kPage + 10] = 7;  // Cacheable again: tracked again.
  EXPECT_GT(model_.caught_stores(), caught);
  EXPECT_TRUE(model_.line_dirty(kPage + 10));
}

TEST_F(CacheModelTrackingTest, TheModelWritesThroughItsOwnProtection) {
  sync_all(0x00);
  std::vector<uint8_t> dev(kPage, 0xC3);
  model_.device_write(3 * kPage, dev.data(), kPage, false);
  const uint64_t caught = model_.caught_stores();
  model_.invalidate(3 * kPage, kPage);  // Reloads the CPU view of a protected page.
  EXPECT_EQ(cpu()[3 * kPage + 99], 0xC3);
  EXPECT_EQ(model_.caught_stores(), caught);
  EXPECT_FALSE(model_.line_dirty(3 * kPage + 99));
}

// Faults that are not the model's go to the handler installed before it (here the sanitizer's,
// which reports and kills the process).
TEST_F(CacheModelTrackingTest, OtherFaultsReachThePreviousHandler) {
  sync_all(0x00);
  void* other = mmap(nullptr, kPage, PROT_READ, MAP_PRIVATE | MAP_ANONYMOUS, -1, 0);
  ASSERT_NE(other, MAP_FAILED);
  EXPECT_DEATH(*static_cast<volatile uint8_t*>(other) = 1, "SEGV");
  EXPECT_DEATH(*static_cast<volatile uint8_t* volatile>(nullptr) = 1, "SEGV");
  munmap(other, kPage);
  // And the model still works afterwards.
  cpu()[1] = 0;
  EXPECT_TRUE(model_.line_dirty(1));
}

// Several threads storing to their own lines of the same pages while another cleans: every store
// is either in memory after the final clean or still dirty, never lost.
TEST_F(CacheModelTrackingTest, ConcurrentStoresAndCleansLoseNothing) {
  sync_all(0x00);
  constexpr int kThreads = 3;
  std::vector<std::thread> threads;
  std::atomic<bool> stop{false};
  for (int t = 0; t < kThreads; ++t) {
    threads.emplace_back([this, t] {
      // Thread t owns pages 2t and 2t+1.
      for (int r = 1; r <= 50; ++r) {
        uint8_t* p = cpu() + static_cast<size_t>(2 * t) * kPage;
        std::memset(p + static_cast<size_t>(r % 32) * 64, r, 64);
      }
    });
  }
  std::thread cleaner([this, &stop] {
    while (!stop.load()) model_.clean(0, 6 * kPage);
  });
  for (auto& th : threads) th.join();
  stop.store(true);
  cleaner.join();
  model_.clean(0, kRegion);
  for (int t = 0; t < kThreads; ++t) {
    for (int r = 19; r <= 50; ++r) {  // The last round that wrote each line.
      const size_t off = static_cast<size_t>(2 * t) * kPage + static_cast<size_t>(r % 32) * 64;
      ASSERT_EQ(device_byte(off), static_cast<uint8_t>(r)) << "thread " << t << " round " << r;
    }
  }
}

}  // namespace
