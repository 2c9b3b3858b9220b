// The I/O part of the contract between the test kernel and one architecture: reaching device
// registers (memory-mapped and, on x86, port-mapped), ordering them against DMA memory, and
// finding a PCI host bridge on machines without a device tree.
//
// Each arch/<arch>/arch_io.cc defines every function declared here. Drivers reach device
// registers through drivers/pci/mmio.h, which is built on these functions; nothing outside arch/
// knows which architecture it runs on.
#pragma once

#include "dmakit/support/addr.h"
#include "dmakit/support/result.h"
#include "dmakit/support/types.h"

namespace arch {

// Returns a CPU virtual address at which the device memory [base, base + size) is mapped
// uncached and strongly ordered (Device-nGnRE on AArch64, PBMT=IO on RISC-V, UC on x86-64),
// mapping it first if the boot code did not. The mapping stays for the life of the kernel.
// Preconditions: size > 0; the range is device memory (never RAM).
// Errors: kInvalidArgument (size 0, range wraps, overlaps RAM or an incompatible mapping),
// kNotSupported (the address space cannot reach the range), kNoMemory (no page-table memory).
// Not for interrupt context (may update page tables).
Result<volatile void*> mmio_map(PhysAddr base, uint64_t size);

// Barriers between DMA memory (streaming buffers, coherent memory) and device registers, in the
// sense of Linux's wmb/rmb/mb. Safe anywhere, including with interrupts off.
//   io_wmb: every earlier CPU write to memory is visible to devices before any later MMIO write
//           (e.g. ring entries before the doorbell).
//   io_rmb: every earlier MMIO read or read of device-written memory completes before any later
//           memory read (e.g. a used-ring index before the entries it covers).
//   io_mb:  both, and also orders earlier writes against later reads.
void io_wmb();
void io_rmb();
void io_mb();

// x86 port I/O. Architectures without an I/O port space return kNotSupported. Safe with
// interrupts off.
Result<uint32_t> port_in(uint16_t port, unsigned width);  // width 1, 2 or 4 bytes.
Result<void> port_out(uint16_t port, uint32_t value, unsigned width);

// One address window of a PCI host bridge: CPU addresses [cpu_base, cpu_base + size) reach bus
// addresses [bus_base, bus_base + size).
struct PciHostWindow {
  enum class Kind : uint8_t { kIo, kMem32, kMem64 };
  Kind kind = Kind::kMem32;
  bool prefetchable = false;
  PhysAddr cpu_base;
  uint64_t bus_base = 0;
  uint64_t size = 0;
};

// A PCI host bridge the architecture knows of without a device tree.
struct PciHostDesc {
  static constexpr size_t kMaxWindows = 4;
  // ECAM region (size 0: none; then config space is reached through ports 0xCF8/0xCFC).
  PhysRange ecam;
  // Bus numbers decoded by the ECAM (or reachable through ports).
  uint8_t bus_start = 0;
  uint8_t bus_end = 0;
  PciHostWindow windows[kMaxWindows];
  size_t num_windows = 0;
  // What the description is based on, for the boot report.
  const char* source = "";
};

// Describes the machine's PCI host bridge when the firmware gives no device tree (x86 q35: the
// MCH's PCIEXBAR register read through ports 0xCF8/0xCFC, and the chipset's 32-bit PCI hole).
// Errors: kNotSupported (this architecture finds PCI through the device tree), kNotFound (no host
// bridge answered). Call after boot; not from interrupt context.
Result<PciHostDesc> pci_host_fallback();

}  // namespace arch
