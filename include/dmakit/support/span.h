// A pointer and a count: the view over caller-owned arrays used across the API.
#pragma once

#include "dmakit/support/assert.h"
#include "dmakit/support/types.h"

namespace support {

template <typename T>
class Span {
 public:
  constexpr Span() = default;
  constexpr Span(T* data, size_t size) : data_(data), size_(size) {}
  template <size_t N>
  constexpr Span(T (&a)[N]) : data_(a), size_(N) {}  // NOLINT: implicit like std::span

  constexpr T* data() const { return data_; }
  constexpr size_t size() const { return size_; }
  constexpr bool empty() const { return size_ == 0; }
  constexpr T& operator[](size_t i) const {
    KDEBUG_ASSERT(i < size_, "span index out of range");
    return data_[i];
  }
  constexpr T* begin() const { return data_; }
  constexpr T* end() const { return data_ + size_; }
  constexpr Span subspan(size_t off, size_t n) const { return Span(data_ + off, n); }

 private:
  T* data_ = nullptr;
  size_t size_ = 0;
};

}  // namespace support
