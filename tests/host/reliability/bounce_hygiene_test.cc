// Bounce-buffer and coherent-memory hygiene: memory handed to a device never shows it (or, after
// the DMA, the CPU) bytes left there by another mapping or allocation.
//
// The leak being guarded against is Linux's 2022 swiotlb one: a kFromDevice mapping took a slot
// without filling it, so a device that wrote less than the whole buffer left the previous user's
// bytes in the slot, and unmap copied them into the new owner's buffer. Here the slot is filled
// from the original buffer at map time for every direction, so the bytes the device did not write
// come back as the original's; coherent allocations come zeroed whatever their memory held.
#include <gtest/gtest.h>

#include <cstring>
#include <vector>

#include "arch/host/host_platform.h"
#include "dmakit/device_dma.h"
#include "dmakit/dma_pool.h"
#include "dmakit/scatter_gather.h"

namespace {

constexpr uint64_t kMask30 = (1ull << 30) - 1;

HostPlatform::Options options() {
  HostPlatform::Options o;
  o.ram.push_back(PhysRange{PhysAddr(0x3C00'0000), 128ull << 20});
  o.pools.push_back(HostPlatform::PoolSpec{4ull << 20, kMask30});
  return o;
}

uint8_t original(size_t i) {
  return static_cast<uint8_t>(i * 7 + 3);
}

// Parameter: whether the device snoops the CPU caches.
class BounceHygieneTest : public testing::TestWithParam<bool> {
 protected:
  BounceHygieneTest()
      : plat_(options()), dev_(&plat_.op(), kMask30), hw_(&plat_, kMask30, GetParam()) {
    dev_.set_coherent(GetParam());
    dev_.set_name("hygiene");
  }
  void TearDown() override {
    for (auto& b : held_) ASSERT_TRUE(plat_.pfa().free(PhysAddr(b.first), b.second).ok());
  }
  // A buffer above 1 GiB (bounced for the 30-bit device) holding the original pattern.
  uint8_t* high_buffer(size_t bytes, uint8_t fill = 0, bool pattern = true) {
    unsigned order = PageFrameAllocator::order_for(bytes);
    for (;;) {
      auto pa = plat_.pfa().alloc(order);
      EXPECT_TRUE(pa.ok());
      held_.push_back({pa->value(), order});
      if (pa->value() > kMask30) {
        uint8_t* p = plat_.phys_to_virt(pa->value());
        for (size_t i = 0; i < bytes; ++i) p[i] = pattern ? original(i) : fill;
        return p;
      }
    }
  }
  uint8_t* low_buffer(size_t bytes) {
    unsigned order = PageFrameAllocator::order_for(bytes);
    auto pa = plat_.pfa().alloc(order, kMask30);
    EXPECT_TRUE(pa.ok());
    held_.push_back({pa->value(), order});
    uint8_t* p = plat_.phys_to_virt(pa->value());
    for (size_t i = 0; i < bytes; ++i) p[i] = original(i);
    return p;
  }
  // Leaves `fill` in the slot a mapping of `size` bytes would take next: maps a buffer full of it
  // for the device, lets the device read it, unmaps. Returns the slot's DMA address.
  DmaAddr dirty_next_slot(size_t size, uint8_t fill) {
    uint8_t* other = high_buffer(size, fill, false);
    auto m = dev_.map(other, size, DmaDirection::kBidirectional);
    EXPECT_TRUE(m.ok());
    if (!m.ok()) return DmaAddr();
    std::vector<uint8_t> seen(size);
    hw_.read(m->dma_addr(), seen.data(), size);
    EXPECT_EQ(seen, std::vector<uint8_t>(size, fill));
    hw_.fill(m->dma_addr(), fill, size);  // And the device wrote it too.
    return m->dma_addr();
  }

  // Leaves `fill` in every byte of the bounce pool, through mappings of the largest size a
  // mapping may have that together take the whole pool.
  void dirty_whole_pool(uint8_t fill) {
    size_t bytes = plat_.pool(0).bytes();
    size_t chunk = plat_.pool(0).max_mapping_size();
    ASSERT_EQ(bytes % chunk, 0u);
    DeviceDma plain(&plat_.op(), kMask30);
    plain.set_coherent(GetParam());
    std::vector<StreamingMapping> maps;
    for (size_t done = 0; done < bytes; done += chunk) {
      uint8_t* other = high_buffer(chunk, fill, false);
      auto m = plain.map(other, chunk, DmaDirection::kBidirectional);
      ASSERT_TRUE(m.ok());
      hw_.fill(m->dma_addr(), fill, chunk);
      maps.push_back(std::move(*m));
    }
    ASSERT_EQ(plat_.pool(0).stats().used_slots, plat_.pool(0).stats().total_slots);
  }

  HostPlatform plat_;
  DeviceDma dev_;
  HostDevice hw_;
  std::vector<std::pair<uint64_t, unsigned>> held_;
};

INSTANTIATE_TEST_SUITE_P(Coherence, BounceHygieneTest, testing::Values(false, true),
                         [](const testing::TestParamInfo<bool>& i) {
                           return i.param ? "CoherentDevice" : "NonCoherentDevice";
                         });

TEST_P(BounceHygieneTest, ShortDeviceWriteLeavesTheOriginalsBytesNotTheLastUsers) {
  for (DmaDirection dir : {DmaDirection::kFromDevice, DmaDirection::kBidirectional}) {
    SCOPED_TRACE(dma_direction_name(dir));
    DmaAddr dirty = dirty_next_slot(8192, 0xAA);
    uint8_t* buf = high_buffer(8192);
    auto m = dev_.map(buf, 8192, dir);
    ASSERT_TRUE(m.ok());
    ASSERT_TRUE(m->bounced());
    ASSERT_EQ(m->dma_addr(), dirty) << "the test needs the slot the other mapping used";
    // What the device sees before it writes is the original, not the other mapping's 0xAA.
    std::vector<uint8_t> seen(8192);
    hw_.read(m->dma_addr(), seen.data(), seen.size());
    for (size_t i = 0; i < seen.size(); ++i) ASSERT_EQ(seen[i], original(i)) << i;
    hw_.fill(m->dma_addr() + 1000, 0x5C, 100);  // The device writes 100 of 8192 bytes.
    m->unmap();
    for (size_t i = 0; i < 8192; ++i) {
      uint8_t want = i >= 1000 && i < 1100 ? 0x5C : original(i);
      ASSERT_EQ(buf[i], want) << "byte " << i;
    }
  }
}

TEST_P(BounceHygieneTest, DeviceThatWritesNothingLeavesTheBufferUnchanged) {
  DmaAddr dirty = dirty_next_slot(4096, 0xBB);
  uint8_t* buf = high_buffer(4096);
  auto m = dev_.map(buf, 4096, DmaDirection::kFromDevice);
  ASSERT_TRUE(m.ok());
  ASSERT_EQ(m->dma_addr(), dirty);
  m->unmap();
  for (size_t i = 0; i < 4096; ++i) ASSERT_EQ(buf[i], original(i)) << i;
}

TEST_P(BounceHygieneTest, PreservedOffsetInTheSlotIsFilledToo) {
  // An NVMe-like device keeps the low 11 bits of the buffer's address in the slot.
  dev_.set_min_align_mask(0x7FF);
  dirty_whole_pool(0xCC);
  uint8_t* page = high_buffer(8192);
  uint8_t* buf = page + 0x321;
  auto m = dev_.map(buf, 3000, DmaDirection::kFromDevice);
  ASSERT_TRUE(m.ok());
  ASSERT_EQ(m->dma_addr().value() & 0x7FF, 0x321u);
  hw_.fill(m->dma_addr() + 2990, 0x01, 10);
  m->unmap();
  for (size_t i = 0; i < 3000; ++i) {
    ASSERT_EQ(buf[i], i >= 2990 ? 0x01 : original(i + 0x321)) << i;
  }
}

TEST_P(BounceHygieneTest, PartialSyncForCpuShowsOnlyWhatTheDeviceWrote) {
  dirty_next_slot(4096, 0xDD);
  uint8_t* buf = high_buffer(4096);
  auto m = dev_.map(buf, 4096, DmaDirection::kBidirectional);
  ASSERT_TRUE(m.ok());
  hw_.fill(m->dma_addr(), 0x77, 16);
  ASSERT_TRUE(m->sync_for_cpu(0, 512).ok());
  for (size_t i = 0; i < 512; ++i) ASSERT_EQ(buf[i], i < 16 ? 0x77 : original(i)) << i;
}

TEST_P(BounceHygieneTest, ScatterGatherBouncedEntriesKeepTheOriginalsBytes) {
  dirty_next_slot(16384, 0xEE);
  uint8_t* hi = high_buffer(16384);
  SgEntry e[] = {{hi, 5000}, {hi + 6000, 5000}};
  SgList<2> sg;
  ASSERT_TRUE(sg.map(dev_, e, DmaDirection::kFromDevice).ok());
  hw_.fill(sg.segments()[0].addr + 10, 0x42, 10);
  sg.mapping().unmap();
  for (size_t i = 0; i < 16384; ++i) {
    ASSERT_EQ(hi[i], i >= 10 && i < 20 ? 0x42 : original(i)) << i;
  }
}

TEST_P(BounceHygieneTest, DirectFromDeviceShortWriteLeavesTheOriginalsBytes) {
  uint8_t* buf = low_buffer(4096);
  plat_.op().flush(buf, 4096);  // The original is in memory as well as in the cache.
  auto m = dev_.map(buf + 64, 2048, DmaDirection::kFromDevice);
  ASSERT_TRUE(m.ok());
  ASSERT_FALSE(m->bounced());
  hw_.fill(m->dma_addr() + 100, 0x99, 50);
  m->unmap();
  for (size_t i = 64; i < 64 + 2048; ++i) {
    ASSERT_EQ(buf[i], i >= 164 && i < 214 ? 0x99 : original(i)) << i;
  }
}

TEST_P(BounceHygieneTest, ManyReusedSlotsNeverLeakAnotherMappingsBytes) {
  // A deterministic mix of sizes and offsets; every mapping's device writes only part of it, and
  // every byte it did not write must come back as that buffer's own original.
  dirty_whole_pool(0xC3);
  uint8_t* area = high_buffer(256 * 1024, 0, false);
  uint64_t rng = 0x1234'5678'9ABC'DEF1ull;
  auto next = [&rng](uint64_t n) {
    rng ^= rng << 13;
    rng ^= rng >> 7;
    rng ^= rng << 17;
    return rng % n;
  };
  for (int round = 0; round < 200; ++round) {
    SCOPED_TRACE(round);
    size_t size = 1 + next(20000);
    size_t off = next(256 * 1024 - size);
    uint8_t* buf = area + off;
    uint8_t salt = static_cast<uint8_t>(round);
    for (size_t i = 0; i < size; ++i) buf[i] = static_cast<uint8_t>(original(i) ^ salt);
    auto m =
        dev_.map(buf, size, next(2) ? DmaDirection::kFromDevice : DmaDirection::kBidirectional);
    ASSERT_TRUE(m.ok());
    size_t w_off = next(size);
    size_t w_len = next(size - w_off + 1);
    if (w_len > 0) hw_.fill(m->dma_addr() + w_off, 0xF0, w_len);
    m->unmap();
    for (size_t i = 0; i < size; ++i) {
      uint8_t want =
          i >= w_off && i < w_off + w_len ? 0xF0 : static_cast<uint8_t>(original(i) ^ salt);
      ASSERT_EQ(buf[i], want) << "byte " << i << " of " << size;
    }
  }
  EXPECT_EQ(plat_.pool(0).stats().used_slots, 0u);
}

// ---- Coherent memory comes zeroed, even when its pages held data before ----

TEST_P(BounceHygieneTest, CoherentMemoryIsZeroedAfterReuse) {
  auto first = plat_.op().alloc_coherent(dev_.constraints(), Layout{8192, 1});
  ASSERT_TRUE(first.ok());
  auto* p = static_cast<uint8_t*>(first->cpu_addr);
  std::memset(p, 0xFF, 8192);  // The CPU writes it...
  // ...the cache writes it back (the host model cannot see a later write that puts back the
  // last-synchronised value, so the old data must differ from what was last synchronised)...
  plat_.op().flush(p, 8192);
  hw_.fill(first->dma_addr + 100, 0xEE, 100);  // ...and the device writes memory.
  PhysAddr where = first->phys;
  plat_.op().dealloc_coherent(*first);
  auto again = plat_.op().alloc_coherent(dev_.constraints(), Layout{8192, 1});
  ASSERT_TRUE(again.ok());
  ASSERT_EQ(again->phys, where) << "the test needs the same pages again";
  auto* q = static_cast<uint8_t*>(again->cpu_addr);
  for (size_t i = 0; i < 8192; ++i) ASSERT_EQ(q[i], 0) << "CPU view, byte " << i;
  std::vector<uint8_t> seen(8192, 1);
  hw_.read(again->dma_addr, seen.data(), seen.size());
  for (size_t i = 0; i < 8192; ++i) ASSERT_EQ(seen[i], 0) << "device view, byte " << i;
  plat_.op().dealloc_coherent(*again);
}

TEST_P(BounceHygieneTest, CoherentMemoryIsZeroedWhenABlockIsReusedInPieces) {
  auto big = plat_.op().alloc_coherent(dev_.constraints(), Layout{64 * 1024, 64 * 1024});
  ASSERT_TRUE(big.ok());
  std::memset(big->cpu_addr, 0xA5, 64 * 1024);
  plat_.op().flush(big->cpu_addr, 64 * 1024);  // Memory holds it too.
  uint64_t lo = big->phys.value();
  uint64_t hi = lo + 64 * 1024;
  plat_.op().dealloc_coherent(*big);
  std::vector<DmaHandle> pieces;
  for (int i = 0; i < 64; ++i) {
    auto h = plat_.op().alloc_coherent(dev_.constraints(), Layout{1000, 1});
    ASSERT_TRUE(h.ok());
    pieces.push_back(*h);
  }
  int inside = 0;
  for (const DmaHandle& h : pieces) {
    if (h.phys.value() >= lo && h.phys.value() < hi) ++inside;
    auto* q = static_cast<uint8_t*>(h.cpu_addr);
    for (size_t i = 0; i < 4096; ++i) ASSERT_EQ(q[i], 0) << i;
    std::vector<uint8_t> seen(4096, 1);
    hw_.read(h.dma_addr, seen.data(), seen.size());
    for (size_t i = 0; i < 4096; ++i) ASSERT_EQ(seen[i], 0) << i;
  }
  EXPECT_GT(inside, 0) << "none of the pieces reused the freed block";
  for (const DmaHandle& h : pieces) plat_.op().dealloc_coherent(h);
}

TEST_P(BounceHygieneTest, TypedContainersAndPoolBlocksComeZeroedAfterReuse) {
  for (int round = 0; round < 3; ++round) {
    auto arr = dev_.alloc_array<uint32_t>(2048);
    ASSERT_TRUE(arr.ok());
    for (size_t i = 0; i < arr->size(); ++i) ASSERT_EQ(arr->read(i), 0u) << round << " " << i;
    for (size_t i = 0; i < arr->size(); ++i) arr->write(i, 0xDEAD'BEEF);
  }
  DmaPool pool;
  ASSERT_TRUE(pool.init(&dev_, 100, 16).ok());
  for (int round = 0; round < 3; ++round) {
    auto b = pool.alloc();
    ASSERT_TRUE(b.ok());
    auto* p = static_cast<uint8_t*>(b->cpu);
    for (size_t i = 0; i < 100; ++i) ASSERT_EQ(p[i], 0) << round << " " << i;
    std::memset(p, 0x6B, 100);
    ASSERT_TRUE(pool.free(b->cpu).ok());
  }
}

}  // namespace
