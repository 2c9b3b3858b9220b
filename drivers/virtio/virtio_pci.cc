#include "drivers/virtio/virtio_pci.h"

#include "dmakit/support/defer.h"
#include "testkernel/arch.h"

namespace {

// virtio_pci_cap.cfg_type values.
constexpr uint8_t kCapCommon = 1;
constexpr uint8_t kCapNotify = 2;
constexpr uint8_t kCapIsr = 3;
constexpr uint8_t kCapDevice = 4;

constexpr uint32_t kCommonDeviceFeatureSelect = 0x00;
constexpr uint32_t kCommonDeviceFeature = 0x04;
constexpr uint32_t kCommonDriverFeatureSelect = 0x08;
constexpr uint32_t kCommonDriverFeature = 0x0c;
constexpr uint32_t kCommonMsixConfig = 0x10;
constexpr uint32_t kCommonStatus = 0x14;
constexpr uint32_t kCommonQueueSelect = 0x16;
constexpr uint32_t kCommonQueueSize = 0x18;
constexpr uint32_t kCommonQueueMsixVector = 0x1a;
constexpr uint32_t kCommonQueueEnable = 0x1c;
constexpr uint32_t kCommonQueueNotifyOff = 0x1e;
constexpr uint32_t kCommonQueueDesc = 0x20;
constexpr uint32_t kCommonQueueDriver = 0x28;
constexpr uint32_t kCommonQueueDevice = 0x30;
constexpr uint32_t kCommonSize = 0x38;

constexpr uint64_t kResetTimeoutNs = 1'000'000'000;

}  // namespace

Result<void> VirtioPci::init(PciDevice* pci) {
  if (pci_ != nullptr || pci == nullptr) return ErrorCode::kInvalidArgument;
  TRY(pci->enable(/*bus_master=*/false));
  auto off = support::defer([pci] { pci->disable(); });  // Decoding off again on failure.
  MmioRegion bars[PciDevice::kMaxBars];
  MmioRegion* found[kCapDevice + 1] = {};
  found[kCapCommon] = &common_;
  found[kCapNotify] = &notify_;
  found[kCapIsr] = &isr_;  // Mapped for completeness: the driver reads no ISR.
  found[kCapDevice] = &device_;
  bool have[kCapDevice + 1] = {};
  for (uint8_t cap = pci->find_capability(pci::kCapVendorSpecific); cap != 0;
       cap = pci->find_capability(pci::kCapVendorSpecific, cap)) {
    uint8_t type = pci->config_read8(cap + 3u);
    uint8_t bar = pci->config_read8(cap + 4u);
    uint32_t offset = pci->config_read32(cap + 8u);
    uint32_t length = pci->config_read32(cap + 12u);
    if (type < kCapCommon || type > kCapDevice || have[type]) continue;
    // A capability in a BAR we cannot use (I/O, unassigned) is skipped: the spec lets a device
    // offer several of each type, and the driver takes the first it can use.
    if (bar >= PciDevice::kMaxBars || !pci->bar(bar).is_memory() || !pci->bar(bar).assigned()) {
      continue;
    }
    if (!bars[bar].valid()) {
      TRY_ASSIGN(bars[bar], pci->map_bar(bar));
    }
    if (offset > bars[bar].size() || length > bars[bar].size() - offset) {
      return ErrorCode::kInvalidArgument;
    }
    if (type == kCapNotify) notify_multiplier_ = pci->config_read32(cap + 16u);
    *found[type] = bars[bar].sub(offset, length);
    have[type] = true;
  }
  if (!have[kCapCommon] || !have[kCapNotify] || !have[kCapDevice] || common_.size() < kCommonSize) {
    common_ = notify_ = isr_ = device_ = MmioRegion();
    return ErrorCode::kNotFound;
  }
  TRY(pci->enable(/*bus_master=*/true));
  off.cancel();
  pci_ = pci;
  return support::ok();
}

Result<void> VirtioPci::reset() {
  common_.write8(kCommonStatus, 0);
  uint64_t start = arch::now_ns();
  while (common_.read8(kCommonStatus) != 0) {
    if (arch::now_ns() - start > kResetTimeoutNs) return ErrorCode::kTimedOut;
  }
  return support::ok();
}

uint64_t VirtioPci::device_features() {
  common_.write32(kCommonDeviceFeatureSelect, 0);
  uint64_t lo = common_.read32(kCommonDeviceFeature);
  common_.write32(kCommonDeviceFeatureSelect, 1);
  uint64_t hi = common_.read32(kCommonDeviceFeature);
  return hi << 32 | lo;
}

Result<uint64_t> VirtioPci::negotiate(uint64_t wanted, uint64_t required) {
  uint64_t offered = device_features();
  uint64_t accepted = offered & wanted;
  if ((accepted & required) != required) {
    add_status(virtio::kStatusFailed);
    return ErrorCode::kNotSupported;
  }
  common_.write32(kCommonDriverFeatureSelect, 0);
  common_.write32(kCommonDriverFeature, static_cast<uint32_t>(accepted));
  common_.write32(kCommonDriverFeatureSelect, 1);
  common_.write32(kCommonDriverFeature, static_cast<uint32_t>(accepted >> 32));
  add_status(virtio::kStatusFeaturesOk);
  if ((status() & virtio::kStatusFeaturesOk) == 0) {
    add_status(virtio::kStatusFailed);
    return ErrorCode::kNotSupported;
  }
  return accepted;
}

uint16_t VirtioPci::queue_max_size(uint16_t index) {
  common_.write16(kCommonQueueSelect, index);
  return common_.read16(kCommonQueueSize);
}

Result<void> VirtioPci::set_config_vector(uint16_t msix_vector) {
  common_.write16(kCommonMsixConfig, msix_vector);
  if (common_.read16(kCommonMsixConfig) != msix_vector) return ErrorCode::kNoMemory;
  return support::ok();
}

Result<void> VirtioPci::setup_queue(uint16_t index, const SplitVirtqueue& vq,
                                    uint16_t msix_vector) {
  if (index >= kMaxQueues) return ErrorCode::kNotFound;
  uint16_t max = queue_max_size(index);  // Also selects the queue.
  if (max == 0) return ErrorCode::kNotFound;
  if (vq.size() == 0 || vq.size() > max) return ErrorCode::kInvalidArgument;
  common_.write16(kCommonQueueSize, vq.size());
  auto write_addr = [this](uint32_t off, DmaAddr a) {
    common_.write32(off, static_cast<uint32_t>(a.value()));
    common_.write32(off + 4, static_cast<uint32_t>(a.value() >> 32));
  };
  write_addr(kCommonQueueDesc, vq.desc_addr());
  write_addr(kCommonQueueDriver, vq.avail_addr());
  write_addr(kCommonQueueDevice, vq.used_addr());
  common_.write16(kCommonQueueMsixVector, msix_vector);
  if (common_.read16(kCommonQueueMsixVector) != msix_vector) return ErrorCode::kNoMemory;
  notify_off_[index] = common_.read16(kCommonQueueNotifyOff);
  common_.write16(kCommonQueueEnable, 1);
  return support::ok();
}

void VirtioPci::notify(uint16_t index) {
  KASSERT(index < kMaxQueues, "VirtioPci::notify: bad queue");
  notify_.write16(uint64_t{notify_off_[index]} * notify_multiplier_, index);
}

void VirtioPci::release() {
  if (pci_ == nullptr) return;
  pci_->disable();
  pci_ = nullptr;
  common_ = notify_ = isr_ = device_ = MmioRegion();
}
