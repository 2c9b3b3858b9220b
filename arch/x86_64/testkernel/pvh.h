// The PVH start info (Xen's public/arch-x86/hvm/start_info.h, "x86/HVM direct boot ABI"):
// what QEMU's PVH loader tells the kernel about memory, the command line and ACPI.
//
// Layout (all little endian): struct hvm_start_info { u32 magic = 0x336ec578; u32 version;
// u32 flags; u32 nr_modules; u64 modlist_paddr; u64 cmdline_paddr; u64 rsdp_paddr;
// -- version >= 1: u64 memmap_paddr; u32 memmap_entries; u32 reserved; } (56 bytes), and each
// memory-map entry is { u64 addr; u64 size; u32 type; u32 reserved; } (24 bytes) with the ACPI
// address-range types (1 RAM, 2 reserved, 3 ACPI reclaimable, 4 ACPI NVS, 5 unusable, 6 disabled,
// 7 persistent memory).
#pragma once

#include "dmakit/support/types.h"

namespace x86 {

constexpr uint32_t kMemTypeRam = 1;
constexpr uint32_t kMemTypeReserved = 2;
constexpr uint32_t kMemTypeAcpi = 3;
constexpr uint32_t kMemTypeNvs = 4;

struct MemmapEntry {
  uint64_t addr;
  uint64_t size;
  uint32_t type;
  uint32_t reserved;
};
static_assert(sizeof(MemmapEntry) == 24, "hvm_memmap_table_entry layout");

// What the kernel keeps of the start info (copied: the originals stay in firmware memory).
struct PvhInfo {
  static constexpr size_t kMaxEntries = 64;
  uint64_t start_info_phys = 0;
  uint32_t version = 0;
  uint64_t memmap_phys = 0;
  MemmapEntry memmap[kMaxEntries] = {};
  size_t num_memmap = 0;
  uint64_t cmdline_phys = 0;  // 0: no command line.
  size_t cmdline_len = 0;     // Bytes before the NUL.
  uint64_t rsdp_phys = 0;     // 0: none given.
};

// Reads and checks the start info at physical `start_info_phys` through the boot identity map
// (physical [0, 1 GiB), see boot.S), before the final page tables exist.
// Panics (boot_panic) on a bad magic, a version 0 structure or an empty memory map (this kernel
// takes memory only from the firmware's map), more than kMaxEntries entries, or data placed above
// the identity-mapped 1 GiB.
void read_pvh_start_info(uint64_t start_info_phys, PvhInfo* out);

}  // namespace x86
