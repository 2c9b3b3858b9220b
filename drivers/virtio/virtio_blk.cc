#include "drivers/virtio/virtio_blk.h"

#include "dmakit/support/bitops.h"
#include "dmakit/support/defer.h"
#include "testkernel/arch.h"

namespace {

// virtio-blk feature bits (virtio spec 5.2.3).
constexpr uint64_t kBlkSizeMax = 1ull << 1;
constexpr uint64_t kBlkSegMax = 1ull << 2;
constexpr uint64_t kBlkRo = 1ull << 5;

// Device configuration: le64 capacity (512-byte sectors), le32 size_max, le32 seg_max.
constexpr uint32_t kCfgCapacity = 0;
constexpr uint32_t kCfgSizeMax = 8;
constexpr uint32_t kCfgSegMax = 12;

constexpr uint32_t kTypeIn = 0;   // Read.
constexpr uint32_t kTypeOut = 1;  // Write.
constexpr uint8_t kStatusOk = 0;
constexpr uint8_t kStatusUnset = 0xFF;  // Not a value the device writes.

constexpr uint16_t kRequestQueue = 0;
constexpr uint16_t kRequestVector = 0;  // MSI-X table entry of the request queue.

struct RequestHeader {
  uint32_t type;
  uint32_t reserved;
  uint64_t sector;
};
static_assert(sizeof(RequestHeader) == 16);
// One pool block: the header, then the status byte.
constexpr size_t kStatusOffset = sizeof(RequestHeader);
constexpr size_t kBlockSize = kStatusOffset + 1;

}  // namespace

Result<void> VirtioBlk::init(PciDevice* pci, const DeviceDma& dma, Completion completion,
                             unsigned irq_cpu) {
  if (transport_.bound() || pci == nullptr || dma.op() == nullptr) {
    return ErrorCode::kInvalidArgument;
  }
  dma_ = dma;
  completion_ = completion;
  irq_cpu_ = irq_cpu;
  TRY(transport_.init(pci));
  auto r = bring_up();
  if (!r.ok()) shutdown();
  return r;
}

Result<void> VirtioBlk::bring_up() {
  TRY(transport_.reset());
  transport_.add_status(virtio::kStatusAcknowledge);
  transport_.add_status(virtio::kStatusDriver);
  TRY_ASSIGN(features_,
             transport_.negotiate(virtio::kFeatureVersion1 | virtio::kFeatureAccessPlatform |
                                      kBlkSizeMax | kBlkSegMax | kBlkRo,
                                  virtio::kFeatureVersion1));
  const MmioRegion& cfg = transport_.device_config();
  if (cfg.size() < kCfgSegMax + 4) return ErrorCode::kNotFound;
  capacity_ = read_capacity();
  size_max_ = (features_ & kBlkSizeMax) != 0 ? cfg.read32(kCfgSizeMax) : 0;
  seg_max_ = (features_ & kBlkSegMax) != 0 ? cfg.read32(kCfgSegMax) : 0;

  uint16_t max = transport_.queue_max_size(kRequestQueue);
  if (max == 0) return ErrorCode::kNotFound;
  TRY(vq_.init(dma_, support::min<uint16_t>(max, SplitVirtqueue::kMaxSize)));
  uint16_t vector = VirtioPci::kNoVector;
  if (completion_ == Completion::kInterrupt) {
    TRY(setup_interrupts());
    vector = kRequestVector;
  }
  TRY(transport_.setup_queue(kRequestQueue, vq_, vector));
  pool_ = new (pool_storage_) DmaPool();
  TRY(pool_->init(&dma_, kBlockSize, 16, 0, "virtio-blk headers"));
  transport_.add_status(virtio::kStatusDriverOk);
  if ((transport_.status() & (virtio::kStatusNeedsReset | virtio::kStatusFailed)) != 0) {
    return ErrorCode::kIoError;
  }
  return support::ok();
}

Result<void> VirtioBlk::setup_interrupts() {
  TRY(msix_.init(transport_.pci()));
  TRY_ASSIGN(msi_, arch::msi_alloc(&VirtioBlk::on_interrupt, this, irq_cpu_,
                                   pci::requester_id(transport_.pci()->address())));
  TRY(msix_.set(kRequestVector, msi_));
  msix_.enable();
  // With MSI-X on, the device lays out its common configuration with the vector fields in use.
  TRY(transport_.set_config_vector(VirtioPci::kNoVector));
  return support::ok();
}

void VirtioBlk::release_interrupts() {
  if (msix_.valid()) msix_.disable();
  msix_ = pci::MsixTable();
  if (msi_.address != 0) (void)arch::msi_free(msi_);
  msi_ = arch::MsiMessage{};
}

void VirtioBlk::on_interrupt(void* self) {
  auto* d = static_cast<VirtioBlk*>(self);
  ++d->irq_stats_.interrupts;
  while (d->vq_.has_used()) {
    auto used = d->vq_.pop_used();
    if (!used.ok() || used->id >= SplitVirtqueue::kMaxSize ||
        d->inflight_[used->id].mapping == nullptr) {
      ++d->irq_stats_.unknown;
      continue;
    }
    Inflight& r = d->inflight_[used->id];
    // The device is done with the data: for a read, this is where the bytes reach the caller's
    // buffers (invalidate, or copy out of a bounce slot).
    r.mapping->unmap();
    r.mapping = nullptr;
    ++d->irq_stats_.completed;
    __atomic_store_n(&r.done, true, __ATOMIC_RELEASE);
  }
}

uint64_t VirtioBlk::read_capacity() {
  const MmioRegion& cfg = transport_.device_config();
  // A 64-bit field read as two halves: retry until the generation is stable around both.
  for (;;) {
    uint8_t gen = transport_.config_generation();
    uint64_t lo = cfg.read32(kCfgCapacity);
    uint64_t hi = cfg.read32(kCfgCapacity + 4);
    if (transport_.config_generation() == gen) return hi << 32 | lo;
  }
}

void VirtioBlk::shutdown() {
  if (!transport_.bound()) return;
  // After the reset the device no longer reads or writes the rings or the headers: then they may
  // go. A device that does not reset keeps them (leaked rather than reused under its feet).
  if (transport_.reset().ok()) {
    vq_.reset();
    if (pool_ != nullptr) {
      pool_->~DmaPool();
      pool_ = nullptr;
    }
    dma_.check_no_mappings();
  }
  release_interrupts();
  transport_.release();
}

Result<VirtioBlk::Request> VirtioBlk::read(uint64_t sector, support::Span<const SgEntry> bufs) {
  return submit(/*write=*/false, sector, bufs);
}

Result<VirtioBlk::Request> VirtioBlk::write(uint64_t sector, support::Span<const SgEntry> bufs) {
  if ((features_ & kBlkRo) != 0) return ErrorCode::kNotSupported;
  return submit(/*write=*/true, sector, bufs);
}

Result<VirtioBlk::Request> VirtioBlk::submit(bool write, uint64_t sector,
                                             support::Span<const SgEntry> bufs) {
  if (!transport_.bound()) return ErrorCode::kInvalidArgument;
  if (bufs.empty()) return ErrorCode::kLayoutError;
  if (bufs.size() > kMaxBuffers) return ErrorCode::kOutOfRange;
  uint64_t total = 0;
  for (const SgEntry& e : bufs) {
    if (e.size == 0) return ErrorCode::kLayoutError;
    total += e.size;
  }
  if (total % kSectorSize != 0 || total > 0xFFFF'FFFFull) return ErrorCode::kLayoutError;
  uint64_t count = total / kSectorSize;
  if (sector > capacity_ || count > capacity_ - sector) return ErrorCode::kOutOfRange;

  Request req;
  req.buffers = bufs.size();
  SgLimits limits;
  // A descriptor's length is 32 bits; size_max, when the device gives one, is its own limit.
  limits.max_segment_size = size_max_ != 0 ? size_max_ : 0x8000'0000u;
  SgList<kMaxBuffers, kMaxSegments> sg;
  TRY(sg.map(dma_, bufs, write ? DmaDirection::kToDevice : DmaDirection::kFromDevice, limits));
  auto segs = sg.segments();
  req.segments = segs.size();
  if ((seg_max_ != 0 && segs.size() > seg_max_) || segs.size() + 2 > vq_.size()) {
    return ErrorCode::kOutOfRange;
  }

  TRY_ASSIGN(DmaPoolBlock block, pool_->alloc());
  DmaPool* pool = pool_;
  auto free_block = support::defer([&] { (void)pool->free(block.cpu); });
  auto* hdr = static_cast<RequestHeader*>(block.cpu);
  hdr->type = write ? kTypeOut : kTypeIn;
  hdr->reserved = 0;
  hdr->sector = sector;
  volatile uint8_t* status = static_cast<uint8_t*>(block.cpu) + kStatusOffset;
  *status = kStatusUnset;

  SplitVirtqueue::Buffer chain[kMaxSegments + 2];
  size_t n = 0;
  chain[n++] = {block.dma, sizeof(RequestHeader), false};
  for (const DmaSegment& s : segs) {
    chain[n++] = {s.addr, static_cast<uint32_t>(s.size), !write};
  }
  chain[n++] = {block.dma + kStatusOffset, 1, true};
  TRY_ASSIGN(uint16_t head, vq_.add_chain(support::Span<const SplitVirtqueue::Buffer>(chain, n)));
  Inflight* slot = nullptr;
  if (completion_ == Completion::kInterrupt) {
    // Registered before the device can see the chain, so the handler always finds it.
    slot = &inflight_[head];
    const uintptr_t flags = arch::irq_save();
    slot->mapping = &sg.mapping();
    slot->done = false;
    arch::irq_restore(flags);
  }
  vq_.publish(head);
  uint64_t start = arch::now_ns();
  transport_.notify(kRequestQueue);
  if (slot != nullptr) {
    while (!__atomic_load_n(&slot->done, __ATOMIC_ACQUIRE)) {
      if (arch::now_ns() - start > timeout_ns_) {
        if (!transport_.reset().ok()) transport_.pci()->disable();
        // From here the handler leaves the mapping alone; this call unmaps it.
        const uintptr_t f = arch::irq_save();
        slot->mapping = nullptr;
        arch::irq_restore(f);
        sg.mapping().unmap();
        free_block.cancel();
        (void)pool->free(block.cpu);
        shutdown();
        return ErrorCode::kTimedOut;
      }
      arch::irq_wait();
    }
    req.elapsed_ns = arch::now_ns() - start;
    return *status == kStatusOk ? Result<Request>(req) : Result<Request>(ErrorCode::kIoError);
  }
  while (!vq_.has_used()) {
    if (arch::now_ns() - start > timeout_ns_) {
      // The device may still use the chain: stop it (reset; if even that fails, take it off the
      // bus) before the buffers and the block go back, then unbind.
      if (!transport_.reset().ok()) transport_.pci()->disable();
      sg.mapping().unmap();
      free_block.cancel();
      (void)pool->free(block.cpu);
      shutdown();
      return ErrorCode::kTimedOut;
    }
  }
  req.elapsed_ns = arch::now_ns() - start;
  TRY_ASSIGN(SplitVirtqueue::UsedElem used, vq_.pop_used());
  if (used.id != head) return ErrorCode::kIoError;
  // The device is done with the data: unmapping hands it back to the CPU (for a read, this is
  // where the bytes reach the caller's buffers: invalidate, or copy out of a bounce slot).
  sg.mapping().unmap();
  return *status == kStatusOk ? Result<Request>(req) : Result<Request>(ErrorCode::kIoError);
}
