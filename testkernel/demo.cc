// The demo: a coherent allocation and streaming mappings (direct and bounced) through the
// platform's DmaOp, with a stand-in device: the CPU itself, reading and writing the memory at the
// DMA address through the direct map (bus offset 0 on every QEMU machine used here). Each step
// prints what it did and the statistics that moved. The drivers issue adds real devices.
#include "testkernel/demo.h"

#include "dmakit/support/mem.h"
#include "testkernel/demo_devices.h"
#include "testkernel/kprintf.h"

namespace {

// The stand-in device: reaches memory by DMA address (== physical address here).
uint8_t* device_view(const KernelEnv& env, DmaAddr a) {
  return static_cast<uint8_t*>(env.phys_to_virt(PhysAddr(a.value())));
}

void print_stats(const KernelEnv& env) {
  KernelDmaOp::Stats s = env.dma->stats();
  kprintf(
      "  stats: maps %llu (direct %llu, bounced %llu), bytes mapped %llu, bounced %llu, "
      "live maps %llu, coherent live %llu\n",
      static_cast<unsigned long long>(s.maps), static_cast<unsigned long long>(s.direct_maps),
      static_cast<unsigned long long>(s.bounced_maps),
      static_cast<unsigned long long>(s.bytes_mapped),
      static_cast<unsigned long long>(s.bytes_bounced),
      static_cast<unsigned long long>(s.live_maps),
      static_cast<unsigned long long>(s.coherent_live));
  for (size_t i = 0; i < env.num_pools; ++i) {
    BouncePool::Stats p = env.pools[i]->stats();
    kprintf("  pool %s: %llu/%llu slots in use, high water %llu\n", env.pool_names[i],
            static_cast<unsigned long long>(p.used_slots),
            static_cast<unsigned long long>(p.total_slots),
            static_cast<unsigned long long>(p.high_water_slots));
  }
}

bool round_trip(const KernelEnv& env, const char* what, const DmaConstraints& c, uint8_t* buf,
                size_t size) {
  static const char kMsg[] = "hello from the cpu";
  support::fill_bytes(buf, 0, size);
  support::copy_bytes(buf, kMsg, sizeof(kMsg));
  auto h = env.dma->map_single(c, buf, size, 0, DmaDirection::kBidirectional);
  if (!h.ok()) {
    kprintf("  %s: map_single failed: %s\n", what, error_code_name(h.code()));
    return false;
  }
  auto pa = env.dma->virt_to_phys(buf);
  kprintf("  %s: buffer phys 0x%llx -> dma 0x%llx (%s)\n", what,
          static_cast<unsigned long long>(pa.ok() ? pa->value() : 0),
          static_cast<unsigned long long>(h->dma_addr.value()),
          h->bounced() ? "bounced" : "direct");
  // The device reads the message and answers in upper case.
  uint8_t* dev = device_view(env, h->dma_addr);
  bool seen = support::compare_bytes(dev, kMsg, sizeof(kMsg)) == 0;
  for (size_t i = 0; i + 1 < sizeof(kMsg); ++i) {
    if (dev[i] >= 'a' && dev[i] <= 'z') dev[i] = static_cast<uint8_t>(dev[i] - 'a' + 'A');
  }
  env.dma->unmap_single(*h);
  kprintf("  %s: device saw the message: %s; cpu now reads \"%s\"\n", what, seen ? "yes" : "NO",
          reinterpret_cast<const char*>(buf));
  return seen && buf[0] == 'H';
}

}  // namespace

bool run_demo(const KernelEnv& env) {
  kprintf("demo: the DMA API on this machine (stand-in device: the CPU at the DMA address)\n");
  bool ok = true;

  auto coherent = env.dma->alloc_coherent(~0ull, Layout{8192, 4096});
  if (coherent.ok()) {
    kprintf("  alloc_coherent(8 KiB): cpu %p, phys 0x%llx, dma 0x%llx\n", coherent->cpu_addr,
            static_cast<unsigned long long>(coherent->phys.value()),
            static_cast<unsigned long long>(coherent->dma_addr.value()));
  } else {
    kprintf("  alloc_coherent failed: %s\n", error_code_name(coherent.code()));
    ok = false;
  }

  auto page = env.pfa->alloc(2);
  if (!page.ok()) {
    kprintf("  no memory for the demo buffer: %s\n", error_code_name(page.code()));
    return false;
  }
  auto* buf = static_cast<uint8_t*>(env.phys_to_virt(*page));
  DmaConstraints c = env.dma->default_constraints();
  c.name = "demo";
  ok &= round_trip(env, "any address", c, buf, 4096);
  c.force_bounce = true;
  ok &= round_trip(env, "forced bounce", c, buf, 4096);
  print_stats(env);

  if (!env.pfa->free(*page, 2).ok()) ok = false;
  if (coherent.ok()) env.dma->dealloc_coherent(*coherent);
  ok &= run_device_demo(env);
  return ok;
}
