// DmaOp: the DMA operations of the Rust `dma-api` crate, as a C++ virtual base.
//
// One object per platform implements it. `KernelDmaOp` (include/dmakit/kernel_dma_op.h) is the
// generic implementation (direct mapping, mask checks, bounce buffers, coherent allocation); each
// architecture derives from it and supplies only the cache-maintenance instructions.
//
// Threading: every method may be called concurrently from several CPUs, and none sleeps.
//
// Calling contexts: the rule for the whole library (every public header refers to it). A
// function's comment names the contexts it may be called from:
//   thread          normal kernel code, interrupts enabled, preemptible where the kernel preempts;
//   interrupts off  interrupts masked on the calling CPU (under a kernel spinlock, say), but not
//                   inside an interrupt handler;
//   interrupt       inside an interrupt handler, which may have interrupted a library call on
//                   the same CPU (a completion handler that unmaps).
// "Any context" is all three, provided the kernel installed the irq_save/irq_restore hooks
// (dmakit/kernel_hooks.h): every library lock (support::SpinLock) masks interrupts through them
// while held, so a handler never finds its own CPU inside a critical section. Without the hooks,
// "any context" means thread or interrupts off only, and from a handler only if that handler can
// never interrupt another library call on its CPU (else it may spin for ever on a lock its CPU
// holds). "Thread only" marks what edits the kernel's page tables and invalidates TLB entries on
// every CPU (tlb_flush_kernel_range may need interrupts to reach the other CPUs): alloc_coherent
// and dealloc_coherent for a device that is not coherent, and what may call them (DmaPool's
// growth). A DMA_API_DEBUG build refuses and reports a thread-only call made from an interrupt
// handler, or with interrupts disabled, when the kernel gives the in_interrupt and irqs_disabled
// hooks (dmakit/dma_debug.h, kWrongContext); a release build does not check.
//
// Contexts of the methods below: alloc_coherent and dealloc_coherent are thread only for a device
// that is not coherent and any context for a coherent one (they zero the memory: keep large
// allocations out of interrupt handlers for latency's sake); every other method is any context.
// An implementation's callbacks (KernelDmaOp::Config::translate) run in the caller's context.
#pragma once

#include "dmakit/dma_types.h"

// Lifetime: a DmaOp lives as long as the kernel (typically a constinit static, see
// KernelDmaOp) and is never destroyed through a DmaOp*: the destructor is protected and not
// virtual, so that a platform's DmaOp is trivially destructible (no destructor registered at
// start-up, no deleting destructor and thus no operator delete needed from the kernel).
class DmaOp {
 public:
  // The page granule of the mapping layer, in bytes (4096 on every supported platform).
  virtual size_t page_size() const = 0;

  // Maps the CPU buffer [addr, addr + size) for one DMA transfer in `dir`.
  //
  // Preconditions: the buffer is one virtually and physically contiguous piece of normal memory
  // that stays allocated until unmap_single; the CPU does not touch it (except through
  // prepare_read / confirm_write) until then.
  // The DMA address honours `align` (a power of two, 0 or 1 for none) and c.dma_mask: the buffer
  // is used directly when reachable and aligned, otherwise it is bounced through a slot below the
  // mask (copied in now for every direction, so that a device writing less than the whole slot
  // leaves the buffer's own bytes). For a non-coherent device (c.coherence, where
  // kPlatformDefault is the platform's: default_constraints()) the caches are cleaned over the
  // range; a kFromDevice / kBidirectional buffer of a non-coherent device that shares a cache
  // line with other data (not aligned to cache_alignment() at both ends) is bounced whole.
  // Every page of a buffer outside the direct map is translated (virt_to_phys): the buffer must
  // be physically contiguous.
  // Ownership: the caller owns the returned handle and must pass it to unmap_single exactly once.
  // Errors: kLayoutError (size 0, null addr, align not a power of two, range wraps, larger than
  // max_mapping_size() when it must bounce, shares cache lines and no bounce pool is reachable),
  // kInvalidArgument (mask 0, addr not translatable), kNotContiguous (the buffer's pages are not
  // physically contiguous; Error::addr says where), kDmaMaskNotMatch (not reachable and no bounce
  // pool lies under the mask; addr is the device address beyond the mask, mask the mask),
  // kNoMemory (every bounce pool the device reaches exhausted right now, and, on an op that grows
  // its pools (KernelDmaOp::Config::grow_pools), no growth possible: its limit reached, or no
  // free memory under the mask), kNotSupported (a non-coherent device on a
  // platform without cache maintenance). On error nothing is mapped and no counter but the
  // failure statistics changes.
  virtual Result<DmaMapHandle> map_single(const DmaConstraints& c, void* addr, size_t size,
                                          size_t align, DmaDirection dir) = 0;

  // The crate's signature: a device described by its mask alone, with the platform's default
  // coherence and no bus offset. Same contract as above.
  Result<DmaMapHandle> map_single(uint64_t dma_mask, void* addr, size_t size, size_t align,
                                  DmaDirection dir) {
    DmaConstraints c = default_constraints();
    c.dma_mask = dma_mask;
    return map_single(c, addr, size, align, dir);
  }

  // map_single with attributes (kDmaAttrsMap, dmakit/dma_types.h). kDmaAttrSkipCpuSync: no cache
  // maintenance at map and unmap and no copy out at unmap (the handle records it); the decision
  // (direct or bounced) and the copy into a bounce slot are unchanged. kDmaAttrWeakOrdering:
  // accepted, no effect. Errors: map_single's, and kInvalidArgument for an attribute that is not
  // a mapping's (nothing is mapped then). The default maps as map_single (with the syncs: always
  // correct) after checking the attributes.
  virtual Result<DmaMapHandle> map_single_attrs(const DmaConstraints& c, void* addr, size_t size,
                                                size_t align, DmaDirection dir, DmaAttrs attrs) {
    if ((attrs & ~kDmaAttrsMap) != 0) return ErrorCode::kInvalidArgument;
    return map_single(c, addr, size, align, dir);
  }

  // Maps bytes [offset, offset + size) of the RAM page at physical address `page` for one transfer
  // in `dir`, for a caller that has no kernel virtual address for it (Linux's dma_map_page): the
  // same decision and contract as map_single, through the direct map of the page (a bounce copies
  // through it). unmap_single and the syncs take the handle as usual.
  // Errors: kInvalidArgument (page not page aligned, or not RAM this DmaOp maps), kOutOfRange
  // (offset or offset + size past the page), kLayoutError (size 0), and map_single's; nothing is
  // mapped then. The default knows no direct map: kNotSupported after checking the range.
  virtual Result<DmaMapHandle> map_page(const DmaConstraints& c, PhysAddr page, size_t offset,
                                        size_t size, DmaDirection dir) {
    (void)c;
    (void)dir;
    if ((page.value() & (page_size() - 1)) != 0) return ErrorCode::kInvalidArgument;
    if (offset >= page_size() || size > page_size() - offset) return ErrorCode::kOutOfRange;
    if (size == 0) return ErrorCode::kLayoutError;
    return ErrorCode::kNotSupported;
  }

  // The device address at which this device reaches the MMIO range [phys, phys + size) of another
  // device, for peer-to-peer DMA (Linux's dma_map_resource): physical + bus_offset, never bounced,
  // no cache maintenance (MMIO is not cached). Errors: kLayoutError (size 0, range wraps),
  // kInvalidArgument (the range overlaps RAM: map RAM with map_single / map_page),
  // kDmaMaskNotMatch (beyond the device's mask; nothing to bounce into for MMIO). The default:
  // kNotSupported after the layout check.
  virtual Result<DmaAddr> map_resource(const DmaConstraints& c, PhysAddr phys, size_t size,
                                       DmaDirection dir) {
    (void)c;
    (void)dir;
    if (size == 0 || phys.value() + (size - 1) < phys.value()) return ErrorCode::kLayoutError;
    return ErrorCode::kNotSupported;
  }
  // Ends a map_resource (Linux's dma_unmap_resource): nothing to undo without an IOMMU. An IOMMU
  // DmaOp removes the translation. Precondition: the arguments of a live map_resource.
  virtual void unmap_resource(const DmaConstraints& c, DmaAddr addr, size_t size,
                              DmaDirection dir) {
    (void)c;
    (void)addr;
    (void)size;
    (void)dir;
  }

  // alloc_coherent with attributes (kDmaAttrsAlloc). kDmaAttrWriteCombine: the CPU maps the memory
  // write-combining (for every device, coherent or not); kNotSupported where the platform has no
  // such encoding. kDmaAttrNoKernelMapping: for a device that does not snoop, no uncached remap
  // (the memory is cleaned and invalidated once; the CPU must not touch it). kDmaAttrWeakOrdering:
  // accepted, no effect. Freed by dealloc_coherent. Errors: alloc_coherent's, kInvalidArgument for
  // an attribute that is not an allocation's or for write-combining together with no kernel
  // mapping, kNotSupported as said; nothing stays allocated on error. Context: alloc_coherent's
  // (thread only when the pages are remapped). The default: alloc_coherent, and kNotSupported for
  // write-combining.
  virtual Result<DmaHandle> alloc_attrs(const DmaConstraints& c, Layout layout, DmaAttrs attrs) {
    if ((attrs & ~kDmaAttrsAlloc) != 0) return ErrorCode::kInvalidArgument;
    if ((attrs & kDmaAttrWriteCombine) != 0) {
      if ((attrs & kDmaAttrNoKernelMapping) != 0) return ErrorCode::kInvalidArgument;
      return ErrorCode::kNotSupported;
    }
    return alloc_coherent(c, layout);
  }

  // Ends a mapping: for kFromDevice / kBidirectional the CPU's view is made current (cache
  // invalidate, or copy out of the bounce slot), then the bounce slot is freed.
  // Precondition: `handle` came from map_single on this object and was not unmapped before (the
  // debug build reports a violation and does nothing).
  virtual void unmap_single(const DmaMapHandle& handle) = 0;

  // Allocates zeroed, physically contiguous memory the device can reach under c.dma_mask, aligned
  // to max(layout.align, page size), that neither side needs cache maintenance for: for a device
  // that does not snoop (c.coherence kNonCoherent, or kPlatformDefault on a platform that is not
  // coherent) the CPU maps it non-cacheable until dealloc_coherent.
  // Context: thread only for a device that does not snoop, else any (see Calling contexts).
  // Ownership: the caller owns it until dealloc_coherent.
  // Errors: kLayoutError (size 0, align not a power of two, larger than the largest contiguous
  // block), kDmaMaskNotMatch (no managed memory lies under the mask), kNoMemory (none free now, or
  // no page-table memory to remap it uncached), kNotSupported (non-coherent device on a platform
  // that cannot map memory uncached). On error nothing stays allocated or remapped.
  virtual Result<DmaHandle> alloc_coherent(const DmaConstraints& c, Layout layout) = 0;

  // The crate's signature; same contract.
  Result<DmaHandle> alloc_coherent(uint64_t dma_mask, Layout layout) {
    DmaConstraints c = default_constraints();
    c.dma_mask = dma_mask;
    return alloc_coherent(c, layout);
  }

  // Frees a coherent allocation. Precondition: `handle` came from alloc_coherent on this object
  // and was not freed before (the debug build reports a violation and does nothing). Context: as
  // alloc_coherent's for the same device.
  virtual void dealloc_coherent(const DmaHandle& handle) = 0;

  // Cache maintenance over the CPU range [addr, addr + size), any alignment, size may be 0.
  // flush: write dirty lines back to memory (clean). invalidate: discard the cached copies so the
  // next read sees memory; lines only partly inside the range are cleaned first, so neighbouring
  // data sharing them is not lost. flush_invalidate: both. Each completes (barrier included)
  // before returning.
  virtual void flush(const void* addr, size_t size) = 0;
  virtual void invalidate(const void* addr, size_t size) = 0;
  virtual void flush_invalidate(const void* addr, size_t size) = 0;

  // Before the CPU reads bytes [offset, offset + size) of a live mapping that the device wrote:
  // invalidates them (non-coherent) or copies them out of the bounce slot.
  // Direction: the mapping's own direction governs. `dir` may only narrow a kBidirectional
  // mapping (kToDevice there: nothing to do); a `dir` that contradicts a one-way mapping is
  // reported by the misuse checker and the mapping's direction is used. Nothing to do for a
  // kToDevice mapping. Errors: kOutOfRange when the range is not inside the mapping.
  virtual Result<void> prepare_read(const DmaMapHandle& handle, size_t offset, size_t size,
                                    DmaDirection dir) = 0;

  // After the CPU wrote bytes [offset, offset + size) of a live mapping, before the device reads
  // them (or, for kFromDevice, before handing the buffer back to the device). Bounced: copies
  // them into the slot for kToDevice / kBidirectional and cleans the slot for a non-coherent
  // device; nothing for kFromDevice (the device sees only the slot). Not bounced: cleans them for
  // a non-coherent device in every direction (so that no dirty line the CPU left can later be
  // evicted over what the device writes). Direction as prepare_read's. Errors: kOutOfRange when
  // the range is not inside the mapping.
  virtual Result<void> confirm_write(const DmaMapHandle& handle, size_t offset, size_t size,
                                     DmaDirection dir) = 0;

  // Maps the `n` pieces of a scatter-gather list at once (SgMapping::map calls it). On entry
  // handles[i].cpu_addr and handles[i].size name piece i (the other fields are ignored); on
  // success handles[i] is piece i's mapping, with map_single's contract for each piece. The
  // default maps each piece with map_single; an IOMMU domain places all of them in one
  // contiguous I/O address range instead (IommuDomain), so that pieces that end and start on
  // page boundaries touch. Handles from map_sg are given back together with unmap_sg (an
  // implementation may own their address range as one piece). Any context.
  // Errors: map_single's, for the first piece that fails; on error nothing stays mapped and the
  // handles' contents are unspecified.
  virtual Result<void> map_sg(const DmaConstraints& c, DmaMapHandle* handles, size_t n,
                              size_t align, DmaDirection dir);

  // Ends the `n` mappings of one map_sg call (all of them, as that call returned them). The
  // default unmaps each with unmap_single. Any context.
  virtual void unmap_sg(const DmaMapHandle* handles, size_t n);

  // The constraints used by the mask-only entry points, and what DmaCoherence::kPlatformDefault
  // stands for: the platform's coherence, stated explicitly (kCoherent or kNonCoherent, never
  // kPlatformDefault), no bus offset, a full mask.
  virtual DmaConstraints default_constraints() const = 0;

  // The alignment, in bytes, at which a buffer shares no cache line with other data (Linux's
  // dma_get_cache_alignment): the largest line any cache-maintenance operation of this platform
  // acts on. A kFromDevice or kBidirectional buffer of a non-coherent device that does not start
  // and end on this alignment shares its edge lines with its neighbours; map_single then bounces
  // it whole (a clean or invalidate of a shared line would lose the device's or the neighbour's
  // bytes), so drivers that want the direct path align and size such buffers to this. A power of
  // two. Any context.
  virtual size_t cache_alignment() const = 0;

  // The largest streaming mapping map_single can make for a device with these constraints (Linux's
  // dma_max_mapping_size): a device that may need bouncing is limited by the bounce pool it would
  // use; one that never bounces is not limited (SIZE_MAX). Larger requests fail with
  // kLayoutError. Any context.
  virtual size_t max_mapping_size(const DmaConstraints& c) const = 0;

  // The largest streaming mapping that costs no more per byte than smaller ones (Linux's
  // dma_opt_mapping_size): never above max_mapping_size(c). Drivers that split large transfers
  // split at this size. The default is max_mapping_size(c); an IOMMU DmaOp whose IOVA cache
  // serves only smaller ranges quickly says less. Any context.
  virtual size_t opt_mapping_size(const DmaConstraints& c) const { return max_mapping_size(c); }

  // Whether a streaming mapping of this device at device address `addr` needs the syncs
  // (prepare_read / confirm_write) at all (Linux's dma_need_sync): true for a device that does
  // not snoop the caches and for an address inside a bounce pool, false otherwise, so that a
  // driver recycling buffers of a coherent device that are mapped directly may skip the calls.
  // The default answers true (always safe). Any context.
  virtual bool need_sync(const DmaConstraints& c, DmaAddr addr) const {
    (void)c;
    (void)addr;
    return true;
  }

  // Whether a device with these constraints can be served when `kind` names c.dma_mask as its
  // streaming mask (every buffer is reachable directly, or some bounce pool lies under the mask)
  // or as its coherent mask (some managed memory lies under it): Linux's dma_supported, which
  // dma_set_mask consults. Errors: kInvalidArgument (mask 0), kDmaMaskNotMatch (nothing can serve
  // the mask; Error::addr is the lowest device address the device would have to reach, mask the
  // mask). The default refuses only a mask of 0. Any context.
  virtual Result<void> check_mask(const DmaConstraints& c, DmaMaskKind kind) const {
    (void)kind;
    if (c.dma_mask == 0) return ErrorCode::kInvalidArgument;
    return support::ok();
  }

  // The smallest mask of the form 2^n - 1 that reaches every byte of RAM through this device's
  // bus offset (Linux's dma_get_required_mask): a device whose mask is below it is addressing
  // limited. The default is the full mask. Any context.
  virtual uint64_t required_mask(const DmaConstraints& c) const {
    (void)c;
    return ~0ull;
  }

  // Allocates zeroed, physically contiguous memory the device reaches under c.dma_mask, aligned to
  // max(layout.align, page size), that the CPU keeps mapped cacheable even for a device that does
  // not snoop (Linux's dma_alloc_noncoherent, the crate's ContiguousArray): the CPU and the device
  // own it in turn, through sync_noncoherent (clean before the device reads or writes, invalidate
  // before the CPU reads what the device wrote). The memory comes back zeroed and clean (the
  // zeroes are in memory); the CPU owns it. Ownership: the caller's until dealloc_noncoherent.
  // Errors: alloc_coherent's, except that no remap happens (no kNoMemory for page tables, no
  // kNotSupported for a platform that cannot map memory uncached); kNotSupported for a device
  // that does not snoop on a platform without cache maintenance. Context: any (nothing is
  // remapped). The default gives coherent memory (alloc_coherent, with its contexts), which
  // needs the syncs no more than it is harmed by them.
  virtual Result<DmaHandle> alloc_noncoherent(const DmaConstraints& c, Layout layout) {
    return alloc_coherent(c, layout);
  }
  // Frees an allocation of alloc_noncoherent. Precondition: `handle` came from it on this object
  // and was not freed before. Context: any unless the memory was remapped (handle.remapped, the
  // default's coherent fallback), then dealloc_coherent's.
  virtual void dealloc_noncoherent(const DmaHandle& handle) { dealloc_coherent(handle); }

  // The syncs of an alloc_noncoherent allocation, over bytes [offset, offset + size) of it:
  // kForDevice before the device accesses them (cleans the caches for every direction, so that no
  // dirty line the CPU left is evicted over what the device writes), kForCpu before the CPU reads
  // what the device wrote (invalidates for kFromDevice / kBidirectional; nothing for kToDevice).
  // Nothing for a device that snoops or for memory mapped uncached. Errors: kOutOfRange (range
  // not inside handle.layout.size), kInvalidArgument (empty handle). Any context.
  Result<void> sync_noncoherent(const DmaHandle& h, size_t offset, size_t size, DmaDirection dir,
                                DmaSyncTarget target) {
    if (h.cpu_addr == nullptr) return ErrorCode::kInvalidArgument;
    if (offset > h.layout.size || size > h.layout.size - offset) return ErrorCode::kOutOfRange;
    if (h.coherent_device || h.remapped || size == 0) return support::ok();
    void* p = static_cast<uint8_t*>(h.cpu_addr) + offset;
    if (target == DmaSyncTarget::kForDevice) {
      flush(p, size);
    } else if (dir != DmaDirection::kToDevice) {
      invalidate(p, size);
    }
    return support::ok();
  }

 protected:
  constexpr DmaOp() = default;
  ~DmaOp() = default;
  DmaOp(const DmaOp&) = default;
  DmaOp& operator=(const DmaOp&) = default;
};
