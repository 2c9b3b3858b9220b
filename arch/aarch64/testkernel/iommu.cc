// The IOMMU part of the AArch64 port (testkernel/iommu_arch.h, arch/aarch64/testkernel/iommu.h):
// device-tree discovery of the SMMUv3 and the PCI host bridge's iommu-map, the driver's set-up,
// and the MSI doorbell pages every domain must map (the SMMU translates MSI writes like any other
// DMA: a device behind it reaches the GIC ITS's GITS_TRANSLATER, or a GICv2m frame, only through
// its page tables).
#include "arch/aarch64/testkernel/iommu.h"

#include "testkernel/arch_io.h"
#include "testkernel/fdt.h"
#include "testkernel/iommu_arch.h"
#include "testkernel/kernel_env.h"
#include "testkernel/kprintf.h"

namespace {

constinit Smmuv3 g_smmu;
bool g_smmu_up = false;
bool g_init_done = false;
aarch64::SmmuDescription g_desc;

// GITS_TRANSLATER lies in the ITS's second 64 KiB frame (translation register page).
constexpr uint64_t kItsTranslaterPage = 0x10000;

}  // namespace

namespace aarch64 {

Result<SmmuDescription> smmu_describe(const arch::BootInfo& info) {
  if (info.fdt == nullptr) return ErrorCode::kNotFound;
  TRY_ASSIGN(Fdt fdt, Fdt::from(info.fdt));
  SmmuDescription d;
  FdtNode n = fdt.find_compatible("arm,smmu-v3");
  while (n.valid() && !fdt.is_enabled(n)) n = fdt.find_compatible("arm,smmu-v3", n);
  if (!n.valid()) return d;
  d.present = true;
  TRY_ASSIGN(d.regs, fdt.reg(n, 0));
  d.dma_coherent = fdt.has_prop(n, "dma-coherent");
  auto ph = fdt.prop_u32(n, "phandle");
  if (ph.ok()) d.phandle = *ph;

  // iommu-map = <rid-base  iommu-phandle  iommu-base  length>... (one specifier cell: the SMMU's
  // #iommu-cells is 1), on the PCI host bridge.
  FdtNode host = fdt.find_compatible("pci-host-ecam-generic");
  if (!host.valid()) return d;
  FdtProp map = fdt.prop(host, "iommu-map");
  if (!map.found()) return d;
  if (map.len % 16 != 0) return ErrorCode::kInvalidArgument;
  auto mask = fdt.prop_u32(host, "iommu-map-mask");
  if (mask.ok()) d.map_mask = *mask;
  for (uint32_t off = 0; off < map.len; off += 16) {
    const uint32_t phandle = Fdt::be32(map.data + off + 4);
    if (d.phandle != 0 && phandle != d.phandle) continue;
    if (d.map_entries == Smmuv3::kMaxStreamRanges) return ErrorCode::kInvalidArgument;
    IommuMapEntry& e = d.map[d.map_entries++];
    e.rid_base = Fdt::be32(map.data + off);
    e.sid_base = Fdt::be32(map.data + off + 8);
    e.length = Fdt::be32(map.data + off + 12);
  }
  return d;
}

Smmuv3* smmu() {
  return g_smmu_up ? &g_smmu : nullptr;
}

}  // namespace aarch64

namespace arch {

IommuUnit* iommu_init(const BootInfo& info) {
  if (g_init_done) return aarch64::smmu();
  g_init_done = true;
  auto desc = aarch64::smmu_describe(info);
  if (!desc.ok()) {
    kprintf(
        "iommu: unreadable SMMU description in the device tree (%s); devices use the direct "
        "path\n",
        error_code_name(desc.code()));
    return nullptr;
  }
  g_desc = *desc;
  if (!g_desc.present) {
    kprintf("iommu: no SMMUv3 in the device tree; devices use the direct path\n");
    return nullptr;
  }
  const uint64_t base = g_desc.regs.base.value();
  if (g_desc.map_entries == 0) {
    kprintf(
        "iommu: smmuv3 at 0x%llx translates no PCI requester (no iommu-map); devices use the "
        "direct path\n",
        static_cast<unsigned long long>(base));
    return nullptr;
  }
  if (g_desc.regs.size < Smmuv3::kRegisterFrameSize) {
    kprintf(
        "iommu: smmuv3 at 0x%llx: register frame of %llu bytes is too small; devices use the "
        "direct path\n",
        static_cast<unsigned long long>(base), static_cast<unsigned long long>(g_desc.regs.size));
    return nullptr;
  }
  auto regs = mmio_map(g_desc.regs.base, Smmuv3::kRegisterFrameSize);
  if (!regs.ok()) {
    kprintf(
        "iommu: smmuv3 at 0x%llx: cannot map its registers (%s); devices use the direct "
        "path\n",
        static_cast<unsigned long long>(base), error_code_name(regs.code()));
    return nullptr;
  }
  const KernelEnv& env = kernel_env();
  Smmuv3::Config cfg;
  cfg.regs = *regs;
  cfg.pfa = env.pfa;
  cfg.coherent = g_desc.dma_coherent;
  cfg.cache = env.dma;
  for (size_t i = 0; i < g_desc.map_entries; ++i) {
    cfg.streams[i] = Smmuv3::StreamRange{g_desc.map[i].sid_base, g_desc.map[i].length};
  }
  cfg.num_streams = g_desc.map_entries;
  Result<void> r = g_smmu.init(cfg);
  if (!r.ok()) {
    kprintf(
        "iommu: smmuv3 at 0x%llx failed to initialise: %s (%s); it is off and devices use "
        "the direct path\n",
        static_cast<unsigned long long>(base), g_smmu.failure_reason(), error_code_name(r.code()));
    return nullptr;
  }
  g_smmu_up = true;
  const Smmuv3::Features& f = g_smmu.features();
  kprintf(
      "iommu: smmuv3 at 0x%llx: stage 1, %s stream table (%u-bit StreamIDs of %u), %u-bit "
      "ASIDs, %u-bit output, %s, cmdq %u, eventq %u; unattached streams abort\n",
      static_cast<unsigned long long>(base), f.two_level ? "2-level" : "linear", f.table_sid_bits,
      f.sid_bits, f.asid16 ? 16u : 8u, f.oas_bits,
      f.coherent ? "coherent" : "non-coherent (structures cleaned to memory)", f.cmdq_entries,
      f.eventq_entries);
  for (size_t i = 0; i < g_desc.map_entries; ++i) {
    const aarch64::IommuMapEntry& e = g_desc.map[i];
    kprintf("iommu: iommu-map: requester ids 0x%x..0x%x -> StreamIDs 0x%x..\n", e.rid_base,
            e.rid_base + e.length - 1, e.sid_base);
  }
  return &g_smmu;
}

uint32_t iommu_device_id(uint16_t bdf) {
  const uint32_t rid = bdf & g_desc.map_mask;
  for (size_t i = 0; i < g_desc.map_entries; ++i) {
    const aarch64::IommuMapEntry& e = g_desc.map[i];
    if (rid >= e.rid_base && rid - e.rid_base < e.length) return e.sid_base + (rid - e.rid_base);
  }
  return aarch64::kNoStreamId;
}

size_t iommu_msi_pages(PhysAddr* pages, size_t max) {
  const KernelEnv& env = kernel_env();
  if (env.boot == nullptr || env.boot->fdt == nullptr) return 0;
  auto fdt = Fdt::from(env.boot->fdt);
  if (!fdt.ok()) return 0;
  size_t n = 0;
  auto add = [&](uint64_t page) {
    if (n < max) pages[n] = PhysAddr(page & ~uint64_t{0xFFF});
    ++n;
  };
  for (FdtNode its = fdt->find_compatible("arm,gic-v3-its"); its.valid();
       its = fdt->find_compatible("arm,gic-v3-its", its)) {
    auto r = fdt->reg(its, 0);
    if (fdt->is_enabled(its) && r.ok()) add(r->base.value() + kItsTranslaterPage);
  }
  for (FdtNode v2m = fdt->find_compatible("arm,gic-v2m-frame"); v2m.valid();
       v2m = fdt->find_compatible("arm,gic-v2m-frame", v2m)) {
    auto r = fdt->reg(v2m, 0);
    if (fdt->is_enabled(v2m) && r.ok()) add(r->base.value());
  }
  return n < max ? n : max;
}

}  // namespace arch
