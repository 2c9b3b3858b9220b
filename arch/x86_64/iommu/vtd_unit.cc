// VtdUnit (dmakit/arch/vtd.h): register layout and field values from the Intel VT-d architecture
// specification (chapter 10, "Register Descriptions"; chapter 9, "Translation Structure Formats";
// chapter 6.5, "Invalidation of Translation Caches"; chapter 7, "DMA Remapping Fault Reporting").
#include "dmakit/arch/vtd.h"

#include "dmakit/support/mem.h"

namespace {

// Register offsets.
constexpr uint32_t kRegVer = 0x00;
constexpr uint32_t kRegCap = 0x08;
constexpr uint32_t kRegEcap = 0x10;
constexpr uint32_t kRegGcmd = 0x18;
constexpr uint32_t kRegGsts = 0x1C;
constexpr uint32_t kRegRtaddr = 0x20;
constexpr uint32_t kRegCcmd = 0x28;
constexpr uint32_t kRegFsts = 0x34;
constexpr uint32_t kRegFectl = 0x38;
constexpr uint32_t kRegIqt = 0x88;
constexpr uint32_t kRegIqa = 0x90;

// GCMD / GSTS bits (the status bit sits at the command bit's position).
constexpr uint32_t kGlobalTe = 1u << 31;    // translation enable
constexpr uint32_t kGlobalSrtp = 1u << 30;  // set root table pointer (one-shot)
constexpr uint32_t kGlobalWbf = 1u << 27;   // write buffer flush (one-shot)
constexpr uint32_t kGlobalQie = 1u << 26;   // queued invalidation enable
// The GSTS bits that reflect persistent enables: a GCMD write repeats them so that a command does
// not turn another feature off; the one-shot bits (SRTP, SFL, WBF, SIRTP) are left out.
constexpr uint32_t kGlobalPersistent = 0x96FF'FFFFu;

// CAP fields.
constexpr uint64_t kCapRwbf = 1ull << 4;
constexpr uint64_t kCapPsi = 1ull << 39;
constexpr uint64_t kCapDwd = 1ull << 54;
constexpr uint64_t kCapDrd = 1ull << 55;
constexpr unsigned cap_nd(uint64_t cap) {
  return static_cast<unsigned>(cap & 7);
}
constexpr unsigned cap_sagaw(uint64_t cap) {
  return static_cast<unsigned>((cap >> 8) & 0x1F);
}
constexpr unsigned cap_mgaw(uint64_t cap) {
  return static_cast<unsigned>((cap >> 16) & 0x3F) + 1;
}
constexpr uint32_t cap_fro(uint64_t cap) {
  return static_cast<uint32_t>((cap >> 24) & 0x3FF);
}
constexpr uint32_t cap_nfr(uint64_t cap) {
  return static_cast<uint32_t>((cap >> 40) & 0xFF);
}
constexpr unsigned cap_mamv(uint64_t cap) {
  return static_cast<unsigned>((cap >> 48) & 0x3F);
}
constexpr unsigned kSagaw39 = 1u << 1;  // 3-level tables
constexpr unsigned kSagaw48 = 1u << 2;  // 4-level tables

// ECAP fields.
constexpr uint64_t kEcapCoherent = 1ull << 0;
constexpr uint64_t kEcapQi = 1ull << 1;
constexpr uint32_t ecap_iro(uint64_t ecap) {
  return static_cast<uint32_t>((ecap >> 8) & 0x3FF);
}

// CCMD: invalidate-context-cache, request granularity (61:62), actual granularity (59:60), source
// id (16:31), domain id (0:15).
constexpr uint64_t kCcmdIcc = 1ull << 63;
constexpr uint64_t kCcmdGlobal = 1;
constexpr uint64_t kCcmdDevice = 3;
constexpr unsigned kCcmdGranShift = 61;
constexpr unsigned kCcmdActualShift = 59;

// IOTLB invalidate register (IRO + 8): invalidate (63), granularity (60:61), actual granularity
// (57:58), drain reads (49), drain writes (48), domain id (32:47). IVA (IRO + 0): address (63:12),
// address mask (5:0).
constexpr uint64_t kIotlbIvt = 1ull << 63;
constexpr uint64_t kIotlbGlobal = 1;
constexpr uint64_t kIotlbDomain = 2;
constexpr uint64_t kIotlbPage = 3;
constexpr unsigned kIotlbGranShift = 60;
constexpr unsigned kIotlbActualShift = 57;
constexpr uint64_t kIotlbDr = 1ull << 49;
constexpr uint64_t kIotlbDw = 1ull << 48;

// FSTS: primary fault overflow (0), primary pending fault (1), invalidation queue error (4),
// fault record index (8:15).
constexpr uint32_t kFstsPfo = 1u << 0;
constexpr uint32_t kFstsPpf = 1u << 1;
constexpr uint32_t kFstsIqe = 1u << 4;

// Queued invalidation: 128-bit descriptors (IQA.DW = 0) in one 4 KiB page (IQA.QS = 0: 256 of
// them); IQH / IQT hold the index in bits 18:4. Descriptor types (bits 3:0) and fields:
// context-cache (1): granularity (5:4), domain id (31:16), source id (47:32), function mask
// (49:48); IOTLB (2): granularity (5:4), drain writes (6), drain reads (7), domain id (31:16),
// second word address (63:12) and address mask (5:0); wait (5): status write (5), fence (6),
// status data (63:32), second word the status address (63:2).
constexpr uint32_t kQiEntries = 256;
constexpr uint64_t kQiContext = 1;
constexpr uint64_t kQiIotlb = 2;
constexpr uint64_t kQiWait = 5;
constexpr uint64_t kQiIotlbDw = 1ull << 6;
constexpr uint64_t kQiIotlbDr = 1ull << 7;
constexpr uint64_t kQiWaitSw = 1ull << 5;
constexpr uint64_t kQiWaitFn = 1ull << 6;
// FECTL: interrupt mask.
constexpr uint32_t kFectlIm = 1u << 31;
// Fault recording register, upper 64 bits: fault (63, write 1 to clear), type (62: 1 read,
// 0 write), reason (32:39), source id (0:15). Lower 64 bits: the faulting page address.
constexpr uint64_t kFrcdF = 1ull << 63;
constexpr uint64_t kFrcdRead = 1ull << 62;

// Root entry (128 bits, one per bus): present (0), context-table pointer (12:63).
// Context entry (128 bits, one per devfn): low: present (0), fault processing disable (1),
// translation type (2:3; 0 = untranslated requests through the second-level tables),
// second-level table pointer (12:63); high: address width (0:2), domain id (8:23).
constexpr uint64_t kPresent = 1;
constexpr uint64_t kAddrMask = 0x000F'FFFF'FFFF'F000ull;
constexpr unsigned kContextDidShift = 8;

// Second-level paging entries: read (0), write (1), address (12:51).
constexpr uint64_t kSlRead = 1;
constexpr uint64_t kSlWrite = 2;

constexpr uint64_t kPage = 4096;
constexpr size_t kLine = 64;

inline void fence() {
  __atomic_thread_fence(__ATOMIC_SEQ_CST);
}

}  // namespace

uint64_t VtdUnit::sl_table_entry(uint64_t table) {
  // Access rights are the AND of every level's: a table entry grants both.
  return (table & kAddrMask) | kSlRead | kSlWrite;
}

uint64_t VtdUnit::sl_page_entry(uint64_t page, unsigned perm) {
  uint64_t e = page & kAddrMask;
  if ((perm & kIommuRead) != 0) e |= kSlRead;
  if ((perm & kIommuWrite) != 0) e |= kSlWrite;
  return e;
}

bool VtdUnit::sl_entry_valid(uint64_t entry) {
  return (entry & (kSlRead | kSlWrite)) != 0;
}

uint64_t VtdUnit::sl_entry_addr(uint64_t entry) {
  return entry & kAddrMask;
}

uint32_t VtdUnit::read32(uint32_t off) const {
  return *reinterpret_cast<volatile uint32_t*>(regs_ + off);
}
uint64_t VtdUnit::read64(uint32_t off) const {
  return *reinterpret_cast<volatile uint64_t*>(regs_ + off);
}
void VtdUnit::write32(uint32_t off, uint32_t v) const {
  *reinterpret_cast<volatile uint32_t*>(regs_ + off) = v;
}
void VtdUnit::write64(uint32_t off, uint64_t v) const {
  *reinterpret_cast<volatile uint64_t*>(regs_ + off) = v;
}

bool VtdUnit::wait32(uint32_t off, uint32_t mask, uint32_t want) const {
  const uint64_t deadline = now_ns_() + timeout_ns_;
  while ((read32(off) & mask) != want) {
    if (now_ns_() > deadline) {
      __atomic_fetch_add(&timeouts_, 1, __ATOMIC_RELAXED);
      return false;
    }
    support::cpu_relax();
  }
  return true;
}

bool VtdUnit::wait64_clear(uint32_t off, uint64_t mask) const {
  const uint64_t deadline = now_ns_() + timeout_ns_;
  while ((read64(off) & mask) != 0) {
    if (now_ns_() > deadline) {
      __atomic_fetch_add(&timeouts_, 1, __ATOMIC_RELAXED);
      return false;
    }
    support::cpu_relax();
  }
  return true;
}

bool VtdUnit::global_command(uint32_t cmd_bit, bool set, uint32_t status_bit) {
  uint32_t cmd = read32(kRegGsts) & kGlobalPersistent;
  cmd = set ? (cmd | cmd_bit) : (cmd & ~cmd_bit);
  fence();
  write32(kRegGcmd, cmd);
  return wait32(kRegGsts, status_bit, set ? status_bit : 0);
}

bool VtdUnit::flush_write_buffer() {
  if ((cap_ & kCapRwbf) == 0) return true;
  // WBFS reads 1 while the flush is pending.
  const uint32_t cmd = (read32(kRegGsts) & kGlobalPersistent) | kGlobalWbf;
  fence();
  write32(kRegGcmd, cmd);
  return wait32(kRegGsts, kGlobalWbf, 0);
}

bool VtdUnit::context_invalidate(uint64_t type, uint16_t source_id, uint16_t did) {
  if (qi_on_) {
    const uint64_t desc[2] = {
        kQiContext | (type << 4) | (uint64_t{did} << 16) | (uint64_t{source_id} << 32), 0};
    return qi_submit(desc, 1);
  }
  fence();
  write64(kRegCcmd,
          kCcmdIcc | (type << kCcmdGranShift) | (static_cast<uint64_t>(source_id) << 16) | did);
  if (!wait64_clear(kRegCcmd, kCcmdIcc)) return false;
  // Actual granularity 0: the unit did not perform the request.
  return ((read64(kRegCcmd) >> kCcmdActualShift) & 3) != 0;
}

bool VtdUnit::iotlb_invalidate(uint64_t type, uint16_t did, uint64_t iva) {
  if (qi_on_) {
    uint64_t lo = kQiIotlb | (type << 4) | (uint64_t{did} << 16);
    if ((cap_ & kCapDrd) != 0) lo |= kQiIotlbDr;
    if ((cap_ & kCapDwd) != 0) lo |= kQiIotlbDw;
    const uint64_t desc[2] = {lo, type == kIotlbPage ? iva : 0};
    return qi_submit(desc, 1);
  }
  fence();
  if (type == kIotlbPage) write64(iotlb_off_, iva);
  uint64_t cmd = kIotlbIvt | (type << kIotlbGranShift) | (static_cast<uint64_t>(did) << 32);
  if ((cap_ & kCapDrd) != 0) cmd |= kIotlbDr;
  if ((cap_ & kCapDwd) != 0) cmd |= kIotlbDw;
  write64(iotlb_off_ + 8, cmd);
  if (!wait64_clear(iotlb_off_ + 8, kIotlbIvt)) return false;
  return ((read64(iotlb_off_ + 8) >> kIotlbActualShift) & 3) != 0;
}

bool VtdUnit::qi_submit(const uint64_t* desc, size_t n) {
  auto* queue = static_cast<volatile uint64_t*>(table_virt(qi_pages_.value()));
  auto* status = static_cast<volatile uint32_t*>(table_virt(qi_pages_.value() + kPage));
  // Every submission waits for its end, so the queue is empty here: n + 1 entries fit.
  if (++qi_seq_ == 0) ++qi_seq_;  // 0 is the status before the unit writes
  const uint32_t seq = qi_seq_;
  *status = 0;
  uint32_t tail = qi_tail_;
  auto put = [&](uint64_t lo, uint64_t hi) {
    queue[size_t{tail} * 2] = lo;
    queue[(size_t{tail} * 2) + 1] = hi;
    clean(const_cast<const uint64_t*>(queue + (size_t{tail} * 2)), 16);
    tail = (tail + 1) % kQiEntries;
  };
  for (size_t i = 0; i < n; ++i) put(desc[2 * i], desc[(2 * i) + 1]);
  put(kQiWait | kQiWaitSw | kQiWaitFn | (uint64_t{seq} << 32), qi_pages_.value() + kPage);
  fence();
  write64(kRegIqt, uint64_t{tail} << 4);
  qi_tail_ = tail;
  const uint64_t deadline = now_ns_() + timeout_ns_;
  while (*status != seq) {
    if ((read32(kRegFsts) & kFstsIqe) != 0) {
      // A descriptor the unit refused: the head stays on it. Skip the rest of this batch (the
      // head is moved to the tail by clearing the error and resetting the queue) and report.
      write32(kRegFsts, kFstsIqe);
      (void)qi_disable();
      (void)qi_enable();
      return false;
    }
    if (now_ns_() > deadline) {
      __atomic_fetch_add(&timeouts_, 1, __ATOMIC_RELAXED);
      return false;
    }
    support::cpu_relax();
  }
  return true;
}

bool VtdUnit::qi_enable() {
  if (qi_pages_.value() == 0) {
    auto pages = pfa_->alloc(1);
    if (!pages.ok()) return false;
    qi_pages_ = *pages;
    support::fill_bytes(table_virt(qi_pages_.value()), 0, 2 * kPage);
    clean(table_virt(qi_pages_.value()), 2 * kPage);
  }
  // The queue starts empty: IQT 0 (IQH is reset to 0 when the queue is enabled).
  qi_tail_ = 0;
  write64(kRegIqt, 0);
  write64(kRegIqa, qi_pages_.value());  // 128-bit descriptors, one page
  if (!global_command(kGlobalQie, true, kGlobalQie)) return false;
  qi_on_ = true;
  return true;
}

bool VtdUnit::qi_disable() {
  qi_on_ = false;
  if ((read32(kRegGsts) & kGlobalQie) == 0) return true;
  return global_command(kGlobalQie, false, kGlobalQie);
}

Result<void> VtdUnit::set_queued_invalidation(bool on) {
  if (!enabled_) return ErrorCode::kInvalidArgument;
  if (on && (ecap_ & kEcapQi) == 0) return ErrorCode::kNotSupported;
  support::Guard guard{&lock_};
  if (on == qi_on_) return support::ok();
  if (!on) return qi_disable() ? support::ok() : Result<void>(ErrorCode::kTimedOut);
  if (qi_enable()) return support::ok();
  (void)qi_disable();
  return qi_pages_.value() == 0 ? ErrorCode::kNoMemory : ErrorCode::kTimedOut;
}

void VtdUnit::clean(const void* p, size_t size) const {
  if (coherent_) return;
  // Each line once, from the one holding p to the one holding its last byte.
  const size_t head = reinterpret_cast<uintptr_t>(p) & (kLine - 1);
  const auto* line = static_cast<const volatile char*>(p) - head;
  for (size_t off = 0; off < head + size; off += kLine) {
    asm volatile("clflush %0" ::"m"(line[off]));
  }
  fence();
}

volatile uint64_t* VtdUnit::context_entry(uint32_t device_id) const {
  if (root_table_.value() == 0 || device_id > 0xFFFF) return nullptr;
  const auto* root = static_cast<const volatile uint64_t*>(table_virt(root_table_.value()));
  const uint64_t re = root[size_t{device_id >> 8} * 2];
  if ((re & kPresent) == 0) return nullptr;
  auto* ctx = static_cast<volatile uint64_t*>(table_virt(re & kAddrMask));
  return ctx + (size_t{device_id & 0xFF} * 2);
}

Result<void> VtdUnit::init(const Config& cfg) {
  if (enabled_ || cfg.regs == nullptr || cfg.pfa == nullptr || cfg.now_ns == nullptr ||
      cfg.num_scopes > kMaxScopes) {
    return ErrorCode::kInvalidArgument;
  }
  regs_ = static_cast<volatile uint8_t*>(cfg.regs);
  regs_phys_ = cfg.regs_phys;
  pfa_ = cfg.pfa;
  now_ns_ = cfg.now_ns;
  timeout_ns_ = cfg.timeout_ns;
  include_all_ = cfg.include_pci_all;
  want_qi_ = cfg.queued_invalidation;
  num_scopes_ = cfg.num_scopes;
  for (size_t i = 0; i < num_scopes_; ++i) scopes_[i] = cfg.scopes[i];

  version_ = read32(kRegVer);
  cap_ = read64(kRegCap);
  ecap_ = read64(kRegEcap);
  const unsigned sagaw = cap_sagaw(cap_);
  unsigned levels = 0;
  if ((sagaw & kSagaw48) != 0) {
    levels = 4;
    aw_ = 2;
  } else if ((sagaw & kSagaw39) != 0) {
    levels = 3;
    aw_ = 1;
  } else {
    return ErrorCode::kNotSupported;
  }
  const unsigned table_bits = 12 + (9 * levels);
  const unsigned mgaw = cap_mgaw(cap_);
  iova_bits_ = static_cast<uint8_t>(mgaw < table_bits ? mgaw : table_bits);
  // Domain id 0 is reserved when caching mode is on; the contract numbers domains from 1 anyway.
  const unsigned nd = cap_nd(cap_);
  const uint32_t ids = nd >= 6 ? 65536u : (1u << (4 + 2 * nd));
  max_domains_ = ids - 1;
  iotlb_off_ = ecap_iro(ecap_) * 16;
  frcd_off_ = cap_fro(cap_) * 16;
  num_frcd_ = cap_nfr(cap_) + 1;
  coherent_ = (ecap_ & kEcapCoherent) != 0;
  format_.levels = static_cast<uint8_t>(levels);
  format_.coherent_walk = coherent_;
  format_.table_entry = &sl_table_entry;
  format_.page_entry = &sl_page_entry;
  format_.entry_valid = &sl_entry_valid;
  format_.entry_addr = &sl_entry_addr;

  auto root = pfa_->alloc(0);
  if (!root.ok()) return ErrorCode::kNoMemory;
  support::fill_bytes(table_virt(root->value()), 0, kPage);
  clean(table_virt(root->value()), kPage);

  bool ok = true;
  {
    support::Guard guard{&lock_};
    // A unit left translating (or with queued invalidation on, which disables the register
    // interface) by the firmware is turned off before its tables are replaced.
    const uint32_t gsts = read32(kRegGsts);
    if ((gsts & kGlobalTe) != 0) ok = ok && global_command(kGlobalTe, false, kGlobalTe);
    if ((gsts & kGlobalQie) != 0) ok = ok && global_command(kGlobalQie, false, kGlobalQie);
    // Faults are polled (drain_faults): no fault-event interrupt.
    write32(kRegFectl, kFectlIm);
    if (ok) {
      root_table_ = *root;
      write64(kRegRtaddr, root->value());
      // A unit with queued invalidation whose queue cannot be set up keeps the register
      // interface.
      if (want_qi_ && (ecap_ & kEcapQi) != 0 && !qi_enable()) (void)qi_disable();
      ok = global_command(kGlobalSrtp, true, kGlobalSrtp) &&
           context_invalidate(kCcmdGlobal, 0, 0) && iotlb_invalidate(kIotlbGlobal, 0, 0) &&
           flush_write_buffer() && global_command(kGlobalTe, true, kGlobalTe);
    }
    if (!ok) {
      // Never half-enabled: translation off, whatever step failed.
      (void)global_command(kGlobalTe, false, kGlobalTe);
      (void)qi_disable();
      root_table_ = PhysAddr();
    }
  }
  if (!ok) {
    (void)pfa_->free(*root, 0);
    if (qi_pages_.value() != 0) (void)pfa_->free(qi_pages_, 1);
    qi_pages_ = PhysAddr();
    return ErrorCode::kTimedOut;
  }
  enabled_ = true;
  // Faults recorded before this kernel took over are not this kernel's: counted, not reported.
  (void)drain_faults(nullptr, nullptr);
  return support::ok();
}

void VtdUnit::free_tables() {
  if (root_table_.value() == 0) return;
  const auto* root = static_cast<const volatile uint64_t*>(table_virt(root_table_.value()));
  for (unsigned bus = 0; bus < 256; ++bus) {
    const uint64_t re = root[size_t{bus} * 2];
    if ((re & kPresent) != 0) (void)pfa_->free(PhysAddr(re & kAddrMask), 0);
  }
  (void)pfa_->free(root_table_, 0);
  root_table_ = PhysAddr();
}

bool VtdUnit::disable() {
  if (!enabled_) return true;
  support::Guard guard{&lock_};
  // A unit that does not acknowledge may still walk the tables: they stay allocated then.
  if (!global_command(kGlobalTe, false, kGlobalTe)) return false;
  (void)context_invalidate(kCcmdGlobal, 0, 0);
  (void)iotlb_invalidate(kIotlbGlobal, 0, 0);
  // The root table pointer stays programmed but unused while translation is off.
  free_tables();
  if (qi_disable() && qi_pages_.value() != 0) {
    (void)pfa_->free(qi_pages_, 1);
    qi_pages_ = PhysAddr();
  }
  enabled_ = false;
  return true;
}

bool VtdUnit::covers(uint32_t device_id) const {
  if (device_id > 0xFFFF) return false;
  if (include_all_) return true;
  for (size_t i = 0; i < num_scopes_; ++i) {
    if (device_id >= scopes_[i].first && device_id <= scopes_[i].last) return true;
  }
  return false;
}

Result<void> VtdUnit::attach(uint32_t device_id, uint32_t domain, PhysAddr root) {
  if (!enabled_ || !covers(device_id) || domain == 0 || domain > max_domains_ ||
      root.value() == 0 || (root.value() & ~kAddrMask) != 0) {
    return ErrorCode::kInvalidArgument;
  }
  const uint16_t requester = static_cast<uint16_t>(device_id);
  const unsigned bus = device_id >> 8;
  const auto* root_table = static_cast<volatile uint64_t*>(table_virt(root_table_.value()));
  // The bus's context table, allocated outside the lock (the allocator has its own); a racing
  // attach on the same bus may install its table first, and then this one goes back.
  PhysAddr fresh;
  if ((root_table[size_t{bus} * 2] & kPresent) == 0) {
    auto page = pfa_->alloc(0);
    if (!page.ok()) return ErrorCode::kNoMemory;
    fresh = *page;
    support::fill_bytes(table_virt(fresh.value()), 0, kPage);
    clean(table_virt(fresh.value()), kPage);
  }
  bool ok = true;
  bool used_fresh = false;
  {
    support::Guard guard{&lock_};
    volatile uint64_t* re = const_cast<volatile uint64_t*>(root_table) + (size_t{bus} * 2);
    if ((re[0] & kPresent) == 0) {
      re[1] = 0;
      re[0] = fresh.value() | kPresent;
      clean(const_cast<const uint64_t*>(re), 16);
      used_fresh = true;
    }
    volatile uint64_t* ce = context_entry(device_id);
    if ((ce[0] & kPresent) != 0) {
      // Present to present: through not-present, so that no request sees a half-written entry.
      const auto old_did = static_cast<uint16_t>(ce[1] >> kContextDidShift);
      ce[0] = 0;
      clean(const_cast<const uint64_t*>(ce), 16);
      ok = context_invalidate(kCcmdDevice, requester, old_did) &&
           iotlb_invalidate(kIotlbDomain, old_did, 0);
    }
    ce[1] = aw_ | (static_cast<uint64_t>(domain) << kContextDidShift);
    fence();
    ce[0] = root.value() | kPresent;  // translation type 0, fault processing enabled
    clean(const_cast<const uint64_t*>(ce), 16);
    // Not-present to present needs no invalidation on real hardware, but under caching mode
    // the unit may hold the not-present entry, tagged with domain id 0; and the domain id may
    // have served another page table before, so its IOTLB entries go too.
    const uint16_t ccdid = caching_mode() ? 0 : static_cast<uint16_t>(domain);
    ok = ok && flush_write_buffer() && context_invalidate(kCcmdDevice, requester, ccdid) &&
         iotlb_invalidate(kIotlbDomain, static_cast<uint16_t>(domain), 0);
  }
  if (!used_fresh && fresh.value() != 0) (void)pfa_->free(fresh, 0);
  if (!ok) return ErrorCode::kTimedOut;
  return support::ok();
}

void VtdUnit::detach(uint32_t device_id) {
  if (!enabled_ || device_id > 0xFFFF) return;
  support::Guard guard{&lock_};
  volatile uint64_t* ce = context_entry(device_id);
  if (ce == nullptr || (ce[0] & kPresent) == 0) return;
  const auto did = static_cast<uint16_t>(ce[1] >> kContextDidShift);
  ce[0] = 0;
  fence();
  ce[1] = 0;
  clean(const_cast<const uint64_t*>(ce), 16);
  (void)(flush_write_buffer() &&
         context_invalidate(kCcmdDevice, static_cast<uint16_t>(device_id), did) &&
         iotlb_invalidate(kIotlbDomain, did, 0));
}

void VtdUnit::invalidate(uint32_t domain, uint64_t iova, uint64_t size) {
  if (!enabled_ || domain > 0xFFFF) return;
  const auto did = static_cast<uint16_t>(domain);
  support::Guard guard{&lock_};
  (void)flush_write_buffer();
  if (size != 0 && (cap_ & kCapPsi) != 0 && iova + size > iova) {
    // The naturally aligned block of 2^am pages that holds the range.
    const uint64_t first = iova / kPage;
    const uint64_t last = (iova + size - 1) / kPage;
    unsigned am = 0;
    while ((first >> am) != (last >> am)) ++am;
    if (am <= cap_mamv(cap_)) {
      const uint64_t base = (first >> am) << am;
      if (iotlb_invalidate(kIotlbPage, did, (base * kPage) | am)) return;
    }
  }
  if (!iotlb_invalidate(kIotlbDomain, did, 0)) (void)iotlb_invalidate(kIotlbGlobal, 0, 0);
}

VtdUnit::Attachment VtdUnit::attachment(uint32_t device_id) const {
  Attachment a;
  const volatile uint64_t* ce = context_entry(device_id);
  if (ce == nullptr) return a;
  const uint64_t lo = ce[0];
  const uint64_t hi = ce[1];
  if ((lo & kPresent) == 0) return a;
  a.present = true;
  a.domain = static_cast<uint32_t>((hi >> kContextDidShift) & 0xFFFF);
  a.root = PhysAddr(lo & kAddrMask);
  return a;
}

const char* VtdUnit::fault_reason(uint8_t reason, uint16_t device_id, uint64_t iova,
                                  bool write) const {
  switch (reason) {
    case 0x1:
      return "no root entry (device blocked)";
    case 0x2:
      return "no context (device blocked)";
    case 0x3:
      return "invalid context entry";
    case 0x4:
      return "address beyond the address width";
    case 0x5:
    case 0x6:
      break;
    case 0x7:
      return "page table unreadable";
    case 0x8:
      return "root table unreadable";
    case 0x9:
      return "context table unreadable";
    case 0xA:
      return "root entry reserved bits set";
    case 0xB:
      return "context entry reserved bits set";
    case 0xC:
      return "page-table entry reserved bits set";
    case 0xD:
      return "translation type blocked";
    default:
      return "other remapping fault";
  }
  // Reasons 5 and 6 (no write / no read permission) cover both an entry that is not present (no
  // right at all) and one that lacks the right. The walk tells them apart, as the tables are
  // now; the generic layer may have changed them since the fault.
  const Attachment a = attachment(device_id);
  if (!a.present) return "not mapped";
  uint64_t table = a.root.value();
  for (unsigned level = format_.levels; level >= 1; --level) {
    if (table < pfa_->lowest_address().value() || table >= pfa_->highest_address().value()) {
      return "not mapped";
    }
    const auto* t = static_cast<const volatile uint64_t*>(table_virt(table));
    const uint64_t e = t[(iova >> (12 + 9 * (level - 1))) & 511];
    if (!sl_entry_valid(e)) return "not mapped";
    if (level == 1) {
      const bool allowed = write ? (e & kSlWrite) != 0 : (e & kSlRead) != 0;
      return allowed ? "not mapped" : "permission";
    }
    table = sl_entry_addr(e);
  }
  return "not mapped";
}

size_t VtdUnit::drain_faults(void (*sink)(void* ctx, const IommuFault& fault), void* ctx) {
  if (regs_ == nullptr) return 0;
  support::Guard guard{&fault_lock_};
  const uint32_t fsts = read32(kRegFsts);
  size_t n = 0;
  if ((fsts & kFstsPpf) != 0) {
    // Records fill circularly from the fault record index; every one is looked at, since a
    // record cleared out of order leaves a hole.
    uint32_t index = ((fsts >> 8) & 0xFF) % num_frcd_;
    for (uint32_t i = 0; i < num_frcd_; ++i, index = (index + 1) % num_frcd_) {
      const uint32_t off = frcd_off_ + (index * 16);
      const uint64_t hi = read64(off + 8);
      if ((hi & kFrcdF) == 0) continue;
      const uint64_t lo = read64(off);
      write32(off + 12, static_cast<uint32_t>(kFrcdF >> 32));  // write 1 to clear F
      ++n;
      if (sink == nullptr) continue;
      IommuFault f;
      f.device_id = static_cast<uint32_t>(hi & 0xFFFF);
      f.iova = lo & ~(kPage - 1);
      f.write = (hi & kFrcdRead) == 0;
      f.reason = fault_reason(static_cast<uint8_t>(hi >> 32), static_cast<uint16_t>(f.device_id),
                              f.iova, f.write);
      sink(ctx, f);
    }
  }
  if ((fsts & kFstsPfo) != 0) {
    write32(kRegFsts, kFstsPfo);
    __atomic_fetch_add(&overflows_, 1, __ATOMIC_RELAXED);
  }
  __atomic_fetch_add(&faults_seen_, n, __ATOMIC_RELAXED);
  return n;
}
