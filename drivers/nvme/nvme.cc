#include "drivers/nvme/nvme.h"

#include "dmakit/support/bitops.h"
#include "testkernel/arch.h"

namespace {

// Controller registers (NVMe 1.4, 3.1).
constexpr uint32_t kRegCap = 0x00;
constexpr uint32_t kRegVs = 0x08;
constexpr uint32_t kRegCc = 0x14;
constexpr uint32_t kRegCsts = 0x1C;
constexpr uint32_t kRegAqa = 0x24;
constexpr uint32_t kRegAsq = 0x28;
constexpr uint32_t kRegAcq = 0x30;

constexpr uint32_t kCcEnable = 1u << 0;
constexpr uint32_t kCcShnMask = 3u << 14;
constexpr uint32_t kCcShnNormal = 1u << 14;
constexpr uint32_t kCcIosqes = 6u << 16;  // 2^6 = 64-byte submission entries.
constexpr uint32_t kCcIocqes = 4u << 20;  // 2^4 = 16-byte completion entries.
constexpr uint32_t kCstsReady = 1u << 0;
constexpr uint32_t kCstsFatal = 1u << 1;
constexpr uint32_t kCstsShstMask = 3u << 2;
constexpr uint32_t kCstsShstComplete = 2u << 2;

constexpr uint64_t kCapCssNvm = 1ull << 37;
constexpr uint64_t kHalfSecondNs = 500'000'000;

// Admin opcodes (NVMe 1.4, 5).
constexpr uint8_t kAdminCreateSq = 0x01;
constexpr uint8_t kAdminCreateCq = 0x05;
constexpr uint8_t kAdminIdentify = 0x06;
// NVM command set opcodes (NVM command set 1.0, 3).
constexpr uint8_t kIoWrite = 0x01;
constexpr uint8_t kIoRead = 0x02;

constexpr uint32_t kCnsNamespace = 0;
constexpr uint32_t kCnsController = 1;
// Create I/O queue dword 11 bits.
constexpr uint32_t kQueueContiguous = 1u << 0;
constexpr uint32_t kCqInterruptsEnabled = 1u << 1;

constexpr uint32_t kAllOnes = 0xFFFF'FFFFu;  // What a register reads when the device is gone.

}  // namespace

Result<void> NvmeController::init(PciDevice* pci, const DeviceDma& dma, Completion completion,
                                  unsigned irq_cpu) {
  if (bound() || pci == nullptr || dma.op() == nullptr) return ErrorCode::kInvalidArgument;
  pci_ = pci;
  dma_ = dma;
  // PRP entries after the first address whole pages: a bounce slot must keep the buffer's offset
  // within its page so that it spans the same pages.
  dma_.set_min_align_mask(kPageSize - 1);
  if (dma_.name() == nullptr) dma_.set_name("nvme");
  completion_ = completion;
  irq_cpu_ = irq_cpu;
  stats_ = Stats{};
  auto r = bring_up();
  if (!r.ok()) shutdown();
  return r;
}

Result<void> NvmeController::bring_up() {
  TRY(pci_->enable(/*bus_master=*/true));
  TRY_ASSIGN(regs_, pci_->map_bar(0));
  if (regs_.size() < 0x1000 + 8) return ErrorCode::kNotFound;
  cap_ = uint64_t{regs_.read32(kRegCap)} | uint64_t{regs_.read32(kRegCap + 4)} << 32;
  version_ = regs_.read32(kRegVs);
  if (static_cast<uint32_t>(cap_) == kAllOnes) return ErrorCode::kIoError;
  doorbell_stride_ = 4u << ((cap_ >> 32) & 0xF);
  if (regs_.size() < uint64_t{cq_doorbell(1)} + 4) return ErrorCode::kNotFound;
  if ((cap_ & kCapCssNvm) == 0) return ErrorCode::kNotSupported;
  // CC.MPS = 0 (4 KiB) must lie within [MPSMIN, MPSMAX].
  if (((cap_ >> 48) & 0xF) != 0) return ErrorCode::kNotSupported;
  uint64_t to = (cap_ >> 24) & 0xFF;
  ready_timeout_ns_ = (to == 0 ? 1 : to) * kHalfSecondNs;
  const uint32_t entries = static_cast<uint32_t>(cap_ & 0xFFFF) + 1;  // MQES is 0's based.

  // The firmware (or an earlier binding) may have left it enabled.
  enabled_ = true;
  TRY(disable());

  TRY(alloc_queue(&admin_, 0, static_cast<uint16_t>(support::min<uint32_t>(kAdminDepth, entries))));
  TRY(alloc_queue(&io_, 1, static_cast<uint16_t>(support::min<uint32_t>(kIoDepth, entries))));
  TRY_ASSIGN(prp_lists_, dma_.alloc_array<uint64_t>(kIoDepth * kPrpListEntries, kPageSize));
  TRY_ASSIGN(identify_, dma_.alloc_array<uint8_t>(kPageSize, kPageSize));
  if (completion_ == Completion::kInterrupt) TRY(setup_interrupts());

  regs_.write32(kRegAqa, uint32_t{admin_.depth - 1u} << 16 | (admin_.depth - 1u));
  uint64_t asq = admin_.sq.dma_addr().value();
  uint64_t acq = admin_.cq.dma_addr().value();
  regs_.write32(kRegAsq, static_cast<uint32_t>(asq));
  regs_.write32(kRegAsq + 4, static_cast<uint32_t>(asq >> 32));
  regs_.write32(kRegAcq, static_cast<uint32_t>(acq));
  regs_.write32(kRegAcq + 4, static_cast<uint32_t>(acq >> 32));
  // CSS 0 (NVM command set), MPS 0 (4 KiB), AMS 0 (round robin).
  enabled_ = true;
  regs_.write32(kRegCc, kCcIocqes | kCcIosqes | kCcEnable);
  TRY(wait_ready(true));
  TRY(identify());
  TRY(create_io_queues());
  return support::ok();
}

Result<void> NvmeController::wait_ready(bool ready) {
  const uint64_t start = arch::now_ns();
  for (;;) {
    uint32_t csts = regs_.read32(kRegCsts);
    if (csts == kAllOnes) return ErrorCode::kIoError;
    if (ready && (csts & kCstsFatal) != 0) return ErrorCode::kIoError;
    if (((csts & kCstsReady) != 0) == ready) return support::ok();
    if (arch::now_ns() - start > ready_timeout_ns_) return ErrorCode::kTimedOut;
    arch::cpu_relax();
  }
}

Result<void> NvmeController::disable() {
  uint32_t cc = regs_.read32(kRegCc);
  if ((cc & kCcEnable) != 0) regs_.write32(kRegCc, cc & ~kCcEnable);
  TRY(wait_ready(false));
  enabled_ = false;
  return support::ok();
}

Result<void> NvmeController::alloc_queue(Queue* q, uint16_t qid, uint16_t depth) {
  q->ctrl = this;
  q->qid = qid;
  q->depth = depth;
  q->sq_tail = 0;
  q->sq_head = 0;
  q->cq_head = 0;
  q->phase = 1;  // The queue is zeroed: the controller's first pass writes phase 1.
  q->next_cid = 0;
  for (Slot& s : q->slots) s = Slot{};
  // Page-aligned and, being one allocation, physically contiguous (created with PC = 1).
  TRY_ASSIGN(q->sq, dma_.alloc_array<NvmeCommand>(depth, kPageSize));
  TRY_ASSIGN(q->cq, dma_.alloc_array<NvmeCompletion>(depth, kPageSize));
  return support::ok();
}

void NvmeController::free_queue(Queue* q) {
  q->sq.reset();
  q->cq.reset();
  q->depth = 0;
}

void NvmeController::leak_queue(Queue* q) {
  (void)q->sq.release();
  (void)q->cq.release();
  q->depth = 0;
}

Result<void> NvmeController::setup_interrupts() {
  auto found = msix_.init(pci_);
  if (!found.ok() && found.code() == ErrorCode::kNotFound) {
    // No MSI-X capability: the polled fallback (INTx stays masked).
    msix_ = pci::MsixTable();
    completion_ = Completion::kPolled;
    return support::ok();
  }
  TRY(found);
  if (msix_.size() < 2) return ErrorCode::kNotFound;
  const uint32_t rid = pci::requester_id(pci_->address());
  Queue* queues[] = {&admin_, &io_};
  for (Queue* q : queues) {
    TRY_ASSIGN(q->msi, arch::msi_alloc(&NvmeController::on_interrupt, q, irq_cpu_, rid));
    // Table entry = queue id: the admin completion queue always signals entry 0, and the I/O
    // completion queue is created with interrupt vector 1.
    TRY(msix_.set(q->qid, q->msi));
  }
  msix_.enable();
  return support::ok();
}

Result<void> NvmeController::mask_io_vector(bool masked) {
  if (!bound() || completion_ != Completion::kInterrupt || !msix_.valid()) {
    return ErrorCode::kInvalidArgument;
  }
  if (masked) {
    msix_.mask(io_.qid);
    return support::ok();
  }
  return msix_.set(io_.qid, io_.msi);
}

void NvmeController::release_interrupts() {
  if (msix_.valid()) msix_.disable();
  msix_ = pci::MsixTable();
  Queue* queues[] = {&admin_, &io_};
  for (Queue* q : queues) {
    if (q->msi.address != 0) (void)arch::msi_free(q->msi);
    q->msi = arch::MsiMessage{};
  }
}

Result<void> NvmeController::identify() {
  auto byte = [&](size_t i) { return identify_.read(i); };
  auto le = [&](size_t off, size_t n) {
    uint64_t v = 0;
    for (size_t i = n; i-- > 0;) v = v << 8 | byte(off + i);
    return v;
  };

  NvmeCommand c;
  c.cdw0 = kAdminIdentify;
  c.prp1 = identify_.dma_addr().value();
  c.cdw10 = kCnsController;
  TRY_ASSIGN(uint16_t cid, take_cid(&admin_));
  TRY(execute(&admin_, cid, c, nullptr));
  const uint8_t mdts = byte(77);
  const uint64_t min_page = 1ull << (12 + ((cap_ >> 48) & 0xF));
  // A limit beyond 4 GiB pages is no limit here (and would overflow the shift).
  mdts_bytes_ = mdts == 0 || mdts >= 20 ? 0 : min_page << mdts;
  const uint64_t nn = le(516, 4);
  if (nn < kNsid) return ErrorCode::kNotFound;

  c.nsid = kNsid;
  c.cdw10 = kCnsNamespace;
  TRY_ASSIGN(cid, take_cid(&admin_));
  TRY(execute(&admin_, cid, c, nullptr));
  const uint64_t nsze = le(0, 8);
  if (nsze == 0) return ErrorCode::kNotFound;  // Not an active namespace.
  const unsigned format = byte(26) & 0xF;
  const uint64_t lbaf = le(128 + (4 * format), 4);
  const unsigned lbads = (lbaf >> 16) & 0xFF;
  if ((lbaf & 0xFFFF) != 0 || lbads < 9 || lbads > 12) return ErrorCode::kNotSupported;
  lba_size_ = 1u << lbads;
  ns_blocks_ = nsze;
  // PRP1 and one list page: kPrpListEntries + 1 pages, the first possibly partial.
  const uint64_t prp_limit = kPrpListEntries * kPageSize;
  max_transfer_ =
      static_cast<size_t>(mdts_bytes_ == 0 ? prp_limit : support::min(mdts_bytes_, prp_limit));
  return support::ok();
}

Result<void> NvmeController::create_io_queues() {
  const uint32_t size_id = uint32_t{io_.depth - 1u} << 16 | io_.qid;
  NvmeCommand cq;
  cq.cdw0 = kAdminCreateCq;
  cq.prp1 = io_.cq.dma_addr().value();
  cq.cdw10 = size_id;
  cq.cdw11 = kQueueContiguous;
  if (completion_ == Completion::kInterrupt) {
    cq.cdw11 |= uint32_t{io_.qid} << 16 | kCqInterruptsEnabled;  // Vector = MSI-X entry qid.
  }
  TRY_ASSIGN(uint16_t cid, take_cid(&admin_));
  TRY(execute(&admin_, cid, cq, nullptr));
  NvmeCommand sq;
  sq.cdw0 = kAdminCreateSq;
  sq.prp1 = io_.sq.dma_addr().value();
  sq.cdw10 = size_id;
  sq.cdw11 = uint32_t{io_.qid} << 16 | kQueueContiguous;  // Its completion queue, priority 0.
  TRY_ASSIGN(cid, take_cid(&admin_));
  TRY(execute(&admin_, cid, sq, nullptr));
  return support::ok();
}

void NvmeController::shutdown() {
  if (!bound()) return;
  bool stopped = true;
  if (enabled_ && regs_.valid()) {
    // A normal shutdown first (the controller completes its writes to the medium), then the
    // reset, after which it no longer touches the queues, the lists or the data.
    uint32_t cc = regs_.read32(kRegCc);
    if ((cc & kCcEnable) != 0 && cc != kAllOnes) {
      regs_.write32(kRegCc, (cc & ~kCcShnMask) | kCcShnNormal);
      const uint64_t start = arch::now_ns();
      while ((regs_.read32(kRegCsts) & kCstsShstMask) != kCstsShstComplete &&
             arch::now_ns() - start < ready_timeout_ns_) {
        arch::cpu_relax();
      }
    }
    stopped = disable().ok();
  }
  // The controller sends no more messages once stopped; its MSI-X table is in a BAR, so this
  // comes before decoding goes off.
  release_interrupts();
  pci_->disable();
  if (stopped) {
    free_queue(&admin_);
    free_queue(&io_);
    prp_lists_.reset();
    identify_.reset();
    dma_.check_no_mappings();
  } else {
    // It would not stop: leaked rather than reused under its feet.
    leak_queue(&admin_);
    leak_queue(&io_);
    (void)prp_lists_.release();
    (void)identify_.release();
  }
  regs_ = MmioRegion();
  pci_ = nullptr;
}

Result<uint16_t> NvmeController::take_cid(Queue* q) {
  const uint16_t head = __atomic_load_n(&q->sq_head, __ATOMIC_RELAXED);
  if (static_cast<uint16_t>((q->sq_tail + 1) % q->depth) == head) return ErrorCode::kBusy;
  for (uint16_t i = 0; i < q->depth; ++i) {
    uint16_t cid = static_cast<uint16_t>((q->next_cid + i) % q->depth);
    Slot& s = q->slots[cid];
    if (!__atomic_load_n(&s.busy, __ATOMIC_ACQUIRE)) {
      s.mapping = nullptr;
      s.status = 0;
      s.dw0 = 0;
      __atomic_store_n(&s.done, false, __ATOMIC_RELAXED);
      __atomic_store_n(&s.busy, true, __ATOMIC_RELEASE);
      q->next_cid = static_cast<uint16_t>((cid + 1) % q->depth);
      return cid;
    }
  }
  return ErrorCode::kBusy;
}

Result<uint32_t> NvmeController::execute(Queue* q, uint16_t cid, NvmeCommand cmd,
                                         SgMapping* mapping) {
  Slot& s = q->slots[cid];
  // Registered before the controller can see the command, so the completion always finds it.
  __atomic_store_n(&s.mapping, mapping, __ATOMIC_RELEASE);
  cmd.cdw0 = (cmd.cdw0 & 0xFFFF) | uint32_t{cid} << 16;
  q->sq.write(q->sq_tail, cmd);
  q->sq_tail = static_cast<uint16_t>((q->sq_tail + 1) % q->depth);
  const uint64_t start = arch::now_ns();
  regs_.write32(sq_doorbell(q->qid), q->sq_tail);  // Ordered after the entry (MmioRegion).
  while (!__atomic_load_n(&s.done, __ATOMIC_ACQUIRE)) {
    if (completion_ == Completion::kPolled) {
      process_completions(q, /*from_irq=*/false);
      if (__atomic_load_n(&s.done, __ATOMIC_ACQUIRE)) break;
    }
    // A controller that reports a fatal error (or has gone from the bus) completes nothing more.
    const uint32_t csts = regs_.read32(kRegCsts);
    if (csts == kAllOnes || (csts & kCstsFatal) != 0) {
      abandon(q, &s);
      return ErrorCode::kIoError;
    }
    if (arch::now_ns() - start > timeout_ns_) {
      abandon(q, &s);
      return ErrorCode::kTimedOut;
    }
    if (completion_ == Completion::kInterrupt) {
      arch::irq_wait();
    } else {
      arch::cpu_relax();
    }
  }
  const uint16_t status = s.status;
  const uint32_t dw0 = s.dw0;
  ++stats_.commands;
  __atomic_store_n(&s.busy, false, __ATOMIC_RELEASE);
  if (status != 0) return ErrorCode::kIoError;
  return dw0;
}

void NvmeController::abandon(Queue* q, Slot* slot) {
  // Stop the controller (reset; if even that fails, take it off the bus) before the buffers go
  // back to the caller.
  if (!disable().ok()) pci_->disable();
  SgMapping* m = __atomic_exchange_n(&slot->mapping, nullptr, __ATOMIC_ACQ_REL);
  if (m != nullptr) {
    m->unmap();
  } else {
    // A handler took it just now: its unmap ends before it marks the slot done.
    const uint64_t start = arch::now_ns();
    while (!__atomic_load_n(&slot->done, __ATOMIC_ACQUIRE) &&
           arch::now_ns() - start < kHalfSecondNs) {
      arch::cpu_relax();
    }
  }
  __atomic_store_n(&slot->busy, false, __ATOMIC_RELEASE);
  (void)q;
  shutdown();
}

size_t NvmeController::process_completions(Queue* q, bool from_irq) {
  size_t n = 0;
  for (;;) {
    const uint16_t st = q->cq.read_field(q->cq_head, &NvmeCompletion::status);
    if ((st & 1u) != q->phase) break;
    arch::io_rmb();  // The rest of the entry after its phase tag.
    const NvmeCompletion e = q->cq.read(q->cq_head);
    if (++q->cq_head == q->depth) {
      q->cq_head = 0;
      q->phase ^= 1u;
    }
    ++n;
    __atomic_store_n(&q->sq_head, e.sq_head, __ATOMIC_RELAXED);
    Slot* s = e.cid < q->depth ? &q->slots[e.cid] : nullptr;
    if (s == nullptr || !__atomic_load_n(&s->busy, __ATOMIC_ACQUIRE) ||
        __atomic_load_n(&s->done, __ATOMIC_RELAXED)) {
      ++stats_.unknown;
      continue;
    }
    // Counted before the waiter can see the slot done and read the statistics.
    if (from_irq) ++stats_.irq_completed;
    // The controller is done with the data: for a read, this is where the bytes reach the
    // caller's buffers (invalidate, or copy out of a bounce slot).
    SgMapping* m = __atomic_exchange_n(&s->mapping, nullptr, __ATOMIC_ACQ_REL);
    if (m != nullptr) m->unmap();
    s->status = static_cast<uint16_t>(e.status >> 1);
    s->dw0 = e.dw0;
    __atomic_store_n(&s->done, true, __ATOMIC_RELEASE);
  }
  if (n != 0) regs_.write32(cq_doorbell(q->qid), q->cq_head);
  return n;
}

void NvmeController::on_interrupt(void* ctx) {
  auto* q = static_cast<Queue*>(ctx);
  NvmeController* c = q->ctrl;
  ++c->stats_.interrupts;
  (void)c->process_completions(q, /*from_irq=*/true);
}

Result<NvmeController::Request> NvmeController::read(uint64_t lba,
                                                     support::Span<const SgEntry> bufs) {
  return submit(/*write=*/false, lba, bufs);
}

Result<NvmeController::Request> NvmeController::write(uint64_t lba,
                                                      support::Span<const SgEntry> bufs) {
  return submit(/*write=*/true, lba, bufs);
}

Result<void> NvmeController::build_prps(support::Span<const DmaSegment> segs, size_t cid,
                                        NvmeCommand* cmd, Request* req) {
  const uint64_t page_mask = kPageSize - 1;
  for (size_t i = 0; i < segs.size(); ++i) {
    const uint64_t a = segs[i].addr.value();
    if ((a & 3) != 0) return ErrorCode::kLayoutError;
    if (i > 0 && (a & page_mask) != 0) return ErrorCode::kLayoutError;
    if (i + 1 < segs.size() && ((a + segs[i].size) & page_mask) != 0) {
      return ErrorCode::kLayoutError;
    }
  }
  // Entry 0 is PRP1 (any dword-aligned address); entries 1.. are page starts.
  const size_t base = cid * kPrpListEntries;
  size_t k = 0;  // Entries after PRP1.
  uint64_t second = 0;
  for (size_t i = 0; i < segs.size(); ++i) {
    const uint64_t a = segs[i].addr.value();
    const uint64_t end = a + segs[i].size;
    uint64_t page = a;
    if (i == 0) {
      cmd->prp1 = a;
      page = (a & ~page_mask) + kPageSize;
    }
    for (; page < end; page += kPageSize) {
      if (k == kPrpListEntries) return ErrorCode::kOutOfRange;
      if (k == 0) second = page;
      prp_lists_.write(base + k, page);
      ++k;
    }
  }
  if (k == 0) {
    cmd->prp2 = 0;
  } else if (k == 1) {
    cmd->prp2 = second;
  } else {
    cmd->prp2 = prp_lists_.dma_addr(base).value();
    req->prp_list = true;
  }
  req->prp_entries = 1 + k;
  return support::ok();
}

Result<NvmeController::Request> NvmeController::submit(bool write, uint64_t lba,
                                                       support::Span<const SgEntry> bufs) {
  if (!bound()) return ErrorCode::kInvalidArgument;
  if (bufs.empty()) return ErrorCode::kLayoutError;
  if (bufs.size() > kMaxBuffers) return ErrorCode::kOutOfRange;
  uint64_t total = 0;
  for (const SgEntry& e : bufs) {
    if (e.size == 0 || (reinterpret_cast<uintptr_t>(e.addr) & 3) != 0) {
      return ErrorCode::kLayoutError;
    }
    if (e.size > max_transfer_) return ErrorCode::kOutOfRange;  // Also keeps the sum small.
    total += e.size;
  }
  if (total % lba_size_ != 0) return ErrorCode::kLayoutError;
  if (total > max_transfer_) return ErrorCode::kOutOfRange;
  const uint64_t blocks = total / lba_size_;
  if (lba > ns_blocks_ || blocks > ns_blocks_ - lba) return ErrorCode::kOutOfRange;

  Request req;
  req.buffers = bufs.size();
  // Exactly one handle per buffer: each buffer is mapped whole (see the header).
  DmaMapHandle handles[kMaxBuffers];
  DmaSegment segs[kMaxBuffers];
  TRY_ASSIGN(SgMapping m,
             SgMapping::map(dma_, bufs, write ? DmaDirection::kToDevice : DmaDirection::kFromDevice,
                            SgLimits{}, support::Span<DmaMapHandle>(handles, bufs.size()),
                            support::Span<DmaSegment>(segs, kMaxBuffers)));
  for (size_t i = 0; i < m.num_buffers(); ++i) {
    if (handles[i].bounced()) ++req.bounced;
  }
  req.segments = m.segments().size();

  TRY_ASSIGN(uint16_t cid, take_cid(&io_));
  NvmeCommand cmd;
  cmd.cdw0 = write ? kIoWrite : kIoRead;
  cmd.nsid = kNsid;
  cmd.cdw10 = static_cast<uint32_t>(lba);
  cmd.cdw11 = static_cast<uint32_t>(lba >> 32);
  cmd.cdw12 = static_cast<uint32_t>(blocks - 1);  // NLB is 0's based.
  auto built = build_prps(m.segments(), cid, &cmd, &req);
  if (!built.ok()) {
    __atomic_store_n(&io_.slots[cid].busy, false, __ATOMIC_RELEASE);
    return built.error();
  }
  stats_.bounced_buffers += req.bounced;
  stats_.direct_buffers += req.buffers - req.bounced;
  if (req.prp_list) ++stats_.prp_lists;
  const uint64_t start = arch::now_ns();
  TRY(execute(&io_, cid, cmd, &m));
  req.elapsed_ns = arch::now_ns() - start;
  return req;
}
