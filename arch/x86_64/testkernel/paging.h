// The x86-64 kernel address space (4-level paging, built once at boot on the boot CPU).
//
//   0x0000'0000'0000'0000 .. : nothing. The boot identity map is gone once init_paging() returns,
//                              so a physical address used as a pointer faults.
//   kDirectMapBase + p       : the direct map. Every range of the PVH memory map of type RAM (1),
//                              ACPI (3) or NVS (4), the reserved ranges (2) below the MMIO window
//                              (firmware memory such as SeaBIOS's ACPI tables) and all of
//                              [0, 1 MiB): write-back, no-execute. Nothing else: holes, reserved
//                              ranges above 4 GiB and unusable memory stay unmapped.
//   kDirectMapBase + p, p in [kMmioWindowBase, kMmioWindowEnd): the q35 32-bit PCI hole (ECAM at
//                              0xB000'0000, PCI BARs, IOAPIC 0xFEC0'0000, HPET 0xFED0'0000, LAPIC
//                              0xFEE0'0000), strong uncacheable (UC), no-execute, never WB.
//   kKernelVma + p           : the kernel image (linked at kKernelVma + 2 MiB): text read-execute,
//                              rodata read-only, data/bss read-write no-execute; the guard page
//                              under each stack unmapped.
//
// Large pages: 1 GiB where the CPU has them and a range covers an aligned GiB, else 2 MiB, else
// 4 KiB at the unaligned edges; a large page never reaches outside its range, so no page maps
// device or absent memory with a cacheable type by accident.
//
// The PAT MSR is programmed so that PAT/PCD/PWT index 0..7 selects WB, WT, UC-, UC, WC, WP, UC-,
// UC: the first four keep their power-on meaning, index 4 (PAT bit alone) gives write-combining.
#pragma once

#include "dmakit/page_tables.h"
#include "dmakit/support/addr.h"
#include "dmakit/support/result.h"
#include "dmakit/support/types.h"

namespace x86 {

struct PvhInfo;

constexpr uintptr_t kDirectMapBase = 0xFFFF'8000'0000'0000;
constexpr uintptr_t kKernelVma = 0xFFFF'FFFF'8000'0000;
constexpr uint64_t kMmioWindowBase = 0xB000'0000;
constexpr uint64_t kMmioWindowEnd = 0x1'0000'0000;

// Memory types selectable through the PAT index of a page-table entry.
enum class MemType : uint8_t {
  kWriteBack,
  kWriteThrough,
  kUncachedMinus,
  kUncached,
  kWriteCombining,
  kWriteProtect
};

// Programs the PAT MSR (see above). Call once on the boot CPU before init_paging().
void init_pat();

// Builds the final page tables from the PVH memory map and switches CR3 to them. Panics
// (boot_panic) if the static page-table pool runs out (more than ~100 GiB without 1 GiB pages).
void init_paging(const PvhInfo& pvh);

// Physical address of a kernel-image symbol.
inline uint64_t kernel_virt_to_phys(const void* p) {
  return reinterpret_cast<uintptr_t>(p) - kKernelVma;
}

inline void* direct_map(uint64_t phys) {
  return reinterpret_cast<void*>(phys + kDirectMapBase);
}

// Maps [phys, phys + size) at direct_map(phys) with memory type `type`, no-execute (for device
// memory outside the MMIO window, e.g. 64-bit PCI BARs). The range is widened to whole pages.
// Ranges already mapped with the same type are left alone; other overlaps are refused.
// May be called with interrupts off; takes a spinlock.
// Errors: kInvalidArgument (size 0, range wraps or overlaps RAM or a mapping of another type),
// kNoMemory (page-table pool exhausted).
Result<void*> map_device(PhysAddr phys, uint64_t size, MemType type);

// Result of a page-table walk.
struct Translation {
  uint64_t phys = 0;
  MemType type = MemType::kWriteBack;
  uint64_t page_size = 0;  // 4 KiB, 2 MiB or 1 GiB.
  bool writable = false;
  bool executable = false;
};

// Walks the current page tables for `va`. Returns false if it is not mapped (or not canonical).
bool translate(const void* va, Translation* out);

// Short name of a memory type as the PAT MSR currently decodes it ("wb", "wt", "uc-", "uc",
// "wc", "wp").
const char* mem_type_name(MemType t);

// Page-table pages used so far out of the static pool (for the boot report).
size_t page_table_pages_used();

// The direct map's tables as dmakit needs them to make its pages uncached in place
// (dmakit/page_tables.h): the root init_paging built, 4 levels, tables reached through the image
// mapping (kKernelVma + p: the page-table pool and the split tables are in the image), the direct
// map [kDirectMapBase, + 2^46), PAT index 0 (write-back) and 2 (UC-) as init_pat programs them,
// split tables from a SplitTablePool in the image. Call after init_paging; valid for the
// kernel's lifetime.
const dmakit_page_tables* direct_map_tables();

}  // namespace x86
