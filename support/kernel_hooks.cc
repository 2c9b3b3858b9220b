// Storage of the kernel's hook table (dmakit/kernel_hooks.h). Constant-initialised: it is valid
// (all null) before any constructor runs, in kernels that run none.
#include "dmakit/kernel_hooks.h"

namespace dma::detail {
constinit dmakit_kernel_hooks g_kernel_hooks = {};
}  // namespace dma::detail

extern "C" void dmakit_set_kernel_hooks(const dmakit_kernel_hooks* hooks) {
  dmakit_kernel_hooks h = hooks != nullptr ? *hooks : dmakit_kernel_hooks{};
  // Both or neither: a lock that saved a state nobody restores (or the reverse) would leave
  // interrupts masked or unmask them inside a critical section.
  if (h.irq_save == nullptr || h.irq_restore == nullptr) {
    h.irq_save = nullptr;
    h.irq_restore = nullptr;
  }
  dma::detail::g_kernel_hooks = h;
}
