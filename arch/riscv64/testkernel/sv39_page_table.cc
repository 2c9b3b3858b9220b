// Sv39 page-table construction and walks; the scheme and costs are in sv39_page_table.h.
#include "arch/riscv64/testkernel/sv39_page_table.h"

#include "arch/riscv64/testkernel/csr.h"
#include "dmakit/support/mem.h"

namespace riscv {

namespace {

constexpr uint64_t kPteLeafMask = kPteR | kPteW | kPteX;
constexpr uint64_t kSatpModeMask = 0xFull << 60;
constexpr uint64_t kSatpPpnMask = (1ull << 44) - 1;

constexpr uint64_t level_size(unsigned level) {
  return 1ull << (12 + 9 * level);
}
constexpr unsigned index_at(uint64_t va, unsigned level) {
  return static_cast<unsigned>((va >> (12 + 9 * level)) & 511);
}
constexpr uint64_t pte_phys(uint64_t pte) {
  return ((pte & kPtePpnMask) >> kPtePpnShift) << 12;
}
constexpr uint64_t make_pte(uint64_t pa, uint64_t flags) {
  return ((pa >> 12) << kPtePpnShift) | flags;
}
// Sv39: bits 63..39 must all equal bit 38.
constexpr bool canonical(uint64_t va) {
  uint64_t top = va >> 38;
  return top == 0 || top == (~0ull >> 38);
}

}  // namespace

const char* mem_type_name(MemType t) {
  switch (t) {
    case MemType::kPma:
      return "pma";
    case MemType::kNonCacheable:
      return "nc";
    case MemType::kIo:
      return "io";
  }
  return "reserved-pbmt";
}

void Sv39PageTable::init(TablePage* pool, size_t pool_pages, uintptr_t virt_offset, bool svpbmt) {
  KASSERT(root_ == nullptr, "Sv39PageTable::init called twice");
  KASSERT(pool != nullptr && pool_pages > 0, "page-table pool missing");
  pool_ = pool;
  pool_pages_ = pool_pages;
  virt_offset_ = virt_offset;
  svpbmt_ = svpbmt;
  auto root = alloc_table();
  KASSERT(root.ok(), "page-table pool has no room for the root");
  root_ = *root;
}

Result<Sv39PageTable::TablePage*> Sv39PageTable::alloc_table() {
  if (used_ == pool_pages_) return ErrorCode::kNoMemory;
  TablePage* t = &pool_[used_++];
  support::fill_bytes(t, 0, sizeof(*t));
  return t;
}

Sv39PageTable::TablePage* Sv39PageTable::table_at(uint64_t pte) const {
  return reinterpret_cast<TablePage*>(pte_phys(pte) + virt_offset_);
}

Result<void> Sv39PageTable::map(uint64_t va, PhysAddr pa, uint64_t size, MemType type) {
  KASSERT(root_ != nullptr, "Sv39PageTable::map before init");
  uint64_t p = pa.value();
  if (size == 0 || (va | p | size) % kPageSize != 0) return ErrorCode::kLayoutError;
  uint64_t last = va + (size - 1);
  if (last < va || p + (size - 1) < p) return ErrorCode::kLayoutError;
  // Both ends canonical and in the same half: the range does not straddle the hole.
  if (!canonical(va) || !canonical(last) || (va >> 63) != (last >> 63)) {
    return ErrorCode::kLayoutError;
  }
  // Physical addresses are 56 bits wide in Sv39.
  if ((p + (size - 1)) >> 56 != 0) return ErrorCode::kLayoutError;

  uint64_t flags = kPteV | kPteR | kPteW | kPteX | kPteG | kPteA | kPteD;
  if (svpbmt_) flags |= static_cast<uint64_t>(type) << kPtePbmtShift;

  while (size != 0) {
    unsigned level = 0;
    for (unsigned l = 2; l > 0; --l) {
      uint64_t ls = level_size(l);
      if (va % ls == 0 && p % ls == 0 && size >= ls) {
        level = l;
        break;
      }
    }
    TRY(map_leaf(va, p, level, flags));
    va += level_size(level);
    p += level_size(level);
    size -= level_size(level);
  }
  return {};
}

Result<void> Sv39PageTable::map_leaf(uint64_t va, uint64_t pa, unsigned level, uint64_t flags) {
  TablePage* t = root_;
  for (unsigned l = 2; l > level; --l) {
    uint64_t& e = t->pte[index_at(va, l)];
    if ((e & kPteV) == 0) {
      TRY_ASSIGN(TablePage * next, alloc_table());
      e = make_pte(phys_of(next).value(), kPteV);
      t = next;
    } else if ((e & kPteLeafMask) != 0) {
      // A larger leaf already covers va: fine if it translates it the same way.
      uint64_t mapped = pte_phys(e) + (va & (level_size(l) - 1));
      if (mapped == pa && (e & ~kPtePpnMask) == flags) return {};
      return ErrorCode::kInvalidArgument;
    } else {
      t = table_at(e);
    }
  }
  uint64_t& e = t->pte[index_at(va, level)];
  if ((e & kPteV) == 0) {
    e = make_pte(pa, flags);
    return {};
  }
  if ((e & kPteLeafMask) != 0) {
    if (pte_phys(e) == pa && (e & ~kPtePpnMask) == flags) return {};
    return ErrorCode::kInvalidArgument;
  }
  // A table of smaller leaves is already there (a device mapped before its window): fill the
  // rest of the region one level down instead of replacing what is mapped.
  uint64_t child = level_size(level - 1);
  for (uint64_t i = 0; i < kEntries; ++i) {
    TRY(map_leaf(va + i * child, pa + i * child, level - 1, flags));
  }
  return {};
}

Result<Sv39PageTable::Leaf> Sv39PageTable::walk_root(const TablePage* root, uint64_t va,
                                                     uintptr_t virt_offset) {
  if (!canonical(va)) return ErrorCode::kNotFound;
  const TablePage* t = root;
  for (unsigned l = 3; l-- > 0;) {
    uint64_t e = t->pte[index_at(va, l)];
    if ((e & kPteV) == 0) return ErrorCode::kNotFound;
    if ((e & kPteLeafMask) != 0) {
      Leaf leaf;
      leaf.pa = PhysAddr(pte_phys(e) + (va & (level_size(l) - 1)));
      leaf.pte = e;
      leaf.level = l;
      return leaf;
    }
    t = reinterpret_cast<const TablePage*>(pte_phys(e) + virt_offset);
  }
  return ErrorCode::kNotFound;
}

Result<Sv39PageTable::Leaf> Sv39PageTable::walk(uint64_t va) const {
  KASSERT(root_ != nullptr, "Sv39PageTable::walk before init");
  return walk_root(root_, va, virt_offset_);
}

Result<Sv39PageTable::Leaf> Sv39PageTable::walk_active(uint64_t va, uintptr_t virt_offset) {
  uint64_t satp = read_satp();
  if ((satp & kSatpModeMask) != kSatpModeSv39) return ErrorCode::kNotFound;
  auto* root = reinterpret_cast<const TablePage*>(((satp & kSatpPpnMask) << 12) + virt_offset);
  return walk_root(root, va, virt_offset);
}

Result<dmakit_page_tables> Sv39PageTable::describe_active(uintptr_t virt_offset) {
  const uint64_t satp = read_satp();
  if ((satp & kSatpModeMask) != kSatpModeSv39) return ErrorCode::kNotSupported;
  dmakit_page_tables pt = {};
  pt.root = (satp & kSatpPpnMask) << 12;
  pt.levels = 3;
  pt.table_offset = virt_offset;
  pt.va_base = virt_offset;
  pt.va_size = 0 - static_cast<uint64_t>(virt_offset);
  return pt;
}

uint64_t Sv39PageTable::satp() const {
  return kSatpModeSv39 | (root_phys().value() >> 12);
}

}  // namespace riscv
