#include "drivers/virtio/split_virtqueue.h"

#include "testkernel/arch_io.h"

Result<void> SplitVirtqueue::init(DeviceDma& dma, uint16_t size) {
  if (size_ != 0 || size == 0 || size > kMaxSize) return ErrorCode::kInvalidArgument;
  TRY_ASSIGN(DArray<VirtqDesc> desc, dma.alloc_array<VirtqDesc>(size, 16));
  TRY_ASSIGN(DBox<Avail> avail, dma.alloc_box<Avail>());
  TRY_ASSIGN(DBox<Used> used, dma.alloc_box<Used>());
  desc_ = support::move(desc);
  avail_ = support::move(avail);
  used_ = support::move(used);
  size_ = size;
  for (uint16_t i = 0; i < size; ++i) {
    desc_.write_field(i, &VirtqDesc::next, static_cast<uint16_t>(i + 1));
  }
  free_head_ = 0;
  num_free_ = size;
  avail_idx_ = 0;
  last_used_ = 0;
  outstanding_ = 0;
  return support::ok();
}

void SplitVirtqueue::reset() {
  desc_.reset();
  avail_.reset();
  used_.reset();
  size_ = 0;
  num_free_ = 0;
  outstanding_ = 0;
}

Result<uint16_t> SplitVirtqueue::add_chain(support::Span<const Buffer> buffers) {
  if (size_ == 0) return ErrorCode::kInvalidArgument;
  if (buffers.empty()) return ErrorCode::kLayoutError;
  if (buffers.size() > num_free_) return ErrorCode::kNoMemory;
  uint16_t head = free_head_;
  uint16_t cur = head;
  for (size_t i = 0; i < buffers.size(); ++i) {
    uint16_t next_free = desc_.read_field(cur, &VirtqDesc::next);
    bool last = i + 1 == buffers.size();
    VirtqDesc d;
    d.addr = buffers[i].addr.value();
    d.len = buffers[i].len;
    d.flags =
        static_cast<uint16_t>((buffers[i].device_writes ? kDescWrite : 0) | (last ? 0 : kDescNext));
    // Not last: the next free descriptor becomes the next of the chain.
    d.next = last ? uint16_t{0} : next_free;
    desc_.write(cur, d);
    if (last) {
      free_head_ = next_free;
    } else {
      cur = next_free;
    }
  }
  num_free_ = static_cast<uint16_t>(num_free_ - buffers.size());
  return head;
}

void SplitVirtqueue::publish(uint16_t head) {
  KASSERT(head < size_, "SplitVirtqueue::publish: bad head");
  outstanding_ |= uint64_t{1} << head;
  avail_.write_field(&Avail::ring, avail_idx_ % size_, head);
  ++avail_idx_;
  // The descriptors and the ring entry before the index that publishes them.
  arch::io_wmb();
  avail_.write_field(&Avail::idx, avail_idx_);
  // The index before the device is notified (and before we look at the used ring).
  arch::io_mb();
}

bool SplitVirtqueue::has_used() const {
  if (size_ == 0) return false;
  return used_.read_field(&Used::idx) != last_used_;
}

Result<SplitVirtqueue::UsedElem> SplitVirtqueue::pop_used() {
  if (!has_used()) return ErrorCode::kNotFound;
  // The entry is read only after the index that covers it.
  arch::io_rmb();
  UsedElem u = used_.read_field(&Used::ring, last_used_ % size_);
  ++last_used_;
  if (u.id >= size_ || (outstanding_ & (uint64_t{1} << u.id)) == 0) return ErrorCode::kIoError;
  outstanding_ &= ~(uint64_t{1} << u.id);
  // Return the chain to the free list: walk to its tail, splice it in front.
  uint16_t tail = static_cast<uint16_t>(u.id);
  uint16_t n = 1;
  while ((desc_.read_field(tail, &VirtqDesc::flags) & kDescNext) != 0 && n < size_) {
    tail = desc_.read_field(tail, &VirtqDesc::next);
    ++n;
  }
  desc_.write_field(tail, &VirtqDesc::next, free_head_);
  free_head_ = static_cast<uint16_t>(u.id);
  num_free_ = static_cast<uint16_t>(num_free_ + n);
  return u;
}
