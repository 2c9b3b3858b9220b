// MmioRegion: a window of device registers (a PCI BAR, an ECAM) as the drivers see it.
//
// Every access is a single volatile load or store of exactly the requested width (devices care
// about access size), bounds-checked in debug builds. Like Linux's readl/writel, each access is
// ordered against DMA memory: a write is preceded by arch::io_wmb() (everything the CPU wrote to
// memory reaches the device first: ring entries before a doorbell, a buffer before "start"), and
// a read is followed by arch::io_rmb() (a status read completes before the CPU reads the memory
// the device filled). Registers are little-endian on every supported machine.
//
// Threading: an MmioRegion is a plain view; concurrent users coordinate themselves. Every access
// may be made with interrupts off.
#pragma once

#include "dmakit/support/assert.h"
#include "dmakit/support/types.h"
#include "testkernel/arch_io.h"

class MmioRegion {
 public:
  MmioRegion() = default;
  // `base` must stay mapped as device memory for the life of the region (arch::mmio_map).
  MmioRegion(volatile void* base, uint64_t size)
      : base_(static_cast<volatile uint8_t*>(base)), size_(size) {}

  bool valid() const { return base_ != nullptr; }
  uint64_t size() const { return size_; }
  volatile void* base() const { return base_; }

  // A view of [offset, offset + size) of this region. Precondition: inside the region.
  MmioRegion sub(uint64_t offset, uint64_t size) const {
    KASSERT(offset <= size_ && size <= size_ - offset, "MmioRegion::sub outside the region");
    return MmioRegion(base_ + offset, size);
  }

  uint8_t read8(uint64_t off) const { return read<uint8_t>(off); }
  uint16_t read16(uint64_t off) const { return read<uint16_t>(off); }
  uint32_t read32(uint64_t off) const { return read<uint32_t>(off); }
  uint64_t read64(uint64_t off) const { return read<uint64_t>(off); }
  void write8(uint64_t off, uint8_t v) const { write<uint8_t>(off, v); }
  void write16(uint64_t off, uint16_t v) const { write<uint16_t>(off, v); }
  void write32(uint64_t off, uint32_t v) const { write<uint32_t>(off, v); }
  void write64(uint64_t off, uint64_t v) const { write<uint64_t>(off, v); }

 private:
  template <typename T>
  volatile T* at(uint64_t off) const {
    KDEBUG_ASSERT(off <= size_ && sizeof(T) <= size_ - off, "MMIO access outside the region");
    KDEBUG_ASSERT(off % sizeof(T) == 0, "misaligned MMIO access");
    return reinterpret_cast<volatile T*>(base_ + off);
  }
  template <typename T>
  T read(uint64_t off) const {
    T v = *at<T>(off);
    arch::io_rmb();
    return v;
  }
  template <typename T>
  void write(uint64_t off, T v) const {
    arch::io_wmb();
    *at<T>(off) = v;
  }

  volatile uint8_t* base_ = nullptr;
  uint64_t size_ = 0;
};
