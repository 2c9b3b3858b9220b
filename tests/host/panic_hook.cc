#include "tests/host/panic_hook.h"

#include <cstdio>
#include <cstdlib>

#include "dmakit/support/assert.h"

extern "C" [[noreturn]] void support_panic(const char* file, int line, const char* msg) {
  std::fprintf(stderr, "PANIC at %s:%d: %s\n", file, line, msg);
  std::fflush(stderr);
  std::abort();
}
