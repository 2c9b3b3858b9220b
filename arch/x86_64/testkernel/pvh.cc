#include "arch/x86_64/testkernel/pvh.h"

#include "arch/x86_64/testkernel/serial.h"

namespace x86 {
namespace {

constexpr uint32_t kStartMagic = 0x336E'C578;
constexpr uint64_t kIdentityLimit = 1ull << 30;  // boot.S identity-maps [0, 1 GiB).
constexpr size_t kMaxCmdline = 4096;

struct StartInfo {
  uint32_t magic;
  uint32_t version;
  uint32_t flags;
  uint32_t nr_modules;
  uint64_t modlist_paddr;
  uint64_t cmdline_paddr;
  uint64_t rsdp_paddr;
  uint64_t memmap_paddr;  // version >= 1
  uint32_t memmap_entries;
  uint32_t reserved;
};
static_assert(sizeof(StartInfo) == 56, "hvm_start_info layout");
static_assert(__builtin_offsetof(StartInfo, cmdline_paddr) == 24, "hvm_start_info layout");
static_assert(__builtin_offsetof(StartInfo, memmap_paddr) == 40, "hvm_start_info layout");
static_assert(__builtin_offsetof(StartInfo, memmap_entries) == 48, "hvm_start_info layout");

void check_identity(uint64_t phys, uint64_t bytes, const char* what) {
  if (phys >= kIdentityLimit || bytes > kIdentityLimit - phys) {
    boot_panic(what);
  }
}

template <typename T>
const T* identity(uint64_t phys) {
  return reinterpret_cast<const T*>(static_cast<uintptr_t>(phys));
}

}  // namespace

void read_pvh_start_info(uint64_t start_info_phys, PvhInfo* out) {
  check_identity(start_info_phys, sizeof(StartInfo), "PVH start info above 1 GiB");
  const StartInfo* si = identity<StartInfo>(start_info_phys);
  if (si->magic != kStartMagic) {
    boot_panic("PVH start info has a bad magic (not booted through a PVH loader?)");
  }
  if (si->version < 1 || si->memmap_entries == 0 || si->memmap_paddr == 0) {
    boot_panic("PVH start info has no memory map (version 0 or memmap_entries == 0)");
  }
  if (si->memmap_entries > PvhInfo::kMaxEntries) {
    boot_panic("PVH memory map has more entries than PvhInfo::kMaxEntries");
  }
  out->start_info_phys = start_info_phys;
  out->version = si->version;
  out->memmap_phys = si->memmap_paddr;
  out->num_memmap = si->memmap_entries;
  check_identity(si->memmap_paddr, out->num_memmap * sizeof(MemmapEntry),
                 "PVH memory map above 1 GiB");
  const MemmapEntry* mm = identity<MemmapEntry>(si->memmap_paddr);
  for (size_t i = 0; i < out->num_memmap; ++i) {
    out->memmap[i] = mm[i];
  }
  out->rsdp_phys = si->rsdp_paddr;
  out->cmdline_phys = si->cmdline_paddr;
  out->cmdline_len = 0;
  if (si->cmdline_paddr != 0) {
    check_identity(si->cmdline_paddr, kMaxCmdline, "PVH command line above 1 GiB");
    const char* s = identity<char>(si->cmdline_paddr);
    while (out->cmdline_len < kMaxCmdline && s[out->cmdline_len] != '\0') {
      ++out->cmdline_len;
    }
    if (out->cmdline_len == kMaxCmdline) {
      boot_panic("PVH command line longer than 4 KiB or not terminated");
    }
  }
}

}  // namespace x86
