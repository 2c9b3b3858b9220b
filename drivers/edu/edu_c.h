/* edu_c: QEMU's "edu" PCI device (docs/specs/edu.rst) driven from C11 through the C API
 * (dmakit/dmakit.h) alone: the same DMA engine as drivers/edu/edu_device.h, copying between RAM
 * and the device's 4 KiB buffer, for a kernel written in C.
 *
 * Registers (BAR0): 0x00 identification 0xRRrr00ed, 0x04 liveness (reads back the complement),
 * 0x80 DMA source, 0x88 DMA destination, 0x90 count, 0x98 command (bit 0 start, reads 1 while
 * running; bit 1 direction: 1 device -> RAM). The device's buffer is at device address 0x40000.
 *
 * Every transfer maps the RAM buffer with dmakit_map (direct, or bounced when the device's mask
 * does not reach it; on a mapping error the device is never touched), programs the engine, polls
 * the start bit until it clears (bounded by a timeout), and unmaps (for device -> RAM, where the
 * CPU's view is made current).
 *
 * The kernel gives the driver what a C driver cannot know: its MMIO barriers and clock
 * (edu_c_ops), the BAR mapped as device memory with memory decoding and bus mastering enabled,
 * and a dmakit_device carrying the device's DMA mask (QEMU's `dma_mask` property; the device
 * cannot report it).
 *
 * Threading: one transfer at a time per device; not for interrupt context (it polls). */
#ifndef DRIVERS_EDU_EDU_C_H
#define DRIVERS_EDU_EDU_C_H

#include <stddef.h>
#include <stdint.h>

#include "dmakit/dmakit.h"

#ifdef __cplusplus
extern "C" {
#endif

#define EDU_C_BUFFER_SIZE 4096u
#define EDU_C_BUFFER_ADDR 0x40000u

typedef struct edu_c_ops {
  /* Every earlier CPU write to memory reaches devices before any later MMIO write. */
  void (*io_wmb)(void);
  /* Every earlier MMIO read completes before any later read of memory. */
  void (*io_rmb)(void);
  /* A monotonic clock in nanoseconds. */
  uint64_t (*now_ns)(void);
} edu_c_ops;

typedef struct edu_c {
  volatile uint8_t* regs;
  dmakit_device* dma;
  const edu_c_ops* ops;
  uint64_t timeout_ns;
  int broken; /* A transfer timed out: the device may still write, so it is never used again. */
  /* Counters, for reports and tests. */
  uint64_t started;
  uint64_t completed;
  uint64_t bounced;
  uint64_t map_failures;
} edu_c;

/* What one transfer did. */
typedef struct edu_c_transfer {
  uint64_t dma_addr; /* The RAM-side address programmed into the device. */
  int bounced;
} edu_c_transfer;

/* Binds `edu` to the device whose BAR0 (at least 0xA0 bytes) is mapped at `bar0`, after checking
 * the identification and liveness registers. `dma` and `ops` must outlive `edu`.
 * Errors: DMAKIT_ERR_INVALID_ARGUMENT (a null argument, a BAR too small), DMAKIT_ERR_NOT_FOUND
 * (not an edu device, or it fails the checks). */
int edu_c_init(edu_c* edu, volatile void* bar0, uint64_t bar_size, dmakit_device* dma,
               const edu_c_ops* ops);

/* Copies `size` bytes of the RAM buffer `buf` (physically contiguous; the caller does not touch
 * it during the call) into the device's buffer at `offset`; *t (may be null) says how.
 * Errors: DMAKIT_ERR_INVALID_ARGUMENT (not bound, or broken), DMAKIT_ERR_LAYOUT (size 0),
 * DMAKIT_ERR_OUT_OF_RANGE (beyond the 4 KiB buffer), DMAKIT_ERR_BUSY (an earlier transfer is
 * still running), DMAKIT_ERR_TIMED_OUT (no completion: the device is then broken), and every
 * dmakit_map error, returned before the device is touched. */
int edu_c_copy_to_device(edu_c* edu, const void* buf, size_t size, uint32_t offset,
                         edu_c_transfer* t);
/* Copies from the device's buffer at `offset` into `buf`; on success the CPU sees the data.
 * Errors as edu_c_copy_to_device. */
int edu_c_copy_from_device(edu_c* edu, void* buf, size_t size, uint32_t offset, edu_c_transfer* t);

#ifdef __cplusplus
} /* extern "C" */
#endif

#endif /* DRIVERS_EDU_EDU_C_H */
