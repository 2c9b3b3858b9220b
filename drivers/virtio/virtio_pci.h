// VirtioPci: the virtio 1.x PCI transport ("modern" interface, virtio spec section 4.1): the
// vendor-specific capabilities that locate the common configuration, notification, ISR and
// device-specific configuration structures inside the BARs; device status; feature negotiation;
// virtqueue setup and notification.
//
// Common configuration layout (all little-endian): 0x00 device_feature_select, 0x04
// device_feature, 0x08 driver_feature_select, 0x0c driver_feature, 0x10 msix_config, 0x12
// num_queues, 0x14 device_status (8 bits), 0x15 config_generation, 0x16 queue_select, 0x18
// queue_size, 0x1a queue_msix_vector, 0x1c queue_enable, 0x1e queue_notify_off, 0x20 queue_desc,
// 0x28 queue_driver, 0x30 queue_device (64-bit fields written as two 32-bit halves, low first).
//
// Threading: one driver owns the transport; nothing here blocks except reset() (bounded poll).
#pragma once

#include "dmakit/support/result.h"
#include "drivers/pci/mmio.h"
#include "drivers/pci/pci_device.h"
#include "drivers/virtio/split_virtqueue.h"

namespace virtio {

// Device status bits.
constexpr uint8_t kStatusAcknowledge = 1;
constexpr uint8_t kStatusDriver = 2;
constexpr uint8_t kStatusDriverOk = 4;
constexpr uint8_t kStatusFeaturesOk = 8;
constexpr uint8_t kStatusNeedsReset = 64;
constexpr uint8_t kStatusFailed = 128;

// Device-independent feature bits.
constexpr uint64_t kFeatureVersion1 = 1ull << 32;
constexpr uint64_t kFeatureAccessPlatform = 1ull << 33;

}  // namespace virtio

class VirtioPci {
 public:
  VirtioPci() = default;
  VirtioPci(const VirtioPci&) = delete;
  VirtioPci& operator=(const VirtioPci&) = delete;

  // Finds the structures through the vendor capabilities of `pci` (the first capability of each
  // type whose BAR is a usable memory BAR), maps them, and turns on memory decoding and bus
  // mastering. `pci` must outlive the transport.
  // Errors: kNotFound (no common, notify or device configuration capability: not a modern
  // device), kInvalidArgument (a capability pointing outside its BAR), map/enable errors.
  Result<void> init(PciDevice* pci);

  // Writes 0 to device_status and waits (bounded) until the device reads it back as 0: all its
  // queues are stopped and it no longer touches driver memory. Errors: kTimedOut.
  Result<void> reset();
  uint8_t status() const { return common_.read8(0x14); }
  void add_status(uint8_t bits) { common_.write8(0x14, static_cast<uint8_t>(status() | bits)); }

  // 64 bits of device features.
  uint64_t device_features();
  // Accepts device_features() & wanted, sets FEATURES_OK and checks the device kept it.
  // Errors: kNotSupported (a bit of `required` not offered, or FEATURES_OK refused; the device
  // is marked FAILED). Returns the accepted set.
  Result<uint64_t> negotiate(uint64_t wanted, uint64_t required);

  // Largest size of queue `index` (0: the queue does not exist).
  uint16_t queue_max_size(uint16_t index);
  // MSI-X vector number meaning "none" (virtio spec 4.1.5.1.2).
  static constexpr uint16_t kNoVector = 0xFFFF;

  // Gives queue `index` the rings of `vq` (initialized with a size <= queue_max_size(index)), the
  // MSI-X table entry `msix_vector` for its used-buffer notifications (kNoVector: none), and
  // enables it. Errors: kNotFound (no such queue), kInvalidArgument (size too large), kNoMemory
  // (the device refused the vector: it reads back as kNoVector).
  Result<void> setup_queue(uint16_t index, const SplitVirtqueue& vq,
                           uint16_t msix_vector = kNoVector);
  // MSI-X table entry for configuration-change notifications (kNoVector: none). Errors: kNoMemory
  // (the device refused the vector).
  Result<void> set_config_vector(uint16_t msix_vector);
  // Tells the device that queue `index` has new available buffers.
  // Precondition: setup_queue(index, ...) succeeded.
  void notify(uint16_t index);

  // Device-specific configuration, and its generation counter (re-read a multi-field value until
  // the generation is unchanged around it).
  const MmioRegion& device_config() const { return device_; }
  uint8_t config_generation() const { return common_.read8(0x15); }

  PciDevice* pci() const { return pci_; }
  bool bound() const { return pci_ != nullptr; }
  // Turns decoding and bus mastering off and forgets the device. Precondition: reset() done.
  void release();

 private:
  static constexpr unsigned kMaxQueues = 4;

  PciDevice* pci_ = nullptr;
  MmioRegion common_;
  MmioRegion notify_;
  MmioRegion isr_;  // Unused: with MSI-X the ISR is not read, without it the driver polls.
  MmioRegion device_;
  uint32_t notify_multiplier_ = 0;
  uint16_t notify_off_[kMaxQueues] = {};
};
