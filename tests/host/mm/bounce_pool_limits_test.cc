// Host tests of the bounce pool's largest mapping (issue "Data safety", item 5): a request above
// the pool's max_mapping_size() is refused with kLayoutError before anything is counted, through
// the pool and through the DMA API, with and without the per-CPU caches.
#include <gtest/gtest.h>

#include <cstdint>
#include <vector>

#include "arch/host/host_platform.h"
#include "dmakit/bounce_pool.h"
#include "tests/host/mm/bounce_test_pool.h"

namespace {

using bounce_test::expect_unchanged;
using bounce_test::Snapshot;
using bounce_test::snapshot;
constexpr size_t kKiB = 1024;
constexpr size_t kMiB = 1024 * kKiB;

unsigned cpu_zero() {
  return 0;
}

class BouncePoolLimits : public testing::TestWithParam<bool> {};

// An 8 MiB pool could hold a 4 MiB request, but one mapping may not take half the pool: refused
// with kLayoutError, like any other request no pool could ever serve, and nothing is counted (not
// even a failure). The default limit (kMaxMapping) itself still works.
TEST_P(BouncePoolLimits, AFourMiBRequestIsRefusedWithLayoutErrorAndNothingChanges) {
  bounce_test::TestPool t(8 * kMiB);
  BouncePool& p = t.pool;
  if (GetParam()) ASSERT_TRUE(p.enable_cpu_caches(&cpu_zero, 1).ok());
  BounceSlot held = *p.alloc(100);
  ASSERT_TRUE(p.free(*p.alloc(100)).ok());  // Something in a cache, too.
  Snapshot before = snapshot(p);
  EXPECT_EQ(p.alloc(4 * kMiB).code(), ErrorCode::kLayoutError);
  EXPECT_EQ(p.alloc(BouncePool::kMaxMapping + 1).code(), ErrorCode::kLayoutError);
  EXPECT_EQ(p.alloc(4 * kMiB, PhysAddr(0x1234'5000), 0xFFF).code(), ErrorCode::kLayoutError);
  EXPECT_EQ(p.alloc(4 * kMiB, PhysAddr(0), 0, 4096).code(), ErrorCode::kLayoutError);
  expect_unchanged(before, snapshot(p));
  EXPECT_TRUE(p.check_invariants());

  auto most = p.alloc(BouncePool::kMaxMapping);
  ASSERT_TRUE(most.ok());
  EXPECT_TRUE(p.free(*most).ok());
  EXPECT_TRUE(p.free(held).ok());
  p.drain_cache();
  EXPECT_EQ(p.free_block_count(), 1u);
}

// The same through the DMA API: a 4 MiB streaming mapping that must bounce fails with
// kLayoutError and leaves the pool and the mapping counters as they were.
TEST_P(BouncePoolLimits, AFourMiBBouncedMappingIsRefusedThroughTheDmaApi) {
  HostPlatform::Options o;
  o.ram.push_back(PhysRange{PhysAddr(0x4000'0000), 64 * kMiB});
  o.pools.push_back(HostPlatform::PoolSpec{8 * kMiB, 0xFFFF'FFFF});
  o.cpu_caches = GetParam() ? 1 : 0;
  HostPlatform plat(o);
  BouncePool& pool = plat.pool(0);
  auto pa = plat.pfa().alloc(PageFrameAllocator::order_for(4 * kMiB));
  ASSERT_TRUE(pa.ok());
  uint8_t* buf = plat.phys_to_virt(pa->value());
  DmaConstraints c;
  c.force_bounce = true;
  c.coherence = DmaCoherence::kCoherent;
  c.name = "big";

  Snapshot before = snapshot(pool);
  uint64_t live = plat.op().stats().live_maps;
  auto m = plat.op().map_single(c, buf, 4 * kMiB, 0, DmaDirection::kToDevice);
  EXPECT_EQ(m.code(), ErrorCode::kLayoutError);
  if (m.ok()) plat.op().unmap_single(*m);
  expect_unchanged(before, snapshot(pool));
  EXPECT_EQ(plat.op().stats().live_maps, live);

  auto ok = plat.op().map_single(c, buf, BouncePool::kMaxMapping, 0, DmaDirection::kToDevice);
  ASSERT_TRUE(ok.ok()) << error_code_name(ok.code());
  EXPECT_TRUE(ok->bounced());
  plat.op().unmap_single(*ok);
  ASSERT_TRUE(plat.pfa().free(*pa, PageFrameAllocator::order_for(4 * kMiB)).ok());
}

INSTANTIATE_TEST_SUITE_P(CpuCaches, BouncePoolLimits, testing::Bool(),
                         [](const testing::TestParamInfo<bool>& i) {
                           return i.param ? std::string("On") : std::string("Off");
                         });

}  // namespace
