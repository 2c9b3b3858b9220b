// KernelDmaOp: the architecture-independent DmaOp. Every platform's DmaOp derives from it and
// supplies only the cache-maintenance methods (flush, invalidate, flush_invalidate).
//
// The map decision, in one place (map_checked, in this order):
//   1. check the request (check_request: size, alignment, wrap-around, mask, and that a device
//      that does not snoop is not asked of a platform without cache maintenance);
//   2. translate the buffer to a physical address (locate: through the direct map, or every page
//      of it when it lies outside the direct map, which must then be physically contiguous);
//   3. bounce if forced, if any byte lies outside the device's window (DMA address = physical +
//      bus_offset mod 2^64, within [0, dma_mask]), if the address breaks `align`, or if a device
//      that does not snoop would write a buffer that shares a cache line with other data (the
//      unmap's invalidate would have to write the CPU's copy of that line back over the
//      device's bytes): take a slot from the highest pool lying wholly inside the window
//      (kDmaMaskNotMatch if none does, kLayoutError over the pool's max_mapping_size; when it is
//      full, the next lower pool the device reaches is tried, then a grown pool or a new one
//      (growth, below), kNoMemory if none of that gives a slot)
//      and copy the buffer in, for every direction (a device that writes less than the whole
//      slot must leave the buffer's own bytes there, never a previous mapping's). With DMA
//      windows (DmaConstraints::windows), "the device's window" is any of them;
//   4. clean the caches over what the device will read or write, unless the device snoops.
// map_single is the same decision for the common case, inline: a device that snoops, no forced
// bounce, no alignment, a buffer inside the direct map; anything else goes to map_checked as it
// came, so map_single has no error of its own to report. Its bounce (map_out_of_reach) has a
// common case too: a device without bus offset, min_align_mask or quota takes the highest pool
// whose last byte lies under its mask and a slot from this CPU's cache of that pool (map_cached:
// BouncePool::alloc_cached, the handle built in the result before the CPU is asked, so that only
// the result's address and the op live across the calls); anything else is step 3 in full.
// Unmap reverses it: invalidate (device does not snoop), copy out for kFromDevice /
// kBidirectional, free the slot. Syncs act on the mapping's own direction, which their argument
// may only narrow.
// Coherence: DmaConstraints::coherence, where kPlatformDefault (the default) means
// Config::platform_coherent, on every entry point.
//
// Growth (off unless Config::max_grown_pools is set): when step 3 finds every pool the device
// reaches full, the op takes a block of Config::grow_step bytes (more, a power of two, if one
// request needs more) from the page-frame allocator under the device's mask, sets up one of the
// kernel's spare pool objects (Config::grow_pools) over it, publishes it and bounces into it.
// Later mappings that find the fixed pools full use grown pools before growing again. A grown
// pool is given back to the allocator when it is empty and the fixed pool it grew from has
// recovered (at least min(the grown pool's bytes, half its own) free: the hysteresis, so that a
// workload at the edge of the fixed pool keeps its grown pool instead of growing and shrinking
// on every map): by the unmap that empties it, or, when the fixed pool recovers only later, by
// an unmap from a fixed pool then (so idle growth goes back without a call); and by
// trim_bounce_pools() whenever it is empty. Fixed pools never
// shrink. The protocol between lock-free readers and growth/retirement: kernel_dma_op.cc, "Grown
// pools".
//
// Coherent memory: pages from the page-frame allocator under the mask, zeroed, reached through
// the direct map. For a device that snoops the caches that is all. For one that does not, the
// pages are cleaned and invalidated and their direct-map mapping becomes non-cacheable
// (set_memory_attribute, the architecture's hook), so neither side ever needs cache maintenance;
// DmaHandle::remapped records it and dealloc_coherent makes them cacheable again before they go
// back to the allocator.
//
// Calling contexts (dmakit/dma_op.h): the constructor and destructor are thread only (boot and
// teardown); the DmaOp methods have DmaOp's contexts (growth and shrink too: they take only
// interrupt-masking spinlocks and the page-frame allocator, whose lock masks interrupts; a growth
// costs the allocator calls plus O(grow_step / slot size) to set the pool up, once per step)
// (alloc_coherent and dealloc_coherent thread only for a device that is not coherent);
// set_memory_attribute is thread only; virt_to_phys, phys_to_virt, config, with_line_size and stats
// are any context.
#pragma once

#include "dmakit/bounce_pool.h"
#include "dmakit/dma_op.h"
#include "dmakit/page_frame_allocator.h"

// Counters in KernelDmaOp::stats() and BouncePool's bytes_bounced: on in debug builds, or when
// DMA_STATS=1 is given; a release build leaves them out of the streaming path (they cost locked
// instructions). The pools' slot counts and high-water marks are always kept.
#ifndef DMA_STATS
#if defined(DMA_DEBUG) && DMA_DEBUG
#define DMA_STATS 1
#else
#define DMA_STATS 0
#endif
#endif

// The physical window [lo, lo + span) of map_single's inline fast path.
struct DirectWindow {
  uint64_t lo = 0;
  uint64_t span = 0;
};

// The fast path's window for a direct map of [lo, hi) at `direct_map_offset`: that range without
// physical page 0 and without the page at CPU address 0, so that a null pointer always fails the
// fast path's range test and physical address 0 is left to the general path. An identity map of
// RAM that starts at 0 has the null page at the window's start (the window then starts after
// it); a direct map placed below the physical addresses it maps may have it anywhere (the window
// then ends before it). Exposed for tests.
DirectWindow fast_direct_window(uint64_t lo, uint64_t hi, uintptr_t direct_map_offset);

class KernelDmaOp : public DmaOp {
 public:
  static constexpr size_t kMaxPools = 4;
  // Most grown pools at once (Config::max_grown_pools).
  static constexpr size_t kMaxGrownPools = 4;

  struct Config {
    PageFrameAllocator* pfa = nullptr;  // Backs alloc_coherent. Required.
    // Bounce pools, any order; a mapping uses the highest-placed pool that lies under its mask.
    BouncePool* pools[kMaxPools] = {};
    size_t num_pools = 0;
    // CPU virtual address of physical address p is p + direct_map_offset (0 for an identity
    // map, or any other value, even one that wraps), for all RAM.
    uintptr_t direct_map_offset = 0;
    // The physical RAM the direct map covers (caller-owned, must outlive this object). The
    // default virt_to_phys translates through the direct map every address of these ranges as
    // well as the allocator's ranges and the bounce pools; none given: only the latter.
    const PhysRange* ram = nullptr;
    size_t num_ram = 0;
    // How to translate CPU addresses outside the direct map (a kernel image linked elsewhere,
    // vmalloc-like memory, buffers in .bss of a kernel whose image is not in the direct map):
    // stores the physical address of `va` in *phys and returns true, or returns false for an
    // address with no translation. Called once per page of a buffer (map_single checks that the
    // pages are contiguous), from any context the DMA calls are made in, so it must not sleep.
    // Null: such addresses are kInvalidArgument. A C function pointer, so C kernels can give it.
    bool (*translate)(void* ctx, const void* va, uint64_t* phys) = nullptr;
    void* translate_ctx = nullptr;
    // Whether devices snoop CPU caches unless told otherwise: what DmaCoherence::kPlatformDefault
    // means, and default_constraints().coherence.
    bool platform_coherent = false;
    // Whether flush / invalidate / flush_invalidate really maintain the caches. A platform
    // without cache-maintenance instructions (RISC-V without Zicbom or a vendor extension) sets
    // false: non-coherent devices then get kNotSupported from map_single and alloc_coherent
    // instead of mappings whose maintenance silently does nothing.
    bool cache_maintenance = true;
    // cache_alignment(): the largest cache line the maintenance acts on (a power of two; the
    // architecture's DmaOp sets it from the hardware).
    size_t cache_line_size = 64;
    // Growth of the bounce pools on demand (see above); all zero (the default): no growth.
    // max_grown_pools (at most kMaxGrownPools) spare pool objects, default-constructed and not
    // initialised, owned by the caller, outliving this object and used by nothing else: the op
    // sets them up over grown memory and retires them again (a BouncePool is 7.5 KiB, too large
    // to hold several inside every op; static storage is the usual place). grow_limit: the most
    // bytes of bounce memory grown at once (the pools' slot records come on top: 20 bytes per
    // slot, in whole pages from the allocator, anywhere). grow_step: the bytes of one growth, a
    // power-of-two number of pages, at most grow_limit and 2^PageFrameAllocator::kMaxOrder pages;
    // a request that needs more (with its alignment slack) grows by the next power of two that
    // holds it, still within grow_limit. A grown pool has the slot size, the CPU-cache set-up
    // and at most the max_mapping_size of the fixed pool the device bounced into.
    BouncePool* grow_pools[kMaxGrownPools] = {};
    size_t max_grown_pools = 0;
    uint64_t grow_limit = 0;
    uint64_t grow_step = 0;
  };

  // Static storage, the way a kernel without C++ start-up code holds it: the default constructor
  // is constexpr, so `constinit AArch64DmaOp g_op;` (any final subclass with a constexpr default
  // constructor) needs no run-time constructor, and the object is trivially destructible, so no
  // destructor is registered either. It does nothing until init() succeeds; calling any other
  // method before that is a precondition violation.
  constexpr KernelDmaOp() = default;
  // Sets the object up. Preconditions: cfg.pfa initialised; the pools initialised. Ownership: the
  // allocator, the pools and cfg.ram stay owned by the caller and must outlive this object. Call
  // once, on one CPU, before any other method; may be called with interrupts off.
  // Errors: kInvalidArgument (cfg.pfa null, more than kMaxPools pools or a null one among the
  // first num_pools, num_ram without ram, cache_line_size not a power of two or larger than a
  // page, called twice; growth limits that do not fit together: grow_step not a power-of-two
  // number of pages or above 2^kMaxOrder pages or above grow_limit, more than kMaxGrownPools
  // grown pools, a null or already initialised one among the first max_grown_pools, some but not
  // all of max_grown_pools / grow_limit / grow_step zero); the object is unchanged then.
  Result<void> init(const Config& cfg);
  // Whether these growth limits fit together (init's test of them, without the pool objects'):
  // all zero, or max_grown_pools in [1, kMaxGrownPools] and grow_step a power-of-two number of
  // pages, at most 2^kMaxOrder pages and at most grow_limit. Any context.
  static bool growth_limits_ok(size_t max_grown_pools, uint64_t grow_limit, uint64_t grow_step);
  // The same in one step, for an object that is not a static: panics where init() returns an
  // error.
  explicit KernelDmaOp(const Config& cfg);
  KernelDmaOp(const KernelDmaOp&) = delete;
  KernelDmaOp& operator=(const KernelDmaOp&) = delete;

  // Ends the object's use before its storage is reused (a static never needs this): with the
  // misuse checker (DMA_API_DEBUG), reports every mapping and coherent allocation of this object
  // that is still live and forgets them, so that another object built at the same address does
  // not inherit them, and gives every empty grown pool back (trim_bounce_pools). Nothing else
  // changes. Thread context, no DMA call of this object in flight.
  void shutdown();

  // Gives every grown pool that holds no mapping back to the page-frame allocator now, whatever
  // the hysteresis says (a kernel's memory-pressure path): each pool's CPU caches and shared
  // cache are taken back first, then the pool is retired (it refuses allocations under its own
  // lock) and its block and slot records are freed. Pools with live mappings stay. Returns the
  // bytes of bounce memory given back (slot records not counted). Any context; O(grown pools x
  // CPUs) lock pairs plus the allocator's frees.
  // Errors: kInvalidArgument (not initialised).
  Result<size_t> trim_bounce_pools();

  size_t page_size() const override { return PageFrameAllocator::kPageSize; }
  using DmaOp::alloc_coherent;
  using DmaOp::map_single;
  Result<DmaMapHandle> map_single(const DmaConstraints& c, void* addr, size_t size, size_t align,
                                  DmaDirection dir) override;
  void unmap_single(const DmaMapHandle& handle) override;
  Result<DmaHandle> alloc_coherent(const DmaConstraints& c, Layout layout) override;
  void dealloc_coherent(const DmaHandle& handle) override;
  Result<void> prepare_read(const DmaMapHandle& handle, size_t offset, size_t size,
                            DmaDirection dir) override;
  Result<void> confirm_write(const DmaMapHandle& handle, size_t offset, size_t size,
                             DmaDirection dir) override;
  // The platform's coherence made explicit (kCoherent or kNonCoherent, from
  // Config::platform_coherent), the other fields at their defaults.
  DmaConstraints default_constraints() const override;
  size_t cache_alignment() const override { return line_; }
  size_t max_mapping_size(const DmaConstraints& c) const override;
  // True for a device that does not snoop, or an address (device address - bus_offset) inside a
  // bounce pool.
  bool need_sync(const DmaConstraints& c, DmaAddr addr) const override;
  // Streaming: the device reaches all RAM (the allocator's, the pools, Config::ram), or some
  // bounce pool lies wholly under its mask. Coherent: at least one page of the allocator's range
  // lies in the device's window (holes in the range are not looked at: a later allocation may
  // still fail with kDmaMaskNotMatch or kNoMemory).
  Result<void> check_mask(const DmaConstraints& c, DmaMaskKind kind) const override;
  // From the highest byte of RAM (the allocator's, the pools, Config::ram) plus c.bus_offset.
  uint64_t required_mask(const DmaConstraints& c) const override;
  // alloc_coherent's pages, left cacheable; for a device that does not snoop they are cleaned and
  // invalidated once after zeroing. Any context (no remap). dealloc_noncoherent is
  // dealloc_coherent (no remap to undo: any context).
  Result<DmaHandle> alloc_noncoherent(const DmaConstraints& c, Layout layout) override;
  Result<DmaMapHandle> map_single_attrs(const DmaConstraints& c, void* addr, size_t size,
                                        size_t align, DmaDirection dir, DmaAttrs attrs) override;
  // Write-combining through set_memory_attribute(kWriteCombine): the architecture's DmaOp says
  // whether it has the encoding (kNotSupported otherwise, nothing allocated).
  Result<DmaHandle> alloc_attrs(const DmaConstraints& c, Layout layout, DmaAttrs attrs) override;
  // RAM: the allocator's range, the bounce pools and Config::ram, all in the direct map.
  Result<DmaMapHandle> map_page(const DmaConstraints& c, PhysAddr page, size_t offset, size_t size,
                                DmaDirection dir) override;
  Result<DmaAddr> map_resource(const DmaConstraints& c, PhysAddr phys, size_t size,
                               DmaDirection dir) override;
  void dealloc_noncoherent(const DmaHandle& handle) override;

  // The CPU's memory attribute for pages of the direct map (set_memory_attribute).
  enum class MemAttr : uint8_t {
    kCached,    // Write-back cacheable: the direct map's normal attribute.
    kUncached,  // Normal memory the CPU does not cache: its loads and stores go to memory.
    // Not cached, stores may be buffered and merged (AArch64 Normal-NC and RISC-V Svpbmt NC, the
    // same encoding as kUncached there; x86-64 would need a PAT WC index: not supported).
    kWriteCombine,
  };

  // The hook alloc_coherent / dealloc_coherent use for a non-coherent device: gives the pages
  // [va, va + bytes) of the direct map the attribute `attr`, with the TLB maintenance the
  // architecture needs. Cache maintenance is the caller's (alloc_coherent cleans and invalidates
  // the pages before and after making them uncached). Each architecture's DmaOp overrides it
  // (AArch64 Normal Non-cacheable, RISC-V Svpbmt NC, x86-64 PAT UC-); the default cannot.
  // Preconditions: va and bytes page aligned, va a direct-map address of RAM; the caller owns
  // the pages and does not touch them during the call.
  // Errors: kNotSupported (this platform cannot map memory uncached: the default), kNoMemory (no
  // page-table memory for the change), kInvalidArgument / kLayoutError (not mapped RAM, or
  // misaligned); on every error nothing changed. Restoring kCached over pages this object made
  // kUncached never fails. Thread only: it rewrites the direct map's page tables and invalidates
  // their TLB entries, on every CPU when the kernel gives tlb_flush_kernel_range.
  virtual Result<void> set_memory_attribute(void* va, size_t bytes, MemAttr attr);

  // Physical address of a CPU virtual address: through the direct map for the allocator's
  // memory, the bounce pools and Config::ram; else through Config::translate when given. A
  // kernel may still override it, but needs not: Config says all of it. Any context.
  // Errors: kInvalidArgument (not a translatable address).
  virtual Result<PhysAddr> virt_to_phys(const void* va) const;
  void* phys_to_virt(PhysAddr pa) const {
    return reinterpret_cast<void*>(static_cast<uintptr_t>(pa.value()) + dm_offset_);
  }

  const Config& config() const { return cfg_; }

  // `cfg` with cache_line_size set to `line` (for the architectures' constructors, which know
  // their line size from the hardware).
  static Config with_line_size(const Config& cfg, size_t line) {
    Config c = cfg;
    c.cache_line_size = line;
    return c;
  }

  // Counters for reports and tests (relaxed atomics; never used for decisions).
  struct Stats {
    uint64_t maps = 0;
    uint64_t direct_maps = 0;
    uint64_t bounced_maps = 0;
    uint64_t bytes_mapped = 0;  // The sizes of successful maps.
    // Bytes copied between buffers and bounce slots, both ways: the copy in at map (every
    // direction), the copy out at unmap (kFromDevice, kBidirectional) and the syncs' copies. A
    // kFromDevice map+unmap of n bytes counts 2n; so does a kToDevice one synced once for the
    // device (n at map, n at the sync).
    uint64_t bytes_bounced = 0;
    uint64_t map_errors = 0;
    uint64_t coherent_allocs = 0;
    uint64_t coherent_live = 0;
    uint64_t live_maps = 0;
    uint64_t coherent_uncached = 0;       // Coherent allocations remapped uncached, ever.
    uint64_t coherent_uncached_live = 0;  // ... and still live.
    // Bounced maps that found the chosen pool full and took a slot in another pool under the
    // device's mask (a fixed or a grown one).
    uint64_t pool_fallbacks = 0;
    // Growth (kept in every build, not only with DMA_STATS): pools grown and given back so far,
    // bytes of bounce memory grown now (slot records not counted), and the most ever at once.
    uint64_t grow_events = 0;
    uint64_t shrink_events = 0;
    uint64_t grown_bytes = 0;
    uint64_t grown_bytes_high_water = 0;
  };
  Stats stats() const;

 private:
  // Index of the pool to bounce into for this device (the highest placed pool it reaches
  // wholly), or -1.
  int pick_pool(const DmaConstraints& c) const;
  // One interval [lo, hi] of physical addresses the device reaches, for the page-frame
  // allocator (which takes an upper limit; alloc_coherent checks the floor): DMA address =
  // physical + bus_offset (mod 2^64) within [0, dma_mask]. A negative bus offset gives a window
  // that starts above 0.
  struct PhysWindow {
    uint64_t lo = 0;
    uint64_t hi = 0;
  };
  PhysWindow alloc_window(const DmaConstraints& c) const;
  // Every interval the device reaches: alloc_window's one, or, for a device with DMA windows,
  // each window's part under the mask (out has room for kMaxDmaWindows). Returns how many.
  size_t alloc_windows(const DmaConstraints& c, PhysWindow* out) const;
  // Whether the device reaches every byte of [lo, hi), through one window or several.
  bool covers(const DmaConstraints& c, uint64_t lo, uint64_t hi) const;
  // A block of 2^order pages inside w. Errors: kDmaMaskNotMatch, kNoMemory.
  Result<PhysAddr> alloc_in(const DmaConstraints& c, PhysWindow w, unsigned order, uint64_t align);
  // Whether [p, p + size) overlaps / lies inside RAM this object maps (allocator range, pools,
  // Config::ram). Precondition: size >= 1, no wrap.
  bool overlaps_ram(uint64_t p, uint64_t size) const;
  bool inside_ram(uint64_t p, uint64_t size) const;
  // [lo, hi) spanning all RAM a buffer may live in (the allocator's, the pools, Config::ram).
  PhysWindow ram_span() const;
  // alloc_coherent and alloc_noncoherent: the pages, zeroed; remapped uncached when `uncached`.
  Result<DmaHandle> alloc_pages(const DmaConstraints& c, Layout layout, MemAttr remap_to,
                                bool remap);
  // Physical address of the contiguous buffer [addr, addr + size) outside the direct map: every
  // page translated. Errors: virt_to_phys's, kNotContiguous.
  Result<uint64_t> translate_buffer(const void* addr, size_t size) const;
  // map_checked's body; `skip`: kDmaAttrSkipCpuSync.
  Result<DmaMapHandle> map_decide(const DmaConstraints& c, void* addr, size_t size, size_t align,
                                  DmaDirection dir, bool skip);
  // The map decision's predicates (kernel_dma_op.cc): whether the device snoops (its coherence,
  // or the platform's for kPlatformDefault); whether [p, p + size) lies in the fast path's window
  // (which also rules out size 0, a null addr and a wrapping range) or in the direct map.
  bool coherent(const DmaConstraints& c) const;
  bool in_fast_window(uint64_t p, size_t size) const;
  bool in_direct_map(uint64_t p, size_t size) const;
  // The request's first error, in the order reported, or kOk: kLayoutError (size 0, null addr,
  // align not 0, 1 or a power of two, range wraps), kInvalidArgument (mask 0), kNotSupported (a
  // device that does not snoop on a platform without cache maintenance).
  ErrorCode check_request(const DmaConstraints& c, const void* addr, size_t size, size_t align,
                          bool coherent) const;
  // Physical address of the buffer: through the direct map, else translate_buffer's.
  Result<uint64_t> locate(const void* addr, size_t size) const;
  // The whole map decision, for every request map_single's inline case does not take. Out of
  // line and of map_single's signature, so that map_single tail-calls it and needs no stack frame.
  [[gnu::noinline]] Result<DmaMapHandle> map_checked(const DmaConstraints& c, void* addr,
                                                     size_t size, size_t align, DmaDirection dir);
  // map_single's bounce, for the request it has checked and located: a device that snoops, not
  // forced to bounce, align <= 1, a buffer in the fast window (physical = addr - direct-map
  // offset) out of the device's reach. map_single's signature, for the tail call.
  [[gnu::noinline]] Result<DmaMapHandle> map_out_of_reach(const DmaConstraints& c, void* addr,
                                                          size_t size, size_t align,
                                                          DmaDirection dir);
  // map_out_of_reach's bounce through this CPU's cache of pool `pi` (pools_ index; its CPU caches
  // on), for a device also without bus offset, min_align_mask or quota, `pi` the highest pool
  // under its mask. Goes on in bounce_missed when the cache has no block of the size.
  // map_single's signature (`pi` in place of the alignment), for the tail call.
  [[gnu::noinline]] Result<DmaMapHandle> map_cached(const DmaConstraints& c, void* addr,
                                                    size_t size, size_t pi, DmaDirection dir);
  // Counts a failed map and returns its error.
  Result<DmaMapHandle> map_failed(Error e);
  // The work of the two outcomes, once the decision is made: the buffer used where it is
  // (physical p), or bounced. `for_lines`: bounced only because it shares cache lines (a missing
  // pool is then kLayoutError, not kDmaMaskNotMatch).
  // `skip`: kDmaAttrSkipCpuSync (no cache maintenance; recorded in the handle).
  Result<DmaMapHandle> map_direct(const DmaConstraints& c, void* addr, uint64_t p, size_t size,
                                  DmaDirection dir, bool coherent, bool skip = false);
  Result<DmaMapHandle> bounce(const DmaConstraints& c, void* addr, uint64_t p, size_t size,
                              size_t align, DmaDirection dir, bool coherent, bool for_lines,
                              bool skip = false);
  // bounce's way on when the pool `full` it chose said kNoMemory: a slot from alloc_fallback, or
  // kNoMemory. `caller`: the driver's call site, for the misuse checker.
  [[gnu::noinline]] Result<DmaMapHandle> bounce_elsewhere(const DmaConstraints& c, void* addr,
                                                          uint64_t p, size_t size, uint64_t keep,
                                                          uint64_t align_mask, DmaDirection dir,
                                                          bool coherent, bool skip, int full,
                                                          const void* caller);
  // map_out_of_reach's request that map_cached does not cover (a bus offset, min_align_mask, a
  // quota, no pool wholly under the mask): bounce() of it. map_single's signature, for
  // the tail call.
  [[gnu::noinline]] Result<DmaMapHandle> bounce_unreachable(const DmaConstraints& c, void* addr,
                                                            size_t size, size_t align,
                                                            DmaDirection dir);
  // map_out_of_reach's bounce where this CPU's cache of the pool did not answer (or the pool's
  // CPU caches are off): the rest of the pool's alloc(), then as bounce(). map_single's signature,
  // for the tail calls; `route` says which pool and why (miss_route).
  [[gnu::noinline]] Result<DmaMapHandle> bounce_missed(const DmaConstraints& c, void* addr,
                                                       size_t size, size_t route, DmaDirection dir);
  // map_cached's way out when the pool refused the request (`route`: the pool's index in bits
  // 0-7, the ErrorCode from bit 8 on): map_failed, or for kNoMemory the other pools
  // (bounce_elsewhere). map_single's signature, for the tail call.
  [[gnu::noinline]] Result<DmaMapHandle> bounce_refused(const DmaConstraints& c, void* addr,
                                                        size_t size, size_t route,
                                                        DmaDirection dir);
  // bounce_missed's `route`: the pool's index in pools_ (bits 0-7) and alloc_cached's answer
  // (BouncePool::Cached::first: the CPU whose cache missed, kMaxCpus for none looked at, or
  // kCachedFault; bits 8-39).
  static constexpr size_t miss_route(unsigned pi, uint32_t missed) {
    return size_t{pi} | (size_t{missed} << 8);
  }
  // The bounce's work once slot `first_slot` (num_slots of them) of pool `pi` is taken: `slot`
  // and `slot_cpu` its data's physical and CPU address, `off` its device-address offset.
  Result<DmaMapHandle> bounced(const DmaConstraints& c, void* addr, size_t size, DmaDirection dir,
                               bool coherent, bool skip, int pi, PhysAddr slot, void* slot_cpu,
                               uint32_t first_slot, uint32_t num_slots, uint64_t off,
                               const void* caller);
  // A slot for [p, p + size) in another pool than `skip` that the device reaches, when the chosen
  // one is full: the pool's index (the slot in *out, the pool's device-address offset in *off),
  // or -1 when none has room.
  [[gnu::noinline]] int alloc_fallback(const DmaConstraints& c, uint64_t p, size_t size,
                                       uint64_t keep, uint64_t align_mask, int skip,
                                       BounceSlot* out, uint64_t* off);
  // unmap_single of a bounced mapping: copy out if the direction asks for it, free the slot.
  [[gnu::noinline]] void unmap_bounced(const DmaMapHandle& h);
  // unmap_bounced of a slot in a fixed pool without CPU caches: copy out if the direction asks
  // for it, then unmap_declined.
  [[gnu::noinline]] void unmap_uncached(const DmaMapHandle& h);
  // unmap_bounced's free of the slot in its fixed pool when no CPU cache took it: under the pool's
  // lock, which also finds a handle that is not a live mapping (a panic then).
  [[gnu::noinline]] void unmap_declined(const DmaMapHandle& h);
  // ---- Grown pools (kernel_dma_op.cc, "Grown pools") ----
  // One spare pool object's state. The pool object itself is Config::grow_pools[g] (pools_[
  // kMaxPools + g], the index handles carry); this is the op's record of it.
  enum GrownState : uint32_t { kGrownFree = 0, kGrownSetup, kGrownLive, kGrownRetiring };
  struct GrownPool {
    uint32_t state = kGrownFree;  // GrownState; atomics.
    uint32_t users = 0;           // Mapping paths looking at the pool now; atomics.
    uint64_t live = 0;            // Mappings in the pool now; atomics.
    // Written while kGrownSetup (nobody reads them then), read after seeing kGrownLive (acquire).
    uint64_t first = 0;  // First and last byte of the pool's memory.
    uint64_t last = 0;
    uint64_t meta = 0;       // Physical address of the slot records' block.
    uint8_t order = 0;       // The pool's block: 2^order pages at `first`.
    uint8_t meta_order = 0;  // The records' block.
    uint8_t parent = 0;      // Index of the fixed pool the device had bounced into.
    // While its idle_grown_ bit is set: the free slots its fixed pool (idle_parent) must have
    // before it goes back. Stored under grow_lock_ before the bit is set, read without the lock
    // by sweep_idle_grown's test (atomics).
    uint64_t idle_need = 0;
    uint32_t idle_parent = 0;
  };
  // A slot in a grown pool for the request alloc_fallback could not place (same arguments;
  // `parent`: the fixed pool pick_pool chose): an existing grown pool, else a new one. Returns
  // the pool's index in pools_ (kMaxPools + g), or -1: nothing held then.
  [[gnu::noinline]] int alloc_grown(const DmaConstraints& c, uint64_t p, size_t size, uint64_t keep,
                                    uint64_t align_mask, int parent, BounceSlot* out,
                                    uint64_t* off);
  // A slot in `pool` (one the device reaches wholly) for alloc_fallback's request; the pool's
  // device-address offset in *off. False: no room, or the pool's offset contradicts the request.
  bool take_slot(BouncePool* pool, const DmaConstraints& c, uint64_t p, size_t size, uint64_t keep,
                 uint64_t align_mask, BounceSlot* out, uint64_t* off);
  // grow's way out: gives back what it took by `taken` (0 nothing, 1 the block, 2 also the
  // records, 3 also an initialised pool, which is retired), frees entry g, returns -1. Called
  // with grow_lock_ held.
  int undo_growth(size_t g, PhysAddr block, unsigned order, PhysAddr meta, unsigned meta_order,
                  unsigned taken) TA_REQ(grow_lock_);
  // The slot from grown pool g if it is live and the device reaches it wholly, else -1.
  int try_grown(size_t g, const DmaConstraints& c, uint64_t p, size_t size, uint64_t keep,
                uint64_t align_mask, BounceSlot* out, uint64_t* off);
  // A new grown pool for the request, or -1. Called with grow_lock_ held.
  int grow(const DmaConstraints& c, uint64_t p, size_t size, uint64_t keep, uint64_t align_mask,
           int parent, BounceSlot* out, uint64_t* off) TA_REQ(grow_lock_);
  // unmap_bounced of a slot in a grown pool (index >= num_pools_): the same, then the shrink test.
  [[gnu::noinline]] void unmap_grown(const DmaMapHandle& h);
  // Retires grown pool g and frees its memory if it is live and empty; true if it did.
  bool retire_grown(size_t g) TA_REQ(grow_lock_);
  // The free slots grown pool g's fixed pool must have before g, empty, may go back: min(g's
  // bytes, half the fixed pool's) in the fixed pool's slots (the hysteresis).
  uint64_t slots_needed(size_t g) const TA_REQ(grow_lock_);
  // Free slots of fixed pool i now, from its lock-free use estimate.
  uint64_t free_slots_estimate(size_t i) const;
  // An unmap from a fixed pool found idle_grown_ set: if an idle grown pool could go back (a
  // lock-free test of its fixed pool's use: the common case while that pool stays busy costs no
  // lock), gives back each idle grown pool whose fixed pool has recovered and forgets those in
  // use again. Skipped when another CPU holds grow_lock_ (it is growing, retiring or sweeping).
  [[gnu::noinline]] void sweep_idle_grown();
  // Statistics of a successful map (nothing without DMA_STATS).
  void count_map(size_t bytes, bool bounced);
  void note_bounced(BouncePool* pool, size_t bytes);
  void copy_to_bounce(const DmaMapHandle& h, size_t offset, size_t size);
  void copy_from_bounce(const DmaMapHandle& h, size_t offset, size_t size);
  // Unmap's copy back of a bounced mapping: for kFromDevice / kBidirectional unless skip_cpu_sync,
  // after an invalidate of the slot for a device that does not snoop.
  void copy_out_at_unmap(const DmaMapHandle& h);

  // What the streaming paths read, first and together (with the vtable pointer, the fast direct
  // path reads one cache line of this object; a bounced map or unmap, two):
  // CPU virtual = physical + dm_offset_ (cfg_.direct_map_offset).
  uintptr_t dm_offset_ = 0;
  // The part of the direct map map_single's inline fast path accepts: [fast_lo_, fast_lo_ +
  // fast_span_).
  uint64_t fast_lo_ = 0;
  uint64_t fast_span_ = 0;
  // The first and last byte of each pool, from the highest-placed pool down, and its index in
  // pools_.
  // pool_last_ has a 0 after the last pool, where map_out_of_reach's search for the first pool
  // under a mask stops (a mask is at least 1 there).
  uint64_t pool_last_[kMaxPools + 1] = {};
  uint64_t pool_first_[kMaxPools] = {};
  // cfg_.pools, then (from kMaxPools on) cfg_.grow_pools: a handle's bounce_pool_index.
  BouncePool* pools_[kMaxPools + kMaxGrownPools] = {};
  size_t num_pools_ = 0;  // cfg_.num_pools.
  // Grown pools that an unmap left empty while their fixed pool had not recovered (bit g: grown
  // pool g; atomics): while any is set, unmaps from fixed pools look whether it can go back now
  // (sweep_idle_grown), so that idle growth is given back without trim_bounce_pools. Next to
  // num_pools_, which the same unmaps read.
  uint32_t idle_grown_ = 0;
  uint8_t pool_order_[kMaxPools] = {};
  Config cfg_;
  size_t line_ = 64;  // cfg_.cache_line_size.
  // Physical window the default virt_to_phys accepts: all managed RAM and every bounce pool.
  uint64_t dm_lo_ = 0;
  uint64_t dm_hi_ = 0;
  mutable Stats stats_;
  bool initialized_ = false;
  size_t max_grown_ = 0;  // cfg_.max_grown_pools.
  // Serialises growth and retirement (never taken on a path that finds room in a pool).
  support::SpinLock grow_lock_;
  uint64_t grown_bytes_ TA_GUARDED(grow_lock_) = 0;
  GrownPool grown_[kMaxGrownPools];

 protected:
  // Not virtual (see DmaOp): a platform's DmaOp is trivially destructible.
  ~KernelDmaOp() = default;
};
