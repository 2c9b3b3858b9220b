// The DMA-API misuse checker: see dma_debug.h for the scheme, the kinds and the costs.
#include "dmakit/dma_debug.h"

#include "dmakit/bounce_pool.h"
#include "dmakit/kernel_hooks.h"
#include "dmakit/support/spinlock.h"
#include "support/report_line.h"

namespace {

uint32_t g_next_device_id;
DmaDebug::Sink g_sink;
void* g_sink_ctx;

}  // namespace

void DmaDebug::set_sink(Sink sink, void* ctx, Sink* old_sink, void** old_ctx) {
  if (old_sink != nullptr) *old_sink = __atomic_load_n(&g_sink, __ATOMIC_ACQUIRE);
  if (old_ctx != nullptr) *old_ctx = __atomic_load_n(&g_sink_ctx, __ATOMIC_ACQUIRE);
  __atomic_store_n(&g_sink_ctx, ctx, __ATOMIC_RELEASE);
  __atomic_store_n(&g_sink, sink, __ATOMIC_RELEASE);
  // The bounce pools print through the same sink (they sit below this layer and keep their own
  // pointer to it).
  BouncePool::set_report_sink(sink, ctx);
}

uint32_t DmaDebug::new_device_id() {
  uint32_t id;
  do {
    id = __atomic_add_fetch(&g_next_device_id, 1u, __ATOMIC_RELAXED);
  } while (id == 0);
  return id;
}

const char* dma_debug_kind_name(DmaDebugKind kind) {
  switch (kind) {
    case DmaDebugKind::kNotMapped:
      return "not-mapped";
    case DmaDebugKind::kSizeMismatch:
      return "size-mismatch";
    case DmaDebugKind::kDirectionMismatch:
      return "direction-mismatch";
    case DmaDebugKind::kSyncOutOfRange:
      return "sync-out-of-range";
    case DmaDebugKind::kLeakAtTeardown:
      return "leak-at-teardown";
    case DmaDebugKind::kWrongFreeType:
      return "wrong-free-type";
    case DmaDebugKind::kErrorIgnored:
      return "error-ignored";
    case DmaDebugKind::kTableFull:
      return "table-full";
    case DmaDebugKind::kWrongContext:
      return "wrong-context";
    case DmaDebugKind::kCount:
      break;
  }
  return "unknown";
}

#if DMA_API_DEBUG_ENABLED

namespace {

using EntryType = DmaDebug::EntryType;
using Entry = DmaDebug::Entry;

// The hash's buckets: static, so a fixed count; 1024 keeps chains short for a few thousand live
// entries at 8 KiB for the two arrays of bucket words below.
constexpr unsigned kBucketBits = 10;
constexpr size_t kBuckets = size_t{1} << kBucketBits;
constexpr size_t kNumKinds = static_cast<size_t>(DmaDebugKind::kCount);

// The table used until DmaDebug::init hands over the kernel's. Plain data, zero-initialised.
Entry g_default_entries[DmaDebug::kDefaultEntries];

// Everything the checker keeps. Constant-initialised, so it needs no constructor at boot: index 0
// means "none" in every link, and entries at or above `used` have never been handed out.
struct Table {
  support::SpinLock lock;
  Entry* entries TA_GUARDED(lock) TA_PT_GUARDED(lock) = g_default_entries;
  size_t capacity TA_GUARDED(lock) = DmaDebug::kDefaultEntries;
  uint32_t buckets[kBuckets] TA_GUARDED(lock) = {};
  uint32_t free_head TA_GUARDED(lock) = 0;  // Released entries, index + 1.
  size_t used TA_GUARDED(lock) = 0;         // Entries [0, used) have been handed out at least once.
  size_t live TA_GUARDED(lock) = 0;
  // Mappings and allocations made while the table was full: in all, still live, and still live
  // per bucket (whose unmap or free, finding no entry, is then not misuse).
  uint64_t untracked TA_GUARDED(lock) = 0;
  uint64_t untracked_live TA_GUARDED(lock) = 0;
  uint32_t untracked_in[kBuckets] TA_GUARDED(lock) = {};
  bool full_reported TA_GUARDED(lock) = false;  // The table-full line was printed.
};

// The last name seen for each device id (direct-mapped by id), so that a report about something
// no longer in the table (a double unmap) can still name its device.
struct DeviceName {
  uint32_t id;
  const char* name;
};
constexpr size_t kNames = 256;

constinit Table g_table;
DeviceName g_names[kNames] TA_GUARDED(g_table.lock);
uint64_t g_counts[kNumKinds];

size_t bucket_of(const void* op, uint64_t dma) {
  uint64_t k = dma ^ (static_cast<uint64_t>(reinterpret_cast<uintptr_t>(op)) << 7);
  k *= 0x9E37'79B9'7F4A'7C15ull;
  return static_cast<size_t>(k >> (64 - kBucketBits));  // The product's best-mixed top bits.
}

// An untracked mapping or allocation at (op, dma) may be live: one that finds no entry (or a
// different one) is let through unreported, and its count goes down. False otherwise.
bool take_untracked(const void* op, uint64_t dma, bool forget) TA_REQ(g_table.lock) {
  uint32_t& n = g_table.untracked_in[bucket_of(op, dma)];
  if (n == 0) return false;
  if (forget) {
    --n;
    --g_table.untracked_live;
  }
  return true;
}

// One report line (support/report_line.h) with the checker's words: a report's head, a device.
class Line : public support::ReportLine<Line> {
 public:
  // "dma-debug: <kind>: device 'name' (#id)"
  Line& head(DmaDebugKind kind, const char* name, uint32_t device_id) {
    str("dma-debug: ").str(dma_debug_kind_name(kind)).str(": ");
    return device(name, device_id);
  }
  Line& device(const char* name, uint32_t device_id) {
    if (name != nullptr) {
      str("device '").str(name).str("'");
      if (device_id != 0) str(" (#").dec(device_id).str(")");
    } else if (device_id != 0) {
      str("device #").dec(device_id);
    } else {
      str("anonymous device");
    }
    return *this;
  }
};

void emit(DmaDebugKind kind, const Line& line) {
  __atomic_fetch_add(&g_counts[static_cast<size_t>(kind)], uint64_t{1}, __ATOMIC_RELAXED);
  DmaDebug::Sink sink = __atomic_load_n(&g_sink, __ATOMIC_ACQUIRE);
  void* ctx = __atomic_load_n(&g_sink_ctx, __ATOMIC_ACQUIRE);
  if (sink != nullptr) sink(ctx, line.c_str());
}

Entry& at(uint32_t link) TA_REQ(g_table.lock) {
  return g_table.entries[link - 1];
}

void remember_name(uint32_t id, const char* name) TA_REQ(g_table.lock) {
  if (id != 0 && name != nullptr) g_names[id % kNames] = DeviceName{id, name};
}

const char* name_of(uint32_t id) TA_REQ(g_table.lock) {
  const DeviceName& n = g_names[id % kNames];
  return id != 0 && n.id == id ? n.name : nullptr;
}

// A free entry, or null when the table is full.
Entry* take_entry() TA_REQ(g_table.lock) {
  uint32_t link;
  if (g_table.free_head != 0) {
    link = g_table.free_head;
    g_table.free_head = at(link).next;
  } else if (g_table.used < g_table.capacity) {
    link = static_cast<uint32_t>(++g_table.used);
  } else {
    return nullptr;
  }
  return &at(link);
}

uint32_t link_of(const Entry* e) TA_REQ(g_table.lock) {
  return static_cast<uint32_t>(e - g_table.entries + 1);
}

void insert(Entry* e) TA_REQ(g_table.lock) {
  size_t b = bucket_of(e->op, e->dma);
  e->next = g_table.buckets[b];
  g_table.buckets[b] = link_of(e);
  ++g_table.live;
}

void remove(Entry* e) TA_REQ(g_table.lock) {
  uint32_t* p = &g_table.buckets[bucket_of(e->op, e->dma)];
  uint32_t me = link_of(e);
  while (*p != me) {
    KASSERT(*p != 0, "dma-debug: entry missing from its bucket");
    p = &at(*p).next;
  }
  *p = e->next;
  e->type = EntryType::kFree;
  e->next = g_table.free_head;
  g_table.free_head = me;
  --g_table.live;
}

// The best entry of `type` at (op, dma): one of `device_id` matching `exact` first, then one of
// that device, then (any_device) one of any device. Newest first within each class.
template <typename Exact>
Entry* find(const void* op, uint64_t dma, EntryType type, uint32_t device_id, bool any_device,
            Exact exact) TA_REQ(g_table.lock) {
  Entry* same_device = nullptr;
  Entry* other = nullptr;
  for (uint32_t l = g_table.buckets[bucket_of(op, dma)]; l != 0; l = at(l).next) {
    Entry& e = at(l);
    if (e.op != op || e.dma != dma || e.type != type) continue;
    if (e.device_id == device_id) {
      if (exact(e)) return &e;
      if (same_device == nullptr) same_device = &e;
    } else if (other == nullptr) {
      other = &e;
    }
  }
  if (same_device != nullptr) return same_device;
  return any_device ? other : nullptr;
}

Entry* find_mapping(const void* op, const DmaMapHandle& h) TA_REQ(g_table.lock) {
  return find(op, h.dma_addr.value(), EntryType::kStreaming, h.device_id, false,
              [&h](const Entry& e) {
                return e.cpu == h.cpu_addr && e.size == h.size && e.dir == h.direction;
              });
}

bool is_exact(const Entry& e, const DmaMapHandle& h) {
  return e.cpu == h.cpu_addr && e.size == h.size && e.dir == h.direction;
}

// "<what> of dma X size N <dir>"
void describe_request(Line& l, const char* what, const DmaMapHandle& h) {
  l.str(": ").str(what).str(" of dma ").hex(h.dma_addr.value()).str(" size ").dec(h.size);
  l.str(" ").str(dma_direction_name(h.direction));
}

// Explains why a found mapping `e` does not match the handle `h`; returns the kind.
DmaDebugKind mismatch(Line& l, const char* what, const Entry& e, const DmaMapHandle& h) {
  if (e.size != h.size) {
    l.head(DmaDebugKind::kSizeMismatch, e.name, e.device_id);
    describe_request(l, what, h);
    l.str(": expected the mapped size ").dec(e.size);
    return DmaDebugKind::kSizeMismatch;
  }
  if (e.dir != h.direction) {
    l.head(DmaDebugKind::kDirectionMismatch, e.name, e.device_id);
    describe_request(l, what, h);
    l.str(": expected the mapped direction ").str(dma_direction_name(e.dir));
    return DmaDebugKind::kDirectionMismatch;
  }
  l.head(DmaDebugKind::kNotMapped, e.name, e.device_id);
  describe_request(l, what, h);
  l.str(" of cpu ").ptr(h.cpu_addr).str(": no such mapping (already unmapped?); expected cpu ");
  l.ptr(e.cpu).str(", the buffer mapped at this address");
  return DmaDebugKind::kNotMapped;
}

void describe_origin(Line& l, const Entry& e) {
  l.str(", made at ");
  if (e.file != nullptr) {
    l.str(e.file).str(":").dec(e.line).str(" (caller ").ptr(e.caller).str(")");
  } else {
    l.str("caller ").ptr(e.caller);
  }
}

// `event` says what happened (" torn down"), `before` what should have come first.
void describe_leak(Line& l, const Entry& e, const char* event, const char* before) {
  l.head(DmaDebugKind::kLeakAtTeardown, e.name, e.device_id).str(event);
  if (e.type == EntryType::kStreaming) {
    l.str(" with a live streaming mapping: dma ").hex(e.dma).str(" size ").dec(e.size);
    l.str(" ").str(dma_direction_name(e.dir));
  } else {
    l.str(" with a live coherent allocation: dma ").hex(e.dma).str(" size ").dec(e.size);
  }
  describe_origin(l, e);
  l.str(e.type == EntryType::kStreaming ? "; expected unmap_single before "
                                        : "; expected dealloc_coherent before ");
  l.str(before);
}

void record(const void* op, uint64_t dma, const void* cpu, uint64_t size, DmaDirection dir,
            const DmaConstraints& c, const void* caller, EntryType type) {
  Line l;
  {
    support::Guard<support::SpinLock> guard{&g_table.lock};
    remember_name(c.device_id, c.name);
    Entry* e = take_entry();
    if (e != nullptr) {
      *e = Entry{op, dma, cpu, size, c.name, caller, nullptr, 0, c.device_id, 0, type, dir};
      insert(e);
      return;
    }
    // Full: counted, and its bucket remembers that something untracked is live there.
    ++g_table.untracked;
    ++g_table.untracked_live;
    ++g_table.untracked_in[bucket_of(op, dma)];
    if (g_table.full_reported) return;
    g_table.full_reported = true;
    l.head(DmaDebugKind::kTableFull, c.name, c.device_id);
    l.str(": ").str(type == EntryType::kStreaming ? "map_single" : "alloc_coherent");
    l.str(" of dma ").hex(dma).str(" size ").dec(size).str(" not tracked: table full (");
    l.dec(g_table.capacity).str(" entries); untracked mappings are counted and not checked");
    l.str(", the others still are; expected at most ").dec(g_table.capacity);
    l.str(" live mappings and allocations (give DmaDebug::init a larger table)");
  }
  emit(DmaDebugKind::kTableFull, l);
}

// Reports (and with `forget`, drops) every entry for which pred(e) holds, one line each, never
// holding the lock while the sink runs. Returns how many there were. Untracked mappings cannot
// be reported.
template <typename Pred>
size_t report_leaks(Pred pred, const char* event, const char* before, bool forget) {
  size_t n = 0;
  size_t next = 0;
  while (true) {
    Line l;
    {
      support::Guard<support::SpinLock> guard{&g_table.lock};
      size_t i = next;
      while (i < g_table.used &&
             (g_table.entries[i].type == EntryType::kFree || !pred(g_table.entries[i]))) {
        ++i;
      }
      if (i >= g_table.used) return n;
      Entry& e = g_table.entries[i];
      next = i + 1;
      describe_leak(l, e, event, before);
      if (forget) remove(&e);
    }
    ++n;
    emit(DmaDebugKind::kLeakAtTeardown, l);
  }
}

}  // namespace

Result<void> DmaDebug::init(Entry* entries, size_t count) {
  if ((entries == nullptr) != (count == 0) || count > kMaxTableEntries) {
    return ErrorCode::kInvalidArgument;
  }
  support::Guard<support::SpinLock> guard{&g_table.lock};
  if (g_table.live != 0) return ErrorCode::kBusy;
  if (entries == nullptr) {
    entries = g_default_entries;
    count = kDefaultEntries;
  }
  for (size_t i = 0; i < count; ++i) entries[i] = Entry{};
  for (uint32_t& b : g_table.buckets) b = 0;
  for (uint32_t& u : g_table.untracked_in) u = 0;
  g_table.entries = entries;
  g_table.capacity = count;
  g_table.free_head = 0;
  g_table.used = 0;
  g_table.untracked = 0;
  g_table.untracked_live = 0;
  g_table.full_reported = false;
  return support::ok();
}

size_t DmaDebug::capacity() {
  support::Guard<support::SpinLock> guard{&g_table.lock};
  return g_table.capacity;
}

uint64_t DmaDebug::count(DmaDebugKind kind) {
  if (kind >= DmaDebugKind::kCount) return 0;
  return __atomic_load_n(&g_counts[static_cast<size_t>(kind)], __ATOMIC_RELAXED);
}

uint64_t DmaDebug::total() {
  uint64_t t = 0;
  for (size_t i = 0; i < kNumKinds; ++i) t += __atomic_load_n(&g_counts[i], __ATOMIC_RELAXED);
  return t;
}

size_t DmaDebug::live_entries() {
  support::Guard<support::SpinLock> guard{&g_table.lock};
  return g_table.live;
}

size_t DmaDebug::live_entries(uint32_t device_id) {
  support::Guard<support::SpinLock> guard{&g_table.lock};
  size_t n = 0;
  for (size_t i = 0; i < g_table.used; ++i) {
    const Entry& e = g_table.entries[i];
    if (e.type != EntryType::kFree && e.device_id == device_id) ++n;
  }
  return n;
}

uint64_t DmaDebug::untracked() {
  support::Guard<support::SpinLock> guard{&g_table.lock};
  return g_table.untracked;
}

uint64_t DmaDebug::untracked_live() {
  support::Guard<support::SpinLock> guard{&g_table.lock};
  return g_table.untracked_live;
}

void DmaDebug::reset() {
  {
    support::Guard<support::SpinLock> guard{&g_table.lock};
    for (size_t i = 0; i < g_table.used; ++i) g_table.entries[i] = Entry{};
    for (uint32_t& b : g_table.buckets) b = 0;
    for (uint32_t& u : g_table.untracked_in) u = 0;
    for (DeviceName& n : g_names) n = DeviceName{};
    g_table.free_head = 0;
    g_table.used = 0;
    g_table.live = 0;
    g_table.untracked = 0;
    g_table.untracked_live = 0;
    g_table.full_reported = false;
  }
  for (uint64_t& c : g_counts) __atomic_store_n(&c, uint64_t{0}, __ATOMIC_RELAXED);
}

void DmaDebug::on_map(const void* op, const DmaConstraints& c, const DmaMapHandle& h,
                      const void* caller) {
  record(op, h.dma_addr.value(), h.cpu_addr, h.size, h.direction, c, caller, EntryType::kStreaming);
}

void DmaDebug::on_alloc_coherent(const void* op, const DmaConstraints& c, const DmaHandle& h,
                                 const void* caller) {
  record(op, h.dma_addr.value(), h.cpu_addr, h.layout.size, DmaDirection::kBidirectional, c, caller,
         EntryType::kCoherent);
}

bool DmaDebug::on_unmap(const void* op, const DmaMapHandle& h) {
  Line l;
  DmaDebugKind kind;
  {
    support::Guard<support::SpinLock> guard{&g_table.lock};
    Entry* e = find_mapping(op, h);
    if (e != nullptr && is_exact(*e, h)) {
      remove(e);
      return true;
    }
    // Not tracked exactly so: an untracked mapping in this bucket may be the one.
    if (take_untracked(op, h.dma_addr.value(), /*forget=*/true)) return true;
    if (e != nullptr) {
      kind = mismatch(l, "unmap_single", *e, h);
    } else {
      Entry* coh = find(op, h.dma_addr.value(), EntryType::kCoherent, h.device_id, true,
                        [](const Entry&) { return true; });
      if (coh != nullptr) {
        kind = DmaDebugKind::kWrongFreeType;
        l.head(kind, coh->name, coh->device_id);
        describe_request(l, "unmap_single", h);
        l.str(": this is a coherent allocation of size ").dec(coh->size);
        l.str("; expected dealloc_coherent");
      } else {
        kind = DmaDebugKind::kNotMapped;
        l.head(kind, name_of(h.device_id), h.device_id);
        describe_request(l, "unmap_single", h);
        l.str(
            ": no such mapping (never mapped, or already unmapped); expected a live streaming "
            "mapping");
      }
    }
  }
  emit(kind, l);
  return false;
}

ErrorCode DmaDebug::on_sync(const void* op, const DmaMapHandle& h, size_t offset, size_t size,
                            DmaDirection dir, DmaSyncCall call) {
  const char* what = call == DmaSyncCall::kPrepareRead ? "prepare_read" : "confirm_write";
  Line l;
  DmaDebugKind kind;
  ErrorCode refuse;
  {
    support::Guard<support::SpinLock> guard{&g_table.lock};
    Entry* e = find_mapping(op, h);
    if (e == nullptr || !is_exact(*e, h)) {
      // Not tracked exactly so: an untracked mapping in this bucket may be the one.
      if (take_untracked(op, h.dma_addr.value(), /*forget=*/false)) return ErrorCode::kOk;
    }
    if (e != nullptr && is_exact(*e, h)) {
      if (offset > e->size || size > e->size - offset) {
        kind = DmaDebugKind::kSyncOutOfRange;
        refuse = ErrorCode::kOutOfRange;
        l.head(kind, e->name, e->device_id);
        l.str(": ").str(what).str(" of dma ").hex(e->dma).str(" range [offset ").dec(offset);
        l.str(", size ").dec(size).str(") is outside the mapping of size ").dec(e->size);
        l.str("; expected offset + size <= ").dec(e->size);
      } else if (e->dir != DmaDirection::kBidirectional && dir != e->dir) {
        // Reported, not refused: the mapping's own direction governs what the sync does
        // (KernelDmaOp), so a wrong argument can no longer make it skip the work.
        kind = DmaDebugKind::kDirectionMismatch;
        refuse = ErrorCode::kOk;
        l.head(kind, e->name, e->device_id);
        l.str(": ").str(what).str(" of dma ").hex(e->dma).str(" size ").dec(size);
        l.str(" with direction ").str(dma_direction_name(dir)).str(" on a ");
        l.str(dma_direction_name(e->dir)).str(" mapping; expected ");
        l.str(dma_direction_name(e->dir)).str(" (or a bidirectional mapping)");
      } else {
        return ErrorCode::kOk;
      }
    } else if (e != nullptr) {
      kind = mismatch(l, what, *e, h);
      refuse =
          kind == DmaDebugKind::kNotMapped ? ErrorCode::kNotFound : ErrorCode::kInvalidArgument;
    } else {
      kind = DmaDebugKind::kNotMapped;
      refuse = ErrorCode::kNotFound;
      l.head(kind, name_of(h.device_id), h.device_id);
      describe_request(l, what, h);
      l.str(
          ": no such mapping (never mapped, or already unmapped); expected a live streaming "
          "mapping");
    }
  }
  emit(kind, l);
  return refuse;
}

bool DmaDebug::on_dealloc_coherent(const void* op, const DmaHandle& h) {
  Line l;
  DmaDebugKind kind;
  {
    support::Guard<support::SpinLock> guard{&g_table.lock};
    uint64_t dma = h.dma_addr.value();
    Entry* e = find(op, dma, EntryType::kCoherent, h.device_id, false, [&h](const Entry& x) {
      return x.cpu == h.cpu_addr && x.size == h.layout.size;
    });
    if (e != nullptr && e->cpu == h.cpu_addr && e->size == h.layout.size) {
      remove(e);
      return true;
    }
    // Not tracked exactly so: an untracked allocation in this bucket may be the one.
    if (take_untracked(op, dma, /*forget=*/true)) return true;
    if (e != nullptr) {
      kind = e->size != h.layout.size ? DmaDebugKind::kSizeMismatch : DmaDebugKind::kNotMapped;
      l.head(kind, e->name, e->device_id);
      l.str(": dealloc_coherent of dma ").hex(dma).str(" size ").dec(h.layout.size);
      if (kind == DmaDebugKind::kSizeMismatch) {
        l.str(": expected the allocated size ").dec(e->size);
      } else {
        l.str(" cpu ").ptr(h.cpu_addr).str(": no such allocation; expected cpu ").ptr(e->cpu);
        l.str(", the memory allocated at this address");
      }
    } else {
      Entry* s = find(op, dma, EntryType::kStreaming, h.device_id, true,
                      [](const Entry&) { return true; });
      if (s != nullptr) {
        kind = DmaDebugKind::kWrongFreeType;
        l.head(kind, s->name, s->device_id);
        l.str(": dealloc_coherent of dma ").hex(dma).str(" size ").dec(h.layout.size);
        l.str(": this is a live ").str(dma_direction_name(s->dir));
        l.str(" streaming mapping of size ").dec(s->size).str("; expected unmap_single");
      } else {
        kind = DmaDebugKind::kNotMapped;
        l.head(kind, name_of(h.device_id), h.device_id);
        l.str(": dealloc_coherent of dma ").hex(dma).str(" size ").dec(h.layout.size);
        l.str(
            ": no such allocation (never allocated, or already freed); expected a live "
            "coherent allocation");
      }
    }
  }
  emit(kind, l);
  return false;
}

void DmaDebug::note_call_site(const void* op, DmaAddr dma, uint32_t device_id, DmaCallSite site) {
  support::Guard<support::SpinLock> guard{&g_table.lock};
  for (uint32_t l = g_table.buckets[bucket_of(op, dma.value())]; l != 0; l = at(l).next) {
    Entry& e = at(l);
    if (e.op == op && e.dma == dma.value() && e.device_id == device_id && e.file == nullptr) {
      e.file = site.file;
      e.line = site.line;
      return;
    }
  }
}

size_t DmaDebug::check_device_teardown(const DmaConstraints& c) {
  uint32_t id = c.device_id;
  if (id == 0) return 0;  // Anonymous devices share no identity to account against.
  return report_leaks([id](const Entry& e) { return e.device_id == id; }, " torn down",
                      "the teardown", false);
}

void DmaDebug::on_op_destroyed(const void* op) {
  (void)report_leaks([op](const Entry& e) { return e.op == op; }, ": DmaOp destroyed",
                     "the DmaOp is destroyed", true);
}

void DmaDebug::on_error_ignored(const char* name, uint32_t device_id, const void* addr, size_t size,
                                DmaDirection dir, Error e) {
  Line l;
  l.head(DmaDebugKind::kErrorIgnored, name, device_id);
  l.str(": map of cpu ").ptr(addr).str(" size ").dec(size).str(" ").str(dma_direction_name(dir));
  l.str(" failed (").str(error_code_name(e.code)).str(") and the result was dropped unchecked");
  l.str("; expected ok(), code() or error() to be called on it");
  emit(DmaDebugKind::kErrorIgnored, l);
}

bool DmaDebug::thread_context_ok(const char* function, const char* name, uint32_t device_id) {
  const dmakit_kernel_hooks& hooks = dma::kernel_hooks();
  const bool handler = hooks.in_interrupt != nullptr && hooks.in_interrupt() != 0;
  if (!handler && (hooks.irqs_disabled == nullptr || hooks.irqs_disabled() == 0)) return true;
  if (name == nullptr && device_id != 0) {
    // A handle carries only the id: the name the device had when it mapped or allocated.
    support::Guard<support::SpinLock> guard{&g_table.lock};
    name = name_of(device_id);
  }
  Line l;
  l.str("dma-debug: ").str(dma_debug_kind_name(DmaDebugKind::kWrongContext)).str(": ");
  if (name != nullptr || device_id != 0) l.device(name, device_id).str(": ");
  l.str(function).str(handler ? " called from an interrupt handler"
                              : " called with interrupts disabled");
  l.str("; it is thread only (it may edit page");
  l.str(" tables and wait for other CPUs): refused");
  emit(DmaDebugKind::kWrongContext, l);
  return false;
}

#endif  // DMA_API_DEBUG_ENABLED
