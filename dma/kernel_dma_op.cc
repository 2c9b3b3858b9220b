// The generic DmaOp: see kernel_dma_op.h for the map decision.
//
// Cost: a direct mapping is a handful of comparisons plus the cache maintenance of the range (none
// for a coherent device); a bounced one adds an O(1) bounce-pool allocation, the copy in at map
// (every direction) and, for kFromDevice / kBidirectional, the copy out at unmap. alloc_coherent is
// one page-frame allocation (O(1) in the size of memory) plus zeroing; for a non-coherent device
// add two clean+invalidate passes and the remap (set_memory_attribute: one page-table update and
// TLB invalidation per page, see mm/direct_map_attributes.h), and the same remap back in
// dealloc_coherent.
#include "dmakit/kernel_dma_op.h"

#include "dmakit/dma_debug.h"
#include "dmakit/support/bitops.h"
#include "dmakit/support/compiler.h"
#include "dmakit/support/fault_injection.h"
#include "dmakit/support/mem.h"

namespace {

bool copies_in(DmaDirection d) {
  return d != DmaDirection::kFromDevice;
}
bool copies_out(DmaDirection d) {
  return d != DmaDirection::kToDevice;
}

// Statistics cost a locked instruction each on the streaming path; they are compiled in with
// DMA_STATS (on by default in DMA_DEBUG builds: the test kernels and host tests) and are plain
// no-ops otherwise, so a release build pays nothing for them.
template <typename T>
void add_relaxed(T* counter, T v) {
#if DMA_STATS
  __atomic_fetch_add(counter, v, __ATOMIC_RELAXED);
#else
  (void)counter;
  (void)v;
#endif
}

// The window of `c` that holds [p, p + size) wholly, or null. Precondition: size >= 1.
const DmaWindow* window_of(const DmaConstraints& c, uint64_t p, uint64_t size) {
  for (size_t i = 0; i < c.num_windows; ++i) {
    const DmaWindow& w = c.windows[i];
    uint64_t rel = p - w.cpu_base.value();
    if (p >= w.cpu_base.value() && rel < w.size && size <= w.size - rel) return &w;
  }
  return nullptr;
}

// Device address = physical + offset (mod 2^64): the offset is bus_offset, or, for a device with
// windows, that of the window holding [p, p + size) (false when none does). Taken modulo 2^64, a
// negative offset works (RAM at 0x3C00'0000 seen by the device from 0: bus_offset =
// -0x3C00'0000), and so does a positive one (RAM seen higher on the bus).
[[gnu::always_inline]] inline bool dma_offset(const DmaConstraints& c, uint64_t p, uint64_t size,
                                              uint64_t* off) {
  if (c.num_windows == 0) [[likely]] {
    *off = c.bus_offset;
    return true;
  }
  const DmaWindow* w = window_of(c, p, size);
  if (w == nullptr) return false;
  *off = w->dma_base.value() - w->cpu_base.value();
  return true;
}

// The device reaches DMA addresses [0, dma_mask]: it reaches [p, p + size) when the range has a
// device address d (dma_offset) and d and d + size - 1 both lie there. Precondition: size >= 1.
[[gnu::always_inline]] inline bool reachable(const DmaConstraints& c, uint64_t p, uint64_t size) {
  uint64_t off;
  if (!dma_offset(c, p, size, &off)) return false;
  uint64_t d = p + off;
  return d <= c.dma_mask && size - 1 <= c.dma_mask - d;
}

// The device address of [p, p + size): through its window, else (no window holds it, which only
// error reports ask about) through bus_offset.
uint64_t to_dma(const DmaConstraints& c, uint64_t p, uint64_t size) {
  uint64_t off = c.bus_offset;
  if (!dma_offset(c, p, size, &off)) off = c.bus_offset;
  return p + off;
}

// The windows are usable: at most kMaxDmaWindows, present when counted, none empty or wrapping.
bool windows_ok(const DmaConstraints& c) {
  if (c.num_windows == 0) return true;
  if (c.num_windows > kMaxDmaWindows || c.windows == nullptr) return false;
  for (size_t i = 0; i < c.num_windows; ++i) {
    const DmaWindow& w = c.windows[i];
    if (w.size == 0 || w.cpu_base.value() + (w.size - 1) < w.cpu_base.value()) return false;
    if (w.dma_base.value() + (w.size - 1) < w.dma_base.value()) return false;
  }
  return true;
}

// The device's address of physical p honours `align` (0 or 1: no demand).
bool dma_aligned(const DmaConstraints& c, uint64_t p, size_t align) {
  return align <= 1 || support::is_aligned(to_dma(c, p, 1), align);
}

// A buffer the mapping layer can describe: not empty, not null, not wrapping past the end of the
// address space, and an alignment that is 0, 1 or a power of two.
bool layout_ok(const void* addr, size_t size, size_t align) {
  auto va = reinterpret_cast<uintptr_t>(addr);
  return size != 0 && addr != nullptr && (align <= 1 || support::is_pow2(align)) &&
         !support::add_overflows(va, size);
}

// The device address kDmaMaskNotMatch reports for [p, p + size): that of the last byte, or of
// the first when the last one's wraps past 2^64 (both then lie beyond the mask).
uint64_t unreachable_dma(const DmaConstraints& c, uint64_t p, size_t size) {
  uint64_t d = to_dma(c, p, size);
  uint64_t last = d + (size - 1);
  return last < d ? d : last;
}

// The direction a sync acts on: the mapping's, which the caller's may only narrow (a
// kBidirectional mapping synced for one direction). A caller's direction that contradicts a
// one-way mapping is reported by the misuse checker; the mapping's own direction still governs,
// so that a wrong argument cannot make a sync do nothing.
DmaDirection sync_direction(DmaDirection mapping, DmaDirection arg) {
  return mapping == DmaDirection::kBidirectional ? arg : mapping;
}

// True when [addr, addr + size) starts or ends inside a cache line of `line` bytes: it shares
// that line with whatever lies beside it.
bool shares_cache_lines(const void* addr, size_t size, size_t line) {
  auto va = reinterpret_cast<uintptr_t>(addr);
  return ((va | (va + size)) & (line - 1)) != 0;
}

// The growth limits fit together (all zero: growth off).
bool growth_config_ok(const KernelDmaOp::Config& cfg) {
  if (!KernelDmaOp::growth_limits_ok(cfg.max_grown_pools, cfg.grow_limit, cfg.grow_step)) {
    return false;
  }
  // Each present, not initialised (so no fixed pool either), and given once.
  for (size_t g = 0; g < cfg.max_grown_pools; ++g) {
    const BouncePool* pool = cfg.grow_pools[g];
    if (pool == nullptr || pool->bytes() != 0) return false;
    for (size_t h = 0; h < g; ++h) {
      if (cfg.grow_pools[h] == pool) return false;
    }
  }
  return true;
}

// `p`, with the optimiser told nothing about where it points (an empty asm statement "changes"
// it): what the caller stored through p is read back from memory afterwards instead of being
// kept in callee-saved registers across the calls in between (each of those costs a save, a
// restore and a move; a load is one instruction).
template <typename T>
[[gnu::always_inline]] inline T* reread(T* p) {
  asm("" : "+r"(p));
  return p;
}

}  // namespace

bool KernelDmaOp::growth_limits_ok(size_t max_grown_pools, uint64_t grow_limit,
                                   uint64_t grow_step) {
  constexpr uint64_t kPage = PageFrameAllocator::kPageSize;
  if (max_grown_pools == 0 && grow_limit == 0 && grow_step == 0) return true;
  if (max_grown_pools == 0 || max_grown_pools > kMaxGrownPools) return false;
  return grow_step >= kPage && support::is_pow2(grow_step) &&
         grow_step <= (kPage << PageFrameAllocator::kMaxOrder) && grow_step <= grow_limit;
}

KernelDmaOp::KernelDmaOp(const Config& cfg) {
  Result<void> r = init(cfg);
  KASSERT(r.ok(), "KernelDmaOp: Config refused by init()");
}

Result<void> KernelDmaOp::init(const Config& cfg) {
  // Everything is checked before anything is written: a refused call changes nothing.
  if (initialized_ || cfg.pfa == nullptr || !support::is_pow2(cfg.cache_line_size) ||
      cfg.cache_line_size > PageFrameAllocator::kPageSize || cfg.num_pools > kMaxPools ||
      (cfg.num_ram != 0 && cfg.ram == nullptr)) {
    return ErrorCode::kInvalidArgument;
  }
  for (size_t i = 0; i < cfg.num_pools; ++i) {
    if (cfg.pools[i] == nullptr) return ErrorCode::kInvalidArgument;
  }
  if (!growth_config_ok(cfg)) return ErrorCode::kInvalidArgument;
  dm_offset_ = cfg.direct_map_offset;
  num_pools_ = cfg.num_pools;
  cfg_ = cfg;
  line_ = cfg.cache_line_size;
  for (size_t i = 0; i < cfg_.num_pools; ++i) pools_[i] = cfg_.pools[i];
  max_grown_ = cfg_.max_grown_pools;
  for (size_t g = 0; g < max_grown_; ++g) pools_[kMaxPools + g] = cfg_.grow_pools[g];
  dm_lo_ = cfg_.pfa->lowest_address().value();
  dm_hi_ = cfg_.pfa->highest_address().value();
  // Bounce pools may lie outside the allocator's ranges (carved before it was built).
  for (size_t i = 0; i < cfg_.num_pools; ++i) {
    uint64_t base = cfg_.pools[i]->base().value();
    if (dm_hi_ == dm_lo_) {
      dm_lo_ = base;
      dm_hi_ = base + cfg_.pools[i]->bytes();
    }
    dm_lo_ = support::min(dm_lo_, base);
    dm_hi_ = support::max(dm_hi_, base + cfg_.pools[i]->bytes());
  }
  // Pools by base, highest first (insertion sort: at most kMaxPools).
  for (size_t i = 0; i < cfg_.num_pools; ++i) {
    size_t j = i;
    uint64_t base = cfg_.pools[i]->base().value();
    while (j > 0 && cfg_.pools[pool_order_[j - 1]]->base().value() < base) {
      pool_order_[j] = pool_order_[j - 1];
      pool_last_[j] = pool_last_[j - 1];
      pool_first_[j] = pool_first_[j - 1];
      --j;
    }
    pool_order_[j] = static_cast<uint8_t>(i);
    pool_last_[j] = base + cfg_.pools[i]->bytes() - 1;
    pool_first_[j] = base;
  }
  DirectWindow w = fast_direct_window(dm_lo_, dm_hi_, cfg_.direct_map_offset);
  fast_lo_ = w.lo;
  fast_span_ = w.span;
  initialized_ = true;
  return support::ok();
}

DirectWindow fast_direct_window(uint64_t lo, uint64_t hi, uintptr_t direct_map_offset) {
  constexpr uint64_t kPage = PageFrameAllocator::kPageSize;
  lo = support::min(support::max(lo, kPage), hi);
  uint64_t null_phys = 0 - static_cast<uint64_t>(direct_map_offset);
  if (null_phys >= lo && null_phys < hi) {
    if (null_phys - lo < kPage) {
      lo = support::min(null_phys + kPage, hi);
    } else {
      hi = null_phys;
    }
  }
  return DirectWindow{lo, hi - lo};
}

void KernelDmaOp::shutdown() {
  DmaDebug::on_op_destroyed(this);
  if (initialized_) (void)trim_bounce_pools();
}

DmaConstraints KernelDmaOp::default_constraints() const {
  DmaConstraints c;
  c.coherence = cfg_.platform_coherent ? DmaCoherence::kCoherent : DmaCoherence::kNonCoherent;
  return c;
}

Result<void> KernelDmaOp::set_memory_attribute(void*, size_t, MemAttr) {
  if (!DmaDebug::thread_context_ok("set_memory_attribute", nullptr, 0)) return ErrorCode::kBusy;
  return ErrorCode::kNotSupported;
}

Result<PhysAddr> KernelDmaOp::virt_to_phys(const void* va) const {
  // One unsigned compare covers both ends; no test of va against the offset itself, which may
  // wrap (a direct map placed below the physical addresses it maps).
  uint64_t p = reinterpret_cast<uintptr_t>(va) - dm_offset_;
  if (p - dm_lo_ < dm_hi_ - dm_lo_) return PhysAddr(p);
  for (size_t i = 0; i < cfg_.num_ram; ++i) {
    if (p - cfg_.ram[i].base.value() < cfg_.ram[i].size) return PhysAddr(p);
  }
  uint64_t phys = 0;
  if (cfg_.translate != nullptr && cfg_.translate(cfg_.translate_ctx, va, &phys)) {
    return PhysAddr(phys);
  }
  return ErrorCode::kInvalidArgument;
}

void KernelDmaOp::count_map(size_t bytes, bool bounced) {
  add_relaxed(bounced ? &stats_.bounced_maps : &stats_.direct_maps, uint64_t{1});
  add_relaxed(&stats_.maps, uint64_t{1});
  add_relaxed(&stats_.live_maps, uint64_t{1});
  add_relaxed(&stats_.bytes_mapped, uint64_t{bytes});
}

void KernelDmaOp::note_bounced(BouncePool* pool, size_t bytes) {
#if DMA_STATS
  pool->note_bounced(bytes);
  add_relaxed(&stats_.bytes_bounced, uint64_t{bytes});
#else
  (void)pool;
  (void)bytes;
#endif
}

int KernelDmaOp::pick_pool(const DmaConstraints& c) const {
  // pool_order_ lists the pools from the highest-placed down: the first the device reaches
  // wholly is the highest such pool.
  for (size_t i = 0; i < num_pools_; ++i) {
    if (reachable(c, pool_first_[i], pool_last_[i] - pool_first_[i] + 1)) return pool_order_[i];
  }
  return -1;
}

size_t KernelDmaOp::alloc_windows(const DmaConstraints& c, PhysWindow* out) const {
  if (c.num_windows == 0) {
    out[0] = alloc_window(c);
    return 1;
  }
  // Each window's part under the mask, as a physical interval.
  size_t n = 0;
  for (size_t i = 0; i < c.num_windows; ++i) {
    const DmaWindow& w = c.windows[i];
    uint64_t d = w.dma_base.value();
    if (d > c.dma_mask) continue;
    uint64_t reach = support::min(w.size - 1, c.dma_mask - d);  // Last byte, relative.
    out[n++] = PhysWindow{w.cpu_base.value(), w.cpu_base.value() + reach};
  }
  return n;
}

bool KernelDmaOp::covers(const DmaConstraints& c, uint64_t lo, uint64_t hi) const {
  if (hi <= lo) return true;
  if (c.num_windows == 0) return reachable(c, lo, hi - lo);
  // Walk from lo: each step needs a window reaching the current byte; it advances to the end of
  // that window's reach.
  PhysWindow w[kMaxDmaWindows];
  size_t n = alloc_windows(c, w);
  uint64_t cur = lo;
  for (size_t steps = 0; steps <= n; ++steps) {
    bool advanced = false;
    for (size_t i = 0; i < n; ++i) {
      if (cur >= w[i].lo && cur <= w[i].hi) {
        if (w[i].hi >= hi - 1) return true;
        cur = w[i].hi + 1;
        advanced = true;
        break;
      }
    }
    if (!advanced) return false;
  }
  return false;
}

KernelDmaOp::PhysWindow KernelDmaOp::alloc_window(const DmaConstraints& c) const {
  uint64_t lo = 0 - c.bus_offset;  // The physical address the device sees at 0.
  uint64_t hi;
  if (!__builtin_add_overflow(lo, c.dma_mask, &hi)) return PhysWindow{lo, hi};
  // The reachable addresses wrap past 2^64: [lo, 2^64 - 1] and [0, hi]. Both pieces may be RAM
  // (a negative offset with a nearly full mask); the allocator takes one interval: everything
  // when they meet, else the low piece when it holds all memory or the high one holds none,
  // else the high one.
  if (hi >= lo - 1) return PhysWindow{0, ~0ull};
  if (hi >= dm_hi_ - 1 || lo >= dm_hi_) return PhysWindow{0, hi};
  return PhysWindow{lo, ~0ull};
}

Result<uint64_t> KernelDmaOp::translate_buffer(const void* addr, size_t size) const {
  // Every page, not just the ends: memory outside the direct map (vmalloc-like) may be
  // contiguous virtually and scattered physically, and a page in the middle belonging to someone
  // else must not be handed to the device.
  constexpr uintptr_t kPage = PageFrameAllocator::kPageSize;
  TRY_ASSIGN(PhysAddr first, virt_to_phys(addr));
  uintptr_t va = reinterpret_cast<uintptr_t>(addr);
  uintptr_t last = va + (size - 1);  // The caller checked that the range does not wrap.
  for (uintptr_t page = (va & ~(kPage - 1)) + kPage; page - 1 < last; page += kPage) {
    TRY_ASSIGN(PhysAddr pp, virt_to_phys(static_cast<const uint8_t*>(addr) + (page - va)));
    if (pp.value() != first.value() + (page - va)) {
      return Error(ErrorCode::kNotContiguous, page, 0);
    }
    if (page > last - kPage) break;  // The last page: stop before `page` wraps.
  }
  return first.value();
}

size_t KernelDmaOp::max_mapping_size(const DmaConstraints& c) const {
  if (c.dma_mask == 0) return 0;
  // A device that reaches all memory, snoops the caches and is not forced to bounce never
  // bounces: nothing limits its mappings. Any other may bounce, and is limited by its pool.
  if (!windows_ok(c)) return 0;
  bool reaches_all = covers(c, dm_lo_, dm_hi_);
  if (reaches_all && coherent(c) && !c.force_bounce) return ~size_t{0};
  int pi = pick_pool(c);
  if (pi < 0) return c.force_bounce ? 0 : ~size_t{0};
  return pools_[pi]->max_mapping_size();
}

KernelDmaOp::PhysWindow KernelDmaOp::ram_span() const {
  // All memory a buffer may live in: the direct map's managed part and the pools, and every RAM
  // range the kernel named. hi is one past the last byte.
  PhysWindow r{dm_lo_, dm_hi_};
  for (size_t i = 0; i < cfg_.num_ram; ++i) {
    uint64_t base = cfg_.ram[i].base.value();
    if (cfg_.ram[i].size == 0) continue;
    r.lo = support::min(r.lo, base);
    r.hi = support::max(r.hi, base + cfg_.ram[i].size);
  }
  return r;
}

bool KernelDmaOp::overlaps_ram(uint64_t p, uint64_t size) const {
  uint64_t last = p + (size - 1);
  auto overlaps = [&](uint64_t lo, uint64_t bytes) {
    return bytes != 0 && p <= lo + (bytes - 1) && lo <= last;
  };
  if (dm_hi_ > dm_lo_ && overlaps(dm_lo_, dm_hi_ - dm_lo_)) return true;
  for (size_t i = 0; i < cfg_.num_ram; ++i) {
    if (overlaps(cfg_.ram[i].base.value(), cfg_.ram[i].size)) return true;
  }
  return false;
}

bool KernelDmaOp::inside_ram(uint64_t p, uint64_t size) const {
  if (in_direct_map(p, size)) return true;
  for (size_t i = 0; i < cfg_.num_ram; ++i) {
    uint64_t base = cfg_.ram[i].base.value();
    if (p >= base && p - base < cfg_.ram[i].size && size <= cfg_.ram[i].size - (p - base)) {
      return true;
    }
  }
  return false;
}

Result<DmaMapHandle> KernelDmaOp::map_page(const DmaConstraints& c, PhysAddr page, size_t offset,
                                           size_t size, DmaDirection dir) {
  constexpr uint64_t kPage = PageFrameAllocator::kPageSize;
  if ((page.value() & (kPage - 1)) != 0) return map_failed(ErrorCode::kInvalidArgument);
  if (offset >= kPage || size > kPage - offset) return map_failed(ErrorCode::kOutOfRange);
  if (size == 0) return map_failed(ErrorCode::kLayoutError);
  if (!inside_ram(page.value(), kPage)) return map_failed(ErrorCode::kInvalidArgument);
  // The page's direct-map address stands for the caller's missing one: a bounce copies through
  // it, and unmap_single and the syncs work on the handle unchanged.
  void* va = static_cast<uint8_t*>(phys_to_virt(page)) + offset;
  return map_decide(c, va, size, /*align=*/0, dir, /*skip=*/false);
}

Result<DmaAddr> KernelDmaOp::map_resource(const DmaConstraints& c, PhysAddr phys, size_t size,
                                          DmaDirection) {
  uint64_t p = phys.value();
  if (size == 0 || p + (size - 1) < p) return ErrorCode::kLayoutError;
  if (c.dma_mask == 0 || !windows_ok(c)) return ErrorCode::kInvalidArgument;
  if (overlaps_ram(p, size)) return ErrorCode::kInvalidArgument;
  if (!reachable(c, p, size)) {
    return Error(ErrorCode::kDmaMaskNotMatch, unreachable_dma(c, p, size), c.dma_mask);
  }
  return DmaAddr(to_dma(c, p, size));
}

bool KernelDmaOp::need_sync(const DmaConstraints& c, DmaAddr addr) const {
  if (!coherent(c)) return true;
  uint64_t p = addr.value() - c.bus_offset;
  for (size_t i = 0; i < c.num_windows && c.windows != nullptr; ++i) {
    const DmaWindow& w = c.windows[i];
    if (i == 0) p = ~0ull;  // With windows, an address outside them is nobody's bounce slot.
    if (addr.value() - w.dma_base.value() < w.size) {
      p = addr.value() - w.dma_base.value() + w.cpu_base.value();
      break;
    }
  }
  for (size_t i = 0; i < num_pools_; ++i) {
    if (p - pool_first_[i] <= pool_last_[i] - pool_first_[i]) return true;
  }
  for (size_t g = 0; g < max_grown_; ++g) {
    const GrownPool& e = grown_[g];
    if (__atomic_load_n(&e.state, __ATOMIC_ACQUIRE) != kGrownLive) continue;
    uint64_t first = __atomic_load_n(&e.first, __ATOMIC_RELAXED);
    uint64_t last = __atomic_load_n(&e.last, __ATOMIC_RELAXED);
    if (p - first <= last - first) return true;
  }
  return false;
}

Result<void> KernelDmaOp::check_mask(const DmaConstraints& c, DmaMaskKind kind) const {
  constexpr uint64_t kPage = PageFrameAllocator::kPageSize;
  if (c.dma_mask == 0 || !windows_ok(c)) return ErrorCode::kInvalidArgument;
  if (kind == DmaMaskKind::kStreaming) {
    PhysWindow ram = ram_span();
    if (ram.hi > ram.lo && covers(c, ram.lo, ram.hi)) return support::ok();
    if (pick_pool(c) >= 0) return support::ok();
    return Error(ErrorCode::kDmaMaskNotMatch, unreachable_dma(c, ram.lo, kPage), c.dma_mask);
  }
  // Coherent memory comes from the allocator: at least one page of it must lie in the window.
  uint64_t pfa_lo = cfg_.pfa->lowest_address().value();
  uint64_t pfa_hi = cfg_.pfa->highest_address().value();
  PhysWindow ws[kMaxDmaWindows];
  size_t n = alloc_windows(c, ws);
  for (size_t i = 0; i < n; ++i) {
    uint64_t lo = support::max(ws[i].lo, pfa_lo);
    if (pfa_hi > pfa_lo && lo <= 0 - kPage) {
      lo = support::align_up(lo, kPage);
      uint64_t last = support::min(ws[i].hi, pfa_hi - 1);
      if (lo <= last && last - lo >= kPage - 1) return support::ok();
    }
  }
  return Error(ErrorCode::kDmaMaskNotMatch, unreachable_dma(c, pfa_lo, kPage), c.dma_mask);
}

uint64_t KernelDmaOp::required_mask(const DmaConstraints& c) const {
  PhysWindow ram = ram_span();
  if (ram.hi <= ram.lo || !windows_ok(c)) return ~0ull;
  uint64_t last = 0;
  if (c.num_windows == 0) {
    uint64_t first = ram.lo + c.bus_offset;
    last = ram.hi - 1 + c.bus_offset;
    if (last < first) return ~0ull;  // RAM's device addresses wrap past 2^64.
  } else {
    // The highest device address of RAM through any window.
    for (size_t i = 0; i < c.num_windows; ++i) {
      const DmaWindow& w = c.windows[i];
      uint64_t lo = support::max(w.cpu_base.value(), ram.lo);
      uint64_t hi = support::min(w.cpu_base.value() + (w.size - 1), ram.hi - 1);
      if (lo > hi) continue;
      last = support::max(last, hi - w.cpu_base.value() + w.dma_base.value());
    }
  }
  unsigned bits = 64 - static_cast<unsigned>(__builtin_clzll(last | 1));
  return bits >= 64 ? ~0ull : (uint64_t{1} << bits) - 1;
}

// ---- map_single: one validation, one decision, then the work ----
//
// map_checked is the whole of it, top to bottom: check the request (check_request); the injected
// fault (it stands for running out of a resource, so it fires only for a valid request); find
// the buffer's physical address (locate); decide (bounce or not); do it (bounce, map_direct).
//
// map_single in front of it answers the same questions for the common case with the cheapest
// tests that can say "yes": a device that snoops, is not forced to bounce, asks no alignment
// and has a mask; a buffer inside the fast window of the direct map, which makes its layout valid
// (not empty, not null, not wrapping) and its physical address known. Any "no" hands the request
// to map_checked as it came, which answers everything again in full: so map_single never reports
// an error. For a request that passed, only the decision is left, and for such a device it has
// one question, reach: map_direct, or the bounce (map_out_of_reach, out of line so that
// map_single needs no stack frame). The predicates are inline: used only here, they need no
// out-of-line copies. Bench figures: BENCHMARKS.md (direct_map_unmap_ir,
// bounce_map_unmap_ir_*).

inline bool KernelDmaOp::coherent(const DmaConstraints& c) const {
  return c.coherence == DmaCoherence::kCoherent ||
         (c.coherence == DmaCoherence::kPlatformDefault && cfg_.platform_coherent);
}

inline bool KernelDmaOp::in_fast_window(uint64_t p, size_t size) const {
  // Starts inside [fast_lo_, fast_lo_ + fast_span_) and, size >= 1, ends inside it.
  uint64_t rel = p - fast_lo_;
  return rel < fast_span_ && size - 1 < fast_span_ - rel;
}

inline bool KernelDmaOp::in_direct_map(uint64_t p, size_t size) const {
  return p - dm_lo_ < dm_hi_ - dm_lo_ && size <= dm_hi_ - p;
}

inline ErrorCode KernelDmaOp::check_request(const DmaConstraints& c, const void* addr, size_t size,
                                            size_t align, bool coherent) const {
  if (!layout_ok(addr, size, align)) return ErrorCode::kLayoutError;
  if (c.dma_mask == 0 || !windows_ok(c)) return ErrorCode::kInvalidArgument;
  if (!coherent && !cfg_.cache_maintenance) return ErrorCode::kNotSupported;
  return ErrorCode::kOk;
}

inline Result<uint64_t> KernelDmaOp::locate(const void* addr, size_t size) const {
  // The direct map is contiguous by construction: a buffer wholly inside it needs no call. Any
  // other goes through the (overridable) virt_to_phys, page by page.
  uint64_t p = reinterpret_cast<uintptr_t>(addr) - dm_offset_;
  if (in_direct_map(p, size)) return p;
  return translate_buffer(addr, size);
}

Result<DmaMapHandle> KernelDmaOp::map_single(const DmaConstraints& c, void* addr, size_t size,
                                             size_t align, DmaDirection dir) {
  // The device first, then the buffer: one test after another keeps few values live at once.
  // The hand-offs are guaranteed tail calls (same signature), so this needs no stack frame.
  if (align > 1 || !coherent(c) || c.force_bounce || c.num_windows != 0) [[unlikely]] {
    SUPPORT_MUSTTAIL return map_checked(c, addr, size, align, dir);
  }
  uint64_t p = reinterpret_cast<uintptr_t>(addr) - dm_offset_;
  if (!in_fast_window(p, size) || c.dma_mask == 0) [[unlikely]] {
    SUPPORT_MUSTTAIL return map_checked(c, addr, size, align, dir);
  }
  if (FAULT_POINT(kMapping)) [[unlikely]] {
    return map_failed(ErrorCode::kNoMemory);
  }
  if (!reachable(c, p, size)) [[unlikely]] {
    SUPPORT_MUSTTAIL return map_out_of_reach(c, addr, size, align, dir);
  }
  return map_direct(c, addr, p, size, dir, /*coherent=*/true);
}

Result<DmaMapHandle> KernelDmaOp::map_out_of_reach(const DmaConstraints& c, void* addr, size_t size,
                                                   size_t align, DmaDirection dir) {
  // The commonest bounce: besides what map_single ruled out (windows, alignment, forced bounces,
  // devices that do not snoop), no bus offset, no min_align_mask and no quota (one test). Then
  // the pool pick_pool would choose is the highest placed whose last byte lies under the mask
  // (every pool's first byte lies below its last), the slot needs no offset, and this CPU's
  // cache of that pool may have a block of the size (map_cached). Anything else goes to
  // bounce_unreachable, which decides it all again, and a pool without CPU caches straight to
  // bounce_missed. No stack frame: every way out is a tail call.
  if ((c.bus_offset | c.min_align_mask | c.bounce_quota) != 0) [[unlikely]] {
    SUPPORT_MUSTTAIL return bounce_unreachable(c, addr, size, align, dir);
  }
  // The highest pool under the mask (pool_last_ ends with a 0: the search stops there).
  size_t rank = 0;
  if (pool_last_[0] > c.dma_mask) [[unlikely]] {
    do ++rank;
    while (pool_last_[rank] > c.dma_mask);
  }
  if (rank >= num_pools_) [[unlikely]] {
    SUPPORT_MUSTTAIL return bounce_unreachable(c, addr, size, align, dir);
  }
  const uint8_t pi = pool_order_[rank];
  if (!pools_[pi]->cpu_caches_on()) [[unlikely]] {
    SUPPORT_MUSTTAIL return bounce_missed(c, addr, size, miss_route(pi, BouncePool::kMaxCpus), dir);
  }
  SUPPORT_MUSTTAIL return map_cached(c, addr, size, /*pi=*/pi, dir);
}

Result<DmaMapHandle> KernelDmaOp::map_cached(const DmaConstraints& c, void* addr, size_t size,
                                             size_t pi, DmaDirection dir) {
  // The handle goes into the result at once, all but the slot, whose bounce_cpu field keeps the
  // constraints until the slot is known: across the calls (the CPU's id, the copy; a missed
  // cache's), only the result's address and this object then have to survive (everything else is
  // read back from the result).
  DmaMapHandle refused;
  uint32_t code;
  {
    // Returned only from inside this block, so that it is built where the result goes.
    Result<DmaMapHandle> r{DmaMapHandle{.cpu_addr = addr,
                                        .dma_addr = DmaAddr(0),
                                        .size = size,
                                        .bounce_cpu = const_cast<DmaConstraints*>(&c),
                                        .device_id = c.device_id,
                                        .direction = dir,
                                        .coherent_device = true,
                                        .bounce_pool_index = static_cast<uint8_t>(pi)}};
    DmaMapHandle* h = &*r;
    const unsigned cpu = pools_[pi]->cache_cpu_on();
    h = reread(h);
    BouncePool* pool = pools_[h->bounce_pool_index];
    // The slot is the block of `slots` slots at `first` of `pool`, data at its start: the rest of
    // the handle, the copy in (for every direction: see bounced()).
    auto finish = [&](BouncePool* into, uint32_t first, uint32_t slots)
                      __attribute__((always_inline)) {
                        void* slot_cpu = into->slot_cpu(first);
                        h->dma_addr = DmaAddr(into->slot_phys(first).value());
                        h->bounce_cpu = slot_cpu;
                        h->bounce_first_slot = first;
                        h->bounce_num_slots = slots;
                        support::copy_bytes(slot_cpu, h->cpu_addr, h->size);
                        note_bounced(into, h->size);
                        count_map(h->size, /*bounced=*/true);
                        DmaDebug::on_map(this, c, *h, __builtin_return_address(0));
                      };
    BouncePool::Cached got = pool->alloc_cached(cpu, h->size, h->device_id);
    if (got.slots != 0) [[likely]] {
      finish(pool, got.first, got.slots);
      return r;
    }
    // The rest of the pool's alloc(): the cache's older blocks, or the pool's lock. After each
    // call, what is needed is read back again.
    got = pool->alloc_stacked(got.first, h->size, h->device_id);
    if (got.slots != 0) {
      finish(pools_[h->bounce_pool_index], got.first, got.slots);
      return r;
    }
    auto s = pools_[h->bounce_pool_index]->alloc_unstacked(
        h->size,
        BounceDevice{h->device_id, static_cast<const DmaConstraints*>(h->bounce_cpu)->name, 0},
        got.first);
    if (s.ok()) {
      finish(pools_[h->bounce_pool_index], s->first_slot, s->num_slots);
      return r;
    }
    refused = *h;
    code = static_cast<uint32_t>(s.code());
  }
  SUPPORT_MUSTTAIL return bounce_refused(
      *static_cast<const DmaConstraints*>(refused.bounce_cpu), refused.cpu_addr, refused.size,
      miss_route(refused.bounce_pool_index, code), refused.direction);
}

Result<DmaMapHandle> KernelDmaOp::bounce_refused(const DmaConstraints& c, void* addr, size_t size,
                                                 size_t route, DmaDirection dir) {
  const auto pi = static_cast<uint8_t>(route);
  const auto code = static_cast<ErrorCode>(route >> 8);
  if (code != ErrorCode::kNoMemory) return map_failed(code);
  return bounce_elsewhere(c, addr, reinterpret_cast<uintptr_t>(addr) - dm_offset_, size,
                          /*keep=*/0, /*align_mask=*/0, dir, /*coherent=*/true, /*skip=*/false, pi,
                          __builtin_return_address(0));
}

Result<DmaMapHandle> KernelDmaOp::bounce_unreachable(const DmaConstraints& c, void* addr,
                                                     size_t size, size_t, DmaDirection dir) {
  uint64_t p = reinterpret_cast<uintptr_t>(addr) - dm_offset_;
  return bounce(c, addr, p, size, /*align=*/0, dir, /*coherent=*/true, /*for_lines=*/false);
}

Result<DmaMapHandle> KernelDmaOp::map_checked(const DmaConstraints& c, void* addr, size_t size,
                                              size_t align, DmaDirection dir) {
  return map_decide(c, addr, size, align, dir, /*skip=*/false);
}

Result<DmaMapHandle> KernelDmaOp::map_single_attrs(const DmaConstraints& c, void* addr, size_t size,
                                                   size_t align, DmaDirection dir, DmaAttrs attrs) {
  if ((attrs & ~kDmaAttrsMap) != 0) return map_failed(ErrorCode::kInvalidArgument);
  if ((attrs & kDmaAttrSkipCpuSync) == 0) return map_single(c, addr, size, align, dir);
  return map_decide(c, addr, size, align, dir, /*skip=*/true);
}

// One copy of the decision, out of line: map_checked, map_page and map_single_attrs share it.
[[gnu::noinline]] Result<DmaMapHandle> KernelDmaOp::map_decide(const DmaConstraints& c, void* addr,
                                                               size_t size, size_t align,
                                                               DmaDirection dir, bool skip) {
  const bool snoops = coherent(c);
  ErrorCode bad = check_request(c, addr, size, align, snoops);
  if (bad != ErrorCode::kOk) return map_failed(bad);
  if (FAULT_POINT(kMapping)) return map_failed(ErrorCode::kNoMemory);
  auto where = locate(addr, size);
  if (!where.ok()) return map_failed(where.error());
  uint64_t p = *where;
  // The device can use the buffer where it is unless it is forced to bounce, the buffer lies out
  // of its reach, or the buffer's DMA address breaks `align`. Even then, a device that does not
  // snoop must not write a buffer that shares cache lines with other data: the unmap's invalidate
  // would have to write the CPU's copy of those lines back over the device's bytes.
  const bool usable = !c.force_bounce && reachable(c, p, size) && dma_aligned(c, p, align);
  const bool lines = !snoops && copies_out(dir) && shares_cache_lines(addr, size, line_);
  if (!usable || lines) {
    return bounce(c, addr, p, size, align, dir, snoops, /*for_lines=*/usable, skip);
  }
  return map_direct(c, addr, p, size, dir, snoops, skip);
}

Result<DmaMapHandle> KernelDmaOp::map_failed(Error e) {
  add_relaxed(&stats_.map_errors, uint64_t{1});
  return support::err(e);
}

// The device uses the buffer where it is: clean the caches over it unless the device snoops.
[[gnu::always_inline]] inline Result<DmaMapHandle> KernelDmaOp::map_direct(
    const DmaConstraints& c, void* addr, uint64_t p, size_t size, DmaDirection dir, bool coherent,
    bool skip) {
  if (!coherent && !skip) flush(addr, size);
  count_map(size, /*bounced=*/false);
  DmaMapHandle h;
  h.cpu_addr = addr;
  h.dma_addr = DmaAddr(to_dma(c, p, size));
  h.size = size;
  h.direction = dir;
  h.coherent_device = coherent;
  h.device_id = c.device_id;
  h.skip_cpu_sync = skip;
  DmaDebug::on_map(this, c, h, __builtin_return_address(0));
  return h;
}

// The buffer goes through a slot of the highest pool lying wholly inside the device's window:
// the data copied in, the caches cleaned for a device that does not snoop. `for_lines`: the
// device could use the buffer where it is and bounces only because of shared cache lines, so a
// missing pool is the buffer's layout (kLayoutError), not the mask (kDmaMaskNotMatch).
[[gnu::always_inline]] inline Result<DmaMapHandle> KernelDmaOp::bounce(
    const DmaConstraints& c, void* addr, uint64_t p, size_t size, size_t align, DmaDirection dir,
    bool coherent, bool for_lines, bool skip) {
  int pi = pick_pool(c);
  if (pi < 0) {
    if (for_lines) return map_failed(ErrorCode::kLayoutError);
    return map_failed(Error(ErrorCode::kDmaMaskNotMatch, unreachable_dma(c, p, size), c.dma_mask));
  }
  BouncePool* pool = pools_[pi];
  // Both demands on the slot are "phys & low == target": its low bits equal the buffer's under
  // min_align_mask, and slot + bus_offset is a multiple of `align` (the device's address, not
  // the physical one, must be aligned). Where they overlap they must agree.
  uint64_t keep = c.min_align_mask;
  uint64_t align_mask = align > 1 ? align - 1 : 0;
  // The slot's device address goes through the window holding the pool (pick_pool chose a pool
  // one window holds wholly).
  uint64_t off = c.bus_offset;
  (void)dma_offset(c, pool->base().value(), pool->bytes(), &off);
  uint64_t align_bits = (0 - off) & align_mask;
  if ((keep & (keep + 1)) != 0 || ((p ^ align_bits) & keep & align_mask) != 0) {
    return map_failed(ErrorCode::kLayoutError);
  }
  // A size above the pool's max_mapping_size() is refused by alloc with kLayoutError; a device
  // over its quota, like a full pool, gets kNoMemory.
  auto first = pool->alloc(size, PhysAddr((p & keep) | align_bits), keep | align_mask, 0,
                           BounceDevice{c.device_id, c.name, c.bounce_quota});
  if (!first.ok()) [[unlikely]] {
    if (first.code() != ErrorCode::kNoMemory) return map_failed(first.error());
    return bounce_elsewhere(c, addr, p, size, keep, align_mask, dir, coherent, skip, pi,
                            __builtin_return_address(0));
  }
  const BounceSlot& s = *first;
  return bounced(c, addr, size, dir, coherent, skip, pi, s.addr, pool->cpu_addr(s.addr),
                 s.first_slot, s.num_slots, off, __builtin_return_address(0));
}

Result<DmaMapHandle> KernelDmaOp::bounce_elsewhere(const DmaConstraints& c, void* addr, uint64_t p,
                                                   size_t size, uint64_t keep, uint64_t align_mask,
                                                   DmaDirection dir, bool coherent, bool skip,
                                                   int full, const void* caller) {
  // Full (or the device's quota there spent): another pool under the mask may have room, then a
  // grown pool, or a new one (alloc_fallback).
  BounceSlot s;
  uint64_t off = 0;
  int pi = alloc_fallback(c, p, size, keep, align_mask, full, &s, &off);
  if (pi < 0) return map_failed(ErrorCode::kNoMemory);
  return bounced(c, addr, size, dir, coherent, skip, pi, s.addr, pools_[pi]->cpu_addr(s.addr),
                 s.first_slot, s.num_slots, off, caller);
}

Result<DmaMapHandle> KernelDmaOp::bounce_missed(const DmaConstraints& c, void* addr, size_t size,
                                                size_t route, DmaDirection dir) {
  const auto pi = static_cast<uint8_t>(route);
  BouncePool* pool = pools_[pi];
  auto first = pool->alloc_missed(size, BounceDevice{c.device_id, c.name, 0},
                                  static_cast<uint32_t>(route >> 8));
  if (!first.ok()) [[unlikely]] {
    if (first.code() != ErrorCode::kNoMemory) return map_failed(first.error());
    return bounce_elsewhere(c, addr, reinterpret_cast<uintptr_t>(addr) - dm_offset_, size,
                            /*keep=*/0, /*align_mask=*/0, dir, /*coherent=*/true, /*skip=*/false,
                            pi, __builtin_return_address(0));
  }
  const BounceSlot& s = *first;
  return bounced(c, addr, size, dir, /*coherent=*/true, /*skip=*/false, pi, s.addr,
                 pool->cpu_addr(s.addr), s.first_slot, s.num_slots, /*off=*/0,
                 __builtin_return_address(0));
}

// The work once the slot is taken (slot_cpu: its CPU address, off: its device-address offset):
// the data copied in, the caches cleaned for a device that does not snoop, the handle.
[[gnu::always_inline]] inline Result<DmaMapHandle> KernelDmaOp::bounced(
    const DmaConstraints& c, void* addr, size_t size, DmaDirection dir, bool coherent, bool skip,
    int pi, PhysAddr slot, void* slot_cpu, uint32_t first_slot, uint32_t num_slots, uint64_t off,
    const void* caller) {
  // Copied in for every direction, kFromDevice included: a device that writes less than the
  // whole buffer must leave the buffer's own bytes in the slot, never a previous mapping's (which
  // the unmap's copy-out would hand to the CPU).
  support::copy_bytes(slot_cpu, addr, size);
  note_bounced(pools_[pi], size);
  if (!coherent && !skip) flush(slot_cpu, size);
  count_map(size, /*bounced=*/true);
  // Built last, after the calls, so that it goes straight into the result.
  DmaMapHandle h;
  h.cpu_addr = addr;
  h.dma_addr = DmaAddr(slot.value() + off);
  h.size = size;
  h.bounce_cpu = slot_cpu;
  h.bounce_first_slot = first_slot;
  h.bounce_num_slots = num_slots;
  h.device_id = c.device_id;
  h.direction = dir;
  h.coherent_device = coherent;
  h.bounce_pool_index = static_cast<uint8_t>(pi);
  h.skip_cpu_sync = skip;
  DmaDebug::on_map(this, c, h, caller);
  (void)caller;
  return h;
}

int KernelDmaOp::alloc_fallback(const DmaConstraints& c, uint64_t p, size_t size, uint64_t keep,
                                uint64_t align_mask, int skip, BounceSlot* out, uint64_t* off) {
  // The other pools the device reaches wholly, highest placed first, as pick_pool orders them.
  for (size_t rank = 0; rank < num_pools_; ++rank) {
    int pi = pool_order_[rank];
    if (pi == skip) continue;
    if (!reachable(c, pool_first_[rank], pool_last_[rank] - pool_first_[rank] + 1)) continue;
    if (!take_slot(pools_[pi], c, p, size, keep, align_mask, out, off)) continue;
    add_relaxed(&stats_.pool_fallbacks, uint64_t{1});
    return pi;
  }
  if (max_grown_ == 0) return -1;
  int gi = alloc_grown(c, p, size, keep, align_mask, skip, out, off);
  if (gi >= 0) add_relaxed(&stats_.pool_fallbacks, uint64_t{1});
  return gi;
}

void KernelDmaOp::copy_to_bounce(const DmaMapHandle& h, size_t offset, size_t size) {
  support::copy_bytes(static_cast<uint8_t*>(h.bounce_cpu) + offset,
                      static_cast<const uint8_t*>(h.cpu_addr) + offset, size);
  note_bounced(pools_[h.bounce_pool_index], size);
}

void KernelDmaOp::copy_from_bounce(const DmaMapHandle& h, size_t offset, size_t size) {
  support::copy_bytes(static_cast<uint8_t*>(h.cpu_addr) + offset,
                      static_cast<const uint8_t*>(h.bounce_cpu) + offset, size);
  note_bounced(pools_[h.bounce_pool_index], size);
}

void KernelDmaOp::unmap_single(const DmaMapHandle& h) {
  if (!DmaDebug::on_unmap(this, h)) return;  // Misuse, reported: refused.
  if (!h.bounced()) {
    if (copies_out(h.direction) && !h.coherent_device && !h.skip_cpu_sync) {
      invalidate(h.cpu_addr, h.size);
    }
  } else {
    unmap_bounced(h);
  }
  add_relaxed(&stats_.live_maps, ~uint64_t{0});  // Minus one.
}

[[gnu::always_inline]] inline void KernelDmaOp::copy_out_at_unmap(const DmaMapHandle& h) {
  if (copies_out(h.direction) && !h.skip_cpu_sync) {
    if (!h.coherent_device) invalidate(h.bounce_cpu, h.size);
    copy_from_bounce(h, 0, h.size);
  }
}

void KernelDmaOp::unmap_bounced(const DmaMapHandle& h) {
  // A bounced handle has a slot, hence a size: an empty (default) handle is not bounced.
  KDEBUG_ASSERT(h.size != 0 && h.cpu_addr != nullptr, "unmap_single of an empty handle");
  // Any index past the fixed pools: a grown pool's, or a bad one (unmap_grown checks which).
  if (h.bounce_pool_index >= num_pools_) [[unlikely]] {
    unmap_grown(h);
    return;
  }
  BouncePool* pool = pools_[h.bounce_pool_index];
  if (!pool->cpu_caches_on()) [[unlikely]] {
    unmap_uncached(h);
    return;
  }
  copy_out_at_unmap(h);
  // The CPU first: the handle is read after that call, so that only it, the pool and this object
  // live across it.
  const unsigned cpu = pool->cache_cpu_on();
  if (!pool->free_cached(cpu, h.bounce_first_slot, h.bounce_num_slots, h.bounce_cpu, h.size))
      [[unlikely]] {
    unmap_declined(h);
    return;
  }
  if (__atomic_load_n(&idle_grown_, __ATOMIC_RELAXED) != 0) [[unlikely]] {
    sweep_idle_grown();
  }
}

void KernelDmaOp::unmap_uncached(const DmaMapHandle& h) {
  copy_out_at_unmap(h);
  unmap_declined(h);
}

void KernelDmaOp::unmap_declined(const DmaMapHandle& h) {
  auto r = pools_[h.bounce_pool_index]->free_uncached(h.bounce_first_slot, h.bounce_num_slots,
                                                      h.bounce_cpu, h.size);
  KASSERT(r.ok(), "unmap_single: the bounce slot was not live (double unmap?)");
  if (__atomic_load_n(&idle_grown_, __ATOMIC_RELAXED) != 0) [[unlikely]] {
    sweep_idle_grown();
  }
}

Result<void> KernelDmaOp::prepare_read(const DmaMapHandle& h, size_t offset, size_t size,
                                       DmaDirection dir) {
  ErrorCode misuse = DmaDebug::on_sync(this, h, offset, size, dir, DmaSyncCall::kPrepareRead);
  if (misuse != ErrorCode::kOk) return misuse;  // Reported.
  if (offset > h.size || size > h.size - offset) return ErrorCode::kOutOfRange;
  if (!copies_out(sync_direction(h.direction, dir)) || size == 0) return support::ok();
  if (h.bounced()) {
    if (!h.coherent_device) invalidate(static_cast<uint8_t*>(h.bounce_cpu) + offset, size);
    copy_from_bounce(h, offset, size);
  } else if (!h.coherent_device) {
    invalidate(static_cast<uint8_t*>(h.cpu_addr) + offset, size);
  }
  return support::ok();
}

Result<void> KernelDmaOp::confirm_write(const DmaMapHandle& h, size_t offset, size_t size,
                                        DmaDirection dir) {
  ErrorCode misuse = DmaDebug::on_sync(this, h, offset, size, dir, DmaSyncCall::kConfirmWrite);
  if (misuse != ErrorCode::kOk) return misuse;  // Reported.
  if (offset > h.size || size > h.size - offset) return ErrorCode::kOutOfRange;
  if (size == 0) return support::ok();
  bool copy = copies_in(sync_direction(h.direction, dir));
  if (h.bounced()) {
    // The slot is all the device sees; the CPU's buffer is not mapped to it, so a kFromDevice
    // slot needs nothing (the CPU never writes the slot).
    if (!copy) return support::ok();
    copy_to_bounce(h, offset, size);
    if (!h.coherent_device) flush(static_cast<uint8_t*>(h.bounce_cpu) + offset, size);
  } else if (!h.coherent_device) {
    // Cleaned whatever the direction: before the buffer goes back to the device, no line the CPU
    // dirtied may stay behind to be evicted over what the device writes next (Linux's arm64
    // port cleans for the device in every direction for the same reason).
    flush(static_cast<uint8_t*>(h.cpu_addr) + offset, size);
  }
  return support::ok();
}

Result<DmaHandle> KernelDmaOp::alloc_coherent(const DmaConstraints& c, Layout layout) {
  if (!coherent(c) && !DmaDebug::thread_context_ok("alloc_coherent", c.name, c.device_id)) {
    return ErrorCode::kBusy;
  }
  return alloc_pages(c, layout, MemAttr::kUncached, /*remap=*/!coherent(c));
}

Result<DmaHandle> KernelDmaOp::alloc_noncoherent(const DmaConstraints& c, Layout layout) {
  return alloc_pages(c, layout, MemAttr::kCached, /*remap=*/false);
}

Result<DmaHandle> KernelDmaOp::alloc_attrs(const DmaConstraints& c, Layout layout, DmaAttrs attrs) {
  if ((attrs & ~kDmaAttrsAlloc) != 0) return ErrorCode::kInvalidArgument;
  const bool wc = (attrs & kDmaAttrWriteCombine) != 0;
  const bool no_mapping = (attrs & kDmaAttrNoKernelMapping) != 0;
  if (wc && no_mapping) return ErrorCode::kInvalidArgument;
  if (wc) {
    if (!DmaDebug::thread_context_ok("alloc_attrs", c.name, c.device_id)) {
      return ErrorCode::kBusy;
    }
    return alloc_pages(c, layout, MemAttr::kWriteCombine, /*remap=*/true);
  }
  if (no_mapping) return alloc_pages(c, layout, MemAttr::kCached, /*remap=*/false);
  return alloc_coherent(c, layout);
}

void KernelDmaOp::dealloc_noncoherent(const DmaHandle& h) {
  dealloc_coherent(h);
}

// Not const although it touches no member: it takes pages from the allocator this object owns.
// NOLINTNEXTLINE(readability-make-member-function-const)
Result<PhysAddr> KernelDmaOp::alloc_in(const DmaConstraints& c, PhysWindow w, unsigned order,
                                       uint64_t align) {
  uint64_t bytes_needed = PageFrameAllocator::kPageSize << order;
  // The allocator takes an upper limit only; a window that starts above 0 (a negative bus
  // offset, or a dma-ranges window) also has a floor. No memory at all between floor and limit
  // is a mask mismatch.
  if (w.lo != 0 && (w.lo >= dm_hi_ || dm_hi_ - w.lo < bytes_needed)) {
    return Error(ErrorCode::kDmaMaskNotMatch, unreachable_dma(c, dm_lo_, bytes_needed), c.dma_mask);
  }
  auto pa = cfg_.pfa->alloc(order, w.hi, align);
  if (!pa.ok()) {
    Error e = pa.error();
    // The allocator names the lowest physical address it has; the caller needs the device's
    // view: the address the device would have to reach, beyond its mask.
    if (e.code == ErrorCode::kDmaMaskNotMatch) {
      e.addr = unreachable_dma(c, e.addr, bytes_needed);
      e.mask = c.dma_mask;
    }
    return e;
  }
  if (pa->value() < w.lo || pa->value() + (bytes_needed - 1) > w.hi) {
    // It prefers high memory, so a block below the floor means none is free above it now.
    auto undo = cfg_.pfa->free(*pa, order);
    KASSERT(undo.ok(), "alloc_coherent: cannot give back a block outside the device's window");
    return ErrorCode::kNoMemory;
  }
  return *pa;
}

Result<DmaHandle> KernelDmaOp::alloc_pages(const DmaConstraints& c, Layout layout, MemAttr remap_to,
                                           bool remap) {
  if (layout.size == 0) return ErrorCode::kLayoutError;
  if (layout.align > 1 && !support::is_pow2(layout.align)) return ErrorCode::kLayoutError;
  unsigned order = PageFrameAllocator::order_for(layout.size);
  if (order > PageFrameAllocator::kMaxOrder) return ErrorCode::kLayoutError;
  if (c.dma_mask == 0 || !windows_ok(c)) return ErrorCode::kInvalidArgument;
  const bool snoops = coherent(c);
  // Without cache maintenance neither a device that does not snoop nor a remap (whose lines must
  // be written back first) can be served.
  if ((!snoops || remap) && !cfg_.cache_maintenance) return ErrorCode::kNotSupported;
  uint64_t align = support::max<uint64_t>(layout.align, PageFrameAllocator::kPageSize);
  // One window (bus_offset), or each of the device's windows in turn: the first that gives a
  // block wins; otherwise the error of the last one, kNoMemory before kDmaMaskNotMatch (some
  // window had memory, only not now).
  PhysWindow ws[kMaxDmaWindows];
  size_t nw = alloc_windows(c, ws);
  Error best(ErrorCode::kDmaMaskNotMatch, unreachable_dma(c, dm_lo_, 1), c.dma_mask);
  PhysAddr block;
  bool got = false;
  for (size_t i = 0; i < nw && !got; ++i) {
    auto r = alloc_in(c, ws[i], order, align);
    if (r.ok()) {
      block = *r;
      got = true;
    } else if (best.code != ErrorCode::kNoMemory) {
      best = r.error();
    }
  }
  if (!got) return best;
  const PhysAddr* pa = &block;
  DmaHandle h;
  h.phys = *pa;
  h.dma_addr = DmaAddr(to_dma(c, pa->value(), PageFrameAllocator::kPageSize << order));
  h.cpu_addr = phys_to_virt(*pa);
  h.layout = layout;
  h.order = static_cast<uint8_t>(order);
  h.coherent_device = snoops;
  h.device_id = c.device_id;
  size_t bytes = PageFrameAllocator::kPageSize << order;
  support::fill_bytes(h.cpu_addr, 0, bytes);
  if (!snoops && !remap) {
    // Cacheable memory for a device that does not snoop: the zeroes go to memory now, so that the
    // device never reads what the pages held before, and no dirty line is left to be evicted
    // over what the device writes.
    flush_invalidate(h.cpu_addr, bytes);
  }
  if (remap) {
    // A device that does not snoop gets memory the CPU maps non-cacheable (or write-combining,
    // when asked, for any device). First the zeroes must reach memory and no dirty line may stay
    // behind (one evicted later would overwrite what the device writes); then the pages change
    // attribute; then lines the old cacheable mapping may have pulled in meanwhile (speculation)
    // are dropped. A coherent device pays for none of it unless it asked for write-combining.
    flush_invalidate(h.cpu_addr, bytes);
    auto changed = set_memory_attribute(h.cpu_addr, bytes, remap_to);
    if (!changed.ok()) {
      auto undo = cfg_.pfa->free(*pa, order);
      KASSERT(undo.ok(), "alloc_coherent: cannot give back the pages of a failed remap");
      return changed.error();
    }
    flush_invalidate(h.cpu_addr, bytes);
    h.remapped = true;
    h.write_combine = remap_to == MemAttr::kWriteCombine;
    add_relaxed(&stats_.coherent_uncached, uint64_t{1});
    add_relaxed(&stats_.coherent_uncached_live, uint64_t{1});
  }
  add_relaxed(&stats_.coherent_allocs, uint64_t{1});
  add_relaxed(&stats_.coherent_live, uint64_t{1});
  DmaDebug::on_alloc_coherent(this, c, h, __builtin_return_address(0));
  return h;
}

void KernelDmaOp::dealloc_coherent(const DmaHandle& h) {
  if (h.remapped && !DmaDebug::thread_context_ok("dealloc_coherent", nullptr, h.device_id)) {
    return;  // Reported; the allocation stays live.
  }
  if (!DmaDebug::on_dealloc_coherent(this, h)) return;  // Misuse, reported: refused.
  if (h.remapped) {
    // The pages go back cacheable: the next owner expects the direct map's normal attribute. No
    // cache maintenance: while uncached, nothing could cache them.
    auto restore = set_memory_attribute(h.cpu_addr, PageFrameAllocator::kPageSize << h.order,
                                        MemAttr::kCached);
    KASSERT(restore.ok(), "dealloc_coherent: cannot restore the cacheable attribute");
    add_relaxed(&stats_.coherent_uncached_live, ~uint64_t{0});
  }
  auto r = cfg_.pfa->free(h.phys, h.order);
  KASSERT(r.ok(), "dealloc_coherent: not a live coherent allocation (double free?)");
  add_relaxed(&stats_.coherent_live, ~uint64_t{0});
}

KernelDmaOp::Stats KernelDmaOp::stats() const {
  Stats s;
  s.maps = __atomic_load_n(&stats_.maps, __ATOMIC_RELAXED);
  s.direct_maps = __atomic_load_n(&stats_.direct_maps, __ATOMIC_RELAXED);
  s.bounced_maps = __atomic_load_n(&stats_.bounced_maps, __ATOMIC_RELAXED);
  s.bytes_mapped = __atomic_load_n(&stats_.bytes_mapped, __ATOMIC_RELAXED);
  s.bytes_bounced = __atomic_load_n(&stats_.bytes_bounced, __ATOMIC_RELAXED);
  s.map_errors = __atomic_load_n(&stats_.map_errors, __ATOMIC_RELAXED);
  s.coherent_allocs = __atomic_load_n(&stats_.coherent_allocs, __ATOMIC_RELAXED);
  s.coherent_live = __atomic_load_n(&stats_.coherent_live, __ATOMIC_RELAXED);
  s.live_maps = __atomic_load_n(&stats_.live_maps, __ATOMIC_RELAXED);
  s.coherent_uncached = __atomic_load_n(&stats_.coherent_uncached, __ATOMIC_RELAXED);
  s.coherent_uncached_live = __atomic_load_n(&stats_.coherent_uncached_live, __ATOMIC_RELAXED);
  s.pool_fallbacks = __atomic_load_n(&stats_.pool_fallbacks, __ATOMIC_RELAXED);
  s.grow_events = __atomic_load_n(&stats_.grow_events, __ATOMIC_RELAXED);
  s.shrink_events = __atomic_load_n(&stats_.shrink_events, __ATOMIC_RELAXED);
  s.grown_bytes = __atomic_load_n(&stats_.grown_bytes, __ATOMIC_RELAXED);
  s.grown_bytes_high_water = __atomic_load_n(&stats_.grown_bytes_high_water, __ATOMIC_RELAXED);
  return s;
}

// ---- Grown pools ----
//
// Config::grow_pools[g] is a pool object that is never destroyed; grown_[g] says what it is now:
//   kGrownFree      no memory; nobody but a grower may touch the object;
//   kGrownSetup     a grower (holding grow_lock_) is setting it up over a new block;
//   kGrownLive      published: mappings may take slots from it;
//   kGrownRetiring  a retirer (holding grow_lock_) is taking it back.
// Growth and retirement are serialised by grow_lock_; a mapping path takes it only to grow.
//
// Readers. A map that found the fixed pools full reads the table without a lock (try_grown): it
// announces itself in `users` (seq_cst), then reads the state again (seq_cst), and only if that
// says kGrownLive does it read first/last and call the pool. A grower moves a kGrownFree entry to
// kGrownSetup (seq_cst) and then reads `users` (seq_cst); if a reader is announced it leaves the
// entry (tries the next one). Of these two store-then-load pairs one always sees the other's
// store: either the reader sees a state other than kGrownLive and backs off without touching the
// object, or the grower sees the reader and does not touch the object. So a pool object is never
// set up again (BouncePool::init over another block) while a reader may be inside it, and a
// reader that saw kGrownLive (acquire) checks its device's reach against the first/last of the
// very set-up whose pool it calls: a mapping never lands in memory its device cannot reach,
// however long the reader was delayed.
//
// Retirement does not wait for readers: it sets kGrownRetiring (later readers go elsewhere) and
// calls BouncePool::retire, which takes back the CPU caches and then, under the pool's own lock,
// refuses if a slot is in use, or else makes the pool refuse every later allocation, before the
// memory goes back to the allocator. A reader already inside the pool is either before that
// point under the pool's lock (its slot makes retire refuse: the entry goes back to kGrownLive)
// or after it (its allocation is refused and it goes on to grow). The entry becomes kGrownFree
// only after the memory is freed; its object is set up again only once no reader is announced.
//
// Unmap needs no announcement: its live slot keeps the pool from retiring, and it reads what it
// needs of grown_[g] (and counts itself out of `live`) before the free. Handles of grown pool g
// carry bounce_pool_index kMaxPools + g, where pools_ holds the object, so copies and syncs find it
// as for a fixed pool, and unmap_bounced sends every index past the fixed pools to unmap_grown.
//
// Hysteresis: an unmap that leaves grown pool g empty gives it back only if the fixed pool it grew
// from has min(g's bytes, half its own bytes) free (slots_needed, against the pool's lock-free
// use estimate); otherwise it stays for the next burst, its need and parent are stored and its
// bit is set in idle_grown_. While any bit is set, every unmap from a fixed pool calls
// sweep_idle_grown, which tests without a lock whether an idle pool could go
// back now, and only then (if grow_lock_ is free) gives back the idle pools whose fixed pool has
// recovered and clears the bits of those in use again. With no bit set that costs the unmap one
// load; with a grown pool idle while its fixed pool stays busy, a few loads. trim_bounce_pools()
// gives back every empty grown pool whatever the hysteresis says.

bool KernelDmaOp::take_slot(BouncePool* pool, const DmaConstraints& c, uint64_t p, size_t size,
                            uint64_t keep, uint64_t align_mask, BounceSlot* out, uint64_t* off) {
  // The pool's device-address offset: through the window that holds it wholly (the callers
  // checked that one does), else bus_offset.
  uint64_t o = c.bus_offset;
  (void)dma_offset(c, pool->base().value(), pool->bytes(), &o);
  uint64_t align_bits = (0 - o) & align_mask;
  if (((p ^ align_bits) & keep & align_mask) != 0) return false;
  auto slot = pool->alloc(size, PhysAddr((p & keep) | align_bits), keep | align_mask, 0,
                          BounceDevice{c.device_id, c.name, c.bounce_quota});
  if (!slot.ok()) return false;
  *out = *slot;
  *off = o;
  return true;
}

int KernelDmaOp::try_grown(size_t g, const DmaConstraints& c, uint64_t p, size_t size,
                           uint64_t keep, uint64_t align_mask, BounceSlot* out, uint64_t* off) {
  GrownPool& e = grown_[g];
  if (__atomic_load_n(&e.state, __ATOMIC_RELAXED) != kGrownLive) return -1;
  __atomic_fetch_add(&e.users, 1u, __ATOMIC_SEQ_CST);
  int result = -1;
  if (__atomic_load_n(&e.state, __ATOMIC_SEQ_CST) == kGrownLive) {
    uint64_t first = __atomic_load_n(&e.first, __ATOMIC_RELAXED);
    uint64_t bytes = __atomic_load_n(&e.last, __ATOMIC_RELAXED) - first + 1;
    if (reachable(c, first, bytes) &&
        take_slot(pools_[kMaxPools + g], c, p, size, keep, align_mask, out, off)) {
      __atomic_fetch_add(&e.live, uint64_t{1}, __ATOMIC_RELAXED);
      result = static_cast<int>(kMaxPools + g);
    }
  }
  __atomic_fetch_sub(&e.users, 1u, __ATOMIC_RELEASE);
  return result;
}

int KernelDmaOp::alloc_grown(const DmaConstraints& c, uint64_t p, size_t size, uint64_t keep,
                             uint64_t align_mask, int parent, BounceSlot* out, uint64_t* off) {
  for (size_t g = 0; g < max_grown_; ++g) {
    int r = try_grown(g, c, p, size, keep, align_mask, out, off);
    if (r >= 0) return r;
  }
  support::Guard<support::SpinLock> guard{&grow_lock_};
  // Another CPU may have grown while this one waited for the lock: its pool first.
  for (size_t g = 0; g < max_grown_; ++g) {
    int r = try_grown(g, c, p, size, keep, align_mask, out, off);
    if (r >= 0) return r;
  }
  return grow(c, p, size, keep, align_mask, parent, out, off);
}

int KernelDmaOp::grow(const DmaConstraints& c, uint64_t p, size_t size, uint64_t keep,
                      uint64_t align_mask, int parent, BounceSlot* out, uint64_t* off) {
  constexpr uint64_t kPage = PageFrameAllocator::kPageSize;
  constexpr uint64_t kMaxBlock = kPage << PageFrameAllocator::kMaxOrder;
  const BouncePool* fixed = pools_[parent];
  const uint64_t slot = fixed->slot_size();
  // The slots the request needs at worst: its data behind the largest offset the preserved bits
  // can give it in its first slot, plus the slack of the alignment period (bounce_pool.cc).
  const uint64_t low = keep | align_mask;
  if (size > kMaxBlock || low >= kMaxBlock) return -1;
  const uint64_t n = ((low & (slot - 1)) + size + slot - 1) / slot;
  const uint64_t period = low >= slot ? (low + 1) / slot : 1;
  const uint64_t need = (n + period - 1) * slot;
  uint64_t bytes = support::max<uint64_t>(cfg_.grow_step, slot);
  while (bytes < need && bytes <= kMaxBlock) bytes <<= 1;
  if (bytes > kMaxBlock || bytes > cfg_.grow_limit - grown_bytes_) return -1;  // Over the limit.

  // A free entry no reader is looking at (see "Grown pools").
  size_t g = 0;
  for (; g < max_grown_; ++g) {
    uint32_t expect = kGrownFree;
    if (!__atomic_compare_exchange_n(&grown_[g].state, &expect, uint32_t{kGrownSetup}, false,
                                     __ATOMIC_SEQ_CST, __ATOMIC_RELAXED)) {
      continue;
    }
    if (__atomic_load_n(&grown_[g].users, __ATOMIC_SEQ_CST) == 0) break;
    __atomic_store_n(&grown_[g].state, uint32_t{kGrownFree}, __ATOMIC_RELEASE);
  }
  if (g == max_grown_) return -1;  // Every entry in use.
  GrownPool& e = grown_[g];
  BouncePool* pool = pools_[kMaxPools + g];

  // The block under the device's mask (through any of its windows), the records anywhere. Every
  // way out after a failure gives back what was taken (undo_growth) and frees the entry.
  const unsigned order = support::log2_floor(bytes / kPage);
  const unsigned meta_order = PageFrameAllocator::order_for(BouncePool::metadata_size(bytes, slot));
  PhysWindow ws[kMaxDmaWindows];
  size_t nw = alloc_windows(c, ws);
  PhysAddr block;
  bool got = false;
  for (size_t i = 0; i < nw && !got; ++i) {
    auto r = alloc_in(c, ws[i], order, kPage);
    if (r.ok()) block = *r;
    got = r.ok();
  }
  if (!got) return undo_growth(g, block, 0, block, 0, 0);
  auto meta = alloc_in(c, PhysWindow{0, ~0ull}, meta_order, kPage);
  if (!meta.ok()) return undo_growth(g, block, order, PhysAddr(0), 0, 1);

  BouncePool::Options o;
  o.slot_size = slot;
  o.max_mapping = support::min<uint64_t>(fixed->max_mapping_size(), bytes);
  o.name = fixed->name();
  if (!pool->init(block, bytes, phys_to_virt(block), phys_to_virt(*meta),
                  size_t{kPage} << meta_order, o)
           .ok()) {
    return undo_growth(g, block, order, *meta, meta_order, 2);
  }
  // The request's slot, before anyone else can see the pool.
  uint64_t o_dma = 0;
  BounceSlot s;
  if ((fixed->cpu_cache_fn() != nullptr &&
       !pool->enable_cpu_caches(fixed->cpu_cache_fn(), fixed->cpu_cache_cpus()).ok()) ||
      !take_slot(pool, c, p, size, keep, align_mask, &s, &o_dma)) {  // A small quota, say.
    return undo_growth(g, block, order, *meta, meta_order, 3);
  }
  const PhysAddr base = block;

  __atomic_store_n(&e.first, base.value(), __ATOMIC_RELAXED);
  __atomic_store_n(&e.last, base.value() + (bytes - 1), __ATOMIC_RELAXED);
  e.meta = meta->value();
  e.order = static_cast<uint8_t>(order);
  e.meta_order = static_cast<uint8_t>(meta_order);
  e.parent = static_cast<uint8_t>(parent);
  __atomic_store_n(&e.live, uint64_t{1}, __ATOMIC_RELAXED);
  __atomic_store_n(&e.state, uint32_t{kGrownLive}, __ATOMIC_RELEASE);  // Published.
  grown_bytes_ += bytes;
  __atomic_store_n(&stats_.grown_bytes, grown_bytes_, __ATOMIC_RELAXED);
  if (grown_bytes_ > __atomic_load_n(&stats_.grown_bytes_high_water, __ATOMIC_RELAXED)) {
    __atomic_store_n(&stats_.grown_bytes_high_water, grown_bytes_, __ATOMIC_RELAXED);
  }
  __atomic_fetch_add(&stats_.grow_events, uint64_t{1}, __ATOMIC_RELAXED);
  *out = s;
  *off = o_dma;
  return static_cast<int>(kMaxPools + g);
}

int KernelDmaOp::undo_growth(size_t g, PhysAddr block, unsigned order, PhysAddr meta,
                             unsigned meta_order, unsigned taken) {
  // An initialised pool is retired, so that its object can be set up again.
  bool ok = taken < 3 || pools_[kMaxPools + g]->retire().ok();
  if (taken >= 1) ok = cfg_.pfa->free(block, order).ok() && ok;
  if (taken >= 2) ok = cfg_.pfa->free(meta, meta_order).ok() && ok;
  KASSERT(ok, "bounce pool growth: cannot give its memory back");
  __atomic_store_n(&grown_[g].state, uint32_t{kGrownFree}, __ATOMIC_RELEASE);
  return -1;
}

bool KernelDmaOp::retire_grown(size_t g) {
  GrownPool& e = grown_[g];
  if (__atomic_load_n(&e.state, __ATOMIC_RELAXED) != kGrownLive) return false;
  __atomic_store_n(&e.state, uint32_t{kGrownRetiring}, __ATOMIC_SEQ_CST);
  if (!pools_[kMaxPools + g]->retire().ok()) {
    __atomic_store_n(&e.state, uint32_t{kGrownLive}, __ATOMIC_RELEASE);  // Still in use.
    return false;
  }
  __atomic_fetch_and(&idle_grown_, ~(uint32_t{1} << g), __ATOMIC_RELAXED);
  // The pool refuses everything now and never touches its memory again.
  uint64_t first = __atomic_load_n(&e.first, __ATOMIC_RELAXED);
  uint64_t bytes = __atomic_load_n(&e.last, __ATOMIC_RELAXED) - first + 1;
  bool freed = cfg_.pfa->free(PhysAddr(first), e.order).ok();
  freed = cfg_.pfa->free(PhysAddr(e.meta), e.meta_order).ok() && freed;
  KASSERT(freed, "bounce pool growth: cannot give its memory back");
  grown_bytes_ -= bytes;
  __atomic_store_n(&stats_.grown_bytes, grown_bytes_, __ATOMIC_RELAXED);
  __atomic_fetch_add(&stats_.shrink_events, uint64_t{1}, __ATOMIC_RELAXED);
  __atomic_store_n(&e.state, uint32_t{kGrownFree}, __ATOMIC_RELEASE);
  return true;
}

void KernelDmaOp::unmap_grown(const DmaMapHandle& h) {
  const size_t idx = h.bounce_pool_index;
  KASSERT(idx >= kMaxPools && idx < kMaxPools + max_grown_, "unmap_single: bad bounce pool index");
  const size_t g = idx - kMaxPools;
  GrownPool& e = grown_[g];
  copy_out_at_unmap(h);
  // Counted out while the slot keeps this set-up of the pool alive (after the free the entry may
  // be retired and set up again for another block at any moment).
  const bool emptied = __atomic_sub_fetch(&e.live, uint64_t{1}, __ATOMIC_ACQ_REL) == 0;
  auto r = pools_[idx]->free_data(h.bounce_first_slot, h.bounce_num_slots, h.bounce_cpu, h.size);
  KASSERT(r.ok(), "unmap_single: the bounce slot was not live (double unmap?)");
  if (!emptied) return;
  // Empty: given back only when the fixed pool it grew from has recovered (the hysteresis);
  // otherwise marked idle, and the fixed pools' unmaps give it back once it has.
  support::Guard<support::SpinLock> guard{&grow_lock_};
  // Whatever set-up g has by now: given back only if it is live and empty.
  if (__atomic_load_n(&e.state, __ATOMIC_RELAXED) != kGrownLive ||
      __atomic_load_n(&e.live, __ATOMIC_RELAXED) != 0) {
    return;
  }
  const uint64_t need = slots_needed(g);
  if (free_slots_estimate(e.parent) >= need && retire_grown(g)) return;
  __atomic_store_n(&e.idle_need, need, __ATOMIC_RELAXED);
  __atomic_store_n(&e.idle_parent, uint32_t{e.parent}, __ATOMIC_RELAXED);
  __atomic_fetch_or(&idle_grown_, uint32_t{1} << g, __ATOMIC_RELEASE);
}

uint64_t KernelDmaOp::slots_needed(size_t g) const {
  const BouncePool* fixed = pools_[grown_[g].parent];
  const uint64_t bytes = support::min<uint64_t>(pools_[kMaxPools + g]->bytes(), fixed->bytes() / 2);
  return (bytes + fixed->slot_size() - 1) / fixed->slot_size();
}

uint64_t KernelDmaOp::free_slots_estimate(size_t i) const {
  const BouncePool* pool = pools_[i];
  const uint64_t total = pool->bytes() / pool->slot_size();
  const uint64_t used = pool->used_slots_estimate();
  return used < total ? total - used : 0;
}

void KernelDmaOp::sweep_idle_grown() {
  // Without the lock first: does an idle pool look ready to go (its fixed pool recovered)? Its bit
  // was set after its idle_need and idle_parent were stored: acquire.
  uint32_t idle = __atomic_load_n(&idle_grown_, __ATOMIC_ACQUIRE);
  bool ready = false;
  for (size_t g = 0; g < max_grown_ && !ready; ++g) {
    if ((idle & (uint32_t{1} << g)) == 0) continue;
    const GrownPool& e = grown_[g];
    ready = free_slots_estimate(__atomic_load_n(&e.idle_parent, __ATOMIC_RELAXED)) >=
            __atomic_load_n(&e.idle_need, __ATOMIC_RELAXED);
  }
  if (!ready || !grow_lock_.try_lock()) return;
  idle = __atomic_load_n(&idle_grown_, __ATOMIC_RELAXED);
  for (size_t g = 0; g < max_grown_; ++g) {
    const uint32_t bit = uint32_t{1} << g;
    if ((idle & bit) == 0) continue;
    GrownPool& e = grown_[g];
    if (__atomic_load_n(&e.state, __ATOMIC_RELAXED) != kGrownLive ||
        __atomic_load_n(&e.live, __ATOMIC_RELAXED) != 0) {
      // In use again (its next emptying marks it again), or already gone.
      __atomic_fetch_and(&idle_grown_, ~bit, __ATOMIC_RELAXED);
      continue;
    }
    // Clears the bit when it succeeds.
    if (free_slots_estimate(e.parent) >= slots_needed(g)) (void)retire_grown(g);
  }
  grow_lock_.unlock();
}

Result<size_t> KernelDmaOp::trim_bounce_pools() {
  if (!initialized_) return ErrorCode::kInvalidArgument;
  size_t freed = 0;
  support::Guard<support::SpinLock> guard{&grow_lock_};
  for (size_t g = 0; g < max_grown_; ++g) {
    uint64_t before = grown_bytes_;
    if (retire_grown(g)) freed += static_cast<size_t>(before - grown_bytes_);
  }
  return freed;
}
