// Helpers shared by the in-VM tests: pages from the booted kernel's allocator, byte patterns, and
// a stand-in device that reads and writes memory at a DMA address (bus offset 0 on every QEMU
// machine used here) through the direct map.
#pragma once

#include "dmakit/support/mem.h"
#include "dmakit/support/types.h"
#include "testkernel/devices.h"
#include "testkernel/kernel_env.h"

namespace ktest_util {

constexpr uint64_t kPage = PageFrameAllocator::kPageSize;

// A block of 2^order pages from the kernel's allocator under `limit`; freed by the destructor.
class Pages {
 public:
  explicit Pages(unsigned order, uint64_t limit = ~0ull) : order_(order) {
    auto r = kernel_env().pfa->alloc(order, limit);
    if (r.ok()) {
      phys_ = *r;
      ok_ = true;
    }
  }
  ~Pages() {
    if (ok_) {
      auto r = kernel_env().pfa->free(phys_, order_);
      KASSERT(r.ok(), "test pages freed twice");
    }
  }
  Pages(const Pages&) = delete;
  Pages& operator=(const Pages&) = delete;

  bool ok() const { return ok_; }
  PhysAddr phys() const { return phys_; }
  uint8_t* va() const { return static_cast<uint8_t*>(kernel_env().phys_to_virt(phys_)); }
  size_t bytes() const { return static_cast<size_t>(kPage << order_); }

 private:
  unsigned order_;
  PhysAddr phys_;
  bool ok_ = false;
};

// Byte i of pattern `seed`: a cheap sequence that differs between seeds and neighbouring bytes.
inline uint8_t pattern_byte(uint32_t seed, size_t i) {
  uint32_t x = static_cast<uint32_t>(i) * 2654435761u + seed * 40503u + 0x9e37u;
  return static_cast<uint8_t>(x >> 24);
}
inline void fill_pattern(uint8_t* p, size_t n, uint32_t seed) {
  for (size_t i = 0; i < n; ++i) p[i] = pattern_byte(seed, i);
}
// Index of the first byte that differs from the pattern, or n if none.
inline size_t check_pattern(const uint8_t* p, size_t n, uint32_t seed) {
  for (size_t i = 0; i < n; ++i) {
    if (p[i] != pattern_byte(seed, i)) return i;
  }
  return n;
}

// The stand-in device's view of memory at a DMA address.
inline uint8_t* device_view(DmaAddr a) {
  return static_cast<uint8_t*>(kernel_env().phys_to_virt(PhysAddr(a.value())));
}
// A device write: the bytes land in memory, not in a CPU cache line that a later invalidate may
// discard. The stand-in is the CPU, so it cleans what it wrote.
inline void device_write_pattern(DmaAddr a, size_t n, uint32_t seed) {
  uint8_t* p = device_view(a);
  fill_pattern(p, n, seed);
  kernel_env().dma->flush(p, n);
}

// Highest end address of any RAM range.
inline uint64_t ram_top() {
  const arch::BootInfo& b = *kernel_env().boot;
  uint64_t top = 0;
  for (size_t i = 0; i < b.num_ram; ++i) {
    if (b.ram[i].end().value() > top) top = b.ram[i].end().value();
  }
  return top;
}

// A block of 2^order pages starting above `floor` (the allocator has no lower bound of its own: it
// prefers high address bands, not the highest block). Takes blocks until one fits or none is left
// and gives the others back. The caller frees the result. Errors: kNoMemory (none found).
Result<PhysAddr> alloc_above(unsigned order, uint64_t floor);

// The test kernel's PCI devices (set up on first use), or null when that failed.
Devices* devices();

// The bounce pool with the given name, or null.
BouncePool* pool_named(const char* name);

// Fills `n` bytes that start at byte `pos` of the test disk with the guest pattern
// (disk_pattern in testkernel/devices.h).
void fill_guest(uint8_t* p, size_t n, uint64_t pos);
// Offset of the first of `n` bytes, starting at byte `pos` of the disk, that is not the guest
// pattern (`guest`) or the host's, or n when all are.
size_t check_disk(const uint8_t* p, size_t n, uint64_t pos, bool guest);

}  // namespace ktest_util
