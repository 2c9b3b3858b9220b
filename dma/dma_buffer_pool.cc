#include "dmakit/dma_buffer_pool.h"

#include "dmakit/support/bitops.h"
#include "dmakit/support/defer.h"

PooledBuffer& PooledBuffer::operator=(PooledBuffer&& o) {
  if (this != &o) {
    release();
    pool_ = support::exchange(o.pool_, nullptr);
    index_ = o.index_;
  }
  return *this;
}

uint8_t* PooledBuffer::data() const {
  return static_cast<uint8_t*>(pool_->buffers_[index_].cpu_addr);
}
DmaAddr PooledBuffer::dma_addr() const {
  return pool_->buffers_[index_].dma_addr;
}

Result<void> PooledBuffer::sync_for_device(size_t offset, size_t size) {
  if (pool_ == nullptr) return ErrorCode::kInvalidArgument;
  if (offset > pool_->buffer_size_ || size > pool_->buffer_size_ - offset) {
    return ErrorCode::kOutOfRange;
  }
  return pool_->op_->sync_noncoherent(pool_->buffers_[index_], offset, size,
                                      DmaDirection::kFromDevice, DmaSyncTarget::kForDevice);
}

Result<void> PooledBuffer::sync_for_cpu(size_t offset, size_t size) {
  if (pool_ == nullptr) return ErrorCode::kInvalidArgument;
  if (offset > pool_->buffer_size_ || size > pool_->buffer_size_ - offset) {
    return ErrorCode::kOutOfRange;
  }
  return pool_->op_->sync_noncoherent(pool_->buffers_[index_], offset, size,
                                      DmaDirection::kFromDevice, DmaSyncTarget::kForCpu);
}
size_t PooledBuffer::size() const {
  return pool_->buffer_size_;
}

void PooledBuffer::release() {
  if (pool_ != nullptr) {
    pool_->give_back(index_);
    pool_ = nullptr;
  }
}

DmaBufferPool::~DmaBufferPool() {
  uint64_t all = count_ == 64 ? ~0ull : (1ull << count_) - 1;
  {
    support::Guard<support::SpinLock> guard{&lock_};
    KDEBUG_ASSERT(free_mask_ == all, "DmaBufferPool destroyed with buffers still lent out");
    (void)all;
  }
  free_buffers(count_);
}

void DmaBufferPool::free_buffers(unsigned count) {
  for (unsigned i = 0; i < count; ++i) {
    if (buffers_[i].cpu_addr == nullptr) continue;
    if (cacheable_) {
      op_->dealloc_noncoherent(buffers_[i]);
    } else {
      op_->dealloc_coherent(buffers_[i]);
    }
    buffers_[i] = DmaHandle{};
  }
}

Result<void> DmaBufferPool::init(DeviceDma* dev, unsigned count, size_t buffer_size,
                                 DmaDirection dir) {
  if (count_ != 0) return ErrorCode::kInvalidArgument;
  if (count == 0 || count > kMaxBuffers || buffer_size == 0) return ErrorCode::kLayoutError;
  op_ = dev->op();
  // Receive buffers of a device that does not snoop: cacheable, synced by range. A coherent
  // device gets coherent memory either way (it is cacheable already).
  cacheable_ = dir == DmaDirection::kFromDevice && !dev->coherent();
  auto undo = support::defer([this, count] { free_buffers(count); });
  for (unsigned i = 0; i < count; ++i) {
    if (cacheable_) {
      TRY_ASSIGN(ContiguousArray<uint8_t> a, dev->alloc_noncoherent<uint8_t>(buffer_size, 64));
      buffers_[i] = a.release();
    } else {
      TRY_ASSIGN(DArray<uint8_t> a, dev->alloc_array<uint8_t>(buffer_size, 64));
      buffers_[i] = a.release();
    }
  }
  undo.cancel();
  count_ = count;
  buffer_size_ = buffer_size;
  support::Guard<support::SpinLock> guard{&lock_};
  free_mask_ = count == 64 ? ~0ull : (1ull << count) - 1;
  return support::ok();
}

Result<PooledBuffer> DmaBufferPool::acquire() {
  support::Guard<support::SpinLock> guard{&lock_};
  if (free_mask_ == 0) return ErrorCode::kNoMemory;
  unsigned i = support::ctz(free_mask_);
  free_mask_ &= free_mask_ - 1;
  return PooledBuffer(this, i);
}

unsigned DmaBufferPool::available() const {
  support::Guard<support::SpinLock> guard{&lock_};
  return static_cast<unsigned>(__builtin_popcountll(free_mask_));
}

void DmaBufferPool::give_back(unsigned index) {
  support::Guard<support::SpinLock> guard{&lock_};
  KASSERT(index < count_ && (free_mask_ & (1ull << index)) == 0,
          "PooledBuffer returned twice or to the wrong pool");
  free_mask_ |= 1ull << index;
}
