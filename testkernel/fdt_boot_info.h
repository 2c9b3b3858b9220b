// Filling arch::BootInfo from a flattened device tree: the part of boot that is the same on every
// device-tree architecture (aarch64, riscv64).
#pragma once

#include "dmakit/support/result.h"
#include "testkernel/arch.h"
#include "testkernel/fdt.h"

// Fills info->ram (the /memory nodes), appends to info->reserved the /memreserve/ entries, the
// /reserved-memory children with a "reg", and the blob itself ([fdt_phys, fdt_phys +
// total_size)), and sets info->cmdline (/chosen bootargs, pointing into the blob), info->fdt
// (= fdt.blob()) and info->num_cpus (at least 1).
// Preconditions: `fdt` reads the blob through an address that stays valid for as long as
// info->cmdline and info->fdt are used (the direct map, typically). The arch adds its own
// reserved ranges (kernel image, page tables, stacks) before or after.
// Errors: kNotFound (no memory node), kNoMemory (more ranges than BootInfo holds).
Result<void> boot_info_from_fdt(const Fdt& fdt, PhysAddr fdt_phys, arch::BootInfo* info);

// Appends one reserved range. Errors: kNoMemory (BootInfo's table is full).
Result<void> boot_info_add_reserved(arch::BootInfo* info, PhysAddr base, uint64_t size);
