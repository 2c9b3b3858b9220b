// RISC-V interrupt routing: MSIs through the AIA IMSIC's supervisor files (imsic.h; QEMU `-M
// virt,aia=aplic-imsic`), the periodic timer through SBI set_timer (the supervisor timer
// interrupt). The APLIC is left as the firmware left it (wired sources stay off): every device
// here signals by MSI.
#pragma once

#include "arch/riscv64/testkernel/trap.h"
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

}  // namespace riscv
