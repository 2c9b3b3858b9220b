// Smmuv3: a driver for the Arm System MMU version 3 (SMMUv3, Arm IHI 0070), stage-1 translation
// only, as an IommuUnit (dmakit/iommu_unit.h).
//
// The scheme. The SMMU finds a device's configuration by its StreamID (on a PCI host bridge: the
// requester id after the device tree's iommu-map) in a stream table of 64-byte stream table
// entries (STEs), linear or two-level (a level-1 array of descriptors each pointing at a level-2
// array of 2^8 STEs, allocated the first time a stream under it is attached). An attached stream
// has an STE with Config = stage-1 translate pointing at one context descriptor (CD) of its own:
// the AArch64 translation regime of its domain (TTB0 = the domain's root table, T0SZ = 16 for
// 48-bit IOVAs, 4 KiB granule, ASID = the domain id, TTB1 walks disabled, MAIR attribute 0 =
// Normal write-back). Every other stream of the covered ranges has Config = abort (a level-2 table
// not yet allocated: its streams are invalid, which the SMMU reports as C_BAD_STREAMID). Software
// talks to the SMMU through a command queue in memory (CMD_CFGI_STE / CMD_CFGI_CD_ALL after an
// STE or CD change, CMD_TLBI_NH_VA / CMD_TLBI_NH_ASID for the IOTLB, then CMD_SYNC, whose
// consumption it polls), and reads faults from an event queue (F_TRANSLATION, F_PERMISSION, ...:
// StreamID, input address, read or write), polled: the unit's wired interrupts stay off.
//
// The I/O page tables are the AArch64 VMSAv8-64 stage-1 format with the 4 KiB granule, 4 levels:
// table descriptors 0b11 with the next table's address; level-3 page descriptors 0b11 with
// AttrIndx 0, AP[1] = 1 (unprivileged access allowed, as device transactions usually are), AP[2]
// = 1 for read-only, SH = inner shareable, AF = 1, nG = 1 (entries are tagged with the ASID, so
// that TLBI by ASID removes them) and both execute-never bits. Stage 1 has no write-only
// permission: a write-only mapping (kIommuWrite alone) is granted read and write.
//
// Costs: attach and detach write one STE (and one CD), then run a short command batch; invalidate
// runs one CMD_TLBI_NH_VA per page (one CMD_TLBI_NH_ASID for more than kMaxPageInvalidations
// pages, or for size 0) and one CMD_SYNC; drain_faults reads one 32-byte record per event. Every
// wait for the SMMU is a poll of a register, bounded by Config::poll_limit reads.
//
// Memory: the stream table, the queues and the CDs come from the PageFrameAllocator given to init
// (4 KiB pages, a 16 KiB block per level-2 stream table, and the level-1 table); the unit keeps
// them for its lifetime, except a detached stream's CD, which is freed once the SMMU acknowledged
// the change. When the SMMU's accesses are not coherent with the CPU caches (the firmware does not
// say `dma-coherent`, or SMMU_IDR0.COHACC is 0), every structure the CPU writes is cleaned to
// memory with the kernel's DmaOp before the SMMU is told about it, and event records are
// invalidated before they are read; the I/O page tables are then marked non-coherent too
// (IoPageTableFormat::coherent_walk), which the generic layer honours.
//
// Threading: attach/detach serialise on a configuration lock; the command queue and the event
// queue each have their own spinlock (interrupts masked while held, through the kernel hooks).
// Lock order: configuration, then command queue; either queue's lock, then the global-error one.
// The driver touches only the register frame it was given and memory it allocated.
#pragma once

#include "dmakit/dma_op.h"
#include "dmakit/iommu_unit.h"
#include "dmakit/page_frame_allocator.h"
#include "dmakit/support/addr.h"
#include "dmakit/support/result.h"
#include "dmakit/support/spinlock.h"
#include "dmakit/support/thread_annotations.h"
#include "dmakit/support/types.h"

class Smmuv3 final : public IommuUnit {
 public:
  // A range of StreamIDs behind this SMMU (one iommu-map entry's output range).
  struct StreamRange {
    uint32_t base = 0;
    uint32_t count = 0;
  };
  static constexpr size_t kMaxStreamRanges = 4;
  // Size of the register frame the driver reaches (pages 0 and 1, 64 KiB each).
  static constexpr uint64_t kRegisterFrameSize = 0x20000;
  // Above this many pages, invalidate() drops the whole ASID instead of page by page.
  static constexpr uint64_t kMaxPageInvalidations = 32;
  // IOVAs have 48 bits (T0SZ 16: a 4-level walk from level 0).
  static constexpr uint8_t kIovaBits = 48;

  struct Config {
    // The register frame (kRegisterFrameSize bytes), mapped as device memory. Required.
    volatile void* regs = nullptr;
    // Where the stream table, queues and CDs come from. Required; must outlive the unit.
    PageFrameAllocator* pfa = nullptr;
    // The firmware describes the SMMU's table walks and queue accesses as coherent with the CPU
    // caches (device tree `dma-coherent`, IORT COHACC override). The unit treats them as coherent
    // only if SMMU_IDR0.COHACC agrees.
    bool coherent = false;
    // Cleans / invalidates CPU cache lines (DmaOp::flush and DmaOp::invalidate) for a
    // non-coherent SMMU. Required when the unit ends up non-coherent; unused otherwise.
    DmaOp* cache = nullptr;
    // StreamIDs behind the SMMU (at least one range). covers() answers from these; the stream
    // table is sized for the highest of them.
    StreamRange streams[kMaxStreamRanges] = {};
    size_t num_streams = 0;
    // Register polls before a wait for the SMMU gives up (CR0ACK, CMDQ_CONS, GBPA).
    uint32_t poll_limit = 1'000'000;
  };

  // What init found and chose, for the boot report.
  struct Features {
    uint32_t idr0 = 0;
    uint32_t idr1 = 0;
    uint32_t idr5 = 0;
    uint8_t sid_bits = 0;        // SMMU_IDR1.SIDSIZE
    uint8_t table_sid_bits = 0;  // StreamIDs the stream table covers: [0, 2^table_sid_bits)
    bool two_level = false;      // two-level stream table (else linear)
    bool coherent = false;       // structures and page tables are walked coherently
    bool asid16 = false;
    uint8_t oas_bits = 0;  // output address size
    uint32_t cmdq_entries = 0;
    uint32_t eventq_entries = 0;
  };

  struct Stats {
    uint64_t commands = 0;        // commands written to the queue (CMD_SYNC included)
    uint64_t syncs = 0;           // CMD_SYNCs waited for
    uint64_t sync_failures = 0;   // waits that ended in a timeout or a refused command
    uint64_t cmd_errors = 0;      // commands the SMMU refused (SMMU_GERROR.CMDQ_ERR)
    uint32_t last_cmd_error = 0;  // SMMU_CMDQ_CONS.ERR of the last refusal (1: illegal command)
    uint64_t events = 0;          // event records read
    uint64_t overflows = 0;       // times event records were lost (overflow, write abort)
    uint64_t l2_tables = 0;       // level-2 stream tables allocated
    uint64_t attached = 0;        // streams attached now
  };

  // What the SMMU's STE and CD for a stream say (for tests and reports).
  struct Attachment {
    uint32_t domain = 0;
    PhysAddr root;
  };

  constexpr Smmuv3() = default;
  Smmuv3(const Smmuv3&) = delete;
  Smmuv3& operator=(const Smmuv3&) = delete;

  // Brings the SMMU up: checks that it does stage-1 AArch64 translation with a 4 KiB granule,
  // disables it if the firmware left it enabled, allocates the stream table (every covered stream
  // blocked) and the queues, invalidates every cached configuration and translation, and enables
  // the queues and translation. Call once, thread context, before any other method.
  // On failure nothing is left allocated and the SMMU is left disabled with global bypass
  // (SMMU_GBPA.ABORT clear), so that devices keep the direct path; failure_reason() then says why
  // in a few words. Errors: kInvalidArgument (missing regs / pfa / stream ranges, or a
  // non-coherent SMMU without a DmaOp, or called twice), kNotSupported (no stage 1, no AArch64
  // tables, no 4 KiB granule, big-endian only, stream table too large), kNoMemory (no pages for
  // the tables), kTimedOut (the SMMU did not acknowledge a control-register write or a CMD_SYNC),
  // kIoError (it refused a command).
  Result<void> init(const Config& config);

  // A few words saying why init failed ("" after success or before init).
  const char* failure_reason() const { return failure_; }
  bool enabled() const { return enabled_; }
  const Features& features() const { return features_; }
  // A snapshot of the counters. Any context.
  Stats stats() const;

  // The domain and root table stream `sid` translates with, read back from its STE and CD.
  // Errors: kNotFound (not attached: aborting or never configured), kInvalidArgument (not
  // covered). Thread only.
  Result<Attachment> attachment(uint32_t sid) const;

  // --- IommuUnit ------------------------------------------------------------------------------
  const char* name() const override { return "smmuv3"; }
  const IoPageTableFormat& format() const override { return format_; }
  uint8_t iova_bits() const override { return kIovaBits; }
  bool covers(uint32_t device_id) const override;
  // Errors also: kInvalidArgument for a root that is not 4 KiB aligned or beyond the output
  // address size.
  Result<void> attach(uint32_t device_id, uint32_t domain, PhysAddr root) override;
  void detach(uint32_t device_id) override;
  void invalidate(uint32_t domain, uint64_t iova, uint64_t size) override;
  uint32_t max_domains() const override { return features_.asid16 ? 0xFFFFu : 0xFFu; }
  // Turns translation and the queues off (SMMUEN = 0) with global bypass (SMMU_GBPA.ABORT
  // clear): devices reach physical memory directly again, and covers() answers false from then
  // on. False when the SMMU did not acknowledge it. The memory the unit holds is kept (the SMMU
  // may still have fetched from it). Thread only.
  bool disable() override;
  // A device's faulting burst records one event per bus transaction (a 4 KiB DMA into an
  // unmapped page: hundreds); consecutive records of the same stream, reason, direction and
  // 4 KiB page are reported once, with the first record's address, and counted once. Records
  // the SMMU could not queue are lost (Stats::overflows).
  size_t drain_faults(void (*sink)(void* ctx, const IommuFault& fault), void* ctx) override;

  // --- The page-table format (IoPageTableFormat's functions) ----------------------------------
  static uint64_t table_entry(uint64_t table);
  static uint64_t page_entry(uint64_t page, unsigned perm);
  static bool entry_valid(uint64_t entry);
  static uint64_t entry_addr(uint64_t entry);
  // The IommuPerm bits a page entry grants (kIommuRead, plus kIommuWrite unless read-only).
  static unsigned entry_perm(uint64_t entry);

  // The text drain_faults reports for event type `type` (static).
  static const char* event_reason(uint8_t type);

 private:
  struct Queue {
    PhysAddr base;
    uint64_t* va = nullptr;  // entries, dwords_per_entry 64-bit words each
    uint32_t log2_entries = 0;
    uint32_t dwords = 0;  // 64-bit words per entry
    uint32_t prod = 0;    // index with the wrap bit (bit log2_entries)
    uint32_t cons = 0;
  };
  struct Event {
    uint64_t dw[4];
  };

  uint32_t read32(uint32_t off) const;
  void write32(uint32_t off, uint32_t value) const;
  void write64(uint32_t off, uint64_t value) const;
  Result<void> write_cr0(uint32_t value);
  bool set_global_bypass();
  void clean(const void* va, size_t size) const;
  void invalidate_cpu(const void* va, size_t size) const;
  void* virt(PhysAddr p) const { return pfa_->phys_to_virt(p); }
  void release_memory();
  ErrorCode fail(const char* why, ErrorCode code) {
    failure_ = why;
    return code;
  }

  // The STE of `sid`, or null (level-2 table absent and `allocate` false). Errors: kNoMemory.
  Result<volatile uint64_t*> ste(uint32_t sid, bool allocate) TA_REQ(cfg_lock_);
  const volatile uint64_t* ste_if_present(uint32_t sid) const;
  void write_abort_ste(volatile uint64_t* ste) const;

  // Command queue: `n` commands of two dwords each, then a CMD_SYNC, waited for.
  Result<void> submit(const uint64_t (*cmds)[2], size_t n) TA_EXCL(cmdq_lock_);
  Result<void> push_locked(const uint64_t cmd[2]) TA_REQ(cmdq_lock_);
  Result<void> wait_consumed_locked(uint32_t index) TA_REQ(cmdq_lock_);
  void recover_cmd_error_locked() TA_REQ(cmdq_lock_);
  // Acknowledges the active global errors among `bits` (SMMU_GERRORN); true if any was active.
  bool ack_gerror(uint32_t bits) TA_EXCL(gerror_lock_);

  IoPageTableFormat format_{};
  volatile uint8_t* regs_ = nullptr;
  PageFrameAllocator* pfa_ = nullptr;
  DmaOp* cache_ = nullptr;
  StreamRange streams_[kMaxStreamRanges] = {};
  size_t num_streams_ = 0;
  uint32_t poll_limit_ = 0;
  Features features_{};
  bool enabled_ = false;
  bool initialised_ = false;
  const char* failure_ = "";
  uint32_t ias_ips_ = 0;  // CD.IPS encoding

  // Stream table: linear (strtab_ holds every STE) or two-level (strtab_ holds the level-1
  // descriptors, whose L2Ptr fields are the only record of the level-2 tables).
  PhysAddr strtab_;
  unsigned strtab_order_ = 0;
  uint64_t* strtab_va_ = nullptr;
  uint32_t l1_entries_ = 0;

  mutable support::SpinLock cfg_lock_;
  mutable support::SpinLock cmdq_lock_;
  mutable support::SpinLock evtq_lock_;
  mutable support::SpinLock gerror_lock_;  // innermost: SMMU_GERRORN updates
  Queue cmdq_ TA_GUARDED(cmdq_lock_);
  Queue evtq_ TA_GUARDED(evtq_lock_);
  Stats stats_cmd_ TA_GUARDED(cmdq_lock_);
  Stats stats_evt_ TA_GUARDED(evtq_lock_);
  uint64_t l2_tables_ TA_GUARDED(cfg_lock_) = 0;
  uint64_t attached_ TA_GUARDED(cfg_lock_) = 0;
};
