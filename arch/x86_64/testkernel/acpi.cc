#include "arch/x86_64/testkernel/acpi.h"

#include "arch/x86_64/testkernel/paging.h"

namespace x86 {
namespace {

struct [[gnu::packed]] Rsdp {
  char signature[8];
  uint8_t checksum;
  char oem_id[6];
  uint8_t revision;
  uint32_t rsdt_address;
  // Revision >= 2:
  uint32_t length;
  uint64_t xsdt_address;
  uint8_t extended_checksum;
  uint8_t reserved[3];
};
static_assert(sizeof(Rsdp) == 36, "ACPI RSDP layout");

struct [[gnu::packed]] SdtHeader {
  char signature[4];
  uint32_t length;
  uint8_t revision;
  uint8_t checksum;
  char oem_id[6];
  char oem_table_id[8];
  uint32_t oem_revision;
  uint32_t creator_id;
  uint32_t creator_revision;
};
static_assert(sizeof(SdtHeader) == 36, "ACPI table header layout");

constexpr size_t kMadtEntriesOffset = sizeof(SdtHeader) + 8;  // Local APIC address, flags.
constexpr uint8_t kMadtLocalApic = 0;
constexpr uint8_t kMadtLocalX2Apic = 9;
constexpr uint32_t kMaxTableLength = 1u << 20;

// True if every byte of [phys, phys + len) is reachable through the direct map.
bool mapped(uint64_t phys, uint64_t len) {
  if (len == 0 || phys + len < phys) return false;
  for (uint64_t p = phys & ~0xFFFull; p < phys + len; p += 4096) {
    Translation t;
    if (!translate(direct_map(p), &t)) return false;
  }
  return true;
}

bool checksum_ok(const void* p, size_t len) {
  uint8_t sum = 0;
  const auto* b = static_cast<const uint8_t*>(p);
  for (size_t i = 0; i < len; ++i) sum = static_cast<uint8_t>(sum + b[i]);
  return sum == 0;
}

bool same4(const char* a, const char* b) {
  return a[0] == b[0] && a[1] == b[1] && a[2] == b[2] && a[3] == b[3];
}

// The table at `phys` if it is mapped, of sane length and with a good checksum; else null.
const SdtHeader* table_at(uint64_t phys) {
  if (phys == 0 || !mapped(phys, sizeof(SdtHeader))) return nullptr;
  const auto* h = static_cast<const SdtHeader*>(direct_map(phys));
  if (h->length < sizeof(SdtHeader) || h->length > kMaxTableLength) return nullptr;
  if (!mapped(phys, h->length) || !checksum_ok(h, h->length)) return nullptr;
  return h;
}

const SdtHeader* find_table(const Rsdp* rsdp, const char* signature) {
  const bool use_xsdt = rsdp->revision >= 2 && rsdp->xsdt_address != 0;
  const SdtHeader* root = table_at(use_xsdt ? rsdp->xsdt_address : rsdp->rsdt_address);
  if (root == nullptr) return nullptr;
  const size_t entry_size = use_xsdt ? 8 : 4;
  const size_t n = (root->length - sizeof(SdtHeader)) / entry_size;
  const auto* entries = reinterpret_cast<const uint8_t*>(root) + sizeof(SdtHeader);
  for (size_t i = 0; i < n; ++i) {
    uint64_t phys = 0;
    __builtin_memcpy(&phys, entries + i * entry_size, entry_size);
    const SdtHeader* t = table_at(phys);
    if (t != nullptr && same4(t->signature, signature)) return t;
  }
  return nullptr;
}

// The table with `signature` reached from the RSDP at rsdp_phys, or null.
const SdtHeader* table_from_rsdp(uint64_t rsdp_phys, const char* signature) {
  if (rsdp_phys == 0 || !mapped(rsdp_phys, sizeof(Rsdp))) return nullptr;
  const auto* rsdp = static_cast<const Rsdp*>(direct_map(rsdp_phys));
  if (!same4(rsdp->signature, "RSD ") || !same4(rsdp->signature + 4, "PTR ") ||
      !checksum_ok(rsdp, 20)) {
    return nullptr;
  }
  return find_table(rsdp, signature);
}

const SdtHeader* madt_from_rsdp(uint64_t rsdp_phys) {
  const SdtHeader* madt = table_from_rsdp(rsdp_phys, "APIC");
  if (madt == nullptr || madt->length < kMadtEntriesOffset) return nullptr;
  return madt;
}

// Calls fn(apic_id) for every enabled Local APIC and Local x2APIC entry of the MADT, in table
// order; returns false when there is no valid MADT.
template <typename Fn>
bool for_each_enabled_cpu(uint64_t rsdp_phys, Fn fn) {
  const SdtHeader* madt = madt_from_rsdp(rsdp_phys);
  if (madt == nullptr) return false;
  const auto* p = reinterpret_cast<const uint8_t*>(madt);
  for (size_t off = kMadtEntriesOffset; off + 2 <= madt->length;) {
    const uint8_t type = p[off];
    const uint8_t len = p[off + 1];
    if (len < 2 || off + len > madt->length) break;
    uint32_t flags = 0;
    if (type == kMadtLocalApic && len >= 8) {
      __builtin_memcpy(&flags, p + off + 4, 4);
      if (flags & 1) fn(static_cast<uint32_t>(p[off + 3]));
    } else if (type == kMadtLocalX2Apic && len >= 16) {
      uint32_t id = 0;
      __builtin_memcpy(&id, p + off + 4, 4);
      __builtin_memcpy(&flags, p + off + 8, 4);
      if (flags & 1) fn(id);
    }
    off += len;
  }
  return true;
}

}  // namespace

unsigned acpi_count_cpus(uint64_t rsdp_phys) {
  unsigned cpus = 0;
  for_each_enabled_cpu(rsdp_phys, [&](uint32_t) { ++cpus; });
  return cpus;
}

unsigned acpi_cpu_apic_ids(uint64_t rsdp_phys, uint32_t* ids, unsigned max) {
  unsigned n = 0;
  for_each_enabled_cpu(rsdp_phys, [&](uint32_t id) {
    if (n < max) ids[n++] = id;
  });
  return n;
}

bool acpi_interrupt_info(uint64_t rsdp_phys, MadtInterruptInfo* out) {
  constexpr uint8_t kMadtIoApic = 1;
  constexpr uint32_t kFlagPcatCompat = 1;
  *out = MadtInterruptInfo{};
  const SdtHeader* madt = madt_from_rsdp(rsdp_phys);
  if (madt == nullptr) return false;
  const auto* p = reinterpret_cast<const uint8_t*>(madt);
  uint32_t flags = 0;
  __builtin_memcpy(&flags, p + sizeof(SdtHeader) + 4, 4);
  out->pcat_compat = (flags & kFlagPcatCompat) != 0;
  for (size_t off = kMadtEntriesOffset; off + 2 <= madt->length;) {
    const uint8_t type = p[off];
    const uint8_t len = p[off + 1];
    if (len < 2 || off + len > madt->length) break;
    // I/O APIC entry: type, length, id, reserved, u32 address, u32 global interrupt base.
    if (type == kMadtIoApic && len >= 12 && out->num_ioapics < MadtInterruptInfo::kMaxIoApics) {
      MadtInterruptInfo::IoApic& io = out->ioapics[out->num_ioapics++];
      io.id = p[off + 2];
      uint32_t addr = 0;
      __builtin_memcpy(&addr, p + off + 4, 4);
      __builtin_memcpy(&io.gsi_base, p + off + 8, 4);
      io.phys = addr;
    }
    off += len;
  }
  return true;
}

namespace {

// DMAR layout: the header, host address width (1 byte), flags (1), 10 reserved bytes, then the
// remapping structures, each starting with a 2-byte type and a 2-byte length.
constexpr size_t kDmarStructsOffset = sizeof(SdtHeader) + 12;
constexpr uint16_t kDmarDrhd = 0;
constexpr uint16_t kDmarRmrr = 1;
constexpr size_t kDrhdScopesOffset = 16;  // type, length, flags, size, segment, register base
constexpr size_t kRmrrScopesOffset = 24;  // type, length, reserved, segment, base, limit
constexpr uint8_t kDrhdIncludePciAll = 1;

uint16_t le16(const uint8_t* p) {
  uint16_t v = 0;
  __builtin_memcpy(&v, p, 2);
  return v;
}
uint64_t le64(const uint8_t* p) {
  uint64_t v = 0;
  __builtin_memcpy(&v, p, 8);
  return v;
}

// Parses the device scopes in [p, p + len) into scopes[], up to DmarInfo::kMaxScopes; sets
// *truncated when some did not fit.
size_t parse_scopes(const uint8_t* p, size_t len, DmarInfo::Scope* scopes, bool* truncated) {
  size_t n = 0;
  // A scope: type, length, 2 reserved, enumeration id, start bus, then 2-byte path entries.
  for (size_t off = 0; off + 6 <= len;) {
    const uint8_t slen = p[off + 1];
    if (slen < 6 || off + slen > len) break;
    if (n == DmarInfo::kMaxScopes) {
      *truncated = true;
      break;
    }
    DmarInfo::Scope& s = scopes[n++];
    s.type = p[off];
    s.enumeration_id = p[off + 4];
    s.start_bus = p[off + 5];
    const size_t steps = (slen - 6u) / 2;
    if (steps > DmarInfo::kMaxPath) *truncated = true;
    s.path_len = static_cast<uint8_t>(steps < DmarInfo::kMaxPath ? steps : DmarInfo::kMaxPath);
    for (size_t i = 0; i < s.path_len; ++i) {
      s.device[i] = p[off + 6 + 2 * i];
      s.function[i] = p[off + 7 + 2 * i];
    }
    off += slen;
  }
  return n;
}

}  // namespace

bool acpi_dmar_info(uint64_t rsdp_phys, DmarInfo* out) {
  *out = DmarInfo{};
  const SdtHeader* dmar = table_from_rsdp(rsdp_phys, "DMAR");
  if (dmar == nullptr || dmar->length < kDmarStructsOffset) return false;
  const auto* p = reinterpret_cast<const uint8_t*>(dmar);
  out->host_address_width = static_cast<uint8_t>(p[sizeof(SdtHeader)] + 1);
  out->flags = p[sizeof(SdtHeader) + 1];
  for (size_t off = kDmarStructsOffset; off + 4 <= dmar->length;) {
    const uint16_t type = le16(p + off);
    const uint16_t len = le16(p + off + 2);
    if (len < 4 || off + len > dmar->length) break;
    const uint8_t* s = p + off;
    if (type == kDmarDrhd && len >= kDrhdScopesOffset) {
      if (out->num_units == DmarInfo::kMaxUnits) {
        out->truncated = true;
      } else {
        DmarInfo::Unit& u = out->units[out->num_units++];
        u.include_pci_all = (s[4] & kDrhdIncludePciAll) != 0;
        // Size: 2^N pages of registers (0 in tables older than the field).
        u.size = uint64_t{4096} << (s[5] & 0xF);
        u.segment = le16(s + 6);
        u.base = le64(s + 8);
        u.num_scopes =
            parse_scopes(s + kDrhdScopesOffset, len - kDrhdScopesOffset, u.scopes, &out->truncated);
      }
    } else if (type == kDmarRmrr && len >= kRmrrScopesOffset) {
      if (out->num_rmrrs == DmarInfo::kMaxRmrrs) {
        out->truncated = true;
      } else {
        DmarInfo::Rmrr& r = out->rmrrs[out->num_rmrrs++];
        r.segment = le16(s + 6);
        r.base = le64(s + 8);
        r.limit = le64(s + 16);
        r.num_scopes =
            parse_scopes(s + kRmrrScopesOffset, len - kRmrrScopesOffset, r.scopes, &out->truncated);
      }
    }
    off += len;
  }
  return true;
}

}  // namespace x86
