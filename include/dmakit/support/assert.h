// Invariant checks. A failed check calls support_panic(), which the embedding kernel (or the host
// test build) defines: the subsystem never decides how to stop a machine.
#pragma once

#include "dmakit/support/build_config.h"  // first: the configuration every header agrees on

extern "C" [[noreturn]] void support_panic(const char* file, int line, const char* msg);

#define KASSERT(cond, msg)                                                    \
  do {                                                                        \
    if (__builtin_expect(!(cond), 0)) {                                       \
      support_panic(__FILE__, __LINE__, "assertion failed: " #cond ": " msg); \
    }                                                                         \
  } while (0)

#define KPANIC(msg) support_panic(__FILE__, __LINE__, msg)

// Debug-only checks (DMA_DEBUG=1 builds: host tests and the test kernel).
#if defined(DMA_DEBUG) && DMA_DEBUG
#define KDEBUG_ASSERT(cond, msg) KASSERT(cond, msg)
#define KDEBUG_ENABLED 1
#else
#define KDEBUG_ASSERT(cond, msg) \
  do {                           \
  } while (0)
#define KDEBUG_ENABLED 0
#endif
