// Fault-injection sweeps: every path that allocates is run once to count the calls it makes at
// each fault site (FaultInjector::hits), then once per call with exactly that call failing. Each
// failing run must return the error, and leave every piece of accounting where it started: free
// pages (and the allocator's invariants), bounce slots in use (and the pool's invariants), live
// mappings and coherent allocations of the DmaOp, and entries of the misuse checker's table. The
// unarmed run also proves the path undoes itself when it succeeds.
//
// The kPageAlloc and kBounceSlot sites sit in mm/ (PageFrameAllocator::alloc, BouncePool::alloc):
// a sweep that expects those sites to be reached fails if they are missing.
#include <gtest/gtest.h>

#include <cstring>
#include <vector>

#include "arch/host/host_platform.h"
#include "dmakit/device_dma.h"
#include "dmakit/dma_buffer_pool.h"
#include "dmakit/dma_debug.h"
#include "dmakit/dma_pool.h"
#include "dmakit/scatter_gather.h"
#include "dmakit/support/fault_injection.h"

#if DMA_FAULT_INJECTION  // The sweeps need the fault injector (debug builds).

namespace {

using support::FaultInjector;
using support::FaultSite;

constexpr uint64_t kMask30 = (1ull << 30) - 1;

const char* site_name(FaultSite s) {
  switch (s) {
    case FaultSite::kPageAlloc:
      return "page-alloc";
    case FaultSite::kBounceSlot:
      return "bounce-slot";
    case FaultSite::kMapping:
      return "mapping";
    case FaultSite::kCount:
      break;
  }
  return "?";
}

// 128 MiB of RAM straddling 1 GiB, a bounce pool under 1 GiB and one above it (the mapping
// layer uses the first; the second, out of the device's reach, must stay untouched even when the
// first fails, since a full pool falls back only to pools the device reaches): a 30-bit device
// reaches the lower half of RAM directly and bounces the upper half.
HostPlatform::Options options() {
  HostPlatform::Options o;
  o.ram.push_back(PhysRange{PhysAddr(0x3C00'0000), 128ull << 20});
  o.pools.push_back(HostPlatform::PoolSpec{4ull << 20, kMask30});
  o.pools.push_back(HostPlatform::PoolSpec{1ull << 20, 0x7FFF'FFFFull, 512});
  return o;
}

struct Accounting {
  uint64_t free_pages = 0;
  std::vector<uint64_t> used_slots;
  uint64_t live_maps = 0;
  uint64_t coherent_live = 0;
  size_t checker_entries = 0;
  uint64_t checker_reports = 0;
};

class FaultSweepTest : public testing::Test {
 protected:
  FaultSweepTest() : plat_(options()), dev_(&plat_.op(), kMask30) { dev_.set_name("sweep"); }
  ~FaultSweepTest() override { FaultInjector::disarm_all(); }
  void TearDown() override {
    FaultInjector::disarm_all();
    for (auto& b : held_) ASSERT_TRUE(plat_.pfa().free(PhysAddr(b.first), b.second).ok());
  }

  // Buffers the paths map: below 1 GiB (direct for a 30-bit device) or above (bounced).
  uint8_t* low_buffer(size_t bytes) { return buffer(bytes, true); }
  uint8_t* high_buffer(size_t bytes) { return buffer(bytes, false); }
  uint8_t* buffer(size_t bytes, bool low) {
    unsigned order = PageFrameAllocator::order_for(bytes);
    for (;;) {
      auto pa = low ? plat_.pfa().alloc(order, kMask30) : plat_.pfa().alloc(order);
      EXPECT_TRUE(pa.ok());
      if (!pa.ok()) return nullptr;
      held_.push_back({pa->value(), order});
      if (low || pa->value() > kMask30) {
        uint8_t* p = plat_.phys_to_virt(pa->value());
        for (size_t i = 0; i < bytes; ++i) p[i] = static_cast<uint8_t>(i * 13 + 5);
        return p;
      }
    }
  }

  Accounting accounting() {
    Accounting a;
    a.free_pages = plat_.pfa().free_pages();
    for (size_t i = 0; i < plat_.num_pools(); ++i) {
      a.used_slots.push_back(plat_.pool(i).stats().used_slots);
    }
    a.live_maps = plat_.op().stats().live_maps;
    a.coherent_live = plat_.op().stats().coherent_live;
    a.checker_entries = DmaDebug::live_entries();
    a.checker_reports = DmaDebug::total();
    return a;
  }

  void expect_unchanged(const Accounting& a, const char* what) {
    Accounting b = accounting();
    EXPECT_EQ(b.free_pages, a.free_pages) << what;
    EXPECT_EQ(b.used_slots, a.used_slots) << what;
    EXPECT_EQ(b.live_maps, a.live_maps) << what;
    EXPECT_EQ(b.coherent_live, a.coherent_live) << what;
    EXPECT_EQ(b.checker_entries, a.checker_entries) << what;
    EXPECT_EQ(b.checker_reports, a.checker_reports) << what << ": the checker reported a misuse";
    EXPECT_TRUE(plat_.pfa().check_invariants()) << what;
    for (size_t i = 0; i < plat_.num_pools(); ++i) {
      EXPECT_TRUE(plat_.pool(i).check_invariants()) << what << ", pool " << i;
    }
  }

  // Runs `attempt` (which returns kOk after undoing everything it did, or the error it got after
  // undoing what it had done) once unarmed, then with each of its calls at `site` failing in turn.
  // Returns how many calls there were; `min_calls` is how many the path must make at least.
  template <typename F>
  uint64_t sweep(FaultSite site, F attempt, uint64_t min_calls,
                 ErrorCode expected = ErrorCode::kNoMemory) {
    Accounting start = accounting();
    FaultInjector::disarm_all();
    FaultInjector::fail_nth(site, 0);  // Count only.
    ErrorCode clean = attempt();
    uint64_t calls = FaultInjector::hits(site);
    EXPECT_EQ(clean, ErrorCode::kOk) << site_name(site) << ": the unarmed run failed";
    expect_unchanged(start, "after the unarmed run");
    EXPECT_GE(calls, min_calls) << site_name(site) << ": the path did not reach the fault point "
                                << "as often as it must (is FAULT_POINT missing?)";
    for (uint64_t n = 1; n <= calls; ++n) {
      SCOPED_TRACE(testing::Message() << site_name(site) << " call " << n << " of " << calls);
      FaultInjector::disarm_all();
      FaultInjector::fail_nth(site, n);
      ErrorCode got = attempt();
      uint64_t reached = FaultInjector::hits(site);
      FaultInjector::disarm_all();
      EXPECT_GE(reached, n) << "the armed call was never made";
      EXPECT_EQ(got, expected);
      expect_unchanged(start, "after the failing run");
    }
    // And the path works again afterwards.
    EXPECT_EQ(attempt(), ErrorCode::kOk) << site_name(site) << ": no recovery after the sweep";
    expect_unchanged(start, "after the recovery run");
    return calls;
  }

  HostPlatform plat_;
  DeviceDma dev_;
  std::vector<std::pair<uint64_t, unsigned>> held_;
};

// ---- map_single, direct and bounced ----

TEST_F(FaultSweepTest, DirectMapSingle) {
  uint8_t* buf = low_buffer(8192);
  auto attempt = [&]() -> ErrorCode {
    auto m =
        plat_.op().map_single(dev_.constraints(), buf + 64, 6016, 0, DmaDirection::kBidirectional);
    if (!m.ok()) return m.code();
    EXPECT_FALSE(m->bounced());
    plat_.op().unmap_single(*m);
    return ErrorCode::kOk;
  };
  EXPECT_EQ(sweep(FaultSite::kMapping, attempt, 1), 1u);
  EXPECT_EQ(sweep(FaultSite::kBounceSlot, attempt, 0), 0u) << "a direct map takes no slot";
  EXPECT_EQ(sweep(FaultSite::kPageAlloc, attempt, 0), 0u) << "a map takes no page";
}

TEST_F(FaultSweepTest, BouncedMapSingle) {
  uint8_t* buf = high_buffer(8192);
  for (DmaDirection dir :
       {DmaDirection::kToDevice, DmaDirection::kFromDevice, DmaDirection::kBidirectional}) {
    SCOPED_TRACE(dma_direction_name(dir));
    auto attempt = [&]() -> ErrorCode {
      auto m = plat_.op().map_single(dev_.constraints(), buf + 100, 5000, 0, dir);
      if (!m.ok()) return m.code();
      EXPECT_TRUE(m->bounced());
      plat_.op().unmap_single(*m);
      return ErrorCode::kOk;
    };
    EXPECT_EQ(sweep(FaultSite::kMapping, attempt, 1), 1u);
    EXPECT_EQ(sweep(FaultSite::kBounceSlot, attempt, 1), 1u);
    EXPECT_EQ(sweep(FaultSite::kPageAlloc, attempt, 0), 0u);
  }
}

TEST_F(FaultSweepTest, BouncedMapThroughDeviceDmaWithPreservedOffset) {
  uint8_t* buf = high_buffer(16384);
  DeviceDma nvme(&plat_.op(), kMask30);
  nvme.set_min_align_mask(0xFFF);
  auto attempt = [&]() -> ErrorCode {
    auto m = nvme.map(buf + 0x234, 9000, DmaDirection::kFromDevice);
    if (!m.ok()) return m.code();
    EXPECT_EQ(m->dma_addr().value() & 0xFFF, 0x234u);
    return ErrorCode::kOk;  // Unmapped by the RAII object.
  };
  sweep(FaultSite::kMapping, attempt, 1);
  sweep(FaultSite::kBounceSlot, attempt, 1);
}

// ---- alloc_coherent and the typed containers ----

TEST_F(FaultSweepTest, AllocCoherent) {
  for (size_t size : {size_t{100}, size_t{4096}, size_t{40000}, size_t{1} << 20}) {
    SCOPED_TRACE(size);
    auto attempt = [&]() -> ErrorCode {
      auto h = plat_.op().alloc_coherent(dev_.constraints(), Layout{size, 64});
      if (!h.ok()) return h.code();
      plat_.op().dealloc_coherent(*h);
      return ErrorCode::kOk;
    };
    sweep(FaultSite::kPageAlloc, attempt, 1);
    EXPECT_EQ(sweep(FaultSite::kBounceSlot, attempt, 0), 0u);
  }
}

TEST_F(FaultSweepTest, DBoxAndDArray) {
  struct Ring {
    uint64_t slots[64];
  };
  auto attempt = [&]() -> ErrorCode {
    auto box = dev_.alloc_box<Ring>();
    if (!box.ok()) return box.code();
    auto arr = dev_.alloc_array<uint32_t>(3000);
    if (!arr.ok()) return arr.code();
    return ErrorCode::kOk;
  };
  sweep(FaultSite::kPageAlloc, attempt, 2);
}

// ---- scatter-gather ----

TEST_F(FaultSweepTest, ScatterGatherMapOfMixedBuffers) {
  uint8_t* lo = low_buffer(16384);
  uint8_t* hi = high_buffer(16384);
  SgEntry e[] = {{lo, 3000}, {hi, 4096}, {lo + 3000, 1096}, {hi + 8192, 2000}, {lo + 8192, 10}};
  for (DmaDirection dir : {DmaDirection::kToDevice, DmaDirection::kFromDevice}) {
    SCOPED_TRACE(dma_direction_name(dir));
    auto attempt = [&]() -> ErrorCode {
      SgList<5> sg;
      auto r = sg.map(dev_, e, dir);
      if (!r.ok()) return r.code();
      EXPECT_EQ(sg.mapping().num_buffers(), 5u);
      return ErrorCode::kOk;
    };
    EXPECT_EQ(sweep(FaultSite::kMapping, attempt, 5), 5u);
    // From the device, the unaligned low buffers share cache lines with their neighbours on this
    // non-coherent device, so they bounce too.
    size_t bounced = dir == DmaDirection::kToDevice ? 2 : 5;
    EXPECT_EQ(sweep(FaultSite::kBounceSlot, attempt, bounced), bounced);
  }
}

// ---- pools ----

TEST_F(FaultSweepTest, DmaBufferPoolInit) {
  auto attempt = [&]() -> ErrorCode {
    DmaBufferPool pool;
    auto r = pool.init(&dev_, 6, 3000);
    if (!r.ok()) return r.code();
    auto b = pool.acquire();
    EXPECT_TRUE(b.ok());
    return ErrorCode::kOk;
  };
  sweep(FaultSite::kPageAlloc, attempt, 6);
}

TEST_F(FaultSweepTest, DmaPoolAllocAcrossSeveralChunks) {
  // 600-byte blocks, 4 KiB chunks: a handful of blocks per chunk, so 40 blocks need several
  // chunks and each chunk's allocation is one page allocation that may fail.
  auto attempt = [&]() -> ErrorCode {
    DmaPool pool;
    EXPECT_TRUE(pool.init(&dev_, 600, 8).ok());
    std::vector<void*> blocks;
    ErrorCode result = ErrorCode::kOk;
    for (int i = 0; i < 40; ++i) {
      auto b = pool.alloc();
      if (!b.ok()) {
        result = b.code();
        break;
      }
      blocks.push_back(b->cpu);
    }
    for (void* p : blocks) EXPECT_TRUE(pool.free(p).ok());
    return result;
  };
  uint64_t chunks = sweep(FaultSite::kPageAlloc, attempt, 3);
  EXPECT_GE(chunks, 6u);
}

TEST_F(FaultSweepTest, DmaPoolAllocFailureLeavesThePoolUsable) {
  DmaPool pool;
  ASSERT_TRUE(pool.init(&dev_, 2000, 8).ok());
  auto first = pool.alloc();  // One chunk, one block left in it.
  ASSERT_TRUE(first.ok());
  auto second = pool.alloc();
  ASSERT_TRUE(second.ok());
  Accounting before = accounting();
  FaultInjector::fail_nth(FaultSite::kPageAlloc, 1);
  auto third = pool.alloc();  // Needs a new chunk: the page allocation fails.
  FaultInjector::disarm_all();
  EXPECT_EQ(third.code(), ErrorCode::kNoMemory);
  expect_unchanged(before, "after the failed grow");
  EXPECT_EQ(pool.stats().blocks_in_use, 2u);
  ASSERT_TRUE(pool.free(first->cpu).ok());
  auto again = pool.alloc();  // Reuses the freed block: no page needed.
  ASSERT_TRUE(again.ok());
  ASSERT_TRUE(pool.free(again->cpu).ok());
  ASSERT_TRUE(pool.free(second->cpu).ok());
}

// ---- several sites at once ----

TEST_F(FaultSweepTest, EveryPairOfMappingAndSlotFailuresInASequence) {
  // A driver-like sequence: a ring in coherent memory, then three bounced requests. Every
  // combination of one failing call at each of two sites must unwind cleanly.
  uint8_t* hi = high_buffer(16384);
  auto attempt = [&]() -> ErrorCode {
    auto ring = dev_.alloc_array<uint64_t>(256);
    if (!ring.ok()) return ring.code();
    auto a = dev_.map(hi, 4096, DmaDirection::kToDevice);
    if (!a.ok()) return a.code();
    auto b = dev_.map(hi + 4096, 4096, DmaDirection::kFromDevice);
    if (!b.ok()) return b.code();
    auto c = dev_.map(hi + 8192, 8192, DmaDirection::kBidirectional);
    if (!c.ok()) return c.code();
    ring->write(0, a->dma_addr().value());
    return ErrorCode::kOk;
  };
  Accounting start = accounting();
  FaultInjector::disarm_all();
  ASSERT_EQ(attempt(), ErrorCode::kOk);
  uint64_t maps = FaultInjector::hits(FaultSite::kMapping);
  uint64_t slots = FaultInjector::hits(FaultSite::kBounceSlot);
  uint64_t pages = FaultInjector::hits(FaultSite::kPageAlloc);
  EXPECT_EQ(maps, 3u);
  EXPECT_EQ(slots, 3u);
  EXPECT_GE(pages, 1u);
  for (uint64_t m = 0; m <= maps; ++m) {
    for (uint64_t s = 0; s <= slots; ++s) {
      for (uint64_t p = 0; p <= pages; ++p) {
        if (m + s + p == 0) continue;
        SCOPED_TRACE(testing::Message() << "mapping " << m << ", slot " << s << ", page " << p);
        FaultInjector::disarm_all();
        FaultInjector::fail_nth(FaultSite::kMapping, m);
        FaultInjector::fail_nth(FaultSite::kBounceSlot, s);
        FaultInjector::fail_nth(FaultSite::kPageAlloc, p);
        EXPECT_EQ(attempt(), ErrorCode::kNoMemory);
        FaultInjector::disarm_all();
        expect_unchanged(start, "after the failing run");
      }
    }
  }
}

}  // namespace

#endif  // DMA_FAULT_INJECTION
