// Page tables for the x86-64 kernel: see paging.h for the layout.
//
// Tables come from a static pool inside the kernel image (so they are covered by the image's
// reservation and never handed to the page-frame allocator). map_range() walks from the PML4 and
// installs, at each step, the largest leaf (1 GiB, 2 MiB, 4 KiB) that is aligned on both the
// virtual and physical side and lies wholly inside the requested range; its cost is O(number of
// leaves + tables created). translate() is a plain 4-level walk, O(1).
#include "arch/x86_64/testkernel/paging.h"

#include "arch/x86_64/testkernel/cpu.h"
#include "arch/x86_64/testkernel/cpu_features.h"
#include "arch/x86_64/testkernel/pvh.h"
#include "arch/x86_64/testkernel/serial.h"
#include "arch/x86_64/testkernel/traps.h"
#include "dmakit/support/spinlock.h"
#include "testkernel/arch.h"
#include "testkernel/split_table_pool.h"

extern "C" char __kernel_start[], __kernel_end[], __text_start[], __text_end[], __rodata_start[],
    __rodata_end[], __data_start[];
extern "C" char boot_stack_guard[];

namespace x86 {
namespace {

using Pte = uint64_t;
constexpr Pte kPresent = 1ull << 0;
constexpr Pte kWrite = 1ull << 1;
constexpr Pte kPwt = 1ull << 3;
constexpr Pte kPcd = 1ull << 4;
constexpr Pte kAccessed = 1ull << 5;
constexpr Pte kDirty = 1ull << 6;
constexpr Pte kLarge = 1ull << 7;      // PS in a PDPT or PD entry.
constexpr Pte kPatSmall = 1ull << 7;   // PAT in a 4 KiB PTE.
constexpr Pte kPatLarge = 1ull << 12;  // PAT in a 1 GiB / 2 MiB leaf.
constexpr Pte kNoExec = 1ull << 63;
constexpr Pte kAddrMask = 0x000F'FFFF'FFFF'F000;

constexpr uint64_t kPage = 4096;
constexpr uint64_t k2M = 2ull << 20;
constexpr uint64_t k1G = 1ull << 30;
constexpr uint64_t kLowMemEnd = 1ull << 20;
constexpr size_t kPoolPages = 160;

// PAT entry encodings (SDM vol. 3, "PAT memory types").
constexpr uint8_t kPatUc = 0x00, kPatWc = 0x01, kPatWt = 0x04, kPatWp = 0x05, kPatWb = 0x06,
                  kPatUcMinus = 0x07;
// Index i of the PAT holds kPatLayout[i]; see paging.h.
constexpr uint8_t kPatLayout[8] = {kPatWb, kPatWt, kPatUcMinus, kPatUc,
                                   kPatWc, kPatWp, kPatUcMinus, kPatUc};

struct alignas(kPage) Table {
  Pte e[512];
};
Table g_pool[kPoolPages];
size_t g_pool_used = 0;
Table* g_root = nullptr;
Pte g_nx = 0;  // kNoExec when EFER.NXE is on (boot.S sets it when CPUID says NX exists).
bool g_large_1g = false;
support::SpinLock g_lock;
// Lent to dmakit for splits of the direct map (direct_map_tables).
SplitTablePool g_split_tables;
dmakit_page_tables g_direct_map_tables = {};

struct Perms {
  bool write;
  bool exec;
};

enum class Conflict { kPanic, kError };

Table* alloc_table() {
  if (g_pool_used == kPoolPages) {
    return nullptr;
  }
  Table* t = &g_pool[g_pool_used++];
  for (Pte& e : t->e) e = 0;
  return t;
}

// Page tables all live in the pool, inside the kernel image: reach them through the image
// mapping, which exists both in the boot and in the final tables.
Table* table_at(uint64_t phys) {
  return reinterpret_cast<Table*>(phys + kKernelVma);
}
uint64_t table_phys(const Table* t) {
  return kernel_virt_to_phys(t);
}

unsigned pat_index(MemType t) {
  switch (t) {
    case MemType::kWriteBack:
      return 0;
    case MemType::kWriteThrough:
      return 1;
    case MemType::kUncachedMinus:
      return 2;
    case MemType::kUncached:
      return 3;
    case MemType::kWriteCombining:
      return 4;
    case MemType::kWriteProtect:
      return 5;
  }
  return 3;
}

Pte type_bits(MemType t, bool large) {
  const unsigned idx = pat_index(t);
  Pte b = 0;
  if (idx & 1) b |= kPwt;
  if (idx & 2) b |= kPcd;
  if (idx & 4) b |= large ? kPatLarge : kPatSmall;
  return b;
}

unsigned index_of(uintptr_t va, int level) {
  return (va >> (12 + 9 * level)) & 0x1FF;
}
uint64_t level_size(int level) {
  return 1ull << (12 + 9 * level);
}

// Entry for `va` at `level` (0 = PTE ... 3 = PML4E), creating missing tables when `create`. Stops
// early at a large leaf above `level`: *found is the level of the returned entry. Null when a
// table is missing and !create, or the pool is exhausted.
Pte* walk(Table* root, uintptr_t va, int level, bool create, int* found) {
  Table* t = root;
  for (int l = 3; l > level; --l) {
    Pte* e = &t->e[index_of(va, l)];
    if ((*e & kPresent) == 0) {
      if (!create) return nullptr;
      Table* next = alloc_table();
      if (next == nullptr) return nullptr;
      // Intermediate entries allow everything; the leaf decides.
      *e = table_phys(next) | kPresent | kWrite;
    } else if (l <= 2 && (*e & kLarge) != 0) {
      *found = l;
      return e;
    }
    t = table_at(*e & kAddrMask);
  }
  *found = level;
  return &t->e[index_of(va, level)];
}

MemType decode_pat(uint8_t v) {
  switch (v) {
    case kPatWb:
      return MemType::kWriteBack;
    case kPatWt:
      return MemType::kWriteThrough;
    case kPatUcMinus:
      return MemType::kUncachedMinus;
    case kPatWc:
      return MemType::kWriteCombining;
    case kPatWp:
      return MemType::kWriteProtect;
    default:
      return MemType::kUncached;  // kPatUc; 2 and 3 are reserved encodings.
  }
}

// Memory type selected by a leaf entry at `level`, through the PAT MSR as it is programmed now.
MemType leaf_type(Pte e, int level) {
  unsigned idx = 0;
  if (e & kPwt) idx |= 1;
  if (e & kPcd) idx |= 2;
  if (e & (level == 0 ? kPatSmall : kPatLarge)) idx |= 4;
  const uint64_t pat = rdmsr(kMsrPat);
  return decode_pat(static_cast<uint8_t>(pat >> (8 * idx)));
}

uint64_t leaf_phys(Pte e, int level) {
  return e & kAddrMask & ~(level_size(level) - 1);
}

// Maps [va, va + size) to [pa, pa + size), all page aligned. An existing leaf with the same
// physical address and type is kept (skipped); any other existing mapping is a conflict.
Result<void> map_range(uintptr_t va, uint64_t pa, uint64_t size, MemType type, Perms perms)
    TA_REQ(g_lock) {
  while (size > 0) {
    int level = 0;
    const uint64_t both = va | pa;
    if (g_large_1g && (both & (k1G - 1)) == 0 && size >= k1G) {
      level = 2;
    } else if ((both & (k2M - 1)) == 0 && size >= k2M) {
      level = 1;
    }
    for (;;) {
      int found = level;
      Pte* e = walk(g_root, va, level, /*create=*/true, &found);
      if (e == nullptr) {
        return Error(ErrorCode::kNoMemory);
      }
      if ((*e & kPresent) != 0) {
        // A level-0 entry is always a leaf; above, PS tells a large leaf from a table.
        const bool is_leaf = found == 0 || (*e & kLarge) != 0;
        if (!is_leaf) {
          // A table sits where a large leaf would go (found == level > 0): use smaller pages.
          --level;
          continue;
        }
        const uint64_t leaf_size = level_size(found);
        const uint64_t off = va & (leaf_size - 1);
        if (leaf_phys(*e, found) + off != pa || leaf_type(*e, found) != type) {
          return Error(ErrorCode::kInvalidArgument);
        }
        const uint64_t step = leaf_size - off < size ? leaf_size - off : size;
        va += step;
        pa += step;
        size -= step;
        break;
      }
      Pte leaf = pa | kPresent | kAccessed | kDirty | type_bits(type, level > 0);
      if (level > 0) leaf |= kLarge;
      if (perms.write) leaf |= kWrite;
      if (!perms.exec) leaf |= g_nx;
      *e = leaf;
      va += level_size(level);
      pa += level_size(level);
      size -= level_size(level);
      break;
    }
  }
  return {};
}

void boot_map(uintptr_t va, uint64_t pa, uint64_t size, MemType type, Perms perms) TA_REQ(g_lock) {
  if (!map_range(va, pa, size, type, perms).ok()) {
    boot_panic("page-table pool exhausted or overlapping ranges while building the page tables");
  }
}

struct Region {
  uint64_t start;
  uint64_t end;
};

// The physical ranges the direct map covers with write-back: [0, 1 MiB), RAM, ACPI, NVS, and
// firmware-reserved memory below the MMIO window; nothing inside the MMIO window. Sorted, merged,
// widened to pages. Returns the count.
size_t direct_map_regions(const PvhInfo& pvh, Region* out, size_t cap) {
  size_t n = 0;
  auto add = [&](uint64_t s, uint64_t e) {
    s &= ~(kPage - 1);
    e = (e + kPage - 1) & ~(kPage - 1);
    if (s < e && n < cap) out[n++] = Region{s, e};
  };
  add(0, kLowMemEnd);
  for (size_t i = 0; i < pvh.num_memmap; ++i) {
    const MemmapEntry& m = pvh.memmap[i];
    const uint64_t s = m.addr;
    const uint64_t e = m.addr + m.size < m.addr ? ~0ull : m.addr + m.size;
    const bool wanted = m.type == kMemTypeRam || m.type == kMemTypeAcpi || m.type == kMemTypeNvs ||
                        (m.type == kMemTypeReserved && e <= kMmioWindowBase);
    if (!wanted) continue;
    if (s < kMmioWindowBase) add(s, e < kMmioWindowBase ? e : kMmioWindowBase);
    if (e > kMmioWindowEnd) add(s > kMmioWindowEnd ? s : kMmioWindowEnd, e);
  }
  // Insertion sort by start, then merge overlapping or touching regions.
  for (size_t i = 1; i < n; ++i) {
    Region r = out[i];
    size_t j = i;
    while (j > 0 && out[j - 1].start > r.start) {
      out[j] = out[j - 1];
      --j;
    }
    out[j] = r;
  }
  size_t m = 0;
  for (size_t i = 0; i < n; ++i) {
    if (m > 0 && out[i].start <= out[m - 1].end) {
      if (out[i].end > out[m - 1].end) out[m - 1].end = out[i].end;
    } else {
      out[m++] = out[i];
    }
  }
  return m;
}

bool is_guard_page(uintptr_t va) {
  if (va == reinterpret_cast<uintptr_t>(boot_stack_guard)) return true;
  for (int i = 0; i < kNumIstStacks; ++i) {
    if (va == reinterpret_cast<uintptr_t>(ist_stack(i).guard)) return true;
  }
  return false;
}

void map_kernel_image() TA_REQ(g_lock) {
  const auto start = reinterpret_cast<uintptr_t>(__kernel_start);
  const auto end = reinterpret_cast<uintptr_t>(__kernel_end);
  const auto text_end = reinterpret_cast<uintptr_t>(__text_end);
  const auto rodata_end = reinterpret_cast<uintptr_t>(__rodata_end);
  for (uintptr_t va = start; va < end; va += kPage) {
    if (is_guard_page(va)) continue;
    Perms p{.write = false, .exec = false};
    if (va < text_end) {
      p.exec = true;
    } else if (va >= rodata_end) {
      p.write = true;
    }
    boot_map(va, va - kKernelVma, kPage, MemType::kWriteBack, p);
  }
}

}  // namespace

void init_pat() {
  uint64_t v = 0;
  for (int i = 0; i < 8; ++i) {
    v |= static_cast<uint64_t>(kPatLayout[i]) << (8 * i);
  }
  // Index 0..3 keep their power-on types and the boot tables use only index 0, so nothing
  // mapped now changes type; the CR3 reload flushes any cached translation anyway.
  wrmsr(kMsrPat, v);
  write_cr3(read_cr3());
}

void init_paging(const PvhInfo& pvh) {
  support::Guard guard{&g_lock};
  g_nx = cpu_features().nx ? kNoExec : 0;
  g_large_1g = cpu_features().page_1g;
  g_root = alloc_table();
  if (g_root == nullptr) boot_panic("page-table pool empty");

  Region regions[PvhInfo::kMaxEntries + 2];
  const size_t n = direct_map_regions(pvh, regions, PvhInfo::kMaxEntries + 2);
  for (size_t i = 0; i < n; ++i) {
    boot_map(kDirectMapBase + regions[i].start, regions[i].start, regions[i].end - regions[i].start,
             MemType::kWriteBack, Perms{.write = true, .exec = false});
  }
  boot_map(kDirectMapBase + kMmioWindowBase, kMmioWindowBase, kMmioWindowEnd - kMmioWindowBase,
           MemType::kUncached, Perms{.write = true, .exec = false});
  map_kernel_image();
  write_cr3(table_phys(g_root));
}

Result<void*> map_device(PhysAddr phys, uint64_t size, MemType type) {
  if (size == 0) return Error(ErrorCode::kInvalidArgument);
  const uint64_t start = phys.value() & ~(kPage - 1);
  const uint64_t last = phys.value() + size - 1;
  if (last < phys.value() || last >= (1ull << 46)) return Error(ErrorCode::kInvalidArgument);
  const uint64_t end = (last | (kPage - 1)) + 1;
  support::Guard guard{&g_lock};
  TRY(map_range(kDirectMapBase + start, start, end - start, type,
                Perms{.write = true, .exec = false}));
  return direct_map(phys.value());
}

bool translate(const void* va, Translation* out) {
  const auto v = reinterpret_cast<uintptr_t>(va);
  // Canonical: bits 63..47 all equal.
  const uint64_t top = v >> 47;
  if (top != 0 && top != 0x1'FFFF) return false;
  const Table* t = table_at(read_cr3() & kAddrMask);
  for (int level = 3; level >= 0; --level) {
    const Pte e = t->e[index_of(v, level)];
    if ((e & kPresent) == 0) return false;
    const bool leaf = level == 0 || (level <= 2 && (e & kLarge) != 0);
    if (leaf) {
      const uint64_t size = level_size(level);
      out->phys = leaf_phys(e, level) + (v & (size - 1));
      out->type = leaf_type(e, level);
      out->page_size = size;
      out->writable = (e & kWrite) != 0;
      out->executable = g_nx == 0 || (e & kNoExec) == 0;
      return true;
    }
    t = table_at(e & kAddrMask);
  }
  return false;
}

const char* mem_type_name(MemType t) {
  switch (t) {
    case MemType::kWriteBack:
      return "wb";
    case MemType::kWriteThrough:
      return "wt";
    case MemType::kUncachedMinus:
      return "uc-";
    case MemType::kUncached:
      return "uc";
    case MemType::kWriteCombining:
      return "wc";
    case MemType::kWriteProtect:
      return "wp";
  }
  return "?";
}

size_t page_table_pages_used() {
  support::Guard guard{&g_lock};
  return g_pool_used;
}

const dmakit_page_tables* direct_map_tables() {
  dmakit_page_tables& pt = g_direct_map_tables;
  pt.root = table_phys(g_root);
  pt.levels = 4;
  pt.table_offset = kKernelVma;
  pt.va_base = kDirectMapBase;
  pt.va_size = 1ull << 46;
  pt.x86_64.pat_wb = static_cast<uint8_t>(pat_index(MemType::kWriteBack));
  pt.x86_64.pat_uc = static_cast<uint8_t>(pat_index(MemType::kUncachedMinus));
  // init_pat programs kPatLayout, which has WC at this index.
  pt.x86_64.pat_wc = static_cast<uint8_t>(pat_index(MemType::kWriteCombining));
  g_split_tables.describe(kKernelVma, &pt);
  return &pt;
}

}  // namespace x86

namespace arch {

size_t direct_map_split_tables() {
  return x86::g_split_tables.in_use();
}

// x86-64 has no break-before-make rule: the library changes a live entry in place (a large leaf
// becomes a table of identical leaves, a 4 KiB leaf changes its PAT bits), each followed by TLB
// invalidation on every CPU through the kernel hook (IPIs here). Another CPU using the rest of a
// 2 MiB / 1 GiB region never finds it unmapped, so nothing is split ahead.
uint64_t direct_map_split_bytes(support::Span<const PhysRange>) {
  return 0;
}
Result<size_t> split_direct_map_at_boot(support::Span<const PhysRange>, PhysRange) {
  return size_t{0};
}

Result<const char*> translated_attribute(const void*) {
  return ErrorCode::kNotSupported;
}

}  // namespace arch
