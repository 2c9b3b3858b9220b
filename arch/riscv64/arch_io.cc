// arch/arch_io.h for RISC-V 64 (QEMU virt): the boot code maps every device region (the low
// device window, and each PCIe host bridge's ECAM and windows) in the direct map with PBMT=IO;
// mmio_map checks that the range is there and returns its address. There is no I/O port space,
// and PCI is always found through the device tree.
#include "arch/arch_io.h"

#include "arch/riscv64/riscv64_platform.h"
#include "arch/riscv64/sv39_page_table.h"
#include "support/bitops.h"

namespace arch {

namespace {
constexpr uint64_t kPage = 4096;
}  // namespace

Result<volatile void*> mmio_map(PhysAddr base, uint64_t size) {
  if (size == 0 || support::add_overflows(base.value(), size)) return ErrorCode::kInvalidArgument;
  constexpr uintptr_t kOffset = riscv::Riscv64Platform::kDirectMapOffset;
  if (base.value() + size > riscv::Riscv64Platform::kDirectMapSpan) return ErrorCode::kNotSupported;
  uint64_t p = support::align_down(base.value(), kPage);
  uint64_t hi = support::align_up(base.value() + size, kPage);
  while (p < hi) {
    auto leaf = riscv::Sv39PageTable::walk_active(p + kOffset, kOffset);
    // Not mapped at boot: this port maps devices only from the device tree.
    if (!leaf.ok()) return ErrorCode::kNotSupported;
    // The direct map puts every physical address at the same offset, so a leaf elsewhere means
    // a broken table. Memory type: IO with Svpbmt; without it PBMT stays 0 everywhere and the
    // PMAs make device regions I/O, so RAM cannot be told apart here (callers pass only ranges
    // from the device tree's device nodes).
    if (leaf->pa.value() != p || leaf->type() == riscv::MemType::kNonCacheable) {
      return ErrorCode::kInvalidArgument;
    }
    uint64_t leaf_size = riscv::Sv39PageTable::kPageSize << (9 * leaf->level);
    p = support::align_down(p, leaf_size) + leaf_size;
  }
  return reinterpret_cast<volatile void*>(static_cast<uintptr_t>(base.value()) + kOffset);
}

// Device (I) and memory (R/W) accesses ordered as Linux's RISC-V wmb/rmb/mb.
void io_wmb() {
  __asm__ volatile("fence w, o" ::: "memory");
}
void io_rmb() {
  __asm__ volatile("fence i, r" ::: "memory");
}
void io_mb() {
  __asm__ volatile("fence iorw, iorw" ::: "memory");
}

Result<uint32_t> port_in(uint16_t, unsigned) {
  return ErrorCode::kNotSupported;
}
Result<void> port_out(uint16_t, uint32_t, unsigned) {
  return ErrorCode::kNotSupported;
}

Result<PciHostDesc> pci_host_fallback() {
  return ErrorCode::kNotSupported;
}

}  // namespace arch
