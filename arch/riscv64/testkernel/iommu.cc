// The IOMMU part of this arch port (testkernel/iommu_arch.h). This port has no IOMMU driver yet:
// with iommu=on it says so and the system stays on the direct path.
#include "testkernel/iommu_arch.h"
#include "testkernel/kprintf.h"

namespace arch {

IommuUnit* iommu_init(const BootInfo&) {
  kprintf("iommu: no IOMMU driver in this port; devices use the direct path\n");
  return nullptr;
}

uint32_t iommu_device_id(uint16_t bdf) { return bdf; }

size_t iommu_msi_pages(PhysAddr*, size_t) { return 0; }

}  // namespace arch
