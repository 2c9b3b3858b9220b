// In-VM tests of the NVMe driver (drivers/nvme/) on the two controllers the runner attaches
// (tests/qemu/run_qemu.py): controller 0 with the full 64-bit mask (data mapped in place unless a
// receive buffer shares cache lines on a non-coherent machine), controller 1 with a 32-bit mask
// and its buffers above 4 GiB, so that every data buffer goes through a bounce slot (forced when
// the machine has no RAM above 4 GiB). Completions arrive by MSI-X: controller 0's on the boot
// CPU, controller 1's on the last online CPU, where the handler unmaps (and copies out of the
// bounce slot) while the boot CPU waits.
//
// Each controller's image (NVMe namespace 1, 512-byte blocks) is written by the runner before
// boot with nvme_pattern::byte(c, pos, false); the tests write the guest pattern to blocks
// kGuestFirst.. of both, announce them, and the runner checks each image byte for byte after the
// run. Every test ends with the allocator, the bounce pools and the DmaOp's live counts where
// they started.
#include "drivers/nvme/nvme.h"
#include "dmakit/support/mem.h"
#include "testkernel/arch.h"
#include "testkernel/devices.h"
#include "testkernel/iommu.h"
#include "testkernel/kernel_env.h"
#include "testkernel/kprintf.h"
#include "testkernel/percpu.h"
#include "tests/qemu/ktest.h"
#include "tests/qemu/test_util.h"

using ktest_util::Pages;

namespace nvme_pattern {

// As tests/qemu/run_qemu.py's nvme_bytes(): byte `pos` of controller `ctrl`'s image.
constexpr uint64_t kBlocks = 2048;
constexpr uint64_t kBlock = 512;
constexpr uint64_t kGuestFirst = 1024;
constexpr uint64_t kGuestCount = 1024;
inline uint8_t byte(unsigned ctrl, uint64_t pos, bool guest) {
  const uint32_t k1 = guest ? 0x85EBCA6Bu : 0x9E3779B1u;
  const uint32_t k2 = guest ? 0xC2B2AE35u : 0x7FEB352Du;
  const uint32_t seed = (ctrl + 1) * (guest ? 0x27D4EB2Fu : 0x165667B1u);
  uint32_t x = static_cast<uint32_t>(pos) * k1 + seed;
  x ^= x >> 15;
  x *= k2;
  return static_cast<uint8_t>(x >> 24);
}

}  // namespace nvme_pattern
using ktest_util::devices;

namespace {

constexpr uint64_t kPage = ktest_util::kPage;
constexpr uint64_t kMask32 = 0xFFFF'FFFFull;
constexpr uint8_t kGuard = 0xEE;

// What must be back where it was once a controller is shut down.
struct Snapshot {
  uint64_t free_pages = 0;
  uint64_t pool_used[KernelDmaOp::kMaxPools] = {};
  uint64_t live_maps = 0;
  uint64_t coherent_live = 0;
  uint64_t misuse_reports = 0;  // The misuse checker's (a teardown with live mappings, ...).

  static Snapshot take() {
    const KernelEnv& env = kernel_env();
    Snapshot s;
    s.free_pages = env.pfa->free_pages();
    s.misuse_reports = DmaDebug::total();
    // Behind the IOMMU: the page tables a domain grows stay with it until it is destroyed (not a
    // leak, counted as free here), and its own live mappings count with the platform's.
    if (Devices* d = devices()) {
      for (size_t i = 0; i < d->num_nvme(); ++i) {
        if (IommuDomain* dom = iommu::domain_of(iommu::bdf_of(d->nvme(i)))) {
          s.free_pages += dom->page_table().table_pages();
          s.live_maps += dom->live_mappings();
        }
      }
    }
    for (size_t i = 0; i < env.num_pools; ++i) s.pool_used[i] = env.pools[i]->stats().used_slots;
#if DMA_STATS  // KernelDmaOp::stats() counts only with DMA_STATS.
    s.live_maps = env.dma->stats().live_maps;
    s.coherent_live = env.dma->stats().coherent_live;
#endif
    return s;
  }
};

#define EXPECT_SNAPSHOT_EQ(a, b)                             \
  do {                                                       \
    KEXPECT_EQ((a).free_pages, (b).free_pages);              \
    for (size_t i_ = 0; i_ < kernel_env().num_pools; ++i_) { \
      KEXPECT_EQ((a).pool_used[i_], (b).pool_used[i_]);      \
    }                                                        \
    KEXPECT_EQ((a).live_maps, (b).live_maps);                \
    KEXPECT_EQ((a).coherent_live, (b).coherent_live);        \
    KEXPECT_EQ((a).misuse_reports, (b).misuse_reports);      \
  } while (0)

// 2^order pages wholly above `floor`, freed by the destructor; !ok() when there are none.
class HighPages {
 public:
  HighPages(unsigned order, uint64_t floor) : order_(order) {
    auto r = ktest_util::alloc_above(order, floor);
    if (r.ok()) {
      phys_ = *r;
      ok_ = true;
    }
  }
  ~HighPages() {
    if (ok_) KASSERT(kernel_env().pfa->free(phys_, order_).ok(), "HighPages freed twice");
  }
  HighPages(const HighPages&) = delete;
  HighPages& operator=(const HighPages&) = delete;
  bool ok() const { return ok_; }
  uint8_t* va() const { return static_cast<uint8_t*>(kernel_env().phys_to_virt(phys_)); }

 private:
  unsigned order_;
  PhysAddr phys_;
  bool ok_ = false;
};

unsigned last_online_cpu() {
  unsigned last = 0;
  for (unsigned i = 0; i < num_cpus(); ++i) {
    if (cpu_online(i)) last = i;
  }
  return last;
}

// Binds NVMe controller `idx` with `mask`; the MSI-X messages go to `cpu`.
Result<void> bind(NvmeController* c, size_t idx, uint64_t mask,
                  NvmeController::Completion completion, unsigned cpu) {
  Devices* d = devices();
  if (d == nullptr || d->num_nvme() <= idx) return ErrorCode::kNotFound;
  DeviceDma dma = d->device_dma(d->nvme(idx), mask);
  dma.set_name(idx == 0 ? "nvme0" : "nvme1");
  return c->init(d->nvme(idx), dma, completion, cpu);
}

void fill(uint8_t* p, size_t n, unsigned ctrl, uint64_t pos, bool guest, bool invert = false) {
  for (size_t i = 0; i < n; ++i) {
    uint8_t b = nvme_pattern::byte(ctrl, pos + i, guest);
    p[i] = invert ? static_cast<uint8_t>(~b) : b;
  }
}

// Offset of the first byte that is not the pattern, or n.
size_t check(const uint8_t* p, size_t n, unsigned ctrl, uint64_t pos, bool guest,
             bool invert = false) {
  for (size_t i = 0; i < n; ++i) {
    uint8_t b = nvme_pattern::byte(ctrl, pos + i, guest);
    if (p[i] != (invert ? static_cast<uint8_t>(~b) : b)) return i;
  }
  return n;
}

// Whether the `n` bytes before and after [p, p + len) still hold kGuard.
bool guards_intact(const uint8_t* p, size_t len, size_t n, const uint8_t* lo, const uint8_t* hi) {
  for (size_t i = 1; i <= n && p - i >= lo; ++i) {
    if (p[-static_cast<ptrdiff_t>(i)] != kGuard) return false;
  }
  for (size_t i = 0; i < n && p + len + i < hi; ++i) {
    if (p[len + i] != kGuard) return false;
  }
  return true;
}

// Pages a transfer of `n` bytes at page offset `off` touches.
size_t pages_spanned(size_t off, size_t n) {
  return (off + n + kPage - 1) / kPage;
}

// A request of `bytes` at `p` split into page-aligned pieces no larger than the device's
// max_mapping_size (each buffer of a bounced device must fit one bounce slot run). Returns the
// number of entries.
size_t chunked(uint8_t* p, size_t bytes, size_t max_map, SgEntry* out, size_t max_out) {
  size_t chunk = max_map >= bytes ? bytes : (max_map & ~(kPage - 1));
  size_t n = 0;
  for (size_t done = 0; done < bytes && n < max_out; done += chunk) {
    size_t len = bytes - done < chunk ? bytes - done : chunk;
    out[n++] = SgEntry{p + done, len};
  }
  return n;
}

// Writes the guest pattern to blocks kGuestFirst.. of controller `idx` with requests of many
// sizes and buffer offsets (after overwriting the region with the inverted pattern, so that a
// piece that never reached the disk shows), reading each piece back elsewhere; then reads the
// whole region in requests of max_transfer_bytes(). `buf` has room for 1 MiB.
void exercise_writes(::ktest::Context& ktest_ctx, NvmeController& c, unsigned idx, uint8_t* buf) {
  const uint64_t first = nvme_pattern::kGuestFirst;
  const uint64_t pos0 = first * nvme_pattern::kBlock;
  const size_t region = nvme_pattern::kGuestCount * nvme_pattern::kBlock;
  const size_t max_map = c.dma().max_mapping_size();
  KREQUIRE_TRUE(c.max_transfer_bytes() >= kPage);
  uint8_t* in = buf + region;  // The second half of the buffer receives.
  SgEntry e[NvmeController::kMaxBuffers];

  // 1. The whole region, inverted, in requests of up to MDTS.
  fill(buf, region, idx, pos0, true, /*invert=*/true);
  for (size_t done = 0; done < region; done += c.max_transfer_bytes()) {
    size_t len = support::min(region - done, c.max_transfer_bytes());
    size_t n = chunked(buf + done, len, max_map, e, NvmeController::kMaxBuffers);
    auto w = c.write(first + done / nvme_pattern::kBlock, support::Span<const SgEntry>(e, n));
    KREQUIRE_OK(w);
    KEXPECT_EQ(w->prp_entries, len / kPage);
  }
  support::fill_bytes(in, 0, region);
  for (size_t done = 0; done < region; done += c.max_transfer_bytes()) {
    size_t len = support::min(region - done, c.max_transfer_bytes());
    size_t n = chunked(in + done, len, max_map, e, NvmeController::kMaxBuffers);
    KREQUIRE_OK(c.read(first + done / nvme_pattern::kBlock, support::Span<const SgEntry>(e, n)));
  }
  KEXPECT_EQ(check(in, region, idx, pos0, true, true), region);

  // 2. Pieces of many sizes at many page offsets (dword-aligned, as PRPs need), each read back
  // at another offset. The last piece is the rest of the region.
  struct Piece {
    uint64_t blocks;
    size_t write_off;
    size_t read_off;
  };
  const Piece pieces[] = {{1, 0x204, 0x10},  {2, 0xFFC, 0x0},   {3, 0x0, 0xFFC},
                          {8, 0x40, 0x204},  {9, 0xC00, 0x600}, {15, 0x600, 0x40},
                          {16, 0x10, 0xC00}, {64, 0x800, 0x0},  {128, 0xE00, 0x800},
                          {0, 0x0, 0x0}};
  uint64_t lba = first;
  for (const Piece& pc : pieces) {
    uint64_t blocks = pc.blocks != 0 ? pc.blocks : first + nvme_pattern::kGuestCount - lba;
    size_t len = blocks * nvme_pattern::kBlock;
    uint64_t pos = lba * nvme_pattern::kBlock;
    uint8_t* wp = buf + pc.write_off;
    uint8_t* rp = in + pc.read_off;
    fill(wp, len, idx, pos, true);
    size_t nw = 1;
    e[0] = SgEntry{wp, len};
    if (len > max_map) nw = chunked(wp, len, max_map, e, NvmeController::kMaxBuffers);
    auto w = c.write(lba, support::Span<const SgEntry>(e, nw));
    KREQUIRE_OK(w);
    if (nw == 1) {
      KEXPECT_EQ(w->prp_entries, pages_spanned(pc.write_off, len));
      KEXPECT_EQ(w->prp_list, w->prp_entries > 2);
    }
    support::fill_bytes(in, kGuard, region);
    SgEntry r{rp, len};
    auto rd = c.read(lba, support::Span<const SgEntry>(&r, 1));
    if (len <= max_map || rd.code() != ErrorCode::kLayoutError) {
      KREQUIRE_OK(rd);
    } else {
      // A receive buffer this large that must bounce whole (non-coherent, partial lines) is
      // above the bounce pool's max_mapping_size: read it back in chunks instead.
      size_t nr = chunked(in, len, max_map, e, NvmeController::kMaxBuffers);
      KREQUIRE_OK(c.read(lba, support::Span<const SgEntry>(e, nr)));
      rp = in;
    }
    KEXPECT_EQ(check(rp, len, idx, pos, true), len);
    KEXPECT_TRUE(guards_intact(rp, len, 64, in, in + region));
    lba += blocks;
  }
  KEXPECT_EQ(lba, first + nvme_pattern::kGuestCount);

  // 3. Scattered buffers: the first ends on a page boundary, the others are whole pages or start
  // on one; rewritten with the same bytes, read back into a differently cut list.
  {
    const uint64_t slba = first + 40;
    const uint64_t pos = slba * nvme_pattern::kBlock;
    SgEntry we[] = {{buf + 0xE00, 0x200}, {buf + 2 * kPage, kPage}, {buf + 4 * kPage, kPage}};
    fill(buf + 0xE00, 0x200, idx, pos, true);
    fill(buf + 2 * kPage, kPage, idx, pos + 0x200, true);
    fill(buf + 4 * kPage, kPage, idx, pos + 0x200 + kPage, true);
    auto w = c.write(slba, we);
    KREQUIRE_OK(w);
    if (iommu::active()) {
      KEXPECT_EQ(w->segments, 1u);  // One I/O range for the list.
    } else if (w->bounced == 0) {
      KEXPECT_EQ(w->segments, 3u);
    } else {
      // Bounce slots taken one after the other may sit side by side and merge.
      KEXPECT_GE(w->segments, 1u);
      KEXPECT_LE(w->segments, 3u);
    }
    KEXPECT_EQ(w->prp_entries, 3u);
    KEXPECT_TRUE(w->prp_list);
    support::fill_bytes(in, kGuard, 8 * kPage);
    SgEntry re[] = {{in + 0xC00, 0x400}, {in + 2 * kPage, kPage}, {in + 5 * kPage, 0xE00}};
    auto r = c.read(slba, re);
    KREQUIRE_OK(r);
    KEXPECT_EQ(check(in + 0xC00, 0x400, idx, pos, true), 0x400u);
    KEXPECT_EQ(check(in + 2 * kPage, kPage, idx, pos + 0x400, true), kPage);
    KEXPECT_EQ(check(in + 5 * kPage, 0xE00, idx, pos + 0x400 + kPage, true), 0xE00u);
    KEXPECT_EQ(in[5 * kPage + 0xE00], kGuard);
  }

  // 4. The whole region once more.
  support::fill_bytes(in, 0, region);
  for (size_t done = 0; done < region; done += c.max_transfer_bytes()) {
    size_t len = support::min(region - done, c.max_transfer_bytes());
    size_t n = chunked(in + done, len, max_map, e, NvmeController::kMaxBuffers);
    KREQUIRE_OK(c.read(first + done / nvme_pattern::kBlock, support::Span<const SgEntry>(e, n)));
  }
  KEXPECT_EQ(check(in, region, idx, pos0, true), region);
}

}  // namespace

KTEST(nvme_controllers_come_up_and_identify) {
  Devices* d = devices();
  KREQUIRE_TRUE(d != nullptr);
  KREQUIRE_TRUE(d->num_nvme() >= 2);
  const Snapshot s0 = Snapshot::take();
  for (unsigned idx = 0; idx < 2; ++idx) {
    NvmeController c;
    KREQUIRE_OK(bind(&c, idx, ~0ull, NvmeController::Completion::kInterrupt, 0));
    KEXPECT_EQ(c.completion(), NvmeController::Completion::kInterrupt);  // QEMU has MSI-X.
    KEXPECT_GE(c.version(), 0x10000u);                                   // 1.0 or later.
    KEXPECT_EQ(c.lba_size(), nvme_pattern::kBlock);
    KEXPECT_EQ(c.namespace_blocks(), nvme_pattern::kBlocks);
    KEXPECT_GE(c.doorbell_stride(), 4u);
    KEXPECT_GE(c.io_queue_depth(), 2u);
    // MDTS, where the controller sets one, is the limit; else one PRP list page.
    const uint64_t prp_limit = NvmeController::kPrpListEntries * NvmeController::kPageSize;
    KEXPECT_EQ(c.max_transfer_bytes(),
               c.mdts_bytes() != 0 ? support::min(c.mdts_bytes(), prp_limit) : prp_limit);
    // Identify twice, create CQ, create SQ: each completed through the admin queue's vector.
    KEXPECT_EQ(c.stats().commands, 4u);
    KEXPECT_GE(c.stats().interrupts, 4u);
    KEXPECT_EQ(c.stats().irq_completed, 4u);
    KEXPECT_EQ(c.stats().unknown, 0u);
    kprintf("  nvme%u: NVMe %u.%u, %llu blocks of %u bytes, MDTS %llu KiB, I/O depth %u\n", idx,
            c.version() >> 16, (c.version() >> 8) & 0xFF,
            static_cast<unsigned long long>(c.namespace_blocks()), c.lba_size(),
            static_cast<unsigned long long>(c.mdts_bytes() / 1024), c.io_queue_depth());
    c.shutdown();
    KEXPECT_FALSE(c.bound());
  }
  EXPECT_SNAPSHOT_EQ(Snapshot::take(), s0);
}

KTEST(nvme_reads_the_host_pattern_at_many_sizes_and_offsets) {
  const Snapshot s0 = Snapshot::take();
  {
    NvmeController c;
    KREQUIRE_OK(bind(&c, 0, ~0ull, NvmeController::Completion::kInterrupt, 0));
    Pages buf(8);  // 1 MiB.
    KREQUIRE_TRUE(buf.ok());
    uint8_t* lo = buf.va();
    uint8_t* hi = buf.va() + buf.bytes();
    struct Case {
      uint64_t lba;
      size_t bytes;  // 0: max_transfer_bytes().
      size_t off;
    };
    const Case cases[] = {{0, 512, 0},          {3, 512, 0x204},     {5, 512, 0xFFC},
                          {7, 1024, 0xC00},     {9, 4096, 0},        {17, 4096, 0x200},
                          {40, 8192, 0x40},     {100, 12800, 0x600}, {200, 65536, 0},
                          {300, 130560, 0xE00}, {1, 262144, 0x80},   {0, 0, 0},
                          {0, 0, 0x100},        {1023, 512, 0x7FC}};
    for (const Case& k : cases) {
      size_t bytes = k.bytes != 0 ? k.bytes : c.max_transfer_bytes();
      if (bytes > c.max_transfer_bytes()) continue;
      support::fill_bytes(lo, kGuard, buf.bytes());
      uint8_t* p = lo + k.off;
      SgEntry e{p, bytes};
      auto r = c.read(k.lba, support::Span<const SgEntry>(&e, 1));
      KREQUIRE_OK(r);
      KEXPECT_EQ(check(p, bytes, 0, k.lba * nvme_pattern::kBlock, false), bytes);
      KEXPECT_TRUE(guards_intact(p, bytes, 64, lo, hi));
      KEXPECT_EQ(r->prp_entries, pages_spanned(k.off, bytes));
      KEXPECT_EQ(r->prp_list, r->prp_entries > 2);
    }
    // Two neighbours merge into one segment; three scattered pieces make three.
    support::fill_bytes(lo, kGuard, buf.bytes());
    SgEntry pair[] = {{lo, 0x800}, {lo + 0x800, 0x1800}};
    auto r = c.read(64, pair);
    KREQUIRE_OK(r);
    if (r->bounced == 0) KEXPECT_EQ(r->segments, 1u);
    KEXPECT_EQ(check(lo, 0x2000, 0, 64 * nvme_pattern::kBlock, false), 0x2000u);
    support::fill_bytes(lo, kGuard, buf.bytes());
    SgEntry scattered[] = {{lo + 0xA00, 0x600}, {lo + 3 * kPage, kPage}, {lo + 7 * kPage, 0x200}};
    auto r2 = c.read(500, scattered);
    KREQUIRE_OK(r2);
    // Behind the IOMMU the domain maps the list as one I/O range (one segment, its pages still
    // three PRP entries).
    KEXPECT_EQ(r2->segments, iommu::active() ? 1u : 3u);
    KEXPECT_EQ(r2->prp_entries, 3u);
    const uint64_t pos = 500 * nvme_pattern::kBlock;
    KEXPECT_EQ(check(lo + 0xA00, 0x600, 0, pos, false), 0x600u);
    KEXPECT_EQ(check(lo + 3 * kPage, kPage, 0, pos + 0x600, false), kPage);
    KEXPECT_EQ(check(lo + 7 * kPage, 0x200, 0, pos + 0x600 + kPage, false), 0x200u);
    KEXPECT_EQ(lo[0x9FF], kGuard);
    KEXPECT_EQ(lo[7 * kPage + 0x200], kGuard);
    KEXPECT_GT(c.stats().irq_completed, 4u);
    KEXPECT_EQ(c.stats().unknown, 0u);
  }
  EXPECT_SNAPSHOT_EQ(Snapshot::take(), s0);
}

KTEST(nvme_polled_controller_reads_without_interrupts) {
  const Snapshot s0 = Snapshot::take();
  {
    NvmeController c;
    KREQUIRE_OK(bind(&c, 1, ~0ull, NvmeController::Completion::kPolled, 0));
    Pages buf(2);
    KREQUIRE_TRUE(buf.ok());
    support::fill_bytes(buf.va(), kGuard, buf.bytes());
    SgEntry e{buf.va() + 0x300, 3 * kPage};
    auto r = c.read(12, support::Span<const SgEntry>(&e, 1));
    KREQUIRE_OK(r);
    KEXPECT_EQ(check(buf.va() + 0x300, 3 * kPage, 1, 12 * nvme_pattern::kBlock, false), 3 * kPage);
    KEXPECT_EQ(r->prp_entries, 4u);
    KEXPECT_EQ(c.stats().interrupts, 0u);
    KEXPECT_EQ(c.stats().commands, 5u);
  }
  EXPECT_SNAPSHOT_EQ(Snapshot::take(), s0);
}

KTEST(nvme_rejects_bad_requests_before_the_controller_sees_them) {
  const Snapshot s0 = Snapshot::take();
  {
    NvmeController c;
    KREQUIRE_OK(bind(&c, 0, ~0ull, NvmeController::Completion::kInterrupt, 0));
    Pages buf(8);
    KREQUIRE_TRUE(buf.ok());
    uint8_t* p = buf.va();
    const uint64_t commands = c.stats().commands;
    const Snapshot s1 = Snapshot::take();
    SgEntry odd{p + 2, 512};
    KEXPECT_ERR(c.read(0, support::Span<const SgEntry>(&odd, 1)), ErrorCode::kLayoutError);
    SgEntry partial{p, 100};
    KEXPECT_ERR(c.read(0, support::Span<const SgEntry>(&partial, 1)), ErrorCode::kLayoutError);
    KEXPECT_ERR(c.read(0, support::Span<const SgEntry>()), ErrorCode::kLayoutError);
    SgEntry two{p, 1024};
    KEXPECT_ERR(c.read(nvme_pattern::kBlocks - 1, support::Span<const SgEntry>(&two, 1)),
                ErrorCode::kOutOfRange);
    KEXPECT_ERR(c.write(nvme_pattern::kBlocks, support::Span<const SgEntry>(&two, 1)),
                ErrorCode::kOutOfRange);
    SgEntry big{p, c.max_transfer_bytes() + 512};
    KEXPECT_ERR(c.read(0, support::Span<const SgEntry>(&big, 1)), ErrorCode::kOutOfRange);
    SgEntry many[NvmeController::kMaxBuffers + 1];
    for (size_t i = 0; i < NvmeController::kMaxBuffers + 1; ++i) many[i] = {p + i * kPage, kPage};
    KEXPECT_ERR(c.read(0, many), ErrorCode::kOutOfRange);
    // PRP entries cannot say "the second buffer starts mid-page": mapped, refused, unmapped.
    SgEntry gap[] = {{p + 0x200, 0x200}, {p + 0x800, 0x200}};
    KEXPECT_ERR(c.read(0, gap), ErrorCode::kLayoutError);
    SgEntry short_first[] = {{p, 0x200}, {p + kPage, 0x200}};
    KEXPECT_ERR(c.write(0, short_first), ErrorCode::kLayoutError);
    // A bounced buffer larger than the bounce pool's max_mapping_size: the mapping refuses it.
    c.dma().set_force_bounce(true);
    if (c.dma().max_mapping_size() < c.max_transfer_bytes()) {
      SgEntry huge{p, c.max_transfer_bytes()};
      KEXPECT_ERR(c.write(0, support::Span<const SgEntry>(&huge, 1)), ErrorCode::kLayoutError);
    }
    c.dma().set_force_bounce(false);
    KEXPECT_EQ(c.stats().commands, commands);  // None reached the controller.
    EXPECT_SNAPSHOT_EQ(Snapshot::take(), s1);
    // And the controller still works.
    SgEntry ok{p, 512};
    KEXPECT_OK(c.read(0, support::Span<const SgEntry>(&ok, 1)));
    KEXPECT_EQ(check(p, 512, 0, 0, false), 512u);
  }
  EXPECT_SNAPSHOT_EQ(Snapshot::take(), s0);
}

KTEST(nvme_direct_controller_writes_many_sizes_and_offsets) {
  const Snapshot s0 = Snapshot::take();
  {
    NvmeController c;
    KREQUIRE_OK(bind(&c, 0, ~0ull, NvmeController::Completion::kInterrupt, 0));
    Pages buf(8);
    KREQUIRE_TRUE(buf.ok());
    exercise_writes(ktest_ctx, c, 0, buf.va());
    KEXPECT_GT(c.stats().direct_buffers, 0u);
    KEXPECT_GT(c.stats().prp_lists, 0u);
    KEXPECT_EQ(c.stats().unknown, 0u);
    kprintf("  nvme0: %llu buffers direct, %llu bounced, %llu PRP lists, %llu interrupts\n",
            static_cast<unsigned long long>(c.stats().direct_buffers),
            static_cast<unsigned long long>(c.stats().bounced_buffers),
            static_cast<unsigned long long>(c.stats().prp_lists),
            static_cast<unsigned long long>(c.stats().interrupts));
  }
  EXPECT_SNAPSHOT_EQ(Snapshot::take(), s0);
  if (!ktest_ctx.failed()) {
    kprintf(
        "nvme0: guest pattern in blocks %llu..%llu\n",
        static_cast<unsigned long long>(nvme_pattern::kGuestFirst),
        static_cast<unsigned long long>(nvme_pattern::kGuestFirst + nvme_pattern::kGuestCount - 1));
  }
}

KTEST(nvme_small_mask_controller_bounces_keeping_page_offsets) {
  const Snapshot s0 = Snapshot::take();
  {
    NvmeController c;
    // Completions on another CPU than the one that waits, where one is online.
    KREQUIRE_OK(bind(&c, 1, kMask32, NvmeController::Completion::kInterrupt, last_online_cpu()));
    HighPages high(8, kMask32);
    Pages low(8);
    uint8_t* buf;
    bool forced = false;
    if (high.ok() && !iommu::active()) {
      buf = high.va();
    } else if (high.ok()) {
      // Behind the IOMMU the 32-bit controller reaches high RAM through I/O addresses under its
      // mask (iommu_ tests): force the bounce path this test is about.
      buf = high.va();
      c.dma().set_force_bounce(true);
      forced = true;
    } else {
      kprintf("  note: no free RAM above 4 GiB (boot with QEMU_MEM=6G); forcing the bounce\n");
      KREQUIRE_TRUE(low.ok());
      buf = low.va();
      c.dma().set_force_bounce(true);
      forced = true;
    }
    // The library keeps the page offset in the bounce slot (min_align_mask = 0xFFF).
    {
      auto m = c.dma().map(buf + 0x234, 600, DmaDirection::kToDevice);
      KREQUIRE_OK(m);
      KEXPECT_TRUE(m->bounced());
      KEXPECT_EQ(m->dma_addr().value() & 0xFFF, 0x234u);
      KEXPECT_LE(m->dma_addr().value() + 600 - 1, kMask32);
      auto m2 = c.dma().map(buf + 3 * kPage + 0xFFC, 2 * kPage, DmaDirection::kFromDevice);
      KREQUIRE_OK(m2);
      KEXPECT_TRUE(m2->bounced());
      KEXPECT_EQ(m2->dma_addr().value() & 0xFFF, 0xFFCu);
    }
    exercise_writes(ktest_ctx, c, 1, buf);
    KEXPECT_GT(c.stats().bounced_buffers, 0u);
    KEXPECT_EQ(c.stats().direct_buffers, 0u);
    KEXPECT_GT(c.stats().irq_completed, 0u);
    KEXPECT_EQ(c.stats().unknown, 0u);
    kprintf("  nvme1: %llu buffers bounced%s, %llu direct, %llu PRP lists, completions on CPU %u\n",
            static_cast<unsigned long long>(c.stats().bounced_buffers),
            forced ? " (forced)" : " (above 4 GiB)",
            static_cast<unsigned long long>(c.stats().direct_buffers),
            static_cast<unsigned long long>(c.stats().prp_lists), last_online_cpu());
  }
  EXPECT_SNAPSHOT_EQ(Snapshot::take(), s0);
  if (!ktest_ctx.failed()) {
    kprintf(
        "nvme1: guest pattern in blocks %llu..%llu\n",
        static_cast<unsigned long long>(nvme_pattern::kGuestFirst),
        static_cast<unsigned long long>(nvme_pattern::kGuestFirst + nvme_pattern::kGuestCount - 1));
  }
}

KTEST(nvme_lost_completion_times_out_and_unbinds_without_leaks) {
  const Snapshot s0 = Snapshot::take();
  {
    NvmeController c;
    KREQUIRE_OK(bind(&c, 1, kMask32, NvmeController::Completion::kInterrupt, 0));
    Pages buf(1);
    KREQUIRE_TRUE(buf.ok());
    // Bounced, so that the timeout path also gives a bounce slot back.
    c.dma().set_force_bounce(true);
    c.set_timeout_ns(200'000'000);
    KREQUIRE_OK(c.mask_io_vector(true));
    SgEntry e{buf.va() + 0x100, 4 * nvme_pattern::kBlock};
    const uint64_t start = arch::now_ns();
    KEXPECT_ERR(c.read(0, support::Span<const SgEntry>(&e, 1)), ErrorCode::kTimedOut);
    KEXPECT_GE(arch::now_ns() - start, 200'000'000u);
    KEXPECT_FALSE(c.bound());  // Disabled and unbound: nothing of it is left to use.
    KEXPECT_ERR(c.read(0, support::Span<const SgEntry>(&e, 1)), ErrorCode::kInvalidArgument);
    KEXPECT_ERR(c.mask_io_vector(false), ErrorCode::kInvalidArgument);
  }
  EXPECT_SNAPSHOT_EQ(Snapshot::take(), s0);
  // The controller binds again afterwards and works.
  NvmeController c;
  KREQUIRE_OK(bind(&c, 1, ~0ull, NvmeController::Completion::kInterrupt, 0));
  Pages buf(0);
  KREQUIRE_TRUE(buf.ok());
  SgEntry e{buf.va(), kPage};
  KREQUIRE_OK(c.read(8, support::Span<const SgEntry>(&e, 1)));
  KEXPECT_EQ(check(buf.va(), kPage, 1, 8 * nvme_pattern::kBlock, false), kPage);
}

namespace {

// One CPU's share of the concurrent test: reads of the host pattern (blocks below kGuestFirst,
// which no test writes) at varying sizes and page offsets, each checked byte for byte.
struct Reader {
  NvmeController* c = nullptr;
  unsigned ctrl = 0;
  uint8_t* buf = nullptr;  // 8 pages.
  unsigned rounds = 0;
  unsigned failures = 0;
  size_t bounced = 0;
};

void read_rounds(void* arg) {
  auto* w = static_cast<Reader*>(arg);
  for (unsigned i = 0; i < w->rounds; ++i) {
    const size_t off = (i * 0x1C4u) & 0xFFCu;
    const size_t bytes = ((i % 7) + 1) * kPage - (i % 3) * nvme_pattern::kBlock;
    const uint64_t lba = (i * 37u) % (nvme_pattern::kGuestFirst - 64);
    SgEntry e{w->buf + off, bytes};
    auto r = w->c->read(lba, support::Span<const SgEntry>(&e, 1));
    if (!r.ok() ||
        check(w->buf + off, bytes, w->ctrl, lba * nvme_pattern::kBlock, false) != bytes) {
      ++w->failures;
      continue;
    }
    w->bounced += r->bounced;
  }
}

unsigned online_cpu(unsigned k) {
  unsigned seen = 0;
  unsigned last = 0;
  for (unsigned i = 0; i < num_cpus(); ++i) {
    if (!cpu_online(i)) continue;
    if (seen++ == k) return i;
    last = i;
  }
  return last;  // Fewer CPUs: the last one again.
}

}  // namespace

KTEST(nvme_two_controllers_on_two_cpus_at_once) {
  const Snapshot s0 = Snapshot::take();
  {
    // Controller 0 driven from the second CPU with completions on the third; controller 1
    // (32-bit mask, buffers above 4 GiB: bounced) from this CPU with completions on the fourth.
    // Both share the bounce pools and the DmaOp the whole time.
    const unsigned cpu0 = online_cpu(1);
    NvmeController c0;
    NvmeController c1;
    KREQUIRE_OK(bind(&c0, 0, ~0ull, NvmeController::Completion::kInterrupt, online_cpu(2)));
    KREQUIRE_OK(bind(&c1, 1, kMask32, NvmeController::Completion::kInterrupt, online_cpu(3)));
    Pages b0(3);
    HighPages high(3, kMask32);
    Pages low(3);
    KREQUIRE_TRUE(b0.ok());
    uint8_t* b1 = high.ok() ? high.va() : low.va();
    KREQUIRE_TRUE(b1 != nullptr && (high.ok() || low.ok()));
    if (!high.ok() || iommu::active()) c1.dma().set_force_bounce(true);
    Reader r0{&c0, 0, b0.va(), 40, 0, 0};
    Reader r1{&c1, 1, b1, 40, 0, 0};
    auto ticket = post_cpu_work(cpu0, &read_rounds, &r0);
    if (!ticket.ok()) read_rounds(&r0);  // A single CPU: one after the other.
    read_rounds(&r1);
    if (ticket.ok()) wait_cpu_work(cpu0, *ticket);
    KEXPECT_EQ(r0.failures, 0u);
    KEXPECT_EQ(r1.failures, 0u);
    KEXPECT_EQ(r1.bounced, 40u);
    KEXPECT_EQ(c0.stats().unknown + c1.stats().unknown, 0u);
    kprintf("  nvme0 from CPU %u (irq on %u), nvme1 from CPU 0 (irq on %u): %zu bounced\n", cpu0,
            online_cpu(2), online_cpu(3), r0.bounced + r1.bounced);
  }
  EXPECT_SNAPSHOT_EQ(Snapshot::take(), s0);
}
KTEST(nvme_bounced_read_of_max_mapping_size_keeps_any_page_offset) {
  const Snapshot s0 = Snapshot::take();
  {
    NvmeController c;
    KREQUIRE_OK(bind(&c, 1, ~0ull, NvmeController::Completion::kInterrupt, 0));
    c.dma().set_force_bounce(true);
    const size_t mm = c.dma().max_mapping_size();
    const size_t bytes = support::min(mm, c.max_transfer_bytes()) & ~(nvme_pattern::kBlock - 1);
    KREQUIRE_TRUE(bytes >= nvme_pattern::kBlock);
    Pages buf(8);
    KREQUIRE_TRUE(buf.ok() && bytes + kPage <= buf.bytes());
    const size_t offs[] = {0, 0x800, 0xFFC};
    for (size_t off : offs) {
      // The slot keeps the offset even for the largest mapping (the pool must find room for
      // the offset in front of it).
      {
        auto m = c.dma().map(buf.va() + off, bytes, DmaDirection::kFromDevice);
        KREQUIRE_OK(m);
        KEXPECT_TRUE(m->bounced());
        KEXPECT_EQ(m->dma_addr().value() & 0xFFF, off);
      }
      support::fill_bytes(buf.va(), kGuard, buf.bytes());
      SgEntry e{buf.va() + off, bytes};
      auto r = c.read(7, support::Span<const SgEntry>(&e, 1));
      KREQUIRE_OK(r);
      KEXPECT_EQ(r->bounced, 1u);
      KEXPECT_EQ(r->prp_entries, pages_spanned(off, bytes));
      KEXPECT_EQ(check(buf.va() + off, bytes, 1, 7 * nvme_pattern::kBlock, false), bytes);
      KEXPECT_TRUE(guards_intact(buf.va() + off, bytes, 64, buf.va(), buf.va() + buf.bytes()));
    }
  }
  EXPECT_SNAPSHOT_EQ(Snapshot::take(), s0);
}
