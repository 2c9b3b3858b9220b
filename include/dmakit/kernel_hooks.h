/* What a kernel tells dmakit at run time that the library cannot know by itself: how to mask
 * interrupts around the library's locks, which CPU is running, how to invalidate TLB entries on
 * every CPU, and how to run a function on every CPU. One table for the whole library, given once
 * at boot, in C or C++ (this header is both).
 *
 * Every member may be left null (or 0), so a zeroed table is valid; the library then assumes the
 * simplest kernel: one CPU, no DMA call from an interrupt handler, TLB maintenance on the local
 * CPU only. What each null member rules out is said next to it. The member order is the ABI a
 * built kernel and a built library share: members are only ever added, at the end. Which library
 * functions may be called from which context (thread, interrupts off, interrupt handler) with and
 * without these hooks: dmakit/dma_op.h, "Calling contexts".
 *
 * The test kernel's implementation (testkernel/kernel_hooks.cc and the per-architecture code it
 * calls) is the worked example. */
#ifndef DMAKIT_KERNEL_HOOKS_H
#define DMAKIT_KERNEL_HOOKS_H

#include <stddef.h> /* freestanding: provided by the compiler */
#include <stdint.h> /* freestanding: provided by the compiler */

#ifdef __cplusplus
extern "C" {
#endif

typedef struct dmakit_kernel_hooks {
  /* Masks interrupts on the calling CPU and returns the previous interrupt state, which
   * irq_restore puts back (nesting allowed: a lock taken inside another, or in a handler, gets
   * "already masked" and restores exactly that). Every library lock (support::SpinLock) calls
   * irq_save before it spins and irq_restore after it is released, so that an interrupt handler
   * on the same CPU that makes a DMA call (an unmap on completion) cannot spin forever on a lock
   * its CPU already holds, nor run in the middle of a per-CPU cache update. Both or neither
   * (dmakit_set_kernel_hooks installs neither when one is null); null: the locks leave the
   * interrupt state alone (and cost one test of the pointer), and the kernel must then never make
   * a DMA call from an interrupt handler. Any context; must not take a lock or call the library. */
  uintptr_t (*irq_save)(void);
  void (*irq_restore)(uintptr_t state);

  /* Index of the calling CPU, in [0, max_cpus). May be called with interrupts enabled, in a
   * kernel that preempts or migrates the caller: the library uses the answer only to pick which
   * per-CPU cache to lock, so a stale answer costs speed, never correctness. Any context; must
   * not take a lock. Null: every caller is CPU 0, and max_cpus is taken as 1. */
  unsigned (*cpu_id)(void);
  /* How many CPUs cpu_id may return (per-CPU caches are sized by it). 0: 1. */
  unsigned max_cpus;

  /* Invalidates the TLB entries of kernel virtual addresses [va, va + size) on every CPU (the
   * caller's included) and returns once all of them have: IPIs and invlpg on x86-64, the
   * broadcast `tlbi vaae1is` family on AArch64, an SBI remote fence on RISC-V. Used after the
   * library changes a page's memory type (uncached coherent memory for a non-coherent device).
   * Null: the library invalidates only the calling CPU's TLB, which is correct on one CPU only.
   * Thread context, interrupts enabled (IPIs may need them); may not be called with a library lock
   * held by the kernel. */
  void (*tlb_flush_kernel_range)(uintptr_t va, size_t size);

  /* Runs fn(arg) on every online CPU (the caller's included), each with interrupts masked, and
   * returns once all have. Thread context. Optional: the library does not need it today. The
   * bounce pools' per-CPU caches each have their own lock (taken by the owning CPU with no
   * contention), so a CPU that finds a pool exhausted takes the other CPUs' cached slots back
   * itself, without an IPI and without waiting for those CPUs to call in. */
  void (*on_each_cpu)(void (*fn)(void* arg), void* arg);

  /* Non-zero when the calling CPU is running an interrupt handler (any nesting depth), zero in
   * thread context (interrupts masked or not). Read only by the misuse checker of a
   * DMA_API_DEBUG build, at the entry of every function documented "thread only": called from a
   * handler, such a function is reported (kind wrong-context) and refused instead of editing
   * page tables or waiting for other CPUs there (dmakit/dma_debug.h). A release build never
   * calls it. Any context; must not take a lock or call the library. Null: no check. */
  int (*in_interrupt)(void);

  /* Non-zero when the calling CPU runs with interrupts masked outside an interrupt handler (under
   * a kernel spinlock, say) at a time when a thread-only function must not run there: its TLB
   * invalidation on every CPU may wait for IPIs that another CPU, spinning with interrupts masked
   * itself, never answers. A kernel may answer 0 while its CPU is the only one running (early
   * boot), when no other CPU is involved. Read only by the misuse checker of a DMA_API_DEBUG
   * build, next to in_interrupt: such a call is reported (kind wrong-context) and refused. The
   * library's own locks never mask interrupts around a thread-only function's work, so the
   * answer reflects the kernel's state. A release build never calls it. Any context; must not
   * take a lock or call the library. Null: no check. */
  int (*irqs_disabled)(void);
} dmakit_kernel_hooks;

/* Installs the hooks (the table is copied). Call once at boot, on one CPU, before any other CPU
 * or interrupt handler makes a DMA call; calling it later is undefined. A null argument installs
 * the all-null table. */
void dmakit_set_kernel_hooks(const dmakit_kernel_hooks* hooks);

#ifdef __cplusplus
} /* extern "C" */

namespace dma {
namespace detail {
/* The table itself (support/kernel_hooks.cc), constant-initialised to all null: read inline by
 * the locks, so that an absent hook costs one load and one branch. */
extern dmakit_kernel_hooks g_kernel_hooks [[gnu::visibility("hidden")]];
}  // namespace detail

/* The installed table (all null until dmakit_set_kernel_hooks). Any context. */
inline const dmakit_kernel_hooks& kernel_hooks() {
  return detail::g_kernel_hooks;
}
}  // namespace dma
#endif

#endif /* DMAKIT_KERNEL_HOOKS_H */
