// The x86-64 port's VT-d discovery (ACPI DMAR), for its boot code and its in-VM tests: which unit
// arch::iommu_init (testkernel/iommu_arch.h) enabled and what the firmware described.
#pragma once

#include "arch/x86_64/testkernel/acpi.h"
#include "dmakit/arch/vtd.h"
#include "dmakit/support/types.h"

namespace x86 {

// The unit arch::iommu_init enabled, or null (not called, no DMAR, or it failed). Any context.
VtdUnit* vtd_unit();

// The DMAR table as parsed by arch::iommu_init (null before, or when there was none).
const DmarInfo* vtd_dmar();

// The requester-id ranges a DMAR device scope stands for, resolved by walking the scope's path
// through the bridges' configuration space: an endpoint is its own id; a PCI sub-hierarchy is the
// bridge's id and, as a second range, every id of its secondary to subordinate buses. Stores up
// to two ranges in out[0..1] and returns how many; 0 for scopes that are not PCI devices (I/O
// APIC, HPET, ACPI namespace) or whose path leads nowhere.
size_t vtd_scope_ids(const DmarInfo::Scope& scope, VtdUnit::IdRange out[2]);

// Turns the unit off again and forgets it (translation off, tables freed), so that a later
// arch::iommu_init may enable it afresh. For in-VM tests that enabled the unit themselves on a
// kernel whose boot did not. Boot CPU, thread context, no DMA of a covered device in flight.
// False when the unit did not turn translation off (it stays the enabled unit).
bool vtd_shutdown();

}  // namespace x86
