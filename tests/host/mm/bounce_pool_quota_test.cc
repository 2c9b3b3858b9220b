// Host tests of the bounce pool's per-pool mapping limit and per-device accounting (issue "Data
// safety", item 5): max_mapping_size() as configured, which device holds how many slots (a block
// parked in a per-CPU cache belongs to none), per-device quotas, and the one rate-limited line a
// kNoMemory prints naming the top holders. Each test runs with the per-CPU caches off and on.
#include <gtest/gtest.h>

#include <atomic>
#include <cstdint>
#include <string>
#include <thread>
#include <vector>

#include "arch/host/host_platform.h"
#include "dmakit/bounce_pool.h"
#include "dmakit/dma_debug.h"
#include "tests/host/mm/bounce_test_pool.h"

namespace {

constexpr size_t kSlot = BouncePool::kDefaultSlotSize;
constexpr size_t kKiB = 1024;
constexpr size_t kMiB = 1024 * kKiB;

using bounce_test::current_cpu;
using bounce_test::g_cpu;

// Report lines of the pool, captured for the test's duration.
class Capture {
 public:
  Capture() { BouncePool::set_report_sink(&Capture::sink, this); }
  ~Capture() { BouncePool::set_report_sink(nullptr, nullptr); }
  Capture(const Capture&) = delete;
  Capture& operator=(const Capture&) = delete;
  const std::vector<std::string>& lines() const { return lines_; }

 private:
  static void sink(void* ctx, const char* line) {
    static_cast<Capture*>(ctx)->lines_.emplace_back(line);
  }
  std::vector<std::string> lines_;
};

BouncePool::Options named(const char* name, size_t max_mapping = 0) {
  BouncePool::Options o;
  o.name = name;
  o.max_mapping = max_mapping;
  return o;
}

// A named test pool, with the CPU caches for 2 CPUs when `caches`.
struct Pool : bounce_test::TestPool {
  Pool(size_t bytes, bool caches, const BouncePool::Options& o = named("test"))
      : bounce_test::TestPool(bytes, o) {
    if (caches) {
      auto c = pool.enable_cpu_caches(&current_cpu, 2);
      EXPECT_TRUE(c.ok()) << error_code_name(c.code());
    }
  }
};

BounceSlot must_alloc(BouncePool& p, size_t size, const BounceDevice& dev) {
  auto r = p.alloc(size, PhysAddr(0), 0, 0, dev);
  EXPECT_TRUE(r.ok()) << "alloc(" << size << ") for device " << dev.id
                      << " failed: " << error_code_name(r.code());
  return r.ok() ? *r : BounceSlot{};
}

void must_free(BouncePool& p, const BounceSlot& s) {
  auto r = p.free(s);
  EXPECT_TRUE(r.ok()) << "free of slot " << s.first_slot << ": " << error_code_name(r.code());
}

void expect_has(const std::string& line, const std::string& part) {
  EXPECT_NE(line.find(part), std::string::npos) << "missing \"" << part << "\" in: " << line;
}

class BouncePoolQuota : public testing::TestWithParam<bool> {
 protected:
  void SetUp() override { g_cpu = 0; }
  void TearDown() override { g_cpu = 0; }
  bool caches() const { return GetParam(); }
};

// ---------------------------------------------------------------------------------------------
// max_mapping_size

TEST_P(BouncePoolQuota, TheMaximumMappingSizeIsConfigurableAndEnforced) {
  Pool t(1 * kMiB, caches(), named("small-max", 64 * kKiB));
  BouncePool& p = t.pool;
  EXPECT_EQ(p.max_mapping_size(), 64 * kKiB);
  BouncePool::Stats before = p.stats();
  EXPECT_EQ(p.alloc(64 * kKiB + 1).code(), ErrorCode::kLayoutError);
  EXPECT_EQ(p.alloc(64 * kKiB + 1, PhysAddr(0x1000), 0xFFF).code(), ErrorCode::kLayoutError);
  BouncePool::Stats after = p.stats();
  EXPECT_EQ(after.failures, before.failures);
  EXPECT_EQ(after.allocations, before.allocations);
  EXPECT_EQ(after.used_slots, 0u);
  BounceSlot s = must_alloc(p, 64 * kKiB, BounceDevice{});
  EXPECT_EQ(s.num_slots, 32u);
  must_free(p, s);

  // The default: kMaxMapping, or the whole pool when it is smaller.
  Pool big(1 * kMiB, caches(), named("default"));
  EXPECT_EQ(big.pool.max_mapping_size(), BouncePool::kMaxMapping);
  Pool tiny(64 * kKiB, caches(), named("tiny"));
  EXPECT_EQ(tiny.pool.max_mapping_size(), 64 * kKiB);
  Pool whole(1 * kMiB, caches(), named("whole", 1 * kMiB));
  EXPECT_EQ(whole.pool.max_mapping_size(), 1 * kMiB);
  must_free(whole.pool, must_alloc(whole.pool, 1 * kMiB, BounceDevice{}));
}

TEST(BouncePoolMaxMapping, AnInvalidMaximumIsRefusedAndLeavesThePoolUninitialised) {
  std::vector<uint8_t> mem(1 * kMiB);
  std::vector<uint64_t> meta(BouncePool::metadata_size(1 * kMiB) / 8 + 1);
  for (size_t bad : {size_t{1}, kSlot - 1, 1 * kMiB + 1, 4 * kMiB}) {
    BouncePool p;
    BouncePool::Options o;
    o.max_mapping = bad;
    EXPECT_EQ(
        p.init(PhysAddr(0x8000'0000), 1 * kMiB, mem.data(), meta.data(), meta.size() * 8, o).code(),
        ErrorCode::kInvalidArgument)
        << bad;
    EXPECT_EQ(p.max_mapping_size(), 0u);
    EXPECT_EQ(p.alloc(1).code(), ErrorCode::kLayoutError);
  }
  BouncePool p;
  BouncePool::Options o;
  o.max_mapping = kSlot;  // One slot is the least.
  ASSERT_TRUE(
      p.init(PhysAddr(0x8000'0000), 1 * kMiB, mem.data(), meta.data(), meta.size() * 8, o).ok());
  EXPECT_EQ(p.max_mapping_size(), kSlot);
  EXPECT_EQ(p.alloc(kSlot + 1).code(), ErrorCode::kLayoutError);
}

// ---------------------------------------------------------------------------------------------
// Per-device accounting and quotas

// Device A (quota 8 slots) is refused its ninth slot with kNoMemory, counted, while device B
// (no quota) still maps; a free gives A room again. Nothing else changes on the refusal.
TEST_P(BouncePoolQuota, ADeviceOverItsQuotaIsRefusedWhileAnotherStillMaps) {
  Pool t(1 * kMiB, caches());
  BouncePool& p = t.pool;
  const BounceDevice a{1, "a", 8 * kSlot};
  const BounceDevice b{2, "b", 0};
  std::vector<BounceSlot> held;
  for (int i = 0; i < 4; ++i) held.push_back(must_alloc(p, 2 * kSlot, a));
  EXPECT_EQ(p.device_slots(1), 8u);

  BouncePool::Stats before = p.stats();
  size_t blocks = p.free_block_count();
  for (unsigned cpu : {0u, 1u}) {
    g_cpu = cpu;
    EXPECT_EQ(p.alloc(1, PhysAddr(0), 0, 0, a).code(), ErrorCode::kNoMemory);
  }
  g_cpu = 0;
  BouncePool::Stats after = p.stats();
  EXPECT_EQ(after.failures, before.failures + 2);
  EXPECT_EQ(after.quota_failures, before.quota_failures + 2);
  EXPECT_EQ(after.used_slots, before.used_slots);
  EXPECT_EQ(after.allocations, before.allocations);
  EXPECT_EQ(after.cached_slots, before.cached_slots);
  EXPECT_EQ(p.free_block_count(), blocks);
  EXPECT_EQ(p.device_slots(1), 8u);

  BounceSlot bs = must_alloc(p, 100 * kSlot, b);  // B is not limited by A's quota.
  EXPECT_EQ(p.device_slots(2), 100u);
  EXPECT_EQ(p.device_slots(1), 8u);

  must_free(p, held.back());
  held.pop_back();
  EXPECT_EQ(p.device_slots(1), 6u);
  held.push_back(must_alloc(p, 2 * kSlot, a));  // Room again.
  EXPECT_EQ(p.alloc(1, PhysAddr(0), 0, 0, a).code(), ErrorCode::kNoMemory);
  EXPECT_TRUE(p.check_invariants());

  for (const BounceSlot& s : held) must_free(p, s);
  must_free(p, bs);
  EXPECT_EQ(p.device_slots(1), 0u);
  EXPECT_EQ(p.device_slots(2), 0u);
  p.drain_cache();
  EXPECT_TRUE(p.check_invariants());
  EXPECT_EQ(p.free_block_count(), 1u);
}

// A quota in bytes counts whole slots, rounded up; constrained requests count their extra slot.
TEST_P(BouncePoolQuota, AQuotaInBytesCountsWholeSlots) {
  Pool t(1 * kMiB, caches());
  BouncePool& p = t.pool;
  const BounceDevice a{7, "a", 3000};  // Two slots.
  BounceSlot s = must_alloc(p, 3000, a);
  EXPECT_EQ(s.num_slots, 2u);
  EXPECT_EQ(p.alloc(1, PhysAddr(0), 0, 0, a).code(), ErrorCode::kNoMemory);
  must_free(p, s);
  // 2048 bytes kept at offset 0x100 span two slots: within the quota; 4000 there would be three.
  auto c = p.alloc(2048, PhysAddr(0x100), 0x7FF, 0, a);
  ASSERT_TRUE(c.ok());
  EXPECT_EQ(c->num_slots, 2u);
  must_free(p, *c);
  EXPECT_EQ(p.alloc(4000, PhysAddr(0x100), 0x7FF, 0, a).code(), ErrorCode::kNoMemory);
  EXPECT_EQ(p.device_slots(7), 0u);
}

// The pool counts at most kQuotaDevices (32) devices with quotas holding slots at once: a 33rd
// is refused rather than left unchecked, and gets in once another such device holds nothing.
TEST_P(BouncePoolQuota, ADeviceWhoseQuotaCannotBeCountedIsRefused) {
  Pool t(1 * kMiB, caches(), named("q"));
  BouncePool& p = t.pool;
  std::vector<BounceSlot> held;
  for (uint32_t id = 1; id <= 32; ++id) {
    held.push_back(must_alloc(p, 100, BounceDevice{id, nullptr, 4 * kSlot}));
  }
  Capture cap;
  const BounceDevice late{33, "late", 4 * kSlot};
  EXPECT_EQ(p.alloc(100, PhysAddr(0), 0, 0, late).code(), ErrorCode::kNoMemory);
  EXPECT_EQ(p.stats().quota_failures, 1u);
  ASSERT_EQ(cap.lines().size(), 1u);
  expect_has(cap.lines()[0],
             "bounce-pool 'q': over-quota: device 'late' (#33) asked for 100 bytes (1 slots): "
             "its quota cannot be counted: 32 devices with quotas hold slots already");
  // No quota, no table: still served.
  must_free(p, must_alloc(p, 100, BounceDevice{33, "late", 0}));
  must_free(p, held.back());
  held.pop_back();
  BounceSlot in = must_alloc(p, 100, late);
  EXPECT_EQ(p.device_slots(33), 1u);
  EXPECT_TRUE(p.check_invariants());
  must_free(p, in);
  for (const BounceSlot& s : held) must_free(p, s);
}

// A block parked in a per-CPU (or the shared) cache belongs to no device; whoever takes it next
// holds it. Anonymous requests (device 0) are accounted under 0.
TEST_P(BouncePoolQuota, ACachedBlockBelongsToNoDevice) {
  Pool t(1 * kMiB, caches());
  BouncePool& p = t.pool;
  const BounceDevice b{2, "b", 0};
  const BounceDevice c{3, "c", 0};
  BounceSlot sb = must_alloc(p, 4096, b);
  BounceSlot anon = must_alloc(p, 100, BounceDevice{});
  EXPECT_EQ(p.device_slots(2), 2u);
  EXPECT_EQ(p.device_slots(0), 1u);
  must_free(p, sb);
  EXPECT_EQ(p.device_slots(2), 0u);
  EXPECT_EQ(p.stats().cached_slots, 2u);
  BounceSlot sc = must_alloc(p, 4000, c);  // Same slot count: the cached block.
  EXPECT_EQ(sc.first_slot, sb.first_slot);
  EXPECT_EQ(p.device_slots(3), 2u);
  EXPECT_EQ(p.device_slots(2), 0u);
  // A quota-limited device is accounted exactly too, cache or not.
  const BounceDevice q{4, "q", 4 * kSlot};
  must_free(p, sc);
  BounceSlot sq = must_alloc(p, 4096, q);
  EXPECT_EQ(p.device_slots(4), 2u);
  EXPECT_EQ(p.device_slots(3), 0u);
  must_free(p, sq);
  must_free(p, anon);
  for (uint32_t id : {0u, 2u, 3u, 4u}) EXPECT_EQ(p.device_slots(id), 0u) << id;
  p.drain_cache();
  EXPECT_TRUE(p.check_invariants());
  EXPECT_EQ(p.free_block_count(), 1u);
}

// ---------------------------------------------------------------------------------------------
// The kNoMemory line

// The pool is full: one line names the pool, the request, and the top holders by slot count.
TEST_P(BouncePoolQuota, NoMemoryPrintsOneLineNamingTheTopHolders) {
  Pool t(256 * kSlot, caches(), named("dma32"));
  BouncePool& p = t.pool;
  const BounceDevice nic{11, "nic", 0};
  const BounceDevice blk{12, "blk", 0};
  const BounceDevice gpu{13, nullptr, 0};
  std::vector<BounceSlot> held;
  for (int i = 0; i < 20; ++i) held.push_back(must_alloc(p, 5 * kSlot, nic));   // 100 slots
  for (int i = 0; i < 10; ++i) held.push_back(must_alloc(p, 12 * kSlot, blk));  // 120 slots
  held.push_back(must_alloc(p, 30 * kSlot, gpu));
  held.push_back(must_alloc(p, 4 * kSlot, BounceDevice{}));
  held.push_back(must_alloc(p, 2 * kSlot, BounceDevice{}));  // 6 anonymous slots.
  ASSERT_EQ(p.stats().used_slots, 256u);

  Capture cap;
  EXPECT_EQ(p.alloc(4096, PhysAddr(0), 0, 0, nic).code(), ErrorCode::kNoMemory);
  ASSERT_EQ(cap.lines().size(), 1u);
  EXPECT_EQ(cap.lines()[0],
            "bounce-pool 'dma32': no-memory: device 'nic' (#11) asked for 4096 bytes (2 slots): "
            "256 of 256 slots in use, 0 cached; top holders: 'blk' (#12) 120 slots, "
            "'nic' (#11) 100 slots, #13 30 slots; failure #1");

  // A storm: one line for failures 2, 4, 8, 16, 32 and 64 only.
  for (int i = 0; i < 99; ++i) {
    EXPECT_EQ(p.alloc(100, PhysAddr(0), 0, 0, blk).code(), ErrorCode::kNoMemory);
  }
  EXPECT_EQ(p.stats().failures, 100u);
  ASSERT_EQ(cap.lines().size(), 7u);
  EXPECT_TRUE(cap.lines()[1].ends_with("; failure #2")) << cap.lines()[1];
  expect_has(cap.lines()[6], "failure #64 (31 not shown since the last line)");
  expect_has(cap.lines()[6], "device 'blk' (#12) asked for 100 bytes (1 slots)");

  for (const BounceSlot& s : held) must_free(p, s);
}

// A quota refusal says whose quota, and how much of it is held.
TEST_P(BouncePoolQuota, AQuotaRefusalNamesTheDeviceAndItsQuota) {
  Pool t(1 * kMiB, caches(), named("dma28"));
  BouncePool& p = t.pool;
  const BounceDevice a{21, "edu", 8 * kSlot};
  BounceSlot s = must_alloc(p, 7 * kSlot, a);
  BounceSlot o = must_alloc(p, 3 * kSlot, BounceDevice{22, "other", 0});
  Capture cap;
  EXPECT_EQ(p.alloc(2 * kSlot, PhysAddr(0), 0, 0, a).code(), ErrorCode::kNoMemory);
  ASSERT_EQ(cap.lines().size(), 1u);
  EXPECT_EQ(cap.lines()[0],
            "bounce-pool 'dma28': over-quota: device 'edu' (#21) asked for 4096 bytes (2 slots): "
            "it holds 7 of its quota of 8 slots; top holders: 'edu' (#21) 7 slots, "
            "'other' (#22) 3 slots; failure #1");
  must_free(p, s);
  must_free(p, o);
}

// The line goes through the library's sink (DmaDebug::set_sink), also for a mapping through the
// DMA API, where the device is the DmaConstraints' and the pool is named by its base address.
TEST_P(BouncePoolQuota, TheLineGoesThroughTheLibrarysSink) {
  HostPlatform::Options o;
  o.ram.push_back(PhysRange{PhysAddr(0x4000'0000), 64 * kMiB});
  o.pools.push_back(HostPlatform::PoolSpec{512 * kKiB, 0xFFFF'FFFF});
  o.cpu_caches = caches() ? 1 : 0;
  HostPlatform plat(o);
  std::vector<std::string> lines;
  DmaDebug::Sink old_sink = nullptr;
  void* old_ctx = nullptr;
  DmaDebug::set_sink(
      [](void* ctx, const char* line) {
        static_cast<std::vector<std::string>*>(ctx)->emplace_back(line);
      },
      &lines, &old_sink, &old_ctx);
  auto pa = plat.pfa().alloc(PageFrameAllocator::order_for(1 * kMiB));
  ASSERT_TRUE(pa.ok());
  uint8_t* buf = plat.phys_to_virt(pa->value());
  DmaConstraints c;
  c.force_bounce = true;
  c.coherence = DmaCoherence::kCoherent;
  c.name = "ring";
  c.device_id = DmaDebug::new_device_id();
  std::vector<DmaMapHandle> maps;
  for (int i = 0; i < 2; ++i) {
    auto m = plat.op().map_single(c, buf, 256 * kKiB, 0, DmaDirection::kToDevice);
    ASSERT_TRUE(m.ok());
    maps.push_back(*m);
  }
  EXPECT_EQ(plat.pool(0).device_slots(c.device_id), 256u);
  auto m = plat.op().map_single(c, buf, 4096, 0, DmaDirection::kToDevice);
  EXPECT_EQ(m.code(), ErrorCode::kNoMemory);
  DmaDebug::set_sink(old_sink, old_ctx);
  ASSERT_EQ(lines.size(), 1u);
  std::string id = "(#" + std::to_string(c.device_id) + ")";
  char base[64];
  std::snprintf(base, sizeof(base), "bounce-pool at 0x%llx: no-memory: device 'ring' ",
                static_cast<unsigned long long>(plat.pool(0).base().value()));
  EXPECT_EQ(lines[0].rfind(base, 0), 0u) << lines[0];
  expect_has(lines[0], "top holders: 'ring' " + id + " 256 slots; failure #1");

  // The quota travels with the device's constraints.
  for (const DmaMapHandle& h : maps) plat.op().unmap_single(h);
  c.bounce_quota = 64 * kKiB;
  auto within = plat.op().map_single(c, buf, 64 * kKiB, 0, DmaDirection::kToDevice);
  ASSERT_TRUE(within.ok());
  EXPECT_EQ(plat.op().map_single(c, buf, 1, 0, DmaDirection::kToDevice).code(),
            ErrorCode::kNoMemory);
  EXPECT_EQ(plat.pool(0).stats().quota_failures, 1u);
  plat.op().unmap_single(*within);
  EXPECT_EQ(plat.pool(0).device_slots(c.device_id), 0u);
  ASSERT_TRUE(plat.pfa().free(*pa, PageFrameAllocator::order_for(1 * kMiB)).ok());
}

// ---------------------------------------------------------------------------------------------
// Threads as CPUs

// Four threads, each its own CPU and device (two with quotas), allocate and free blocks of a few
// sizes through their CPU caches: each device's count always matches what it holds (blocks the
// others park in their caches and take back meanwhile never count), a quota is never exceeded,
// and all ends at zero.
TEST(BouncePoolQuotaThreads, ConcurrentAccountingStaysExactAcrossCpuCaches) {
  constexpr unsigned kThreads = 4;
  Pool t(1 * kMiB, false);
  BouncePool& p = t.pool;
  ASSERT_TRUE(p.enable_cpu_caches(&current_cpu, kThreads).ok());
  std::atomic<int> errors{0};
  auto worker = [&](unsigned cpu) {
    g_cpu = cpu;
    const BounceDevice dev{100 + cpu, "w", cpu % 2 == 0 ? 24 * kSlot : 0};
    std::vector<BounceSlot> mine;
    uint64_t held = 0;
    uint32_t seed = 12345 + cpu;
    for (int i = 0; i < 1500; ++i) {
      seed = seed * 1103515245u + 12345u;
      unsigned r = (seed >> 16) % 100;
      if ((r < 50 && held < 80) || mine.empty()) {
        size_t size = (1 + (seed >> 8) % 4) * kSlot - (seed & 63);
        auto s = p.alloc(size, PhysAddr(0), 0, 0, dev);
        uint64_t n = (size + kSlot - 1) / kSlot;
        if (s.ok()) {
          mine.push_back(*s);
          held += s->num_slots;
        } else if (s.code() != ErrorCode::kNoMemory || dev.quota == 0 ||
                   held + n <= dev.quota / kSlot) {
          errors.fetch_add(1);  // Only a quota may refuse: the pool is large enough.
        }
      } else {
        BounceSlot s = mine.back();
        mine.pop_back();
        if (!p.free(s).ok()) errors.fetch_add(1);
        held -= s.num_slots;
      }
      if (p.device_slots(dev.id) != held) errors.fetch_add(1);
      if (dev.quota != 0 && held > dev.quota / kSlot) errors.fetch_add(1);
    }
    for (const BounceSlot& s : mine) {
      if (!p.free(s).ok()) errors.fetch_add(1);
    }
    if (p.device_slots(dev.id) != 0) errors.fetch_add(1);
    p.drain_cache();
  };
  std::vector<std::thread> threads;
  for (unsigned cpu = 0; cpu < kThreads; ++cpu) threads.emplace_back(worker, cpu);
  for (std::thread& th : threads) th.join();
  EXPECT_EQ(errors.load(), 0);
  EXPECT_TRUE(p.check_invariants());
  EXPECT_EQ(p.stats().used_slots, 0u);
  EXPECT_EQ(p.free_block_count(), 1u);
}

INSTANTIATE_TEST_SUITE_P(CpuCaches, BouncePoolQuota, testing::Bool(),
                         [](const testing::TestParamInfo<bool>& i) {
                           return i.param ? std::string("On") : std::string("Off");
                         });

}  // namespace
