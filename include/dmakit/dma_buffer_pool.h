// DmaBufferPool: a fixed set of equal-sized coherent buffers, allocated once and lent out again
// and again (receive rings, request buffers), so the I/O path never touches the page allocator.
//
// Scheme: up to kMaxBuffers buffers, a 64-bit free mask under a spinlock; acquire takes the lowest
// free bit, release sets it again. Both O(1). The pool must outlive every PooledBuffer it lent.
//
// Calling contexts (dmakit/dma_op.h): init and ~DmaBufferPool are thread only (they allocate and
// free coherent memory); acquire, available, release and a PooledBuffer's destructor, moves and
// accessors are any context.
#pragma once

#include "dmakit/device_dma.h"
#include "dmakit/support/spinlock.h"

class DmaBufferPool;

// A buffer on loan from a DmaBufferPool. Move-only; the destructor gives it back.
class PooledBuffer {
 public:
  PooledBuffer() = default;
  PooledBuffer(DmaBufferPool* pool, unsigned index) : pool_(pool), index_(index) {}
  PooledBuffer(PooledBuffer&& o) : pool_(support::exchange(o.pool_, nullptr)), index_(o.index_) {}
  PooledBuffer& operator=(PooledBuffer&& o);
  PooledBuffer(const PooledBuffer&) = delete;
  PooledBuffer& operator=(const PooledBuffer&) = delete;
  ~PooledBuffer() { release(); }

  uint8_t* data() const;
  DmaAddr dma_addr() const;
  size_t size() const;
  bool valid() const { return pool_ != nullptr; }
  // Returns the buffer to the pool now. Idempotent.
  void release();

 private:
  DmaBufferPool* pool_ = nullptr;
  unsigned index_ = 0;
};

class DmaBufferPool {
 public:
  static constexpr unsigned kMaxBuffers = 64;

  DmaBufferPool() = default;
  DmaBufferPool(const DmaBufferPool&) = delete;
  DmaBufferPool& operator=(const DmaBufferPool&) = delete;
  // Frees the buffers. In debug builds, a pool destroyed with buffers still lent out is reported
  // (KASSERT): their memory would be freed under the borrower.
  ~DmaBufferPool();

  // Allocates `count` buffers of `buffer_size` bytes each for `dev`, all or none.
  // Errors: kLayoutError (count 0 or above kMaxBuffers, buffer_size 0), kInvalidArgument (called
  // twice), and whatever DeviceDma::alloc_array returns (kNoMemory, kDmaMaskNotMatch); on error
  // nothing stays allocated.
  Result<void> init(DeviceDma* dev, unsigned count, size_t buffer_size);

  // Lends a buffer. Errors: kNoMemory (all lent out). O(1); any context.
  Result<PooledBuffer> acquire() TA_EXCL(lock_);

  unsigned count() const { return count_; }
  unsigned available() const TA_EXCL(lock_);
  size_t buffer_size() const { return buffer_size_; }

 private:
  friend class PooledBuffer;
  void give_back(unsigned index) TA_EXCL(lock_);

  DArray<uint8_t> buffers_[kMaxBuffers];
  unsigned count_ = 0;
  size_t buffer_size_ = 0;
  mutable support::SpinLock lock_;
  uint64_t free_mask_ TA_GUARDED(lock_) = 0;
};
