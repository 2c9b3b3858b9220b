// In-VM tests of the IOMMU (issue 14), run only when one is active (iommu=on and a driver that
// came up: testkernel/iommu.h). QEMU's edu device is told to DMA to I/O addresses directly,
// through its registers, so that a test can aim it where no mapping is: an address unmapped a
// moment ago, one never mapped, a read-only mapping, another device's buffer. The IOMMU must
// block each, report the fault with that address, and leave memory unchanged.
#include "testkernel/iommu.h"
#include "dmakit/device_dma.h"
#include "drivers/edu/edu_device.h"
#include "testkernel/devices.h"
#include "testkernel/kernel_env.h"
#include "testkernel/kstring.h"
#include "tests/qemu/ktest.h"
#include "tests/qemu/test_util.h"

namespace {

constexpr uint64_t kPage = 4096;
constexpr uint64_t kMask28 = (1ull << 28) - 1;

bool iommu_on() {
  return iommu::active();
}

// The edu registers, driven directly (EduDevice maps every address it programs).
class RawEdu {
 public:
  Result<void> bind(PciDevice* dev) {
    TRY_ASSIGN(regs_, dev->map_bar(0));
    TRY(dev->enable(/*bus_master=*/true));
    return support::ok();
  }
  // One transfer of `size` bytes between I/O address `addr` and the device buffer at offset 0:
  // to_ram = device -> RAM (the device writes `addr`). Waits for the end.
  Result<void> dma(uint64_t addr, uint32_t size, bool to_ram) {
    constexpr uint64_t kBuf = EduDevice::kBufferAddr;
    regs_.write64(0x80, to_ram ? kBuf : addr);
    regs_.write64(0x88, to_ram ? addr : kBuf);
    regs_.write64(0x90, size);
    regs_.write64(0x98, 1u | (to_ram ? 2u : 0u));
    uint64_t deadline = arch::now_ns() + EduDevice::kDefaultTimeoutNs;
    while ((regs_.read64(0x98) & 1) != 0) {
      if (arch::now_ns() > deadline) return ErrorCode::kTimedOut;
    }
    return support::ok();
  }

 private:
  MmioRegion regs_;
};

// A page of RAM from the allocator (under `limit`), filled with `fill`.
struct Page {
  PhysAddr pa;
  uint8_t* va = nullptr;
  bool ok = false;
  // A page under `limit`, or (floor != 0) one above `floor`.
  Page(uint64_t limit, uint8_t fill, uint64_t floor = 0) {
    auto p = floor != 0 ? ktest_util::alloc_above(0, floor) : kernel_env().pfa->alloc(0, limit);
    if (!p.ok()) return;
    pa = *p;
    va = static_cast<uint8_t*>(kernel_env().phys_to_virt(pa));
    for (uint64_t i = 0; i < kPage; ++i) va[i] = fill;
    kernel_env().dma->flush(va, kPage);
    ok = true;
  }
  ~Page() {
    if (ok) (void)kernel_env().pfa->free(pa, 0);
  }
  bool all(uint8_t v) const {
    kernel_env().dma->invalidate(va, kPage);
    for (uint64_t i = 0; i < kPage; ++i) {
      if (va[i] != v) return false;
    }
    return true;
  }
};

// Whether one of the drained faults names `iova` (within its page) for a write or a read.
bool has_fault(const IommuFault* f, size_t n, uint64_t iova, bool write) {
  for (size_t i = 0; i < n && i < 16; ++i) {
    if ((f[i].iova & ~(kPage - 1)) == (iova & ~(kPage - 1)) && f[i].write == write) return true;
  }
  return false;
}

const Devices::Edu* first_edu() {
  auto d = devices_init(kernel_env());
  if (!d.ok() || (*d)->num_edu() == 0) return nullptr;
  return &(*d)->edu(0);
}

}  // namespace

KTEST_WHEN(iommu_edu_dma_after_unmap_is_blocked, iommu_on) {
  const Devices::Edu* e = first_edu();
  KREQUIRE_TRUE(e != nullptr);
  IommuDomain* dom = iommu::domain_of(iommu::bdf_of(e->dev));
  KREQUIRE_TRUE(dom != nullptr);
  RawEdu edu;
  KREQUIRE_OK(edu.bind(e->dev));
  Page buf(~0ull, 0xA5);
  KREQUIRE_TRUE(buf.ok);
  DeviceDma dev(dom, e->dma_mask);
  uint64_t iova = 0;
  {
    auto m = dev.map(buf.va, kPage, DmaDirection::kFromDevice);
    KREQUIRE_OK(m);
    iova = m->dma_addr().value();
    KEXPECT_LE(iova + kPage - 1, e->dma_mask);
  }
  iommu::poll_faults();
  KREQUIRE_OK(edu.dma(iova, 64, /*to_ram=*/true));
  IommuFault f[16];
  size_t n = iommu::poll_faults(f, 16);
  KEXPECT_GE(n, 1u);
  KEXPECT_TRUE(has_fault(f, n, iova, /*write=*/true));
  KEXPECT_TRUE(buf.all(0xA5));
}

KTEST_WHEN(iommu_edu_dma_to_never_mapped_address_is_blocked, iommu_on) {
  const Devices::Edu* e = first_edu();
  KREQUIRE_TRUE(e != nullptr);
  IommuDomain* dom = iommu::domain_of(iommu::bdf_of(e->dev));
  KREQUIRE_TRUE(dom != nullptr);
  RawEdu edu;
  KREQUIRE_OK(edu.bind(e->dev));
  // Where RAM lies under the device's mask, aim at a page of it: without the IOMMU the device
  // would write that very page. Otherwise any unmapped address under the mask.
  Page low(e->dma_mask, 0x3C);
  uint64_t iova = low.ok ? low.pa.value() : (e->dma_mask & ~(kPage - 1)) - 64 * kPage;
  KREQUIRE_TRUE(dom->page_table().lookup(iova) == 0);
  iommu::poll_faults();
  KREQUIRE_OK(edu.dma(iova, 64, /*to_ram=*/true));
  IommuFault f[16];
  size_t n = iommu::poll_faults(f, 16);
  KEXPECT_GE(n, 1u);
  KEXPECT_TRUE(has_fault(f, n, iova, /*write=*/true));
  if (low.ok) KEXPECT_TRUE(low.all(0x3C));
}

KTEST_WHEN(iommu_edu_write_into_to_device_mapping_faults, iommu_on) {
  const Devices::Edu* e = first_edu();
  KREQUIRE_TRUE(e != nullptr);
  IommuDomain* dom = iommu::domain_of(iommu::bdf_of(e->dev));
  KREQUIRE_TRUE(dom != nullptr);
  RawEdu edu;
  KREQUIRE_OK(edu.bind(e->dev));
  Page buf(~0ull, 0x5A);
  KREQUIRE_TRUE(buf.ok);
  DeviceDma dev(dom, e->dma_mask);
  auto m = dev.map(buf.va, kPage, DmaDirection::kToDevice);
  KREQUIRE_OK(m);
  uint64_t iova = m->dma_addr().value();
  iommu::poll_faults();
  // Writing it is refused; reading it is allowed. The write goes first: an IOMMU that finds a
  // translation in its IOTLB may refuse a write through a read-only one without recording a
  // fault (QEMU's VT-d and RISC-V IOMMU do), so the read must not have cached it yet.
  KREQUIRE_OK(edu.dma(iova, 64, /*to_ram=*/true));
  IommuFault f[16];
  size_t n = iommu::poll_faults(f, 16);
  KEXPECT_GE(n, 1u);
  KEXPECT_TRUE(has_fault(f, n, iova, /*write=*/true));
  KREQUIRE_OK(edu.dma(iova, 64, /*to_ram=*/false));
  KEXPECT_EQ(iommu::poll_faults(), 0u);
  m->unmap();
  KEXPECT_TRUE(buf.all(0x5A));
}

KTEST_WHEN(iommu_domains_do_not_reach_each_other, iommu_on) {
  auto d = devices_init(kernel_env());
  KREQUIRE_OK(d);
  KREQUIRE_TRUE((*d)->num_edu() >= 2);
  const Devices::Edu& a = (*d)->edu(0);
  const Devices::Edu& b = (*d)->edu(1);
  IommuDomain* da = iommu::domain_of(iommu::bdf_of(a.dev));
  IommuDomain* db = iommu::domain_of(iommu::bdf_of(b.dev));
  KREQUIRE_TRUE(da != nullptr && db != nullptr);
  KEXPECT_NE(da, db);
  Page buf(~0ull, 0x77);
  KREQUIRE_TRUE(buf.ok);
  // a's buffer, mapped for a to write; b aims at the same I/O address.
  DeviceDma dev_a(da, support::min(a.dma_mask, b.dma_mask));
  auto m = dev_a.map(buf.va, kPage, DmaDirection::kFromDevice);
  KREQUIRE_OK(m);
  uint64_t iova = m->dma_addr().value();
  RawEdu edu_b;
  KREQUIRE_OK(edu_b.bind(b.dev));
  iommu::poll_faults();
  KREQUIRE_OK(edu_b.dma(iova, 64, /*to_ram=*/true));
  IommuFault f[16];
  size_t n = iommu::poll_faults(f, 16);
  KEXPECT_GE(n, 1u);
  KEXPECT_TRUE(has_fault(f, n, iova, /*write=*/true));
  KEXPECT_EQ(f[0].device_id, iommu::device_id_of(iommu::bdf_of(b.dev)));
  m->unmap();
  KEXPECT_TRUE(buf.all(0x77));
}

KTEST_WHEN(iommu_edu_28bit_reaches_high_ram_without_bouncing, iommu_on) {
  auto d = devices_init(kernel_env());
  KREQUIRE_OK(d);
  const Devices::Edu* e = (*d)->edu_with_mask(kMask28);
  KREQUIRE_TRUE(e != nullptr);
  IommuDomain* dom = iommu::domain_of(iommu::bdf_of(e->dev));
  KREQUIRE_TRUE(dom != nullptr);
  // Pages above the mask (the allocator's hint may sit low: ask for them explicitly).
  Page src(~0ull, 0, kMask28);
  Page dst(~0ull, 0, kMask28);
  KREQUIRE_TRUE(src.ok && dst.ok);
  KEXPECT_GT(src.pa.value(), kMask28);
  for (uint64_t i = 0; i < kPage; ++i) src.va[i] = static_cast<uint8_t>(i * 7 + 1);
  EduDevice edu;
  KREQUIRE_OK(edu.init(e->dev, DeviceDma(dom, e->dma_mask)));
  auto t1 = edu.copy_to_device(src.va, kPage);
  KREQUIRE_OK(t1);
  KEXPECT_FALSE(t1->bounced);
  KEXPECT_LE(t1->dma_addr.value() + kPage - 1, kMask28);
  auto t2 = edu.copy_from_device(dst.va, kPage);
  KREQUIRE_OK(t2);
  KEXPECT_FALSE(t2->bounced);
  bool same = true;
  for (uint64_t i = 0; i < kPage; ++i) same = same && dst.va[i] == src.va[i];
  KEXPECT_TRUE(same);
  edu.shutdown();
  KEXPECT_EQ(iommu::poll_faults(), 0u);
}
