// Regressions found by the fuzzers (tests/fuzz/), kept as plain tests so they stay fixed.
#include <gtest/gtest.h>

#include <cstring>
#include <vector>

#include "arch/host/host_platform.h"
#include "dmakit/kernel_dma_op.h"

namespace {

constexpr uint64_t kMask32 = 0xFFFF'FFFFull;

// fuzz_dma_mapping: a bounced mapping for a device whose bus offset is not a multiple of the
// requested alignment came back aligned in physical address space but not in the device's: the
// alignment must hold for the DMA address, as it does on the direct path.
TEST(MappingRegression, BouncedMappingIsAlignedInTheDevicesAddressSpace) {
  HostPlatform plat(HostPlatform::default_options());
  auto pa = plat.pfa().alloc(1);
  ASSERT_TRUE(pa.ok());
  uint8_t* buf = plat.phys_to_virt(pa->value());
  for (size_t i = 0; i < 5000; ++i) buf[i] = static_cast<uint8_t>(i * 3);
  for (uint64_t offset : {0x800ull, 0x40ull, 0x1000'0800ull}) {
    for (size_t align : {size_t{64}, size_t{2048}, size_t{4096}}) {
      SCOPED_TRACE(testing::Message() << "bus offset " << offset << ", align " << align);
      DmaConstraints c;
      c.dma_mask = kMask32 + offset;  // The pool stays reachable with the offset added.
      c.bus_offset = offset;
      c.force_bounce = true;
      auto m = plat.op().map_single(c, buf + 7, 5000, align, DmaDirection::kToDevice);
      ASSERT_TRUE(m.ok());
      EXPECT_EQ(m->dma_addr.value() % align, 0u);
      HostDevice dev(&plat, c.dma_mask, false, offset);
      std::vector<uint8_t> seen(5000);
      dev.read(m->dma_addr, seen.data(), seen.size());
      EXPECT_EQ(std::memcmp(seen.data(), buf + 7, 5000), 0);
      plat.op().unmap_single(*m);
    }
  }
  EXPECT_EQ(plat.pool(0).stats().used_slots, 0u);
  ASSERT_TRUE(plat.pfa().free(*pa, 1).ok());
}

// The same rule with min_align_mask: the preserved low bits and the alignment of the DMA address
// are met together, and a request where they contradict each other is a layout error.
TEST(MappingRegression, PreservedBitsAndDeviceAlignmentTogether) {
  HostPlatform plat(HostPlatform::default_options());
  auto pa = plat.pfa().alloc(2);
  ASSERT_TRUE(pa.ok());
  uint8_t* page = plat.phys_to_virt(pa->value());
  DmaConstraints c;
  c.dma_mask = kMask32 + 0x800;
  c.bus_offset = 0x800;
  c.force_bounce = true;
  c.min_align_mask = 0xFFF;
  // The buffer's bits under 0xFFF are 0x800, and 0x800 + bus offset 0x800 = 0x1000: a DMA address
  // aligned to 4 KiB keeps them.
  auto ok = plat.op().map_single(c, page + 0x800, 3000, 4096, DmaDirection::kToDevice);
  ASSERT_TRUE(ok.ok());
  EXPECT_EQ(ok->dma_addr.value() % 4096, 0u);
  EXPECT_EQ((ok->dma_addr.value() - 0x800) & 0xFFF, 0x800u);
  plat.op().unmap_single(*ok);
  // Bits 0x100 cannot both be kept and give a 4 KiB-aligned device address.
  auto bad = plat.op().map_single(c, page + 0x100, 3000, 4096, DmaDirection::kToDevice);
  EXPECT_EQ(bad.code(), ErrorCode::kLayoutError);
  // A min_align_mask not of the form 2^k - 1 is refused, as BouncePool::alloc refuses it.
  c.min_align_mask = 0x5;
  EXPECT_EQ(plat.op().map_single(c, page, 64, 0, DmaDirection::kToDevice).code(),
            ErrorCode::kLayoutError);
  EXPECT_EQ(plat.pool(0).stats().used_slots, 0u);
#if DMA_STATS  // KernelDmaOp::stats() counts only with DMA_STATS.
  EXPECT_EQ(plat.op().stats().live_maps, 0u);
#endif
  ASSERT_TRUE(plat.pfa().free(*pa, 2).ok());
}

}  // namespace
