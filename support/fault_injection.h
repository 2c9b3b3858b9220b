// Fault injection: make the Nth allocation at a site fail, to test every error path.
//
// Compiled in when DMA_FAULT_INJECTION is 1 (the host tests and debug kernels); otherwise
// FAULT_POINT is a constant false and costs nothing. Not thread-safe by design: tests arm it from
// one thread around single-threaded sequences.
#pragma once

#include "support/types.h"

namespace support {

enum class FaultSite : uint8_t {
  kPageAlloc = 0,  // PageFrameAllocator::alloc
  kBounceSlot,     // BouncePool::alloc
  kMapping,        // KernelDmaOp::map_single
  kCount,
};

class FaultInjector {
 public:
  // The `nth` (1-based) call at `site` from now on fails; 0 disarms.
  static void fail_nth(FaultSite site, uint64_t nth) {
    countdown_[static_cast<size_t>(site)] = nth;
    hits_[static_cast<size_t>(site)] = 0;
  }
  static void disarm_all() {
    for (size_t i = 0; i < static_cast<size_t>(FaultSite::kCount); ++i) {
      countdown_[i] = 0;
      hits_[i] = 0;
    }
  }
  // Calls seen at `site` since it was last armed (to size an exhaustive sweep).
  static uint64_t hits(FaultSite site) { return hits_[static_cast<size_t>(site)]; }
  // Counts a call at `site`; true when this one must fail.
  static bool should_fail(FaultSite site) {
    size_t i = static_cast<size_t>(site);
    ++hits_[i];
    if (countdown_[i] == 0) return false;
    return --countdown_[i] == 0;
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
