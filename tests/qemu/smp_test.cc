// In-VM tests of the test kernel's SMP support (testkernel/percpu.h): every CPU the firmware
// describes is online and knows its index, work reaches the CPU it was posted to, the kernel
// hook table answers for the calling CPU, streaming DMA from every CPU at once leaves the
// bounce pools as they were, the remote TLB invalidation hook returns on every CPU, and console
// lines from several CPUs do not interleave. With one CPU they still run (on CPU 0 alone).
#include "dmakit/kernel_hooks.h"
#include "testkernel/arch.h"
#include "testkernel/kernel_env.h"
#include "testkernel/kprintf.h"
#include "testkernel/kstring.h"
#include "testkernel/percpu.h"
#include "tests/qemu/ktest.h"
#include "tests/qemu/test_util.h"

using ktest_util::device_view;
using ktest_util::device_write_pattern;

namespace {

constexpr unsigned kStressIterations = 300;
constexpr DmaDirection kDirs[] = {DmaDirection::kToDevice, DmaDirection::kFromDevice,
                                  DmaDirection::kBidirectional};
constexpr size_t kStressSizes[] = {1, 64, 333, 4096, 5000};

unsigned expected_cpus() {
  unsigned described = kernel_env().boot->num_cpus;
  return described < kMaxCpus ? described : kMaxCpus;
}

// What a work item saw about the CPU it ran on.
struct Seen {
  unsigned index = ~0u;
  const PerCpu* self = nullptr;
  unsigned hook_cpu = ~0u;
  unsigned runs = 0;
};
Seen g_seen[kMaxCpus];

void record_cpu(void*) {
  unsigned i = cpu_index();
  g_seen[i].index = i;
  g_seen[i].self = this_cpu();
  g_seen[i].hook_cpu = dma::kernel_hooks().cpu_id();
  __atomic_fetch_add(&g_seen[i].runs, 1u, __ATOMIC_RELAXED);
}

void clear_seen() {
  for (Seen& s : g_seen) s = Seen{};
}

uint64_t used_slots() {
  uint64_t n = 0;
  for (size_t i = 0; i < kernel_env().num_pools; ++i)
    n += kernel_env().pools[i]->stats().used_slots;
  return n;
}
uint64_t cached_slots() {
  uint64_t n = 0;
  for (size_t i = 0; i < kernel_env().num_pools; ++i) {
    n += kernel_env().pools[i]->stats().cached_slots;
  }
  return n;
}
unsigned g_arrived = 0;

// The round the next barrier() calls are for; call it before posting them (every earlier
// round is complete then).
unsigned next_barrier_round() {
  return __atomic_load_n(&g_arrived, __ATOMIC_ACQUIRE) / num_online_cpus() + 1;
}

// Returns once every online CPU has called it for `round` (g_arrived counts up to
// round * CPUs).
void barrier(unsigned round) {
  __atomic_fetch_add(&g_arrived, 1u, __ATOMIC_ACQ_REL);
  while (__atomic_load_n(&g_arrived, __ATOMIC_ACQUIRE) < round * num_online_cpus()) {
    arch::cpu_relax();
  }
}

void drain_pools(void*) {
  for (size_t i = 0; i < kernel_env().num_pools; ++i) kernel_env().pools[i]->drain_cache();
}

}  // namespace

KTEST(smp_every_cpu_online_with_its_index) {
  KEXPECT_EQ(num_cpus(), expected_cpus());
  KEXPECT_EQ(num_online_cpus(), num_cpus());
  KEXPECT_EQ(cpu_index(), 0u);
  KEXPECT_EQ(this_cpu(), &cpu_data(0));
  KEXPECT_EQ(dma::kernel_hooks().max_cpus, num_cpus());
  clear_seen();
  for (unsigned i = 0; i < num_cpus(); ++i) {
    KEXPECT_TRUE(cpu_online(i));
    KEXPECT_OK(run_on_cpu(i, &record_cpu, nullptr));
    KEXPECT_EQ(g_seen[i].index, i);
    KEXPECT_EQ(g_seen[i].self, &cpu_data(i));
    KEXPECT_EQ(g_seen[i].hook_cpu, i);
    KEXPECT_EQ(g_seen[i].runs, 1u);
    for (unsigned j = 0; j < i; ++j) KEXPECT_NE(cpu_data(j).hw_id, cpu_data(i).hw_id);
  }
  // Work for a CPU that does not exist is refused.
  KEXPECT_ERR(run_on_cpu(kMaxCpus, &record_cpu, nullptr), ErrorCode::kInvalidArgument);
  KEXPECT_ERR(run_on_cpu(num_cpus(), &record_cpu, nullptr), ErrorCode::kInvalidArgument);
}

KTEST(smp_run_on_all_cpus_runs_once_on_each) {
  for (int round = 0; round < 3; ++round) {
    clear_seen();
    uint64_t before[kMaxCpus];
    for (unsigned i = 0; i < num_cpus(); ++i) before[i] = cpu_data(i).works_run;
    run_on_all_cpus(&record_cpu, nullptr);
    for (unsigned i = 0; i < num_cpus(); ++i) {
      KEXPECT_EQ(g_seen[i].runs, 1u);
      KEXPECT_EQ(g_seen[i].index, i);
      // The others ran it from their slot; the caller ran it directly.
      KEXPECT_EQ(cpu_data(i).works_run - before[i], i == 0 ? 0u : 1u);
    }
    for (unsigned i = num_cpus(); i < kMaxCpus; ++i) KEXPECT_EQ(g_seen[i].runs, 0u);
  }
  // The hook table's on_each_cpu is the same operation.
  clear_seen();
  dma::kernel_hooks().on_each_cpu(&record_cpu, nullptr);
  for (unsigned i = 0; i < num_cpus(); ++i) KEXPECT_EQ(g_seen[i].runs, 1u);
}

// A CPU the firmware does not have: the start request is refused (PSCI, SBI HSM) or the CPU
// never comes online (an INIT-SIPI-SIPI to nobody); either way nothing else changes and the
// online CPUs keep working.
KTEST(smp_start_of_a_missing_cpu_fails_cleanly) {
  static PerCpu ghost;
  ghost.self = &ghost;
  ghost.index = kMaxCpus - 1;
  uint64_t used = 0;
  for (unsigned i = 0; i < num_cpus(); ++i) used |= 1ull << (cpu_data(i).hw_id & 63);
  // An id no described CPU has (small, so that every arch can address it).
  uint64_t id = 0;
  while (id < 64 && (used & (1ull << id)) != 0) ++id;
  ghost.hw_id = id + 0x40;
  static uint8_t stack[4096];
  ghost.stack_top = reinterpret_cast<uintptr_t>(stack + sizeof(stack));
  ghost.trap_stack_top = ghost.stack_top;
  unsigned online = num_online_cpus();
  if (arch::start_cpu(ghost)) {
    uint64_t until = arch::now_ns() + 200'000'000;
    while (arch::now_ns() < until) arch::cpu_relax();
  }
  KEXPECT_FALSE(__atomic_load_n(&ghost.online, __ATOMIC_ACQUIRE));
  KEXPECT_EQ(num_online_cpus(), online);
  clear_seen();
  run_on_all_cpus(&record_cpu, nullptr);
  for (unsigned i = 0; i < num_cpus(); ++i) KEXPECT_EQ(g_seen[i].runs, 1u);
}

namespace {

// A work item that itself waits for work on another CPU: the waits serve each CPU's own slot,
// so CPUs that post to each other at once finish.
void post_to_neighbour(void* counter) {
  unsigned next = (cpu_index() + 1) % num_cpus();
  auto r = run_on_cpu(
      next, [](void* c) { __atomic_fetch_add(static_cast<unsigned*>(c), 1u, __ATOMIC_RELAXED); },
      counter);
  if (!r.ok()) __atomic_fetch_add(static_cast<unsigned*>(counter), 1000u, __ATOMIC_RELAXED);
}

}  // namespace

KTEST(smp_cpus_posting_to_each_other_do_not_deadlock) {
  unsigned counter = 0;
  for (int round = 0; round < 20; ++round) run_on_all_cpus(&post_to_neighbour, &counter);
  KEXPECT_EQ(counter, 20u * num_cpus());
}

namespace {

struct StressShared {
  unsigned round = 0;  // For barrier().
  uint8_t* bufs[kMaxCpus] = {};
  unsigned failures[kMaxCpus] = {};
  unsigned mapped_bounced[kMaxCpus] = {};
  unsigned mapped_direct[kMaxCpus] = {};
  char first_failure[kMaxCpus][96] = {};
};

void note_failure(StressShared* s, unsigned me, const char* what, unsigned i) {
  if (s->failures[me]++ == 0) {
    ksnprintf(s->first_failure[me], sizeof(s->first_failure[me]), "cpu %u iteration %u: %s", me, i,
              what);
  }
}

// Streaming mappings on the calling CPU, direct and bounced, every direction, the data checked
// through the stand-in device after map and in the buffer after unmap.
void stress_worker(void* arg) {
  auto* s = static_cast<StressShared*>(arg);
  unsigned me = cpu_index();
  KernelDmaOp* op = kernel_env().dma;
  barrier(s->round);  // All CPUs map at the same time.
  for (unsigned i = 0; i < kStressIterations; ++i) {
    DmaConstraints c = op->default_constraints();
    c.force_bounce = (i & 1) != 0;
    DmaDirection dir = kDirs[(i / 2) % 3];
    size_t size = kStressSizes[(i + me) % (sizeof(kStressSizes) / sizeof(kStressSizes[0]))];
    // Line-aligned buffers map directly even for a non-coherent device that writes them.
    uint8_t* buf = s->bufs[me] + (c.force_bounce ? (i % 7) * 3 : 0);
    uint32_t cpu_seed = me * 100'000 + i;
    uint32_t dev_seed = cpu_seed + 50'000;
    ktest_util::fill_pattern(buf, size, cpu_seed);
    auto h = op->map_single(c, buf, size, 0, dir);
    if (!h.ok()) {
      note_failure(s, me, error_code_name(h.code()), i);
      continue;
    }
    ++(h->bounced() ? s->mapped_bounced[me] : s->mapped_direct[me]);
    if (ktest_util::check_pattern(device_view(h->dma_addr), size, cpu_seed) != size) {
      note_failure(s, me, "the device does not see the CPU's bytes", i);
    }
    if (dir != DmaDirection::kToDevice) device_write_pattern(h->dma_addr, size, dev_seed);
    op->unmap_single(*h);
    uint32_t want = dir == DmaDirection::kToDevice ? cpu_seed : dev_seed;
    if (ktest_util::check_pattern(buf, size, want) != size) {
      note_failure(s, me, "the CPU does not see the device's bytes after unmap", i);
    }
  }
}

}  // namespace

KTEST(smp_streaming_dma_from_every_cpu_at_once) {
  KREQUIRE_TRUE(kernel_env().num_pools > 0);
  run_on_all_cpus(&drain_pools, nullptr);
  const uint64_t used_before = used_slots();
  const uint64_t free_pages_before = kernel_env().pfa->free_pages();
  KEXPECT_EQ(cached_slots(), 0u);

  static StressShared s;
  s = StressShared{};
  s.round = next_barrier_round();
  PhysAddr pages[kMaxCpus];
  for (unsigned i = 0; i < num_cpus(); ++i) {
    auto p = kernel_env().pfa->alloc(1);
    KREQUIRE_OK(p);
    pages[i] = *p;
    s.bufs[i] = static_cast<uint8_t*>(kernel_env().phys_to_virt(*p));
  }
  run_on_all_cpus(&stress_worker, &s);
  for (unsigned i = 0; i < num_cpus(); ++i) {
    if (s.failures[i] != 0) {
      ktest_ctx.fail(__FILE__, __LINE__, "%u failure(s), first: %s", s.failures[i],
                     s.first_failure[i]);
    }
    // Forced on every other iteration; others bounce when a non-coherent device would share a
    // cache line with other data.
    KEXPECT_GE(s.mapped_bounced[i], kStressIterations / 2);
    KEXPECT_GT(s.mapped_direct[i], 0u);
    KEXPECT_EQ(s.mapped_direct[i] + s.mapped_bounced[i] + s.failures[i], kStressIterations);
    KEXPECT_OK(kernel_env().pfa->free(pages[i], 1));
  }
  // Every CPU gives its cached slots back: nothing is lost.
  run_on_all_cpus(&drain_pools, nullptr);
  KEXPECT_EQ(cached_slots(), 0u);
  KEXPECT_EQ(used_slots(), used_before);
  KEXPECT_EQ(kernel_env().pfa->free_pages(), free_pages_before);
}

namespace {

struct FlushRun {
  uintptr_t va;
  unsigned returned = 0;
};

void flush_from_here(void* arg) {
  auto* r = static_cast<FlushRun*>(arg);
  dma::kernel_hooks().tlb_flush_kernel_range(r->va, 3 * ktest_util::kPage);
  __atomic_fetch_add(&r->returned, 1u, __ATOMIC_RELAXED);
}

}  // namespace

// Every CPU at once asks every other CPU to invalidate: each call returns (on x86-64 this is the
// IPI path, with each waiter serving the others' requests meanwhile); the page keeps its data.
KTEST(smp_tlb_flush_hook_from_every_cpu_at_once) {
  const dmakit_kernel_hooks& h = dma::kernel_hooks();
  KREQUIRE_TRUE(h.tlb_flush_kernel_range != nullptr);
  ktest_util::Pages pages(2);
  KREQUIRE_TRUE(pages.ok());
  ktest_util::fill_pattern(pages.va(), pages.bytes(), 9);
  FlushRun run{reinterpret_cast<uintptr_t>(pages.va())};
  for (int round = 0; round < 10; ++round) run_on_all_cpus(&flush_from_here, &run);
  KEXPECT_EQ(run.returned, 10u * num_cpus());
  // A range larger than the per-page limit takes the whole-TLB path.
  h.tlb_flush_kernel_range(reinterpret_cast<uintptr_t>(pages.va()), 1u << 20);
  KEXPECT_EQ(ktest_util::check_pattern(pages.va(), pages.bytes(), 9), pages.bytes());
}

namespace {

constexpr unsigned kTlbRounds = 8;

struct TlbRun {
  unsigned round = 0;  // For barrier().
  uintptr_t va = 0;
  PhysAddr pages[2];
  uint64_t words[2] = {};  // The first word of each page.
  uint64_t seen[kMaxCpus][kTlbRounds] = {};
  bool remap_failed = false;
};

// Every CPU stays in this work item for the whole test, so that its TLB keeps what it cached
// (an idle CPU's TLB may be emptied while it waits for work). Round r: CPU 0 points the test page
// at pages[r % 2] and calls the hook; then every CPU reads the page through the test address.
void tlb_round_trip(void* arg) {
  auto* t = static_cast<TlbRun*>(arg);
  unsigned me = cpu_index();
  unsigned round = t->round;
  for (unsigned r = 0; r < kTlbRounds; ++r) {
    if (me == 0 && r > 0) {
      if (!arch::tlb_test_page_map(t->pages[r % 2]).ok()) t->remap_failed = true;
      dma::kernel_hooks().tlb_flush_kernel_range(t->va, ktest_util::kPage);
    }
    barrier(round++);  // The new translation is in place and invalidated everywhere.
    t->seen[me][r] = *reinterpret_cast<volatile const uint64_t*>(t->va);
    barrier(round++);  // Everyone has read before CPU 0 changes it again.
  }
}

}  // namespace

// The remote TLB invalidation hook reaches every CPU: after CPU 0 changes which page the test
// address maps and calls the hook, every CPU (each holding the old translation from the round
// before) reads the new page.
KTEST(smp_remote_tlb_invalidation_reaches_every_cpu) {
  const dmakit_kernel_hooks& h = dma::kernel_hooks();
  KREQUIRE_TRUE(h.tlb_flush_kernel_range != nullptr);
  static TlbRun t;
  t = TlbRun{};
  for (int i = 0; i < 2; ++i) {
    auto p = kernel_env().pfa->alloc(0);
    KREQUIRE_OK(p);
    t.pages[i] = *p;
    t.words[i] = 0x5EED'0000'0000'0000ull + static_cast<uint64_t>(i);
    *static_cast<uint64_t*>(kernel_env().phys_to_virt(*p)) = t.words[i];
  }
  auto va = arch::tlb_test_page_map(t.pages[0]);
  KREQUIRE_OK(va);
  t.va = *va;
  h.tlb_flush_kernel_range(t.va, ktest_util::kPage);
  t.round = next_barrier_round();
  run_on_all_cpus(&tlb_round_trip, &t);
  arch::tlb_test_page_release();
  h.tlb_flush_kernel_range(t.va, ktest_util::kPage);
  KEXPECT_FALSE(t.remap_failed);
  unsigned stale = 0;
  for (unsigned c = 0; c < num_cpus(); ++c) {
    for (unsigned r = 0; r < kTlbRounds; ++r) {
      if (t.seen[c][r] != t.words[r % 2]) {
        if (stale++ == 0) {
          ktest_ctx.fail(__FILE__, __LINE__, "cpu %u round %u read 0x%llx, expected 0x%llx", c, r,
                         static_cast<unsigned long long>(t.seen[c][r]),
                         static_cast<unsigned long long>(t.words[r % 2]));
        }
      }
    }
  }
  KEXPECT_EQ(stale, 0u);
  for (const PhysAddr& p : t.pages) KEXPECT_OK(kernel_env().pfa->free(p, 0));
}

namespace {

// Console lines of several CPUs at once, captured (kprintf_set_capture) and checked whole.
constexpr unsigned kLinesPerCpu = 24;
constexpr char kLineBody[] = "0123456789abcdefghijklmnopqrstuvwxyz0123456789abcdefghijklmnopq";
char g_capture[kMaxCpus * kLinesPerCpu * 128];
void print_lines(void* round) {
  // All CPUs start printing together, so that their lines overlap in time.
  barrier(*static_cast<unsigned*>(round));
  for (unsigned i = 0; i < kLinesPerCpu; ++i) {
    kprintf("smp-line cpu=%u i=%02u %s\n", cpu_index(), i, kLineBody);
  }
}

}  // namespace

KTEST(smp_kprintf_lines_do_not_interleave) {
  kprintf_set_capture(g_capture, sizeof(g_capture));
  unsigned round = next_barrier_round();
  run_on_all_cpus(&print_lines, &round);
  size_t len = kprintf_set_capture(nullptr, 0);
  KREQUIRE_TRUE(len < sizeof(g_capture));
  unsigned lines[kMaxCpus] = {};
  unsigned bad = 0;
  size_t pos = 0;
  while (pos < len) {
    size_t end = pos;
    while (end < len && g_capture[end] != '\n') ++end;
    char want[128];
    unsigned cpu = 0;
    // "smp-line cpu=N i=KK <body>", N and KK read back and the whole line compared.
    const char* p = g_capture + pos + 13;
    if (end - pos > 13) cpu = static_cast<unsigned>(*p - '0');
    unsigned idx = cpu < kMaxCpus ? lines[cpu] : 0;
    ksnprintf(want, sizeof(want), "smp-line cpu=%u i=%02u %s", cpu, idx, kLineBody);
    bool ok = cpu < kMaxCpus && end - pos == kstr::length(want) &&
              __builtin_memcmp(g_capture + pos, want, end - pos) == 0;
    if (ok) {
      ++lines[cpu];
    } else {
      ++bad;
    }
    pos = end + 1;
  }
  KEXPECT_EQ(bad, 0u);
  for (unsigned i = 0; i < num_cpus(); ++i) KEXPECT_EQ(lines[i], kLinesPerCpu);
}
