// The fault injector under concurrency: two threads reach the same fault point, the counts stay
// exact and an armed fault fires exactly once. ThreadSanitizer runs these (make test-host-tsan);
// before the counters were atomic it reported the plain ++ as a race.
//
// Fault injection is a debug aid: compiled only where it exists.
#include "dmakit/support/fault_injection.h"

#if defined(DMA_FAULT_INJECTION) && DMA_FAULT_INJECTION

#include <gtest/gtest.h>

#include <atomic>
#include <thread>

#include "arch/host/host_platform.h"
#include "dmakit/device_dma.h"

namespace {

using support::FaultInjector;
using support::FaultSite;

class FaultInjectorTest : public testing::Test {
 protected:
  FaultInjectorTest() { FaultInjector::disarm_all(); }  // Counts from earlier tests start over.
  ~FaultInjectorTest() override { FaultInjector::disarm_all(); }
};

TEST_F(FaultInjectorTest, CountsAndFiresOnTheNthCall) {
  FaultInjector::fail_nth(FaultSite::kMapping, 3);
  EXPECT_FALSE(FAULT_POINT(kMapping));
  EXPECT_FALSE(FAULT_POINT(kMapping));
  EXPECT_TRUE(FAULT_POINT(kMapping));
  EXPECT_FALSE(FAULT_POINT(kMapping));  // Fired once, then disarmed.
  EXPECT_EQ(FaultInjector::hits(FaultSite::kMapping), 4u);
  EXPECT_EQ(FaultInjector::hits(FaultSite::kPageAlloc), 0u);
  FaultInjector::fail_nth(FaultSite::kMapping, 0);  // Count only.
  EXPECT_FALSE(FAULT_POINT(kMapping));
  EXPECT_EQ(FaultInjector::hits(FaultSite::kMapping), 1u);
  FaultInjector::disarm_all();
  EXPECT_EQ(FaultInjector::hits(FaultSite::kMapping), 0u);
}

// Two threads hammer one site: every call is counted, and the armed call fails in exactly one of
// them.
TEST_F(FaultInjectorTest, ConcurrentCallsAreCountedAndTheFaultFiresOnce) {
  constexpr uint64_t kPerThread = 200'000;
  FaultInjector::fail_nth(FaultSite::kBounceSlot, kPerThread);  // Somewhere in the middle.
  std::atomic<uint64_t> failures{0};
  auto worker = [&] {
    uint64_t mine = 0;
    for (uint64_t i = 0; i < kPerThread; ++i) {
      if (FAULT_POINT(kBounceSlot)) ++mine;
    }
    failures += mine;
  };
  std::thread a(worker);
  std::thread b(worker);
  a.join();
  b.join();
  EXPECT_EQ(failures.load(), 1u);
  EXPECT_EQ(FaultInjector::hits(FaultSite::kBounceSlot), 2 * kPerThread);
}

// What the issue describes: two threads map (bounced, so every map passes the kMapping and
// kBounceSlot points) while a fault is armed. Exactly one map fails, with kNoMemory, and the
// counts match the maps made.
TEST_F(FaultInjectorTest, ConcurrentMapsWithAFaultArmed) {
  HostPlatform plat(HostPlatform::default_options());
  DeviceDma dev(&plat.op(), 0xFFFF'FFFFull);
  dev.set_force_bounce(true);
  dev.set_coherent(true);
  constexpr int kMaps = 2000;
  uint8_t* buffers[2];
  for (uint8_t*& buf : buffers) {
    auto pa = plat.pfa().alloc(0);
    ASSERT_TRUE(pa.ok());
    buf = plat.phys_to_virt(pa->value());
  }
  FaultInjector::fail_nth(FaultSite::kMapping, kMaps);
  std::atomic<int> no_memory{0};
  std::atomic<int> other_errors{0};
  auto worker = [&](int t) {
    for (int i = 0; i < kMaps; ++i) {
      auto m = dev.map(buffers[t], 256, DmaDirection::kToDevice);
      if (m.ok()) continue;  // Unmapped at once.
      if (m.code() == ErrorCode::kNoMemory) {
        ++no_memory;
      } else {
        ++other_errors;
      }
    }
  };
  std::thread a(worker, 0);
  std::thread b(worker, 1);
  a.join();
  b.join();
  EXPECT_EQ(no_memory.load(), 1);
  EXPECT_EQ(other_errors.load(), 0);
  EXPECT_EQ(FaultInjector::hits(FaultSite::kMapping), 2u * kMaps);
  // The failed map never asked for a slot.
  EXPECT_EQ(FaultInjector::hits(FaultSite::kBounceSlot), 2u * kMaps - 1);
  EXPECT_EQ(plat.pool(0).stats().used_slots, 0u);
  for (uint8_t* buf : buffers) {
    ASSERT_TRUE(plat.pfa()
                    .free(PhysAddr(reinterpret_cast<uintptr_t>(buf) - plat.direct_map_offset()), 0)
                    .ok());
  }
}

}  // namespace

#endif  // DMA_FAULT_INJECTION
