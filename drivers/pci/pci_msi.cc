#include "drivers/pci/pci_msi.h"

namespace pci {
namespace {

constexpr uint16_t kMsiEnable = 1u << 0;
constexpr uint16_t kMsiMultipleEnableMask = 0x7u << 4;
constexpr uint16_t kMsi64Bit = 1u << 7;
constexpr uint16_t kMsixEnable = 1u << 15;
constexpr uint16_t kMsixFunctionMask = 1u << 14;
constexpr uint32_t kMsixEntrySize = 16;
constexpr uint32_t kMsixVectorMasked = 1u << 0;

}  // namespace

Result<void> msi_enable(const PciDevice& dev, const arch::MsiMessage& msg) {
  const uint8_t cap = dev.find_capability(kCapMsi);
  if (cap == 0) return ErrorCode::kNotFound;
  uint16_t ctl = dev.config_read16(cap + 2u);
  const bool is64 = (ctl & kMsi64Bit) != 0;
  if ((!is64 && (msg.address >> 32) != 0) || msg.data > 0xFFFF) return ErrorCode::kNotSupported;
  // Off while the message changes, so the device never sends half of an old one.
  ctl = static_cast<uint16_t>(ctl & ~(kMsiEnable | kMsiMultipleEnableMask));
  dev.config_write16(cap + 2u, ctl);
  dev.config_write32(cap + 4u, static_cast<uint32_t>(msg.address));
  if (is64) {
    dev.config_write32(cap + 8u, static_cast<uint32_t>(msg.address >> 32));
    dev.config_write16(cap + 12u, static_cast<uint16_t>(msg.data));
  } else {
    dev.config_write16(cap + 8u, static_cast<uint16_t>(msg.data));
  }
  dev.config_write16(cap + 2u, static_cast<uint16_t>(ctl | kMsiEnable));
  return support::ok();
}

void msi_disable(const PciDevice& dev) {
  const uint8_t cap = dev.find_capability(kCapMsi);
  if (cap == 0) return;
  const uint16_t ctl = dev.config_read16(cap + 2u);
  dev.config_write16(cap + 2u, static_cast<uint16_t>(ctl & ~kMsiEnable));
}

Result<void> MsixTable::init(const PciDevice* dev) {
  const uint8_t cap = dev->find_capability(kCapMsix);
  if (cap == 0) return ErrorCode::kNotFound;
  const uint16_t ctl = dev->config_read16(cap + 2u);
  const unsigned n = (ctl & 0x7FFu) + 1;
  const uint32_t table = dev->config_read32(cap + 4u);
  const unsigned bir = table & 0x7u;
  const uint64_t offset = table & ~0x7u;
  if (bir >= PciDevice::kMaxBars || !dev->bar(bir).is_memory()) return ErrorCode::kInvalidArgument;
  TRY_ASSIGN(MmioRegion bar, dev->map_bar(bir));
  if (offset > bar.size() || uint64_t{n} * kMsixEntrySize > bar.size() - offset) {
    return ErrorCode::kInvalidArgument;
  }
  dev_ = dev;
  cap_ = cap;
  size_ = n;
  table_ = bar.sub(offset, uint64_t{n} * kMsixEntrySize);
  disable();
  return support::ok();
}

uint16_t MsixTable::control() const {
  return dev_->config_read16(cap_ + 2u);
}

void MsixTable::set_control(uint16_t v) const {
  dev_->config_write16(cap_ + 2u, v);
}

Result<void> MsixTable::set(unsigned i, const arch::MsiMessage& msg) {
  if (i >= size_) return ErrorCode::kOutOfRange;
  const uint64_t e = uint64_t{i} * kMsixEntrySize;
  // Masked while the entry changes (the spec leaves an unmasked entry's update undefined).
  table_.write32(e + 12, kMsixVectorMasked);
  table_.write32(e + 0, static_cast<uint32_t>(msg.address));
  table_.write32(e + 4, static_cast<uint32_t>(msg.address >> 32));
  table_.write32(e + 8, msg.data);
  table_.write32(e + 12, 0);
  return support::ok();
}

void MsixTable::mask(unsigned i) {
  KASSERT(i < size_, "MsixTable::mask: entry out of range");
  table_.write32(uint64_t{i} * kMsixEntrySize + 12, kMsixVectorMasked);
}

void MsixTable::enable() {
  const uint16_t ctl = control();
  set_control(static_cast<uint16_t>((ctl | kMsixEnable) & ~kMsixFunctionMask));
}

void MsixTable::disable() {
  for (unsigned i = 0; i < size_; ++i) mask(i);
  set_control(static_cast<uint16_t>(control() & ~kMsixEnable));
}

}  // namespace pci
