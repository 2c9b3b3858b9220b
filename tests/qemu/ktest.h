// ktest: the in-kernel test harness of the QEMU test kernels.
//
// A test is a function registered at link time, without constructors:
//
//   KTEST(bounce_pool_below_4g) {
//     KEXPECT_TRUE(pool.base().value() < (1ull << 32));
//     KREQUIRE_OK(result);            // stops the test on failure
//     KEXPECT_EQ(a, b);               // records "file:line: a == b (0x.. vs 0x..)" and goes on
//   }
//
// KTEST places a `const ktest::TestCase` in the linker section ".ktest_registry". EVERY ARCH'S
// LINKER SCRIPT MUST KEEP THAT SECTION AND BRACKET IT WITH TWO SYMBOLS, in a read-only output
// section, for example:
//
//   .ktest_registry : ALIGN(8) {
//     __ktest_start = .;
//     KEEP(*(.ktest_registry))
//     __ktest_end = .;
//   }
//
// (and likewise `.init_array : { __init_array_start = .; KEEP(*(SORT(.init_array.*)))
// KEEP(*(.init_array)) __init_array_end = .; }` for testkernel/cxx_runtime.cc).
//
// run_all() runs the tests in link order. Each prints exactly one line, "[PASS] name" or
// "[FAIL] name: file:line: reason (+N more)", and the run ends with exactly one line
// "N passed, M failed". The QEMU runner (tests/qemu/run_qemu.py) reads those lines.
//
// The checks may be used only inside a KTEST body (they use the hidden `ktest_ctx` parameter).
// Tests reach the booted kernel's state (allocator, pools, DmaOp, boot info) through
// kernel_env() from testkernel/kernel_env.h.
#pragma once

#include "dmakit/support/result.h"
#include "dmakit/support/types.h"

namespace ktest {

class Context {
 public:
  // Records a failure at file:line; the first one's message is kept for the summary line.
  void fail(const char* file, int line, const char* fmt, ...) __attribute__((format(printf, 4, 5)));
  bool failed() const { return failures_ != 0; }
  unsigned failures() const { return failures_; }
  const char* first_reason() const { return reason_; }

 private:
  unsigned failures_ = 0;
  char reason_[200] = {};
};

struct TestCase {
  const char* name;
  void (*fn)(Context&);
  // Null, or whether the test applies to this boot (KTEST_WHEN): a test that does not is not
  // run, printed or counted (an iommu_ test without an IOMMU).
  bool (*applies)() = nullptr;
};

struct Summary {
  unsigned passed = 0;
  unsigned failed = 0;
};

// Runs every registered test whose name contains `filter` (all if null or ""), prints one line
// per test and the closing "N passed, M failed" line. Returns the counts.
Summary run_all(const char* filter);

// Number of registered tests (all of them, regardless of any filter).
size_t test_count();

// Values as 64-bit numbers for failure messages: integers, enums, pointers and the address
// types (anything with a value() member).
template <typename T>
uint64_t as_u64(const T& v) {
  if constexpr (__is_enum(T)) {
    return static_cast<uint64_t>(v);
  } else if constexpr (__is_pointer(T)) {
    return reinterpret_cast<uintptr_t>(v);
  } else if constexpr (requires { v.value(); }) {
    return static_cast<uint64_t>(v.value());
  } else {
    return static_cast<uint64_t>(v);
  }
}

// Name of a Result's error code ("ok" for success), for failure messages.
template <typename R>
const char* result_code_name(const R& r) {
  return error_code_name(r.code());
}

}  // namespace ktest

#define KTEST_CONCAT_INNER(a, b) a##b
#define KTEST_CONCAT(a, b) KTEST_CONCAT_INNER(a, b)

#define KTEST(name)                                                                      \
  static void KTEST_CONCAT(ktest_fn_, name)(::ktest::Context & ktest_ctx);               \
  [[gnu::used, gnu::section(".ktest_registry"),                                          \
    gnu::aligned(8)]] static const ::ktest::TestCase KTEST_CONCAT(ktest_case_, name) = { \
      #name, &KTEST_CONCAT(ktest_fn_, name)};                                            \
  static void KTEST_CONCAT(ktest_fn_, name)([[maybe_unused]] ::ktest::Context & ktest_ctx)

// A test that exists only when `applies()` (a bool function) says so at run time.
#define KTEST_WHEN(name, applies)                                                        \
  static void KTEST_CONCAT(ktest_fn_, name)(::ktest::Context & ktest_ctx);               \
  [[gnu::used, gnu::section(".ktest_registry"),                                          \
    gnu::aligned(8)]] static const ::ktest::TestCase KTEST_CONCAT(ktest_case_, name) = { \
      #name, &KTEST_CONCAT(ktest_fn_, name), (applies)};                                 \
  static void KTEST_CONCAT(ktest_fn_, name)([[maybe_unused]] ::ktest::Context & ktest_ctx)

#define KEXPECT_TRUE(cond)                                                 \
  do {                                                                     \
    if (!(cond)) ktest_ctx.fail(__FILE__, __LINE__, "expected %s", #cond); \
  } while (0)

#define KEXPECT_FALSE(cond)                                                \
  do {                                                                     \
    if (cond) ktest_ctx.fail(__FILE__, __LINE__, "expected !(%s)", #cond); \
  } while (0)

// Binary comparison; both sides are evaluated once.
#define KTEST_CMP(a, b, op)                                                                   \
  do {                                                                                        \
    const auto& ktest_a = (a);                                                                \
    const auto& ktest_b = (b);                                                                \
    if (!(ktest_a op ktest_b)) {                                                              \
      ktest_ctx.fail(__FILE__, __LINE__, "expected %s %s %s (0x%llx vs 0x%llx)", #a, #op, #b, \
                     static_cast<unsigned long long>(::ktest::as_u64(ktest_a)),               \
                     static_cast<unsigned long long>(::ktest::as_u64(ktest_b)));              \
    }                                                                                         \
  } while (0)

#define KEXPECT_EQ(a, b) KTEST_CMP(a, b, ==)
#define KEXPECT_NE(a, b) KTEST_CMP(a, b, !=)
#define KEXPECT_LT(a, b) KTEST_CMP(a, b, <)
#define KEXPECT_LE(a, b) KTEST_CMP(a, b, <=)
#define KEXPECT_GT(a, b) KTEST_CMP(a, b, >)
#define KEXPECT_GE(a, b) KTEST_CMP(a, b, >=)

// A Result must be ok / must fail with a given code.
#define KEXPECT_OK(expr)                                         \
  do {                                                           \
    const auto& ktest_r = (expr);                                \
    if (!ktest_r.ok())                                           \
      ktest_ctx.fail(__FILE__, __LINE__, "%s failed: %s", #expr, \
                     ::ktest::result_code_name(ktest_r));        \
  } while (0)
#define KEXPECT_ERR(expr, want_code)                                                  \
  do {                                                                                \
    const auto& ktest_r = (expr);                                                     \
    if (ktest_r.code() != (want_code))                                                \
      ktest_ctx.fail(__FILE__, __LINE__, "%s: expected error %s, got %s", #expr,      \
                     error_code_name(want_code), ::ktest::result_code_name(ktest_r)); \
  } while (0)

// Like the KEXPECT forms, but end the test at the first failure (for preconditions whose failure
// makes the rest meaningless).
#define KREQUIRE_TRUE(cond)                                     \
  do {                                                          \
    if (!(cond)) {                                              \
      ktest_ctx.fail(__FILE__, __LINE__, "required %s", #cond); \
      return;                                                   \
    }                                                           \
  } while (0)
#define KREQUIRE_OK(expr)                                          \
  do {                                                             \
    const auto& ktest_r = (expr);                                  \
    if (!ktest_r.ok()) {                                           \
      ktest_ctx.fail(__FILE__, __LINE__, "required %s: %s", #expr, \
                     ::ktest::result_code_name(ktest_r));          \
      return;                                                      \
    }                                                              \
  } while (0)
