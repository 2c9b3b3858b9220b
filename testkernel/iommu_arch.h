// The contract between the test kernel's IOMMU glue (testkernel/iommu.{h,cc}) and each arch port:
// what only the architecture knows about its IOMMU (how the firmware describes it, which driver
// runs it, where MSIs are written). Each arch/<arch>/testkernel/ defines every function here.
#pragma once

#include "dmakit/iommu_unit.h"
#include "dmakit/support/addr.h"
#include "dmakit/support/types.h"
#include "testkernel/arch.h"

namespace arch {

// Finds the platform's IOMMU (SMMUv3 from the device tree on aarch64, the RISC-V IOMMU PCI
// function on riscv64, VT-d from the ACPI DMAR table on x86_64), initialises its driver and
// returns it, enabled and with every device it covers blocked until attached. Returns null,
// after printing one line saying why, when there is none or it failed to initialise; the system
// then stays on the direct path, never half-enabled. Called once, on the boot CPU, after the
// page-frame allocator and PCI enumeration, and only when the command line says iommu=on.
IommuUnit* iommu_init(const BootInfo& info);

// The requester id the IOMMU sees for PCI function `bdf` (bus << 8 | device << 3 | function),
// after the firmware's mapping (the device tree's iommu-map, the DMAR device scopes).
uint32_t iommu_device_id(uint16_t bdf);

// The pages a device writes to raise an MSI (the GIC ITS's GITS_TRANSLATER page, the IMSIC
// interrupt files; none on x86_64, where VT-d does not translate the interrupt range): each must
// be mapped device-writable at the same I/O address in every domain. Stores up to `max` page
// addresses and returns how many there are.
size_t iommu_msi_pages(PhysAddr* pages, size_t max);

}  // namespace arch
