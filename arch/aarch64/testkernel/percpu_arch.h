// AArch64's per-CPU pointer: TPIDR_EL1 holds the calling CPU's PerCpu (testkernel/percpu.h).
// Included by testkernel/percpu.h only.
#pragma once

struct PerCpu;

inline PerCpu* arch_this_cpu() {
  uintptr_t v;
  // No "memory" clobber and not volatile: the value never changes under a running caller.
  __asm__("mrs %0, tpidr_el1" : "=r"(v));
  return reinterpret_cast<PerCpu*>(v);
}
