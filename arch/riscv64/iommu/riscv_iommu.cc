// The RISC-V IOMMU driver (dmakit/arch/riscv_iommu.h has the scheme). Register layouts and field
// values are those of the RISC-V IOMMU Architecture Specification 1.0.
#include "dmakit/arch/riscv_iommu.h"

#include "dmakit/arch/cpu_relax.h"
#include "dmakit/support/mem.h"

namespace {

// Every earlier access (memory or MMIO) is ordered before every later one. The driver's ordering
// points (publishing a command before its tail write, reading a record after the tail read,
// writing a DC before invalidating it) are all rare enough that a full fence costs nothing.
inline void full_fence() {
#if defined(__riscv)
  __asm__ volatile("fence iorw, iorw" ::: "memory");
#else
  __atomic_thread_fence(__ATOMIC_SEQ_CST);
#endif
}

// Command opcodes and fields (specification 3.1).
constexpr uint64_t kOpIotinval = 1;  // func3 0: VMA
constexpr uint64_t kOpIofence = 2;   // func3 0: C
constexpr uint64_t kOpIodir = 3;     // func3 0: INVAL_DDT
constexpr uint64_t kCmdAv = 1ull << 10;
constexpr unsigned kCmdPscidShift = 12;
constexpr uint64_t kCmdPscv = 1ull << 32;
constexpr uint64_t kCmdDv = 1ull << 33;
constexpr unsigned kCmdDidShift = 40;
constexpr unsigned kFenceDataShift = 32;

// Device-context fields (specification 2.1).
constexpr uint64_t kTcV = 1ull << 0;
constexpr unsigned kAtpModeShift = 60;
constexpr uint64_t kAtpPpnMask = (1ull << 44) - 1;
constexpr unsigned kTaPscidShift = 12;
constexpr uint64_t kFscModeSv39 = 8;
constexpr uint64_t kFscModeSv48 = 9;
// DC qwords: tc, iohgatp, ta, fsc, then (extended format) msiptp, msi_addr_mask,
// msi_addr_pattern, reserved.
constexpr unsigned kDcTc = 0;
constexpr unsigned kDcTa = 2;
constexpr unsigned kDcFsc = 3;

// DDT non-leaf entry: V and PPN[53:10].
constexpr uint64_t kDdteV = 1ull << 0;
constexpr unsigned kPpnShift = 10;
constexpr uint64_t kPpnField = ((1ull << 44) - 1) << kPpnShift;

// Fault record (specification 3.2).
constexpr uint64_t kFqCauseMask = 0xFFF;
constexpr unsigned kFqTtypShift = 34;
constexpr uint64_t kFqTtypMask = 0x3F;
constexpr unsigned kFqDidShift = 40;
constexpr uint64_t kFqDidMask = 0xFFFFFF;

constexpr uint64_t kPage = PageFrameAllocator::kPageSize;
static_assert(RiscvIommu::kCqEntries * 16 == kPage, "the command queue is one page");
static_assert(RiscvIommu::kFqEntries * 32 == kPage << RiscvIommu::kFqOrder,
              "the fault queue fills its block");

// Counters are written under a lock but read without one (stats()).
void bump(uint64_t& counter) {
  __atomic_fetch_add(&counter, uint64_t{1}, __ATOMIC_RELAXED);
}

uint64_t ppn_field(PhysAddr p) {
  return (p.value() >> 12) << kPpnShift;
}
PhysAddr from_ppn_field(uint64_t v) {
  return PhysAddr(((v & kPpnField) >> kPpnShift) << 12);
}

// log2 of a power of two.
uint32_t log2_of(uint32_t v) {
  return static_cast<uint32_t>(31 - __builtin_clz(v));
}

}  // namespace

uint64_t RiscvIommu::table_entry(uint64_t table) {
  return ((table >> 12) << kPtePpnShift) | kPteV;
}

uint64_t RiscvIommu::page_entry(uint64_t page, unsigned perm) {
  // R is always set: W without R is reserved, so a write permission grants read too.
  uint64_t e = ((page >> 12) << kPtePpnShift) | kPteV | kPteU | kPteA | kPteR;
  if ((perm & kIommuWrite) != 0) e |= kPteW | kPteD;
  return e;
}

bool RiscvIommu::entry_valid(uint64_t entry) {
  return (entry & kPteV) != 0;
}

uint64_t RiscvIommu::entry_addr(uint64_t entry) {
  return ((entry >> kPtePpnShift) & kPtePpnMask) << 12;
}

uint32_t RiscvIommu::read32(uint32_t off) const {
  return *reinterpret_cast<volatile uint32_t*>(regs_ + off);
}
uint64_t RiscvIommu::read64(uint32_t off) const {
  return *reinterpret_cast<volatile uint64_t*>(regs_ + off);
}
void RiscvIommu::write32(uint32_t off, uint32_t v) const {
  *reinterpret_cast<volatile uint32_t*>(regs_ + off) = v;
}
void RiscvIommu::write64(uint32_t off, uint64_t v) const {
  *reinterpret_cast<volatile uint64_t*>(regs_ + off) = v;
}

uint64_t RiscvIommu::now() const {
  return now_ns_ != nullptr ? now_ns_() : 0;
}

bool RiscvIommu::timed_out(uint64_t start, uint64_t polls) const {
  if (now_ns_ != nullptr) return now_ns_() - start > timeout_ns_;
  return polls > kPollLimit;
}

bool RiscvIommu::wait_bits32(uint32_t off, uint32_t mask, uint32_t want) const {
  uint64_t start = now();
  for (uint64_t polls = 0;; ++polls) {
    if ((read32(off) & mask) == want) return true;
    if (timed_out(start, polls)) return false;
    support::cpu_relax();
  }
}

Result<PhysAddr> RiscvIommu::alloc_zeroed_page(unsigned order) {
  TRY_ASSIGN(PhysAddr p, pfa_->alloc(order));
  support::fill_bytes(va(p), 0, kPage << order);
  __atomic_fetch_add(&stats_.pages, uint64_t{1} << order, __ATOMIC_RELAXED);
  return p;
}

Result<void> RiscvIommu::enable_queue(uint32_t base_reg, uint32_t csr_reg, PhysAddr page,
                                      uint32_t entries) {
  // LOG2SZ-1 in bits 4:0, the PPN in 53:10; the queue holds 2^(LOG2SZ-1 + 1) entries.
  write64(base_reg, ppn_field(page) | (log2_of(entries) - 1));
  full_fence();
  write32(csr_reg, kQueueEnable);
  if (!wait_bits32(csr_reg, kQueueOn | kQueueBusy, kQueueOn)) return ErrorCode::kTimedOut;
  if ((read32(csr_reg) & kQueueMemFault) != 0) return ErrorCode::kIoError;
  return support::ok();
}

void RiscvIommu::disable_queues() {
  write32(kRegCqcsr, 0);
  write32(kRegFqcsr, 0);
  (void)wait_bits32(kRegCqcsr, kQueueOn | kQueueBusy, 0);
  (void)wait_bits32(kRegFqcsr, kQueueOn | kQueueBusy, 0);
}

Result<void> RiscvIommu::init(const RiscvIommuConfig& cfg) {
  if (cfg.regs == nullptr || cfg.pfa == nullptr) return ErrorCode::kInvalidArgument;
  if (initialized_ || regs_ != nullptr) return ErrorCode::kBusy;
  regs_ = static_cast<volatile uint8_t*>(cfg.regs);
  pfa_ = cfg.pfa;
  now_ns_ = cfg.now_ns;
  timeout_ns_ = cfg.timeout_ns;
  own_device_id_ = cfg.own_device_id;

  caps_ = read64(kRegCapabilities);
  // Version 1.x (major in bits 7:4). A unit that reads all ones is absent or not decoding.
  if (caps_ == ~0ull || ((caps_ & kCapVersionMask) >> 4) != 1) {
    regs_ = nullptr;
    return ErrorCode::kNotSupported;
  }
  if ((caps_ & kCapSv39) != 0) {
    format_.levels = 3;
    fsc_mode_ = kFscModeSv39;
  } else if ((caps_ & kCapSv48) != 0) {
    format_.levels = 4;
    fsc_mode_ = kFscModeSv48;
  } else {
    regs_ = nullptr;
    return ErrorCode::kNotSupported;
  }
  // Sv39/Sv48 addresses are sign-extended from their top bit; the I/O address space is the
  // non-negative half.
  iova_bits_ = static_cast<uint8_t>(12 + (9 * format_.levels) - 1);
  format_.coherent_walk = true;
  format_.table_entry = &table_entry;
  format_.page_entry = &page_entry;
  format_.entry_valid = &entry_valid;
  format_.entry_addr = &entry_addr;
  dc_bytes_ = (caps_ & kCapMsiFlat) != 0 ? 64 : 32;
  // Levels to index 16 requester-id bits: the leaf page takes log2(4096 / dc_bytes) bits, each
  // level above 9. A unit without that mode gets fewer levels (and covers fewer ids), below.
  unsigned leaf_bits = dc_bytes_ == 64 ? 6 : 7;
  ddt_levels_ = leaf_bits + 9 >= 16 ? 2 : 3;

  uint64_t ddtp = read64(kRegDdtp);
  uint64_t mode = ddtp & kDdtpModeMask;
  if (mode != kDdtpModeOff && mode != kDdtpModeBare) {
    // Someone (firmware, an earlier kernel) left it translating: the tables it walks are not
    // ours, and the mode may only change through Off or Bare.
    regs_ = nullptr;
    return ErrorCode::kBusy;
  }
  // fctl may change only while the queues are off and ddtp is Off or Bare: little-endian
  // structures, MSI interrupts (none enabled).
  if ((caps_ & kCapEnd) == 0 && (read32(kRegFctl) & 1u) != 0) {
    regs_ = nullptr;
    return ErrorCode::kNotSupported;  // big-endian only
  }
  write32(kRegFctl, 0);

  auto fail = [&](ErrorCode e) -> Result<void> {
    disable_queues();
    regs_ = nullptr;
    return e;
  };
  // The pages below are kept on failure too: a unit that failed may still have read them, and
  // the boot-time loss is a few pages.
  auto cq = alloc_zeroed_page();
  auto fq = alloc_zeroed_page(kFqOrder);
  auto fence = alloc_zeroed_page();
  auto root = alloc_zeroed_page();
  if (!cq.ok() || !fq.ok() || !fence.ok() || !root.ok()) return fail(ErrorCode::kNoMemory);
  cq_page_ = *cq;
  fq_page_ = *fq;
  fence_page_ = *fence;
  ddt_root_ = *root;

  if (auto r = enable_queue(kRegCqb, kRegCqcsr, cq_page_, kCqEntries); !r.ok()) {
    return fail(r.code());
  }
  {
    support::Guard<support::SpinLock> guard{&cq_lock_};
    cq_tail_ = read32(kRegCqt);
    cq_published_ = cq_tail_;
  }
  if (auto r = enable_queue(kRegFqb, kRegFqcsr, fq_page_, kFqEntries); !r.ok()) {
    return fail(r.code());
  }

  full_fence();
  // The unit keeps its old mode when asked for one it does not support: then fewer levels.
  for (;; --ddt_levels_) {
    uint64_t want = kDdtpMode1Lvl + (ddt_levels_ - 1);
    write64(kRegDdtp, ppn_field(ddt_root_) | want);
    uint64_t start = now();
    for (uint64_t polls = 0; (read64(kRegDdtp) & kDdtpBusy) != 0; ++polls) {
      if (timed_out(start, polls)) return fail(ErrorCode::kTimedOut);
      support::cpu_relax();
    }
    if ((read64(kRegDdtp) & kDdtpModeMask) == want) break;
    if (ddt_levels_ == 1) return fail(ErrorCode::kNotSupported);
  }
  unsigned id_bits = leaf_bits + (9 * (ddt_levels_ - 1));
  max_device_id_ = id_bits >= 16 ? kMaxDeviceId : (1u << id_bits) - 1;
  // Anything the unit cached while in Bare mode goes.
  {
    support::Guard<support::SpinLock> guard{&cq_lock_};
    bool ok = queue_locked(kOpIodir, 0) && queue_locked(kOpIotinval, 0) && fence_locked();
    if (!ok) {
      write64(kRegDdtp, kDdtpModeOff);
      return fail(ErrorCode::kTimedOut);
    }
  }
  initialized_ = true;
  return support::ok();
}

Result<void> RiscvIommu::release_to_bare(volatile void* regs, uint64_t (*now_ns)(),
                                         uint64_t timeout_ns) {
  if (regs == nullptr) return ErrorCode::kInvalidArgument;
  RiscvIommu tmp;
  tmp.regs_ = static_cast<volatile uint8_t*>(regs);
  tmp.now_ns_ = now_ns;
  tmp.timeout_ns_ = timeout_ns;
  // Bare is reachable from every mode (a translating one may only go to Off or Bare).
  tmp.write64(kRegDdtp, kDdtpModeBare);
  uint64_t start = tmp.now();
  for (uint64_t polls = 0; (tmp.read64(kRegDdtp) & kDdtpBusy) != 0; ++polls) {
    if (tmp.timed_out(start, polls)) return ErrorCode::kTimedOut;
    support::cpu_relax();
  }
  tmp.disable_queues();
  if ((tmp.read64(kRegDdtp) & kDdtpModeMask) != kDdtpModeBare) return ErrorCode::kNotSupported;
  return support::ok();
}

bool RiscvIommu::disable() {
  if (!initialized_) return false;
  support::Guard<support::SpinLock> guard{&cq_lock_};
  initialized_ = false;
  write64(kRegDdtp, kDdtpModeBare);
  uint64_t start = now();
  for (uint64_t polls = 0; (read64(kRegDdtp) & kDdtpBusy) != 0; ++polls) {
    if (timed_out(start, polls)) return false;
    support::cpu_relax();
  }
  if ((read64(kRegDdtp) & kDdtpModeMask) != kDdtpModeBare) return false;
  // Nothing cached from the tables may be used if translation is ever turned on again.
  (void)(queue_locked(kOpIodir, 0) && queue_locked(kOpIotinval, 0) && fence_locked());
  disable_queues();
  return true;
}

bool RiscvIommu::covers(uint32_t device_id) const {
  return initialized_ && device_id <= max_device_id_ && device_id != own_device_id_;
}

volatile uint64_t* RiscvIommu::dc_locked(uint32_t device_id, bool create, bool* no_memory) {
  unsigned leaf_bits = dc_bytes_ == 64 ? 6 : 7;
  PhysAddr table = ddt_root_;
  for (unsigned level = ddt_levels_ - 1; level > 0; --level) {
    unsigned shift = leaf_bits + (9 * (level - 1));
    uint32_t index = (device_id >> shift) & 511u;
    volatile uint64_t* entries = static_cast<volatile uint64_t*>(va(table));
    uint64_t e = entries[index];
    if ((e & kDdteV) == 0) {
      if (!create) return nullptr;
      auto page = alloc_zeroed_page();
      if (!page.ok()) {
        *no_memory = true;
        return nullptr;
      }
      full_fence();  // The zeroed page before the entry that makes it reachable.
      e = ppn_field(*page) | kDdteV;
      entries[index] = e;
    }
    table = from_ppn_field(e);
  }
  uint32_t index = device_id & ((1u << leaf_bits) - 1);
  return static_cast<volatile uint64_t*>(va(table)) + (size_t{index} * (dc_bytes_ / 8));
}

bool RiscvIommu::queue_locked(uint64_t dword0, uint64_t dword1) {
  const uint32_t mask = kCqEntries - 1;
  uint32_t next = (cq_tail_ + 1) & mask;
  uint64_t start = now();
  if (next == (read32(kRegCqh) & mask)) publish_locked();  // full: let the unit drain it
  for (uint64_t polls = 0; next == (read32(kRegCqh) & mask); ++polls) {
    if ((read32(kRegCqcsr) & (kQueueMemFault | kCqcsrCmdIllegal | kCqcsrCmdTimeout)) != 0 ||
        timed_out(start, polls)) {
      bump(stats_.fence_failures);
      return false;
    }
    support::cpu_relax();
  }
  volatile uint64_t* slot = static_cast<volatile uint64_t*>(va(cq_page_)) + (size_t{2} * cq_tail_);
  slot[0] = dword0;
  slot[1] = dword1;
  cq_tail_ = next;
  bump(stats_.commands);
  return true;
}

void RiscvIommu::publish_locked() {
  if (cq_published_ == cq_tail_) return;
  full_fence();  // The commands in memory before the tail that hands them to the unit.
  write32(kRegCqt, cq_tail_);
  cq_published_ = cq_tail_;
}

bool RiscvIommu::fence_locked() {
  volatile uint32_t* word = static_cast<volatile uint32_t*>(va(fence_page_));
  uint32_t seq = ++fence_seq_;
  if (seq == 0) seq = ++fence_seq_;  // 0 is what the word holds before any fence
  // IOFENCE.C, AV = 1: once every earlier command is done the unit writes DATA to ADDR
  // (dword1 = ADDR[63:2]).
  uint64_t d0 = kOpIofence | kCmdAv | (uint64_t{seq} << kFenceDataShift);
  if (!queue_locked(d0, fence_page_.value() >> 2)) return false;
  publish_locked();
  bump(stats_.fences);
  uint64_t start = now();
  for (uint64_t polls = 0; *word != seq; ++polls) {
    if ((read32(kRegCqcsr) & (kQueueMemFault | kCqcsrCmdIllegal | kCqcsrCmdTimeout)) != 0 ||
        timed_out(start, polls)) {
      bump(stats_.fence_failures);
      return false;
    }
    support::cpu_relax();
  }
  full_fence();
  return true;
}

void RiscvIommu::inval_ddt_locked(uint32_t device_id) {
  (void)queue_locked(kOpIodir | kCmdDv | (uint64_t{device_id} << kCmdDidShift), 0);
}

Result<void> RiscvIommu::attach(uint32_t device_id, uint32_t domain, PhysAddr root) {
  if (!covers(device_id) || domain == 0 || domain > kMaxPscid ||
      (root.value() & (kPage - 1)) != 0) {
    return ErrorCode::kInvalidArgument;
  }
  support::Guard<support::SpinLock> guard{&cq_lock_};
  bool no_memory = false;
  volatile uint64_t* dc = dc_locked(device_id, true, &no_memory);
  if (dc == nullptr) return ErrorCode::kNoMemory;
  // A valid DC is never rewritten in place: the unit may fetch it between two stores. It is
  // made invalid and forgotten first, then filled, then made valid.
  if ((dc[kDcTc] & kTcV) != 0) {
    dc[kDcTc] = 0;
    full_fence();
    inval_ddt_locked(device_id);
    if (!fence_locked()) return ErrorCode::kTimedOut;
  }
  // iohgatp Bare (no G-stage), msiptp Off (MSIs go through the first stage).
  for (unsigned i = 1; i < dc_bytes_ / 8; ++i) dc[i] = 0;
  dc[kDcTa] = uint64_t{domain} << kTaPscidShift;
  dc[kDcFsc] = (fsc_mode_ << kAtpModeShift) | ((root.value() >> 12) & kAtpPpnMask);
  full_fence();
  dc[kDcTc] = kTcV;
  full_fence();
  inval_ddt_locked(device_id);
  // The domain id may have tagged translations of an earlier root.
  (void)queue_locked(kOpIotinval | kCmdPscv | (uint64_t{domain} << kCmdPscidShift), 0);
  if (!fence_locked()) return ErrorCode::kTimedOut;
  return support::ok();
}

void RiscvIommu::detach(uint32_t device_id) {
  if (!covers(device_id)) return;
  support::Guard<support::SpinLock> guard{&cq_lock_};
  bool no_memory = false;
  volatile uint64_t* dc = dc_locked(device_id, false, &no_memory);
  if (dc == nullptr || (dc[kDcTc] & kTcV) == 0) return;
  uint64_t pscid = (dc[kDcTa] >> kTaPscidShift) & kMaxPscid;
  dc[kDcTc] = 0;
  full_fence();
  inval_ddt_locked(device_id);
  // The IOTLB entries are tagged by the domain's PSCID, not by device: with its DC invalid this
  // device reaches none of them any more, but they are dropped too, so that nothing the device
  // used outlives its attachment (the domain's other devices refill theirs on their next miss).
  (void)queue_locked(kOpIotinval | kCmdPscv | (pscid << kCmdPscidShift), 0);
  (void)fence_locked();
}

Result<RiscvIommu::Attachment> RiscvIommu::attachment(uint32_t device_id) {
  if (!covers(device_id)) return ErrorCode::kInvalidArgument;
  support::Guard<support::SpinLock> guard{&cq_lock_};
  bool no_memory = false;
  volatile uint64_t* dc = dc_locked(device_id, false, &no_memory);
  if (dc == nullptr || (dc[kDcTc] & kTcV) == 0) return ErrorCode::kNotFound;
  Attachment a;
  a.domain = static_cast<uint32_t>((dc[kDcTa] >> kTaPscidShift) & kMaxPscid);
  a.root = PhysAddr((dc[kDcFsc] & kAtpPpnMask) << 12);
  return a;
}

void RiscvIommu::invalidate(uint32_t domain, uint64_t iova, uint64_t size) {
  if (!initialized_ || domain == 0 || domain > kMaxPscid) return;
  const uint64_t base = kOpIotinval | kCmdPscv | (uint64_t{domain} << kCmdPscidShift);
  uint64_t first = iova & ~(kPage - 1);
  uint64_t pages = size == 0 ? 0 : ((iova + size - first) + kPage - 1) / kPage;
  support::Guard<support::SpinLock> guard{&cq_lock_};
  // Beyond 64 pages one command for the whole address space costs less than the queue traffic.
  if (pages == 0 || pages > 64) {
    (void)queue_locked(base, 0);
  } else {
    for (uint64_t i = 0; i < pages; ++i) {
      // AV = 1: dword1 holds ADDR[63:12] in bits 61:10.
      (void)queue_locked(base | kCmdAv, ((first + i * kPage) >> 12) << 10);
    }
  }
  (void)fence_locked();
}

RiscvIommu::Stats RiscvIommu::stats() const {
  Stats s;
  s.commands = __atomic_load_n(&stats_.commands, __ATOMIC_RELAXED);
  s.fences = __atomic_load_n(&stats_.fences, __ATOMIC_RELAXED);
  s.fence_failures = __atomic_load_n(&stats_.fence_failures, __ATOMIC_RELAXED);
  s.faults = __atomic_load_n(&stats_.faults, __ATOMIC_RELAXED);
  s.fault_overflows = __atomic_load_n(&stats_.fault_overflows, __ATOMIC_RELAXED);
  s.pages = __atomic_load_n(&stats_.pages, __ATOMIC_RELAXED);
  return s;
}

const char* RiscvIommu::cause_text(uint32_t cause) {
  switch (cause) {
    case 1:
      return "instruction access fault";
    case 4:
      return "read address misaligned";
    case 5:
      return "read access fault";
    case 6:
      return "write address misaligned";
    case 7:
      return "write access fault";
    case 12:
      return "instruction page fault";
    case 13:
      return "read page fault";
    case 15:
      return "write page fault";
    case 20:
      return "instruction guest page fault";
    case 21:
      return "read guest page fault";
    case 23:
      return "write guest page fault";
    case 256:
      return "all inbound transactions disallowed";
    case 257:
      return "DDT entry load access fault";
    case 258:
      return "no context (DDT entry not valid)";
    case 259:
      return "DDT entry misconfigured";
    case 260:
      return "transaction type disallowed";
    case 261:
      return "MSI PTE load access fault";
    case 262:
      return "MSI PTE not valid";
    case 263:
      return "MSI PTE misconfigured";
    case 264:
      return "MRIF access fault";
    case 265:
      return "PDT entry load access fault";
    case 266:
      return "PDT entry not valid";
    case 267:
      return "PDT entry misconfigured";
    case 268:
      return "DDT data corruption";
    case 269:
      return "PDT data corruption";
    case 270:
      return "MSI PT data corruption";
    case 271:
      return "MSI MRIF data corruption";
    case 272:
      return "internal datapath error";
    case 273:
      return "IOMMU MSI write access fault";
    case 274:
      return "page table data corruption";
    default:
      return "unknown cause";
  }
}

// Whether `iova` has no valid leaf in the first-stage table of `device_id`'s context (a page
// fault then means "not mapped" rather than "permission"). Reads the live tables without a lock:
// a report may race with a map, never corrupt it.
bool RiscvIommu::describe_unmapped(uint32_t device_id, uint64_t iova) {
  if (!covers(device_id)) return true;
  PhysAddr table;
  {
    support::Guard<support::SpinLock> guard{&cq_lock_};
    bool no_memory = false;
    volatile uint64_t* dc = dc_locked(device_id, false, &no_memory);
    if (dc == nullptr || (dc[kDcTc] & kTcV) == 0) return true;
    table = PhysAddr((dc[kDcFsc] & kAtpPpnMask) << 12);
  }
  for (unsigned level = format_.levels; level > 0; --level) {
    unsigned shift = 12 + (9 * (level - 1));
    uint64_t e = static_cast<volatile uint64_t*>(va(table))[(iova >> shift) & 511u];
    if ((e & kPteV) == 0) return true;
    if ((e & (kPteR | kPteW | kPteX)) != 0) return false;  // a leaf
    table = PhysAddr(entry_addr(e));
  }
  return true;
}

size_t RiscvIommu::drain_faults(void (*sink)(void* ctx, const IommuFault& fault), void* ctx) {
  if (!initialized_) return 0;
  support::Guard<support::SpinLock> guard{&fq_lock_};
  const uint32_t mask = kFqEntries - 1;
  uint32_t head = read32(kRegFqh) & mask;
  uint32_t tail = read32(kRegFqt) & mask;
  full_fence();  // The tail read before the records it covers.
  size_t n = 0;
  while (head != tail) {
    const volatile uint64_t* rec =
        static_cast<const volatile uint64_t*>(va(fq_page_)) + (size_t{4} * head);
    uint64_t hdr = rec[0];
    uint64_t iotval = rec[2];
    uint32_t cause = static_cast<uint32_t>(hdr & kFqCauseMask);
    uint32_t ttyp = static_cast<uint32_t>((hdr >> kFqTtypShift) & kFqTtypMask);
    IommuFault f;
    f.device_id = static_cast<uint32_t>((hdr >> kFqDidShift) & kFqDidMask);
    f.iova = iotval;
    // The direction: from the cause where it names one (a read or write access or page fault),
    // else from the transaction type (3 and 7: untranslated or translated write/AMO). The cause
    // goes first because QEMU's model reports every blocked request as type 3.
    switch (cause) {
      case 4:
      case 5:
      case 13:
      case 21:
        f.write = false;
        break;
      case 6:
      case 7:
      case 15:
      case 23:
        f.write = true;
        break;
      default:
        f.write = ttyp == 3 || ttyp == 7;
        break;
    }
    f.reason = cause_text(cause);
    if (cause == 13 || cause == 15) {
      f.reason = describe_unmapped(f.device_id, iotval) ? "not mapped" : "permission";
    }
    head = (head + 1) & mask;
    ++n;
    bump(stats_.faults);
    if (sink != nullptr) sink(ctx, f);
  }
  full_fence();  // The records read before the head that gives their slots back.
  write32(kRegFqh, head);
  // A full queue stops recording until FQOF is cleared (write 1): cleared once the slots are
  // free again, so that recording resumes from here.
  if ((read32(kRegFqcsr) & kQueueOverflow) != 0) {
    bump(stats_.fault_overflows);
    write32(kRegFqcsr, kQueueEnable | kQueueOverflow);
  }
  return n;
}
