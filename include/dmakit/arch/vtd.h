// VtdUnit: the IommuUnit of one Intel VT-d DMA-remapping hardware unit (a DRHD of the ACPI DMAR
// table), in legacy (non-scalable) mode.
//
// Scheme. The unit translates a request with requester id bus:devfn through the root table (256
// root entries, one per bus, each pointing at a context table) and the context table (256
// context entries, one per devfn). A present context entry names the domain id (DID), the
// address width (AW: 3 or 4 levels, from CAP.SAGAW) and the second-level page table the generic
// layer built (IoPageTableFormat below: bit 0 read, bit 1 write, bits 51:12 the address; an entry
// with neither bit is not present). A device whose context entry is not present is blocked:
// every request of it faults ("no context"). The unit is enabled (GCMD.TE) last, with every
// context entry not present, so nothing the kernel did not attach reaches memory.
//
// Invalidation uses the queued invalidation interface where the unit has it (ECAP.QI): a 256-entry
// queue of 128-bit descriptors (context-cache, IOTLB) closed by an invalidation wait descriptor
// whose status write the CPU polls; otherwise the register interface (CCMD for the context cache,
// the IOTLB registers at ECAP.IRO). Either way one request at a time under a lock, polled to
// completion: page-selective when CAP.PSI allows the naturally aligned block covering the range,
// domain-selective otherwise. Context entries are invalidated whenever they change, including
// not-present to present, so caching mode (CAP.CM, a virtual IOMMU that may cache not-present
// entries) is handled for them; the page tables are the generic layer's, and under caching mode
// it must also call invalidate() after it makes an entry present (caching_mode() says when).
//
// Faults: the fault recording registers (CAP.FRO, CAP.NFR + 1 of them) are read by drain_faults;
// the fault-event interrupt stays masked (the kernel polls). Write-only mappings are supported
// (second-level entries have independent read and write bits).
//
// Memory: the root table and one context table per bus in use, 4 KiB each, and with queued
// invalidation 8 KiB for the queue and its wait status, from the PageFrameAllocator given to
// init, reached through its direct map; never freed while enabled.
//
// Cost: attach/detach write one context entry and run two invalidation requests; invalidate runs
// one IOTLB request (queued: two descriptors, a tail write and a poll of the status word;
// register: an MMIO write and a poll). The unit serves every CPU; its requests are serialised by
// one lock, held with interrupts masked.
#pragma once

#include "dmakit/iommu_unit.h"
#include "dmakit/page_frame_allocator.h"
#include "dmakit/support/addr.h"
#include "dmakit/support/result.h"
#include "dmakit/support/spinlock.h"
#include "dmakit/support/thread_annotations.h"
#include "dmakit/support/types.h"

class VtdUnit final : public IommuUnit {
 public:
  // A range of requester ids the unit translates (an endpoint: first == last; a bridge's
  // sub-hierarchy: its own id and every id of its secondary to subordinate buses).
  struct IdRange {
    uint16_t first = 0;
    uint16_t last = 0;
  };
  static constexpr size_t kMaxScopes = 64;

  struct Config {
    // The unit's registers (DRHD register base), mapped uncached by the kernel, and their
    // physical address (for reports).
    volatile void* regs = nullptr;
    PhysAddr regs_phys;
    // DRHD flag INCLUDE_PCI_ALL: the unit translates every PCI device of its segment (that no
    // other unit lists). Otherwise only `scopes`.
    bool include_pci_all = false;
    IdRange scopes[kMaxScopes];
    size_t num_scopes = 0;
    // Where the root and context tables come from (and how the CPU reaches them).
    PageFrameAllocator* pfa = nullptr;
    // Monotonic nanoseconds, for the hardware's completion timeouts.
    uint64_t (*now_ns)() = nullptr;
    // How long one register command may take before the unit is declared dead.
    uint64_t timeout_ns = 100'000'000;
    // Use the queued invalidation interface when the unit has it (else the register interface).
    bool queued_invalidation = true;
  };

  // What a device is attached to (see attachment()).
  struct Attachment {
    bool present = false;
    uint32_t domain = 0;
    PhysAddr root;
  };

  constexpr VtdUnit() = default;
  VtdUnit(const VtdUnit&) = delete;
  VtdUnit& operator=(const VtdUnit&) = delete;

  // Reads the capabilities, masks the fault interrupt, clears recorded faults, installs an empty
  // root table (SRTP), invalidates the context cache and the IOTLB globally and enables
  // translation (TE) last: afterwards every covered device is blocked until attach(). A unit the
  // firmware left translating is turned off first. Call once, thread context, boot CPU.
  // On error the unit is left with translation off and nothing allocated.
  // Errors: kInvalidArgument (null regs / pfa / now_ns, more than kMaxScopes scopes, called
  // twice), kNotSupported (no 3- or 4-level second-level tables in CAP.SAGAW), kNoMemory (no
  // page for the root table), kTimedOut (a command did not complete). A unit with ECAP.QI whose
  // queue cannot be set up (no memory) falls back to the register interface, not an error.
  Result<void> init(const Config& cfg);

  // Turns translation off (every device's DMA goes untranslated again) and frees the root and
  // context tables and the invalidation queue: after a failed set-up of the generic layer, for a
  // kernel that hands the unit over (kexec), for tests that enabled it on their own. Returns
  // true when translation is off afterwards (also when it was never on); false when the unit did
  // not acknowledge (it may still translate, and the tables are then kept). Thread context; no
  // attach or invalidate may run concurrently.
  bool disable() override;
  // Caching mode (CAP.CM): non-present entries may be cached, so maps are invalidated too.
  bool invalidate_on_map() const override { return caching_mode(); }

  bool enabled() const { return enabled_; }

  // Switches between the queued (true) and the register (false) invalidation interface, for
  // tests of both on one unit. Thread context; no other method may run concurrently.
  // Errors: kInvalidArgument (not enabled), kNotSupported (no ECAP.QI), kNoMemory (no pages for
  // the queue), kTimedOut (the unit did not acknowledge the switch: the register interface stays).
  Result<void> set_queued_invalidation(bool on);
  // Whether invalidations go through the queue now.
  bool queued_invalidation() const { return qi_on_; }

  // --- IommuUnit (dmakit/iommu_unit.h documents each) ---
  // attach: also kInvalidArgument before init or for a root that is not 4 KiB aligned, and
  // kNoMemory when the device's bus has no context table yet and no page is left for one.
  // detach / invalidate: no-ops before init. drain_faults: `sink` may be null (the records are
  // then cleared and counted only); the reason of a permission fault comes from a walk of the
  // device's tables as they are when it is drained.
  const char* name() const override { return "vt-d"; }
  const IoPageTableFormat& format() const override { return format_; }
  uint8_t iova_bits() const override { return iova_bits_; }
  bool covers(uint32_t device_id) const override;
  Result<void> attach(uint32_t device_id, uint32_t domain, PhysAddr root) override;
  void detach(uint32_t device_id) override;
  void invalidate(uint32_t domain, uint64_t iova, uint64_t size) override;
  uint32_t max_domains() const override { return max_domains_; }
  size_t drain_faults(void (*sink)(void* ctx, const IommuFault& fault), void* ctx) override;

  // --- For reports and tests ---
  // The context entry of `device_id` as the unit sees it now. Any context.
  Attachment attachment(uint32_t device_id) const;
  uint32_t version() const { return version_; }
  uint64_t cap() const { return cap_; }
  uint64_t ecap() const { return ecap_; }
  PhysAddr regs_phys() const { return regs_phys_; }
  // CAP.CM: the unit may cache not-present entries, so making a page-table entry present needs
  // an invalidate() too.
  bool caching_mode() const { return (cap_ & kCapCm) != 0; }
  // Register commands that did not complete in time since init (the unit is then unreliable).
  uint64_t timeouts() const { return __atomic_load_n(&timeouts_, __ATOMIC_RELAXED); }
  // Faults found by drain_faults since init, and records lost to overflow (FSTS.PFO seen).
  uint64_t faults_seen() const { return __atomic_load_n(&faults_seen_, __ATOMIC_RELAXED); }
  uint64_t fault_overflows() const { return __atomic_load_n(&overflows_, __ATOMIC_RELAXED); }

  // The second-level page-table entry formats (public for tests that build tables by hand).
  static uint64_t sl_table_entry(uint64_t table);
  static uint64_t sl_page_entry(uint64_t page, unsigned perm);
  static bool sl_entry_valid(uint64_t entry);
  static uint64_t sl_entry_addr(uint64_t entry);

  // CAP.CM.
  static constexpr uint64_t kCapCm = 1ull << 7;

 private:
  uint32_t read32(uint32_t off) const;
  uint64_t read64(uint32_t off) const;
  void write32(uint32_t off, uint32_t v) const;
  void write64(uint32_t off, uint64_t v) const;
  // Waits until (read32(off) & mask) == want; false after the timeout (counted).
  bool wait32(uint32_t off, uint32_t mask, uint32_t want) const;
  bool wait64_clear(uint32_t off, uint64_t mask) const;
  // Issues a one-shot or enabling GCMD command and waits for its GSTS bit to read `want`.
  bool global_command(uint32_t cmd_bit, bool set, uint32_t status_bit) TA_REQ(lock_);
  bool flush_write_buffer() TA_REQ(lock_);
  // One register-interface command of request granularity `type`; false when it timed out or
  // the unit reports that it did not perform it.
  bool context_invalidate(uint64_t type, uint16_t source_id, uint16_t did) TA_REQ(lock_);
  bool iotlb_invalidate(uint64_t type, uint16_t did, uint64_t iva) TA_REQ(lock_);
  // Cleans [p, p + size) from the CPU caches when the unit's table walks do not snoop them.
  void clean(const void* p, size_t size) const;
  void* table_virt(uint64_t phys) const { return pfa_->phys_to_virt(PhysAddr(phys)); }
  volatile uint64_t* context_entry(uint32_t device_id) const;
  // Reason text of fault reason code `reason` for a request of `device_id` at `iova` (walks the
  // device's page table to tell "not mapped" from "permission").
  const char* fault_reason(uint8_t reason, uint16_t device_id, uint64_t iova, bool write) const;
  void free_tables();
  // Queued invalidation: turns the queue on (allocating it once) or off.
  bool qi_enable() TA_REQ(lock_);
  bool qi_disable() TA_REQ(lock_);
  // Queues `n` descriptors (two 64-bit words each) and an invalidation wait descriptor, and polls
  // its status write; false on timeout or an invalidation queue error (FSTS.IQE).
  bool qi_submit(const uint64_t* desc, size_t n) TA_REQ(lock_);

  volatile uint8_t* regs_ = nullptr;
  PhysAddr regs_phys_;
  PageFrameAllocator* pfa_ = nullptr;
  uint64_t (*now_ns_)() = nullptr;
  uint64_t timeout_ns_ = 0;
  bool include_all_ = false;
  IdRange scopes_[kMaxScopes];
  size_t num_scopes_ = 0;

  uint32_t version_ = 0;
  uint64_t cap_ = 0;
  uint64_t ecap_ = 0;
  uint32_t iotlb_off_ = 0;  // ECAP.IRO * 16
  uint32_t frcd_off_ = 0;   // CAP.FRO * 16
  uint32_t num_frcd_ = 0;   // CAP.NFR + 1
  uint8_t aw_ = 0;          // context entry AW: 1 (3 levels) or 2 (4 levels)
  uint8_t iova_bits_ = 0;
  uint32_t max_domains_ = 0;
  bool coherent_ = true;  // ECAP.C
  bool enabled_ = false;
  IoPageTableFormat format_;

  PhysAddr root_table_;  // 0: none
  bool want_qi_ = true;
  bool qi_on_ = false;
  PhysAddr qi_pages_;  // order 1: the queue, then the wait status dword; 0: none
  uint32_t qi_tail_ = 0;
  uint32_t qi_seq_ = 0;
  mutable support::SpinLock lock_;
  mutable support::SpinLock fault_lock_;
  mutable uint64_t timeouts_ = 0;
  uint64_t faults_seen_ = 0;
  uint64_t overflows_ = 0;
};
