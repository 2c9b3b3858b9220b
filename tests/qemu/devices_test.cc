// In-VM tests with devices that really do DMA: PCI enumeration and BAR assignment, QEMU's edu DMA
// engine (direct, bounced, refused, pool exhaustion) and virtio-blk (scatter-gather, bounced data,
// the disk image the runner checks from the host side).
//
// The runner (tests/qemu/run_qemu.py) gives every test VM two edu devices -- one with
// dma_mask=0xffffffff, one with the 28-bit default, announced on the command line as
// `edu_mask=...` (testkernel/devices.h) -- and a virtio-blk disk holding disk_pattern::host_byte.
// Every edu transfer takes about 100 ms of virtual time (the device's DMA timer).
#include "testkernel/devices.h"
#include "dmakit/support/bitops.h"
#include "drivers/edu/edu_device.h"
#include "drivers/virtio/virtio_blk.h"
#include "testkernel/arch_io.h"
#include "testkernel/iommu.h"
#include "testkernel/kernel_env.h"
#include "testkernel/kprintf.h"
#include "tests/qemu/ktest.h"
#include "tests/qemu/test_util.h"

using ktest_util::check_disk;
using ktest_util::devices;
using ktest_util::fill_guest;
using ktest_util::Pages;

namespace {

constexpr uint64_t kMask32 = 0xFFFF'FFFFull;
constexpr uint64_t kPage = ktest_util::kPage;

// A block of 2^order pages wholly above `floor`, freed by the destructor; !ok() when the machine
// has no free memory there.
class PagesAbove {
 public:
  PagesAbove(unsigned order, uint64_t floor) : order_(order) {
    auto r = ktest_util::alloc_above(order, floor);
    if (r.ok()) {
      phys_ = *r;
      ok_ = true;
    }
  }
  ~PagesAbove() {
    if (ok_) KASSERT(kernel_env().pfa->free(phys_, order_).ok(), "PagesAbove freed twice");
  }
  PagesAbove(const PagesAbove&) = delete;
  PagesAbove& operator=(const PagesAbove&) = delete;
  bool ok() const { return ok_; }
  PhysAddr phys() const { return phys_; }
  uint8_t* va() const { return static_cast<uint8_t*>(kernel_env().phys_to_virt(phys_)); }

 private:
  unsigned order_;
  PhysAddr phys_;
  bool ok_ = false;
};

size_t used_slots(const BouncePool* p) {
  return static_cast<size_t>(p->stats().used_slots);
}

// The pool a device with this mask bounces into: the highest-placed pool wholly under it.
BouncePool* pool_for_mask(uint64_t mask) {
  const KernelEnv& env = kernel_env();
  BouncePool* best = nullptr;
  for (size_t i = 0; i < env.num_pools; ++i) {
    BouncePool* p = env.pools[i];
    if (p->base().value() + p->bytes() - 1 > mask) continue;
    if (best == nullptr || p->base() > best->base()) best = p;
  }
  return best;
}

bool in_pool(const BouncePool* p, DmaAddr a, size_t size) {
  return p != nullptr && p->contains(PhysAddr(a.value())) &&
         p->contains(PhysAddr(a.value() + size - 1));
}

// Binds the edu device with this mask (the runner provides one of each).
Result<void> bind_edu(EduDevice* edu, uint64_t mask) {
  Devices* d = devices();
  if (d == nullptr) return ErrorCode::kNotFound;
  const Devices::Edu* e = d->edu_with_mask(mask);
  if (e == nullptr) return ErrorCode::kNotFound;
  DeviceDma dma = d->device_dma(e->dev, e->dma_mask);
  dma.set_name(mask == kMask32 ? "edu-32bit" : "edu-28bit");
  return edu->init(e->dev, dma);
}

// Through the device in both directions, each checked on its own: `far` (a buffer the device's
// mask does not reach, so bounced) and `near` (one it reaches directly).
//   far -> device -> near: what arrived in the device came through the bounce slot intact;
//   near -> device -> far: what the device wrote through the bounce slot reached `far` intact.
void round_trips(ktest::Context& ktest_ctx, EduDevice& edu, uint8_t* far, uint8_t* near,
                 bool far_bounces, BouncePool* pool) {
  constexpr size_t kSize = EduDevice::kBufferSize;
#if DMA_STATS  // KernelDmaOp::stats() counts only with DMA_STATS.
  KernelDmaOp::Stats s0 = kernel_env().dma->stats();
#endif
  ktest_util::fill_pattern(far, kSize, 21);
  support::fill_bytes(near, 0, kSize);
  auto t1 = edu.copy_to_device(far, kSize);
  KREQUIRE_OK(t1);
  KEXPECT_EQ(t1->bounced, far_bounces);
  KEXPECT_LE(t1->dma_addr.value() + kSize - 1, edu.dma().dma_mask());
  if (far_bounces) KEXPECT_TRUE(in_pool(pool, t1->dma_addr, kSize));
  auto t2 = edu.copy_from_device(near, kSize);
  KREQUIRE_OK(t2);
  KEXPECT_FALSE(t2->bounced);
  KEXPECT_EQ(ktest_util::check_pattern(near, kSize, 21), kSize);

  ktest_util::fill_pattern(near, kSize, 22);
  support::fill_bytes(far, 0, kSize);
  auto t3 = edu.copy_to_device(near, kSize);
  KREQUIRE_OK(t3);
  KEXPECT_FALSE(t3->bounced);
  auto t4 = edu.copy_from_device(far, kSize);
  KREQUIRE_OK(t4);
  KEXPECT_EQ(t4->bounced, far_bounces);
  KEXPECT_LE(t4->dma_addr.value() + kSize - 1, edu.dma().dma_mask());
  KEXPECT_EQ(ktest_util::check_pattern(far, kSize, 22), kSize);

#if DMA_STATS
  KernelDmaOp::Stats s1 = kernel_env().dma->stats();
  uint64_t bounced = far_bounces ? 2 : 0;
  KEXPECT_EQ(s1.bounced_maps - s0.bounced_maps, bounced);
  KEXPECT_EQ(s1.direct_maps - s0.direct_maps, 4 - bounced);
  // At least the copy into the slot (to the device) and out of it (from the device).
  KEXPECT_GE(s1.bytes_bounced - s0.bytes_bounced, bounced * kSize);
  KEXPECT_EQ(s1.live_maps, s0.live_maps);
#endif
}

}  // namespace

// ---------------------------------------------------------------------------------------------
// PCI

KTEST(pci_enumeration_assigns_every_bar_inside_a_window) {
  Devices* d = devices();
  KREQUIRE_TRUE(d != nullptr);
  d->print_report();
  PciHostBridge& pci = d->pci();
  KEXPECT_GT(pci.num_devices(), 0u);
  KEXPECT_EQ(pci.stats().unassigned_bars, 0u);
  KEXPECT_EQ(pci.stats().dropped_functions, 0u);
  for (size_t i = 0; i < pci.num_devices(); ++i) {
    PciDevice& dev = pci.device(i);
    for (unsigned b = 0; b < dev.num_bars(); ++b) {
      const PciBar& bar = dev.bar(b);
      if (bar.size == 0) continue;
      KEXPECT_TRUE(support::is_pow2(bar.size));
      KEXPECT_TRUE(bar.assigned());
      KEXPECT_EQ(bar.bus_addr % bar.size, 0u);
      // The BAR holds what the enumeration recorded.
      uint64_t v =
          dev.config_read32(pci::kBar0 + 4 * b) & (bar.kind == PciBar::Kind::kIo ? ~3u : ~0xFu);
      if (bar.kind == PciBar::Kind::kMem64) {
        v |= uint64_t{dev.config_read32(pci::kBar0 + 4 * b + 4)} << 32;
      }
      KEXPECT_EQ(v, bar.bus_addr);
      if (!bar.firmware_assigned) {
        bool inside = false;
        for (size_t w = 0; w < pci.num_windows(); ++w) {
          const PciWindow& win = pci.window(w);
          if ((win.kind == PciWindow::Kind::kIo) != (bar.kind == PciBar::Kind::kIo)) continue;
          if (bar.bus_addr >= win.bus_base && bar.bus_addr + bar.size <= win.bus_base + win.size) {
            inside = true;
            KEXPECT_EQ(bar.cpu_addr.value(), win.cpu_base.value() + (bar.bus_addr - win.bus_base));
          }
        }
        KEXPECT_TRUE(inside);
      }
      // No two BARs of one address space overlap.
      for (size_t j = 0; j < pci.num_devices(); ++j) {
        for (unsigned c = 0; c < pci.device(j).num_bars(); ++c) {
          const PciBar& o = pci.device(j).bar(c);
          if ((j == i && c == b) || o.size == 0 || o.is_memory() != bar.is_memory()) continue;
          KEXPECT_TRUE(o.bus_addr + o.size <= bar.bus_addr ||
                       bar.bus_addr + bar.size <= o.bus_addr);
        }
      }
    }
  }
  KEXPECT_GE(d->num_edu(), 2u);
  KEXPECT_TRUE(d->edu_with_mask(kMask32) != nullptr);
  KEXPECT_TRUE(d->edu_with_mask(Devices::kEduDefaultMask) != nullptr);
  KEXPECT_TRUE(d->virtio_blk() != nullptr);
}

KTEST(pci_driver_enables_decoding_and_bus_mastering) {
  EduDevice edu;
  KREQUIRE_OK(bind_edu(&edu, kMask32));
  PciDevice* dev = edu.pci();
  const PciBar& bar0 = dev->bar(0);
  KEXPECT_EQ(bar0.kind, PciBar::Kind::kMem32);
  KEXPECT_EQ(bar0.size, 1ull << 20);
  uint16_t cmd = dev->command();
  KEXPECT_TRUE((cmd & pci::kCommandMemory) != 0);
  KEXPECT_TRUE((cmd & pci::kCommandBusMaster) != 0);
  KEXPECT_TRUE((cmd & pci::kCommandIntxDisable) != 0);
  // The registers answer through the BAR: identification 0xRRrr00ed.
  KEXPECT_EQ(edu.id() & 0xFFFFu, 0xEDu);
  KEXPECT_TRUE(dev->find_capability(0x05) != 0);  // edu implements MSI.
  edu.shutdown();
  KEXPECT_EQ(dev->command() & (pci::kCommandMemory | pci::kCommandBusMaster), 0);
}

KTEST(pci_legacy_config_ports_agree_with_the_ecam) {
  Devices* d = devices();
  KREQUIRE_TRUE(d != nullptr);
  PciConfigAccess* ports = d->port_config_access();
  if (ports == nullptr) {
    // No I/O port space (aarch64, riscv64): the contract says so, and the ECAM is the only way.
    KEXPECT_ERR(arch::port_in(0xCF8, 4), ErrorCode::kNotSupported);
    KEXPECT_ERR(arch::port_out(0xCF8, 0, 4), ErrorCode::kNotSupported);
    KEXPECT_NE(d->ecam().size, 0u);
    return;
  }
  // Every function's header reads the same both ways, at every width.
  PciHostBridge& pci = d->pci();
  for (size_t i = 0; i < pci.num_devices(); ++i) {
    const PciDevice& dev = pci.device(i);
    for (uint32_t off = 0; off < 0x40; off += 4) {
      KEXPECT_EQ(ports->read32(dev.address(), off), dev.config_read32(off));
    }
    KEXPECT_EQ(ports->read16(dev.address(), pci::kDeviceId), dev.device_id());
    KEXPECT_EQ(ports->read8(dev.address(), pci::kRevision), dev.revision());
  }
  // A write through the ports is seen through the ECAM (the interrupt-line register is a plain
  // read/write byte), and restored.
  const Devices::Edu* e = d->edu_with_mask(kMask32);
  KREQUIRE_TRUE(e != nullptr);
  constexpr uint32_t kInterruptLine = 0x3C;
  uint8_t old = e->dev->config_read8(kInterruptLine);
  ports->write8(e->dev->address(), kInterruptLine, static_cast<uint8_t>(old ^ 0x5A));
  KEXPECT_EQ(e->dev->config_read8(kInterruptLine), static_cast<uint8_t>(old ^ 0x5A));
  e->dev->config_write8(kInterruptLine, old);
  KEXPECT_EQ(ports->read8(e->dev->address(), kInterruptLine), old);
  // Absent functions read as all ones.
  KEXPECT_EQ(ports->read32(PciAddress{static_cast<uint8_t>(d->pci().bus_start()), 31, 7}, 0),
             0xFFFF'FFFFu);
}

// ---------------------------------------------------------------------------------------------
// edu

KTEST_WHEN(edu_dma_within_the_mask_goes_straight_to_the_device, iommu::inactive) {
  EduDevice edu;
  KREQUIRE_OK(bind_edu(&edu, kMask32));
  Pages a(0, kMask32);
  Pages b(0, kMask32);
  KREQUIRE_TRUE(a.ok() && b.ok());
  round_trips(ktest_ctx, edu, a.va(), b.va(), /*far_bounces=*/false, nullptr);
  // The device address is the buffer's own; a part of the device buffer lands at an offset (a
  // line-aligned one: a receive buffer sharing lines with other data would be bounced on a
  // non-coherent machine).
  const size_t off = kernel_env().dma->cache_alignment();
  auto t = edu.copy_from_device(b.va() + off, 1024, 2000);
  KREQUIRE_OK(t);
  KEXPECT_EQ(t->dma_addr.value(), b.phys().value() + off);
  for (size_t i = 0; i < 1024; ++i) {
    if (b.va()[off + i] != ktest_util::pattern_byte(22, 2000 + i)) {
      KEXPECT_EQ(b.va()[off + i], ktest_util::pattern_byte(22, 2000 + i));
      break;
    }
  }
  KEXPECT_EQ(edu.stats().bounced, 0u);
}

// The struct { uint8_t hdr[32]; uint8_t rx[96]; }: the receive buffer shares its first
// line with the header. On a non-coherent machine it is bounced whole (QEMU models no caches, so
// the loss this prevents cannot show here; the host cache model shows it), and through a real
// device every byte arrives and the header and the bytes after it keep what the CPU wrote.
KTEST(edu_receive_buffer_sharing_a_cache_line_keeps_every_byte) {
  EduDevice edu;
  KREQUIRE_OK(bind_edu(&edu, kMask32));
  Pages b(0, kMask32);
  KREQUIRE_TRUE(b.ok());
  uint8_t* block = b.va();
  ktest_util::fill_pattern(block + 1024, 96, 41);
  KREQUIRE_OK(edu.copy_to_device(block + 1024, 96, 3000));
  support::fill_bytes(block, 0xA5, 32);
  support::fill_bytes(block + 32, 0, 96);
  support::fill_bytes(block + 128, 0x5A, 64);
  auto t = edu.copy_from_device(block + 32, 96, 3000);
  KREQUIRE_OK(t);
  KEXPECT_EQ(t->bounced, !edu.dma().coherent());
  KEXPECT_EQ(ktest_util::check_pattern(block + 32, 96, 41), 96u);
  size_t changed = 0;
  for (size_t i = 0; i < 32; ++i) changed += block[i] != 0xA5 ? 1 : 0;
  for (size_t i = 128; i < 192; ++i) changed += block[i] != 0x5A ? 1 : 0;
  KEXPECT_EQ(changed, 0u);
}

KTEST_WHEN(edu_dma_above_the_mask_is_bounced_and_arrives_intact, iommu::inactive) {
  EduDevice edu;
  KREQUIRE_OK(bind_edu(&edu, kMask32));
  BouncePool* pool = pool_for_mask(kMask32);
  KREQUIRE_TRUE(pool != nullptr);
  Pages near(0, kMask32);
  KREQUIRE_TRUE(near.ok());
  PagesAbove high(0, kMask32);
  Pages any(0);
  uint8_t* far;
  if (high.ok()) {
    far = high.va();
  } else {
    // No RAM above 4 GiB in this VM: the bounce path runs with bouncing forced instead.
    kprintf(
        "  note: no free RAM above 4 GiB (boot with QEMU_MEM=6G for the real case); "
        "forcing the bounce\n");
    KREQUIRE_TRUE(any.ok());
    far = any.va();
    edu.dma().set_force_bounce(true);
  }
  size_t hw0 = static_cast<size_t>(pool->stats().high_water_slots);
  size_t used0 = used_slots(pool);
  if (high.ok()) {
    round_trips(ktest_ctx, edu, far, near.va(), /*far_bounces=*/true, pool);
  } else {
    // Forced, every transfer bounces (`near` too): the data still goes through the device.
    ktest_util::fill_pattern(far, kPage, 31);
    auto t1 = edu.copy_to_device(far, kPage);
    KREQUIRE_OK(t1);
    KEXPECT_TRUE(t1->bounced);
    support::fill_bytes(far, 0, kPage);
    auto t2 = edu.copy_from_device(far, kPage);
    KREQUIRE_OK(t2);
    KEXPECT_TRUE(t2->bounced);
    KEXPECT_EQ(ktest_util::check_pattern(far, kPage, 31), kPage);
  }
  KEXPECT_EQ(used_slots(pool), used0);
  KEXPECT_GE(static_cast<size_t>(pool->stats().high_water_slots), hw0);
  KEXPECT_GE(edu.stats().bounced, 2u);
}

KTEST_WHEN(edu_default_28bit_mask_bounces_or_fails_cleanly, iommu::inactive) {
  EduDevice edu;
  KREQUIRE_OK(bind_edu(&edu, Devices::kEduDefaultMask));
  const uint64_t mask = Devices::kEduDefaultMask;
  BouncePool* pool = pool_for_mask(mask);
  if (pool != nullptr) {
    // Memory below 256 MiB (x86 q35): a buffer above it goes through the 28-bit pool.
    PagesAbove far(0, mask);
    Pages near(0, mask);
    KREQUIRE_TRUE(far.ok() && near.ok());
    kprintf("  note: 28-bit pool at 0x%llx: bouncing above 256 MiB\n",
            static_cast<unsigned long long>(pool->base().value()));
    round_trips(ktest_ctx, edu, far.va(), near.va(), /*far_bounces=*/true, pool);
    return;
  }
  // No RAM at all under 28 bits (aarch64 and riscv64 virt): the mapping fails with a clear
  // error, before the device is touched.
  KEXPECT_GT(kernel_env().pfa->lowest_address().value(), mask);
  Pages buf(0);
  KREQUIRE_TRUE(buf.ok());
  uint64_t src = edu.dma_src();
  uint64_t dst = edu.dma_dst();
  uint64_t cnt = edu.dma_count();
  auto r = edu.copy_to_device(buf.va(), kPage);
  KEXPECT_ERR(r, ErrorCode::kDmaMaskNotMatch);
  if (!r.ok()) {
    KEXPECT_EQ(r.error().mask, mask);
    KEXPECT_EQ(r.error().addr, buf.phys().value() + kPage - 1);
  }
  auto r2 = edu.copy_from_device(buf.va(), kPage);
  KEXPECT_ERR(r2, ErrorCode::kDmaMaskNotMatch);
  KEXPECT_EQ(edu.stats().started, 0u);
  KEXPECT_EQ(edu.stats().map_failures, 2u);
  KEXPECT_EQ(edu.dma_src(), src);
  KEXPECT_EQ(edu.dma_dst(), dst);
  KEXPECT_EQ(edu.dma_count(), cnt);
  KEXPECT_EQ(edu.dma_command() & 1, 0u);
  // Nor can it have coherent memory.
  auto c = edu.dma().alloc_array<uint8_t>(kPage);
  KEXPECT_ERR(c, ErrorCode::kDmaMaskNotMatch);
}

KTEST_WHEN(edu_exhausted_bounce_pool_fails_then_recovers, iommu::inactive) {
  EduDevice edu;
  KREQUIRE_OK(bind_edu(&edu, kMask32));
  BouncePool* pool = pool_for_mask(kMask32);
  KREQUIRE_TRUE(pool != nullptr);
  const KernelEnv& env = kernel_env();

  // What the edu device will need bounced: a buffer above its mask, or bouncing forced.
  PagesAbove high(0, kMask32);
  Pages any(0);
  uint8_t* src = high.ok() ? high.va() : any.va();
  KREQUIRE_TRUE(high.ok() || any.ok());
  if (!high.ok()) edu.dma().set_force_bounce(true);
  Pages back(0, kMask32);
  KREQUIRE_TRUE(back.ok());

  // Fill the pool: 256 KiB mappings, then one slot at a time, until it says kNoMemory. The
  // mappings live in a page block (StreamingMapping is move-only RAII; no heap here).
  constexpr size_t kBig = 256 * 1024;
  Pages big(6);  // 256 KiB
  Pages store(5);
  KREQUIRE_TRUE(big.ok() && store.ok());
  auto* maps = reinterpret_cast<StreamingMapping*>(store.va());
  const size_t max_maps = store.bytes() / sizeof(StreamingMapping);
  DeviceDma filler(env.dma, kMask32);
  filler.set_force_bounce(true);
  filler.set_name("pool-filler");
  size_t n = 0;
  size_t big_maps = 0;
  size_t used0 = used_slots(pool);
  ErrorCode last = ErrorCode::kOk;
  const size_t sizes[] = {kBig, pool->slot_size()};
  for (size_t size : sizes) {
    while (n < max_maps) {
      auto m = filler.map(big.va(), size, DmaDirection::kFromDevice);
      if (!m.ok()) {
        last = m.code();
        break;
      }
      new (&maps[n++]) StreamingMapping(support::move(*m));
      if (size == kBig) ++big_maps;
    }
  }
  KEXPECT_EQ(last, ErrorCode::kNoMemory);
  KEXPECT_GT(big_maps, 0u);
  KEXPECT_EQ(used_slots(pool), static_cast<size_t>(pool->stats().total_slots));

  ktest_util::fill_pattern(src, kPage, 41);
  uint64_t started = edu.stats().started;
  auto r = edu.copy_to_device(src, kPage);
  KEXPECT_ERR(r, ErrorCode::kNoMemory);
  KEXPECT_EQ(edu.stats().started, started);  // Never started.

  // Give back the last 256 KiB mapping: room again.
  size_t last_big = big_maps - 1;
  maps[last_big].unmap();
  auto r2 = edu.copy_to_device(src, kPage);
  KEXPECT_OK(r2);
  if (r2.ok()) KEXPECT_TRUE(r2->bounced);
  edu.dma().set_force_bounce(false);
  support::fill_bytes(back.va(), 0, kPage);
  auto r3 = edu.copy_from_device(back.va(), kPage);
  KEXPECT_OK(r3);
  KEXPECT_EQ(ktest_util::check_pattern(back.va(), kPage, 41), kPage);

  for (size_t i = 0; i < n; ++i) maps[i].~StreamingMapping();
  KEXPECT_EQ(used_slots(pool), used0);
  KEXPECT_EQ(filler.check_no_mappings(), 0u);
}

// ---------------------------------------------------------------------------------------------
// virtio-blk

namespace {

Result<void> bind_blk(VirtioBlk* blk) {
  Devices* d = devices();
  if (d == nullptr || d->virtio_blk() == nullptr) return ErrorCode::kNotFound;
  DeviceDma dma = d->device_dma(d->virtio_blk(), ~0ull);
  dma.set_name("virtio-blk");
  return blk->init(d->virtio_blk(), dma);
}

}  // namespace

KTEST_WHEN(virtio_blk_reads_the_host_pattern_into_scattered_pages, iommu::inactive) {
  VirtioBlk blk;
  KREQUIRE_OK(bind_blk(&blk));
  KEXPECT_TRUE((blk.features() & virtio::kFeatureVersion1) != 0);
  KEXPECT_GE(blk.capacity_sectors(), disk_pattern::kSectors);
  KEXPECT_GT(blk.queue_size(), 2u);
  Pages block(2);  // Pages 0 and 2 of it: not contiguous.
  KREQUIRE_TRUE(block.ok());
  uint8_t* p0 = block.va();
  uint8_t* p2 = block.va() + 2 * kPage;
  support::fill_bytes(block.va(), 0, block.bytes());
  SgEntry e[] = {{p0, kPage}, {p2, kPage}};
  auto r = blk.read(0, e);
  KREQUIRE_OK(r);
  KEXPECT_EQ(r->segments, 2u);
  KEXPECT_EQ(check_disk(p0, kPage, 0, false), kPage);
  KEXPECT_EQ(check_disk(p2, kPage, kPage, false), kPage);
  // A sector in the middle of the disk too.
  auto r2 = blk.read(700, support::Span<const SgEntry>(e, 1));
  KREQUIRE_OK(r2);
  KEXPECT_EQ(check_disk(p0, kPage, 700 * disk_pattern::kSectorSize, false), kPage);
}

KTEST(virtio_blk_rejects_bad_requests_without_the_device) {
  VirtioBlk blk;
  KREQUIRE_OK(bind_blk(&blk));
  Pages p(0);
  KREQUIRE_TRUE(p.ok());
  SgEntry odd[] = {{p.va(), 100}};
  KEXPECT_ERR(blk.read(0, odd), ErrorCode::kLayoutError);
  SgEntry one[] = {{p.va(), kPage}};
  KEXPECT_ERR(blk.read(blk.capacity_sectors() - 1, one), ErrorCode::kOutOfRange);
  KEXPECT_ERR(blk.write(blk.capacity_sectors(), one), ErrorCode::kOutOfRange);
  KEXPECT_EQ(blk.header_pool()->stats().blocks_in_use, 0u);
  KEXPECT_EQ(kernel_env().dma->stats().live_maps, 0u);
}

KTEST_WHEN(virtio_blk_writes_and_reads_back_scatter_gather, iommu::inactive) {
  VirtioBlk blk;
  KREQUIRE_OK(bind_blk(&blk));
  const uint64_t first = disk_pattern::kTestSgFirst;
  const uint64_t pos = first * disk_pattern::kSectorSize;
  Pages out(2);
  Pages in(2);
  KREQUIRE_TRUE(out.ok() && in.ok());
  // Written from three pieces that do not touch: page 0, 1 KiB inside page 2, page 3.
  uint8_t* w0 = out.va();
  uint8_t* w1 = out.va() + 2 * kPage + 512;
  uint8_t* w2 = out.va() + 3 * kPage;
  fill_guest(w0, kPage, pos);
  fill_guest(w1, 1024, pos + kPage);
  fill_guest(w2, kPage, pos + kPage + 1024);
  SgEntry we[] = {{w0, kPage}, {w1, 1024}, {w2, kPage}};
  static_assert(disk_pattern::kTestSgCount * disk_pattern::kSectorSize == 2 * kPage + 1024);
#if DMA_STATS  // KernelDmaOp::stats() counts only with DMA_STATS.
  KernelDmaOp::Stats s0 = kernel_env().dma->stats();
#endif
  auto w = blk.write(first, we);
  KREQUIRE_OK(w);
  KEXPECT_EQ(w->segments, 3u);
  // Read back into four pieces, two pairs of neighbours: the mapping merges each pair.
  support::fill_bytes(in.va(), 0, in.bytes());
  SgEntry re[] = {{in.va(), kPage},
                  {in.va() + kPage, 512},
                  {in.va() + 2 * kPage, kPage},
                  {in.va() + 3 * kPage, 512}};
  auto r = blk.read(first, re);
  KREQUIRE_OK(r);
  KEXPECT_EQ(r->buffers, 4u);
  KEXPECT_EQ(r->segments, 2u);
  KEXPECT_EQ(check_disk(in.va(), kPage + 512, pos, true), kPage + 512);
  KEXPECT_EQ(check_disk(in.va() + 2 * kPage, kPage + 512, pos + kPage + 512, true), kPage + 512);
#if DMA_STATS
  KernelDmaOp::Stats s1 = kernel_env().dma->stats();
  KEXPECT_EQ(s1.maps - s0.maps, 7u);
  KEXPECT_EQ(s1.live_maps, s0.live_maps);
#endif
  if (!ktest_ctx.failed()) {
    kprintf("virtio-blk: guest pattern in sectors %llu..%llu\n",
            static_cast<unsigned long long>(first),
            static_cast<unsigned long long>(first + disk_pattern::kTestSgCount - 1));
  }
}

KTEST(virtio_blk_bounced_data_reaches_the_disk_and_back) {
  VirtioBlk blk;
  KREQUIRE_OK(bind_blk(&blk));
  const uint64_t first = disk_pattern::kTestBounceFirst;
  const uint64_t pos = first * disk_pattern::kSectorSize;
  const size_t bytes = disk_pattern::kTestBounceCount * disk_pattern::kSectorSize;
  // The data buffers as a 32-bit device would have to see them: above 4 GiB they bounce (the
  // rings and headers stay where they are: the real device reaches them).
  KEXPECT_TRUE(blk.dma().set_dma_mask(kMask32).ok());
  PagesAbove high_out(1, kMask32);
  PagesAbove high_in(1, kMask32);
  Pages low_out(1);
  Pages low_in(1);
  uint8_t* out;
  uint8_t* in;
  if (high_out.ok() && high_in.ok()) {
    out = high_out.va();
    in = high_in.va();
  } else {
    kprintf(
        "  note: no free RAM above 4 GiB (boot with QEMU_MEM=6G for the real case); "
        "forcing the bounce\n");
    KREQUIRE_TRUE(low_out.ok() && low_in.ok());
    out = low_out.va();
    in = low_in.va();
    blk.dma().set_force_bounce(true);
  }
  fill_guest(out, bytes, pos);
  support::fill_bytes(in, 0, bytes);
#if DMA_STATS  // KernelDmaOp::stats() counts only with DMA_STATS.
  KernelDmaOp::Stats s0 = kernel_env().dma->stats();
#endif
  SgEntry we[] = {{out, kPage}, {out + kPage, kPage}};
  auto w = blk.write(first, we);
  KREQUIRE_OK(w);
  SgEntry re[] = {{in, bytes}};
  auto r = blk.read(first, re);
  KREQUIRE_OK(r);
  KEXPECT_EQ(check_disk(in, bytes, pos, true), bytes);
#if DMA_STATS
  KernelDmaOp::Stats s1 = kernel_env().dma->stats();
  // Behind an IOMMU the device reaches the high buffers through its domain: nothing bounces
  // unless forced.
  if (!iommu::active()) {
    KEXPECT_EQ(s1.bounced_maps - s0.bounced_maps, 3u);
    KEXPECT_GE(s1.bytes_bounced - s0.bytes_bounced, 2 * bytes);
  }
  KEXPECT_EQ(s1.live_maps, s0.live_maps);
#endif
  if (!ktest_ctx.failed()) {
    kprintf("virtio-blk: guest pattern in sectors %llu..%llu\n",
            static_cast<unsigned long long>(first),
            static_cast<unsigned long long>(first + disk_pattern::kTestBounceCount - 1));
  }
}
