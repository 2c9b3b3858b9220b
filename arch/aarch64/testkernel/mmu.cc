// Stage-1 page tables; the layout is described in mmu.h.
#include "arch/aarch64/testkernel/mmu.h"

#include "arch/aarch64/testkernel/sysreg.h"
#include "testkernel/arch.h"
#include "testkernel/split_table_pool.h"

namespace aarch64 {
namespace {

constexpr size_t kEntries = 512;
constexpr size_t kPoolPages = 96;
constexpr uint64_t kPage = 4096;

// Descriptor bits.
constexpr uint64_t kValid = 1ull << 0;
constexpr uint64_t kTableOrPage = 1ull << 1;  // Table at L0-L2, page at L3; 0 = block at L1/L2.
constexpr uint64_t kAttrShift = 2;
constexpr uint64_t kShInner = 3ull << 8;
constexpr uint64_t kAf = 1ull << 10;
constexpr uint64_t kPxn = 1ull << 53;
constexpr uint64_t kUxn = 1ull << 54;
constexpr uint64_t kOaMask = 0x0000'FFFF'FFFF'F000ull;

struct alignas(kPage) Table {
  uint64_t e[kEntries];
};

Table g_pool[kPoolPages];
Table g_root_identity;
Table g_root_direct;
size_t g_used = 0;
dmakit_page_tables g_direct_map_tables = {};

// With the MMU on, tables are reached through the identity map of the kernel image (the pool is
// part of it), so a table's physical address is also its virtual address.
Table* table_at(uint64_t pa) {
  return reinterpret_cast<Table*>(static_cast<uintptr_t>(pa));
}
uint64_t pa_of(const Table* t) {
  return reinterpret_cast<uintptr_t>(t);
}

Table* alloc_table() {
  if (g_used == kPoolPages) return nullptr;
  Table* t = &g_pool[g_used++];
  for (size_t i = 0; i < kEntries; ++i) t->e[i] = 0;
  return t;
}

unsigned shift_of(int level) {
  return static_cast<unsigned>(39 - 9 * level);
}

uint64_t leaf_bits(MemAttr attr, bool exec) {
  uint64_t d = kAf | (static_cast<uint64_t>(attr) << kAttrShift);
  if (attr == MemAttr::kNormalWb || attr == MemAttr::kNormalNc) d |= kShInner;
  if (!exec) d |= kPxn | kUxn;
  return d;
}

}  // namespace

SplitTablePool g_split_tables;

void mmu_reset_tables() {
  for (size_t i = 0; i < kEntries; ++i) {
    g_root_identity.e[i] = 0;
    g_root_direct.e[i] = 0;
  }
  g_used = 0;
}

Result<void> mmu_map(Space space, uint64_t va, uint64_t pa, uint64_t size, MemAttr attr,
                     bool exec) {
  if ((va | pa | size) & (kPage - 1)) return ErrorCode::kInvalidArgument;
  Table* root = space == Space::kIdentity ? &g_root_identity : &g_root_direct;
  uint64_t top = va >> 48;
  if ((space == Space::kIdentity && top != 0) || (space == Space::kDirect && top != 0xFFFF)) {
    return ErrorCode::kInvalidArgument;
  }
  uint64_t leaf = leaf_bits(attr, exec);
  while (size > 0) {
    // The level of the leaf: the biggest block both addresses are aligned to and that fits.
    int level = 3;
    if (((va | pa) & ((1ull << 30) - 1)) == 0 && size >= (1ull << 30)) {
      level = 1;
    } else if (((va | pa) & ((1ull << 21) - 1)) == 0 && size >= (1ull << 21)) {
      level = 2;
    }
    Table* t = root;
    for (int l = 0; l < level; ++l) {
      size_t idx = (va >> shift_of(l)) & (kEntries - 1);
      uint64_t e = t->e[idx];
      if ((e & kValid) == 0) {
        Table* n = alloc_table();
        if (n == nullptr) return ErrorCode::kNoMemory;
        t->e[idx] = pa_of(n) | kValid | kTableOrPage;
        t = n;
      } else if ((e & kTableOrPage) == 0) {
        return ErrorCode::kInvalidArgument;  // A block already covers this: no splitting here.
      } else {
        t = table_at(e & kOaMask);
      }
    }
    size_t idx = (va >> shift_of(level)) & (kEntries - 1);
    uint64_t d = (pa & kOaMask) | leaf | kValid | (level == 3 ? kTableOrPage : 0);
    uint64_t old = t->e[idx];
    if ((old & kValid) != 0 && old != d) return ErrorCode::kInvalidArgument;
    t->e[idx] = d;
    uint64_t step = 1ull << shift_of(level);
    va += step;
    pa += step;
    size -= step;
  }
  return support::ok();
}

void mmu_enable() {
  // TCR_EL1: 48-bit VA in both halves (T0SZ = T1SZ = 16), 4 KiB granules, walks through
  // write-back cacheable, inner-shareable memory, physical size from ID_AA64MMFR0_EL1.PARange.
  uint64_t parange = read_id_aa64mmfr0_el1() & 0xf;
  if (parange > 5) parange = 5;      // 48 bits is enough; 52-bit output needs other descriptors.
  uint64_t tcr = (16ull << 0)        // T0SZ
                 | (1ull << 8)       // IRGN0 = WB RA WA
                 | (1ull << 10)      // ORGN0 = WB RA WA
                 | (3ull << 12)      // SH0 = inner shareable
                 | (0ull << 14)      // TG0 = 4 KiB
                 | (16ull << 16)     // T1SZ
                 | (1ull << 24)      // IRGN1
                 | (1ull << 26)      // ORGN1
                 | (3ull << 28)      // SH1
                 | (2ull << 30)      // TG1 = 4 KiB
                 | (parange << 32);  // IPS
  write_mair_el1(kMairValue);
  write_tcr_el1(tcr);
  write_ttbr0_el1(pa_of(&g_root_identity));
  write_ttbr1_el1(pa_of(&g_root_direct));
  isb();
  // Tables were written with the MMU (and so the data cache) off: drop any stale cache lines over
  // them before the walker starts reading through the cache.
  size_t line = dcache_line_size();
  auto inval = [line](const void* p, size_t n) {
    auto a = reinterpret_cast<uintptr_t>(p) & ~(line - 1);
    auto end = reinterpret_cast<uintptr_t>(p) + n;
    for (; a < end; a += line) __asm__ volatile("dc ivac, %0" : : "r"(a) : "memory");
  };
  inval(g_pool, sizeof(g_pool));
  inval(&g_root_identity, sizeof(Table));
  inval(&g_root_direct, sizeof(Table));
  dsb_sy();
  tlbi_vmalle1();
  dsb_ish();
  isb();
  uint64_t sctlr = read_sctlr_el1();
  sctlr |= kSctlrM | kSctlrC | kSctlrI | kSctlrSA;
  sctlr &= ~(kSctlrA | kSctlrWXN | kSctlrEE | kSctlrE0E);
  write_sctlr_el1(sctlr);
  isb();
}

void mmu_sync() {
  dsb_ishst();
  tlbi_vmalle1();
  dsb_ish();
  isb();
}

bool mmu_lookup(uint64_t va, MemAttr* attr, uint64_t* pa) {
  uint64_t top = va >> 48;
  const Table* t;
  if (top == 0) {
    t = &g_root_identity;
  } else if (top == 0xFFFF) {
    t = &g_root_direct;
  } else {
    return false;
  }
  for (int level = 0; level <= 3; ++level) {
    uint64_t e = t->e[(va >> shift_of(level)) & (kEntries - 1)];
    if ((e & kValid) == 0) return false;
    bool leaf = level == 3 || (e & kTableOrPage) == 0;
    if (leaf) {
      if (level == 0) return false;  // No L0 blocks with 4 KiB granules.
      uint64_t block = 1ull << shift_of(level);
      *attr = static_cast<MemAttr>((e >> kAttrShift) & 7);
      *pa = (e & kOaMask & ~(block - 1)) | (va & (block - 1));
      return true;
    }
    t = table_at(e & kOaMask);
  }
  return false;
}

size_t mmu_tables_used() {
  return g_used + 2;
}
size_t mmu_tables_capacity() {
  return kPoolPages + 2;
}

const dmakit_page_tables* mmu_direct_map_tables() {
  dmakit_page_tables& pt = g_direct_map_tables;
  pt.root = pa_of(&g_root_direct);
  pt.levels = 4;
  pt.table_offset = 0;
  pt.va_base = kDirectMapBase;
  pt.va_size = 1ull << 47;
  pt.aarch64.mair_wb = static_cast<uint8_t>(MemAttr::kNormalWb);
  pt.aarch64.mair_nc = static_cast<uint8_t>(MemAttr::kNormalNc);
  g_split_tables.describe(/*virt_minus_phys=*/0, &pt);
  return &pt;
}

}  // namespace aarch64

namespace arch {

size_t direct_map_split_tables() {
  return aarch64::g_split_tables.in_use();
}

}  // namespace arch
