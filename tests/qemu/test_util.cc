#include "tests/qemu/test_util.h"

#include "kernel/kstring.h"

namespace ktest_util {

BouncePool* pool_named(const char* name) {
  const KernelEnv& env = kernel_env();
  for (size_t i = 0; i < env.num_pools; ++i) {
    if (kstr::equal(env.pool_names[i], name)) return env.pools[i];
  }
  return nullptr;
}

}  // namespace ktest_util
