// The common half of SMP in the test kernel: the per-CPU table, starting the secondaries, and
// the work slots (see percpu.h for the scheme). The arch half is arch::start_cpu and friends
// (testkernel/arch.h).
#include "testkernel/percpu.h"

#include "dmakit/support/assert.h"
#include "testkernel/arch.h"
#include "testkernel/kprintf.h"
#include "testkernel/kstring.h"
#include "testkernel/panic.h"

namespace {

constexpr size_t kStackSize = 32 * 1024;
constexpr size_t kTrapStackSize = 16 * 1024;
// How long a started CPU may take to come online. Generous: QEMU's TCG threads share a busy host.
constexpr uint64_t kOnlineTimeoutNs = 5'000'000'000ull;

static_assert(__builtin_offsetof(PerCpu, self) == kPerCpuSelfOffset, "entry code offsets");
static_assert(__builtin_offsetof(PerCpu, trap_stack_top) == kPerCpuTrapStackOffset,
              "entry code offsets");
static_assert(__builtin_offsetof(PerCpu, stack_top) == kPerCpuStackOffset, "entry code offsets");

// The secondaries' stacks (the boot CPU keeps the stacks its entry code set up). Part of the
// kernel image, so reserved with it and mapped wherever the image is.
alignas(4096) uint8_t g_stacks[kMaxCpus][kStackSize];
alignas(4096) uint8_t g_trap_stacks[kMaxCpus][kTrapStackSize];

unsigned g_num_cpus = 1;
unsigned g_num_online = 1;
// The CPU that `smp_fail=<index>` on the command line makes give up on purpose (0: none; the
// boot CPU cannot be made to fail), to exercise the path a CPU that fails to come up takes.
unsigned g_smp_fail = 0;

// `smp_fail=<index>` from the command line: the index, or 0 when absent or not a number.
unsigned smp_fail_from(const char* cmdline) {
  char v[16] = "";
  if (cmdline == nullptr || !kstr::cmdline_value(cmdline, "smp_fail", v, sizeof(v))) return 0;
  unsigned n = 0;
  for (const char* p = v; *p != '\0'; ++p) {
    if (*p < '0' || *p > '9' || n > kMaxCpus) return 0;
    n = n * 10 + static_cast<unsigned>(*p - '0');
  }
  return n;
}

// Runs the work item in `c`'s slot if there is one and none is running; returns whether it ran
// one. Only the CPU owning the slot calls it.
bool serve_slot(PerCpu* c) {
  uint32_t posted = __atomic_load_n(&c->posted, __ATOMIC_ACQUIRE);
  if (posted == c->done || c->running) return false;
  void (*fn)(void*) = c->work_fn;
  void* arg = c->work_arg;
  c->running = true;
  uintptr_t s = arch::irq_save();
  fn(arg);
  arch::irq_restore(s);
  c->running = false;
  ++c->works_run;
  __atomic_store_n(&c->done, posted, __ATOMIC_RELEASE);
  return true;
}

}  // namespace

// Constant-initialised (all zero): valid before global constructors run, and untouched by them.
// extern "C": RISC-V's boot.S installs entry 0 before any C++ code runs.
extern "C" {
constinit PerCpu testkernel_percpu[kMaxCpus];
}

PerCpu& cpu_data(unsigned i) {
  KASSERT(i < kMaxCpus, "cpu_data: index out of range");
  return testkernel_percpu[i];
}

unsigned num_cpus() {
  return __atomic_load_n(&g_num_cpus, __ATOMIC_ACQUIRE);
}

unsigned num_online_cpus() {
  return __atomic_load_n(&g_num_online, __ATOMIC_ACQUIRE);
}

bool cpu_online(unsigned i) {
  return i < kMaxCpus && __atomic_load_n(&testkernel_percpu[i].online, __ATOMIC_ACQUIRE);
}

void smp_init_boot_cpu(uint64_t hw_id) {
  PerCpu& c = testkernel_percpu[0];
  c.self = &c;
  c.index = 0;
  c.hw_id = hw_id;
  c.online = true;
  arch::set_this_cpu(&c);
}

unsigned smp_prepare(const arch::BootInfo& info) {
  uint64_t ids[kMaxCpus] = {};
  unsigned n = arch::cpu_hw_ids(info, ids, kMaxCpus);
  if (n == 0 || ids[0] != testkernel_percpu[0].hw_id) {
    kpanic("smp: the firmware's CPU list does not start with the boot CPU (id 0x%llx)",
           static_cast<unsigned long long>(testkernel_percpu[0].hw_id));
  }
  if (info.num_cpus > kMaxCpus) {
    kprintf("smp: %u CPUs described, using the first %u\n", info.num_cpus, kMaxCpus);
  }
  for (unsigned i = 1; i < n; ++i) {
    PerCpu& c = testkernel_percpu[i];
    c.self = &c;
    c.index = i;
    c.hw_id = ids[i];
    c.stack_top = reinterpret_cast<uintptr_t>(g_stacks[i] + kStackSize);
    c.trap_stack_top = reinterpret_cast<uintptr_t>(g_trap_stacks[i] + kTrapStackSize);
  }
  g_smp_fail = smp_fail_from(info.cmdline);
  if (g_smp_fail != 0) kprintf("smp: cpu %u is told to fail (smp_fail)\n", g_smp_fail);
  __atomic_store_n(&g_num_cpus, n, __ATOMIC_RELEASE);
  return n;
}

unsigned smp_start_secondaries() {
  for (unsigned i = 1; i < num_cpus(); ++i) {
    PerCpu& c = testkernel_percpu[i];
    if (!arch::start_cpu(c)) {
      kprintf("smp: cpu %u (id 0x%llx): the start request was refused; going on without it\n", i,
              static_cast<unsigned long long>(c.hw_id));
      continue;
    }
    uint64_t deadline = arch::now_ns() + kOnlineTimeoutNs;
    while (!__atomic_load_n(&c.online, __ATOMIC_ACQUIRE) &&
           !__atomic_load_n(&c.gave_up, __ATOMIC_ACQUIRE) && arch::now_ns() < deadline) {
      arch::cpu_relax();
    }
    if (__atomic_load_n(&c.gave_up, __ATOMIC_ACQUIRE)) {
      // It said why on the console; no need to wait out the timeout.
      kprintf("smp: cpu %u (id 0x%llx) failed to come up; going on without it\n", i,
              static_cast<unsigned long long>(c.hw_id));
    } else if (!__atomic_load_n(&c.online, __ATOMIC_ACQUIRE)) {
      // If it still comes up later, it counts itself online and is used like the others.
      kprintf("smp: cpu %u (id 0x%llx) did not come online; going on without it\n", i,
              static_cast<unsigned long long>(c.hw_id));
    }
  }
  return num_online_cpus();
}

extern "C" void secondary_main(PerCpu* self) {
  // The arch entry code has set up this CPU's part of the interrupt controller. Its own periodic
  // timer (counting only), so that DMA calls running here are interrupted in the middle.
  if (self->index == g_smp_fail) secondary_give_up(self, "told to fail by smp_fail=");
  Result<void> t = arch::timer_start_this_cpu(arch::kDefaultTimerPeriodNs, nullptr, nullptr);
  if (!t.ok()) kpanic("smp: cpu %u: timer: error %d", self->index, static_cast<int>(t.code()));
  __atomic_fetch_add(&g_num_online, 1, __ATOMIC_ACQ_REL);
  __atomic_store_n(&self->online, true, __ATOMIC_RELEASE);
  arch::irq_enable_local();
  for (;;) {
    // Look at the slot and wait with interrupts masked, so that a wake interrupt arriving in
    // between is still pending at the wait (and ends it); it is taken right after.
    uintptr_t s = arch::irq_save();
    if (!smp_work_pending(*self)) arch::idle_wait();
    arch::irq_restore(s);
    serve_slot(self);
  }
}

void secondary_give_up(PerCpu* self, const char* what) {
  kprintf("smp: cpu %u (id 0x%llx): %s; it stays offline\n", self->index,
          static_cast<unsigned long long>(self->hw_id), what);
  __atomic_store_n(&self->gave_up, true, __ATOMIC_RELEASE);
  arch::irq_disable_local();
  for (;;) arch::idle_wait();
}

Result<uint32_t> post_cpu_work(unsigned cpu, void (*fn)(void*), void* arg) {
  if (cpu >= num_cpus() || !cpu_online(cpu) || cpu == cpu_index() || fn == nullptr) {
    return ErrorCode::kInvalidArgument;
  }
  PerCpu& c = testkernel_percpu[cpu];
  uint32_t ticket = 0;
  for (;;) {
    uintptr_t s = arch::irq_save();
    c.post_lock.lock();
    bool free = c.posted == __atomic_load_n(&c.done, __ATOMIC_ACQUIRE);
    if (free) {
      c.work_fn = fn;
      c.work_arg = arg;
      ticket = c.posted + 1;
      __atomic_store_n(&c.posted, ticket, __ATOMIC_RELEASE);
    }
    c.post_lock.unlock();
    arch::irq_restore(s);
    if (free) break;
    smp_relax();
  }
  arch::wake_cpu(c);
  return ticket;
}

void wait_cpu_work(unsigned cpu, uint32_t ticket) {
  PerCpu& c = cpu_data(cpu);
  while (static_cast<int32_t>(__atomic_load_n(&c.done, __ATOMIC_ACQUIRE) - ticket) < 0) {
    smp_relax();
  }
}

Result<void> run_on_cpu(unsigned cpu, void (*fn)(void*), void* arg) {
  if (cpu < kMaxCpus && cpu == cpu_index()) {
    uintptr_t s = arch::irq_save();
    fn(arg);
    arch::irq_restore(s);
    return support::ok();
  }
  auto t = post_cpu_work(cpu, fn, arg);
  if (!t.ok()) return t.error();
  wait_cpu_work(cpu, *t);
  return support::ok();
}

void run_on_all_cpus(void (*fn)(void*), void* arg) {
  uint32_t tickets[kMaxCpus] = {};
  bool posted[kMaxCpus] = {};
  unsigned me = cpu_index();
  for (unsigned i = 0; i < num_cpus(); ++i) {
    if (i == me || !cpu_online(i)) continue;
    auto t = post_cpu_work(i, fn, arg);
    if (t.ok()) {
      tickets[i] = *t;
      posted[i] = true;
    }
  }
  uintptr_t s = arch::irq_save();
  fn(arg);
  arch::irq_restore(s);
  for (unsigned i = 0; i < num_cpus(); ++i) {
    if (posted[i]) wait_cpu_work(i, tickets[i]);
  }
}

void smp_relax(bool serve_work) {
  arch::cpu_relax();
  PerCpu* me = this_cpu();
  if (serve_work && me != nullptr) serve_slot(me);
}
