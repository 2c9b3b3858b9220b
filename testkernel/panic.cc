#include "testkernel/panic.h"

#include "dmakit/support/assert.h"
#include "testkernel/arch.h"
#include "testkernel/kprintf.h"

namespace {
int g_panicking = 0;
}  // namespace

bool kpanic_begin() {
  return __atomic_exchange_n(&g_panicking, 1, __ATOMIC_ACQ_REL) == 0;
}

bool kpanic_in_progress() {
  return __atomic_load_n(&g_panicking, __ATOMIC_ACQUIRE) != 0;
}

void kpanic_finish() {
  kputs("PANIC: stopping the machine (failure)\n");
  arch::exit_qemu(false);
}

void kpanic(const char* fmt, ...) {
  if (!kpanic_begin()) arch::exit_qemu(false);
  kputs("\nPANIC: ");
  va_list ap;
  va_start(ap, fmt);
  kvprintf(fmt, ap);
  va_end(ap);
  kputs("\n");
  kpanic_finish();
}

extern "C" void support_panic(const char* file, int line, const char* msg) {
  kpanic("at %s:%d: %s", file, line, msg);
}
