// Just enough ACPI to find the CPUs the firmware describes: RSDP -> XSDT (or RSDT) -> MADT,
// counting enabled Local APIC and Local x2APIC entries; and the DMA-remapping units (Intel VT-d)
// from the DMAR table. Tables are read through the direct map
// (paging.h maps [0, 1 MiB) and firmware-reserved low memory, where QEMU's firmware puts them)
// and every table's checksum and bounds are checked.
#pragma once

#include "dmakit/support/types.h"

namespace x86 {

// Number of enabled CPUs in the MADT, or 0 when there is no RSDP, no MADT, or a table fails its
// checks. Call after init_paging().
unsigned acpi_count_cpus(uint64_t rsdp_phys);

// The APIC ids of the enabled CPUs in the MADT, in table order, at most `max` of them; returns
// how many were stored (0 under the same conditions as acpi_count_cpus). Call after init_paging().
unsigned acpi_cpu_apic_ids(uint64_t rsdp_phys, uint32_t* ids, unsigned max);

// What the MADT says about interrupt controllers besides the local APICs.
struct MadtInterruptInfo {
  static constexpr size_t kMaxIoApics = 4;
  struct IoApic {
    uint8_t id = 0;
    uint64_t phys = 0;
    uint32_t gsi_base = 0;
  };
  IoApic ioapics[kMaxIoApics];
  size_t num_ioapics = 0;
  // MADT flag PCAT_COMPAT: the machine also has the two 8259 PICs, which must be masked.
  bool pcat_compat = false;
};

// Fills *out from the MADT. False when there is no RSDP, no MADT, or a table fails its checks.
// Call after init_paging().
bool acpi_interrupt_info(uint64_t rsdp_phys, MadtInterruptInfo* out);

// What the DMAR table (Intel VT-d specification, chapter 8) describes: the remapping hardware
// units (DRHD) with their device scopes, and the reserved memory regions (RMRR) devices keep
// using (firmware-owned DMA such as USB legacy emulation).
struct DmarInfo {
  static constexpr size_t kMaxUnits = 4;
  static constexpr size_t kMaxScopes = 64;
  static constexpr size_t kMaxRmrrs = 8;
  static constexpr size_t kMaxPath = 4;

  // A device scope: a PCI endpoint (type 1), a PCI sub-hierarchy (2: a bridge and all below it),
  // an I/O APIC (3), an HPET (4) or an ACPI namespace device (5), reached from `start_bus` through
  // `path_len` (device, function) steps across bridges.
  struct Scope {
    uint8_t type = 0;
    uint8_t enumeration_id = 0;
    uint8_t start_bus = 0;
    uint8_t path_len = 0;
    uint8_t device[kMaxPath] = {};
    uint8_t function[kMaxPath] = {};
  };
  struct Unit {
    uint64_t base = 0;     // register base address
    uint64_t size = 4096;  // bytes of registers (the DRHD's size field, at least one page)
    uint16_t segment = 0;  // PCI segment
    bool include_pci_all = false;
    Scope scopes[kMaxScopes];
    size_t num_scopes = 0;
  };
  struct Rmrr {
    uint16_t segment = 0;
    uint64_t base = 0;
    uint64_t limit = 0;        // last byte
    Scope scopes[kMaxScopes];  // (parse_scopes fills both kinds up to kMaxScopes)
    size_t num_scopes = 0;
  };

  uint8_t host_address_width = 0;  // HAW + 1: DMA physical address bits
  uint8_t flags = 0;               // bit 0 INTR_REMAP, 1 X2APIC_OPT_OUT, 2 DMA_CTRL_PLATFORM_OPT_IN
  Unit units[kMaxUnits];
  size_t num_units = 0;
  Rmrr rmrrs[kMaxRmrrs];
  size_t num_rmrrs = 0;
  // More units, regions, scopes or path steps than the arrays hold were described (and dropped).
  bool truncated = false;
};

// Fills *out from the DMAR table. False when there is no RSDP, no DMAR table (the machine has no
// VT-d, or the firmware hides it), or it fails its checks. Call after init_paging().
bool acpi_dmar_info(uint64_t rsdp_phys, DmarInfo* out);

}  // namespace x86
