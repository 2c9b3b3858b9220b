// Per-device DMA coherence: whether a device's DMA snoops the CPU caches, as the firmware
// describes it, for the DeviceDma a driver is given (DeviceDma::set_coherent).
//
// The rule is the Devicetree specification's (and Linux's of_dma_is_coherent): the device's node,
// then each ancestor up to the root; the first that carries "dma-coherent" (coherent) or
// "dma-noncoherent" (not coherent) decides. A PCI function has no node of its own in QEMU's
// trees, so a PCI device asks with its host bridge's node. With no answer in the tree, or no tree
// at all (x86-64: PVH boot, no device tree), the platform's default decides:
// KernelDmaOp::default_constraints().coherence (x86-64 coherent; AArch64 not; RISC-V coherent
// unless it has both Zicbom and Svpbmt, see include/dmakit/arch/riscv64_dma_op.h).
//
// What QEMU 10's virt trees say: AArch64 puts "dma-coherent" on the root node (so every device
// is coherent) and on the PCIe host bridge; RISC-V puts it on the PCIe host bridge. So the
// devices found there are coherent, and a driver or test that wants the non-coherent paths
// (cache maintenance, uncached coherent memory) overrides with DeviceDma::set_coherent(false).
//
// Cost: O(depth of the node x size of the blob) (Fdt::parent is a linear walk); called once per
// device at bind time. Any CPU, interrupts on or off; reads only the immutable blob.
#pragma once

#include "testkernel/fdt.h"
#include "testkernel/kernel_env.h"

struct DtDmaCoherence {
  bool coherent = false;
  // The node whose property decided, or invalid when the platform's default did.
  FdtNode decided_by;
  bool from_device_tree() const { return decided_by.valid(); }
};

// The coherence of the device described by `node` in `fdt` (see above); `platform_default` when
// neither the node nor an ancestor says, or when `node` is invalid.
DtDmaCoherence dt_dma_coherence(const Fdt& fdt, FdtNode node, bool platform_default);

// The same for the booted kernel: `node` is a node of the device tree the kernel booted with
// (env.boot->fdt; nodes are offsets, valid in any Fdt reader of that blob). Without a device tree,
// or with an invalid node, the platform's default (env.dma->default_constraints().coherence).
DtDmaCoherence dma_coherence_for(const KernelEnv& env, FdtNode node);
