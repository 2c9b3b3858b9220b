// VirtioBlk: a virtio-blk driver (virtio 1.x over PCI, one request queue, polled or completed by
// MSI-X).
//
// A request is a descriptor chain (virtio spec 5.2.6):
//   header  {le32 type (0 read, 1 write), le32 reserved, le64 sector}   device reads
//   data    one descriptor per DMA segment of the caller's buffers      device reads (write) or
//                                                                        writes (read)
//   status  one byte, 0 = OK                                            device writes
// Header and status share one small block from a DmaPool (coherent memory: no cache maintenance);
// the data buffers are the caller's, mapped for this request only with a scatter-gather mapping
// (SgList: each buffer mapped directly or bounced as the device's DMA constraints decide,
// neighbours merged, split at the device's size_max), and unmapped when the device is done --
// which is where the data a read brought in becomes visible to the CPU. The virtqueue lives in
// coherent memory (SplitVirtqueue).
//
// Features: VIRTIO_F_VERSION_1 is required; VIRTIO_F_ACCESS_PLATFORM (the device uses DMA
// addresses, which is what this driver gives it anyway), VIRTIO_BLK_F_SIZE_MAX, _SEG_MAX and _RO
// are accepted when offered.
//
// Completion, chosen at init:
//   kPolled: the request call polls the used ring and unmaps the data itself;
//   kInterrupt: the request queue's used-buffer notifications go to MSI-X table entry 0 (the
//     common configuration's queue_msix_vector; configuration changes get no vector), whose
//     message comes from arch::msi_alloc. The interrupt handler pops the used ring, unmaps each
//     finished request's scatter-gather mapping there (in interrupt context, as a real driver's
//     completion path does) and marks it done; the request call only waits for that.
//
// Threading: one request at a time (the caller serializes); each call waits until the request
// completes, bounded by a timeout. Not for interrupt context; in kInterrupt mode the wait unmasks
// interrupts on the calling CPU.
#pragma once

#include "dmakit/device_dma.h"
#include "dmakit/dma_pool.h"
#include "dmakit/scatter_gather.h"
#include "dmakit/support/result.h"
#include "dmakit/support/span.h"
#include "drivers/pci/pci_msi.h"
#include "drivers/virtio/split_virtqueue.h"
#include "drivers/virtio/virtio_pci.h"

class VirtioBlk {
 public:
  static constexpr uint32_t kSectorSize = 512;
  static constexpr size_t kMaxBuffers = 16;   // Caller buffers per request.
  static constexpr size_t kMaxSegments = 32;  // DMA segments per request.
  static constexpr uint64_t kDefaultTimeoutNs = 5'000'000'000;

  // What one request did, for reports and tests.
  struct Request {
    size_t buffers = 0;
    size_t segments = 0;  // Data descriptors after merging and splitting.
    uint64_t elapsed_ns = 0;
  };

  enum class Completion : uint8_t { kPolled, kInterrupt };

  // Completion-interrupt counters (kInterrupt mode).
  struct IrqStats {
    uint64_t interrupts = 0;  // Handler runs.
    uint64_t completed = 0;   // Requests the handler completed (and unmapped).
    uint64_t unknown = 0;     // Used entries that matched no request in flight.
  };

  VirtioBlk() = default;
  VirtioBlk(const VirtioBlk&) = delete;
  VirtioBlk& operator=(const VirtioBlk&) = delete;
  ~VirtioBlk() { shutdown(); }

  // Binds to a virtio-blk PCI function and brings it to DRIVER_OK: transport, reset, feature
  // negotiation, the request queue (size min(device maximum, SplitVirtqueue::kMaxSize)), the
  // header pool. `dma` (copied) gives the device's DMA constraints for the rings, the headers and
  // the data mappings. `pci` must outlive this object.
  // Errors: kInvalidArgument (already bound, null device), kNotSupported (no VIRTIO_F_VERSION_1,
  // features refused), kNotFound (not a modern virtio device, no request queue), kTimedOut (reset
  // never completed), coherent-allocation errors (kNoMemory, kDmaMaskNotMatch). On error the
  // device is left reset (or FAILED) and unbound.
  // With Completion::kInterrupt, requests complete by MSI-X steered to CPU `irq_cpu`; further
  // errors: kNotFound (no MSI-X capability), kNoMemory (no MSI left, or the device refused the
  // vector), arch::msi_alloc's errors.
  Result<void> init(PciDevice* pci, const DeviceDma& dma,
                    Completion completion = Completion::kPolled, unsigned irq_cpu = 0);

  // Reads `bufs` (total a non-zero multiple of 512 bytes) from the disk at `sector`.
  // Preconditions: each buffer is physically contiguous normal memory, untouched by the CPU during
  // the call. Errors: kLayoutError (empty, an empty buffer, total not a multiple of 512 or above
  // 4 GiB), kOutOfRange (beyond the disk, or more than kMaxBuffers buffers / kMaxSegments
  // segments, or more segments than the device's seg_max), the mapping errors of SgMapping::map
  // (kDmaMaskNotMatch, kNoMemory, ...; the device is not involved then), kNoMemory (no header
  // block), kIoError (the device reported an error), kTimedOut (no completion: the device is reset
  // and unbound before the buffers are released).
  Result<Request> read(uint64_t sector, support::Span<const SgEntry> bufs);
  // Writes `bufs` to the disk at `sector`. Same preconditions; errors as read(), plus
  // kNotSupported (the disk is read-only).
  Result<Request> write(uint64_t sector, support::Span<const SgEntry> bufs);

  bool bound() const { return transport_.bound(); }
  uint64_t capacity_sectors() const { return capacity_; }
  uint64_t features() const { return features_; }
  uint32_t seg_max() const { return seg_max_; }
  uint32_t size_max() const { return size_max_; }
  uint16_t queue_size() const { return vq_.size(); }
  // The constraints the data mappings use; a test may make them stricter (a lower mask, forced
  // bouncing) between requests.
  DeviceDma& dma() { return dma_; }
  // The header pool (null while unbound).
  const DmaPool* header_pool() const { return pool_; }
  PciDevice* pci() const { return transport_.pci(); }
  Completion completion() const { return completion_; }
  // Read with interrupts masked for an exact snapshot.
  const IrqStats& irq_stats() const { return irq_stats_; }

  // Resets the device (it stops using memory), frees the queue and the header pool, checks that no
  // mapping or allocation of the device is left (DeviceDma::check_no_mappings reports any) and
  // unbinds. Idempotent.
  void shutdown();

 private:
  // A request waiting for its completion interrupt, by the head of its chain.
  struct Inflight {
    SgMapping* mapping = nullptr;  // Unmapped by the handler; null when the slot is free.
    bool done = false;
  };

  Result<Request> submit(bool write, uint64_t sector, support::Span<const SgEntry> bufs);
  Result<void> bring_up();
  Result<void> setup_interrupts();
  void release_interrupts();
  uint64_t read_capacity();
  // The MSI-X handler. Interrupt context.
  static void on_interrupt(void* self);

  VirtioPci transport_;
  DeviceDma dma_;
  SplitVirtqueue vq_;
  // The header pool is built in place by init and destroyed by shutdown, so that a teardown
  // gives every coherent chunk back before checking that the device leaked nothing.
  alignas(DmaPool) unsigned char pool_storage_[sizeof(DmaPool)];
  DmaPool* pool_ = nullptr;
  uint64_t features_ = 0;
  uint64_t capacity_ = 0;
  uint32_t seg_max_ = 0;
  uint32_t size_max_ = 0;
  uint64_t timeout_ns_ = kDefaultTimeoutNs;
  Completion completion_ = Completion::kPolled;
  unsigned irq_cpu_ = 0;
  pci::MsixTable msix_;
  arch::MsiMessage msi_;  // address 0: none allocated.
  Inflight inflight_[SplitVirtqueue::kMaxSize];
  IrqStats irq_stats_;
};
