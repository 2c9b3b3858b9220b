// DmaDebug: the DMA-API misuse checker, in the spirit of Linux's CONFIG_DMA_API_DEBUG.
//
// Compiled in when DMA_API_DEBUG is 1 (the host tests, the fuzzers and the test kernels). When it
// is 0 every hook below is an empty inline function and DmaMapResult<T> is plain Result<T>: the
// checker costs nothing. Two things exist in every build, because more than the checker uses
// them: the library's diagnostic sink (set_sink; the bounce pools print through it too) and
// device identities (new_device_id; the bounce pools account per device). Struct layouts (the
// device_id fields of DmaConstraints and the handles) do not depend on the option, so objects
// built with and without it link together; DmaDebug::Entry does, and only the checker's build
// reads it.
//
// Scheme: every live streaming mapping and coherent allocation made through KernelDmaOp is one
// entry of a fixed table (no heap), chained into hash buckets keyed by (DmaOp, DMA address), with
// unused entries on a free list. The kernel chooses the table's size: DmaDebug::init hands the
// checker a buffer of entries (a NIC's receive rings alone can keep thousands of mappings live);
// until then it uses a small table of kDefaultEntries in static storage, enough for a bring-up,
// so that the library's own static footprint stays small. Inserting (map,
// alloc_coherent) is O(1); unmap, dealloc and sync find their entry in O(length of one bucket
// chain), normally one or two entries, and check the request against what was recorded. The
// device teardown check and a DmaOp's destruction walk the whole table, O(capacity()). One
// spinlock guards the table (it masks interrupts through the kernel's hooks, like every lock of
// the library); a report is formatted into a stack buffer under it and handed to the sink after
// it is released.
//
// Calling contexts (dmakit/dma_op.h): set_sink, init and reset are thread only, before devices
// start (or in tests, with no DMA call running); new_device_id, the queries and the hooks are
// any context, so the checker follows the DMA call it checks into an interrupt handler (the
// hooks that walk the whole table, at a device's teardown or a DmaOp's destruction, take
// O(capacity()) with interrupts masked).
//
// When the table is full, a new mapping is not tracked: it is counted (untracked()), the first
// time is reported (one line), and checking goes on for everything tracked. The untracked
// mappings are also counted per hash bucket, so that their unmap, syncs and coherent free, which
// find no entry, are let through silently instead of being reported as kNotMapped; the price is
// that while an untracked mapping is live, an unmap of something never mapped that falls in the
// same bucket (one bucket in 1024) is let through too, and a DmaOp shut down with untracked
// mappings still live leaves their counts behind until reset() or init().
//
// Each misuse prints exactly one line through the sink and bumps that kind's counter:
//   kNotMapped          unmap_single / dealloc_coherent / a sync of something not live (never
//                       mapped, or already unmapped or freed).         Refused: nothing happens.
//   kSizeMismatch       unmap, sync or dealloc with a size other than the mapping's.    Refused.
//   kDirectionMismatch  unmap with another direction than the mapping's, or a sync whose
//                       direction the mapping does not allow (a bidirectional mapping allows
//                       any: the sync calls take a direction precisely to narrow it).  Refused.
//   kSyncOutOfRange     prepare_read / confirm_write of a range not inside the mapping.
//                       Refused with kOutOfRange (as without the checker).
//   kLeakAtTeardown     a mapping or allocation still live when its device is torn down
//                       (DeviceDma::check_no_mappings) or its DmaOp shut down, with the place it
//                       was made (file:line of the DeviceDma call, and the caller's address).
//   kWrongFreeType      unmap_single of a coherent allocation, dealloc_coherent of a streaming
//                       mapping.                                                      Refused.
//   kErrorIgnored       a failed DeviceDma::map whose result was dropped without ok(), code(),
//                       error() or a conversion ever looking at it.
//   kTableFull          no room left to track a new mapping: reported once (until reset()), and
//                       the mapping is counted in untracked(). Nothing else changes: the mapping
//                       itself succeeds, and the tracked ones are still checked.
//   kWrongContext       a function documented "thread only" (dmakit/dma_op.h, Calling contexts)
//                       called from an interrupt handler, or with interrupts disabled, as the
//                       kernel's in_interrupt and irqs_disabled hooks (dmakit/kernel_hooks.h)
//                       tell: KernelDmaOp::alloc_coherent and dealloc_coherent for a device
//                       that is not coherent, the architectures'
//                       set_memory_attribute, DmaPool::init, reserve and alloc. Refused before
//                       anything else is looked at: the functions that return a Result return
//                       kBusy (not from here; the same call from thread context may succeed),
//                       dealloc_coherent does nothing (the allocation stays live, and is
//                       reported as a leak at teardown if never freed from thread context).
//                       Without the hooks nothing is checked (each hook answers for its own
//                       context); a release build never checks.
// A refused operation changes no accounting: the mapping or allocation stays live (and is
// reported again at teardown if it is never released correctly).
#pragma once

#include "dmakit/dma_types.h"
#include "dmakit/support/result.h"
#include "dmakit/support/types.h"
#include "dmakit/support/utility.h"

#if defined(DMA_API_DEBUG) && DMA_API_DEBUG
#define DMA_API_DEBUG_ENABLED 1
#else
#define DMA_API_DEBUG_ENABLED 0
#endif

class DmaOp;

// The kinds of misuse, for counters and tests.
enum class DmaDebugKind : uint8_t {
  kNotMapped = 0,
  kSizeMismatch,
  kDirectionMismatch,
  kSyncOutOfRange,
  kLeakAtTeardown,
  kWrongFreeType,
  kErrorIgnored,
  kTableFull,
  kWrongContext,
  kCount,
};

// Short name of a kind ("not-mapped", ...), as printed at the start of its report lines.
const char* dma_debug_kind_name(DmaDebugKind kind);

// Where a mapping or allocation was requested: captured by default arguments of the DeviceDma
// calls, so a leak report names the driver's line. Empty (and free) when the checker is off.
struct DmaCallSite {
#if DMA_API_DEBUG_ENABLED
  const char* file = nullptr;
  uint32_t line = 0;
  static constexpr DmaCallSite current(const char* file = __builtin_FILE(),
                                       uint32_t line = __builtin_LINE()) {
    return DmaCallSite{file, line};
  }
#else
  static constexpr DmaCallSite current() { return DmaCallSite{}; }
#endif
};

// Which call a sync hook checks.
enum class DmaSyncCall : uint8_t { kPrepareRead, kConfirmWrite };

class DmaDebug {
 public:
  static constexpr bool kEnabled = DMA_API_DEBUG_ENABLED;
  // The table used until init() is called: a bring-up's few mappings. A kernel with more live
  // mappings than this gives init() a table of its own size (sizeof(Entry) bytes per entry).
  static constexpr size_t kDefaultEntries = 64;
  // Entries are linked by 32-bit indices (plus one).
  static constexpr size_t kMaxTableEntries = 0xFFFF'FFFEu;
  static_assert(kDefaultEntries > 0 && kDefaultEntries <= kMaxTableEntries, "bad default table");

  // Receives one report line (no trailing newline; at most 399 characters). Called with no lock of
  // the checker held, from whatever context made the faulty call.
  using Sink = void (*)(void* ctx, const char* line);

  // ---- In every build. ----

  // Sets the library's diagnostic sink: where the checker's report lines and the bounce pools'
  // (BouncePool::set_report_sink) go. Null: nowhere; they are still counted. The kernel points
  // it at its console; the host tests capture the lines. Returns the previous sink and its
  // context through the out-parameters when they are non-null. Not synchronised with reports in
  // flight: set it before devices start, or from a single thread (tests).
  static void set_sink(Sink sink, void* ctx, Sink* old_sink = nullptr, void** old_ctx = nullptr);
  // A fresh device identity (never 0), for DmaConstraints::device_id: the checker's entries and
  // the bounce pools' per-device accounting both key on it. Lock-free; any context.
  static uint32_t new_device_id();

#if DMA_API_DEBUG_ENABLED
  enum class EntryType : uint8_t { kFree = 0, kStreaming, kCoherent };
  // One tracked mapping or allocation: storage for init(). Its fields are the checker's own.
  struct Entry {
    const void* op;
    uint64_t dma;
    const void* cpu;
    uint64_t size;
    const char* name;
    const void* caller;  // Return address of map_single / alloc_coherent.
    const char* file;    // Driver call site (DeviceDma), or null.
    uint32_t line;
    uint32_t device_id;
    uint32_t next;  // Next entry of the bucket chain or of the free list: index + 1, 0 for none.
    EntryType type;
    DmaDirection dir;
  };
#else
  struct Entry {};
#endif

#if DMA_API_DEBUG_ENABLED
  // ---- Configuration and queries. ----

  // Makes the checker track mappings in `entries[0 .. count)`, which the caller owns and keeps
  // (unmoved) for as long as the checker runs; init(nullptr, 0) goes back to the default table
  // of kDefaultEntries. Call at boot, before the first mapping (or, in tests, when nothing is
  // tracked): it forgets the untracked count and the table-full report, like reset(), but keeps
  // the report counters. Without the checker it only checks its arguments.
  // Errors: kInvalidArgument (null entries with a non-zero count or the reverse, count above
  // kMaxTableEntries), kBusy (mappings or allocations are tracked right now; nothing changed).
  static Result<void> init(Entry* entries, size_t count);
  // Entries the current table holds.
  static size_t capacity();
  // Reports of one kind, and of all kinds, since start or the last reset().
  static uint64_t count(DmaDebugKind kind);
  static uint64_t total();
  // Mappings and coherent allocations currently tracked: all of them, or one device's.
  static size_t live_entries();
  static size_t live_entries(uint32_t device_id);
  // Mappings and coherent allocations made while the table was full (not tracked, not checked)
  // since start, the last reset() or init(); and how many of them are still live.
  static uint64_t untracked();
  static uint64_t untracked_live();
  // Forgets every tracked entry and the untracked counts, zeroes the report counters. For tests:
  // must not race with any DMA-API call.
  static void reset();

  // ---- Hooks, called by KernelDmaOp and DeviceDma (one call per event). Any context, as the
  // call they check. `op` is the DmaOp the mapping belongs to. ----

  // A streaming mapping was made. `caller`: the return address of map_single.
  static void on_map(const void* op, const DmaConstraints& c, const DmaMapHandle& h,
                     const void* caller);
  // An unmap is requested: true when it matches a live mapping exactly (which is then
  // forgotten), false when it must be refused (reported).
  static bool on_unmap(const void* op, const DmaMapHandle& h);
  // A sync is requested: kOk to go ahead, otherwise the error to return (reported).
  static ErrorCode on_sync(const void* op, const DmaMapHandle& h, size_t offset, size_t size,
                           DmaDirection dir, DmaSyncCall call);
  // A coherent allocation was made.
  static void on_alloc_coherent(const void* op, const DmaConstraints& c, const DmaHandle& h,
                                const void* caller);
  // A coherent free is requested: true when it matches a live allocation exactly (then
  // forgotten), false when it must be refused (reported).
  static bool on_dealloc_coherent(const void* op, const DmaHandle& h);
  // Records the driver's call site on the newest live entry of (op, dma, device) that has none.
  static void note_call_site(const void* op, DmaAddr dma, uint32_t device_id, DmaCallSite site);
  // A device is being torn down: reports every live entry of `c.device_id` (one line each) and
  // returns how many there are. Entries stay tracked: they are still live.
  static size_t check_device_teardown(const DmaConstraints& c);
  // A DmaOp ends (KernelDmaOp::shutdown): reports its live entries and forgets them.
  static void on_op_destroyed(const void* op);
  // A failed map's result was dropped unchecked.
  static void on_error_ignored(const char* name, uint32_t device_id, const void* addr, size_t size,
                               DmaDirection dir, Error e);
  // Entry of a thread-only function (`function`, for the report) on behalf of a device (its name
  // and id; null and 0 when the call concerns no device): true when the caller is allowed,
  // false when it runs in an interrupt handler or with interrupts disabled (reported as
  // kWrongContext; the caller must then refuse, see kWrongContext above). Any context.
  static bool thread_context_ok(const char* function, const char* name, uint32_t device_id);
#else
  static Result<void> init(Entry* entries, size_t count) {
    if ((entries == nullptr) != (count == 0) || count > kMaxTableEntries) {
      return ErrorCode::kInvalidArgument;
    }
    return support::ok();
  }
  static size_t capacity() { return 0; }
  static uint64_t count(DmaDebugKind) { return 0; }
  static uint64_t total() { return 0; }
  static size_t live_entries() { return 0; }
  static size_t live_entries(uint32_t) { return 0; }
  static uint64_t untracked() { return 0; }
  static uint64_t untracked_live() { return 0; }
  static void reset() {}
  static void on_map(const void*, const DmaConstraints&, const DmaMapHandle&, const void*) {}
  static bool on_unmap(const void*, const DmaMapHandle&) { return true; }
  static ErrorCode on_sync(const void*, const DmaMapHandle&, size_t, size_t, DmaDirection,
                           DmaSyncCall) {
    return ErrorCode::kOk;
  }
  static void on_alloc_coherent(const void*, const DmaConstraints&, const DmaHandle&, const void*) {
  }
  static bool on_dealloc_coherent(const void*, const DmaHandle&) { return true; }
  static void note_call_site(const void*, DmaAddr, uint32_t, DmaCallSite) {}
  static size_t check_device_teardown(const DmaConstraints&) { return 0; }
  static void on_op_destroyed(const void*) {}
  static constexpr bool thread_context_ok(const char*, const char*, uint32_t) { return true; }
#endif
};

#if DMA_API_DEBUG_ENABLED

// The result of DeviceDma::map in the debug build: a Result<T> that remembers whether the caller
// ever looked at it. Destroying a failed one that nobody checked (ok(), is_error(), operator
// bool, code(), error(), or converting it to a Result<T>) is reported as kErrorIgnored. Its
// interface is Result<T>'s, so code (TRY, TRY_ASSIGN, tests) is written the same either way.
// Cost: a flag and the request's description, in the debug build only.
template <typename T>
class [[nodiscard]] DmaMapResult {
 public:
  DmaMapResult(T&& v) : r_(support::move(v)) {}  // NOLINT(google-explicit-constructor)
  // A failure of a map of [addr, addr + size) in `dir` for the device `c`.
  DmaMapResult(Error e, const DmaConstraints& c, const void* addr, size_t size, DmaDirection dir)
      : r_(e),
        unchecked_(true),
        name_(c.name),
        device_id_(c.device_id),
        addr_(addr),
        size_(size),
        dir_(dir) {}
  DmaMapResult(DmaMapResult&& o)
      : r_(support::move(o.r_)),
        unchecked_(support::exchange(o.unchecked_, false)),
        name_(o.name_),
        device_id_(o.device_id_),
        addr_(o.addr_),
        size_(o.size_),
        dir_(o.dir_) {}
  DmaMapResult(const DmaMapResult&) = delete;
  DmaMapResult& operator=(const DmaMapResult&) = delete;
  DmaMapResult& operator=(DmaMapResult&&) = delete;
  ~DmaMapResult() {
    if (unchecked_) DmaDebug::on_error_ignored(name_, device_id_, addr_, size_, dir_, r_.error());
  }

  bool ok() const { return checked().ok(); }
  bool is_error() const { return checked().is_error(); }
  explicit operator bool() const { return checked().ok(); }
  Error error() const { return checked().error(); }
  ErrorCode code() const { return checked().code(); }
  // Preconditions: ok() (checked by Result: a failed map cannot be used by mistake).
  T& value() & { return r_.value(); }
  const T& value() const& { return r_.value(); }
  T&& value() && { return support::move(r_).value(); }
  T* operator->() { return &r_.value(); }
  const T* operator->() const { return &r_.value(); }
  T& operator*() & { return r_.value(); }
  const T& operator*() const& { return r_.value(); }
  T&& operator*() && { return support::move(r_).value(); }
  // Hands the outcome on as a plain Result: whoever receives it is responsible for it now.
  operator Result<T>() && {  // NOLINT(google-explicit-constructor)
    unchecked_ = false;
    return support::move(r_);
  }

 private:
  const Result<T>& checked() const {
    unchecked_ = false;
    return r_;
  }

  Result<T> r_;
  mutable bool unchecked_ = false;
  const char* name_ = nullptr;
  uint32_t device_id_ = 0;
  const void* addr_ = nullptr;
  size_t size_ = 0;
  DmaDirection dir_ = DmaDirection::kToDevice;
};

template <typename T>
DmaMapResult<T> dma_map_failure(Error e, const DmaConstraints& c, const void* addr, size_t size,
                                DmaDirection dir) {
  return DmaMapResult<T>(e, c, addr, size, dir);
}

#else

template <typename T>
using DmaMapResult = Result<T>;

template <typename T>
DmaMapResult<T> dma_map_failure(Error e, const DmaConstraints&, const void*, size_t, DmaDirection) {
  return DmaMapResult<T>(e);
}

#endif
