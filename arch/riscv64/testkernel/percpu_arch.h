// RISC-V's per-CPU pointer: tp holds the calling hart's PerCpu (testkernel/percpu.h). The psABI
// reserves tp for the thread pointer, so the compiler never allocates it; boot.S sets it on every
// hart and the trap entry reads the hart's trap stack through it. Included by
// testkernel/percpu.h only.
#pragma once

struct PerCpu;

inline PerCpu* arch_this_cpu() {
  uintptr_t v;
  __asm__("mv %0, tp" : "=r"(v));
  return reinterpret_cast<PerCpu*>(v);
}
