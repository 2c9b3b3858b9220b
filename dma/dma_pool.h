// DmaPool: many small coherent blocks of one size (descriptors, command blocks), like Linux's
// dma_pool.
//
// Scheme: the pool takes chunks (power-of-two sized, size-aligned coherent allocations of at
// least a page) from its device and cuts each into blocks of `stride` = block size rounded up to
// the alignment, skipping any block that would cross `boundary`. A chunk starts with a small
// header (not handed out): the chunk's DmaHandle, a free list threaded through the free blocks,
// and a bitmap of blocks in use (so a double or foreign free is caught in every build). Chunks
// with free blocks are on a list. alloc pops a block from the first such chunk, O(1), and takes a
// new chunk when none has room (O(blocks per chunk) to thread it); free finds the chunk by
// walking the (few) chunks and pushes the block, O(chunks). Chunks are kept until
// the pool is destroyed. Freed blocks are poisoned in debug builds and checked when handed out
// again, so a write after free is reported.
#pragma once

#include "dma/device_dma.h"
#include "support/spinlock.h"

// One block from a DmaPool.
struct DmaPoolBlock {
  void* cpu = nullptr;
  DmaAddr dma;
};

class DmaPool {
 public:
  static constexpr size_t kMaxBlocksPerChunk = 512;

  DmaPool() = default;
  DmaPool(const DmaPool&) = delete;
  DmaPool& operator=(const DmaPool&) = delete;
  // Gives every chunk back to the device. A pool destroyed with blocks still out is reported
  // (KASSERT in every build: the memory would be freed under its user).
  ~DmaPool();

  // Sets the pool up for blocks of `block_size` bytes aligned to `align` (a power of two) that
  // never cross a multiple of `boundary` (0 for none; else a power of two >= the stride). No
  // memory is taken until the first alloc. `dev` must outlive the pool.
  // Errors: kLayoutError (block_size 0, align or boundary not a power of two, boundary smaller
  // than a block, blocks larger than 4 MiB), kInvalidArgument (called twice).
  Result<void> init(DeviceDma* dev, size_t block_size, size_t align, size_t boundary = 0,
                    const char* name = "dma-pool");

  // A zeroed block. Errors: kNoMemory (no free block and no new chunk), kDmaMaskNotMatch (the
  // device's mask reaches no memory), kInvalidArgument (not initialized). O(1) unless a new chunk
  // is needed. May be called with interrupts off.
  Result<DmaPoolBlock> alloc() TA_EXCL(lock_);

  // Returns a block. Errors: kNotFound (not a block of this pool currently allocated); the pool is
  // unchanged then. O(chunks).
  Result<void> free(void* cpu) TA_EXCL(lock_);

  struct Stats {
    size_t chunks = 0;
    size_t blocks_in_use = 0;
    size_t blocks_per_chunk = 0;
    size_t stride = 0;
  };
  Stats stats() const TA_EXCL(lock_);
  const char* name() const { return name_; }

 private:
  struct Chunk;
  Result<Chunk*> grow() TA_REQ(lock_);
  Chunk* chunk_of(const void* cpu) TA_REQ(lock_);
  size_t block_offset(size_t i) const { return offsets_base_ + i * stride_; }

  DeviceDma* dev_ = nullptr;
  const char* name_ = "";
  size_t block_size_ = 0;
  size_t stride_ = 0;
  size_t boundary_ = 0;
  size_t chunk_size_ = 0;
  size_t offsets_base_ = 0;
  size_t blocks_per_chunk_ = 0;
  mutable support::SpinLock lock_;
  Chunk* chunks_ TA_GUARDED(lock_) = nullptr;     // All chunks.
  Chunk* with_room_ TA_GUARDED(lock_) = nullptr;  // Chunks with a free block.
  size_t num_chunks_ TA_GUARDED(lock_) = 0;
  size_t in_use_ TA_GUARDED(lock_) = 0;
};
