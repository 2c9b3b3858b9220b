// PciDevice: one PCI function found by PciHostBridge::enumerate(): its identity, its BARs (sized,
// and assigned by the firmware or by the enumeration), config-space access, the capability list,
// and the switches a driver turns on (memory/I/O decoding, bus mastering).
#pragma once

#include "dmakit/support/addr.h"
#include "dmakit/support/result.h"
#include "dmakit/support/types.h"
#include "drivers/pci/mmio.h"
#include "drivers/pci/pci_config_access.h"

namespace pci {

// Type-0/1 header registers and bits used here (PCI Local Bus 3.0, chapter 6).
constexpr uint32_t kVendorId = 0x00;
constexpr uint32_t kDeviceId = 0x02;
constexpr uint32_t kCommand = 0x04;
constexpr uint32_t kStatus = 0x06;
constexpr uint32_t kRevision = 0x08;  // Then prog-if, subclass, class (24 bits at 0x09).
constexpr uint32_t kHeaderType = 0x0E;
constexpr uint32_t kBar0 = 0x10;
constexpr uint32_t kSecondaryBus = 0x19;  // Type 1 (bridges).
constexpr uint32_t kCapabilitiesPtr = 0x34;
constexpr uint32_t kInterruptPin = 0x3D;

constexpr uint16_t kCommandIo = 1u << 0;
constexpr uint16_t kCommandMemory = 1u << 1;
constexpr uint16_t kCommandBusMaster = 1u << 2;
constexpr uint16_t kCommandIntxDisable = 1u << 10;
constexpr uint16_t kStatusCapList = 1u << 4;

constexpr uint8_t kCapVendorSpecific = 0x09;

}  // namespace pci

// One base address register as the enumeration left it.
struct PciBar {
  enum class Kind : uint8_t { kNone, kIo, kMem32, kMem64 };
  Kind kind = Kind::kNone;
  bool prefetchable = false;
  // Assigned by the firmware before we ran (kept as found) rather than by the enumeration.
  bool firmware_assigned = false;
  uint64_t size = 0;      // 0: BAR not implemented (or the upper half of a 64-bit BAR).
  uint64_t bus_addr = 0;  // What the BAR holds; 0: unassigned.
  PhysAddr cpu_addr;      // Where the CPU reaches it (I/O: the port number on x86).

  bool is_memory() const { return kind == Kind::kMem32 || kind == Kind::kMem64; }
  bool assigned() const { return size != 0 && bus_addr != 0; }
};

class PciDevice {
 public:
  static constexpr unsigned kMaxBars = 6;

  PciDevice() = default;

  PciAddress address() const { return addr_; }
  uint16_t vendor_id() const { return vendor_; }
  uint16_t device_id() const { return device_; }
  uint32_t class_code() const { return class_code_; }  // class << 16 | subclass << 8 | prog-if
  uint8_t revision() const { return revision_; }
  uint8_t header_type() const { return header_type_; }  // Without the multi-function bit.
  bool is_bridge() const { return header_type_ == 1; }
  unsigned num_bars() const { return num_bars_; }
  // Precondition: i < kMaxBars (BARs past num_bars() read as kNone).
  const PciBar& bar(unsigned i) const;

  // Config space of this function. Preconditions as PciConfigAccess.
  uint8_t config_read8(uint32_t off) const { return cfg_->read8(addr_, off); }
  uint16_t config_read16(uint32_t off) const { return cfg_->read16(addr_, off); }
  uint32_t config_read32(uint32_t off) const { return cfg_->read32(addr_, off); }
  void config_write8(uint32_t off, uint8_t v) const { cfg_->write8(addr_, off, v); }
  void config_write16(uint32_t off, uint16_t v) const { cfg_->write16(addr_, off, v); }
  void config_write32(uint32_t off, uint32_t v) const { cfg_->write32(addr_, off, v); }

  // Offset of the first capability with this ID after `after` (0: from the start of the list),
  // or 0 when there is none. The walk is bounded (a looping list ends it).
  uint8_t find_capability(uint8_t id, uint8_t after = 0) const;

  // Turns on decoding of every assigned BAR (memory and/or I/O) and, if asked, bus mastering
  // (the device may then start DMA); masks legacy INTx (the drivers here poll).
  // Errors: kNotFound (a BAR the device implements was left unassigned: the device would decode
  // an address nobody gave it).
  Result<void> enable(bool bus_master);
  // Clears bus mastering (no further DMA) and decoding.
  void disable();
  uint16_t command() const { return config_read16(pci::kCommand); }

  // Maps memory BAR i (uncached) and returns its registers. Errors: kInvalidArgument (not a
  // memory BAR), kNotFound (unassigned), and arch::mmio_map's errors.
  Result<MmioRegion> map_bar(unsigned i) const;

  // "bb:dd.f" into buf (at least 8 bytes); returns buf.
  const char* name(char* buf, size_t size) const;

 private:
  friend class PciHostBridge;

  PciConfigAccess* cfg_ = nullptr;
  PciAddress addr_;
  uint16_t vendor_ = 0xFFFF;
  uint16_t device_ = 0xFFFF;
  uint32_t class_code_ = 0;
  uint8_t revision_ = 0;
  uint8_t header_type_ = 0;
  unsigned num_bars_ = 0;
  PciBar bars_[kMaxBars];
};
