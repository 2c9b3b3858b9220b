// Translation as the kernel describes it, without subclassing the DmaOp (issue "A library any
// kernel can link", item 3): all of RAM through the direct map (Config::ram), and a callback for
// addresses outside it (Config::translate), page by page.
#include <gtest/gtest.h>

#include <map>

#include "arch/host/host_platform.h"
#include "dmakit/kernel_dma_op.h"

namespace {

constexpr uint64_t kMask64 = ~0ull;
constexpr uint64_t kPage = 4096;

DmaConstraints coherent_device() {
  DmaConstraints c;
  c.dma_mask = kMask64;
  c.coherence = DmaCoherence::kCoherent;
  return c;
}

// RAM the allocator does not manage (the kernel keeps its first MiB) is still RAM: the default
// translation covers it.
TEST(TranslationTest, RamOutsideTheAllocatorIsTranslatedThroughTheDirectMap) {
  HostPlatform::Options o = HostPlatform::default_options();
  uint64_t base = o.ram[0].base.value();
  o.reserved.push_back(PhysRange{PhysAddr(base), 1ull << 20});
  HostPlatform plat(o);
  ASSERT_GT(plat.pfa().lowest_address().value(), base + kPage);
  uint8_t* buf = plat.phys_to_virt(base + kPage);
  auto pa = plat.op().virt_to_phys(buf);
  ASSERT_TRUE(pa.ok());
  EXPECT_EQ(pa->value(), base + kPage);
  auto m = plat.op().map_single(coherent_device(), buf, 3 * kPage, 0, DmaDirection::kToDevice);
  ASSERT_TRUE(m.ok());
  EXPECT_FALSE(m->bounced());
  EXPECT_EQ(m->dma_addr.value(), base + kPage);
  plat.op().unmap_single(*m);
}

// A vmalloc-like window the kernel translates itself, given to the library as a callback.
struct PageTable {
  static constexpr uintptr_t kWindow = 0x7200'0000'0000;
  std::map<uint64_t, uint64_t> pages;  // Page index in the window -> physical page.
  static bool translate(void* ctx, const void* va, uint64_t* phys) {
    auto* t = static_cast<PageTable*>(ctx);
    auto v = reinterpret_cast<uintptr_t>(va);
    if (v < kWindow) return false;
    auto it = t->pages.find((v - kWindow) / kPage);
    if (it == t->pages.end()) return false;
    *phys = it->second + (v % kPage);
    return true;
  }
  void* at(size_t page, size_t offset = 0) const {
    return reinterpret_cast<void*>(kWindow + page * kPage + offset);
  }
};

class TranslateCallbackTest : public testing::Test {
 protected:
  TranslateCallbackTest() : plat_(HostPlatform::default_options()) {
    KernelDmaOp::Config cfg = plat_.op().config();
    cfg.translate = &PageTable::translate;
    cfg.translate_ctx = &table_;
    // The platform's own DmaOp class, configured rather than derived from.
    op_ = std::make_unique<HostDmaOp>(cfg, &plat_.model(), plat_.phys_to_virt(plat_.arena_phys()),
                                      plat_.arena_size(), HostDmaOp::UncachedOptions{});
  }
  uint64_t pages(size_t n) {
    unsigned order = PageFrameAllocator::order_for(n * kPage);
    auto pa = plat_.pfa().alloc(order);
    EXPECT_TRUE(pa.ok());
    held_.push_back({pa->value(), order});
    return pa->value();
  }
  void TearDown() override {
    for (auto& h : held_) ASSERT_TRUE(plat_.pfa().free(PhysAddr(h.first), h.second).ok());
  }

  HostPlatform plat_;
  PageTable table_;
  std::unique_ptr<HostDmaOp> op_;
  std::vector<std::pair<uint64_t, unsigned>> held_;
};

TEST_F(TranslateCallbackTest, ContiguousPagesMapAndScatteredOnesAreRefused) {
  uint64_t p = pages(4);
  for (size_t i = 0; i < 4; ++i) table_.pages[i] = p + i * kPage;
  auto m = op_->map_single(coherent_device(), table_.at(0, 100), 3 * kPage, 0,
                           DmaDirection::kFromDevice);
  ASSERT_TRUE(m.ok()) << error_code_name(m.code());
  EXPECT_EQ(m->dma_addr.value(), p + 100);
  op_->unmap_single(*m);
  // Pages P, X, P + 2: refused, never mapped as if contiguous.
  table_.pages[11] = p;
  table_.pages[12] = pages(1);
  table_.pages[13] = p + 2 * kPage;
  auto bad =
      op_->map_single(coherent_device(), table_.at(11), 3 * kPage, 0, DmaDirection::kFromDevice);
  ASSERT_FALSE(bad.ok());
  EXPECT_EQ(bad.code(), ErrorCode::kNotContiguous);
  EXPECT_EQ(bad.error().addr, reinterpret_cast<uintptr_t>(table_.at(12)));
  // No translation at all.
  EXPECT_EQ(
      op_->map_single(coherent_device(), table_.at(40), 16, 0, DmaDirection::kToDevice).code(),
      ErrorCode::kInvalidArgument);
  EXPECT_EQ(op_->virt_to_phys(table_.at(2, 5))->value(), p + 2 * kPage + 5);
}

}  // namespace
