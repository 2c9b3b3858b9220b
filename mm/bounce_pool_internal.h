// What mm/bounce_pool.cc and mm/bounce_pool_check.cc share: the size classes of the segregated
// free lists. Library-internal.
#pragma once

#include "dmakit/bounce_pool.h"

namespace bounce_internal {

constexpr unsigned kSlMask = 15;  // (1 << kSlBits) - 1

inline unsigned log2_32(uint32_t x) {
  return 31u - static_cast<unsigned>(__builtin_clz(x));
}

// Size class of a block of n >= 1 slots (the list it lives on), as fl * 16 + sl. Sizes below 32
// map to themselves; above, each power-of-two range is split into 16 equal classes.
inline unsigned size_class(uint32_t n) {
  unsigned shift = log2_32(n | 16u) - 4u;
  return (shift << 4) + (n >> shift);
}

// Smallest class whose every block has at least n slots; n < 2^30, so the sum cannot overflow.
inline unsigned search_class(uint32_t n) {
  unsigned shift = log2_32(n | 16u) - 4u;
  return size_class(n + (1u << shift) - 1u);
}

}  // namespace bounce_internal
