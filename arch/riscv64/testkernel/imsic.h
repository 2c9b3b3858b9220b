// The supervisor-level interrupt file of the calling hart's IMSIC (RISC-V AIA, `-M
// virt,aia=aplic-imsic`): a PCI device signals MSI identity `id` by writing `id` to the hart's
// S-file page (the device tree's S-level "riscv,imsics" node: reg base + hart index * stride);
// the hart reads it through the Ssaia CSRs: siselect/sireg reach the file's indirect registers
// (eidelivery 0x70, eithreshold 0x72, eie0.. 0xC0.. -- on RV64 only the even-numbered ones, 64
// identities each), and stopei claims the highest-priority pending and enabled identity.
//
// Threading: every function acts on the calling hart's file; call with interrupts masked (an
// siselect/sireg pair must not be interleaved with another).
#pragma once

#include "dmakit/support/types.h"

namespace riscv::imsic {

// Turns interrupt delivery on for the hart's file with no threshold and identities 1..num_ids
// enabled: which hart an MSI reaches is chosen by the page the device writes to, and what runs by
// the kernel's table of handlers, so no per-identity enable needs to follow an allocation (and
// none has to be made on another hart's file, which only that hart's CSRs reach).
void init_this_hart(unsigned num_ids);
// Claims the highest-priority pending, enabled identity (clearing its pending bit); 0 if none.
unsigned claim();

}  // namespace riscv::imsic
