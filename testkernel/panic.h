// Stopping the test kernel on a broken invariant or an unexpected trap.
//
// Every panic prints one line starting with "PANIC" (the QEMU runner fails any run that shows
// one), then leaves QEMU with a failure status through arch::exit_qemu(false). A panic while
// panicking (a fault in the printing itself) skips straight to the exit.
//
// support_panic (declared in include/dmakit/support/assert.h, used by KASSERT) is defined in
// panic.cc.
#pragma once

#include "dmakit/support/types.h"

// Prints "PANIC: <message>" and stops. Safe with interrupts off and in trap context.
[[noreturn]] void kpanic(const char* fmt, ...) __attribute__((format(printf, 1, 2)));

// For trap handlers that print several lines of detail before stopping: returns false if a panic
// is already in progress (the caller should then exit without printing), true otherwise and
// marks one as started. Finish with kpanic_finish().
bool kpanic_begin();
[[noreturn]] void kpanic_finish();

// True once some CPU has started a panic (kprintf then stops waiting long for its lock).
bool kpanic_in_progress();
