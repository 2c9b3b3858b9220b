// testkernel/arch_io.h for x86-64 on QEMU q35.
//
// MMIO is reached through the direct map: the 32-bit PCI hole [0xB000'0000, 4 GiB) is mapped UC
// at boot (paging.h); anything else (64-bit BARs) is mapped UC on demand by map_device(). The
// PCI host bridge is the q35 MCH (00:00.0, 8086:29c0), found through the legacy configuration
// ports 0xCF8/0xCFC; its PCIEXBAR register (offset 0x60) gives the ECAM window.
//
// Barriers follow Linux's x86-64 wmb/rmb/mb (SFENCE/LFENCE/MFENCE): ordinary write-back stores
// are already ordered before a later UC store, but SFENCE also covers write-combining and
// non-temporal stores, and LFENCE keeps later loads from passing an earlier MMIO read.
#include "testkernel/arch_io.h"

#include "arch/x86_64/testkernel/cpu.h"
#include "arch/x86_64/testkernel/paging.h"
#include "arch/x86_64/testkernel/x86_64_platform.h"
#include "dmakit/support/spinlock.h"

namespace arch {
namespace {

constexpr uint64_t kPage = 4096;
// The direct map reaches physical addresses below 2^46 (kDirectMapBase + 64 TiB stays clear of
// the kernel image at the top of the address space).
constexpr uint64_t kMaxMmioPhys = 1ull << 46;

constexpr uint16_t kConfigAddress = 0xCF8;
constexpr uint16_t kConfigData = 0xCFC;
constexpr uint32_t kMchVendorDevice = 0x29C0'8086;  // Intel 82G33/Q35 DRAM controller.
constexpr uint8_t kPciexbar = 0x60;                 // 64-bit register.
constexpr uint64_t kPciexbarEnable = 1;
constexpr uint64_t kIoApicBase = 0xFEC0'0000;  // The 32-bit PCI hole ends here on q35.

support::SpinLock g_config_lock;

// Reads a 32-bit register of bus 0 through the configuration ports.
uint32_t config_read32(uint8_t dev, uint8_t fn, uint8_t offset) {
  support::Guard guard{&g_config_lock};
  x86::outl(kConfigAddress, 0x8000'0000u | static_cast<uint32_t>(dev) << 11 |
                                static_cast<uint32_t>(fn) << 8 | (offset & 0xFCu));
  return x86::inl(kConfigData);
}

// Top of the low RAM block: the end of the highest memory-map entry below the PCI hole (RAM or
// firmware-reserved RAM such as SeaBIOS's tables), which is where q35 starts the hole.
uint64_t low_memory_top() {
  const x86::PvhInfo& pvh = x86::pvh_info();
  uint64_t top = 0;
  for (size_t i = 0; i < pvh.num_memmap; ++i) {
    const x86::MemmapEntry& m = pvh.memmap[i];
    const uint64_t end = m.addr + m.size;
    if (end <= x86::kMmioWindowBase && end > top) top = end;
  }
  return top;
}

void add_window(PciHostDesc* d, PciHostWindow::Kind kind, uint64_t lo, uint64_t hi) {
  if (lo >= hi || d->num_windows == PciHostDesc::kMaxWindows) return;
  PciHostWindow& w = d->windows[d->num_windows++];
  w.kind = kind;
  w.prefetchable = false;
  w.cpu_base = PhysAddr(lo);
  w.bus_base = lo;  // No translation between CPU and PCI addresses on q35.
  w.size = hi - lo;
}

}  // namespace

Result<volatile void*> mmio_map(PhysAddr base, uint64_t size) {
  if (size == 0 || base.value() + size < base.value()) return ErrorCode::kInvalidArgument;
  if (base.value() + size > kMaxMmioPhys) return ErrorCode::kNotSupported;
  TRY_ASSIGN(void* va, x86::map_device(base, size, x86::MemType::kUncached));
  return static_cast<volatile void*>(va);
}

void io_wmb() {
  __asm__ volatile("sfence" ::: "memory");
}
void io_rmb() {
  __asm__ volatile("lfence" ::: "memory");
}
void io_mb() {
  __asm__ volatile("mfence" ::: "memory");
}

Result<uint32_t> port_in(uint16_t port, unsigned width) {
  switch (width) {
    case 1:
      return static_cast<uint32_t>(x86::inb(port));
    case 2:
      return static_cast<uint32_t>(x86::inw(port));
    case 4:
      return x86::inl(port);
    default:
      return ErrorCode::kInvalidArgument;
  }
}

Result<void> port_out(uint16_t port, uint32_t value, unsigned width) {
  switch (width) {
    case 1:
      x86::outb(port, static_cast<uint8_t>(value));
      return {};
    case 2:
      x86::outw(port, static_cast<uint16_t>(value));
      return {};
    case 4:
      x86::outl(port, value);
      return {};
    default:
      return ErrorCode::kInvalidArgument;
  }
}

Result<PciHostDesc> pci_host_fallback() {
  if (config_read32(0, 0, 0) != kMchVendorDevice) return ErrorCode::kNotFound;
  PciHostDesc d;
  d.source = "q35 MCH PCIEXBAR (ports 0xCF8/0xCFC)";
  const uint64_t bar = config_read32(0, 0, kPciexbar) |
                       static_cast<uint64_t>(config_read32(0, 0, kPciexbar + 4)) << 32;
  if ((bar & kPciexbarEnable) != 0) {
    // Length field, bits 2:1: 0 = 256 MiB (buses 0-255), 1 = 128 MiB (0-127), 2 = 64 MiB (0-63).
    const unsigned length_code = static_cast<unsigned>((bar >> 1) & 3);
    if (length_code == 3) return ErrorCode::kNotFound;  // Reserved encoding.
    const uint64_t bytes = (256ull << 20) >> length_code;
    // Base: address bits 35..28 (256 MiB), 35..27 (128 MiB) or 35..26 (64 MiB).
    const uint64_t base = bar & ((1ull << 36) - 1) & ~(bytes - 1);
    d.ecam = PhysRange{PhysAddr(base), bytes};
    d.bus_start = 0;
    d.bus_end = static_cast<uint8_t>((bytes >> 20) - 1);
  } else {
    d.bus_start = 0;
    d.bus_end = 255;
  }
  // I/O: everything above the legacy ISA range and the configuration ports.
  add_window(&d, PciHostWindow::Kind::kIo, 0x0D00, 0x1'0000);
  // The 32-bit hole runs from the top of low RAM to the IOAPIC, minus the ECAM window.
  const uint64_t lo = (low_memory_top() + kPage - 1) & ~(kPage - 1);
  const uint64_t ecam_lo = d.ecam.base.value();
  const uint64_t ecam_hi = d.ecam.end().value();
  if (d.ecam.size != 0 && ecam_lo >= lo && ecam_hi <= kIoApicBase) {
    add_window(&d, PciHostWindow::Kind::kMem32, lo, ecam_lo);
    add_window(&d, PciHostWindow::Kind::kMem32, ecam_hi, kIoApicBase);
  } else {
    add_window(&d, PciHostWindow::Kind::kMem32, lo, kIoApicBase);
  }
  return d;
}

}  // namespace arch
