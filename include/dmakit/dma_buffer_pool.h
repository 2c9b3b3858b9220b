// DmaBufferPool: a fixed set of equal-sized DMA buffers, allocated once and lent out again and
// again (receive rings, request buffers), so the I/O path never touches the page allocator.
//
// Memory: coherent (DeviceDma::alloc_array), except the receive buffers (kFromDevice) of a
// device that does not snoop, which are cacheable (DeviceDma::alloc_noncoherent): the CPU reads
// received data at cache speed instead of through an uncached mapping, and the driver moves each
// buffer between device and CPU with PooledBuffer::sync_for_device / sync_for_cpu. Those syncs
// are free on coherent buffers, so a driver calls them whatever the pool holds.
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
  // Ownership moves of bytes [offset, offset + size) (ContiguousArray's syncs; nothing for
  // coherent memory): sync_for_device before the device writes into the buffer (after the CPU
  // last touched it), sync_for_cpu before the CPU reads what the device wrote.
  // Errors: kOutOfRange (range not inside size()), kInvalidArgument (not valid()). Any context.
  Result<void> sync_for_device(size_t offset, size_t size);
  Result<void> sync_for_cpu(size_t offset, size_t size);
  Result<void> sync_for_device() { return sync_for_device(0, valid() ? size() : 0); }
  Result<void> sync_for_cpu() { return sync_for_cpu(0, valid() ? size() : 0); }
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

  // Allocates `count` buffers of `buffer_size` bytes each for `dev`, all or none, for transfers in
  // `dir`: kFromDevice buffers of a device that does not snoop are cacheable (see above), all
  // others coherent. Errors: kLayoutError (count 0 or above kMaxBuffers, buffer_size 0),
  // kInvalidArgument (called twice), and whatever DeviceDma::alloc_array / alloc_noncoherent
  // return (kNoMemory, kDmaMaskNotMatch); on error nothing stays allocated.
  Result<void> init(DeviceDma* dev, unsigned count, size_t buffer_size,
                    DmaDirection dir = DmaDirection::kBidirectional);
  // Whether the buffers are cacheable memory that needs the PooledBuffer syncs.
  bool cacheable() const { return cacheable_; }

  // Lends a buffer. Errors: kNoMemory (all lent out). O(1); any context.
  Result<PooledBuffer> acquire() TA_EXCL(lock_);

  unsigned count() const { return count_; }
  unsigned available() const TA_EXCL(lock_);
  size_t buffer_size() const { return buffer_size_; }

 private:
  friend class PooledBuffer;
  void give_back(unsigned index) TA_EXCL(lock_);

  void free_buffers(unsigned count);

  DmaOp* op_ = nullptr;
  DmaHandle buffers_[kMaxBuffers];
  bool cacheable_ = false;
  unsigned count_ = 0;
  size_t buffer_size_ = 0;
  mutable support::SpinLock lock_;
  uint64_t free_mask_ TA_GUARDED(lock_) = 0;
};
