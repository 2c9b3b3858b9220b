#include "tests/qemu/test_util.h"

#include "testkernel/devices.h"
#include "testkernel/kstring.h"

namespace ktest_util {

BouncePool* pool_named(const char* name) {
  const KernelEnv& env = kernel_env();
  for (size_t i = 0; i < env.num_pools; ++i) {
    if (kstr::equal(env.pool_names[i], name)) return env.pools[i];
  }
  return nullptr;
}

Devices* devices() {
  auto d = devices_init(kernel_env());
  return d.ok() ? *d : nullptr;
}

void fill_guest(uint8_t* p, size_t n, uint64_t pos) {
  for (size_t i = 0; i < n; ++i, ++pos) {
    p[i] =
        disk_pattern::guest_byte(pos / disk_pattern::kSectorSize, pos % disk_pattern::kSectorSize);
  }
}

size_t check_disk(const uint8_t* p, size_t n, uint64_t pos, bool guest) {
  for (size_t i = 0; i < n; ++i, ++pos) {
    const uint64_t s = pos / disk_pattern::kSectorSize;
    const uint64_t j = pos % disk_pattern::kSectorSize;
    if (p[i] != (guest ? disk_pattern::guest_byte(s, j) : disk_pattern::host_byte(s, j))) {
      return i;
    }
  }
  return n;
}

Result<PhysAddr> alloc_above(unsigned order, uint64_t floor) {
  // The allocator hands out blocks from wherever its hint points (low memory after a burst of
  // frees there, as IOMMU page tables and set-up leave behind), so take blocks until one lies
  // above the floor or the allocator runs dry. The blocks below are chained through their own
  // first bytes (direct map) and all given back.
  PageFrameAllocator* pfa = kernel_env().pfa;
  constexpr uint64_t kNone = ~0ull;
  uint64_t chain = kNone;
  PhysAddr found;
  bool ok = false;
  for (;;) {
    auto r = pfa->alloc(order);
    if (!r.ok()) break;
    if (r->value() > floor) {
      found = *r;
      ok = true;
      break;
    }
    *static_cast<uint64_t*>(kernel_env().phys_to_virt(*r)) = chain;
    chain = r->value();
  }
  while (chain != kNone) {
    uint64_t next = *static_cast<uint64_t*>(kernel_env().phys_to_virt(PhysAddr(chain)));
    auto f = pfa->free(PhysAddr(chain), order);
    KASSERT(f.ok(), "alloc_above: freeing a block it took failed");
    chain = next;
  }
  if (!ok) return ErrorCode::kNoMemory;
  return found;
}

}  // namespace ktest_util
