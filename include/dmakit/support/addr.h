// Distinct address types. A physical address (what the CPU's MMU maps), a DMA address (what a
// device puts on the bus: physical plus a bus offset, or an IOVA) and a virtual pointer never mix
// without an explicit conversion.
#pragma once

#include "dmakit/support/types.h"

namespace support {

template <typename Tag>
class Addr {
 public:
  constexpr Addr() = default;
  constexpr explicit Addr(uint64_t v) : v_(v) {}
  constexpr uint64_t value() const { return v_; }
  constexpr Addr operator+(uint64_t off) const { return Addr(v_ + off); }
  constexpr Addr operator-(uint64_t off) const { return Addr(v_ - off); }
  constexpr uint64_t operator-(Addr o) const { return v_ - o.v_; }
  constexpr Addr& operator+=(uint64_t off) {
    v_ += off;
    return *this;
  }
  // Written out: <compare> is not part of a freestanding toolchain.
  constexpr bool operator==(const Addr& o) const { return v_ == o.v_; }
  constexpr bool operator!=(const Addr& o) const { return v_ != o.v_; }
  constexpr bool operator<(const Addr& o) const { return v_ < o.v_; }
  constexpr bool operator<=(const Addr& o) const { return v_ <= o.v_; }
  constexpr bool operator>(const Addr& o) const { return v_ > o.v_; }
  constexpr bool operator>=(const Addr& o) const { return v_ >= o.v_; }

 private:
  uint64_t v_ = 0;
};

struct PhysTag {};
struct DmaTag {};

}  // namespace support

// CPU physical address.
using PhysAddr = support::Addr<support::PhysTag>;
// Address as a device sees it on its bus.
using DmaAddr = support::Addr<support::DmaTag>;

// A range of physical memory [base, base + size).
struct PhysRange {
  PhysAddr base;
  uint64_t size = 0;
  constexpr PhysAddr end() const { return base + size; }
};
