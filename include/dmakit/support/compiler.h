// Compiler features the subsystem uses where the target's code generator has them.
#pragma once

#include "dmakit/support/build_config.h"  // first: the configuration every header agrees on

// SUPPORT_MUSTTAIL: a tail call the compiler must make ([[clang::musttail]]; caller and callee of
// the same signature, trivially destructible arguments and result). The mapping fast path uses it
// to hand a request to its general path without a stack frame of its own. A target whose code
// generator cannot guarantee such calls (LLVM 19 for RISC-V cannot) is built with
// -DSUPPORT_NO_MUSTTAIL=1 (its arch.mk says so): the call is then an ordinary one, which costs a
// frame and nothing else.
#if defined(__clang__) && !(defined(SUPPORT_NO_MUSTTAIL) && SUPPORT_NO_MUSTTAIL)
#define SUPPORT_MUSTTAIL [[clang::musttail]]
#else
#define SUPPORT_MUSTTAIL
#endif

// SUPPORT_IS_TRIVIALLY_DESTRUCTIBLE(T): std::is_trivially_destructible_v<T> without <type_traits>
// (the kernels build without a C++ library). Clang has __is_trivially_destructible; GCC before
// 13 only __has_trivial_destructor, which means the same for the types used here.
#if defined(__clang__)
#define SUPPORT_IS_TRIVIALLY_DESTRUCTIBLE(T) __is_trivially_destructible(T)
#else
#define SUPPORT_IS_TRIVIALLY_DESTRUCTIBLE(T) __has_trivial_destructor(T)
#endif
