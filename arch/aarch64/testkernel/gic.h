// The GICv2 of QEMU virt (`-M virt,gic-version=2`, "arm,cortex-a15-gic" in the device tree) and
// its GICv2m MSI frame ("arm,gic-v2m-frame"): a PCI device signals an MSI by writing the SPI's
// interrupt ID to the frame's MSI_SETSPI_NS register, and the SPI is then handled like a wired
// one.
//
// Distributor (GICD): CTLR 0x000, TYPER 0x004, ISENABLER 0x100, ICENABLER 0x180, ICPENDR 0x280,
// IPRIORITYR 0x400 (a byte per ID), ITARGETSR 0x800 (a CPU-mask byte per ID), ICFGR 0xC00 (two
// bits per ID; the upper one set: edge). CPU interface (GICC): CTLR 0x000, PMR 0x004, BPR 0x008,
// IAR 0x00C, EOIR 0x010. GICv2m frame: MSI_TYPER 0x008 (bits 25:16 first SPI ID, 9:0 count),
// MSI_SETSPI_NS 0x040.
//
// The GICv3 with its ITS (QEMU virt's other MSI-capable setup, the one run_qemu.py boots) is
// gic_v3.h; irq.cc picks whichever the device tree describes.
//
// Threading: per-ID operations are single register writes (the set/clear-enable registers need
// no read-modify-write); cpu_init runs on each CPU for its banked registers.
#pragma once

#include "dmakit/support/result.h"
#include "dmakit/support/types.h"

namespace aarch64::gic {

struct Description {
  uint64_t dist_phys = 0;
  uint64_t cpu_phys = 0;
  uint64_t v2m_phys = 0;  // 0: no MSI frame.
};

// Maps the distributor, the CPU interface and the MSI frame, disables and clears every SPI,
// enables the distributor and the boot CPU's interface. Errors: arch::mmio_map's.
Result<void> init(const Description& d);
// The calling CPU's interface and banked registers (SGIs/PPIs off), for secondaries.
void cpu_init();

// Number of interrupt IDs the distributor implements (32 * (ITLinesNumber + 1)).
unsigned num_ids();
// MSI SPIs of the v2m frame: [first, first + count), and the address a device writes.
unsigned msi_first();
unsigned msi_count();
uint64_t msi_doorbell();

// Configures ID `id` (edge-triggered if `edge`, priority 0x80, routed to CPU interface `cpu` for
// an SPI) and enables it; PPIs are enabled on the calling CPU only.
void enable(unsigned id, bool edge, unsigned cpu);
void disable(unsigned id);
// Sends SGI `id` (0..15) to CPU interface `cpu` (0..7). Any context.
void send_sgi(unsigned id, unsigned cpu);
// Acknowledges the highest-priority pending interrupt: its ID (1020-1023: none/spurious).
uint32_t ack();
// End of interrupt for an ID returned by ack().
void eoi(uint32_t iar);

}  // namespace aarch64::gic
