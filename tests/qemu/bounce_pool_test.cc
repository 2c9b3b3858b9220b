// In-VM tests of the bounce pools kernel_main carved: placement (below their limits, inside RAM,
// clear of everything else reserved) and filling and draining them on real memory.
#include "testkernel/kernel_env.h"
#include "tests/qemu/ktest.h"
#include "tests/qemu/test_util.h"

namespace {

constexpr size_t kChunk = 64 * 1024;
constexpr size_t kMaxHeld = 1024;
BounceSlot g_slots[kMaxHeld];  // Static: the tests run on the boot stack.

}  // namespace

KTEST(bounce_pool_dma32_below_4g) {
  BouncePool* p = ktest_util::pool_named("dma32");
  KREQUIRE_TRUE(p != nullptr);
  uint64_t last = p->base().value() + p->bytes() - 1;
  KEXPECT_LE(last, 0xFFFF'FFFFull);
  KEXPECT_GE(p->bytes(), BouncePool::kMaxMapping);
  KEXPECT_LE(p->bytes(), 16ull << 20);
  KEXPECT_TRUE(kernel_env().in_ram(p->base(), p->bytes()));
}

KTEST(bounce_pools_clear_of_other_reserved_memory) {
  const KernelEnv& env = kernel_env();
  KREQUIRE_TRUE(env.num_pools >= 1);
  for (size_t i = 0; i < env.num_pools; ++i) {
    const BouncePool* p = env.pools[i];
    KEXPECT_TRUE(env.in_ram(p->base(), p->bytes()));
    // The firmware's reserved ranges and the kernel image.
    for (size_t j = 0; j < env.boot->num_reserved; ++j) {
      const PhysRange& r = env.boot->reserved[j];
      bool overlap = p->base() < r.end() && r.base < p->base() + p->bytes();
      KEXPECT_FALSE(overlap);
    }
    // Exactly one of the kernel's reserved entries (its own) overlaps the pool.
    size_t hits = 0;
    for (size_t j = 0; j < env.num_reserved; ++j) {
      const PhysRange& r = env.reserved[j];
      if (p->base() < r.end() && r.base < p->base() + p->bytes()) ++hits;
    }
    KEXPECT_EQ(hits, 1u);
    KEXPECT_TRUE(p->check_invariants());
    KEXPECT_EQ(p->stats().used_slots, 0u);
  }
  // Carved ranges never overlap one another.
  for (size_t a = 0; a < env.num_reserved; ++a) {
    for (size_t b = a + 1; b < env.num_reserved; ++b) {
      const PhysRange& x = env.reserved[a];
      const PhysRange& y = env.reserved[b];
      bool carved = env.reserved_what[a] != env.reserved_what[b];  // Boot entries may overlap.
      if (carved && x.size != 0 && y.size != 0) {
        KEXPECT_FALSE(x.base < y.end() && y.base < x.end());
      }
    }
  }
}

// Fills every pool with 64 KiB allocations until it says kNoMemory, writes a different pattern
// through each slot's CPU address, checks them all, frees everything.
KTEST(bounce_pool_fill_and_drain) {
  const KernelEnv& env = kernel_env();
  for (size_t pi = 0; pi < env.num_pools; ++pi) {
    BouncePool* p = env.pools[pi];
    BouncePool::Stats before = p->stats();
    size_t n = 0;
    for (;;) {
      auto r = p->alloc(kChunk);
      if (!r.ok()) {
        KEXPECT_ERR(r, ErrorCode::kNoMemory);
        break;
      }
      KREQUIRE_TRUE(n < kMaxHeld);
      g_slots[n] = *r;
      KEXPECT_TRUE(p->contains(r->addr));
      KEXPECT_TRUE(p->contains(r->addr + (kChunk - 1)));
      ktest_util::fill_pattern(static_cast<uint8_t*>(p->cpu_addr(r->addr)), kChunk,
                               static_cast<uint32_t>(n));
      ++n;
    }
    KEXPECT_GE(n * kChunk, p->bytes() - kChunk);  // Nearly all of it could be used.
    for (size_t i = 0; i < n; ++i) {
      const uint8_t* d = static_cast<const uint8_t*>(p->cpu_addr(g_slots[i].addr));
      KEXPECT_EQ(ktest_util::check_pattern(d, kChunk, static_cast<uint32_t>(i)), kChunk);
    }
    KEXPECT_TRUE(p->check_invariants());
    for (size_t i = 0; i < n; ++i) KEXPECT_OK(p->free(g_slots[i]));
    KEXPECT_ERR(p->free(g_slots[0]), ErrorCode::kNotFound);  // Double free is detected.
    BouncePool::Stats after = p->stats();
    KEXPECT_EQ(after.used_slots, before.used_slots);
    KEXPECT_GE(after.high_water_slots, n * (kChunk / p->slot_size()));
    KEXPECT_TRUE(p->check_invariants());
  }
}
