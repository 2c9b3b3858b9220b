// The I/O APICs the MADT describes. Nothing here routes a pin: the test kernel's devices signal
// by MSI, so every redirection entry is masked at boot (the firmware may have left some live).
#pragma once

#include "dmakit/support/result.h"
#include "dmakit/support/types.h"

namespace x86 {

struct MadtInterruptInfo;

// Maps every I/O APIC of `info` and masks all its redirection entries. Returns the total number
// of pins. Errors: arch::mmio_map's. Boot CPU, interrupts off.
Result<unsigned> ioapic_mask_all(const MadtInterruptInfo& info);

}  // namespace x86
