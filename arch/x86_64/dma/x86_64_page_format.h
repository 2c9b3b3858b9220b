// The x86-64 4-level paging entry format as DirectMapAttributes needs it: pure integer logic,
// host-testable; the live entry update (INVLPG / full flush) is in x86_64_uncached.cc.
//
// Entry bits used: [0] P, [1] R/W, [3] PWT, [4] PCD, [5] A, [6] D (leaves), [7] PS in a PDPT or
// PD entry and PAT in a 4 KiB PTE, [12] PAT in a 1 GiB / 2 MiB leaf, [51:12] the address.
// PAT:PCD:PWT form the PAT index (0..7); which index means write-back, which uncached and which
// write-combining is the kernel's (dmakit_page_tables.x86_64). Everything else (U/S, G, NX,
// protection keys, software bits) is carried unchanged.
#pragma once

#include "dmakit/page_tables.h"
#include "mm/direct_map_attributes.h"

class X86PageFormat {
 public:
  using Pte = uint64_t;
  static constexpr Pte kPresent = 1ull << 0;
  static constexpr Pte kWrite = 1ull << 1;
  static constexpr Pte kPwt = 1ull << 3;
  static constexpr Pte kPcd = 1ull << 4;
  static constexpr Pte kAccessed = 1ull << 5;
  static constexpr Pte kDirty = 1ull << 6;
  static constexpr Pte kLarge = 1ull << 7;      // PS in a PDPT or PD entry.
  static constexpr Pte kPatSmall = 1ull << 7;   // PAT in a 4 KiB PTE.
  static constexpr Pte kPatLarge = 1ull << 12;  // PAT in a 1 GiB / 2 MiB leaf.
  static constexpr Pte kAddrMask = 0x000F'FFFF'FFFF'F000ull;

  // The encodings of `pt` (null: an unusable format).
  explicit X86PageFormat(const dmakit_page_tables* pt)
      : levels_(pt != nullptr ? pt->levels : 0),
        wb_(pt != nullptr ? pt->x86_64.pat_wb : 0),
        uc_(pt != nullptr ? pt->x86_64.pat_uc : 0),
        wc_(pt != nullptr ? pt->x86_64.pat_wc : DMAKIT_X86_PAT_NONE) {}

  // Two distinct PAT indices, 4-level paging.
  bool usable() const { return wb_ < 8 && uc_ < 8 && wb_ != uc_ && levels_ == 4; }
  // A third index, distinct from both, for write-combining (dmakit_page_tables_x86_64.pat_wc).
  bool write_combine() const { return usable() && wc_ < 8 && wc_ != wb_ && wc_ != uc_; }
  int top_level() const { return static_cast<int>(levels_) - 1; }
  bool present(Pte e) const { return (e & kPresent) != 0; }
  bool is_leaf(Pte e, int level) const { return level == 0 || (level <= 2 && (e & kLarge) != 0); }
  uint64_t table_phys(Pte e) const { return e & kAddrMask; }
  // Intermediate entries allow everything; the leaves decide.
  Pte table_entry(uint64_t phys) const { return phys | kPresent | kWrite; }
  PageAttr attr_of(Pte e, int level) const {
    const unsigned idx = pat_index(e, level);
    if (idx == wb_) return PageAttr::kCached;
    if (idx == uc_) return PageAttr::kUncached;
    if (idx == wc_ && write_combine()) return PageAttr::kWriteCombine;
    return PageAttr::kOther;
  }
  Pte with_attr(Pte e, int level, PageAttr attr) const {
    const unsigned idx = attr == PageAttr::kUncached       ? uc_
                         : attr == PageAttr::kWriteCombine ? wc_
                                                           : wb_;
    e &= ~(kPwt | kPcd | pat_bit(level));
    if ((idx & 1) != 0) e |= kPwt;
    if ((idx & 2) != 0) e |= kPcd;
    if ((idx & 4) != 0) e |= pat_bit(level);
    return e;
  }
  Pte split_leaf(Pte e, int level, size_t i) const {
    const int child = level - 1;
    const uint64_t base = e & kAddrMask & ~(level_size(level) - 1);
    const bool pat = (e & kPatLarge) != 0;
    Pte flags = e & ~kAddrMask & ~kLarge;  // Low flags and NX; PS and PAT placed below.
    if (child > 0) {
      flags |= kLarge | (pat ? kPatLarge : 0);
    } else {
      flags |= pat ? kPatSmall : 0;
    }
    return (base + i * level_size(child)) | flags;
  }
  Pte hw_bits() const { return kAccessed | kDirty; }

  static uint64_t level_size(int level) { return 1ull << (12 + 9 * level); }
  static Pte pat_bit(int level) { return level == 0 ? kPatSmall : kPatLarge; }
  static unsigned pat_index(Pte e, int level) {
    return ((e & kPwt) != 0 ? 1u : 0u) | ((e & kPcd) != 0 ? 2u : 0u) |
           ((e & pat_bit(level)) != 0 ? 4u : 0u);
  }

 private:
  unsigned levels_;
  uint8_t wb_;
  uint8_t uc_;
  uint8_t wc_;
};
