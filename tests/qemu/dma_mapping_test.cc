// In-VM tests of the platform DmaOp on real memory: streaming mappings (direct and bounced, every
// direction, data intact), the mask deciding between them, clear errors, and coherent
// allocations on the direct map. The device is the CPU standing in at the DMA address.
#include "dmakit/support/bitops.h"
#include "testkernel/kernel_env.h"
#include "testkernel/kstring.h"
#include "tests/qemu/ktest.h"
#include "tests/qemu/test_util.h"

using ktest_util::device_view;
using ktest_util::device_write_pattern;
using ktest_util::Pages;

namespace {

constexpr DmaDirection kDirs[] = {DmaDirection::kToDevice, DmaDirection::kFromDevice,
                                  DmaDirection::kBidirectional};
constexpr size_t kOffsets[] = {0, 1, 100};
constexpr size_t kSizes[] = {1, 77, 4096, 12345};
constexpr uint32_t kCpuSeed = 11;
constexpr uint32_t kDevSeed = 77;

size_t live_slots() {
  size_t n = 0;
  for (size_t i = 0; i < kernel_env().num_pools; ++i)
    n += kernel_env().pools[i]->stats().used_slots;
  return n;
}

bool in_some_pool(DmaAddr a, size_t size) {
  for (size_t i = 0; i < kernel_env().num_pools; ++i) {
    const BouncePool* p = kernel_env().pools[i];
    if (p->contains(PhysAddr(a.value())) && p->contains(PhysAddr(a.value() + size - 1)))
      return true;
  }
  return false;
}

// Maps buf[off, off + size) with `c` in `dir` and plays one transfer: the device checks what the
// CPU wrote (to-device directions) and writes its own pattern (from-device directions); after
// unmap the CPU checks the buffer. Returns the handle's bounced() flag through *bounced.
void transfer(ktest::Context& ktest_ctx, const DmaConstraints& c, uint8_t* buf, size_t size,
              DmaDirection dir, bool* bounced) {
  KernelDmaOp* op = kernel_env().dma;
  ktest_util::fill_pattern(buf, size, kCpuSeed);
  auto h = op->map_single(c, buf, size, 0, dir);
  KREQUIRE_OK(h);
  *bounced = h->bounced();
  auto phys = op->virt_to_phys(buf);
  KREQUIRE_OK(phys);
  if (!h->bounced()) {
    KEXPECT_EQ(h->dma_addr.value(), phys->value() + c.bus_offset);
  } else {
    KEXPECT_TRUE(in_some_pool(h->dma_addr, size));
  }
  KEXPECT_LE(h->dma_addr.value() + size - 1, c.dma_mask);
  // The device sees the CPU's bytes for every direction (bounce slots start as a copy).
  KEXPECT_EQ(ktest_util::check_pattern(device_view(h->dma_addr), size, kCpuSeed), size);
  if (dir != DmaDirection::kToDevice) device_write_pattern(h->dma_addr, size, kDevSeed);
  op->unmap_single(*h);
  uint32_t want = dir == DmaDirection::kToDevice ? kCpuSeed : kDevSeed;
  KEXPECT_EQ(ktest_util::check_pattern(buf, size, want), size);
}

}  // namespace

KTEST(dma_map_direct_every_direction) {
  Pages pages(2);
  KREQUIRE_TRUE(pages.ok());
  DmaConstraints c = kernel_env().dma->default_constraints();
  size_t live = live_slots();
  const size_t line = kernel_env().dma->cache_alignment();
  for (DmaDirection d : kDirs) {
    for (size_t off : kOffsets) {
      // Direct, except a buffer a non-coherent device writes that shares its edge lines with
      // other data: bounced whole, so that no device byte is lost (DmaOp::cache_alignment).
      size_t size = 8192 + off;
      bool shares = ((off | (off + size)) & (line - 1)) != 0;
      bool expect_bounced =
          c.coherence != DmaCoherence::kCoherent && d != DmaDirection::kToDevice && shares;
      bool bounced = !expect_bounced;
      transfer(ktest_ctx, c, pages.va() + off, size, d, &bounced);
      KEXPECT_EQ(bounced, expect_bounced);
    }
  }
  KEXPECT_EQ(live_slots(), live);
  KEXPECT_EQ(kernel_env().dma->stats().live_maps, 0u);
}

KTEST(dma_map_forced_bounce_every_direction) {
  Pages pages(2);
  KREQUIRE_TRUE(pages.ok());
  DmaConstraints c = kernel_env().dma->default_constraints();
  c.force_bounce = true;
  size_t live = live_slots();
#if DMA_STATS  // KernelDmaOp::stats() counts only with DMA_STATS.
  KernelDmaOp::Stats before = kernel_env().dma->stats();
#endif
  for (DmaDirection d : kDirs) {
    for (size_t size : kSizes) {
      bool bounced = false;
      transfer(ktest_ctx, c, pages.va() + 3, size, d, &bounced);
      KEXPECT_TRUE(bounced);
    }
  }
  KEXPECT_EQ(live_slots(), live);
#if DMA_STATS
  KernelDmaOp::Stats after = kernel_env().dma->stats();
  KEXPECT_EQ(after.bounced_maps - before.bounced_maps, 12u);
  KEXPECT_EQ(after.live_maps, 0u);
#endif
}

// The bus offset is added to the DMA address and honoured by the mask.
KTEST(dma_map_bus_offset) {
  Pages pages(0);
  KREQUIRE_TRUE(pages.ok());
  DmaConstraints c = kernel_env().dma->default_constraints();
  c.bus_offset = 0x1000'0000;
  auto h = kernel_env().dma->map_single(c, pages.va(), 512, 0, DmaDirection::kToDevice);
  KREQUIRE_OK(h);
  KEXPECT_FALSE(h->bounced());
  KEXPECT_EQ(h->dma_addr.value(), pages.phys().value() + 0x1000'0000);
  kernel_env().dma->unmap_single(*h);
}

// A mask ending just above the dma32 pool: buffers above it bounce into the pool, buffers below
// it go direct.
KTEST(dma_map_mask_decides_bounce) {
  BouncePool* pool = ktest_util::pool_named("dma32");
  KREQUIRE_TRUE(pool != nullptr);
  uint64_t mask = pool->base().value() + pool->bytes() - 1;
  DmaConstraints c = kernel_env().dma->default_constraints();
  c.dma_mask = mask;
  auto above = ktest_util::alloc_above(1, mask);
  KREQUIRE_OK(above);  // Nearly all RAM lies above the pool.
  PhysAddr high = *above;
  auto* buf = static_cast<uint8_t*>(kernel_env().phys_to_virt(high));
  for (DmaDirection d : kDirs) {
    bool bounced = false;
    transfer(ktest_ctx, c, buf + 5, 6000, d, &bounced);
    KEXPECT_TRUE(bounced);
  }
  KEXPECT_OK(kernel_env().pfa->free(high, 1));
  Pages low(0, mask);
  if (low.ok()) {
    for (DmaDirection d : kDirs) {
      bool bounced = true;
      transfer(ktest_ctx, c, low.va(), 4096, d, &bounced);
      KEXPECT_FALSE(bounced);
    }
  }
}

// A 32-bit device: direct when the buffer lies below 4 GiB, bounced when RAM above 4 GiB holds it
// (QEMU_MEM=4G or more).
KTEST(dma_map_32bit_device) {
  DmaConstraints c = kernel_env().dma->default_constraints();
  c.dma_mask = 0xFFFF'FFFFull;
  bool ram_above = ktest_util::ram_top() > (1ull << 32);
  // Above 4 GiB when RAM is there, else any page.
  auto pa = ktest_util::alloc_above(0, ram_above ? c.dma_mask : 0);
  KREQUIRE_OK(pa);
  auto* buf = static_cast<uint8_t*>(kernel_env().phys_to_virt(*pa));
  for (DmaDirection d : kDirs) {
    bool bounced = !ram_above;
    transfer(ktest_ctx, c, buf, 4096, d, &bounced);
    KEXPECT_EQ(bounced, ram_above);
  }
  KEXPECT_OK(kernel_env().pfa->free(*pa, 0));
}

// A 28-bit device (QEMU edu's default mask): bounced through a pool below 256 MiB if one exists,
// else a clear kDmaMaskNotMatch naming the address and the mask, with nothing allocated.
KTEST(dma_map_28bit_device) {
  DmaConstraints c = kernel_env().dma->default_constraints();
  c.dma_mask = 0x0FFF'FFFFull;
  auto pa = ktest_util::alloc_above(0, c.dma_mask);
  KREQUIRE_OK(pa);
  auto* buf = static_cast<uint8_t*>(kernel_env().phys_to_virt(*pa));
  BouncePool* low = ktest_util::pool_named("dma28");
  size_t live = live_slots();
  if (low != nullptr) {
    bool bounced = false;
    transfer(ktest_ctx, c, buf, 3000, DmaDirection::kBidirectional, &bounced);
    KEXPECT_TRUE(bounced);
  } else {
    auto h = kernel_env().dma->map_single(c, buf, 3000, 0, DmaDirection::kToDevice);
    KEXPECT_ERR(h, ErrorCode::kDmaMaskNotMatch);
    if (!h.ok()) {
      KEXPECT_EQ(h.error().mask, c.dma_mask);
      KEXPECT_EQ(h.error().addr, pa->value() + 3000 - 1);
    }
  }
  KEXPECT_EQ(live_slots(), live);
  KEXPECT_OK(kernel_env().pfa->free(*pa, 0));
}

KTEST(dma_map_bad_requests_change_nothing) {
  KernelDmaOp* op = kernel_env().dma;
  Pages pages(0);
  KREQUIRE_TRUE(pages.ok());
  DmaConstraints c = op->default_constraints();
  KernelDmaOp::Stats before = op->stats();
  size_t live = live_slots();
  KEXPECT_ERR(op->map_single(c, pages.va(), 0, 0, DmaDirection::kToDevice),
              ErrorCode::kLayoutError);
  KEXPECT_ERR(op->map_single(c, pages.va(), 64, 3, DmaDirection::kToDevice),
              ErrorCode::kLayoutError);
  DmaConstraints zero = c;
  zero.dma_mask = 0;
  KEXPECT_ERR(op->map_single(zero, pages.va(), 64, 0, DmaDirection::kToDevice),
              ErrorCode::kInvalidArgument);
  // Not a direct-map address.
  auto* outside = reinterpret_cast<void*>(kernel_env().direct_map_offset - 4096);
  KEXPECT_ERR(op->map_single(c, outside, 64, 0, DmaDirection::kToDevice),
              ErrorCode::kInvalidArgument);
  // Wrapping range.
  KEXPECT_ERR(op->map_single(c, reinterpret_cast<void*>(~uintptr_t{0} - 10), 64, 0,
                             DmaDirection::kToDevice),
              ErrorCode::kLayoutError);
  KEXPECT_EQ(op->stats().live_maps, before.live_maps);
  KEXPECT_EQ(op->stats().maps, before.maps);
  KEXPECT_EQ(live_slots(), live);
}

KTEST(dma_map_sync_calls) {
  KernelDmaOp* op = kernel_env().dma;
  Pages pages(1);
  KREQUIRE_TRUE(pages.ok());
  DmaConstraints c = op->default_constraints();
  c.force_bounce = true;
  uint8_t* buf = pages.va();
  ktest_util::fill_pattern(buf, 8192, kCpuSeed);
  auto h = op->map_single(c, buf, 8192, 0, DmaDirection::kBidirectional);
  KREQUIRE_OK(h);
  // The CPU changes the second half and hands it to the device again.
  ktest_util::fill_pattern(buf + 4096, 4096, 5);
  KEXPECT_OK(op->confirm_write(*h, 4096, 4096, DmaDirection::kBidirectional));
  KEXPECT_EQ(ktest_util::check_pattern(device_view(h->dma_addr) + 4096, 4096, 5), 4096u);
  // The device writes the first half; the CPU looks at it before unmapping.
  device_write_pattern(h->dma_addr, 4096, kDevSeed);
  KEXPECT_OK(op->prepare_read(*h, 0, 4096, DmaDirection::kBidirectional));
  KEXPECT_EQ(ktest_util::check_pattern(buf, 4096, kDevSeed), 4096u);
  KEXPECT_ERR(op->prepare_read(*h, 4096, 4097, DmaDirection::kBidirectional),
              ErrorCode::kOutOfRange);
  KEXPECT_ERR(op->confirm_write(*h, 8193, 0, DmaDirection::kBidirectional), ErrorCode::kOutOfRange);
  op->unmap_single(*h);
}

KTEST(dma_coherent_allocations_on_the_direct_map) {
  const KernelEnv& env = kernel_env();
  KernelDmaOp* op = env.dma;
  uint64_t free_before = env.pfa->free_pages();
  const size_t sizes[] = {1, 4096, 5000, 65536, 1u << 20};
  const uint64_t masks[] = {~0ull, 0xFFFF'FFFFull,
                            env.pfa->lowest_address().value() + (64ull << 20)};
  for (uint64_t mask : masks) {
    for (size_t size : sizes) {
      DmaConstraints c = op->default_constraints();
      c.dma_mask = mask;
      // Dirty the memory first, so that "zeroed" means the allocation zeroed it.
      auto first = op->alloc_coherent(c, Layout{size, 1});
      KREQUIRE_OK(first);
      support::fill_bytes(first->cpu_addr, 0xA5, size);
      op->dealloc_coherent(*first);
      auto h = op->alloc_coherent(c, Layout{size, 1});
      KREQUIRE_OK(h);
      KEXPECT_EQ(reinterpret_cast<uintptr_t>(h->cpu_addr),
                 reinterpret_cast<uintptr_t>(env.phys_to_virt(h->phys)));
      KEXPECT_EQ(h->dma_addr.value(), h->phys.value());
      KEXPECT_LE(h->phys.value() + size - 1, mask);
      KEXPECT_TRUE(support::is_aligned(h->phys.value(), 4096));
      KEXPECT_TRUE(env.in_ram(h->phys, size));
      KEXPECT_FALSE(env.overlaps_reserved(h->phys, size));
      KEXPECT_TRUE(arch::mapping_attribute(h->cpu_addr) != nullptr);
      const auto* b = static_cast<const uint8_t*>(h->cpu_addr);
      size_t nonzero = 0;
      for (size_t i = 0; i < size; ++i) nonzero += b[i] != 0;
      KEXPECT_EQ(nonzero, 0u);
      op->dealloc_coherent(*h);
    }
  }
  // Alignment above the page size.
  auto a = op->alloc_coherent(~0ull, Layout{4096, 1u << 20});
  KREQUIRE_OK(a);
  KEXPECT_TRUE(support::is_aligned(a->phys.value(), 1u << 20));
  op->dealloc_coherent(*a);
  KEXPECT_EQ(env.pfa->free_pages(), free_before);
  KEXPECT_EQ(op->stats().coherent_live, 0u);
}

KTEST(dma_coherent_bad_requests) {
  const KernelEnv& env = kernel_env();
  KernelDmaOp* op = env.dma;
  uint64_t free_before = env.pfa->free_pages();
  KEXPECT_ERR(op->alloc_coherent(~0ull, Layout{0, 1}), ErrorCode::kLayoutError);
  KEXPECT_ERR(op->alloc_coherent(~0ull, Layout{64, 3}), ErrorCode::kLayoutError);
  KEXPECT_ERR(op->alloc_coherent(~0ull, Layout{(4096u << PageFrameAllocator::kMaxOrder) + 1, 1}),
              ErrorCode::kLayoutError);
  uint64_t below_all = env.pfa->lowest_address().value() - 1;
  auto r = op->alloc_coherent(below_all, Layout{64, 1});
  KEXPECT_ERR(r, ErrorCode::kDmaMaskNotMatch);
  if (!r.ok()) KEXPECT_EQ(r.error().mask, below_all);
  KEXPECT_EQ(env.pfa->free_pages(), free_before);
}
