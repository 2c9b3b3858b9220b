// Per-CPU data of the test kernel, and the work slots through which one CPU runs a function on
// another.
//
// Every CPU the kernel uses has one PerCpu in a static table (index 0 is the boot CPU). Each CPU
// keeps a pointer to its own entry in a register the compiler never allocates: TPIDR_EL1 on
// AArch64, tp on RISC-V, the GS base on x86-64 (where the entry's first word points to itself,
// so `mov %gs:0` reads it). this_cpu() and cpu_index() are therefore one register read (plus one
// load for the index), with no lock; the answer stays valid because nothing migrates a running
// caller (the kernel has no scheduler).
//
// Work slots: a CPU that is online and not running anything waits in secondary_main for work.
// run_on_cpu / run_on_all_cpus post a function to a CPU's slot and wait until it has run; the
// target runs it with interrupts masked. A CPU waiting for another (for a work item, or for a TLB
// shootdown on x86-64) keeps serving requests addressed to itself meanwhile (smp_relax), so two
// CPUs that post to each other at the same time do not deadlock.
#pragma once

#include "dmakit/support/result.h"
#include "dmakit/support/spinlock.h"
#include "dmakit/support/types.h"
#include "testkernel/arch.h"

// At most this many CPUs are used (the first ones the firmware lists, the boot CPU always).
constexpr unsigned kMaxCpus = 8;

// Offsets the assembly entry code uses (checked against the struct in smp.cc).
constexpr size_t kPerCpuSelfOffset = 0;
constexpr size_t kPerCpuTrapStackOffset = 8;
constexpr size_t kPerCpuStackOffset = 16;

struct PerCpu {
  PerCpu* self = nullptr;        // This entry (x86-64 reads it through %gs:0).
  uintptr_t trap_stack_top = 0;  // Stack for traps (RISC-V's trap entry switches to it).
  uintptr_t stack_top = 0;       // Kernel stack of this CPU (used by the secondary entry code).
  unsigned index = 0;            // Position in the table, 0 = boot CPU; what cpu_index() says.
  uint64_t hw_id = 0;            // MPIDR affinity (AArch64), hart id (RISC-V), APIC id (x86).
  bool online = false;           // Set (release) by the CPU itself once it waits for work.
  bool gave_up = false;          // Set (release) by secondary_give_up: it will never come online.
  // Architecture-private words (e.g. x86's per-CPU TSS pointer).
  uintptr_t arch[4] = {};

  // The work slot. Posters serialise on post_lock; posted and done are sequence numbers: the slot
  // holds work while posted != done.
  support::SpinLock post_lock;
  void (*work_fn)(void*) = nullptr;
  void* work_arg = nullptr;
  uint32_t posted = 0;
  uint32_t done = 0;
  bool running = false;    // A work item is running (a wait inside it must not start it again).
  uint64_t works_run = 0;  // Work items this CPU ran from its slot (for tests and the report).
  // Interrupt handlers this CPU is running (the arch's dispatch holds an IrqContext around each):
  // non-zero exactly in interrupt context. Only its own CPU touches it.
  unsigned irq_depth = 0;
};

// The per-architecture accessor: `PerCpu* arch_this_cpu()`, one register read. The header is
// named by the arch's Makefile fragment (arch/<arch>/arch.mk), so that this file needs no
// architecture conditional.
#include TESTKERNEL_PERCPU_ARCH_H

// The calling CPU's entry. Valid from the first line of each CPU's C++ boot code on (the boot
// CPU's is installed by smp_init_boot_cpu, before any output); null before that.
inline PerCpu* this_cpu() {
  return arch_this_cpu();
}
// The calling CPU's index in [0, num_cpus()). Any context once this_cpu() is valid.
inline unsigned cpu_index() {
  return this_cpu()->index;
}

// Marks the calling CPU as in interrupt context for its lifetime: each architecture's interrupt
// dispatch holds one around everything it runs (handlers, timer ticks), so that in_interrupt()
// (and the dmakit in_interrupt hook built on it) can tell a handler from thread code. Nests.
class IrqContext {
 public:
  IrqContext() : cpu_(this_cpu()) { __atomic_add_fetch(&cpu_->irq_depth, 1u, __ATOMIC_RELAXED); }
  ~IrqContext() { __atomic_sub_fetch(&cpu_->irq_depth, 1u, __ATOMIC_RELAXED); }
  IrqContext(const IrqContext&) = delete;
  IrqContext& operator=(const IrqContext&) = delete;

 private:
  PerCpu* cpu_;
};

// Whether the calling CPU is running an interrupt handler. Any context (false before the CPU's
// per-CPU pointer is installed, when no interrupt can have been taken yet).
inline bool in_interrupt() {
  PerCpu* c = this_cpu();
  return c != nullptr && __atomic_load_n(&c->irq_depth, __ATOMIC_RELAXED) != 0;
}

// Whether work waits in `cpu`'s slot. Any CPU, any context.
inline bool smp_work_pending(const PerCpu& cpu) {
  return __atomic_load_n(&cpu.posted, __ATOMIC_ACQUIRE) !=
         __atomic_load_n(&cpu.done, __ATOMIC_ACQUIRE);
}

// Entry `i` of the table (i < kMaxCpus).
PerCpu& cpu_data(unsigned i);
// CPUs the kernel tries to use: those the firmware describes, at most kMaxCpus (1 until
// smp_prepare). Any context.
unsigned num_cpus();
// CPUs that came up (the boot CPU included). Any context.
unsigned num_online_cpus();
// Whether CPU `i` is online.
bool cpu_online(unsigned i);

// Boot CPU only, first thing in the arch's C++ boot code: makes entry 0 the boot CPU's (hardware
// id `hw_id`) and installs the per-CPU pointer. Interrupts masked.
void smp_init_boot_cpu(uint64_t hw_id);

// Boot CPU, before the DMA set-up: learns the CPUs the firmware describes (arch::cpu_hw_ids) and
// fills their entries, so that num_cpus() is final (the bounce pools size their per-CPU caches
// by it). Returns num_cpus().
unsigned smp_prepare(const arch::BootInfo& info);

// Boot CPU: starts every other CPU of smp_prepare's list in turn and waits (bounded) for each to
// come online. A CPU that the firmware refuses to start or that does not come up in time is
// reported on the console and left out. Returns num_online_cpus().
unsigned smp_start_secondaries();

// Each secondary's arch entry code calls this once, when its MMU, traps, per-CPU pointer and its
// part of the interrupt controller are set up, interrupts masked: starts the CPU's periodic
// timer, marks the CPU online, unmasks interrupts and serves its work slot forever.
extern "C" [[noreturn]] void secondary_main(PerCpu* self);
// What a secondary's arch entry code calls instead when its part of the interrupt controller
// cannot be set up: reports it on the console and waits forever with interrupts masked, never
// online (smp_start_secondaries then reports it and goes on without it).
[[noreturn]] void secondary_give_up(PerCpu* self, const char* what);

// Runs fn(arg) on CPU `cpu` with interrupts masked and returns once it has run (directly, when
// `cpu` is the caller). Thread context, any CPU; waits as long as the target is busy with
// earlier work. Errors: kInvalidArgument (cpu out of range or offline).
Result<void> run_on_cpu(unsigned cpu, void (*fn)(void*), void* arg);

// Runs fn(arg) on every online CPU (the caller's included, directly, interrupts masked) and
// returns once all have. Thread context, any CPU.
void run_on_all_cpus(void (*fn)(void*), void* arg);

// Posts fn(arg) to CPU `cpu` (not the caller) without waiting; wait_cpu_work(cpu, ticket) waits
// for it. For callers that run work of their own meanwhile (the SMP tests). Errors:
// kInvalidArgument (cpu out of range, offline, or the caller itself).
Result<uint32_t> post_cpu_work(unsigned cpu, void (*fn)(void*), void* arg);
void wait_cpu_work(unsigned cpu, uint32_t ticket);

// One iteration of a spin-wait: the architecture's wait hint, and any request other CPUs are
// waiting for this CPU to serve (a TLB shootdown on x86-64, the CPU's own work slot when
// `serve_work`). Every loop that waits for another CPU calls it.
void smp_relax(bool serve_work = true);
