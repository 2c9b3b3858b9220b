// Message-signalled interrupts of a PCI function: the MSI capability (one vector here) and the
// MSI-X capability with its table in a memory BAR (PCI Local Bus 3.0, section 6.8).
//
// MSI capability (ID 0x05): +2 message control (bit 0 enable, bits 6:4 vectors enabled, bit 7
// 64-bit address capable, bit 8 per-vector masking), +4 address low, then for a 64-bit capability
// +8 address high and +0xC data, else +8 data. MSI-X capability (ID 0x11): +2 message control
// (bits 10:0 table size - 1, bit 14 function mask, bit 15 enable), +4 table offset | BIR. A table
// entry is 16 bytes: address low, address high, data, vector control (bit 0 masked).
//
// Enabling either turns the function's legacy INTx off (the command register's interrupt
// disable bit, which PciDevice::enable already sets). The messages come from arch::msi_alloc;
// freeing them is the caller's business, after disabling.
//
// Threading: the driver that owns the function calls these from thread context; none blocks.
#pragma once

#include "dmakit/support/result.h"
#include "drivers/pci/mmio.h"
#include "drivers/pci/pci_device.h"
#include "testkernel/arch.h"

namespace pci {

constexpr uint8_t kCapMsi = 0x05;
constexpr uint8_t kCapMsix = 0x11;

// The function's PCI requester ID (bus << 8 | device << 3 | function), as arch::msi_alloc takes it.
constexpr uint32_t requester_id(PciAddress a) {
  return uint32_t{a.bus} << 8 | uint32_t{a.dev} << 3 | a.fn;
}

// Programs the function's MSI capability with `msg` as its single vector and enables it.
// Errors: kNotFound (no MSI capability), kNotSupported (an address above 4 GiB for a 32-bit-only
// capability, or data beyond 16 bits).
Result<void> msi_enable(const PciDevice& dev, const arch::MsiMessage& msg);
// Turns MSI off (the function then signals nothing: INTx stays disabled). No-op without the
// capability.
void msi_disable(const PciDevice& dev);

// The MSI-X table of one function.
class MsixTable {
 public:
  MsixTable() = default;

  // Finds the capability and maps the table's BAR. The function stays with MSI-X off, every entry
  // masked. Errors: kNotFound (no MSI-X capability), kInvalidArgument (the table lies outside its
  // BAR, or in a BAR that is not memory), PciDevice::map_bar's errors.
  Result<void> init(const PciDevice* dev);
  bool valid() const { return dev_ != nullptr; }
  unsigned size() const { return size_; }

  // Writes `msg` into entry `i` and unmasks it. Errors: kOutOfRange (i >= size()).
  Result<void> set(unsigned i, const arch::MsiMessage& msg);
  // Masks entry `i` (the device then holds its messages pending). Precondition: i < size().
  void mask(unsigned i);
  // Turns MSI-X on / off for the function (off: every entry masked again).
  void enable();
  void disable();

 private:
  uint16_t control() const;
  void set_control(uint16_t v) const;

  const PciDevice* dev_ = nullptr;
  uint8_t cap_ = 0;
  unsigned size_ = 0;
  MmioRegion table_;
};

}  // namespace pci
