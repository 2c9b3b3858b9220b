// IrqTable: the handlers of a range of interrupt numbers (x86 vectors, GIC SPIs, IMSIC identities)
// and the counters every port's dispatch keeps. Shared so that each architecture's controller
// code only translates its hardware numbers to table slots.
//
// Slots are claimed and released from thread context (msi_alloc / msi_free) and read by the
// dispatch in interrupt context, possibly on another CPU: a slot's handler and context are
// written before its `used` flag is published (release), and the dispatch reads the flag first
// (acquire). Claiming takes a lock with interrupts masked, so two CPUs never claim one slot.
// Releasing a slot while its interrupt is being dispatched on another CPU is the caller's race to
// avoid (msi_free's precondition: the device no longer sends it).
#pragma once

#include "dmakit/support/result.h"
#include "dmakit/support/spinlock.h"
#include "dmakit/support/types.h"
#include "testkernel/arch.h"

namespace arch_common {

// Interrupts dispatched and spurious ones, on all CPUs (relaxed atomics: reports only).
struct IrqCounters {
  uint64_t taken = 0;
  uint64_t spurious = 0;
  void count_taken() { __atomic_fetch_add(&taken, 1, __ATOMIC_RELAXED); }
  void count_spurious() { __atomic_fetch_add(&spurious, 1, __ATOMIC_RELAXED); }
  uint64_t read_taken() const { return __atomic_load_n(&taken, __ATOMIC_RELAXED); }
  uint64_t read_spurious() const { return __atomic_load_n(&spurious, __ATOMIC_RELAXED); }
};

// Handlers for the numbers [first, first + count), count at most kCount.
template <unsigned kCount>
class IrqTable {
 public:
  constexpr IrqTable() = default;
  IrqTable(const IrqTable&) = delete;
  IrqTable& operator=(const IrqTable&) = delete;

  // Sets the range (once, before any claim); a count above kCount is cut to kCount.
  void set_range(unsigned first, unsigned count) {
    first_ = first;
    count_ = count < kCount ? count : kCount;
  }
  unsigned first() const { return first_; }
  unsigned count() const { return count_; }

  // Claims a free number for `handler(ctx)`; returns it. Errors: kInvalidArgument (null
  // handler), kNoMemory (every slot taken). Any context.
  Result<unsigned> claim(arch::IrqHandler handler, void* ctx) {
    if (handler == nullptr) return ErrorCode::kInvalidArgument;
    uintptr_t flags = arch::irq_save();
    lock_.lock();
    for (unsigned i = 0; i < count_; ++i) {
      if (__atomic_load_n(&slots_[i].used, __ATOMIC_RELAXED)) continue;
      slots_[i].handler = handler;
      slots_[i].ctx = ctx;
      __atomic_store_n(&slots_[i].used, true, __ATOMIC_RELEASE);
      lock_.unlock();
      arch::irq_restore(flags);
      return first_ + i;
    }
    lock_.unlock();
    arch::irq_restore(flags);
    return ErrorCode::kNoMemory;
  }

  // Releases number `n`. Errors: kNotFound (outside the range or not claimed). Any context.
  Result<void> release(unsigned n) {
    if (!contains(n)) return ErrorCode::kNotFound;
    Slot& s = slots_[n - first_];
    if (!__atomic_exchange_n(&s.used, false, __ATOMIC_ACQ_REL)) return ErrorCode::kNotFound;
    return support::ok();
  }

  bool contains(unsigned n) const { return n >= first_ && n - first_ < count_; }

  // Runs the handler of number `n` and counts it; counts a spurious interrupt when no handler
  // holds it. Interrupt context.
  void dispatch(unsigned n, IrqCounters& counters) {
    if (!contains(n)) {
      counters.count_spurious();
      return;
    }
    Slot& s = slots_[n - first_];
    if (!__atomic_load_n(&s.used, __ATOMIC_ACQUIRE)) {
      counters.count_spurious();
      return;
    }
    counters.count_taken();
    s.handler(s.ctx);
  }

 private:
  struct Slot {
    arch::IrqHandler handler = nullptr;
    void* ctx = nullptr;
    bool used = false;
  };
  support::SpinLock lock_;
  Slot slots_[kCount] = {};
  unsigned first_ = 0;
  unsigned count_ = 0;
};

// Spins with interrupts unmasked until `counter` moves or about `max_ns` pass, then restores the
// caller's interrupt state: the body of arch::irq_wait on every port.
inline void wait_for_interrupt(const IrqCounters& counters, uint64_t max_ns) {
  uintptr_t flags = arch::irq_save();
  const uint64_t before = counters.read_taken() + counters.read_spurious();
  const uint64_t start = arch::now_ns();
  arch::irq_enable_local();
  while (counters.read_taken() + counters.read_spurious() == before &&
         arch::now_ns() - start < max_ns) {
    __asm__ volatile("" ::: "memory");
  }
  arch::irq_restore(flags);
}

}  // namespace arch_common
