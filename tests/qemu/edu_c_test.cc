// In-VM tests of the C API with a real DMA engine: QEMU's edu device driven by the C driver
// (drivers/edu/edu_c.c, C11 against dmakit/dmakit.h only), direct and bounced, with the data
// checked after a round trip through the device's buffer.
//
//   edu_c_*_kernel_device: the driver on a dmakit_device made from the test kernel's own
//     DeviceDma (dmakit_device_from_cpp): a C driver in a C++ kernel.
//   edu_c_*_c_setup: the whole set-up through the C API as a C kernel makes it (allocator over
//     two 4 MiB blocks of RAM, one under 4 GiB and one above, a bounce pool, the architecture's
//     platform op from dmakit_platform_op_init), then the driver on a device of that op.
//   edu_c_driver_28bit_*: the device with the 28-bit mask, which bounces or fails cleanly.
// The first two use the edu device with the 32-bit mask (the runner provides one of each,
// testkernel/devices.h): a buffer under 4 GiB goes to the device directly, one above it through a
// bounce slot.
#include "drivers/edu/edu_c.h"
#include "dmakit/device_dma.h"
#include "dmakit/dmakit.h"
#include "dmakit/kernel_dma_op.h"
#include "testkernel/arch.h"
#include "testkernel/arch_io.h"
#include "testkernel/devices.h"
#include "testkernel/iommu.h"
#include "testkernel/kernel_env.h"
#include "testkernel/kprintf.h"
#include "tests/qemu/ktest.h"
#include "tests/qemu/test_util.h"

using ktest_util::Pages;

namespace {

constexpr uint64_t kMask32 = 0xFFFF'FFFFull;
constexpr size_t kSize = EDU_C_BUFFER_SIZE;
constexpr uint64_t kBlock = 4ull << 20;  // An order-10 block of the kernel's allocator.

void wmb() {
  arch::io_wmb();
}
void rmb() {
  arch::io_rmb();
}
uint64_t now() {
  return arch::now_ns();
}
const edu_c_ops kOps = {&wmb, &rmb, &now};

// The edu device with this mask, decoding and bus mastering on; disabled again at scope
// exit.
class EduPci {
 public:
  explicit EduPci(uint64_t mask = kMask32) {
    auto d = devices_init(kernel_env());
    if (!d.ok()) return;
    const Devices::Edu* e = (*d)->edu_with_mask(mask);
    if (e == nullptr || !e->dev->enable(/*bus_master=*/true).ok()) return;
    pci_ = e->dev;
    auto bar = pci_->map_bar(0);
    if (bar.ok()) bar_ = *bar;
  }
  ~EduPci() {
    if (pci_ != nullptr) pci_->disable();
  }
  EduPci(const EduPci&) = delete;
  EduPci& operator=(const EduPci&) = delete;
  bool ok() const { return bar_.valid(); }
  // The DmaOp a DeviceDma of this function uses (its IOMMU domain when translated).
  DmaOp* dma_op() const { return iommu::dma_op_for(pci_); }
  volatile void* base() const { return bar_.base(); }
  uint64_t size() const { return bar_.size(); }

 private:
  PciDevice* pci_ = nullptr;
  MmioRegion bar_;
};

// far -> device -> near and near -> device -> far, each checked: `far` is bounced (the mask
// does not reach it, or bouncing is forced), `near` goes to the device directly.
void round_trips(ktest::Context& ktest_ctx, edu_c* edu, uint8_t* far, uint8_t* near,
                 uint64_t mask = kMask32) {
  edu_c_transfer t = {};
  ktest_util::fill_pattern(far, kSize, 41);
  support::fill_bytes(near, 0, kSize);
  KEXPECT_EQ(edu_c_copy_to_device(edu, far, kSize, 0, &t), DMAKIT_OK);
  KEXPECT_EQ(t.bounced, 1);
  KEXPECT_LE(t.dma_addr + kSize - 1, mask);
  KEXPECT_EQ(edu_c_copy_from_device(edu, near, kSize, 0, &t), DMAKIT_OK);
  KEXPECT_EQ(t.bounced, 0);
  KEXPECT_EQ(ktest_util::check_pattern(near, kSize, 41), kSize);

  ktest_util::fill_pattern(near, kSize, 42);
  support::fill_bytes(far, 0, kSize);
  KEXPECT_EQ(edu_c_copy_to_device(edu, near, kSize, 0, &t), DMAKIT_OK);
  KEXPECT_EQ(t.bounced, 0);
  KEXPECT_EQ(edu_c_copy_from_device(edu, far, kSize, 0, &t), DMAKIT_OK);
  KEXPECT_EQ(t.bounced, 1);
  KEXPECT_LE(t.dma_addr + kSize - 1, mask);
  KEXPECT_EQ(ktest_util::check_pattern(far, kSize, 42), kSize);

  // Refused requests never reach the device.
  uint64_t started = edu->started;
  KEXPECT_EQ(edu_c_copy_to_device(edu, near, 0, 0, nullptr), DMAKIT_ERR_LAYOUT);
  KEXPECT_EQ(edu_c_copy_to_device(edu, near, 16, kSize - 8, nullptr), DMAKIT_ERR_OUT_OF_RANGE);
  KEXPECT_EQ(edu->started, started);
  KEXPECT_EQ(edu->completed, edu->started);
  KEXPECT_EQ(edu->bounced, 2u);
}

}  // namespace

KTEST_WHEN(edu_c_driver_direct_and_bounced_on_the_kernel_device, iommu::inactive) {
  EduPci pci;
  KREQUIRE_TRUE(pci.ok());
  DeviceDma cpp(pci.dma_op(), kMask32);
  cpp.set_name("edu-c-32bit");
  dmakit_device dev;
  KREQUIRE_TRUE(dmakit_device_from_cpp(&dev, cpp) == DMAKIT_OK);
  KEXPECT_EQ(dmakit_device_dma_mask(&dev), kMask32);
  edu_c edu;
  KREQUIRE_TRUE(edu_c_init(&edu, pci.base(), pci.size(), &dev, &kOps) == DMAKIT_OK);

  Pages near(0, kMask32);
  KREQUIRE_TRUE(near.ok());
  auto high = ktest_util::alloc_above(0, kMask32);
  Pages any(0);
  uint8_t* far = nullptr;
  if (high.ok()) {
    far = static_cast<uint8_t*>(kernel_env().phys_to_virt(*high));
  } else {
    kprintf("  note: no free RAM above 4 GiB; forcing the bounce\n");
    KREQUIRE_TRUE(any.ok());
    far = any.va();
  }
#if DMA_STATS
  KernelDmaOp::Stats s0 = kernel_env().dma->stats();
#endif
  if (high.ok()) {
    round_trips(ktest_ctx, &edu, far, near.va());
  } else {
    // Forced, every transfer of this device bounces: check the data through the device.
    KEXPECT_EQ(dmakit_device_set_force_bounce(&dev, 1), DMAKIT_OK);
    edu_c_transfer t = {};
    ktest_util::fill_pattern(far, kSize, 43);
    KEXPECT_EQ(edu_c_copy_to_device(&edu, far, kSize, 0, &t), DMAKIT_OK);
    KEXPECT_EQ(t.bounced, 1);
    support::fill_bytes(far, 0, kSize);
    KEXPECT_EQ(edu_c_copy_from_device(&edu, far, kSize, 0, &t), DMAKIT_OK);
    KEXPECT_EQ(ktest_util::check_pattern(far, kSize, 43), kSize);
  }
#if DMA_STATS
  KernelDmaOp::Stats s1 = kernel_env().dma->stats();
  KEXPECT_GE(s1.bounced_maps - s0.bounced_maps, 2u);
  KEXPECT_EQ(s1.live_maps, s0.live_maps);
#endif
  KEXPECT_EQ(edu.completed, edu.started);
  KEXPECT_EQ(dmakit_device_check_no_mappings(&dev), 0u);
  if (high.ok()) KEXPECT_TRUE(kernel_env().pfa->free(*high, 0).ok());
}

KTEST_WHEN(edu_c_driver_direct_and_bounced_on_a_c_setup, iommu::inactive) {
  EduPci pci;
  KREQUIRE_TRUE(pci.ok());
  // The C kernel's RAM: a 4 MiB block under 4 GiB (its first MiB the bounce pool) and, when the
  // machine has free memory there, one above.
  Pages low(10, kMask32);
  KREQUIRE_TRUE(low.ok());
  auto high = ktest_util::alloc_above(10, kMask32);
  const uintptr_t offset = kernel_env().direct_map_offset;
  dmakit_phys_range ram[2] = {{low.phys().value(), kBlock}, {0, 0}};
  size_t num_ram = 1;
  if (high.ok()) ram[num_ram++] = dmakit_phys_range{high->value(), kBlock};
  const dmakit_phys_range reserved[1] = {{low.phys().value(), 1u << 20}};

  // Metadata outside the managed memory, in the kernel image, as a C kernel's static buffers.
  static unsigned char pfa_meta[8192];
  static unsigned char pool_meta[16384] __attribute__((aligned(8)));
  static dmakit_pfa pfa;
  static dmakit_bounce_pool pool;
  static dmakit_platform_op op;
  size_t meta = dmakit_pfa_metadata_size(ram, num_ram);
  KREQUIRE_TRUE(meta > 0 && meta <= sizeof(pfa_meta));
  KREQUIRE_TRUE(dmakit_pfa_init(&pfa, ram, num_ram, reserved, 1, offset, pfa_meta, meta) ==
                DMAKIT_OK);
  size_t pmeta = dmakit_bounce_pool_metadata_size(1u << 20, 0);
  KREQUIRE_TRUE(pmeta > 0 && pmeta <= sizeof(pool_meta));
  dmakit_bounce_pool_options po = {0, 0, "edu-c-pool"};
  KREQUIRE_TRUE(dmakit_bounce_pool_init(&pool, low.phys().value(), 1u << 20,
                                        kernel_env().phys_to_virt(low.phys()), pool_meta, pmeta,
                                        &po) == DMAKIT_OK);
  dmakit_platform_config cfg = {};
  cfg.pfa = &pfa;
  cfg.pools[0] = &pool;
  cfg.num_pools = 1;
  cfg.direct_map_offset = offset;
  cfg.ram = ram;
  cfg.num_ram = num_ram;
  KREQUIRE_TRUE(dmakit_platform_op_init(&op, &cfg) == DMAKIT_OK);
  KEXPECT_GE(dmakit_cache_alignment(&op), 16u);

  dmakit_device dev;
  dmakit_device_config dc = {};
  dc.dma_mask = kMask32;
  dc.name = "edu-c-setup";
  KREQUIRE_TRUE(dmakit_device_init(&dev, &op, &dc) == DMAKIT_OK);
  edu_c edu;
  KREQUIRE_TRUE(edu_c_init(&edu, pci.base(), pci.size(), &dev, &kOps) == DMAKIT_OK);

  uint64_t near_phys = 0;
  KREQUIRE_TRUE(dmakit_pfa_alloc(&pfa, 0, kMask32, &near_phys) == DMAKIT_OK);
  auto* near = static_cast<uint8_t*>(dmakit_pfa_phys_to_virt(&pfa, near_phys));
  if (high.ok()) {
    // The highest order-10 block: the one above 4 GiB.
    uint64_t far_phys = 0;
    KREQUIRE_TRUE(dmakit_pfa_alloc(&pfa, 10, ~0ull, &far_phys) == DMAKIT_OK);
    KEXPECT_EQ(far_phys, high->value());
    round_trips(ktest_ctx, &edu, static_cast<uint8_t*>(dmakit_pfa_phys_to_virt(&pfa, far_phys)),
                near);
    KEXPECT_EQ(dmakit_pfa_free(&pfa, far_phys, 10), DMAKIT_OK);
  } else {
    kprintf("  note: no free RAM above 4 GiB; forcing the bounce\n");
    KEXPECT_EQ(dmakit_device_set_force_bounce(&dev, 1), DMAKIT_OK);
    edu_c_transfer t = {};
    ktest_util::fill_pattern(near, kSize, 44);
    KEXPECT_EQ(edu_c_copy_to_device(&edu, near, kSize, 0, &t), DMAKIT_OK);
    KEXPECT_EQ(t.bounced, 1);
    support::fill_bytes(near, 0, kSize);
    KEXPECT_EQ(edu_c_copy_from_device(&edu, near, kSize, 0, &t), DMAKIT_OK);
    KEXPECT_EQ(ktest_util::check_pattern(near, kSize, 44), kSize);
  }
  KEXPECT_EQ(dmakit_pfa_free(&pfa, near_phys, 0), DMAKIT_OK);

  dmakit_op_stats s = {};
#if DMA_STATS
  KEXPECT_EQ(dmakit_op_stats_get(&op, &s), DMAKIT_OK);
  KEXPECT_GE(s.bounced_maps, 2u);
  KEXPECT_EQ(s.live_maps, 0u);
#else
  KEXPECT_EQ(dmakit_op_stats_get(&op, &s), DMAKIT_ERR_NOT_SUPPORTED);
#endif
  dmakit_bounce_pool_stats ps = {};
  KEXPECT_EQ(dmakit_bounce_pool_stats_get(&pool, &ps), DMAKIT_OK);
  KEXPECT_GE(ps.allocations, 2u);
  KEXPECT_EQ(ps.used_slots, 0u);
  KEXPECT_EQ(dmakit_device_check_no_mappings(&dev), 0u);
  KEXPECT_EQ(dmakit_platform_op_destroy(&op), DMAKIT_OK);
  KEXPECT_EQ(dmakit_bounce_pool_destroy(&pool), DMAKIT_OK);
  KEXPECT_EQ(dmakit_pfa_destroy(&pfa), DMAKIT_OK);
  if (high.ok()) KEXPECT_TRUE(kernel_env().pfa->free(*high, 10).ok());
}

// The edu device with its default 28-bit mask: where a bounce pool lies under 28 bits (x86 q35)
// a buffer above goes through it; where no memory does (aarch64 and riscv64 virt), the mapping
// fails with DMA_MASK and the device is never started.
KTEST_WHEN(edu_c_driver_28bit_mask_bounces_or_fails_cleanly, iommu::inactive) {
  const uint64_t mask = Devices::kEduDefaultMask;
  EduPci pci(mask);
  KREQUIRE_TRUE(pci.ok());
  DeviceDma cpp(pci.dma_op(), mask);
  cpp.set_name("edu-c-28bit");
  dmakit_device dev;
  KREQUIRE_TRUE(dmakit_device_from_cpp(&dev, cpp) == DMAKIT_OK);
  edu_c edu;
  KREQUIRE_TRUE(edu_c_init(&edu, pci.base(), pci.size(), &dev, &kOps) == DMAKIT_OK);
  bool pool_under_mask = false;
  const KernelEnv& env = kernel_env();
  for (size_t i = 0; i < env.num_pools; ++i) {
    const BouncePool* p = env.pools[i];
    if (p->base().value() + p->bytes() - 1 <= mask) pool_under_mask = true;
  }
  if (pool_under_mask) {
    auto far = ktest_util::alloc_above(0, mask);
    Pages near(0, mask);
    KREQUIRE_TRUE(far.ok() && near.ok());
    round_trips(ktest_ctx, &edu, static_cast<uint8_t*>(env.phys_to_virt(*far)), near.va(), mask);
    KEXPECT_TRUE(env.pfa->free(*far, 0).ok());
    return;
  }
  Pages buf(0);
  KREQUIRE_TRUE(buf.ok());
  KEXPECT_GT(buf.phys().value(), mask);
  KEXPECT_EQ(edu_c_copy_to_device(&edu, buf.va(), kSize, 0, nullptr), DMAKIT_ERR_DMA_MASK);
  KEXPECT_EQ(edu_c_copy_from_device(&edu, buf.va(), kSize, 0, nullptr), DMAKIT_ERR_DMA_MASK);
  KEXPECT_EQ(edu.started, 0u);
  KEXPECT_EQ(edu.map_failures, 2u);
  KEXPECT_EQ(dmakit_device_check_no_mappings(&dev), 0u);
}
