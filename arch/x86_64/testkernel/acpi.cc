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

const SdtHeader* find_madt(const Rsdp* rsdp) {
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
    if (t != nullptr && same4(t->signature, "APIC")) return t;
  }
  return nullptr;
}

const SdtHeader* madt_from_rsdp(uint64_t rsdp_phys) {
  if (rsdp_phys == 0 || !mapped(rsdp_phys, sizeof(Rsdp))) return nullptr;
  const auto* rsdp = static_cast<const Rsdp*>(direct_map(rsdp_phys));
  if (!same4(rsdp->signature, "RSD ") || !same4(rsdp->signature + 4, "PTR ") ||
      !checksum_ok(rsdp, 20)) {
    return nullptr;
  }
  const SdtHeader* madt = find_madt(rsdp);
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

}  // namespace x86
