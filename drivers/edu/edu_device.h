// EduDevice: a driver for QEMU's "edu" educational PCI device (QEMU docs/specs/edu.rst), used as
// a real DMA engine: it copies between RAM and a 4 KiB buffer inside the device.
//
// Registers (BAR0, 1 MiB; 32-bit accesses below 0x80, 32- or 64-bit from 0x80 on):
//   0x00 identification 0xRRrr00ed      0x04 liveness check (reads back the complement)
//   0x80 DMA source address (64-bit)    0x88 DMA destination address (64-bit)
//   0x90 DMA transfer count             0x98 DMA command: bit 0 start (reads 1 while running),
//                                            bit 1 direction (0: RAM -> device, 1: device ->
//                                            RAM), bit 2 raise an interrupt when done
// The device buffer is at device address 0x40000 (4 KiB). The device honours a DMA mask (28 bits
// unless QEMU's `dma_mask` property says otherwise): an address above it is truncated and QEMU
// logs "EDU: clamping DMA" -- which a correct driver never causes, since every address it programs
// comes from a StreamingMapping made under the mask (bounced when the buffer lies above it).
//
// Every transfer: map the RAM buffer (DeviceDma::map: direct, bounced, or an error -- then the
// device is never touched), program source/destination/count, start, wait for the end (bounded
// by a timeout on arch::now_ns()), unmap (for device -> RAM this is where the CPU's view is made
// current). Two ways to learn of the end:
//   polled (the default): the command register's start bit is polled until it clears, and the
//     transfer call unmaps;
//   by interrupt (after enable_interrupts): the transfer is started with command bit 2, the device
//     signals its MSI when done (interrupt status bit 0x100), and the interrupt handler
//     acknowledges it (register 0x64) and unmaps the mapping, as a real driver's completion path
//     does; the transfer call only waits for the handler.
// Interrupt registers: 0x24 status (bit 0x100: DMA done), 0x60 raise, 0x64 acknowledge (clears
// the bits written). Legacy INTx stays masked.
//
// Threading: one transfer at a time per device; callers serialize. Not for interrupt context
// (waits for up to the timeout); the interrupt mode's waits unmask interrupts on the calling CPU
// while they wait.
#pragma once

#include "dmakit/device_dma.h"
#include "dmakit/support/result.h"
#include "drivers/pci/mmio.h"
#include "drivers/pci/pci_device.h"
#include "testkernel/arch.h"

class EduDevice {
 public:
  static constexpr uint32_t kBufferSize = 4096;
  static constexpr uint64_t kBufferAddr = 0x40000;
  static constexpr uint64_t kDefaultTimeoutNs = 5'000'000'000;  // The device takes ~100 ms.

  // What one transfer did, for reports and tests.
  struct Transfer {
    DmaAddr dma_addr;  // The RAM-side address programmed into the device.
    bool bounced = false;
    uint64_t elapsed_ns = 0;
  };

  struct Stats {
    uint64_t started = 0;  // Transfers the device was started for.
    uint64_t completed = 0;
    uint64_t map_failures = 0;  // Transfers refused before touching the device.
    uint64_t bounced = 0;
    uint64_t interrupts = 0;  // Completion interrupts handled.
    uint64_t irq_unmaps = 0;  // Mappings unmapped by the interrupt handler.
  };

  EduDevice() = default;
  EduDevice(const EduDevice&) = delete;
  EduDevice& operator=(const EduDevice&) = delete;
  // Stops bus mastering (see shutdown()).
  ~EduDevice() { shutdown(); }

  // Binds to an edu PCI function: maps BAR0, checks the identification register and the
  // liveness check, enables memory decoding and bus mastering. `dma` carries the device's mask
  // (the caller knows it: the device cannot report it) and the platform's DmaOp; it is copied.
  // `pci` must outlive this object.
  // Errors: kInvalidArgument (already bound, null device), kNotFound (not an edu device, or it
  // fails the identification/liveness check), PciDevice::map_bar / enable errors.
  Result<void> init(PciDevice* pci, const DeviceDma& dma);

  // Copies `size` bytes of the RAM buffer `buf` into the device buffer at `offset` (kToDevice).
  // Preconditions: `buf` is one physically contiguous piece of normal memory (the direct map)
  // that the caller does not touch during the call.
  // Errors: kInvalidArgument (not bound, or unusable after a timeout), kOutOfRange (offset + size
  // beyond the 4 KiB device buffer), kLayoutError (size 0),
  // kBusy (the device is still running an earlier transfer), kTimedOut (no completion within the
  // timeout: bus mastering is then turned off so a late transfer cannot reach memory that is
  // about to be reused, and the device stays unusable), and every DeviceDma::map error
  // (kDmaMaskNotMatch, kNoMemory, ...), returned before the device is touched.
  Result<Transfer> copy_to_device(const void* buf, size_t size, uint32_t offset = 0);
  // Copies `size` bytes from the device buffer at `offset` into the RAM buffer `buf`
  // (kFromDevice); on success the CPU sees the new contents. Same preconditions and errors.
  Result<Transfer> copy_from_device(void* buf, size_t size, uint32_t offset = 0);

  // Switches completion to the device's MSI, steered to CPU `cpu` (arch::msi_alloc). Errors:
  // kInvalidArgument (not bound, already on), kNotFound (no MSI capability), msi_alloc's errors.
  // On error the device stays polled.
  Result<void> enable_interrupts(unsigned cpu = 0);
  // Back to polled completion; frees the MSI. Idempotent. Precondition: no transfer running.
  void disable_interrupts();
  bool interrupts_enabled() const { return msi_.address != 0; }

  // Raw register reads, for tests and reports.
  uint32_t id() const { return regs_.read32(kRegId); }
  uint64_t dma_src() const { return regs_.read64(kRegDmaSrc); }
  uint64_t dma_dst() const { return regs_.read64(kRegDmaDst); }
  uint64_t dma_count() const { return regs_.read64(kRegDmaCount); }
  uint64_t dma_command() const { return regs_.read64(kRegDmaCmd); }

  bool bound() const { return pci_ != nullptr; }
  PciDevice* pci() const { return pci_; }
  DeviceDma& dma() { return dma_; }
  const Stats& stats() const { return stats_; }
  void set_timeout_ns(uint64_t ns) { timeout_ns_ = ns; }

  // Turns bus mastering and decoding off, checks that no mapping of the device is left
  // (DeviceDma::check_no_mappings reports any) and unbinds. Idempotent. Precondition: no transfer
  // running (every transfer call waits for its end).
  void shutdown();

 private:
  static constexpr uint32_t kRegId = 0x00;
  static constexpr uint32_t kRegLiveness = 0x04;
  static constexpr uint32_t kRegIrqStatus = 0x24;
  static constexpr uint32_t kRegIrqAck = 0x64;
  static constexpr uint32_t kRegDmaSrc = 0x80;
  static constexpr uint32_t kRegDmaDst = 0x88;
  static constexpr uint32_t kRegDmaCount = 0x90;
  static constexpr uint32_t kRegDmaCmd = 0x98;
  static constexpr uint64_t kCmdStart = 1u << 0;
  static constexpr uint64_t kCmdToRam = 1u << 1;
  static constexpr uint64_t kCmdIrq = 1u << 2;
  static constexpr uint32_t kIrqDma = 0x100;

  Result<Transfer> run(StreamingMapping& map, bool to_ram, uint32_t offset);
  // The MSI handler: acknowledges, unmaps the transfer's mapping, reports the end. Interrupt
  // context.
  static void on_interrupt(void* self);

  PciDevice* pci_ = nullptr;
  MmioRegion regs_;
  DeviceDma dma_;
  Stats stats_;
  uint64_t timeout_ns_ = kDefaultTimeoutNs;
  bool broken_ = false;
  arch::MsiMessage msi_;  // address 0: polled.
  // The running interrupt-completed transfer's mapping (null when none); the handler unmaps it and
  // sets done_. Written by the transfer call with interrupts masked, read by the handler.
  StreamingMapping* inflight_ = nullptr;
  bool done_ = false;
};
