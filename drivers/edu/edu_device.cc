#include "drivers/edu/edu_device.h"

#include "dmakit/support/defer.h"
#include "drivers/pci/pci_msi.h"
#include "testkernel/arch.h"

namespace {

// The identification register: 0xRRrr00ed (RR major, rr minor version).
constexpr uint32_t kIdMask = 0x0000'FFFF;
constexpr uint32_t kIdValue = 0x0000'00ED;
constexpr uint32_t kLivenessProbe = 0x5A5A'0F0F;

}  // namespace

Result<void> EduDevice::init(PciDevice* pci, const DeviceDma& dma) {
  if (pci_ != nullptr || pci == nullptr || dma.op() == nullptr) {
    return ErrorCode::kInvalidArgument;
  }
  // Decoding first: BAR0 reads as nothing until memory decoding is on. Off again on failure.
  TRY(pci->enable(/*bus_master=*/false));
  auto off = support::defer([pci] { pci->disable(); });
  TRY_ASSIGN(MmioRegion regs, pci->map_bar(0));
  if (regs.size() < kRegDmaCmd + 8) return ErrorCode::kNotFound;
  if ((regs.read32(kRegId) & kIdMask) != kIdValue) return ErrorCode::kNotFound;
  regs.write32(kRegLiveness, kLivenessProbe);
  if (regs.read32(kRegLiveness) != ~kLivenessProbe) return ErrorCode::kNotFound;
  TRY(pci->enable(/*bus_master=*/true));
  off.cancel();
  pci_ = pci;
  regs_ = regs;
  dma_ = dma;
  broken_ = false;
  return support::ok();
}

Result<void> EduDevice::enable_interrupts(unsigned cpu) {
  if (pci_ == nullptr || broken_ || interrupts_enabled()) return ErrorCode::kInvalidArgument;
  if (pci_->find_capability(pci::kCapMsi) == 0) return ErrorCode::kNotFound;
  TRY_ASSIGN(arch::MsiMessage msg, arch::msi_alloc(&EduDevice::on_interrupt, this, cpu,
                                                   pci::requester_id(pci_->address())));
  auto r = pci::msi_enable(*pci_, msg);
  if (!r.ok()) {
    (void)arch::msi_free(msg);
    return r;
  }
  msi_ = msg;
  return support::ok();
}

void EduDevice::disable_interrupts() {
  if (!interrupts_enabled()) return;
  pci::msi_disable(*pci_);
  (void)arch::msi_free(msi_);
  msi_ = arch::MsiMessage{};
}

void EduDevice::on_interrupt(void* self) {
  auto* d = static_cast<EduDevice*>(self);
  const uint32_t status = d->regs_.read32(kRegIrqStatus);
  if (status == 0) return;  // Not ours (a late message after a timeout).
  d->regs_.write32(kRegIrqAck, status);
  ++d->stats_.interrupts;
  if ((status & kIrqDma) == 0 || d->inflight_ == nullptr) return;
  // The device is done with the buffer: the completion path hands it back to the CPU.
  d->inflight_->unmap();
  d->inflight_ = nullptr;
  ++d->stats_.irq_unmaps;
  __atomic_store_n(&d->done_, true, __ATOMIC_RELEASE);
}

void EduDevice::shutdown() {
  if (pci_ == nullptr) return;
  disable_interrupts();
  pci_->disable();
  pci_ = nullptr;
  regs_ = MmioRegion();
  // Every transfer unmaps before it returns: anything left is a bug the checker reports.
  dma_.check_no_mappings();
}

Result<EduDevice::Transfer> EduDevice::copy_to_device(const void* buf, size_t size,
                                                      uint32_t offset) {
  if (pci_ == nullptr || broken_) return ErrorCode::kInvalidArgument;
  if (size == 0) return ErrorCode::kLayoutError;
  if (offset > kBufferSize || size > kBufferSize - offset) return ErrorCode::kOutOfRange;
  // The device only reads the buffer: mapping it does not write through `buf`.
  auto map = dma_.map(const_cast<void*>(buf), size, DmaDirection::kToDevice);
  if (!map.ok()) {
    ++stats_.map_failures;
    return map.error();
  }
  return run(*map, /*to_ram=*/false, offset);
}

Result<EduDevice::Transfer> EduDevice::copy_from_device(void* buf, size_t size, uint32_t offset) {
  if (pci_ == nullptr || broken_) return ErrorCode::kInvalidArgument;
  if (size == 0) return ErrorCode::kLayoutError;
  if (offset > kBufferSize || size > kBufferSize - offset) return ErrorCode::kOutOfRange;
  auto map = dma_.map(buf, size, DmaDirection::kFromDevice);
  if (!map.ok()) {
    ++stats_.map_failures;
    return map.error();
  }
  return run(*map, /*to_ram=*/true, offset);
}

Result<EduDevice::Transfer> EduDevice::run(StreamingMapping& map, bool to_ram, uint32_t offset) {
  if ((regs_.read64(kRegDmaCmd) & kCmdStart) != 0) return ErrorCode::kBusy;
  Transfer t;
  t.dma_addr = map.dma_addr();
  t.bounced = map.bounced();
  uint64_t dev_addr = kBufferAddr + offset;
  // 64-bit writes: the device ignores the upper halves (0x84, 0x8c) as registers of their own.
  regs_.write64(kRegDmaSrc, to_ram ? dev_addr : map.dma_addr().value());
  regs_.write64(kRegDmaDst, to_ram ? map.dma_addr().value() : dev_addr);
  regs_.write64(kRegDmaCount, map.size());
  // MmioRegion's write barrier orders the mapping's cache clean / bounce copy before the start.
  uint64_t start = arch::now_ns();
  if (interrupts_enabled()) {
    const uintptr_t flags = arch::irq_save();
    inflight_ = &map;
    done_ = false;
    regs_.write64(kRegDmaCmd, kCmdStart | kCmdIrq | (to_ram ? kCmdToRam : 0));
    arch::irq_restore(flags);
    ++stats_.started;
    if (t.bounced) ++stats_.bounced;
    while (!__atomic_load_n(&done_, __ATOMIC_ACQUIRE)) {
      if (arch::now_ns() - start > timeout_ns_) {
        // As below; and the handler must not touch the mapping once this call has returned.
        pci_->disable();
        broken_ = true;
        const uintptr_t f = arch::irq_save();
        inflight_ = nullptr;
        arch::irq_restore(f);
        return ErrorCode::kTimedOut;
      }
      arch::irq_wait();
    }
    t.elapsed_ns = arch::now_ns() - start;
    ++stats_.completed;
    return t;
  }
  regs_.write64(kRegDmaCmd, kCmdStart | (to_ram ? kCmdToRam : 0));
  ++stats_.started;
  if (t.bounced) ++stats_.bounced;
  while ((regs_.read64(kRegDmaCmd) & kCmdStart) != 0) {
    if (arch::now_ns() - start > timeout_ns_) {
      // The device may still write into the mapping: cut it off the bus before the mapping (and
      // any bounce slot) goes back to others.
      pci_->disable();
      broken_ = true;
      return ErrorCode::kTimedOut;
    }
  }
  t.elapsed_ns = arch::now_ns() - start;
  // The device is done with the buffer: hand it back to the CPU (invalidate or copy out of the
  // bounce slot for device -> RAM).
  map.unmap();
  ++stats_.completed;
  return t;
}
