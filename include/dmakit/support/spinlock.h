// A test-and-test-and-set spinlock annotated for clang's -Wthread-safety, and its scoped guard.
//
// It does not mask interrupts: a kernel that takes the subsystem's locks from interrupt context
// must call into the subsystem with interrupts masked (see README, "Integrating").
#pragma once

#include "dmakit/support/thread_annotations.h"
#include "dmakit/support/types.h"

namespace support {

class TA_CAPABILITY("mutex") SpinLock {
 public:
  constexpr SpinLock() = default;
  SpinLock(const SpinLock&) = delete;
  SpinLock& operator=(const SpinLock&) = delete;

  void lock() TA_ACQ() {
    while (__atomic_exchange_n(&locked_, 1, __ATOMIC_ACQUIRE) != 0) {
      while (__atomic_load_n(&locked_, __ATOMIC_RELAXED) != 0) {
        cpu_relax();
      }
    }
  }
  bool try_lock() TA_TRY_ACQ(true) {
    return __atomic_exchange_n(&locked_, 1, __ATOMIC_ACQUIRE) == 0;
  }
  void unlock() TA_REL() { __atomic_store_n(&locked_, 0, __ATOMIC_RELEASE); }
  // For assertions only: true while some CPU holds the lock.
  bool is_locked() const { return __atomic_load_n(&locked_, __ATOMIC_RELAXED) != 0; }

 private:
  // A compiler barrier between polls. No architecture's pause/yield hint here: the support
  // library stays free of architecture conditionals (those live under arch/).
  static void cpu_relax() { __asm__ volatile("" ::: "memory"); }
  uint32_t locked_ = 0;
};

// Holds a lock for a scope: `Guard guard{&lock_};`.
template <typename Lock>
class TA_SCOPED_CAPABILITY Guard {
 public:
  explicit Guard(Lock* lock) TA_ACQ(lock) : lock_(lock) { lock_->lock(); }
  ~Guard() TA_REL() { lock_->unlock(); }
  Guard(const Guard&) = delete;
  Guard& operator=(const Guard&) = delete;

 private:
  Lock* lock_;
};

}  // namespace support
