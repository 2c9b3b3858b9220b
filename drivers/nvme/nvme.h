// NvmeController: a driver for an NVMe controller (NVMe 1.4 base specification, PCI class
// 01:08:02), as QEMU's `nvme` device models it: one admin queue pair, one I/O queue pair, the
// first namespace.
//
// Registers (BAR0): CAP (0x00, 64 bits: MQES 15:0, TO 31:24 in 500 ms units, DSTRD 35:32, CSS
// 44:37, MPSMIN 51:48), VS (0x08), CC (0x14: EN 0, CSS 6:4, MPS 10:7, AMS 13:11, SHN 15:14,
// IOSQES 19:16, IOCQES 23:20), CSTS (0x1C: RDY 0, CFS 1, SHST 3:2), AQA (0x24), ASQ (0x28), ACQ
// (0x30). Doorbells from 0x1000, (4 << CAP.DSTRD) bytes apart: SQ y tail at 2y, CQ y head at
// 2y + 1.
//
// Queues: each submission queue is a DArray of 64-byte entries and each completion queue a DArray
// of 16-byte entries in coherent memory (page-aligned, physically contiguous: the queues are
// created with PC = 1). A completion is new while its phase tag equals the phase the driver
// expects; the expected phase flips each time the head wraps. A command's id (CID) is its slot in
// the queue's table of commands in flight.
//
// Data: the caller's buffers are mapped with one scatter-gather mapping (SgMapping, one streaming
// mapping per buffer, neighbours merged) and described by PRP entries: PRP1 is the first byte;
// the rest are the starts of every further memory page (4 KiB, CC.MPS = 0), in PRP2 when there
// is one, else in a PRP list, a page of coherent memory per command slot. PRP entries can describe
// only segments that end on a page boundary (but the last) and start on one (but the first): a
// request whose segments break that rule fails with kLayoutError before the controller sees it.
// Two choices keep the library from breaking it on its own:
//   - DmaConstraints::min_align_mask = 0xFFF: a bounced buffer keeps its offset within the page,
//     so a bounce slot spans the same pages the buffer does;
//   - each buffer is mapped whole (the SgMapping gets exactly one handle per buffer): the split
//     of a non-coherent device's receive buffer at its partial cache lines would put the edges
//     in bounce slots and the middle in place, which PRP entries cannot express. Such a buffer is
//     bounced whole instead (with its page offset kept).
// The largest request is max_transfer_bytes(): MDTS (Identify Controller byte 77, in units of the
// minimum page size 2^(12 + CAP.MPSMIN)) and one PRP list page. Each buffer is also limited by
// the device's DeviceDma::max_mapping_size() when it may be bounced.
//
// Completion, chosen at init:
//   kPolled: the request call polls the completion queue and unmaps the data itself;
//   kInterrupt: MSI-X, one vector per queue (admin queue: table entry 0, I/O queue: entry 1),
//     each message from arch::msi_alloc steered to CPU `irq_cpu`. The handler consumes the
//     completion queue, unmaps each finished command's scatter-gather mapping (in interrupt
//     context, as a real driver's completion path does), records the status and marks the slot
//     done; the request call only waits for that. A controller without an MSI-X capability
//     falls back to kPolled (completion() says which mode init chose).
//
// Threading: one command at a time per controller (the caller serializes); each call waits until
// the command completes, bounded by a timeout, after which the controller is disabled and
// unbound. Not for interrupt context; in kInterrupt mode the wait unmasks interrupts on the
// calling CPU.
#pragma once

#include "dmakit/device_dma.h"
#include "dmakit/scatter_gather.h"
#include "dmakit/support/result.h"
#include "dmakit/support/span.h"
#include "drivers/pci/mmio.h"
#include "drivers/pci/pci_device.h"
#include "drivers/pci/pci_msi.h"

// A submission queue entry (NVMe 1.4, 4.2).
struct NvmeCommand {
  uint32_t cdw0 = 0;  // Opcode 7:0, fused 9:8, PSDT 15:14 (0: PRPs), CID 31:16.
  uint32_t nsid = 0;
  uint32_t cdw2 = 0;
  uint32_t cdw3 = 0;
  uint64_t mptr = 0;
  uint64_t prp1 = 0;
  uint64_t prp2 = 0;
  uint32_t cdw10 = 0;
  uint32_t cdw11 = 0;
  uint32_t cdw12 = 0;
  uint32_t cdw13 = 0;
  uint32_t cdw14 = 0;
  uint32_t cdw15 = 0;
};
static_assert(sizeof(NvmeCommand) == 64);

// A completion queue entry (NVMe 1.4, 4.6).
struct NvmeCompletion {
  uint32_t dw0 = 0;  // Command specific.
  uint32_t dw1 = 0;
  uint16_t sq_head = 0;
  uint16_t sq_id = 0;
  uint16_t cid = 0;
  uint16_t status = 0;  // Phase tag 0, status field 15:1 (0: success).
};
static_assert(sizeof(NvmeCompletion) == 16);

class NvmeController {
 public:
  static constexpr size_t kPageSize = 4096;  // CC.MPS = 0: the memory page size of PRPs.
  static constexpr uint16_t kAdminDepth = 8;
  static constexpr uint16_t kIoDepth = 8;
  static constexpr size_t kMaxBuffers = 16;  // Caller buffers per request.
  // PRP entries in one PRP list page; a request needs at most one list.
  static constexpr size_t kPrpListEntries = kPageSize / sizeof(uint64_t);
  static constexpr uint64_t kDefaultTimeoutNs = 5'000'000'000;

  enum class Completion : uint8_t { kPolled, kInterrupt };

  // What one request did, for reports and tests.
  struct Request {
    size_t buffers = 0;
    size_t segments = 0;     // After merging neighbours.
    size_t prp_entries = 0;  // Page entries (PRP1, then PRP2 or the list's).
    size_t bounced = 0;      // Buffers the mapping bounced.
    bool prp_list = false;   // PRP2 pointed to a PRP list.
    uint64_t elapsed_ns = 0;
  };

  // Counters since init.
  struct Stats {
    uint64_t commands = 0;         // Admin and I/O commands completed (any status).
    uint64_t direct_buffers = 0;   // I/O buffers mapped in place.
    uint64_t bounced_buffers = 0;  // I/O buffers that went through a bounce slot.
    uint64_t prp_lists = 0;        // I/O commands that needed a PRP list.
    uint64_t interrupts = 0;       // Handler runs (kInterrupt), both queues.
    uint64_t irq_completed = 0;    // Completions the handler consumed.
    uint64_t unknown = 0;          // Completions that matched no command in flight.
  };

  NvmeController() = default;
  NvmeController(const NvmeController&) = delete;
  NvmeController& operator=(const NvmeController&) = delete;
  ~NvmeController() { shutdown(); }

  // Binds to an NVMe PCI function and brings it up: reset (CC.EN = 0, CSTS.RDY = 0), the admin
  // queue pair, enable, Identify Controller and Identify Namespace 1, one I/O completion and
  // submission queue (depth min(kIoDepth, CAP.MQES + 1)). `dma` (copied; its min_align_mask is
  // set to the page offset, see above) gives the controller's DMA constraints for the queues, the
  // PRP lists and the data mappings. `pci` must outlive this object.
  // Errors: kInvalidArgument (already bound, null device or DmaOp), kNotSupported (no NVM command
  // set, a minimum page size above 4 KiB, a namespace format with metadata or an LBA size not
  // between 512 bytes and 4 KiB), kNotFound (BAR0 too small, namespace 1 absent; with
  // kInterrupt: an MSI-X table of fewer than two entries), kTimedOut (CSTS.RDY never
  // reached the wanted value within CAP.TO), kIoError (controller fatal status, or an admin
  // command failed), coherent-allocation errors (kNoMemory, kDmaMaskNotMatch), PciDevice::enable
  // and map_bar errors, arch::msi_alloc's errors. On error the controller is left disabled and
  // unbound, nothing allocated (memory a controller that would not stop may still use is leaked
  // on purpose rather than reused).
  Result<void> init(PciDevice* pci, const DeviceDma& dma,
                    Completion completion = Completion::kPolled, unsigned irq_cpu = 0);

  // Reads blocks starting at `lba` into `bufs` (total a non-zero multiple of lba_size(), at most
  // max_transfer_bytes()). Preconditions: each buffer is physically contiguous normal memory,
  // untouched by the CPU during the call.
  // Errors: kInvalidArgument (not bound), kLayoutError (no buffers, an empty buffer, total not a
  // multiple of lba_size(), a buffer address not 4-byte aligned, or buffers PRP entries cannot
  // describe: a buffer but the first not starting on a page boundary, or one but the last not
  // ending on one, after merging), kOutOfRange (beyond the namespace, more than kMaxBuffers
  // buffers, above max_transfer_bytes()), the mapping errors of SgMapping::map (kDmaMaskNotMatch,
  // kNoMemory, kLayoutError above max_mapping_size; the controller is not involved then),
  // kIoError (the controller reported an error status for the command; or a fatal error, CSTS.CFS,
  // after which it is disabled and unbound), kTimedOut (no completion: the controller is disabled
  // and unbound before the buffers are released).
  Result<Request> read(uint64_t lba, support::Span<const SgEntry> bufs);
  // Writes `bufs` to the blocks starting at `lba`. Same preconditions and errors.
  Result<Request> write(uint64_t lba, support::Span<const SgEntry> bufs);

  bool bound() const { return pci_ != nullptr; }
  PciDevice* pci() const { return pci_; }
  uint32_t version() const { return version_; }  // VS: major 31:16, minor 15:8.
  uint32_t doorbell_stride() const { return doorbell_stride_; }
  uint16_t io_queue_depth() const { return io_.depth; }
  // MDTS in bytes (0: the controller sets no limit).
  uint64_t mdts_bytes() const { return mdts_bytes_; }
  // Largest request: MDTS, and what PRP1 plus one PRP list page can describe. This is the
  // controller's limit on one transfer, held here because DeviceDma has no per-device mapping
  // limit to carry it; callers size their requests with it.
  size_t max_transfer_bytes() const { return max_transfer_; }
  uint32_t lba_size() const { return lba_size_; }
  uint64_t namespace_blocks() const { return ns_blocks_; }
  uint32_t nsid() const { return kNsid; }
  Completion completion() const { return completion_; }
  // The constraints the data mappings use; a test may make them stricter (a lower mask, forced
  // bouncing) between requests.
  DeviceDma& dma() { return dma_; }
  // Read with interrupts masked on the handler's CPU, or with no command in flight, for an exact
  // snapshot.
  const Stats& stats() const { return stats_; }

  // How long a command may take before the controller is declared hung (kTimedOut: disabled and
  // unbound). Default kDefaultTimeoutNs. Any context; takes effect with the next command.
  void set_timeout_ns(uint64_t ns) { timeout_ns_ = ns; }
  uint64_t timeout_ns() const { return timeout_ns_; }
  // Masks (or unmasks) the I/O queue's MSI-X entry: the controller then holds its completion
  // messages pending (they are sent when unmasked), and a command waiting for one ends in
  // kTimedOut. For a caller that wants to gather completions, and for tests of the timeout path.
  // Errors: kInvalidArgument (not bound, or not in kInterrupt mode). Thread context.
  Result<void> mask_io_vector(bool masked);

  // Shuts the controller down (CC.SHN normal shutdown, then CC.EN = 0: it stops using memory),
  // frees the queues, the PRP lists and the identify page, releases the MSI-X messages, checks
  // that no mapping or allocation of the device is left (DeviceDma::check_no_mappings reports
  // any) and unbinds. Idempotent.
  void shutdown();

 private:
  static constexpr uint32_t kNsid = 1;

  // A command waiting for its completion, by CID.
  struct Slot {
    bool busy = false;             // Submitter's: the CID is taken.
    SgMapping* mapping = nullptr;  // Taken (exchanged to null) by whoever unmaps it.
    uint16_t status = 0;           // Status field of the completion (phase bit dropped).
    uint32_t dw0 = 0;
    bool done = false;  // Set with release order once status is valid.
  };

  struct Queue {
    NvmeController* ctrl = nullptr;
    uint16_t qid = 0;
    uint16_t depth = 0;
    DArray<NvmeCommand> sq;
    DArray<NvmeCompletion> cq;
    uint16_t sq_tail = 0;
    uint16_t sq_head = 0;  // As the last completion reported it.
    uint16_t cq_head = 0;
    uint16_t phase = 1;
    uint16_t next_cid = 0;
    Slot slots[kIoDepth > kAdminDepth ? kIoDepth : kAdminDepth];
    arch::MsiMessage msi;  // address 0: none allocated.
  };

  Result<void> bring_up();
  Result<void> wait_ready(bool ready);
  Result<void> disable();
  Result<void> alloc_queue(Queue* q, uint16_t qid, uint16_t depth);
  void free_queue(Queue* q);
  void leak_queue(Queue* q);
  Result<void> setup_interrupts();
  void release_interrupts();
  Result<void> identify();
  Result<void> create_io_queues();
  // Takes a free command id of `q`. Errors: kBusy (the queue is full or every CID is taken).
  Result<uint16_t> take_cid(Queue* q);
  // Submits `cmd` on `q` under `cid` (from take_cid; given back here), with `mapping` to unmap on
  // completion (may be null), and waits. Returns the completion's dword 0. Errors: kIoError
  // (non-zero status; or the controller reported a fatal error, CSTS.CFS, and is then disabled and
  // unbound), kTimedOut (the controller is then disabled and unbound).
  Result<uint32_t> execute(Queue* q, uint16_t cid, NvmeCommand cmd, SgMapping* mapping);
  Result<Request> submit(bool write, uint64_t lba, support::Span<const SgEntry> bufs);
  // Fills PRP1/PRP2 of `cmd` (and the PRP list of CID slot `cid`) from `segs`.
  Result<void> build_prps(support::Span<const DmaSegment> segs, size_t cid, NvmeCommand* cmd,
                          Request* req);
  // Consumes every new completion of `q` (counted in irq_completed when `from_irq`); returns how
  // many. Any context.
  size_t process_completions(Queue* q, bool from_irq);
  // The MSI-X handler of one queue (ctx: the Queue). Interrupt context.
  static void on_interrupt(void* ctx);
  // The command in `slot` will not complete: stops the controller, unmaps the command's data
  // (unless the handler is doing so right now) and unbinds.
  void abandon(Queue* q, Slot* slot);
  uint32_t sq_doorbell(uint16_t qid) const { return 0x1000 + (2u * qid) * doorbell_stride_; }
  uint32_t cq_doorbell(uint16_t qid) const { return 0x1000 + (2u * qid + 1) * doorbell_stride_; }

  PciDevice* pci_ = nullptr;
  MmioRegion regs_;
  DeviceDma dma_;
  Completion completion_ = Completion::kPolled;
  unsigned irq_cpu_ = 0;
  uint64_t cap_ = 0;
  uint32_t version_ = 0;
  uint32_t doorbell_stride_ = 4;
  uint64_t ready_timeout_ns_ = 0;
  uint64_t timeout_ns_ = kDefaultTimeoutNs;
  uint64_t mdts_bytes_ = 0;
  size_t max_transfer_ = 0;
  uint32_t lba_size_ = 0;
  uint64_t ns_blocks_ = 0;
  bool enabled_ = false;  // CC.EN was set by bring_up.
  Queue admin_;
  Queue io_;
  DArray<uint64_t> prp_lists_;  // kIoDepth pages: one PRP list per I/O CID.
  DArray<uint8_t> identify_;    // One page for Identify data.
  pci::MsixTable msix_;
  Stats stats_;
};
