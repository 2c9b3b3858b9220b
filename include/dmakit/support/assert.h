// Invariant checks. A failed check calls support_panic(), which the embedding kernel (or the host
// test build) defines: the subsystem never decides how to stop a machine.
#pragma once

#include "dmakit/support/build_config.h"  // first: the configuration every header agrees on

extern "C" [[noreturn]] void support_panic(const char* file, int line, const char* msg);

// The panic message: with DMA_DEBUG, the condition's text and the message; in a release build the
// message alone (file and line still say which check failed), which keeps the library's read-only
// data within its release size limit (scripts/check_lib.sh).
#if DMA_DEBUG
#define KASSERT_MESSAGE_(cond, msg) "assertion failed: " #cond ": " msg
#else
#define KASSERT_MESSAGE_(cond, msg) msg
#endif

#define KASSERT(cond, msg)                                            \
  do {                                                                \
    if (__builtin_expect(!(cond), 0)) {                               \
      support_panic(__FILE__, __LINE__, KASSERT_MESSAGE_(cond, msg)); \
    }                                                                 \
  } while (0)

#define KPANIC(msg) support_panic(__FILE__, __LINE__, msg)

// Debug-only checks (DMA_DEBUG=1 builds: host tests and the test kernel).
#if DMA_DEBUG
#define KDEBUG_ASSERT(cond, msg) KASSERT(cond, msg)
#define KDEBUG_ENABLED 1
#else
// The condition is still compiled (never evaluated), so that what only a check reads is not
// reported unused and a check cannot rot in the configuration that leaves it out.
#define KDEBUG_ASSERT(cond, msg)        \
  do {                                  \
    static_cast<void>(sizeof(!(cond))); \
  } while (0)
#define KDEBUG_ENABLED 0
#endif
