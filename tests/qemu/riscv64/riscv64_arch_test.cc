// In-VM tests of the RISC-V 64 port: the Sv39 page-table builder (on private tables that are
// never activated), the live direct map and its memory types, the Zicbom DmaOp, the time source
// and the secondary harts (started through SBI HSM). Built only for ARCH=riscv64
// (arch/riscv64/arch.mk).
#include "arch/riscv64/testkernel/csr.h"
#include "arch/riscv64/testkernel/riscv64_platform.h"
#include "arch/riscv64/testkernel/sbi.h"
#include "arch/riscv64/testkernel/sv39_page_table.h"
#include "arch/riscv64/testkernel/trap.h"
#include "dmakit/support/bitops.h"
#include "testkernel/arch.h"
#include "testkernel/arch_io.h"
#include "testkernel/fdt.h"
#include "testkernel/kernel_env.h"
#include "testkernel/kstring.h"
#include "testkernel/percpu.h"
#include "tests/qemu/ktest.h"

namespace {

using riscv::MemType;
using riscv::Riscv64Platform;
using riscv::Sv39PageTable;

constexpr uint64_t kGiB = 1ull << 30;
constexpr uint64_t kMiB2 = 2ull << 20;
constexpr uint64_t kPage = 4096;
// An upper-half region the kernel's own table leaves unused; private tables map it freely.
constexpr uint64_t kTestVa = 0xFFFF'FFF0'0000'0000ull;
constexpr uint64_t kTestPa = 0x10'0000'0000ull;  // 64 GiB: never touched, only translated.

// Table pages for the private tables (in the kernel image, hence in the direct map).
Sv39PageTable::TablePage g_pool[8];

Fdt boot_fdt() {
  auto f = Fdt::from(kernel_env().boot->fdt);
  return f.ok() ? *f : Fdt();
}

uint64_t dm(PhysAddr p) {
  return p.value() + kernel_env().direct_map_offset;
}

}  // namespace

KTEST(riscv64_sv39_map_uses_largest_leaves) {
  Sv39PageTable pt;
  pt.init(g_pool, 8, Riscv64Platform::kDirectMapOffset, true);
  KREQUIRE_OK(pt.map(kTestVa, PhysAddr(kTestPa), kGiB + kMiB2 + kPage, MemType::kPma));
  auto a = pt.walk(kTestVa + 123);
  KREQUIRE_OK(a);
  KEXPECT_EQ(a->level, 2u);
  KEXPECT_EQ(a->pa.value(), kTestPa + 123);
  auto b = pt.walk(kTestVa + kGiB + 5);
  KREQUIRE_OK(b);
  KEXPECT_EQ(b->level, 1u);
  KEXPECT_EQ(b->pa.value(), kTestPa + kGiB + 5);
  auto c = pt.walk(kTestVa + kGiB + kMiB2 + 0xFFF);
  KREQUIRE_OK(c);
  KEXPECT_EQ(c->level, 0u);
  KEXPECT_EQ(c->pa.value(), kTestPa + kGiB + kMiB2 + 0xFFF);
  KEXPECT_ERR(pt.walk(kTestVa + kGiB + kMiB2 + kPage), ErrorCode::kNotFound);
  KEXPECT_ERR(pt.walk(kTestVa - 1), ErrorCode::kNotFound);
  // Root, one level-1 table (for the megapage and the 4 KiB page), one level-0 table.
  KEXPECT_EQ(pt.pages_used(), 3u);
  // Every leaf is global, accessed and dirty, RWX, and PBMT=PMA here.
  uint64_t want = riscv::kPteV | riscv::kPteR | riscv::kPteW | riscv::kPteX | riscv::kPteG |
                  riscv::kPteA | riscv::kPteD;
  KEXPECT_EQ(a->pte & 0xFF, want);
  KEXPECT_EQ(a->type(), MemType::kPma);
}

KTEST(riscv64_sv39_map_rejects_bad_requests) {
  Sv39PageTable pt;
  pt.init(g_pool, 3, Riscv64Platform::kDirectMapOffset, true);
  KEXPECT_ERR(pt.map(kTestVa + 8, PhysAddr(kTestPa), kPage, MemType::kPma),
              ErrorCode::kLayoutError);
  KEXPECT_ERR(pt.map(kTestVa, PhysAddr(kTestPa + 8), kPage, MemType::kPma),
              ErrorCode::kLayoutError);
  KEXPECT_ERR(pt.map(kTestVa, PhysAddr(kTestPa), 0, MemType::kPma), ErrorCode::kLayoutError);
  // Non-canonical, and a range running from the lower half into the hole.
  KEXPECT_ERR(pt.map(0x0000'0040'0000'0000ull, PhysAddr(kTestPa), kPage, MemType::kPma),
              ErrorCode::kLayoutError);
  KEXPECT_ERR(pt.map(0x0000'003F'FFFF'F000ull, PhysAddr(kTestPa), 2 * kPage, MemType::kPma),
              ErrorCode::kLayoutError);
  // Physical addresses beyond 56 bits.
  KEXPECT_ERR(pt.map(kTestVa, PhysAddr(1ull << 56), kPage, MemType::kPma), ErrorCode::kLayoutError);

  KREQUIRE_OK(pt.map(kTestVa, PhysAddr(kTestPa), kPage, MemType::kIo));
  // The same mapping again is fine; another target or another type is a conflict.
  KEXPECT_OK(pt.map(kTestVa, PhysAddr(kTestPa), kPage, MemType::kIo));
  KEXPECT_ERR(pt.map(kTestVa, PhysAddr(kTestPa + kPage), kPage, MemType::kIo),
              ErrorCode::kInvalidArgument);
  KEXPECT_ERR(pt.map(kTestVa, PhysAddr(kTestPa), kPage, MemType::kPma),
              ErrorCode::kInvalidArgument);
  auto leaf = pt.walk(kTestVa);
  KREQUIRE_OK(leaf);
  KEXPECT_EQ(leaf->type(), MemType::kIo);
  KEXPECT_EQ(leaf->pa.value(), kTestPa);
  // The pool (3 pages) is used up by root + level 1 + level 0: a 4 KiB page in another
  // gigabyte needs two more tables.
  KEXPECT_EQ(pt.pages_used(), 3u);
  KEXPECT_ERR(pt.map(kTestVa + kGiB, PhysAddr(kTestPa), kPage, MemType::kIo), ErrorCode::kNoMemory);
}

KTEST(riscv64_sv39_large_leaf_over_existing_small_ones) {
  Sv39PageTable pt;
  pt.init(g_pool, 8, Riscv64Platform::kDirectMapOffset, false);
  // A device page first, then the 2 MiB window around it: the window fills in around the page.
  KREQUIRE_OK(pt.map(kTestVa + 0x5000, PhysAddr(kTestPa + 0x5000), kPage, MemType::kIo));
  KREQUIRE_OK(pt.map(kTestVa, PhysAddr(kTestPa), kMiB2, MemType::kIo));
  const uint64_t offsets[] = {0, 0x5000, 0x1FF000};
  for (uint64_t off : offsets) {
    auto l = pt.walk(kTestVa + off);
    KREQUIRE_OK(l);
    KEXPECT_EQ(l->level, 0u);
    KEXPECT_EQ(l->pa.value(), kTestPa + off);
    // Without Svpbmt no PBMT bits are written, whatever type was asked for.
    KEXPECT_EQ(l->type(), MemType::kPma);
  }
  // A small page that disagrees with the window makes the window fail.
  KREQUIRE_OK(pt.map(kTestVa + kGiB + 0x3000, PhysAddr(kTestPa + 0x8000), kPage, MemType::kIo));
  KEXPECT_ERR(pt.map(kTestVa + kGiB, PhysAddr(kTestPa), kMiB2, MemType::kIo),
              ErrorCode::kInvalidArgument);
}

// Whether physical address p lies in reserved memory the device tree marks "no-map".
bool in_no_map(const Fdt& fdt, PhysAddr p) {
  FdtNode rm = fdt.find_path("/reserved-memory");
  for (FdtNode c = fdt.first_child(rm); c.valid(); c = fdt.next_sibling(c)) {
    if (!fdt.has_prop(c, "no-map")) continue;
    auto r = fdt.reg(c, 0);
    if (r.ok() && p >= r->base && p < r->end()) return true;
  }
  return false;
}

KTEST(riscv64_direct_map_covers_ram_and_nothing_else_is_normal) {
  const KernelEnv& env = kernel_env();
  Fdt fdt = boot_fdt();
  KEXPECT_EQ(env.direct_map_offset, Riscv64Platform::kDirectMapOffset);
  for (size_t i = 0; i < env.boot->num_ram; ++i) {
    const PhysRange& r = env.boot->ram[i];
    const PhysAddr probes[] = {r.base, r.base + (r.size / 2 & ~(kPage - 1)), r.end() - 1};
    for (PhysAddr p : probes) {
      const char* attr = arch::mapping_attribute(reinterpret_cast<void*>(dm(p)));
      // No identity map once boot is over.
      KEXPECT_TRUE(arch::mapping_attribute(reinterpret_cast<void*>(p.value())) == nullptr);
      if (in_no_map(fdt, p)) {
        KEXPECT_TRUE(attr == nullptr);
        continue;
      }
      auto l = Sv39PageTable::walk_active(dm(p), env.direct_map_offset);
      KREQUIRE_OK(l);
      KEXPECT_EQ(l->pa, p);
      KEXPECT_EQ(l->type(), MemType::kPma);
      KEXPECT_TRUE(attr != nullptr && kstr::equal(attr, "pma"));
    }
    // Just past the range there is either nothing or device memory, never normal memory.
    const char* after = arch::mapping_attribute(reinterpret_cast<void*>(dm(r.end())));
    bool ram_follows = false;
    for (size_t j = 0; j < env.boot->num_ram; ++j) ram_follows |= env.boot->ram[j].base == r.end();
    if (!ram_follows) KEXPECT_TRUE(after == nullptr || !kstr::equal(after, "pma"));
  }
  // The kernel image lives in the direct map too.
  static int in_image = 0;
  auto va = reinterpret_cast<uintptr_t>(&in_image);
  auto l = Sv39PageTable::walk_active(va, env.direct_map_offset);
  KREQUIRE_OK(l);
  KEXPECT_EQ(l->pa.value(), va - env.direct_map_offset);
}

KTEST(riscv64_no_map_reserved_memory_left_unmapped) {
  // Every "no-map" region (OpenSBI's, on QEMU) is absent from the direct map and reserved in the
  // boot information; the pages right around it, where RAM, are mapped.
  const KernelEnv& env = kernel_env();
  Fdt fdt = boot_fdt();
  FdtNode rm = fdt.find_path("/reserved-memory");
  for (FdtNode c = fdt.first_child(rm); c.valid(); c = fdt.next_sibling(c)) {
    if (!fdt.has_prop(c, "no-map")) continue;
    auto r = fdt.reg(c, 0);
    KREQUIRE_OK(r);
    KEXPECT_TRUE(arch::mapping_attribute(reinterpret_cast<void*>(dm(r->base))) == nullptr);
    KEXPECT_TRUE(arch::mapping_attribute(reinterpret_cast<void*>(dm(r->end() - 1))) == nullptr);
    KEXPECT_TRUE(env.overlaps_reserved(r->base, r->size));
    PhysAddr after = PhysAddr(support::align_up(r->end().value(), kPage));
    if (env.in_ram(after, kPage) && !in_no_map(fdt, after)) {
      KEXPECT_TRUE(arch::mapping_attribute(reinterpret_cast<void*>(dm(after))) != nullptr);
    }
  }
}

extern "C" char boot_stack_guard[];  // NOLINT: boot.S symbol.
extern "C" char boot_stack_top[];    // NOLINT: boot.S symbol.

KTEST(riscv64_boot_stack_guard_page_unmapped) {
  // The one hole in the direct map of RAM: the page under the boot stack.
  KEXPECT_TRUE(arch::mapping_attribute(boot_stack_guard) == nullptr);
  KEXPECT_TRUE(arch::mapping_attribute(boot_stack_guard - 1) != nullptr);
  KEXPECT_TRUE(arch::mapping_attribute(boot_stack_guard + kPage) != nullptr);
  // This test runs on the boot stack, above the guard.
  char local = 0;
  auto sp = reinterpret_cast<uintptr_t>(&local);
  KEXPECT_GT(sp, reinterpret_cast<uintptr_t>(boot_stack_guard) + kPage - 1);
  KEXPECT_LT(sp, reinterpret_cast<uintptr_t>(boot_stack_top));
}

KTEST(riscv64_devices_mapped_as_io) {
  Fdt fdt = boot_fdt();
  bool svpbmt = fdt.riscv_all_cpus_have("svpbmt");
  const char* want = svpbmt ? "io" : "pma";
  const char* compats[] = {"ns16550a", "sifive,test0", "pci-host-ecam-generic"};
  for (const char* compat : compats) {
    FdtNode n = fdt.find_compatible(compat);
    auto r = fdt.reg(n, 0);
    KREQUIRE_OK(r);
    const uint64_t offsets[] = {0, r->size - 1};
    for (uint64_t off : offsets) {
      const char* attr = arch::mapping_attribute(reinterpret_cast<void*>(dm(r->base) + off));
      KEXPECT_TRUE(attr != nullptr && kstr::equal(attr, want));
    }
  }
}

KTEST(riscv64_cache_ops_follow_device_tree) {
  Fdt fdt = boot_fdt();
  const KernelEnv& env = kernel_env();
  bool zicbom = fdt.riscv_all_cpus_have("zicbom");
  const Riscv64DmaOp::CacheOps& ops = riscv::platform().cache_ops();
  if (zicbom) {
    auto bs = fdt.riscv_cbom_block_size();
    KREQUIRE_OK(bs);
    KEXPECT_EQ(arch::cache_line_size(), size_t{*bs});
    KEXPECT_TRUE(ops.zicbom);
    KEXPECT_TRUE(kstr::starts_with(arch::cache_features(), "zicbom block"));
    // Coherent unless both the cache-block operations and Svpbmt's NC type are there.
    KEXPECT_EQ(ops.svpbmt, fdt.riscv_all_cpus_have("svpbmt"));
    KEXPECT_EQ(env.dma->default_constraints().coherence == DmaCoherence::kCoherent, !ops.svpbmt);
    // The boot-time probe and a fresh one agree on whether cbo.inval traps.
    auto page = env.pfa->alloc(0);
    KREQUIRE_OK(page);
    bool traps = riscv::cbo_traps(riscv::CboProbe::kInval, env.pfa->phys_to_virt(*page));
    KEXPECT_EQ(!traps, ops.inval_usable);
    KEXPECT_FALSE(riscv::cbo_traps(riscv::CboProbe::kClean, env.pfa->phys_to_virt(*page)));
    KEXPECT_FALSE(riscv::cbo_traps(riscv::CboProbe::kFlush, env.pfa->phys_to_virt(*page)));
    KEXPECT_OK(env.pfa->free(*page, 0));
  } else {
    KEXPECT_FALSE(ops.zicbom);
    KEXPECT_TRUE(env.dma->default_constraints().coherence == DmaCoherence::kCoherent);
    KEXPECT_TRUE(kstr::starts_with(arch::cache_features(), "no zicbom"));
  }
}

KTEST(riscv64_dma_op_unaligned_ranges_keep_neighbours) {
  const KernelEnv& env = kernel_env();
  auto page = env.pfa->alloc(1);
  KREQUIRE_OK(page);
  auto* buf = static_cast<uint8_t*>(env.pfa->phys_to_virt(*page));
  constexpr size_t kBytes = 2 * kPage;
  struct Case {
    size_t off;
    size_t size;
  };
  const Case cases[] = {{0, 0},   {1, 1},      {63, 2},     {64, 64},        {65, 62},
                        {5, 200}, {100, 4000}, {0, kBytes}, {kBytes - 1, 1}, {3, kBytes - 6}};
  for (const Case& c : cases) {
    for (size_t i = 0; i < kBytes; ++i) buf[i] = static_cast<uint8_t>(i * 7 + 1);
    for (size_t i = c.off; i < c.off + c.size; ++i) buf[i] = static_cast<uint8_t>(~i);
    env.dma->flush(buf + c.off, c.size);
    env.dma->invalidate(buf + c.off, c.size);
    env.dma->flush_invalidate(buf + c.off, c.size);
    size_t bad = 0;
    for (size_t i = 0; i < kBytes; ++i) {
      bool inside = i >= c.off && i < c.off + c.size;
      uint8_t want = inside ? static_cast<uint8_t>(~i) : static_cast<uint8_t>(i * 7 + 1);
      bad += buf[i] != want;
    }
    KEXPECT_EQ(bad, size_t{0});
  }
  KEXPECT_OK(env.pfa->free(*page, 1));
}

KTEST(riscv64_dma_op_at_ends_of_managed_ram) {
  // Clean and flush (never discard: these bytes belong to others) the first and last bytes the
  // allocator manages; a wrong block address would fault and fail the run.
  const KernelEnv& env = kernel_env();
  auto* lo = static_cast<uint8_t*>(env.pfa->phys_to_virt(env.pfa->lowest_address()));
  auto* hi = static_cast<uint8_t*>(env.pfa->phys_to_virt(env.pfa->highest_address()));
  uint8_t first = lo[0];
  uint8_t last = hi[-1];
  env.dma->flush(lo, 1);
  env.dma->flush(lo + 1, 130);
  env.dma->flush(hi - 1, 1);
  env.dma->flush(hi - 129, 129);
  env.dma->flush_invalidate(hi - 3, 3);
  env.dma->flush_invalidate(lo, 3);
  KEXPECT_EQ(lo[0], first);
  KEXPECT_EQ(hi[-1], last);
}

KTEST(riscv64_now_ns_follows_time_csr) {
  uint64_t tb = riscv::platform().timebase_hz();
  KREQUIRE_TRUE(tb != 0);
  uint64_t t0 = arch::now_ns();
  uint64_t c0 = riscv::read_time();
  while (riscv::read_time() - c0 < tb / 1000) {
  }
  uint64_t t1 = arch::now_ns();
  KEXPECT_GE(t1 - t0, uint64_t{1'000'000} - 1'000'000'000 / tb);
  KEXPECT_LT(t1 - t0, uint64_t{10'000'000'000});
  KEXPECT_GE(arch::now_ns(), t1);
}

KTEST(riscv64_every_described_hart_started) {
  Fdt fdt = boot_fdt();
  unsigned n = fdt.cpu_count();
  KEXPECT_EQ(n, kernel_env().boot->num_cpus);
  unsigned started = 0;
  for (unsigned i = 0; i < n; ++i) {
    auto r = fdt.reg(fdt.cpu_node(i), 0);
    KREQUIRE_OK(r);
    long status = riscv::sbi::hart_status(r->base.value());
    // The kernel uses the first kMaxCpus harts (the boot hart always); SBI must agree that
    // exactly those run.
    bool used = false;
    for (unsigned c = 0; c < num_cpus(); ++c) {
      if (cpu_data(c).hw_id == r->base.value()) used = cpu_online(c);
    }
    KEXPECT_EQ(status, used ? riscv::sbi::kHartStarted : riscv::sbi::kHartStopped);
    if (status == riscv::sbi::kHartStarted) ++started;
  }
  KEXPECT_EQ(started, num_online_cpus());
}

KTEST(riscv64_mmio_map_direct_map_and_on_demand) {
  Fdt fdt = boot_fdt();
  const char* io = fdt.riscv_all_cpus_have("svpbmt") ? "io" : "pma";
  const KernelEnv& env = kernel_env();
  // A device the boot code mapped: its direct-map address comes back.
  auto uart = fdt.reg(fdt.find_compatible("ns16550a"), 0);
  KREQUIRE_OK(uart);
  auto v = arch::mmio_map(uart->base, uart->size);
  KREQUIRE_OK(v);
  KEXPECT_EQ(reinterpret_cast<uintptr_t>(*v), dm(uart->base));
  // A range nothing mapped (just below the 256 GiB limit of the direct map; never accessed) is
  // mapped on demand as device memory, and again without complaint.
  PhysAddr far(Riscv64Platform::kDirectMapSpan - 4 * kPage);
  KREQUIRE_TRUE(arch::mapping_attribute(reinterpret_cast<void*>(dm(far))) == nullptr);
  auto w = arch::mmio_map(far + 0x10, 2 * kPage);
  KREQUIRE_OK(w);
  KEXPECT_EQ(reinterpret_cast<uintptr_t>(*w), dm(far) + 0x10);
  for (uint64_t off = 0; off < 3 * kPage; off += kPage) {
    const char* attr = arch::mapping_attribute(reinterpret_cast<void*>(dm(far) + off));
    KEXPECT_TRUE(attr != nullptr && kstr::equal(attr, io));
  }
  KEXPECT_TRUE(arch::mapping_attribute(reinterpret_cast<void*>(dm(far) + 3 * kPage)) == nullptr);
  KEXPECT_OK(arch::mmio_map(far, kPage));
  // Never RAM, never beyond the direct map, never empty.
  KEXPECT_ERR(arch::mmio_map(env.boot->ram[0].base, kPage), ErrorCode::kInvalidArgument);
  KEXPECT_ERR(arch::mmio_map(env.boot->ram[0].end() - 1, 2), ErrorCode::kInvalidArgument);
  KEXPECT_ERR(arch::mmio_map(PhysAddr(Riscv64Platform::kDirectMapSpan - kPage), 2 * kPage),
              ErrorCode::kNotSupported);
  KEXPECT_ERR(arch::mmio_map(uart->base, 0), ErrorCode::kInvalidArgument);
  KEXPECT_ERR(arch::port_in(0x3F8, 1), ErrorCode::kNotSupported);
}
