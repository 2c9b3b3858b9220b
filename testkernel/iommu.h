// The test kernel's IOMMU glue (arch-neutral; each arch port provides testkernel/iommu_arch.h).
//
// With iommu=on on the command line, setup() asks the arch port for its IOMMU
// (arch::iommu_init), gives every PCI function the unit covers a translation domain of its own
// (an IommuDomain, dmakit/iommu.h; functions that share a requester id share one), maps the
// platform's MSI doorbell pages into each at their own address (map_fixed), and attaches the
// devices. The boot report names the IOMMU and each device's domain; a function the unit does not
// cover is reported and keeps the direct path. If anything fails the domains are torn down, the
// unit is asked to turn translation off (IommuUnit::disable) and the system stays on the direct
// path, with one line saying why.
//
// Drivers and tests give a device's DeviceDma the op dma_op_for() returns: its domain, or the
// platform's DmaOp when the IOMMU is off or does not cover the device.
//
// Faults: poll_faults() drains the unit's fault queue, printing one line per fault: device, I/O
// address, read or write, reason. The tests poll where they expect one, and kernel_main polls
// after the tests.
//
// Calling contexts: setup is thread only, once, on the boot CPU, after memory and before the
// tests; the queries are any context; poll_faults is any context the driver's drain_faults
// allows (any).
#pragma once

#include "dmakit/dma_op.h"
#include "dmakit/iommu.h"
#include "dmakit/iommu_unit.h"
#include "testkernel/kernel_env.h"

class PciDevice;

namespace iommu {

// Turns the IOMMU on when the command line says iommu=on (see above). Returns whether devices
// now translate through it.
bool setup(const KernelEnv& env);

// Whether setup() turned the IOMMU on.
bool active();
// Its negation, for KTEST_WHEN: the tests of the platform's direct and bounce paths (statistics
// of KernelDmaOp, bounce decisions, pages all free) describe a boot without an IOMMU, where
// devices take those paths.
inline bool inactive() {
  return !active();
}
// The unit, or null when not active.
IommuUnit* unit();
// The domain translating PCI function `bdf` (bus << 8 | device << 3 | function), or null.
IommuDomain* domain_of(uint16_t bdf);
// The requester id of `bdf` as the IOMMU sees it (arch::iommu_device_id).
uint32_t device_id_of(uint16_t bdf);
// bus << 8 | device << 3 | function of a PCI function.
uint16_t bdf_of(const PciDevice* dev);
// The DmaOp for a DeviceDma of `dev`: its domain when translated, else the platform's.
DmaOp* dma_op_for(const PciDevice* dev);

// Drains the unit's recorded faults, printing each ("iommu: fault: 00:02.0 iova 0x.. write:
// not mapped"); copies up to `max` of them into `out` (may be null). Returns how many were
// drained (0 when not active).
size_t poll_faults(IommuFault* out = nullptr, size_t max = 0);

}  // namespace iommu
