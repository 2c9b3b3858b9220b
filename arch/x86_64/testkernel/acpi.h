// Just enough ACPI to find the CPUs the firmware describes: RSDP -> XSDT (or RSDT) -> MADT,
// counting enabled Local APIC and Local x2APIC entries. Tables are read through the direct map
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

}  // namespace x86
