// testkernel/arch_io.h for RISC-V 64 (QEMU virt): device memory lives in the direct map with
// PBMT=IO (riscv64_platform.h); the boot code maps the low device window and every PCIe window the
// device tree describes, mmio_map() maps anything else on demand. There is no I/O port space (PCI
// I/O BARs are memory-mapped through the host bridge's I/O window), and PCI is found through the
// device tree.
//
// Barriers: FENCE with the I/O (device input/output) and memory (read/write) sets, as Linux's
// RISC-V wmb/rmb/mb. Memory marked PBMT=IO is strongly ordered against itself, but not against
// normal memory, hence the explicit fences.
#include "testkernel/arch_io.h"

#include "arch/riscv64/testkernel/riscv64_platform.h"

namespace arch {

Result<volatile void*> mmio_map(PhysAddr base, uint64_t size) {
  return riscv::platform().mmio_map(base, size);
}

// Earlier memory writes (ring entries, descriptors; cache-block writebacks) and MMIO writes before
// any later MMIO or memory write (the doorbell).
void io_wmb() {
  __asm__ volatile("fence ow, ow" : : : "memory");
}
// Earlier MMIO reads and memory reads before any later read.
void io_rmb() {
  __asm__ volatile("fence ir, ir" : : : "memory");
}
void io_mb() {
  __asm__ volatile("fence iorw, iorw" : : : "memory");
}

}  // namespace arch
