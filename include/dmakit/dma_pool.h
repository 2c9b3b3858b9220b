// DmaPool: many small coherent blocks of one size (descriptors, command blocks), like Linux's
// dma_pool.
//
// Layout. The pool takes chunks from its device: coherent allocations of `chunk_size` bytes (a
// page, or the stride rounded up to a power of two when that is larger), aligned to their size.
// Every chunk is cut the same way into blocks of `stride` bytes (the block size rounded up to
// the alignment, at least 8), packed from the chunk's start; a block that would cross a multiple
// of `boundary` starts at that multiple instead, as in Linux's dma_pool. So block i of any chunk
// sits at an offset computed from i, never stored. A geometry that could hold no block at all
// (stride above the boundary, block above 4 MiB) is refused by init.
//
// Metadata out of band. A chunk holds blocks and nothing else: no header, no free links. A
// device may write anything anywhere in a chunk (a stale descriptor written after free, say) and
// the pool still hands out only its own blocks, each once. Its records live in the DmaPool object:
// a table of kMaxChunks chunk records (the chunk's DmaHandle and a bitmap of its free blocks) and
// three 64-bit masks over the table (slots holding a chunk, chunks with a free block, slots
// claimed by a growth in progress). That bounds a pool to kMaxChunks chunks: stats().max_blocks
// = kMaxChunks * blocks_per_chunk blocks (4096 blocks of 64 bytes, 512 of 512 bytes, 64 of
// 4 KiB); beyond that alloc and reserve return kNoMemory. sizeof(DmaPool) is about 7.7 KiB (64
// records of 120 bytes).
//
// Costs. try_alloc, and alloc while some chunk has room: O(1) (the first chunk with room from a
// mask, the first free block from at most 8 bitmap words) under the lock, then zeroing the block
// outside it. free: O(chunks) range compares to find the chunk (at most kMaxChunks), O(1) after.
// Growth: one alloc_coherent, made without the lock. Chunks stay until the pool is destroyed.
//
// Calling contexts (dmakit/dma_op.h). The pool's spinlock (which, like every lock of the
// library, masks interrupts through the kernel's hooks while held) guards only the bookkeeping
// above. It is never held across alloc_coherent or dealloc_coherent, which may edit page tables
// (a non-coherent device's chunks are remapped uncached) and so need thread context with
// interrupts enabled. Hence:
//   init, reserve, alloc, ~DmaPool   thread only (may grow or shrink);
//   try_alloc, free, stats           any context: thread, interrupts off, or interrupt handler
//                                    (with the irq hooks installed; without them, a handler
//                                    must not interrupt a call into this pool on its CPU).
// Code that must allocate with interrupts off pre-grows with reserve() and uses try_alloc().
//
// Debug builds (DMA_DEBUG) poison a freed block and check the poison when the block is handed out
// again: a block written after free (by the CPU, or by a device through a stale descriptor) is
// reported -- to the pool's report hook if one is set (counted in stats().writes_after_free; the
// block is then handed out zeroed as usual), otherwise by a panic. Either way nothing the pool
// relies on was in reach of the write.
#pragma once

#include "dmakit/device_dma.h"
#include "dmakit/support/spinlock.h"

// One block from a DmaPool.
struct DmaPoolBlock {
  void* cpu = nullptr;
  DmaAddr dma;
};

class DmaPool {
 public:
  // Chunk records in the pool object: the limit on how far a pool grows.
  static constexpr size_t kMaxChunks = 64;
  // Blocks one chunk can track (a page of 8-byte blocks). With pages larger than 4 KiB the
  // blocks past this index are left unused.
  static constexpr size_t kMaxBlocksPerChunk = 512;
  // Largest chunk, hence largest block (the page-frame allocator's largest block).
  static constexpr size_t kMaxChunkSize = 4ull << 20;

  // Receives a write-after-free report (debug builds): `block` is the block about to be handed
  // out, `offset` the first byte that is no longer poison. Called without the pool's lock held,
  // from the context of the alloc or try_alloc that found it.
  using CorruptionReport = void (*)(void* ctx, const DmaPool& pool, const void* block,
                                    size_t offset);

  DmaPool() = default;
  DmaPool(const DmaPool&) = delete;
  DmaPool& operator=(const DmaPool&) = delete;
  // Gives every chunk back to the device. Preconditions: every block was freed (a pool destroyed
  // with blocks still out is a KASSERT in every build: the memory would be freed under its user)
  // and no other call into the pool is running. Thread context, interrupts enabled.
  ~DmaPool();

  // Sets the pool up for blocks of `block_size` bytes whose DMA addresses are aligned to `align`
  // (a power of two; 0 means 1) and never cross a multiple of `boundary` (0 for none; else a
  // power of two at least the stride). `dev` must outlive the pool; its DMA mask, coherence and
  // bus offset are those of every chunk. `name` (for diagnostics) must outlive the pool. No memory
  // is taken until the first alloc or reserve. Thread context, before the pool is shared.
  // Errors: kLayoutError (block_size 0; align or boundary not a power of two; boundary below the
  // stride, so no block fits between two boundaries; block larger than kMaxChunkSize; a bus
  // offset of `dev` that is not a multiple of the alignment or, with a boundary, of
  // min(boundary, chunk size)), kInvalidArgument (dev null, or init called before). On error
  // the pool stays uninitialised.
  Result<void> init(DeviceDma* dev, size_t block_size, size_t align, size_t boundary = 0,
                    const char* name = "dma-pool");

  // Where write-after-free reports go (see above); null: panic. Not synchronised with
  // allocations: set it after init, before the pool is shared.
  void set_corruption_report(CorruptionReport report, void* ctx) {
    report_ = report;
    report_ctx_ = ctx;
  }

  // A zeroed block; the caller owns it until free. Takes a free block if any chunk has one,
  // else grows the pool by one chunk (alloc_coherent, outside the lock; if another CPU grew it
  // meanwhile, both chunks are kept and the surplus serves later allocations).
  // Thread context with interrupts enabled only (growth may edit page tables); use try_alloc
  // elsewhere. O(1) without growth.
  // Errors: kInvalidArgument (not initialised), kNoMemory (no free block and no chunk could be
  // had: the device's memory is exhausted, or the pool already has kMaxChunks chunks, counting
  // those other CPUs are adding), kDmaMaskNotMatch (the device's mask reaches no memory), and
  // alloc_coherent's other errors (kNotSupported: a non-coherent device on a platform that cannot
  // map memory uncached). On error the pool is unchanged.
  Result<DmaPoolBlock> alloc() TA_EXCL(lock_);

  // A zeroed block from the chunks already present; never grows, never calls the DmaOp. Any
  // context (see the header comment). O(1). Errors: kInvalidArgument (not initialised), kNoMemory
  // (no free block now: reserve() beforehand).
  Result<DmaPoolBlock> try_alloc() TA_EXCL(lock_);

  // Grows the pool until at least `blocks` blocks are free (no-op if they already are). On
  // success they were free when it returned; concurrent allocations may take them since. Thread
  // context, interrupts enabled. O(chunks added) allocations.
  // Errors: kInvalidArgument (not initialised), kOutOfRange (more than stats().max_blocks: never
  // possible; nothing done), kNoMemory (the device's memory or the chunk table ran out first),
  // alloc_coherent's errors as in alloc. On error the chunks this call added that are still
  // wholly free are given back (those a concurrent alloc already drew from stay).
  Result<void> reserve(size_t blocks) TA_EXCL(lock_);

  // Returns a block from alloc or try_alloc; the pool owns it again (debug builds poison it).
  // Any context. O(chunks).
  // Errors: kNotFound (not the start of a block of this pool that is allocated: a foreign
  // pointer, an interior pointer, a double free, or an uninitialised pool); the pool is unchanged
  // then. Checked in every build.
  Result<void> free(void* cpu) TA_EXCL(lock_);

  struct Stats {
    size_t chunks = 0;
    size_t blocks_in_use = 0;
    size_t free_blocks = 0;  // In the chunks present: what try_alloc can still serve.
    size_t blocks_per_chunk = 0;
    size_t max_blocks = 0;  // kMaxChunks * blocks_per_chunk.
    size_t stride = 0;
    size_t chunk_size = 0;
    uint64_t writes_after_free = 0;  // Reported to the hook (debug builds).
  };
  // A snapshot. Any context. O(1).
  Stats stats() const TA_EXCL(lock_);
  const char* name() const { return name_; }

 private:
  static constexpr size_t kBitmapWords = kMaxBlocksPerChunk / 64;
  static_assert(kMaxChunks <= 64, "the table's masks are one 64-bit word");

  struct ChunkRecord {
    DmaHandle handle;                    // From alloc_coherent; given back whole.
    uint64_t free_bits[kBitmapWords]{};  // Bit i: block i is free.
    size_t free_count = 0;
  };

  static constexpr uint64_t bit(size_t slot) { return uint64_t{1} << slot; }
  size_t block_offset(size_t i) const {
    return ((i / per_segment_) * segment_) + ((i % per_segment_) * stride_);
  }

  // Under the lock.
  DmaPoolBlock take_locked() TA_REQ(lock_);  // Precondition: room_mask_ != 0.
  Result<size_t> claim_slot_locked() TA_REQ(lock_);
  void install_locked(size_t slot, const DmaHandle& h) TA_REQ(lock_);
  // The slot whose chunk holds `cpu`, or kMaxChunks.
  size_t slot_of_locked(const void* cpu) const TA_REQ(lock_);

  // Without the lock.
  // A new chunk for a claimed slot (the claim is dropped on error).
  Result<DmaHandle> new_chunk(size_t slot) TA_EXCL(lock_);
  // Gives back the wholly free chunks among `slots` (reserve's undo).
  void release_free_chunks(uint64_t slots) TA_EXCL(lock_);
  // Checks the poison (debug builds) and zeroes a block just taken.
  DmaPoolBlock hand_out(const DmaPoolBlock& b);

  // Geometry: set by init, read-only afterwards.
  DeviceDma* dev_ = nullptr;
  const char* name_ = "";
  size_t block_size_ = 0;
  size_t stride_ = 0;
  size_t segment_ = 0;      // Blocks are packed within each segment (boundary or chunk) of a chunk.
  size_t per_segment_ = 0;  // Blocks per segment.
  size_t chunk_size_ = 0;
  size_t dma_align_ = 1;  // What every chunk's DMA address must be a multiple of.
  size_t blocks_per_chunk_ = 0;
  CorruptionReport report_ = nullptr;
  void* report_ctx_ = nullptr;
  uint64_t writes_after_free_ = 0;  // Atomic (relaxed).

  mutable support::SpinLock lock_;
  ChunkRecord chunks_[kMaxChunks] TA_GUARDED(lock_);
  uint64_t live_mask_ TA_GUARDED(lock_) = 0;     // Slots holding a chunk.
  uint64_t room_mask_ TA_GUARDED(lock_) = 0;     // Chunks with a free block.
  uint64_t pending_mask_ TA_GUARDED(lock_) = 0;  // Slots claimed by a growth in progress.
  size_t num_chunks_ TA_GUARDED(lock_) = 0;
  size_t in_use_ TA_GUARDED(lock_) = 0;
  size_t free_blocks_ TA_GUARDED(lock_) = 0;
};
