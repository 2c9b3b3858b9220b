// BouncePool: slots of a physically contiguous region placed below an address limit, handed out
// for streaming mappings whose buffer a device cannot reach.
//
// The scheme: a two-level segregated-fit (TLSF) allocator over slots of `slot_size` bytes, with
// all bookkeeping kept out of band (the pool's memory is device-visible and must hold only data),
// behind a small cache of recently freed blocks by exact slot count. Allocation and free cost O(1)
// whatever the occupancy (Linux's swiotlb scans a bitmap instead). An allocation can keep the low
// bits of the original buffer's address (`min_align_mask`, as NVMe-style devices need) and honour
// an alignment of the returned address. The details and the cost of each operation are in
// bounce_pool.cc's opening comment.
//
// Limits: no single allocation exceeds the pool's max_mapping_size() (kMaxMapping unless init is
// told otherwise), so that one mapping cannot take the whole pool. Each allocation records the
// device it was made for (BounceDevice: DmaConstraints::device_id, 0 for anonymous), so the pool
// can say who holds how many slots, enforce an optional per-device quota, and, when a request
// fails with kNoMemory, print one line naming the largest holders (rate-limited).
//
// Calling contexts (dmakit/dma_op.h): init, set_poisoning and enable_cpu_caches are thread or
// interrupts off, before the pool is shared; set_report_sink is thread, before devices start;
// every other method is any context (device_slots, check_invariants and free_block_count walk
// the pool with interrupts masked: diagnostics, not for an interrupt handler's hot path).
#pragma once

#include "dmakit/support/addr.h"
#include "dmakit/support/bitops.h"
#include "dmakit/support/fault_injection.h"
#include "dmakit/support/mem.h"
#include "dmakit/support/result.h"
#include "dmakit/support/spinlock.h"
#include "dmakit/support/types.h"

// One allocation from a BouncePool: `addr` is where the data goes (inside the slots).
struct BounceSlot {
  PhysAddr addr;            // Physical address of the first data byte.
  uint32_t first_slot = 0;  // Bookkeeping: first slot of the allocation.
  uint32_t num_slots = 0;   // Bookkeeping: slots taken (0: no allocation).
  size_t size = 0;          // Bytes requested.
};

// Who an allocation is for: the device's identity (DmaConstraints::device_id; 0 for an anonymous
// device, all of which are accounted together), its name for reports (may be null; the pointer
// must stay valid while the pool may print it), and its quota: the most bytes of this pool the
// device may hold at once, counted in whole slots rounded up (0: no quota). A device passes the
// same quota with every request.
struct BounceDevice {
  uint32_t id = 0;
  const char* name = nullptr;
  uint64_t quota = 0;
};

class BouncePool {
 public:
  static constexpr size_t kDefaultSlotSize = 2048;
  static constexpr size_t kMinSlotSize = 64;
  static constexpr size_t kMaxSlotSize = size_t{1} << 30;
  static constexpr uint64_t kMaxSlots = (uint64_t{1} << 30) - 1;  // Most slots one pool manages.
  // Default max_mapping_size() (Linux's swiotlb limit is the same 256 KiB): the largest single
  // allocation of a pool whose init did not set Options::max_mapping.
  static constexpr size_t kMaxMapping = 256 * 1024;
  static constexpr size_t kMaxRequest = 0xFFFF'FFFFu;  // No single allocation is larger.
  // The cache keeps freed blocks of fewer than kQuickSlots slots, at most kQuickDepth of each
  // size and at most 1/32 of the pool's slots in all.
  static constexpr uint32_t kQuickSlots = 64;
  static constexpr uint32_t kQuickDepth = 2;

  struct Stats {
    uint64_t total_slots = 0;
    uint64_t used_slots = 0;  // Slots of live allocations.
    // Most slots ever in use at once (slots in CPU caches count as in use here).
    uint64_t high_water_slots = 0;
    uint64_t allocations = 0;     // Successful allocations so far.
    uint64_t failures = 0;        // kNoMemory returns so far (injected faults not counted).
    uint64_t quota_failures = 0;  // Those of them refused by a device's quota.
    // Frees refused with kNotFound (double frees, never-allocated or altered slots).
    uint64_t invalid_frees = 0;
    uint64_t bytes_bounced = 0;  // Bytes copied in or out, as reported by note_bounced().
    // Freed slots held in the shared and the per-CPU caches (neither used nor merged).
    uint64_t cached_slots = 0;
  };

  // constexpr, and the destructor trivial, so that a kernel without C++ start-up code can hold
  // a pool as a static: `constinit BouncePool g_pool;` runs no code before init().
  constexpr BouncePool() = default;
  BouncePool(const BouncePool&) = delete;
  BouncePool& operator=(const BouncePool&) = delete;

  // Ends the pool's use before its storage or metadata is reused (a static never needs this): in
  // debug builds (KDEBUG_ENABLED) panics ("shut down with bounce slots still in use") unless every
  // slot was given back (cached blocks count as given back). Nothing else changes. The pool must
  // be idle; any context.
  void shutdown() const TA_EXCL(lock_);

  // Bytes of out-of-band metadata init needs for a pool of `bytes` bytes and this slot size
  // (20 bytes per slot, plus 20: the slot's record and the device holding it). Returns 0 when
  // slot_size is not a valid slot size. constexpr: a static buffer can be sized with it,
  // `alignas(64) uint8_t meta[BouncePool::metadata_size(kPoolBytes)];` (4-byte alignment is
  // enough; a cache line's keeps two CPUs' slot records in different lines: see "Per-CPU caches").
  static constexpr size_t metadata_size(size_t bytes, size_t slot_size = kDefaultSlotSize) {
    if (!support::is_pow2(slot_size) || slot_size < kMinSlotSize || slot_size > kMaxSlotSize) {
      return 0;
    }
    return (bytes / slot_size + 1) * (sizeof(SlotRecord) + sizeof(uint32_t));
  }

  // What init may be told besides the region.
  struct Options {
    // Bytes per slot: a power of two in [kMinSlotSize, kMaxSlotSize].
    size_t slot_size = kDefaultSlotSize;
    // Largest single allocation (max_mapping_size()): at least one slot, at most the pool. 0: the
    // default, kMaxMapping or the whole pool if that is smaller.
    size_t max_mapping = 0;
    // Printed by the pool's report lines (null: the pool is named by its base address). Must
    // outlive the pool.
    const char* name = nullptr;
  };

  // Takes the region [base, base + bytes) (reached by the CPU at `cpu_base`). base and bytes must
  // be multiples of slot_size, a power of two in [kMinSlotSize, kMaxSlotSize]. `metadata` (at
  // least metadata_size(bytes, slot_size) bytes, 4-byte aligned) stays owned by the caller and
  // must outlive the pool; the pool's memory itself is never written. Call once, before any other
  // method, without concurrent callers; thread or interrupts off.
  // A pool that retire() retired may be set up again over new memory (KernelDmaOp's grown pools
  // are): the caller guarantees that nobody calls into the pool during that call; its CPU caches
  // are off again until enable_cpu_caches.
  // Errors: kInvalidArgument (bad slot size, misaligned region, null cpu_base or metadata,
  // misaligned metadata, called twice on a pool that is not retired, region of more than kMaxSlots
  // slots, options.max_mapping neither 0 nor in [slot_size, bytes]), kLayoutError (bytes == 0),
  // kNoMemory (metadata buffer too small). On error the pool stays uninitialised.
  Result<void> init(PhysAddr base, size_t bytes, void* cpu_base, void* metadata,
                    size_t metadata_bytes, const Options& options);
  // The same with default options but for the slot size.
  Result<void> init(PhysAddr base, size_t bytes, void* cpu_base, void* metadata,
                    size_t metadata_bytes, size_t slot_size = kDefaultSlotSize) {
    Options o;
    o.slot_size = slot_size;
    return init(base, bytes, cpu_base, metadata, metadata_bytes, o);
  }

  // Debug builds (KDEBUG_ENABLED) poison the pool's memory at init and every freed slot, and
  // check the poison when a slot is handed out again, so that a CPU write after unmap is
  // reported. Call before init with false for a pool whose memory must not be touched (e.g. a
  // test standing in for a huge pool with a tiny buffer). No effect in release builds.
  void set_poisoning(bool on) { poison_ = on && KDEBUG_ENABLED; }

  // Takes room for `size` bytes for the device `dev`. The returned addr satisfies addr &
  // min_align_mask == orig & min_align_mask, and addr % align == 0 (align a power of two; 0 or 1
  // for none; an align that contradicts the preserved bits is a kLayoutError). min_align_mask must
  // be 2^k - 1 (0 for none). The slot's bytes are whatever the last user left there. The slots
  // count as dev's until freed. Cost O(1), but for the retry before a kNoMemory; any context
  // (dmakit/dma_op.h, "Calling contexts": from an interrupt handler only with the kernel's
  // irq_save/irq_restore hooks installed). Before it returns kNoMemory for lack of room it gives
  // the shared cache back to the free lists and tries again, then takes back every CPU's cached
  // blocks (O(CPUs)) and tries once more; every kNoMemory may print one line through the report
  // sink (see set_report_sink; rate-limited).
  // Errors: kLayoutError (size 0, align not a power of two or contradicting min_align_mask,
  // min_align_mask not of the form 2^k - 1, size above max_mapping_size() or above what the pool
  // can ever hold with these constraints, pool not initialised; nothing is counted), kNoMemory (no
  // room right now, or dev would hold more than its quota; no allocation changed, only `failures`
  // (and `quota_failures`) and the cache).
  [[gnu::always_inline]] Result<BounceSlot> alloc(size_t size, PhysAddr orig = PhysAddr(0),
                                                  uint64_t min_align_mask = 0, size_t align = 0,
                                                  const BounceDevice& dev = BounceDevice{})
      TA_EXCL(lock_) {
    // With CPU caches on, an unconstrained request first looks in this CPU's cache, under that
    // cache's own lock (uncontended unless another CPU is reclaiming it). A device with a quota
    // always takes the pool's lock: its count must be exact when the quota is checked.
    // align 1, like 0, asks for nothing.
    if ((min_align_mask | (align > 1 ? align : 0) | dev.quota) == 0) {
      Cached got = alloc_cached(cache_cpu(), size, dev.id);
      if (got.slots != 0) return describe(got.first, got.slots, 0, size);
      return alloc_missed(size, dev, got.first);
    }
    return alloc_locked(size, orig, min_align_mask, align, dev, /*fault_point=*/true, kMaxCpus);
  }

  // Gives back an allocation: `slot` must be exactly what alloc returned (addr, first_slot,
  // num_slots and size are all checked). Its device no longer holds the slots (nor does anyone
  // while they sit in a cache). Cost O(1); any context, as alloc.
  // Errors: kNotFound (not a live allocation of this pool: never allocated, already freed, parked
  // in a cache, altered); the pool is unchanged then but for `invalid_frees`, and debug builds
  // (KDEBUG_ENABLED) print one line through the report sink saying what the slot is instead,
  // misuse checker or not. A stale copy of a slot whose place was since handed out again with the
  // same address and size cannot be told apart from the new allocation. With CPU caches on, a
  // free racing with another CPU's use of the same block (a double free while the block is being
  // handed out again) is checked without the lock and can be missed.
  Result<void> free(const BounceSlot& slot) TA_EXCL(lock_) {
    // An address below the first slot makes the offset huge: rejected like any other mismatch.
    uint64_t offset =
        slot.addr.value() - base_.value() - (uint64_t{slot.first_slot} << slot_shift_);
    const unsigned cpu = cache_cpu();
    if (cpu < num_cpu_caches_ &&
        cpu_cache_push(&cpu_caches_[cpu], slot.first_slot, slot.num_slots, offset, slot.size)) {
      return support::ok();
    }
    return free_block(slot.first_slot, slot.num_slots, offset, slot.size);
  }

  // The same, for a caller that kept the allocation in a compact form (DmaMapHandle): the first
  // slot and slot count of the BounceSlot, the CPU address of its data (cpu_addr(slot.addr)) and
  // the requested size. Checked as strictly as free(); same errors and cost.
  [[gnu::always_inline]] Result<void> free_data(uint32_t first_slot, uint32_t num_slots,
                                                const void* data, size_t size) TA_EXCL(lock_) {
    if (free_cached(cache_cpu(), first_slot, num_slots, data, size)) return support::ok();
    return free_uncached(first_slot, num_slots, data, size);
  }

  // ---- The cached fast path (KernelDmaOp's bounced map and unmap) ----
  // alloc() and free_data() for the commonest request, split so that a caller can keep the
  // allocation in registers and ask for the CPU before it holds much: cache_cpu asks the kernel
  // which CPU runs the caller (the one call of the fast path); alloc_cached is alloc(size) of a
  // request without min_align_mask, alignment or quota as far as the newest block of that CPU's
  // cache answers it, alloc_missed the rest of that alloc() when it declined (the cache's older
  // blocks, then the pool's lock); free_cached is free_data() into that CPU's cache, and a caller
  // goes on to free_uncached() when it declines. Any context, as alloc. The CPU may be stale by
  // the time it is used (the caller preempted and migrated): every push and pop of the cache it
  // names is atomic, so that costs only speed.
  struct Cached {
    // First slot of the block (the BounceSlot's first_slot). When declined (slots 0): the CPU
    // whose cache had no block of the size in `hot` (kMaxCpus: none looked, caching off or the
    // size over max_mapping_size()), or kCachedFault: the kBounceSlot fault point fired (alloc()
    // returns kNoMemory). alloc_missed takes it as it is.
    uint32_t first;
    uint32_t slots;  // Its slot count (the BounceSlot's num_slots); 0: declined.
  };
  static constexpr uint32_t kCachedFault = ~0u;
  // Whether enable_cpu_caches turned the caches on.
  bool cpu_caches_on() const { return current_cpu_ != nullptr; }
  // cache_cpu() of a pool whose caches are on (cpu_caches_on(); they stay on unless retire() and
  // init() set the pool up again).
  [[gnu::always_inline]] unsigned cache_cpu_on() const { return current_cpu_(); }
  // The CPU running the caller (the kernel's answer, any value), or kMaxCpus when the caches are
  // off. alloc_cached and free_cached treat a CPU at or above cpu_cache_cpus() as "no cache".
  [[gnu::always_inline]] unsigned cache_cpu() const {
    return current_cpu_ != nullptr ? current_cpu_() : kMaxCpus;
  }
  // The newest block of CPU `cpu`'s cache (cache_cpu()'s answer) if it has the slots for `size`
  // bytes, claimed for the device `owner` (BounceDevice::id) with the data at the start of its
  // first slot, exactly as alloc(size, PhysAddr(0), 0, 0, BounceDevice{owner}) would have taken
  // it from there. The block's data is at slot_phys(first), slot_cpu(first). Cost: one
  // compare-and-swap.
  [[gnu::always_inline]] Cached alloc_cached(unsigned cpu, size_t size, uint32_t owner)
      TA_EXCL(lock_) {
    if (cpu >= num_cpu_caches_ || size - 1 >= max_request_) return Cached{kMaxCpus, 0};
    if (FAULT_POINT(kBounceSlot)) return Cached{kCachedFault, 0};
    auto n = static_cast<uint32_t>((size + slot_size_ - 1) >> slot_shift_);
    if (n == 0) __builtin_unreachable();  // size >= 1, and far below 2^32 slots.
    CpuCache* cc = &cpu_caches_[cpu];
    // The newest block, if it has n slots and no count is waiting to be added (one test: the
    // flush bit lies in the compared bits), taken by one compare-and-swap that also counts the
    // request; anything else (or a lost race) is alloc_missed's, which looks at the stack under
    // the cache's lock.
    uint64_t hot = __atomic_load_n(&cc->hot, __ATOMIC_RELAXED);
    if (((hot >> kHotSlotsShift) & ((kHotFlushBit >> kHotSlotsShift) | kHotSlotsMask)) != n ||
        !__atomic_compare_exchange_n(&cc->hot, &hot, (hot & ~kHotBlockMask) + kHotCountOne, false,
                                     __ATOMIC_ACQUIRE, __ATOMIC_RELAXED)) [[unlikely]] {
      return Cached{cpu, 0};
    }
    const auto first = static_cast<uint32_t>(hot);
    // The block is the caller's now (in no cache, still marked cached until claim).
    if (KDEBUG_ENABLED && poison_) check_poison(first, n);
    claim_record(first, n, 0, size, owner);
    return Cached{first, n};
  }
  // After alloc_cached(cpu, size, owner) declined with `missed` (its Cached::first): the same
  // request from the older blocks of that CPU's cache (its stack, under the cache's lock), if
  // the lock-free bitmap of their sizes says one may fit. Declines with `missed` as it came when
  // alloc_cached looked at no cache, else with missed | kStackMissed.
  [[gnu::always_inline]] Cached alloc_stacked(uint32_t missed, size_t size, uint32_t owner)
      TA_EXCL(lock_) {
    if (missed >= kMaxCpus) return Cached{missed, 0};
    CpuCache* cc = &cpu_caches_[missed];
    const auto n = static_cast<uint32_t>((size + slot_size_ - 1) >> slot_shift_);
    // `hot` counts too: a lost race, or a count to add, left the block there.
    const uint64_t sizes = __atomic_load_n(&cc->sizes, __ATOMIC_RELAXED) |
                           (uint64_t{1} << hot_slots(__atomic_load_n(&cc->hot, __ATOMIC_RELAXED)));
    if (n >= kQuickSlots || ((sizes >> n) & 1) == 0) return Cached{missed | kStackMissed, 0};
    return pop_stacked(missed, n, size, owner);
  }
  // Cached::first of a request that neither the CPU's `hot` nor its stack answered (or'ed with
  // the CPU; kMaxCpus has not this bit).
  static constexpr uint32_t kStackMissed = 0x100;
  // The rest of alloc(size, PhysAddr(0), 0, 0, dev) after alloc_cached(cpu, size, dev.id), and
  // maybe alloc_stacked, declined with `missed` (its Cached::first); dev has no quota. alloc()'s
  // result, errors and cost.
  [[gnu::always_inline]] Result<BounceSlot> alloc_missed(size_t size, const BounceDevice& dev,
                                                         uint32_t missed) TA_EXCL(lock_) {
    if (missed == kCachedFault) return ErrorCode::kNoMemory;
    if (missed < kMaxCpus) {
      const Cached got = alloc_stacked(missed, size, dev.id);
      if (got.slots != 0) return describe(got.first, got.slots, 0, size);
      missed = got.first;
    }
    return alloc_unstacked(size, dev, missed);
  }
  // alloc_missed's last step, when no CPU cache has a block (`missed`: alloc_stacked's, or
  // alloc_cached's when that looked at no cache): the pool's lock.
  [[gnu::always_inline]] Result<BounceSlot> alloc_unstacked(size_t size, const BounceDevice& dev,
                                                            uint32_t missed) TA_EXCL(lock_) {
    if (missed == kCachedFault) return ErrorCode::kNoMemory;
    // The fault point is still to be evaluated when no cache was looked at.
    return alloc_locked(size, PhysAddr(0), 0, 0, dev, /*fault_point=*/missed == kMaxCpus,
                        missed & ~kStackMissed);
  }
  // Puts the block free_data(first_slot, num_slots, data, size) describes into CPU `cpu`'s cache
  // (cache_cpu()'s answer) if it is a live allocation exactly so described that the cache may
  // hold (a full cache first sends its blocks back, as free_data's does); true if it did. False:
  // nothing changed (call free_uncached(), which also reports a bad description).
  [[gnu::always_inline]] bool free_cached(unsigned cpu, uint32_t first_slot, uint32_t num_slots,
                                          const void* data, size_t size) TA_EXCL(lock_) {
    if (cpu >= num_cpu_caches_) return false;
    uint64_t offset = reinterpret_cast<uintptr_t>(data) - reinterpret_cast<uintptr_t>(cpu_base_) -
                      (uint64_t{first_slot} << slot_shift_);
    return cpu_cache_push(&cpu_caches_[cpu], first_slot, num_slots, offset, size);
  }
  // free_data() without the CPU caches (under the pool's lock): what a caller whose free_cached
  // declined goes on with. Same checks, errors and report.
  Result<void> free_uncached(uint32_t first_slot, uint32_t num_slots, const void* data, size_t size)
      TA_EXCL(lock_) {
    uint64_t offset = reinterpret_cast<uintptr_t>(data) - reinterpret_cast<uintptr_t>(cpu_base_) -
                      (uint64_t{first_slot} << slot_shift_);
    return free_block(first_slot, num_slots, offset, size);
  }
  // Physical and CPU address of slot `first` (alloc_cached's answer).
  PhysAddr slot_phys(uint32_t first) const { return base_ + (uint64_t{first} << slot_shift_); }
  void* slot_cpu(uint32_t first) const {
    return static_cast<uint8_t*>(cpu_base_) + (size_t{first} << slot_shift_);
  }

  // ---- Per-CPU caches ----
  // Off unless enable_cpu_caches is called. When on, each CPU keeps up to kCpuCacheDepth blocks
  // it freed (fewer than kQuickSlots slots each, at most cache_budget / num_cpus slots in all, so
  // all CPUs together hold at most 1/32 of the pool) and hands them out again to its own
  // unconstrained requests of the same slot count, newest first, without taking the pool's lock.
  // The newest block sits in one word that its CPU takes and gives by a compare-and-swap, with
  // no lock (a map and unmap that reuse one size cost one atomic instruction each); the older
  // ones are on a small stack under a lock of the cache's own (an interrupt-masking
  // support::SpinLock, in the cache's own cache line), which its CPU takes only when the newest
  // block does not serve. Either way the push and pop are atomic with respect to an interrupt on
  // that CPU and to a caller that was preempted or migrated mid-call, and another CPU takes the
  // lock (and the word) to reclaim the cache. A free that finds its CPU's cache full sends the
  // whole cache back (into the shared cache while it has room) under the pool's lock, so a CPU
  // whose sizes do not repeat pays one pool lock per kCpuCacheDepth frees. When a request finds the
  // pool exhausted, it gives the shared cache back and, if that is not enough, every CPU's cache
  // (each under its lock, without that CPU's help) before it fails with kNoMemory: no slot stays
  // stranded in the cache of a CPU that stopped calling in. Lock order: a CPU cache's lock, then
  // the pool's. A block of fewer than four slots cut for one CPU's cache right after one for
  // another CPU is placed so that the two blocks' 16-byte slot records are not in one 64-byte
  // line of the metadata (each CPU writes its block's record on every map and unmap), if the pool
  // has room so placed.
  static constexpr unsigned kMaxCpus = 64;
  static constexpr unsigned kCpuCacheDepth = 4;
  static_assert(kMaxCpus < kStackMissed, "a CPU index leaves kStackMissed clear");
  // Returns the index of the CPU that runs the caller; may be stale (see the contract below).
  using CurrentCpuFn = unsigned (*)();
  // Turns the caches on for CPUs 0 .. num_cpus - 1 (a CPU whose index is num_cpus or more always
  // takes the pool's lock). current_cpu null: the kernel hooks' cpu_id (dmakit/kernel_hooks.h;
  // install the hooks first), or CPU 0 for every caller if the hooks have none. num_cpus 0: the
  // hooks' max_cpus (1 if 0), at most kMaxCpus. Call once, after init, before any concurrent use;
  // thread context or interrupts off. No contract on later calls beyond the pool's own: an answer
  // of current_cpu that is stale by the time it is used (the caller preempted and migrated) only
  // costs speed, since every push and pop of the cache it names is atomic (a compare-and-swap of
  // its newest block, or the cache's lock).
  // Errors: kInvalidArgument (an explicit num_cpus above kMaxCpus, not initialised, or called
  // twice).
  Result<void> enable_cpu_caches(CurrentCpuFn current_cpu = nullptr, unsigned num_cpus = 0)
      TA_EXCL(lock_);

  // Gives every cached block back to the free lists, merging it with free neighbours: the shared
  // cache and every CPU's cache, now. After freeing every allocation and draining once, the pool
  // is one free block. O(CPUs) lock pairs and at most kQuickSlots * kQuickDepth +
  // kCpuCacheDepth * CPUs blocks; any context, as alloc.
  void drain_cache() TA_EXCL(lock_);

  // Ends the pool's use of its memory, for a pool whose memory goes back to its owner
  // (KernelDmaOp's grown pools): gives every CPU's cache and the shared cache back, then, if no
  // slot is in use, marks the pool retired, atomically with respect to every alloc and free under
  // the pool's lock. A retired pool refuses every allocation with kNoMemory (not counted as a
  // failure, no report line) without reading or writing its memory or metadata, so both may be
  // handed to someone else as soon as this returns; a caller that loaded a pointer to the pool
  // before may still call alloc safely. (A free of a retired pool's slot is a double free the
  // pool cannot refuse without its records: a precondition violation.) Only init makes the pool
  // usable again. O(CPUs) lock pairs and the drain; any context, as alloc.
  // Errors: kBusy (slots in use: nothing changes but the caches, which were given back),
  // kInvalidArgument (not initialised, or retired already).
  Result<void> retire() TA_EXCL(lock_);
  // The CPU-cache set-up enable_cpu_caches made (null / 0: caches off), so that another pool can
  // be given the same.
  CurrentCpuFn cpu_cache_fn() const { return current_cpu_; }
  unsigned cpu_cache_cpus() const { return num_cpu_caches_; }

  // Records bytes copied through the pool (statistics only). Lock-free.
  void note_bounced(uint64_t bytes) {
    __atomic_fetch_add(&bytes_bounced_, bytes, __ATOMIC_RELAXED);
  }

  // CPU pointer to a physical address inside the pool. Precondition: contains(p).
  void* cpu_addr(PhysAddr p) const {
    return static_cast<uint8_t*>(cpu_base_) + (p.value() - base_.value());
  }
  bool contains(PhysAddr p) const { return p >= base_ && p.value() - base_.value() < bytes_; }
  PhysAddr base() const { return base_; }
  size_t bytes() const { return bytes_; }
  size_t slot_size() const { return slot_size_; }
  // Largest size alloc() accepts (Linux's dma_max_mapping_size for a bounced device): the
  // configured maximum, at most the whole pool and kMaxRequest; 0 before init. A request with a
  // preserved offset or an alignment may need one more slot than this many bytes fill.
  size_t max_mapping_size() const { return max_request_; }
  // Options::name, or null.
  const char* name() const { return name_; }
  // Slots out of the free structure now (in use or held by CPU caches), read without the lock: a
  // hint for policies (KernelDmaOp's grown-pool give-back), stale as soon as it returns. Any
  // context.
  uint64_t used_slots_estimate() const TA_NO_THREAD_SAFETY_ANALYSIS {
    return __atomic_load_n(&used_slots_, __ATOMIC_RELAXED);
  }

  // A snapshot of the counters. Any context, as alloc.
  Stats stats() const TA_EXCL(lock_);
  // Slots of live allocations made for the device `id` (0: anonymous requests). Blocks in a cache
  // belong to nobody. A snapshot: exact when no other CPU is allocating for that device at the
  // same time. O(blocks) under the lock: for diagnostics and tests, not for a hot path.
  uint64_t device_slots(uint32_t id) const TA_EXCL(lock_);

  // Where every pool's report lines go (a kNoMemory, a refused free in debug builds): one line
  // without a trailing newline, at most 399 characters, called with no lock of the pool held.
  // Null: nowhere (the events are still counted). DmaDebug::set_sink (include/dmakit/dma_debug.h)
  // sets it to the library's diagnostic sink, so a kernel sets one sink for both. Returns the
  // previous sink and context through the out-parameters when they are non-null. Not synchronised
  // with reports in flight: set it before devices start, or from a single thread (tests).
  using ReportSink = void (*)(void* ctx, const char* line);
  static void set_report_sink(ReportSink sink, void* ctx, ReportSink* old_sink = nullptr,
                              void** old_ctx = nullptr);
  // Checks the free structure against the slot metadata: block chain, neighbour links, no two
  // free neighbours, every free block on the right list exactly once, the cache's stacks, bitmaps,
  // used and cached slot counts. O(slots). For tests.
  bool check_invariants() const TA_EXCL(lock_);
  // Number of free blocks on the free lists (cached blocks not included; 1 for an entirely free,
  // drained pool: full coalescing). O(free blocks). For tests.
  size_t free_block_count() const TA_EXCL(lock_);

 private:
  static constexpr uint8_t kSlotPoison = 0x5B;
  bool poison_ = KDEBUG_ENABLED;
  void check_poison(uint32_t first, uint32_t slots) const;
  // Out-of-band record of one slot; meaningful only for the first slot of a block.
  struct SlotRecord {
    // Size of the block in slots (0: this slot is not the first slot of a block), plus kFreeBit
    // (on the free lists) or kCachedBit (in a cache). Read by other CPUs while the block is in a
    // CPU cache (a neighbour's merge test): accessed with relaxed atomics where that can happen.
    uint32_t size_free;
    // Head of the physically previous block; the sentinel index for the block at slot 0.
    uint32_t prev_phys;
    // Free: next block on the same free list (the sentinel index at the end). In the shared
    // cache: next block on the same cache stack. Used: the data's offset in bytes from the start
    // of the first slot, plus kQuotaBit when the device it was made for has a quota (such a
    // block is freed under the lock, where its device's quota count is kept).
    uint32_t link_next;
    // Free: previous block on the same free list (the sentinel index at the head). Used: the
    // requested size (at most kMaxRequest).
    uint32_t link_prev;
  };
  static constexpr uint32_t kFreeBit = 0x8000'0000u;
  static constexpr uint32_t kCachedBit = 0x4000'0000u;
  static constexpr uint32_t kSizeMask = kCachedBit - 1;
  static constexpr uint32_t kQuotaBit = 0x8000'0000u;  // In a used head's link_next.
  static_assert(kMaxSlotSize < kQuotaBit, "offsets leave the quota bit clear");
  static_assert(sizeof(SlotRecord) == 16, "SlotRecord is four 32-bit words");
  // Records per cache line. A block that cycles through a CPU cache has its first record written
  // on every map and unmap (claim, cpu_cache_push). Two blocks of kSpreadSlots slots or more
  // never have their first records in one line. A smaller one that is about to enter a CPU cache
  // is cut, when the previous such block was cut for another CPU (last_small_cpu_), so that its
  // last record ends a line (record_phase_), falling back to any place only when the pool has no
  // room so placed: two CPUs' small blocks then do not take the line from each other on every
  // operation (false sharing), and one CPU's small blocks still pack without gaps.
  static constexpr size_t kCacheLineBytes = 64;
  static constexpr uint32_t kSpreadSlots = kCacheLineBytes / sizeof(SlotRecord);
  static_assert(kMaxSlots <= kSizeMask, "slot indices and the sentinel fit the size field");

  // One CPU's cache: its newest block in `hot`, which its CPU takes and gives without a lock (one
  // compare-and-swap each, atomic with respect to an interrupt on that CPU and to a caller that
  // was preempted or migrated mid-call), and a small stack of older blocks guarded by the cache's
  // own lock, which its CPU takes when `hot` does not serve (another size, or a push that finds
  // `hot` taken moves that block onto the stack) and another CPU takes to reclaim the blocks
  // (`hot` too, by compare-and-swap). Newest first overall: `hot`, then the stack from its top.
  // At most kCpuCacheDepth blocks in all. One cache line per CPU.
  //
  // `hot`: bits 0-31 the block's first slot, kHotSlotsShift on its slot count (0: no block, so
  // that an empty cache is all zeroes), kHotCountShift on the requests it served since they
  // were last added to `allocations` (counted by the same compare-and-swap that takes the
  // block; when the count reaches 1024, kHotFlushBit, the next request takes the lock, which
  // adds it).
  struct alignas(64) CpuCache {
    uint64_t hot;  // Atomics only.
    mutable support::SpinLock lock;
    uint32_t first[kCpuCacheDepth - 1] TA_GUARDED(lock);  // First slot of each stacked block.
    // Slots on the stack: written under the lock, read without it (a push's budget test, stats)
    // with relaxed atomics.
    uint32_t held;
    // Requests served from this cache, but for those still counted in `hot`: written under the
    // lock, read by stats under it.
    uint64_t allocations;
    // Bit n set when the stack holds a block of n slots: written under the lock, read without it
    // (relaxed atomics) so that a request neither `hot` nor the stack can serve misses without
    // the lock (a stale answer only sends a request to the pool's lock, or to this one).
    uint64_t sizes;
    uint8_t slots[kCpuCacheDepth - 1] TA_GUARDED(lock);  // Each stacked block's slot count.
    uint8_t count TA_GUARDED(lock);                      // Blocks on the stack.
    // The largest block `hot` may take without the lock: min(the largest block a CPU cache takes,
    // the budget left beside the stack's `held`). Written with `held` (set_held), read the same
    // way. Last, in what the fields above leave of the line.
    uint32_t room;
  };
  static_assert(sizeof(CpuCache) == 64, "one cache line per CPU");
  static constexpr unsigned kHotSlotsShift = 32;
  static constexpr uint64_t kHotSlotsMask = kQuickSlots - 1;  // After the shift.
  static constexpr unsigned kHotCountShift = 38;
  static constexpr uint64_t kHotBlockMask = (uint64_t{1} << kHotCountShift) - 1;
  static constexpr uint64_t kHotFlushBit = uint64_t{1} << 48;
  static constexpr uint64_t kHotCountOne = uint64_t{1} << kHotCountShift;
  static_assert(kMaxSlots < (uint64_t{1} << kHotSlotsShift), "a first slot fits below the count");
  static_assert(kQuickSlots == 64, "a hot block's slot count fits its six bits");
  // The slot count of a `hot` word's block (0: none).
  static constexpr uint32_t hot_slots(uint64_t hot) {
    return static_cast<uint32_t>((hot >> kHotSlotsShift) & kHotSlotsMask);
  }

  // The record of a block the caller owns: a live allocation it was given, or a block in its
  // CPU's cache. Its owner reads and writes size_free, link_next and link_prev without the lock
  // (a neighbour's merge test under the lock only reads size_free, atomically); the lock
  // guards everything else.
  SlotRecord& owned_record(uint32_t first) TA_NO_THREAD_SAFETY_ANALYSIS { return meta_[first]; }
  void store_used(uint64_t v) TA_REQ(lock_) { __atomic_store_n(&used_slots_, v, __ATOMIC_RELAXED); }

  // alloc_stacked's pop: a block of n slots from CPU `cpu`'s cache for `size` bytes, claimed for
  // `owner` as alloc_cached's, or Cached{cpu | kStackMissed, 0}.
  [[gnu::noinline]] Cached pop_stacked(unsigned cpu, uint32_t n, size_t size, uint32_t owner);
  // Takes a cached block of exactly n slots from this CPU's cache `cc`, newest first, under the
  // cache's lock, or returns num_slots_.
  [[gnu::noinline]] uint32_t cpu_cache_pop(CpuCache* cc, uint32_t n) TA_EXCL(cc->lock);
  // Under cc's lock: adds the requests `hot` counted to `allocations` and, when its block has
  // `n` slots (0: any), takes the block too. Returns the block taken as a `hot` word without
  // count (0: none).
  uint64_t hot_collect(CpuCache* cc, uint32_t n) TA_REQ(cc->lock);
  // Under cc's lock (or before the cache is used): the stack holds `held` slots now.
  void set_held(CpuCache* cc, uint32_t held) TA_NO_THREAD_SAFETY_ANALYSIS {
    const uint32_t left = held < cpu_cache_budget_ ? cpu_cache_budget_ - held : 0;
    __atomic_store_n(&cc->held, held, __ATOMIC_RELAXED);
    __atomic_store_n(&cc->room, support::min(cpu_cache_max_block_, left), __ATOMIC_RELAXED);
  }
  // Under cc's lock: `block` (a `hot` word without count) onto the stack, which has room.
  void stack_push(CpuCache* cc, uint64_t block) TA_REQ(cc->lock) {
    cc->first[cc->count] = static_cast<uint32_t>(block);
    cc->slots[cc->count] = static_cast<uint8_t>(hot_slots(block));
    ++cc->count;
    set_held(cc, cc->held + hot_slots(block));
    __atomic_store_n(&cc->sizes, cc->sizes | (uint64_t{1} << hot_slots(block)), __ATOMIC_RELAXED);
  }
  // Under cc's lock: `sizes` from the stack.
  static void stack_sizes(CpuCache* cc) TA_REQ(cc->lock) {
    uint64_t sizes = 0;
    for (uint32_t i = 0; i < cc->count; ++i) sizes |= uint64_t{1} << cc->slots[i];
    __atomic_store_n(&cc->sizes, sizes, __ATOMIC_RELAXED);
  }
  // Marks the block [first, first + n) used by a request of `size` bytes at `offset` in its first
  // slot (plus kQuotaBit), made for the device `owner`.
  [[gnu::always_inline]] void claim_record(uint32_t first, uint32_t n, uint64_t offset, size_t size,
                                           uint32_t owner) {
    SlotRecord& r = owned_record(first);
    r.link_next = static_cast<uint32_t>(offset);
    r.link_prev = static_cast<uint32_t>(size);
    // Read by device_slots and the kNoMemory report under the lock, while this CPU owns the block.
    // Sixteen owner words share a cache line, so blocks of several CPUs share one: stored only
    // when it changes (a block reused by its CPU for the same device, the common case, leaves
    // the line shared and clean instead of taking it from the other CPUs).
    if (__atomic_load_n(&owners_[first], __ATOMIC_RELAXED) != owner) {
      __atomic_store_n(&owners_[first], owner, __ATOMIC_RELAXED);
    }
    __atomic_store_n(&r.size_free, n, __ATOMIC_RELAXED);
  }
  // The description of the block [first, first + n) holding `size` bytes at `offset`.
  [[gnu::always_inline]] BounceSlot describe(uint32_t first, uint32_t n, uint64_t offset,
                                             size_t size) const {
    BounceSlot out;
    out.addr = base_ + ((uint64_t{first} << slot_shift_) + offset);
    out.first_slot = first;
    out.num_slots = n;
    out.size = size;
    return out;
  }
  // Puts a used block into this CPU's cache `cc` if it is a live allocation exactly as described
  // and the cache has room; false otherwise (the caller then frees it under the lock, which also
  // reports a bad description).
  [[gnu::always_inline]] bool cpu_cache_push(CpuCache* cc, uint32_t first, uint32_t n,
                                             uint64_t offset, size_t size) TA_EXCL(cc->lock) {
    // first inside the pool; the record test below then also bounds the block (a used head of n
    // slots lies inside the pool).
    if (first >= num_slots_) return false;
    SlotRecord& r = owned_record(first);
    // The block is the caller's, if the free is right: nobody else writes these fields while it is
    // used. A double free may be looking at a block that another CPU holds in its cache (and marks
    // used again at any moment): the size word is read atomically, and anything but a used head
    // of this size goes to the locked path, which reports it. A block of a device with a quota
    // (kQuotaBit in link_next) goes there too.
    if (__atomic_load_n(&r.size_free, __ATOMIC_RELAXED) != n || offset != r.link_next ||
        size != r.link_prev) {
      return false;
    }
    // Into `hot` if it is empty and n in [1, room] (one unsigned test: n at most the largest
    // block a CPU cache takes, and the stack leaves the budget room for it): marked cached first,
    // then published by one compare-and-swap (which keeps the count). Otherwise under the lock,
    // if the cache takes such a block at all (n 0 is no block: a slot that is not a head).
    uint64_t hot = __atomic_load_n(&cc->hot, __ATOMIC_RELAXED);
    const bool lock_free =
        hot_slots(hot) == 0 && n - 1 < __atomic_load_n(&cc->room, __ATOMIC_RELAXED);
    if (!lock_free && n - 1 >= cpu_cache_max_block_) return false;
    // Still the caller's block: poisoned before it is published.
    if (KDEBUG_ENABLED && poison_) {
      support::fill_bytes(slot_cpu(first), kSlotPoison, size_t{n} << slot_shift_);
    }
    if (lock_free) [[likely]] {
      __atomic_store_n(&r.size_free, n | kCachedBit, __ATOMIC_RELAXED);
      if (__atomic_compare_exchange_n(&cc->hot, &hot, hot | first | (uint64_t{n} << kHotSlotsShift),
                                      false, __ATOMIC_RELEASE, __ATOMIC_RELAXED)) [[likely]] {
        return true;
      }
      __atomic_store_n(&r.size_free, n, __ATOMIC_RELAXED);  // Not published: still the caller's.
    }
    cpu_cache_push_locked(cc, first, n);
    return true;
  }
  // cpu_cache_push's way when `hot` is taken or the budget is reached, under the cache's lock:
  // the new block takes `hot`'s place (one compare-and-swap) and `hot`'s block moves onto the
  // stack; a stack that is full (depth or budget) sends every block back, `hot`'s last
  // (make_room).
  [[gnu::noinline]] void cpu_cache_push_locked(CpuCache* cc, uint32_t first, uint32_t n)
      TA_EXCL(cc->lock);
  // Gives every block of this CPU's stack back, oldest first, then `extra` (a `hot` word without
  // count, 0: none): to the shared cache while it has room, else merged into the free lists.
  [[gnu::noinline]] void make_room(CpuCache* cc, uint64_t extra) TA_REQ(cc->lock) TA_EXCL(lock_);
  // alloc's general path, under the lock; `fault_point`: whether the kBounceSlot fault point is
  // still to be evaluated (alloc's fast path evaluates it itself); `cache_cpu`: the CPU whose
  // cache the request missed, so that the block will cycle through that cache (placed apart from
  // other CPUs' blocks: see kSpreadSlots), or kMaxCpus.
  Result<BounceSlot> alloc_locked(size_t size, PhysAddr orig, uint64_t min_align_mask, size_t align,
                                  const BounceDevice& dev, bool fault_point, unsigned cache_cpu)
      TA_EXCL(lock_);
  // Why a request failed, for its report line.
  enum class Refusal : uint8_t { kNoRoom, kOverQuota, kQuotaTableFull };
  // init's part for a retired pool: CPU caches off and their counters cleared.
  void reset_cpu_caches() TA_EXCL(lock_);
  uint32_t take_locked(uint64_t n, uint64_t phase, uint64_t period_mask, uint64_t offset,
                       size_t size, const BounceDevice& dev, Refusal* why, uint64_t* held,
                       bool may_drain) TA_REQ(lock_);
  // Prints the line of the `failure`-th kNoMemory (only some are printed: see bounce_pool.cc).
  [[gnu::noinline, gnu::cold]] void report_no_memory(Refusal why, const BounceDevice& dev,
                                                     size_t size, uint64_t n, uint64_t held,
                                                     uint64_t failure, uint64_t not_shown)
      TA_EXCL(lock_);
  // Prints what a refused free's slot really is (debug builds).
  [[gnu::noinline, gnu::cold]] void report_invalid_free(uint32_t first, uint32_t slots,
                                                        uint64_t offset, uint64_t size)
      TA_EXCL(lock_);
  // The quota count of device `id`: its entry, or a free entry claimed for it, or null when all
  // kQuotaDevices entries are in use by other devices.
  struct QuotaCount {
    uint32_t id;
    uint32_t slots;  // 0: the entry is free.
  };
  QuotaCount* quota_count(uint32_t id, bool claim) TA_REQ(lock_);
  // Devices whose name the pool has seen (on the locked path), by id modulo kNames.
  struct DeviceName {
    uint32_t id;
    const char* name;
  };
  // Gives every CPU's cache back to the free lists (merged), each under its own lock and then
  // the pool's; returns the slots given back. O(CPUs) lock pairs.
  uint64_t reclaim_cpu_caches() TA_EXCL(lock_);
  // Sum of the CPU caches' slot counters (relaxed reads).
  uint64_t cpu_cached_slots() const;
  // check_invariants' parts. The caller of the first holds every CPU cache's lock (taken and
  // released by the next two), the caller of check_cpu_caches the pool's lock too: which cache
  // locks are held is more than the analysis can express for an array of locks.
  bool check_invariants_caches_locked() const TA_EXCL(lock_);
  void lock_cpu_cache(unsigned c) const TA_NO_THREAD_SAFETY_ANALYSIS;
  void unlock_cpu_cache(unsigned c) const TA_NO_THREAD_SAFETY_ANALYSIS;
  bool check_cpu_caches(uint64_t* slots, uint64_t* blocks) const
      TA_REQ(lock_) TA_NO_THREAD_SAFETY_ANALYSIS;
  static constexpr unsigned kFlBits = 32;  // First-level classes (28 are reachable).
  static constexpr unsigned kSlBits = 4;   // 16 second-level classes per first level.
  static constexpr unsigned kClasses = kFlBits << kSlBits;

  uint32_t find_block(uint64_t need, unsigned* cls) const TA_REQ(lock_);
  void insert_free(uint32_t head, unsigned cls) TA_REQ(lock_);
  void remove_free(uint32_t head, unsigned cls) TA_REQ(lock_);
  void resize_free(uint32_t head, uint32_t old_size, uint32_t new_size) TA_REQ(lock_);
  uint32_t carve(uint64_t n, uint64_t phase, uint64_t period_mask) TA_REQ(lock_);
  void release(uint32_t first, uint32_t slots) TA_REQ(lock_);
  void drain_locked() TA_REQ(lock_);
  // A block nobody uses any more (its slots already out of used_slots_, poisoned if poisoning):
  // onto the shared cache if it fits there, else merged into the free lists.
  void stash_or_release(uint32_t first, uint32_t slots) TA_REQ(lock_);
  // free() and free_data(): `offset` is the data's byte offset from the start of the first slot.
  Result<void> free_block(uint32_t first, uint32_t slots, uint64_t offset, uint64_t size)
      TA_EXCL(lock_);

  // Set by init (and enable_cpu_caches), constant afterwards. What the lock-free paths read comes
  // first, in one cache line.
  CurrentCpuFn current_cpu_ = nullptr;  // Per-CPU caches on when non-null.
  // num_slots_ + 1 records: one per slot and a sentinel that is never free.
  SlotRecord* meta_ TA_PT_GUARDED(lock_) = nullptr;
  // Per slot, meaningful for the head of a used block: the device it was made for. Written by the
  // block's owner (relaxed atomics), read under the lock.
  uint32_t* owners_ = nullptr;
  void* cpu_base_ = nullptr;
  PhysAddr base_;
  size_t max_request_ = 0;  // max_mapping_size().
  size_t slot_size_ = 0;
  unsigned slot_shift_ = 0;
  uint32_t num_slots_ = 0;  // Also the index of the sentinel record, and "no slot" in links.
  unsigned num_cpu_caches_ = 0;
  // Largest block one CPU's cache takes: min(kQuickSlots - 1, cpu_cache_budget_).
  uint32_t cpu_cache_max_block_ = 0;
  uint32_t cpu_cache_budget_ = 0;  // Most slots one CPU's cache may hold.
  // Slot index modulo kSpreadSlots whose record starts a cache line (0 when the metadata is not
  // 16-byte aligned: records then straddle lines and no placement keeps them apart).
  uint32_t record_phase_ = 0;
  mutable support::SpinLock lock_;
  size_t bytes_ = 0;
  uint32_t cache_budget_ = 0;  // Most slots the shared cache may hold.
  // The CPU for whose cache the last block of fewer than kSpreadSlots slots was cut (kMaxCpus:
  // none yet).
  unsigned last_small_cpu_ TA_GUARDED(lock_) = kMaxCpus;
  bool initialized_ = false;
  bool retired_ TA_GUARDED(lock_) = false;  // See retire().
  uint32_t fl_bitmap_ TA_GUARDED(lock_) = 0;
  uint32_t sl_bitmap_[kFlBits] TA_GUARDED(lock_) = {};
  uint32_t heads_[kClasses] TA_GUARDED(lock_) = {};  // Free-list heads by class (set by init).
  // The cache: a stack of freed blocks per exact slot count, linked through their records.
  uint32_t cache_head_[kQuickSlots] TA_GUARDED(lock_) = {};
  uint8_t cache_count_[kQuickSlots] TA_GUARDED(lock_) = {};
  uint32_t cached_slots_ TA_GUARDED(lock_) = 0;
  uint32_t cached_blocks_ TA_GUARDED(lock_) = 0;
  // Written under the lock with relaxed atomic stores (store_used), so that used_slots_estimate may
  // read it without the lock.
  uint64_t used_slots_ TA_GUARDED(lock_) = 0;
  uint64_t high_water_ TA_GUARDED(lock_) = 0;
  uint64_t allocations_ TA_GUARDED(lock_) = 0;
  uint64_t failures_ TA_GUARDED(lock_) = 0;
  uint64_t quota_failures_ TA_GUARDED(lock_) = 0;
  uint64_t invalid_frees_ TA_GUARDED(lock_) = 0;
  uint64_t last_reported_failure_ TA_GUARDED(lock_) = 0;
  const char* name_ = nullptr;
  static constexpr unsigned kQuotaDevices = 32;  // Devices with a quota holding slots at once.
  QuotaCount quota_counts_[kQuotaDevices] TA_GUARDED(lock_) = {};
  static constexpr unsigned kNames = 32;
  DeviceName names_[kNames] TA_GUARDED(lock_) = {};
  uint64_t bytes_bounced_ = 0;
  CpuCache cpu_caches_[kMaxCpus] = {};
};
