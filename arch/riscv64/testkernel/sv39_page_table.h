// Sv39PageTable: the kernel's RISC-V Sv39 page table, built once at boot.
//
// The scheme: three levels of 512 eight-byte entries; a leaf at level 2 maps 1 GiB (gigapage), at
// level 1 2 MiB (megapage), at level 0 4 KiB. map() covers a range with the largest leaves whose
// alignment the range allows, so the direct map of 16 GiB of RAM is sixteen root entries. Table
// pages come from a caller-provided pool (static storage in the kernel image), reached through
// the direct map: a table at physical p is read and written at p + virt_offset.
// Every leaf has A and D set (the kernel never relies on hardware A/D updates, which need Svadu)
// and G (kernel mappings are global). Memory types use the Svpbmt PBMT field when the hart has
// Svpbmt; without it PBMT stays 0 (the PMAs decide, which on QEMU virt already makes MMIO I/O).
//
// Cost: map() is O(leaves written) plus one table page per new 2 MiB or 4 KiB region; walk() is
// at most three loads. Not thread-safe: built on the boot hart before anything else runs.
#pragma once

#include "dmakit/page_tables.h"
#include "dmakit/support/addr.h"
#include "dmakit/support/result.h"
#include "dmakit/support/types.h"

namespace riscv {

// PTE bits.
constexpr uint64_t kPteV = 1ull << 0;
constexpr uint64_t kPteR = 1ull << 1;
constexpr uint64_t kPteW = 1ull << 2;
constexpr uint64_t kPteX = 1ull << 3;
constexpr uint64_t kPteU = 1ull << 4;
constexpr uint64_t kPteG = 1ull << 5;
constexpr uint64_t kPteA = 1ull << 6;
constexpr uint64_t kPteD = 1ull << 7;
constexpr unsigned kPtePbmtShift = 61;
constexpr uint64_t kPtePbmtMask = 3ull << kPtePbmtShift;
constexpr unsigned kPtePpnShift = 10;
constexpr uint64_t kPtePpnMask = ((1ull << 44) - 1) << kPtePpnShift;

// Svpbmt memory types (PBMT field values).
enum class MemType : uint8_t {
  kPma = 0,           // Whatever the physical memory attributes say: cacheable RAM here.
  kNonCacheable = 1,  // NC: non-cacheable, idempotent, weakly ordered main memory.
  kIo = 2,            // IO: non-cacheable, non-idempotent, strongly ordered I/O.
};

// Short name of a memory type for reports and tests: "pma", "nc", "io".
const char* mem_type_name(MemType t);

class Sv39PageTable {
 public:
  static constexpr uint64_t kPageSize = 4096;
  static constexpr uint64_t kMegaPage = 2ull << 20;
  static constexpr uint64_t kGigaPage = 1ull << 30;
  static constexpr unsigned kEntries = 512;
  // Lowest canonical upper-half address: the base of the kernel's half of the Sv39 space.
  static constexpr uint64_t kUpperHalfBase = 0xFFFF'FFC0'0000'0000ull;

  // One page of table storage.
  struct alignas(4096) TablePage {
    uint64_t pte[kEntries];
  };

  // What walk() found for one virtual address.
  struct Leaf {
    PhysAddr pa;         // Physical address the VA translates to.
    uint64_t pte = 0;    // The raw leaf entry.
    unsigned level = 0;  // 2: gigapage, 1: megapage, 0: 4 KiB page.
    MemType type() const { return static_cast<MemType>((pte & kPtePbmtMask) >> kPtePbmtShift); }
  };

  Sv39PageTable() = default;
  Sv39PageTable(const Sv39PageTable&) = delete;
  Sv39PageTable& operator=(const Sv39PageTable&) = delete;

  // Prepares an empty table. `pool` (caller-owned, must outlive the table and stay mapped at
  // `virt_offset`) supplies the table pages: page i is at physical (virtual address - virt_offset).
  // `svpbmt`: whether PBMT bits may be written (without Svpbmt they are reserved and fault).
  // Call once, before anything else.
  void init(TablePage* pool, size_t pool_pages, uintptr_t virt_offset, bool svpbmt);

  // Maps [va, va + size) to [pa, pa + size), readable, writable and executable for S-mode,
  // with memory type `type`. va, pa and size must be 4 KiB aligned and va canonical.
  // Parts already mapped to the same physical addresses with the same type are left alone, so
  // overlapping descriptions (a device inside a generic device window) are harmless.
  // Errors: kLayoutError (misaligned, zero size, non-canonical or wrapping), kInvalidArgument
  // (some page already mapped elsewhere or with another type), kNoMemory (table pool exhausted).
  // Interrupts: may be called with interrupts off (it never sleeps or takes locks).
  Result<void> map(uint64_t va, PhysAddr pa, uint64_t size, MemType type);

  // The leaf that translates `va`. Errors: kNotFound (unmapped or non-canonical).
  Result<Leaf> walk(uint64_t va) const;

  // Value to write to satp to use this table (Sv39, ASID 0).
  uint64_t satp() const;

  // Physical address of the root table.
  PhysAddr root_phys() const { return phys_of(root_); }
  size_t pages_used() const { return used_; }

  // Walks whatever table satp points at (reached through `virt_offset`), for code that does not
  // hold the Sv39PageTable object. Errors: kNotFound (unmapped, or satp is not Sv39).
  static Result<Leaf> walk_active(uint64_t va, uintptr_t virt_offset);

  // The active table (satp) as dmakit needs it to make direct-map pages uncached in place
  // (dmakit/page_tables.h): its root, Sv39, tables reached at phys + `virt_offset`, the direct
  // map [virt_offset, 2^64). The split-table callbacks are the caller's to fill. Errors:
  // kNotSupported (satp is not Sv39: paging off).
  static Result<dmakit_page_tables> describe_active(uintptr_t virt_offset);

 private:
  static Result<Leaf> walk_root(const TablePage* root, uint64_t va, uintptr_t virt_offset);
  PhysAddr phys_of(const TablePage* t) const {
    return PhysAddr(reinterpret_cast<uintptr_t>(t) - virt_offset_);
  }
  TablePage* table_at(uint64_t pte) const;
  Result<TablePage*> alloc_table();
  // Maps one leaf of `leaf_size` at `level`, creating intermediate tables.
  Result<void> map_leaf(uint64_t va, uint64_t pa, unsigned level, uint64_t flags);

  TablePage* pool_ = nullptr;
  size_t pool_pages_ = 0;
  size_t used_ = 0;
  TablePage* root_ = nullptr;
  uintptr_t virt_offset_ = 0;
  bool svpbmt_ = false;
};

}  // namespace riscv
