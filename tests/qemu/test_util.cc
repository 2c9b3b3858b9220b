#include "tests/qemu/test_util.h"

#include "testkernel/kstring.h"

namespace ktest_util {

BouncePool* pool_named(const char* name) {
  const KernelEnv& env = kernel_env();
  for (size_t i = 0; i < env.num_pools; ++i) {
    if (kstr::equal(env.pool_names[i], name)) return env.pools[i];
  }
  return nullptr;
}

Result<PhysAddr> alloc_above(unsigned order, uint64_t floor) {
  PageFrameAllocator* pfa = kernel_env().pfa;
  static PhysAddr tried[64];
  size_t n = 0;
  bool found = false;
  PhysAddr result;
  while (n < 64 && !found) {
    auto r = pfa->alloc(order);
    if (!r.ok()) break;
    if (r->value() > floor) {
      result = *r;
      found = true;
    } else {
      tried[n++] = *r;
    }
  }
  for (size_t i = 0; i < n; ++i) {
    auto f = pfa->free(tried[i], order);
    KASSERT(f.ok(), "alloc_above: freeing a block it took failed");
  }
  if (!found) return ErrorCode::kNoMemory;
  return result;
}

}  // namespace ktest_util
