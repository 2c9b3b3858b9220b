// x86-64's per-CPU pointer: the GS base holds the calling CPU's PerCpu (testkernel/percpu.h),
// whose first word points to itself, so one %gs-relative load reads it. Included by
// testkernel/percpu.h only.
#pragma once

struct PerCpu;

inline PerCpu* arch_this_cpu() {
  uintptr_t v;
  __asm__("movq %%gs:0, %0" : "=r"(v));
  return reinterpret_cast<PerCpu*>(v);
}
