// Ns16550: a polled NS16550A UART (QEMU virt's console at 0x1000'0000), output only.
#pragma once

#include "dmakit/support/types.h"

namespace riscv {

class Ns16550 {
 public:
  constexpr Ns16550() = default;

  // Uses the UART whose registers start at virtual address `base`, register i at
  // base + (i << reg_shift). The firmware has already programmed the line settings; this only
  // masks the UART's interrupts. May be called again to move to another mapping of the UART.
  void init(uintptr_t base, unsigned reg_shift);

  // Writes one byte as is, waiting for room in the transmitter (kprintf adds the "\r" before
  // "\n"). Safe in trap and panic context; no-op before init.
  void putc(char c);

  bool ready() const { return base_ != 0; }

 private:
  volatile uint8_t* reg(unsigned i) const {
    return reinterpret_cast<volatile uint8_t*>(base_ + (uintptr_t{i} << reg_shift_));
  }

  uintptr_t base_ = 0;
  unsigned reg_shift_ = 0;
};

}  // namespace riscv
