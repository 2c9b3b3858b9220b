// Bounce pools that grow on demand (issue 15, item 7), on the booted kernel: the test kernel's
// DmaOp grows (kernel_main: two spare pools, 256 KiB steps, 2 MiB at most). A filler device fills
// every fixed pool a 32-bit device reaches; the next mappings land in grown memory under the mask;
// the edu device moves data through it both ways; once everything is unmapped, trimming gives
// every grown page back to the allocator.
#include "drivers/edu/edu_device.h"
#include "testkernel/devices.h"
#include "testkernel/iommu.h"
#include "testkernel/kernel_env.h"
#include "tests/qemu/ktest.h"
#include "tests/qemu/test_util.h"

namespace {

using ktest_util::kPage;
using ktest_util::Pages;
constexpr uint64_t kMask32 = 0xFFFF'FFFFull;

// Whether [a, a + size) lies in one of the kernel's fixed bounce pools.
bool in_fixed_pool(DmaAddr a, size_t size) {
  const KernelEnv& env = kernel_env();
  for (size_t i = 0; i < env.num_pools; ++i) {
    const BouncePool* p = env.pools[i];
    if (p->contains(PhysAddr(a.value())) && p->contains(PhysAddr(a.value() + size - 1))) {
      return true;
    }
  }
  return false;
}

Result<void> bind_edu32(EduDevice* edu) {
  auto devs = devices_init(kernel_env());
  if (!devs.ok()) return ErrorCode::kNotFound;
  Devices* d = *devs;
  const Devices::Edu* e = d->edu_with_mask(kMask32);
  if (e == nullptr) return ErrorCode::kNotFound;
  DeviceDma dma(iommu::dma_op_for(e->dev), e->dma_mask);
  dma.set_name("edu-32bit");
  return edu->init(e->dev, dma);
}

}  // namespace

KTEST_WHEN(bounce_growth_edu_through_grown_pool_then_trimmed, iommu::inactive) {
  const KernelEnv& env = kernel_env();
  KernelDmaOp* op = env.dma;
  KREQUIRE_TRUE(op->config().max_grown_pools > 0);
  EduDevice edu;
  KREQUIRE_OK(bind_edu32(&edu));
  edu.dma().set_force_bounce(true);
  Pages big(6);    // 256 KiB, the filler's buffer.
  Pages store(5);  // Room for the filler's mappings (StreamingMapping is RAII; no heap here).
  Pages src(0);
  Pages back(0);
  KREQUIRE_TRUE(big.ok() && store.ok() && src.ok() && back.ok());
  KREQUIRE_OK(op->trim_bounce_pools());  // Whatever earlier tests left grown.
  const KernelDmaOp::Stats s0 = op->stats();
  KEXPECT_EQ(s0.grown_bytes, 0u);
  const uint64_t free0 = env.pfa->free_pages();

  // Fill every fixed pool the 32-bit device reaches: 256 KiB mappings, then single slots, each
  // size until a mapping lands outside the fixed pools (in grown memory).
  DeviceDma filler(env.dma, kMask32);
  filler.set_force_bounce(true);
  filler.set_name("grow-filler");
  auto* maps = reinterpret_cast<StreamingMapping*>(store.va());
  const size_t max_maps = store.bytes() / sizeof(StreamingMapping);
  size_t n = 0;
  size_t grown_maps = 0;
  const size_t sizes[] = {256 * 1024, BouncePool::kDefaultSlotSize};
  for (size_t size : sizes) {
    while (n < max_maps) {
      auto m = filler.map(big.va(), size, DmaDirection::kToDevice);
      KREQUIRE_OK(m);
      bool fixed = in_fixed_pool(m->dma_addr(), size);
      KEXPECT_LE(m->dma_addr().value() + size - 1, kMask32);
      // The device's view of the slot holds the buffer's bytes.
      KEXPECT_EQ(
          support::compare_bytes(env.phys_to_virt(PhysAddr(m->dma_addr().value())), big.va(), size),
          0);
      new (&maps[n++]) StreamingMapping(support::move(*m));
      if (!fixed) {
        ++grown_maps;
        break;
      }
    }
  }
  KEXPECT_EQ(grown_maps, 2u);
  const KernelDmaOp::Stats s1 = op->stats();
  KEXPECT_GE(s1.grow_events, s0.grow_events + 1);
  KEXPECT_GT(s1.grown_bytes, 0u);
  KEXPECT_LE(s1.grown_bytes, op->config().grow_limit);
  KEXPECT_LT(env.pfa->free_pages(), free0);

  // The edu device through grown memory, both ways.
  ktest_util::fill_pattern(src.va(), kPage, 77);
  auto to = edu.copy_to_device(src.va(), kPage);
  KEXPECT_OK(to);
  if (to.ok()) {
    KEXPECT_TRUE(to->bounced);
    KEXPECT_FALSE(in_fixed_pool(to->dma_addr, kPage));
  }
  support::fill_bytes(back.va(), 0, kPage);
  auto from = edu.copy_from_device(back.va(), kPage);
  KEXPECT_OK(from);
  if (from.ok()) KEXPECT_FALSE(in_fixed_pool(from->dma_addr, kPage));
  KEXPECT_EQ(ktest_util::check_pattern(back.va(), kPage, 77), kPage);

  for (size_t i = 0; i < n; ++i) maps[i].~StreamingMapping();
  KEXPECT_EQ(filler.check_no_mappings(), 0u);
  auto trimmed = op->trim_bounce_pools();
  KEXPECT_OK(trimmed);
  const KernelDmaOp::Stats s2 = op->stats();
  KEXPECT_EQ(s2.grown_bytes, 0u);
  KEXPECT_EQ(s2.shrink_events - s0.shrink_events, s2.grow_events - s0.grow_events);
  KEXPECT_EQ(env.pfa->free_pages(), free0);
}
