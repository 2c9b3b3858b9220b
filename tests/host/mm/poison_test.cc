// Debug-build poisoning: a page or bounce slot written after it was freed is reported when it is
// handed out again.
#include <gtest/gtest.h>

#include <vector>

#include "arch/host/host_platform.h"

namespace {

#if DMA_PAGE_POISON  // Page poisoning: debug builds with DMA_PAGE_POISON only.
TEST(Poison, FreedPagesArePoisoned) {
  HostPlatform plat(HostPlatform::default_options());
  auto pa = plat.pfa().alloc(0);
  ASSERT_TRUE(pa.ok());
  uint8_t* p = plat.phys_to_virt(pa->value());
  p[100] = 1;
  ASSERT_TRUE(plat.pfa().free(*pa, 0).ok());
  EXPECT_EQ(p[100], 0x6B);
  EXPECT_EQ(p[4095], 0x6B);
}
#endif

#if DMA_PAGE_POISON  // Page poisoning: debug builds with DMA_PAGE_POISON only.
TEST(Poison, PageWrittenAfterFreeIsReported) {
  EXPECT_DEATH(
      {
        HostPlatform plat(HostPlatform::default_options());
        auto pa = plat.pfa().alloc(0);
        uint8_t* p = plat.phys_to_virt(pa->value());
        if (!plat.pfa().free(*pa, 0).ok()) std::abort();
        p[2000] = 0;                       // Use after free.
        auto again = plat.pfa().alloc(0);  // LIFO: the same page comes back.
        (void)again;
      },
      "page written after it was freed");
}
#endif

#if KDEBUG_ENABLED  // Bounce slots are poisoned in debug builds only.
TEST(Poison, FreedBounceSlotsArePoisonedAndChecked) {
  HostPlatform plat(HostPlatform::default_options());
  BouncePool& pool = plat.pool(0);
  auto s = pool.alloc(4096);
  ASSERT_TRUE(s.ok());
  auto* p = static_cast<uint8_t*>(pool.cpu_addr(s->addr));
  p[0] = 7;
  ASSERT_TRUE(pool.free(*s).ok());
  EXPECT_EQ(p[0], 0x5B);
  EXPECT_DEATH(
      {
        p[10] = 1;  // Use after free.
        auto again = pool.alloc(4096);
        (void)again;
      },
      "bounce slot written after it was freed");
}
#endif

TEST(Poison, PoisoningCanBeTurnedOffForUnbackedPools) {
  std::vector<uint8_t> mem(64 * 1024, 0x11);
  std::vector<uint8_t> meta(BouncePool::metadata_size(mem.size(), 2048));
  BouncePool pool;
  pool.set_poisoning(false);
  ASSERT_TRUE(
      pool.init(PhysAddr(0x1000'0000), mem.size(), mem.data(), meta.data(), meta.size()).ok());
  EXPECT_EQ(mem[5], 0x11);
  auto s = pool.alloc(100);
  ASSERT_TRUE(s.ok());
  ASSERT_TRUE(pool.free(*s).ok());
  EXPECT_EQ(mem[5], 0x11);
}

}  // namespace
