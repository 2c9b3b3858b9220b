// The AArch64 port's IOMMU (testkernel/iommu_arch.h): the SMMUv3 of QEMU virt
// (`-M virt,iommu=smmuv3`), found in the device tree ("arm,smmu-v3" and the PCI host bridge's
// iommu-map), run by the library's Smmuv3 driver (dmakit/arch/smmuv3.h).
#pragma once

#include "dmakit/arch/smmuv3.h"
#include "dmakit/support/types.h"
#include "testkernel/arch.h"

namespace aarch64 {

// One entry of the PCI host bridge's iommu-map: requester ids [rid_base, rid_base + length) reach
// the SMMU as StreamIDs [sid_base, sid_base + length).
struct IommuMapEntry {
  uint32_t rid_base = 0;
  uint32_t sid_base = 0;
  uint32_t length = 0;
};

// What the device tree says about the SMMU (present = false: no enabled "arm,smmu-v3" node).
struct SmmuDescription {
  bool present = false;
  PhysRange regs;
  bool dma_coherent = false;
  uint32_t phandle = 0;
  IommuMapEntry map[Smmuv3::kMaxStreamRanges];
  size_t map_entries = 0;
  uint32_t map_mask = 0xFFFF;  // iommu-map-mask (requester-id bits that take part)
};

// Reads the description from the boot device tree. Errors: kInvalidArgument (a malformed node or
// iommu-map), kNotFound (no device tree).
Result<SmmuDescription> smmu_describe(const arch::BootInfo& info);

// The unit arch::iommu_init brought up, or null (not called yet, no SMMU, or it failed).
Smmuv3* smmu();

// The StreamID arch::iommu_device_id returns for a requester id outside every iommu-map entry
// (no Smmuv3 covers it).
constexpr uint32_t kNoStreamId = 0xFFFF'FFFFu;

}  // namespace aarch64
