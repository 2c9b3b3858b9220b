// The AArch64 stage-1 descriptor format (4 KiB granule) as DirectMapAttributes needs it: pure
// integer logic, host-testable; the live entry update (break-before-make) is in
// aarch64_uncached.cc. Levels as DirectMapAttributes counts them: 0 is L3 (pages), 1 is L2
// (2 MiB blocks), 2 is L1 (1 GiB blocks), 3 is L0 (tables only).
//
// Descriptor bits used: [0] valid, [1] table (levels above 0) or page (level 0), [4:2]
// AttrIndx (the MAIR_EL1 index), [10] AF, [47:12] the output address. Everything else (AP, SH,
// nG, PXN/UXN, software bits) is carried unchanged through splits and merges.
#pragma once

#include "dmakit/page_tables.h"
#include "mm/direct_map_attributes.h"

class Aarch64PageFormat {
 public:
  using Pte = uint64_t;
  static constexpr Pte kValid = 1ull << 0;
  static constexpr Pte kTableOrPage = 1ull << 1;
  static constexpr unsigned kAttrShift = 2;
  static constexpr Pte kAttrMask = 7ull << kAttrShift;
  static constexpr Pte kAf = 1ull << 10;
  static constexpr Pte kOaMask = 0x0000'FFFF'FFFF'F000ull;

  // The encodings of `pt` (null: an unusable format).
  explicit Aarch64PageFormat(const dmakit_page_tables* pt)
      : levels_(pt != nullptr ? pt->levels : 0),
        wb_(pt != nullptr ? pt->aarch64.mair_wb : 0),
        nc_(pt != nullptr ? pt->aarch64.mair_nc : 0) {}

  // Two distinct MAIR indices, and 3 or 4 levels (39- or 48-bit virtual addresses).
  bool usable() const { return wb_ < 8 && nc_ < 8 && wb_ != nc_ && (levels_ == 3 || levels_ == 4); }
  int top_level() const { return static_cast<int>(levels_) - 1; }
  bool present(Pte e) const { return (e & kValid) != 0; }
  bool is_leaf(Pte e, int level) const { return level == 0 || (e & kTableOrPage) == 0; }
  uint64_t table_phys(Pte e) const { return e & kOaMask; }
  Pte table_entry(uint64_t phys) const { return phys | kValid | kTableOrPage; }
  PageAttr attr_of(Pte e, int) const {
    const uint64_t idx = (e & kAttrMask) >> kAttrShift;
    if (idx == wb_) return PageAttr::kCached;
    if (idx == nc_) return PageAttr::kUncached;
    return PageAttr::kOther;
  }
  Pte with_attr(Pte e, int, PageAttr attr) const {
    const uint64_t idx = attr == PageAttr::kUncached ? nc_ : wb_;
    return (e & ~kAttrMask) | (idx << kAttrShift);
  }
  Pte split_leaf(Pte e, int level, size_t i) const {
    const int child = level - 1;
    const uint64_t base = e & kOaMask & ~(level_size(level) - 1);
    // Same lower and upper attributes; a page descriptor at L3, a block above.
    const uint64_t attrs = e & ~kOaMask & ~(kValid | kTableOrPage);
    return (base + i * level_size(child)) | attrs | kValid | (child == 0 ? kTableOrPage : 0);
  }
  // The access flag, which the hardware sets when TCR_EL1.HA is on.
  Pte hw_bits() const { return kAf; }

  static uint64_t level_size(int level) { return 1ull << (12 + 9 * level); }

 private:
  unsigned levels_;
  uint8_t wb_;
  uint8_t nc_;
};
