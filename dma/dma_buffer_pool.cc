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
  return pool_->buffers_[index_].raw_data();
}
DmaAddr PooledBuffer::dma_addr() const {
  return pool_->buffers_[index_].dma_addr();
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
  // buffers_ free themselves.
}

Result<void> DmaBufferPool::init(DeviceDma* dev, unsigned count, size_t buffer_size) {
  if (count_ != 0) return ErrorCode::kInvalidArgument;
  if (count == 0 || count > kMaxBuffers || buffer_size == 0) return ErrorCode::kLayoutError;
  auto undo = support::defer([this, count] {
    for (unsigned i = 0; i < count; ++i) buffers_[i].reset();
  });
  for (unsigned i = 0; i < count; ++i) {
    TRY_ASSIGN(buffers_[i], dev->alloc_array<uint8_t>(buffer_size, 64));
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
