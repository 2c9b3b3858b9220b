// PciHostBridge: enumerates the functions behind one PCI host bridge, sizes their BARs and gives
// an address to every BAR the firmware left unassigned.
//
// The scheme:
//   1. Scan: every device (and, for multi-function devices, every function) of the root bus;
//      behind a bridge the firmware already numbered (secondary bus set) the scan goes on, while
//      an unnumbered bridge is listed but not configured (QEMU's virt machines have none).
//   2. Size: each BAR is probed with all ones (decoding off meanwhile) and restored. A BAR that
//      holds a non-zero address was assigned by the firmware and is kept.
//   3. Assign: the unassigned BARs, largest first (so natural alignment wastes no space), each get
//      the lowest naturally aligned free range of a window of the right kind: I/O BARs from I/O
//      windows (never port 0..0xFFF), 64-bit BARs from a 64-bit window if there is one, else from
//      a 32-bit one, 32-bit BARs from windows below 4 GiB on the bus. Ranges the firmware's BARs
//      occupy are skipped. A BAR that fits nowhere stays unassigned (counted in stats()).
// Decoding and bus mastering are left to each driver (PciDevice::enable).
// Costs: the scan is one config read per absent device and a few per function, over the root bus
// and the numbered buses behind it. Sizing is four config accesses per BAR. Assignment sorts the
// BARs (insertion sort, O(BARs^2)) and, per BAR, tries candidates that each start past a taken
// BAR, each checked against all BARs: O(BARs^2) per BAR, O(BARs^3) in all -- at most
// kMaxDevices * 6 BARs, a few dozen in practice.
//
// Threading: one CPU, at boot, before drivers run. Devices live as long as the bridge.
#pragma once

#include "dmakit/support/addr.h"
#include "dmakit/support/result.h"
#include "dmakit/support/span.h"
#include "dmakit/support/types.h"
#include "drivers/pci/pci_config_access.h"
#include "drivers/pci/pci_device.h"

// An address window of the host bridge: CPU addresses [cpu_base, cpu_base + size) reach bus
// addresses [bus_base, bus_base + size) (from the device tree's "ranges", or the chipset's
// layout on x86).
struct PciWindow {
  enum class Kind : uint8_t { kIo, kMem32, kMem64 };
  Kind kind = Kind::kMem32;
  bool prefetchable = false;
  PhysAddr cpu_base;
  uint64_t bus_base = 0;
  uint64_t size = 0;
};

class PciHostBridge {
 public:
  static constexpr size_t kMaxDevices = 32;
  static constexpr size_t kMaxWindows = 8;

  struct Stats {
    size_t functions = 0;          // Functions found.
    size_t bars = 0;               // Implemented BARs.
    size_t firmware_bars = 0;      // Of which the firmware had assigned.
    size_t assigned_bars = 0;      // Of which enumerate() assigned.
    size_t unassigned_bars = 0;    // That fit no window.
    size_t skipped_bridges = 0;    // Bridges without a secondary bus number.
    size_t dropped_functions = 0;  // Beyond kMaxDevices.
  };

  PciHostBridge() = default;
  PciHostBridge(const PciHostBridge&) = delete;
  PciHostBridge& operator=(const PciHostBridge&) = delete;

  // Records the bridge: its config access (caller-owned, must outlive the bridge), its bus range
  // and its windows (copied). Errors: kInvalidArgument (null access, bus_end < bus_start, more
  // than kMaxWindows windows, a window of size 0 or wrapping), kBusy (called twice).
  Result<void> init(PciConfigAccess* cfg, uint8_t bus_start, uint8_t bus_end,
                    support::Span<const PciWindow> windows);

  // Scans, sizes and assigns (see above). Call once after init.
  // Errors: kInvalidArgument (not initialized, or called twice).
  Result<void> enumerate();

  size_t num_devices() const { return num_devices_; }
  // Precondition: i < num_devices().
  PciDevice& device(size_t i);
  const PciDevice& device(size_t i) const;
  // The first function after `after` (null: from the start) with these IDs, or null.
  PciDevice* find(uint16_t vendor, uint16_t device, const PciDevice* after = nullptr);

  size_t num_windows() const { return num_windows_; }
  const PciWindow& window(size_t i) const { return windows_[i]; }
  uint8_t bus_start() const { return bus_start_; }
  uint8_t bus_end() const { return bus_end_; }
  Stats stats() const { return stats_; }

 private:
  void scan_bus(uint8_t bus, unsigned depth);
  void add_function(PciAddress a);
  void size_bars(PciDevice& d);
  void translate(PciBar& bar) const;
  void assign_all();
  bool assign(PciDevice& d, unsigned index);
  // End (bus address) of an assigned BAR of that space overlapping [bus_lo, bus_lo + size), or 0.
  uint64_t taken_until(uint64_t bus_lo, uint64_t size, bool io) const;

  PciConfigAccess* cfg_ = nullptr;
  uint8_t bus_start_ = 0;
  uint8_t bus_end_ = 0;
  bool enumerated_ = false;
  PciWindow windows_[kMaxWindows];
  size_t num_windows_ = 0;
  PciDevice devices_[kMaxDevices];
  size_t num_devices_ = 0;
  Stats stats_;
};
