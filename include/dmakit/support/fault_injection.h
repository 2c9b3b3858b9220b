// Fault injection: make the Nth allocation at a site fail, to test every error path.
//
// Compiled in when DMA_FAULT_INJECTION is 1 (the host tests and fuzzers); otherwise FAULT_POINT is
// a constant false and costs nothing. Thread-safe: several CPUs (host threads) may reach the same
// site while a test arms it. The counters are atomic: a call adds one to its site's hit count (a
// relaxed atomic add, exact under concurrency) and loads its countdown; only when a fault is armed
// (countdown non-zero) does it take the countdown down with a compare-and-swap, so that exactly
// one call, the armed one, fails however many CPUs race for it. Arming and reading are for tests;
// they may run while other threads call should_fail.
#pragma once

#include "dmakit/support/types.h"

namespace support {

enum class FaultSite : uint8_t {
  kPageAlloc = 0,  // PageFrameAllocator::alloc
  kBounceSlot,     // BouncePool::alloc
  kMapping,        // KernelDmaOp::map_single
  kCount,
};

class FaultInjector {
 public:
  // The `nth` (1-based) call at `site` from now on fails; 0 disarms. Either way the site's hit
  // count starts again from 0.
  static void fail_nth(FaultSite site, uint64_t nth) {
    size_t i = static_cast<size_t>(site);
    __atomic_store_n(&countdown_[i], nth, __ATOMIC_RELAXED);
    __atomic_store_n(&hits_[i], uint64_t{0}, __ATOMIC_RELAXED);
  }
  static void disarm_all() {
    for (size_t i = 0; i < static_cast<size_t>(FaultSite::kCount); ++i) {
      __atomic_store_n(&countdown_[i], uint64_t{0}, __ATOMIC_RELAXED);
      __atomic_store_n(&hits_[i], uint64_t{0}, __ATOMIC_RELAXED);
    }
  }
  // Calls seen at `site` since it was last armed (to size an exhaustive sweep).
  static uint64_t hits(FaultSite site) {
    return __atomic_load_n(&hits_[static_cast<size_t>(site)], __ATOMIC_RELAXED);
  }
  // Counts a call at `site`; true when this one must fail (then the site is disarmed).
  static bool should_fail(FaultSite site) {
    size_t i = static_cast<size_t>(site);
    __atomic_fetch_add(&hits_[i], uint64_t{1}, __ATOMIC_RELAXED);
    uint64_t left = __atomic_load_n(&countdown_[i], __ATOMIC_RELAXED);
    if (left == 0) [[likely]] {
      return false;  // Nothing armed: one add and one load.
    }
    // Armed: one CAS per call, retried only when another CPU took the countdown down first.
    while (left != 0) {
      if (__atomic_compare_exchange_n(&countdown_[i], &left, left - 1, /*weak=*/true,
                                      __ATOMIC_RELAXED, __ATOMIC_RELAXED)) {
        return left == 1;
      }
    }
    return false;  // Someone else's call took the last step.
  }

 private:
  static inline uint64_t countdown_[static_cast<size_t>(FaultSite::kCount)] = {};
  static inline uint64_t hits_[static_cast<size_t>(FaultSite::kCount)] = {};
};

}  // namespace support

#if defined(DMA_FAULT_INJECTION) && DMA_FAULT_INJECTION
#define FAULT_POINT(site) (::support::FaultInjector::should_fail(::support::FaultSite::site))
#else
#define FAULT_POINT(site) false
#endif
