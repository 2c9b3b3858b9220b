// The GICv3 of QEMU virt (`-M virt,gic-version=3`, "arm,gic-v3") with its ITS ("arm,gic-v3-its"):
// the distributor in affinity-routing mode, one redistributor per CPU (found by matching
// GICR_TYPER's affinity with MPIDR_EL1), the CPU interface through the ICC_* system registers, and
// MSIs as LPIs translated by the ITS.
//
// MSI through the ITS: a device writes an EventID to GITS_TRANSLATER; the ITS looks the writer's
// DeviceID (its PCI requester ID: QEMU virt's host bridge gives "msi-parent", no "msi-map", so
// DeviceID = RID) up in the device table, finds the device's interrupt translation table (ITT),
// and from the (DeviceID, EventID) entry the LPI and the collection, which names the target
// redistributor. The driver sets that up with commands in a memory queue: MAPC (collection ->
// redistributor), MAPD (device -> ITT), MAPTI (event -> LPI, collection), DISCARD, INV, SYNC.
// Here EventID = LPI - 8192, so one message's data names its LPI and stays unique across
// devices; every device's ITT has room for all the LPIs there are.
//
// Tables (device, collection, command queue, ITTs, the LPI configuration and pending tables) come
// from a static arena in the kernel image (never from the page-frame allocator: they live as long
// as the kernel), and are cleaned to memory (KernelDmaOp::flush) after every CPU write the GIC
// must see. Up to 8 devices (requester IDs) and 8 CPUs.
//
// Threading: ITS commands and LPI configuration changes are serialised by a lock taken with
// interrupts masked; ack/eoi act on the calling CPU's interface.
#pragma once

#include "dmakit/support/result.h"
#include "dmakit/support/types.h"

namespace aarch64::gicv3 {

struct Description {
  uint64_t dist_phys = 0;
  uint64_t redist_phys = 0;  // The first redistributor region.
  uint64_t redist_size = 0;
  uint64_t its_phys = 0;  // 0: no ITS.
};

// Distributor, the boot CPU's redistributor (with LPIs) and CPU interface, the ITS and its
// tables, collection 0 for the boot CPU. Errors: kNotFound (no redistributor for this CPU),
// kNoMemory (no pages for the tables), kNotSupported (the ITS refused a table or stalled),
// arch::mmio_map's errors.
Result<void> init(const Description& d);
// The calling CPU's redistributor, CPU interface and ITS collection `cpu_index`, for secondaries.
// Errors: as init.
Result<void> cpu_init(unsigned cpu_index);

// Enables PPI `id` (16..31, level-sensitive) on the calling CPU.
void enable_ppi(unsigned id);
// Sends SGI `id` (0..15) to the CPU whose MPIDR_EL1 affinity fields are `mpidr` (Aff0 at most
// 15, as on QEMU virt). Any context.
void send_sgi(unsigned id, uint64_t mpidr);
// Acknowledges the highest-priority pending group 1 interrupt: its ID (1020-1023: none).
uint32_t ack();
void eoi(uint32_t id);

// LPIs handed out for MSIs: [lpi_first(), lpi_first() + lpi_count()).
unsigned lpi_first();
unsigned lpi_count();
bool has_its();
uint64_t its_doorbell();
// Routes (requester `devid`, EventID lpi - 8192) to `lpi` on CPU `cpu`'s collection and enables
// the LPI. Errors: kNotSupported (devid beyond the device table, cpu without a collection),
// kNoMemory (no ITT memory or device slot).
Result<void> its_map(uint32_t devid, unsigned lpi, unsigned cpu);
// Undoes its_map. Errors: kNotFound (the LPI is not mapped).
Result<void> its_unmap(unsigned lpi);

}  // namespace aarch64::gicv3
