/* The C API (include/dmakit/dmakit.h) from a C11 program, over the host backend: the set-up a C
 * kernel makes (allocator, bounce pool, platform op), then streaming mappings, direct and
 * bounced, with the data checked from the device's side of the host's cache model
 * (arch/host/host_capi.h), scatter-gather, coherent memory, the error codes and the statistics.
 *
 * The machine: 32 MiB of RAM at physical 0xFF00'0000, so that its low 16 MiB lie under 4 GiB and
 * its high 16 MiB above; a 1 MiB bounce pool at its bottom; devices that do not snoop the caches
 * (the host platform's default), so that a missing clean or invalidate shows in the data.
 *
 * Ends with "capi: N passed, N failed"; the exit status is non-zero when a check failed. */
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "arch/host/host_capi.h"
#include "dmakit/dmakit.h"

static int g_passed;
static int g_failed;

#define CHECK(cond)                                            \
  do {                                                         \
    if (cond) {                                                \
      ++g_passed;                                              \
    } else {                                                   \
      ++g_failed;                                              \
      printf("[FAIL] %s:%d: %s\n", __FILE__, __LINE__, #cond); \
    }                                                          \
  } while (0)

/* Checks a status against the expected one, naming both on failure. */
#define CHECK_STATUS(expr, want)                                               \
  do {                                                                         \
    int got_ = (expr);                                                         \
    if (got_ == (want)) {                                                      \
      ++g_passed;                                                              \
    } else {                                                                   \
      ++g_failed;                                                              \
      printf("[FAIL] %s:%d: %s: %s, expected %s\n", __FILE__, __LINE__, #expr, \
             dmakit_strerror(got_), dmakit_strerror(want));                    \
    }                                                                          \
  } while (0)

/* The library calls this on a broken invariant; a C kernel provides it the same way. */
_Noreturn void support_panic(const char* file, int line, const char* msg);
_Noreturn void support_panic(const char* file, int line, const char* msg) {
  printf("panic at %s:%d: %s\n", file, line, msg);
  fflush(stdout);
  abort();
}

#define RAM_BASE 0xFF000000ull
#define RAM_BYTES (32ull << 20)
#define POOL_BYTES (1ull << 20)
#define PAGE 4096u
#define MASK32 0xFFFFFFFFull

static dmakit_pfa g_pfa;
static dmakit_bounce_pool g_pool;
static dmakit_platform_op g_op;
static dmakit_device g_dev32;   /* 32-bit mask: reaches the pool and the low half of RAM. */
static dmakit_device g_dev28;   /* 28-bit mask: reaches nothing. */
static dmakit_device g_dev_coh; /* 32-bit mask, snoops the caches. */
static uint8_t* g_ram;
static void* g_pfa_meta;
static void* g_pool_meta;

static void* ram_at(uint64_t phys) {
  return dmakit_pfa_phys_to_virt(&g_pfa, phys);
}

static void fill(uint8_t* p, size_t n, unsigned seed) {
  for (size_t i = 0; i < n; ++i) p[i] = (uint8_t)(i * 7u + seed);
}

/* Bytes of p that differ from fill(p, n, seed). */
static size_t mismatches(const uint8_t* p, size_t n, unsigned seed) {
  size_t bad = 0;
  for (size_t i = 0; i < n; ++i) bad += p[i] != (uint8_t)(i * 7u + seed);
  return bad;
}

/* One page of RAM at or below `limit`, or null. The allocator takes the highest block of the
 * smallest order that has one, so this is low memory: RAM above 4 GiB comes from g_high. */
static uint8_t* page_under(uint64_t limit, uint64_t* phys) {
  if (dmakit_pfa_alloc(&g_pfa, 0, limit, phys) != DMAKIT_OK) return NULL;
  return ram_at(*phys);
}

/* Memory outside RAM (not in the direct map), reached through the op's translation callback:
 * it says the buffer lies at `phys`, pages of RAM above 4 GiB that nothing else uses. */
static _Alignas(4096) uint8_t g_outside[2 * PAGE];
static _Alignas(4096) uint8_t g_untranslated[PAGE];
struct translation {
  const uint8_t* base;
  size_t bytes;
  uint64_t phys;
  unsigned calls;
};
static struct translation g_translation;

static int translate(void* ctx, const void* va, uint64_t* phys) {
  struct translation* t = ctx;
  ++t->calls;
  uintptr_t p = (uintptr_t)va;
  uintptr_t b = (uintptr_t)t->base;
  if (p < b || p - b >= t->bytes) return 0;
  *phys = t->phys + (p - b);
  return 1;
}

/* The highest 4 MiB block of RAM (above 4 GiB), taken at set-up: page i of it. */
static uint64_t g_high;
static uint8_t* high_page(unsigned i, uint64_t* phys) {
  *phys = g_high + (uint64_t)i * PAGE;
  return ram_at(*phys);
}

static void set_up(void) {
  /* RAM is fresh, zeroed and page aligned, as the host op's cache model requires. */
  g_ram = aligned_alloc(PAGE, RAM_BYTES);
  CHECK(g_ram != NULL);
  memset(g_ram, 0, RAM_BYTES);
  uintptr_t offset = (uintptr_t)g_ram - (uintptr_t)RAM_BASE;

  const dmakit_phys_range ram[1] = {{RAM_BASE, RAM_BYTES}};
  const dmakit_phys_range reserved[1] = {{RAM_BASE, POOL_BYTES}};
  size_t meta = dmakit_pfa_metadata_size(ram, 1);
  CHECK(meta > 0);
  void* pfa_meta = malloc(meta);
  g_pfa_meta = pfa_meta;

  /* A metadata buffer one byte short is refused, and the allocator stays uninitialised. */
  static dmakit_pfa small;
  CHECK_STATUS(dmakit_pfa_init(&small, ram, 1, reserved, 1, offset, pfa_meta, meta - 1),
               DMAKIT_ERR_NO_MEMORY);
  CHECK_STATUS(dmakit_pfa_destroy(&small), DMAKIT_ERR_INVALID_ARGUMENT);

  CHECK_STATUS(dmakit_pfa_init(&g_pfa, ram, 1, reserved, 1, offset, pfa_meta, meta), DMAKIT_OK);
  CHECK_STATUS(dmakit_pfa_init(&g_pfa, ram, 1, reserved, 1, offset, pfa_meta, meta),
               DMAKIT_ERR_INVALID_ARGUMENT);

  dmakit_pfa_stats ps;
  CHECK_STATUS(dmakit_pfa_stats_get(&g_pfa, &ps), DMAKIT_OK);
  CHECK(ps.managed_pages == (RAM_BYTES - POOL_BYTES) / PAGE);
  CHECK(ps.free_pages == ps.managed_pages);
  CHECK(ps.lowest_address == RAM_BASE + POOL_BYTES);
  CHECK_STATUS(dmakit_pfa_alloc(&g_pfa, 10, ~0ull, &g_high), DMAKIT_OK);
  CHECK(g_high == RAM_BASE + RAM_BYTES - (4u << 20));

  size_t pool_meta_bytes = dmakit_bounce_pool_metadata_size(POOL_BYTES, 0);
  CHECK(pool_meta_bytes > 0);
  void* pool_meta = malloc(pool_meta_bytes);
  g_pool_meta = pool_meta;
  dmakit_bounce_pool_options po = {0, 0, "capi-pool"};
  CHECK_STATUS(dmakit_bounce_pool_init(&g_pool, RAM_BASE, POOL_BYTES, ram_at(RAM_BASE), pool_meta,
                                       pool_meta_bytes, &po),
               DMAKIT_OK);

  dmakit_platform_config cfg;
  memset(&cfg, 0, sizeof(cfg));
  cfg.pools[0] = &g_pool;
  cfg.num_pools = 1;
  cfg.direct_map_offset = offset;
  cfg.ram = ram;
  cfg.num_ram = 1;
  cfg.translate = translate;
  cfg.translate_ctx = &g_translation;
  /* No allocator: refused. */
  CHECK_STATUS(dmakit_platform_op_init(&g_op, &cfg), DMAKIT_ERR_INVALID_ARGUMENT);
  cfg.pfa = &g_pfa;
  cfg.cache_line_size = 48; /* Not a power of two. */
  CHECK_STATUS(dmakit_platform_op_init(&g_op, &cfg), DMAKIT_ERR_INVALID_ARGUMENT);
  cfg.cache_line_size = 0;
  CHECK_STATUS(dmakit_platform_op_init(&g_op, &cfg), DMAKIT_OK);
  CHECK(dmakit_cache_alignment(&g_op) == 64);

  dmakit_device_config dc;
  memset(&dc, 0, sizeof(dc));
  CHECK_STATUS(dmakit_device_init(&g_dev32, &g_op, &dc), DMAKIT_ERR_INVALID_ARGUMENT); /* mask 0 */
  dc.dma_mask = MASK32;
  dc.name = "capi-32bit";
  CHECK_STATUS(dmakit_device_init(&g_dev32, &g_op, &dc), DMAKIT_OK);
  CHECK(dmakit_device_dma_mask(&g_dev32) == MASK32);
  CHECK(dmakit_device_coherent(&g_dev32) == 0); /* The host platform's default. */
  CHECK(dmakit_device_cache_alignment(&g_dev32) == 64);
  CHECK(dmakit_device_max_mapping_size(&g_dev32) == 256u * 1024u);
  dc.dma_mask = DMAKIT_DMA_BIT_MASK(28);
  dc.name = "capi-28bit";
  CHECK_STATUS(dmakit_device_init(&g_dev28, &g_op, &dc), DMAKIT_OK);
  dc.dma_mask = MASK32;
  dc.coherence = DMAKIT_COHERENCE_COHERENT;
  dc.name = "capi-coherent";
  CHECK_STATUS(dmakit_device_init(&g_dev_coh, &g_op, &dc), DMAKIT_OK);
  CHECK(dmakit_device_coherent(&g_dev_coh) == 1);
}

/* A page under 4 GiB, for the 32-bit device: its own address, caches cleaned at map and
 * invalidated at unmap (the device's view is memory, behind the cache). */
static void direct_mappings(void) {
  uint64_t phys = 0;
  uint8_t* buf = page_under(MASK32, &phys);
  CHECK(buf != NULL);
  if (buf == NULL) return;
  dmakit_op_stats s0, s1;
  CHECK_STATUS(dmakit_op_stats_get(&g_op, &s0), DMAKIT_OK);

  fill(buf, PAGE, 1);
  dmakit_map_handle h;
  CHECK_STATUS(dmakit_map(&g_dev32, buf, PAGE, DMAKIT_TO_DEVICE, 0, &h), DMAKIT_OK);
  CHECK(dmakit_map_dma_addr(&h) == phys);
  CHECK(dmakit_map_bounced(&h) == 0);
  CHECK(dmakit_map_size(&h) == PAGE);
  static uint8_t seen[PAGE];
  CHECK_STATUS(dmakit_host_device_read(&g_op, &g_dev32, dmakit_map_dma_addr(&h), seen, PAGE),
               DMAKIT_OK);
  CHECK(mismatches(seen, PAGE, 1) == 0);
  CHECK_STATUS(dmakit_unmap(&h), DMAKIT_OK);
  CHECK_STATUS(dmakit_unmap(&h), DMAKIT_ERR_NOT_FOUND);

  /* The device writes; the CPU sees it after the unmap's invalidate. */
  CHECK_STATUS(dmakit_map(&g_dev32, buf, PAGE, DMAKIT_FROM_DEVICE, 0, &h), DMAKIT_OK);
  CHECK(dmakit_map_bounced(&h) == 0);
  fill(seen, PAGE, 2);
  CHECK_STATUS(dmakit_host_device_write(&g_op, &g_dev32, dmakit_map_dma_addr(&h), seen, PAGE),
               DMAKIT_OK);
  CHECK_STATUS(dmakit_unmap(&h), DMAKIT_OK);
  CHECK(mismatches(buf, PAGE, 2) == 0);

  /* Bidirectional, with syncs in the middle of the mapping. */
  CHECK_STATUS(dmakit_map(&g_dev32, buf, PAGE, DMAKIT_BIDIRECTIONAL, 0, &h), DMAKIT_OK);
  fill(seen, 256, 3);
  CHECK_STATUS(dmakit_host_device_write(&g_op, &g_dev32, phys + 512, seen, 256), DMAKIT_OK);
  CHECK_STATUS(dmakit_prepare_read(&h, 512, 256), DMAKIT_OK);
  CHECK(mismatches(buf + 512, 256, 3) == 0);
  fill(buf + 1024, 128, 4);
  CHECK_STATUS(dmakit_confirm_write(&h, 1024, 128), DMAKIT_OK);
  CHECK_STATUS(dmakit_host_device_read(&g_op, &g_dev32, phys + 1024, seen, 128), DMAKIT_OK);
  CHECK(mismatches(seen, 128, 4) == 0);
  CHECK_STATUS(dmakit_prepare_read(&h, PAGE - 8, 16), DMAKIT_ERR_OUT_OF_RANGE);
  CHECK_STATUS(dmakit_unmap(&h), DMAKIT_OK);
  CHECK_STATUS(dmakit_prepare_read(&h, 0, 16), DMAKIT_ERR_NOT_FOUND);

  CHECK_STATUS(dmakit_op_stats_get(&g_op, &s1), DMAKIT_OK);
  CHECK(s1.direct_maps - s0.direct_maps == 3);
  CHECK(s1.bounced_maps == s0.bounced_maps);
  CHECK(s1.live_maps == 0);
  CHECK_STATUS(dmakit_pfa_free(&g_pfa, phys, 0), DMAKIT_OK);
}

/* A page above 4 GiB, for the 32-bit device: bounced through the pool under 4 GiB, both ways. */
static void bounced_mappings(void) {
  uint64_t phys = 0;
  uint8_t* buf = high_page(0, &phys);
  CHECK(phys > MASK32);
  dmakit_op_stats s0, s1;
  dmakit_bounce_pool_stats p0, p1;
  CHECK_STATUS(dmakit_op_stats_get(&g_op, &s0), DMAKIT_OK);
  CHECK_STATUS(dmakit_bounce_pool_stats_get(&g_pool, &p0), DMAKIT_OK);

  fill(buf, PAGE, 5);
  dmakit_map_handle h;
  CHECK_STATUS(dmakit_map(&g_dev32, buf, PAGE, DMAKIT_TO_DEVICE, 0, &h), DMAKIT_OK);
  CHECK(dmakit_map_bounced(&h) == 1);
  uint64_t a = dmakit_map_dma_addr(&h);
  CHECK(a >= RAM_BASE && a + PAGE <= RAM_BASE + POOL_BYTES);
  static uint8_t seen[PAGE];
  CHECK_STATUS(dmakit_host_device_read(&g_op, &g_dev32, a, seen, PAGE), DMAKIT_OK);
  CHECK(mismatches(seen, PAGE, 5) == 0);
  CHECK_STATUS(dmakit_unmap(&h), DMAKIT_OK);

  memset(buf, 0, PAGE);
  CHECK_STATUS(dmakit_map(&g_dev32, buf, PAGE, DMAKIT_FROM_DEVICE, 0, &h), DMAKIT_OK);
  CHECK(dmakit_map_bounced(&h) == 1);
  fill(seen, PAGE, 6);
  CHECK_STATUS(dmakit_host_device_write(&g_op, &g_dev32, dmakit_map_dma_addr(&h), seen, PAGE),
               DMAKIT_OK);
  CHECK_STATUS(dmakit_unmap(&h), DMAKIT_OK);
  CHECK(mismatches(buf, PAGE, 6) == 0);

  /* A device the pool lies above cannot have it: a mask error, before anything is mapped. */
  CHECK_STATUS(dmakit_map(&g_dev28, buf, PAGE, DMAKIT_TO_DEVICE, 0, &h), DMAKIT_ERR_DMA_MASK);

  CHECK_STATUS(dmakit_op_stats_get(&g_op, &s1), DMAKIT_OK);
  CHECK_STATUS(dmakit_bounce_pool_stats_get(&g_pool, &p1), DMAKIT_OK);
  CHECK(s1.bounced_maps - s0.bounced_maps == 2);
  CHECK(s1.bytes_bounced - s0.bytes_bounced >= 2 * PAGE);
  CHECK(s1.map_errors - s0.map_errors == 1);
  CHECK(p1.allocations - p0.allocations == 2);
  CHECK(p1.used_slots == 0);
  CHECK(p1.total_slots == POOL_BYTES / 2048);
}

/* A buffer outside the direct map, translated by the kernel's callback; above 4 GiB, so the
 * 32-bit (coherent: no cache maintenance of memory outside the model) device gets it bounced. */
static void translated_buffer(void) {
  g_translation.base = g_outside;
  g_translation.bytes = sizeof(g_outside);
  g_translation.phys = g_high + 1000u * PAGE;
  g_translation.calls = 0;
  fill(g_outside, PAGE, 13);
  dmakit_map_handle h;
  CHECK_STATUS(dmakit_map(&g_dev_coh, g_outside, PAGE, DMAKIT_TO_DEVICE, 0, &h), DMAKIT_OK);
  CHECK(g_translation.calls >= 1);
  CHECK(dmakit_map_bounced(&h) == 1);
  static uint8_t seen[PAGE];
  CHECK_STATUS(dmakit_host_device_read(&g_op, &g_dev_coh, dmakit_map_dma_addr(&h), seen, PAGE),
               DMAKIT_OK);
  CHECK(mismatches(seen, PAGE, 13) == 0);
  CHECK_STATUS(dmakit_unmap(&h), DMAKIT_OK);

  CHECK_STATUS(dmakit_map(&g_dev_coh, g_outside + PAGE, PAGE, DMAKIT_FROM_DEVICE, 0, &h),
               DMAKIT_OK);
  fill(seen, PAGE, 14);
  CHECK_STATUS(dmakit_host_device_write(&g_op, &g_dev_coh, dmakit_map_dma_addr(&h), seen, PAGE),
               DMAKIT_OK);
  CHECK_STATUS(dmakit_unmap(&h), DMAKIT_OK);
  CHECK(mismatches(g_outside + PAGE, PAGE, 14) == 0);

  /* An address the callback does not know. */
  CHECK_STATUS(dmakit_map(&g_dev_coh, g_untranslated, PAGE, DMAKIT_TO_DEVICE, 0, &h),
               DMAKIT_ERR_INVALID_ARGUMENT);
}

/* Bad requests: specific codes, and no counter but the failure counts moves. */
static void errors(void) {
  uint64_t phys = 0;
  uint8_t* buf = page_under(MASK32, &phys);
  CHECK(buf != NULL);
  if (buf == NULL) return;
  dmakit_pfa_stats f0, f1;
  dmakit_bounce_pool_stats p0, p1;
  CHECK_STATUS(dmakit_pfa_stats_get(&g_pfa, &f0), DMAKIT_OK);
  CHECK_STATUS(dmakit_bounce_pool_stats_get(&g_pool, &p0), DMAKIT_OK);
  dmakit_map_handle h;
  CHECK_STATUS(dmakit_map(&g_dev32, buf, 0, DMAKIT_TO_DEVICE, 0, &h), DMAKIT_ERR_LAYOUT);
  CHECK_STATUS(dmakit_map(&g_dev32, buf, PAGE, 7, 0, &h), DMAKIT_ERR_INVALID_ARGUMENT);
  CHECK_STATUS(dmakit_map(&g_dev32, buf, PAGE, DMAKIT_TO_DEVICE, 3, &h), DMAKIT_ERR_LAYOUT);
  CHECK_STATUS(dmakit_map(&g_dev28, buf, PAGE, DMAKIT_TO_DEVICE, 0, &h), DMAKIT_ERR_DMA_MASK);
  CHECK_STATUS(dmakit_unmap(&h), DMAKIT_ERR_NOT_FOUND); /* Nothing was mapped into h. */
  CHECK_STATUS(dmakit_device_set_dma_mask(&g_dev32, 0), DMAKIT_ERR_INVALID_ARGUMENT);
  static dmakit_device never_initialised;
  CHECK_STATUS(dmakit_map(&never_initialised, buf, PAGE, DMAKIT_TO_DEVICE, 0, &h),
               DMAKIT_ERR_INVALID_ARGUMENT);
  CHECK_STATUS(dmakit_pfa_free(&g_pfa, phys + PAGE, 0), DMAKIT_ERR_NOT_FOUND);
  CHECK_STATUS(dmakit_pfa_alloc(&g_pfa, 11, ~0ull, &phys), DMAKIT_ERR_LAYOUT);
  CHECK_STATUS(dmakit_pfa_stats_get(&g_pfa, &f1), DMAKIT_OK);
  CHECK_STATUS(dmakit_bounce_pool_stats_get(&g_pool, &p1), DMAKIT_OK);
  CHECK(f1.free_pages == f0.free_pages);
  CHECK(p1.used_slots == p0.used_slots && p1.allocations == p0.allocations);
  CHECK_STATUS(dmakit_pfa_free(&g_pfa, phys, 0), DMAKIT_OK);

  /* Larger than one bounced mapping may be (256 KiB): refused before the pool is asked. */
  const size_t quarter = 256u * 1024u;
  uint64_t big = 0;
  uint8_t* b = high_page(256, &big);
  CHECK(big > MASK32);
  CHECK_STATUS(dmakit_map(&g_dev32, b, quarter + PAGE, DMAKIT_TO_DEVICE, 0, &h), DMAKIT_ERR_LAYOUT);

  /* Exhaustion: 256 KiB bounced mappings until the 1 MiB pool has no room (at most four fit),
   * which is NO_MEMORY, not a panic; the pool then holds nearly all its slots, and everything
   * comes back at unmap. */
  dmakit_map_handle hs[5];
  int mapped = 0;
  int last = DMAKIT_OK;
  while (mapped < 5) {
    last = dmakit_map(&g_dev32, b + (size_t)mapped * quarter, quarter, DMAKIT_TO_DEVICE, 0,
                      &hs[mapped]);
    if (last != DMAKIT_OK) break;
    CHECK(dmakit_map_bounced(&hs[mapped]) == 1);
    ++mapped;
  }
  CHECK(mapped >= 3 && mapped <= 4);
  CHECK_STATUS(last, DMAKIT_ERR_NO_MEMORY);
  CHECK_STATUS(dmakit_unmap(&hs[mapped < 5 ? mapped : 4]), DMAKIT_ERR_NOT_FOUND);
  CHECK_STATUS(dmakit_bounce_pool_stats_get(&g_pool, &p1), DMAKIT_OK);
  CHECK(p1.used_slots == (uint64_t)mapped * 128);
  CHECK(p1.high_water_slots >= (uint64_t)mapped * 128);
  CHECK(p1.failures - p0.failures == 1);
  for (int i = 0; i < mapped; ++i) CHECK_STATUS(dmakit_unmap(&hs[i]), DMAKIT_OK);
  CHECK_STATUS(dmakit_bounce_pool_stats_get(&g_pool, &p1), DMAKIT_OK);
  CHECK(p1.used_slots == 0);
  /* Room again. */
  CHECK_STATUS(dmakit_map(&g_dev32, b, quarter, DMAKIT_TO_DEVICE, 0, &h), DMAKIT_OK);
  CHECK_STATUS(dmakit_unmap(&h), DMAKIT_OK);
}

/* Two pages, one under 4 GiB and one above, mapped in one call: two segments, the second
 * bounced; then one page split by a 1 KiB segment limit. */
/* Items 2 and 4 of issue 15: the queries, and mask negotiation that leaves the masks and the
 * accounting alone when it refuses. */
static void device_queries(void) {
  dmakit_device dev;
  dmakit_device_config dc;
  memset(&dc, 0, sizeof(dc));
  dc.dma_mask = ~0ull;
  dc.coherence = DMAKIT_COHERENCE_COHERENT;
  CHECK_STATUS(dmakit_device_init(&dev, &g_op, &dc), DMAKIT_OK);
  /* RAM's last byte is 0x1'00FF'FFFF: 33 bits. */
  CHECK(dmakit_device_required_mask(&dev) == 0x1FFFFFFFFull);
  CHECK(dmakit_device_addressing_limited(&dev) == 0);
  CHECK(dmakit_device_addressing_limited(&g_dev32) == 1);
  CHECK(dmakit_device_opt_mapping_size(&g_dev32) == dmakit_device_max_mapping_size(&g_dev32));

  dmakit_pfa_stats f0, f1;
  CHECK_STATUS(dmakit_pfa_stats_get(&g_pfa, &f0), DMAKIT_OK);
  CHECK_STATUS(dmakit_device_set_dma_mask(&dev, DMAKIT_DMA_BIT_MASK(28)), DMAKIT_ERR_DMA_MASK);
  CHECK_STATUS(dmakit_device_set_coherent_mask(&dev, DMAKIT_DMA_BIT_MASK(28)), DMAKIT_ERR_DMA_MASK);
  CHECK_STATUS(dmakit_device_set_dma_mask_and_coherent(&dev, DMAKIT_DMA_BIT_MASK(28)),
               DMAKIT_ERR_DMA_MASK);
  CHECK_STATUS(dmakit_device_set_dma_mask_and_coherent(&dev, 0), DMAKIT_ERR_INVALID_ARGUMENT);
  CHECK(dmakit_device_dma_mask(&dev) == ~0ull);
  CHECK(dmakit_device_coherent_mask(&dev) == ~0ull);
  CHECK_STATUS(dmakit_pfa_stats_get(&g_pfa, &f1), DMAKIT_OK);
  CHECK(f1.free_pages == f0.free_pages);
  CHECK_STATUS(dmakit_device_set_dma_mask_and_coherent(&dev, MASK32), DMAKIT_OK);
  CHECK(dmakit_device_dma_mask(&dev) == MASK32);
  CHECK(dmakit_device_coherent_mask(&dev) == MASK32);
  CHECK(dmakit_device_addressing_limited(&dev) == 1);

  /* need_sync: a direct mapping of a snooping device needs none; a bounced one does, and so does
   * every mapping of a device that does not snoop. */
  uint64_t phys;
  uint8_t* low = page_under(MASK32, &phys);
  if (low == NULL) return;
  dmakit_map_handle h;
  CHECK_STATUS(dmakit_map(&dev, low, 64, DMAKIT_TO_DEVICE, 0, &h), DMAKIT_OK);
  CHECK(dmakit_map_bounced(&h) == 0);
  CHECK(dmakit_device_need_sync(&dev, dmakit_map_dma_addr(&h)) == 0);
  CHECK(dmakit_device_need_sync(&g_dev32, dmakit_map_dma_addr(&h)) == 1);
  CHECK_STATUS(dmakit_unmap(&h), DMAKIT_OK);
  uint64_t high_phys;
  uint8_t* high = high_page(1, &high_phys);
  CHECK_STATUS(dmakit_map(&dev, high, 64, DMAKIT_TO_DEVICE, 0, &h), DMAKIT_OK);
  CHECK(dmakit_map_bounced(&h) == 1);
  CHECK(dmakit_device_need_sync(&dev, dmakit_map_dma_addr(&h)) == 1);
  CHECK_STATUS(dmakit_unmap(&h), DMAKIT_OK);
  CHECK_STATUS(dmakit_pfa_free(&g_pfa, phys, 0), DMAKIT_OK);
}

static void scatter_gather(void) {
  uint64_t lo_phys = 0, hi_phys = 0;
  uint8_t* lo = page_under(MASK32, &lo_phys);
  uint8_t* hi = high_page(1, &hi_phys);
  CHECK(lo != NULL && hi_phys > MASK32);
  if (lo == NULL) return;
  fill(lo, PAGE, 8);
  fill(hi, PAGE, 9);
  dmakit_sg_entry entries[2] = {{lo, PAGE}, {hi, PAGE}};
  dmakit_map_handle handles[6];
  dmakit_sg_segment segs[8];
  size_t n = 0;
  dmakit_sg sg;
  CHECK_STATUS(
      dmakit_sg_map(&sg, &g_dev32, entries, 2, DMAKIT_TO_DEVICE, NULL, handles, 6, segs, 8, &n),
      DMAKIT_OK);
  CHECK(n == 2);
  static uint8_t seen[PAGE];
  if (n == 2) {
    CHECK(segs[0].dma_addr == lo_phys && segs[0].size == PAGE);
    CHECK(segs[1].dma_addr < RAM_BASE + POOL_BYTES && segs[1].size == PAGE);
    CHECK_STATUS(dmakit_host_device_read(&g_op, &g_dev32, segs[0].dma_addr, seen, PAGE), DMAKIT_OK);
    CHECK(mismatches(seen, PAGE, 8) == 0);
    CHECK_STATUS(dmakit_host_device_read(&g_op, &g_dev32, segs[1].dma_addr, seen, PAGE), DMAKIT_OK);
    CHECK(mismatches(seen, PAGE, 9) == 0);
  }
  CHECK_STATUS(dmakit_sg_confirm_write(&sg), DMAKIT_OK);
  CHECK_STATUS(dmakit_sg_unmap(&sg), DMAKIT_OK);
  CHECK_STATUS(dmakit_sg_unmap(&sg), DMAKIT_ERR_NOT_FOUND);

  /* The device writes through four 1 KiB segments of one page. */
  dmakit_sg_limits limits = {1024, 0, 0};
  memset(lo, 0, PAGE);
  CHECK_STATUS(dmakit_sg_map(&sg, &g_dev32, entries, 1, DMAKIT_FROM_DEVICE, &limits, handles, 6,
                             segs, 8, &n),
               DMAKIT_OK);
  CHECK(n == 4);
  for (size_t i = 0; i < n && i < 4; ++i) {
    CHECK(segs[i].size == 1024 && segs[i].dma_addr == lo_phys + i * 1024);
  }
  fill(seen, PAGE, 10);
  CHECK_STATUS(dmakit_host_device_write(&g_op, &g_dev32, lo_phys, seen, PAGE), DMAKIT_OK);
  CHECK_STATUS(dmakit_sg_prepare_read(&sg), DMAKIT_OK);
  CHECK(mismatches(lo, PAGE, 10) == 0);
  CHECK_STATUS(dmakit_sg_unmap(&sg), DMAKIT_OK);

  /* Too little room for the segments: nothing stays mapped. */
  dmakit_bounce_pool_stats p;
  CHECK_STATUS(
      dmakit_sg_map(&sg, &g_dev32, entries, 2, DMAKIT_TO_DEVICE, NULL, handles, 6, segs, 1, &n),
      DMAKIT_ERR_OUT_OF_RANGE);
  CHECK_STATUS(dmakit_bounce_pool_stats_get(&g_pool, &p), DMAKIT_OK);
  CHECK(p.used_slots == 0);
  CHECK_STATUS(
      dmakit_sg_map(&sg, &g_dev32, entries, 0, DMAKIT_TO_DEVICE, NULL, handles, 6, segs, 8, &n),
      DMAKIT_ERR_LAYOUT);
  CHECK_STATUS(dmakit_sg_unmap(&sg), DMAKIT_ERR_NOT_FOUND);
  CHECK_STATUS(dmakit_pfa_free(&g_pfa, lo_phys, 0), DMAKIT_OK);
}

/* Coherent memory: zeroed, under the mask, seen the same by both sides without any sync (the
 * non-coherent device's is mapped uncached). */
static void coherent_memory(void) {
  dmakit_op_stats s0, s1;
  CHECK_STATUS(dmakit_op_stats_get(&g_op, &s0), DMAKIT_OK);
  dmakit_device* devs[2] = {&g_dev32, &g_dev_coh};
  for (int d = 0; d < 2; ++d) {
    dmakit_coherent c;
    CHECK_STATUS(dmakit_alloc_coherent(devs[d], 8192, 0, &c), DMAKIT_OK);
    uint8_t* p = dmakit_coherent_cpu_addr(&c);
    uint64_t a = dmakit_coherent_dma_addr(&c);
    CHECK(p != NULL && dmakit_coherent_size(&c) == 8192);
    CHECK(a % PAGE == 0 && a + 8191 <= MASK32);
    if (p == NULL) continue;
    size_t nonzero = 0;
    for (size_t i = 0; i < 8192; ++i) nonzero += p[i] != 0;
    CHECK(nonzero == 0);
    static uint8_t seen[8192];
    fill(p, 8192, 11);
    CHECK_STATUS(dmakit_host_device_read(&g_op, devs[d], a, seen, 8192), DMAKIT_OK);
    CHECK(mismatches(seen, 8192, 11) == 0);
    fill(seen, 100, 12);
    CHECK_STATUS(dmakit_host_device_write(&g_op, devs[d], a + 300, seen, 100), DMAKIT_OK);
    CHECK(mismatches(p + 300, 100, 12) == 0);
    CHECK_STATUS(dmakit_free_coherent(&c), DMAKIT_OK);
    CHECK_STATUS(dmakit_free_coherent(&c), DMAKIT_ERR_NOT_FOUND);
    CHECK(dmakit_coherent_cpu_addr(&c) == NULL);
  }
  dmakit_coherent c;
  CHECK_STATUS(dmakit_alloc_coherent(&g_dev32, 0, 0, &c), DMAKIT_ERR_LAYOUT);
  CHECK_STATUS(dmakit_alloc_coherent(&g_dev32, PAGE, 3, &c), DMAKIT_ERR_LAYOUT);
  CHECK_STATUS(dmakit_alloc_coherent(&g_dev28, PAGE, 0, &c), DMAKIT_ERR_DMA_MASK);
  CHECK_STATUS(dmakit_op_stats_get(&g_op, &s1), DMAKIT_OK);
  CHECK(s1.coherent_allocs - s0.coherent_allocs == 2);
  CHECK(s1.coherent_uncached - s0.coherent_uncached == 1); /* The non-coherent device's. */
  CHECK(s1.coherent_live == 0 && s1.coherent_uncached_live == 0);
}

/* Issue 15 item 1: cacheable memory for a non-coherent device, owned in turn through range
 * syncs; the data checked from the device's side of the cache model. */
static void noncoherent_memory(void) {
  dmakit_op_stats s0, s1;
  dmakit_pfa_stats f0, f1;
  CHECK_STATUS(dmakit_op_stats_get(&g_op, &s0), DMAKIT_OK);
  CHECK_STATUS(dmakit_pfa_stats_get(&g_pfa, &f0), DMAKIT_OK);
  dmakit_coherent c;
  CHECK_STATUS(dmakit_alloc_noncoherent(&g_dev32, 8192, 0, &c), DMAKIT_OK);
  uint8_t* p = dmakit_coherent_cpu_addr(&c);
  uint64_t a = dmakit_coherent_dma_addr(&c);
  CHECK(p != NULL && a % PAGE == 0 && a + 8191 <= MASK32 && dmakit_coherent_size(&c) == 8192);
  if (p == NULL) return;
  static uint8_t seen[8192];
  fill(p, 8192, 21);
  CHECK_STATUS(dmakit_noncoherent_sync_for_device(&c, 0, 8192, DMAKIT_TO_DEVICE), DMAKIT_OK);
  CHECK_STATUS(dmakit_host_device_read(&g_op, &g_dev32, a, seen, 8192), DMAKIT_OK);
  CHECK(mismatches(seen, 8192, 21) == 0);
  fill(seen, 512, 22);
  CHECK_STATUS(dmakit_host_device_write(&g_op, &g_dev32, a + 1024, seen, 512), DMAKIT_OK);
  CHECK_STATUS(dmakit_noncoherent_sync_for_cpu(&c, 1024, 512, DMAKIT_FROM_DEVICE), DMAKIT_OK);
  CHECK(mismatches(p + 1024, 512, 22) == 0);
  CHECK_STATUS(dmakit_noncoherent_sync_for_cpu(&c, 8000, 193, DMAKIT_FROM_DEVICE),
               DMAKIT_ERR_OUT_OF_RANGE);
  CHECK_STATUS(dmakit_noncoherent_sync_for_device(&c, 0, 1, 9), DMAKIT_ERR_INVALID_ARGUMENT);
  CHECK_STATUS(dmakit_op_stats_get(&g_op, &s1), DMAKIT_OK);
  CHECK(s1.coherent_uncached == s0.coherent_uncached); /* Never remapped. */
  CHECK_STATUS(dmakit_free_coherent(&c), DMAKIT_OK);
  CHECK_STATUS(dmakit_noncoherent_sync_for_cpu(&c, 0, 1, DMAKIT_FROM_DEVICE), DMAKIT_ERR_NOT_FOUND);
  CHECK_STATUS(dmakit_alloc_noncoherent(&g_dev28, PAGE, 0, &c), DMAKIT_ERR_DMA_MASK);
  CHECK_STATUS(dmakit_alloc_noncoherent(&g_dev32, 0, 0, &c), DMAKIT_ERR_LAYOUT);
  CHECK_STATUS(dmakit_pfa_stats_get(&g_pfa, &f1), DMAKIT_OK);
  CHECK(f1.free_pages == f0.free_pages);
}

/* Issue 15 item 5: attributes on a mapping and an allocation; refused ones leave nothing. */
static void attributes(void) {
  uint64_t phys;
  uint8_t* buf = page_under(MASK32, &phys);
  if (buf == NULL) return;
  memset(buf, 0x66, 128); /* Dirty in the CPU's cache. */
  dmakit_map_handle h;
  CHECK_STATUS(
      dmakit_map_attrs(&g_dev32, buf, 128, DMAKIT_TO_DEVICE, 0, DMAKIT_ATTR_WRITE_COMBINE, &h),
      DMAKIT_ERR_INVALID_ARGUMENT);
  CHECK_STATUS(
      dmakit_map_attrs(&g_dev32, buf, 128, DMAKIT_TO_DEVICE, 0, DMAKIT_ATTR_SKIP_CPU_SYNC, &h),
      DMAKIT_OK);
  uint8_t seen[128];
  CHECK_STATUS(dmakit_host_device_read(&g_op, &g_dev32, dmakit_map_dma_addr(&h), seen, 128),
               DMAKIT_OK);
  CHECK(seen[0] != 0x66); /* Not cleaned at map. */
  CHECK_STATUS(dmakit_confirm_write(&h, 0, 128), DMAKIT_OK);
  CHECK_STATUS(dmakit_host_device_read(&g_op, &g_dev32, dmakit_map_dma_addr(&h), seen, 128),
               DMAKIT_OK);
  CHECK(seen[0] == 0x66 && seen[127] == 0x66);
  CHECK_STATUS(dmakit_unmap(&h), DMAKIT_OK);
  CHECK_STATUS(dmakit_pfa_free(&g_pfa, phys, 0), DMAKIT_OK);

  dmakit_pfa_stats f0, f1;
  CHECK_STATUS(dmakit_pfa_stats_get(&g_pfa, &f0), DMAKIT_OK);
  dmakit_coherent c;
  CHECK_STATUS(dmakit_alloc_attrs(&g_dev32, PAGE, 0,
                                  DMAKIT_ATTR_WRITE_COMBINE | DMAKIT_ATTR_NO_KERNEL_MAPPING, &c),
               DMAKIT_ERR_INVALID_ARGUMENT);
  CHECK_STATUS(dmakit_alloc_attrs(&g_dev32, PAGE, 0, DMAKIT_ATTR_SKIP_CPU_SYNC, &c),
               DMAKIT_ERR_INVALID_ARGUMENT);
  CHECK_STATUS(dmakit_alloc_attrs(&g_dev28, PAGE, 0, DMAKIT_ATTR_WRITE_COMBINE, &c),
               DMAKIT_ERR_DMA_MASK);
  CHECK_STATUS(dmakit_pfa_stats_get(&g_pfa, &f1), DMAKIT_OK);
  CHECK(f1.free_pages == f0.free_pages);
  CHECK_STATUS(dmakit_alloc_attrs(&g_dev_coh, PAGE, 0, DMAKIT_ATTR_WRITE_COMBINE, &c), DMAKIT_OK);
  uint8_t* p = dmakit_coherent_cpu_addr(&c);
  if (p != NULL) {
    p[5] = 0x99; /* Write-combining: not cached, so the device sees it without a clean. */
    CHECK_STATUS(
        dmakit_host_device_read(&g_op, &g_dev32, dmakit_coherent_dma_addr(&c) + 5, seen, 1),
        DMAKIT_OK);
    CHECK(seen[0] == 0x99);
  }
  CHECK_STATUS(dmakit_free_coherent(&c), DMAKIT_OK);
  CHECK_STATUS(dmakit_pfa_stats_get(&g_pfa, &f1), DMAKIT_OK);
  CHECK(f1.free_pages == f0.free_pages);
}

/* Issue 15 item 6: a page by physical address, and another device's MMIO range. */
static void map_page_and_resource(void) {
  dmakit_pfa_stats f0, f1;
  dmakit_bounce_pool_stats p0, p1;
  CHECK_STATUS(dmakit_pfa_stats_get(&g_pfa, &f0), DMAKIT_OK);
  CHECK_STATUS(dmakit_bounce_pool_stats_get(&g_pool, &p0), DMAKIT_OK);
  uint64_t page;
  uint8_t* cpu = high_page(2, &page); /* Above 4 GiB: the 32-bit device bounces it. */
  memset(cpu, 0x4D, PAGE);
  dmakit_map_handle h;
  CHECK_STATUS(dmakit_map_page(&g_dev32, page, PAGE, 1, DMAKIT_TO_DEVICE, &h),
               DMAKIT_ERR_OUT_OF_RANGE);
  CHECK_STATUS(dmakit_map_page(&g_dev32, page, 100, PAGE, DMAKIT_TO_DEVICE, &h),
               DMAKIT_ERR_OUT_OF_RANGE);
  CHECK_STATUS(dmakit_map_page(&g_dev32, page + 1, 0, 1, DMAKIT_TO_DEVICE, &h),
               DMAKIT_ERR_INVALID_ARGUMENT);
  CHECK_STATUS(dmakit_bounce_pool_stats_get(&g_pool, &p1), DMAKIT_OK);
  CHECK(p1.used_slots == p0.used_slots);
  CHECK_STATUS(dmakit_map_page(&g_dev32, page, 64, 128, DMAKIT_TO_DEVICE, &h), DMAKIT_OK);
  CHECK(dmakit_map_bounced(&h) == 1);
  uint8_t seen[128];
  CHECK_STATUS(dmakit_host_device_read(&g_op, &g_dev32, dmakit_map_dma_addr(&h), seen, 128),
               DMAKIT_OK);
  CHECK(seen[0] == 0x4D && seen[127] == 0x4D);
  CHECK_STATUS(dmakit_unmap(&h), DMAKIT_OK);

  uint64_t d = 0;
  CHECK_STATUS(dmakit_map_resource(&g_dev32, 0x10000000ull, 0x1000, DMAKIT_TO_DEVICE, &d),
               DMAKIT_OK);
  CHECK(d == 0x10000000ull);
  CHECK_STATUS(dmakit_unmap_resource(&g_dev32, d, 0x1000, DMAKIT_TO_DEVICE), DMAKIT_OK);
  CHECK_STATUS(dmakit_map_resource(&g_dev32, RAM_BASE + PAGE, 64, DMAKIT_TO_DEVICE, &d),
               DMAKIT_ERR_INVALID_ARGUMENT);
  CHECK_STATUS(dmakit_map_resource(&g_dev32, 0x200000000ull, 64, DMAKIT_TO_DEVICE, &d),
               DMAKIT_ERR_DMA_MASK);
  CHECK_STATUS(dmakit_map_resource(&g_dev32, 0x10000000ull, 0, DMAKIT_TO_DEVICE, &d),
               DMAKIT_ERR_LAYOUT);
  CHECK_STATUS(dmakit_pfa_stats_get(&g_pfa, &f1), DMAKIT_OK);
  CHECK_STATUS(dmakit_bounce_pool_stats_get(&g_pool, &p1), DMAKIT_OK);
  CHECK(f1.free_pages == f0.free_pages && p1.used_slots == p0.used_slots);
}

/* Issue 15 item 3: a device seeing the low half of RAM through a window at device address 0. */
static void dma_windows(void) {
  static const dmakit_dma_window w[1] = {{RAM_BASE, 0, 16ull << 20}};
  static const dmakit_dma_window bad[1] = {{RAM_BASE, 0, 0}};
  dmakit_device dev;
  dmakit_device_config dc;
  memset(&dc, 0, sizeof(dc));
  dc.dma_mask = MASK32;
  dc.coherence = DMAKIT_COHERENCE_COHERENT;
  CHECK_STATUS(dmakit_device_init(&dev, &g_op, &dc), DMAKIT_OK);
  CHECK_STATUS(dmakit_device_set_dma_windows(&dev, bad, 1), DMAKIT_ERR_INVALID_ARGUMENT);
  CHECK_STATUS(dmakit_device_set_dma_windows(&dev, w, 9), DMAKIT_ERR_INVALID_ARGUMENT);
  CHECK_STATUS(dmakit_device_set_dma_windows(&dev, w, 1), DMAKIT_OK);
  uint64_t phys;
  uint8_t* low = page_under(RAM_BASE + (16ull << 20) - 1, &phys);
  if (low == NULL) return;
  dmakit_map_handle h;
  CHECK_STATUS(dmakit_map(&dev, low, 64, DMAKIT_TO_DEVICE, 0, &h), DMAKIT_OK);
  CHECK(dmakit_map_bounced(&h) == 0);
  CHECK(dmakit_map_dma_addr(&h) == phys - RAM_BASE);
  CHECK_STATUS(dmakit_unmap(&h), DMAKIT_OK);
  uint64_t high_phys;
  uint8_t* high = high_page(3, &high_phys); /* Outside the window: bounced into the pool. */
  CHECK_STATUS(dmakit_map(&dev, high, 64, DMAKIT_TO_DEVICE, 0, &h), DMAKIT_OK);
  CHECK(dmakit_map_bounced(&h) == 1);
  CHECK(dmakit_map_dma_addr(&h) < POOL_BYTES);
  CHECK_STATUS(dmakit_unmap(&h), DMAKIT_OK);
  CHECK_STATUS(dmakit_pfa_free(&g_pfa, phys, 0), DMAKIT_OK);
}

static void strings(void) {
  CHECK(strcmp(dmakit_strerror(DMAKIT_OK), "ok") == 0);
  CHECK(strcmp(dmakit_strerror(DMAKIT_ERR_DMA_MASK), "dma mask not match") == 0);
  CHECK(strcmp(dmakit_strerror(DMAKIT_ERR_NOT_CONTIGUOUS), "not physically contiguous") == 0);
  CHECK(strcmp(dmakit_strerror(12), "unknown error") == 0);
  CHECK(strcmp(dmakit_strerror(-1), "unknown error") == 0);
}

/* A second op over the same allocator whose bounce pool grows: a 64 KiB pool under 4 GiB, one
 * spare pool object, growth by 64 KiB up to 64 KiB. A full pool grows, the statistics say so,
 * the data goes through, and the growth goes back to the allocator. */
static dmakit_bounce_pool g_small_pool;
static dmakit_bounce_pool g_spare_pool;
static dmakit_platform_op g_grow_op;
static void growth(void) {
  const size_t kPoolBytes = 64u * 1024u;
  uint64_t pool_phys = 0;
  CHECK_STATUS(dmakit_pfa_alloc(&g_pfa, 4, MASK32, &pool_phys), DMAKIT_OK);
  size_t meta_bytes = dmakit_bounce_pool_metadata_size(kPoolBytes, 0);
  void* meta = malloc(meta_bytes);
  CHECK_STATUS(dmakit_bounce_pool_init(&g_small_pool, pool_phys, kPoolBytes, ram_at(pool_phys),
                                       meta, meta_bytes, NULL),
               DMAKIT_OK);
  dmakit_platform_config cfg;
  memset(&cfg, 0, sizeof(cfg));
  cfg.pfa = &g_pfa;
  cfg.pools[0] = &g_small_pool;
  cfg.num_pools = 1;
  cfg.direct_map_offset = (uintptr_t)g_ram - (uintptr_t)RAM_BASE;
  const dmakit_phys_range ram[1] = {{RAM_BASE, RAM_BYTES}};
  cfg.ram = ram;
  cfg.num_ram = 1;
  cfg.grow_pools[0] = &g_spare_pool;
  cfg.max_grown_pools = 1;
  cfg.grow_limit = kPoolBytes;
  cfg.grow_step = 3 * PAGE; /* Not a power of two of pages: refused, nothing built. */
  CHECK_STATUS(dmakit_platform_op_init(&g_grow_op, &cfg), DMAKIT_ERR_INVALID_ARGUMENT);
  cfg.grow_pools[0] = &g_small_pool; /* An initialised pool is no spare. */
  cfg.grow_step = kPoolBytes;
  CHECK_STATUS(dmakit_platform_op_init(&g_grow_op, &cfg), DMAKIT_ERR_INVALID_ARGUMENT);
  cfg.grow_pools[0] = &g_spare_pool;
  CHECK_STATUS(dmakit_platform_op_init(&g_grow_op, &cfg), DMAKIT_OK);

  dmakit_device dev;
  dmakit_device_config dc;
  memset(&dc, 0, sizeof(dc));
  dc.dma_mask = MASK32;
  dc.coherence = DMAKIT_COHERENCE_COHERENT;
  dc.force_bounce = 1;
  dc.name = "capi-grow";
  CHECK_STATUS(dmakit_device_init(&dev, &g_grow_op, &dc), DMAKIT_OK);
  dmakit_pfa_stats f0, f1;
  CHECK_STATUS(dmakit_pfa_stats_get(&g_pfa, &f0), DMAKIT_OK);
  uint64_t phys = 0;
  uint8_t* a_buf = high_page(512, &phys);
  uint8_t* b_buf = high_page(600, &phys);
  fill(b_buf, 4 * PAGE, 9);
  dmakit_map_handle a, b;
  CHECK_STATUS(dmakit_map(&dev, a_buf, kPoolBytes, DMAKIT_TO_DEVICE, 0, &a), DMAKIT_OK);
  CHECK(dmakit_map_dma_addr(&a) >= pool_phys && dmakit_map_dma_addr(&a) < pool_phys + kPoolBytes);
  CHECK_STATUS(dmakit_map(&dev, b_buf, 4 * PAGE, DMAKIT_TO_DEVICE, 0, &b), DMAKIT_OK);
  uint64_t gb = dmakit_map_dma_addr(&b);
  CHECK(gb + 4 * PAGE - 1 <= MASK32);
  CHECK(gb < pool_phys || gb >= pool_phys + kPoolBytes);
  CHECK(mismatches(ram_at(gb), 4 * PAGE, 9) == 0);
  dmakit_op_stats s;
  CHECK_STATUS(dmakit_op_stats_get(&g_grow_op, &s), DMAKIT_OK);
  CHECK(s.grow_events == 1 && s.grown_bytes == kPoolBytes &&
        s.grown_bytes_high_water == kPoolBytes);
  CHECK(s.pool_fallbacks == 1);
  dmakit_bounce_pool_stats ps;
  CHECK_STATUS(dmakit_bounce_pool_stats_get(&g_spare_pool, &ps), DMAKIT_OK);
  CHECK(ps.used_slots == 4 * PAGE / 2048 && ps.total_slots == kPoolBytes / 2048);
  CHECK_STATUS(dmakit_pfa_stats_get(&g_pfa, &f1), DMAKIT_OK);
  CHECK(f0.free_pages - f1.free_pages == kPoolBytes / PAGE + 1); /* The block, its records. */
  /* The limit is spent: the next full-pool map is NO_MEMORY and takes nothing. */
  dmakit_map_handle c;
  CHECK_STATUS(dmakit_map(&dev, a_buf, kPoolBytes, DMAKIT_TO_DEVICE, 0, &c), DMAKIT_ERR_NO_MEMORY);
  CHECK_STATUS(dmakit_pfa_stats_get(&g_pfa, &f1), DMAKIT_OK);
  CHECK(f0.free_pages - f1.free_pages == kPoolBytes / PAGE + 1);
  /* The grown pool empties while the fixed one is full (kept); the fixed pool's unmap then finds
   * it recovered and gives the growth back. */
  CHECK_STATUS(dmakit_unmap(&b), DMAKIT_OK);
  CHECK_STATUS(dmakit_op_stats_get(&g_grow_op, &s), DMAKIT_OK);
  CHECK(s.shrink_events == 0 && s.grown_bytes == kPoolBytes);
  CHECK_STATUS(dmakit_unmap(&a), DMAKIT_OK);
  CHECK_STATUS(dmakit_op_stats_get(&g_grow_op, &s), DMAKIT_OK);
  CHECK(s.shrink_events == 1 && s.grown_bytes == 0);
  size_t freed = 1;
  CHECK_STATUS(dmakit_trim_bounce_pools(&g_grow_op, &freed), DMAKIT_OK);
  CHECK(freed == 0);
  CHECK_STATUS(dmakit_pfa_stats_get(&g_pfa, &f1), DMAKIT_OK);
  CHECK(f1.free_pages == f0.free_pages);
  CHECK_STATUS(dmakit_trim_bounce_pools(NULL, &freed), DMAKIT_ERR_INVALID_ARGUMENT);
  CHECK_STATUS(dmakit_platform_op_destroy(&g_grow_op), DMAKIT_OK);
  CHECK_STATUS(dmakit_bounce_pool_stats_get(&g_spare_pool, &ps), DMAKIT_ERR_INVALID_ARGUMENT);
  CHECK_STATUS(dmakit_bounce_pool_destroy(&g_small_pool), DMAKIT_OK);
  CHECK_STATUS(dmakit_pfa_free(&g_pfa, pool_phys, 4), DMAKIT_OK);
  free(meta);
}

static void tear_down(void) {
  CHECK(dmakit_device_check_no_mappings(&g_dev32) == 0);
  CHECK(dmakit_device_check_no_mappings(&g_dev_coh) == 0);
  CHECK_STATUS(dmakit_pfa_free(&g_pfa, g_high, 10), DMAKIT_OK);
  dmakit_pfa_stats ps;
  CHECK_STATUS(dmakit_pfa_stats_get(&g_pfa, &ps), DMAKIT_OK);
  CHECK(ps.free_pages == ps.managed_pages);
  dmakit_op_stats s;
  CHECK_STATUS(dmakit_op_stats_get(&g_op, &s), DMAKIT_OK);
  CHECK(s.live_maps == 0 && s.coherent_live == 0);
  CHECK_STATUS(dmakit_platform_op_destroy(&g_op), DMAKIT_OK);
  CHECK_STATUS(dmakit_platform_op_destroy(&g_op), DMAKIT_ERR_INVALID_ARGUMENT);
  CHECK(dmakit_cache_alignment(&g_op) == 0);
  CHECK_STATUS(dmakit_bounce_pool_destroy(&g_pool), DMAKIT_OK);
  CHECK_STATUS(dmakit_pfa_destroy(&g_pfa), DMAKIT_OK);
  CHECK_STATUS(dmakit_pfa_destroy(&g_pfa), DMAKIT_ERR_INVALID_ARGUMENT);
  free(g_pool_meta);
  free(g_pfa_meta);
  free(g_ram);
}

int main(void) {
  set_up();
  direct_mappings();
  bounced_mappings();
  translated_buffer();
  errors();
  device_queries();
  scatter_gather();
  coherent_memory();
  noncoherent_memory();
  attributes();
  map_page_and_resource();
  dma_windows();
  growth();
  strings();
  tear_down();
  printf("capi: %d passed, %d failed\n", g_passed, g_failed);
  return g_failed == 0 ? 0 : 1;
}
