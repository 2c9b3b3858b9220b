// Host tests of BouncePool in interrupt context and across CPUs:
// - an interrupt handler that unmaps (frees a slot) and maps again, on the CPU it interrupted,
//   at any instruction of that CPU's own calls into the pool: under the pool's lock, inside the
//   per-CPU cache's push and pop. The host stand-in for an interrupt is a POSIX signal sent to
//   one thread at random moments; the kernel hooks' irq_save/irq_restore block and unblock it
//   for the calling thread, which is what masking interrupts on a CPU does. Each scenario runs in
//   a child process (a death-test fork) with a watchdog, so that a deadlock fails the test
//   instead of hanging the run;
// - the per-CPU caches reclaimed without their CPUs: a request that finds the pool exhausted
//   takes back what other CPUs' caches hold, even from a CPU that never calls in again;
// - callers that move between CPUs mid-stream (preemption, migration) or share one CPU index at
//   once (a handler and the code it interrupted) never get one slot twice.
#include <gtest/gtest.h>
#include <pthread.h>
#include <signal.h>
#include <unistd.h>

#include <atomic>
#include <chrono>
#include <cstdint>
#include <cstdio>
#include <random>
#include <thread>
#include <vector>

#include "dmakit/bounce_pool.h"
#include "dmakit/kernel_hooks.h"
#include "tests/host/mm/bounce_test_pool.h"

namespace {

using bounce_test::g_cpu;
constexpr size_t kSlot = BouncePool::kDefaultSlotSize;
constexpr size_t kMiB = 1024 * 1024;

// ---------------------------------------------------------------------------------------------
// Interrupts: a signal to the thread under test

constexpr int kIrqSignal = SIGUSR1;

sigset_t irq_set() {
  sigset_t s;
  sigemptyset(&s);
  sigaddset(&s, kIrqSignal);
  return s;
}

// The hooks of a kernel whose "interrupt" is kIrqSignal: masked per thread, like per CPU.
uintptr_t signal_irq_save() {
  sigset_t s = irq_set();
  sigset_t old;
  pthread_sigmask(SIG_BLOCK, &s, &old);
  return sigismember(&old, kIrqSignal) == 1 ? 1 : 0;
}

void signal_irq_restore(uintptr_t was_masked) {
  if (was_masked != 0) return;
  sigset_t s = irq_set();
  pthread_sigmask(SIG_UNBLOCK, &s, nullptr);
}

unsigned cpu_zero() {
  return 0;
}

constexpr size_t kIrqSlot = 64;        // Small slots: the copy loop does not dwarf the pool's code.
constexpr size_t kIrqPoolSlots = 64;   // Budget 2: the CPU cache fills and empties often.
constexpr size_t kIrqSize = 48;        // One slot.
constexpr uint8_t kHandlerTag = 0xA5;  // What the handler writes into its slot.
constexpr uint8_t kThreadTag = 0x3C;   // What the interrupted thread writes into its own.
constexpr uint64_t kInterrupts = 2000;  // Handled interrupts per scenario.

// What the handler and the interrupted thread share. The handler runs on the interrupted thread,
// so only the counters need to be atomic (read by the watchdog thread).
struct IrqScenario {
  BouncePool* pool = nullptr;
  uint8_t* (*data)(const BounceSlot&) = nullptr;
  BounceSlot slot{};
  bool have = false;
  std::atomic<uint64_t> handled{0};
  std::atomic<uint64_t> progress{0};  // The interrupted thread's completed map+unmap pairs.
  std::atomic<uint64_t> bad_data{0};
  std::atomic<uint64_t> bad_frees{0};
  std::atomic<uint64_t> bad_allocs{0};
};
IrqScenario g_irq;
bounce_test::TestPool* g_irq_pool = nullptr;

uint8_t* irq_data(const BounceSlot& s) {
  return g_irq_pool->data(s);
}

// A completion interrupt: checks and unmaps the previous mapping, then maps the next one.
void on_irq(int) {
  if (g_irq.have) {
    const uint8_t* d = g_irq.data(g_irq.slot);
    for (size_t i = 0; i < kIrqSize; ++i) {
      if (d[i] != kHandlerTag) {
        g_irq.bad_data.fetch_add(1, std::memory_order_relaxed);
        break;
      }
    }
    if (!g_irq.pool->free(g_irq.slot).ok()) g_irq.bad_frees.fetch_add(1, std::memory_order_relaxed);
    g_irq.have = false;
  }
  auto r = g_irq.pool->alloc(kIrqSize);
  if (r.ok()) {
    uint8_t* d = g_irq.data(*r);
    for (size_t i = 0; i < kIrqSize; ++i) d[i] = kHandlerTag;
    g_irq.slot = *r;
    g_irq.have = true;
  } else {
    g_irq.bad_allocs.fetch_add(1, std::memory_order_relaxed);
  }
  g_irq.handled.fetch_add(1, std::memory_order_relaxed);
}

// Maps and unmaps on this thread while another thread interrupts it; exits the process with 0
// when nothing went wrong, 1 with a message otherwise, 3 when the thread stopped making progress
// (a deadlock: the handler spinning on a lock its own thread holds).
[[noreturn]] void run_interrupted_thread(bool cpu_caches) {
  bounce_test::TestPool t(kIrqSlot * kIrqPoolSlots,
                          bounce_test::whole_pool_options(kIrqSlot * kIrqPoolSlots, kIrqSlot));
  BouncePool& p = t.pool;
  if (cpu_caches && !p.enable_cpu_caches(&cpu_zero, 1).ok()) {
    std::fprintf(stderr, "enable_cpu_caches failed\n");
    _exit(1);
  }
  dmakit_kernel_hooks hooks{};
  hooks.irq_save = &signal_irq_save;
  hooks.irq_restore = &signal_irq_restore;
  hooks.cpu_id = &cpu_zero;
  hooks.max_cpus = 1;
  dmakit_set_kernel_hooks(&hooks);

  g_irq_pool = &t;
  g_irq.pool = &p;
  g_irq.data = &irq_data;
  struct sigaction sa{};
  sa.sa_handler = &on_irq;
  sigemptyset(&sa.sa_mask);  // The signal itself is blocked while its handler runs.
  sigaction(kIrqSignal, &sa, nullptr);
  sigset_t s = irq_set();
  pthread_sigmask(SIG_UNBLOCK, &s, nullptr);

  pthread_t target = pthread_self();
  std::atomic<bool> stop{false};
  std::thread interrupter([&] {
    // The watchdog's clock starts again whenever either side moves.
    sigset_t mine = irq_set();
    pthread_sigmask(SIG_BLOCK, &mine, nullptr);
    uint64_t last_handled = 0;
    uint64_t last_progress = 0;
    auto last_change = std::chrono::steady_clock::now();
    std::mt19937 rng(7);
    while (!stop.load(std::memory_order_relaxed)) {
      pthread_kill(target, kIrqSignal);
      // A random pause of up to a few microseconds, so that interrupts land everywhere.
      auto until = std::chrono::steady_clock::now() + std::chrono::nanoseconds(rng() % 4000);
      while (std::chrono::steady_clock::now() < until) {
      }
      uint64_t h = g_irq.handled.load(std::memory_order_relaxed);
      uint64_t pr = g_irq.progress.load(std::memory_order_relaxed);
      auto now = std::chrono::steady_clock::now();
      if (h != last_handled || pr != last_progress) {
        last_handled = h;
        last_progress = pr;
        last_change = now;
      } else if (now - last_change > std::chrono::seconds(3)) {
        std::fprintf(stderr,
                     "deadlock: no progress for 3 s after %llu interrupts and %llu map+unmap "
                     "pairs (an interrupt handler spinning on a lock its CPU holds)\n",
                     static_cast<unsigned long long>(h), static_cast<unsigned long long>(pr));
        _exit(3);
      }
    }
  });

  auto deadline = std::chrono::steady_clock::now() + std::chrono::seconds(20);
  uint64_t bad_data = 0;
  uint64_t bad_frees = 0;
  uint64_t bad_allocs = 0;
  while (g_irq.handled.load(std::memory_order_relaxed) < kInterrupts &&
         std::chrono::steady_clock::now() < deadline) {
    auto r = p.alloc(kIrqSize);
    if (!r.ok()) {
      ++bad_allocs;  // 64 slots for two users: never full.
      continue;
    }
    uint8_t* d = t.data(*r);
    for (size_t i = 0; i < kIrqSize; ++i) d[i] = kThreadTag;
    for (size_t i = 0; i < kIrqSize; ++i) {
      if (d[i] != kThreadTag) {
        ++bad_data;
        break;
      }
    }
    if (!p.free(*r).ok()) ++bad_frees;
    g_irq.progress.fetch_add(1, std::memory_order_relaxed);
  }
  stop.store(true);
  interrupter.join();
  pthread_sigmask(SIG_BLOCK, &s, nullptr);
  if (g_irq.have && !p.free(g_irq.slot).ok()) ++bad_frees;
  p.drain_cache();

  bad_data += g_irq.bad_data.load();
  bad_frees += g_irq.bad_frees.load();
  bad_allocs += g_irq.bad_allocs.load();
  BouncePool::Stats st = p.stats();
  bool ok = bad_data == 0 && bad_frees == 0 && bad_allocs == 0 && p.check_invariants() &&
            st.used_slots == 0 && st.cached_slots == 0 && p.free_block_count() == 1 &&
            g_irq.handled.load() >= kInterrupts;
  std::fprintf(
      stderr,
      "%llu interrupts, %llu map+unmap pairs; slots seen with another user's data: %llu, "
      "refused frees: %llu, failed allocations: %llu; used %llu, cached %llu\n",
      static_cast<unsigned long long>(g_irq.handled.load()),
      static_cast<unsigned long long>(g_irq.progress.load()),
      static_cast<unsigned long long>(bad_data), static_cast<unsigned long long>(bad_frees),
      static_cast<unsigned long long>(bad_allocs), static_cast<unsigned long long>(st.used_slots),
      static_cast<unsigned long long>(st.cached_slots));
  dmakit_set_kernel_hooks(nullptr);
  _exit(ok ? 0 : 1);
}

// The pool's lock masks interrupts: an interrupt that lands while its CPU holds the lock runs
// once the lock is released, instead of spinning on it forever.
TEST(BouncePoolInterruptDeathTest, AnInterruptThatUnmapsWhileItsCpuHoldsThePoolLockWaits) {
  GTEST_FLAG_SET(death_test_style, "threadsafe");
  EXPECT_EXIT(run_interrupted_thread(/*cpu_caches=*/false), testing::ExitedWithCode(0), "");
}

// The per-CPU cache's push and pop are atomic with respect to an interrupt on the same CPU: the
// handler and the thread it interrupted never hold one slot at once.
TEST(BouncePoolInterruptDeathTest, AnInterruptInsideTheCpuCacheNeverHandsOneSlotTwice) {
  GTEST_FLAG_SET(death_test_style, "threadsafe");
  EXPECT_EXIT(run_interrupted_thread(/*cpu_caches=*/true), testing::ExitedWithCode(0), "");
}

// ---------------------------------------------------------------------------------------------
// Reclaiming other CPUs' caches

class BouncePoolReclaim : public testing::Test {
 protected:
  void SetUp() override { g_cpu = 0; }
  void TearDown() override {
    g_cpu = 0;
    dmakit_set_kernel_hooks(nullptr);
  }
};

BounceSlot must_alloc(BouncePool& p, size_t size) {
  auto r = p.alloc(size);
  EXPECT_TRUE(r.ok()) << "alloc(" << size << ") on CPU " << g_cpu
                      << " failed: " << error_code_name(r.code());
  return r.ok() ? *r : BounceSlot{};
}

// 1 MiB of 2 KiB slots: 512 slots, cache budget 16, 8 per CPU with 2 CPUs. CPU 1 parks four
// 1-slot blocks in its cache and never calls again; CPU 0 takes every other slot, then the four:
// its request finds the pool exhausted and takes them back from CPU 1's cache itself.
TEST_F(BouncePoolReclaim, AnExhaustedRequestTakesBackAnotherCpusCachedSlotsWithoutThatCpu) {
  bounce_test::TestPool t(1 * kMiB, bounce_test::whole_pool_options(1 * kMiB));
  BouncePool& p = t.pool;
  ASSERT_TRUE(p.enable_cpu_caches(&bounce_test::current_cpu, 2).ok());
  g_cpu = 1;
  std::vector<BounceSlot> parked;
  for (int i = 0; i < 4; ++i) parked.push_back(must_alloc(p, kSlot));
  g_cpu = 0;
  BounceSlot rest = must_alloc(p, 508 * kSlot);
  g_cpu = 1;
  for (const BounceSlot& s : parked) ASSERT_TRUE(p.free(s).ok());
  ASSERT_EQ(p.stats().cached_slots, 4u);
  ASSERT_EQ(p.free_block_count(), 0u);

  g_cpu = 0;  // From now on, CPU 1 never calls into the pool.
  std::vector<BounceSlot> got;
  for (int i = 0; i < 4; ++i) got.push_back(must_alloc(p, kSlot));
  EXPECT_EQ(p.stats().failures, 0u);
  EXPECT_EQ(p.stats().cached_slots, 0u);
  EXPECT_EQ(p.stats().used_slots, 512u);
  EXPECT_TRUE(p.check_invariants());
  EXPECT_EQ(p.alloc(kSlot).code(), ErrorCode::kNoMemory);  // Now it is really full.
  EXPECT_EQ(p.stats().failures, 1u);

  for (const BounceSlot& s : got) ASSERT_TRUE(p.free(s).ok());
  ASSERT_TRUE(p.free(rest).ok());
  p.drain_cache();  // Every CPU's cache, CPU 1's included, from CPU 0.
  EXPECT_EQ(p.stats().cached_slots, 0u);
  EXPECT_EQ(p.free_block_count(), 1u);
  EXPECT_TRUE(p.check_invariants());
}

// Without a CPU function, the pool asks the kernel's hooks which CPU runs the caller, and sizes
// its caches by the hooks' max_cpus.
thread_local unsigned t_hook_cpu = 0;
unsigned hook_cpu() {
  return t_hook_cpu;
}

TEST_F(BouncePoolReclaim, TheCpuCachesDefaultToTheKernelHooksCpuId) {
  dmakit_kernel_hooks hooks{};
  hooks.cpu_id = &hook_cpu;
  hooks.max_cpus = 2;
  dmakit_set_kernel_hooks(&hooks);
  bounce_test::TestPool t(1 * kMiB, bounce_test::whole_pool_options(1 * kMiB));
  BouncePool& p = t.pool;
  ASSERT_TRUE(p.enable_cpu_caches().ok());
  t_hook_cpu = 1;
  BounceSlot a = must_alloc(p, kSlot);
  ASSERT_TRUE(p.free(a).ok());  // Into CPU 1's cache.
  t_hook_cpu = 0;
  BounceSlot b = must_alloc(p, kSlot);
  EXPECT_NE(b.first_slot, a.first_slot);  // Not CPU 0's to take while there is room.
  t_hook_cpu = 1;
  BounceSlot c = must_alloc(p, kSlot);
  EXPECT_EQ(c.first_slot, a.first_slot);  // CPU 1's own block back.
  ASSERT_TRUE(p.free(b).ok());
  ASSERT_TRUE(p.free(c).ok());
  p.drain_cache();
  EXPECT_EQ(p.free_block_count(), 1u);
  t_hook_cpu = 0;
}

// The same with no hooks installed: every caller is CPU 0, one cache.
TEST_F(BouncePoolReclaim, WithoutHooksTheCpuCachesAreOneCacheForCpuZero) {
  dmakit_set_kernel_hooks(nullptr);
  bounce_test::TestPool t(1 * kMiB, bounce_test::whole_pool_options(1 * kMiB));
  BouncePool& p = t.pool;
  ASSERT_TRUE(p.enable_cpu_caches().ok());
  BounceSlot a = must_alloc(p, kSlot);
  size_t blocks = p.free_block_count();
  ASSERT_TRUE(p.free(a).ok());
  EXPECT_EQ(p.stats().cached_slots, 1u);
  EXPECT_EQ(p.free_block_count(), blocks);
  BounceSlot b = must_alloc(p, kSlot);
  EXPECT_EQ(b.first_slot, a.first_slot);
  ASSERT_TRUE(p.free(b).ok());
  p.drain_cache();
  EXPECT_EQ(p.free_block_count(), 1u);
}

// Threads as CPUs (the hooks' cpu_id reads a thread_local). CPU 3 parks slots in its cache and
// stops calling in; CPUs 0-2 map and unmap buffers of mixed sizes for a while, then, together,
// take single slots until the pool says kNoMemory. They must end up with every slot of the pool:
// what CPU 3 and their own caches held was taken back by whoever found the pool exhausted.
TEST_F(BouncePoolReclaim, ConcurrentCpusGetEverySlotWhileAnIdleCpuHoldsSomeInItsCache) {
  constexpr unsigned kWorkers = 3;
  constexpr unsigned kIdleCpu = 3;
  dmakit_kernel_hooks hooks{};
  hooks.cpu_id = &hook_cpu;
  hooks.max_cpus = 4;
  dmakit_set_kernel_hooks(&hooks);
  bounce_test::TestPool t(1 * kMiB, bounce_test::whole_pool_options(1 * kMiB));  // 512 slots.
  BouncePool& p = t.pool;
  ASSERT_TRUE(p.enable_cpu_caches(&hook_cpu, 4).ok());  // Budget 16: 4 slots per CPU.
  const uint64_t total = p.stats().total_slots;

  std::atomic<bool> parked{false};
  std::atomic<bool> release_idle{false};
  std::atomic<unsigned> warmed{0};
  std::atomic<uint64_t> bad{0};
  std::thread idle([&] {
    t_hook_cpu = kIdleCpu;
    std::vector<BounceSlot> s;
    for (int i = 0; i < 4; ++i) {
      auto r = p.alloc(kSlot);
      if (r.ok()) s.push_back(*r);
    }
    for (const BounceSlot& x : s) {
      if (!p.free(x).ok()) bad.fetch_add(1);
    }
    parked.store(true);
    while (!release_idle.load()) std::this_thread::yield();
  });
  while (!parked.load()) std::this_thread::yield();

  std::vector<std::vector<BounceSlot>> held(kWorkers);
  std::vector<std::thread> workers;
  for (unsigned w = 0; w < kWorkers; ++w) {
    workers.emplace_back([&, w] {
      t_hook_cpu = w;
      std::mt19937 rng(100 + w);
      std::vector<BounceSlot> mine;
      for (int op = 0; op < 3000; ++op) {
        if (mine.size() < 8 && (mine.empty() || rng() % 2 == 0)) {
          auto r = p.alloc(1 + rng() % (3 * kSlot));
          if (r.ok()) {
            mine.push_back(*r);
          } else if (r.code() != ErrorCode::kNoMemory) {
            bad.fetch_add(1);
          }
        } else {
          size_t k = rng() % mine.size();
          if (!p.free(mine[k]).ok()) bad.fetch_add(1);
          mine[k] = mine.back();
          mine.pop_back();
        }
      }
      for (const BounceSlot& x : mine) {
        if (!p.free(x).ok()) bad.fetch_add(1);
      }
      warmed.fetch_add(1);
      while (warmed.load() < kWorkers) std::this_thread::yield();
      for (;;) {
        auto r = p.alloc(kSlot);
        if (!r.ok()) {
          if (r.code() != ErrorCode::kNoMemory) bad.fetch_add(1);
          break;
        }
        held[w].push_back(*r);
      }
    });
  }
  for (std::thread& th : workers) th.join();

  uint64_t got = 0;
  for (const auto& h : held) got += h.size();
  EXPECT_EQ(bad.load(), 0u);
  EXPECT_EQ(got, total) << "slots stranded in CPU caches";
  EXPECT_EQ(p.stats().used_slots, got);
  EXPECT_TRUE(p.check_invariants());

  for (unsigned w = 0; w < kWorkers; ++w) {
    t_hook_cpu = w;
    for (const BounceSlot& x : held[w]) EXPECT_TRUE(p.free(x).ok());
  }
  release_idle.store(true);
  idle.join();
  t_hook_cpu = 0;
  p.drain_cache();
  EXPECT_EQ(p.stats().used_slots, 0u);
  EXPECT_EQ(p.stats().cached_slots, 0u);
  EXPECT_EQ(p.free_block_count(), 1u);
  EXPECT_TRUE(p.check_invariants());
}

// Callers that change CPUs between any two calls (a preemptive kernel that migrates them) and
// several callers on one CPU index at the same moment (a handler and the code it interrupted, or
// two preempted threads) share the per-CPU caches: no slot is ever handed to two of them.
TEST_F(BouncePoolReclaim, ConcurrentCallersMovingBetweenCpusNeverShareASlot) {
  constexpr unsigned kThreads = 4;
  constexpr unsigned kCpus = 2;
  bounce_test::TestPool t(1 * kMiB, bounce_test::whole_pool_options(1 * kMiB));
  BouncePool& p = t.pool;
  ASSERT_TRUE(p.enable_cpu_caches(&bounce_test::current_cpu, kCpus).ok());
  std::atomic<uint64_t> bad_data{0};
  std::atomic<uint64_t> bad_calls{0};
  std::vector<std::thread> threads;
  for (unsigned id = 0; id < kThreads; ++id) {
    threads.emplace_back([&, id] {
      std::mt19937 rng(300 + id);
      const auto tag = static_cast<uint8_t>(0x11 * (id + 1));
      for (int op = 0; op < 4000; ++op) {
        g_cpu = rng() % kCpus;
        size_t size = 1 + rng() % (2 * kSlot);
        auto r = p.alloc(size);
        if (!r.ok()) {
          if (r.code() != ErrorCode::kNoMemory) bad_calls.fetch_add(1);
          continue;
        }
        uint8_t* d = t.data(*r);
        for (size_t i = 0; i < size; ++i) d[i] = tag;
        if (rng() % 4 == 0) std::this_thread::yield();
        for (size_t i = 0; i < size; ++i) {
          if (d[i] != tag) {
            bad_data.fetch_add(1);
            break;
          }
        }
        g_cpu = rng() % kCpus;
        if (!p.free(*r).ok()) bad_calls.fetch_add(1);
      }
    });
  }
  for (std::thread& th : threads) th.join();
  EXPECT_EQ(bad_data.load(), 0u);
  EXPECT_EQ(bad_calls.load(), 0u);
  g_cpu = 0;
  p.drain_cache();
  EXPECT_TRUE(p.check_invariants());
  EXPECT_EQ(p.stats().used_slots, 0u);
  EXPECT_EQ(p.stats().cached_slots, 0u);
  EXPECT_EQ(p.free_block_count(), 1u);
}

}  // namespace
