// The device part of the demo (`make run`): QEMU's edu DMA engine copying through a bounce buffer,
// and a virtio-blk write and read, each followed by what moved in the DMA statistics. The devices
// are those the runner attaches (tests/qemu/run_qemu.py; see testkernel/devices.h).
#include "testkernel/demo_devices.h"

#include "dmakit/support/mem.h"
#include "drivers/edu/edu_device.h"
#include "drivers/virtio/virtio_blk.h"
#include "testkernel/devices.h"
#include "testkernel/kprintf.h"

namespace {

constexpr uint64_t kMask32 = 0xFFFF'FFFFull;
constexpr size_t kPage = PageFrameAllocator::kPageSize;

// The statistics that moved since `before`, and the bounce pools' occupancy.
void print_delta(const KernelEnv& env, const KernelDmaOp::Stats& before) {
  KernelDmaOp::Stats s = env.dma->stats();
  kprintf(
      "    dma: %llu map(s) (%llu direct, %llu bounced), %llu bytes mapped, %llu bytes copied "
      "through bounce slots, %llu mapping(s) still live\n",
      static_cast<unsigned long long>(s.maps - before.maps),
      static_cast<unsigned long long>(s.direct_maps - before.direct_maps),
      static_cast<unsigned long long>(s.bounced_maps - before.bounced_maps),
      static_cast<unsigned long long>(s.bytes_mapped - before.bytes_mapped),
      static_cast<unsigned long long>(s.bytes_bounced - before.bytes_bounced),
      static_cast<unsigned long long>(s.live_maps));
  for (size_t i = 0; i < env.num_pools; ++i) {
    BouncePool::Stats p = env.pools[i]->stats();
    kprintf("    pool %s: %llu of %llu slots in use, high water %llu\n", env.pool_names[i],
            static_cast<unsigned long long>(p.used_slots),
            static_cast<unsigned long long>(p.total_slots),
            static_cast<unsigned long long>(p.high_water_slots));
  }
}

// A block of 2^order pages, preferably wholly above `floor`; the caller frees it.
Result<PhysAddr> pages_above(const KernelEnv& env, unsigned order, uint64_t floor) {
  PhysAddr tried[32];
  size_t n = 0;
  PhysAddr found;
  bool have = false;
  while (n < 32 && !have) {
    auto r = env.pfa->alloc(order);
    if (!r.ok()) break;
    if (r->value() > floor) {
      found = *r;
      have = true;
    } else {
      tried[n++] = *r;
    }
  }
  for (size_t i = 0; i < n; ++i) (void)env.pfa->free(tried[i], order);
  if (have) return found;
  return env.pfa->alloc(order);
}

const char* text_of(const uint8_t* p) {
  return reinterpret_cast<const char*>(p);
}

bool edu_demo(const KernelEnv& env, Devices& devs) {
  const Devices::Edu* e = devs.edu_with_mask(kMask32);
  if (e == nullptr) {
    kprintf("  edu: no edu device with a 32-bit mask (the runner attaches one)\n");
    return false;
  }
  EduDevice edu;
  DeviceDma dma = devs.device_dma(e->dev, e->dma_mask);
  dma.set_name("edu");
  auto r = edu.init(e->dev, dma);
  if (!r.ok()) {
    kprintf("  edu: init failed: %s\n", error_code_name(r.code()));
    return false;
  }
  auto block = pages_above(env, 0, kMask32);
  if (!block.ok()) return false;
  auto* buf = static_cast<uint8_t*>(env.phys_to_virt(*block));
  bool high = block->value() > kMask32;
  char phys[24];
  ksnprintf(phys, sizeof(phys), "0x%llx", static_cast<unsigned long long>(block->value()));
  kprintf("  edu (dma mask 0x%llx): buffer at phys %s, %s\n",
          static_cast<unsigned long long>(e->dma_mask), phys,
          high ? "above the mask" : "under the mask (no RAM above 4 GiB: bounce forced)");
  if (!high) edu.dma().set_force_bounce(true);

  static const char kMsg[] = "hello from RAM above the edu device's reach";
  support::fill_bytes(buf, 0, kPage);
  support::copy_bytes(buf, kMsg, sizeof(kMsg));
  KernelDmaOp::Stats before = env.dma->stats();
  bool ok = false;
  auto t1 = edu.copy_to_device(buf, kPage);
  if (t1.ok()) {
    kprintf("  edu: RAM -> device buffer: programmed dma 0x%llx (%s), %llu us\n",
            static_cast<unsigned long long>(t1->dma_addr.value()),
            t1->bounced ? "a bounce slot under the mask" : "the buffer itself",
            static_cast<unsigned long long>(t1->elapsed_ns / 1000));
    support::fill_bytes(buf, 0, kPage);
    auto t2 = edu.copy_from_device(buf, kPage);
    if (t2.ok()) {
      kprintf(
          "  edu: device buffer -> RAM: programmed dma 0x%llx (%s); the buffer now reads "
          "\"%s\"\n",
          static_cast<unsigned long long>(t2->dma_addr.value()), t2->bounced ? "bounced" : "direct",
          text_of(buf));
      ok = support::compare_bytes(buf, kMsg, sizeof(kMsg)) == 0 && t1->bounced && t2->bounced;
    } else {
      kprintf("  edu: copy from the device failed: %s\n", error_code_name(t2.code()));
    }
  } else {
    kprintf("  edu: copy to the device failed: %s\n", error_code_name(t1.code()));
  }
  print_delta(env, before);

  // The other edu device has the 28-bit default mask: below 256 MiB there is either a pool (x86)
  // or no memory at all (aarch64, riscv64: the map is refused and the device never started).
  const Devices::Edu* e28 = devs.edu_with_mask(Devices::kEduDefaultMask);
  if (e28 != nullptr) {
    EduDevice edu28;
    DeviceDma dma28 = devs.device_dma(e28->dev, e28->dma_mask);
    dma28.set_name("edu-28bit");
    auto block28 = pages_above(env, 0, e28->dma_mask);
    if (block28.ok() && edu28.init(e28->dev, dma28).ok()) {
      auto* buf28 = static_cast<uint8_t*>(env.phys_to_virt(*block28));
      support::copy_bytes(buf28, kMsg, sizeof(kMsg));
      auto t = edu28.copy_to_device(buf28, kPage);
      if (t.ok()) {
        kprintf("  edu (dma mask 0x%llx): buffer at phys 0x%llx -> dma 0x%llx (%s)\n",
                static_cast<unsigned long long>(e28->dma_mask),
                static_cast<unsigned long long>(block28->value()),
                static_cast<unsigned long long>(t->dma_addr.value()),
                t->bounced ? "bounced below 256 MiB" : "direct");
      } else {
        kprintf(
            "  edu (dma mask 0x%llx): buffer at phys 0x%llx refused: %s (addr 0x%llx, mask "
            "0x%llx); device started %llu time(s)\n",
            static_cast<unsigned long long>(e28->dma_mask),
            static_cast<unsigned long long>(block28->value()), error_code_name(t.code()),
            static_cast<unsigned long long>(t.error().addr),
            static_cast<unsigned long long>(t.error().mask),
            static_cast<unsigned long long>(edu28.stats().started));
      }
    }
    if (block28.ok()) (void)env.pfa->free(*block28, 0);
  }
  (void)env.pfa->free(*block, 0);
  return ok;
}

bool blk_demo(const KernelEnv& env, Devices& devs) {
  if (devs.virtio_blk() == nullptr) {
    kprintf("  virtio-blk: no disk (the runner attaches one)\n");
    return false;
  }
  VirtioBlk blk;
  DeviceDma dma = devs.device_dma(devs.virtio_blk(), ~0ull);
  dma.set_name("virtio-blk");
  auto r = blk.init(devs.virtio_blk(), dma);
  if (!r.ok()) {
    kprintf("  virtio-blk: init failed: %s\n", error_code_name(r.code()));
    return false;
  }
  kprintf("  virtio-blk: %llu sectors, features 0x%llx, queue of %u, seg_max %u\n",
          static_cast<unsigned long long>(blk.capacity_sectors()),
          static_cast<unsigned long long>(blk.features()), blk.queue_size(), blk.seg_max());
  auto block = env.pfa->alloc(2);  // Four pages: the write uses pages 0 and 2, the read 1 and 3.
  if (!block.ok()) return false;
  auto* base = static_cast<uint8_t*>(env.phys_to_virt(*block));
  const uint64_t first = disk_pattern::kDemoFirst;
  const size_t half = disk_pattern::kDemoCount * disk_pattern::kSectorSize / 2;
  uint8_t* w[2] = {base, base + 2 * kPage};
  for (size_t i = 0; i < 2 * half; ++i) {
    uint64_t pos = first * disk_pattern::kSectorSize + i;
    w[i / half][i % half] =
        disk_pattern::guest_byte(pos / disk_pattern::kSectorSize, pos % disk_pattern::kSectorSize);
  }
  bool ok = false;
  KernelDmaOp::Stats before = env.dma->stats();
  SgEntry we[] = {{w[0], half}, {w[1], half}};
  auto wr = blk.write(first, we);
  if (wr.ok()) {
    kprintf(
        "  virtio-blk: wrote sectors %llu..%llu from 2 separate pieces: %zu descriptor(s) "
        "of data, %llu us\n",
        static_cast<unsigned long long>(first),
        static_cast<unsigned long long>(first + disk_pattern::kDemoCount - 1), wr->segments,
        static_cast<unsigned long long>(wr->elapsed_ns / 1000));
    print_delta(env, before);
    // Read back as a 32-bit device would have to: a bounce when the buffer lies above 4 GiB (or
    // forced when there is no such RAM).
    uint8_t* rd = base + kPage;
    support::fill_bytes(rd, 0, 2 * half);
    // A 32-bit mask is served wherever the test kernel runs (its bounce pool lies below 4 GiB).
    (void)blk.dma().set_dma_mask(kMask32);
    if (*block + 4 * kPage - 1 <= PhysAddr(kMask32)) blk.dma().set_force_bounce(true);
    before = env.dma->stats();
    SgEntry re[] = {{rd, half}, {base + 3 * kPage, half}};
    auto rr = blk.read(first, re);
    if (rr.ok()) {
      bool same = support::compare_bytes(rd, w[0], half) == 0 &&
                  support::compare_bytes(base + 3 * kPage, w[1], half) == 0;
      kprintf("  virtio-blk: read them back through bounce slots: %s\n",
              same ? "identical" : "DIFFERENT");
      print_delta(env, before);
      ok = same;
      if (same) {
        kprintf("virtio-blk: guest pattern in sectors %llu..%llu\n",
                static_cast<unsigned long long>(first),
                static_cast<unsigned long long>(first + disk_pattern::kDemoCount - 1));
      }
    } else {
      kprintf("  virtio-blk: read failed: %s\n", error_code_name(rr.code()));
    }
  } else {
    kprintf("  virtio-blk: write failed: %s\n", error_code_name(wr.code()));
  }
  (void)env.pfa->free(*block, 2);
  return ok;
}

}  // namespace

bool run_device_demo(const KernelEnv& env) {
  kprintf("demo: devices that really do DMA\n");
  auto devs = devices_init(env);
  if (!devs.ok()) {
    kprintf("  no PCI host bridge: %s\n", error_code_name(devs.code()));
    return false;
  }
  (*devs)->print_report();
  bool ok = edu_demo(env, **devs);
  ok &= blk_demo(env, **devs);
  return ok;
}
