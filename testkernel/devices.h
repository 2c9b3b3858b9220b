// The test kernel's devices: the PCI host bridge (found in the device tree on aarch64 and riscv64,
// through arch::pci_host_fallback() on x86_64), its enumeration, and the devices the tests and
// the demo drive: QEMU's edu DMA engines and a virtio-blk disk.
//
// Which edu device has which DMA mask cannot be read from the device (QEMU's `dma_mask` is a
// command-line property, like a chip revision a driver is told about): the kernel command line
// says, as `edu_mask=<slot>:<mask>[,<slot>:<mask>...]` (slot = PCI device number on the root bus,
// hex; mask hex), and an edu device not listed has the device's documented default, 28 bits.
//
// Threading: devices() initializes on first use, on the boot CPU, before anything else uses the
// devices; it is not safe to race with itself.
#pragma once

#include "dmakit/device_dma.h"
#include "dmakit/support/result.h"
#include "dmakit/support/span.h"
#include "drivers/pci/pci_host_bridge.h"
#include "testkernel/kernel_env.h"

class Devices {
 public:
  static constexpr size_t kMaxEdu = 4;
  // QEMU's edu device: PCI ID 1234:11e8, 28-bit DMA mask unless told otherwise.
  static constexpr uint16_t kEduVendor = 0x1234;
  static constexpr uint16_t kEduDevice = 0x11e8;
  static constexpr uint64_t kEduDefaultMask = (1ull << 28) - 1;
  // virtio-blk: modern (1af4:1042) or transitional (1af4:1001) PCI IDs.
  static constexpr uint16_t kVirtioVendor = 0x1af4;
  static constexpr uint16_t kVirtioBlkModern = 0x1042;
  static constexpr uint16_t kVirtioBlkTransitional = 0x1001;
  // NVMe controllers: PCI class 01:08:02 (mass storage, non-volatile memory, NVM Express).
  static constexpr uint32_t kNvmeClass = 0x010802;
  static constexpr size_t kMaxNvme = 4;

  struct Edu {
    PciDevice* dev = nullptr;
    uint64_t dma_mask = kEduDefaultMask;
    bool mask_from_cmdline = false;
  };

  PciHostBridge& pci() { return pci_; }
  const PciHostBridge& pci() const { return pci_; }
  // Where the host bridge description came from ("device tree", "q35 MCH PCIEXBAR", ...).
  const char* host_source() const { return source_; }
  PhysRange ecam() const { return ecam_; }
  // The device tree marks the host bridge "dma-coherent" (reported only: the DeviceDma objects
  // keep the platform's default, see testkernel/devices.cc).
  bool dt_dma_coherent() const { return dt_dma_coherent_; }

  size_t num_edu() const { return num_edu_; }
  // Precondition: i < num_edu(). In PCI address order.
  const Edu& edu(size_t i) const;
  // The first edu whose mask is exactly `mask`, or null.
  const Edu* edu_with_mask(uint64_t mask) const;
  // The first virtio-blk function, or null.
  PciDevice* virtio_blk() const { return virtio_blk_; }
  // The NVMe functions, in PCI address order.
  size_t num_nvme() const { return num_nvme_; }
  // Precondition: i < num_nvme().
  PciDevice* nvme(size_t i) const;

  // The PC's legacy configuration mechanism (ports 0xCF8/0xCFC) when the architecture has I/O
  // ports (x86_64), else null. The enumeration uses it only when there is no ECAM; tests compare
  // the two.
  PciConfigAccess* port_config_access() const;

  // The DmaOp a driver of `dev` gives its DeviceDma: the device's IOMMU domain when the IOMMU
  // translates it (testkernel/iommu.h), else the platform's. Any context.
  DmaOp* dma_op(const PciDevice* dev) const;

  // The host bridge's DMA windows: its device-tree "dma-ranges" (Fdt::dma_ranges, read on the
  // bridge node or inherited from an ancestor bus), at most kMaxDmaWindows of them. Empty when
  // there is none (QEMU's virt machines, x86_64 without a device tree), when the property is
  // empty (identity), or when it could not be used (dma_ranges_error() says why). The storage
  // lives as long as the kernel, so DeviceDma objects may point at it.
  support::Span<const DmaWindow> dma_windows() const {
    return support::Span<const DmaWindow>(dma_windows_, num_dma_windows_);
  }
  // Why the bridge's dma-ranges were not used (kOk when they were, or when there are none):
  // Fdt::dma_ranges's errors, or kInvalidArgument for a window that wraps.
  ErrorCode dma_ranges_error() const { return dma_ranges_error_; }
  // Prints the one line of the report about the bridge's dma-ranges ("pci: dma-ranges: 2 windows"
  // then one line per window, "none", or "not used (reason)").
  void print_dma_ranges() const;

  // The DeviceDma every driver of a function on this bridge starts from: the op from the IOMMU
  // glue (dma_op) with `dma_mask` as both masks, and, when the device has no IOMMU domain, the
  // bridge's DMA windows (dma_windows). The caller may adjust it further (name, coherence) before
  // handing it to its driver. Precondition: dev is one of this bridge's functions; dma_mask != 0.
  // Ownership: the result points at this object's windows, which outlive it. Any context.
  DeviceDma device_dma(const PciDevice* dev, uint64_t dma_mask) const;

  // Prints the host bridge, its windows and every function with its BARs.
  void print_report() const;

 private:
  friend Result<Devices*> devices_init(const KernelEnv& env);
  Result<void> init(const KernelEnv& env);

  PciHostBridge pci_;
  const char* source_ = "";
  PhysRange ecam_;
  bool dt_dma_coherent_ = false;
  DmaWindow dma_windows_[kMaxDmaWindows];
  size_t num_dma_windows_ = 0;
  // How many entries the bridge's dma-ranges has (may exceed kMaxDmaWindows).
  size_t dt_dma_windows_ = 0;
  ErrorCode dma_ranges_error_ = ErrorCode::kOk;
  Edu edu_[kMaxEdu];
  size_t num_edu_ = 0;
  PciDevice* virtio_blk_ = nullptr;
  PciDevice* nvme_[kMaxNvme] = {};
  size_t num_nvme_ = 0;
};

// The disk image the QEMU runner attaches (tests/qemu/run_qemu.py builds it before each boot and
// checks it afterwards, with the same formulas): kSectors sectors of 512 bytes, sector s holding
// host_byte(s, 0..511). The guest writes guest_byte(s, j) to the sectors it announces with a line
// "virtio-blk: guest pattern in sectors <first>..<last>", and the runner checks that exactly those
// sectors changed.
namespace disk_pattern {
constexpr uint64_t kSectors = 1024;
constexpr uint64_t kSectorSize = 512;
// Ranges the test suite and the demo write (first sector, count).
constexpr uint64_t kTestSgFirst = 64;
constexpr uint64_t kTestSgCount = 18;
constexpr uint64_t kTestBounceFirst = 128;
constexpr uint64_t kTestBounceCount = 16;
constexpr uint64_t kDemoFirst = 256;
constexpr uint64_t kDemoCount = 8;
// Written by the dmawin_ tests (a run with dma-ranges, run_qemu.py --dma-ranges).
constexpr uint64_t kTestWindowFirst = 384;
constexpr uint64_t kTestWindowCount = 16;
inline uint8_t host_byte(uint64_t sector, uint64_t j) {
  return static_cast<uint8_t>((sector * 131 + j * 7 + 0x3C) & 0xFF);
}
inline uint8_t guest_byte(uint64_t sector, uint64_t j) {
  return static_cast<uint8_t>(((sector * 17) ^ (j * 29) ^ 0xA5) & 0xFF);
}
}  // namespace disk_pattern

// Finds and enumerates the PCI host bridge and the devices above (once; later calls return the
// same object or the same error).
// Errors: kNotFound (no host bridge: no "pci-host-ecam-generic" node and no fallback),
// kInvalidArgument (a malformed device-tree node), and arch::mmio_map's errors for the ECAM.
Result<Devices*> devices_init(const KernelEnv& env);
