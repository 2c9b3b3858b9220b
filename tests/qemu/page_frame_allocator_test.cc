// In-VM tests of the page-frame allocator over the memory map the firmware described: what it
// manages, and allocating everything under several limits (placement inside RAM, outside every
// reserved range, under the limit, aligned, no two blocks overlapping), then freeing it all.
#include "dmakit/support/bitops.h"
#include "testkernel/iommu.h"
#include "testkernel/kernel_env.h"
#include "tests/qemu/ktest.h"
#include "tests/qemu/test_util.h"

using ktest_util::kPage;

namespace {

constexpr uint64_t kTagMagic = 0x5045'4741'4c4c'4f43ull;  // Tags the blocks a test holds.
constexpr uint64_t kNone = ~0ull;

// Pages of [lo, hi) not covered by any reserved range (reserved ranges rounded out to pages, as
// the allocator treats them), computed by a sweep independent of the kernel's own planner.
uint64_t unreserved_pages(uint64_t lo, uint64_t hi) {
  const KernelEnv& env = kernel_env();
  uint64_t count = 0;
  uint64_t pos = lo;
  while (pos < hi) {
    // Skip past every reserved range covering pos; else advance to the next reserved start.
    bool covered = false;
    uint64_t next = hi;
    for (size_t i = 0; i < env.num_reserved; ++i) {
      const PhysRange& r = env.reserved[i];
      if (r.size == 0) continue;
      uint64_t rlo = support::align_down(r.base.value(), kPage);
      uint64_t rhi = support::align_up(r.base.value() + r.size, kPage);
      if (rlo <= pos && pos < rhi) {
        covered = true;
        pos = rhi;
        break;
      }
      if (rlo > pos && rlo < next) next = rlo;
    }
    if (!covered) {
      count += (next - pos) / kPage;
      pos = next;
    }
  }
  return count;
}

// Blocks held by a test, chained through their own first words (no other memory needed).
struct Held {
  uint64_t head = kNone;
  uint64_t blocks = 0;
  uint64_t pages = 0;
};

struct BlockTag {
  uint64_t next;
  uint64_t order;
  uint64_t self;
  uint64_t magic;
};

void hold(Held* h, PhysAddr pa, unsigned order) {
  auto* t = static_cast<BlockTag*>(kernel_env().phys_to_virt(pa));
  t->next = h->head;
  t->order = order;
  t->self = pa.value();
  t->magic = kTagMagic ^ pa.value();
  // The last word of the block too: a block overlapping another would overwrite a tag.
  auto* last = reinterpret_cast<uint64_t*>(reinterpret_cast<uint8_t*>(t) + (kPage << order) - 8);
  *last = ~pa.value();
  h->head = pa.value();
  h->blocks += 1;
  h->pages += 1ull << order;
}

// Checks every held block's tags; frees them all. Returns the number of bad tags.
uint64_t release_all(Held* h, uint64_t* free_errors) {
  uint64_t bad = 0;
  *free_errors = 0;
  uint64_t cur = h->head;
  while (cur != kNone) {
    auto* t = static_cast<BlockTag*>(kernel_env().phys_to_virt(PhysAddr(cur)));
    uint64_t next = t->next;
    auto order = static_cast<unsigned>(t->order);
    auto* last =
        reinterpret_cast<uint64_t*>(reinterpret_cast<uint8_t*>(t) + (kPage << (order & 15)) - 8);
    if (t->self != cur || t->magic != (kTagMagic ^ cur) || order > PageFrameAllocator::kMaxOrder ||
        *last != ~cur) {
      ++bad;
      break;  // The chain itself may be damaged: stop here (the run reports the failure).
    }
    if (!kernel_env().pfa->free(PhysAddr(cur), order).ok()) ++*free_errors;
    cur = next;
  }
  *h = Held{};
  return bad;
}

// Allocates everything under `limit`, largest blocks first, checking each block.
void exhaust_and_restore(ktest::Context& ktest_ctx, uint64_t limit) {
  const KernelEnv& env = kernel_env();
  PageFrameAllocator* pfa = env.pfa;
  PageFrameAllocator::Stats before = pfa->stats();
  Held held;
  bool mask_error = false;
  bool misplaced = false;
  for (int order = static_cast<int>(PageFrameAllocator::kMaxOrder); order >= 0 && !misplaced;
       --order) {
    auto o = static_cast<unsigned>(order);
    for (;;) {
      auto r = pfa->alloc(o, limit);
      if (!r.ok()) {
        if (r.code() == ErrorCode::kDmaMaskNotMatch) mask_error = true;
        KEXPECT_TRUE(r.code() == ErrorCode::kNoMemory || r.code() == ErrorCode::kDmaMaskNotMatch);
        break;
      }
      uint64_t bytes = kPage << o;
      PhysAddr pa = *r;
      bool in_ram = env.in_ram(pa, bytes);
      if (in_ram) hold(&held, pa, o);  // (Outside RAM it cannot be tagged; it is leaked.)
      if (!support::is_aligned(pa.value(), bytes) || pa.value() + bytes - 1 > limit || !in_ram ||
          env.overlaps_reserved(pa, bytes)) {
        ktest_ctx.fail(__FILE__, __LINE__, "block 0x%llx order %u misplaced (limit 0x%llx)",
                       static_cast<unsigned long long>(pa.value()), o,
                       static_cast<unsigned long long>(limit));
        misplaced = true;
        break;
      }
    }
  }
  if (!misplaced) {
    // Nothing at all is left under the limit.
    KEXPECT_FALSE(pfa->alloc(0, limit).ok());
  }

  PageFrameAllocator::Stats full = pfa->stats();
  KEXPECT_EQ(full.free_pages + held.pages, before.free_pages);
  if (misplaced) {
    // Counts are meaningless after a misplaced block; just give everything back.
  } else if (limit == ~0ull) {
    KEXPECT_EQ(full.free_pages, 0u);
    KEXPECT_EQ(held.pages, before.free_pages);
  } else if (((limit + 1) & limit) == 0 && limit >= (1ull << PageFrameAllocator::kBandShift) - 1) {
    // A limit of the form 2^n - 1 ends on a band boundary: every page free in the bands below it
    // was taken, and no page above it.
    uint64_t below = 0;
    for (unsigned b = 0; b < PageFrameAllocator::kNumBands; ++b) {
      uint64_t band_end = b == 0 ? (1ull << PageFrameAllocator::kBandShift)
                                 : (1ull << (PageFrameAllocator::kBandShift - 1 + b)) * 2;
      if (band_end - 1 <= limit) below += before.free_pages_per_band[b];
    }
    KEXPECT_EQ(held.pages, below);
  }
  if (held.pages == 0) KEXPECT_TRUE(mask_error || before.free_pages == 0);

  uint64_t free_errors = 0;
  KEXPECT_EQ(release_all(&held, &free_errors), 0u);
  KEXPECT_EQ(free_errors, 0u);
  PageFrameAllocator::Stats after = pfa->stats();
  KEXPECT_EQ(after.free_pages, before.free_pages);
  for (unsigned b = 0; b < PageFrameAllocator::kNumBands; ++b) {
    KEXPECT_EQ(after.free_pages_per_band[b], before.free_pages_per_band[b]);
  }
  KEXPECT_TRUE(pfa->check_invariants());
}

}  // namespace

KTEST_WHEN(pfa_manages_ram_minus_reserved, iommu::inactive) {
  const KernelEnv& env = kernel_env();
  KREQUIRE_TRUE(env.pfa != nullptr && env.boot != nullptr);
  uint64_t expect = 0;
  for (size_t i = 0; i < env.boot->num_ram; ++i) {
    const PhysRange& r = env.boot->ram[i];
    expect += unreserved_pages(support::align_up(r.base.value(), kPage),
                               support::align_down(r.end().value(), kPage));
  }
  // Bounce-pool growth that earlier tests left idle (the hysteresis keeps it) goes back first.
  KREQUIRE_OK(env.dma->trim_bounce_pools());
  PageFrameAllocator::Stats s = env.pfa->stats();
  KEXPECT_EQ(s.managed_pages, expect);
  KEXPECT_EQ(s.free_pages, s.managed_pages);  // Nothing else holds pages while tests run.
  KEXPECT_TRUE(env.in_ram(env.pfa->lowest_address(), kPage));
  KEXPECT_TRUE(env.in_ram(env.pfa->highest_address() - kPage, kPage));
  KEXPECT_LE(s.metadata_bytes * 1000, s.managed_pages * kPage);  // At most 0.1%.
  KEXPECT_TRUE(env.pfa->check_invariants());
}

KTEST(pfa_exhaust_everything) {
  exhaust_and_restore(ktest_ctx, ~0ull);
}

KTEST(pfa_exhaust_below_4g) {
  exhaust_and_restore(ktest_ctx, 0xFFFF'FFFFull);
}

// A limit that is not 2^n - 1 and ends inside RAM: a bounded search that stops mid-word.
KTEST(pfa_exhaust_below_mid_ram) {
  const KernelEnv& env = kernel_env();
  uint64_t lo = env.pfa->lowest_address().value();
  uint64_t hi = env.pfa->highest_address().value();
  uint64_t limit = lo + (hi - lo) / 3 + 12345;
  exhaust_and_restore(ktest_ctx, limit);
}

// The power-of-two boundary just above the lowest RAM (2 GiB on aarch64, 4 GiB on riscv64).
KTEST(pfa_exhaust_below_pow2_in_ram) {
  uint64_t lo = kernel_env().pfa->lowest_address().value();
  uint64_t limit = (1ull << (support::log2_floor(lo | 1) + 1)) - 1;
  exhaust_and_restore(ktest_ctx, limit);
}

KTEST(pfa_limit_below_all_ram_is_a_mask_error) {
  uint64_t lo = kernel_env().pfa->lowest_address().value();
  KREQUIRE_TRUE(lo >= kPage);
  PageFrameAllocator::Stats before = kernel_env().pfa->stats();
  auto r = kernel_env().pfa->alloc(0, lo - 1);
  KEXPECT_ERR(r, ErrorCode::kDmaMaskNotMatch);
  if (!r.ok()) KEXPECT_EQ(r.error().addr, lo);
  KEXPECT_EQ(kernel_env().pfa->stats().free_pages, before.free_pages);
}

KTEST(pfa_alignment_and_bad_requests) {
  PageFrameAllocator* pfa = kernel_env().pfa;
  uint64_t before = pfa->free_pages();
  auto r = pfa->alloc(0, ~0ull, 2ull << 20);
  KREQUIRE_OK(r);
  KEXPECT_TRUE(support::is_aligned(r->value(), 2ull << 20));
  KEXPECT_OK(pfa->free(*r, 0));
  KEXPECT_ERR(pfa->alloc(PageFrameAllocator::kMaxOrder + 1), ErrorCode::kLayoutError);
  KEXPECT_ERR(pfa->alloc(0, ~0ull, 3 * kPage), ErrorCode::kLayoutError);
  KEXPECT_ERR(pfa->free(pfa->lowest_address() + 1, 0), ErrorCode::kNotFound);
  KEXPECT_EQ(pfa->free_pages(), before);
}
