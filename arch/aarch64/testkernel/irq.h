// AArch64 interrupt routing: the GICv3 with MSIs through its ITS (gic_v3.h; `-M
// virt,gic-version=3`, what the runner boots) or the GICv2 with MSIs through its GICv2m frame
// (gic.h; `-M virt`'s default), whichever the device tree describes, and the EL1 virtual generic
// timer (CNTV, its PPI from the device tree's "arm,armv8-timer" node) as the
// per-CPU periodic timer. entry.S sends an IRQ taken from the kernel (EL1 on SP_EL0) to
// aarch64_irq, which acknowledges, dispatches and ends it.
#pragma once

#include "dmakit/support/types.h"

namespace aarch64 {

// For a secondary CPU (the SMP bring-up), once, interrupts masked: its GIC CPU interface and
// banked registers (the wake SGI and the timer PPI enabled), recorded as CPU `index` of
// testkernel/percpu.h (0 is the boot CPU; at most 7 with a GICv2). False when index is out of
// range or irq_init was not done.
bool irq_init_secondary(unsigned index);

// Sends the wake SGI to CPU `index` (arch::wake_cpu): its handler does nothing, the interrupt
// only ends the target's wait for one. Any context; a no-op before irq_init.
void send_wake(unsigned index);

}  // namespace aarch64

// Called by entry.S for an IRQ from EL1 with SP_EL0, IRQs masked. Interrupt context.
extern "C" void aarch64_irq();
