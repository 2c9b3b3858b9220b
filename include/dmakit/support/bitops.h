// Power-of-two and bit-scanning helpers used by the allocators.
#pragma once

#include "dmakit/support/types.h"

namespace support {

// Written as a comparison rather than `x != 0 && (x & (x - 1)) == 0`, which clang turns into a
// population count: a dozen instructions on a target without a popcount instruction. x ^ (x - 1)
// sets the bits up to and including the lowest set bit of x; that exceeds x - 1 exactly when no
// other bit is set (for 0, both sides are all ones).
constexpr bool is_pow2(uint64_t x) {
  return (x ^ (x - 1)) > x - 1;
}

// Index of the highest set bit; x must be non-zero.
constexpr unsigned log2_floor(uint64_t x) {
  return 63u - static_cast<unsigned>(__builtin_clzll(x));
}

// Smallest n with 2^n >= x; x must be non-zero.
constexpr unsigned log2_ceil(uint64_t x) {
  return x <= 1 ? 0u : log2_floor(x - 1) + 1u;
}

// Index of the lowest set bit; x must be non-zero.
constexpr unsigned ctz(uint64_t x) {
  return static_cast<unsigned>(__builtin_ctzll(x));
}

// Rounds up to a multiple of a power of two `a`. The caller checks for overflow where it matters.
constexpr uint64_t align_up(uint64_t x, uint64_t a) {
  return (x + a - 1) & ~(a - 1);
}
constexpr uint64_t align_down(uint64_t x, uint64_t a) {
  return x & ~(a - 1);
}
constexpr bool is_aligned(uint64_t x, uint64_t a) {
  return (x & (a - 1)) == 0;
}

// True when [start, start + size) wraps past 2^64 (size may be 0).
constexpr bool add_overflows(uint64_t start, uint64_t size) {
  return start + size < start;
}

template <typename T>
constexpr T min(T a, T b) {
  return a < b ? a : b;
}
template <typename T>
constexpr T max(T a, T b) {
  return a < b ? b : a;
}

}  // namespace support
