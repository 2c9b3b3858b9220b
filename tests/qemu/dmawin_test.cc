// In-VM tests of a PCI host bridge with DMA windows (issue 15 item 3): the bridge's dma-ranges
// reach every device's DeviceDma (Devices::device_dma), buffers outside every window bounce into
// one, buffers inside a window map directly at that window's bus address, coherent memory comes
// from inside a window, and real devices (edu, virtio-blk) move correct data through bounced
// buffers.
//
// They run only when the bridge has windows and no IOMMU translates the devices: QEMU's virt
// machines have none, so the runner adds them (tests/qemu/run_qemu.py --dma-ranges, make
// QEMU_DMA_RANGES=1): identity windows over the first 256 MiB of RAM and, with enough RAM, 64 MiB
// in its middle. QEMU's devices do not enforce the windows (they reach all of memory at its
// physical address), so the tests check the addresses the kernel chose, and the data.
#include "dmakit/device_dma.h"
#include "drivers/edu/edu_device.h"
#include "drivers/virtio/virtio_blk.h"
#include "testkernel/devices.h"
#include "testkernel/iommu.h"
#include "testkernel/kernel_env.h"
#include "testkernel/kprintf.h"
#include "tests/qemu/ktest.h"
#include "tests/qemu/test_util.h"

using ktest_util::check_disk;
using ktest_util::devices;
using ktest_util::fill_guest;

namespace {

constexpr uint64_t kMask32 = 0xFFFF'FFFFull;
constexpr uint64_t kPage = ktest_util::kPage;

bool windows_apply() {
  Devices* d = devices();
  return d != nullptr && d->dma_windows().size() != 0 && iommu::inactive();
}

uint64_t window_end(const DmaWindow& w) {
  return w.cpu_base.value() + w.size;
}

// The window holding CPU range [p, p + n) wholly, or null.
const DmaWindow* window_of_phys(support::Span<const DmaWindow> ws, uint64_t p, uint64_t n) {
  for (const DmaWindow& w : ws) {
    if (p >= w.cpu_base.value() && p - w.cpu_base.value() + n <= w.size) return &w;
  }
  return nullptr;
}

// The window whose bus range holds [a, a + n) wholly, or null.
const DmaWindow* window_of_dma(support::Span<const DmaWindow> ws, DmaAddr a, uint64_t n) {
  for (const DmaWindow& w : ws) {
    if (a.value() >= w.dma_base.value() && a.value() - w.dma_base.value() + n <= w.size) return &w;
  }
  return nullptr;
}

// The bus address of physical `p` through `w` (p inside w).
uint64_t bus_addr(const DmaWindow& w, uint64_t p) {
  return p - w.cpu_base.value() + w.dma_base.value();
}

struct Range {
  uint64_t lo = 0;
  uint64_t hi = 0;  // Exclusive; lo == hi: none.
};

// A stretch of RAM of at least 1 MiB outside every window, starting at or below `limit` and cut
// at limit + 1: memory a device with this mask would reach directly without the windows.
Range gap_outside_windows(support::Span<const DmaWindow> ws, uint64_t limit) {
  const arch::BootInfo& b = *kernel_env().boot;
  for (size_t i = 0; i < b.num_ram; ++i) {
    // Candidate starts: the RAM range's start and every window's end.
    for (size_t c = 0; c <= ws.size(); ++c) {
      uint64_t lo = c == ws.size() ? b.ram[i].base.value() : window_end(ws[c]);
      uint64_t hi = b.ram[i].end().value();
      if (lo < b.ram[i].base.value() || lo >= hi || lo > limit) continue;
      if (window_of_phys(ws, lo, 1) != nullptr) continue;
      for (const DmaWindow& w : ws) {
        if (w.cpu_base.value() > lo && w.cpu_base.value() < hi) hi = w.cpu_base.value();
      }
      if (limit != ~0ull && hi > limit + 1) hi = limit + 1;
      if (hi - lo >= (1ull << 20)) return Range{lo, hi};
    }
  }
  return Range{};
}

// A block of 2^order pages inside [lo, hi), freed by the destructor; !ok() when none is free
// there. The allocator takes the highest block of the smallest order that has one under its
// limit, which may lie below `lo`: such blocks are held (chained through their first bytes) until
// one fits or none is left, then given back, as ktest_util::alloc_above does.
class PagesIn {
 public:
  PagesIn(unsigned order, Range r) : order_(order) {
    if (r.hi - r.lo < (kPage << order)) return;
    PageFrameAllocator* pfa = kernel_env().pfa;
    constexpr uint64_t kNone = ~0ull;
    uint64_t chain = kNone;
    for (;;) {
      auto a = pfa->alloc(order, r.hi - 1);
      if (!a.ok()) break;
      if (a->value() >= r.lo) {
        phys_ = *a;
        ok_ = true;
        break;
      }
      *static_cast<uint64_t*>(kernel_env().phys_to_virt(*a)) = chain;
      chain = a->value();
    }
    while (chain != kNone) {
      uint64_t next = *static_cast<uint64_t*>(kernel_env().phys_to_virt(PhysAddr(chain)));
      KASSERT(pfa->free(PhysAddr(chain), order).ok(), "PagesIn: giving a block back failed");
      chain = next;
    }
  }
  ~PagesIn() {
    if (ok_) KASSERT(kernel_env().pfa->free(phys_, order_).ok(), "PagesIn freed twice");
  }
  PagesIn(const PagesIn&) = delete;
  PagesIn& operator=(const PagesIn&) = delete;
  bool ok() const { return ok_; }
  PhysAddr phys() const { return phys_; }
  uint8_t* va() const { return static_cast<uint8_t*>(kernel_env().phys_to_virt(phys_)); }
  size_t bytes() const { return kPage << order_; }

 private:
  unsigned order_;
  PhysAddr phys_;
  bool ok_ = false;
};

Range window_range(const DmaWindow& w, uint64_t limit) {
  uint64_t hi = window_end(w);
  if (limit != ~0ull && hi > limit + 1) hi = limit + 1;
  return Range{w.cpu_base.value(), hi > w.cpu_base.value() ? hi : w.cpu_base.value()};
}

}  // namespace

KTEST_WHEN(dmawin_every_device_dma_holds_the_bridges_windows, windows_apply) {
  Devices* d = devices();
  KREQUIRE_TRUE(d != nullptr);
  d->print_dma_ranges();
  support::Span<const DmaWindow> ws = d->dma_windows();
  // QEMU's devices reach memory at its physical address: only identity windows keep the other
  // tests' data checks meaningful.
  for (const DmaWindow& w : ws) KEXPECT_EQ(w.cpu_base.value(), w.dma_base.value());
  const PciDevice* fns[2 + Devices::kMaxNvme] = {};
  size_t n = 0;
  if (const Devices::Edu* e = d->edu_with_mask(kMask32)) fns[n++] = e->dev;
  if (d->virtio_blk() != nullptr) fns[n++] = d->virtio_blk();
  for (size_t i = 0; i < d->num_nvme(); ++i) fns[n++] = d->nvme(i);
  KEXPECT_GE(n, 3u);
  for (size_t i = 0; i < n; ++i) {
    DeviceDma dma = d->device_dma(fns[i], kMask32);
    KEXPECT_EQ(dma.op(), static_cast<DmaOp*>(kernel_env().dma));
    KEXPECT_EQ(dma.constraints().windows, ws.data());
    KEXPECT_EQ(dma.constraints().num_windows, ws.size());
    KEXPECT_EQ(dma.dma_mask(), kMask32);
  }
  // A driver keeps them: the edu driver's own copy of its DeviceDma.
  const Devices::Edu* e = d->edu_with_mask(kMask32);
  KREQUIRE_TRUE(e != nullptr);
  EduDevice edu;
  KREQUIRE_OK(edu.init(e->dev, d->device_dma(e->dev, e->dma_mask)));
  KEXPECT_EQ(edu.dma().constraints().num_windows, ws.size());
}

KTEST_WHEN(dmawin_edu_buffer_outside_every_window_bounces_and_arrives_intact, windows_apply) {
  Devices* d = devices();
  KREQUIRE_TRUE(d != nullptr);
  support::Span<const DmaWindow> ws = d->dma_windows();
  const Devices::Edu* e = d->edu_with_mask(kMask32);
  KREQUIRE_TRUE(e != nullptr);
  EduDevice edu;
  DeviceDma dma = d->device_dma(e->dev, e->dma_mask);
  dma.set_name("edu-dmawin");
  KREQUIRE_OK(edu.init(e->dev, dma));
  // `far`: under the device's mask, so without the windows it would go straight to the device;
  // outside every window, so with them it must bounce. `near`: inside the first window.
  PagesIn far(0, gap_outside_windows(ws, e->dma_mask));
  PagesIn near(0, window_range(ws[0], e->dma_mask));
  KREQUIRE_TRUE(far.ok() && near.ok());
  KREQUIRE_TRUE(window_of_phys(ws, far.phys().value(), kPage) == nullptr);
  KREQUIRE_TRUE(far.phys().value() + kPage - 1 <= e->dma_mask);
  constexpr size_t kSize = EduDevice::kBufferSize;
#if DMA_STATS  // KernelDmaOp::stats() counts only with DMA_STATS.
  const KernelDmaOp::Stats s0 = kernel_env().dma->stats();
#endif

  // far -> device -> near.
  ktest_util::fill_pattern(far.va(), kSize, 0xD1);
  support::fill_bytes(near.va(), 0, kSize);
  auto t1 = edu.copy_to_device(far.va(), kSize);
  KREQUIRE_OK(t1);
  KEXPECT_TRUE(t1->bounced);
  KEXPECT_TRUE(window_of_dma(ws, t1->dma_addr, kSize) != nullptr);
  auto t2 = edu.copy_from_device(near.va(), kSize);
  KREQUIRE_OK(t2);
  KEXPECT_FALSE(t2->bounced);
  KEXPECT_EQ(t2->dma_addr.value(), bus_addr(ws[0], near.phys().value()));
  KEXPECT_EQ(ktest_util::check_pattern(near.va(), kSize, 0xD1), kSize);

  // near -> device -> far.
  ktest_util::fill_pattern(near.va(), kSize, 0xD2);
  support::fill_bytes(far.va(), 0, kSize);
  auto t3 = edu.copy_to_device(near.va(), kSize);
  KREQUIRE_OK(t3);
  KEXPECT_FALSE(t3->bounced);
  auto t4 = edu.copy_from_device(far.va(), kSize);
  KREQUIRE_OK(t4);
  KEXPECT_TRUE(t4->bounced);
  KEXPECT_TRUE(window_of_dma(ws, t4->dma_addr, kSize) != nullptr);
  KEXPECT_EQ(ktest_util::check_pattern(far.va(), kSize, 0xD2), kSize);
#if DMA_STATS
  const KernelDmaOp::Stats s1 = kernel_env().dma->stats();
  KEXPECT_EQ(s1.bounced_maps - s0.bounced_maps, 2u);
  KEXPECT_EQ(s1.live_maps, s0.live_maps);
#endif
}

KTEST_WHEN(dmawin_buffer_inside_each_window_maps_direct_at_its_bus_address, windows_apply) {
  Devices* d = devices();
  KREQUIRE_TRUE(d != nullptr && d->virtio_blk() != nullptr);
  support::Span<const DmaWindow> ws = d->dma_windows();
  // A device that reaches every address: only the windows decide.
  DeviceDma dma = d->device_dma(d->virtio_blk(), ~0ull);
  dma.set_name("dmawin-any");
  size_t direct = 0;
  for (const DmaWindow& w : ws) {
    PagesIn p(0, window_range(w, ~0ull));
    if (!p.ok()) continue;  // Nothing free in this window (RAM it covers is all in use).
    ktest_util::fill_pattern(p.va(), kPage, 0xD3);
    auto m = dma.map(p.va(), kPage, DmaDirection::kToDevice);
    KREQUIRE_OK(m);
    KEXPECT_FALSE(m->bounced());
    KEXPECT_EQ(m->dma_addr().value(), bus_addr(w, p.phys().value()));
    KEXPECT_EQ(window_of_dma(ws, m->dma_addr(), kPage), &w);
    ++direct;
  }
  KEXPECT_EQ(direct, ws.size());
  // Between the windows: bounced, into memory a window reaches.
  PagesIn gap(0, gap_outside_windows(ws, ~0ull));
  KREQUIRE_TRUE(gap.ok());
  auto m = dma.map(gap.va(), kPage, DmaDirection::kToDevice);
  KREQUIRE_OK(m);
  KEXPECT_TRUE(m->bounced());
  KEXPECT_TRUE(window_of_dma(ws, m->dma_addr(), kPage) != nullptr);
}

KTEST_WHEN(dmawin_alloc_coherent_lies_inside_a_window, windows_apply) {
  Devices* d = devices();
  KREQUIRE_TRUE(d != nullptr);
  support::Span<const DmaWindow> ws = d->dma_windows();
  const Devices::Edu* e = d->edu_with_mask(kMask32);
  KREQUIRE_TRUE(e != nullptr && d->virtio_blk() != nullptr);
  DeviceDma devs[] = {d->device_dma(e->dev, kMask32), d->device_dma(d->virtio_blk(), ~0ull)};
  constexpr size_t kSizes[] = {64, kPage, 3 * kPage + 8, 16 * kPage};
  for (DeviceDma& dma : devs) {
    for (size_t n : kSizes) {
      auto a = dma.alloc_array<uint8_t>(n);
      KREQUIRE_OK(a);
      const DmaHandle& h = a->handle();
      const DmaWindow* w = window_of_phys(ws, h.phys.value(), n);
      KEXPECT_TRUE(w != nullptr);
      if (w != nullptr) KEXPECT_EQ(h.dma_addr.value(), bus_addr(*w, h.phys.value()));
      KEXPECT_LE(h.dma_addr.value() + n - 1, dma.coherent_mask());
    }
  }
  // A device whose virtio-blk queues (coherent) and data buffers (streaming) are all inside a
  // window works end to end: the next test.
}

KTEST_WHEN(dmawin_virtio_blk_through_buffers_outside_the_windows, windows_apply) {
  Devices* d = devices();
  KREQUIRE_TRUE(d != nullptr && d->virtio_blk() != nullptr);
  support::Span<const DmaWindow> ws = d->dma_windows();
  VirtioBlk blk;
  DeviceDma dma = d->device_dma(d->virtio_blk(), ~0ull);
  dma.set_name("virtio-blk-dmawin");
  KREQUIRE_OK(blk.init(d->virtio_blk(), dma));
  const uint64_t first = disk_pattern::kTestWindowFirst;
  const uint64_t pos = first * disk_pattern::kSectorSize;
  const size_t bytes = disk_pattern::kTestWindowCount * disk_pattern::kSectorSize;
  Range gap = gap_outside_windows(ws, ~0ull);
  PagesIn out(1, gap);
  PagesIn in(1, gap);
  KREQUIRE_TRUE(out.ok() && in.ok());
  KREQUIRE_TRUE(out.bytes() == bytes && in.bytes() == bytes);
  KREQUIRE_TRUE(window_of_phys(ws, out.phys().value(), bytes) == nullptr);
  KREQUIRE_TRUE(window_of_phys(ws, in.phys().value(), bytes) == nullptr);
#if DMA_STATS  // KernelDmaOp::stats() counts only with DMA_STATS.
  const KernelDmaOp::Stats s0 = kernel_env().dma->stats();
#endif
  // The host's pattern, read into a buffer the device cannot reach.
  support::fill_bytes(in.va(), 0, bytes);
  SgEntry re[] = {{in.va(), kPage}, {in.va() + kPage, kPage}};
  auto r0 = blk.read(600, re);
  KREQUIRE_OK(r0);
  KEXPECT_EQ(check_disk(in.va(), bytes, 600 * disk_pattern::kSectorSize, false), bytes);
  // The guest's pattern written from one and read back into the other.
  fill_guest(out.va(), bytes, pos);
  SgEntry we[] = {{out.va(), kPage}, {out.va() + kPage, kPage}};
  auto w = blk.write(first, we);
  KREQUIRE_OK(w);
  support::fill_bytes(in.va(), 0, bytes);
  auto r = blk.read(first, re);
  KREQUIRE_OK(r);
  KEXPECT_EQ(check_disk(in.va(), bytes, pos, true), bytes);
#if DMA_STATS
  const KernelDmaOp::Stats s1 = kernel_env().dma->stats();
  // Every data buffer bounced (the driver's request headers may or may not).
  KEXPECT_GE(s1.bounced_maps - s0.bounced_maps, 3u);
  KEXPECT_EQ(s1.live_maps, s0.live_maps);
#endif
  if (!ktest_ctx.failed()) {
    kprintf("virtio-blk: guest pattern in sectors %llu..%llu\n",
            static_cast<unsigned long long>(first),
            static_cast<unsigned long long>(first + disk_pattern::kTestWindowCount - 1));
  }
}
