// The RISC-V Sv39 / Sv48 page-table entry format as DirectMapAttributes needs it: pure integer
// logic, host-testable; the live entry update (sfence.vma) is in riscv64_uncached.cc.
//
// Entry bits used: [0] V, [3:1] R/W/X (any set: a leaf; none: a pointer to the next table),
// [7:6] A/D (which the hardware may set, with Svadu), [53:10] the PPN, [62:61] PBMT (Svpbmt:
// 0 PMA, i.e. cacheable RAM; 1 NC; 2 IO). Everything else (U, G, RSW, N) is carried unchanged.
// Without Svpbmt the PBMT bits are reserved: the format is then unusable.
#pragma once

#include "dmakit/page_tables.h"
#include "mm/direct_map_attributes.h"

class Riscv64PageFormat {
 public:
  using Pte = uint64_t;
  static constexpr Pte kV = 1ull << 0;
  static constexpr Pte kLeafMask = (1ull << 1) | (1ull << 2) | (1ull << 3);  // R, W, X.
  static constexpr Pte kA = 1ull << 6;
  static constexpr Pte kD = 1ull << 7;
  static constexpr unsigned kPpnShift = 10;
  static constexpr Pte kPpnMask = ((1ull << 44) - 1) << kPpnShift;
  static constexpr unsigned kPbmtShift = 61;
  static constexpr Pte kPbmtMask = 3ull << kPbmtShift;
  static constexpr uint64_t kPbmtPma = 0;
  static constexpr uint64_t kPbmtNc = 1;

  // `pt`'s level count (null: unusable); `svpbmt`: the kernel enabled Svpbmt (menvcfg.PBMTE).
  Riscv64PageFormat(const dmakit_page_tables* pt, bool svpbmt)
      : levels_(pt != nullptr ? pt->levels : 0), svpbmt_(svpbmt) {}

  // Svpbmt, and Sv39 (3 levels) or Sv48 (4).
  bool usable() const { return svpbmt_ && (levels_ == 3 || levels_ == 4); }
  int top_level() const { return static_cast<int>(levels_) - 1; }
  bool present(Pte e) const { return (e & kV) != 0; }
  bool is_leaf(Pte e, int) const { return (e & kLeafMask) != 0; }
  uint64_t table_phys(Pte e) const { return ((e & kPpnMask) >> kPpnShift) << 12; }
  Pte table_entry(uint64_t phys) const { return ((phys >> 12) << kPpnShift) | kV; }
  PageAttr attr_of(Pte e, int) const {
    switch ((e & kPbmtMask) >> kPbmtShift) {
      case kPbmtPma:
        return PageAttr::kCached;
      case kPbmtNc:
        return PageAttr::kUncached;
      default:
        return PageAttr::kOther;  // IO, or the reserved encoding.
    }
  }
  Pte with_attr(Pte e, int, PageAttr attr) const {
    e &= ~kPbmtMask;
    return attr == PageAttr::kUncached ? e | (kPbmtNc << kPbmtShift) : e;
  }
  Pte split_leaf(Pte e, int level, size_t i) const {
    const uint64_t pa = table_phys(e) + i * level_size(level - 1);
    return ((pa >> 12) << kPpnShift) | (e & ~kPpnMask);
  }
  Pte hw_bits() const { return kA | kD; }

  static uint64_t level_size(int level) { return 1ull << (12 + 9 * level); }

 private:
  unsigned levels_;
  bool svpbmt_;
};
