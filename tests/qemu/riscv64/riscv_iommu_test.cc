// In-VM tests of the RISC-V IOMMU driver (dmakit/arch/riscv_iommu.h) on QEMU's riscv-iommu-pci,
// below the generic IOMMU layer: an edu device is attached to a first-stage table these tests
// write themselves with the driver's entry formats, and its DMA engine is aimed at I/O addresses
// that are mapped, mapped read-only, never mapped, and unmapped after use (with the driver's
// invalidation in between). Whatever the device was attached to before is put back afterwards.
// With iommu=on missing from the command line (a run without QEMU_IOMMU=1) they check that no
// IOMMU function is on the bus, which is what the runner promises.
#include "dmakit/arch/riscv_iommu.h"
#include "dmakit/device_dma.h"
#include "dmakit/iommu.h"
#include "drivers/edu/edu_device.h"
#include "testkernel/devices.h"
#include "testkernel/iommu_arch.h"
#include "testkernel/kernel_env.h"
#include "testkernel/kstring.h"
#include "tests/qemu/ktest.h"
#include "tests/qemu/test_util.h"

namespace {

using ktest_util::Pages;

constexpr uint64_t kPage = 4096;
constexpr uint64_t kEduBuffer = 0x40000;  // the edu device's own buffer, device side
constexpr uint32_t kEduSrc = 0x80;
constexpr uint32_t kEduDst = 0x88;
constexpr uint32_t kEduCount = 0x90;
constexpr uint32_t kEduCmd = 0x98;
constexpr uint64_t kEduStart = 1;
constexpr uint64_t kEduToRam = 2;

// I/O addresses of the test table: inside every edu device's 28-bit mask, far from the RAM's
// physical addresses (0x80000000 up on QEMU virt), so a translation that did not happen shows.
constexpr uint64_t kIovaSrc = 0x0010'0000;
constexpr uint64_t kIovaDst = 0x0010'1000;
constexpr uint64_t kIovaReadOnly = 0x0010'2000;
constexpr uint64_t kIovaUnmapped = 0x0010'3000;

bool iommu_on() {
  char v[8];
  return kstr::cmdline_value(kernel_env().boot->cmdline, "iommu", v, sizeof(v)) &&
         kstr::equal(v, "on");
}

PciDevice* iommu_function() {
  auto devs = devices_init(kernel_env());
  if (!devs.ok()) return nullptr;
  PciHostBridge& pci = (*devs)->pci();
  for (size_t i = 0; i < pci.num_devices(); ++i) {
    if ((pci.device(i).class_code() & 0xFFFFFF) == 0x080600) return &pci.device(i);
  }
  return nullptr;
}

RiscvIommu* unit() {
  // On this arch the unit arch::iommu_init returns is always a RiscvIommu.
  return static_cast<RiscvIommu*>(arch::iommu_init(*kernel_env().boot));
}

uint16_t bdf(const PciDevice& d) {
  PciAddress a = d.address();
  return static_cast<uint16_t>(a.bus << 8 | a.dev << 3 | a.fn);
}

struct FaultLog {
  static constexpr size_t kMax = 32;
  IommuFault faults[kMax];
  size_t n = 0;
  static void sink(void* ctx, const IommuFault& f) {
    auto* log = static_cast<FaultLog*>(ctx);
    if (log->n < kMax) log->faults[log->n] = f;
    ++log->n;
  }
  // Whether every record kept is device `id`'s, in [iova, iova + size), of that direction and
  // reason, and the first one is at `iova`.
  bool all(uint32_t id, uint64_t iova, uint64_t size, bool write, const char* reason) const {
    if (n == 0 || faults[0].iova != iova) return false;
    for (size_t i = 0; i < n && i < kMax; ++i) {
      const IommuFault& f = faults[i];
      if (f.device_id != id || f.iova < iova || f.iova - iova >= size || f.write != write ||
          !kstr::equal(f.reason, reason)) {
        return false;
      }
    }
    return true;
  }
};

// A Sv39/Sv48 table for the test, in pages from the kernel's allocator: the root, and one table
// per level below it for the 2 MiB region of the test addresses.
class TestTable {
 public:
  explicit TestTable(const IoPageTableFormat& fmt) : fmt_(fmt) {
    for (unsigned i = 0; i < fmt.levels; ++i) {
      if (!tables_[i].ok()) return;
      support::fill_bytes(tables_[i].va(), 0, kPage);
    }
    for (unsigned i = 0; i + 1 < fmt.levels; ++i) {
      entries(i)[index(i, kIovaSrc)] = fmt.table_entry(tables_[i + 1].phys().value());
    }
    ok_ = true;
  }
  bool ok() const { return ok_; }
  PhysAddr root() const { return tables_[0].phys(); }
  void set(uint64_t iova, uint64_t pte) {
    entries(fmt_.levels - 1)[index(fmt_.levels - 1, iova)] = pte;
  }

 private:
  volatile uint64_t* entries(unsigned i) const {
    return reinterpret_cast<volatile uint64_t*>(tables_[i].va());
  }
  unsigned index(unsigned i, uint64_t iova) const {
    return static_cast<unsigned>((iova >> (12 + 9 * (fmt_.levels - 1 - i))) & 511u);
  }

  const IoPageTableFormat& fmt_;
  Pages tables_[4] = {Pages(0), Pages(0), Pages(0), Pages(0)};
  bool ok_ = false;
};

// Runs one edu transfer of `n` bytes between the I/O address `iova` and the device's buffer and
// waits for the engine to finish (a blocked access still completes on the edu side).
bool edu_dma(const MmioRegion& regs, uint64_t iova, size_t n, bool to_ram) {
  regs.write64(kEduSrc, to_ram ? kEduBuffer : iova);
  regs.write64(kEduDst, to_ram ? iova : kEduBuffer);
  regs.write64(kEduCount, n);
  regs.write64(kEduCmd, kEduStart | (to_ram ? kEduToRam : 0));
  uint64_t deadline = arch::now_ns() + 1'000'000'000ull;
  while ((regs.read64(kEduCmd) & kEduStart) != 0) {
    if (arch::now_ns() > deadline) return false;
  }
  return true;
}

}  // namespace

KTEST(riscv64_iommu_discovery_follows_the_command_line) {
  PciDevice* fn = iommu_function();
  if (!iommu_on()) {
    // The runner adds the IOMMU only together with iommu=on.
    KEXPECT_TRUE(fn == nullptr);
    return;
  }
  KREQUIRE_TRUE(fn != nullptr);
  RiscvIommu* u = unit();
  KREQUIRE_TRUE(u != nullptr);
  KEXPECT_TRUE(u->initialized());
  KEXPECT_TRUE(kstr::equal(u->name(), "riscv-iommu"));
  // Its own function is never a translated device; the others on the bus are.
  KEXPECT_FALSE(u->covers(bdf(*fn)));
  auto devs = devices_init(kernel_env());
  KREQUIRE_OK(devs);
  KREQUIRE_TRUE((*devs)->num_edu() > 0);
  KEXPECT_TRUE(u->covers(bdf(*(*devs)->edu(0).dev)));
  KEXPECT_FALSE(u->covers(0x10000));
  KEXPECT_EQ(u->format().levels == 3 ? 38u : 47u, unsigned{u->iova_bits()});
  KEXPECT_EQ(u->max_domains(), (1u << 20) - 1);
  // Queues (1 + 16 pages), the fence word and at least the DDT root and one page per level.
  KEXPECT_GE(u->stats().pages, uint64_t{18 + u->ddt_levels()});
  // The IMSIC S-file of every hart is an MSI page the generic layer maps in every domain.
  PhysAddr pages[8];
  KEXPECT_GE(arch::iommu_msi_pages(pages, 8), size_t{1});
  // A second driver on the same registers finds the unit translating through tables it does
  // not own and refuses without writing a register (the live unit is used again below).
  auto regs = fn->map_bar(0);
  KREQUIRE_OK(regs);
  RiscvIommu second;
  RiscvIommuConfig cfg;
  cfg.regs = regs->base();
  cfg.pfa = kernel_env().pfa;
  KEXPECT_ERR(second.init(cfg), ErrorCode::kBusy);
  KEXPECT_FALSE(second.initialized());
  KEXPECT_FALSE(second.covers(bdf(*(*devs)->edu(0).dev)));
  cfg.regs = nullptr;
  KEXPECT_ERR(second.init(cfg), ErrorCode::kInvalidArgument);
  // Bad arguments change nothing.
  KEXPECT_ERR(u->attach(bdf(*fn), 1, PhysAddr(0x80000000)), ErrorCode::kInvalidArgument);
  KEXPECT_ERR(u->attach(bdf(*(*devs)->edu(0).dev), 0, PhysAddr(0x80000000)),
              ErrorCode::kInvalidArgument);
  KEXPECT_ERR(u->attach(bdf(*(*devs)->edu(0).dev), 1, PhysAddr(0x80000001)),
              ErrorCode::kInvalidArgument);
}

KTEST(riscv64_iommu_page_entries_encode_the_permissions) {
  // Sv39 leaf bits: V R W X U G A D at 0..7, the PPN from bit 10.
  uint64_t ro = RiscvIommu::page_entry(0x8012'3000, kIommuRead);
  KEXPECT_EQ(ro & 0xFF, uint64_t{0x53});  // V R U A
  uint64_t rw = RiscvIommu::page_entry(0x8012'3000, kIommuRead | kIommuWrite);
  KEXPECT_EQ(rw & 0xFF, uint64_t{0xD7});  // V R W U A D
  // Write-only is a reserved encoding: it comes out as read-write.
  KEXPECT_EQ(RiscvIommu::page_entry(0x8012'3000, kIommuWrite), rw);
  KEXPECT_EQ(ro >> 10, uint64_t{0x80123});
  KEXPECT_EQ(RiscvIommu::entry_addr(rw), uint64_t{0x8012'3000});
  uint64_t t = RiscvIommu::table_entry(0x1'2345'6000);
  KEXPECT_EQ(t & 0xFF, uint64_t{0x01});  // a pointer: V alone
  KEXPECT_EQ(RiscvIommu::entry_addr(t), uint64_t{0x1'2345'6000});
  KEXPECT_TRUE(RiscvIommu::entry_valid(t));
  KEXPECT_FALSE(RiscvIommu::entry_valid(0));
}

KTEST(riscv64_iommu_edu_dma_translated_blocked_and_reported) {
  if (!iommu_on()) {
    KEXPECT_TRUE(iommu_function() == nullptr);
    return;
  }
  RiscvIommu* u = unit();
  KREQUIRE_TRUE(u != nullptr);
  auto devs = devices_init(kernel_env());
  KREQUIRE_OK(devs);
  KREQUIRE_TRUE((*devs)->num_edu() > 0);
  PciDevice* edu = (*devs)->edu((*devs)->num_edu() - 1).dev;
  const uint32_t id = arch::iommu_device_id(bdf(*edu));
  KREQUIRE_OK(edu->enable(true));
  auto bar = edu->map_bar(0);
  KREQUIRE_OK(bar);
  const uint32_t domain = u->max_domains();  // far from the ids the generic layer hands out

  auto before = u->attachment(id);
  FaultLog stale;
  u->drain_faults(&FaultLog::sink, &stale);

  Pages src(0);
  Pages dst(0);
  Pages ro(0);
  KREQUIRE_TRUE(src.ok() && dst.ok() && ro.ok());
  TestTable table(u->format());
  KREQUIRE_TRUE(table.ok());
  const IoPageTableFormat& fmt = u->format();
  table.set(kIovaSrc, fmt.page_entry(src.phys().value(), kIommuRead));
  table.set(kIovaDst, fmt.page_entry(dst.phys().value(), kIommuRead | kIommuWrite));
  table.set(kIovaReadOnly, fmt.page_entry(ro.phys().value(), kIommuRead));
  ktest_util::fill_pattern(src.va(), kPage, 71);
  support::fill_bytes(dst.va(), 0x5A, kPage);
  support::fill_bytes(ro.va(), 0x3C, kPage);
  kernel_env().dma->flush(src.va(), kPage);
  kernel_env().dma->flush(dst.va(), kPage);
  kernel_env().dma->flush(ro.va(), kPage);

  KREQUIRE_OK(u->attach(id, domain, table.root()));
  auto now = u->attachment(id);
  KREQUIRE_OK(now);
  KEXPECT_EQ(now->domain, domain);
  KEXPECT_EQ(now->root.value(), table.root().value());

  // Mapped: RAM -> device from one page, device -> RAM into another, both through the table.
  KEXPECT_TRUE(edu_dma(*bar, kIovaSrc, kPage, false));
  KEXPECT_TRUE(edu_dma(*bar, kIovaDst, kPage, true));
  kernel_env().dma->invalidate(dst.va(), kPage);
  KEXPECT_EQ(ktest_util::check_pattern(dst.va(), kPage, 71), size_t{kPage});
  FaultLog none;
  KEXPECT_EQ(u->drain_faults(&FaultLog::sink, &none), size_t{0});

  // A write into a read-only page: blocked, reported as a permission fault at that address.
  // (QEMU's edu moves a blocked transfer in small pieces, each reported: one record per piece.)
  KEXPECT_TRUE(edu_dma(*bar, kIovaReadOnly, 64, true));
  FaultLog perm;
  KEXPECT_GE(u->drain_faults(&FaultLog::sink, &perm), size_t{1});
  KEXPECT_TRUE(perm.all(id, kIovaReadOnly, 64, true, "permission"));
  kernel_env().dma->invalidate(ro.va(), kPage);
  KEXPECT_EQ(ro.va()[0], uint8_t{0x3C});
  KEXPECT_EQ(ro.va()[63], uint8_t{0x3C});

  // Read first (the unit caches the read-only translation), then write: still blocked. QEMU 10's
  // model does not record this one: on an IOTLB hit it hands the cached read-only permission to
  // the memory core, which drops the write without a fault record (with
  // `-global riscv-iommu-pci.ioatc-limit=0`, no IOTLB, it is recorded as above). Only the
  // memory is checked here.
  KEXPECT_TRUE(edu_dma(*bar, kIovaReadOnly, 64, false));
  KEXPECT_TRUE(edu_dma(*bar, kIovaReadOnly, 64, true));
  FaultLog cached;
  u->drain_faults(&FaultLog::sink, &cached);
  kernel_env().dma->invalidate(ro.va(), kPage);
  KEXPECT_EQ(ro.va()[0], uint8_t{0x3C});
  KEXPECT_EQ(ro.va()[63], uint8_t{0x3C});

  // Never mapped: a read and a write, each reported as not mapped.
  KEXPECT_TRUE(edu_dma(*bar, kIovaUnmapped, 64, false));
  FaultLog unmapped_read;
  KEXPECT_GE(u->drain_faults(&FaultLog::sink, &unmapped_read), size_t{1});
  KEXPECT_TRUE(unmapped_read.all(id, kIovaUnmapped, 64, false, "not mapped"));
  KEXPECT_TRUE(edu_dma(*bar, kIovaUnmapped + 128, 64, true));
  FaultLog unmapped_write;
  KEXPECT_GE(u->drain_faults(&FaultLog::sink, &unmapped_write), size_t{1});
  KEXPECT_TRUE(unmapped_write.all(id, kIovaUnmapped + 128, 64, true, "not mapped"));

  // Unmapped after use: the unit had the translation cached, so only the invalidation stops it.
  support::fill_bytes(dst.va(), 0x5A, kPage);
  kernel_env().dma->flush(dst.va(), kPage);
  table.set(kIovaDst, 0);
  u->invalidate(domain, kIovaDst, kPage);
  KEXPECT_TRUE(edu_dma(*bar, kIovaDst, 64, true));
  FaultLog after;
  KEXPECT_GE(u->drain_faults(&FaultLog::sink, &after), size_t{1});
  KEXPECT_TRUE(after.all(id, kIovaDst, 64, true, "not mapped"));
  kernel_env().dma->invalidate(dst.va(), kPage);
  KEXPECT_EQ(dst.va()[0], uint8_t{0x5A});
  KEXPECT_EQ(dst.va()[63], uint8_t{0x5A});

  // A whole blocked page: reported piece by piece, every record kept. Then more than the queue
  // holds: the rest is lost and counted, and recording resumes after the drain.
  KEXPECT_TRUE(edu_dma(*bar, kIovaUnmapped, kPage, true));
  FaultLog page;
  size_t records = u->drain_faults(&FaultLog::sink, &page);
  KEXPECT_GE(records, size_t{1});
  KEXPECT_TRUE(page.all(id, kIovaUnmapped, kPage, true, "not mapped"));
  uint64_t overflows = u->stats().fault_overflows;
  for (uint64_t i = 0; i * records < RiscvIommu::kFqEntries + records; ++i) {
    KEXPECT_TRUE(edu_dma(*bar, kIovaUnmapped, kPage, true));
  }
  FaultLog flooded;
  KEXPECT_EQ(u->drain_faults(&FaultLog::sink, &flooded), size_t{RiscvIommu::kFqEntries - 1});
  KEXPECT_EQ(u->stats().fault_overflows, overflows + 1);
  KEXPECT_TRUE(edu_dma(*bar, kIovaUnmapped + 256, 64, false));
  FaultLog resumed;
  KEXPECT_GE(u->drain_faults(&FaultLog::sink, &resumed), size_t{1});
  KEXPECT_TRUE(resumed.all(id, kIovaUnmapped + 256, 64, false, "not mapped"));

  // Detached: no context at all.
  u->detach(id);
  KEXPECT_ERR(u->attachment(id), ErrorCode::kNotFound);
  KEXPECT_TRUE(edu_dma(*bar, kIovaSrc, 64, false));
  FaultLog detached;
  KEXPECT_GE(u->drain_faults(&FaultLog::sink, &detached), size_t{1});
  KEXPECT_EQ(detached.faults[0].device_id, id);
  KEXPECT_TRUE(kstr::equal(detached.faults[0].reason, "no context (DDT entry not valid)"));

  if (before.ok()) KEXPECT_OK(u->attach(id, before->domain, before->root));
  KEXPECT_EQ(u->stats().fence_failures, uint64_t{0});
}

// The generic layer on this driver: an IommuDomain (IoPageTable + IOVA allocator) as the edu
// device's DmaOp. The device's 28-bit mask reaches a buffer above 4 GiB without bouncing, at an
// I/O address the domain chose, and after the transfer unmapped the address faults.
constinit IommuDomain g_test_domain;

KTEST(riscv64_iommu_domain_gives_edu_iovas_below_its_mask) {
  if (!iommu_on()) {
    KEXPECT_TRUE(iommu_function() == nullptr);
    return;
  }
  RiscvIommu* u = unit();
  KREQUIRE_TRUE(u != nullptr);
  auto devs = devices_init(kernel_env());
  KREQUIRE_OK(devs);
  const Devices::Edu* e = (*devs)->edu_with_mask(Devices::kEduDefaultMask);
  KREQUIRE_TRUE(e != nullptr);
  const uint32_t id = arch::iommu_device_id(bdf(*e->dev));
  auto before = u->attachment(id);
  FaultLog stale;
  u->drain_faults(&FaultLog::sink, &stale);

  IommuDomain::Config cfg;
  cfg.unit = u;
  cfg.domain_id = u->max_domains() - 1;
  cfg.platform = kernel_env().dma;
  cfg.num_cpus = 1;
  KREQUIRE_OK(g_test_domain.init(cfg));
  KREQUIRE_OK(g_test_domain.attach(id));

  // Far above the 28-bit mask (RAM starts at 2 GiB on QEMU virt).
  Pages src(0);
  Pages back(0);
  KREQUIRE_TRUE(src.ok() && back.ok());
  KEXPECT_GT(src.phys().value(), e->dma_mask);
  ktest_util::fill_pattern(src.va(), kPage, 93);
  support::fill_bytes(back.va(), 0, kPage);
  {
    EduDevice edu;
    KREQUIRE_OK(edu.init(e->dev, DeviceDma(&g_test_domain, e->dma_mask)));
    auto t1 = edu.copy_to_device(src.va(), kPage);
    KEXPECT_OK(t1);
    auto t2 = edu.copy_from_device(back.va(), kPage);
    KEXPECT_OK(t2);
    if (t1.ok() && t2.ok()) {
      KEXPECT_FALSE(t1->bounced);
      KEXPECT_FALSE(t2->bounced);
      KEXPECT_LE(t1->dma_addr.value() + kPage - 1, e->dma_mask);
      KEXPECT_LE(t2->dma_addr.value() + kPage - 1, e->dma_mask);
    }
    KEXPECT_EQ(ktest_util::check_pattern(back.va(), kPage, 93), size_t{kPage});
    FaultLog none;
    KEXPECT_EQ(u->drain_faults(&FaultLog::sink, &none), size_t{0});

    // The receive mapping is gone: the device writing to its old I/O address is blocked.
    if (t2.ok()) {
      support::fill_bytes(back.va(), 0x77, kPage);
      kernel_env().dma->flush(back.va(), kPage);
      auto bar = e->dev->map_bar(0);
      KREQUIRE_OK(bar);
      KEXPECT_TRUE(edu_dma(*bar, t2->dma_addr.value(), 64, true));
      FaultLog after;
      KEXPECT_GE(u->drain_faults(&FaultLog::sink, &after), size_t{1});
      KEXPECT_TRUE(after.all(id, t2->dma_addr.value(), 64, true, "not mapped"));
      kernel_env().dma->invalidate(back.va(), kPage);
      KEXPECT_EQ(back.va()[0], uint8_t{0x77});
    }
    edu.shutdown();
  }
  g_test_domain.detach(id);
  KEXPECT_OK(g_test_domain.destroy());
  if (before.ok()) KEXPECT_OK(u->attach(id, before->domain, before->root));
}
