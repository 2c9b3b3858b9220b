// Riscv64Platform: what the RISC-V 64 port learns at boot and the machine pieces it drives on
// QEMU virt under OpenSBI: the Sv39 page table, the NS16550 console, the SiFive test finisher,
// the time CSR and the Zicbom cache-block operations.
//
// Memory layout (virtual):
//   0xFFFF'FFC0'0000'0000 + p   the direct map: physical address p, for all RAM the device tree
//                               describes (normal memory, PBMT = PMA) and for the devices
//                               (PBMT = IO when Svpbmt is present): physical 0 .. the 1 GiB
//                               boundary below RAM (UART, test finisher, PLIC, PCIe ECAM, PIO and
//                               32-bit MMIO window on QEMU virt) and every window a PCIe host
//                               bridge's "ranges" describes (the 64-bit MMIO window above RAM).
//                               The kernel image is linked in it too (linker/riscv64.ld).
//                               Left out: reserved-memory marked "no-map" (OpenSBI's regions,
//                               which PMP closes to S-mode anyway) and the guard page under the
//                               boot stack.
//   lower half                  unmapped after boot (the identity map only lives in the boot page
//                               table, for the instruction that turns paging on).
// Sv39 reaches physical addresses below 256 GiB through this map; boot fails clearly otherwise.
#pragma once

#include "arch/riscv64/testkernel/ns16550.h"
#include "arch/riscv64/testkernel/sv39_page_table.h"
#include "dmakit/arch/riscv64_dma_op.h"
#include "testkernel/arch.h"
#include "testkernel/fdt.h"

namespace riscv {

class Riscv64Platform {
 public:
  static constexpr uintptr_t kDirectMapOffset = Sv39PageTable::kUpperHalfBase;
  // Physical addresses the direct map can hold: the upper half of Sv39, 256 GiB.
  static constexpr uint64_t kDirectMapSpan = 1ull << 38;
  static constexpr size_t kTablePoolPages = 32;
  // Unmapped pieces of RAM: the boot stack's guard page and the no-map reserved ranges.
  static constexpr size_t kMaxHoles = 16;

  constexpr Riscv64Platform() = default;
  Riscv64Platform(const Riscv64Platform&) = delete;
  Riscv64Platform& operator=(const Riscv64Platform&) = delete;

  // Called once from boot.S on the boot hart, with the boot page table active: reads the device
  // tree, builds and installs the kernel page table, probes the cache-block instructions, prints
  // what it found and enters kernel_main. Panics (readable message, failing exit) when the device
  // tree is missing or describes something the port cannot run on.
  [[noreturn]] void boot(uint64_t hartid, uint64_t dtb_phys);

  // Safe in trap and panic context, with interrupts off.
  void console_putc(char c) { uart_.putc(c); }
  [[noreturn]] void exit(bool success);
  uint64_t now_ns() const;

  uint64_t boot_hart() const { return hartid_; }
  uint64_t timebase_hz() const { return timebase_hz_; }
  const Riscv64DmaOp::CacheOps& cache_ops() const { return cache_ops_; }
  const char* cache_features() const { return cache_features_; }
  // PBMT memory type name of the leaf mapping `va` in the active page table, or null if unmapped.
  const char* mapping_attribute(const void* va) const;

  // arch::mmio_map for RISC-V: device memory is reached through the direct map (physical p at
  // p + kDirectMapOffset) with PBMT=IO; a range the boot code did not map is mapped now.
  // Errors: kInvalidArgument (size 0, wraps, overlaps RAM), kNotSupported (beyond the 256 GiB
  // direct map), kNoMemory (table pool exhausted). Boot hart only; not from interrupt context.
  Result<volatile void*> mmio_map(PhysAddr base, uint64_t size);

 private:
  void read_cpu_features();
  void find_devices();
  // Fills `holes` (kMaxHoles entries) with the page-rounded ranges of RAM the direct map leaves
  // out, sorted by base; returns how many.
  size_t collect_holes(PhysRange* holes) const;
  void build_page_table();
  void map_or_panic(PhysAddr pa, uint64_t size, MemType type, const char* what);
  void probe_cache_ops();
  void fill_boot_info(uint64_t dtb_phys);
  void print_summary() const;

  Fdt fdt_;
  Ns16550 uart_;
  uintptr_t finisher_va_ = 0;
  uint64_t hartid_ = 0;
  uint64_t boot_ticks_ = 0;
  uint64_t timebase_hz_ = 0;
  bool svpbmt_ = false;
  bool zicbom_in_isa_ = false;
  const char* isa_ = nullptr;
  Riscv64DmaOp::CacheOps cache_ops_;
  PhysRange uart_regs_;
  unsigned uart_reg_shift_ = 0;
  PhysRange finisher_regs_;
  Sv39PageTable page_table_;
  arch::BootInfo info_;
  char cache_features_[128] = {};
};

// The one instance (static storage, constant-initialized).
Riscv64Platform& platform();

}  // namespace riscv
