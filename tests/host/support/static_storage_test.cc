// The library's objects as statics of a kernel without C++ start-up code: constant-initialised
// (constinit), trivially destructible (no destructor registered with __cxa_atexit, no
// .init_array entry), metadata buffers sized at compile time, set up by init() at boot; and
// coherent memory handed over for a device's lifetime (DArray/DBox release and adopt).
//
// The freestanding side of the same claim (a cross link of constinit statics with the library
// that must contain no .init_array and no __cxa_atexit reference) is scripts/check_contract.sh.
#include <gtest/gtest.h>

#include <cstdint>
#include <cstdlib>
#include <type_traits>
#include <vector>

#include "arch/host/host_platform.h"
#include "dmakit/bounce_pool.h"
#include "dmakit/device_dma.h"
#include "dmakit/kernel_dma_op.h"
#include "dmakit/page_frame_allocator.h"

namespace {

// A platform DmaOp as the architectures write theirs: final, constant-initialisable, never
// destroyed. Its devices are all coherent, so the cache methods have nothing to do.
class StaticOp final : public KernelDmaOp {
 public:
  constexpr StaticOp() = default;
  void flush(const void*, size_t) override {}
  void invalidate(const void*, size_t) override {}
  void flush_invalidate(const void*, size_t) override {}
};

struct Desc {
  uint64_t addr;
  uint32_t len;
  uint32_t flags;
};

static_assert(std::is_trivially_destructible_v<PageFrameAllocator>);
static_assert(std::is_trivially_destructible_v<BouncePool>);
static_assert(std::is_trivially_destructible_v<StaticOp>);
static_assert(std::is_trivially_destructible_v<DArrayRef<Desc>>);
static_assert(std::is_trivially_copyable_v<DArrayRef<Desc>>);

// Metadata sized at compile time, for a machine whose RAM layout is fixed.
constexpr PhysRange kFixedRam[] = {{PhysAddr(0x4000'0000), 128ull << 20},
                                   {PhysAddr(0x1'0000'0000), 64ull << 20}};
constexpr size_t kFixedPool = 1ull << 20;
alignas(8) uint8_t g_fixed_pfa_meta[PageFrameAllocator::metadata_size(kFixedRam)];
alignas(8) uint8_t g_fixed_pool_meta[BouncePool::metadata_size(kFixedPool)];
static_assert(sizeof(g_fixed_pfa_meta) > 0 && sizeof(g_fixed_pool_meta) > 0);
static_assert(BouncePool::metadata_size(kFixedPool, 100) == 0, "not a slot size");

constinit PageFrameAllocator g_pfa;
constinit BouncePool g_pool;
constinit StaticOp g_op;
constinit DArrayRef<Desc> g_ring;

TEST(StaticStorage, CompileTimeMetadataSizesAreTheRunTimeOnes) {
  std::vector<PhysRange> ram(std::begin(kFixedRam), std::end(kFixedRam));
  EXPECT_EQ(sizeof(g_fixed_pfa_meta),
            PageFrameAllocator::metadata_size(support::Span<const PhysRange>(ram.data(), 2)));
  size_t pool_bytes = kFixedPool;  // A run-time value.
  EXPECT_EQ(sizeof(g_fixed_pool_meta), BouncePool::metadata_size(pool_bytes));
  // Enough, and not more than needed: one byte less is refused.
  PageFrameAllocator pfa;
  pfa.set_poisoning(false);
  EXPECT_EQ(pfa.init(kFixedRam, {}, 0, g_fixed_pfa_meta, sizeof(g_fixed_pfa_meta) - 1).code(),
            ErrorCode::kNoMemory);
  EXPECT_TRUE(pfa.init(kFixedRam, {}, 0, g_fixed_pfa_meta, sizeof(g_fixed_pfa_meta)).ok());
}

// The constinit statics above, brought up the way a kernel does at boot, over host memory
// standing for RAM, identity mapped (physical address = host address): the bounce pool at the
// bottom, so that the allocator's pages (handed out from the top) lie above a mask that reaches
// only the pool.
TEST(StaticStorage, ConstinitObjectsComeUpWithInit) {
  constexpr size_t kArena = 8ull << 20;
  void* arena = std::aligned_alloc(kFixedPool, kArena);
  ASSERT_NE(arena, nullptr);
  const uint64_t ram_base = reinterpret_cast<uintptr_t>(arena);
  const uint64_t pool_base = ram_base;
  PhysRange ram[] = {{PhysAddr(ram_base), kArena}};
  PhysRange reserved[] = {{PhysAddr(pool_base), kFixedPool}};
  std::vector<uint8_t> meta(PageFrameAllocator::metadata_size(ram));
  ASSERT_TRUE(g_pfa.init(ram, reserved, 0, meta.data(), meta.size()).ok());
  ASSERT_TRUE(g_pool
                  .init(PhysAddr(pool_base), kFixedPool, arena, g_fixed_pool_meta,
                        sizeof(g_fixed_pool_meta))
                  .ok());
  KernelDmaOp::Config cfg;
  cfg.pfa = &g_pfa;
  cfg.pools[0] = &g_pool;
  cfg.num_pools = 1;
  cfg.direct_map_offset = 0;
  cfg.platform_coherent = true;
  ASSERT_TRUE(g_op.init(cfg).ok());
  EXPECT_EQ(g_op.init(cfg).code(), ErrorCode::kInvalidArgument);  // Once only.

  // A bounced mapping through the static pool, a direct one, and a coherent allocation.
  DeviceDma narrow(&g_op, pool_base + kFixedPool - 1);
  DeviceDma wide(&g_op, ~0ull);
  auto page = g_pfa.alloc(0);
  ASSERT_TRUE(page.ok());
  auto* buf = static_cast<uint8_t*>(g_pfa.phys_to_virt(*page));
  {
    auto m = narrow.map(buf + 4095, 1, DmaDirection::kToDevice);
    ASSERT_TRUE(m.ok());
    EXPECT_TRUE(m->bounced());
    EXPECT_EQ(g_pool.stats().used_slots, 1u);
    auto d = wide.map(buf, 512, DmaDirection::kToDevice);
    ASSERT_TRUE(d.ok());
    EXPECT_FALSE(d->bounced());
    EXPECT_EQ(d->dma_addr().value(), page->value());
  }
  EXPECT_EQ(g_pool.stats().used_slots, 0u);
  ASSERT_TRUE(g_pfa.free(*page, 0).ok());
  {
    auto ring = wide.alloc_array<Desc>(8);
    ASSERT_TRUE(ring.ok());
    g_ring = DArrayRef<Desc>(ring->release());
  }
  // Released: the memory outlives its DArray, reached through the static view.
  EXPECT_EQ(g_op.stats().coherent_live, DMA_STATS ? 1u : 0u);
  EXPECT_EQ(g_ring.size(), 8u);
  g_ring.write_field(7, &Desc::len, 42u);
  EXPECT_EQ(g_ring.read(7).len, 42u);
  // Taken back and freed.
  DArray<Desc>::adopt(&g_op, g_ring.handle()).reset();
  EXPECT_EQ(g_op.stats().coherent_live, 0u);
  EXPECT_EQ(g_pfa.free_pages(), g_pfa.stats().managed_pages);
  g_op.shutdown();
  g_pool.shutdown();
  g_pfa.shutdown();
  std::free(arena);
}

TEST(StaticStorage, KernelDmaOpInitRefusesABadConfig) {
  HostPlatform plat(HostPlatform::default_options());
  KernelDmaOp::Config cfg = plat.op().config();
  StaticOp op;
  KernelDmaOp::Config no_pfa = cfg;
  no_pfa.pfa = nullptr;
  EXPECT_EQ(op.init(no_pfa).code(), ErrorCode::kInvalidArgument);
  KernelDmaOp::Config too_many = cfg;
  too_many.num_pools = KernelDmaOp::kMaxPools + 1;
  EXPECT_EQ(op.init(too_many).code(), ErrorCode::kInvalidArgument);
  KernelDmaOp::Config null_pool = cfg;
  null_pool.pools[null_pool.num_pools] = nullptr;
  null_pool.num_pools += 1;
  EXPECT_EQ(op.init(null_pool).code(), ErrorCode::kInvalidArgument);
  KernelDmaOp::Config bad_line = cfg;
  bad_line.cache_line_size = 48;
  EXPECT_EQ(op.init(bad_line).code(), ErrorCode::kInvalidArgument);
  // A refused init left the object as it was: a good one still succeeds.
  EXPECT_TRUE(op.init(cfg).ok());
}

TEST(StaticStorage, ReleaseHandsOverAndAdoptTakesBack) {
  HostPlatform plat(HostPlatform::default_options());
  DeviceDma dev(&plat.op(), 0xFFFF'FFFFull);
  const uint64_t free_before = plat.pfa().free_pages();
  DmaHandle array_handle;
  DmaHandle box_handle;
  {
    auto a = dev.alloc_array<Desc>(16);
    ASSERT_TRUE(a.ok());
    a->write(3, Desc{1, 2, 3});
    array_handle = a->release();
    EXPECT_FALSE(a->valid());
    a->reset();  // Empty: frees nothing.
    auto b = dev.alloc_box<uint64_t>();
    ASSERT_TRUE(b.ok());
    b->write(0x1234);
    box_handle = b->release();
    EXPECT_FALSE(b->valid());
  }
  EXPECT_LT(plat.pfa().free_pages(), free_before);  // Still allocated: both were released.
  EXPECT_EQ(DArrayRef<Desc>(array_handle).read(3).len, 2u);
  EXPECT_EQ(DArrayRef<uint64_t>(box_handle).read(0), 0x1234u);
  {
    DArray<Desc> a = DArray<Desc>::adopt(&plat.op(), array_handle);
    EXPECT_TRUE(a.valid());
    EXPECT_EQ(a.size(), 16u);
    EXPECT_EQ(a.read(3).flags, 3u);
    DBox<uint64_t> b = DBox<uint64_t>::adopt(&plat.op(), box_handle);
    EXPECT_EQ(b.read(), 0x1234u);
  }
  EXPECT_EQ(plat.pfa().free_pages(), free_before);  // The adopters freed both.
  EXPECT_EQ(dev.check_no_mappings(), 0u);
}

}  // namespace
