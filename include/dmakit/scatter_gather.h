// Scatter-gather mapping: a list of CPU buffers mapped in one call, turned into the shortest list
// of device segments the device's limits allow.
//
// Scheme: each buffer is mapped with DmaOp::map_single (direct or bounced, as the mask decides);
// then one pass over the mappings emits segments, merging a mapping into the previous segment
// when their DMA addresses touch, and splitting wherever a segment would exceed
// max_segment_size or cross a multiple of (segment_boundary_mask + 1). O(buffers + segments).
// On any error every mapping made so far is undone: nothing stays mapped.
//
// Receive buffers of a non-coherent device that share their first or last cache line with other
// data (not aligned to DmaOp::cache_alignment() at both ends) would be bounced whole by
// map_single. Here a large one (an aligned middle of at least kSplitMin bytes) is split instead:
// each partial edge line is mapped on its own (and bounced: a few bytes copied) and the aligned
// middle is mapped directly, at the cost of up to two more mappings and segments. A buffer is
// split only while the caller's handle and segment storage has room for it; otherwise it is
// mapped whole.
//
// Calling contexts (dmakit/dma_op.h): every function here (map, the syncs, unmap, the
// destructors, moves and accessors) is any context, like map_single and unmap_single.
#pragma once

#include "dmakit/device_dma.h"
#include "dmakit/support/span.h"

// One CPU buffer of a scatter-gather list.
struct SgEntry {
  void* addr = nullptr;
  size_t size = 0;
};

// One device segment: what goes into a descriptor.
struct DmaSegment {
  DmaAddr addr;
  size_t size = 0;
};

// What the device's descriptors can express.
struct SgLimits {
  size_t max_segment_size = ~size_t{0};
  // A segment never contains both x and y with x / (mask + 1) != y / (mask + 1).
  // ~0 for no boundary; otherwise a power of two minus one.
  uint64_t segment_boundary_mask = ~0ull;
  // Alignment each buffer's DMA address must have (passed to map_single), 0 for none.
  size_t align = 0;
};

// A live scatter-gather mapping over caller-provided storage (no heap in the kernel). Move-only;
// the destructor unmaps every buffer.
class SgMapping {
 public:
  SgMapping() = default;
  SgMapping(SgMapping&& o);
  SgMapping& operator=(SgMapping&& o);
  SgMapping(const SgMapping&) = delete;
  SgMapping& operator=(const SgMapping&) = delete;
  ~SgMapping() { unmap(); }

  // A receive buffer is split at its partial edge lines when its aligned middle is this large.
  static constexpr size_t kSplitMin = 4096;

  // Maps `entries` for `dir` on `dev`. `handles` must hold at least entries.size() elements (up
  // to 3 * entries.size() are used to split receive buffers that share cache lines, see above)
  // and `segments` room for the result (entries.size() suffices unless the limits split
  // buffers). Both stay owned by the caller and must outlive the mapping.
  // Errors: kLayoutError (no entries, an entry of size 0, bad limits), kOutOfRange (handles or
  // segments too small), and any map_single error (kDmaMaskNotMatch, kNoMemory, ...). On error
  // nothing is mapped.
  static Result<SgMapping> map(const DeviceDma& dev, support::Span<const SgEntry> entries,
                               DmaDirection dir, const SgLimits& limits,
                               support::Span<DmaMapHandle> handles,
                               support::Span<DmaSegment> segments);

  // The device segments, in order.
  support::Span<const DmaSegment> segments() const {
    return support::Span<const DmaSegment>(segments_.data(), num_segments_);
  }
  // Number of streaming mappings behind the segments: one per buffer, plus one per partial edge
  // line split off a receive buffer.
  size_t num_buffers() const { return num_handles_; }
  bool valid() const { return op_ != nullptr; }

  // DmaOp::prepare_read / confirm_write on every buffer.
  Result<void> sync_for_cpu();
  Result<void> sync_for_device();

  // Unmaps every buffer now. Idempotent.
  void unmap();

 private:
  DmaOp* op_ = nullptr;
  support::Span<DmaMapHandle> handles_;
  size_t num_handles_ = 0;
  support::Span<DmaSegment> segments_;
  size_t num_segments_ = 0;
  DmaDirection dir_ = DmaDirection::kToDevice;
};

// An SgMapping with inline storage for up to N buffers and S segments (by default room for
// every buffer to be split at both edge lines).
template <size_t N, size_t S = 3 * N>
class SgList {
 public:
  // See SgMapping::map. Errors as there; kOutOfRange when more than N entries or S segments.
  Result<void> map(const DeviceDma& dev, support::Span<const SgEntry> entries, DmaDirection dir,
                   const SgLimits& limits = SgLimits{}) {
    mapping_.unmap();
    if (entries.size() > N) return ErrorCode::kOutOfRange;
    TRY_ASSIGN(mapping_, SgMapping::map(dev, entries, dir, limits,
                                        support::Span<DmaMapHandle>(handles_, kHandles),
                                        support::Span<DmaSegment>(segments_, S)));
    return support::ok();
  }
  SgMapping& mapping() { return mapping_; }
  support::Span<const DmaSegment> segments() const { return mapping_.segments(); }

  SgList() = default;
  SgList(const SgList&) = delete;
  SgList& operator=(const SgList&) = delete;

 private:
  // Room to split every buffer at both edge lines.
  static constexpr size_t kHandles = 3 * N;
  DmaMapHandle handles_[kHandles];
  DmaSegment segments_[S];
  SgMapping mapping_;  // Last: unmapped before the storage goes.
};
