// Per-device DMA coherence from the device tree; see dma_coherence.h.
#include "testkernel/dma_coherence.h"

DtDmaCoherence dt_dma_coherence(const Fdt& fdt, FdtNode node, bool platform_default) {
  DtDmaCoherence c;
  c.coherent = platform_default;
  for (FdtNode n = node; n.valid(); n = fdt.parent(n)) {
    if (fdt.has_prop(n, "dma-coherent")) {
      c.coherent = true;
      c.decided_by = n;
      break;
    }
    if (fdt.has_prop(n, "dma-noncoherent")) {
      c.coherent = false;
      c.decided_by = n;
      break;
    }
  }
  return c;
}

DtDmaCoherence dma_coherence_for(const KernelEnv& env, FdtNode node) {
  const bool platform_default = env.dma->default_constraints().coherence == DmaCoherence::kCoherent;
  if (env.boot == nullptr || env.boot->fdt == nullptr || !node.valid()) {
    return DtDmaCoherence{platform_default, FdtNode{}};
  }
  auto fdt = Fdt::from(env.boot->fdt);
  if (!fdt.ok()) return DtDmaCoherence{platform_default, FdtNode{}};
  return dt_dma_coherence(*fdt, node, platform_default);
}
