// The few pieces of the C++ runtime a freestanding kernel needs: handlers for pure virtual calls
// and for `delete` of a polymorphic object (the kernel never frees through the heap: there is
// none), and the global-constructor pass.
//
// Global objects with non-trivial constructors are allowed: each linker script collects
// .init_array between __init_array_start and __init_array_end, and kernel_main calls
// run_global_constructors() first. Destructors are never run (the kernel never exits normally),
// so atexit registration (-fno-use-cxa-atexit) does nothing.
#include "testkernel/cxx_runtime.h"

#include "testkernel/panic.h"

extern "C" {
using InitFn = void (*)();
extern InitFn __init_array_start[];  // NOLINT: linker-script symbol.
extern InitFn __init_array_end[];    // NOLINT: linker-script symbol.

void __cxa_pure_virtual() {
  kpanic("pure virtual function called");
}

int atexit(void (*)()) {
  return 0;
}
}

void operator delete(void*) noexcept {
  kpanic("operator delete called: the kernel has no heap");
}
void operator delete(void*, size_t) noexcept {
  kpanic("operator delete called: the kernel has no heap");
}

void run_global_constructors() {
  for (InitFn* f = __init_array_start; f != __init_array_end; ++f) (*f)();
}
