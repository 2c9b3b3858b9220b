// The SMMUv3 driver on its own (QEMU virt with iommu=smmuv3, QEMU_IOMMU=1): page tables built
// here with the driver's format functions, an edu DMA engine programmed with I/O virtual
// addresses, and the faults the event queue reports. Without the SMMU (the default machine) the
// discovery must find none. The generic layer's isolation tests (iommu_*) cover the DMA API path.
#include "dmakit/arch/smmuv3.h"
#include "arch/aarch64/testkernel/iommu.h"
#include "dmakit/device_dma.h"
#include "dmakit/iommu.h"
#include "drivers/edu/edu_device.h"
#include "drivers/pci/pci_device.h"
#include "testkernel/arch.h"
#include "testkernel/arch_io.h"
#include "testkernel/devices.h"
#include "testkernel/iommu_arch.h"
#include "testkernel/kernel_env.h"
#include "testkernel/kstring.h"
#include "testkernel/percpu.h"
#include "tests/qemu/ktest.h"
#include "tests/qemu/test_util.h"

namespace {

using ktest_util::kPage;

// edu registers (drivers/edu/edu_device.h).
constexpr uint32_t kEduDmaSrc = 0x80;
constexpr uint32_t kEduDmaDst = 0x88;
constexpr uint32_t kEduDmaCount = 0x90;
constexpr uint32_t kEduDmaCmd = 0x98;
constexpr uint64_t kEduCmdStart = 1;
constexpr uint64_t kEduCmdToRam = 2;
constexpr uint64_t kEduBuffer = 0x40000;

// IOVAs of the test domain (below every edu's DMA mask).
constexpr uint64_t kIovaSrc = 0x10000;    // read-only for the device
constexpr uint64_t kIovaDst = 0x11000;    // read-write
constexpr uint64_t kIovaHole = 0x20000;   // never mapped
constexpr uint64_t kIovaLater = 0x12000;  // mapped, then unmapped and invalidated

bool iommu_on() {
  return kstr::has_word(kernel_env().boot->cmdline, "iommu=on");
}

// The unit arch::iommu_init brought up (calling it if the IOMMU glue has not), or null.
Smmuv3* unit() {
  if (aarch64::smmu() == nullptr && iommu_on()) (void)arch::iommu_init(*kernel_env().boot);
  return aarch64::smmu();
}

// A 4-level page table of the driver's format, in pages from the kernel's allocator.
class TestTable {
 public:
  explicit TestTable(const Smmuv3& u) : unit_(u) { root_ = new_table(); }
  ~TestTable() {
    for (size_t i = 0; i < used_; ++i) (void)kernel_env().pfa->free(pages_[i], 0);
  }
  TestTable(const TestTable&) = delete;
  TestTable& operator=(const TestTable&) = delete;

  bool ok() const { return root_.value() != 0 && !exhausted_; }
  PhysAddr root() const { return root_; }

  // Maps the 4 KiB page at iova to pa (perm: kIommuRead / kIommuWrite), or unmaps it (perm 0).
  bool set(uint64_t iova, PhysAddr pa, unsigned perm) {
    PhysAddr table = root_;
    const IoPageTableFormat& f = unit_.format();
    for (int level = 0; level < 3; ++level) {
      uint64_t* t = va(table);
      const size_t i = index(iova, level);
      if (!f.entry_valid(t[i])) {
        PhysAddr next = new_table();
        if (next.value() == 0) return false;
        t[i] = f.table_entry(next.value());
        publish(&t[i]);
      }
      table = PhysAddr(f.entry_addr(t[i]));
    }
    uint64_t* leaf = va(table);
    leaf[index(iova, 3)] = perm == 0 ? 0 : f.page_entry(pa.value(), perm);
    publish(&leaf[index(iova, 3)]);
    return true;
  }

 private:
  static size_t index(uint64_t iova, int level) {
    return static_cast<size_t>((iova >> (39 - 9 * level)) & 511);
  }
  static uint64_t* va(PhysAddr p) { return static_cast<uint64_t*>(kernel_env().phys_to_virt(p)); }
  void publish(uint64_t* entry) const {
    if (!unit_.format().coherent_walk) kernel_env().dma->flush(entry, sizeof(*entry));
  }
  PhysAddr new_table() {
    if (used_ == kMaxPages) {
      exhausted_ = true;
      return PhysAddr();
    }
    auto p = kernel_env().pfa->alloc(0);
    if (!p.ok()) {
      exhausted_ = true;
      return PhysAddr();
    }
    pages_[used_++] = *p;
    uint64_t* t = va(*p);
    for (size_t i = 0; i < 512; ++i) t[i] = 0;
    if (!unit_.format().coherent_walk) kernel_env().dma->flush(t, kPage);
    return *p;
  }

  static constexpr size_t kMaxPages = 8;
  const Smmuv3& unit_;
  PhysAddr root_;
  PhysAddr pages_[kMaxPages];
  size_t used_ = 0;
  bool exhausted_ = false;
};

// Faults drained from the unit.
struct FaultLog {
  static constexpr size_t kMax = 8;
  IommuFault faults[kMax];
  size_t count = 0;
  static void sink(void* ctx, const IommuFault& f) {
    auto* log = static_cast<FaultLog*>(ctx);
    if (log->count < kMax) log->faults[log->count] = f;
    ++log->count;
  }
};

// Runs one edu transfer and waits for its end (the device completes even when the SMMU aborts
// its accesses). Returns false on a timeout.
bool edu_dma(const MmioRegion& regs, uint64_t src, uint64_t dst, bool to_ram) {
  regs.write64(kEduDmaSrc, src);
  regs.write64(kEduDmaDst, dst);
  regs.write64(kEduDmaCount, kPage);
  arch::io_wmb();
  regs.write64(kEduDmaCmd, kEduCmdStart | (to_ram ? kEduCmdToRam : 0));
  const uint64_t deadline = arch::now_ns() + 5'000'000'000ull;
  while ((regs.read64(kEduDmaCmd) & kEduCmdStart) != 0) {
    if (arch::now_ns() > deadline) return false;
  }
  arch::io_rmb();
  return true;
}

uint32_t bdf_of(const PciDevice& d) {
  const PciAddress a = d.address();
  return uint32_t{a.bus} << 8 | uint32_t{a.dev} << 3 | a.fn;
}

}  // namespace

// The device tree and the port agree: an SMMU exactly when the machine has one, and then a unit
// that is up, names itself, covers the PCI functions through the iommu-map, and nothing else.
KTEST(smmuv3_discovery) {
  auto desc = aarch64::smmu_describe(*kernel_env().boot);
  KREQUIRE_OK(desc);
  if (!iommu_on()) {
    KEXPECT_TRUE(!desc->present);
    KEXPECT_TRUE(aarch64::smmu() == nullptr);
    return;
  }
  KREQUIRE_TRUE(desc->present);
  KEXPECT_TRUE(desc->map_entries >= 1);
  Smmuv3* u = unit();
  KREQUIRE_TRUE(u != nullptr);
  KEXPECT_TRUE(u->enabled());
  KEXPECT_TRUE(kstr::equal(u->name(), "smmuv3"));
  KEXPECT_EQ(u->iova_bits(), 48u);
  KEXPECT_EQ(u->format().levels, 4u);
  KEXPECT_TRUE(u->max_domains() >= 255u);
  auto devs = devices_init(kernel_env());
  KREQUIRE_OK(devs);
  KREQUIRE_TRUE((*devs)->num_edu() >= 1);
  const uint32_t sid = arch::iommu_device_id(static_cast<uint16_t>(bdf_of(*(*devs)->edu(0).dev)));
  KEXPECT_TRUE(u->covers(sid));
  KEXPECT_TRUE(!u->covers(aarch64::kNoStreamId));
  // A device the unit does not cover, and domain ids out of range, are refused.
  KEXPECT_EQ(u->attach(aarch64::kNoStreamId, 1, PhysAddr(0x4000'0000)).code(),
             ErrorCode::kInvalidArgument);
  KEXPECT_EQ(u->attach(sid, 0, PhysAddr(0x4000'0000)).code(), ErrorCode::kInvalidArgument);
  KEXPECT_EQ(u->attach(sid, u->max_domains() + 1, PhysAddr(0x4000'0000)).code(),
             ErrorCode::kInvalidArgument);
  KEXPECT_EQ(u->attach(sid, 1, PhysAddr(0x4000'0800)).code(), ErrorCode::kInvalidArgument);
  // A configuration without registers, allocator or stream ranges is refused before any register
  // is touched, with a reason.
  Smmuv3 other;
  Smmuv3::Config bad;
  KEXPECT_ERR(other.init(bad), ErrorCode::kInvalidArgument);
  KEXPECT_TRUE(kstr::equal(other.failure_reason(), "invalid configuration"));
  KEXPECT_FALSE(other.enabled());
  KEXPECT_FALSE(other.covers(sid));
  KEXPECT_TRUE(u->enabled());
  PhysAddr msi[4];
  const size_t n = arch::iommu_msi_pages(msi, 4);
  KEXPECT_TRUE(n >= 1);  // the ITS's GITS_TRANSLATER page (gic-version=3)
  for (size_t i = 0; i < n && i < 4; ++i) KEXPECT_EQ(msi[i].value() & 0xFFF, 0u);
}

// The format functions: read-only pages have AP[2], every page is valid, accessed, non-global,
// never executable; a write-only request is granted read and write (stage 1 has no write-only).
KTEST(smmuv3_page_table_format) {
  const uint64_t pa = 0x1234'5000;
  const uint64_t ro = Smmuv3::page_entry(pa, kIommuRead);
  const uint64_t rw = Smmuv3::page_entry(pa, kIommuRead | kIommuWrite);
  const uint64_t wo = Smmuv3::page_entry(pa, kIommuWrite);
  KEXPECT_EQ(Smmuv3::entry_addr(ro), pa);
  KEXPECT_TRUE(Smmuv3::entry_valid(ro));
  KEXPECT_EQ(ro & 3, 3u);         // level-3 page descriptor
  KEXPECT_EQ((ro >> 6) & 3, 3u);  // AP[2:1] = read-only, unprivileged allowed
  KEXPECT_EQ((rw >> 6) & 3, 1u);  // AP[2:1] = read-write
  KEXPECT_EQ(wo, rw);
  KEXPECT_EQ(Smmuv3::entry_perm(ro), unsigned{kIommuRead});
  KEXPECT_EQ(Smmuv3::entry_perm(wo), unsigned{kIommuRead | kIommuWrite});
  KEXPECT_TRUE((ro & (1ull << 10)) != 0);  // AF
  KEXPECT_TRUE((ro & (1ull << 11)) != 0);  // nG: tagged with the ASID
  KEXPECT_EQ((ro >> 53) & 3, 3u);          // PXN, UXN
  KEXPECT_EQ(Smmuv3::table_entry(0x8000'0000) & 3, 3u);
  KEXPECT_EQ(Smmuv3::entry_addr(Smmuv3::table_entry(0x8000'0000)), 0x8000'0000u);
  KEXPECT_TRUE(!Smmuv3::entry_valid(0));
  KEXPECT_TRUE(kstr::equal(Smmuv3::event_reason(0x10), "not mapped"));
  KEXPECT_TRUE(kstr::equal(Smmuv3::event_reason(0x13), "permission"));
}

// edu DMA through a page table of this test's own: a read-only source and a read-write
// destination work; a write to a never-mapped IOVA, a write to the read-only page and a write to
// a page unmapped (and invalidated) after use are blocked, reported with the device, the IOVA and
// "write", and leave memory as it was; after detach nothing gets through.
KTEST(smmuv3_edu_dma_and_faults) {
  if (!iommu_on()) {
    KEXPECT_TRUE(unit() == nullptr);
    return;
  }
  Smmuv3* u = unit();
  KREQUIRE_TRUE(u != nullptr);
  auto devs = devices_init(kernel_env());
  KREQUIRE_OK(devs);
  KREQUIRE_TRUE((*devs)->num_edu() >= 1);
  PciDevice* dev = (*devs)->edu((*devs)->num_edu() - 1).dev;
  const uint32_t sid = arch::iommu_device_id(static_cast<uint16_t>(bdf_of(*dev)));
  KREQUIRE_TRUE(u->covers(sid));
  auto before = u->attachment(sid);  // the IOMMU glue's domain, if it attached one
  auto regs = dev->map_bar(0);
  KREQUIRE_OK(regs);

  ktest_util::Pages src(0), dst(0), later(0);
  KREQUIRE_TRUE(src.ok() && dst.ok() && later.ok());
  ktest_util::fill_pattern(src.va(), kPage, 11);
  ktest_util::fill_pattern(dst.va(), kPage, 22);
  ktest_util::fill_pattern(later.va(), kPage, 33);
  kernel_env().dma->flush(src.va(), kPage);
  kernel_env().dma->flush(dst.va(), kPage);
  kernel_env().dma->flush(later.va(), kPage);

  TestTable table(*u);
  KREQUIRE_TRUE(table.set(kIovaSrc, src.phys(), kIommuRead));
  KREQUIRE_TRUE(table.set(kIovaDst, dst.phys(), kIommuRead | kIommuWrite));
  KREQUIRE_TRUE(table.set(kIovaLater, later.phys(), kIommuRead | kIommuWrite));
  KREQUIRE_TRUE(table.ok());
  const uint32_t domain = u->max_domains();  // the id a domain allocator hands out last
  KREQUIRE_OK(u->attach(sid, domain, table.root()));
  auto now = u->attachment(sid);
  KREQUIRE_OK(now);
  KEXPECT_EQ(now->domain, domain);
  KEXPECT_EQ(now->root.value(), table.root().value());
  KREQUIRE_OK(dev->enable(true));
  FaultLog stale;
  (void)u->drain_faults(&FaultLog::sink, &stale);

  // Source (read-only) -> device -> destination (read-write): the data arrives, nothing faults.
  KREQUIRE_TRUE(edu_dma(*regs, kIovaSrc, kEduBuffer, false));
  KREQUIRE_TRUE(edu_dma(*regs, kEduBuffer, kIovaDst, true));
  kernel_env().dma->invalidate(dst.va(), kPage);
  KEXPECT_EQ(ktest_util::check_pattern(dst.va(), kPage, 11), kPage);
  FaultLog none;
  KEXPECT_EQ(u->drain_faults(&FaultLog::sink, &none), 0u);

  // A write to an IOVA never mapped.
  KREQUIRE_TRUE(edu_dma(*regs, kEduBuffer, kIovaHole, true));
  FaultLog hole;
  // One report for the whole burst (the SMMU records one event per bus transaction).
  KEXPECT_EQ(u->drain_faults(&FaultLog::sink, &hole), 1u);
  KREQUIRE_TRUE(hole.count >= 1);
  KEXPECT_EQ(hole.faults[0].device_id, sid);
  KEXPECT_EQ(hole.faults[0].iova, kIovaHole);
  KEXPECT_TRUE(hole.faults[0].write);
  KEXPECT_TRUE(kstr::equal(hole.faults[0].reason, "not mapped"));

  // A write to the read-only page: a permission fault, the source unchanged.
  KREQUIRE_TRUE(edu_dma(*regs, kEduBuffer, kIovaSrc, true));
  FaultLog perm;
  KEXPECT_EQ(u->drain_faults(&FaultLog::sink, &perm), 1u);
  KREQUIRE_TRUE(perm.count >= 1);
  KEXPECT_EQ(perm.faults[0].device_id, sid);
  KEXPECT_EQ(perm.faults[0].iova, kIovaSrc);
  KEXPECT_TRUE(perm.faults[0].write);
  KEXPECT_TRUE(kstr::equal(perm.faults[0].reason, "permission"));
  kernel_env().dma->invalidate(src.va(), kPage);
  KEXPECT_EQ(ktest_util::check_pattern(src.va(), kPage, 11), kPage);

  // A page used once (so the IOTLB holds it), then unmapped and invalidated: blocked.
  KREQUIRE_TRUE(edu_dma(*regs, kIovaLater, kEduBuffer, false));
  KREQUIRE_TRUE(edu_dma(*regs, kIovaSrc, kEduBuffer, false));  // device buffer = pattern 11
  KREQUIRE_TRUE(table.set(kIovaLater, PhysAddr(), 0));
  u->invalidate(domain, kIovaLater, kPage);
  KREQUIRE_TRUE(edu_dma(*regs, kEduBuffer, kIovaLater, true));
  FaultLog gone;
  KEXPECT_EQ(u->drain_faults(&FaultLog::sink, &gone), 1u);
  KREQUIRE_TRUE(gone.count >= 1);
  KEXPECT_EQ(gone.faults[0].iova, kIovaLater);
  KEXPECT_TRUE(kstr::equal(gone.faults[0].reason, "not mapped"));
  kernel_env().dma->invalidate(later.va(), kPage);
  KEXPECT_EQ(ktest_util::check_pattern(later.va(), kPage, 33), kPage);

  // Detached: the stream aborts (no event for an aborting STE), memory unchanged.
  u->detach(sid);
  KEXPECT_EQ(u->attachment(sid).code(), ErrorCode::kNotFound);
  ktest_util::fill_pattern(dst.va(), kPage, 44);
  kernel_env().dma->flush(dst.va(), kPage);
  KREQUIRE_TRUE(edu_dma(*regs, kEduBuffer, kIovaDst, true));
  kernel_env().dma->invalidate(dst.va(), kPage);
  KEXPECT_EQ(ktest_util::check_pattern(dst.va(), kPage, 44), kPage);
  FaultLog after;
  (void)u->drain_faults(&FaultLog::sink, &after);
  KEXPECT_EQ(after.count, 0u);

  dev->disable();
  if (before.ok()) KEXPECT_OK(u->attach(sid, before->domain, before->root));
  const Smmuv3::Stats st = u->stats();
  KEXPECT_EQ(st.cmd_errors, 0u);
  KEXPECT_TRUE(st.events >= 3);
}

// invalidate() with a range beyond the per-page limit, and of a whole domain, completes (the
// SMMU accepts the commands: no command error is counted).
KTEST(smmuv3_invalidate_ranges) {
  if (!iommu_on()) {
    KEXPECT_TRUE(unit() == nullptr);
    return;
  }
  Smmuv3* u = unit();
  KREQUIRE_TRUE(u != nullptr);
  const uint64_t errors = u->stats().cmd_errors;
  const uint64_t syncs = u->stats().syncs;
  u->invalidate(1, 0x100000, 3 * kPage + 1);  // 4 pages
  u->invalidate(1, 0, (Smmuv3::kMaxPageInvalidations + 1) * kPage);
  u->invalidate(1, 0, 0);
  KEXPECT_EQ(u->stats().cmd_errors, errors);
  KEXPECT_EQ(u->stats().syncs, syncs + 3);
}

// The driver under the generic layer (dmakit/iommu.h): a domain of its own over the 28-bit edu
// device, with the MSI doorbell pages (arch::iommu_msi_pages) mapped at their own addresses.
// A buffer high in RAM reaches the device through an IOVA under its mask without bouncing, in
// both directions, polled and with the completion MSI (which the SMMU translates too); after the
// mapping is gone, the device's write to that IOVA is blocked and reported.
KTEST(smmuv3_edu_through_iommu_domain) {
  if (!iommu_on()) {
    KEXPECT_TRUE(unit() == nullptr);
    return;
  }
  Smmuv3* u = unit();
  KREQUIRE_TRUE(u != nullptr);
  auto devs = devices_init(kernel_env());
  KREQUIRE_OK(devs);
  const Devices::Edu* e = (*devs)->edu_with_mask(Devices::kEduDefaultMask);
  KREQUIRE_TRUE(e != nullptr);
  const uint32_t sid = arch::iommu_device_id(static_cast<uint16_t>(bdf_of(*e->dev)));
  KREQUIRE_TRUE(u->covers(sid));
  auto before = u->attachment(sid);

  PhysAddr msi[4];
  const size_t n_msi = arch::iommu_msi_pages(msi, 4);
  KREQUIRE_TRUE(n_msi >= 1 && n_msi <= 4);
  IovaRange reserved[4];
  for (size_t i = 0; i < n_msi; ++i) reserved[i] = IovaRange{msi[i].value(), kPage};
  IommuDomain domain;
  IommuDomain::Config cfg;
  cfg.unit = u;
  cfg.domain_id = u->max_domains() - 1;
  cfg.platform = kernel_env().dma;
  cfg.reserved = reserved;
  cfg.num_reserved = n_msi;
  KREQUIRE_OK(domain.init(cfg));
  for (size_t i = 0; i < n_msi; ++i) {
    KEXPECT_OK(domain.map_fixed(msi[i].value(), msi[i], kPage, kIommuWrite));
  }
  KREQUIRE_OK(domain.attach(sid));

  // The highest free page of RAM: far above what a 28-bit device reaches directly.
  ktest_util::Pages far(0), back(0);
  KREQUIRE_TRUE(far.ok() && back.ok());
  KEXPECT_GT(far.phys().value(), e->dma_mask);
  {
    EduDevice edu;
    DeviceDma dma(&domain, e->dma_mask);
    dma.set_name("edu-smmuv3");
    KREQUIRE_OK(edu.init(e->dev, dma));
    for (int irq = 0; irq < 2; ++irq) {
      if (irq == 1) KEXPECT_OK(edu.enable_interrupts(0));
      ktest_util::fill_pattern(far.va(), kPage, 55 + static_cast<uint32_t>(irq));
      auto t1 = edu.copy_to_device(far.va(), kPage);
      KREQUIRE_OK(t1);
      KEXPECT_FALSE(t1->bounced);
      KEXPECT_LE(t1->dma_addr.value() + kPage - 1, e->dma_mask);
      support::fill_bytes(back.va(), 0, kPage);
      auto t2 = edu.copy_from_device(back.va(), kPage);
      KREQUIRE_OK(t2);
      KEXPECT_FALSE(t2->bounced);
      KEXPECT_EQ(ktest_util::check_pattern(back.va(), kPage, 55 + static_cast<uint32_t>(irq)),
                 kPage);
    }
    KEXPECT_GE(edu.stats().interrupts, 1u);
    edu.disable_interrupts();
    // The last transfer's IOVA is unmapped (and invalidated) now: a write there is refused.
    auto last = edu.copy_from_device(back.va(), kPage);
    KREQUIRE_OK(last);
    const uint64_t stale_iova = last->dma_addr.value();
    edu.shutdown();
    FaultLog stale;
    (void)u->drain_faults(&FaultLog::sink, &stale);
    auto regs = e->dev->map_bar(0);
    KREQUIRE_OK(regs);
    KREQUIRE_OK(e->dev->enable(true));
    ktest_util::fill_pattern(back.va(), kPage, 77);
    kernel_env().dma->flush(back.va(), kPage);
    KREQUIRE_TRUE(edu_dma(*regs, kEduBuffer, stale_iova, true));
    e->dev->disable();
    FaultLog log;
    KEXPECT_EQ(u->drain_faults(&FaultLog::sink, &log), 1u);
    KREQUIRE_TRUE(log.count >= 1);
    KEXPECT_EQ(log.faults[0].device_id, sid);
    KEXPECT_EQ(log.faults[0].iova, stale_iova & ~(kPage - 1));
    KEXPECT_TRUE(log.faults[0].write);
    kernel_env().dma->invalidate(back.va(), kPage);
    KEXPECT_EQ(ktest_util::check_pattern(back.va(), kPage, 77), kPage);
  }
  domain.detach(sid);
  for (size_t i = 0; i < n_msi; ++i) domain.unmap_fixed(msi[i].value(), kPage);
  KEXPECT_OK(domain.destroy());
  if (before.ok()) KEXPECT_OK(u->attach(sid, before->domain, before->root));
}

namespace {

struct Hammer {
  Smmuv3* unit;
  unsigned rounds;
};

// One CPU's share: invalidations of every shape, each in a domain of its own CPU, and event
// queue drains, all at once with the other CPUs.
void hammer(void* arg) {
  auto* h = static_cast<Hammer*>(arg);
  const uint32_t domain = h->unit->max_domains() - 2 - cpu_index();
  for (unsigned i = 0; i < h->rounds; ++i) {
    h->unit->invalidate(domain, uint64_t{i} * kPage, kPage * (1 + i % 5));
    if (i % 16 == 0) h->unit->invalidate(domain, 0, 0);
    if (i % 8 == 0) (void)h->unit->drain_faults(nullptr, nullptr);
  }
}

}  // namespace

// Every CPU submits commands and drains events at the same time: each CMD_SYNC is waited for
// and none fails, no command is refused (the queue's producer index is never torn).
KTEST(smmuv3_commands_from_every_cpu_at_once) {
  if (!iommu_on()) {
    KEXPECT_TRUE(unit() == nullptr);
    return;
  }
  Smmuv3* u = unit();
  KREQUIRE_TRUE(u != nullptr);
  const Smmuv3::Stats s0 = u->stats();
  Hammer h{u, 200};
  run_on_all_cpus(&hammer, &h);
  const Smmuv3::Stats s1 = u->stats();
  const uint64_t per_cpu = h.rounds + (h.rounds + 15) / 16;
  KEXPECT_EQ(s1.syncs - s0.syncs, per_cpu * num_online_cpus());
  KEXPECT_EQ(s1.sync_failures, s0.sync_failures);
  KEXPECT_EQ(s1.cmd_errors, s0.cmd_errors);
}
