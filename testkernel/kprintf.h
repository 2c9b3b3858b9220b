// kprintf: a small printf for the test kernel, writing to the console through arch::console_putc.
//
// Conversions: %d %i %u %x %X %o %c %s %p %%, length modifiers hh h l ll z j t, flags '-' '0' '#'
// ' ' '+', a field width and a precision (digits or '*'). "\n" is sent as "\r\n" on the console.
// No floating point. The format is checked by the compiler (format attribute).
//
// Threading: each kprintf / kputs call is written as a unit (a console lock, held with interrupts
// masked; see kprintf.cc for how a panic gets through). Safe with interrupts off and in trap or
// panic context; no allocation. ksnprintf takes no lock.
#pragma once

#include <stdarg.h>  // freestanding: provided by the compiler

#include "dmakit/support/types.h"

// Formats to the console. Returns the number of characters produced (before "\r" insertion).
int kprintf(const char* fmt, ...) __attribute__((format(printf, 1, 2)));
int kvprintf(const char* fmt, va_list ap) __attribute__((format(printf, 1, 0)));

// Formats into buf (always NUL-terminated when size > 0, truncated to size - 1 characters).
// Returns the length the full output would have had, as C's snprintf.
int ksnprintf(char* buf, size_t size, const char* fmt, ...) __attribute__((format(printf, 3, 4)));
int kvsnprintf(char* buf, size_t size, const char* fmt, va_list ap)
    __attribute__((format(printf, 3, 0)));

// Writes a string to the console as is (with the same "\n" handling).
void kputs(const char* s);

// For tests of the console lock: with buf non-null, every CPU's console output from now on goes
// to buf[0, size) (characters beyond it are dropped, no "\r" is added) instead of the console,
// and 0 is returned; with buf null, output goes back to the console and the number of
// characters produced while capturing is returned. Not for concurrent use with itself.
size_t kprintf_set_capture(char* buf, size_t size);

// Formats a byte count for humans: "512 MiB", "4 GiB", "1536 KiB", "17 B" (exact units only;
// anything not a whole number of KiB is printed in bytes). Returns buf.
const char* format_size(char* buf, size_t size, uint64_t bytes);
