#include "testkernel/fdt_boot_info.h"

Result<void> boot_info_add_reserved(arch::BootInfo* info, PhysAddr base, uint64_t size) {
  if (info->num_reserved == arch::kMaxReserved) return ErrorCode::kNoMemory;
  info->reserved[info->num_reserved].base = base;
  info->reserved[info->num_reserved].size = size;
  ++info->num_reserved;
  return support::ok();
}

Result<void> boot_info_from_fdt(const Fdt& fdt, PhysAddr fdt_phys, arch::BootInfo* info) {
  size_t n = fdt.memory_ranges(info->ram, arch::kMaxMemRanges);
  if (n == 0) return ErrorCode::kNotFound;
  if (n > arch::kMaxMemRanges) return ErrorCode::kNoMemory;
  info->num_ram = n;

  size_t room = arch::kMaxReserved - info->num_reserved;
  size_t r = fdt.reserved_ranges(info->reserved + info->num_reserved, room);
  if (r > room) return ErrorCode::kNoMemory;
  info->num_reserved += r;
  TRY(boot_info_add_reserved(info, fdt_phys, fdt.total_size()));

  info->cmdline = fdt.bootargs();
  info->fdt = fdt.blob();
  unsigned cpus = fdt.cpu_count();
  info->num_cpus = cpus == 0 ? 1 : cpus;
  return support::ok();
}
