// In-VM tests of interrupts on every CPU: each secondary has its own part of the interrupt
// controller set up and its own periodic timer running (testkernel/smp.cc's secondary_main), and
// a device's MSI can be steered to any online CPU, where its handler completes (and unmaps) the
// transfer the boot CPU started; and a stress run in which every CPU's timer handler maps and
// unmaps bounced buffers while every CPU's thread context does the same on the same pool.
#include "dmakit/support/spinlock.h"
#include "drivers/edu/edu_device.h"
#include "testkernel/arch.h"
#include "testkernel/devices.h"
#include "testkernel/kernel_env.h"
#include "testkernel/kprintf.h"
#include "testkernel/percpu.h"
#include "tests/qemu/ktest.h"
#include "tests/qemu/test_util.h"

using ktest_util::Pages;

namespace {

constexpr uint64_t kMask32 = 0xFFFF'FFFFull;
constexpr uint64_t kPage = ktest_util::kPage;

void read_ticks(void* out) {
  static_cast<uint64_t*>(out)[cpu_index()] = arch::timer_ticks_this_cpu();
}

}  // namespace

KTEST(smp_irq_every_cpu_takes_its_own_timer_ticks) {
  uint64_t before[kMaxCpus] = {};
  uint64_t after[kMaxCpus] = {};
  run_on_all_cpus(&read_ticks, before);
  // 30 periods of the default timer; idle CPUs count their ticks while they wait.
  const uint64_t start = arch::now_ns();
  while (arch::now_ns() - start < 30 * arch::kDefaultTimerPeriodNs) arch::irq_wait();
  run_on_all_cpus(&read_ticks, after);
  for (unsigned i = 0; i < num_cpus(); ++i) {
    if (!cpu_online(i)) continue;
    KEXPECT_GE(after[i], before[i] + 5);
  }
}

KTEST(smp_irq_edu_msi_steered_to_every_cpu_completes_there) {
  Devices* d = nullptr;
  {
    auto r = devices_init(kernel_env());
    KREQUIRE_OK(r);
    d = *r;
  }
  const Devices::Edu* e = d->edu_with_mask(kMask32);
  KREQUIRE_TRUE(e != nullptr);
  Pages a(0);
  Pages b(0);
  KREQUIRE_TRUE(a.ok() && b.ok());
  const KernelDmaOp::Stats s0 = kernel_env().dma->stats();
  for (unsigned cpu = 0; cpu < num_cpus(); ++cpu) {
    if (!cpu_online(cpu)) continue;
    EduDevice edu;
    DeviceDma dma = d->device_dma(e->dev, e->dma_mask);
    dma.set_name("edu-smp-irq");
    KREQUIRE_OK(edu.init(e->dev, dma));
    KREQUIRE_OK(edu.enable_interrupts(cpu));
    // Bounced on every other CPU, so that the handler's unmap is also the copy out of the slot.
    edu.dma().set_force_bounce(cpu % 2 == 1);
    const uint32_t seed = 0x5100 + cpu;
    ktest_util::fill_pattern(a.va(), kPage, seed);
    support::fill_bytes(b.va(), 0, kPage);
    KREQUIRE_OK(edu.copy_to_device(a.va(), kPage));
    KREQUIRE_OK(edu.copy_from_device(b.va(), kPage));
    KEXPECT_EQ(ktest_util::check_pattern(b.va(), kPage, seed), kPage);
    KEXPECT_EQ(edu.stats().interrupts, 2u);
    KEXPECT_EQ(edu.stats().irq_unmaps, 2u);
    edu.disable_interrupts();
    KEXPECT_EQ(edu.dma().check_no_mappings(), 0u);
  }
  KEXPECT_EQ(kernel_env().dma->stats().live_maps, s0.live_maps);
}

// ---------------------------------------------------------------------------------------------
// Stress: timer handlers and threads on every CPU, one bounce pool

namespace {

constexpr size_t kStressBytes = 768;
constexpr uint64_t kStressPeriodNs = 500'000;
constexpr uint64_t kThreadRounds = 400;
constexpr uint64_t kIrqRounds = 100;
constexpr uint64_t kStressTimeoutNs = 20'000'000'000ull;

// One context's mappings: its device view, its buffer and what it saw.
struct Stream {
  DeviceDma* dma = nullptr;
  uint8_t* buf = nullptr;
  uint32_t seed = 0;
  uint64_t limit = 0;  // Rounds to run (the timer handler stops there).
  uint64_t rounds = 0;
  uint64_t map_failures = 0;
  uint64_t bad_data = 0;
};

// One bounced round in each direction (to the device, from it, both ways), every byte checked on
// both sides of the slot; the length and the offset in the page vary with the round.
void stream_round(Stream& s) {
  const uint32_t seed = s.seed++;
  const size_t len = kStressBytes - (seed % 7) * 64;
  uint8_t* buf = s.buf + (seed % 5) * 16;
  ktest_util::fill_pattern(buf, len, seed);
  {
    auto m = s.dma->map(buf, len, DmaDirection::kToDevice);
    if (!m.ok()) {
      ++s.map_failures;
      return;
    }
    if (!m->bounced() ||
        ktest_util::check_pattern(ktest_util::device_view(m->dma_addr()), len, seed) != len) {
      ++s.bad_data;
    }
  }
  {
    auto m = s.dma->map(buf, len, DmaDirection::kFromDevice);
    if (!m.ok()) {
      ++s.map_failures;
      return;
    }
    ktest_util::device_write_pattern(m->dma_addr(), len, seed + 0x10000);
    m->unmap();
    if (ktest_util::check_pattern(buf, len, seed + 0x10000) != len) ++s.bad_data;
  }
  {
    auto m = s.dma->map(buf, len, DmaDirection::kBidirectional);
    if (!m.ok()) {
      ++s.map_failures;
      return;
    }
    uint8_t* dev = ktest_util::device_view(m->dma_addr());
    if (ktest_util::check_pattern(dev, len, seed + 0x10000) != len) ++s.bad_data;
    ktest_util::fill_pattern(dev, len, seed + 0x20000);
    m->unmap();
    if (ktest_util::check_pattern(buf, len, seed + 0x20000) != len) ++s.bad_data;
  }
  ++s.rounds;
}

void stress_tick(void* ctx) {
  auto* s = static_cast<Stream*>(ctx);
  if (s->rounds < s->limit) stream_round(*s);
}

struct CpuStress {
  Stream thread;
  Stream irq;
  bool timer_failed = false;
  bool timed_out = false;
};

struct StressRun {
  CpuStress cpu[kMaxCpus];
};

// Runs on every CPU (posted with interrupts masked): its own timer with the handler above, then
// interrupts on while its thread context runs its rounds and until its handler has run its own.
void stress_cpu(void* arg) {
  CpuStress& c = static_cast<StressRun*>(arg)->cpu[cpu_index()];
  if (!arch::timer_start_this_cpu(kStressPeriodNs, &stress_tick, &c.irq).ok()) {
    c.timer_failed = true;
    return;
  }
  arch::irq_enable_local();
  const uint64_t start = arch::now_ns();
  while (c.thread.rounds < c.thread.limit ||
         __atomic_load_n(&c.irq.rounds, __ATOMIC_RELAXED) < c.irq.limit) {
    if (arch::now_ns() - start > kStressTimeoutNs) {
      c.timed_out = true;
      break;
    }
    if (c.thread.rounds < c.thread.limit) stream_round(c.thread);
  }
  arch::irq_disable_local();
  // Back to the default timer (counting only) before the handler's state goes away.
  if (!arch::timer_start_this_cpu(arch::kDefaultTimerPeriodNs, nullptr, nullptr).ok()) {
    c.timer_failed = true;
  }
}

}  // namespace

// Every CPU's timer interrupt lands in the middle of that CPU's own bounced maps and unmaps (in
// the pool's lock, in the per-CPU cache) and itself maps and unmaps through the same pool, while
// the other CPUs do the same: a fixed number of rounds per context, every byte checked, and the
// pool and the mapping count back where they started. Needs the library's locks and per-CPU
// caches to mask interrupts (the kernel's irq_save hook); without that the first collision
// deadlocks, so the test stops before.
KTEST(smp_irq_timer_handlers_and_threads_bounce_on_every_cpu) {
  {
    support::SpinLock probe;
    probe.lock();
    const bool masked = !arch::irq_enabled_local();
    probe.unlock();
    KREQUIRE_TRUE(masked && "the library's spinlock does not mask interrupts (irq_save hook)");
  }
  BouncePool* pool = ktest_util::pool_named("dma32");
  KREQUIRE_TRUE(pool != nullptr);
  const uint64_t used0 = pool->stats().used_slots;
  const uint64_t live0 = kernel_env().dma->stats().live_maps;
  static StressRun run;
  run = StressRun{};
  static DeviceDma dmas[kMaxCpus][2];
  // A page per context: 2 * kMaxCpus pages.
  Pages pages(4);
  KREQUIRE_TRUE(pages.ok());
  static_assert(2 * kMaxCpus <= 16, "one page per context");
  for (unsigned i = 0; i < num_cpus(); ++i) {
    for (unsigned k = 0; k < 2; ++k) {
      dmas[i][k] = DeviceDma(kernel_env().dma, kMask32);
      dmas[i][k].set_name(k == 0 ? "smp-stress-thread" : "smp-stress-irq");
      dmas[i][k].set_force_bounce(true);
    }
    CpuStress& c = run.cpu[i];
    c.thread = Stream{&dmas[i][0], pages.va() + (2 * i) * kPage, 1000u * i, kThreadRounds};
    c.irq =
        Stream{&dmas[i][1], pages.va() + (2 * i + 1) * kPage, 1'000'000u + 1000u * i, kIrqRounds};
  }
  run_on_all_cpus(&stress_cpu, &run);
  uint64_t thread_rounds = 0;
  uint64_t irq_rounds = 0;
  for (unsigned i = 0; i < num_cpus(); ++i) {
    if (!cpu_online(i)) continue;
    const CpuStress& c = run.cpu[i];
    KEXPECT_FALSE(c.timer_failed);
    KEXPECT_FALSE(c.timed_out);
    KEXPECT_EQ(c.thread.rounds, kThreadRounds);
    KEXPECT_EQ(c.irq.rounds, kIrqRounds);
    KEXPECT_EQ(c.thread.map_failures + c.irq.map_failures, 0u);
    KEXPECT_EQ(c.thread.bad_data + c.irq.bad_data, 0u);
    KEXPECT_EQ(dmas[i][0].check_no_mappings() + dmas[i][1].check_no_mappings(), 0u);
    thread_rounds += c.thread.rounds;
    irq_rounds += c.irq.rounds;
  }
  kprintf("  smp stress: %u cpus, %llu thread rounds, %llu timer-interrupt rounds\n",
          num_online_cpus(), static_cast<unsigned long long>(thread_rounds),
          static_cast<unsigned long long>(irq_rounds));
  KEXPECT_EQ(pool->stats().used_slots, used0);
  KEXPECT_EQ(kernel_env().dma->stats().live_maps, live0);
}
