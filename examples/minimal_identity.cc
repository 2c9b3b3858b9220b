// Minimal DMA bring-up of an identity-mapped kernel: CPU virtual address = physical address
// (direct-map offset 0), RAM fixed at build time, no C++ start-up code. Every library object is a
// constinit static: nothing runs before dma_bring_up(), nothing is ever destroyed, so the link
// has no .init_array and needs no __cxa_atexit (scripts/check_contract.sh checks both).
//
// The machine: 64 MiB of RAM at 0x4000'0000. The kernel image (code, data, .bss, stacks) takes
// its first 4 MiB; a 1 MiB bounce pool lies right above it, so that a device reaching only the
// first 16 MiB of RAM (mask 0x40FF'FFFF: a mask is any value, not only a bit width) has somewhere
// to bounce.
//
// Built into the host suite too (tests/host/examples/minimal_bring_up_test.cc), which maps the
// simulated RAM at its physical address and runs a direct map, a bounced map and a coherent
// allocation through it.
#include "dmakit/bounce_pool.h"
#include "dmakit/device_dma.h"
#include "dmakit/kernel_dma_op.h"
#include "dmakit/page_frame_allocator.h"
#include "platform_dma_op.h"

namespace minimal_identity {

constexpr PhysRange kRam[] = {{PhysAddr(0x4000'0000), 64ull << 20}};
// A real kernel takes these bounds from its linker script (e.g. _start and _end).
constexpr PhysRange kKernelImage = {PhysAddr(0x4000'0000), 4ull << 20};
constexpr PhysRange kBouncePool = {PhysAddr(0x4040'0000), 1ull << 20};
constexpr uintptr_t kDirectMapOffset = 0;  // Identity map.

// The allocator's and the pool's bookkeeping, sized at compile time, in .bss: not in RAM the
// allocator manages (the image is reserved below).
alignas(8) constinit uint8_t g_pfa_meta[PageFrameAllocator::metadata_size(kRam)];
alignas(8) constinit uint8_t g_pool_meta[BouncePool::metadata_size(kBouncePool.size)];
constinit PageFrameAllocator g_pfa;
constinit BouncePool g_pool;

// Once at boot, on one CPU, before any driver; returns the platform's DmaOp for the drivers.
// (One CPU and no DMA call from interrupt handlers: the default kernel hooks. A kernel with more
// CPUs installs dmakit_set_kernel_hooks first, include/dmakit/kernel_hooks.h.)
Result<KernelDmaOp*> dma_bring_up() {
  const PhysRange reserved[] = {kKernelImage, kBouncePool};
  TRY(g_pfa.init(kRam, reserved, kDirectMapOffset, g_pfa_meta, sizeof(g_pfa_meta)));
  void* pool_cpu = reinterpret_cast<void*>(kBouncePool.base.value() + kDirectMapOffset);
  TRY(g_pool.init(kBouncePool.base, kBouncePool.size, pool_cpu, g_pool_meta, sizeof(g_pool_meta)));
  KernelDmaOp::Config cfg;
  cfg.pfa = &g_pfa;
  cfg.pools[0] = &g_pool;
  cfg.num_pools = 1;
  cfg.direct_map_offset = kDirectMapOffset;
  cfg.ram = kRam;  // Every byte of RAM translates, the image's .bss included.
  cfg.num_ram = 1;
  cfg.platform_coherent = example::kPlatformCoherent;
  return example::start_platform_dma_op(cfg);
}

// A driver's set-up: its device, and a descriptor ring in coherent memory that it keeps for the
// device's lifetime (released from its DArray into a static view: no destructor to run).
struct Desc {
  uint64_t addr;
  uint32_t len;
  uint16_t flags;
  uint16_t next;
};
constexpr uint64_t kDeviceMask = 0x40FF'FFFF;  // Reaches the first 16 MiB of RAM only.
constexpr size_t kRingEntries = 64;
constinit DeviceDma g_dev;
constinit DArrayRef<Desc> g_ring;

Result<void> driver_set_up(KernelDmaOp* op) {
  g_dev = DeviceDma(op, kDeviceMask);
  g_dev.set_name("minimal-identity");
  TRY_ASSIGN(DArray<Desc> ring, g_dev.alloc_array<Desc>(kRingEntries));
  g_ring = DArrayRef<Desc>(ring.release());
  return support::ok();
}

}  // namespace minimal_identity
