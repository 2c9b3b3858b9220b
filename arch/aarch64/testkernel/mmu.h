// AArch64 stage-1 translation for the test kernel (EL1, 4 KiB granule, 48-bit virtual addresses,
// four levels L0..L3).
//
// Layout:
//   TTBR0 (low half) -- identity map: the kernel image and the device tree blob (Normal
//                       write-back, as placed by QEMU: DTB at the base of RAM, kernel above it),
//                       and every MMIO region the device tree describes (Device-nGnRE). Page 0
//                       and anything not described stay unmapped, so null dereferences fault.
//   TTBR1 (high half) -- the direct map: physical p at kDirectMapBase + p, for every RAM range of
//                       the device tree (Normal write-back), no execute.
//
// MAIR_EL1 indices: 0 Device-nGnRE (MMIO), 1 Normal write-back read/write-allocate (RAM),
// 2 Normal non-cacheable (reserved for uncached coherent DMA memory, issue "coherent memory"),
// 3 Device-nGnRnE.
//
// Page tables come from a static pool inside the kernel image (so they are reserved with it).
// map() uses the largest block that alignment and size allow (1 GiB at L1, 2 MiB at L2, else
// 4 KiB pages); mapping a range costs O(pages at the finest level used).
#pragma once

#include "dmakit/page_tables.h"
#include "dmakit/support/result.h"
#include "dmakit/support/types.h"
#include "testkernel/split_table_pool.h"

namespace aarch64 {

constexpr uint64_t kDirectMapBase = 0xFFFF'8000'0000'0000ull;

enum class MemAttr : uint8_t {
  kDevice = 0,        // Device-nGnRE
  kNormalWb = 1,      // Normal, inner/outer write-back, read/write-allocate, inner shareable
  kNormalNc = 2,      // Normal, non-cacheable
  kDeviceStrict = 3,  // Device-nGnRnE
};

// MAIR_EL1 value matching MemAttr.
constexpr uint64_t kMairValue = (0x04ull << 0) | (0xFFull << 8) | (0x44ull << 16) | (0x00ull << 24);

// Which translation regime a table belongs to.
enum class Space { kIdentity, kDirect };

// Clears the table pool and the two root tables. Safe with the MMU off (aligned 8-byte stores
// only).
void mmu_reset_tables();

// Maps [va, va + size) to [pa, pa + size) with `attr` in the given space. va, pa and size must be
// 4 KiB aligned; executable only for the identity-mapped kernel image (`exec`).
// May run with the MMU off (early boot) or on (then followed by mmu_sync()).
// Errors: kInvalidArgument (misaligned, outside the space, or conflicting with an existing
// mapping of a different kind), kNoMemory (table pool exhausted).
Result<void> mmu_map(Space space, uint64_t va, uint64_t pa, uint64_t size, MemAttr attr, bool exec);

// Programs MAIR/TCR/TTBRs and turns on the MMU and both caches (SCTLR_EL1.M, C, I). Call once,
// with the MMU off, after the identity map covers the running code, its stack and the console.
void mmu_enable();

// Makes table updates done with the MMU on visible to the walker (dsb, tlbi vmalle1, dsb, isb).
void mmu_sync();

// Walks the tables for a virtual address. Returns false if unmapped; else the attribute index
// and the physical address.
bool mmu_lookup(uint64_t va, MemAttr* attr, uint64_t* pa);

// Page-table pages used so far, and the pool's capacity.
size_t mmu_tables_used();
size_t mmu_tables_capacity();

// The direct map's tables as dmakit needs them to make its pages uncached in place
// (dmakit/page_tables.h): the TTBR1 root, four levels, tables reached through the identity map
// (table_offset 0: they and the run-time split tables are in the kernel image, and the boot
// split's tables in RAM that arch::split_direct_map_at_boot identity-maps first; all outside the
// direct map being edited), the direct map [kDirectMapBase, + 2^47), MAIR indices kNormalWb and
// kNormalNc, split tables from g_split_tables. Valid for the kernel's lifetime.
const dmakit_page_tables* mmu_direct_map_tables();

// The pool mmu_direct_map_tables lends dmakit split tables from (run-time splits, and the boot
// split of arch::split_direct_map_at_boot).
extern SplitTablePool g_split_tables;

}  // namespace aarch64
