// In-VM test of memory-type changes with every CPU running (issue 13, item 4): while CPU 0
// allocates and frees uncached coherent memory for a non-coherent device, every other CPU keeps
// writing and checking its own ordinary kernel memory in the same 2 MiB (and so the same 1 GiB)
// region of the direct map. No CPU may fault (on AArch64 a run-time split of that region would
// unmap it for a moment: the boot split to 4 KiB pages is what prevents it), no byte may change,
// and after each change every CPU reads the same attribute for every page of the region involved:
// from the page tables (arch::mapping_attribute) and, where the hardware can say, from its own
// translation (arch::translated_attribute: AArch64's AT instruction).
//
// Placing the pages: the allocator hands out the highest free order-0 block first. The test takes
// a run of single pages, keeps those with an odd frame number in the 2 MiB region of the last one
// as the other CPUs' buffers and frees the even ones there: they become the only free order-0
// blocks (their buddies are held), so CPU 0's 4 KiB coherent allocations land between the other
// CPUs' buffers. The test checks that they do.
#include "dmakit/device_dma.h"
#include "testkernel/arch.h"
#include "testkernel/kernel_env.h"
#include "testkernel/kprintf.h"
#include "testkernel/kstring.h"
#include "testkernel/percpu.h"
#include "tests/qemu/ktest.h"
#include "tests/qemu/test_util.h"

namespace {

constexpr uint64_t kPage = ktest_util::kPage;
constexpr uint64_t k2MiB = 2ull << 20;
constexpr size_t kMaxRun = 8192;
constexpr size_t kRegionRun = 48;
constexpr size_t kMaxNeighbours = 64;
constexpr size_t kMaxHeld = 3;
constexpr unsigned kRounds = 40;  // Round r allocates 1 + r % kMaxHeld pages, then frees them.

bool is_uncached_name(const char* a) {
  return a != nullptr && (kstr::equal(a, "normal-nc") || kstr::equal(a, "nc") ||
                          kstr::equal(a, "uc-") || kstr::equal(a, "uc") || kstr::equal(a, "wc"));
}

struct AttrRun {
  // The other CPUs' buffers: pages of the region, each CPU i >= 1 owns those with
  // index % (cpus - 1) == i - 1.
  uint8_t* neighbours[kMaxNeighbours] = {};
  size_t num_neighbours = 0;
  const char* cached = nullptr;  // The direct map's name for cacheable RAM.
  // The pages the last change was about and the attribute each must have now.
  const void* pages[kMaxHeld] = {};
  bool uncached[kMaxHeld] = {};
  size_t num_pages = 0;
  // Hammering.
  bool stop = false;
  uint64_t passes[kMaxCpus] = {};
  // Results, per CPU.
  unsigned failures[kMaxCpus] = {};
  uint64_t checks[kMaxCpus] = {};
  uint64_t hw_checks[kMaxCpus] = {};
  char first_failure[kMaxCpus][112] = {};
};

void note_failure(AttrRun* run, unsigned me, const char* what, const void* va) {
  if (run->failures[me]++ == 0) {
    ksnprintf(run->first_failure[me], sizeof(run->first_failure[me]), "cpu %u: %s at %p", me, what,
              va);
  }
}

// Other CPUs: write a fresh pattern into one owned page after another and check it, until told
// to stop. Runs as posted work (interrupts masked); arch::cpu_relax serves TLB shootdowns that
// CPU 0's changes send meanwhile (x86-64).
void hammer(void* arg) {
  auto* run = static_cast<AttrRun*>(arg);
  const unsigned me = cpu_index();
  const unsigned workers = num_online_cpus() - 1;
  unsigned pass = 0;
  while (!__atomic_load_n(&run->stop, __ATOMIC_ACQUIRE)) {
    for (size_t i = me - 1; i < run->num_neighbours; i += workers) {
      uint8_t* p = run->neighbours[i];
      const auto seed = static_cast<uint32_t>(me * 1'000'003u + pass * 7919u + i);
      ktest_util::fill_pattern(p, kPage, seed);
      if (ktest_util::check_pattern(p, kPage, seed) != kPage) {
        note_failure(run, me, "its own buffer lost bytes", p);
      }
      arch::cpu_relax();
    }
    ++pass;
    __atomic_fetch_add(&run->passes[me], 1u, __ATOMIC_RELEASE);
  }
}

void check_one(AttrRun* run, unsigned me, const void* va, bool want_uncached) {
  const char* a = arch::mapping_attribute(va);
  const bool ok =
      want_uncached ? is_uncached_name(a) : (a != nullptr && kstr::equal(a, run->cached));
  if (!ok)
    note_failure(run, me, want_uncached ? "page tables: not uncached" : "page tables: not cached",
                 va);
  ++run->checks[me];
  auto hw = arch::translated_attribute(va);
  if (hw.ok()) {
    const bool hw_ok =
        want_uncached ? is_uncached_name(*hw) : (*hw != nullptr && kstr::equal(*hw, run->cached));
    if (!hw_ok)
      note_failure(run, me, want_uncached ? "translation: not uncached" : "translation: not cached",
                   va);
    ++run->hw_checks[me];
  }
}

// Every CPU: the pages of the last change have their expected attribute, every other CPU's
// buffer is still cacheable.
void check_attributes(void* arg) {
  auto* run = static_cast<AttrRun*>(arg);
  const unsigned me = cpu_index();
  for (size_t i = 0; i < run->num_pages; ++i) check_one(run, me, run->pages[i], run->uncached[i]);
  for (size_t i = 0; i < run->num_neighbours; ++i) check_one(run, me, run->neighbours[i], false);
}

// One change on CPU 0 (thread context, interrupts on) while the others hammer, then the
// read-back on every CPU.
template <typename Change>
void change_while_hammering(AttrRun* run, Change&& change) {
  const unsigned cpus = num_online_cpus();
  uint32_t tickets[kMaxCpus] = {};
  uint64_t before[kMaxCpus] = {};
  __atomic_store_n(&run->stop, false, __ATOMIC_RELEASE);
  for (unsigned c = 1; c < cpus; ++c) {
    before[c] = __atomic_load_n(&run->passes[c], __ATOMIC_ACQUIRE);
    auto t = post_cpu_work(c, &hammer, run);
    KASSERT(t.ok(), "smp_attr: cannot post to an online CPU");
    tickets[c] = *t;
  }
  // Every other CPU is inside its loop before the change starts.
  for (unsigned c = 1; c < cpus; ++c) {
    while (__atomic_load_n(&run->passes[c], __ATOMIC_ACQUIRE) == before[c]) smp_relax();
  }
  change();
  __atomic_store_n(&run->stop, true, __ATOMIC_RELEASE);
  for (unsigned c = 1; c < cpus; ++c) wait_cpu_work(c, tickets[c]);
  run_on_all_cpus(&check_attributes, run);
}

}  // namespace

KTEST(smp_attr_uncached_allocations_beside_busy_cpus_never_fault_nor_disagree) {
  const KernelEnv& env = kernel_env();
  PageFrameAllocator* pfa = env.pfa;
  const uint64_t free_before = pfa->free_pages();
  const size_t splits_before = arch::direct_map_split_tables();
  static AttrRun run;
  run = AttrRun{};
  {
    ktest_util::Pages probe(0);
    KREQUIRE_TRUE(probe.ok());
    run.cached = arch::mapping_attribute(probe.va());
  }
  KREQUIRE_TRUE(run.cached != nullptr && !is_uncached_name(run.cached));

  // The run of pages: single pages until the last kRegionRun came from one 2 MiB region (the
  // scattered free pages are used up, the allocator is splitting a larger block there).
  static PhysAddr taken[kMaxRun];
  static bool kept[kMaxRun];
  size_t num_taken = 0;
  uint64_t region = ~0ull;
  size_t in_region = 0;
  while (in_region < kRegionRun && num_taken < kMaxRun) {
    auto p = pfa->alloc(0);
    KREQUIRE_OK(p);
    taken[num_taken] = *p;
    kept[num_taken++] = true;
    const uint64_t r = support::align_down(p->value(), k2MiB);
    in_region = r == region ? in_region + 1 : 1;
    region = r;
  }
  KREQUIRE_TRUE(in_region >= kRegionRun);
  size_t gaps = 0;
  for (size_t i = 0; i < num_taken; ++i) {
    if (support::align_down(taken[i].value(), k2MiB) != region) continue;
    if (((taken[i].value() / kPage) & 1) != 0) {
      if (run.num_neighbours < kMaxNeighbours) {
        run.neighbours[run.num_neighbours++] = static_cast<uint8_t*>(env.phys_to_virt(taken[i]));
      }
    } else {
      KEXPECT_OK(pfa->free(taken[i], 0));
      kept[i] = false;
      ++gaps;
    }
  }
  KREQUIRE_TRUE(gaps >= kMaxHeld);
  KREQUIRE_TRUE(run.num_neighbours >= num_online_cpus());
  kprintf("  region [0x%llx, +2 MiB): %zu buffers of other CPUs, %zu free pages between them%s\n",
          static_cast<unsigned long long>(region), run.num_neighbours, gaps,
          env.presplit(PhysAddr(region)) ? ", split to 4 KiB at boot" : "");

  DeviceDma dev(env.dma, ~0ull);
  dev.set_name("smp-attr");
  dev.set_coherent(false);
  DArray<uint8_t> held[kMaxHeld];
  unsigned changes = 0;
  unsigned outside = 0;
  unsigned alloc_failures = 0;
  unsigned data_errors = 0;
  for (unsigned r = 0; r < kRounds; ++r) {
    const size_t count = 1 + r % kMaxHeld;
    for (size_t k = 0; k < count; ++k) {
      change_while_hammering(&run, [&] {
        auto a = dev.alloc_array<uint8_t>(kPage, kPage);
        if (!a.ok()) {
          ++alloc_failures;
          run.num_pages = 0;
          return;
        }
        held[k] = support::move(*a);
        if (support::align_down(held[k].handle().phys.value(), k2MiB) != region) ++outside;
        // CPU 0's own data through the uncached mapping.
        const auto seed = static_cast<uint32_t>(r * 31 + k);
        ktest_util::fill_pattern(held[k].raw_data(), kPage, seed);
        if (ktest_util::check_pattern(held[k].raw_data(), kPage, seed) != kPage) ++data_errors;
        run.pages[0] = held[k].raw_data();
        run.uncached[0] = true;
        run.num_pages = 1;
      });
      ++changes;
    }
    for (size_t k = 0; k < count; ++k) {
      change_while_hammering(&run, [&] {
        run.pages[0] = held[k].raw_data();
        run.uncached[0] = false;
        run.num_pages = held[k].valid() ? 1 : 0;
        held[k].reset();
      });
      ++changes;
    }
  }
  KEXPECT_EQ(alloc_failures, 0u);
  KEXPECT_EQ(outside, 0u);
  KEXPECT_EQ(data_errors, 0u);
  uint64_t checks = 0;
  uint64_t hw_checks = 0;
  for (unsigned c = 0; c < num_online_cpus(); ++c) {
    if (run.failures[c] != 0) {
      ktest_ctx.fail(__FILE__, __LINE__, "%u failure(s), first: %s", run.failures[c],
                     run.first_failure[c]);
    }
    // Every CPU checked every page after every change.
    KEXPECT_EQ(run.checks[c], static_cast<uint64_t>(changes) * (1 + run.num_neighbours));
    if (c > 0) KEXPECT_GE(run.passes[c], static_cast<uint64_t>(changes));
    checks += run.checks[c];
    hw_checks += run.hw_checks[c];
  }
  kprintf(
      "  %u changes on cpu 0 beside %u busy cpu(s); %llu page-table and %llu translation "
      "read-backs\n",
      changes, num_online_cpus() - 1, static_cast<unsigned long long>(checks),
      static_cast<unsigned long long>(hw_checks));
  for (size_t i = 0; i < num_taken; ++i) {
    if (kept[i]) KEXPECT_OK(pfa->free(taken[i], 0));
  }
  KEXPECT_EQ(pfa->free_pages(), free_before);
  KEXPECT_EQ(arch::direct_map_split_tables(), splits_before);
#if DMA_STATS  // KernelDmaOp::stats() counts only with DMA_STATS.
  KEXPECT_EQ(env.dma->stats().coherent_uncached_live, 0u);
#endif
}

namespace {

constexpr unsigned kRoundTripRuns = 101;

void sort(uint64_t* v, size_t n) {
  for (size_t i = 1; i < n; ++i) {
    const uint64_t x = v[i];
    size_t j = i;
    for (; j > 0 && v[j - 1] > x; --j) v[j] = v[j - 1];
    v[j] = x;
  }
}

}  // namespace

// The figure the issue asks for: a set_memory_attribute round trip (uncached, then cached again)
// of one 4 KiB page with every CPU online, TLB invalidation on every CPU included (broadcast TLBI
// on AArch64, IPIs on x86-64, SBI remote fences on RISC-V). Where the direct map was not split
// at boot, each round trip also splits the page's 2 MiB leaf and merges it back. The median of
// kRoundTripRuns runs, by arch::now_ns.
KTEST(smp_attr_round_trip_cost_with_every_cpu_online) {
  KernelDmaOp* op = kernel_env().dma;
  const size_t splits_before = arch::direct_map_split_tables();
  ktest_util::Pages page(0);
  KREQUIRE_TRUE(page.ok());
  const char* cached = arch::mapping_attribute(page.va());
  KREQUIRE_TRUE(cached != nullptr && !is_uncached_name(cached));
  // Nothing of the page may sit in a cache while it is uncached (the rule alloc_coherent keeps).
  op->flush_invalidate(page.va(), kPage);
  static uint64_t ns[kRoundTripRuns];
  unsigned failures = 0;
  for (unsigned i = 0; i < kRoundTripRuns; ++i) {
    const uint64_t t0 = arch::now_ns();
    const bool to_uc =
        op->set_memory_attribute(page.va(), kPage, KernelDmaOp::MemAttr::kUncached).ok();
    const bool to_wb =
        op->set_memory_attribute(page.va(), kPage, KernelDmaOp::MemAttr::kCached).ok();
    ns[i] = arch::now_ns() - t0;
    failures += (to_uc && to_wb) ? 0 : 1;
  }
  op->flush_invalidate(page.va(), kPage);
  KEXPECT_EQ(failures, 0u);
  const char* after = arch::mapping_attribute(page.va());
  KEXPECT_TRUE(after != nullptr && kstr::equal(after, cached));
  KEXPECT_EQ(arch::direct_map_split_tables(), splits_before);
  sort(ns, kRoundTripRuns);
  const uint64_t median = ns[kRoundTripRuns / 2];
  KEXPECT_GT(ns[kRoundTripRuns - 1], 0u);
  // The spread too (fastest and slowest run): a figure is reported with its spread
  // (BENCHMARKS.md).
  kprintf("attr round trip: %llu ns (median of %u runs, min %llu, max %llu; %u cpus)\n",
          static_cast<unsigned long long>(median), kRoundTripRuns,
          static_cast<unsigned long long>(ns[0]),
          static_cast<unsigned long long>(ns[kRoundTripRuns - 1]), num_online_cpus());
}
