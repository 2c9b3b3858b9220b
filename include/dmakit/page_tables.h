/* How a kernel lets dmakit edit the memory attribute of its direct map: the description of its
 * page tables that the architecture's DmaOp (AArch64DmaOp, Riscv64DmaOp, X86DmaOp) takes at
 * construction. One header for C and C++.
 *
 * Why the library needs it: a non-coherent device gets coherent memory by making the direct-map
 * pages of an allocation uncacheable in place (KernelDmaOp::set_memory_attribute). The library
 * knows the page-table *format* of each architecture, but not where a kernel keeps its tables,
 * how it reaches their memory, which attribute encodings its entries use, or where a table for
 * splitting a large leaf may come from. It never guesses: a DmaOp built without this description
 * (a null pointer) answers kNotSupported to set_memory_attribute, and so alloc_coherent fails
 * with kNotSupported for a non-coherent device, while everything else works as before.
 *
 * What the library does with it: walks from `root` to the leaves that map [va, va + size) of the
 * direct map; splits a 1 GiB / 2 MiB leaf that the range covers only in part into a table of
 * identical smaller leaves (a page from alloc_table); changes the attribute field of the leaves
 * in the range; and puts the large leaf back (free_table) once every page under it has its
 * original attribute again. It writes only entries below `root` that map addresses inside
 * [va_base, va_base + va_size), and never a root entry that is a pointer to a table. After each
 * entry change it invalidates the TLB through dmakit_kernel_hooks.tlb_flush_kernel_range (local
 * invalidation when that hook is null; see dmakit/kernel_hooks.h).
 *
 * The test kernel's ports fill it from their own MMU code (arch/<arch>/testkernel/mmu.cc,
 * paging.cc, sv39_page_table.cc): the worked examples. */
#ifndef DMAKIT_PAGE_TABLES_H
#define DMAKIT_PAGE_TABLES_H

#include <stddef.h> /* freestanding: provided by the compiler */
#include <stdint.h> /* freestanding: provided by the compiler */

#ifdef __cplusplus
extern "C" {
#endif

/* AArch64 (4 KiB granule): the MAIR_EL1 attribute indices (0..7) the direct map's leaves use. */
typedef struct dmakit_page_tables_aarch64 {
  uint8_t mair_wb; /* Normal memory, inner and outer write-back (the direct map's RAM). */
  uint8_t mair_nc; /* Normal memory, inner and outer non-cacheable (MAIR value 0x44). */
} dmakit_page_tables_aarch64;

/* x86-64: the PAT indices (0..7, i.e. PAT:PCD:PWT) of the memory types. The library places the
 * PAT bit where each level's entry has it (bit 7 in a 4 KiB entry, bit 12 in a large one). */
typedef struct dmakit_page_tables_x86_64 {
  uint8_t pat_wb; /* Write-back (index 0 with the power-on PAT). */
  uint8_t pat_uc; /* UC- or UC (index 2 or 3 with the power-on PAT). Not WC: coherent memory
                     holds rings both sides update, and write-combined stores would wait in
                     buffers until a fence the drivers do not issue. */
  /* WC, for write-combining allocations (alloc_attrs with kDmaAttrWriteCombine, alloc_wc). The
   * power-on PAT has no WC entry: a kernel that does not program one into IA32_PAT sets
   * DMAKIT_X86_PAT_NONE, and write-combining allocations fail with kNotSupported. An index
   * above 7, or equal to pat_wb or pat_uc (as a zero-initialized field usually is), names no WC
   * entry either. */
  uint8_t pat_wc;
} dmakit_page_tables_x86_64;

/* dmakit_page_tables_x86_64.pat_wc of a PAT without a write-combining entry. */
#define DMAKIT_X86_PAT_NONE 0xFF

typedef struct dmakit_page_tables {
  /* Physical address of the root table of the translation that holds the direct map (TTBR1_EL1,
   * satp.PPN << 12, CR3 & ~0xFFF), 4 KiB aligned. A kernel with several roots (one per address
   * space) must share the tables below the root for the direct map, and give the one whose root
   * entries it never changes; on RISC-V a 1 GiB leaf in the root is split in this root only. */
  uint64_t root;
  /* Translation levels, the root's included: 4 (x86-64 4-level paging, AArch64 48-bit VA,
   * RISC-V Sv48) or 3 (RISC-V Sv39, AArch64 39-bit VA). Anything else: described as missing. */
  unsigned levels;
  /* The CPU address at which the library reads and writes a table whose physical address is p:
   * p + table_offset (0 when tables are identity-mapped; the direct-map offset when they are
   * reached through the direct map). Must hold for every table below root, boot tables and
   * alloc_table's pages alike. On AArch64 these addresses (and the code and stack of the caller)
   * must not lie in [va_base, va_base + va_size): a split briefly unmaps the region it splits. */
  uintptr_t table_offset;
  /* The direct map the library may edit: [va_base, va_base + va_size). set_memory_attribute
   * refuses any other range (kInvalidArgument). */
  uintptr_t va_base;
  uint64_t va_size;
  /* Where tables for splits come from (both required). alloc_table stores the physical address
   * of a zeroed or unzeroed 4 KiB page, 4 KiB aligned and reachable at phys + table_offset, in
   * *phys and returns non-zero, or returns 0 when it has none (set_memory_attribute then fails
   * with kNoMemory and the map stays as it was). free_table takes back such a page once the
   * library has merged the split and no entry points at it any more. Called under the library's
   * page-table lock, from the thread that called alloc_coherent / dealloc_coherent: they must
   * not sleep and must not call into dmakit. At most 64 split tables are live at once. */
  int (*alloc_table)(void* ctx, uint64_t* phys);
  void (*free_table)(void* ctx, uint64_t phys);
  void* table_ctx;
  /* The architecture's attribute encodings; only the running architecture's member is read.
   * RISC-V has none here: PBMT 0 (PMA) is cacheable and Svpbmt's NC uncached, and whether the
   * kernel enabled Svpbmt (menvcfg.PBMTE) is Riscv64DmaOp::CacheOps::svpbmt. */
  dmakit_page_tables_aarch64 aarch64;
  dmakit_page_tables_x86_64 x86_64;
} dmakit_page_tables;

#ifdef __cplusplus
} /* extern "C" */
#endif

#endif /* DMAKIT_PAGE_TABLES_H */
