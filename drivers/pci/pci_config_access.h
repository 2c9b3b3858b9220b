// PciConfigAccess: how the PCI layer reaches configuration space, whatever the host bridge.
//
// The PCI code (enumeration, BAR sizing, capabilities, drivers' config reads) only ever talks to
// this interface. The kernel supplies an implementation for its machine: EcamConfigAccess below
// (memory-mapped ECAM, from the device tree or the q35 PCIEXBAR), or one built on x86 port I/O
// (testkernel/devices.cc).
//
// Offsets are byte offsets into the function's 4 KiB configuration space (256 bytes for port
// I/O); accesses are naturally aligned. A function that is absent reads as all ones.
// Threading: implementations are not serialized internally (the legacy port mechanism is two
// accesses that must not interleave); the single-CPU test kernel needs no lock. May be called with
// interrupts off.
#pragma once

#include "dmakit/support/types.h"
#include "drivers/pci/mmio.h"

// Bus / device / function.
struct PciAddress {
  uint8_t bus = 0;
  uint8_t dev = 0;  // 0..31
  uint8_t fn = 0;   // 0..7
  constexpr bool operator==(const PciAddress&) const = default;
};

class PciConfigAccess {
 public:
  virtual ~PciConfigAccess() = default;

  // Largest config-space offset + 1 this mechanism reaches (4096 for ECAM, 256 for ports).
  virtual uint32_t space_size() const = 0;
  // Preconditions: `off` aligned to the width and below space_size(); `a.bus` within the host
  // bridge's bus range (debug-checked by the implementations).
  virtual uint8_t read8(PciAddress a, uint32_t off) = 0;
  virtual uint16_t read16(PciAddress a, uint32_t off) = 0;
  virtual uint32_t read32(PciAddress a, uint32_t off) = 0;
  virtual void write8(PciAddress a, uint32_t off, uint8_t v) = 0;
  virtual void write16(PciAddress a, uint32_t off, uint16_t v) = 0;
  virtual void write32(PciAddress a, uint32_t off, uint32_t v) = 0;
};

// PCI Express Enhanced Configuration Access Mechanism: function (b, d, f) at
// ecam + ((b - bus_start) << 20 | d << 15 | f << 12).
class EcamConfigAccess final : public PciConfigAccess {
 public:
  EcamConfigAccess() = default;
  // `ecam` maps the configuration space of buses [bus_start, bus_end] (1 MiB per bus).
  EcamConfigAccess(MmioRegion ecam, uint8_t bus_start, uint8_t bus_end)
      : ecam_(ecam), bus_start_(bus_start), bus_end_(bus_end) {}

  uint32_t space_size() const override { return 4096; }
  uint8_t read8(PciAddress a, uint32_t off) override { return ecam_.read8(offset(a, off)); }
  uint16_t read16(PciAddress a, uint32_t off) override { return ecam_.read16(offset(a, off)); }
  uint32_t read32(PciAddress a, uint32_t off) override { return ecam_.read32(offset(a, off)); }
  void write8(PciAddress a, uint32_t off, uint8_t v) override { ecam_.write8(offset(a, off), v); }
  void write16(PciAddress a, uint32_t off, uint16_t v) override {
    ecam_.write16(offset(a, off), v);
  }
  void write32(PciAddress a, uint32_t off, uint32_t v) override {
    ecam_.write32(offset(a, off), v);
  }

 private:
  uint64_t offset(PciAddress a, uint32_t off) const {
    KDEBUG_ASSERT(a.bus >= bus_start_ && a.bus <= bus_end_, "ECAM: bus outside the bus range");
    KDEBUG_ASSERT(a.dev < 32 && a.fn < 8 && off < 4096, "ECAM: bad device, function or offset");
    return (uint64_t{static_cast<uint8_t>(a.bus - bus_start_)} << 20) | (uint64_t{a.dev} << 15) |
           (uint64_t{a.fn} << 12) | off;
  }

  MmioRegion ecam_;
  uint8_t bus_start_ = 0;
  uint8_t bus_end_ = 0;
};
