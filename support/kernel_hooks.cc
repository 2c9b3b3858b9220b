// Storage of the kernel's hook table (dmakit/kernel_hooks.h). Constant-initialised: it is valid
// (all null) before any constructor runs, in kernels that run none.
#include "dmakit/kernel_hooks.h"

namespace {
constinit dmakit_kernel_hooks g_hooks = {};
}  // namespace

extern "C" void dmakit_set_kernel_hooks(const dmakit_kernel_hooks* hooks) {
  g_hooks = hooks != nullptr ? *hooks : dmakit_kernel_hooks{};
}

namespace dma {
const dmakit_kernel_hooks& kernel_hooks() {
  return g_hooks;
}
}  // namespace dma
