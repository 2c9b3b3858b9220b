// RiscvIommu: the driver of one RISC-V IOMMU (the RISC-V IOMMU Architecture Specification 1.0),
// an IommuUnit for the generic IOMMU layer (dmakit/iommu_unit.h).
//
// Scheme. The unit finds each device's context through the device directory table (DDT), a radix
// tree indexed by the requester id (PCI bus << 8 | device << 3 | function): 1 to 3 levels of 4 KiB
// pages, the leaf pages holding device contexts (DC: 32 bytes, or 64 in the extended format the
// hardware uses when it has MSI page tables, capabilities.MSI_FLAT). init() picks the fewest
// levels that index every 16-bit requester id (2 levels for base-format DCs, 3 for extended ones)
// and allocates only the root (a unit without that mode gets the most levels it accepts, and
// covers only the ids they index); inner and leaf pages are allocated the first time a device
// under them is attached and kept. Every DC starts invalid (tc.V = 0): the unit reports "DDT entry
// not valid" and blocks the device's DMA until attach().
//
// Translation: first stage only. A DC points its fsc (iosatp) at the domain's root table in Sv39
// (or Sv48 when Sv39 is absent) with the domain id as its PSCID; iohgatp stays Bare and msiptp
// Off. Why not the G-stage (iohgatp Sv39x4): its root table is 16 KiB (two extra index bits),
// which is not the 4 KiB-per-level tree the generic IoPageTable builds, and its IOVAs would be
// guest-physical addresses that exist only for a hypervisor; the first stage walks exactly the
// Sv39/Sv48 tree, and its PSCID tags the IOTLB per domain. The leaves are Sv39/Sv48 PTEs with
// V, R, W, A, D and U (a transaction without a process id is a user-privilege access); A and D
// are set when an entry is written, so the hardware never needs to update them (tc.SADE = 0).
// Write-only (W without R) is a reserved encoding: a write permission also grants read.
//
// MSIs: a device's MSI to an IMSIC interrupt file is a DMA write like any other and goes through
// the first stage (the MSI page tables apply to guest-physical addresses after a G-stage, which
// this driver does not use). The generic layer maps the interrupt-file pages of every hart
// (arch::iommu_msi_pages) in every domain.
//
// Commands go through the command queue (256 entries of 16 bytes); each batch ends with an
// IOFENCE.C whose completion write (AV = 1) to a word in memory is polled, so invalidate() and
// attach() return only once the unit has acted. Faults are read from the fault queue (2048
// records of 32 bytes) by drain_faults(); records lost to a full queue are counted
// (Stats::fault_overflows) and recording resumes at the next drain. The unit's interrupts (fault
// and command queue) are left off: the kernel polls drain_faults.
//
// Memory: the DDT pages, the two queues and the fence word come from the PageFrameAllocator given
// to init() and are never given back (the unit lives as long as the kernel). The unit's accesses
// to them are taken as cache coherent (the specification has no non-coherent mode; QEMU's model
// is coherent), and so is its page-table walk (format().coherent_walk).
//
// Costs: invalidate() of n pages is n + 1 commands, one tail write and one fence wait (a range
// over 64 pages, or size 0, is one whole-PSCID command); attach()/detach() are a DDT walk, two
// fences and at most three page allocations; drain_faults() is three MMIO reads plus one record
// read per fault.
//
// Threading: attach and detach are thread only; invalidate and drain_faults any context. The
// command queue and the DDT are serialised by one lock (interrupts masked), the fault queue by
// another.
#pragma once

#include "dmakit/iommu_unit.h"
#include "dmakit/page_frame_allocator.h"
#include "dmakit/support/addr.h"
#include "dmakit/support/result.h"
#include "dmakit/support/spinlock.h"
#include "dmakit/support/thread_annotations.h"
#include "dmakit/support/types.h"

struct RiscvIommuConfig {
  // The unit's registers (PCI BAR0, or the platform device's region), mapped as device memory,
  // at least 4 KiB. Caller-owned; must stay mapped for the unit's lifetime.
  volatile void* regs = nullptr;
  // Where the DDT, queues and fence word come from (and phys_to_virt to reach them).
  PageFrameAllocator* pfa = nullptr;
  // The unit's own requester id when it is a PCI function: covers() excludes it, so that it is
  // never attached to a domain (its own DMA to its queues and tables is not translated by
  // itself). ~0u: none (a platform device).
  uint32_t own_device_id = ~0u;
  // A monotonic clock in nanoseconds for the hardware timeouts; null: the waits count polls
  // instead (kPollLimit).
  uint64_t (*now_ns)() = nullptr;
  uint64_t timeout_ns = 100'000'000;  // 100 ms per hardware wait.
};

class RiscvIommu final : public IommuUnit {
 public:
  // Register offsets and fields used (specification chapter 5).
  static constexpr uint32_t kRegCapabilities = 0x00;
  static constexpr uint32_t kRegFctl = 0x08;
  static constexpr uint32_t kRegDdtp = 0x10;
  static constexpr uint32_t kRegCqb = 0x18;
  static constexpr uint32_t kRegCqh = 0x20;
  static constexpr uint32_t kRegCqt = 0x24;
  static constexpr uint32_t kRegFqb = 0x28;
  static constexpr uint32_t kRegFqh = 0x30;
  static constexpr uint32_t kRegFqt = 0x34;
  static constexpr uint32_t kRegPqb = 0x38;
  static constexpr uint32_t kRegCqcsr = 0x48;
  static constexpr uint32_t kRegFqcsr = 0x4C;
  static constexpr uint32_t kRegPqcsr = 0x50;
  static constexpr uint32_t kRegIpsr = 0x54;
  static constexpr uint32_t kRegIcvec = 0x2F8;

  static constexpr uint64_t kCapVersionMask = 0xFF;
  static constexpr uint64_t kCapSv39 = 1ull << 9;
  static constexpr uint64_t kCapSv48 = 1ull << 10;
  static constexpr uint64_t kCapMsiFlat = 1ull << 22;
  static constexpr uint64_t kCapEnd = 1ull << 27;

  static constexpr uint64_t kDdtpModeOff = 0;
  static constexpr uint64_t kDdtpModeBare = 1;
  static constexpr uint64_t kDdtpMode1Lvl = 2;  // 2LVL = 3, 3LVL = 4
  static constexpr uint64_t kDdtpModeMask = 0xF;
  static constexpr uint64_t kDdtpBusy = 1ull << 4;

  static constexpr uint32_t kQueueEnable = 1u << 0;
  static constexpr uint32_t kQueueIntrEnable = 1u << 1;
  static constexpr uint32_t kQueueMemFault = 1u << 8;
  static constexpr uint32_t kQueueOverflow = 1u << 9;  // fqcsr.FQOF
  static constexpr uint32_t kCqcsrCmdTimeout = 1u << 9;
  static constexpr uint32_t kCqcsrCmdIllegal = 1u << 10;
  static constexpr uint32_t kQueueOn = 1u << 16;
  static constexpr uint32_t kQueueBusy = 1u << 17;

  // Sv39 / Sv48 page-table entry bits (the privileged architecture's, which the IOMMU walks).
  static constexpr uint64_t kPteV = 1ull << 0;
  static constexpr uint64_t kPteR = 1ull << 1;
  static constexpr uint64_t kPteW = 1ull << 2;
  static constexpr uint64_t kPteX = 1ull << 3;
  static constexpr uint64_t kPteU = 1ull << 4;
  static constexpr uint64_t kPteA = 1ull << 6;
  static constexpr uint64_t kPteD = 1ull << 7;
  static constexpr unsigned kPtePpnShift = 10;
  static constexpr uint64_t kPtePpnMask = (1ull << 44) - 1;

  static constexpr uint32_t kCqEntries = 256;  // 16-byte commands: one page
  // 32-byte records: 64 KiB (2^kFqOrder pages, aligned to its size as the unit requires). A
  // blocked transfer can be reported piece by piece (QEMU's model: one record per 4-byte access,
  // so 1024 for a blocked 4 KiB transfer); the queue holds that without overflowing.
  static constexpr uint32_t kFqEntries = 2048;
  static constexpr unsigned kFqOrder = 4;
  static constexpr uint64_t kPollLimit = 10'000'000;
  static constexpr uint32_t kMaxDeviceId = 0xFFFF;

  // The entry formats (IoPageTableFormat's functions), public so that tests and tools build
  // tables the unit walks.
  static uint64_t table_entry(uint64_t table);
  static uint64_t page_entry(uint64_t page, unsigned perm);
  static bool entry_valid(uint64_t entry);
  static uint64_t entry_addr(uint64_t entry);

  // A device's current attachment, as its device context says.
  struct Attachment {
    uint32_t domain = 0;
    PhysAddr root;
  };

  // Counters, for reports and tests (read racily).
  struct Stats {
    uint64_t commands = 0;         // commands queued, fences included
    uint64_t fences = 0;           // IOFENCE.C waited for
    uint64_t fence_failures = 0;   // a fence that timed out or a queue error (cqcsr) seen
    uint64_t faults = 0;           // fault records drained
    uint64_t fault_overflows = 0;  // fqcsr.FQOF seen (records were lost)
    uint64_t pages = 0;  // pages taken from the allocator (queues, fence word, DDT), never freed
  };

  constexpr RiscvIommu() = default;
  RiscvIommu(const RiscvIommu&) = delete;
  RiscvIommu& operator=(const RiscvIommu&) = delete;

  // Brings the unit up: checks the version (1.x) and that it walks Sv39 or Sv48 and is
  // little-endian, turns its interrupts off (fctl.WSI = 0, no queue interrupt enables), sets up
  // and enables the command and fault queues, and points ddtp at an empty DDT (every device
  // blocked). Boot CPU, thread context, once. On error nothing is left enabled: the queues are
  // off and ddtp is as found (Off or Bare); release_to_bare() then puts the unit in pass-through.
  // Errors: kInvalidArgument (null regs or pfa), kBusy (already initialised), kNotSupported
  // (another major version, no Sv39/Sv48, big-endian only, no 1/2/3-level DDT mode),
  // kNoMemory (no pages for the tables), kTimedOut (a queue or ddtp did not
  // settle), kIoError (a queue reported a memory fault on enable).
  Result<void> init(const RiscvIommuConfig& cfg);

  // For a kernel that will not use the unit (init failed, or the IOMMU is not wanted): puts ddtp
  // in Bare mode, where every device's DMA passes untranslated, and the queues off. Boot CPU.
  // Errors: kInvalidArgument (null regs), kTimedOut (ddtp stayed busy), kNotSupported (the unit
  // does not accept Bare from its current mode).
  static Result<void> release_to_bare(volatile void* regs, uint64_t (*now_ns)(),
                                      uint64_t timeout_ns);

  // IommuUnit.
  const char* name() const override { return "riscv-iommu"; }
  const IoPageTableFormat& format() const override { return format_; }
  uint8_t iova_bits() const override { return iova_bits_; }
  bool covers(uint32_t device_id) const override;
  Result<void> attach(uint32_t device_id, uint32_t domain, PhysAddr root) override;
  void detach(uint32_t device_id) override;
  void invalidate(uint32_t domain, uint64_t iova, uint64_t size) override;
  uint32_t max_domains() const override { return kMaxPscid; }
  // Puts ddtp in Bare mode (every device's DMA passes untranslated: the direct path), drops the
  // unit's cached contexts and translations and turns the queues off; covers() is false from
  // then on. False when the unit did not take Bare (devices then stay blocked). Thread only.
  bool disable() override;
  size_t drain_faults(void (*sink)(void* ctx, const IommuFault& fault), void* ctx) override;

  // The attachment of `device_id`. Errors: kNotFound (not attached), kInvalidArgument (not
  // covered). Thread only.
  Result<Attachment> attachment(uint32_t device_id);

  // For reports: capabilities as read, DDT levels (1-3), whether DCs are the 64-byte extended
  // format, the first-stage mode ("sv39"/"sv48").
  uint64_t capabilities() const { return caps_; }
  unsigned ddt_levels() const { return ddt_levels_; }
  bool extended_dc() const { return dc_bytes_ == 64; }
  const char* stage_mode() const { return format_.levels == 3 ? "sv39" : "sv48"; }
  Stats stats() const;
  bool initialized() const { return initialized_; }

  // The text a fault cause code (fault record CAUSE) stands for ("read page fault", ...).
  static const char* cause_text(uint32_t cause);

 private:
  static constexpr uint32_t kMaxPscid = (1u << 20) - 1;

  uint32_t read32(uint32_t off) const;
  uint64_t read64(uint32_t off) const;
  void write32(uint32_t off, uint32_t v) const;
  void write64(uint32_t off, uint64_t v) const;
  bool wait_bits32(uint32_t off, uint32_t mask, uint32_t want) const;
  bool timed_out(uint64_t start, uint64_t polls) const;
  uint64_t now() const;
  void* va(PhysAddr p) const { return pfa_->phys_to_virt(p); }
  // Thread only (init, attach).
  Result<PhysAddr> alloc_zeroed_page(unsigned order = 0);
  Result<void> enable_queue(uint32_t base_reg, uint32_t csr_reg, PhysAddr page, uint32_t entries);
  void disable_queues();

  // The DC of `device_id`, allocating the DDT pages on the way if `create`; null when absent
  // (or no memory: *no_memory set).
  volatile uint64_t* dc_locked(uint32_t device_id, bool create, bool* no_memory) TA_REQ(cq_lock_);
  // Writes one command into the queue (waits while the queue is full); the unit sees it at the
  // next publish_locked (fence_locked publishes). False on a queue error or timeout.
  bool queue_locked(uint64_t dword0, uint64_t dword1) TA_REQ(cq_lock_);
  // Hands every command written so far to the unit (one tail write).
  void publish_locked() TA_REQ(cq_lock_);
  // Queues IOFENCE.C and waits for its completion write. False on error or timeout.
  bool fence_locked() TA_REQ(cq_lock_);
  void inval_ddt_locked(uint32_t device_id) TA_REQ(cq_lock_);
  bool describe_unmapped(uint32_t device_id, uint64_t iova);

  volatile uint8_t* regs_ = nullptr;
  PageFrameAllocator* pfa_ = nullptr;
  uint64_t (*now_ns_)() = nullptr;
  uint64_t timeout_ns_ = 0;
  uint32_t own_device_id_ = ~0u;
  uint64_t caps_ = 0;
  IoPageTableFormat format_;
  uint8_t iova_bits_ = 0;
  uint64_t fsc_mode_ = 0;
  unsigned ddt_levels_ = 0;
  uint32_t max_device_id_ = 0;  // the highest requester id the DDT indexes
  unsigned dc_bytes_ = 32;
  bool initialized_ = false;

  support::SpinLock cq_lock_;
  PhysAddr ddt_root_;
  PhysAddr cq_page_;
  uint32_t cq_tail_ TA_GUARDED(cq_lock_) = 0;       // next slot to write
  uint32_t cq_published_ TA_GUARDED(cq_lock_) = 0;  // the tail the unit was given
  PhysAddr fence_page_;
  uint32_t fence_seq_ TA_GUARDED(cq_lock_) = 0;

  support::SpinLock fq_lock_;
  PhysAddr fq_page_;

  Stats stats_;
};
