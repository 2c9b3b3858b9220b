// Clang thread-safety annotations (-Wthread-safety). Expand to nothing on other compilers.
#pragma once

#include "dmakit/support/build_config.h"  // first: the configuration every header agrees on

#if defined(__clang__)
#define TA_ATTR(x) __attribute__((x))
#else
#define TA_ATTR(x)
#endif

#define TA_CAPABILITY(x) TA_ATTR(capability(x))
#define TA_SCOPED_CAPABILITY TA_ATTR(scoped_lockable)
#define TA_GUARDED(x) TA_ATTR(guarded_by(x))
#define TA_PT_GUARDED(x) TA_ATTR(pt_guarded_by(x))
#define TA_REQ(...) TA_ATTR(requires_capability(__VA_ARGS__))
#define TA_EXCL(...) TA_ATTR(locks_excluded(__VA_ARGS__))
#define TA_ACQ(...) TA_ATTR(acquire_capability(__VA_ARGS__))
#define TA_TRY_ACQ(...) TA_ATTR(try_acquire_capability(__VA_ARGS__))
#define TA_REL(...) TA_ATTR(release_capability(__VA_ARGS__))
#define TA_RET_CAP(x) TA_ATTR(lock_returned(x))
#define TA_NO_THREAD_SAFETY_ANALYSIS TA_ATTR(no_thread_safety_analysis)
