// The few pieces of <utility>/<type_traits> the kernel needs, without a hosted standard library.
#pragma once

#include "dmakit/support/build_config.h"  // first: the configuration every header agrees on

namespace support {

template <typename T>
struct remove_reference {
  using type = T;
};
template <typename T>
struct remove_reference<T&> {
  using type = T;
};
template <typename T>
struct remove_reference<T&&> {
  using type = T;
};

template <typename T>
constexpr typename remove_reference<T>::type&& move(T&& t) noexcept {
  return static_cast<typename remove_reference<T>::type&&>(t);
}

template <typename T>
constexpr T&& forward(typename remove_reference<T>::type& t) noexcept {
  return static_cast<T&&>(t);
}

template <typename T, typename U = T>
constexpr T exchange(T& obj, U&& nv) {
  T old = move(obj);
  obj = forward<U>(nv);
  return old;
}

template <typename T>
constexpr void swap(T& a, T& b) {
  T t = move(a);
  a = move(b);
  b = move(t);
}

}  // namespace support

// Placement new, declared here so freestanding code need not include <new>.
// Where a C++ library's <new> exists (the host build) it is used, so the two never clash.
#if __has_include(<new>)
#include <new>
#else
#include <stddef.h>
inline void* operator new(size_t, void* p) noexcept {
  return p;
}
#endif
