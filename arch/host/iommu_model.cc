// HostIommu: see arch/host/iommu_model.h.
#include "arch/host/iommu_model.h"

#include "dmakit/support/assert.h"

namespace {

uint64_t table_entry(uint64_t table) {
  return (table & HostIommu::kAddrMask) | HostIommu::kValid | HostIommu::kTable;
}
uint64_t perm_bits(unsigned perm) {
  return ((perm & kIommuRead) != 0 ? HostIommu::kRead : 0) |
         ((perm & kIommuWrite) != 0 ? HostIommu::kWrite : 0);
}
uint64_t page_entry(uint64_t page, unsigned perm) {
  return (page & HostIommu::kAddrMask) | HostIommu::kValid | perm_bits(perm);
}
// A hardware without write-only entries: write implies read.
uint64_t page_entry_no_write_only(uint64_t page, unsigned perm) {
  if ((perm & kIommuWrite) != 0) perm |= kIommuRead;
  return page_entry(page, perm);
}
bool entry_valid(uint64_t e) {
  return (e & HostIommu::kValid) != 0;
}
uint64_t entry_addr(uint64_t e) {
  return e & HostIommu::kAddrMask;
}

}  // namespace

HostIommu::HostIommu(HostPlatform* platform, const Options& opts)
    : platform_(platform), opts_(opts), tlb_(opts.iotlb_entries) {
  KASSERT(opts.iotlb_entries > 0 && (opts.iotlb_entries & (opts.iotlb_entries - 1)) == 0,
          "HostIommu: iotlb_entries must be a power of two");
  format_.levels = opts.levels;
  format_.coherent_walk = opts.coherent_walk;
  format_.table_entry = &table_entry;
  format_.page_entry = opts.write_only ? &page_entry : &page_entry_no_write_only;
  format_.entry_valid = &entry_valid;
  format_.entry_addr = &entry_addr;
}

Result<void> HostIommu::attach(uint32_t device_id, uint32_t domain, PhysAddr root) {
  if (!covers(device_id) || domain == 0 || domain > opts_.max_domains) {
    return ErrorCode::kInvalidArgument;
  }
  support::Guard guard{&lock_};
  contexts_[device_id] = Context{domain, root.value()};
  return support::ok();
}

void HostIommu::detach(uint32_t device_id) {
  support::Guard guard{&lock_};
  // Translations of the domain stay cached for its other devices, as on hardware that tags the
  // IOTLB by domain.
  contexts_.erase(device_id);
}

void HostIommu::invalidate(uint32_t domain, uint64_t iova, uint64_t size) {
  support::Guard guard{&lock_};
  ++invalidations_;
  uint64_t first = iova >> 12;
  uint64_t pages = (size + 4095) >> 12;
  if (size == 0 || pages >= tlb_.size()) {
    for (TlbEntry& e : tlb_) {
      if (e.valid && e.domain == domain &&
          (size == 0 || (e.page >= first && e.page - first < pages))) {
        e.valid = false;
      }
    }
    return;
  }
  for (uint64_t p = first; p < first + pages; ++p) {
    TlbEntry& e = tlb_[tlb_index(domain, p)];
    if (e.valid && e.domain == domain && e.page == p) e.valid = false;
  }
}

void HostIommu::fault(uint32_t device_id, uint64_t iova, bool write, const char* reason) {
  faults_.push_back(IommuFault{device_id, iova, write, reason});
}

Result<uint64_t> HostIommu::device_access(uint32_t device_id, uint64_t iova, bool write) {
  support::Guard guard{&lock_};
  auto it = contexts_.find(device_id);
  if (it == contexts_.end()) {
    fault(device_id, iova, write, "no context");
    return ErrorCode::kNotFound;
  }
  const Context ctx = it->second;
  uint64_t page = iova >> 12;
  uint64_t need = write ? kWrite : kRead;
  TlbEntry& slot = tlb_[tlb_index(ctx.domain, page)];
  if (slot.valid && slot.domain == ctx.domain && slot.page == page) {
    if (slot.perm == 0) {  // A cached walk that found nothing (caching mode).
      fault(device_id, iova, write, "not mapped");
      return ErrorCode::kNotFound;
    }
    if ((slot.perm & need) == 0) {
      fault(device_id, iova, write, "permission");
      return ErrorCode::kInvalidArgument;
    }
    return slot.pa | (iova & 4095);
  }
  if (opts_.iova_bits < 64 && (iova >> opts_.iova_bits) != 0) {
    fault(device_id, iova, write, "address size");
    return ErrorCode::kNotFound;
  }
  uint64_t table = ctx.root;
  uint64_t e = 0;
  for (unsigned level = 0; level < opts_.levels; ++level) {
    unsigned shift = 12 + (9 * (opts_.levels - 1 - level));
    const auto* t = reinterpret_cast<const uint64_t*>(platform_->phys_to_virt(table));
    e = __atomic_load_n(&t[(iova >> shift) & 511], __ATOMIC_ACQUIRE);
    bool last = level + 1 == opts_.levels;
    if ((e & kValid) == 0 || ((e & kTable) != 0) == last) {
      if (opts_.caching_mode) slot = TlbEntry{true, ctx.domain, page, 0, 0};
      fault(device_id, iova, write, "not mapped");
      return ErrorCode::kNotFound;
    }
    table = e & kAddrMask;
  }
  slot = TlbEntry{true, ctx.domain, page, e & kAddrMask, e & (kRead | kWrite)};
  if ((e & need) == 0) {
    fault(device_id, iova, write, "permission");
    return ErrorCode::kInvalidArgument;
  }
  return (e & kAddrMask) | (iova & 4095);
}

Result<void> HostIommu::device_write(uint32_t device_id, uint64_t iova, const void* src, size_t len,
                                     bool coherent) {
  HostDevice dev(platform_, ~0ull, coherent);
  const auto* s = static_cast<const uint8_t*>(src);
  while (len > 0) {
    size_t chunk = std::min<size_t>(len, 4096 - (iova & 4095));
    TRY_ASSIGN(uint64_t pa, device_access(device_id, iova, /*write=*/true));
    dev.write(DmaAddr(pa), s, chunk);
    iova += chunk;
    s += chunk;
    len -= chunk;
  }
  return support::ok();
}

Result<void> HostIommu::device_read(uint32_t device_id, uint64_t iova, void* dst, size_t len,
                                    bool coherent) {
  HostDevice dev(platform_, ~0ull, coherent);
  auto* d = static_cast<uint8_t*>(dst);
  while (len > 0) {
    size_t chunk = std::min<size_t>(len, 4096 - (iova & 4095));
    TRY_ASSIGN(uint64_t pa, device_access(device_id, iova, /*write=*/false));
    dev.read(DmaAddr(pa), d, chunk);
    iova += chunk;
    d += chunk;
    len -= chunk;
  }
  return support::ok();
}

size_t HostIommu::drain_faults(void (*sink)(void* ctx, const IommuFault& fault), void* ctx) {
  std::vector<IommuFault> taken;
  {
    support::Guard guard{&lock_};
    taken.swap(faults_);
  }
  for (const IommuFault& f : taken) sink(ctx, f);
  return taken.size();
}

uint64_t HostIommu::invalidations() const {
  support::Guard guard{&lock_};
  return invalidations_;
}

size_t HostIommu::iotlb_valid_entries() const {
  support::Guard guard{&lock_};
  size_t n = 0;
  for (const TlbEntry& e : tlb_) n += e.valid ? 1 : 0;
  return n;
}

size_t HostIommu::pending_faults() const {
  support::Guard guard{&lock_};
  return faults_.size();
}
