// DmaPool: see dma_pool.h for the scheme.
#include "dmakit/dma_pool.h"

#include "dmakit/support/bitops.h"
#include "dmakit/support/mem.h"

namespace {

constexpr uint8_t kPoison = 0xA5;
// The smallest stride: a page-sized chunk then has at most kMaxBlocksPerChunk blocks, what a
// chunk record's bitmap tracks.
constexpr size_t kMinStride = 8;

// The misuse checker's context check (dmakit/dma_debug.h, kWrongContext) for the pool's
// thread-only calls, which may grow the pool; a constant true in a release build.
bool thread_context_ok(const char* function, const DeviceDma* dev) {
  return DmaDebug::thread_context_ok(function, dev->constraints().name,
                                     dev->constraints().device_id);
}

}  // namespace

DmaPool::~DmaPool() {
  {
    support::Guard<support::SpinLock> guard{&lock_};
    KASSERT(in_use_ == 0, "DmaPool destroyed with blocks still allocated");
    KASSERT(pending_mask_ == 0, "DmaPool destroyed while another CPU grows it");
  }
  for (;;) {
    DmaHandle h;
    {
      support::Guard<support::SpinLock> guard{&lock_};
      if (live_mask_ == 0) break;
      size_t slot = support::ctz(live_mask_);
      live_mask_ &= ~bit(slot);
      room_mask_ &= ~bit(slot);
      free_blocks_ -= chunks_[slot].free_count;
      --num_chunks_;
      h = chunks_[slot].handle;
    }
    dev_->op()->dealloc_coherent(h);
  }
}

Result<void> DmaPool::init(DeviceDma* dev, size_t block_size, size_t align, size_t boundary,
                           const char* name) {
  if (dev_ != nullptr || dev == nullptr) return ErrorCode::kInvalidArgument;
  if (!thread_context_ok("DmaPool::init", dev)) return ErrorCode::kBusy;
  if (align == 0) align = 1;
  if (block_size == 0 || !support::is_pow2(align)) return ErrorCode::kLayoutError;
  if (boundary != 0 && !support::is_pow2(boundary)) return ErrorCode::kLayoutError;
  if (block_size > kMaxChunkSize || align > kMaxChunkSize) return ErrorCode::kLayoutError;
  size_t a = support::max(align, kMinStride);
  size_t stride = support::align_up(block_size, a);
  if (stride > kMaxChunkSize) return ErrorCode::kLayoutError;
  // Between two boundaries there must be room for one block, aligned: the stride.
  if (boundary != 0 && boundary < stride) return ErrorCode::kLayoutError;
  size_t chunk =
      support::max<size_t>(dev->op()->page_size(), size_t{1} << support::log2_ceil(stride));
  // A chunk is cut into segments that no block crosses: boundary-sized ones, or the whole chunk
  // when the boundary is as large (a chunk aligned to its size then lies between two boundaries).
  size_t segment = boundary == 0 ? chunk : support::min(boundary, chunk);
  // Chunks are aligned to their size in physical memory; the layout holds for DMA addresses
  // only if the bus offset keeps that alignment.
  size_t needed = boundary == 0 ? a : segment;
  if (dev->constraints().bus_offset % needed != 0) return ErrorCode::kLayoutError;
  size_t per_segment = ((segment - block_size) / stride) + 1;
  dev_ = dev;
  name_ = name;
  block_size_ = block_size;
  stride_ = stride;
  segment_ = segment;
  per_segment_ = per_segment;
  chunk_size_ = chunk;
  dma_align_ = needed;
  blocks_per_chunk_ = support::min((chunk / segment) * per_segment, kMaxBlocksPerChunk);
  return support::ok();
}

DmaPoolBlock DmaPool::take_locked() {
  size_t slot = support::ctz(room_mask_);
  ChunkRecord& c = chunks_[slot];
  size_t w = 0;
  while (c.free_bits[w] == 0) {
    ++w;
    KASSERT(w < kBitmapWords, "DmaPool: a chunk with room has no free block");
  }
  size_t i = (w * 64) + support::ctz(c.free_bits[w]);
  c.free_bits[w] &= c.free_bits[w] - 1;
  if (--c.free_count == 0) room_mask_ &= ~bit(slot);
  --free_blocks_;
  ++in_use_;
  size_t off = block_offset(i);
  return DmaPoolBlock{static_cast<uint8_t*>(c.handle.cpu_addr) + off, c.handle.dma_addr + off};
}

Result<size_t> DmaPool::claim_slot_locked() {
  uint64_t unused = ~(live_mask_ | pending_mask_);
  if constexpr (kMaxChunks < 64) unused &= bit(kMaxChunks) - 1;
  if (unused == 0) return ErrorCode::kNoMemory;
  size_t slot = support::ctz(unused);
  pending_mask_ |= bit(slot);
  return slot;
}

void DmaPool::install_locked(size_t slot, const DmaHandle& h) {
  KASSERT((pending_mask_ & bit(slot)) != 0, "DmaPool: installing a chunk in an unclaimed slot");
  ChunkRecord& c = chunks_[slot];
  c.handle = h;
  for (size_t w = 0; w < kBitmapWords; ++w) {
    size_t first = w * 64;
    size_t n = blocks_per_chunk_ > first ? support::min<size_t>(blocks_per_chunk_ - first, 64) : 0;
    c.free_bits[w] = n == 64 ? ~uint64_t{0} : bit(n) - 1;
  }
  c.free_count = blocks_per_chunk_;
  pending_mask_ &= ~bit(slot);
  live_mask_ |= bit(slot);
  room_mask_ |= bit(slot);
  free_blocks_ += blocks_per_chunk_;
  ++num_chunks_;
}

size_t DmaPool::slot_of_locked(const void* cpu) const {
  auto p = reinterpret_cast<uintptr_t>(cpu);
  for (uint64_t m = live_mask_; m != 0; m &= m - 1) {
    size_t slot = support::ctz(m);
    auto base = reinterpret_cast<uintptr_t>(chunks_[slot].handle.cpu_addr);
    if (p >= base && p - base < chunk_size_) return slot;
  }
  return kMaxChunks;
}

Result<DmaHandle> DmaPool::new_chunk(size_t slot) {
  auto h = dev_->op()->alloc_coherent(dev_->constraints(), Layout{chunk_size_, chunk_size_});
  if (!h.ok()) {
    support::Guard<support::SpinLock> guard{&lock_};
    pending_mask_ &= ~bit(slot);
    return h.error();
  }
  // init checked the bus offset; a DmaOp that broke the requested alignment would break the
  // boundary promise.
  KASSERT(h->dma_addr.value() % dma_align_ == 0,
          "DmaPool: alloc_coherent returned a chunk not aligned as requested");
  // The chunk is not in the table yet: no other CPU can reach it.
  if (KDEBUG_ENABLED) support::fill_bytes(h->cpu_addr, kPoison, chunk_size_);
  return *h;
}

DmaPoolBlock DmaPool::hand_out(const DmaPoolBlock& b) {
  auto* p = static_cast<uint8_t*>(b.cpu);
  if (KDEBUG_ENABLED) {
    for (size_t i = 0; i < block_size_; ++i) {
      if (p[i] == kPoison) continue;
      __atomic_fetch_add(&writes_after_free_, uint64_t{1}, __ATOMIC_RELAXED);
      if (report_ == nullptr) {
        KPANIC(
            "DmaPool: a freed block was written after free (by the CPU, or by a device "
            "through a stale descriptor)");
      }
      report_(report_ctx_, *this, b.cpu, i);
      break;
    }
  }
  support::fill_bytes(p, 0, block_size_);
  return b;
}

Result<DmaPoolBlock> DmaPool::alloc() {
  if (dev_ == nullptr) return ErrorCode::kInvalidArgument;
  if (!thread_context_ok("DmaPool::alloc", dev_)) return ErrorCode::kBusy;
  DmaPoolBlock b;
  size_t slot = 0;
  {
    support::Guard<support::SpinLock> guard{&lock_};
    if (room_mask_ != 0) {
      b = take_locked();
    } else {
      TRY_ASSIGN(slot, claim_slot_locked());
    }
  }
  if (b.cpu == nullptr) {
    // Growth, without the lock. Another CPU may grow too meanwhile (in another slot), or free
    // blocks: either way this CPU installs its chunk and takes a block in one critical section,
    // so it cannot lose the chunk's blocks to others before taking one.
    TRY_ASSIGN(DmaHandle h, new_chunk(slot));
    support::Guard<support::SpinLock> guard{&lock_};
    install_locked(slot, h);
    b = take_locked();
  }
  return hand_out(b);
}

Result<DmaPoolBlock> DmaPool::try_alloc() {
  if (dev_ == nullptr) return ErrorCode::kInvalidArgument;
  DmaPoolBlock b;
  {
    support::Guard<support::SpinLock> guard{&lock_};
    if (room_mask_ == 0) return ErrorCode::kNoMemory;
    b = take_locked();
  }
  return hand_out(b);
}

Result<void> DmaPool::reserve(size_t blocks) {
  if (dev_ == nullptr) return ErrorCode::kInvalidArgument;
  if (!thread_context_ok("DmaPool::reserve", dev_)) return ErrorCode::kBusy;
  if (blocks > kMaxChunks * blocks_per_chunk_) return ErrorCode::kOutOfRange;
  uint64_t added = 0;
  Error failure(ErrorCode::kNoMemory);
  for (;;) {
    size_t slot = 0;
    {
      support::Guard<support::SpinLock> guard{&lock_};
      if (free_blocks_ >= blocks) return support::ok();
      auto claimed = claim_slot_locked();
      if (!claimed.ok()) {
        failure = claimed.error();
        break;
      }
      slot = *claimed;
    }
    auto h = new_chunk(slot);
    if (!h.ok()) {
      failure = h.error();
      break;
    }
    support::Guard<support::SpinLock> guard{&lock_};
    install_locked(slot, *h);
    added |= bit(slot);
  }
  release_free_chunks(added);
  return failure;
}

void DmaPool::release_free_chunks(uint64_t slots) {
  for (;;) {
    DmaHandle h;
    {
      support::Guard<support::SpinLock> guard{&lock_};
      uint64_t candidates = slots & live_mask_;
      size_t slot = kMaxChunks;
      for (; candidates != 0; candidates &= candidates - 1) {
        size_t s = support::ctz(candidates);
        if (chunks_[s].free_count == blocks_per_chunk_) {
          slot = s;
          break;
        }
      }
      if (slot == kMaxChunks) return;
      slots &= ~bit(slot);
      live_mask_ &= ~bit(slot);
      room_mask_ &= ~bit(slot);
      free_blocks_ -= blocks_per_chunk_;
      --num_chunks_;
      h = chunks_[slot].handle;
    }
    dev_->op()->dealloc_coherent(h);
  }
}

Result<void> DmaPool::free(void* cpu) {
  if (dev_ == nullptr) return ErrorCode::kNotFound;
  support::Guard<support::SpinLock> guard{&lock_};
  size_t slot = slot_of_locked(cpu);
  if (slot == kMaxChunks) return ErrorCode::kNotFound;
  ChunkRecord& c = chunks_[slot];
  size_t off =
      static_cast<size_t>(static_cast<uint8_t*>(cpu) - static_cast<uint8_t*>(c.handle.cpu_addr));
  size_t in_segment = off % segment_;
  if (in_segment % stride_ != 0 || in_segment / stride_ >= per_segment_) {
    return ErrorCode::kNotFound;
  }
  size_t i = ((off / segment_) * per_segment_) + (in_segment / stride_);
  if (i >= blocks_per_chunk_) return ErrorCode::kNotFound;
  uint64_t mask = uint64_t{1} << (i % 64);
  if ((c.free_bits[i / 64] & mask) != 0) return ErrorCode::kNotFound;  // Double free.
  // Poisoned before it is marked free: once free, another CPU may take it.
  if (KDEBUG_ENABLED) support::fill_bytes(cpu, kPoison, block_size_);
  c.free_bits[i / 64] |= mask;
  if (c.free_count++ == 0) room_mask_ |= bit(slot);
  ++free_blocks_;
  --in_use_;
  return support::ok();
}

DmaPool::Stats DmaPool::stats() const {
  Stats s;
  {
    support::Guard<support::SpinLock> guard{&lock_};
    s.chunks = num_chunks_;
    s.blocks_in_use = in_use_;
    s.free_blocks = free_blocks_;
  }
  s.blocks_per_chunk = blocks_per_chunk_;
  s.max_blocks = kMaxChunks * blocks_per_chunk_;
  s.stride = stride_;
  s.chunk_size = chunk_size_;
  s.writes_after_free = __atomic_load_n(&writes_after_free_, __ATOMIC_RELAXED);
  return s;
}
