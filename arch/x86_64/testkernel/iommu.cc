// The IOMMU part of the x86-64 port (testkernel/iommu_arch.h): the VT-d unit of the ACPI DMAR
// table, run by VtdUnit (dmakit/arch/vtd.h).
//
// One unit is driven: the first DRHD of PCI segment 0 (QEMU's q35 describes one, with
// INCLUDE_PCI_ALL). Other units are reported and left off, and the devices they cover keep the
// direct path: VtdUnit::covers() answers for the driven unit's scope only. RMRRs (memory a
// device keeps using for the firmware) are reported; devices they name need that range mapped
// one to one in their domain, which this kernel does not do, so the boot line says so.
#include "arch/x86_64/testkernel/pvh.h"
#include "arch/x86_64/testkernel/vtd_platform.h"
#include "arch/x86_64/testkernel/x86_64_platform.h"
#include "testkernel/arch_io.h"
#include "testkernel/iommu_arch.h"
#include "testkernel/kernel_env.h"
#include "testkernel/kprintf.h"

namespace x86 {
namespace {

constinit VtdUnit g_vtd;
constinit DmarInfo g_dmar;
bool g_have_dmar = false;
bool g_enabled = false;

constexpr uint8_t kScopeEndpoint = 1;
constexpr uint8_t kScopeSubHierarchy = 2;

// Configuration dword `off` of bus:dev.fn through the PC's ports 0xCF8 / 0xCFC (every q35 has
// them, and this runs before the PCI enumeration is needed). ~0 on failure.
uint32_t config_read32(uint8_t bus, uint8_t dev, uint8_t fn, uint32_t off) {
  const uint32_t addr = 0x8000'0000u | (uint32_t{bus} << 16) | (uint32_t{dev & 0x1Fu} << 11) |
                        (uint32_t{fn & 7u} << 8) | (off & 0xFCu);
  if (!arch::port_out(0xCF8, addr, 4).ok()) return ~0u;
  auto v = arch::port_in(0xCFC, 4);
  return v.ok() ? *v : ~0u;
}

uint64_t now() {
  return arch::now_ns();
}

}  // namespace

size_t vtd_scope_ids(const DmarInfo::Scope& scope, VtdUnit::IdRange out[2]) {
  if ((scope.type != kScopeEndpoint && scope.type != kScopeSubHierarchy) || scope.path_len == 0) {
    return 0;
  }
  uint8_t bus = scope.start_bus;
  // Every step but the last is a bridge: its secondary bus is where the next step lives.
  for (size_t i = 0; i + 1 < scope.path_len; ++i) {
    const uint32_t buses = config_read32(bus, scope.device[i], scope.function[i], 0x18);
    if (buses == ~0u) return 0;
    bus = static_cast<uint8_t>(buses >> 8);
  }
  const uint8_t dev = scope.device[scope.path_len - 1];
  const uint8_t fn = scope.function[scope.path_len - 1];
  const auto id = static_cast<uint16_t>(bus << 8 | (dev & 0x1F) << 3 | (fn & 7));
  out[0] = VtdUnit::IdRange{id, id};
  if (scope.type == kScopeEndpoint) return 1;
  const uint32_t buses = config_read32(bus, dev, fn, 0x18);
  if (buses == ~0u) return 0;
  const auto secondary = static_cast<uint8_t>(buses >> 8);
  const auto subordinate = static_cast<uint8_t>(buses >> 16);
  if (secondary == 0 || subordinate < secondary) return 1;  // no buses assigned below it
  out[1] = VtdUnit::IdRange{static_cast<uint16_t>(secondary << 8),
                            static_cast<uint16_t>(subordinate << 8 | 0xFF)};
  return 2;
}

VtdUnit* vtd_unit() {
  // The generic glue may have turned the unit off again (IommuUnit::disable).
  return g_enabled && g_vtd.enabled() ? &g_vtd : nullptr;
}

const DmarInfo* vtd_dmar() {
  return g_have_dmar ? &g_dmar : nullptr;
}

bool vtd_shutdown() {
  if (!g_vtd.disable()) return false;
  g_enabled = false;
  return true;
}

}  // namespace x86

namespace arch {

IommuUnit* iommu_init(const BootInfo&) {
  using x86::g_dmar;
  using x86::g_vtd;
  if (x86::vtd_unit() != nullptr) return &g_vtd;
  x86::g_have_dmar = x86::acpi_dmar_info(x86::pvh_info().rsdp_phys, &g_dmar);
  if (!x86::g_have_dmar || g_dmar.num_units == 0) {
    kprintf("iommu: no VT-d unit in the ACPI tables (no DMAR%s); devices use the direct path\n",
            x86::g_have_dmar ? " DRHD" : " table");
    return nullptr;
  }
  const x86::DmarInfo::Unit* unit = nullptr;
  for (size_t i = 0; i < g_dmar.num_units; ++i) {
    if (g_dmar.units[i].segment == 0 && unit == nullptr) {
      unit = &g_dmar.units[i];
    } else {
      kprintf(
          "iommu: vt-d unit at %#llx (segment %u) not driven; its devices use the direct "
          "path\n",
          static_cast<unsigned long long>(g_dmar.units[i].base), g_dmar.units[i].segment);
    }
  }
  if (unit == nullptr) {
    kprintf("iommu: no VT-d unit for PCI segment 0; devices use the direct path\n");
    return nullptr;
  }
  VtdUnit::Config cfg;
  cfg.regs_phys = PhysAddr(unit->base);
  cfg.include_pci_all = unit->include_pci_all;
  for (size_t i = 0; i < unit->num_scopes; ++i) {
    VtdUnit::IdRange r[2];
    const size_t n = x86::vtd_scope_ids(unit->scopes[i], r);
    for (size_t j = 0; j < n && cfg.num_scopes < VtdUnit::kMaxScopes; ++j) {
      cfg.scopes[cfg.num_scopes++] = r[j];
    }
  }
  cfg.pfa = kernel_env().pfa;
  cfg.now_ns = &x86::now;
  auto regs = mmio_map(PhysAddr(unit->base), unit->size);
  if (!regs.ok()) {
    kprintf(
        "iommu: vt-d at %#llx: cannot map its registers (error %d); devices use the direct "
        "path\n",
        static_cast<unsigned long long>(unit->base), static_cast<int>(regs.code()));
    return nullptr;
  }
  cfg.regs = *regs;
  auto r = g_vtd.init(cfg);
  if (!r.ok()) {
    kprintf(
        "iommu: vt-d at %#llx failed to initialise (error %d, cap %#llx ecap %#llx); devices "
        "use the direct path\n",
        static_cast<unsigned long long>(unit->base), static_cast<int>(r.code()),
        static_cast<unsigned long long>(g_vtd.cap()),
        static_cast<unsigned long long>(g_vtd.ecap()));
    return nullptr;
  }
  x86::g_enabled = true;
  char scope_text[48];
  ksnprintf(scope_text, sizeof(scope_text), "the %zu PCI device scope(s) of its DRHD",
            cfg.num_scopes);
  kprintf(
      "iommu: vt-d %u.%u at %#llx: %u-level tables, %u-bit I/O addresses, %u domains, "
      "caching mode %s, %s table walks, %s invalidation; translates %s\n",
      (g_vtd.version() >> 4) & 0xF, g_vtd.version() & 0xF,
      static_cast<unsigned long long>(unit->base), g_vtd.format().levels, g_vtd.iova_bits(),
      g_vtd.max_domains(), g_vtd.caching_mode() ? "on" : "off",
      g_vtd.format().coherent_walk ? "coherent" : "non-coherent",
      g_vtd.queued_invalidation() ? "queued" : "register",
      unit->include_pci_all ? "every PCI device of segment 0" : scope_text);
  for (size_t i = 0; i < g_dmar.num_rmrrs; ++i) {
    const x86::DmarInfo::Rmrr& rm = g_dmar.rmrrs[i];
    kprintf("iommu: vt-d RMRR [%#llx, %#llx] for %zu device(s): not mapped into their domains\n",
            static_cast<unsigned long long>(rm.base), static_cast<unsigned long long>(rm.limit),
            rm.num_scopes);
  }
  if (g_dmar.truncated) kprintf("iommu: vt-d: the DMAR table has more entries than parsed\n");
  return &g_vtd;
}

uint32_t iommu_device_id(uint16_t bdf) {
  return bdf;
}

// VT-d does not translate the interrupt address range (0xFEE0_0000 - 0xFEEF_FFFF): MSIs reach
// the local APICs without a mapping.
size_t iommu_msi_pages(PhysAddr*, size_t) {
  return 0;
}

}  // namespace arch
