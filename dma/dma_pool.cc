// DmaPool: see dma_pool.h for the scheme.
#include "dma/dma_pool.h"

#include "support/bitops.h"
#include "support/mem.h"

namespace {

constexpr uint8_t kPoison = 0xA5;
constexpr size_t kMaxChunk = 4ull << 20;
constexpr uint32_t kNoBlock = 0;  // Offset 0 is the header: never a block.

}  // namespace

struct DmaPool::Chunk {
  DmaHandle handle;
  Chunk* next = nullptr;       // All chunks.
  Chunk* next_room = nullptr;  // Chunks with a free block.
  bool on_room_list = false;
  uint32_t free_head = kNoBlock;
  uint32_t used = 0;
  uint64_t used_bits[DmaPool::kMaxBlocksPerChunk / 64] = {};

  uint8_t* base() const { return static_cast<uint8_t*>(handle.cpu_addr); }
};

DmaPool::~DmaPool() {
  support::Guard<support::SpinLock> guard{&lock_};
  KASSERT(in_use_ == 0, "DmaPool destroyed with blocks still allocated");
  for (Chunk* c = chunks_; c != nullptr;) {
    Chunk* next = c->next;
    DmaHandle h = c->handle;
    dev_->op()->dealloc_coherent(h);
    c = next;
  }
  chunks_ = nullptr;
  with_room_ = nullptr;
}

Result<void> DmaPool::init(DeviceDma* dev, size_t block_size, size_t align, size_t boundary,
                           const char* name) {
  if (dev_ != nullptr) return ErrorCode::kInvalidArgument;
  if (block_size == 0 || !support::is_pow2(align == 0 ? 1 : align)) return ErrorCode::kLayoutError;
  if (boundary != 0 && !support::is_pow2(boundary)) return ErrorCode::kLayoutError;
  size_t a = support::max<size_t>(align, sizeof(uint64_t));
  size_t stride = support::align_up(block_size, a);
  if (stride > kMaxChunk / 2 || (boundary != 0 && boundary < stride)) {
    return ErrorCode::kLayoutError;
  }
  size_t header = support::align_up(sizeof(Chunk), a);
  size_t chunk = support::max<size_t>(dev->op()->page_size(),
                                      size_t{1} << support::log2_ceil(header + stride));
  dev_ = dev;
  name_ = name;
  block_size_ = block_size;
  stride_ = stride;
  boundary_ = boundary;
  chunk_size_ = chunk;
  offsets_base_ = header;
  blocks_per_chunk_ = support::min<size_t>((chunk - header) / stride, kMaxBlocksPerChunk);
  return support::ok();
}

Result<DmaPool::Chunk*> DmaPool::grow() {
  TRY_ASSIGN(DmaHandle h,
             dev_->op()->alloc_coherent(dev_->constraints(), Layout{chunk_size_, chunk_size_}));
  auto* c = new (h.cpu_addr) Chunk();
  c->handle = h;
  // Thread the free list through the blocks, lowest first, skipping boundary crossers.
  uint32_t* link = &c->free_head;
  for (size_t i = 0; i < blocks_per_chunk_; ++i) {
    size_t off = block_offset(i);
    if (boundary_ != 0) {
      uint64_t start = h.dma_addr.value() + off;
      if (start / boundary_ != (start + block_size_ - 1) / boundary_) continue;
    }
    uint8_t* blk = c->base() + off;
    if (KDEBUG_ENABLED) support::fill_bytes(blk, kPoison, stride_);
    *link = static_cast<uint32_t>(off);
    link = reinterpret_cast<uint32_t*>(blk);
  }
  *link = kNoBlock;
  c->next = chunks_;
  chunks_ = c;
  ++num_chunks_;
  return c;
}

Result<DmaPoolBlock> DmaPool::alloc() {
  if (dev_ == nullptr) return ErrorCode::kInvalidArgument;
  support::Guard<support::SpinLock> guard{&lock_};
  Chunk* c = with_room_;
  if (c == nullptr) {
    TRY_ASSIGN(c, grow());
    c->on_room_list = true;
    c->next_room = with_room_;
    with_room_ = c;
  }
  uint32_t off = c->free_head;
  KASSERT(off != kNoBlock, "DmaPool: chunk on the room list without a free block");
  uint8_t* blk = c->base() + off;
  c->free_head = *reinterpret_cast<uint32_t*>(blk);
  if (KDEBUG_ENABLED) {
    for (size_t i = sizeof(uint32_t); i < stride_; ++i) {
      KASSERT(blk[i] == kPoison, "DmaPool: a freed block was written after free");
    }
  }
  size_t idx = (off - offsets_base_) / stride_;
  c->used_bits[idx / 64] |= 1ull << (idx % 64);
  ++c->used;
  ++in_use_;
  if (c->free_head == kNoBlock) {
    with_room_ = c->next_room;
    c->on_room_list = false;
    c->next_room = nullptr;
  }
  support::fill_bytes(blk, 0, block_size_);
  return DmaPoolBlock{blk, c->handle.dma_addr + off};
}

DmaPool::Chunk* DmaPool::chunk_of(const void* cpu) {
  auto p = reinterpret_cast<uintptr_t>(cpu);
  for (Chunk* c = chunks_; c != nullptr; c = c->next) {
    auto b = reinterpret_cast<uintptr_t>(c->handle.cpu_addr);
    if (p >= b && p - b < chunk_size_) return c;
  }
  return nullptr;
}

Result<void> DmaPool::free(void* cpu) {
  support::Guard<support::SpinLock> guard{&lock_};
  Chunk* c = chunk_of(cpu);
  if (c == nullptr) return ErrorCode::kNotFound;
  size_t off = static_cast<size_t>(static_cast<uint8_t*>(cpu) - c->base());
  if (off < offsets_base_ || (off - offsets_base_) % stride_ != 0) return ErrorCode::kNotFound;
  size_t idx = (off - offsets_base_) / stride_;
  if (idx >= blocks_per_chunk_ || (c->used_bits[idx / 64] & (1ull << (idx % 64))) == 0) {
    return ErrorCode::kNotFound;
  }
  c->used_bits[idx / 64] &= ~(1ull << (idx % 64));
  --c->used;
  --in_use_;
  auto* blk = static_cast<uint8_t*>(cpu);
  if (KDEBUG_ENABLED) support::fill_bytes(blk, kPoison, stride_);
  *reinterpret_cast<uint32_t*>(blk) = c->free_head;
  c->free_head = static_cast<uint32_t>(off);
  if (!c->on_room_list) {
    c->on_room_list = true;
    c->next_room = with_room_;
    with_room_ = c;
  }
  return support::ok();
}

DmaPool::Stats DmaPool::stats() const {
  support::Guard<support::SpinLock> guard{&lock_};
  Stats s;
  s.chunks = num_chunks_;
  s.blocks_in_use = in_use_;
  s.blocks_per_chunk = blocks_per_chunk_;
  s.stride = stride_;
  return s;
}
