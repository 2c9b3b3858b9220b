// testkernel/arch_io.h for AArch64 (QEMU virt): MMIO lives in the identity map (TTBR0) as
// Device-nGnRE; the boot code maps every region the device tree describes, this maps the rest on
// demand. There is no I/O port space, and PCI is always found through the device tree.
#include "testkernel/arch_io.h"

#include "arch/aarch64/testkernel/mmu.h"
#include "dmakit/support/bitops.h"

namespace arch {

namespace {
constexpr uint64_t kPage = 4096;
}  // namespace

Result<volatile void*> mmio_map(PhysAddr base, uint64_t size) {
  if (size == 0 || support::add_overflows(base.value(), size)) return ErrorCode::kInvalidArgument;
  uint64_t lo = support::align_down(base.value(), kPage);
  uint64_t hi = support::align_up(base.value() + size, kPage);
  if (lo == 0 || hi > (1ull << 48)) return ErrorCode::kNotSupported;
  bool changed = false;
  for (uint64_t p = lo; p < hi; p += kPage) {
    aarch64::MemAttr attr;
    uint64_t pa = 0;
    if (aarch64::mmu_lookup(p, &attr, &pa)) {
      // Already identity-mapped: must be device memory (the kernel image and the device tree
      // blob are the only Normal memory in the identity map).
      if (pa != p ||
          (attr != aarch64::MemAttr::kDevice && attr != aarch64::MemAttr::kDeviceStrict)) {
        return ErrorCode::kInvalidArgument;
      }
      continue;
    }
    // RAM is in the direct map: never map it as a device.
    if (aarch64::mmu_lookup(aarch64::kDirectMapBase + p, &attr, &pa)) {
      return ErrorCode::kInvalidArgument;
    }
    TRY(aarch64::mmu_map(aarch64::Space::kIdentity, p, p, kPage, aarch64::MemAttr::kDevice, false));
    changed = true;
  }
  if (changed) aarch64::mmu_sync();
  return reinterpret_cast<volatile void*>(static_cast<uintptr_t>(base.value()));
}

// dsb rather than dmb: the observers are devices, outside the inner-shareable domain.
void io_wmb() {
  __asm__ volatile("dsb st" ::: "memory");
}
void io_rmb() {
  __asm__ volatile("dsb ld" ::: "memory");
}
void io_mb() {
  __asm__ volatile("dsb sy" ::: "memory");
}

}  // namespace arch
