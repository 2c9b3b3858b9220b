#include "drivers/pci/pci_device.h"

#include "testkernel/arch_io.h"

namespace {

constexpr unsigned kMaxCapabilities = 48;  // 192 bytes of capability space / 4-byte minimum.

char hex_digit(unsigned v) {
  return static_cast<char>(v < 10 ? '0' + v : 'a' + (v - 10));
}

}  // namespace

const PciBar& PciDevice::bar(unsigned i) const {
  KASSERT(i < kMaxBars, "PciDevice::bar index out of range");
  return bars_[i];
}

uint8_t PciDevice::find_capability(uint8_t id, uint8_t after) const {
  if ((config_read16(pci::kStatus) & pci::kStatusCapList) == 0) return 0;
  uint8_t ptr = after == 0 ? config_read8(pci::kCapabilitiesPtr) : config_read8(after + 1u);
  for (unsigned n = 0; n < kMaxCapabilities; ++n) {
    ptr &= 0xFC;               // The low two bits are reserved.
    if (ptr < 0x40) return 0;  // 0 ends the list; anything inside the header is corrupt.
    if (config_read8(ptr) == id) return ptr;
    ptr = config_read8(ptr + 1u);
  }
  return 0;
}

Result<void> PciDevice::enable(bool bus_master) {
  uint16_t cmd = command();
  for (unsigned i = 0; i < num_bars_; ++i) {
    const PciBar& b = bars_[i];
    if (b.size == 0) continue;
    if (!b.assigned()) return ErrorCode::kNotFound;
    cmd = static_cast<uint16_t>(
        cmd | (b.kind == PciBar::Kind::kIo ? pci::kCommandIo : pci::kCommandMemory));
  }
  cmd = static_cast<uint16_t>(cmd | pci::kCommandIntxDisable);
  if (bus_master) cmd = static_cast<uint16_t>(cmd | pci::kCommandBusMaster);
  config_write16(pci::kCommand, cmd);
  return support::ok();
}

void PciDevice::disable() {
  uint16_t cmd = command();
  cmd = static_cast<uint16_t>(cmd &
                              ~(pci::kCommandBusMaster | pci::kCommandMemory | pci::kCommandIo));
  config_write16(pci::kCommand, cmd);
}

Result<MmioRegion> PciDevice::map_bar(unsigned i) const {
  if (i >= kMaxBars || !bars_[i].is_memory()) return ErrorCode::kInvalidArgument;
  const PciBar& b = bars_[i];
  if (!b.assigned()) return ErrorCode::kNotFound;
  TRY_ASSIGN(volatile void* va, arch::mmio_map(b.cpu_addr, b.size));
  return MmioRegion(va, b.size);
}

const char* PciDevice::name(char* buf, size_t size) const {
  if (size < 8) {
    if (size > 0) buf[0] = '\0';
    return buf;
  }
  buf[0] = hex_digit(addr_.bus >> 4);
  buf[1] = hex_digit(addr_.bus & 0xF);
  buf[2] = ':';
  buf[3] = hex_digit(addr_.dev >> 4);
  buf[4] = hex_digit(addr_.dev & 0xF);
  buf[5] = '.';
  buf[6] = hex_digit(addr_.fn & 0x7);
  buf[7] = '\0';
  return buf;
}
