/* dmakit's C API: the whole subsystem for kernels written in C (C11, freestanding), and for C
 * drivers in a C++ kernel.
 *
 * What it covers, in the order a kernel uses it:
 *   1. set-up: the page-frame allocator over the kernel's RAM ranges (dmakit_pfa_*), bounce pools
 *      (dmakit_bounce_pool_*), the kernel hook table (dmakit/kernel_hooks.h, included below), and
 *      the platform's DMA operations, built for the architecture the library was compiled for
 *      (dmakit_platform_op_init);
 *   2. devices: a DMA mask, whether the device snoops the CPU caches, its bus offset, its limits
 *      (dmakit_device_*);
 *   3. streaming mappings of one buffer (dmakit_map / dmakit_unmap) and their syncs
 *      (dmakit_prepare_read / dmakit_confirm_write), scatter-gather (dmakit_sg_*), coherent
 *      memory (dmakit_alloc_coherent / dmakit_free_coherent), cache maintenance;
 *   4. error codes (dmakit_status, dmakit_strerror) and statistics.
 * The C++ API (dmakit/device_dma.h and friends) is the same library; each function below names the
 * C++ call it makes, whose header holds the full contract.
 *
 * Objects are opaque, fixed-size structs that the caller allocates (static storage, the stack,
 * its own allocator: the library never allocates) and hands to an init function, which builds
 * the library's object inside. Their sizes and alignments are part of the ABI: they are larger
 * than today's objects (the C++ side checks each with a static_assert) so that the objects may
 * grow without changing them, and a change would be a new ABI. Objects must not be copied or
 * moved (memcpy included) once initialised: the library keeps pointers to them. Storage from an
 * allocator must have the struct's alignment (_Alignof; 64 bytes for dmakit_bounce_pool). Static
 * storage needs no run-time constructor: zeroed memory is a valid uninitialised object.
 *
 * Errors: every function that can fail returns an int, a dmakit_status: DMAKIT_OK (0) or an error
 * code; results come back through out-parameters, which are written only on success. Bad input
 * leaves every allocator's accounting unchanged; running out of memory or bounce slots is an
 * error, never a panic. Breaking a precondition that cannot be checked (a pointer to memory that
 * is not what it claims to be) is undefined.
 *
 * Context: unless a function says otherwise it does not sleep, may be called with interrupts off,
 * and may be called from several CPUs at once on different objects; the calls of one device may
 * run concurrently (the library locks what it shares). Interrupt handlers: see
 * dmakit/kernel_hooks.h (irq_save/irq_restore).
 *
 * Bring-up, for an identity-mapped RISC-V kernel with 512 MiB of RAM at 0x80000000 (each call
 * returns a dmakit_status to check; the metadata buffers are sized by the *_metadata_size calls,
 * done once by hand or at run time):
 *
 *   static dmakit_pfa pfa;
 *   static dmakit_bounce_pool pool;
 *   static dmakit_platform_op op;
 *   static dmakit_device disk;
 *   const dmakit_phys_range ram[] = {{0x80000000, 512u << 20}};
 *   const dmakit_phys_range reserved[] = {{kernel_base, kernel_size}, {pool_base, 1u << 20}};
 *   dmakit_pfa_init(&pfa, ram, 1, reserved, 2, 0, pfa_meta, sizeof(pfa_meta));
 *   dmakit_bounce_pool_init(&pool, pool_base, 1u << 20, (void*)pool_base, pool_meta,
 *                           sizeof(pool_meta), NULL);
 *   dmakit_platform_config cfg = {0};
 *   cfg.pfa = &pfa;
 *   cfg.pools[0] = &pool;
 *   cfg.num_pools = 1;
 *   cfg.ram = ram;
 *   cfg.num_ram = 1;
 *   cfg.cache_flags = DMAKIT_CACHE_RISCV_ZICBOM | DMAKIT_CACHE_RISCV_SVPBMT;
 *   dmakit_platform_op_init(&op, &cfg);
 *   dmakit_device_config dc = {0};
 *   dc.dma_mask = DMAKIT_DMA_BIT_MASK(32);
 *   dmakit_device_init(&disk, &op, &dc);
 * and for each transfer:
 *   dmakit_map_handle h;
 *   if (dmakit_map(&disk, buf, len, DMAKIT_FROM_DEVICE, 0, &h) == DMAKIT_OK) {
 *     ... give the device dmakit_map_dma_addr(&h), wait for it ...
 *     dmakit_unmap(&h);  (buf now holds what the device wrote)
 *   }
 * drivers/edu/edu_c.c is a complete driver, tests/qemu/edu_c_test.cc a complete set-up. */
#ifndef DMAKIT_DMAKIT_H
#define DMAKIT_DMAKIT_H

#include <stddef.h> /* freestanding: provided by the compiler */
#include <stdint.h> /* freestanding: provided by the compiler */

#include "dmakit/kernel_hooks.h"
#include "dmakit/page_tables.h"

#ifdef __cplusplus
#define DMAKIT_ALIGNAS(n) alignas(n)
extern "C" {
#else
#define DMAKIT_ALIGNAS(n) _Alignas(n)
#endif

/* ---- Errors ---------------------------------------------------------------------------------- */

/* The status codes (the C++ ErrorCode, dmakit/support/result.h, with the same values). */
typedef enum dmakit_status {
  DMAKIT_OK = 0,
  /* No memory (pages, bounce slots) can be had right now; retrying after frees may succeed. */
  DMAKIT_ERR_NO_MEMORY = 1,
  /* Size 0, an alignment that is not a power of two, too large, or a range that wraps. */
  DMAKIT_ERR_LAYOUT = 2,
  /* The device's DMA mask cannot reach the buffer and no bounce pool lies under the mask. */
  DMAKIT_ERR_DMA_MASK = 3,
  /* An argument outside what the function accepts (a null pointer, a mask of 0, an object that
   * was not initialised or is initialised already). */
  DMAKIT_ERR_INVALID_ARGUMENT = 4,
  /* The handle or address names no live mapping or allocation (double unmap or free). */
  DMAKIT_ERR_NOT_FOUND = 5,
  /* An offset/size pair outside the object it refers to, or caller storage too small. */
  DMAKIT_ERR_OUT_OF_RANGE = 6,
  DMAKIT_ERR_BUSY = 7,
  DMAKIT_ERR_TIMED_OUT = 8,
  DMAKIT_ERR_IO = 9,
  /* The platform cannot do this (a non-coherent device without cache instructions). */
  DMAKIT_ERR_NOT_SUPPORTED = 10,
  /* A buffer that must be physically contiguous is not: map it piece by piece (dmakit_sg_map). */
  DMAKIT_ERR_NOT_CONTIGUOUS = 11
} dmakit_status;

/* A constant, human-readable name of a status ("ok", "no memory", ...); "unknown error" for a
 * value that is not a dmakit_status. Never null. Any context. */
const char* dmakit_strerror(int status);

/* ---- Common types ---------------------------------------------------------------------------- */

/* Physical memory [base, base + size). */
typedef struct dmakit_phys_range {
  uint64_t base;
  uint64_t size;
} dmakit_phys_range;

/* Which way data moves during a streaming mapping. */
typedef enum dmakit_direction {
  DMAKIT_TO_DEVICE = 0,     /* The CPU wrote, the device reads. */
  DMAKIT_FROM_DEVICE = 1,   /* The device writes, the CPU reads. */
  DMAKIT_BIDIRECTIONAL = 2, /* Both. */
} dmakit_direction;

/* Whether a device snoops the CPU caches. */
typedef enum dmakit_coherence {
  DMAKIT_COHERENCE_PLATFORM = 0, /* The platform's default (zeroed configs get it). */
  DMAKIT_COHERENCE_COHERENT = 1,
  DMAKIT_COHERENCE_NONCOHERENT = 2,
} dmakit_coherence;

/* A DMA mask of the n low bits (1 <= n <= 64). */
#define DMAKIT_DMA_BIT_MASK(n) ((n) >= 64 ? ~(uint64_t)0 : (((uint64_t)1 << (n)) - 1))

/* ---- Page-frame allocator -------------------------------------------------------------------- */

#define DMAKIT_MAX_RAM_RANGES 16 /* Ranges one allocator (and one platform op) takes. */
#define DMAKIT_MAX_RESERVED 64   /* Reserved pieces one dmakit_pfa_init call takes. */

typedef struct dmakit_pfa {
  DMAKIT_ALIGNAS(16) unsigned char opaque[12288];
} dmakit_pfa;

/* Bytes of metadata dmakit_pfa_init needs for these RAM ranges (about half a byte per page); 0 for
 * more than DMAKIT_MAX_RAM_RANGES ranges or a null `ranges` with n > 0. Any context.
 * (PageFrameAllocator::metadata_size.) */
size_t dmakit_pfa_metadata_size(const dmakit_phys_range* ranges, size_t n);

/* Builds the allocator in `pfa` over the pages of `ram` minus `reserved` (both unsorted; ram
 * trimmed inward to pages, reserved outward). The allocator never reads or writes the pages it
 * manages; `direct_map_offset` (CPU virtual = physical + offset; 0 for an identity map) serves
 * dmakit_pfa_phys_to_virt. `metadata` (any alignment, at least dmakit_pfa_metadata_size bytes)
 * stays the caller's, must outlive the allocator and must not lie in managed memory (reserve it).
 * Call once, at boot, without concurrent callers. On error `pfa` stays uninitialised.
 * Errors: INVALID_ARGUMENT (null pfa or ranges, already initialised, more than
 * DMAKIT_MAX_RAM_RANGES ranges or DMAKIT_MAX_RESERVED reserved pieces, overlapping ranges, a range
 * that wraps), NO_MEMORY (metadata too small). (PageFrameAllocator::init.) */
int dmakit_pfa_init(dmakit_pfa* pfa, const dmakit_phys_range* ram, size_t num_ram,
                    const dmakit_phys_range* reserved, size_t num_reserved,
                    uintptr_t direct_map_offset, void* metadata, size_t metadata_bytes);

/* Allocates 2^order contiguous pages (order <= 10) whose last byte lies at or below `limit`
 * (~0 for none) and stores its physical address in *phys: the highest suitable free block of the
 * smallest order that has one (so small requests use fragments first, wherever they lie). The
 * caller owns the block until dmakit_pfa_free. O(1) in how full memory is. Errors: INVALID_ARGUMENT
 * (uninitialised, null phys), LAYOUT (order > 10), DMA_MASK (no block could ever lie under the
 * limit), NO_MEMORY (none free now). (PageFrameAllocator::alloc.) */
int dmakit_pfa_alloc(dmakit_pfa* pfa, unsigned order, uint64_t limit, uint64_t* phys);

/* Gives back a block from dmakit_pfa_alloc, with its order. Errors: INVALID_ARGUMENT
 * (uninitialised), NOT_FOUND (not an allocated block of that order: nothing changes).
 * (PageFrameAllocator::free.) */
int dmakit_pfa_free(dmakit_pfa* pfa, uint64_t phys, unsigned order);

/* CPU address of a managed physical address (physical + the allocator's direct_map_offset);
 * null for an uninitialised allocator. */
void* dmakit_pfa_phys_to_virt(const dmakit_pfa* pfa, uint64_t phys);

typedef struct dmakit_pfa_stats {
  uint64_t managed_pages; /* Pages handed to the allocator (ranges minus reserved). */
  uint64_t free_pages;
  uint64_t metadata_bytes;
  uint64_t num_ranges;
  uint64_t lowest_address;  /* Lowest managed physical address. */
  uint64_t highest_address; /* One past the highest. */
} dmakit_pfa_stats;

/* A snapshot of the counters; O(pages / 64), for reports and tests, not hot paths.
 * Errors: INVALID_ARGUMENT (uninitialised, null out). */
int dmakit_pfa_stats_get(const dmakit_pfa* pfa, dmakit_pfa_stats* out);

/* Ends the allocator (debug builds check that every page came back). Precondition: no platform op
 * uses it any more. `pfa` is uninitialised afterwards. Errors: INVALID_ARGUMENT (uninitialised). */
int dmakit_pfa_destroy(dmakit_pfa* pfa);

/* ---- Bounce pools ---------------------------------------------------------------------------- */

typedef struct dmakit_bounce_pool {
  DMAKIT_ALIGNAS(64) unsigned char opaque[12288];
} dmakit_bounce_pool;

typedef struct dmakit_bounce_pool_options {
  size_t slot_size;   /* Bytes per slot, a power of two in [64, 2^30]; 0: 2048. */
  size_t max_mapping; /* Largest single mapping; 0: 256 KiB or the whole pool if smaller. */
  const char* name;   /* For the pool's report lines, may be null; must outlive the pool. */
} dmakit_bounce_pool_options;

/* Bytes of metadata a pool of `bytes` bytes with this slot size (0: 2048) needs; 0 for a slot
 * size that is not valid. (BouncePool::metadata_size.) */
size_t dmakit_bounce_pool_metadata_size(size_t bytes, size_t slot_size);

/* Builds a bounce pool in `pool` over the physical region [phys_base, phys_base + bytes), which
 * the CPU reaches at `cpu_base` and which the caller has taken out of the page-frame allocator
 * (reserve it). phys_base and bytes are multiples of the slot size. `metadata` (4-byte aligned,
 * at least dmakit_bounce_pool_metadata_size bytes) stays the caller's and must outlive the pool;
 * the region itself holds only data. `options` may be null (defaults). Call once, at boot. On
 * error `pool` stays uninitialised.
 * Errors: INVALID_ARGUMENT (null pool, cpu_base or metadata, already initialised, bad slot size,
 * misaligned region or metadata, bad max_mapping), LAYOUT (bytes 0), NO_MEMORY (metadata too
 * small). (BouncePool::init.) */
int dmakit_bounce_pool_init(dmakit_bounce_pool* pool, uint64_t phys_base, size_t bytes,
                            void* cpu_base, void* metadata, size_t metadata_bytes,
                            const dmakit_bounce_pool_options* options);

/* Turns on per-CPU slot caches (a bounced map+unmap then takes no lock); see
 * BouncePool::enable_cpu_caches for the contract it puts on callers (no preemption or migration
 * during a DMA call). Call once, after init, before concurrent use. Errors: INVALID_ARGUMENT
 * (uninitialised, null current_cpu, num_cpus 0 or above 64, called twice). */
int dmakit_bounce_pool_enable_cpu_caches(dmakit_bounce_pool* pool, unsigned (*current_cpu)(void),
                                         unsigned num_cpus);

typedef struct dmakit_bounce_pool_stats {
  uint64_t total_slots;
  uint64_t used_slots;       /* Slots of live allocations. */
  uint64_t high_water_slots; /* Most slots in use at once. */
  uint64_t allocations;      /* Successful allocations so far. */
  uint64_t failures;         /* NO_MEMORY returns so far. */
  uint64_t quota_failures;   /* Those refused by a device's quota. */
  uint64_t invalid_frees;    /* Refused frees (double or foreign). */
  uint64_t bytes_bounced;    /* Bytes copied in or out (statistics builds only; else 0). */
  uint64_t cached_slots;     /* Freed slots parked in caches. */
} dmakit_bounce_pool_stats;

/* A snapshot of the pool's counters. Errors: INVALID_ARGUMENT (uninitialised, null out). */
int dmakit_bounce_pool_stats_get(const dmakit_bounce_pool* pool, dmakit_bounce_pool_stats* out);

/* Ends the pool (debug builds check that every slot came back). Precondition: no platform op uses
 * it any more. Errors: INVALID_ARGUMENT (uninitialised). */
int dmakit_bounce_pool_destroy(dmakit_bounce_pool* pool);

/* ---- The platform's DMA operations ----------------------------------------------------------- */

#define DMAKIT_MAX_POOLS 4
#define DMAKIT_MAX_GROWN_POOLS 4 /* Spare pool objects one op may grow into. */

/* dmakit_platform_config.cache_flags: what the kernel tells the library about the CPU's cache
 * instructions (the library executes none it was not told about). Flags of another architecture
 * are ignored, so that one configuration can serve several. */
/* Any architecture: the CPU has no cache-maintenance instructions at all; non-coherent devices
 * then get NOT_SUPPORTED instead of mappings nobody maintains. */
#define DMAKIT_CACHE_NO_MAINTENANCE (1u << 0)
/* RISC-V: Zicbom works on every hart (cbo.clean/cbo.flush; the kernel or firmware enabled them,
 * menvcfg.CBCFE), cbo.inval works too (menvcfg.CBIE; without it invalidate uses cbo.flush), and
 * every hart has Svpbmt (uncached coherent memory). Without ZICBOM and SVPBMT the platform is
 * treated as coherent. */
#define DMAKIT_CACHE_RISCV_ZICBOM (1u << 8)
#define DMAKIT_CACHE_RISCV_CBO_INVAL (1u << 9)
#define DMAKIT_CACHE_RISCV_SVPBMT (1u << 10)
/* x86-64: CLWB and CLFLUSHOPT may be used (CPUID); CLFLUSH is always used otherwise. */
#define DMAKIT_CACHE_X86_CLWB (1u << 16)
#define DMAKIT_CACHE_X86_CLFLUSHOPT (1u << 17)

typedef struct dmakit_platform_config {
  /* Backs coherent allocations. Required, initialised, must outlive the op. */
  dmakit_pfa* pfa;
  /* Bounce pools (initialised, must outlive the op), any order: a mapping bounces into the
   * highest-placed pool its device reaches wholly. */
  dmakit_bounce_pool* pools[DMAKIT_MAX_POOLS];
  size_t num_pools;
  /* CPU virtual = physical + direct_map_offset for all RAM (0: identity map; any value). */
  uintptr_t direct_map_offset;
  /* All RAM the direct map covers (copied: the array need not outlive the call); buffers there
   * translate through the direct map. num_ram 0: only the allocator's ranges and the pools. */
  const dmakit_phys_range* ram;
  size_t num_ram;
  /* Translation of buffers outside the direct map (a kernel image linked elsewhere): stores the
   * physical address of `va` in *phys and returns non-zero, or returns 0 for an address with no
   * translation. Called once per page mapped, from the DMA caller's context: must not sleep.
   * Null: such buffers are INVALID_ARGUMENT. */
  int (*translate)(void* ctx, const void* va, uint64_t* phys);
  void* translate_ctx;
  /* Whether devices snoop the caches unless their device config says otherwise
   * (DMAKIT_COHERENCE_PLATFORM: the architecture's default: coherent on x86-64, not coherent on
   * AArch64 and RISC-V). */
  int coherence;
  /* The largest cache line the maintenance acts on, a power of two; 0: AArch64 reads CTR_EL0,
   * others take 64. RISC-V: the Zicbom block size (riscv,cbom-block-size), at least 16. */
  size_t cache_line_size;
  uint32_t cache_flags; /* DMAKIT_CACHE_* */
  /* The tables of the kernel's direct map (dmakit/page_tables.h; copied), so that coherent memory
   * for a non-coherent device can be remapped uncached. Null: such allocations are
   * NOT_SUPPORTED. Ignored by the host backend. */
  const dmakit_page_tables* page_tables;
  /* Bounce pools that grow on demand (KernelDmaOp::Config, dmakit/kernel_dma_op.h): when every
   * pool a device reaches is full, the op takes grow_step bytes (a power-of-two number of pages,
   * at most 4 MiB and at most grow_limit) from the allocator under the device's mask and bounces
   * into a pool set up there, up to grow_limit bytes and max_grown_pools pools at once; an empty
   * grown pool goes back to the allocator by a hysteresis or dmakit_trim_bounce_pools. The
   * grow_pools are spare, never initialised pool objects (zeroed static storage will do) that
   * the op uses from dmakit_platform_op_init until dmakit_platform_op_destroy; do not init or
   * destroy them (dmakit_bounce_pool_stats_get works on them). All 0 (a zeroed config): no
   * growth. */
  dmakit_bounce_pool* grow_pools[DMAKIT_MAX_GROWN_POOLS];
  size_t max_grown_pools;
  uint64_t grow_limit;
  uint64_t grow_step;
} dmakit_platform_config;

typedef struct dmakit_platform_op {
  DMAKIT_ALIGNAS(16) unsigned char opaque[4096];
} dmakit_platform_op;

/* Builds the platform's DMA operations in `op`: the DmaOp of the architecture the library was
 * built for (AArch64DmaOp, Riscv64DmaOp, X86DmaOp; the cache-model HostDmaOp in host builds),
 * over the allocator and pools of `cfg`. Call once, at boot, after the allocator and pools. On
 * error `op` stays uninitialised (and the grow_pools untouched).
 * Errors: INVALID_ARGUMENT (null op or cfg, op already initialised, pfa or a pool null or not
 * initialised, more than DMAKIT_MAX_POOLS pools or DMAKIT_MAX_RAM_RANGES RAM ranges, ram null
 * with num_ram > 0, coherence not a dmakit_coherence, cache_line_size not a power of two; growth
 * limits that do not fit together: grow_step not a power-of-two number of pages, above 4 MiB or
 * above grow_limit, more than DMAKIT_MAX_GROWN_POOLS grow_pools, one of them null, initialised
 * or given twice, some but not all of max_grown_pools / grow_limit / grow_step 0). */
int dmakit_platform_op_init(dmakit_platform_op* op, const dmakit_platform_config* cfg);

/* Cache maintenance over the CPU range [va, va + size), any alignment, size may be 0: flush
 * writes dirty lines back, invalidate discards cached copies (partial edge lines are written back
 * first, so neighbours survive), flush_invalidate does both; each completes before returning.
 * Streaming mappings do this themselves: these are for drivers that manage other memory.
 * Errors: INVALID_ARGUMENT (uninitialised op). (DmaOp::flush / invalidate / flush_invalidate.) */
int dmakit_flush(dmakit_platform_op* op, const void* va, size_t size);
int dmakit_invalidate(dmakit_platform_op* op, const void* va, size_t size);
int dmakit_flush_invalidate(dmakit_platform_op* op, const void* va, size_t size);

/* The alignment at which a buffer shares no cache line with other data (Linux's
 * dma_get_cache_alignment); 0 for an uninitialised op. */
size_t dmakit_cache_alignment(const dmakit_platform_op* op);

typedef struct dmakit_op_stats {
  uint64_t maps;
  uint64_t direct_maps;
  uint64_t bounced_maps;
  uint64_t bytes_mapped;
  uint64_t bytes_bounced;
  uint64_t map_errors;
  uint64_t coherent_allocs;
  uint64_t coherent_live;
  uint64_t live_maps;
  uint64_t coherent_uncached;      /* Coherent allocations remapped uncached, ever. */
  uint64_t coherent_uncached_live; /* ... and still live. */
  uint64_t pool_fallbacks;         /* Bounced maps served by another pool than the chosen one. */
  uint64_t grow_events;            /* Bounce pools grown so far (see grow_pools). */
  uint64_t shrink_events;          /* Grown pools given back so far. */
  uint64_t grown_bytes;            /* Bounce memory grown now (slot records not counted). */
  uint64_t grown_bytes_high_water; /* The most ever grown at once. */
} dmakit_op_stats;

/* Gives every grown bounce pool that holds no mapping back to the page-frame allocator now (a
 * kernel's memory-pressure path); stores the bytes given back in *freed when freed is not null.
 * Errors: INVALID_ARGUMENT (uninitialised op). (KernelDmaOp::trim_bounce_pools.) */
int dmakit_trim_bounce_pools(dmakit_platform_op* op, size_t* freed);

/* The op's counters. They are kept only by libraries built with statistics (DMA_STATS, on in
 * debug builds): elsewhere this returns NOT_SUPPORTED. Errors: INVALID_ARGUMENT (uninitialised,
 * null out), NOT_SUPPORTED. */
int dmakit_op_stats_get(const dmakit_platform_op* op, dmakit_op_stats* out);

/* Ends the op (debug builds report every mapping and coherent allocation still live).
 * Precondition: no device of it is used any more. Errors: INVALID_ARGUMENT (uninitialised). */
int dmakit_platform_op_destroy(dmakit_platform_op* op);

/* ---- Devices --------------------------------------------------------------------------------- */

typedef struct dmakit_device_config {
  uint64_t dma_mask;       /* Highest DMA address the device generates; required (not 0). */
  uint64_t bus_offset;     /* DMA address = physical + bus_offset (mod 2^64). */
  uint64_t min_align_mask; /* Low address bits a bounce buffer keeps (2^k - 1), 0 for none. */
  uint64_t bounce_quota;   /* Most bytes of a bounce pool the device holds at once; 0: none. */
  int coherence;           /* dmakit_coherence. */
  int force_bounce;        /* Non-zero: bounce every mapping. */
  const char* name;        /* For diagnostics, may be null; must outlive the device. */
} dmakit_device_config;

typedef struct dmakit_device {
  DMAKIT_ALIGNAS(16) unsigned char opaque[128];
} dmakit_device;

/* Describes one device of `op` (a DeviceDma): a fresh identity for the misuse checker and the
 * bounce pools' per-device accounting. Owns nothing; `op` must outlive it.
 * Errors: INVALID_ARGUMENT (null dev or cfg, op uninitialised, dma_mask 0, coherence not a
 * dmakit_coherence). */
int dmakit_device_init(dmakit_device* dev, dmakit_platform_op* op, const dmakit_device_config* cfg);

/* Mask negotiation at probe time (Linux's dma_set_mask, dma_set_coherent_mask,
 * dma_set_mask_and_coherent): the streaming mask (dmakit_map) and the coherent mask
 * (dmakit_alloc_coherent, dmakit_alloc_noncoherent) are taken only when the platform can serve
 * them: the device reaches all RAM or a bounce pool lies under the streaming mask; some managed
 * memory lies under the coherent one. A driver tries a wide mask and falls back to a narrower
 * one. Errors: INVALID_ARGUMENT (uninitialised; mask 0), DMA_MASK (nothing serves it); on error
 * both masks stay as they were (and_coherent checks both first). (DeviceDma::set_dma_mask ...) */
int dmakit_device_set_dma_mask(dmakit_device* dev, uint64_t dma_mask);
int dmakit_device_set_coherent_mask(dmakit_device* dev, uint64_t dma_mask);
int dmakit_device_set_dma_mask_and_coherent(dmakit_device* dev, uint64_t dma_mask);
/* One DMA window (a dma-ranges entry): CPU physical [cpu_base, cpu_base + size) appears to the
 * device at [dma_base, dma_base + size). (DmaWindow.) */
typedef struct dmakit_dma_window {
  uint64_t cpu_base;
  uint64_t dma_base;
  uint64_t size;
} dmakit_dma_window;

/* Gives the device `n` DMA windows (at most 8; 0: back to the single bus_offset). `windows` stays
 * the caller's and must outlive the device. Errors: INVALID_ARGUMENT (uninitialised; n above 8;
 * null windows with n > 0; an empty or wrapping window); nothing changes then.
 * (DeviceDma::set_dma_windows.) */
int dmakit_device_set_dma_windows(dmakit_device* dev, const dmakit_dma_window* windows, size_t n);

/* Changes to a live device (a driver that learns better, or a test); mappings made before keep
 * what they were made with. Call while no other CPU maps for the device. Errors: INVALID_ARGUMENT
 * (uninitialised; a coherence that is not a dmakit_coherence). */
int dmakit_device_set_coherence(dmakit_device* dev, int coherence);
int dmakit_device_set_force_bounce(dmakit_device* dev, int force);

/* The device's mask; whether it is treated as coherent (1) or not (0); the largest mapping
 * dmakit_map accepts (SIZE_MAX for a device that never bounces, else its bounce pool's limit:
 * Linux's dma_max_mapping_size); the alignment that keeps receive buffers off shared cache lines.
 * 0 for an uninitialised device. Any context. */
uint64_t dmakit_device_dma_mask(const dmakit_device* dev);
int dmakit_device_coherent(const dmakit_device* dev);
size_t dmakit_device_max_mapping_size(const dmakit_device* dev);
size_t dmakit_device_cache_alignment(const dmakit_device* dev);
/* The coherent mask; the smallest 2^n - 1 mask reaching all RAM (Linux's
 * dma_get_required_mask); whether the streaming mask is below it (1, Linux's
 * dma_addressing_limited); the size to split large transfers at (Linux's dma_opt_mapping_size,
 * at most dmakit_device_max_mapping_size). 0 for an uninitialised device. Any context. */
uint64_t dmakit_device_coherent_mask(const dmakit_device* dev);
uint64_t dmakit_device_required_mask(const dmakit_device* dev);
int dmakit_device_addressing_limited(const dmakit_device* dev);
size_t dmakit_device_opt_mapping_size(const dmakit_device* dev);
/* Whether a streaming mapping of the device at dma_addr needs dmakit_prepare_read /
 * dmakit_confirm_write (1) or not (0): 1 for a non-coherent device or a bounced mapping (Linux's
 * dma_need_sync). 1 for an uninitialised device (always safe). Any context. */
int dmakit_device_need_sync(const dmakit_device* dev, uint64_t dma_addr);

/* Teardown check: with the misuse checker (debug builds), reports every mapping and coherent
 * allocation of the device still live and returns how many; 0 otherwise. */
size_t dmakit_device_check_no_mappings(const dmakit_device* dev);

/* ---- Streaming mappings ---------------------------------------------------------------------- */

typedef struct dmakit_map_handle {
  DMAKIT_ALIGNAS(16) unsigned char opaque[96];
} dmakit_map_handle;

/* Maps the buffer [addr, addr + size) for one transfer in `dir` and describes the mapping in *out
 * (written on success only). The device gets the buffer's own address when it reaches it, the
 * address is aligned to `align` (a power of two; 0 or 1 for none) and, for a non-coherent device
 * writing it, the buffer owns its cache lines; otherwise a bounce slot under the mask, into which
 * the buffer is copied now. Caches are cleaned for a non-coherent device. From now until
 * dmakit_unmap the device owns the buffer: the CPU touches it only between dmakit_prepare_read
 * and dmakit_confirm_write. The buffer must be physically contiguous and stay allocated.
 * Errors: INVALID_ARGUMENT (null or uninitialised dev, null out, addr not translatable, dir not a
 * dmakit_direction), LAYOUT (size 0, null addr, bad align, a range that wraps, larger than
 * dmakit_device_max_mapping_size when it must bounce), DMA_MASK (unreachable and no pool under
 * the mask), NO_MEMORY (bounce pool full now), NOT_CONTIGUOUS, NOT_SUPPORTED (non-coherent device
 * on a platform without cache maintenance). (DeviceDma::map.) */
int dmakit_map(dmakit_device* dev, void* addr, size_t size, int dir, size_t align,
               dmakit_map_handle* out);

/* Attributes of dmakit_map_attrs and dmakit_alloc_attrs (kDmaAttr*, dmakit/dma_types.h). */
#define DMAKIT_ATTR_SKIP_CPU_SYNC 0x1u     /* Map: no cache maintenance / copy out at map, unmap. */
#define DMAKIT_ATTR_WRITE_COMBINE 0x2u     /* Alloc: CPU maps it write-combining. */
#define DMAKIT_ATTR_NO_KERNEL_MAPPING 0x4u /* Alloc: CPU never touches it (no uncached remap). */
#define DMAKIT_ATTR_WEAK_ORDERING 0x8u     /* Either: accepted, no effect. */

/* dmakit_map with attributes (SKIP_CPU_SYNC: the driver syncs by range itself with
 * dmakit_prepare_read / dmakit_confirm_write; WEAK_ORDERING). Errors: dmakit_map's, and
 * INVALID_ARGUMENT for an attribute that is not a mapping's. (DeviceDma::map_attrs.) */
int dmakit_map_attrs(dmakit_device* dev, void* addr, size_t size, int dir, size_t align,
                     uint32_t attrs, dmakit_map_handle* out);

/* Maps bytes [offset, offset + size) of the RAM page at physical `page` (page aligned), for a
 * caller without a virtual address for it (Linux's dma_map_page); otherwise as dmakit_map.
 * Errors: INVALID_ARGUMENT (page not aligned or not RAM; dev, dir, out as dmakit_map),
 * OUT_OF_RANGE (past the page), LAYOUT (size 0), and dmakit_map's. (DeviceDma::map_page.) */
int dmakit_map_page(dmakit_device* dev, uint64_t page, size_t offset, size_t size, int dir,
                    dmakit_map_handle* out);

/* The device address, in *dma_addr, at which `dev` reaches another device's MMIO range [phys,
 * phys + size) for peer-to-peer DMA (Linux's dma_map_resource): bus offset applied, never
 * bounced. dmakit_unmap_resource ends it. Errors: INVALID_ARGUMENT (null or uninitialised dev,
 * null dma_addr, bad dir, a range overlapping RAM), LAYOUT (size 0, wraps), DMA_MASK (beyond the
 * mask). Any context. (DeviceDma::map_resource.) */
int dmakit_map_resource(dmakit_device* dev, uint64_t phys, size_t size, int dir,
                        uint64_t* dma_addr);
int dmakit_unmap_resource(dmakit_device* dev, uint64_t dma_addr, size_t size, int dir);

/* The address to give the device, the mapping's size, and whether it is bounced (1) or not (0).
 * 0 for a handle that is not a live mapping. Any context. */
uint64_t dmakit_map_dma_addr(const dmakit_map_handle* h);
size_t dmakit_map_size(const dmakit_map_handle* h);
int dmakit_map_bounced(const dmakit_map_handle* h);

/* Ends the mapping: for FROM_DEVICE / BIDIRECTIONAL the CPU's view is made current (invalidate,
 * or copy out of the bounce slot); the slot is freed. The CPU owns the buffer again and `h` is no
 * longer a live mapping. Errors: NOT_FOUND (not a live mapping: never mapped, or unmapped
 * already; nothing happens). (StreamingMapping::unmap.) */
int dmakit_unmap(dmakit_map_handle* h);

/* Before the CPU reads bytes [offset, offset + size) the device wrote into a live mapping
 * (Linux's dma_sync_single_for_cpu). Errors: NOT_FOUND (not a live mapping), OUT_OF_RANGE.
 * (StreamingMapping::sync_for_cpu.) */
int dmakit_prepare_read(dmakit_map_handle* h, size_t offset, size_t size);
/* After the CPU wrote bytes [offset, offset + size) of a live mapping, before the device reads
 * them (Linux's dma_sync_single_for_device). Errors: as dmakit_prepare_read.
 * (StreamingMapping::sync_for_device.) */
int dmakit_confirm_write(dmakit_map_handle* h, size_t offset, size_t size);

/* ---- Scatter-gather -------------------------------------------------------------------------- */

typedef struct dmakit_sg_entry { /* One CPU buffer. */
  void* addr;
  size_t size;
} dmakit_sg_entry;

typedef struct dmakit_sg_segment { /* One device segment: what goes into a descriptor. */
  uint64_t dma_addr;
  size_t size;
} dmakit_sg_segment;

typedef struct dmakit_sg_limits { /* What the device's descriptors can express. */
  size_t max_segment_size;        /* 0: no limit. */
  uint64_t segment_boundary_mask; /* 2^k - 1: no segment crosses a multiple of 2^k; 0: none. */
  size_t align;                   /* DMA address alignment of each buffer; 0: none. */
} dmakit_sg_limits;

#define DMAKIT_MAX_SG_ENTRIES 32 /* Buffers one dmakit_sg_map call takes. */

typedef struct dmakit_sg {
  DMAKIT_ALIGNAS(16) unsigned char opaque[128];
} dmakit_sg;

/* Maps `num_entries` buffers for `dir` in one call and writes the device segments to
 * `segments[0 .. *num_segments)`: touching mappings merged, split at the limits (`limits` may be
 * null: none). Large receive buffers of a non-coherent device that share their edge cache lines
 * are split so that only the edge lines bounce. `handles` is storage for the mapping's
 * bookkeeping (its contents are the library's): num_handles at least num_entries, 3 *
 * num_entries to let every buffer be split. `handles` and `segments` stay the caller's and must
 * outlive the mapping. On error nothing is mapped.
 * Errors: INVALID_ARGUMENT (null pointers, uninitialised dev, bad dir), LAYOUT (no entries, an
 * entry of size 0, a boundary mask not 2^k - 1), OUT_OF_RANGE (more than DMAKIT_MAX_SG_ENTRIES
 * entries, handles or segments too small),
 * and every dmakit_map error. (SgMapping::map.) */
int dmakit_sg_map(dmakit_sg* sg, dmakit_device* dev, const dmakit_sg_entry* entries,
                  size_t num_entries, int dir, const dmakit_sg_limits* limits,
                  dmakit_map_handle* handles, size_t num_handles, dmakit_sg_segment* segments,
                  size_t max_segments, size_t* num_segments);

/* Syncs every buffer of a live scatter-gather mapping for the CPU (after the device wrote) or
 * for the device (after the CPU wrote). Errors: NOT_FOUND (not live), as dmakit_prepare_read. */
int dmakit_sg_prepare_read(dmakit_sg* sg);
int dmakit_sg_confirm_write(dmakit_sg* sg);

/* Unmaps every buffer (copying out of bounce slots where the direction says so). Errors:
 * NOT_FOUND (not a live mapping). */
int dmakit_sg_unmap(dmakit_sg* sg);

/* ---- Coherent memory ------------------------------------------------------------------------- */

typedef struct dmakit_coherent {
  DMAKIT_ALIGNAS(16) unsigned char opaque[96];
} dmakit_coherent;

/* Allocates `size` bytes of zeroed, physically contiguous memory the device reaches under its
 * coherent mask (dmakit_device_set_coherent_mask), aligned to
 * max(align, 4096), that neither side needs cache maintenance for (uncached for a non-coherent
 * device), and describes it in *out. The caller owns it until dmakit_free_coherent. Not from
 * interrupt context (it may edit page tables).
 * Errors: INVALID_ARGUMENT (null or uninitialised dev, null out), LAYOUT (size 0, align not a
 * power of two, too large), DMA_MASK (no managed memory under the mask), NO_MEMORY,
 * NOT_SUPPORTED (a non-coherent device where memory cannot be mapped uncached).
 * (DmaOp::alloc_coherent.) */
int dmakit_alloc_coherent(dmakit_device* dev, size_t size, size_t align, dmakit_coherent* out);

/* dmakit_alloc_coherent with attributes: WRITE_COMBINE (Normal-NC on AArch64, Svpbmt NC on
 * RISC-V; NOT_SUPPORTED on x86-64 and where the page tables give no such encoding),
 * NO_KERNEL_MAPPING (a non-coherent device's memory is not remapped; the CPU must not touch it),
 * WEAK_ORDERING. Freed by dmakit_free_coherent. Errors: dmakit_alloc_coherent's, INVALID_ARGUMENT
 * (an attribute that is not an allocation's; WRITE_COMBINE with NO_KERNEL_MAPPING),
 * NOT_SUPPORTED. Not from interrupt context when the pages are remapped.
 * (DeviceDma::alloc_attrs, alloc_wc.) */
int dmakit_alloc_attrs(dmakit_device* dev, size_t size, size_t align, uint32_t attrs,
                       dmakit_coherent* out);

/* Allocates `size` bytes of zeroed, physically contiguous memory the device reaches under its
 * coherent mask, aligned to max(align, 4096), that the CPU keeps cached even for a non-coherent
 * device (Linux's dma_alloc_noncoherent); the zeroes are in memory and the CPU owns it. Ownership
 * moves by range: dmakit_noncoherent_sync_for_device before the device accesses bytes [offset,
 * offset + size) (cleans them), dmakit_noncoherent_sync_for_cpu before the CPU reads what the
 * device wrote (invalidates them for FROM_DEVICE / BIDIRECTIONAL); both are free for a coherent
 * device. The accessors below and dmakit_free_coherent apply. Any context (nothing remapped).
 * Errors: as dmakit_alloc_coherent's, without the remap's NO_MEMORY; NOT_SUPPORTED for a
 * non-coherent device on a platform without cache maintenance. Syncs' errors: NOT_FOUND (not a
 * live allocation), INVALID_ARGUMENT (dir not a dmakit_direction), OUT_OF_RANGE (range not
 * inside the allocation). (DmaOp::alloc_noncoherent, ContiguousArray.) */
int dmakit_alloc_noncoherent(dmakit_device* dev, size_t size, size_t align, dmakit_coherent* out);
int dmakit_noncoherent_sync_for_device(dmakit_coherent* c, size_t offset, size_t size, int dir);
int dmakit_noncoherent_sync_for_cpu(dmakit_coherent* c, size_t offset, size_t size, int dir);

/* The CPU address, the device address and the size of a live allocation; null / 0 otherwise. */
void* dmakit_coherent_cpu_addr(const dmakit_coherent* c);
uint64_t dmakit_coherent_dma_addr(const dmakit_coherent* c);
size_t dmakit_coherent_size(const dmakit_coherent* c);

/* Frees a coherent allocation (or a dmakit_alloc_noncoherent one: any context); `c` is no longer
 * live. Not from interrupt context.
 * Errors: NOT_FOUND (not a live allocation; nothing happens). (DmaOp::dealloc_coherent.) */
int dmakit_free_coherent(dmakit_coherent* c);

#ifdef __cplusplus
} /* extern "C" */

class DeviceDma;

/* For C drivers in a C++ kernel: makes `dev` a dmakit_device with the same constraints and
 * platform op as `cpp` (a copy: the same device for the misuse checker). `cpp`'s op must outlive
 * `dev`. Errors: INVALID_ARGUMENT (null dev, or `cpp` has no op). */
int dmakit_device_from_cpp(dmakit_device* dev, const DeviceDma& cpp);
#endif

#endif /* DMAKIT_DMAKIT_H */
