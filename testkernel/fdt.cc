// The flattened device tree reader; the scheme and costs are described in fdt.h.
#include "testkernel/fdt.h"

#include "testkernel/kstring.h"

namespace {

constexpr uint32_t kTokBeginNode = 1;
constexpr uint32_t kTokEndNode = 2;
constexpr uint32_t kTokProp = 3;
constexpr uint32_t kTokNop = 4;
constexpr uint32_t kTokEnd = 9;

// Header field offsets (all big-endian u32).
constexpr uint32_t kHdrMagic = 0;
constexpr uint32_t kHdrTotalSize = 4;
constexpr uint32_t kHdrOffStruct = 8;
constexpr uint32_t kHdrOffStrings = 12;
constexpr uint32_t kHdrOffRsvmap = 16;
constexpr uint32_t kHdrVersion = 20;
constexpr uint32_t kHdrLastCompVersion = 24;
constexpr uint32_t kHdrBootCpuid = 28;
constexpr uint32_t kHdrSizeStrings = 32;
constexpr uint32_t kHdrSizeStruct = 36;

constexpr uint32_t kMaxMemreserve = 64;
constexpr int kMaxDepth = 32;

constexpr uint32_t align4(uint32_t x) {
  return (x + 3u) & ~3u;
}

uint64_t be64(const uint8_t* p) {
  return (static_cast<uint64_t>(Fdt::be32(p)) << 32) | Fdt::be32(p + 4);
}

// Matches a path component (length n, not NUL-terminated) against a node name: exact, or up to
// the '@' of the node name when the component has no unit address.
bool name_matches(const char* node_name, const char* comp, size_t n) {
  for (size_t i = 0; i < n; ++i) {
    if (node_name[i] != comp[i]) return false;
  }
  if (node_name[n] == '\0') return true;
  if (node_name[n] != '@') return false;
  for (size_t i = 0; i < n; ++i) {
    if (comp[i] == '@') return false;
  }
  return true;
}

}  // namespace

uint32_t Fdt::be32(const uint8_t* p) {
  return (static_cast<uint32_t>(p[0]) << 24) | (static_cast<uint32_t>(p[1]) << 16) |
         (static_cast<uint32_t>(p[2]) << 8) | static_cast<uint32_t>(p[3]);
}

uint64_t Fdt::read_cells(const uint8_t* p, uint32_t cells) {
  uint64_t v = 0;
  for (uint32_t i = 0; i < cells; ++i) v = (v << 32) | be32(p + 4 * i);
  return v;
}

uint32_t Fdt::peek_total_size(const void* blob) {
  if (blob == nullptr) return 0;
  auto p = static_cast<const uint8_t*>(blob);
  if (be32(p + kHdrMagic) != kMagic) return 0;
  return be32(p + kHdrTotalSize);
}

Result<Fdt> Fdt::from(const void* blob) {
  if (blob == nullptr) return ErrorCode::kInvalidArgument;
  auto p = static_cast<const uint8_t*>(blob);
  if (be32(p + kHdrMagic) != kMagic) return ErrorCode::kInvalidArgument;
  Fdt f;
  f.base_ = p;
  f.total_size_ = be32(p + kHdrTotalSize);
  f.struct_off_ = be32(p + kHdrOffStruct);
  f.strings_off_ = be32(p + kHdrOffStrings);
  f.rsvmap_off_ = be32(p + kHdrOffRsvmap);
  f.boot_cpuid_ = be32(p + kHdrBootCpuid);
  f.strings_size_ = be32(p + kHdrSizeStrings);
  f.struct_size_ = be32(p + kHdrSizeStruct);
  uint32_t version = be32(p + kHdrVersion);
  uint32_t last_comp = be32(p + kHdrLastCompVersion);
  // Version 17 added size_dt_struct; version 16 blobs that leave it zero are still readable up to
  // the strings block, which follows the structure block in every known writer.
  if (version < 16 || last_comp > 17) return ErrorCode::kInvalidArgument;
  if (f.total_size_ < kHeaderSize) return ErrorCode::kInvalidArgument;
  if (f.struct_size_ == 0) {
    if (f.strings_off_ <= f.struct_off_) return ErrorCode::kInvalidArgument;
    f.struct_size_ = f.strings_off_ - f.struct_off_;
  }
  auto inside = [&](uint32_t off, uint32_t size) {
    return off >= kHeaderSize && off <= f.total_size_ && size <= f.total_size_ - off;
  };
  if (!inside(f.struct_off_, f.struct_size_) || !inside(f.strings_off_, f.strings_size_)) {
    return ErrorCode::kInvalidArgument;
  }
  if ((f.struct_off_ & 3u) != 0 || (f.rsvmap_off_ & 7u) != 0 || !inside(f.rsvmap_off_, 16)) {
    return ErrorCode::kInvalidArgument;
  }
  if (!f.root().valid()) return ErrorCode::kInvalidArgument;
  return f;
}

// --- Tokens --------------------------------------------------------------------------------------

const char* Fdt::struct_string(uint32_t off, uint32_t* len) const {
  const uint8_t* s = structure();
  for (uint32_t i = off; i < struct_size_; ++i) {
    if (s[i] == 0) {
      *len = i - off;
      return reinterpret_cast<const char*>(s + off);
    }
  }
  return nullptr;
}

const char* Fdt::strings_at(uint32_t nameoff) const {
  if (nameoff >= strings_size_) return nullptr;
  const uint8_t* s = base_ + strings_off_;
  for (uint32_t i = nameoff; i < strings_size_; ++i) {
    if (s[i] == 0) return reinterpret_cast<const char*>(s + nameoff);
  }
  return nullptr;
}

uint32_t Fdt::token(uint32_t off, uint32_t* next) const {
  if (base_ == nullptr || off > struct_size_ || struct_size_ - off < 4 || (off & 3u) != 0) {
    return 0;
  }
  uint32_t tok = be32(structure() + off);
  switch (tok) {
    case kTokBeginNode: {
      uint32_t len = 0;
      if (struct_string(off + 4, &len) == nullptr) return 0;
      *next = align4(off + 4 + len + 1);
      return tok;
    }
    case kTokProp: {
      if (struct_size_ - off < 12) return 0;
      uint32_t len = be32(structure() + off + 4);
      if (len > struct_size_ - off - 12) return 0;
      *next = align4(off + 12 + len);
      return tok;
    }
    case kTokEndNode:
    case kTokNop:
    case kTokEnd:
      *next = off + 4;
      return tok;
    default:
      return 0;
  }
}

// --- Walking -------------------------------------------------------------------------------------

FdtNode Fdt::root() const {
  uint32_t off = 0;
  for (;;) {
    uint32_t next = 0;
    uint32_t tok = token(off, &next);
    if (tok == kTokNop) {
      off = next;
      continue;
    }
    if (tok != kTokBeginNode) return FdtNode{};
    return FdtNode{static_cast<int32_t>(off)};
  }
}

const char* Fdt::name(FdtNode n) const {
  if (!n.valid()) return nullptr;
  uint32_t next = 0;
  auto off = static_cast<uint32_t>(n.offset);
  if (token(off, &next) != kTokBeginNode) return nullptr;
  uint32_t len = 0;
  return struct_string(off + 4, &len);
}

FdtNode Fdt::next_node(FdtNode n, int* depth) const {
  int d = 0;
  if (!n.valid()) return FdtNode{};
  uint32_t off = static_cast<uint32_t>(n.offset);
  uint32_t next = 0;
  if (token(off, &next) != kTokBeginNode) return FdtNode{};
  off = next;
  for (;;) {
    uint32_t tok = token(off, &next);
    switch (tok) {
      case kTokBeginNode:
        d += 1;
        if (depth != nullptr) *depth += d;
        return FdtNode{static_cast<int32_t>(off)};
      case kTokEndNode:
        d -= 1;
        break;
      case kTokProp:
      case kTokNop:
        break;
      default:  // kTokEnd or malformed.
        return FdtNode{};
    }
    off = next;
  }
}

FdtNode Fdt::first_child(FdtNode n) const {
  int d = 0;
  FdtNode c = next_node(n, &d);
  return d == 1 ? c : FdtNode{};
}

FdtNode Fdt::next_sibling(FdtNode n) const {
  int d = 0;
  FdtNode c = n;
  for (;;) {
    c = next_node(c, &d);
    if (!c.valid() || d < 0) return FdtNode{};
    if (d == 0) return c;
  }
}

FdtNode Fdt::parent(FdtNode n) const {
  if (!n.valid()) return FdtNode{};
  FdtNode stack[kMaxDepth];
  int depth = 0;
  FdtNode cur = root();
  stack[0] = cur;
  while (cur.valid()) {
    if (cur == n) return depth == 0 ? FdtNode{} : stack[depth - 1];
    int d = 0;
    cur = next_node(cur, &d);
    depth += d;
    if (depth < 0 || depth >= kMaxDepth) return FdtNode{};
    stack[depth] = cur;
  }
  return FdtNode{};
}

FdtNode Fdt::find_child(FdtNode parent_node, const char* child_name) const {
  size_t n = kstr::length(child_name);
  for (FdtNode c = first_child(parent_node); c.valid(); c = next_sibling(c)) {
    const char* nm = name(c);
    if (nm != nullptr && name_matches(nm, child_name, n)) return c;
  }
  return FdtNode{};
}

FdtNode Fdt::find_path(const char* path) const {
  if (path == nullptr || path[0] != '/') return FdtNode{};
  FdtNode cur = root();
  const char* p = path;
  while (cur.valid()) {
    while (*p == '/') ++p;
    if (*p == '\0') return cur;
    const char* comp = p;
    while (*p != '\0' && *p != '/') ++p;
    auto n = static_cast<size_t>(p - comp);
    FdtNode found{};
    for (FdtNode c = first_child(cur); c.valid(); c = next_sibling(c)) {
      const char* nm = name(c);
      if (nm != nullptr && name_matches(nm, comp, n)) {
        found = c;
        break;
      }
    }
    cur = found;
  }
  return FdtNode{};
}

FdtNode Fdt::find_compatible(const char* compat, FdtNode after) const {
  FdtNode n = after.valid() ? next_node(after) : root();
  for (; n.valid(); n = next_node(n)) {
    if (is_compatible(n, compat)) return n;
  }
  return FdtNode{};
}

// --- Properties ----------------------------------------------------------------------------------

FdtProp Fdt::prop(FdtNode n, const char* prop_name) const {
  if (!n.valid()) return FdtProp{};
  uint32_t off = static_cast<uint32_t>(n.offset);
  uint32_t next = 0;
  if (token(off, &next) != kTokBeginNode) return FdtProp{};
  off = next;
  for (;;) {
    uint32_t tok = token(off, &next);
    if (tok == kTokProp) {
      const uint8_t* t = structure() + off;
      const char* pn = strings_at(be32(t + 8));
      if (pn != nullptr && kstr::equal(pn, prop_name)) return FdtProp{t + 12, be32(t + 4)};
    } else if (tok != kTokNop) {
      return FdtProp{};  // Properties precede children: the first other token ends the search.
    }
    off = next;
  }
}

Result<uint32_t> Fdt::prop_u32(FdtNode n, const char* prop_name) const {
  FdtProp p = prop(n, prop_name);
  if (!p.found()) return ErrorCode::kNotFound;
  if (p.len != 4) return ErrorCode::kInvalidArgument;
  return be32(p.data);
}

Result<uint64_t> Fdt::prop_u64(FdtNode n, const char* prop_name) const {
  FdtProp p = prop(n, prop_name);
  if (!p.found()) return ErrorCode::kNotFound;
  if (p.len != 4 && p.len != 8) return ErrorCode::kInvalidArgument;
  return read_cells(p.data, p.len / 4);
}

const char* Fdt::prop_string(FdtNode n, const char* prop_name) const {
  FdtProp p = prop(n, prop_name);
  if (!p.found() || p.len == 0) return nullptr;
  for (uint32_t i = 0; i < p.len; ++i) {
    if (p.data[i] == 0) return reinterpret_cast<const char*>(p.data);
  }
  return nullptr;
}

bool Fdt::prop_list_contains(FdtNode n, const char* prop_name, const char* s) const {
  FdtProp p = prop(n, prop_name);
  if (!p.found()) return false;
  uint32_t i = 0;
  while (i < p.len) {
    uint32_t start = i;
    while (i < p.len && p.data[i] != 0) ++i;
    if (i == p.len) return false;  // Unterminated last string: ignore it.
    if (kstr::equal(reinterpret_cast<const char*>(p.data + start), s)) return true;
    ++i;
  }
  return false;
}

bool Fdt::is_enabled(FdtNode n) const {
  const char* st = prop_string(n, "status");
  return st == nullptr || kstr::equal(st, "okay") || kstr::equal(st, "ok");
}

uint32_t Fdt::address_cells(FdtNode n) const {
  auto r = prop_u32(n, "#address-cells");
  return r.ok() ? *r : 2u;
}

uint32_t Fdt::size_cells(FdtNode n) const {
  auto r = prop_u32(n, "#size-cells");
  return r.ok() ? *r : 1u;
}

Result<size_t> Fdt::reg_count(FdtNode n) const {
  FdtProp p = prop(n, "reg");
  if (!p.found()) return ErrorCode::kNotFound;
  FdtNode par = parent(n);
  uint32_t ac = address_cells(par);
  uint32_t sc = size_cells(par);
  if (ac > 2 || sc > 2 || ac == 0) return ErrorCode::kNotSupported;
  uint32_t entry = 4 * (ac + sc);
  if (p.len % entry != 0) return ErrorCode::kInvalidArgument;
  return static_cast<size_t>(p.len / entry);
}

Result<PhysRange> Fdt::reg(FdtNode n, size_t index) const {
  TRY_ASSIGN(size_t count, reg_count(n));
  if (index >= count) return ErrorCode::kOutOfRange;
  FdtProp p = prop(n, "reg");
  FdtNode par = parent(n);
  uint32_t ac = address_cells(par);
  uint32_t sc = size_cells(par);
  const uint8_t* e = p.data + index * 4 * (ac + sc);
  PhysRange r;
  r.base = PhysAddr(read_cells(e, ac));
  r.size = read_cells(e + 4 * ac, sc);
  return r;
}

bool Fdt::is_pci_bus(FdtNode n) const {
  const char* dt = prop_string(n, "device_type");
  return dt != nullptr && (kstr::equal(dt, "pci") || kstr::equal(dt, "pciex"));
}

Result<size_t> Fdt::dma_ranges(FdtNode n, DmaWindow* out, size_t max) const {
  FdtNode bus = n;
  FdtProp p;
  while (bus.valid()) {
    p = prop(bus, "dma-ranges");
    if (p.found()) break;
    bus = parent(bus);
  }
  if (!p.found()) return ErrorCode::kNotFound;
  FdtNode par = parent(bus);
  uint32_t child_ac = address_cells(bus);
  uint32_t parent_ac = par.valid() ? address_cells(par) : child_ac;
  uint32_t sc = size_cells(bus);
  // A PCI bus address is three cells: phys.hi (space code, prefetchable and relocatable flags),
  // then the 64-bit bus address. The DMA address is the low two; phys.hi says which address space
  // the device targets, and only memory space is ever DMA'd to, so it is skipped (as Linux's
  // of_dma_get_range does). Three cells on any other bus have no known meaning.
  uint32_t skip = 0;
  if (child_ac == 3 && is_pci_bus(bus)) {
    skip = 1;
  } else if (child_ac > 2) {
    return ErrorCode::kNotSupported;
  }
  if (parent_ac > 2 || sc > 2 || sc == 0) return ErrorCode::kNotSupported;
  uint32_t entry = 4 * (child_ac + parent_ac + sc);
  if (p.len % entry != 0) return ErrorCode::kInvalidArgument;
  size_t count = p.len / entry;
  // Checked whole before anything is written: a bad entry leaves `out` untouched.
  for (size_t i = 0; i < count; ++i) {
    if (read_cells(p.data + i * entry + 4 * (child_ac + parent_ac), sc) == 0) {
      return ErrorCode::kInvalidArgument;
    }
  }
  for (size_t i = 0; i < count && i < max; ++i) {
    const uint8_t* e = p.data + i * entry;
    out[i].dma_base = DmaAddr(read_cells(e + 4 * skip, child_ac - skip));
    out[i].cpu_base = PhysAddr(read_cells(e + 4 * child_ac, parent_ac));
    out[i].size = read_cells(e + 4 * (child_ac + parent_ac), sc);
  }
  return count;
}

// --- Memory reservation block --------------------------------------------------------------------

size_t Fdt::memreserve_count() const {
  size_t n = 0;
  while (n < kMaxMemreserve) {
    uint32_t off = rsvmap_off_ + static_cast<uint32_t>(n) * 16;
    if (off > total_size_ || total_size_ - off < 16) break;
    if (be64(base_ + off) == 0 && be64(base_ + off + 8) == 0) break;
    ++n;
  }
  return n;
}

PhysRange Fdt::memreserve(size_t i) const {
  const uint8_t* e = base_ + rsvmap_off_ + i * 16;
  PhysRange r;
  r.base = PhysAddr(be64(e));
  r.size = be64(e + 8);
  return r;
}

// --- Common queries ------------------------------------------------------------------------------

size_t Fdt::memory_ranges(PhysRange* out, size_t max) const {
  size_t n = 0;
  for (FdtNode c = first_child(root()); c.valid(); c = next_sibling(c)) {
    const char* dt = prop_string(c, "device_type");
    if (dt == nullptr || !kstr::equal(dt, "memory") || !is_enabled(c)) continue;
    auto count = reg_count(c);
    if (!count.ok()) continue;
    for (size_t i = 0; i < *count; ++i) {
      auto r = reg(c, i);
      if (!r.ok() || r->size == 0) continue;
      if (n < max) out[n] = *r;
      ++n;
    }
  }
  return n;
}

size_t Fdt::reserved_ranges(PhysRange* out, size_t max) const {
  size_t n = 0;
  size_t m = memreserve_count();
  for (size_t i = 0; i < m; ++i) {
    PhysRange r = memreserve(i);
    if (r.size == 0) continue;
    if (n < max) out[n] = r;
    ++n;
  }
  FdtNode rm = find_path("/reserved-memory");
  for (FdtNode c = first_child(rm); c.valid(); c = next_sibling(c)) {
    if (!is_enabled(c)) continue;
    auto count = reg_count(c);
    if (!count.ok()) continue;
    for (size_t i = 0; i < *count; ++i) {
      auto r = reg(c, i);
      if (!r.ok() || r->size == 0) continue;
      if (n < max) out[n] = *r;
      ++n;
    }
  }
  return n;
}

const char* Fdt::bootargs() const {
  const char* s = prop_string(find_path("/chosen"), "bootargs");
  return s != nullptr ? s : "";
}

const char* Fdt::stdout_path() const {
  FdtNode chosen = find_path("/chosen");
  const char* s = prop_string(chosen, "stdout-path");
  return s != nullptr ? s : prop_string(chosen, "linux,stdout-path");
}

FdtNode Fdt::cpu_node(unsigned index) const {
  unsigned i = 0;
  for (FdtNode c = first_child(find_path("/cpus")); c.valid(); c = next_sibling(c)) {
    const char* dt = prop_string(c, "device_type");
    if (dt == nullptr || !kstr::equal(dt, "cpu") || !is_enabled(c)) continue;
    if (i == index) return c;
    ++i;
  }
  return FdtNode{};
}

unsigned Fdt::cpu_count() const {
  unsigned n = 0;
  while (cpu_node(n).valid()) ++n;
  return n;
}

// --- RISC-V --------------------------------------------------------------------------------------

const char* Fdt::riscv_isa(FdtNode cpu) const {
  return prop_string(cpu, "riscv,isa");
}

bool Fdt::riscv_has_extension(FdtNode cpu, const char* ext) const {
  size_t elen = kstr::length(ext);
  if (elen == 0) return false;
  FdtProp list = prop(cpu, "riscv,isa-extensions");
  if (list.found()) {
    uint32_t i = 0;
    while (i < list.len) {
      uint32_t start = i;
      while (i < list.len && list.data[i] != 0) ++i;
      if (i == list.len) break;
      auto s = reinterpret_cast<const char*>(list.data + start);
      if (i - start == elen && kstr::equal_nocase_n(s, ext, elen)) return true;
      ++i;
    }
    return false;
  }
  const char* isa = riscv_isa(cpu);
  if (isa == nullptr) return false;
  // "rv64" (or "rv32"), then single-letter extensions up to the first '_', then '_'-separated
  // multi-letter extensions.
  if (!kstr::equal_nocase_n(isa, "rv", 2)) return false;
  const char* p = isa + 2;
  while (*p >= '0' && *p <= '9') ++p;
  const char* single = p;
  while (*p != '\0' && *p != '_') ++p;
  if (elen == 1) {
    for (const char* q = single; q < p; ++q) {
      if (kstr::equal_nocase_n(q, ext, 1)) return true;
      // "g" stands for imafd plus zicsr and zifencei.
      if ((*q == 'g' || *q == 'G') && kstr::contains("imafdIMAFD", ext)) return true;
    }
    return false;
  }
  while (*p == '_') {
    ++p;
    const char* w = p;
    while (*p != '\0' && *p != '_') ++p;
    // A multi-letter extension may carry a version suffix ("zicbom1p0"); compare the name part.
    if (static_cast<size_t>(p - w) >= elen && kstr::equal_nocase_n(w, ext, elen)) {
      const char* rest = w + elen;
      bool version_only = rest == p || (*rest >= '0' && *rest <= '9');
      for (const char* q = rest; q < p; ++q) {
        if (!((*q >= '0' && *q <= '9') || *q == 'p')) version_only = false;
      }
      if (version_only) return true;
    }
  }
  return false;
}

bool Fdt::riscv_all_cpus_have(const char* ext) const {
  unsigned n = cpu_count();
  if (n == 0) return false;
  for (unsigned i = 0; i < n; ++i) {
    if (!riscv_has_extension(cpu_node(i), ext)) return false;
  }
  return true;
}

Result<uint32_t> Fdt::riscv_cbom_block_size() const {
  for (unsigned i = 0;; ++i) {
    FdtNode c = cpu_node(i);
    if (!c.valid()) return ErrorCode::kNotFound;
    auto r = prop_u32(c, "riscv,cbom-block-size");
    if (r.code() == ErrorCode::kNotFound) continue;
    return r;
  }
}
