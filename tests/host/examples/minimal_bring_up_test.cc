// The README's minimal bring-ups (examples/minimal_identity.cc, examples/minimal_higher_half.cc),
// compiled as they are and run over simulated RAM mapped at the CPU addresses the examples
// assume: physical = virtual for the identity one (direct-map offset 0, end to end), physical +
// an offset for the higher-half one (not the upper half of a kernel: user space has none, so the
// example's offset is replaced by one user space has). The platform's DmaOp is the host
// backend's, over a model of a non-coherent cache, and the "device" reads and writes through that
// model by DMA address, so a missing cache clean or copy would show.
#include <gtest/gtest.h>
#include <sys/mman.h>

#include <cerrno>
#include <cstdint>
#include <cstring>
#include <memory>

#include "arch/host/cache_model.h"
#include "arch/host/host_platform.h"

#define DMAKIT_EXAMPLE_HOST 1
// A user-space address range neither ASan (its allocator lies at 0x5000'0000'0000) nor the
// loader uses.
#define DMAKIT_EXAMPLE_DIRECT_MAP_OFFSET 0x3000'0000'0000
#include "examples/minimal_higher_half.cc"
#include "examples/minimal_identity.cc"

namespace {

// RAM at a fixed CPU address, with the cache model over it and, once the example asks for it,
// the platform's DmaOp.
class SimulatedMachine {
 public:
  SimulatedMachine(uint64_t cpu_base, size_t size) : size_(size) {
    void* want = reinterpret_cast<void*>(cpu_base);
    void* got = mmap(want, size, PROT_READ | PROT_WRITE,
                     MAP_PRIVATE | MAP_ANONYMOUS | MAP_FIXED_NOREPLACE, -1, 0);
    if (got == want) {
      cpu_ = static_cast<uint8_t*>(got);
      model_ = std::make_unique<CacheModel>(cpu_, size, 64, CacheModel::Tracking::kStores);
    } else if (got != MAP_FAILED) {
      munmap(got, size);  // A kernel without MAP_FIXED_NOREPLACE placed it elsewhere.
      error_ = "mapped elsewhere";
    } else {
      error_ = std::strerror(errno);
    }
  }
  ~SimulatedMachine() {
    op_.reset();
    model_.reset();
    if (cpu_ != nullptr) munmap(cpu_, size_);
  }
  SimulatedMachine(const SimulatedMachine&) = delete;
  SimulatedMachine& operator=(const SimulatedMachine&) = delete;

  bool mapped() const { return cpu_ != nullptr; }
  const char* error() const { return error_; }
  Result<KernelDmaOp*> start_op(const KernelDmaOp::Config& cfg) {
    EXPECT_EQ(cfg.num_ram, 1u);
    EXPECT_EQ(cfg.ram[0].base.value() + cfg.direct_map_offset, reinterpret_cast<uintptr_t>(cpu_));
    EXPECT_EQ(cfg.ram[0].size, size_);
    ram_phys_ = cfg.ram[0].base.value();
    op_ = std::make_unique<HostDmaOp>(cfg, model_.get(), cpu_, size_, HostDmaOp::UncachedOptions{},
                                      HostCachePolicy::kAArch64);
    return static_cast<KernelDmaOp*>(op_.get());
  }
  // A non-coherent device's access at DMA address `dma` (bus offset 0: DMA = physical).
  void device_read(DmaAddr dma, void* dst, size_t len) const {
    model_->device_read(dma.value() - ram_phys_, dst, len, /*coherent=*/false);
  }
  void device_write(DmaAddr dma, const void* src, size_t len) {
    model_->device_write(dma.value() - ram_phys_, src, len, /*coherent=*/false);
  }

 private:
  size_t size_;
  uint8_t* cpu_ = nullptr;
  const char* error_ = "";
  uint64_t ram_phys_ = 0;
  std::unique_ptr<CacheModel> model_;
  std::unique_ptr<HostDmaOp> op_;
};

SimulatedMachine* g_machine = nullptr;

}  // namespace

Result<KernelDmaOp*> example::start_platform_dma_op(const KernelDmaOp::Config& cfg) {
  return g_machine->start_op(cfg);
}

namespace {

// One example's names, for the common run below.
#define EXAMPLE_TRAITS(ns)                                     \
  struct ns##_traits {                                         \
    using Desc = ns::Desc;                                     \
    static constexpr const PhysRange* kRam = ns::kRam;         \
    static constexpr PhysRange kImage = ns::kKernelImage;      \
    static constexpr PhysRange kPool = ns::kBouncePool;        \
    static constexpr uintptr_t kOffset = ns::kDirectMapOffset; \
    static constexpr uint64_t kMask = ns::kDeviceMask;         \
    static constexpr size_t kRingEntries = ns::kRingEntries;   \
    static Result<KernelDmaOp*> bring_up() {                   \
      return ns::dma_bring_up();                               \
    }                                                          \
    static Result<void> set_up(KernelDmaOp* op) {              \
      return ns::driver_set_up(op);                            \
    }                                                          \
    static PageFrameAllocator& pfa() {                         \
      return ns::g_pfa;                                        \
    }                                                          \
    static BouncePool& pool() {                                \
      return ns::g_pool;                                       \
    }                                                          \
    static DeviceDma& dev() {                                  \
      return ns::g_dev;                                        \
    }                                                          \
    static DArrayRef<Desc>& ring() {                           \
      return ns::g_ring;                                       \
    }                                                          \
  };
EXAMPLE_TRAITS(minimal_identity)
EXAMPLE_TRAITS(minimal_higher_half)
#undef EXAMPLE_TRAITS

void fill(uint8_t* p, size_t n, uint8_t seed) {
  for (size_t i = 0; i < n; ++i) p[i] = static_cast<uint8_t>(seed + i * 7);
}

template <typename E>
void run_example() {
  SimulatedMachine machine(E::kRam[0].base.value() + E::kOffset, E::kRam[0].size);
  ASSERT_TRUE(machine.mapped()) << "cannot map the simulated RAM at its fixed address: "
                                << machine.error();
  g_machine = &machine;
  auto op = E::bring_up();
  ASSERT_TRUE(op.ok()) << error_code_name(op.code());
  EXPECT_EQ((*op)->config().direct_map_offset, E::kOffset);
  ASSERT_TRUE(E::set_up(*op).ok());
  auto to_cpu = [](uint64_t phys) { return reinterpret_cast<uint8_t*>(phys + E::kOffset); };

  // The ring: coherent memory the device reaches, at CPU address = physical + offset.
  DArrayRef<typename E::Desc>& ring = E::ring();
  ASSERT_EQ(ring.size(), E::kRingEntries);
  const uint64_t ring_phys = ring.handle().phys.value();
  EXPECT_EQ(ring.dma_addr().value(), ring_phys);
  EXPECT_LE(ring.dma_addr(E::kRingEntries).value() - 1, E::kMask);
  EXPECT_EQ(reinterpret_cast<uint8_t*>(ring.raw_data()), to_cpu(ring_phys));
  typename E::Desc d{0x1234'5678, 512, 1, 2};
  machine.device_write(ring.dma_addr(5), &d, sizeof(d));
  EXPECT_EQ(ring.read_field(5, &E::Desc::len), 512u);
  ring.write_field(6, &E::Desc::next, uint16_t{9});
  typename E::Desc seen{};
  machine.device_read(ring.dma_addr(6), &seen, sizeof(seen));
  EXPECT_EQ(seen.next, 9u);

  // A direct map of a buffer in the kernel image (its .bss): DMA address = physical address.
  DeviceDma& dev = E::dev();
  const uint64_t bss_phys = E::kImage.base.value() + (1ull << 20);
  uint8_t* bss = to_cpu(bss_phys);
  fill(bss, 4096, 1);
  {
    auto m = dev.map(bss, 4096, DmaDirection::kToDevice);
    ASSERT_TRUE(m.ok()) << error_code_name(m.code());
    EXPECT_FALSE(m->bounced());
    EXPECT_EQ(m->dma_addr().value(), bss_phys);
    uint8_t got[4096];
    machine.device_read(m->dma_addr(), got, sizeof(got));
    EXPECT_EQ(std::memcmp(got, bss, sizeof(got)), 0);
  }

  // A bounced map of a page from the top of RAM, beyond the device's mask: in both directions
  // the device sees the bounce slot, the CPU its own buffer.
  // (The largest order: the allocator hands out the highest block of the smallest order that has
  // one, and the ring's allocation left small blocks below the mask.)
  auto page = E::pfa().alloc(PageFrameAllocator::kMaxOrder);
  ASSERT_TRUE(page.ok());
  ASSERT_GT(page->value(), E::kMask);
  uint8_t* buf = to_cpu(page->value());
  EXPECT_EQ(E::pfa().phys_to_virt(*page), buf);
  fill(buf, 4096, 2);
  {
    auto m = dev.map(buf, 4096, DmaDirection::kToDevice);
    ASSERT_TRUE(m.ok()) << error_code_name(m.code());
    EXPECT_TRUE(m->bounced());
    EXPECT_GE(m->dma_addr().value(), E::kPool.base.value());
    EXPECT_LT(m->dma_addr().value(), E::kPool.end().value());
    uint8_t got[4096];
    machine.device_read(m->dma_addr(), got, sizeof(got));
    EXPECT_EQ(std::memcmp(got, buf, sizeof(got)), 0);
  }
  {
    auto m = dev.map(buf, 4096, DmaDirection::kFromDevice);
    ASSERT_TRUE(m.ok()) << error_code_name(m.code());
    EXPECT_TRUE(m->bounced());
    uint8_t written[4096];
    fill(written, sizeof(written), 3);
    machine.device_write(m->dma_addr(), written, sizeof(written));
    m->unmap();
    EXPECT_EQ(std::memcmp(buf, written, sizeof(written)), 0);
  }
  // A device reaching everything gets the page's own address.
  DeviceDma wide(*op, ~0ull);
  {
    auto m = wide.map(buf, 4096, DmaDirection::kBidirectional);
    ASSERT_TRUE(m.ok());
    EXPECT_FALSE(m->bounced());
    EXPECT_EQ(m->dma_addr().value(), page->value());
  }

  // Everything back: the ring taken back from its static view and freed, the page freed.
  DArray<typename E::Desc>::adopt(*op, ring.handle()).reset();
  ring = DArrayRef<typename E::Desc>();
  ASSERT_TRUE(E::pfa().free(*page, PageFrameAllocator::kMaxOrder).ok());
  EXPECT_EQ(E::pool().stats().used_slots, 0u);
  EXPECT_EQ(E::pfa().free_pages(), E::pfa().stats().managed_pages);
  EXPECT_EQ(dev.check_no_mappings(), 0u);
  E::pool().shutdown();
  E::pfa().shutdown();
  g_machine = nullptr;
}

TEST(MinimalBringUp, IdentityMappedKernelWithDirectMapOffsetZero) {
  static_assert(minimal_identity::kDirectMapOffset == 0);
  run_example<minimal_identity_traits>();
}

TEST(MinimalBringUp, HigherHalfKernel) {
  static_assert(minimal_higher_half::kDirectMapOffset != 0);
  run_example<minimal_higher_half_traits>();
}

}  // namespace
