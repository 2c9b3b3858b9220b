#include "dmakit/scatter_gather.h"

#include "dmakit/support/bitops.h"
#include "dmakit/support/defer.h"

namespace {

struct Piece {
  uint8_t* addr = nullptr;
  size_t size = 0;
};

// Splits a buffer into its partial first line, its whole lines and its partial last line (the
// partial ones only where they exist), when the whole lines come to at least kSplitMin bytes.
// Returns the number of pieces (1: not split, pieces[0] is the buffer).
size_t split_at_lines(const SgEntry& e, size_t line, Piece pieces[3]) {
  auto va = reinterpret_cast<uintptr_t>(e.addr);
  uintptr_t mid_start = support::align_up(va, line);
  uintptr_t end = va + e.size;
  uintptr_t mid_end = end & ~(uintptr_t{line} - 1);
  if (mid_end <= mid_start || mid_end - mid_start < SgMapping::kSplitMin) return 1;
  auto* base = static_cast<uint8_t*>(e.addr);
  size_t n = 0;
  if (mid_start != va) pieces[n++] = Piece{base, mid_start - va};
  pieces[n++] = Piece{base + (mid_start - va), mid_end - mid_start};
  if (mid_end != end) pieces[n++] = Piece{base + (mid_end - va), end - mid_end};
  return n;
}

}  // namespace

SgMapping::SgMapping(SgMapping&& o)
    : op_(support::exchange(o.op_, nullptr)),
      handles_(o.handles_),
      num_handles_(o.num_handles_),
      segments_(o.segments_),
      num_segments_(o.num_segments_),
      dir_(o.dir_) {}

SgMapping& SgMapping::operator=(SgMapping&& o) {
  if (this != &o) {
    unmap();
    op_ = support::exchange(o.op_, nullptr);
    handles_ = o.handles_;
    num_handles_ = o.num_handles_;
    segments_ = o.segments_;
    num_segments_ = o.num_segments_;
    dir_ = o.dir_;
  }
  return *this;
}

Result<SgMapping> SgMapping::map(const DeviceDma& dev, support::Span<const SgEntry> entries,
                                 DmaDirection dir, const SgLimits& limits,
                                 support::Span<DmaMapHandle> handles,
                                 support::Span<DmaSegment> segments) {
  if (entries.empty() || limits.max_segment_size == 0) return ErrorCode::kLayoutError;
  uint64_t boundary = limits.segment_boundary_mask;
  if (boundary != ~0ull && !support::is_pow2(boundary + 1)) return ErrorCode::kLayoutError;
  if (handles.size() < entries.size()) return ErrorCode::kOutOfRange;
  for (const SgEntry& e : entries) {
    if (e.size == 0) return ErrorCode::kLayoutError;
  }

  DmaOp* op = dev.op();
  const DmaConstraints& c = dev.constraints();
  size_t mapped = 0;
  // Storage beyond one handle and one segment per buffer, spent on splitting.
  size_t spare_handles = handles.size() - entries.size();
  size_t spare_segments = segments.size() > entries.size() ? segments.size() - entries.size() : 0;
  bool may_split = !dev.coherent() && !c.force_bounce && dir != DmaDirection::kToDevice;
  const size_t line = op->cache_alignment();
  for (const SgEntry& e : entries) {
    Piece pieces[3];
    size_t n = 1;
    pieces[0] = Piece{static_cast<uint8_t*>(e.addr), e.size};
    if (may_split) n = split_at_lines(e, line, pieces);
    if (n - 1 > spare_handles || n - 1 > spare_segments) {
      n = 1;
      pieces[0] = Piece{static_cast<uint8_t*>(e.addr), e.size};
    }
    spare_handles -= n - 1;
    spare_segments -= n - 1;
    for (size_t i = 0; i < n; ++i) {
      handles[mapped] = DmaMapHandle{};
      handles[mapped].cpu_addr = pieces[i].addr;
      handles[mapped].size = pieces[i].size;
      ++mapped;
    }
  }
  TRY(op->map_sg(c, handles.data(), mapped, limits.align, dir));
  auto undo = support::defer([&] { op->unmap_sg(handles.data(), mapped); });

  // Emit segments: merge touching mappings, split at the size limit and at boundaries.
  size_t n = 0;
  for (size_t i = 0; i < mapped; ++i) {
    uint64_t addr = handles[i].dma_addr.value();
    uint64_t left = handles[i].size;
    while (left > 0) {
      bool merge = n > 0 && segments[n - 1].addr.value() + segments[n - 1].size == addr;
      uint64_t start = merge ? segments[n - 1].addr.value() : addr;
      uint64_t have = merge ? segments[n - 1].size : 0;
      // Room left in the segment that starts at `start`: size limit and boundary.
      uint64_t room = limits.max_segment_size - have;
      if (boundary != ~0ull) {
        uint64_t to_boundary = (start | boundary) - start + 1;  // Bytes up to the next boundary.
        room = support::min(room, to_boundary - have);
      }
      if (merge && room == 0) merge = false;
      if (!merge) {
        if (n == segments.size()) return ErrorCode::kOutOfRange;
        segments[n++] = DmaSegment{DmaAddr(addr), 0};
        room = limits.max_segment_size;
        if (boundary != ~0ull) room = support::min(room, (addr | boundary) - addr + 1);
      }
      uint64_t take = support::min(room, left);
      segments[n - 1].size += take;
      addr += take;
      left -= take;
    }
  }

  undo.cancel();
  SgMapping m;
  m.op_ = op;
  m.handles_ = handles;
  m.num_handles_ = mapped;
  m.segments_ = segments;
  m.num_segments_ = n;
  m.dir_ = dir;
  return m;
}

Result<void> SgMapping::sync_for_cpu() {
  if (op_ == nullptr) return ErrorCode::kInvalidArgument;
  for (size_t i = 0; i < num_handles_; ++i) {
    TRY(op_->prepare_read(handles_[i], 0, handles_[i].size, dir_));
  }
  return support::ok();
}

Result<void> SgMapping::sync_for_device() {
  if (op_ == nullptr) return ErrorCode::kInvalidArgument;
  for (size_t i = 0; i < num_handles_; ++i) {
    TRY(op_->confirm_write(handles_[i], 0, handles_[i].size, dir_));
  }
  return support::ok();
}

void SgMapping::unmap() {
  if (op_ == nullptr) return;
  op_->unmap_sg(handles_.data(), num_handles_);
  op_ = nullptr;
}

Result<void> DmaOp::map_sg(const DmaConstraints& c, DmaMapHandle* handles, size_t n, size_t align,
                           DmaDirection dir) {
  size_t mapped = 0;
  auto undo = support::defer([&] {
    for (size_t i = 0; i < mapped; ++i) unmap_single(handles[i]);
  });
  for (; mapped < n; ++mapped) {
    TRY_ASSIGN(handles[mapped],
               map_single(c, handles[mapped].cpu_addr, handles[mapped].size, align, dir));
  }
  undo.cancel();
  return support::ok();
}

void DmaOp::unmap_sg(const DmaMapHandle* handles, size_t n) {
  for (size_t i = 0; i < n; ++i) unmap_single(handles[i]);
}
