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
#pragma once

#include "support/addr.h"
#include "support/result.h"
#include "support/spinlock.h"
#include "support/types.h"

// One allocation from a BouncePool: `addr` is where the data goes (inside the slots).
struct BounceSlot {
  PhysAddr addr;            // Physical address of the first data byte.
  uint32_t first_slot = 0;  // Bookkeeping: first slot of the allocation.
  uint32_t num_slots = 0;   // Bookkeeping: slots taken (0: no allocation).
  size_t size = 0;          // Bytes requested.
};

class BouncePool {
 public:
  static constexpr size_t kDefaultSlotSize = 2048;
  static constexpr size_t kMinSlotSize = 64;
  static constexpr size_t kMaxSlotSize = size_t{1} << 30;
  static constexpr uint64_t kMaxSlots = (uint64_t{1} << 30) - 1;  // Most slots one pool manages.
  static constexpr size_t kMaxMapping = 256 * 1024;    // Largest single allocation guaranteed.
  static constexpr size_t kMaxRequest = 0xFFFF'FFFFu;  // No single allocation is larger.
  // The cache keeps freed blocks of fewer than kQuickSlots slots, at most kQuickDepth of each
  // size and at most 1/32 of the pool's slots in all.
  static constexpr uint32_t kQuickSlots = 64;
  static constexpr uint32_t kQuickDepth = 2;

  struct Stats {
    uint64_t total_slots = 0;
    uint64_t used_slots = 0;        // Slots of live allocations.
    uint64_t high_water_slots = 0;  // Most slots ever in use at once.
    uint64_t allocations = 0;       // Successful allocations so far.
    uint64_t failures = 0;          // kNoMemory returns so far.
    uint64_t bytes_bounced = 0;     // Bytes copied in or out, as reported by note_bounced().
    uint64_t cached_slots = 0;      // Freed slots held in the cache (neither used nor merged).
  };

  BouncePool() = default;
  BouncePool(const BouncePool&) = delete;
  BouncePool& operator=(const BouncePool&) = delete;
  // In debug builds (KDEBUG_ENABLED), asserts that every slot was given back (cached blocks count
  // as given back).
  ~BouncePool();

  // Bytes of out-of-band metadata init needs for a pool of `bytes` bytes and this slot size
  // (16 bytes per slot, plus 16). Returns 0 when slot_size is not a valid slot size.
  static size_t metadata_size(size_t bytes, size_t slot_size = kDefaultSlotSize);

  // Takes the region [base, base + bytes) (reached by the CPU at `cpu_base`). base and bytes must
  // be multiples of slot_size, a power of two in [kMinSlotSize, kMaxSlotSize]. `metadata` (at
  // least metadata_size(bytes, slot_size) bytes, 4-byte aligned) stays owned by the caller and
  // must outlive the pool; the pool's memory itself is never written. Call once, before any other
  // method, without concurrent callers. May be called with interrupts off.
  // Errors: kInvalidArgument (bad slot size, misaligned region, null cpu_base or metadata,
  // misaligned metadata, called twice, region of more than kMaxSlots slots), kLayoutError
  // (bytes == 0), kNoMemory (metadata buffer too small). On error the pool stays uninitialised.
  Result<void> init(PhysAddr base, size_t bytes, void* cpu_base, void* metadata,
                    size_t metadata_bytes, size_t slot_size = kDefaultSlotSize);

  // Debug builds (KDEBUG_ENABLED) poison the pool's memory at init and every freed slot, and
  // check the poison when a slot is handed out again, so that a CPU write after unmap is
  // reported. Call before init with false for a pool whose memory must not be touched (e.g. a
  // test standing in for a huge pool with a tiny buffer). No effect in release builds.
  void set_poisoning(bool on) { poison_ = on && KDEBUG_ENABLED; }

  // Takes room for `size` bytes. The returned addr satisfies addr & min_align_mask ==
  // orig & min_align_mask, and addr % align == 0 (align a power of two; 0 or 1 for none; an align
  // that contradicts the preserved bits is a kLayoutError). min_align_mask must be 2^k - 1 (0 for
  // none). The slot's bytes are whatever the last user left there. Cost O(1); may be called with
  // interrupts off (the caller masks them if it also calls from interrupt context). Before it
  // returns kNoMemory it gives the cache back to the free lists and tries once more.
  // Errors: kLayoutError (size 0, align not a power of two or contradicting min_align_mask,
  // min_align_mask not of the form 2^k - 1, size above max_allocation() or above what the pool
  // can ever hold with these constraints, pool not initialised), kNoMemory (no room right now;
  // no allocation changed, only `failures` and the cache).
  Result<BounceSlot> alloc(size_t size, PhysAddr orig = PhysAddr(0), uint64_t min_align_mask = 0,
                           size_t align = 0) TA_EXCL(lock_);

  // Gives back an allocation: `slot` must be exactly what alloc returned (addr, first_slot,
  // num_slots and size are all checked). Cost O(1); may be called with interrupts off.
  // Errors: kNotFound (not a live allocation of this pool: never allocated, already freed,
  // altered); the pool is unchanged then. A stale copy of a slot whose place was since handed out
  // again with the same address and size cannot be told apart from the new allocation.
  Result<void> free(const BounceSlot& slot) TA_EXCL(lock_);

  // The same, for a caller that kept the allocation in a compact form (DmaMapHandle): the first
  // slot and slot count of the BounceSlot, the CPU address of its data (cpu_addr(slot.addr)) and
  // the requested size. Checked as strictly as free(); same errors and cost.
  Result<void> free_data(uint32_t first_slot, uint32_t num_slots, const void* data, size_t size)
      TA_EXCL(lock_);

  // Gives every cached block back to the free lists, merging it with free neighbours. After
  // freeing every allocation and draining, the pool is one free block. At most
  // kQuickSlots * kQuickDepth blocks, so O(1); may be called with interrupts off.
  void drain_cache() TA_EXCL(lock_);

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
  // Largest size alloc() can ever satisfy with no alignment constraint: the whole pool (when it
  // is entirely free), capped at kMaxRequest; 0 before init.
  size_t max_allocation() const { return max_request_; }

  // A snapshot of the counters. May be called with interrupts off.
  Stats stats() const TA_EXCL(lock_);
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
  void* slot_cpu(uint32_t slot) const {
    return static_cast<uint8_t*>(cpu_base_) + (size_t{slot} << slot_shift_);
  }
  void check_poison(uint32_t first, uint32_t slots) const;
  // Out-of-band record of one slot; meaningful only for the first slot of a block. Defined in
  // bounce_pool.cc.
  struct SlotRecord;
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
  // free() and free_data(): `offset` is the data's byte offset from the start of the first slot.
  Result<void> free_block(uint32_t first, uint32_t slots, uint64_t offset, uint64_t size)
      TA_EXCL(lock_);

  mutable support::SpinLock lock_;
  // Set by init, constant afterwards.
  PhysAddr base_;
  size_t bytes_ = 0;
  void* cpu_base_ = nullptr;
  size_t slot_size_ = 0;
  size_t max_request_ = 0;  // max_allocation().
  unsigned slot_shift_ = 0;
  uint32_t num_slots_ = 0;     // Also the index of the sentinel record, and "no slot" in links.
  uint32_t cache_budget_ = 0;  // Most slots the cache may hold.
  bool initialized_ = false;
  // num_slots_ + 1 records: one per slot and a sentinel that is never free.
  SlotRecord* meta_ TA_PT_GUARDED(lock_) = nullptr;
  uint32_t fl_bitmap_ TA_GUARDED(lock_) = 0;
  uint32_t sl_bitmap_[kFlBits] TA_GUARDED(lock_) = {};
  uint32_t heads_[kClasses] TA_GUARDED(lock_);  // Free-list heads by class.
  // The cache: a stack of freed blocks per exact slot count, linked through their records.
  uint32_t cache_head_[kQuickSlots] TA_GUARDED(lock_);
  uint8_t cache_count_[kQuickSlots] TA_GUARDED(lock_) = {};
  uint32_t cached_slots_ TA_GUARDED(lock_) = 0;
  uint32_t cached_blocks_ TA_GUARDED(lock_) = 0;
  uint64_t used_slots_ TA_GUARDED(lock_) = 0;
  uint64_t high_water_ TA_GUARDED(lock_) = 0;
  uint64_t allocations_ TA_GUARDED(lock_) = 0;
  uint64_t failures_ TA_GUARDED(lock_) = 0;
  uint64_t bytes_bounced_ = 0;
};
