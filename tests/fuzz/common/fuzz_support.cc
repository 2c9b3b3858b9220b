// What every fuzz target links: the subsystem's panic hook, and the harness's failure report.
// Both abort, which libFuzzer reports as a crash and saves the input for.
#include <cstdio>
#include <cstdlib>

#include "dmakit/support/assert.h"
#include "tests/fuzz/common/fuzz_input.h"

extern "C" [[noreturn]] void support_panic(const char* file, int line, const char* msg) {
  std::fprintf(stderr, "PANIC at %s:%d: %s\n", file, line, msg);
  std::fflush(stderr);
  std::abort();
}

void fuzz_fail(const char* file, int line, const char* what) {
  std::fprintf(stderr, "FUZZ FAILURE at %s:%d: %s\n", file, line, what);
  std::fflush(stderr);
  std::abort();
}
