// IommuDomain: an IOMMU translation domain as a DmaOp, so that a device behind an IOMMU keeps
// `DeviceDma dev(&domain, constraints)` and every driver call unchanged (Linux's dma-iommu,
// FreeBSD's busdma_iommu).
//
// A domain owns one I/O address space: an IoPageTable in its IommuUnit's format
// (dmakit/io_page_table.h) and an IovaAllocator over a window of it (dmakit/iova_allocator.h).
// Devices attached to it (attach) reach exactly what it maps and nothing else.
//
// The map decision (map_single), in one place:
//   1. check the request as KernelDmaOp does (size, alignment, wrap-around, mask, cache
//      maintenance available for a device that does not snoop);
//   2. translate the buffer to physical addresses through the platform's DmaOp (virt_to_phys,
//      every page; it must be physically contiguous, as for KernelDmaOp);
//   3. a buffer of a device with DmaConstraints::force_bounce, and a receive buffer of a device
//      that does not snoop that shares a cache line with other data, is bounced whole through
//      the platform's bounce pool (the latter for KernelDmaOp's reason: the unmap's invalidate
//      would lose the neighbour's or the device's bytes); the slot is then what the IOMMU maps;
//   4. allocate an IOVA range under the device's mask (so a 28-bit device reaches any page of
//      RAM without bouncing), map it with the direction's permissions (kToDevice: the device may
//      read, kFromDevice: write, kBidirectional: both; a hardware without write-only entries
//      grants read with write), keeping the buffer's offset in its page;
//   5. clean the caches over the buffer for a device that does not snoop.
// Unmap reverses it: clear the entries, invalidate the IOTLB (strict: unmap_single returns after
// IommuUnit::invalidate acknowledged it), free the IOVA range, invalidate the CPU caches for a
// kFromDevice / kBidirectional mapping of a device that does not snoop, copy out of the bounce
// slot where there is one.
//
// Deferred invalidation (Config::deferred): unmap clears the entries and queues the range; every
// kFlushQueueSize unmaps (or at flush_deferred()) one invalidation of the whole domain is issued,
// then the queued ranges are freed. The window: between unmap_single's return and that
// invalidation, the device may still reach the unmapped buffer's pages through IOTLB entries it
// cached before the unmap (reads and writes; never other memory, and the IOVA range is not
// handed out again until the invalidation is done). The CPU's cache maintenance and the bounce
// copy-out still happen in unmap_single, so the CPU sees what the device wrote before the unmap;
// what a misbehaving device writes after it may land in memory the kernel has reused. Use
// strict mode (the default) for devices that are not trusted.
//
// Coherent memory: pages from the platform's alloc_coherent with no mask constraint (remapped
// uncached there for a device that does not snoop), mapped read-write at an IOVA under the mask.
//
// The misuse checker (dmakit/dma_debug.h) tracks the domain's mappings by (domain, IOVA) like
// KernelDmaOp's; the platform's own checks cover the bounce slots and coherent pages it hands
// the domain.
//
// Errors besides KernelDmaOp's: kNoMemory when no IOVA range under the mask is free (the window
// is full, or the mask lies below the window), or no page-table memory: nothing stays mapped.
// A device's bus_offset must be 0 (kInvalidArgument): the IOMMU sees the device's address.
//
// Calling contexts (dmakit/dma_op.h): init, destroy, attach, detach are thread only; the DmaOp
// methods have DmaOp's contexts; map_fixed, unmap_fixed, flush_deferred and the queries are any
// context.
#pragma once

#include "dmakit/dma_op.h"
#include "dmakit/io_page_table.h"
#include "dmakit/iommu_unit.h"
#include "dmakit/iova_allocator.h"
#include "dmakit/kernel_dma_op.h"
#include "dmakit/support/spinlock.h"
#include "dmakit/support/thread_annotations.h"

class IommuDomain final : public DmaOp {
 public:
  static constexpr size_t kFlushQueueSize = 64;
  static constexpr uint64_t kDefaultWindowBase = 1ull << 20;
  static constexpr uint64_t kDefaultWindowSize = 1ull << 30;

  struct Config {
    IommuUnit* unit = nullptr;  // Required; outlives the domain.
    uint32_t domain_id = 0;     // 1 to unit->max_domains().
    // The platform's DmaOp: virt_to_phys, cache maintenance, bounce pools, coherent pages and
    // the page-frame allocator (for tables and bookkeeping). Required; outlives the domain.
    KernelDmaOp* platform = nullptr;
    bool deferred = false;  // Batched invalidation (see the file comment); false: strict.
    // The IOVA window mappings are allocated from, clipped to the unit's I/O address space.
    // Its bookkeeping takes about half a byte per 4 KiB page of it.
    uint64_t window_base = kDefaultWindowBase;
    uint64_t window_size = kDefaultWindowSize;
    // IOVA ranges inside the window never allocated: where map_fixed will map (MSI doorbells).
    const IovaRange* reserved = nullptr;
    size_t num_reserved = 0;
    // CPUs with IOVA caches (IovaAllocator::Config::num_cpus).
    unsigned num_cpus = 0;
  };

  // Static storage, like KernelDmaOp: constexpr and trivially destructible, so `constinit
  // IommuDomain g_domains[N];` runs no code; destroy() ends a domain's use.
  constexpr IommuDomain() = default;
  IommuDomain(const IommuDomain&) = delete;
  IommuDomain& operator=(const IommuDomain&) = delete;

  // Sets the domain up: an empty page table (every access faults) and the IOVA allocator. No
  // device is attached yet. Thread only, once.
  // Errors: kInvalidArgument (unit, platform or domain id missing or out of range, window empty
  // after clipping, misaligned, or too large, already initialised), kNoMemory (no memory for the
  // root table or the allocator's bookkeeping). On error nothing stays allocated.
  Result<void> init(const Config& cfg);

  // Frees the page tables and the bookkeeping. Preconditions: no device attached (detach them
  // first). Flushes the deferred queue. Thread only. The object cannot be initialised again.
  // Errors: kBusy (streaming mappings or coherent allocations are live: nothing is freed).
  Result<void> destroy();

  // Lets device `device_id` (IommuUnit's requester id) translate through this domain; from then
  // on it reaches only what the domain maps. Thread only. Errors: IommuUnit::attach's.
  Result<void> attach(uint32_t device_id);
  // Blocks device `device_id` (IommuUnit::detach). Thread only.
  void detach(uint32_t device_id);

  // Maps [iova, iova + size) to [pa, pa + size) with the IommuPerm bits `perm`, at an address the
  // caller chooses (MSI doorbells: iova == pa). The range must lie outside the window or inside
  // one of Config::reserved, so that no allocation can collide with it. All page aligned. Any
  // context. Errors: kLayoutError (misaligned, size 0, wraps), kInvalidArgument (overlaps the
  // allocatable window, perm 0, already mapped), kOutOfRange (beyond the I/O address space),
  // kNoMemory (no table memory). On error nothing is mapped.
  Result<void> map_fixed(uint64_t iova, PhysAddr pa, uint64_t size, unsigned perm);
  // Removes a map_fixed mapping and invalidates it (strict in both modes). Any context.
  void unmap_fixed(uint64_t iova, uint64_t size);

  // Deferred mode: issues the pending invalidation now and frees the queued ranges. Nothing to
  // do in strict mode. Any context.
  void flush_deferred();

  // DmaOp.
  size_t page_size() const override { return IoPageTable::kPageSize; }
  using DmaOp::alloc_coherent;
  using DmaOp::map_single;
  // See the file comment for the decision, DmaOp for the contract. Larger than
  // max_mapping_size(): kLayoutError; no IOVA range under the mask: kNoMemory.
  Result<DmaMapHandle> map_single(const DmaConstraints& c, void* addr, size_t size, size_t align,
                                  DmaDirection dir) override;
  void unmap_single(const DmaMapHandle& handle) override;
  // Pages from the platform (any physical address), mapped read-write under c.dma_mask. Errors:
  // the platform's alloc_coherent's, kLayoutError (larger than max_mapping_size()), kNoMemory (no
  // IOVA range under the mask, no table memory).
  Result<DmaHandle> alloc_coherent(const DmaConstraints& c, Layout layout) override;
  void dealloc_coherent(const DmaHandle& handle) override;
  // As alloc_coherent, with the platform's alloc_noncoherent pages (kept cacheable, never
  // remapped; the caller syncs them with sync_noncoherent). Errors: the platform's
  // alloc_noncoherent's, kInvalidArgument (mask 0, bus_offset not 0), kLayoutError (larger than
  // max_mapping_size()), kNoMemory (no IOVA range under the mask, no table memory); nothing stays
  // allocated on error. Any context. dealloc_noncoherent unmaps the IOVA (strict) and gives the
  // pages back; any context.
  Result<DmaHandle> alloc_noncoherent(const DmaConstraints& c, Layout layout) override;
  void dealloc_noncoherent(const DmaHandle& handle) override;
  // kDmaAttrSkipCpuSync: map_single's decision and IOVA, without the cache maintenance at map and
  // unmap and without the bounce slot's copy out at unmap (recorded in the handle, as
  // KernelDmaOp does); the copy into a bounce slot still happens. kDmaAttrWeakOrdering: no
  // effect. Errors: map_single's, kInvalidArgument for an attribute that is not a mapping's
  // (nothing mapped). Any context.
  Result<DmaMapHandle> map_single_attrs(const DmaConstraints& c, void* addr, size_t size,
                                        size_t align, DmaDirection dir, DmaAttrs attrs) override;
  Result<void> prepare_read(const DmaMapHandle& handle, size_t offset, size_t size,
                            DmaDirection dir) override;
  Result<void> confirm_write(const DmaMapHandle& handle, size_t offset, size_t size,
                             DmaDirection dir) override;
  // One IOVA range for every piece: each piece starts at the next page of the range plus its own
  // offset in its page, and pieces that continue each other physically share their pages, so a
  // list of page-aligned buffers becomes one segment. Total span at most max_mapping_size().
  Result<void> map_sg(const DmaConstraints& c, DmaMapHandle* handles, size_t n, size_t align,
                      DmaDirection dir) override;
  void unmap_sg(const DmaMapHandle* handles, size_t n) override;
  void flush(const void* addr, size_t size) override { platform_->flush(addr, size); }
  void invalidate(const void* addr, size_t size) override { platform_->invalidate(addr, size); }
  void flush_invalidate(const void* addr, size_t size) override {
    platform_->flush_invalidate(addr, size);
  }
  DmaConstraints default_constraints() const override { return platform_->default_constraints(); }
  size_t cache_alignment() const override { return platform_->cache_alignment(); }
  // The largest IOVA range less one page, so that any in-page offset fits: just under 4 MiB; for a
  // device that bounces every mapping (force_bounce) also no more than the platform's bounce pool
  // takes (the bounce slot is what the domain maps).
  size_t max_mapping_size(const DmaConstraints& c) const override;
  // The page's direct-map address (KernelDmaOp::phys_to_virt) through map_single: the same
  // decision, IOVA and bounce as a buffer there. Errors: kInvalidArgument (page not page aligned,
  // not RAM of the platform, mask 0, bus_offset not 0), kOutOfRange (offset or offset + size
  // past the page), kLayoutError (size 0), and map_single's. Any context.
  Result<DmaMapHandle> map_page(const DmaConstraints& c, PhysAddr page, size_t offset, size_t size,
                                DmaDirection dir) override;
  // An IOVA range under c.dma_mask mapping the pages of the MMIO range [phys, phys + size), the
  // offset in the first page kept, with the direction's permissions (kToDevice: the device reads
  // the peer, kFromDevice: writes it, kBidirectional: both). No cache maintenance, never bounced.
  // Counted in live_mappings() until unmap_resource. Errors: kLayoutError (size 0, the range
  // wraps, spans more than IovaAllocator::kMaxSize), kInvalidArgument (mask 0, bus_offset not 0,
  // the range overlaps the platform's RAM), kNoMemory (no IOVA range under the mask, no table
  // memory). On error nothing is mapped. Any context.
  Result<DmaAddr> map_resource(const DmaConstraints& c, PhysAddr phys, size_t size,
                               DmaDirection dir) override;
  // Removes a map_resource mapping and invalidates the IOTLB before returning (strict in both
  // modes: the peer's registers stop being reachable now). Precondition: addr and size of a live
  // map_resource of this domain, unmapped once. Any context.
  void unmap_resource(const DmaConstraints& c, DmaAddr addr, size_t size,
                      DmaDirection dir) override;
  // Both kinds: some page of the IOVA window lies under c.dma_mask (every mapping, bounce slot
  // and coherent allocation gets an IOVA from it). Errors: kInvalidArgument (mask 0, bus_offset
  // not 0), kDmaMaskNotMatch (the mask ends below the window's first page; Error::addr is the
  // window's lowest address, mask the mask). Any context.
  Result<void> check_mask(const DmaConstraints& c, DmaMaskKind kind) const override;
  // The smallest 2^n - 1 covering the window's highest IOVA: whatever the physical address of
  // RAM, a device needs no wider mask to get every IOVA. Any context.
  uint64_t required_mask(const DmaConstraints& c) const override;
  // False for a device that snoops when `addr` is a live IOVA of this domain that maps the
  // buffer itself; true for a device that does not snoop, an IOVA that maps a bounce slot, and
  // an address this domain does not map. Any context.
  bool need_sync(const DmaConstraints& c, DmaAddr addr) const override;
  // The largest range the IOVA allocator's per-CPU caches hold (2^(kCacheOrders - 1) pages),
  // no more than max_mapping_size(c): a page-aligned buffer up to it takes and gives back its
  // IOVA range without the shared lock. Any context.
  size_t opt_mapping_size(const DmaConstraints& c) const override;

  // Queries, for tests and reports. Any context.
  IommuUnit* unit() const { return unit_; }
  uint32_t domain_id() const { return domain_id_; }
  const IoPageTable& page_table() const { return pt_; }
  IovaAllocator& iova_allocator() { return iova_; }
  // Streaming mappings and coherent allocations live now.
  uint64_t live_mappings() const { return __atomic_load_n(&live_, __ATOMIC_RELAXED); }
  // Ranges waiting in the deferred queue.
  size_t deferred_pending() const;

 private:
  struct Pending {
    uint64_t iova;
    uint64_t size;
  };
  bool snoops(const DmaConstraints& c) const;
  // IoPageTable::map, then the invalidation a unit that caches non-present entries needs
  // (IommuUnit::invalidate_on_map).
  Result<void> map_pages(uint64_t iova, PhysAddr pa, uint64_t size, unsigned perm) {
    TRY(pt_.map(iova, pa, size, perm));
    if (unit_->invalidate_on_map()) unit_->invalidate(domain_id_, iova, size);
    return support::ok();
  }
  // map_sg's body; `skip`: kDmaAttrSkipCpuSync.
  Result<void> map_pieces(const DmaConstraints& c, DmaMapHandle* handles, size_t n, size_t align,
                          DmaDirection dir, bool skip);
  // alloc_coherent's / alloc_noncoherent's body, and their frees.
  Result<DmaHandle> alloc_mapped(const DmaConstraints& c, Layout layout, bool noncoherent);
  void dealloc_mapped(const DmaHandle& h, bool noncoherent);
  // Whether physical [p, p + size) overlaps the platform's RAM. Precondition: size > 0, no wrap.
  bool overlaps_ram(uint64_t p, uint64_t size) const;
  // The highest IOVA a device with these constraints may be given.
  uint64_t limit_of(const DmaConstraints& c) const;
  ErrorCode check_request(const DmaConstraints& c, const void* addr, size_t size, size_t align,
                          bool coherent) const;
  // Physical address of the contiguous buffer [addr, addr + size). Errors: kInvalidArgument,
  // kNotContiguous.
  Result<uint64_t> locate(const void* addr, size_t size) const;
  // Removes [iova, iova + bytes) and releases the IOVA range: now (strict) or through the
  // deferred queue.
  void release(uint64_t iova, uint64_t bytes);
  void flush_queue_locked() TA_REQ(queue_lock_);
  // The platform's handle of a bounced mapping of ours.
  DmaMapHandle platform_handle(const DmaMapHandle& h) const;
  static unsigned perm_of(DmaDirection dir);
  void count_live(int64_t delta) {
    __atomic_fetch_add(&live_, static_cast<uint64_t>(delta), __ATOMIC_RELAXED);
  }

  IommuUnit* unit_ = nullptr;
  KernelDmaOp* platform_ = nullptr;
  uint32_t domain_id_ = 0;
  bool deferred_ = false;
  bool platform_coherent_ = false;
  bool cache_maintenance_ = true;
  uint64_t window_base_ = 0;
  uint64_t window_end_ = 0;
  IovaRange reserved_[16] = {};
  size_t num_reserved_ = 0;
  IoPageTable pt_;
  IovaAllocator iova_;
  uint64_t live_ = 0;  // Atomic.
  mutable support::SpinLock queue_lock_;
  Pending queue_[kFlushQueueSize] TA_GUARDED(queue_lock_) = {};
  size_t queued_ TA_GUARDED(queue_lock_) = 0;
};
