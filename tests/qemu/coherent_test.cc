// In-VM tests of coherent memory done right (issue "Coherent memory"): for a device that does not
// snoop the caches, alloc_coherent remaps its pages uncached in the direct map and
// dealloc_coherent restores them; a coherent device's memory stays cacheable. The checks walk the
// live page tables (arch::mapping_attribute) page by page, and count the page-table pages spent
// on splits (arch::direct_map_split_tables), which must come back to where they were. Where the
// kernel split the direct map to 4 KiB pages at boot (AArch64, KernelEnv::presplit), no split is
// made at run time and that count stays 0.
//
// The attribute names differ per architecture ("normal-wb"/"normal-nc" on AArch64, "pma"/"nc" on
// RISC-V, "wb"/"uc-" on x86-64): the tests learn the cacheable name from a page of the allocator
// and accept any of the non-cacheable normal-memory names for the uncached one.
//
// These tests assume that nothing else holds uncached coherent memory while they run (the suite
// runs one test at a time; they check it).
#include "dmakit/device_dma.h"
#include "dmakit/dma_pool.h"
#include "dmakit/support/bitops.h"
#include "dmakit/support/mem.h"
#include "drivers/edu/edu_device.h"
#include "testkernel/devices.h"
#include "testkernel/dma_coherence.h"
#include "testkernel/fdt.h"
#include "testkernel/iommu.h"
#include "testkernel/kernel_env.h"
#include "testkernel/kprintf.h"
#include "testkernel/kstring.h"
#include "testkernel/split_table_pool.h"
#include "tests/qemu/ktest.h"
#include "tests/qemu/test_util.h"

namespace {

constexpr uint64_t kPage = ktest_util::kPage;
constexpr uint64_t kMask32 = 0xFFFF'FFFFull;

bool is_uncached_name(const char* a) {
  return a != nullptr && (kstr::equal(a, "normal-nc") || kstr::equal(a, "nc") ||
                          kstr::equal(a, "uc-") || kstr::equal(a, "uc") || kstr::equal(a, "wc"));
}

// Each architecture's write-combining type as mapping_attribute names it: PAT WC on x86-64;
// AArch64 and RISC-V have no type of their own and use Normal-NC and Svpbmt NC.
bool is_write_combining_name(const char* a) {
  return a != nullptr &&
         (kstr::equal(a, "wc") || kstr::equal(a, "normal-nc") || kstr::equal(a, "nc"));
}

// The direct map's name for cacheable RAM, read from a page of the allocator.
const char* cached_name() {
  ktest_util::Pages p(0);
  return p.ok() ? arch::mapping_attribute(p.va()) : nullptr;
}

// Bytes a coherent allocation of `size` really holds (whole allocator blocks).
size_t block_bytes(size_t size) {
  return static_cast<size_t>(kPage << PageFrameAllocator::order_for(size));
}

// Pages of [va, va + bytes) whose attribute is not `want` (uncached: any uncached name).
size_t pages_not(const void* va, size_t bytes, const char* want, bool uncached) {
  size_t bad = 0;
  for (size_t off = 0; off < bytes; off += kPage) {
    const char* a = arch::mapping_attribute(static_cast<const uint8_t*>(va) + off);
    bool ok = uncached ? is_uncached_name(a) : (a != nullptr && kstr::equal(a, want));
    bad += ok ? 0 : 1;
  }
  return bad;
}

// The page just below and just above [va, va + bytes) are not uncached (no other uncached
// allocation is live while these tests run). They may be unmapped or device memory: the block
// may sit at an edge of RAM.
bool neighbours_untouched(const void* va, size_t bytes) {
  const auto* lo = static_cast<const uint8_t*>(va) - kPage;
  const auto* hi = static_cast<const uint8_t*>(va) + bytes;
  return !is_uncached_name(arch::mapping_attribute(lo)) &&
         !is_uncached_name(arch::mapping_attribute(hi));
}

DmaConstraints non_coherent(uint64_t mask = ~0ull) {
  DmaConstraints c = kernel_env().dma->default_constraints();
  c.dma_mask = mask;
  c.coherence = DmaCoherence::kNonCoherent;
  return c;
}

// What must come back when a test is done.
struct Baseline {
  uint64_t free_pages;
  size_t split_tables;
  uint64_t uncached_live;
  uint64_t coherent_live;
  static Baseline now() {
    const KernelEnv& env = kernel_env();
    KernelDmaOp::Stats s = env.dma->stats();
    return Baseline{env.pfa->free_pages(), arch::direct_map_split_tables(),
                    s.coherent_uncached_live, s.coherent_live};
  }
};

#define KEXPECT_BASELINE(b)                                 \
  do {                                                      \
    Baseline ktest_now = Baseline::now();                   \
    KEXPECT_EQ(ktest_now.free_pages, (b).free_pages);       \
    KEXPECT_EQ(ktest_now.split_tables, (b).split_tables);   \
    KEXPECT_EQ(ktest_now.uncached_live, (b).uncached_live); \
    KEXPECT_EQ(ktest_now.coherent_live, (b).coherent_live); \
  } while (0)

}  // namespace

KTEST(coherent_noncoherent_allocations_are_uncached_page_by_page) {
  KernelDmaOp* op = kernel_env().dma;
  const char* cached = cached_name();
  KREQUIRE_TRUE(cached != nullptr && !is_uncached_name(cached));
  Baseline b = Baseline::now();
  KREQUIRE_TRUE(b.uncached_live == 0);
  KEXPECT_EQ(b.split_tables, 0u);
  const size_t sizes[] = {1, 4096, 4097, 3 * 4096 + 5, 65536, 1u << 20, (2u << 20) + 1};
  const size_t aligns[] = {1, 4096, 65536, 2u << 20};
  for (size_t size : sizes) {
    for (size_t align : aligns) {
      auto h = op->alloc_coherent(non_coherent(), Layout{size, align});
      KREQUIRE_OK(h);
      const size_t bytes = block_bytes(size);
      KEXPECT_TRUE(h->remapped);
      KEXPECT_TRUE(support::is_aligned(h->phys.value(), support::max<uint64_t>(align, kPage)));
      KEXPECT_EQ(pages_not(h->cpu_addr, bytes, nullptr, true), 0u);
      KEXPECT_TRUE(neighbours_untouched(h->cpu_addr, bytes));
#if DMA_STATS  // KernelDmaOp::stats() counts only with DMA_STATS.
      KEXPECT_EQ(op->stats().coherent_uncached_live, 1u);
#endif
      // Zeroed, as read through the uncached mapping.
      const auto* p = static_cast<const uint8_t*>(h->cpu_addr);
      size_t nonzero = 0;
      for (size_t i = 0; i < bytes; ++i) nonzero += p[i] != 0;
      KEXPECT_EQ(nonzero, 0u);
      void* va = h->cpu_addr;
      op->dealloc_coherent(*h);
      KEXPECT_EQ(pages_not(va, bytes, cached, false), 0u);
      KEXPECT_TRUE(neighbours_untouched(va, bytes));
      KEXPECT_EQ(arch::direct_map_split_tables(), b.split_tables);
    }
  }
  KEXPECT_BASELINE(b);
}

KTEST(coherent_device_allocations_stay_cacheable) {
  KernelDmaOp* op = kernel_env().dma;
  const char* cached = cached_name();
  KREQUIRE_TRUE(cached != nullptr);
  Baseline b = Baseline::now();
  uint64_t remaps = op->stats().coherent_uncached;
  DeviceDma dev(op, ~0ull);
  dev.set_coherent(true);
  const size_t sizes[] = {64, 4096, 100000, 4u << 20};
  for (size_t size : sizes) {
    auto a = dev.alloc_array<uint8_t>(size);
    KREQUIRE_OK(a);
    KEXPECT_FALSE(a->handle().remapped);
    KEXPECT_EQ(pages_not(a->raw_data(), block_bytes(size), cached, false), 0u);
    KEXPECT_EQ(arch::direct_map_split_tables(), b.split_tables);
  }
  KEXPECT_EQ(op->stats().coherent_uncached, remaps);
  KEXPECT_BASELINE(b);
}

// alloc_wc (Linux's dma_alloc_wc) maps its pages write-combining in the direct map, whether the
// device snoops or not, and gives them back cacheable with the split tables, free pages and
// counters where they were.
KTEST(coherent_write_combining_allocations_are_write_combining) {
  KernelDmaOp* op = kernel_env().dma;
  const char* cached = cached_name();
  KREQUIRE_TRUE(cached != nullptr && !is_write_combining_name(cached));
  Baseline b = Baseline::now();
  KREQUIRE_TRUE(b.uncached_live == 0);
  const size_t sizes[] = {64, 4096, 3 * 4096 + 5, (2u << 20) + 1};
  const bool coherences[] = {true, false};
  for (bool coherent : coherences) {
    DeviceDma dev(op, ~0ull);
    dev.set_coherent(coherent);
    for (size_t size : sizes) {
      {
        auto a = dev.alloc_wc<uint8_t>(size);
        KREQUIRE_OK(a);
        KEXPECT_TRUE(a->handle().remapped);
        KEXPECT_TRUE(a->handle().write_combine);
        const size_t bytes = block_bytes(size);
        size_t not_wc = 0;
        for (size_t off = 0; off < bytes; off += kPage) {
          not_wc += is_write_combining_name(arch::mapping_attribute(a->raw_data() + off)) ? 0 : 1;
        }
        KEXPECT_EQ(not_wc, 0u);
        // What the MMU uses, where the architecture can report it (AArch64).
        auto t = arch::translated_attribute(a->raw_data() + bytes - 1);
        if (t.ok()) {
          KEXPECT_TRUE(is_write_combining_name(*t));
        } else {
          KEXPECT_EQ(t.code(), ErrorCode::kNotSupported);
        }
        KEXPECT_TRUE(neighbours_untouched(a->raw_data(), bytes));
#if DMA_STATS  // KernelDmaOp::stats() counts only with DMA_STATS.
        KEXPECT_EQ(op->stats().coherent_uncached_live, b.uncached_live + 1);
#endif
        // Zeroed, and the stores reach the page once fenced.
        KEXPECT_EQ(a->raw_data()[size - 1], 0);
        support::fill_bytes(a->raw_data(), 0x5A, size);
        __atomic_thread_fence(__ATOMIC_SEQ_CST);
        KEXPECT_EQ(a->raw_data()[size / 2], 0x5A);
      }
      KEXPECT_BASELINE(b);
    }
  }
}

KTEST(coherent_uncached_pages_of_one_region_come_back_independently) {
  // Several small allocations in the same 2 MiB region share its split tables: the region goes
  // back to one large leaf only when the last of them is freed.
  KernelDmaOp* op = kernel_env().dma;
  const char* cached = cached_name();
  KREQUIRE_TRUE(cached != nullptr);
  Baseline b = Baseline::now();
  KREQUIRE_TRUE(b.uncached_live == 0);
  constexpr size_t kCount = 6;
  DmaHandle h[kCount];
  for (auto& x : h) {
    auto r = op->alloc_coherent(non_coherent(), Layout{4096, 1});
    KREQUIRE_OK(r);
    x = *r;
  }
  // Pages whose direct map was split to 4 KiB at boot (AArch64) need no split now; the others
  // split their region once.
  bool all_presplit = true;
  for (const auto& x : h) all_presplit = all_presplit && kernel_env().presplit(x.phys);
  const size_t with_all = arch::direct_map_split_tables();
  if (all_presplit) {
    KEXPECT_EQ(with_all, 0u);
  } else if (with_all == 0) {
    // Nothing was split: the pages lie where the boot page tables already map RAM with 4 KiB
    // leaves (seen on riscv64 with the IOMMU on, whose set-up leaves the allocator's hint low).
    // The checks below still hold page by page.
    kprintf("  note: no region split (the pages' region is mapped by 4 KiB leaves at boot)\n");
  }
  // Free every other one: those pages are cacheable again, their neighbours still uncached.
  for (size_t i = 0; i < kCount; i += 2) op->dealloc_coherent(h[i]);
  for (size_t i = 0; i < kCount; ++i) {
    const char* a = arch::mapping_attribute(h[i].cpu_addr);
    if (i % 2 == 0) {
      KEXPECT_TRUE(a != nullptr && kstr::equal(a, cached));
    } else {
      KEXPECT_TRUE(is_uncached_name(a));
    }
  }
  KEXPECT_LE(arch::direct_map_split_tables(), with_all);
  if (all_presplit || with_all == 0) {
    KEXPECT_EQ(arch::direct_map_split_tables(), 0u);
  } else {
    KEXPECT_GT(arch::direct_map_split_tables(), 0u);
  }
  for (size_t i = 1; i < kCount; i += 2) op->dealloc_coherent(h[i]);
  for (const auto& x : h) KEXPECT_EQ(pages_not(x.cpu_addr, kPage, cached, false), 0u);
  KEXPECT_BASELINE(b);
}

KTEST(coherent_data_written_uncached_is_in_memory) {
  // The CPU writes through the uncached mapping; the edu DMA engine (which reads and writes
  // memory, not the CPU's cache) copies it into its buffer and back into a second uncached
  // allocation, and the CPU reads it there. Both through the edu device whose mask is 32 bits.
  const KernelEnv& env = kernel_env();
  auto d = devices_init(env);
  KREQUIRE_OK(d);
  const Devices::Edu* e = (*d)->edu_with_mask(kMask32);
  KREQUIRE_TRUE(e != nullptr);
  // Behind an IOMMU the device's domain may grow page tables for the I/O addresses it hands out,
  // and keeps them until it is torn down (dmakit/io_page_table.h): not a leak.
  IommuDomain* dom = iommu::domain_of(iommu::bdf_of(e->dev));
  const uint64_t tables0 = dom != nullptr ? dom->page_table().table_pages() : 0;
  Baseline b = Baseline::now();
  KREQUIRE_TRUE(b.uncached_live == 0);
  {
    DeviceDma dma = (*d)->device_dma(e->dev, kMask32);
    dma.set_name("edu-uncached");
    dma.set_coherent(false);
    EduDevice edu;
    KREQUIRE_OK(edu.init(e->dev, dma));
    // The buffers belong to the test, not the driver (whose teardown check would count them).
    DeviceDma mem(env.dma, kMask32);
    mem.set_coherent(false);
    constexpr size_t kSize = EduDevice::kBufferSize;
    auto src = mem.alloc_array<uint8_t>(kSize);
    auto dst = mem.alloc_array<uint8_t>(kSize);
    KREQUIRE_OK(src);
    KREQUIRE_OK(dst);
    KEXPECT_TRUE(is_uncached_name(arch::mapping_attribute(src->raw_data())));
    KEXPECT_TRUE(is_uncached_name(arch::mapping_attribute(dst->raw_data())));
    ktest_util::fill_pattern(src->raw_data(), kSize, 61);
    // Read back through the uncached mapping.
    KEXPECT_EQ(ktest_util::check_pattern(src->raw_data(), kSize, 61), kSize);
    auto t1 = edu.copy_to_device(src->raw_data(), kSize);
    KREQUIRE_OK(t1);
    KEXPECT_FALSE(t1->bounced);
    auto t2 = edu.copy_from_device(dst->raw_data(), kSize);
    KREQUIRE_OK(t2);
    KEXPECT_EQ(ktest_util::check_pattern(dst->raw_data(), kSize, 61), kSize);
  }
  if (dom != nullptr) b.free_pages -= dom->page_table().table_pages() - tables0;
  KEXPECT_BASELINE(b);
}

KTEST(coherent_dma_pool_blocks_of_a_noncoherent_device_are_uncached) {
  KernelDmaOp* op = kernel_env().dma;
  const char* cached = cached_name();
  KREQUIRE_TRUE(cached != nullptr);
  Baseline b = Baseline::now();
  KREQUIRE_TRUE(b.uncached_live == 0);
  DeviceDma dev(op, kMask32);
  dev.set_coherent(false);
  void* first = nullptr;
  {
    DmaPool pool;
    KREQUIRE_OK(pool.init(&dev, 64, 64, 4096, "coherent-test"));
    DmaPoolBlock blocks[80];
    for (auto& blk : blocks) {
      auto r = pool.alloc();
      KREQUIRE_OK(r);
      blk = *r;
      KEXPECT_TRUE(is_uncached_name(arch::mapping_attribute(blk.cpu)));
      KEXPECT_LE(blk.dma.value() + 63, kMask32);
    }
    first = blocks[0].cpu;
#if DMA_STATS  // KernelDmaOp::stats() counts only with DMA_STATS.
    KEXPECT_GE(op->stats().coherent_uncached_live, 2u);  // 80 blocks of 64 bytes: 2+ chunks.
#endif
    for (auto& blk : blocks) KEXPECT_OK(pool.free(blk.cpu));
  }
  // The pool gave its chunks back: cacheable again.
  const char* a = arch::mapping_attribute(first);
  KEXPECT_TRUE(a != nullptr && kstr::equal(a, cached));
  KEXPECT_BASELINE(b);
}

KTEST(coherent_failures_leave_the_direct_map_as_it_was) {
  const KernelEnv& env = kernel_env();
  KernelDmaOp* op = env.dma;
  const char* cached = cached_name();
  KREQUIRE_TRUE(cached != nullptr);
  Baseline b = Baseline::now();
  KREQUIRE_TRUE(b.uncached_live == 0);
  // Requests refused before any page is taken.
  KEXPECT_ERR(op->alloc_coherent(non_coherent(), Layout{0, 1}), ErrorCode::kLayoutError);
  KEXPECT_ERR(op->alloc_coherent(non_coherent(), Layout{64, 3}), ErrorCode::kLayoutError);
  KEXPECT_ERR(
      op->alloc_coherent(non_coherent(), Layout{(kPage << PageFrameAllocator::kMaxOrder) + 1, 1}),
      ErrorCode::kLayoutError);
  uint64_t below_all = env.pfa->lowest_address().value() - 1;
  KEXPECT_ERR(op->alloc_coherent(non_coherent(below_all), Layout{64, 1}),
              ErrorCode::kDmaMaskNotMatch);
  KEXPECT_BASELINE(b);

  // The page-table pool runs out: 4 KiB allocations each in its own 2 MiB region need a split
  // table each. The one that fails gives its pages back and leaves no split behind. Where the
  // boot split covers all RAM (AArch64), none needs a table: more of them than the pool and the
  // library's split records hold all succeed, and no split table is ever lent.
  constexpr size_t kMax = 400;
  constexpr size_t kPresplitCount = SplitTablePool::kPages + 36;
  static DmaHandle held[kMax];
  const bool presplit_all = env.presplit_limit == ~0ull;
  size_t n = 0;
  Error failure;
  for (; n < (presplit_all ? kPresplitCount : kMax); ++n) {
    Baseline before = Baseline::now();
    auto r = op->alloc_coherent(non_coherent(), Layout{4096, 2u << 20});
    if (!r.ok()) {
      failure = r.error();
      KEXPECT_BASELINE(before);
      break;
    }
    held[n] = *r;
    KEXPECT_EQ(pages_not(r->cpu_addr, kPage, nullptr, true), 0u);
  }
  if (presplit_all) {
    KEXPECT_EQ(failure.code, ErrorCode::kOk);
    KEXPECT_EQ(n, kPresplitCount);
    KEXPECT_EQ(arch::direct_map_split_tables(), 0u);
  } else {
    KEXPECT_EQ(failure.code, ErrorCode::kNoMemory);
    KEXPECT_GT(n, 8u);
    KEXPECT_LT(n, kMax);
  }
  // Memory itself was not the limit: the same request for a coherent device succeeds.
  DmaConstraints coh = non_coherent();
  coh.coherence = DmaCoherence::kCoherent;
  auto plain = op->alloc_coherent(coh, Layout{4096, 2u << 20});
  KEXPECT_OK(plain);
  if (plain.ok()) op->dealloc_coherent(*plain);
  for (size_t i = 0; i < n; ++i) {
    void* va = held[i].cpu_addr;
    op->dealloc_coherent(held[i]);
    KEXPECT_EQ(pages_not(va, kPage, cached, false), 0u);
  }
  KEXPECT_BASELINE(b);
  // And the pool is whole again: the same number fit once more.
  size_t again = 0;
  for (; again < n; ++again) {
    auto r = op->alloc_coherent(non_coherent(), Layout{4096, 2u << 20});
    if (!r.ok()) break;
    held[again] = *r;
  }
  KEXPECT_EQ(again, n);
  for (size_t i = 0; i < again; ++i) op->dealloc_coherent(held[i]);
  KEXPECT_BASELINE(b);
}

// ---- Coherence from the device tree ----

namespace {

// A hand-made flattened device tree (Devicetree specification, "Flattened Devicetree Format"):
//   / { a { dma-coherent; b { c {}; d { dma-noncoherent; e {}; }; }; }; f {}; };
class TinyFdt {
 public:
  TinyFdt() {
    const uint32_t coherent = add_string("dma-coherent");
    const uint32_t noncoherent = add_string("dma-noncoherent");
    begin("");
    begin("a");
    prop(coherent);
    begin("b");
    begin("c");
    end();
    begin("d");
    prop(noncoherent);
    begin("e");
    end();
    end();
    end();
    end();
    begin("f");
    end();
    end();
    word(9);  // FDT_END
    const uint32_t struct_size = static_cast<uint32_t>(struct_len_);
    const uint32_t off_struct = 40 + 16;  // Header, then an empty memory reservation map.
    const uint32_t off_strings = off_struct + struct_size;
    const uint32_t total = off_strings + static_cast<uint32_t>(strings_len_);
    const uint32_t header[10] = {Fdt::kMagic, total, off_struct,
                                 off_strings, 40,    17,
                                 16,          0,     static_cast<uint32_t>(strings_len_),
                                 struct_size};
    for (size_t i = 0; i < 10; ++i) put_be32(blob_ + 4 * i, header[i]);
    support::fill_bytes(blob_ + 40, 0, 16);
    support::copy_bytes(blob_ + off_struct, struct_, struct_len_);
    support::copy_bytes(blob_ + off_strings, strings_, strings_len_);
  }
  const void* blob() const { return blob_; }

 private:
  static void put_be32(uint8_t* p, uint32_t v) {
    p[0] = static_cast<uint8_t>(v >> 24);
    p[1] = static_cast<uint8_t>(v >> 16);
    p[2] = static_cast<uint8_t>(v >> 8);
    p[3] = static_cast<uint8_t>(v);
  }
  void word(uint32_t v) {
    put_be32(struct_ + struct_len_, v);
    struct_len_ += 4;
  }
  void begin(const char* name) {
    word(1);  // FDT_BEGIN_NODE, then the name, NUL-terminated, padded to 4 bytes.
    size_t n = kstr::length(name) + 1;
    support::fill_bytes(struct_ + struct_len_, 0, support::align_up(n, 4));
    support::copy_bytes(struct_ + struct_len_, name, n);
    struct_len_ += support::align_up(n, 4);
  }
  void prop(uint32_t nameoff) {
    word(3);  // FDT_PROP, length 0 (a boolean property), name offset.
    word(0);
    word(nameoff);
  }
  void end() { word(2); }  // FDT_END_NODE
  uint32_t add_string(const char* s) {
    uint32_t off = static_cast<uint32_t>(strings_len_);
    size_t n = kstr::length(s) + 1;
    support::copy_bytes(strings_ + strings_len_, s, n);
    strings_len_ += n;
    return off;
  }

  alignas(8) uint8_t blob_[512] = {};
  uint8_t struct_[320] = {};
  size_t struct_len_ = 0;
  char strings_[64] = {};
  size_t strings_len_ = 0;
};

}  // namespace

KTEST(coherent_device_tree_nearest_property_decides) {
  TinyFdt tiny;
  auto fdt = Fdt::from(tiny.blob());
  KREQUIRE_OK(fdt);
  FdtNode a = fdt->find_path("/a");
  FdtNode c = fdt->find_path("/a/b/c");
  FdtNode d = fdt->find_path("/a/b/d");
  FdtNode e = fdt->find_path("/a/b/d/e");
  FdtNode f = fdt->find_path("/f");
  KREQUIRE_TRUE(a.valid() && c.valid() && d.valid() && e.valid() && f.valid());
  const bool defaults[] = {false, true};
  for (bool def : defaults) {
    DtDmaCoherence rc = dt_dma_coherence(*fdt, c, def);
    KEXPECT_TRUE(rc.coherent);
    KEXPECT_TRUE(rc.decided_by == a);
    DtDmaCoherence ra = dt_dma_coherence(*fdt, a, def);
    KEXPECT_TRUE(ra.coherent && ra.decided_by == a);
    DtDmaCoherence re = dt_dma_coherence(*fdt, e, def);
    KEXPECT_FALSE(re.coherent);
    KEXPECT_TRUE(re.decided_by == d);
    DtDmaCoherence rf = dt_dma_coherence(*fdt, f, def);
    KEXPECT_EQ(rf.coherent, def);
    KEXPECT_FALSE(rf.from_device_tree());
    DtDmaCoherence rn = dt_dma_coherence(*fdt, FdtNode{}, def);
    KEXPECT_EQ(rn.coherent, def);
    KEXPECT_FALSE(rn.from_device_tree());
  }
}

KTEST(coherent_pci_devices_follow_the_firmware) {
  // With a device tree (AArch64, RISC-V): the PCIe host bridge's node and its ancestors decide;
  // QEMU's virt trees mark it dma-coherent. Without one (x86-64): the platform default.
  const KernelEnv& env = kernel_env();
  const bool platform_default = env.dma->default_constraints().coherence == DmaCoherence::kCoherent;
  if (env.boot->fdt == nullptr) {
    DtDmaCoherence r = dma_coherence_for(env, FdtNode{});
    KEXPECT_EQ(r.coherent, platform_default);
    KEXPECT_FALSE(r.from_device_tree());
    return;
  }
  auto fdt = Fdt::from(env.boot->fdt);
  KREQUIRE_OK(fdt);
  FdtNode pci = fdt->find_compatible("pci-host-ecam-generic");
  KREQUIRE_TRUE(pci.valid());
  DtDmaCoherence r = dma_coherence_for(env, pci);
  // Whatever the tree says on the way up decides; compare with a direct reading of it.
  bool said = false;
  bool want = platform_default;
  for (FdtNode n = pci; n.valid() && !said; n = fdt->parent(n)) {
    if (fdt->has_prop(n, "dma-coherent")) {
      said = true;
      want = true;
    } else if (fdt->has_prop(n, "dma-noncoherent")) {
      said = true;
      want = false;
    }
  }
  KEXPECT_EQ(r.coherent, want);
  KEXPECT_EQ(r.from_device_tree(), said);
  // QEMU 10's virt machines describe the PCIe host bridge as dma-coherent.
  KEXPECT_TRUE(fdt->has_prop(pci, "dma-coherent"));
  KEXPECT_TRUE(r.coherent && r.decided_by == pci);
}
