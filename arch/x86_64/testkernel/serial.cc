#include "arch/x86_64/testkernel/serial.h"

#include "arch/x86_64/testkernel/cpu.h"
#include "testkernel/arch.h"

namespace x86 {
namespace {

constexpr uint16_t kCom1 = 0x3F8;
// 16550 register offsets.
constexpr uint16_t kData = 0;       // DLAB=0: transmit holding register.
constexpr uint16_t kIntEnable = 1;  // DLAB=0: interrupt enable. DLAB=1: divisor high byte.
constexpr uint16_t kFifoCtrl = 2;
constexpr uint16_t kLineCtrl = 3;
constexpr uint16_t kModemCtrl = 4;
constexpr uint16_t kLineStatus = 5;
constexpr uint8_t kLineStatusThrEmpty = 1u << 5;
// Bounded wait for the transmitter: on a wedged UART the console drops output instead of hanging
// a panic path forever.
constexpr int kMaxPolls = 1'000'000;

}  // namespace

void serial_init() {
  outb(kCom1 + kIntEnable, 0x00);  // No interrupts.
  outb(kCom1 + kLineCtrl, 0x80);   // DLAB on: divisor follows.
  outb(kCom1 + kData, 0x01);       // Divisor 1: 115200 baud.
  outb(kCom1 + kIntEnable, 0x00);
  outb(kCom1 + kLineCtrl, 0x03);   // 8 data bits, no parity, 1 stop bit, DLAB off.
  outb(kCom1 + kFifoCtrl, 0xC7);   // FIFOs on and cleared, 14-byte threshold.
  outb(kCom1 + kModemCtrl, 0x03);  // DTR, RTS.
}

void serial_putc(char c) {
  for (int i = 0; i < kMaxPolls; ++i) {
    if (inb(kCom1 + kLineStatus) & kLineStatusThrEmpty) {
      break;
    }
    __builtin_ia32_pause();
  }
  outb(kCom1 + kData, static_cast<uint8_t>(c));
}

void serial_puts(const char* s) {
  for (; *s != '\0'; ++s) {
    if (*s == '\n') {
      serial_putc('\r');
    }
    serial_putc(*s);
  }
}

void serial_hex(uint64_t v, int digits) {
  serial_puts("0x");
  for (int i = digits - 1; i >= 0; --i) {
    serial_putc("0123456789abcdef"[(v >> (4 * i)) & 0xF]);
  }
}

void serial_dec(uint64_t v) {
  char buf[21];
  int n = 0;
  do {
    buf[n++] = static_cast<char>('0' + v % 10);
    v /= 10;
  } while (v != 0);
  while (n > 0) {
    serial_putc(buf[--n]);
  }
}

void boot_panic(const char* msg) {
  serial_puts("\nPANIC: x86_64: ");
  serial_puts(msg);
  serial_puts("\n");
  arch::exit_qemu(false);
}

}  // namespace x86

namespace arch {

void console_putc(char c) {
  x86::serial_putc(c);
}

}  // namespace arch
