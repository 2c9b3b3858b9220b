/* The edu DMA engine in C11 over dmakit's C API; see edu_c.h. */
#include "drivers/edu/edu_c.h"

enum {
  kRegId = 0x00,
  kRegLiveness = 0x04,
  kRegDmaSrc = 0x80,
  kRegDmaDst = 0x88,
  kRegDmaCount = 0x90,
  kRegDmaCmd = 0x98,
  kRegEnd = 0xA0,
};

#define EDU_CMD_START 1u
#define EDU_CMD_TO_RAM 2u
#define EDU_ID_MASK 0xFFFFu
#define EDU_ID_VALUE 0xEDu
#define EDU_LIVENESS_PROBE 0x5A5A0F0Fu
#define EDU_DEFAULT_TIMEOUT_NS 5000000000ull /* A transfer takes about 100 ms. */

/* Single accesses of exactly the register's width; writes after io_wmb (the buffer, or the bounce
 * copy, reaches the device before the command), reads before io_rmb. */
static uint32_t read32(const edu_c* edu, unsigned off) {
  uint32_t v = *(volatile uint32_t*)(edu->regs + off);
  edu->ops->io_rmb();
  return v;
}

static uint64_t read64(const edu_c* edu, unsigned off) {
  uint64_t v = *(volatile uint64_t*)(edu->regs + off);
  edu->ops->io_rmb();
  return v;
}

static void write32(const edu_c* edu, unsigned off, uint32_t v) {
  edu->ops->io_wmb();
  *(volatile uint32_t*)(edu->regs + off) = v;
}

static void write64(const edu_c* edu, unsigned off, uint64_t v) {
  edu->ops->io_wmb();
  *(volatile uint64_t*)(edu->regs + off) = v;
}

int edu_c_init(edu_c* edu, volatile void* bar0, uint64_t bar_size, dmakit_device* dma,
               const edu_c_ops* ops) {
  if (edu == NULL || bar0 == NULL || dma == NULL || ops == NULL || ops->io_wmb == NULL ||
      ops->io_rmb == NULL || ops->now_ns == NULL || bar_size < kRegEnd) {
    return DMAKIT_ERR_INVALID_ARGUMENT;
  }
  edu_c e = {0};
  e.regs = (volatile uint8_t*)bar0;
  e.dma = dma;
  e.ops = ops;
  e.timeout_ns = EDU_DEFAULT_TIMEOUT_NS;
  if ((read32(&e, kRegId) & EDU_ID_MASK) != EDU_ID_VALUE) return DMAKIT_ERR_NOT_FOUND;
  write32(&e, kRegLiveness, EDU_LIVENESS_PROBE);
  if (read32(&e, kRegLiveness) != ~EDU_LIVENESS_PROBE) return DMAKIT_ERR_NOT_FOUND;
  *edu = e;
  return DMAKIT_OK;
}

/* Checks shared by both directions. */
static int check_request(const edu_c* edu, size_t size, uint32_t offset) {
  if (edu == NULL || edu->regs == NULL || edu->broken) return DMAKIT_ERR_INVALID_ARGUMENT;
  if (size == 0) return DMAKIT_ERR_LAYOUT;
  if (offset > EDU_C_BUFFER_SIZE || size > EDU_C_BUFFER_SIZE - offset) {
    return DMAKIT_ERR_OUT_OF_RANGE;
  }
  return DMAKIT_OK;
}

/* Runs one transfer over the live mapping `m` and ends the mapping, whatever happens (on a
 * timeout, after cutting the device off by marking it broken: the kernel must turn its bus
 * mastering off before the memory is reused). */
static int run(edu_c* edu, dmakit_map_handle* m, int to_ram, uint32_t offset, edu_c_transfer* t) {
  if ((read64(edu, kRegDmaCmd) & EDU_CMD_START) != 0) {
    (void)dmakit_unmap(m);
    return DMAKIT_ERR_BUSY;
  }
  uint64_t ram = dmakit_map_dma_addr(m);
  uint64_t dev = EDU_C_BUFFER_ADDR + offset;
  int bounced = dmakit_map_bounced(m);
  write64(edu, kRegDmaSrc, to_ram ? dev : ram);
  write64(edu, kRegDmaDst, to_ram ? ram : dev);
  write64(edu, kRegDmaCount, dmakit_map_size(m));
  uint64_t start = edu->ops->now_ns();
  write64(edu, kRegDmaCmd, EDU_CMD_START | (to_ram ? EDU_CMD_TO_RAM : 0u));
  ++edu->started;
  if (bounced) ++edu->bounced;
  while ((read64(edu, kRegDmaCmd) & EDU_CMD_START) != 0) {
    if (edu->ops->now_ns() - start > edu->timeout_ns) {
      /* The mapping stays: the device may still write into it. */
      edu->broken = 1;
      return DMAKIT_ERR_TIMED_OUT;
    }
  }
  int s = dmakit_unmap(m);
  if (s != DMAKIT_OK) return s;
  ++edu->completed;
  if (t != NULL) {
    t->dma_addr = ram;
    t->bounced = bounced;
  }
  return DMAKIT_OK;
}

int edu_c_copy_to_device(edu_c* edu, const void* buf, size_t size, uint32_t offset,
                         edu_c_transfer* t) {
  int s = check_request(edu, size, offset);
  if (s != DMAKIT_OK) return s;
  dmakit_map_handle m;
  /* The device only reads the buffer: the mapping does not write through it. */
  s = dmakit_map(edu->dma, (void*)(uintptr_t)buf, size, DMAKIT_TO_DEVICE, 0, &m);
  if (s != DMAKIT_OK) {
    ++edu->map_failures;
    return s;
  }
  return run(edu, &m, 0, offset, t);
}

int edu_c_copy_from_device(edu_c* edu, void* buf, size_t size, uint32_t offset, edu_c_transfer* t) {
  int s = check_request(edu, size, offset);
  if (s != DMAKIT_OK) return s;
  dmakit_map_handle m;
  s = dmakit_map(edu->dma, buf, size, DMAKIT_FROM_DEVICE, 0, &m);
  if (s != DMAKIT_OK) {
    ++edu->map_failures;
    return s;
  }
  return run(edu, &m, 1, offset, t);
}
