// NS16550A polled transmitter: see ns16550.h.
#include "arch/riscv64/testkernel/ns16550.h"

namespace riscv {

namespace {
constexpr unsigned kThr = 0;           // Transmit holding register (write).
constexpr unsigned kIer = 1;           // Interrupt enable.
constexpr unsigned kLsr = 5;           // Line status.
constexpr uint8_t kLsrThre = 1u << 5;  // Transmit holding register empty.
}  // namespace

void Ns16550::init(uintptr_t base, unsigned reg_shift) {
  base_ = base;
  reg_shift_ = reg_shift;
  *reg(kIer) = 0;
}

void Ns16550::putc(char c) {
  if (base_ == 0) return;
  while ((*reg(kLsr) & kLsrThre) == 0) {
  }
  *reg(kThr) = static_cast<uint8_t>(c);
}

}  // namespace riscv
