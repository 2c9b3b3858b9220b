#include "arch/x86_64/testkernel/ioapic.h"

#include "arch/x86_64/testkernel/acpi.h"
#include "testkernel/arch_io.h"

namespace x86 {
namespace {

// Indirect access: the register index goes to IOREGSEL (offset 0), the value through IOWIN (0x10).
constexpr uint32_t kRegSel = 0x00 / 4;
constexpr uint32_t kWin = 0x10 / 4;
constexpr uint32_t kRegVersion = 0x01;
constexpr uint32_t kRegRedirBase = 0x10;  // Entry i: low dword at 0x10 + 2i, high at 0x11 + 2i.
constexpr uint32_t kRedirMasked = 1u << 16;

uint32_t read_reg(volatile uint32_t* io, uint32_t reg) {
  io[kRegSel] = reg;
  return io[kWin];
}

void write_reg(volatile uint32_t* io, uint32_t reg, uint32_t v) {
  io[kRegSel] = reg;
  io[kWin] = v;
}

}  // namespace

Result<unsigned> ioapic_mask_all(const MadtInterruptInfo& info) {
  unsigned pins = 0;
  for (size_t i = 0; i < info.num_ioapics; ++i) {
    TRY_ASSIGN(volatile void* va, arch::mmio_map(PhysAddr(info.ioapics[i].phys), 4096));
    auto* io = static_cast<volatile uint32_t*>(va);
    // Version register bits 23:16: index of the last redirection entry.
    const unsigned n = ((read_reg(io, kRegVersion) >> 16) & 0xFF) + 1;
    for (unsigned pin = 0; pin < n; ++pin) {
      const uint32_t reg = kRegRedirBase + 2 * pin;
      write_reg(io, reg, read_reg(io, reg) | kRedirMasked);
    }
    pins += n;
  }
  return pins;
}

}  // namespace x86
