// The library's lock: a test-and-test-and-set spinlock, annotated for clang's -Wthread-safety,
// that masks interrupts on its CPU while it is held, and its scoped guard.
//
// Interrupts: lock() calls the kernel's irq_save hook (dmakit/kernel_hooks.h) before it starts to
// spin and keeps the returned state in the lock; unlock() releases the lock, then hands that
// state to irq_restore. An interrupt handler that calls into the library (an unmap on completion)
// therefore never runs on a CPU while that CPU holds one of the library's locks: it runs once the
// outermost lock is released. Locks must be released in the reverse order of acquisition (as the
// Guard does), so that each restores the state the one before it found. With no hooks installed
// the lock leaves the interrupt state alone: one load and one branch more than a bare spinlock on
// each of lock and unlock.
//
// RawSpinLock is the same lock without the interrupt masking, for the few locks that are only
// ever taken in thread context and under which the CPU may wait for other CPUs to take an
// interrupt (DirectMapAttributes: a TLB shootdown by IPI while it is held would deadlock against
// a CPU spinning on it with interrupts masked).
//
// Spinning: between polls the CPU executes its spin-wait hint (dmakit/arch/cpu_relax.h).
#pragma once

#include "dmakit/arch/cpu_relax.h"
#include "dmakit/kernel_hooks.h"
#include "dmakit/support/thread_annotations.h"
#include "dmakit/support/types.h"

namespace support {

template <bool kMaskInterrupts>
class TA_CAPABILITY("mutex") BasicSpinLock {
 public:
  constexpr BasicSpinLock() = default;
  BasicSpinLock(const BasicSpinLock&) = delete;
  BasicSpinLock& operator=(const BasicSpinLock&) = delete;

  // Masks interrupts (through the hooks), then spins until the lock is this CPU's. Any context;
  // must not be held already by this CPU.
  [[gnu::always_inline]] void lock() TA_ACQ() {
    if (kMaskInterrupts && dma::kernel_hooks().irq_save != nullptr) [[unlikely]] {
      lock_masking();
      return;
    }
    acquire();
  }
  // One attempt; on failure the interrupt state is as it was before the call.
  bool try_lock() TA_TRY_ACQ(true) {
    uintptr_t (*save)() = kMaskInterrupts ? dma::kernel_hooks().irq_save : nullptr;
    uintptr_t state = save != nullptr ? save() : 0;
    if (__atomic_exchange_n(&locked_, 1u, __ATOMIC_ACQUIRE) == 0) {
      saved_ = state;
      return true;
    }
    void (*restore)(uintptr_t) = kMaskInterrupts ? dma::kernel_hooks().irq_restore : nullptr;
    if (restore != nullptr) restore(state);
    return false;
  }
  // Releases the lock, then restores the interrupt state lock() found.
  [[gnu::always_inline]] void unlock() TA_REL() {
    if (kMaskInterrupts && dma::kernel_hooks().irq_restore != nullptr) [[unlikely]] {
      unlock_restoring();
      return;
    }
    __atomic_store_n(&locked_, 0u, __ATOMIC_RELEASE);
  }
  // For assertions only: true while some CPU holds the lock.
  bool is_locked() const { return __atomic_load_n(&locked_, __ATOMIC_RELAXED) != 0; }

 private:
  // The paths with hooks installed, out of line so that the inline paths stay a test and a
  // branch longer than a bare spinlock's.
  [[gnu::noinline]] SUPPORT_PRESERVE_MOST void lock_masking() {
    uintptr_t state = dma::kernel_hooks().irq_save();
    acquire();
    saved_ = state;
  }
  [[gnu::noinline]] SUPPORT_PRESERVE_MOST void unlock_restoring() {
    uintptr_t state = saved_;  // Read while the lock still protects it.
    __atomic_store_n(&locked_, 0u, __ATOMIC_RELEASE);
    dma::kernel_hooks().irq_restore(state);
  }
  [[gnu::always_inline]] void acquire() {
    while (__atomic_exchange_n(&locked_, 1u, __ATOMIC_ACQUIRE) != 0) {
      while (__atomic_load_n(&locked_, __ATOMIC_RELAXED) != 0) cpu_relax();
    }
  }

  uint32_t locked_ = 0;
  uintptr_t saved_ = 0;  // irq_save's answer, written and read by the holder only.
};

using SpinLock = BasicSpinLock<true>;
using RawSpinLock = BasicSpinLock<false>;

// Holds a lock for a scope: `Guard guard{&lock_};`.
template <typename Lock>
class TA_SCOPED_CAPABILITY Guard {
 public:
  [[gnu::always_inline]] explicit Guard(Lock* lock) TA_ACQ(lock) : lock_(lock) { lock_->lock(); }
  [[gnu::always_inline]] ~Guard() TA_REL() { lock_->unlock(); }
  Guard(const Guard&) = delete;
  Guard& operator=(const Guard&) = delete;

 private:
  Lock* lock_;
};

}  // namespace support
