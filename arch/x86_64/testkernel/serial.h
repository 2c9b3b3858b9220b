// COM1 (I/O port 0x3F8), the x86-64 console: a polled 16550 UART, 115200 8N1, no interrupts.
// Also a few unformatted print helpers for the arch code's own diagnostics (boot errors, trap
// dumps), which must work before and without the kernel's kprintf.
#pragma once

#include "dmakit/support/types.h"

namespace x86 {

// Programs the UART. Call once on the boot CPU before any output; output before it still works
// on QEMU (its UART needs no setup) but would not on real hardware.
void serial_init();

// Writes one byte, waiting for the transmitter. Safe with interrupts off and in trap context.
void serial_putc(char c);

// Writes a NUL-terminated string, turning "\n" into "\r\n".
void serial_puts(const char* s);
// Writes v as 0x-prefixed hexadecimal, `digits` digits (leading zeros kept).
void serial_hex(uint64_t v, int digits = 16);
// Writes v in decimal.
void serial_dec(uint64_t v);

// Prints "PANIC: <msg>" and leaves QEMU with a failure status. For boot errors the arch code
// detects before the kernel's own panic machinery can be relied on.
[[noreturn]] void boot_panic(const char* msg);

}  // namespace x86
