// Errors are values. `Result<T>` holds a T or an `Error`; it is [[nodiscard]], so an ignored
// failure is a compile error. `TRY(expr)` returns early on error; `TRY_ASSIGN(lhs, expr)` also
// binds the value. The macros are plain statements (no GNU statement expressions).
#pragma once

#include "dmakit/support/assert.h"
#include "dmakit/support/compiler.h"
#include "dmakit/support/types.h"
#include "dmakit/support/utility.h"

// The canonical status codes. Each names one kind of failure a caller can act on.
enum class ErrorCode : uint8_t {
  kOk = 0,
  // No memory (pages, bounce slots, pool blocks) could be had right now. Retrying after others
  // free memory may succeed.
  kNoMemory,
  // Size zero, alignment not a power of two, size too large for any allocation, or a range that
  // wraps past the end of the address space.
  kLayoutError,
  // The device's DMA mask cannot reach the buffer and no memory under the mask can be had to
  // bounce it (or the mask is below all memory). `Error::addr` and `Error::mask` say which.
  kDmaMaskNotMatch,
  // An argument is outside what the function accepts (other than layout), e.g. a mask of zero.
  kInvalidArgument,
  // The address or handle does not name a live allocation or mapping (double free, never
  // allocated, wrong size or order).
  kNotFound,
  // An offset/size pair lies outside the object it refers to.
  kOutOfRange,
  // The object is in use (e.g. a pool destroyed with blocks still out).
  kBusy,
  // A device did not complete in the allowed time.
  kTimedOut,
  // A device reported an error.
  kIoError,
  // The platform cannot do this (e.g. no cache-maintenance instructions).
  kNotSupported,
  // A buffer that must be physically contiguous is not (its pages are scattered, as vmalloc
  // memory is): map it piece by piece, e.g. through scatter-gather. `Error::addr` is the first
  // CPU address where contiguity breaks.
  kNotContiguous,
};

// Human-readable name of an error code, for logs.
const char* error_code_name(ErrorCode code);

// An error value: a code plus, for mask errors, the address and mask involved.
struct Error {
  ErrorCode code = ErrorCode::kOk;
  // kDmaMaskNotMatch: the device address that had to be reached (beyond the mask).
  // kNotContiguous: the CPU address where the buffer stops being physically contiguous.
  uint64_t addr = 0;
  uint64_t mask = 0;  // kDmaMaskNotMatch: the device's mask.

  constexpr Error() = default;
  constexpr Error(ErrorCode c) : code(c) {}  // NOLINT(google-explicit-constructor): by design.
  constexpr Error(ErrorCode c, uint64_t a, uint64_t m) : code(c), addr(a), mask(m) {}
  constexpr bool operator==(ErrorCode c) const { return code == c; }
};

namespace support {

// Wrapper returned by `err()` that converts to any Result<T>.
struct ErrTag {
  Error e;
};
constexpr ErrTag err(Error e) {
  return ErrTag{e};
}

template <typename T>
class [[nodiscard]] Result {
 public:
  Result(const T& v) : ok_(true) { new (&storage_.value) T(v); }  // NOLINT: implicit by design
  Result(T&& v) : ok_(true) { new (&storage_.value) T(support::move(v)); }  // NOLINT
  Result(ErrTag e) : ok_(false) { storage_.error = e.e; }                   // NOLINT
  Result(ErrorCode c) : ok_(false) {                                        // NOLINT
    KASSERT(c != ErrorCode::kOk, "a Result built from kOk has no value");
    storage_.error = Error(c);
  }
  Result(Error e) : ok_(false) { storage_.error = e; }  // NOLINT

  Result(Result&& o) : ok_(o.ok_) {
    if (ok_) {
      new (&storage_.value) T(support::move(o.storage_.value));
    } else {
      storage_.error = o.storage_.error;
    }
  }
  Result(const Result& o) : ok_(o.ok_) {
    if (ok_) {
      new (&storage_.value) T(o.storage_.value);
    } else {
      storage_.error = o.storage_.error;
    }
  }
  Result& operator=(const Result&) = delete;
  Result& operator=(Result&&) = delete;
  // Trivial for a trivially destructible T (most results: addresses, handles), so that such a
  // Result can be passed on by a guaranteed tail call (SUPPORT_MUSTTAIL,
  // include/dmakit/support/compiler.h).
  ~Result()
    requires(SUPPORT_IS_TRIVIALLY_DESTRUCTIBLE(T))
  = default;
  ~Result() {
    if (ok_) storage_.value.~T();
  }

  bool ok() const { return ok_; }
  bool is_error() const { return !ok_; }
  explicit operator bool() const { return ok_; }

  // Preconditions: ok() (checked).
  T& value() & {
    KASSERT(ok_, "value() of an error Result");
    return storage_.value;
  }
  const T& value() const& {
    KASSERT(ok_, "value() of an error Result");
    return storage_.value;
  }
  T&& value() && {
    KASSERT(ok_, "value() of an error Result");
    return support::move(storage_.value);
  }
  T* operator->() { return &value(); }
  const T* operator->() const { return &value(); }
  T& operator*() & { return value(); }
  const T& operator*() const& { return value(); }
  T&& operator*() && { return support::move(*this).value(); }

  // Preconditions: !ok() (checked).
  Error error() const {
    KASSERT(!ok_, "error() of a successful Result");
    return storage_.error;
  }
  ErrorCode code() const { return ok_ ? ErrorCode::kOk : storage_.error.code; }

 private:
  union Storage {
    Storage() {}
    ~Storage()
      requires(SUPPORT_IS_TRIVIALLY_DESTRUCTIBLE(T))
    = default;
    ~Storage() {}
    T value;
    Error error;
  } storage_;
  bool ok_;
};

template <>
class [[nodiscard]] Result<void> {
 public:
  Result() = default;
  Result(ErrTag e) : error_(e.e) {}   // NOLINT
  Result(ErrorCode c) : error_(c) {}  // NOLINT
  Result(Error e) : error_(e) {}      // NOLINT
  bool ok() const { return error_.code == ErrorCode::kOk; }
  bool is_error() const { return !ok(); }
  explicit operator bool() const { return ok(); }
  Error error() const {
    KASSERT(!ok(), "error() of a successful Result");
    return error_;
  }
  ErrorCode code() const { return error_.code; }

 private:
  Error error_;
};

constexpr Result<void> ok() {
  return Result<void>();
}

}  // namespace support

template <typename T>
using Result = support::Result<T>;

#define SUPPORT_CONCAT_INNER(a, b) a##b
#define SUPPORT_CONCAT(a, b) SUPPORT_CONCAT_INNER(a, b)

// Evaluates `expr` (a Result); on error returns that error from the enclosing function.
#define TRY(expr)                                                      \
  do {                                                                 \
    auto&& _try_result = (expr);                                       \
    if (!_try_result.ok()) return ::support::err(_try_result.error()); \
  } while (0)

// Evaluates `expr` (a Result<T>); on error returns it, else moves the value into `lhs`
// (a declaration such as `auto x` or an existing lvalue).
#define TRY_ASSIGN(lhs, expr) TRY_ASSIGN_IMPL(SUPPORT_CONCAT(_try_r_, __LINE__), lhs, expr)
#define TRY_ASSIGN_IMPL(tmp, lhs, expr)              \
  auto&& tmp = (expr);                               \
  if (!tmp.ok()) return ::support::err(tmp.error()); \
  lhs = ::support::move(tmp).value()
