// The value types of the DMA API: direction, layout, the constraints of one device, and the
// handles that describe a coherent allocation or a streaming mapping. Every function here is
// any context (dmakit/dma_op.h, "Calling contexts"): they touch nothing but their arguments.
#pragma once

#include "dmakit/bounce_pool.h"
#include "dmakit/support/addr.h"
#include "dmakit/support/result.h"
#include "dmakit/support/types.h"

// Which way data moves during a streaming mapping (the dma-api crate's DmaDirection). A bounced
// mapping copies the buffer into its slot at map in every direction (so that a device writing
// less than the whole slot leaves the buffer's own bytes there, never a previous mapping's) and
// copies it back out at unmap for kFromDevice and kBidirectional.
enum class DmaDirection : uint8_t {
  kToDevice,       // CPU wrote, device reads: clean caches at map; nothing at unmap.
  kFromDevice,     // device writes, CPU reads: invalidate / copy out of the bounce slot at unmap.
  kBidirectional,  // both.
};

// Whether a device snoops the CPU caches.
enum class DmaCoherence : uint8_t {
  // The platform's answer (KernelDmaOp::Config::platform_coherent, which
  // DmaOp::default_constraints() states explicitly): what a device gets unless told otherwise.
  kPlatformDefault,
  // Snoops: streaming mappings need no cache maintenance; coherent memory stays cacheable.
  kCoherent,
  // Does not: mappings are cleaned / invalidated, receive buffers sharing cache lines are
  // bounced, coherent memory is mapped uncached.
  kNonCoherent,
};

// kCoherent for true, kNonCoherent for false.
constexpr DmaCoherence dma_coherence(bool coherent) {
  return coherent ? DmaCoherence::kCoherent : DmaCoherence::kNonCoherent;
}

const char* dma_direction_name(DmaDirection dir);

// Which of a device's two masks a check is about (DmaOp::check_mask): the streaming mask governs
// map_single, the coherent mask alloc_coherent / alloc_noncoherent (Linux's dma_mask and
// coherent_dma_mask).
enum class DmaMaskKind : uint8_t {
  kStreaming,
  kCoherent,
};

// Attributes of a mapping or an allocation (Linux's DMA_ATTR_*), OR-ed into a DmaAttrs.
using DmaAttrs = uint32_t;
// Mapping only: no cache maintenance at map and unmap, and no copy out of a bounce slot at unmap
// (the copy into the slot at map still happens). For buffers the driver syncs by range itself
// (page-pool recycling): it calls sync_for_device before the device reads and sync_for_cpu
// before the CPU reads what the device wrote.
inline constexpr DmaAttrs kDmaAttrSkipCpuSync = 1u << 0;
// Allocation only: coherent memory the CPU maps write-combining (Linux's dma_alloc_wc): Normal
// Non-cacheable on AArch64, Svpbmt NC on RISC-V; x86-64's PAT has no write-combining index in
// dmakit_page_tables, so it is kNotSupported there. Stores may be merged and reach memory late:
// a driver orders them before a doorbell with a write barrier.
inline constexpr DmaAttrs kDmaAttrWriteCombine = 1u << 1;
// Allocation only: the CPU will not touch the memory (buffers only devices use), so a device
// that does not snoop gets it without the uncached remap; DmaHandle::cpu_addr is then a cookie
// for dealloc, not to be dereferenced.
inline constexpr DmaAttrs kDmaAttrNoKernelMapping = 1u << 2;
// Either: the device may reorder its accesses to the memory (Linux's DMA_ATTR_WEAK_ORDERING); a
// hint for the bus, accepted and without effect here.
inline constexpr DmaAttrs kDmaAttrWeakOrdering = 1u << 3;
inline constexpr DmaAttrs kDmaAttrsMap = kDmaAttrSkipCpuSync | kDmaAttrWeakOrdering;
inline constexpr DmaAttrs kDmaAttrsAlloc =
    kDmaAttrWriteCombine | kDmaAttrNoKernelMapping | kDmaAttrWeakOrdering;

// Which way ownership moves at a sync of cacheable DMA memory (DmaOp::sync_noncoherent).
enum class DmaSyncTarget : uint8_t {
  kForDevice,  // The CPU wrote; the device accesses next (Linux's dma_sync_*_for_device).
  kForCpu,     // The device wrote; the CPU reads next (Linux's dma_sync_*_for_cpu).
};

// The DMA API's error: an `Error` (include/dmakit/support/result.h). DmaMaskNotMatch carries the
// address that had to be reached and the mask.
using DmaError = Error;

// Size and alignment of a coherent allocation (Rust's core::alloc::Layout).
struct Layout {
  size_t size = 0;
  size_t align = 1;
};

// One DMA window of a device (a `dma-ranges` entry, Linux's bus_dma_region): the CPU's physical
// range [cpu_base, cpu_base + size) appears to the device at [dma_base, dma_base + size).
struct DmaWindow {
  PhysAddr cpu_base;
  DmaAddr dma_base;
  uint64_t size = 0;
};

// Most windows DmaConstraints::windows may name.
inline constexpr size_t kMaxDmaWindows = 8;

// What the mapping layer must know about one device. `DeviceDma` (include/dmakit/device_dma.h)
// holds one.
struct DmaConstraints {
  // Highest DMA address the device can generate: the device reaches DMA addresses [0, dma_mask].
  // Any value, not only 2^n - 1 (0xFFFF'FFFF for a 32-bit device): with RAM starting at
  // 0x8000'0000 and bus_offset 0, a device limited to the first 16 MiB of it has the mask
  // 0x80FF'FFFF. 0 is refused (kInvalidArgument).
  uint64_t dma_mask = ~0ull;
  // DMA address = physical address + bus_offset (mod 2^64); 0 on QEMU's virt machines.
  uint64_t bus_offset = 0;
  // Bits of the CPU address a bounce buffer must preserve (e.g. 0xFFF for NVMe), 0 for none.
  uint64_t min_align_mask = 0;
  // Whether the device snoops CPU caches; by default the platform's (DmaCoherence).
  DmaCoherence coherence = DmaCoherence::kPlatformDefault;
  // Bounce every mapping (testing, or devices that cannot be trusted with kernel memory).
  bool force_bounce = false;
  // Name printed by diagnostics, may be null.
  const char* name = nullptr;
  // Identity of the device for the misuse checker (include/dmakit/dma_debug.h) and the bounce
  // pools' per-device accounting: a fresh id per constructed DeviceDma (DmaDebug::new_device_id, in
  // every build), shared by its copies; 0 for an anonymous device (the mask-only entry points).
  uint32_t device_id = 0;
  // Several DMA windows (num_windows of them at `windows`, caller-owned, outliving every copy of
  // these constraints; at most kMaxDmaWindows): when given, a physical range is reachable only if
  // one window holds it wholly and its device address (translated through that window) lies
  // under dma_mask; bus_offset is then not used. Bounce slots and coherent memory are chosen in
  // memory some window reaches. None (the default): the single bus_offset. A window of size 0 or
  // one that wraps is refused (kInvalidArgument).
  const DmaWindow* windows = nullptr;
  uint8_t num_windows = 0;
  // Most bytes of a bounce pool this device may hold at once (BounceDevice::quota: whole slots,
  // rounded up; 0: no quota). A bounced mapping over it fails with kNoMemory.
  uint64_t bounce_quota = 0;
};

// A coherent allocation (the crate's DmaHandle). Owned by the caller until dealloc_coherent.
struct DmaHandle {
  void* cpu_addr = nullptr;  // CPU virtual address of the memory.
  DmaAddr dma_addr;          // Address to give the device.
  PhysAddr phys;             // Physical address.
  Layout layout;             // As requested.
  uint8_t order = 0;         // Page-frame allocator order backing it.
  bool coherent_device = false;
  // The pages were remapped uncached for a non-coherent device (KernelDmaOp::alloc_coherent);
  // dealloc_coherent restores them.
  bool remapped = false;
  uint32_t device_id = 0;      // DmaConstraints::device_id of the allocating device.
  bool write_combine = false;  // Remapped write-combining (kDmaAttrWriteCombine).
};

// A streaming mapping (the crate's DmaMapHandle). Owned by the caller until unmap_single.
// 48 bytes: it is returned by value on every map and usually stored by the driver.
struct DmaMapHandle {
  void* cpu_addr = nullptr;  // The caller's buffer.
  DmaAddr dma_addr;          // Address to give the device (the bounce slot's, if bounced).
  size_t size = 0;
  // Non-null when the mapping is bounced: the CPU address of the data in the bounce slot.
  void* bounce_cpu = nullptr;
  // Bounced only: the pool's bookkeeping of the slot (BouncePool::free_data checks it).
  uint32_t bounce_first_slot = 0;
  uint32_t bounce_num_slots = 0;
  uint32_t device_id = 0;  // DmaConstraints::device_id of the mapping device.
  DmaDirection direction = DmaDirection::kToDevice;
  bool coherent_device = false;
  uint8_t bounce_pool_index = 0;  // Bounced only: KernelDmaOp::Config::pools index.
  bool skip_cpu_sync = false;     // Mapped with kDmaAttrSkipCpuSync: unmap does no CPU sync.

  bool bounced() const { return bounce_cpu != nullptr; }
};
