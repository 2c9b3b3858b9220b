// Host tests of the library's spinlock and the kernel's interrupt hooks (dmakit/kernel_hooks.h):
// a lock masks interrupts through irq_save before it is taken and puts the previous state back
// through irq_restore after it is released, nested locks restore in order, a failed try_lock
// leaves the state as it was, and with no hooks the lock touches no interrupt state at all.
// "Interrupts" are a per-thread flag of the test's hook implementation.
#include <gtest/gtest.h>

#include <cstdint>

#include "dmakit/arch/cpu_relax.h"
#include "dmakit/kernel_hooks.h"
#include "dmakit/support/spinlock.h"

namespace {

thread_local bool t_masked = false;
thread_local int t_saves = 0;
thread_local int t_restores = 0;

uintptr_t flag_irq_save() {
  ++t_saves;
  uintptr_t was = t_masked ? 1 : 0;
  t_masked = true;
  return was;
}

void flag_irq_restore(uintptr_t was) {
  ++t_restores;
  t_masked = was != 0;
}

class SpinLockIrq : public testing::Test {
 protected:
  void SetUp() override {
    t_masked = false;
    t_saves = 0;
    t_restores = 0;
    dmakit_kernel_hooks h{};
    h.irq_save = &flag_irq_save;
    h.irq_restore = &flag_irq_restore;
    dmakit_set_kernel_hooks(&h);
  }
  void TearDown() override { dmakit_set_kernel_hooks(nullptr); }
};

TEST_F(SpinLockIrq, HoldingTheLockMasksInterruptsAndReleasingItRestoresThem) {
  support::SpinLock l;
  {
    support::Guard<support::SpinLock> g{&l};
    EXPECT_TRUE(t_masked);
    EXPECT_TRUE(l.is_locked());
  }
  EXPECT_FALSE(t_masked);
  EXPECT_FALSE(l.is_locked());
  EXPECT_EQ(t_saves, 1);
  EXPECT_EQ(t_restores, 1);
}

// A lock taken with interrupts already masked (in a handler, or under another lock) leaves them
// masked when it is released.
TEST_F(SpinLockIrq, NestedLocksRestoreTheStateEachFound) {
  support::SpinLock outer;
  support::SpinLock inner;
  {
    support::Guard<support::SpinLock> a{&outer};
    {
      support::Guard<support::SpinLock> b{&inner};
      EXPECT_TRUE(t_masked);
    }
    EXPECT_TRUE(t_masked);  // Still inside `outer`.
  }
  EXPECT_FALSE(t_masked);

  t_masked = true;  // As in an interrupt handler.
  {
    support::Guard<support::SpinLock> a{&outer};
    EXPECT_TRUE(t_masked);
  }
  EXPECT_TRUE(t_masked);
}

TEST_F(SpinLockIrq, AFailedTryLockLeavesTheInterruptStateAsItWas) {
  support::SpinLock held;
  support::SpinLock other;
  other.lock();
  EXPECT_TRUE(t_masked);
  // What another CPU would see: the holder's state is the holder's business.
  EXPECT_FALSE(other.try_lock());
  EXPECT_TRUE(t_masked);  // Still held by this thread.
  other.unlock();
  EXPECT_FALSE(t_masked);

  held.lock();
  t_masked = false;  // Pretend another CPU holds it: this thread's interrupts are on.
  EXPECT_FALSE(held.try_lock());
  EXPECT_FALSE(t_masked);
  EXPECT_EQ(t_saves, t_restores + 1);  // Only the successful lock is still to be undone.
  t_masked = true;
  held.unlock();
  EXPECT_FALSE(t_masked);  // The state held.lock() found.

  if (held.try_lock()) {
    EXPECT_TRUE(t_masked);
    held.unlock();
  } else {
    ADD_FAILURE() << "try_lock of a free lock failed";
  }
  EXPECT_FALSE(t_masked);
}

// No hooks installed: nothing is called, and the lock still excludes.
TEST(SpinLockNoHooks, TheLockWorksWithoutHooks) {
  dmakit_set_kernel_hooks(nullptr);
  t_saves = 0;
  support::SpinLock l;
  l.lock();
  EXPECT_TRUE(l.is_locked());
  EXPECT_FALSE(l.try_lock());
  l.unlock();
  EXPECT_FALSE(l.is_locked());
  EXPECT_EQ(t_saves, 0);
  support::cpu_relax();  // The spin-wait hint of the host's architecture: no effect to observe.
}

}  // namespace
