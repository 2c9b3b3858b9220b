// The ktest runner: walks the .ktest_registry section (see ktest.h).
#include "tests/qemu/ktest.h"

#include "testkernel/kprintf.h"
#include "testkernel/kstring.h"

extern "C" {
extern const ktest::TestCase __ktest_start[];  // NOLINT: linker-script symbol.
extern const ktest::TestCase __ktest_end[];    // NOLINT: linker-script symbol.
}

namespace ktest {

void Context::fail(const char* file, int line, const char* fmt, ...) {
  if (failures_++ != 0) return;
  // Keep the file's base name only: the full path adds nothing in a one-line summary.
  const char* base = file;
  for (const char* p = file; *p != '\0'; ++p) {
    if (*p == '/') base = p + 1;
  }
  int n = ksnprintf(reason_, sizeof(reason_), "%s:%d: ", base, line);
  if (n < 0 || static_cast<size_t>(n) >= sizeof(reason_)) return;
  va_list ap;
  va_start(ap, fmt);
  kvsnprintf(reason_ + n, sizeof(reason_) - static_cast<size_t>(n), fmt, ap);
  va_end(ap);
}

size_t test_count() {
  return static_cast<size_t>(__ktest_end - __ktest_start);
}

Summary run_all(const char* filter) {
  Summary s;
  for (const TestCase* t = __ktest_start; t != __ktest_end; ++t) {
    if (filter != nullptr && filter[0] != '\0' && !kstr::contains(t->name, filter)) continue;
    if (t->applies != nullptr && !t->applies()) continue;
    Context ctx;
    t->fn(ctx);
    if (ctx.failed()) {
      ++s.failed;
      if (ctx.failures() > 1) {
        kprintf("[FAIL] %s: %s (+%u more)\n", t->name, ctx.first_reason(), ctx.failures() - 1);
      } else {
        kprintf("[FAIL] %s: %s\n", t->name, ctx.first_reason());
      }
    } else {
      ++s.passed;
      kprintf("[PASS] %s\n", t->name);
    }
  }
  kprintf("%u passed, %u failed\n", s.passed, s.failed);
  return s;
}

}  // namespace ktest
