// The cache model itself: whole-line semantics, dirtiness, eviction, coherent device accesses.
#include "arch/host/cache_model.h"

#include <gtest/gtest.h>

#include <cstring>
#include <vector>

namespace {

class CacheModelTest : public testing::Test {
 protected:
  CacheModelTest() : cpu_(4096, 0), model_(cpu_.data(), cpu_.size(), 64) {}
  uint8_t dev_byte(size_t off) {
    uint8_t b = 0;
    model_.device_read(off, &b, 1, false);
    return b;
  }
  std::vector<uint8_t> cpu_;
  CacheModel model_;
};

TEST_F(CacheModelTest, CpuWritesStayInTheCacheUntilCleaned) {
  cpu_[10] = 1;
  EXPECT_EQ(dev_byte(10), 0);
  model_.clean(10, 1);
  EXPECT_EQ(dev_byte(10), 1);
  EXPECT_EQ(model_.counters().cleans, 1u);
}

TEST_F(CacheModelTest, CleanWorksOnWholeLines) {
  cpu_[0] = 1;
  cpu_[63] = 2;
  cpu_[64] = 3;
  model_.clean(5, 1);
  EXPECT_EQ(dev_byte(0), 1);
  EXPECT_EQ(dev_byte(63), 2);
  EXPECT_EQ(dev_byte(64), 0);  // Next line untouched.
}

TEST_F(CacheModelTest, InvalidateDropsDirtyDataOfTheWholeLine) {
  cpu_[70] = 9;
  model_.invalidate(64, 1);
  EXPECT_EQ(cpu_[70], 0);
}

TEST_F(CacheModelTest, CleanOfACleanLineLeavesDeviceDataAlone) {
  uint8_t v = 0x55;
  model_.device_write(128, &v, 1, false);
  model_.clean(128, 64);  // Line not dirty: memory keeps the device's byte.
  EXPECT_EQ(dev_byte(128), 0x55);
  EXPECT_EQ(cpu_[128], 0);  // Stale until invalidated.
  model_.invalidate(128, 64);
  EXPECT_EQ(cpu_[128], 0x55);
}

TEST_F(CacheModelTest, CleanInvalidateWritesBackThenReloads) {
  cpu_[200] = 4;
  uint8_t v = 0x66;
  model_.device_write(250, &v, 1, false);
  model_.clean_invalidate(200, 1);
  EXPECT_EQ(dev_byte(200), 4);
  // Dirty line written back whole: the device's byte in that line is overwritten, as in hardware.
  EXPECT_EQ(cpu_[250], 0);
}

TEST_F(CacheModelTest, EvictionWritesBackEveryDirtyLine) {
  cpu_[1000] = 7;
  cpu_[3000] = 8;
  model_.evict_all();
  EXPECT_EQ(dev_byte(1000), 7);
  EXPECT_EQ(dev_byte(3000), 8);
}

TEST_F(CacheModelTest, CoherentDeviceSeesAndUpdatesTheCpuView) {
  cpu_[300] = 3;
  uint8_t b = 0;
  model_.device_read(300, &b, 1, true);
  EXPECT_EQ(b, 3);
  uint8_t v = 0x12;
  model_.device_write(301, &v, 1, true);
  EXPECT_EQ(cpu_[301], 0x12);
}

TEST_F(CacheModelTest, OutOfRangeOperationsAreCaught) {
  EXPECT_DEATH(model_.clean(4090, 10), "outside the modelled memory");
  model_.clean(4095, 0);  // Empty ranges are fine anywhere inside.
}

}  // namespace
