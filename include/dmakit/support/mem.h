// Byte copies. The freestanding build resolves these to memcpy/memset/memmove/memcmp, which the
// embedding kernel provides (as with any freestanding C or C++ code; the test kernel's are in
// testkernel/libc_mem.cc).
#pragma once

#include "dmakit/support/types.h"

namespace support {

inline void copy_bytes(void* dst, const void* src, size_t n) {
  __builtin_memcpy(dst, src, n);
}
inline void move_bytes(void* dst, const void* src, size_t n) {
  __builtin_memmove(dst, src, n);
}
inline void fill_bytes(void* dst, int v, size_t n) {
  __builtin_memset(dst, v, n);
}
inline int compare_bytes(const void* a, const void* b, size_t n) {
  return __builtin_memcmp(a, b, n);
}

}  // namespace support
