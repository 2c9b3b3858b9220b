// BootMemory: the boot-time view of physical memory -- RAM ranges from the firmware and the
// ranges that must never reach the page-frame allocator -- and the carving of fixed regions
// (allocator metadata, bounce pools) out of it before the allocator exists.
//
// The scheme: a carve request names a size, an alignment and an address window; the planner
// scans the RAM ranges for the lowest (or highest) aligned position inside the window that
// overlaps no reserved range (reserved ranges are considered rounded out to whole pages, as the
// page-frame allocator does), then records the carved region as reserved. Each step jumps over
// the reserved range it collided with, so a request costs O(ram ranges x reserved ranges^2) at
// worst, with a few dozen of each.
//
// Threading: boot-time only, one CPU.
#pragma once

#include "dmakit/support/addr.h"
#include "dmakit/support/result.h"
#include "dmakit/support/span.h"
#include "dmakit/support/types.h"
#include "testkernel/arch.h"

class BootMemory {
 public:
  static constexpr size_t kMaxRam = arch::kMaxMemRanges;
  static constexpr size_t kMaxReserved = arch::kMaxReserved + 16;

  enum class Placement { kLowest, kHighest };

  BootMemory() = default;
  BootMemory(const BootMemory&) = delete;
  BootMemory& operator=(const BootMemory&) = delete;

  // Takes the RAM and reserved ranges (copied). Each reserved range is labelled `what`.
  // Errors: kInvalidArgument (no RAM, too many ranges, a RAM range that wraps or two that overlap).
  Result<void> init(support::Span<const PhysRange> ram, support::Span<const PhysRange> reserved,
                    const char* what);

  // Finds `size` bytes aligned to `align` (a power of two >= the page size) inside one RAM range,
  // inside [window_lo, window_hi) (the last byte below window_hi), overlapping no reserved range.
  // Errors: kLayoutError (size 0, bad align), kNoMemory (no such place).
  Result<PhysAddr> find(uint64_t size, uint64_t align, uint64_t window_lo, uint64_t window_hi,
                        Placement where) const;

  // Marks a range reserved. Errors: kNoMemory (the table is full).
  Result<void> reserve(PhysRange r, const char* what);

  // find() followed by reserve(); returns the base.
  Result<PhysAddr> carve(uint64_t size, uint64_t align, uint64_t window_lo, uint64_t window_hi,
                         Placement where, const char* what);

  // Bytes of RAM inside [window_lo, window_hi) not covered by a reserved range (page granular).
  uint64_t free_bytes_in(uint64_t window_lo, uint64_t window_hi) const;
  uint64_t ram_bytes() const;

  support::Span<const PhysRange> ram() const { return {ram_, num_ram_}; }
  support::Span<const PhysRange> reserved() const { return {reserved_, num_reserved_}; }
  const char* reserved_what(size_t i) const { return what_[i]; }

 private:
  // The first reserved range (rounded out to pages) that overlaps [base, base + size), or null.
  const PhysRange* collision(uint64_t base, uint64_t size) const;

  PhysRange ram_[kMaxRam];
  size_t num_ram_ = 0;
  PhysRange reserved_[kMaxReserved];
  const char* what_[kMaxReserved] = {};
  size_t num_reserved_ = 0;
};
