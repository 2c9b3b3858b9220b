// What mm/page_frame_allocator.cc and mm/page_frame_allocator_check.cc share: bit helpers.
// Library-internal.
#pragma once

#include "dmakit/page_frame_allocator.h"

namespace pfa_internal {

constexpr uint64_t kPageMask = PageFrameAllocator::kPageSize - 1;
// One past the last page frame of the 64-bit address space.
constexpr uint64_t kPfnLimit = 1ull << (64 - PageFrameAllocator::kPageShift);
// Mask of bits 0..b of a word (b < 64).
constexpr uint64_t bits_up_to(uint64_t b) {
  return ~0ull >> (63 - b);
}

}  // namespace pfa_internal
