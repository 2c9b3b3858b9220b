// What may live in memory a device writes, and how the CPU reads and writes it.
//
// DArray<T> and DBox<T> (include/dmakit/device_dma.h) hold objects that a device reads and writes
// behind the compiler's back. Two things follow.
//
// 1. The type must be plain data: the device copies bytes, so T must be trivially copyable; its
//    layout must be the one the device expects, so standard layout; and every byte must belong
//    to a field, or a CPU write of the whole object hands the device padding bytes it may
//    interpret (DmaPlain<T>). A type with padding, or with several representations of one value
//    (float, double), is accepted only when its author says so by specialising
//    kDmaAllowPadding<T> to true -- better: name the padding as a reserved field.
//
// 2. The compiler must not cache what the device writes. A plain `while (ring->done == 0) {}`
//    may legally become one load and an endless loop: nothing in the loop writes `done`, so the
//    compiler assumes nothing does. dma_load / dma_store access the bytes through volatile
//    lvalues, which the compiler must perform each time, in program order with respect to each
//    other, never merged, split further or elided. Volatile is what these accessors need and all
//    they need: the other side is a device, not a C++ thread, so the C++ memory model's atomics
//    describe nothing here, and ordering against the device is the driver's business (the
//    arch::io_*mb barriers and, for a non-coherent device, the sync calls). An object is accessed
//    in units of min(alignof(T), 8) bytes, so every naturally aligned field of at most 8 bytes
//    (an index, a status word, a descriptor address) is read or written with exactly one load or
//    store: the device never sees, and the CPU never reads, half of such a field. A larger T is
//    several accesses and may tear between them, as on any bus; the driver orders those with its
//    protocol (read the index, then io_rmb, then the entries). Cost: the same loads and stores as
//    a plain copy; only the compiler's freedom to drop or combine them is gone.
//
// Freestanding: compiler builtins only, no <type_traits>.
#pragma once

#include "dmakit/support/types.h"

// Specialise to true for a type that has padding bits or several representations of one value
// (float, double) and should still be allowed in DMA memory:
//   template <> inline constexpr bool kDmaAllowPadding<MyDesc> = true;
// Reserved fields in place of padding are the better fix; this is for layouts one cannot change.
template <typename T>
inline constexpr bool kDmaAllowPadding = false;

// Whether F is an array type (std::is_array_v without <type_traits>; GCC 12 has no __is_array).
template <typename F>
inline constexpr bool kDmaIsArray = false;
template <typename F, size_t N>
inline constexpr bool kDmaIsArray<F[N]> = true;
template <typename F>
inline constexpr bool kDmaIsArray<F[]> = true;

// The checks DArray<T> and DBox<T> make (one static_assert each, with its own message); exposed so
// a test or a generic driver can ask.
template <typename T>
concept DmaTriviallyCopyable = __is_trivially_copyable(T);

template <typename T>
concept DmaStandardLayout = __is_standard_layout(T);
template <typename T>
concept DmaNoPadding = __has_unique_object_representations(T) || kDmaAllowPadding<T>;
template <typename T>
concept DmaPlain = DmaTriviallyCopyable<T> && DmaStandardLayout<T> && DmaNoPadding<T>;

// A data member `F C::*` that read_field/write_field accept for an element type T: a member of T
// (or of a base class of T), itself trivially copyable. The class is a separate template
// parameter so that DArray<uint32_t>, which has no fields, still instantiates.
template <typename F, typename C, typename T>
concept DmaFieldOf = __is_base_of(C, T) && DmaTriviallyCopyable<F>;

// The accessors' bodies are not instrumented by ThreadSanitizer. On the host a device is
// simulated by a thread that copies bytes into memory (HostDevice); the CPU's volatile reads of
// that memory race with it by the C++ model's rules, as they would with real hardware, and that is
// their purpose. Every other access (the driver's own data, the simulator's) stays instrumented.
#if defined(__has_feature)
#if __has_feature(thread_sanitizer)
#define DMA_VOLATILE_ACCESS_NO_TSAN __attribute__((no_sanitize("thread")))
#endif
#endif
#ifndef DMA_VOLATILE_ACCESS_NO_TSAN
#define DMA_VOLATILE_ACCESS_NO_TSAN
#endif

namespace dma_detail {

// Unsigned integers that may alias any object (as char does): the accessors read a T through
// them, and without may_alias type-based alias analysis could move a plain store of a T field
// across such a load.
typedef uint8_t __attribute__((may_alias)) AliasU8;
typedef uint16_t __attribute__((may_alias)) AliasU16;
typedef uint32_t __attribute__((may_alias)) AliasU32;
typedef uint64_t __attribute__((may_alias)) AliasU64;

template <size_t N>
struct AccessUnit;
template <>
struct AccessUnit<1> {
  using type = AliasU8;
};
template <>
struct AccessUnit<2> {
  using type = AliasU16;
};
template <>
struct AccessUnit<4> {
  using type = AliasU32;
};
template <>
struct AccessUnit<8> {
  using type = AliasU64;
};

// The unit T is accessed in: its alignment, at most 8 bytes. It divides sizeof(T) (a size is a
// multiple of the alignment, both powers of two).
template <typename T>
using UnitOf = typename AccessUnit<(alignof(T) < 8 ? alignof(T) : 8)>::type;

template <typename T>
struct Units {
  UnitOf<T> w[sizeof(T) / sizeof(UnitOf<T>)];
};

template <typename T>
struct TypeIdentity {
  using type = T;
};

}  // namespace dma_detail

// Reads *p with volatile accesses of min(alignof(T), 8) bytes each (see the top of the file).
// Precondition: p is aligned to alignof(T). Any context, interrupts off included.
template <typename T>
DMA_VOLATILE_ACCESS_NO_TSAN inline T dma_load(const T* p) {
  static_assert(DmaTriviallyCopyable<T>, "dma_load: T must be trivially copyable");
  using U = dma_detail::UnitOf<T>;
  dma_detail::Units<T> units;
  const volatile U* src = reinterpret_cast<const volatile U*>(p);
  for (size_t k = 0; k < sizeof(T) / sizeof(U); ++k) units.w[k] = src[k];
  return __builtin_bit_cast(T, units);
}

// Writes v to *p with volatile accesses of min(alignof(T), 8) bytes each, in address order.
// Precondition: p is aligned to alignof(T). Any context, interrupts off included.
template <typename T>
DMA_VOLATILE_ACCESS_NO_TSAN inline void dma_store(
    T* p, const typename dma_detail::TypeIdentity<T>::type& v) {
  static_assert(DmaTriviallyCopyable<T>, "dma_store: T must be trivially copyable");
  using U = dma_detail::UnitOf<T>;
  dma_detail::Units<T> units;
  // memcpy rather than bit_cast: v's padding bytes (kDmaAllowPadding types) have no value a
  // bit_cast could produce, but copying them as bytes is defined.
  __builtin_memcpy(&units, &v, sizeof(T));
  volatile U* dst = reinterpret_cast<volatile U*>(p);
  for (size_t k = 0; k < sizeof(T) / sizeof(U); ++k) dst[k] = units.w[k];
}
