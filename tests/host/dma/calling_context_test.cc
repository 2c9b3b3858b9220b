// The misuse checker's calling-context check (dmakit/dma_debug.h, kWrongContext): with the
// kernel's in_interrupt hook saying "inside an interrupt handler", every function documented
// thread only is refused (kBusy, or nothing done for dealloc_coherent) with one report line and
// no accounting changed, and every function documented any context still works unreported.
#include <gtest/gtest.h>

#include <cstdint>
#include <string>
#include <vector>

#include "arch/host/host_platform.h"
#include "dmakit/device_dma.h"
#include "dmakit/dma_debug.h"
#include "dmakit/dma_pool.h"
#include "dmakit/kernel_hooks.h"

#if DMA_API_DEBUG_ENABLED  // The check exists only with DMA_API_DEBUG.

namespace {

int g_in_interrupt;
int g_irqs_disabled;

int test_in_interrupt() {
  return g_in_interrupt;
}
int test_irqs_disabled() {
  return g_irqs_disabled;
}

class CallingContextTest : public testing::Test {
 protected:
  CallingContextTest() : plat_(HostPlatform::default_options()) {}

  void SetUp() override {
    DmaDebug::reset();
    DmaDebug::set_sink(&CallingContextTest::capture, this, &old_sink_, &old_ctx_);
    dmakit_kernel_hooks hooks{};
    hooks.in_interrupt = &test_in_interrupt;
    hooks.irqs_disabled = &test_irqs_disabled;
    dmakit_set_kernel_hooks(&hooks);
    g_in_interrupt = 0;
    g_irqs_disabled = 0;
  }
  void TearDown() override {
    g_in_interrupt = 0;
    g_irqs_disabled = 0;
    dmakit_set_kernel_hooks(nullptr);
    DmaDebug::set_sink(old_sink_, old_ctx_);
    DmaDebug::reset();
  }
  static void capture(void* ctx, const char* line) {
    static_cast<CallingContextTest*>(ctx)->lines_.emplace_back(line);
  }

  DmaConstraints device(const char* name, bool coherent) {
    DmaConstraints c;
    c.dma_mask = 0xFFFF'FFFFull;
    c.coherence = dma_coherence(coherent);
    c.name = name;
    c.device_id = DmaDebug::new_device_id();
    return c;
  }

  // The one line a refused call must have produced, then forgets it.
  void expect_one_report(const std::string& line) {
    ASSERT_EQ(lines_.size(), 1u);
    EXPECT_EQ(lines_[0], line);
    lines_.clear();
  }

  HostPlatform plat_;
  std::vector<std::string> lines_;
  DmaDebug::Sink old_sink_ = nullptr;
  void* old_ctx_ = nullptr;
};

std::string refused(const std::string& who, const char* function) {
  return "dma-debug: wrong-context: " + who + function +
         " called from an interrupt handler; it is thread only (it may edit page tables and wait "
         "for other CPUs): refused";
}

TEST_F(CallingContextTest, NonCoherentAllocCoherentFromAnInterruptHandlerIsRefused) {
  DmaConstraints c = device("nic", false);
  const std::string who = "device 'nic' (#" + std::to_string(c.device_id) + "): ";
  const uint64_t free_before = plat_.pfa().free_pages();
  g_in_interrupt = 1;
  auto r = plat_.op().alloc_coherent(c, Layout{4096, 4096});
  EXPECT_EQ(r.code(), ErrorCode::kBusy);
  expect_one_report(refused(who, "alloc_coherent"));
  EXPECT_EQ(DmaDebug::count(DmaDebugKind::kWrongContext), 1u);
  EXPECT_EQ(plat_.pfa().free_pages(), free_before);
  EXPECT_EQ(plat_.op().stats().coherent_live, 0u);
  EXPECT_EQ(plat_.model().uncached_pages(), 0u);
  EXPECT_EQ(DmaDebug::live_entries(), 0u);

  // The same call from thread context goes through.
  g_in_interrupt = 0;
  auto h = plat_.op().alloc_coherent(c, Layout{4096, 4096});
  ASSERT_TRUE(h.ok());
  EXPECT_TRUE(lines_.empty());
  EXPECT_EQ(DmaDebug::count(DmaDebugKind::kWrongContext), 1u);

  // Its free from a handler is refused too: the allocation stays live and uncached.
  g_in_interrupt = 1;
  plat_.op().dealloc_coherent(*h);
  expect_one_report(refused(who, "dealloc_coherent"));
  EXPECT_EQ(DmaDebug::count(DmaDebugKind::kWrongContext), 2u);
  EXPECT_EQ(plat_.op().stats().coherent_live, 1u);
  EXPECT_EQ(plat_.model().uncached_pages(), 1u);
  EXPECT_EQ(DmaDebug::live_entries(c.device_id), 1u);

  g_in_interrupt = 0;
  plat_.op().dealloc_coherent(*h);
  EXPECT_TRUE(lines_.empty());
  EXPECT_EQ(plat_.op().stats().coherent_live, 0u);
  EXPECT_EQ(plat_.pfa().free_pages(), free_before);
  EXPECT_EQ(DmaDebug::total(), 2u);
}

TEST_F(CallingContextTest, SetMemoryAttributeFromAnInterruptHandlerIsRefused) {
  DmaConstraints c = device("gpu", true);
  auto h = plat_.op().alloc_coherent(c, Layout{4096, 4096});
  ASSERT_TRUE(h.ok());
  g_in_interrupt = 1;
  EXPECT_EQ(
      plat_.op().set_memory_attribute(h->cpu_addr, 4096, KernelDmaOp::MemAttr::kUncached).code(),
      ErrorCode::kBusy);
  expect_one_report(refused("", "set_memory_attribute"));
  EXPECT_EQ(plat_.model().uncached_pages(), 0u);
  g_in_interrupt = 0;
  plat_.op().dealloc_coherent(*h);
  EXPECT_EQ(DmaDebug::count(DmaDebugKind::kWrongContext), 1u);
}

std::string refused_masked(const std::string& who, const char* function) {
  return "dma-debug: wrong-context: " + who + function +
         " called with interrupts disabled; it is thread only (it may edit page tables and wait "
         "for other CPUs): refused";
}

// With interrupts masked (not in a handler), tlb_flush_kernel_range's IPIs may never be answered:
// the thread-only calls are refused and reported as from a handler, nothing changes.
TEST_F(CallingContextTest, ThreadOnlyCallsWithInterruptsDisabledAreRefused) {
  DmaConstraints c = device("nic", false);
  const std::string who = "device 'nic' (#" + std::to_string(c.device_id) + "): ";
  const uint64_t free_before = plat_.pfa().free_pages();
  g_irqs_disabled = 1;
  auto r = plat_.op().alloc_coherent(c, Layout{4096, 4096});
  EXPECT_EQ(r.code(), ErrorCode::kBusy);
  expect_one_report(refused_masked(who, "alloc_coherent"));
  EXPECT_EQ(plat_.pfa().free_pages(), free_before);
  EXPECT_EQ(plat_.op().stats().coherent_live, 0u);
  EXPECT_EQ(plat_.model().uncached_pages(), 0u);
  EXPECT_EQ(DmaDebug::live_entries(), 0u);

  g_irqs_disabled = 0;
  auto h = plat_.op().alloc_coherent(c, Layout{4096, 4096});
  ASSERT_TRUE(h.ok());
  EXPECT_TRUE(lines_.empty());

  g_irqs_disabled = 1;
  plat_.op().dealloc_coherent(*h);
  expect_one_report(refused_masked(who, "dealloc_coherent"));
  EXPECT_EQ(plat_.op().stats().coherent_live, 1u);
  EXPECT_EQ(plat_.model().uncached_pages(), 1u);
  EXPECT_EQ(
      plat_.op().set_memory_attribute(h->cpu_addr, 4096, KernelDmaOp::MemAttr::kCached).code(),
      ErrorCode::kBusy);
  expect_one_report(refused_masked("", "set_memory_attribute"));
  EXPECT_EQ(plat_.model().uncached_pages(), 1u);
  // In a handler (interrupts masked there too) the report says handler.
  g_in_interrupt = 1;
  plat_.op().dealloc_coherent(*h);
  expect_one_report(refused(who, "dealloc_coherent"));
  g_in_interrupt = 0;

  // Any-context calls with interrupts masked are not reported: a coherent device's memory, a
  // streaming mapping.
  DmaConstraints coh = device("ssd", true);
  auto ch = plat_.op().alloc_coherent(coh, Layout{4096, 4096});
  ASSERT_TRUE(ch.ok());
  plat_.op().dealloc_coherent(*ch);
  uint8_t* buf = plat_.buffer_above(0, 512);
  ASSERT_NE(buf, nullptr);
  auto m = plat_.op().map_single(c, buf, 512, 0, DmaDirection::kBidirectional);
  ASSERT_TRUE(m.ok());
  plat_.op().unmap_single(*m);
  plat_.release_buffer(buf);
  EXPECT_TRUE(lines_.empty());

  g_irqs_disabled = 0;
  plat_.op().dealloc_coherent(*h);
  EXPECT_TRUE(lines_.empty());
  EXPECT_EQ(plat_.op().stats().coherent_live, 0u);
  EXPECT_EQ(plat_.model().uncached_pages(), 0u);
  EXPECT_EQ(plat_.pfa().free_pages(), free_before);
  EXPECT_EQ(DmaDebug::count(DmaDebugKind::kWrongContext), 4u);
}

TEST_F(CallingContextTest, DmaPoolGrowthCallsFromAnInterruptHandlerAreRefused) {
  DeviceDma dev(&plat_.op(), 0xFFFF'FFFFull);
  dev.set_name("disk");
  const std::string who = "device 'disk' (#" + std::to_string(dev.constraints().device_id) + "): ";
  DmaPool pool;
  g_in_interrupt = 1;
  EXPECT_EQ(pool.init(&dev, 64, 64).code(), ErrorCode::kBusy);
  expect_one_report(refused(who, "DmaPool::init"));
  g_in_interrupt = 0;
  ASSERT_TRUE(pool.init(&dev, 64, 64).ok());
  ASSERT_TRUE(pool.reserve(1).ok());
  const DmaPool::Stats before = pool.stats();

  g_in_interrupt = 1;
  EXPECT_EQ(pool.reserve(before.free_blocks + 1).code(), ErrorCode::kBusy);
  expect_one_report(refused(who, "DmaPool::reserve"));
  // Refused even when a block is free: alloc is thread only whatever the pool holds right now.
  EXPECT_EQ(pool.alloc().code(), ErrorCode::kBusy);
  expect_one_report(refused(who, "DmaPool::alloc"));
  const DmaPool::Stats after = pool.stats();
  EXPECT_EQ(after.chunks, before.chunks);
  EXPECT_EQ(after.free_blocks, before.free_blocks);
  EXPECT_EQ(after.blocks_in_use, 0u);

  // try_alloc and free are any context.
  auto b = pool.try_alloc();
  ASSERT_TRUE(b.ok());
  EXPECT_TRUE(pool.free(b->cpu).ok());
  EXPECT_TRUE(lines_.empty());
  g_in_interrupt = 0;
  EXPECT_EQ(DmaDebug::count(DmaDebugKind::kWrongContext), 3u);
}

TEST_F(CallingContextTest, AnyContextCallsFromAnInterruptHandlerAreNotReported) {
  DmaConstraints nc = device("nic", false);
  DmaConstraints coh = device("ssd", true);
  uint8_t* buf = plat_.buffer_above(0, 512);
  ASSERT_NE(buf, nullptr);
  g_in_interrupt = 1;
  // Direct and bounced, every direction.
  for (bool bounce : {false, true}) {
    nc.force_bounce = bounce;
    for (DmaDirection dir :
         {DmaDirection::kToDevice, DmaDirection::kFromDevice, DmaDirection::kBidirectional}) {
      auto m = plat_.op().map_single(nc, buf, 512, 0, dir);
      ASSERT_TRUE(m.ok());
      EXPECT_TRUE(plat_.op().confirm_write(*m, 0, 512, dir).ok());
      EXPECT_TRUE(plat_.op().prepare_read(*m, 0, 512, dir).ok());
      plat_.op().unmap_single(*m);
    }
  }
  // A coherent device's coherent memory is any context: no page-table change.
  auto h = plat_.op().alloc_coherent(coh, Layout{4096, 4096});
  ASSERT_TRUE(h.ok());
  plat_.op().dealloc_coherent(*h);
  plat_.op().flush(buf, 512);
  plat_.op().invalidate(buf, 512);
  g_in_interrupt = 0;
  plat_.release_buffer(buf);
  EXPECT_TRUE(lines_.empty());
  EXPECT_EQ(DmaDebug::total(), 0u);
  EXPECT_EQ(plat_.op().stats().coherent_live, 0u);
  EXPECT_EQ(plat_.op().stats().live_maps, 0u);
}

TEST_F(CallingContextTest, WithoutTheHookNothingIsChecked) {
  dmakit_set_kernel_hooks(nullptr);
  g_in_interrupt = 1;
  DmaConstraints c = device("nic", false);
  auto h = plat_.op().alloc_coherent(c, Layout{4096, 4096});
  ASSERT_TRUE(h.ok());
  plat_.op().dealloc_coherent(*h);
  EXPECT_TRUE(lines_.empty());
  EXPECT_EQ(DmaDebug::count(DmaDebugKind::kWrongContext), 0u);
}

}  // namespace

#endif  // DMA_API_DEBUG_ENABLED
