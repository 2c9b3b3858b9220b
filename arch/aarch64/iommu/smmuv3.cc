// Smmuv3 (dmakit/arch/smmuv3.h): the SMMUv3 driver. Register offsets, structure layouts and
// command encodings are those of the Arm System Memory Management Unit Architecture
// Specification, SMMU architecture version 3 (Arm IHI 0070).
#include "dmakit/arch/smmuv3.h"

#include "dmakit/arch/cpu_relax.h"
#include "dmakit/support/defer.h"

namespace {

// --- Registers (page 0; page 1 at +0x10000) ---------------------------------------------------
constexpr uint32_t kIdr0 = 0x00;
constexpr uint32_t kIdr1 = 0x04;
constexpr uint32_t kIdr5 = 0x14;
constexpr uint32_t kCr0 = 0x20;
constexpr uint32_t kCr0Ack = 0x24;
constexpr uint32_t kCr1 = 0x28;
constexpr uint32_t kCr2 = 0x2C;
constexpr uint32_t kGbpa = 0x44;
constexpr uint32_t kIrqCtrl = 0x50;
constexpr uint32_t kIrqCtrlAck = 0x54;
constexpr uint32_t kGerror = 0x60;
constexpr uint32_t kGerrorn = 0x64;
constexpr uint32_t kStrtabBase = 0x80;
constexpr uint32_t kStrtabBaseCfg = 0x88;
constexpr uint32_t kCmdqBase = 0x90;
constexpr uint32_t kCmdqProd = 0x98;
constexpr uint32_t kCmdqCons = 0x9C;
constexpr uint32_t kEventqBase = 0xA0;
constexpr uint32_t kEventqProd = 0x100A8;
constexpr uint32_t kEventqCons = 0x100AC;

// SMMU_IDR0
constexpr uint32_t kIdr0S1p = 1u << 1;
constexpr unsigned kIdr0TtfShift = 2;  // [3:2]: bit 1 of the field = AArch64 tables
constexpr uint32_t kIdr0Cohacc = 1u << 4;
constexpr uint32_t kIdr0Asid16 = 1u << 12;
constexpr unsigned kIdr0TtendianShift = 21;  // [22:21]: 0b11 = big-endian only
constexpr unsigned kIdr0StLevelShift = 27;   // [28:27]: 0b01 = two-level stream table
// SMMU_IDR1
constexpr unsigned kIdr1EventqsShift = 16;  // [20:16]
constexpr unsigned kIdr1CmdqsShift = 21;    // [25:21]
// SMMU_IDR5
constexpr uint32_t kIdr5Gran4k = 1u << 4;
// SMMU_CR0
constexpr uint32_t kCr0SmmuEn = 1u << 0;
constexpr uint32_t kCr0EventqEn = 1u << 2;
constexpr uint32_t kCr0CmdqEn = 1u << 3;
// SMMU_CR1 cacheability / shareability of queue and table accesses
constexpr uint32_t kCacheWb = 1;
constexpr uint32_t kShInner = 3;
constexpr uint32_t kShOuter = 2;
// SMMU_CR2
constexpr uint32_t kCr2RecInvSid = 1u << 1;
constexpr uint32_t kCr2Ptm = 1u << 2;
// SMMU_GBPA
constexpr uint32_t kGbpaAbort = 1u << 20;
constexpr uint32_t kGbpaUpdate = 1u << 31;
// SMMU_GERROR
constexpr uint32_t kGerrorCmdqErr = 1u << 0;
constexpr uint32_t kGerrorEventqAbt = 1u << 2;
// Queue and stream table base registers
constexpr uint64_t kBaseReadAlloc = 1ull << 62;  // RA (cmdq, strtab) / WA (eventq)
constexpr uint64_t kAddrMask52 = 0x000F'FFFF'FFFF'FFFFull;
// SMMU_STRTAB_BASE_CFG
constexpr uint32_t kStrtabFmt2Level = 1u << 16;
constexpr unsigned kStrtabSplitShift = 6;
constexpr unsigned kSplit = 8;  // StreamID bits resolved by a level-2 table (2^8 STEs, 16 KiB)
// SMMU_EVENTQ_PROD.OVFLG / SMMU_EVENTQ_CONS.OVACKFLG
constexpr uint32_t kEventqOverflow = 1u << 31;

// --- Stream table entry (8 dwords) ------------------------------------------------------------
constexpr uint64_t kSteValid = 1;
constexpr uint64_t kSteConfigMask = 7ull << 1;
constexpr uint64_t kSteConfigAbort = 0ull << 1;
constexpr uint64_t kSteConfigS1 = 5ull << 1;  // 0b101: stage 1 translate, stage 2 bypass
constexpr uint64_t kSteCtxPtrMask = 0x000F'FFFF'FFFF'FFC0ull;  // [51:6]
constexpr unsigned kSteS1cirShift = 2;                         // dword 1 [3:2]
constexpr unsigned kSteS1corShift = 4;                         // [5:4]
constexpr unsigned kSteS1cshShift = 6;                         // [7:6]
constexpr uint64_t kSteShcfgIncoming = 1ull << 44;             // [45:44] = 0b01
// Level-1 stream table descriptor
constexpr uint64_t kL1L2PtrMask = 0x000F'FFFF'FFFF'FFC0ull;  // [51:6]
constexpr uint64_t kL1SpanMask = 0x1F;

// --- Context descriptor (8 dwords) ------------------------------------------------------------
constexpr unsigned kCdT0szShift = 0;  // [5:0]
constexpr unsigned kCdIr0Shift = 8;   // [9:8]
constexpr unsigned kCdOr0Shift = 10;  // [11:10]
constexpr unsigned kCdSh0Shift = 12;  // [13:12]
constexpr uint64_t kCdEpd1 = 1ull << 30;
constexpr uint64_t kCdValid = 1ull << 31;
constexpr unsigned kCdIpsShift = 32;  // [34:32]
constexpr uint64_t kCdAa64 = 1ull << 41;
constexpr uint64_t kCdR = 1ull << 45;     // record faults
constexpr uint64_t kCdA = 1ull << 46;     // abort terminated transactions
constexpr uint64_t kCdAset = 1ull << 47;  // ASID not shared with the CPUs' broadcast TLBI
constexpr unsigned kCdAsidShift = 48;
constexpr uint64_t kCdTtb0Mask = 0x000F'FFFF'FFFF'FFF0ull;  // dword 1 [51:4]
constexpr uint64_t kMairNormalWb = 0xFF;  // Normal, inner/outer write-back, read/write-allocate
constexpr uint64_t kMairNormalNc = 0x44;  // Normal, inner/outer non-cacheable

// --- Commands (2 dwords) ------------------------------------------------------------------------
constexpr uint64_t kOpCfgiSte = 0x03;
constexpr uint64_t kOpCfgiAll = 0x04;  // CMD_CFGI_STE_RANGE with Range 31
constexpr uint64_t kOpCfgiCdAll = 0x06;
constexpr uint64_t kOpTlbiNhAsid = 0x11;
constexpr uint64_t kOpTlbiNhVa = 0x12;
constexpr uint64_t kOpTlbiNsnhAll = 0x30;
constexpr uint64_t kOpSync = 0x46;  // CS = 0b00: completion seen as consumption
constexpr unsigned kCmdSidShift = 32;
constexpr unsigned kCmdAsidShift = 48;
constexpr uint32_t kCmdqConsErrShift = 24;  // SMMU_CMDQ_CONS.ERR [30:24]

// --- Events (4 dwords) --------------------------------------------------------------------------
constexpr uint8_t kEvtFUut = 0x01;
constexpr uint8_t kEvtCBadStreamId = 0x02;
constexpr uint8_t kEvtFSteFetch = 0x03;
constexpr uint8_t kEvtCBadSte = 0x04;
constexpr uint8_t kEvtFStreamDisabled = 0x06;
constexpr uint8_t kEvtFTranslForbidden = 0x07;
constexpr uint8_t kEvtCBadSubstreamId = 0x08;
constexpr uint8_t kEvtFCdFetch = 0x09;
constexpr uint8_t kEvtCBadCd = 0x0A;
constexpr uint8_t kEvtFWalkEabt = 0x0B;
constexpr uint8_t kEvtFTranslation = 0x10;
constexpr uint8_t kEvtFAddrSize = 0x11;
constexpr uint8_t kEvtFAccess = 0x12;
constexpr uint8_t kEvtFPermission = 0x13;
constexpr uint8_t kEvtFTlbConflict = 0x20;
constexpr uint8_t kEvtFCfgConflict = 0x21;
constexpr uint64_t kEvtRnW = 1ull << 35;  // dword 1: 1 = read

// --- VMSAv8-64 stage-1 descriptors, 4 KiB granule -----------------------------------------------
constexpr uint64_t kPteValid = 1ull << 0;
constexpr uint64_t kPteTableOrPage = 1ull << 1;
constexpr uint64_t kPteApUnpriv = 1ull << 6;  // AP[1]
constexpr uint64_t kPteApRdOnly = 1ull << 7;  // AP[2]
constexpr uint64_t kPteShInner = 3ull << 8;
constexpr uint64_t kPteAf = 1ull << 10;
constexpr uint64_t kPteNg = 1ull << 11;
constexpr uint64_t kPtePxn = 1ull << 53;
constexpr uint64_t kPteUxn = 1ull << 54;
constexpr uint64_t kPteAddrMask = 0x0000'FFFF'FFFF'F000ull;  // [47:12]

constexpr uint64_t kPage = PageFrameAllocator::kPageSize;

inline void barrier_store() {
  __asm__ volatile("dsb st" ::: "memory");
}
inline void barrier_load() {
  __asm__ volatile("dsb ld" ::: "memory");
}
inline void barrier_full() {
  __asm__ volatile("dsb sy" ::: "memory");
}

uint32_t field(uint32_t v, unsigned shift, unsigned width) {
  return (v >> shift) & ((1u << width) - 1);
}

// Queue index arithmetic: an index carries a wrap bit just above its log2_entries index bits.
uint32_t q_mask(uint32_t log2) {
  return (2u << log2) - 1;
}
uint32_t q_inc(uint32_t v, uint32_t log2) {
  return (v + 1) & q_mask(log2);
}
uint32_t q_idx(uint32_t v, uint32_t log2) {
  return v & ((1u << log2) - 1);
}
bool q_full(uint32_t prod, uint32_t cons, uint32_t log2) {
  return (prod ^ cons) == (1u << log2);
}

uint8_t oas_bits(uint32_t oas) {
  constexpr uint8_t kBits[] = {32, 36, 40, 42, 44, 48, 52};
  return oas < sizeof(kBits) ? kBits[oas] : 48;
}

}  // namespace

using support::Guard;

// --- Page-table format ------------------------------------------------------------------------

uint64_t Smmuv3::table_entry(uint64_t table) {
  return (table & kPteAddrMask) | kPteTableOrPage | kPteValid;
}

uint64_t Smmuv3::page_entry(uint64_t page, unsigned perm) {
  // AttrIndx 0 (the CD's MAIR attribute 0), inner shareable, accessed, non-global (ASID-tagged),
  // never executable. Read-only unless the device may write; stage 1 cannot express write-only.
  uint64_t e = (page & kPteAddrMask) | kPteTableOrPage | kPteValid | kPteApUnpriv | kPteShInner |
               kPteAf | kPteNg | kPtePxn | kPteUxn;
  if ((perm & kIommuWrite) == 0) e |= kPteApRdOnly;
  return e;
}

bool Smmuv3::entry_valid(uint64_t entry) {
  return (entry & kPteValid) != 0;
}

uint64_t Smmuv3::entry_addr(uint64_t entry) {
  return entry & kPteAddrMask;
}

unsigned Smmuv3::entry_perm(uint64_t entry) {
  if (!entry_valid(entry)) return 0;
  return (entry & kPteApRdOnly) != 0 ? kIommuRead : (kIommuRead | kIommuWrite);
}

const char* Smmuv3::event_reason(uint8_t type) {
  switch (type) {
    case kEvtFTranslation:
      return "not mapped";
    case kEvtFPermission:
      return "permission";
    case kEvtFAccess:
      return "access flag";
    case kEvtFAddrSize:
      return "address size";
    case kEvtFWalkEabt:
      return "page-table walk abort";
    case kEvtCBadStreamId:
      return "no context (stream not configured)";
    case kEvtCBadSte:
      return "bad stream table entry";
    case kEvtFSteFetch:
      return "stream table fetch abort";
    case kEvtCBadCd:
      return "bad context descriptor";
    case kEvtFCdFetch:
      return "context descriptor fetch abort";
    case kEvtCBadSubstreamId:
      return "bad substream id";
    case kEvtFStreamDisabled:
      return "stream disabled";
    case kEvtFTranslForbidden:
      return "translation forbidden";
    case kEvtFUut:
      return "unsupported transaction";
    case kEvtFTlbConflict:
      return "TLB conflict";
    case kEvtFCfgConflict:
      return "configuration cache conflict";
    default:
      return "other event";
  }
}

// --- Registers and cache maintenance ------------------------------------------------------------

uint32_t Smmuv3::read32(uint32_t off) const {
  return *reinterpret_cast<volatile uint32_t*>(&regs_[off]);
}

void Smmuv3::write32(uint32_t off, uint32_t value) const {
  *reinterpret_cast<volatile uint32_t*>(&regs_[off]) = value;
}

void Smmuv3::write64(uint32_t off, uint64_t value) const {
  *reinterpret_cast<volatile uint64_t*>(&regs_[off]) = value;
}

void Smmuv3::clean(const void* va, size_t size) const {
  if (!features_.coherent && cache_ != nullptr) cache_->flush(va, size);
}

void Smmuv3::invalidate_cpu(const void* va, size_t size) const {
  if (!features_.coherent && cache_ != nullptr) cache_->invalidate(va, size);
}

Result<void> Smmuv3::write_cr0(uint32_t value) {
  barrier_full();  // Everything the new setting makes the SMMU read is in memory first.
  write32(kCr0, value);
  for (uint32_t i = 0; i < poll_limit_; ++i) {
    if (read32(kCr0Ack) == value) return support::ok();
    support::cpu_relax();
  }
  return ErrorCode::kTimedOut;
}

bool Smmuv3::set_global_bypass() {
  const uint32_t gbpa = read32(kGbpa);
  if ((gbpa & kGbpaAbort) == 0) return true;
  write32(kGbpa, (gbpa & ~kGbpaAbort) | kGbpaUpdate);
  for (uint32_t i = 0; i < poll_limit_; ++i) {
    if ((read32(kGbpa) & kGbpaUpdate) == 0) return (read32(kGbpa) & kGbpaAbort) == 0;
    support::cpu_relax();
  }
  return false;
}

bool Smmuv3::disable() {
  if (regs_ == nullptr) return false;
  enabled_ = false;  // covers() is false from now on: nothing attaches any more.
  const bool off = write_cr0(0).ok();
  write32(kIrqCtrl, 0);
  const bool bypass = set_global_bypass();
  return off && bypass;
}

void Smmuv3::release_memory() {
  auto give_back = [this](PhysAddr p, unsigned order) {
    if (p.value() != 0) (void)pfa_->free(p, order);
  };
  // Level-2 stream tables and CDs: found through the tables themselves.
  if (strtab_va_ != nullptr) {
    Guard guard{&cfg_lock_};
    const uint32_t streams =
        features_.two_level ? l1_entries_ << kSplit : (1u << features_.table_sid_bits);
    for (uint32_t sid = 0; sid < streams; ++sid) {
      const volatile uint64_t* s = ste_if_present(sid);
      if (s != nullptr && (s[0] & kSteConfigMask) == kSteConfigS1) {
        give_back(PhysAddr(s[0] & kSteCtxPtrMask), 0);
      }
    }
    if (features_.two_level) {
      for (uint32_t i = 0; i < l1_entries_; ++i) {
        if ((strtab_va_[i] & kL1SpanMask) != 0)
          give_back(PhysAddr(strtab_va_[i] & kL1L2PtrMask), 2);
      }
    }
  }
  give_back(strtab_, strtab_order_);
  {
    Guard guard{&cmdq_lock_};
    give_back(cmdq_.base, 0);
    cmdq_ = Queue{};
  }
  {
    Guard guard{&evtq_lock_};
    give_back(evtq_.base, 0);
    evtq_ = Queue{};
  }
  strtab_ = PhysAddr();
  strtab_va_ = nullptr;
}

// --- Initialisation ---------------------------------------------------------------------------

Result<void> Smmuv3::init(const Config& config) {
  if (initialised_ || config.regs == nullptr || config.pfa == nullptr || config.num_streams == 0 ||
      config.num_streams > kMaxStreamRanges || config.poll_limit == 0) {
    return fail("invalid configuration", ErrorCode::kInvalidArgument);
  }
  regs_ = static_cast<volatile uint8_t*>(config.regs);
  pfa_ = config.pfa;
  cache_ = config.cache;
  poll_limit_ = config.poll_limit;
  num_streams_ = config.num_streams;
  uint64_t max_sid = 0;
  for (size_t i = 0; i < num_streams_; ++i) {
    streams_[i] = config.streams[i];
    if (streams_[i].count == 0) return fail("empty stream range", ErrorCode::kInvalidArgument);
    const uint64_t last = uint64_t{streams_[i].base} + streams_[i].count - 1;
    if (last > max_sid) max_sid = last;
  }

  Features f;
  f.idr0 = read32(kIdr0);
  f.idr1 = read32(kIdr1);
  f.idr5 = read32(kIdr5);
  f.sid_bits = static_cast<uint8_t>(field(f.idr1, 0, 6));
  f.asid16 = (f.idr0 & kIdr0Asid16) != 0;
  f.coherent = config.coherent && (f.idr0 & kIdr0Cohacc) != 0;
  f.oas_bits = oas_bits(field(f.idr5, 0, 3));
  if ((f.idr0 & kIdr0S1p) == 0) return fail("no stage-1 translation", ErrorCode::kNotSupported);
  if ((field(f.idr0, kIdr0TtfShift, 2) & 2) == 0) {
    return fail("no AArch64 translation tables", ErrorCode::kNotSupported);
  }
  if ((f.idr5 & kIdr5Gran4k) == 0) return fail("no 4 KiB granule", ErrorCode::kNotSupported);
  if (field(f.idr0, kIdr0TtendianShift, 2) == 3) {
    return fail("big-endian tables only", ErrorCode::kNotSupported);
  }
  if (!f.coherent && cache_ == nullptr) {
    return fail("non-coherent SMMU without cache maintenance", ErrorCode::kInvalidArgument);
  }
  uint8_t bits = 0;
  while (bits < 32 && (uint64_t{1} << bits) <= max_sid) ++bits;
  if (bits > f.sid_bits) bits = f.sid_bits;
  f.table_sid_bits = bits;
  f.two_level = field(f.idr0, kIdr0StLevelShift, 2) == 1 && bits > kSplit;
  const uint32_t cmdq_log2 = support::min<uint32_t>(field(f.idr1, kIdr1CmdqsShift, 5), 8);
  const uint32_t evtq_log2 = support::min<uint32_t>(field(f.idr1, kIdr1EventqsShift, 5), 7);
  f.cmdq_entries = 1u << cmdq_log2;
  f.eventq_entries = 1u << evtq_log2;
  features_ = f;
  // CD.IPS uses SMMU_IDR5.OAS's encoding; 52-bit output needs the 64 KiB granule.
  ias_ips_ = support::min<uint32_t>(field(f.idr5, 0, 3), 5);

  // From here on, any failure turns the SMMU off and gives every page back.
  auto undo = support::defer([this] {
    disable();
    release_memory();
  });

  // Stream table.
  uint64_t strtab_bytes = 0;
  if (f.two_level) {
    l1_entries_ = 1u << (bits - kSplit);
    strtab_bytes = uint64_t{l1_entries_} * 8;
  } else {
    strtab_bytes = uint64_t{64} << bits;
  }
  strtab_order_ = PageFrameAllocator::order_for(support::max<uint64_t>(strtab_bytes, kPage));
  if (strtab_order_ > PageFrameAllocator::kMaxOrder) {
    return fail("stream table too large", ErrorCode::kNotSupported);
  }
  auto st = pfa_->alloc(strtab_order_);
  if (!st.ok()) return fail("no memory for the stream table", ErrorCode::kNoMemory);
  strtab_ = *st;
  strtab_va_ = static_cast<uint64_t*>(virt(strtab_));
  const size_t st_words = static_cast<size_t>((kPage << strtab_order_) / 8);
  for (size_t i = 0; i < st_words; ++i) strtab_va_[i] = 0;
  if (!f.two_level) {
    for (size_t i = 0; i < st_words; i += 8) write_abort_ste(&strtab_va_[i]);
  }
  clean(strtab_va_, static_cast<size_t>(kPage << strtab_order_));

  // Queues: one page each (at most 256 commands of 16 bytes, 128 events of 32 bytes).
  auto cq = pfa_->alloc(0);
  if (!cq.ok()) return fail("no memory for the command queue", ErrorCode::kNoMemory);
  auto eq = pfa_->alloc(0);
  if (!eq.ok()) {
    (void)pfa_->free(*cq, 0);
    return fail("no memory for the event queue", ErrorCode::kNoMemory);
  }
  {
    Guard guard{&cmdq_lock_};
    cmdq_ = Queue{*cq, static_cast<uint64_t*>(virt(*cq)), cmdq_log2, 2, 0, 0};
    for (size_t i = 0; i < kPage / 8; ++i) cmdq_.va[i] = 0;
    clean(cmdq_.va, kPage);
  }
  {
    Guard guard{&evtq_lock_};
    evtq_ = Queue{*eq, static_cast<uint64_t*>(virt(*eq)), evtq_log2, 4, 0, 0};
    for (size_t i = 0; i < kPage / 8; ++i) evtq_.va[i] = 0;
    // Cleaned and invalidated: no dirty line may later be written back over an event record.
    clean(evtq_.va, kPage);
    invalidate_cpu(evtq_.va, kPage);
  }

  // Program the SMMU with everything off.
  if (!write_cr0(0).ok()) return fail("CR0 not acknowledged", ErrorCode::kTimedOut);
  write32(kIrqCtrl, 0);  // Faults are polled (drain_faults).
  for (uint32_t i = 0; i < poll_limit_ && read32(kIrqCtrlAck) != 0; ++i) support::cpu_relax();
  const uint32_t cache = f.coherent ? kCacheWb : 0;
  const uint32_t sh = f.coherent ? kShInner : kShOuter;
  write32(kCr1, cache | cache << 2 | sh << 4 | cache << 6 | cache << 8 | sh << 10);
  write32(kCr2, kCr2RecInvSid | kCr2Ptm);
  const uint64_t alloc_hint = f.coherent ? kBaseReadAlloc : 0;
  write64(kStrtabBase, (strtab_.value() & kAddrMask52) | alloc_hint);
  write32(kStrtabBaseCfg,
          f.two_level ? (kStrtabFmt2Level | kSplit << kStrtabSplitShift | bits) : bits);
  write64(kCmdqBase, (cq->value() & kAddrMask52) | alloc_hint | cmdq_log2);
  write32(kCmdqProd, 0);
  write32(kCmdqCons, 0);
  write64(kEventqBase, (eq->value() & kAddrMask52) | alloc_hint | evtq_log2);
  write32(kEventqProd, 0);
  write32(kEventqCons, 0);

  if (!write_cr0(kCr0CmdqEn).ok()) return fail("command queue not enabled", ErrorCode::kTimedOut);
  // Nothing cached from before (firmware, an earlier kernel) may survive.
  const uint64_t cmds[2][2] = {{kOpCfgiAll, 31}, {kOpTlbiNsnhAll, 0}};
  Result<void> r = submit(cmds, 2);
  if (!r.ok()) return fail("initial invalidation failed", r.code());
  if (!write_cr0(kCr0CmdqEn | kCr0EventqEn).ok()) {
    return fail("event queue not enabled", ErrorCode::kTimedOut);
  }
  if (!write_cr0(kCr0CmdqEn | kCr0EventqEn | kCr0SmmuEn).ok()) {
    return fail("translation not enabled", ErrorCode::kTimedOut);
  }

  format_.levels = 4;
  format_.coherent_walk = f.coherent;
  format_.table_entry = &Smmuv3::table_entry;
  format_.page_entry = &Smmuv3::page_entry;
  format_.entry_valid = &Smmuv3::entry_valid;
  format_.entry_addr = &Smmuv3::entry_addr;
  undo.cancel();
  initialised_ = true;
  enabled_ = true;
  failure_ = "";
  return support::ok();
}

// --- Stream table
// ---------------------------------------------------------------------------------

void Smmuv3::write_abort_ste(volatile uint64_t* s) const {
  for (unsigned i = 1; i < 8; ++i) s[i] = 0;
  s[1] = kSteShcfgIncoming;
  s[0] = kSteValid | kSteConfigAbort;
}

const volatile uint64_t* Smmuv3::ste_if_present(uint32_t sid) const {
  if (strtab_va_ == nullptr || sid >= (1u << features_.table_sid_bits)) return nullptr;
  if (!features_.two_level) return &strtab_va_[size_t{sid} * 8];
  const uint64_t l1 = strtab_va_[sid >> kSplit];
  if ((l1 & kL1SpanMask) == 0) return nullptr;
  auto* l2 = static_cast<volatile uint64_t*>(virt(PhysAddr(l1 & kL1L2PtrMask)));
  return &l2[size_t{sid & ((1u << kSplit) - 1)} * 8];
}

Result<volatile uint64_t*> Smmuv3::ste(uint32_t sid, bool allocate) {
  const volatile uint64_t* s = ste_if_present(sid);
  if (s != nullptr || !allocate || !features_.two_level) return const_cast<volatile uint64_t*>(s);
  // A level-2 table of 2^kSplit STEs (16 KiB, aligned to its size), every stream aborting.
  TRY_ASSIGN(PhysAddr l2, pfa_->alloc(2));
  auto* l2_va = static_cast<volatile uint64_t*>(virt(l2));
  for (uint32_t i = 0; i < (1u << kSplit); ++i) write_abort_ste(&l2_va[size_t{i} * 8]);
  clean(const_cast<uint64_t*>(l2_va), size_t{64} << kSplit);
  barrier_store();
  volatile uint64_t* l1 = &strtab_va_[sid >> kSplit];
  *l1 = (l2.value() & kL1L2PtrMask) | (kSplit + 1);  // Span: 2^(Span-1) STEs
  clean(const_cast<uint64_t*>(l1), 8);
  ++l2_tables_;
  return &l2_va[size_t{sid & ((1u << kSplit) - 1)} * 8];
}

bool Smmuv3::covers(uint32_t device_id) const {
  if (!enabled_ || device_id >= (1ull << features_.table_sid_bits)) return false;
  for (size_t i = 0; i < num_streams_; ++i) {
    if (device_id >= streams_[i].base && device_id - streams_[i].base < streams_[i].count) {
      return true;
    }
  }
  return false;
}

Result<void> Smmuv3::attach(uint32_t device_id, uint32_t domain, PhysAddr root) {
  if (!covers(device_id) || domain == 0 || domain > max_domains() ||
      (root.value() & (kPage - 1)) != 0 || root.value() == 0 ||
      (root.value() >> features_.oas_bits) != 0) {
    return ErrorCode::kInvalidArgument;
  }
  Guard guard{&cfg_lock_};
  TRY_ASSIGN(volatile uint64_t* s, ste(device_id, true));
  if (s == nullptr) return ErrorCode::kNoMemory;  // linear table: cannot happen for a covered id
  TRY_ASSIGN(PhysAddr cd, pfa_->alloc(0));

  // The context descriptor: TTB0 = root, 48-bit IOVAs, 4 KiB granule, TTB1 walks disabled.
  auto* c = static_cast<volatile uint64_t*>(virt(cd));
  const uint64_t cache = features_.coherent ? kCacheWb : 0;
  const uint64_t sh = features_.coherent ? kShInner : kShOuter;
  for (unsigned i = 1; i < 8; ++i) c[i] = 0;
  c[1] = root.value() & kCdTtb0Mask;
  c[3] = features_.coherent ? kMairNormalWb : kMairNormalNc;
  barrier_store();
  c[0] = uint64_t{64 - kIovaBits} << kCdT0szShift | cache << kCdIr0Shift | cache << kCdOr0Shift |
         sh << kCdSh0Shift | kCdEpd1 | kCdValid | uint64_t{ias_ips_} << kCdIpsShift | kCdAa64 |
         kCdR | kCdA | kCdAset | uint64_t{domain} << kCdAsidShift;
  clean(const_cast<uint64_t*>(c), 64);

  const uint64_t old = s[0];
  const PhysAddr old_cd =
      (old & kSteConfigMask) == kSteConfigS1 ? PhysAddr(old & kSteCtxPtrMask) : PhysAddr();
  s[1] =
      kSteShcfgIncoming | cache << kSteS1cirShift | cache << kSteS1corShift | sh << kSteS1cshShift;
  for (unsigned i = 2; i < 8; ++i) s[i] = 0;
  clean(const_cast<uint64_t*>(s), 64);
  barrier_store();
  s[0] = kSteValid | kSteConfigS1 | (cd.value() & kSteCtxPtrMask);  // S1Fmt 0, S1CDMax 0
  clean(const_cast<uint64_t*>(s), 8);

  // The STE (and a level-1 descriptor, Leaf = 0), the stream's CDs, and whatever the ASID held.
  const uint64_t cmds[3][2] = {
      {kOpCfgiSte | uint64_t{device_id} << kCmdSidShift, 0},
      {kOpCfgiCdAll | uint64_t{device_id} << kCmdSidShift, 0},
      {kOpTlbiNhAsid | uint64_t{domain} << kCmdAsidShift, 0},
  };
  TRY(submit(cmds, 3));
  if (old_cd.value() != 0) {
    (void)pfa_->free(old_cd, 0);
  } else {
    ++attached_;
  }
  return support::ok();
}

void Smmuv3::detach(uint32_t device_id) {
  if (!covers(device_id)) return;
  Guard guard{&cfg_lock_};
  auto s = ste(device_id, false);
  if (!s.ok() || *s == nullptr) return;  // never configured: it already aborts
  volatile uint64_t* e = *s;
  const uint64_t old = e[0];
  if ((old & kSteConfigMask) != kSteConfigS1) return;
  e[0] = kSteValid | kSteConfigAbort;
  clean(const_cast<uint64_t*>(e), 8);
  const uint64_t cmds[2][2] = {
      {kOpCfgiSte | uint64_t{device_id} << kCmdSidShift, 0},
      {kOpCfgiCdAll | uint64_t{device_id} << kCmdSidShift, 0},
  };
  // The CD is freed only once the SMMU acknowledged that nothing refers to it any more.
  if (submit(cmds, 2).ok()) (void)pfa_->free(PhysAddr(old & kSteCtxPtrMask), 0);
  --attached_;
}

Result<Smmuv3::Attachment> Smmuv3::attachment(uint32_t sid) const {
  if (!covers(sid)) return ErrorCode::kInvalidArgument;
  Guard guard{&cfg_lock_};
  const volatile uint64_t* s = ste_if_present(sid);
  if (s == nullptr || (s[0] & kSteValid) == 0 || (s[0] & kSteConfigMask) != kSteConfigS1) {
    return ErrorCode::kNotFound;
  }
  const auto* c = static_cast<const volatile uint64_t*>(virt(PhysAddr(s[0] & kSteCtxPtrMask)));
  Attachment a;
  a.domain = static_cast<uint32_t>(c[0] >> kCdAsidShift);
  a.root = PhysAddr(c[1] & kCdTtb0Mask);
  return a;
}

// --- Invalidation
// ---------------------------------------------------------------------------------

void Smmuv3::invalidate(uint32_t domain, uint64_t iova, uint64_t size) {
  if (!enabled_ || domain == 0 || domain > max_domains()) return;
  const uint64_t first = iova & ~(kPage - 1);
  const uint64_t pages = size == 0 ? 0 : ((iova + size - 1) / kPage) - (iova / kPage) + 1;
  uint64_t cmds[kMaxPageInvalidations][2];
  size_t n = 0;
  if (pages == 0 || pages > kMaxPageInvalidations) {
    cmds[n][0] = kOpTlbiNhAsid | uint64_t{domain} << kCmdAsidShift;
    cmds[n][1] = 0;
    ++n;
  } else {
    // Leaf = 0: the walk caches go too, since the generic layer may free emptied tables.
    for (uint64_t p = 0; p < pages; ++p, ++n) {
      cmds[n][0] = kOpTlbiNhVa | uint64_t{domain} << kCmdAsidShift;
      cmds[n][1] = first + p * kPage;
    }
  }
  // A failure is counted (Stats::sync_failures); the caller has no error to act on.
  (void)submit(cmds, n);
}

// --- Command queue
// --------------------------------------------------------------------------------

Result<void> Smmuv3::submit(const uint64_t (*cmds)[2], size_t n) {
  Guard guard{&cmdq_lock_};
  if (cmdq_.va == nullptr) return ErrorCode::kInvalidArgument;
  for (size_t i = 0; i < n; ++i) TRY(push_locked(cmds[i]));
  const uint64_t sync[2] = {kOpSync, 0};
  TRY(push_locked(sync));
  barrier_store();
  write32(kCmdqProd, cmdq_.prod);
  ++stats_cmd_.syncs;
  Result<void> r = wait_consumed_locked(cmdq_.prod);
  if (!r.ok()) ++stats_cmd_.sync_failures;
  return r;
}

Result<void> Smmuv3::push_locked(const uint64_t cmd[2]) {
  const uint32_t log2 = cmdq_.log2_entries;
  if (q_full(cmdq_.prod, cmdq_.cons, log2)) {
    // Publish what is queued, then wait for room.
    barrier_store();
    write32(kCmdqProd, cmdq_.prod);
    uint32_t i = 0;
    while (q_full(cmdq_.prod, cmdq_.cons, log2)) {
      if ((read32(kGerror) ^ read32(kGerrorn)) & kGerrorCmdqErr) recover_cmd_error_locked();
      cmdq_.cons = read32(kCmdqCons) & q_mask(log2);
      if (++i > poll_limit_) return ErrorCode::kTimedOut;
      support::cpu_relax();
    }
  }
  uint64_t* e = &cmdq_.va[size_t{q_idx(cmdq_.prod, log2)} * 2];
  e[0] = cmd[0];
  e[1] = cmd[1];
  clean(e, 16);
  cmdq_.prod = q_inc(cmdq_.prod, log2);
  ++stats_cmd_.commands;
  return support::ok();
}

void Smmuv3::recover_cmd_error_locked() {
  // SMMU_CMDQ_CONS points at the refused command: replace it with a CMD_SYNC (which cannot be
  // refused) and acknowledge the error, so that the queue moves on.
  const uint32_t cons = read32(kCmdqCons);
  stats_cmd_.last_cmd_error = (cons >> kCmdqConsErrShift) & 0x7F;
  uint64_t* e = &cmdq_.va[size_t{q_idx(cons, cmdq_.log2_entries)} * 2];
  e[0] = kOpSync;
  e[1] = 0;
  clean(e, 16);
  barrier_store();
  ack_gerror(kGerrorCmdqErr);
  ++stats_cmd_.cmd_errors;
}

bool Smmuv3::ack_gerror(uint32_t bits) {
  // SMMU_GERRORN is shared by the command and event queue paths: one read-modify-write at a time.
  Guard guard{&gerror_lock_};
  const uint32_t gerrorn = read32(kGerrorn);
  const uint32_t active = (read32(kGerror) ^ gerrorn) & bits;
  if (active != 0) write32(kGerrorn, gerrorn ^ active);
  return active != 0;
}

Result<void> Smmuv3::wait_consumed_locked(uint32_t index) {
  const uint32_t mask = q_mask(cmdq_.log2_entries);
  bool refused = false;
  for (uint32_t i = 0; i < poll_limit_; ++i) {
    if ((read32(kGerror) ^ read32(kGerrorn)) & kGerrorCmdqErr) {
      recover_cmd_error_locked();
      refused = true;
    }
    const uint32_t cons = read32(kCmdqCons) & mask;
    cmdq_.cons = cons;
    if (cons == index) {
      barrier_load();
      if (refused) return ErrorCode::kIoError;
      return support::ok();
    }
    support::cpu_relax();
  }
  return ErrorCode::kTimedOut;
}

// --- Event queue
// ----------------------------------------------------------------------------------

size_t Smmuv3::drain_faults(void (*sink)(void* ctx, const IommuFault& fault), void* ctx) {
  constexpr size_t kBatch = 8;
  size_t reported = 0;
  IommuFault prev;
  bool have_prev = false;
  for (;;) {
    Event batch[kBatch];
    size_t n = 0;
    {
      Guard guard{&evtq_lock_};
      if (evtq_.va == nullptr) return reported;
      const uint32_t log2 = evtq_.log2_entries;
      const uint32_t prod_reg = read32(kEventqProd);
      const uint32_t prod = prod_reg & q_mask(log2);
      if (((prod_reg ^ read32(kEventqCons)) & kEventqOverflow) != 0) ++stats_evt_.overflows;
      // An SMMU that cannot write a record (QEMU's, when the queue is full) flags
      // SMMU_GERROR.EVENTQ_ABT_ERR instead: records were lost too. Acknowledged here.
      if (ack_gerror(kGerrorEventqAbt)) ++stats_evt_.overflows;
      barrier_load();  // The records up to PROD are read after PROD.
      while (evtq_.cons != prod && n < kBatch) {
        uint64_t* e = &evtq_.va[size_t{q_idx(evtq_.cons, log2)} * 4];
        invalidate_cpu(e, 32);
        for (unsigned w = 0; w < 4; ++w) batch[n].dw[w] = __atomic_load_n(&e[w], __ATOMIC_RELAXED);
        ++n;
        evtq_.cons = q_inc(evtq_.cons, log2);
      }
      barrier_full();  // The records are read before the SMMU may overwrite them.
      write32(kEventqCons, evtq_.cons | (prod_reg & kEventqOverflow));
      stats_evt_.events += n;
    }
    for (size_t i = 0; i < n; ++i) {
      const uint8_t type = static_cast<uint8_t>(batch[i].dw[0] & 0xFF);
      IommuFault f;
      f.device_id = static_cast<uint32_t>(batch[i].dw[0] >> 32);
      f.reason = event_reason(type);
      switch (type) {
        case kEvtFUut:
        case kEvtFTranslForbidden:
        case kEvtFWalkEabt:
        case kEvtFTranslation:
        case kEvtFAddrSize:
        case kEvtFAccess:
        case kEvtFPermission:
          f.iova = batch[i].dw[2];
          f.write = (batch[i].dw[1] & kEvtRnW) == 0;
          break;
        default:
          break;  // configuration errors carry no input address
      }
      // One faulting burst records an event per bus transaction: report the run once.
      const bool repeat = have_prev && prev.device_id == f.device_id && prev.reason == f.reason &&
                          prev.write == f.write && (prev.iova / kPage) == (f.iova / kPage);
      prev = f;
      have_prev = true;
      if (repeat) continue;
      ++reported;
      if (sink != nullptr) sink(ctx, f);
    }
    if (n < kBatch) return reported;
  }
}

Smmuv3::Stats Smmuv3::stats() const {
  Stats s;
  {
    Guard guard{&cmdq_lock_};
    s.commands = stats_cmd_.commands;
    s.syncs = stats_cmd_.syncs;
    s.sync_failures = stats_cmd_.sync_failures;
    s.cmd_errors = stats_cmd_.cmd_errors;
    s.last_cmd_error = stats_cmd_.last_cmd_error;
  }
  {
    Guard guard{&evtq_lock_};
    s.events = stats_evt_.events;
    s.overflows = stats_evt_.overflows;
  }
  {
    Guard guard{&cfg_lock_};
    s.l2_tables = l2_tables_;
    s.attached = attached_;
  }
  return s;
}
