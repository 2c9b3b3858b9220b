// SplitVirtqueue: a virtio 1.x split virtqueue (descriptor table, driver "available" ring, device
// "used" ring) in coherent DMA memory.
//
// The scheme: the three parts are separate coherent allocations (DArray for the descriptor table,
// DBox for each ring), so the device reads and writes them with no cache maintenance; ordering is
// by barriers only (arch::io_wmb before the available index moves, arch::io_rmb after reading the
// used index). Free descriptors form a list threaded through their `next` fields. add_chain takes
// one descriptor per buffer from the list and links them, O(buffers); publish puts the head in the
// available ring and moves its index, O(1); pop_used takes one used entry and returns its chain to
// the free list, O(chain length).
//
// All three parts are read and written through DArray/DBox's volatile accessors (read_field,
// write_field): the used ring changes under the driver's feet, and a plain load of its index
// could be kept in a register across a polling loop.
//
// Layouts (virtio 1.x, section 2.7, little-endian): descriptors 16 bytes, 16-byte aligned; the
// available ring flags/idx/ring[size]/used_event, 2-byte aligned; the used ring flags/idx/
// {id, len}[size]/avail_event, 4-byte aligned. The rings are declared for kMaxSize entries; a
// queue of size n uses the first n (VIRTIO_F_EVENT_IDX is never negotiated, so the trailing event
// fields are not used).
//
// Threading: one user at a time (the callers serialize); nothing here blocks. May be used with
// interrupts off.
#pragma once

#include "dmakit/device_dma.h"
#include "dmakit/support/result.h"
#include "dmakit/support/span.h"
#include "dmakit/support/types.h"

struct VirtqDesc {
  uint64_t addr;
  uint32_t len;
  uint16_t flags;
  uint16_t next;
};
static_assert(sizeof(VirtqDesc) == 16);

class SplitVirtqueue {
 public:
  static constexpr uint16_t kMaxSize = 64;
  static constexpr uint16_t kDescNext = 1;
  static constexpr uint16_t kDescWrite = 2;  // The device writes this buffer.

  struct Avail {
    uint16_t flags;
    uint16_t idx;
    uint16_t ring[kMaxSize];
    uint16_t used_event;
  };
  struct UsedElem {
    uint32_t id;
    uint32_t len;
  };
  struct Used {
    uint16_t flags;
    uint16_t idx;
    UsedElem ring[kMaxSize];
    uint16_t avail_event;
    uint16_t reserved;  // The alignment padding, named: DBox takes no type with hidden padding.
  };

  // One device-visible buffer of a chain.
  struct Buffer {
    DmaAddr addr;
    uint32_t len = 0;
    bool device_writes = false;
  };

  SplitVirtqueue() = default;
  SplitVirtqueue(const SplitVirtqueue&) = delete;
  SplitVirtqueue& operator=(const SplitVirtqueue&) = delete;

  // Allocates the rings for `size` entries (1..kMaxSize) in coherent memory reachable by `dma`.
  // Errors: kInvalidArgument (size out of range, already initialized), and
  // DeviceDma::alloc_array's errors (kNoMemory, kDmaMaskNotMatch). On error nothing stays
  // allocated.
  Result<void> init(DeviceDma& dma, uint16_t size);
  // Frees the rings. Precondition: the device no longer uses them (reset, or the queue disabled).
  void reset();

  uint16_t size() const { return size_; }
  uint16_t num_free() const { return num_free_; }
  DmaAddr desc_addr() const { return desc_.dma_addr(); }
  DmaAddr avail_addr() const { return avail_.dma_addr(); }
  DmaAddr used_addr() const { return used_.dma_addr(); }

  // Links one descriptor per buffer into a chain and returns its head. Nothing is visible to the
  // device until publish(head).
  // Errors: kLayoutError (no buffers), kNoMemory (fewer free descriptors than buffers; nothing
  // taken), kInvalidArgument (not initialized).
  Result<uint16_t> add_chain(support::Span<const Buffer> buffers);
  // Makes the chain at `head` available to the device (the caller then notifies it).
  void publish(uint16_t head);
  // Whether the device has returned a chain not yet popped.
  bool has_used() const;
  // Takes the next used entry and frees its chain. Errors: kNotFound (nothing used),
  // kIoError (the device returned an id that is not the head of an outstanding chain).
  Result<UsedElem> pop_used();

 private:
  DArray<VirtqDesc> desc_;
  DBox<Avail> avail_;
  DBox<Used> used_;
  uint16_t size_ = 0;
  uint16_t free_head_ = 0;
  uint16_t num_free_ = 0;
  uint16_t avail_idx_ = 0;    // Our copy of avail->idx.
  uint16_t last_used_ = 0;    // Used entries consumed so far (mod 2^16).
  uint64_t outstanding_ = 0;  // Bit i: descriptor i heads a published, unreturned chain.
  static_assert(kMaxSize <= 64, "outstanding_ holds one bit per descriptor");
};
