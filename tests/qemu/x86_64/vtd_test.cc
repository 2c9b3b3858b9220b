// In-VM tests of the Intel VT-d driver (dmakit/arch/vtd.h) and the x86-64 port's DMAR discovery,
// with the hardware alone: the edu DMA engine is attached to a domain whose page table the test
// builds by hand with the unit's entry format, and told to reach mapped, unmapped, read-only and
// write-only I/O addresses. The generic IOMMU layer is not involved.
//
// With `iommu=on` (QEMU_IOMMU=1: `-device intel-iommu,intremap=off`) the unit is the one the boot
// enabled, or, on a kernel whose boot does not enable it, one these tests enable and turn off
// again. The edu's own attachment is put back afterwards. Without iommu=on the machine has no
// DMAR table and the port says so.
#include "dmakit/arch/vtd.h"
#include "arch/x86_64/testkernel/vtd_platform.h"
#include "arch/x86_64/testkernel/x86_64_platform.h"
#include "dmakit/io_page_table.h"
#include "testkernel/arch.h"
#include "testkernel/devices.h"
#include "testkernel/iommu_arch.h"
#include "testkernel/kernel_env.h"
#include "testkernel/kstring.h"
#include "tests/qemu/ktest.h"
#include "tests/qemu/test_util.h"

using ktest_util::Pages;

namespace {

constexpr uint64_t kPage = 4096;
constexpr uint64_t kMask32 = 0xFFFF'FFFFull;
// Edu registers (drivers/edu/edu_device.h).
constexpr uint64_t kEduSrc = 0x80, kEduDst = 0x88, kEduCount = 0x90, kEduCmd = 0x98;
constexpr uint64_t kEduStart = 1, kEduToRam = 2;
constexpr uint64_t kEduBuffer = 0x40000;
// The I/O addresses the tests use (below the edu's 32-bit mask).
constexpr uint64_t kIovaRw = 0x1000'0000;
constexpr uint64_t kIovaRo = 0x1000'1000;
constexpr uint64_t kIovaWo = 0x1000'2000;
constexpr uint64_t kIovaNever = 0x2345'6000;

bool iommu_requested() {
  char v[8];
  return kstr::cmdline_value(kernel_env().boot->cmdline, "iommu", v, sizeof(v)) &&
         kstr::equal(v, "on");
}

// The enabled unit: the boot's, or one enabled here (and turned off by the destructor).
class UnitSession {
 public:
  UnitSession() {
    unit_ = x86::vtd_unit();
    if (unit_ == nullptr && iommu_requested()) {
      (void)arch::iommu_init(*kernel_env().boot);
      unit_ = x86::vtd_unit();
      own_ = unit_ != nullptr;
    }
  }
  ~UnitSession() {
    if (own_) KASSERT(x86::vtd_shutdown(), "vt-d: translation did not turn off");
  }
  UnitSession(const UnitSession&) = delete;
  UnitSession& operator=(const UnitSession&) = delete;
  VtdUnit* unit() const { return unit_; }

 private:
  VtdUnit* unit_ = nullptr;
  bool own_ = false;
};

void clean_lines(const void* p, size_t size) {
  for (uintptr_t a = reinterpret_cast<uintptr_t>(p) & ~uintptr_t{63};
       a < reinterpret_cast<uintptr_t>(p) + size; a += 64) {
    asm volatile("clflush %0" : "+m"(*reinterpret_cast<volatile char*>(a)));
  }
  asm volatile("mfence" ::: "memory");
}

// A second-level page table built with the unit's own format functions: 4 KiB leaves only, table
// pages from the page-frame allocator, freed by the destructor.
class TestTable {
 public:
  explicit TestTable(const IoPageTableFormat& f) : f_(f) { root_ = new_table(); }
  ~TestTable() {
    for (size_t i = 0; i < n_; ++i) (void)kernel_env().pfa->free(pages_[i], 0);
  }
  TestTable(const TestTable&) = delete;
  TestTable& operator=(const TestTable&) = delete;
  bool ok() const { return root_.value() != 0 && !failed_; }
  PhysAddr root() const { return root_; }

  void map(uint64_t iova, PhysAddr pa, unsigned perm) {
    *leaf(iova) = f_.page_entry(pa.value(), perm);
    sync(iova);
  }
  void unmap(uint64_t iova) {
    *leaf(iova) = 0;
    sync(iova);
  }

 private:
  static constexpr size_t kMaxPages = 8;

  PhysAddr new_table() {
    if (n_ == kMaxPages) {
      failed_ = true;
      return PhysAddr();
    }
    auto p = kernel_env().pfa->alloc(0);
    if (!p.ok()) {
      failed_ = true;
      return PhysAddr();
    }
    pages_[n_++] = *p;
    __builtin_memset(virt(*p), 0, kPage);
    clean_lines(virt(*p), kPage);
    return *p;
  }
  static uint64_t* virt(PhysAddr p) { return static_cast<uint64_t*>(kernel_env().phys_to_virt(p)); }
  static size_t index(uint64_t iova, unsigned level) {
    return static_cast<size_t>((iova >> (12 + 9 * (level - 1))) & 511);
  }
  uint64_t* leaf(uint64_t iova) {
    static uint64_t scratch;
    if (!ok()) return &scratch;
    PhysAddr table = root_;
    for (unsigned level = f_.levels; level > 1; --level) {
      uint64_t* e = virt(table) + index(iova, level);
      if (!f_.entry_valid(*e)) {
        PhysAddr next = new_table();
        if (next.value() == 0) return &scratch;
        *e = f_.table_entry(next.value());
        clean_lines(e, 8);
      }
      table = PhysAddr(f_.entry_addr(*e));
    }
    last_leaf_ = virt(table) + index(iova, 1);
    return last_leaf_;
  }
  void sync(uint64_t) {
    if (last_leaf_ != nullptr) clean_lines(last_leaf_, 8);
  }

  const IoPageTableFormat& f_;
  PhysAddr root_;
  PhysAddr pages_[kMaxPages];
  size_t n_ = 0;
  bool failed_ = false;
  uint64_t* last_leaf_ = nullptr;
};

struct Faults {
  static constexpr size_t kMax = 8;
  IommuFault f[kMax];
  size_t n = 0;
  static void sink(void* ctx, const IommuFault& fault) {
    auto* self = static_cast<Faults*>(ctx);
    if (self->n < kMax) self->f[self->n] = fault;
    ++self->n;
  }
};

// The 32-bit edu, bound for raw register use: bus mastering on for the test, off afterwards.
class RawEdu {
 public:
  RawEdu() {
    auto d = devices_init(kernel_env());
    if (!d.ok()) return;
    const Devices::Edu* e = (*d)->edu_with_mask(kMask32);
    if (e == nullptr) return;
    pci_ = e->dev;
    saved_command_ = pci_->command();
    auto regs = pci_->map_bar(0);
    if (!regs.ok() || !pci_->enable(true).ok()) {
      pci_ = nullptr;
      return;
    }
    regs_ = *regs;
  }
  ~RawEdu() {
    if (pci_ != nullptr) pci_->config_write16(pci::kCommand, saved_command_);
  }
  RawEdu(const RawEdu&) = delete;
  RawEdu& operator=(const RawEdu&) = delete;
  bool ok() const { return pci_ != nullptr; }
  uint16_t bdf() const {
    const PciAddress a = pci_->address();
    return static_cast<uint16_t>(a.bus << 8 | a.dev << 3 | a.fn);
  }

  // One transfer of `count` bytes between device address `dev` (the edu's buffer) and bus address
  // `bus`; false if the device did not finish within 5 s.
  bool dma(uint64_t bus, uint64_t dev, uint32_t count, bool to_ram) {
    regs_.write64(kEduSrc, to_ram ? dev : bus);
    regs_.write64(kEduDst, to_ram ? bus : dev);
    regs_.write64(kEduCount, count);
    regs_.write64(kEduCmd, kEduStart | (to_ram ? kEduToRam : 0));
    const uint64_t deadline = arch::now_ns() + 5'000'000'000ull;
    while ((regs_.read64(kEduCmd) & kEduStart) != 0) {
      if (arch::now_ns() > deadline) return false;
    }
    return true;
  }

 private:
  PciDevice* pci_ = nullptr;
  MmioRegion regs_;
  uint16_t saved_command_ = 0;
};

bool filled(const uint8_t* p, size_t n, uint8_t v) {
  for (size_t i = 0; i < n; ++i) {
    if (p[i] != v) return false;
  }
  return true;
}

// Whether a scope of `u` directly on its start bus (a one-step path) names requester id `id`.
bool listed(const x86::DmarInfo::Unit& u, uint16_t id) {
  for (size_t i = 0; i < u.num_scopes; ++i) {
    const x86::DmarInfo::Scope& sc = u.scopes[i];
    if ((sc.type == 1 || sc.type == 2) && sc.path_len == 1 &&
        (sc.start_bus << 8 | sc.device[0] << 3 | sc.function[0]) == id) {
      return true;
    }
  }
  return false;
}

// Runs checks(ktest_ctx, unit) on the unit with the queued (or the register) invalidation
// interface, then puts the interface back.
template <typename Checks>
void with_interface(::ktest::Context& ktest_ctx, bool queued, Checks checks) {
  UnitSession s;
  VtdUnit* unit = s.unit();
  if (!iommu_requested()) {
    KEXPECT_TRUE(unit == nullptr);
    return;
  }
  KREQUIRE_TRUE(unit != nullptr);
  const bool was = unit->queued_invalidation();
  constexpr uint64_t kEcapQi = 1ull << 1;
  if (queued && (unit->ecap() & kEcapQi) == 0) {
    KEXPECT_ERR(unit->set_queued_invalidation(true), ErrorCode::kNotSupported);
    return;
  }
  KREQUIRE_OK(unit->set_queued_invalidation(queued));
  KEXPECT_EQ(unit->queued_invalidation(), queued);
  checks(ktest_ctx, unit);
  KEXPECT_OK(unit->set_queued_invalidation(was));
  KEXPECT_EQ(unit->timeouts(), 0u);
}

}  // namespace

KTEST(vtd_dmar_describes_the_unit) {
  x86::DmarInfo dmar;
  const bool have = x86::acpi_dmar_info(x86::pvh_info().rsdp_phys, &dmar);
  if (!iommu_requested()) {
    // The runner adds the VT-d device (and its DMAR table) only together with iommu=on.
    KEXPECT_FALSE(have);
    KEXPECT_TRUE(x86::vtd_unit() == nullptr);
    return;
  }
  KREQUIRE_TRUE(have);
  KREQUIRE_TRUE(dmar.num_units >= 1);
  KEXPECT_GE(dmar.host_address_width, 32u);
  KEXPECT_LE(dmar.host_address_width, 64u);
  const x86::DmarInfo::Unit& u = dmar.units[0];
  KEXPECT_NE(u.base, 0u);
  KEXPECT_EQ(u.base % kPage, 0u);
  KEXPECT_GE(u.size, kPage);
  KEXPECT_EQ(u.segment, 0u);
  KEXPECT_FALSE(dmar.truncated);

  UnitSession s;
  VtdUnit* unit = s.unit();
  KREQUIRE_TRUE(unit != nullptr);
  KEXPECT_TRUE(unit->enabled());
  KEXPECT_EQ(unit->regs_phys().value(), u.base);
  KEXPECT_TRUE(unit->format().levels == 3 || unit->format().levels == 4);
  KEXPECT_GE(unit->iova_bits(), 39u);
  KEXPECT_LE(unit->iova_bits(), 12u + 9u * unit->format().levels);
  KEXPECT_GE(unit->max_domains(), 15u);
  KEXPECT_EQ(unit->timeouts(), 0u);
  KEXPECT_FALSE(unit->covers(0x10000));
  // Coverage follows the table: every PCI device with INCLUDE_PCI_ALL, else the scopes (QEMU 10
  // lists each device of the root bus; the I/O APIC's scope is no PCI device).
  size_t pci_scopes = 0;
  for (size_t i = 0; i < u.num_scopes; ++i) {
    VtdUnit::IdRange r[2];
    const size_t n = x86::vtd_scope_ids(u.scopes[i], r);
    if (n == 0) {
      KEXPECT_TRUE(u.scopes[i].type != 1 && u.scopes[i].type != 2);
      continue;
    }
    ++pci_scopes;
    // An endpoint is one id; a bridge is its own id and then its buses.
    KEXPECT_EQ(r[0].first, r[0].last);
    KEXPECT_TRUE(n == 1 || u.scopes[i].type == 2);
    for (size_t j = 0; j < n; ++j) {
      KEXPECT_TRUE(unit->covers(r[j].first));
      KEXPECT_TRUE(unit->covers(r[j].last));
    }
    // A bridge covers its buses, not its neighbours on the parent bus.
    const auto next = static_cast<uint16_t>(r[0].first + 1);
    if (u.scopes[i].type == 2 && !u.include_pci_all && !listed(u, next)) {
      KEXPECT_FALSE(unit->covers(next));
    }
  }
  KEXPECT_TRUE(u.include_pci_all || pci_scopes > 0);
  // Bus 0xFE exists on no q35 the runner builds: covered only by INCLUDE_PCI_ALL.
  KEXPECT_EQ(unit->covers(0xFE00), u.include_pci_all);
  RawEdu edu;
  KREQUIRE_TRUE(edu.ok());
  KEXPECT_TRUE(unit->covers(arch::iommu_device_id(edu.bdf())));
  // The edu is a single-function endpoint: its function 7 exists nowhere, and only
  // INCLUDE_PCI_ALL covers it.
  KEXPECT_EQ(unit->covers(arch::iommu_device_id(static_cast<uint16_t>(edu.bdf() | 7))),
             u.include_pci_all);
  KEXPECT_EQ(arch::iommu_device_id(0x0880), 0x0880u);
  PhysAddr pages[2];
  KEXPECT_EQ(arch::iommu_msi_pages(pages, 2), 0u);
}

KTEST(vtd_attach_rejects_bad_input) {
  UnitSession s;
  VtdUnit* unit = s.unit();
  if (!iommu_requested()) {
    KEXPECT_TRUE(unit == nullptr);
    return;
  }
  KREQUIRE_TRUE(unit != nullptr);
  Pages root(0);
  KREQUIRE_TRUE(root.ok());
  KEXPECT_ERR(unit->attach(0x0880, 0, root.phys()), ErrorCode::kInvalidArgument);
  KEXPECT_ERR(unit->attach(0x0880, unit->max_domains() + 1, root.phys()),
              ErrorCode::kInvalidArgument);
  KEXPECT_ERR(unit->attach(0x10000, 1, root.phys()), ErrorCode::kInvalidArgument);
  KEXPECT_ERR(unit->attach(0x0880, 1, root.phys() + 8), ErrorCode::kInvalidArgument);
  KEXPECT_ERR(unit->attach(0x0880, 1, PhysAddr()), ErrorCode::kInvalidArgument);
}

// Entry formats: read and write bits independent (write-only allowed), table entries grant both.
KTEST(vtd_page_table_entry_format) {
  KEXPECT_EQ(VtdUnit::sl_page_entry(0x1234'5000, kIommuRead), 0x1234'5001u);
  KEXPECT_EQ(VtdUnit::sl_page_entry(0x1234'5000, kIommuWrite), 0x1234'5002u);
  KEXPECT_EQ(VtdUnit::sl_page_entry(0x1234'5000, kIommuRead | kIommuWrite), 0x1234'5003u);
  KEXPECT_EQ(VtdUnit::sl_table_entry(0x8'0000'0000), 0x8'0000'0003u);
  KEXPECT_FALSE(VtdUnit::sl_entry_valid(0x1234'5000));
  KEXPECT_TRUE(VtdUnit::sl_entry_valid(0x1234'5002));
  KEXPECT_EQ(VtdUnit::sl_entry_addr(0xF'1234'5678'9003), 0xF'1234'5678'9000u);
}

// The edu reaches RAM only through the test's table: a mapped page both ways, a read-only page
// and a write-only page in their direction only, an address never mapped and one unmapped (with
// the IOTLB invalidated) not at all, and nothing once detached. Each refused access is reported
// by drain_faults with the edu's requester id, the address, the direction and the reason, and the
// memory behind it is unchanged.
static void edu_domain_checks(::ktest::Context& ktest_ctx, VtdUnit* unit) {
  RawEdu edu;
  KREQUIRE_TRUE(edu.ok());
  const uint32_t id = arch::iommu_device_id(edu.bdf());
  KREQUIRE_TRUE(unit->covers(id));
  const VtdUnit::Attachment before = unit->attachment(id);

  Pages rw(0), ro(0), wo(0);
  KREQUIRE_TRUE(rw.ok() && ro.ok() && wo.ok());
  for (size_t i = 0; i < kPage; ++i) rw.va()[i] = ktest_util::pattern_byte(1, i);
  __builtin_memset(ro.va(), 0x5A, kPage);
  __builtin_memset(wo.va(), 0x6B, kPage);
  clean_lines(rw.va(), kPage);
  clean_lines(ro.va(), kPage);
  clean_lines(wo.va(), kPage);

  TestTable t(unit->format());
  t.map(kIovaRw, rw.phys(), kIommuRead | kIommuWrite);
  t.map(kIovaRo, ro.phys(), kIommuRead);
  t.map(kIovaWo, wo.phys(), kIommuWrite);
  KREQUIRE_TRUE(t.ok());
  const uint32_t domain = unit->max_domains();
  (void)unit->drain_faults(nullptr, nullptr);
  KREQUIRE_OK(unit->attach(id, domain, t.root()));
  const VtdUnit::Attachment now = unit->attachment(id);
  KEXPECT_TRUE(now.present);
  KEXPECT_EQ(now.domain, domain);
  KEXPECT_EQ(now.root.value(), t.root().value());

  Faults faults;
  // Mapped both ways: 64 bytes in from the page, back out 256 bytes further on.
  KEXPECT_TRUE(edu.dma(kIovaRw, kEduBuffer, 64, false));
  KEXPECT_TRUE(edu.dma(kIovaRw + 256, kEduBuffer, 64, true));
  clean_lines(rw.va(), kPage);
  KEXPECT_EQ(__builtin_memcmp(rw.va() + 256, rw.va(), 64), 0);
  KEXPECT_EQ(unit->drain_faults(&Faults::sink, &faults), 0u);

  // Never mapped: blocked and reported.
  faults = Faults{};
  KEXPECT_TRUE(edu.dma(kIovaNever, kEduBuffer, 64, true));
  KEXPECT_EQ(unit->drain_faults(&Faults::sink, &faults), 1u);
  KEXPECT_EQ(faults.f[0].device_id, id);
  KEXPECT_EQ(faults.f[0].iova, kIovaNever);
  KEXPECT_TRUE(faults.f[0].write);
  KEXPECT_TRUE(kstr::equal(faults.f[0].reason, "not mapped"));

  // Read-only: the edu's write is refused as a permission fault, the page unchanged; its read
  // works. (The write goes first: QEMU refuses a write through a read-only translation it has
  // cached without recording a fault.)
  faults = Faults{};
  KEXPECT_TRUE(edu.dma(kIovaRo, kEduBuffer, 64, true));
  KEXPECT_EQ(unit->drain_faults(&Faults::sink, &faults), 1u);
  KEXPECT_EQ(faults.f[0].iova, kIovaRo);
  KEXPECT_TRUE(faults.f[0].write);
  KEXPECT_TRUE(kstr::equal(faults.f[0].reason, "permission"));
  clean_lines(ro.va(), kPage);
  KEXPECT_TRUE(filled(ro.va(), kPage, 0x5A));
  KEXPECT_TRUE(edu.dma(kIovaRo, kEduBuffer, 64, false));
  KEXPECT_EQ(unit->drain_faults(&Faults::sink, &faults), 0u);

  // Write-only: the edu's read is refused (a read fault), its write lands.
  faults = Faults{};
  KEXPECT_TRUE(edu.dma(kIovaWo, kEduBuffer, 64, false));
  KEXPECT_EQ(unit->drain_faults(&Faults::sink, &faults), 1u);
  KEXPECT_EQ(faults.f[0].iova, kIovaWo);
  KEXPECT_FALSE(faults.f[0].write);
  KEXPECT_TRUE(kstr::equal(faults.f[0].reason, "permission"));
  KEXPECT_TRUE(edu.dma(kIovaWo, kEduBuffer, 64, true));
  KEXPECT_EQ(unit->drain_faults(nullptr, nullptr), 0u);
  clean_lines(wo.va(), kPage);
  KEXPECT_FALSE(filled(wo.va(), 64, 0x6B));
  KEXPECT_TRUE(filled(wo.va() + 64, kPage - 64, 0x6B));

  // Unmapped after use (its translation was cached by the transfers above): once invalidated,
  // blocked, and the page keeps what it had.
  faults = Faults{};
  t.unmap(kIovaRw);
  unit->invalidate(domain, kIovaRw, kPage);
  __builtin_memset(rw.va(), 0x7C, kPage);
  clean_lines(rw.va(), kPage);
  KEXPECT_TRUE(edu.dma(kIovaRw, kEduBuffer, 64, true));
  // The memory first: a failure here means a stale IOTLB entry, below a lost fault record.
  clean_lines(rw.va(), kPage);
  KEXPECT_EQ(rw.va()[0], 0x7Cu);
  KEXPECT_EQ(unit->drain_faults(&Faults::sink, &faults), 1u);
  KEXPECT_EQ(faults.f[0].iova, kIovaRw);
  KEXPECT_TRUE(kstr::equal(faults.f[0].reason, "not mapped"));
  clean_lines(rw.va(), kPage);
  KEXPECT_TRUE(filled(rw.va(), kPage, 0x7C));

  // Detached: the write-only page, still mapped in the table, is out of reach too.
  faults = Faults{};
  unit->detach(id);
  KEXPECT_FALSE(unit->attachment(id).present);
  __builtin_memset(wo.va(), 0x6B, kPage);
  clean_lines(wo.va(), kPage);
  KEXPECT_TRUE(edu.dma(kIovaWo, kEduBuffer, 64, true));
  KEXPECT_EQ(unit->drain_faults(&Faults::sink, &faults), 1u);
  KEXPECT_EQ(faults.f[0].device_id, id);
  KEXPECT_TRUE(kstr::equal(faults.f[0].reason, "no context (device blocked)"));
  clean_lines(wo.va(), kPage);
  KEXPECT_TRUE(filled(wo.va(), kPage, 0x6B));

  if (before.present) KEXPECT_OK(unit->attach(id, before.domain, before.root));
  KEXPECT_EQ(unit->timeouts(), 0u);
}

// The generic layer's IoPageTable (dmakit/io_page_table.h) in this unit's format drives the
// hardware: a page it maps is reached by the edu, and once it unmaps the page and the unit
// invalidates the range, the edu's write is blocked and reported.
KTEST(vtd_io_page_table_in_the_unit_format) {
  UnitSession s;
  VtdUnit* unit = s.unit();
  if (!iommu_requested()) {
    KEXPECT_TRUE(unit == nullptr);
    return;
  }
  KREQUIRE_TRUE(unit != nullptr);
  RawEdu edu;
  KREQUIRE_TRUE(edu.ok());
  const uint32_t id = arch::iommu_device_id(edu.bdf());
  const VtdUnit::Attachment before = unit->attachment(id);
  Pages page(0);
  KREQUIRE_TRUE(page.ok());
  for (size_t i = 0; i < kPage; ++i) page.va()[i] = ktest_util::pattern_byte(2, i);
  clean_lines(page.va(), kPage);

  IoPageTable table;
  IoPageTable::Config cfg;
  cfg.format = &unit->format();
  cfg.pfa = kernel_env().pfa;
  cfg.cache_op = kernel_env().dma;
  KREQUIRE_OK(table.init(cfg));
  KEXPECT_OK(table.map(kIovaRw, page.phys(), kPage, kIommuRead | kIommuWrite));
  (void)unit->drain_faults(nullptr, nullptr);
  KREQUIRE_OK(unit->attach(id, unit->max_domains(), table.root()));

  KEXPECT_TRUE(edu.dma(kIovaRw, kEduBuffer, 128, false));
  KEXPECT_TRUE(edu.dma(kIovaRw + 1024, kEduBuffer, 128, true));
  clean_lines(page.va(), kPage);
  KEXPECT_EQ(__builtin_memcmp(page.va() + 1024, page.va(), 128), 0);
  KEXPECT_EQ(unit->drain_faults(nullptr, nullptr), 0u);

  KEXPECT_EQ(table.unmap(kIovaRw, kPage), 1u);
  unit->invalidate(unit->max_domains(), kIovaRw, kPage);
  __builtin_memset(page.va(), 0x3C, kPage);
  clean_lines(page.va(), kPage);
  Faults faults;
  KEXPECT_TRUE(edu.dma(kIovaRw, kEduBuffer, 128, true));
  clean_lines(page.va(), kPage);
  KEXPECT_TRUE(filled(page.va(), kPage, 0x3C));
  KEXPECT_EQ(unit->drain_faults(&Faults::sink, &faults), 1u);
  KEXPECT_EQ(faults.f[0].device_id, id);
  KEXPECT_EQ(faults.f[0].iova, kIovaRw);
  KEXPECT_TRUE(faults.f[0].write);
  KEXPECT_TRUE(kstr::equal(faults.f[0].reason, "not mapped"));

  if (before.present) {
    KEXPECT_OK(unit->attach(id, before.domain, before.root));
  } else {
    unit->detach(id);
  }
  table.destroy();
}

// Attaching a device that is attached already switches it to the new table at once: the unit's
// cached context and translations of the old one are gone. Both tables map the same I/O address
// to different pages; the edu's writes land in the page of the table it is attached to.
static void reattach_checks(::ktest::Context& ktest_ctx, VtdUnit* unit) {
  RawEdu edu;
  KREQUIRE_TRUE(edu.ok());
  const uint32_t id = arch::iommu_device_id(edu.bdf());
  const VtdUnit::Attachment before = unit->attachment(id);
  Pages a(0), b(0);
  KREQUIRE_TRUE(a.ok() && b.ok());
  for (size_t i = 0; i < kPage; ++i) a.va()[i] = ktest_util::pattern_byte(3, i);
  __builtin_memset(b.va(), 0x11, kPage);
  clean_lines(a.va(), kPage);
  clean_lines(b.va(), kPage);
  TestTable ta(unit->format()), tb(unit->format());
  ta.map(kIovaRw, a.phys(), kIommuRead | kIommuWrite);
  tb.map(kIovaRw, b.phys(), kIommuRead | kIommuWrite);
  KREQUIRE_TRUE(ta.ok() && tb.ok());
  const uint32_t da = unit->max_domains();
  const uint32_t db = unit->max_domains() - 1;
  (void)unit->drain_faults(nullptr, nullptr);

  KREQUIRE_OK(unit->attach(id, da, ta.root()));
  // Read page a into the device (caching a's translation), then switch to b and write it out.
  KEXPECT_TRUE(edu.dma(kIovaRw, kEduBuffer, 64, false));
  KREQUIRE_OK(unit->attach(id, db, tb.root()));
  const VtdUnit::Attachment now = unit->attachment(id);
  KEXPECT_EQ(now.domain, db);
  KEXPECT_EQ(now.root.value(), tb.root().value());
  KEXPECT_TRUE(edu.dma(kIovaRw, kEduBuffer, 64, true));
  clean_lines(a.va(), kPage);
  clean_lines(b.va(), kPage);
  KEXPECT_EQ(__builtin_memcmp(b.va(), a.va(), 64), 0);
  KEXPECT_TRUE(filled(b.va() + 64, kPage - 64, 0x11));
  for (size_t i = 0; i < 64; ++i) KEXPECT_EQ(a.va()[i], ktest_util::pattern_byte(3, i));
  KEXPECT_EQ(unit->drain_faults(nullptr, nullptr), 0u);

  if (before.present) {
    KEXPECT_OK(unit->attach(id, before.domain, before.root));
  } else {
    unit->detach(id);
  }
}

KTEST(vtd_edu_domain_queued_invalidation) {
  with_interface(ktest_ctx, true, edu_domain_checks);
}
KTEST(vtd_edu_domain_register_invalidation) {
  with_interface(ktest_ctx, false, edu_domain_checks);
}
KTEST(vtd_reattach_queued_invalidation) {
  with_interface(ktest_ctx, true, reattach_checks);
}
KTEST(vtd_reattach_register_invalidation) {
  with_interface(ktest_ctx, false, reattach_checks);
}
