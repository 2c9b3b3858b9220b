// kernel_main: the architecture-independent half of the test kernel. The arch's boot code hands
// over what the firmware described (arch::BootInfo); this file
//   1. prints the memory map and the reserved ranges,
//   2. carves the page-frame allocator's metadata and the bounce pools out of RAM, choosing their
//      places from the memory map (never from constants),
//   3. builds the allocator over RAM minus everything reserved, the bounce pools, and the arch's
//      DmaOp,
//   4. prints a report, then runs the in-VM tests ("mode=test" on the command line) or the demo
//      ("mode=demo", the default), and leaves QEMU with a pass/fail status. "mode=fault" reads an
//      unmapped address on purpose, to show the arch's trap report (the run fails).
//      "ktest=<text>" runs only the tests whose name contains <text>.
//
// Bounce pools:
//   "dma32": below 4 GiB, 16 MiB (less when RAM is small: at most 1/16 of the free RAM there),
//            placed as low as possible at or above 256 MiB so that memory below 256 MiB stays for
//            28-bit devices; anywhere below 4 GiB if that fails. Placing it low (as Linux places
//            swiotlb) leaves the RAM above it reachable only by bouncing for masks that end just
//            above the pool, which the tests use.
//   "dma28": only when free RAM exists below 256 MiB (x86 q35): a small pool there for devices
//            with 28-bit masks (QEMU's edu default), placed as high as possible below 256 MiB.
// The allocator and pool metadata go as high as possible, out of the way of DMA-constrained
// memory, and so do the page tables of the boot split of the direct map (AArch64: all RAM split
// to 4 KiB pages before the other CPUs start, so that alloc_coherent's attribute changes never
// unmap a 2 MiB / 1 GiB block another CPU is using; RAM below 4 GiB only when there is no room
// for all of it; arch::split_direct_map_at_boot).
#include "dmakit/dma_debug.h"
#include "dmakit/support/bitops.h"
#include "testkernel/arch.h"
#include "testkernel/boot_memory.h"
#include "testkernel/cxx_runtime.h"
#include "testkernel/demo.h"
#include "testkernel/iommu.h"
#include "testkernel/kernel_env.h"
#include "testkernel/kernel_hooks.h"
#include "testkernel/kprintf.h"
#include "testkernel/kstring.h"
#include "testkernel/panic.h"
#include "testkernel/percpu.h"
#include "tests/qemu/ktest.h"

namespace {

constexpr uint64_t kMiB = 1ull << 20;
constexpr uint64_t k4GiB = 1ull << 32;
constexpr uint64_t k256MiB = 256 * kMiB;
constexpr uint64_t kPoolAlign = kMiB;
constexpr uint64_t kPage = PageFrameAllocator::kPageSize;

KernelEnv g_env;
BootMemory g_mem;

// The allocator and pools live in static storage built with placement new: no global
// constructors or destructors are involved, and they are never destroyed.
alignas(PageFrameAllocator) unsigned char g_pfa_storage[sizeof(PageFrameAllocator)];
alignas(BouncePool) unsigned char g_pool_storage[KernelDmaOp::kMaxPools][sizeof(BouncePool)];
// The spare pool objects the DmaOp grows into (KernelDmaOp::Config::grow_pools): a modest limit,
// so that a device that fills the fixed pools gets a little more before kNoMemory.
constexpr size_t kGrownPools = 2;
constexpr uint64_t kGrowStep = 256 * 1024;
constexpr uint64_t kGrowLimit = 2 * kMiB;
constinit BouncePool g_grown_pools[kGrownPools];

void print_range(const char* label, const PhysRange& r) {
  char sz[32];
  kprintf("  %-22s [0x%016llx, 0x%016llx)  %s\n", label,
          static_cast<unsigned long long>(r.base.value()),
          static_cast<unsigned long long>(r.end().value()), format_size(sz, sizeof(sz), r.size));
}

[[noreturn]] void fail_boot(const char* what, ErrorCode code) {
  kpanic("boot: %s: %s", what, error_code_name(code));
}

// Carves and initializes one bounce pool; returns false (with a message) when there is no room.
bool setup_pool(const char* name, uint64_t bytes, uint64_t window_lo, uint64_t window_hi,
                BootMemory::Placement where) {
  if (g_env.num_pools == KernelDmaOp::kMaxPools) return false;
  bytes = support::align_down(bytes, 64 * 1024);
  if (bytes < BouncePool::kMaxMapping) return false;
  auto base = g_mem.carve(bytes, kPoolAlign, window_lo, window_hi, where, name);
  if (!base.ok()) {
    kprintf("boot: no room for bounce pool %s (%llu bytes below 0x%llx)\n", name,
            static_cast<unsigned long long>(bytes), static_cast<unsigned long long>(window_hi));
    return false;
  }
  size_t meta_bytes = BouncePool::metadata_size(bytes);
  auto meta = g_mem.carve(meta_bytes, kPage, 0, ~0ull, BootMemory::Placement::kHighest,
                          "bounce pool metadata");
  if (!meta.ok()) fail_boot("bounce pool metadata", meta.code());
  auto* pool = new (g_pool_storage[g_env.num_pools]) BouncePool();
  BouncePool::Options opts;
  opts.name = name;  // Named in the pool's report lines.
  auto r = pool->init(*base, bytes, g_env.phys_to_virt(*base), g_env.phys_to_virt(*meta),
                      support::align_up(meta_bytes, kPage), opts);
  if (!r.ok()) fail_boot("bounce pool init", r.code());
  // One cache per CPU, indexed by the kernel hooks' cpu_id (installed before the DMA set-up).
  auto cc = pool->enable_cpu_caches();
  if (!cc.ok()) fail_boot("bounce pool CPU caches", cc.code());
  g_env.pools[g_env.num_pools] = pool;
  g_env.pool_names[g_env.num_pools] = name;
  ++g_env.num_pools;
  return true;
}

// The boot split's page tables, carved before the allocator exists.
PhysRange g_presplit_tables;
PhysRange g_presplit_ram[arch::kMaxMemRanges];
size_t g_presplit_num_ram = 0;

// RAM ranges clipped below `limit`.
size_t clip_ram(const arch::BootInfo& info, uint64_t limit, PhysRange* out) {
  size_t n = 0;
  for (size_t i = 0; i < info.num_ram; ++i) {
    const uint64_t lo = info.ram[i].base.value();
    const uint64_t hi = support::min(info.ram[i].end().value(), limit);
    if (hi > lo) out[n++] = PhysRange{PhysAddr(lo), hi - lo};
  }
  return n;
}

// Carves the tables for splitting all RAM (or, when there is no room, the RAM below 4 GiB, which
// every device can reach) and records which RAM they are for.
void carve_presplit_tables(const arch::BootInfo& info) {
  const uint64_t limits[] = {~0ull, k4GiB};
  for (uint64_t limit : limits) {
    size_t n = clip_ram(info, limit, g_presplit_ram);
    uint64_t bytes = arch::direct_map_split_bytes({g_presplit_ram, n});
    if (bytes == 0) return;  // Nothing to split ahead on this architecture.
    // 2 MiB aligned: the port may map most of it with large leaves of its own.
    auto base = g_mem.carve(bytes, 2 * kMiB, 0, ~0ull, BootMemory::Placement::kHighest,
                            "direct-map split tables");
    if (base.ok()) {
      g_presplit_tables = PhysRange{*base, bytes};
      g_presplit_num_ram = n;
      g_env.presplit_limit = limit;
      return;
    }
  }
  kprintf(
      "boot: warning: no room to split the direct map at boot; attribute changes may unmap "
      "2 MiB / 1 GiB blocks other CPUs use\n");
}

// The boot split itself: after the DmaOp exists, before other CPUs start.
void split_direct_map() {
  if (g_env.presplit_limit == 0) return;
  auto used =
      arch::split_direct_map_at_boot({g_presplit_ram, g_presplit_num_ram}, g_presplit_tables);
  if (!used.ok()) fail_boot("split of the direct map", used.code());
  g_env.presplit_tables = *used;
}

void setup_memory(const arch::BootInfo& info) {
  g_env.boot = &info;
  g_env.direct_map_offset = info.direct_map_offset;
  if (info.direct_map_offset == 0) kpanic("boot: the direct map must be at a non-zero offset");

  auto r =
      g_mem.init({info.ram, info.num_ram}, {info.reserved, info.num_reserved}, "firmware/boot");
  if (!r.ok()) fail_boot("memory map", r.code());
  g_env.ram_bytes = g_mem.ram_bytes();

  // Allocator metadata first (its size depends only on the RAM ranges).
  size_t pfa_meta = PageFrameAllocator::metadata_size({info.ram, info.num_ram});
  auto pfa_meta_base =
      g_mem.carve(pfa_meta, kPage, 0, ~0ull, BootMemory::Placement::kHighest, "allocator metadata");
  if (!pfa_meta_base.ok()) fail_boot("allocator metadata", pfa_meta_base.code());

  // Page tables for the boot split of the direct map (none where the architecture needs none).
  carve_presplit_tables(info);

  // Bounce pools, sized from what is free in their windows.
  uint64_t low_free = g_mem.free_bytes_in(0, k256MiB);
  if (low_free >= 8 * kMiB) {
    uint64_t bytes = low_free >= 64 * kMiB ? 4 * kMiB : kMiB;
    setup_pool("dma28", bytes, 0, k256MiB, BootMemory::Placement::kHighest);
  }
  uint64_t free32 = g_mem.free_bytes_in(0, k4GiB);
  uint64_t bytes32 = support::min<uint64_t>(16 * kMiB, support::align_down(free32 / 16, kMiB));
  if (!setup_pool("dma32", bytes32, k256MiB, k4GiB, BootMemory::Placement::kLowest) &&
      !setup_pool("dma32", bytes32, 0, k4GiB, BootMemory::Placement::kLowest)) {
    kprintf("boot: warning: no bounce pool below 4 GiB\n");
  }

  for (size_t i = 0; i < g_mem.reserved().size(); ++i) {
    if (g_env.num_reserved == KernelEnv::kMaxReserved) kpanic("boot: too many reserved ranges");
    g_env.reserved[g_env.num_reserved] = g_mem.reserved()[i];
    g_env.reserved_what[g_env.num_reserved] = g_mem.reserved_what(i);
    ++g_env.num_reserved;
  }

  auto* pfa = new (g_pfa_storage) PageFrameAllocator();
  r = pfa->init({info.ram, info.num_ram}, {g_env.reserved, g_env.num_reserved},
                info.direct_map_offset, g_env.phys_to_virt(*pfa_meta_base),
                support::align_up(pfa_meta, kPage));
  if (!r.ok()) fail_boot("page-frame allocator init", r.code());
  g_env.pfa = pfa;

  KernelDmaOp::Config cfg;
  cfg.pfa = pfa;
  for (size_t i = 0; i < g_env.num_pools; ++i) cfg.pools[i] = g_env.pools[i];
  cfg.num_pools = g_env.num_pools;
  for (size_t g = 0; g < kGrownPools; ++g) cfg.grow_pools[g] = &g_grown_pools[g];
  cfg.max_grown_pools = kGrownPools;
  cfg.grow_limit = kGrowLimit;
  cfg.grow_step = kGrowStep;
  cfg.direct_map_offset = info.direct_map_offset;
  // All RAM the firmware described is translatable through the direct map, not only what the
  // allocator manages (the boot info lives as long as the kernel).
  cfg.ram = info.ram;
  cfg.num_ram = info.num_ram;
  g_env.dma = &arch::create_dma_op(cfg);
  split_direct_map();
  // The misuse checker's reports go to the console (with DMA_API_DEBUG; a no-op otherwise).
  DmaDebug::set_sink(+[](void*, const char* line) { kprintf("%s\n", line); }, nullptr);
  // Its table, sized for the in-VM tests (the library's own default is a bring-up's few entries).
  static DmaDebug::Entry dma_debug_table[DmaDebug::kEnabled ? 4096 : 1];
  Result<void> d =
      DmaDebug::init(dma_debug_table, sizeof(dma_debug_table) / sizeof(dma_debug_table[0]));
  if (!d.ok()) fail_boot("misuse checker init", d.code());
}

void print_report(const arch::BootInfo& info, const char* mode) {
  char sz[32];
  char limit_sz[32];
  kprintf("memory map (from the firmware):\n");
  for (size_t i = 0; i < info.num_ram; ++i) print_range("ram", info.ram[i]);
  kprintf("reserved (never given to the allocator):\n");
  for (size_t i = 0; i < g_env.num_reserved; ++i) {
    print_range(g_env.reserved_what[i], g_env.reserved[i]);
  }
  PageFrameAllocator::Stats st = g_env.pfa->stats();
  kprintf("ram: %s in %zu range(s); pages managed: %llu (%s), free: %llu\n",
          format_size(sz, sizeof(sz), g_env.ram_bytes), info.num_ram,
          static_cast<unsigned long long>(st.managed_pages),
          format_size(sz, sizeof(sz), st.managed_pages * kPage),
          static_cast<unsigned long long>(st.free_pages));
  kprintf(
      "allocator metadata: %llu bytes (%llu ppm of managed memory)\n",
      static_cast<unsigned long long>(st.metadata_bytes),
      static_cast<unsigned long long>(
          st.managed_pages == 0 ? 0 : st.metadata_bytes * 1000000 / (st.managed_pages * kPage)));
  for (size_t i = 0; i < g_env.num_pools; ++i) {
    const BouncePool* p = g_env.pools[i];
    kprintf("bounce pool %s: [0x%llx, 0x%llx) %s, %zu-byte slots, %llu slots\n",
            g_env.pool_names[i], static_cast<unsigned long long>(p->base().value()),
            static_cast<unsigned long long>(p->base().value() + p->bytes()),
            format_size(sz, sizeof(sz), p->bytes()), p->slot_size(),
            static_cast<unsigned long long>(p->stats().total_slots));
  }
  if (g_env.num_pools == 0) kprintf("bounce pools: none\n");
  kprintf("bounce pools grow on demand: %s at a time, at most %s in %zu pools\n",
          format_size(sz, sizeof(sz), kGrowStep),
          format_size(limit_sz, sizeof(limit_sz), kGrowLimit), kGrownPools);
  kprintf("cache: line %zu bytes; %s\n", arch::cache_line_size(), arch::cache_features());
  kprintf("dma: platform %s; direct map at offset 0x%llx\n",
          g_env.dma->default_constraints().coherence == DmaCoherence::kCoherent ? "coherent"
                                                                                : "non-coherent",
          static_cast<unsigned long long>(info.direct_map_offset));
  if (g_env.presplit_limit != 0) {
    char sz2[32];
    uint64_t split_ram = 0;
    for (size_t i = 0; i < g_presplit_num_ram; ++i) split_ram += g_presplit_ram[i].size;
    kprintf("direct map: split to 4 KiB pages at boot over %s of RAM (%s): %zu page tables, %s\n",
            format_size(sz, sizeof(sz), split_ram),
            g_env.presplit_limit == ~0ull ? "all of it" : "below 4 GiB", g_env.presplit_tables,
            format_size(sz2, sizeof(sz2), g_env.presplit_tables * kPage));
  } else {
    kprintf("direct map: attribute changes in place, nothing split ahead\n");
  }
  kprintf("cpus: %u online (of %u described)\n", num_online_cpus(), info.num_cpus);
  kprintf("interrupts: %s; timer every %llu us on every CPU\n", arch::irq_controller(),
          static_cast<unsigned long long>(arch::kDefaultTimerPeriodNs / 1000));
  kprintf("mode: %s; command line: \"%s\"\n", mode, info.cmdline);
}

// The interrupt controller and the boot CPU's periodic timer; interrupts on from here. Before
// the secondaries start: each sets up its own part of the controller and its own timer. The
// library's interrupt-masking hooks are installed already (install_kernel_hooks).
void setup_interrupts() {
  auto r = arch::irq_init();
  if (!r.ok()) fail_boot("interrupt controller", r.code());
  r = arch::timer_start_this_cpu(arch::kDefaultTimerPeriodNs, nullptr, nullptr);
  if (!r.ok()) fail_boot("timer", r.code());
  arch::irq_enable_local();
}

}  // namespace

const KernelEnv& kernel_env() {
  return g_env;
}

extern "C" void kernel_main(const arch::BootInfo& info) {
  run_global_constructors();
  kprintf("\nDMA subsystem test kernel\n");

  char mode[16] = "demo";
  const char* cmdline = info.cmdline != nullptr ? info.cmdline : "";
  kstr::cmdline_value(cmdline, "mode", mode, sizeof(mode));  // Keeps "demo" when absent.

  // The CPU list first: the hook table and the bounce pools' per-CPU caches are sized by it.
  install_kernel_hooks(smp_prepare(info));
  setup_memory(info);
  setup_interrupts();
  smp_start_secondaries();
  print_report(info, mode);
  iommu::setup(g_env);

  if (kstr::equal(mode, "test")) {
    // The demo kernel (make run) links the harness but no test.
    if (ktest::test_count() == 0)
      kpanic("mode=test: this kernel links no in-VM test (the demo kernel; use make test-qemu)");
    char filter[64] = "";
    kstr::cmdline_value(cmdline, "ktest", filter, sizeof(filter));
    kprintf("running %zu in-VM tests%s%s\n", ktest::test_count(), filter[0] ? " matching " : "",
            filter);
    ktest::Summary s = ktest::run_all(filter);
    iommu::poll_faults();  // Faults nobody expected, after the tests.
    // Some tests provoke misuse on purpose (out-of-range syncs) and check the error; the count
    // of checker reports is printed for the reader, the tests' own checks decide the outcome.
    kprintf("dma-debug: %llu misuse report(s) during the tests\n",
            static_cast<unsigned long long>(DmaDebug::total()));
    arch::exit_qemu(s.failed == 0 && s.passed > 0);
  }
  if (kstr::equal(mode, "demo")) {
    bool ok = run_demo(g_env);
    kprintf("demo: %s\n", ok ? "done" : "FAILED");
    arch::exit_qemu(ok);
  }
  if (kstr::equal(mode, "fault")) {
    // Shows the trap report: a read of an address the page tables do not map. The run must end
    // in a panic (the runner then fails it).
    auto* p = reinterpret_cast<volatile const uint64_t*>(info.direct_map_offset - 4096 * 3);
    kprintf(
        "fault: reading %p, mapped as %s\n", const_cast<const uint64_t*>(p),
        arch::mapping_attribute(const_cast<const uint64_t*>(p)) != nullptr ? "memory" : "nothing");
    kprintf("fault: read returned 0x%llx (no fault happened)\n",
            static_cast<unsigned long long>(*p));
    kpanic("mode=fault: the read of an unmapped address did not fault");
  }
  kpanic("unknown mode \"%s\" (expected mode=test, mode=demo or mode=fault)", mode);
}
