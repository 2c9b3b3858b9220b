// IommuDomain: the decision and the invalidation modes are described in include/dmakit/iommu.h.
#include "dmakit/dma_debug.h"
#include "dmakit/iommu.h"
#include "dmakit/support/assert.h"
#include "dmakit/support/bitops.h"
#include "dmakit/support/defer.h"

namespace {

constexpr uint64_t kPage = IoPageTable::kPageSize;

bool copies_out(DmaDirection d) {
  return d != DmaDirection::kToDevice;
}

// The direction a sync acts on: the mapping's own, narrowed by a bidirectional mapping's
// argument (the misuse checker reports a contradiction).
DmaDirection sync_direction(DmaDirection mapping, DmaDirection requested) {
  return mapping == DmaDirection::kBidirectional ? requested : mapping;
}

bool shares_cache_lines(const void* addr, size_t size, size_t line) {
  auto va = reinterpret_cast<uintptr_t>(addr);
  return ((va | (va + size)) & (line - 1)) != 0;
}

}  // namespace

Result<void> IommuDomain::init(const Config& cfg) {
  if (unit_ != nullptr || cfg.unit == nullptr || cfg.platform == nullptr || cfg.domain_id == 0 ||
      cfg.domain_id > cfg.unit->max_domains() ||
      cfg.num_reserved > sizeof(reserved_) / sizeof(reserved_[0]) ||
      (cfg.num_reserved > 0 && cfg.reserved == nullptr)) {
    return ErrorCode::kInvalidArgument;
  }
  PageFrameAllocator* pfa = cfg.platform->config().pfa;
  const IoPageTableFormat& fmt = cfg.unit->format();
  unsigned bits = cfg.unit->iova_bits();
  if (bits > 12 + 9 * unsigned{fmt.levels} || bits < 13) return ErrorCode::kInvalidArgument;
  uint64_t space = uint64_t{1} << bits;
  if (cfg.window_size == 0 || support::add_overflows(cfg.window_base, cfg.window_size) ||
      cfg.window_base >= space) {
    return ErrorCode::kInvalidArgument;
  }
  uint64_t end = support::min(cfg.window_base + cfg.window_size, space);
  TRY(pt_.init(IoPageTable::Config{&fmt, pfa, cfg.platform}));
  auto undo_pt = support::defer([&] { pt_.destroy(); });
  IovaAllocator::Config ic;
  ic.base = cfg.window_base;
  ic.end = end;
  ic.reserved = cfg.reserved;
  ic.num_reserved = cfg.num_reserved;
  ic.pfa = pfa;
  ic.num_cpus = cfg.num_cpus;
  TRY(iova_.init(ic));
  undo_pt.cancel();
  for (size_t i = 0; i < cfg.num_reserved; ++i) reserved_[i] = cfg.reserved[i];
  num_reserved_ = cfg.num_reserved;
  unit_ = cfg.unit;
  platform_ = cfg.platform;
  domain_id_ = cfg.domain_id;
  deferred_ = cfg.deferred;
  platform_coherent_ = cfg.platform->config().platform_coherent;
  cache_maintenance_ = cfg.platform->config().cache_maintenance;
  window_base_ = cfg.window_base;
  window_end_ = end;
  return support::ok();
}

Result<void> IommuDomain::destroy() {
  if (unit_ == nullptr) return support::ok();
  flush_deferred();
  if (live_mappings() != 0) return ErrorCode::kBusy;
  TRY(iova_.destroy());
  // Every device is detached (precondition); the fixed mappings go with the tables, and no
  // cached translation of them may outlive the tables.
  unit_->invalidate(domain_id_, 0, 0);
  pt_.destroy();
  unit_ = nullptr;
  return support::ok();
}

Result<void> IommuDomain::attach(uint32_t device_id) {
  return unit_->attach(device_id, domain_id_, pt_.root());
}

void IommuDomain::detach(uint32_t device_id) {
  unit_->detach(device_id);
}

Result<void> IommuDomain::map_fixed(uint64_t iova, PhysAddr pa, uint64_t size, unsigned perm) {
  if (size == 0 || !support::is_aligned(iova | pa.value() | size, kPage) ||
      support::add_overflows(iova, size)) {
    return ErrorCode::kLayoutError;
  }
  if (iova < window_end_ && iova + size > window_base_) {
    bool inside = false;
    for (size_t i = 0; i < num_reserved_; ++i) {
      uint64_t lo = support::align_down(reserved_[i].base, kPage);
      uint64_t hi = support::align_up(reserved_[i].base + reserved_[i].size, kPage);
      if (iova >= lo && iova + size <= hi) inside = true;
    }
    if (!inside) return ErrorCode::kInvalidArgument;
  }
  return map_pages(iova, pa, size, perm);
}

void IommuDomain::unmap_fixed(uint64_t iova, uint64_t size) {
  pt_.unmap(iova, size);
  unit_->invalidate(domain_id_, iova, size);
}

bool IommuDomain::snoops(const DmaConstraints& c) const {
  return c.coherence == DmaCoherence::kCoherent ||
         (c.coherence == DmaCoherence::kPlatformDefault && platform_coherent_);
}

uint64_t IommuDomain::limit_of(const DmaConstraints& c) const {
  return support::min(c.dma_mask, window_end_ - 1);
}

unsigned IommuDomain::perm_of(DmaDirection dir) {
  switch (dir) {
    case DmaDirection::kToDevice:
      return kIommuRead;
    case DmaDirection::kFromDevice:
      return kIommuWrite;
    case DmaDirection::kBidirectional:
      break;
  }
  return kIommuRead | kIommuWrite;
}

ErrorCode IommuDomain::check_request(const DmaConstraints& c, const void* addr, size_t size,
                                     size_t align, bool coherent) const {
  if (size == 0 || addr == nullptr || (align > 1 && !support::is_pow2(align)) ||
      support::add_overflows(reinterpret_cast<uintptr_t>(addr), size)) {
    return ErrorCode::kLayoutError;
  }
  if (c.dma_mask == 0 || c.bus_offset != 0) return ErrorCode::kInvalidArgument;
  if (!coherent && !cache_maintenance_) return ErrorCode::kNotSupported;
  return ErrorCode::kOk;
}

Result<uint64_t> IommuDomain::locate(const void* addr, size_t size) const {
  // The page-frame allocator's memory is reached through the direct map without a call; any
  // other buffer is translated page by page and must be contiguous.
  const PageFrameAllocator* pfa = platform_->config().pfa;
  uint64_t p = reinterpret_cast<uintptr_t>(addr) - platform_->config().direct_map_offset;
  if (p >= pfa->lowest_address().value() && p < pfa->highest_address().value() &&
      size <= pfa->highest_address().value() - p) {
    return p;
  }
  TRY_ASSIGN(PhysAddr first, platform_->virt_to_phys(addr));
  uintptr_t va = reinterpret_cast<uintptr_t>(addr);
  uintptr_t last = va + (size - 1);
  for (uintptr_t page = support::align_down(va, kPage) + kPage; page - 1 < last; page += kPage) {
    TRY_ASSIGN(PhysAddr pp,
               platform_->virt_to_phys(static_cast<const uint8_t*>(addr) + (page - va)));
    if (pp.value() != first.value() + (page - va)) {
      return Error(ErrorCode::kNotContiguous, page, 0);
    }
    if (page > last - kPage) break;
  }
  return first.value();
}

size_t IommuDomain::max_mapping_size(const DmaConstraints& c) const {
  const size_t iova_max = IovaAllocator::kMaxSize - IoPageTable::kPageSize;
  if (!c.force_bounce) return iova_max;
  DmaConstraints pc = c;  // As map_sg asks the platform for a forced bounce.
  pc.dma_mask = ~0ull;
  return support::min(iova_max, platform_->max_mapping_size(pc));
}

DmaMapHandle IommuDomain::platform_handle(const DmaMapHandle& h) const {
  DmaMapHandle ph = h;
  auto pa = platform_->virt_to_phys(h.bounce_cpu);
  KASSERT(pa.ok(), "IommuDomain: a bounce slot the platform cannot translate");
  ph.dma_addr = DmaAddr(pa->value());
  return ph;
}

Result<DmaMapHandle> IommuDomain::map_single(const DmaConstraints& c, void* addr, size_t size,
                                             size_t align, DmaDirection dir) {
  // The common case in line: a device that snoops, no alignment, a buffer of the page-frame
  // allocator's memory (reached through the direct map). Anything else is the general path,
  // a list of one piece.
  const PageFrameAllocator* pfa = platform_->config().pfa;
  uint64_t p = reinterpret_cast<uintptr_t>(addr) - platform_->config().direct_map_offset;
  if (align > 1 || !snoops(c) || c.force_bounce || c.dma_mask == 0 || c.bus_offset != 0 ||
      addr == nullptr || size == 0 || p < pfa->lowest_address().value() ||
      p >= pfa->highest_address().value() || size > pfa->highest_address().value() - p)
      [[unlikely]] {
    DmaMapHandle h;
    h.cpu_addr = addr;
    h.size = size;
    TRY(map_sg(c, &h, 1, align, dir));
    return h;
  }
  uint64_t off = p & (kPage - 1);
  uint64_t span = support::align_up(off + size, kPage);
  if (span > IovaAllocator::kMaxSize) return ErrorCode::kLayoutError;
  TRY_ASSIGN(uint64_t iova, iova_.alloc(span, limit_of(c)));
  auto r = map_pages(iova, PhysAddr(p - off), span, perm_of(dir));
  if (!r.ok()) [[unlikely]] {
    iova_.free(iova, span);
    return r.error();
  }
  DmaMapHandle h;
  h.cpu_addr = addr;
  h.dma_addr = DmaAddr(iova + off);
  h.size = size;
  h.device_id = c.device_id;
  h.direction = dir;
  h.coherent_device = true;
  DmaDebug::on_map(this, c, h, __builtin_return_address(0));
  count_live(1);
  return h;
}

void IommuDomain::unmap_single(const DmaMapHandle& h) {
  if (h.bounced() || !h.coherent_device) [[unlikely]] {
    unmap_sg(&h, 1);
    return;
  }
  if (!DmaDebug::on_unmap(this, h)) return;  // Misuse, reported: refused.
  uint64_t start = support::align_down(h.dma_addr.value(), kPage);
  release(start, support::align_up(h.dma_addr.value() + h.size, kPage) - start);
  count_live(-1);
}

Result<void> IommuDomain::map_sg(const DmaConstraints& c, DmaMapHandle* handles, size_t n,
                                 size_t align, DmaDirection dir) {
  return map_pieces(c, handles, n, align, dir, /*skip=*/false);
}

Result<DmaMapHandle> IommuDomain::map_single_attrs(const DmaConstraints& c, void* addr, size_t size,
                                                   size_t align, DmaDirection dir, DmaAttrs attrs) {
  if ((attrs & ~kDmaAttrsMap) != 0) return ErrorCode::kInvalidArgument;
  if ((attrs & kDmaAttrSkipCpuSync) == 0) return map_single(c, addr, size, align, dir);
  DmaMapHandle h;
  h.cpu_addr = addr;
  h.size = size;
  TRY(map_pieces(c, &h, 1, align, dir, /*skip=*/true));
  return h;
}

Result<void> IommuDomain::map_pieces(const DmaConstraints& c, DmaMapHandle* handles, size_t n,
                                     size_t align, DmaDirection dir, bool skip) {
  if (n == 0) return ErrorCode::kLayoutError;
  const bool coherent = snoops(c);
  const size_t line = platform_->cache_alignment();
  // First pass: check every piece, find its physical address (bouncing the receive buffers that
  // share cache lines), and add up the I/O address span.
  size_t done = 0;
  auto unbounce = support::defer([&] {
    for (size_t i = 0; i < done; ++i) {
      if (handles[i].bounced()) platform_->unmap_single(platform_handle(handles[i]));
    }
  });
  uint64_t span = 0;
  uint64_t prev_end = 0;  // Physical end of the previous piece, 0 when it was bounced.
  for (; done < n; ++done) {
    DmaMapHandle& h = handles[done];
    void* addr = h.cpu_addr;
    size_t size = h.size;
    ErrorCode bad = check_request(c, addr, size, align, coherent);
    if (bad != ErrorCode::kOk) return bad;
    uint64_t p = 0;
    if (c.force_bounce || (!coherent && copies_out(dir) && shares_cache_lines(addr, size, line))) {
      DmaConstraints pc = c;
      pc.dma_mask = ~0ull;
      pc.force_bounce = true;
      TRY_ASSIGN(h, platform_->map_single_attrs(pc, addr, size, 0, dir,
                                                skip ? kDmaAttrSkipCpuSync : DmaAttrs{0}));
      p = h.dma_addr.value();
    } else {
      TRY_ASSIGN(p, locate(addr, size));
      h = DmaMapHandle{};
      h.cpu_addr = addr;
      h.size = size;
    }
    h.dma_addr = DmaAddr(p);
    if (prev_end != 0 && !h.bounced() && p == prev_end) {
      span += size;
    } else {
      span = support::align_up(span, kPage) + (p & (kPage - 1)) + size;
    }
    prev_end = h.bounced() ? 0 : p + size;
  }
  span = support::align_up(span, kPage);
  if (span > IovaAllocator::kMaxSize) return ErrorCode::kLayoutError;
  if (align > (kPage << IovaAllocator::order_of(span))) return ErrorCode::kLayoutError;

  TRY_ASSIGN(uint64_t iova, iova_.alloc(span, limit_of(c)));
  auto free_iova = support::defer([&] { iova_.free(iova, span); });
  // Second pass: map each run of physically continuing pieces, and give each piece its address.
  const unsigned perm = perm_of(dir);
  uint64_t cursor = 0;  // Offset in the range of the next free page.
  uint64_t run_iova = 0;
  uint64_t run_pa = 0;
  uint64_t run_end = 0;
  bool have_run = false;
  prev_end = 0;
  size_t mapped_runs_end = 0;  // Bytes of the range mapped so far (from its start).
  auto unmap_pages = support::defer([&] {
    if (mapped_runs_end > 0) pt_.unmap(iova, mapped_runs_end);
  });
  auto flush_run = [&]() -> Result<void> {
    if (!have_run) return support::ok();
    uint64_t first = support::align_down(run_pa, kPage);
    uint64_t bytes = support::align_up(run_end, kPage) - first;
    uint64_t at = support::align_down(run_iova, kPage);
    TRY(map_pages(at, PhysAddr(first), bytes, perm));
    mapped_runs_end = at + bytes - iova;
    return support::ok();
  };
  for (size_t i = 0; i < n; ++i) {
    DmaMapHandle& h = handles[i];
    uint64_t p = h.dma_addr.value();
    uint64_t off;
    if (have_run && prev_end != 0 && !h.bounced() && p == prev_end) {
      off = run_iova - iova + (p - run_pa);
      run_end = p + h.size;
    } else {
      TRY(flush_run());
      off = cursor + (p & (kPage - 1));
      run_iova = iova + off;
      run_pa = p;
      run_end = p + h.size;
      have_run = true;
    }
    cursor = support::align_up(off + h.size, kPage);
    prev_end = h.bounced() ? 0 : p + h.size;
    h.dma_addr = DmaAddr(iova + off);
    if (align > 1 && !support::is_aligned(h.dma_addr.value(), align)) {
      return ErrorCode::kLayoutError;
    }
  }
  TRY(flush_run());
  unmap_pages.cancel();
  free_iova.cancel();
  unbounce.cancel();
  for (size_t i = 0; i < n; ++i) {
    DmaMapHandle& h = handles[i];
    if (!coherent && !h.bounced() && !skip) platform_->flush(h.cpu_addr, h.size);
    h.skip_cpu_sync = skip;
    h.device_id = c.device_id;
    h.direction = dir;
    h.coherent_device = coherent;
    DmaDebug::on_map(this, c, h, __builtin_return_address(0));
  }
  count_live(static_cast<int64_t>(n));
  return support::ok();
}

void IommuDomain::unmap_sg(const DmaMapHandle* handles, size_t n) {
  if (n == 0) return;
  bool ok = DmaDebug::on_unmap(this, handles[0]);
  for (size_t i = 1; i < n; ++i) ok = DmaDebug::on_unmap(this, handles[i]) && ok;
  if (!ok) return;  // Misuse, reported: refused.
  uint64_t start = support::align_down(handles[0].dma_addr.value(), kPage);
  uint64_t end = 0;
  for (size_t i = 0; i < n; ++i) {
    end = support::max<uint64_t>(end, handles[i].dma_addr.value() + handles[i].size);
  }
  // The device loses access first; only then does the CPU take the data back.
  release(start, support::align_up(end, kPage) - start);
  for (size_t i = 0; i < n; ++i) {
    const DmaMapHandle& h = handles[i];
    if (h.bounced()) {
      platform_->unmap_single(platform_handle(h));
    } else if (copies_out(h.direction) && !h.coherent_device && !h.skip_cpu_sync) {
      platform_->invalidate(h.cpu_addr, h.size);
    }
  }
  count_live(-static_cast<int64_t>(n));
}

void IommuDomain::release(uint64_t iova, uint64_t bytes) {
  pt_.unmap(iova, bytes);
  if (!deferred_) {
    unit_->invalidate(domain_id_, iova, bytes);
    iova_.free(iova, bytes);
    return;
  }
  support::Guard guard{&queue_lock_};
  if (queued_ == kFlushQueueSize) flush_queue_locked();
  queue_[queued_++] = Pending{iova, bytes};
}

void IommuDomain::flush_queue_locked() {
  if (queued_ == 0) return;
  unit_->invalidate(domain_id_, 0, 0);
  for (size_t i = 0; i < queued_; ++i) iova_.free(queue_[i].iova, queue_[i].size);
  queued_ = 0;
}

void IommuDomain::flush_deferred() {
  support::Guard guard{&queue_lock_};
  flush_queue_locked();
}

size_t IommuDomain::deferred_pending() const {
  support::Guard guard{&queue_lock_};
  return queued_;
}

Result<DmaHandle> IommuDomain::alloc_coherent(const DmaConstraints& c, Layout layout) {
  return alloc_mapped(c, layout, /*noncoherent=*/false);
}

Result<DmaHandle> IommuDomain::alloc_noncoherent(const DmaConstraints& c, Layout layout) {
  return alloc_mapped(c, layout, /*noncoherent=*/true);
}

Result<DmaHandle> IommuDomain::alloc_mapped(const DmaConstraints& c, Layout layout,
                                            bool noncoherent) {
  if (c.dma_mask == 0 || c.bus_offset != 0) return ErrorCode::kInvalidArgument;
  DmaConstraints pc = c;
  pc.dma_mask = ~0ull;
  TRY_ASSIGN(DmaHandle h, noncoherent ? platform_->alloc_noncoherent(pc, layout)
                                      : platform_->alloc_coherent(pc, layout));
  uint64_t bytes = kPage << h.order;
  auto give_back = support::defer([&] {
    if (noncoherent) {
      platform_->dealloc_noncoherent(h);
    } else {
      platform_->dealloc_coherent(h);
    }
  });
  if (bytes > IovaAllocator::kMaxSize) return ErrorCode::kLayoutError;
  TRY_ASSIGN(uint64_t iova, iova_.alloc(bytes, limit_of(c)));
  auto r = map_pages(iova, h.phys, bytes, kIommuRead | kIommuWrite);
  if (!r.ok()) {
    iova_.free(iova, bytes);
    return r.error();
  }
  give_back.cancel();
  h.dma_addr = DmaAddr(iova);
  DmaDebug::on_alloc_coherent(this, c, h, __builtin_return_address(0));
  count_live(1);
  return h;
}

void IommuDomain::dealloc_coherent(const DmaHandle& h) {
  dealloc_mapped(h, /*noncoherent=*/false);
}

void IommuDomain::dealloc_noncoherent(const DmaHandle& h) {
  dealloc_mapped(h, /*noncoherent=*/true);
}

void IommuDomain::dealloc_mapped(const DmaHandle& h, bool noncoherent) {
  if (!DmaDebug::on_dealloc_coherent(this, h)) return;  // Misuse, reported: refused.
  uint64_t bytes = kPage << h.order;
  // Strict in both modes: the pages go back to the allocator now.
  pt_.unmap(h.dma_addr.value(), bytes);
  unit_->invalidate(domain_id_, h.dma_addr.value(), bytes);
  iova_.free(h.dma_addr.value(), bytes);
  DmaHandle ph = h;
  ph.dma_addr = DmaAddr(h.phys.value());
  if (noncoherent) {
    platform_->dealloc_noncoherent(ph);
  } else {
    platform_->dealloc_coherent(ph);
  }
  count_live(-1);
}

Result<void> IommuDomain::prepare_read(const DmaMapHandle& h, size_t offset, size_t size,
                                       DmaDirection dir) {
  ErrorCode misuse = DmaDebug::on_sync(this, h, offset, size, dir, DmaSyncCall::kPrepareRead);
  if (misuse != ErrorCode::kOk) return misuse;  // Reported.
  if (offset > h.size || size > h.size - offset) return ErrorCode::kOutOfRange;
  if (h.bounced()) return platform_->prepare_read(platform_handle(h), offset, size, dir);
  if (!copies_out(sync_direction(h.direction, dir)) || size == 0) return support::ok();
  if (!h.coherent_device) platform_->invalidate(static_cast<uint8_t*>(h.cpu_addr) + offset, size);
  return support::ok();
}

Result<void> IommuDomain::confirm_write(const DmaMapHandle& h, size_t offset, size_t size,
                                        DmaDirection dir) {
  ErrorCode misuse = DmaDebug::on_sync(this, h, offset, size, dir, DmaSyncCall::kConfirmWrite);
  if (misuse != ErrorCode::kOk) return misuse;  // Reported.
  if (offset > h.size || size > h.size - offset) return ErrorCode::kOutOfRange;
  if (h.bounced()) return platform_->confirm_write(platform_handle(h), offset, size, dir);
  if (size == 0) return support::ok();
  // Cleaned whatever the direction, as KernelDmaOp does: no dirty line may be evicted later
  // over what the device writes.
  if (!h.coherent_device) platform_->flush(static_cast<uint8_t*>(h.cpu_addr) + offset, size);
  return support::ok();
}

bool IommuDomain::overlaps_ram(uint64_t p, uint64_t size) const {
  // The platform refuses to give MMIO addresses for exactly the ranges that overlap its RAM; the
  // probe has a full mask and no offset, so no other error can come back for a valid range.
  DmaConstraints probe;
  probe.dma_mask = ~0ull;
  return platform_->map_resource(probe, PhysAddr(p), size, DmaDirection::kBidirectional).code() ==
         ErrorCode::kInvalidArgument;
}

Result<DmaMapHandle> IommuDomain::map_page(const DmaConstraints& c, PhysAddr page, size_t offset,
                                           size_t size, DmaDirection dir) {
  if ((page.value() & (kPage - 1)) != 0) return ErrorCode::kInvalidArgument;
  if (offset >= kPage || size > kPage - offset) return ErrorCode::kOutOfRange;
  if (size == 0) return ErrorCode::kLayoutError;
  if (!overlaps_ram(page.value(), kPage)) return ErrorCode::kInvalidArgument;
  // The page's direct-map address stands for the caller's missing one, as for KernelDmaOp.
  void* va = static_cast<uint8_t*>(platform_->phys_to_virt(page)) + offset;
  return map_single(c, va, size, 0, dir);
}

Result<DmaAddr> IommuDomain::map_resource(const DmaConstraints& c, PhysAddr phys, size_t size,
                                          DmaDirection dir) {
  uint64_t p = phys.value();
  if (size == 0 || support::add_overflows(p, uint64_t{size} - 1)) return ErrorCode::kLayoutError;
  if (c.dma_mask == 0 || c.bus_offset != 0) return ErrorCode::kInvalidArgument;
  if (overlaps_ram(p, size)) return ErrorCode::kInvalidArgument;
  uint64_t first = support::align_down(p, kPage);
  uint64_t last = p + (size - 1);
  if (last - first >= IovaAllocator::kMaxSize) return ErrorCode::kLayoutError;
  uint64_t span = support::align_down(last, kPage) + kPage - first;
  TRY_ASSIGN(uint64_t iova, iova_.alloc(span, limit_of(c)));
  auto r = map_pages(iova, PhysAddr(first), span, perm_of(dir));
  if (!r.ok()) {
    iova_.free(iova, span);
    return r.error();
  }
  count_live(1);
  return DmaAddr(iova + (p - first));
}

void IommuDomain::unmap_resource(const DmaConstraints& c, DmaAddr addr, size_t size,
                                 DmaDirection dir) {
  (void)c;
  (void)dir;
  uint64_t first = support::align_down(addr.value(), kPage);
  uint64_t end = support::align_down(addr.value() + (size - 1), kPage) + kPage;
  // Strict in both modes: the peer's registers must not stay reachable after the return.
  pt_.unmap(first, end - first);
  unit_->invalidate(domain_id_, first, end - first);
  iova_.free(first, end - first);
  count_live(-1);
}

Result<void> IommuDomain::check_mask(const DmaConstraints& c, DmaMaskKind kind) const {
  // Streaming buffers, bounce slots and coherent pages all get an IOVA: both kinds need one page
  // of the window under the mask.
  (void)kind;
  if (c.dma_mask == 0 || c.bus_offset != 0) return ErrorCode::kInvalidArgument;
  if (c.dma_mask < window_base_ + (kPage - 1)) {
    return Error(ErrorCode::kDmaMaskNotMatch, window_base_, c.dma_mask);
  }
  return support::ok();
}

uint64_t IommuDomain::required_mask(const DmaConstraints& c) const {
  (void)c;
  uint64_t top = window_end_ - 1;
  unsigned bits = 64 - static_cast<unsigned>(__builtin_clzll(top | 1));
  return bits >= 64 ? ~0ull : (uint64_t{1} << bits) - 1;
}

bool IommuDomain::need_sync(const DmaConstraints& c, DmaAddr addr) const {
  if (!snoops(c)) return true;
  uint64_t pte = pt_.lookup(addr.value());
  if (pte == 0) return true;  // Not a mapping of ours: the safe answer.
  uint64_t pa = unit_->format().entry_addr(pte) | (addr.value() & (kPage - 1));
  // The platform answers whether that page is a bounce slot's (a snooping device, no offset).
  DmaConstraints pc;
  pc.dma_mask = ~0ull;
  pc.coherence = DmaCoherence::kCoherent;
  return platform_->need_sync(pc, DmaAddr(pa));
}

size_t IommuDomain::opt_mapping_size(const DmaConstraints& c) const {
  // The per-CPU caches hold ranges of up to 2^(kCacheOrders - 1) pages; a larger range takes the
  // shared buddy layer's lock.
  size_t cached = size_t{IovaAllocator::kPageSize} << (IovaAllocator::kCacheOrders - 1);
  return support::min(cached, max_mapping_size(c));
}
