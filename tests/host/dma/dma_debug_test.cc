// The DMA-API misuse checker: one test per kind of misuse, each asserting the exact report line
// and the per-kind counter, and that the operation was refused without touching any accounting.
// Without the checker (DMA_API_DEBUG=0, or the hooks taken out) every one of these fails: no line
// is captured, and most of the misuses then corrupt the accounting or panic.
//
// Reports that no test captures (a misuse anywhere else in the host suite) go to stderr, so they
// are seen: this file installs that default sink at start-up.
#include "dmakit/dma_debug.h"

#include <gtest/gtest.h>

#include <cinttypes>
#include <cstdio>
#include <cstring>
#include <memory>
#include <string>
#include <vector>

#include "arch/host/host_platform.h"
#include "dmakit/device_dma.h"
#include "dmakit/dma_pool.h"
#include "dmakit/scatter_gather.h"

#if DMA_API_DEBUG_ENABLED  // The checker exists only with DMA_API_DEBUG.

namespace {

void stderr_sink(void*, const char* line) {
  std::fprintf(stderr, "%s\n", line);
}
const bool kStderrSinkInstalled = [] {
  DmaDebug::set_sink(stderr_sink, nullptr);
  return true;
}();

constexpr uint64_t kMask30 = (1ull << 30) - 1;

std::string hex(uint64_t v) {
  char b[32];
  std::snprintf(b, sizeof(b), "0x%" PRIx64, v);
  return b;
}

// 128 MiB of RAM straddling 1 GiB with a bounce pool under 1 GiB: a 30-bit device maps the lower
// half directly and bounces the upper half.
HostPlatform::Options options() {
  HostPlatform::Options o;
  o.ram.push_back(PhysRange{PhysAddr(0x3C00'0000), 128ull << 20});
  o.pools.push_back(HostPlatform::PoolSpec{4ull << 20, kMask30});
  return o;
}

class DmaDebugTest : public testing::Test {
 protected:
  DmaDebugTest() : plat_(options()) {}

  void SetUp() override {
    ASSERT_TRUE(DmaDebug::kEnabled) << "the host tests must be built with DMA_API_DEBUG=1";
    DmaDebug::reset();
    DmaDebug::set_sink(&DmaDebugTest::capture, this, &old_sink_, &old_ctx_);
  }
  void TearDown() override {
    DmaDebug::set_sink(old_sink_, old_ctx_);
    for (auto& b : held_) ASSERT_TRUE(plat_.pfa().free(PhysAddr(b.first), b.second).ok());
    DmaDebug::reset();
  }
  static void capture(void* ctx, const char* line) {
    static_cast<DmaDebugTest*>(ctx)->lines_.emplace_back(line);
  }

  KernelDmaOp& op() { return plat_.op(); }
  // A named device with its own checker identity, as a driver would hold.
  DmaConstraints raw_device(const char* name, bool coherent = false) {
    DmaConstraints c;
    c.dma_mask = kMask30;
    c.coherence = dma_coherence(coherent);
    c.name = name;
    c.device_id = DmaDebug::new_device_id();
    return c;
  }
  uint8_t* low_buffer(size_t bytes) {
    unsigned order = PageFrameAllocator::order_for(bytes);
    auto pa = plat_.pfa().alloc(order, kMask30);
    EXPECT_TRUE(pa.ok());
    held_.push_back({pa->value(), order});
    return plat_.phys_to_virt(pa->value());
  }
  uint8_t* high_buffer(size_t bytes) {
    unsigned order = PageFrameAllocator::order_for(bytes);
    for (;;) {
      auto pa = plat_.pfa().alloc(order);
      EXPECT_TRUE(pa.ok());
      held_.push_back({pa->value(), order});
      if (pa->value() > kMask30) return plat_.phys_to_virt(pa->value());
    }
  }
  // The single captured line; fails the test unless exactly one was reported.
  std::string only_line() {
    EXPECT_EQ(lines_.size(), 1u);
    return lines_.empty() ? std::string() : lines_.back();
  }
  static void expect_has(const std::string& line, const std::string& part) {
    EXPECT_NE(line.find(part), std::string::npos) << "missing \"" << part << "\" in: " << line;
  }
  struct Accounting {
    uint64_t free_pages;
    uint64_t used_slots;
    uint64_t live_maps;
    uint64_t coherent_live;
    size_t entries;
  };
  Accounting accounting() {
    return {plat_.pfa().free_pages(), plat_.pool(0).stats().used_slots, op().stats().live_maps,
            op().stats().coherent_live, DmaDebug::live_entries()};
  }
  void expect_same(const Accounting& a) {
    Accounting b = accounting();
    EXPECT_EQ(a.free_pages, b.free_pages);
    EXPECT_EQ(a.used_slots, b.used_slots);
    EXPECT_EQ(a.live_maps, b.live_maps);
    EXPECT_EQ(a.coherent_live, b.coherent_live);
    EXPECT_EQ(a.entries, b.entries);
  }

  HostPlatform plat_;
  std::vector<std::string> lines_;
  std::vector<std::pair<uint64_t, unsigned>> held_;
  DmaDebug::Sink old_sink_ = nullptr;
  void* old_ctx_ = nullptr;
};

// ---- Unmapping something never mapped or already unmapped ----

TEST_F(DmaDebugTest, UnmapOfANeverMappedBufferIsReportedAndRefused) {
  uint8_t* buf = low_buffer(4096);
  DmaConstraints c = raw_device("nic");
  DmaMapHandle fake;
  fake.cpu_addr = buf;
  fake.dma_addr = DmaAddr(op().virt_to_phys(buf)->value());
  fake.size = 512;
  fake.direction = DmaDirection::kFromDevice;
  fake.device_id = c.device_id;
  Accounting before = accounting();
  op().unmap_single(fake);
  std::string line = only_line();
  EXPECT_EQ(line, "dma-debug: not-mapped: device #" + std::to_string(c.device_id) +
                      ": unmap_single of dma " + hex(fake.dma_addr.value()) +
                      " size 512 from-device: no such mapping (never mapped, or already "
                      "unmapped); expected a live streaming mapping");
  EXPECT_EQ(DmaDebug::count(DmaDebugKind::kNotMapped), 1u);
  EXPECT_EQ(DmaDebug::total(), 1u);
  expect_same(before);
}

TEST_F(DmaDebugTest, DoubleUnmapOfABouncedMappingIsReportedAndRefused) {
  uint8_t* buf = high_buffer(4096);
  DmaConstraints c = raw_device("nic");
  auto m = op().map_single(c, buf, 3000, 0, DmaDirection::kToDevice);
  ASSERT_TRUE(m.ok());
  ASSERT_TRUE(m->bounced());
  EXPECT_EQ(DmaDebug::live_entries(), 1u);
  op().unmap_single(*m);
  EXPECT_EQ(DmaDebug::live_entries(), 0u);
  EXPECT_TRUE(lines_.empty());
  Accounting before = accounting();
  op().unmap_single(*m);  // Without the checker: the bounce pool's free fails and panics.
  std::string line = only_line();
  expect_has(line, "dma-debug: not-mapped: device 'nic' (#" + std::to_string(c.device_id) + ")");
  expect_has(line, "unmap_single of dma " + hex(m->dma_addr.value()) + " size 3000 to-device");
  expect_has(line, "expected a live streaming mapping");
  EXPECT_EQ(DmaDebug::count(DmaDebugKind::kNotMapped), 1u);
  expect_same(before);
}

TEST_F(DmaDebugTest, DoubleUnmapOfADirectMappingIsReportedAndRefused) {
  uint8_t* buf = low_buffer(4096);
  DeviceDma dev(&op(), raw_device("disk"));
  auto m = op().map_single(dev.constraints(), buf, 4096, 0, DmaDirection::kFromDevice);
  ASSERT_TRUE(m.ok());
  ASSERT_FALSE(m->bounced());
  op().unmap_single(*m);
  Accounting before = accounting();
  op().unmap_single(*m);  // Without the checker: live_maps wraps below zero.
  EXPECT_EQ(DmaDebug::count(DmaDebugKind::kNotMapped), 1u);
  expect_has(only_line(), "device 'disk' (#" + std::to_string(dev.constraints().device_id) +
                              "): unmap_single of dma " + hex(m->dma_addr.value()));
  expect_same(before);
  EXPECT_EQ(op().stats().live_maps, 0u);
}

TEST_F(DmaDebugTest, StaleHandleOfAReusedSlotIsNotTakenForTheNewMapping) {
  uint8_t* a = high_buffer(4096);
  uint8_t* b = high_buffer(4096);
  DmaConstraints c = raw_device("nic");
  auto ma = op().map_single(c, a, 2048, 0, DmaDirection::kToDevice);
  ASSERT_TRUE(ma.ok());
  DmaMapHandle stale = *ma;
  op().unmap_single(*ma);
  auto mb = op().map_single(c, b, 2048, 0, DmaDirection::kToDevice);
  ASSERT_TRUE(mb.ok());
  ASSERT_EQ(mb->dma_addr, stale.dma_addr) << "the pool should hand out the same slot again";
  Accounting before = accounting();
  op().unmap_single(stale);  // Same slot, another buffer: refused, b stays mapped.
  std::string line = only_line();
  expect_has(line, "dma-debug: not-mapped: ");
  expect_has(line, "of cpu " + hex(reinterpret_cast<uintptr_t>(a)));
  expect_has(line, "expected cpu " + hex(reinterpret_cast<uintptr_t>(b)));
  expect_same(before);
  op().unmap_single(*mb);
  EXPECT_EQ(lines_.size(), 1u);
}

// ---- Unmapping with a size or direction other than the mapping's ----

TEST_F(DmaDebugTest, UnmapWithAnotherSizeIsReportedAndRefused) {
  uint8_t* buf = high_buffer(8192);
  DmaConstraints c = raw_device("nic");
  auto m = op().map_single(c, buf, 4096, 0, DmaDirection::kFromDevice);
  ASSERT_TRUE(m.ok());
  DmaMapHandle wrong = *m;
  wrong.size = 8192;  // Would copy 8 KiB out of a 4 KiB slot allocation.
  Accounting before = accounting();
  op().unmap_single(wrong);
  EXPECT_EQ(only_line(), "dma-debug: size-mismatch: device 'nic' (#" + std::to_string(c.device_id) +
                             "): unmap_single of dma " + hex(m->dma_addr.value()) +
                             " size 8192 from-device: expected the mapped size 4096");
  EXPECT_EQ(DmaDebug::count(DmaDebugKind::kSizeMismatch), 1u);
  expect_same(before);
  op().unmap_single(*m);  // The real mapping is still there and ends normally.
  EXPECT_EQ(op().stats().live_maps, 0u);
  EXPECT_EQ(DmaDebug::total(), 1u);
}

TEST_F(DmaDebugTest, UnmapWithAnotherDirectionIsReportedAndRefused) {
  uint8_t* buf = high_buffer(4096);
  std::memset(buf, 0x11, 4096);
  DmaConstraints c = raw_device("nic");
  auto m = op().map_single(c, buf, 4096, 0, DmaDirection::kToDevice);
  ASSERT_TRUE(m.ok());
  DmaMapHandle wrong = *m;
  wrong.direction = DmaDirection::kFromDevice;  // Would copy the slot back over the buffer.
  Accounting before = accounting();
  op().unmap_single(wrong);
  std::string line = only_line();
  expect_has(line, "dma-debug: direction-mismatch: device 'nic'");
  expect_has(line, "unmap_single of dma " + hex(m->dma_addr.value()) + " size 4096 from-device");
  expect_has(line, "expected the mapped direction to-device");
  EXPECT_EQ(DmaDebug::count(DmaDebugKind::kDirectionMismatch), 1u);
  expect_same(before);
  op().unmap_single(*m);
}

// ---- Syncing with another size or direction, or outside the mapping ----

TEST_F(DmaDebugTest, SyncWithAnotherSizeIsReportedAndRefused) {
  uint8_t* buf = high_buffer(8192);
  DmaConstraints c = raw_device("nic");
  auto m = op().map_single(c, buf, 1000, 0, DmaDirection::kBidirectional);
  ASSERT_TRUE(m.ok());
  DmaMapHandle wrong = *m;
  wrong.size = 6000;
  EXPECT_EQ(op().prepare_read(wrong, 0, 6000, DmaDirection::kBidirectional).code(),
            ErrorCode::kInvalidArgument);
  std::string line = only_line();
  expect_has(line, "dma-debug: size-mismatch: device 'nic'");
  expect_has(line, "prepare_read of dma " + hex(m->dma_addr.value()) + " size 6000");
  expect_has(line, "expected the mapped size 1000");
  EXPECT_EQ(DmaDebug::count(DmaDebugKind::kSizeMismatch), 1u);
  op().unmap_single(*m);
}

// Reported, and the mapping's own direction governs what is done (issue "Data safety" item 7: a
// wrong argument used to make the sync do nothing).
TEST_F(DmaDebugTest, SyncInADirectionTheMappingDoesNotAllowIsReportedAndTheMappingGoverns) {
  uint8_t* buf = high_buffer(4096);
  std::memset(buf, 0x5A, 4096);
  DmaConstraints c = raw_device("nic");
  auto m = op().map_single(c, buf, 4096, 0, DmaDirection::kToDevice);
  ASSERT_TRUE(m.ok());
  HostDevice dev(&plat_, kMask30, false);
  dev.fill(m->dma_addr, 0xEE, 16);  // A device that should only read.
  EXPECT_EQ(op().prepare_read(*m, 0, 16, DmaDirection::kFromDevice).code(), ErrorCode::kOk);
  EXPECT_EQ(buf[0], 0x5A) << "a to-device mapping: nothing is copied out of the slot";
  EXPECT_EQ(only_line(), "dma-debug: direction-mismatch: device 'nic' (#" +
                             std::to_string(c.device_id) + "): prepare_read of dma " +
                             hex(m->dma_addr.value()) +
                             " size 16 with direction from-device on a to-device mapping; "
                             "expected to-device (or a bidirectional mapping)");
  EXPECT_EQ(DmaDebug::count(DmaDebugKind::kDirectionMismatch), 1u);
  // The mapping's own direction is fine, and a bidirectional mapping accepts any.
  EXPECT_TRUE(op().confirm_write(*m, 0, 16, DmaDirection::kToDevice).ok());
  op().unmap_single(*m);
  auto bidi = op().map_single(c, buf, 4096, 0, DmaDirection::kBidirectional);
  ASSERT_TRUE(bidi.ok());
  EXPECT_TRUE(op().prepare_read(*bidi, 0, 16, DmaDirection::kFromDevice).ok());
  EXPECT_TRUE(op().confirm_write(*bidi, 0, 16, DmaDirection::kToDevice).ok());
  op().unmap_single(*bidi);
  EXPECT_EQ(DmaDebug::total(), 1u);
}

TEST_F(DmaDebugTest, SyncOutsideTheMappingIsReported) {
  uint8_t* buf = low_buffer(8192);
  DeviceDma dev(&op(), raw_device("edu"));
  auto m = dev.map(buf, 4096, DmaDirection::kBidirectional);
  ASSERT_TRUE(m.ok());
  EXPECT_EQ(m->sync_for_cpu(4000, 200).code(), ErrorCode::kOutOfRange);
  EXPECT_EQ(only_line(), "dma-debug: sync-out-of-range: device 'edu' (#" +
                             std::to_string(dev.constraints().device_id) +
                             "): prepare_read of dma " + hex(m->dma_addr().value()) +
                             " range [offset 4000, size 200) is outside the mapping of size "
                             "4096; expected offset + size <= 4096");
  EXPECT_EQ(m->sync_for_device(4097, 0).code(), ErrorCode::kOutOfRange);
  ASSERT_EQ(lines_.size(), 2u);
  expect_has(lines_.back(), "confirm_write of dma ");
  EXPECT_EQ(DmaDebug::count(DmaDebugKind::kSyncOutOfRange), 2u);
  EXPECT_TRUE(m->sync_for_cpu(4000, 96).ok());
  EXPECT_EQ(DmaDebug::total(), 2u);
}

TEST_F(DmaDebugTest, SyncAfterUnmapIsReportedAndRefused) {
  uint8_t* buf = high_buffer(4096);
  std::memset(buf, 0x33, 4096);
  DmaConstraints c = raw_device("nic");
  auto m = op().map_single(c, buf, 4096, 0, DmaDirection::kBidirectional);
  ASSERT_TRUE(m.ok());
  op().unmap_single(*m);
  // Someone else gets the slot now; a late sync through the stale handle must not touch it.
  uint8_t* other = high_buffer(4096);
  std::memset(other, 0x77, 4096);
  auto m2 = op().map_single(raw_device("disk"), other, 4096, 0, DmaDirection::kToDevice);
  ASSERT_TRUE(m2.ok());
  ASSERT_EQ(m2->dma_addr, m->dma_addr);
  EXPECT_EQ(op().confirm_write(*m, 0, 4096, DmaDirection::kBidirectional).code(),
            ErrorCode::kNotFound);
  std::string line = only_line();
  expect_has(line, "dma-debug: not-mapped: device 'nic' (#" + std::to_string(c.device_id) + ")");
  expect_has(line, "confirm_write of dma " + hex(m->dma_addr.value()) + " size 4096");
  HostDevice dev(&plat_, kMask30, false);
  uint8_t seen = 0;
  dev.read(m2->dma_addr, &seen, 1);
  EXPECT_EQ(seen, 0x77) << "the other device's data was overwritten through a stale handle";
  op().unmap_single(*m2);
}

// ---- A mapping still alive when its device is torn down ----

TEST_F(DmaDebugTest, TeardownReportsEveryLiveMappingWithWhereItWasMade) {
  uint8_t* buf = low_buffer(8192);
  DeviceDma dev(&op(), kMask30);
  dev.set_name("nic");
  DeviceDma other(&op(), kMask30);
  auto keep_other = other.map(buf + 4096, 64, DmaDirection::kToDevice);
  ASSERT_TRUE(keep_other.ok());
  EXPECT_EQ(dev.check_no_mappings(), 0u);
  const int map_line = __LINE__ + 1;
  auto m = dev.map(buf, 4096, DmaDirection::kFromDevice);
  ASSERT_TRUE(m.ok());
  const int alloc_line = __LINE__ + 1;
  auto arr = dev.alloc_array<uint32_t>(100);
  ASSERT_TRUE(arr.ok());
  DeviceDma copy = dev;  // A copy names the same device.
  EXPECT_EQ(copy.check_no_mappings(), 2u);
  ASSERT_EQ(lines_.size(), 2u);
  std::string id = std::to_string(dev.constraints().device_id);
  std::string mapping_line, coherent_line;
  for (const std::string& l : lines_) {
    (l.find("streaming") != std::string::npos ? mapping_line : coherent_line) = l;
  }
  expect_has(mapping_line, "dma-debug: leak-at-teardown: device 'nic' (#" + id +
                               ") torn down with a live streaming mapping: dma " +
                               hex(m->dma_addr().value()) + " size 4096 from-device, made at ");
  expect_has(mapping_line, "dma_debug_test.cc:" + std::to_string(map_line) + " (caller 0x");
  expect_has(mapping_line, "; expected unmap_single before the teardown");
  expect_has(coherent_line, "device 'nic' (#" + id +
                                ") torn down with a live coherent allocation: dma " +
                                hex(arr->dma_addr().value()) + " size 400, made at ");
  expect_has(coherent_line, "dma_debug_test.cc:" + std::to_string(alloc_line));
  expect_has(coherent_line, "; expected dealloc_coherent before the teardown");
  EXPECT_EQ(DmaDebug::count(DmaDebugKind::kLeakAtTeardown), 2u);
  EXPECT_EQ(DmaDebug::live_entries(dev.constraints().device_id), 2u);
  // Released properly, nothing is left to report; the other device was never involved.
  m->unmap();
  arr->reset();
  EXPECT_EQ(dev.check_no_mappings(), 0u);
  EXPECT_EQ(DmaDebug::count(DmaDebugKind::kLeakAtTeardown), 2u);
  keep_other->unmap();
  EXPECT_EQ(other.check_no_mappings(), 0u);
}

TEST_F(DmaDebugTest, DestroyingTheDmaOpReportsAndForgetsLiveMappings) {
  auto local = std::make_unique<HostPlatform>(options());
  auto pa = local->pfa().alloc(0, kMask30);
  ASSERT_TRUE(pa.ok());
  uint8_t* buf = local->phys_to_virt(pa->value());
  DmaConstraints c = raw_device("gpu", true);
  auto m = local->op().map_single(c, buf, 256, 0, DmaDirection::kToDevice);
  ASSERT_TRUE(m.ok());
  ASSERT_TRUE(local->pfa().free(*pa, 0).ok());  // The allocator's own leak check stays quiet.
  EXPECT_EQ(DmaDebug::live_entries(), 1u);
  local.reset();
  EXPECT_EQ(DmaDebug::live_entries(), 0u);
  std::string line = only_line();
  expect_has(line, "dma-debug: leak-at-teardown: device 'gpu' (#" + std::to_string(c.device_id) +
                       "): DmaOp destroyed with a live streaming mapping: dma " +
                       hex(m->dma_addr.value()) + " size 256 to-device, made at caller 0x");
  expect_has(line, "expected unmap_single before the DmaOp is destroyed");
}

// ---- Freeing coherent memory through the streaming path, or the reverse ----

TEST_F(DmaDebugTest, UnmapOfACoherentAllocationIsReportedAndRefused) {
  DmaConstraints c = raw_device("nic");
  auto h = op().alloc_coherent(c, Layout{4096, 1});
  ASSERT_TRUE(h.ok());
  DmaMapHandle as_mapping;
  as_mapping.cpu_addr = h->cpu_addr;
  as_mapping.dma_addr = h->dma_addr;
  as_mapping.size = 4096;
  as_mapping.direction = DmaDirection::kBidirectional;
  as_mapping.device_id = c.device_id;
  Accounting before = accounting();
  op().unmap_single(as_mapping);  // Without the checker: live_maps wraps below zero.
  EXPECT_EQ(only_line(), "dma-debug: wrong-free-type: device 'nic' (#" +
                             std::to_string(c.device_id) + "): unmap_single of dma " +
                             hex(h->dma_addr.value()) +
                             " size 4096 bidirectional: this is a coherent allocation of size "
                             "4096; expected dealloc_coherent");
  EXPECT_EQ(DmaDebug::count(DmaDebugKind::kWrongFreeType), 1u);
  expect_same(before);
  op().dealloc_coherent(*h);
  EXPECT_EQ(DmaDebug::total(), 1u);
}

TEST_F(DmaDebugTest, DeallocCoherentOfAStreamingMappingIsReportedAndRefused) {
  uint8_t* buf = low_buffer(4096);
  DmaConstraints c = raw_device("nic");
  auto m = op().map_single(c, buf, 4096, 0, DmaDirection::kToDevice);
  ASSERT_TRUE(m.ok());
  DmaHandle as_coherent;
  as_coherent.cpu_addr = buf;
  as_coherent.dma_addr = m->dma_addr;
  as_coherent.phys = PhysAddr(m->dma_addr.value());
  as_coherent.layout = Layout{4096, 1};
  as_coherent.order = 0;
  as_coherent.device_id = c.device_id;
  Accounting before = accounting();
  op().dealloc_coherent(as_coherent);  // Without the checker: the buffer's page is freed.
  EXPECT_EQ(only_line(), "dma-debug: wrong-free-type: device 'nic' (#" +
                             std::to_string(c.device_id) + "): dealloc_coherent of dma " +
                             hex(m->dma_addr.value()) +
                             " size 4096: this is a live to-device streaming mapping of size "
                             "4096; expected unmap_single");
  EXPECT_EQ(DmaDebug::count(DmaDebugKind::kWrongFreeType), 1u);
  expect_same(before);
  op().unmap_single(*m);
}

TEST_F(DmaDebugTest, DoubleFreeOfCoherentMemoryIsReportedAndRefused) {
  DeviceDma dev(&op(), raw_device("nic"));
  auto arr = dev.alloc_array<uint8_t>(5000);
  ASSERT_TRUE(arr.ok());
  DmaHandle h = arr->handle();
  arr->reset();
  Accounting before = accounting();
  op().dealloc_coherent(h);  // Without the checker: the allocator's free fails and panics.
  EXPECT_EQ(only_line(), "dma-debug: not-mapped: device 'nic' (#" +
                             std::to_string(dev.constraints().device_id) +
                             "): dealloc_coherent of dma " + hex(h.dma_addr.value()) +
                             " size 5000: no such allocation (never allocated, or already "
                             "freed); expected a live coherent allocation");
  EXPECT_EQ(DmaDebug::count(DmaDebugKind::kNotMapped), 1u);
  expect_same(before);
}

TEST_F(DmaDebugTest, DeallocCoherentWithAnotherSizeIsReportedAndRefused) {
  DmaConstraints c = raw_device("nic");
  auto h = op().alloc_coherent(c, Layout{8192, 1});
  ASSERT_TRUE(h.ok());
  DmaHandle wrong = *h;
  wrong.layout.size = 4096;
  wrong.order = 0;  // Would free half of the block.
  Accounting before = accounting();
  op().dealloc_coherent(wrong);
  EXPECT_EQ(only_line(), "dma-debug: size-mismatch: device 'nic' (#" + std::to_string(c.device_id) +
                             "): dealloc_coherent of dma " + hex(h->dma_addr.value()) +
                             " size 4096: expected the allocated size 8192");
  EXPECT_EQ(DmaDebug::count(DmaDebugKind::kSizeMismatch), 1u);
  expect_same(before);
  op().dealloc_coherent(*h);
}

// ---- A mapping error ignored by the caller ----

TEST_F(DmaDebugTest, AMapErrorDroppedUncheckedIsReported) {
  uint8_t* buf = high_buffer(4096);
  DeviceDma dev(&op(), 0xFFFF);  // Nothing reachable, no pool under it: the map fails.
  dev.set_name("edu");
  {
    auto r = dev.map(buf, 16, DmaDirection::kToDevice);
    // Dropped here without a look.
  }
  EXPECT_EQ(only_line(), "dma-debug: error-ignored: device 'edu' (#" +
                             std::to_string(dev.constraints().device_id) + "): map of cpu " +
                             hex(reinterpret_cast<uintptr_t>(buf)) +
                             " size 16 to-device failed (dma mask not match) and the result was "
                             "dropped unchecked; expected ok(), code() or error() to be called "
                             "on it");
  EXPECT_EQ(DmaDebug::count(DmaDebugKind::kErrorIgnored), 1u);
  (void)dev.map(buf, 32, DmaDirection::kFromDevice);  // A cast to void is no check either.
  EXPECT_EQ(DmaDebug::count(DmaDebugKind::kErrorIgnored), 2u);
  ASSERT_EQ(lines_.size(), 2u);
  expect_has(lines_.back(), "size 32 from-device failed");
}

TEST_F(DmaDebugTest, AMapErrorThatWasLookedAtIsNotReported) {
  uint8_t* buf = high_buffer(4096);
  DeviceDma dev(&op(), 0xFFFF);
  EXPECT_FALSE(dev.map(buf, 16, DmaDirection::kToDevice).ok());
  EXPECT_EQ(dev.map(buf, 16, DmaDirection::kToDevice).code(), ErrorCode::kDmaMaskNotMatch);
  {
    auto r = dev.map(buf, 16, DmaDirection::kToDevice);
    if (r) ADD_FAILURE();
  }
  {
    auto r = dev.map(buf, 16, DmaDirection::kToDevice);
    EXPECT_EQ(r.error().mask, 0xFFFFu);
  }
  auto via_try = [&]() -> Result<void> {
    TRY_ASSIGN(StreamingMapping m, dev.map(buf, 16, DmaDirection::kToDevice));
    (void)m;
    return support::ok();
  };
  EXPECT_EQ(via_try().code(), ErrorCode::kDmaMaskNotMatch);
  // Handed on as a plain Result: the receiver is responsible for it now.
  auto pass_on = [&]() -> Result<StreamingMapping> {
    return dev.map(buf, 16, DmaDirection::kToDevice);
  };
  EXPECT_TRUE(pass_on().is_error());
  // A move hands the duty on too: only the last owner is checked.
  {
    auto a = dev.map(buf, 16, DmaDirection::kToDevice);
    auto b = std::move(a);
    EXPECT_TRUE(b.is_error());
  }
  // Successful maps are never reported, checked or not.
  ASSERT_TRUE(dev.set_dma_mask(~0ull).ok());
  {
    auto ok = dev.map(buf, 16, DmaDirection::kToDevice);
  }
  EXPECT_EQ(DmaDebug::total(), 0u) << (lines_.empty() ? "" : lines_.front());
}

// ---- The table is full ----

// The default table (kDefaultEntries) overflows: one line, the untracked mappings counted, their
// unmaps not reported, and tracked misuse still reported.
TEST_F(DmaDebugTest, AFullDefaultTableCountsUntrackedMappingsAndKeepsChecking) {
  ASSERT_EQ(DmaDebug::capacity(), DmaDebug::kDefaultEntries);
  uint8_t* buf = low_buffer(4096);
  DmaConstraints c = raw_device("storm", true);
  std::vector<DmaMapHandle> maps;
  for (size_t i = 0; i < DmaDebug::kDefaultEntries; ++i) {
    auto m = op().map_single(c, buf, 64, 0, DmaDirection::kToDevice);
    ASSERT_TRUE(m.ok());
    maps.push_back(*m);
  }
  EXPECT_EQ(DmaDebug::live_entries(), DmaDebug::kDefaultEntries);
  EXPECT_TRUE(lines_.empty());
  for (int i = 0; i < 3; ++i) {
    auto m = op().map_single(c, buf, 64, 0, DmaDirection::kToDevice);
    ASSERT_TRUE(m.ok()) << "the mapping itself never fails because of the checker";
    maps.push_back(*m);
  }
  EXPECT_EQ(DmaDebug::untracked(), 3u);
  EXPECT_EQ(DmaDebug::untracked_live(), 3u);
  std::string n = std::to_string(DmaDebug::kDefaultEntries);
  EXPECT_EQ(only_line(), "dma-debug: table-full: device 'storm' (#" + std::to_string(c.device_id) +
                             "): map_single of dma " + hex(maps.back().dma_addr.value()) +
                             " size 64 not tracked: table full (" + n +
                             " entries); untracked mappings are counted and not checked, the "
                             "others still are; expected at most " +
                             n +
                             " live mappings and allocations (give DmaDebug::init a larger "
                             "table)");
  EXPECT_EQ(DmaDebug::count(DmaDebugKind::kTableFull), 1u);
  // Tracked misuse is still reported: a size mismatch on a tracked mapping of another buffer.
  lines_.clear();
  uint8_t* other = low_buffer(4096);
  maps.pop_back();  // Room for one more tracked entry.
  op().unmap_single(maps.front());
  maps.erase(maps.begin());
  auto t = op().map_single(c, other, 128, 0, DmaDirection::kToDevice);
  ASSERT_TRUE(t.ok());
  DmaMapHandle wrong = *t;
  wrong.size = 100;
  op().unmap_single(wrong);
  expect_has(only_line(), "dma-debug: size-mismatch: device 'storm'");
  op().unmap_single(*t);
  // Every mapping ends normally, tracked or not; nothing more is reported.
  for (const DmaMapHandle& m : maps) op().unmap_single(m);
  EXPECT_EQ(op().stats().live_maps, 1u);  // The one popped above without its unmap.
  EXPECT_EQ(DmaDebug::total(), 2u);
  DmaDebug::reset();
  EXPECT_EQ(DmaDebug::untracked(), 0u);
  EXPECT_EQ(DmaDebug::live_entries(), 0u);
}

// The kernel hands the checker a table of its own: 8 entries here. The ninth and later mappings
// are counted as untracked, the line printed once; their unmaps and syncs are not misuse, while
// misuse of tracked mappings still is.
TEST_F(DmaDebugTest, ASmallCallerTableOverflowsAndStillChecksWhatItTracks) {
  static DmaDebug::Entry table[8];
  ASSERT_TRUE(DmaDebug::init(table, 8).ok());
  EXPECT_EQ(DmaDebug::capacity(), 8u);
  DmaConstraints c = raw_device("nic", true);
  std::vector<DmaMapHandle> tracked;
  std::vector<DmaMapHandle> untracked;
  uint8_t* buf = low_buffer(64 * 1024);
  for (size_t i = 0; i < 13; ++i) {
    auto m = op().map_single(c, buf + i * 4096, 256, 0, DmaDirection::kFromDevice);
    ASSERT_TRUE(m.ok());
    (i < 8 ? tracked : untracked).push_back(*m);
  }
  EXPECT_EQ(DmaDebug::live_entries(), 8u);
  EXPECT_EQ(DmaDebug::untracked(), 5u);
  EXPECT_EQ(DmaDebug::untracked_live(), 5u);
  expect_has(only_line(), "dma-debug: table-full: device 'nic'");
  expect_has(only_line(), "table full (8 entries)");
  EXPECT_EQ(DmaDebug::count(DmaDebugKind::kTableFull), 1u);

  // Untracked mappings: syncs and unmaps go through, unreported.
  for (const DmaMapHandle& m : untracked) {
    EXPECT_TRUE(op().prepare_read(m, 0, m.size, DmaDirection::kFromDevice).ok());
    op().unmap_single(m);
  }
  EXPECT_EQ(DmaDebug::untracked_live(), 0u);
  EXPECT_EQ(DmaDebug::untracked(), 5u);
  EXPECT_EQ(lines_.size(), 1u);

  // Tracked mappings are still checked: a wrong direction, then a double unmap.
  DmaMapHandle wrong = tracked[0];
  wrong.direction = DmaDirection::kToDevice;
  op().unmap_single(wrong);
  ASSERT_EQ(lines_.size(), 2u);
  expect_has(lines_.back(), "dma-debug: direction-mismatch: device 'nic'");
  op().unmap_single(tracked[0]);
  op().unmap_single(tracked[0]);
  ASSERT_EQ(lines_.size(), 3u);
  expect_has(lines_.back(), "dma-debug: not-mapped: device 'nic'");
  for (size_t i = 1; i < tracked.size(); ++i) op().unmap_single(tracked[i]);
  EXPECT_EQ(DmaDebug::live_entries(), 0u);
  EXPECT_EQ(op().stats().live_maps, 0u);

  // A second overflow after the table emptied: counted, but the line is not printed again.
  std::vector<DmaMapHandle> again;
  for (size_t i = 0; i < 9; ++i) {
    auto m = op().map_single(c, buf + i * 4096, 64, 0, DmaDirection::kToDevice);
    ASSERT_TRUE(m.ok());
    again.push_back(*m);
  }
  EXPECT_EQ(DmaDebug::untracked(), 6u);
  EXPECT_EQ(DmaDebug::count(DmaDebugKind::kTableFull), 1u);
  for (const DmaMapHandle& m : again) op().unmap_single(m);
  EXPECT_EQ(lines_.size(), 3u);
  EXPECT_EQ(DmaDebug::total(), 3u);
  ASSERT_TRUE(DmaDebug::init(nullptr, 0).ok());
  EXPECT_EQ(DmaDebug::capacity(), DmaDebug::kDefaultEntries);
}

// init checks its arguments and refuses to swap tables while anything is tracked.
TEST_F(DmaDebugTest, InitRefusesBadArgumentsAndALiveTable) {
  static DmaDebug::Entry table[4];
  EXPECT_EQ(DmaDebug::init(nullptr, 4).code(), ErrorCode::kInvalidArgument);
  EXPECT_EQ(DmaDebug::init(table, 0).code(), ErrorCode::kInvalidArgument);
  EXPECT_EQ(DmaDebug::init(table, DmaDebug::kMaxTableEntries + 1).code(),
            ErrorCode::kInvalidArgument);
  EXPECT_EQ(DmaDebug::capacity(), DmaDebug::kDefaultEntries);
  uint8_t* buf = low_buffer(4096);
  auto m = op().map_single(raw_device("busy", true), buf, 64, 0, DmaDirection::kToDevice);
  ASSERT_TRUE(m.ok());
  EXPECT_EQ(DmaDebug::init(table, 4).code(), ErrorCode::kBusy);
  EXPECT_EQ(DmaDebug::capacity(), DmaDebug::kDefaultEntries);
  op().unmap_single(*m);
  EXPECT_TRUE(lines_.empty());
  ASSERT_TRUE(DmaDebug::init(table, 4).ok());
  EXPECT_EQ(DmaDebug::capacity(), 4u);
  ASSERT_TRUE(DmaDebug::init(nullptr, 0).ok());
}

// ---- Names, and correct use ----

TEST_F(DmaDebugTest, TheMaskOnlyEntryPointsReportAnAnonymousDevice) {
  uint8_t* buf = low_buffer(4096);
  auto m = op().map_single(kMask30, buf, 100, 0, DmaDirection::kToDevice);
  ASSERT_TRUE(m.ok());
  op().unmap_single(*m);
  op().unmap_single(*m);
  expect_has(only_line(), "dma-debug: not-mapped: anonymous device: unmap_single of dma ");
}

TEST_F(DmaDebugTest, EachDeviceDmaIsADistinctDevice) {
  DeviceDma a(&op(), kMask30);
  DeviceDma b(&op(), a.constraints());
  DeviceDma a2 = a;
  EXPECT_NE(a.constraints().device_id, 0u);
  EXPECT_NE(a.constraints().device_id, b.constraints().device_id);
  EXPECT_EQ(a.constraints().device_id, a2.constraints().device_id);
}

TEST_F(DmaDebugTest, CorrectUseIsNeverReported) {
  uint8_t* lo = low_buffer(16384);
  uint8_t* hi = high_buffer(16384);
  DeviceDma dev(&op(), kMask30);
  dev.set_name("good");
  Accounting start = accounting();
  {
    auto a = dev.map(lo, 5000, DmaDirection::kBidirectional);
    auto b = dev.map(hi, 5000, DmaDirection::kFromDevice);
    auto c = dev.map(lo + 8192, 100, DmaDirection::kToDevice);
    ASSERT_TRUE(a.ok() && b.ok() && c.ok());
    ASSERT_TRUE(b->bounced());
    ASSERT_TRUE(a->sync_for_device().ok());
    ASSERT_TRUE(a->sync_for_cpu(10, 100).ok());
    ASSERT_TRUE(b->sync_for_cpu().ok());
    ASSERT_TRUE(c->sync_for_device(0, 100).ok());
    auto box = dev.alloc_box<uint64_t>();
    ASSERT_TRUE(box.ok());
    SgEntry e[] = {{hi + 8192, 3000}, {lo + 12288, 3000}};
    SgList<2> sg;
    ASSERT_TRUE(sg.map(dev, e, DmaDirection::kToDevice).ok());
    ASSERT_TRUE(sg.mapping().sync_for_device().ok());
    DmaPool pool;
    ASSERT_TRUE(pool.init(&dev, 48, 16).ok());
    auto blk = pool.alloc();
    ASSERT_TRUE(blk.ok());
    ASSERT_TRUE(pool.free(blk->cpu).ok());
    EXPECT_GT(DmaDebug::live_entries(), 0u);
  }
  EXPECT_EQ(dev.check_no_mappings(), 0u);
  EXPECT_EQ(DmaDebug::total(), 0u) << (lines_.empty() ? "" : lines_.front());
  expect_same(start);
}

}  // namespace

#endif  // DMA_API_DEBUG_ENABLED
