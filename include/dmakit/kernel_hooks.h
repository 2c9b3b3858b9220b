/* What a kernel tells dmakit at run time that the library cannot know by itself: how to mask
 * interrupts around the library's locks, which CPU is running, how to invalidate TLB entries on
 * every CPU, and how to run a function on every CPU. One table for the whole library, given once
 * at boot, in C or C++ (this header is both).
 *
 * Every member may be left null (or 0); the library then assumes the simplest kernel: one CPU,
 * no DMA call from an interrupt handler, TLB maintenance on the local CPU only. What each null
 * member rules out is said next to it.
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
   * irq_restore puts back (nesting allowed). The library's locks call them around every critical
   * section, so that an interrupt handler on the same CPU that makes a DMA call (an unmap on
   * completion) cannot spin forever on a lock its CPU already holds. Both or neither; null: the
   * locks leave the interrupt state alone, and the kernel must then never make a DMA call from an
   * interrupt handler. Any context; must not take a lock. */
  uintptr_t (*irq_save)(void);
  void (*irq_restore)(uintptr_t state);

  /* Index of the calling CPU, in [0, max_cpus). Called with interrupts masked (so the answer
   * cannot go stale). Null: every caller is CPU 0, and max_cpus is taken as 1. */
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
   * returns once all have. Used to reclaim other CPUs' per-CPU caches (bounce slots) without
   * waiting for those CPUs to call in. Null: remote caches are reclaimed under their own locks
   * instead. Thread context. */
  void (*on_each_cpu)(void (*fn)(void* arg), void* arg);
} dmakit_kernel_hooks;

/* Installs the hooks (the table is copied). Call once at boot, on one CPU, before any other CPU
 * or interrupt handler makes a DMA call; calling it later is undefined. A null argument installs
 * the all-null table. */
void dmakit_set_kernel_hooks(const dmakit_kernel_hooks* hooks);

#ifdef __cplusplus
} /* extern "C" */

namespace dma {
/* The installed table (all null until dmakit_set_kernel_hooks). Any context. */
const dmakit_kernel_hooks& kernel_hooks();
}  // namespace dma
#endif

#endif /* DMAKIT_KERNEL_HOOKS_H */
