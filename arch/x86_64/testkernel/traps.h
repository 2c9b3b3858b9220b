// GDT (with a TSS for the interrupt stack table), IDT and the trap handler.
//
// Every one of the 256 vectors has a handler (trap_entry.S). Vectors 32 and up are external
// interrupts, dispatched by irq.h's irq_dispatch; any exception is a bug: the handler prints a
// readable panic (vector and name, error code decoded for #PF, RIP, CR2 for page faults, all
// general registers) and leaves QEMU with a failure status; the one exception is a fault at a
// probe_read64/probe_write64 access, which is recorded and resumed (for tests). #DF, NMI and #MC
// run on their own IST stacks so that a kernel stack overflow (which hits the unmapped guard page
// below the boot stack) is still reported.
#pragma once

#include "dmakit/support/types.h"

namespace x86 {

// Selectors of the kernel GDT.
constexpr uint16_t kKernelCode = 0x08;
constexpr uint16_t kKernelData = 0x10;
constexpr uint16_t kTss = 0x18;

// The stack layout trap_common (trap_entry.S) builds; lowest address first.
struct TrapFrame {
  uint64_t r15, r14, r13, r12, r11, r10, r9, r8;
  uint64_t rbp, rdi, rsi, rdx, rcx, rbx, rax;
  uint64_t vector, error;
  // Pushed by the CPU.
  uint64_t rip, cs, rflags, rsp, ss;
};
static_assert(sizeof(TrapFrame) == 22 * 8, "trap_entry.S pushes 22 quadwords");

// Loads the kernel GDT, the TSS and the IDT, and reloads the segment registers. Call once on the
// boot CPU, interrupts off, while the kernel image is mapped at its link address (it always is).
void init_traps();

// The same for a secondary CPU (index 1..kMaxCpus-1 of testkernel/percpu.h): its own GDT and TSS
// (IST entries on its own emergency stack) and the shared IDT. Interrupts off.
void init_traps_secondary(unsigned cpu_index);

// Lower bound of the IST stacks, for the page-table code (each has an unmapped guard page below).
struct IstStack {
  const void* guard;  // The guard page (4 KiB).
  const void* top;
};
// The IST stacks' guard pages, kNumIstStacks of them.
constexpr int kNumIstStacks = 3;
IstStack ist_stack(int i);

// What a probe recorded when its access trapped.
struct ProbeFault {
  uint64_t vector = 0;
  uint64_t error = 0;
  uint64_t cr2 = 0;  // Meaningful for #PF (vector 14).
};

// Reads (or writes) 8 bytes at `addr` like an ordinary kernel access, but if the access traps,
// the trap handler records the fault in *fault, resumes after the access, and the probe returns
// false instead of the run ending in a panic. For tests of the page tables and of the trap path
// itself. Boot CPU only (one probe at a time); interrupts may be on or off.
bool probe_read64(uintptr_t addr, uint64_t* value, ProbeFault* fault);
bool probe_write64(uintptr_t addr, uint64_t value, ProbeFault* fault);

}  // namespace x86

// Called by trap_entry.S with the saved state; returns for external interrupts (irq.h's
// irq_dispatch, which also runs the SMP vectors of smp.h) and probe faults.
extern "C" void x86_trap_handler(x86::TrapFrame* frame);
