// The booted test kernel's state, for the in-VM tests and the demo: boot information, the
// page-frame allocator, the bounce pools and the platform DmaOp, as kernel_main set them up.
#pragma once

#include "dmakit/bounce_pool.h"
#include "dmakit/kernel_dma_op.h"
#include "dmakit/page_frame_allocator.h"
#include "dmakit/support/addr.h"
#include "dmakit/support/types.h"
#include "testkernel/arch.h"

struct KernelEnv {
  static constexpr size_t kMaxReserved = arch::kMaxReserved + 16;

  const arch::BootInfo* boot = nullptr;
  PageFrameAllocator* pfa = nullptr;
  KernelDmaOp* dma = nullptr;
  BouncePool* pools[KernelDmaOp::kMaxPools] = {};
  const char* pool_names[KernelDmaOp::kMaxPools] = {};
  size_t num_pools = 0;
  // Everything withheld from the page-frame allocator: the boot info's reserved ranges plus
  // what kernel_main carved (allocator metadata, bounce pools and their metadata).
  PhysRange reserved[kMaxReserved];
  const char* reserved_what[kMaxReserved] = {};
  size_t num_reserved = 0;
  uint64_t ram_bytes = 0;
  uintptr_t direct_map_offset = 0;
  // The boot split of the direct map to 4 KiB pages (arch::split_direct_map_at_boot): the RAM
  // below presplit_limit (physical; ~0: all of it, 0: none) is mapped by 4 KiB leaves for good,
  // with presplit_tables page-table pages.
  uint64_t presplit_limit = 0;
  size_t presplit_tables = 0;

  void* phys_to_virt(PhysAddr p) const {
    return reinterpret_cast<void*>(static_cast<uintptr_t>(p.value()) + direct_map_offset);
  }
  // True if [base, base + size) lies inside one RAM range.
  bool in_ram(PhysAddr base, uint64_t size) const {
    for (size_t i = 0; i < boot->num_ram; ++i) {
      const PhysRange& r = boot->ram[i];
      if (base >= r.base && size <= r.size && base.value() - r.base.value() <= r.size - size) {
        return true;
      }
    }
    return false;
  }
  // Whether the direct map of the page at `p` was split to 4 KiB leaves at boot, so that
  // changing its attribute never splits (nor breaks) a larger leaf.
  bool presplit(PhysAddr p) const { return p.value() < presplit_limit; }
  // True if [base, base + size) overlaps a reserved range (page granular, as the allocator sees
  // reserved pieces).
  bool overlaps_reserved(PhysAddr base, uint64_t size) const {
    for (size_t i = 0; i < num_reserved; ++i) {
      uint64_t lo = reserved[i].base.value() & ~uint64_t{4095};
      uint64_t hi = (reserved[i].base.value() + reserved[i].size + 4095) & ~uint64_t{4095};
      if (reserved[i].size != 0 && base.value() < hi && lo < base.value() + size) return true;
    }
    return false;
  }
};

// Valid once kernel_main has set up memory (before any test or demo runs).
const KernelEnv& kernel_env();
