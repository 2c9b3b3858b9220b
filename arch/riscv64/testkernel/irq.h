// RISC-V interrupt routing: MSIs through the AIA IMSIC's supervisor files (imsic.h; QEMU `-M
// virt,aia=aplic-imsic`), the periodic timer through SBI set_timer (the supervisor timer
// interrupt). The APLIC is left as the firmware left it (wired sources stay off): every device
// here signals by MSI.
#pragma once

#include "arch/riscv64/testkernel/trap.h"
#include "dmakit/support/addr.h"
#include "dmakit/support/types.h"

namespace riscv {

// Called by riscv64_trap for an interrupt (scause's top bit set): the timer or the IMSIC.
// Interrupt context.
void irq_dispatch(uint64_t scause);

// For a secondary hart (the SMP bring-up), once, interrupts masked: its IMSIC file and interrupt
// enables, recorded as CPU `index` of testkernel/percpu.h, whose IMSIC page is the hart-ID-th
// of the S-level "riscv,imsics" node (QEMU virt lists the harts in hart-ID order). False when
// out of range or irq_init was not done.
bool irq_init_secondary(unsigned index);

// The S-level interrupt-file page of every hart the IMSIC node lists (where a device writes an
// MSI), at most `max` of them; returns how many there are (0 before irq_init found the IMSIC).
// For the IOMMU, which must let every device write them. Any context.
size_t imsic_s_file_pages(PhysAddr* pages, size_t max);

}  // namespace riscv
