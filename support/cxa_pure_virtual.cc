// The one piece of the C++ runtime the library's own code needs: the function an abstract
// class's vtable (DmaOp's) points at for its pure virtual methods. Nothing ever calls it (a
// DmaOp is used only once constructed as a concrete class), but the vtable refers to it, so a
// kernel without a C++ runtime would otherwise have to define it. Weak: a definition of the
// kernel's (or of libsupc++ / libc++abi) takes precedence.
#include "dmakit/support/assert.h"

extern "C" [[gnu::weak]] void __cxa_pure_virtual() {  // NOLINT: the Itanium C++ ABI's name.
  KPANIC("pure virtual function called");
}
