// memcpy, memmove, memset, memcmp (and bcmp, strlen) for the freestanding kernel: the compiler
// emits calls to them for struct copies and large initializations, and the subsystem's
// include/dmakit/support/mem.h resolves to them.
//
// Each function carries __attribute__((no_builtin)), so the optimizer does not recognize the
// loops below as a memcpy/memset idiom and turn them into calls to themselves.
//
// Scheme: byte steps until the destination is word aligned, then 8-byte words when the source
// is equally aligned (or the machine is fine with unaligned loads through the direct map), then
// the tail bytes. Cost: linear in the size. Safe with interrupts off; no locks.
#include "dmakit/support/types.h"

namespace {

constexpr size_t kWord = sizeof(uint64_t);

inline bool word_aligned(uintptr_t x) {
  return (x & (kWord - 1)) == 0;
}

}  // namespace

extern "C" {

__attribute__((no_builtin)) void* memcpy(void* __restrict dst, const void* __restrict src,
                                         size_t n) {
  auto d = static_cast<uint8_t*>(dst);
  auto s = static_cast<const uint8_t*>(src);
  if (((reinterpret_cast<uintptr_t>(d) ^ reinterpret_cast<uintptr_t>(s)) & (kWord - 1)) == 0) {
    while (n > 0 && !word_aligned(reinterpret_cast<uintptr_t>(d))) {
      *d++ = *s++;
      --n;
    }
    auto dw = reinterpret_cast<uint64_t*>(d);
    auto sw = reinterpret_cast<const uint64_t*>(s);
    while (n >= 4 * kWord) {
      uint64_t a = sw[0], b = sw[1], c = sw[2], e = sw[3];
      dw[0] = a;
      dw[1] = b;
      dw[2] = c;
      dw[3] = e;
      dw += 4;
      sw += 4;
      n -= 4 * kWord;
    }
    while (n >= kWord) {
      *dw++ = *sw++;
      n -= kWord;
    }
    d = reinterpret_cast<uint8_t*>(dw);
    s = reinterpret_cast<const uint8_t*>(sw);
  }
  while (n > 0) {
    *d++ = *s++;
    --n;
  }
  return dst;
}

__attribute__((no_builtin)) void* memmove(void* dst, const void* src, size_t n) {
  auto d = static_cast<uint8_t*>(dst);
  auto s = static_cast<const uint8_t*>(src);
  if (d == s || n == 0) return dst;
  // Forward copy is safe when dst is below src or the ranges do not overlap.
  if (reinterpret_cast<uintptr_t>(d) < reinterpret_cast<uintptr_t>(s) ||
      reinterpret_cast<uintptr_t>(d) - reinterpret_cast<uintptr_t>(s) >= n) {
    if (((reinterpret_cast<uintptr_t>(d) ^ reinterpret_cast<uintptr_t>(s)) & (kWord - 1)) == 0) {
      while (n > 0 && !word_aligned(reinterpret_cast<uintptr_t>(d))) {
        *d++ = *s++;
        --n;
      }
      while (n >= kWord) {
        *reinterpret_cast<uint64_t*>(d) = *reinterpret_cast<const uint64_t*>(s);
        d += kWord;
        s += kWord;
        n -= kWord;
      }
    }
    while (n > 0) {
      *d++ = *s++;
      --n;
    }
    return dst;
  }
  // Overlapping with dst above src: copy backwards.
  d += n;
  s += n;
  if (((reinterpret_cast<uintptr_t>(d) ^ reinterpret_cast<uintptr_t>(s)) & (kWord - 1)) == 0) {
    while (n > 0 && !word_aligned(reinterpret_cast<uintptr_t>(d))) {
      *--d = *--s;
      --n;
    }
    while (n >= kWord) {
      d -= kWord;
      s -= kWord;
      *reinterpret_cast<uint64_t*>(d) = *reinterpret_cast<const uint64_t*>(s);
      n -= kWord;
    }
  }
  while (n > 0) {
    *--d = *--s;
    --n;
  }
  return dst;
}

__attribute__((no_builtin)) void* memset(void* dst, int c, size_t n) {
  auto d = static_cast<uint8_t*>(dst);
  auto byte = static_cast<uint8_t>(c);
  while (n > 0 && !word_aligned(reinterpret_cast<uintptr_t>(d))) {
    *d++ = byte;
    --n;
  }
  uint64_t pattern = 0x0101010101010101ull * byte;
  auto dw = reinterpret_cast<uint64_t*>(d);
  while (n >= 4 * kWord) {
    dw[0] = pattern;
    dw[1] = pattern;
    dw[2] = pattern;
    dw[3] = pattern;
    dw += 4;
    n -= 4 * kWord;
  }
  while (n >= kWord) {
    *dw++ = pattern;
    n -= kWord;
  }
  d = reinterpret_cast<uint8_t*>(dw);
  while (n > 0) {
    *d++ = byte;
    --n;
  }
  return dst;
}

__attribute__((no_builtin)) int memcmp(const void* a, const void* b, size_t n) {
  auto x = static_cast<const uint8_t*>(a);
  auto y = static_cast<const uint8_t*>(b);
  for (size_t i = 0; i < n; ++i) {
    if (x[i] != y[i]) return x[i] < y[i] ? -1 : 1;
  }
  return 0;
}

// LLVM may turn `memcmp(...) == 0` into bcmp.
__attribute__((no_builtin)) int bcmp(const void* a, const void* b, size_t n) {
  return memcmp(a, b, n);
}

__attribute__((no_builtin)) size_t strlen(const char* s) {
  size_t n = 0;
  while (s[n] != '\0') ++n;
  return n;
}

}  // extern "C"
