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

}  // namespace x86
