// QEMU virt facts the AArch64 port uses before the device tree is read.
#pragma once

#include "dmakit/support/types.h"

namespace aarch64 {

// The PL011 UART of QEMU virt (the device tree's /pl011@9000000, its stdout-path). Identity-mapped
// as Device-nGnRE; used polled.
constexpr uint64_t kPl011Phys = 0x0900'0000;

// Enables the PL011 (8N1, FIFOs on). Works with the MMU off or on; call before any output.
void console_init();

}  // namespace aarch64
