// The test kernel's IOMMU glue: see testkernel/iommu.h.
#include "testkernel/iommu.h"

#include "testkernel/devices.h"
#include "testkernel/iommu_arch.h"
#include "testkernel/kprintf.h"
#include "testkernel/kstring.h"

namespace {

constexpr size_t kMaxDevices = 32;
constexpr size_t kMaxMsiPages = 8;

struct Entry {
  uint16_t bdf;
  uint32_t device_id;
  IommuDomain* domain;
  bool attached;
};

constinit IommuDomain g_domains[kMaxDevices];
size_t g_num_domains = 0;
Entry g_entries[kMaxDevices];
size_t g_num_entries = 0;
IommuUnit* g_unit = nullptr;

void format_bdf(uint16_t bdf, char* out) {
  const char* hex = "0123456789abcdef";
  unsigned bus = bdf >> 8, dev = (bdf >> 3) & 31, fn = bdf & 7;
  out[0] = hex[bus >> 4];
  out[1] = hex[bus & 15];
  out[2] = ':';
  out[3] = hex[dev >> 4];
  out[4] = hex[dev & 15];
  out[5] = '.';
  out[6] = hex[fn];
  out[7] = '\0';
}

// Undoes a partial setup: detach, destroy, and ask the unit to stop translating.
void tear_down(IommuUnit* unit, const char* why, ErrorCode code) {
  for (size_t i = 0; i < g_num_entries; ++i) {
    if (g_entries[i].attached) g_entries[i].domain->detach(g_entries[i].device_id);
  }
  for (size_t i = 0; i < g_num_domains; ++i) {
    auto r = g_domains[i].destroy();
    if (!r.ok()) kprintf("iommu: domain %zu not freed (%s)\n", i + 1, error_code_name(r.code()));
  }
  g_num_entries = 0;
  g_num_domains = 0;
  bool off = unit->disable();
  kprintf("iommu: %s: %s failed (%s); %s\n", unit->name(), why, error_code_name(code),
          off ? "translation off, devices use the direct path"
              : "the driver cannot turn translation off: covered devices stay blocked");
}

}  // namespace

namespace iommu {

uint16_t bdf_of(const PciDevice* dev) {
  PciAddress a = dev->address();
  return static_cast<uint16_t>((unsigned{a.bus} << 8) | (unsigned{a.dev} << 3) | a.fn);
}

bool setup(const KernelEnv& env) {
  const char* cmdline =
      env.boot != nullptr && env.boot->cmdline != nullptr ? env.boot->cmdline : "";
  char value[8] = "";
  if (!kstr::cmdline_value(cmdline, "iommu", value, sizeof(value)) || !kstr::equal(value, "on")) {
    return false;
  }
  auto devs = devices_init(env);
  if (!devs.ok()) {
    kprintf("iommu: no PCI host bridge (%s); nothing to translate\n", error_code_name(devs.code()));
    return false;
  }
  IommuUnit* unit = arch::iommu_init(*env.boot);
  if (unit == nullptr) return false;  // The port said why.

  PhysAddr msi[kMaxMsiPages];
  size_t num_msi = arch::iommu_msi_pages(msi, kMaxMsiPages);
  if (num_msi > kMaxMsiPages) num_msi = kMaxMsiPages;
  IovaRange reserved[kMaxMsiPages];
  for (size_t i = 0; i < num_msi; ++i) reserved[i] = IovaRange{msi[i].value(), 4096};

  // A domain for every covered function (one per requester id), none attached yet: a failure
  // here leaves every device as iommu_init left it.
  PciHostBridge& pci = (*devs)->pci();
  for (size_t i = 0; i < pci.num_devices(); ++i) {
    const PciDevice& dev = pci.device(i);
    uint16_t bdf = bdf_of(&dev);
    uint32_t id = arch::iommu_device_id(bdf);
    char name[8];
    format_bdf(bdf, name);
    if (!unit->covers(id)) {
      kprintf("iommu: %s (%04x:%04x) not covered by the %s: direct path\n", name, dev.vendor_id(),
              dev.device_id(), unit->name());
      continue;
    }
    if (g_num_entries == kMaxDevices) {
      tear_down(unit, "more PCI functions than domains", ErrorCode::kNoMemory);
      return false;
    }
    IommuDomain* domain = nullptr;
    for (size_t k = 0; k < g_num_entries; ++k) {
      if (g_entries[k].device_id == id) domain = g_entries[k].domain;
    }
    if (domain == nullptr) {
      if (g_num_domains + 1 > unit->max_domains()) {
        tear_down(unit, "domain ids", ErrorCode::kNoMemory);
        return false;
      }
      domain = &g_domains[g_num_domains];
      IommuDomain::Config c;
      c.unit = unit;
      c.domain_id = static_cast<uint32_t>(g_num_domains + 1);
      c.platform = env.dma;
      c.reserved = reserved;
      c.num_reserved = num_msi;
      auto r = domain->init(c);
      if (!r.ok()) {
        tear_down(unit, "domain set-up", r.code());
        return false;
      }
      ++g_num_domains;
      for (size_t m = 0; m < num_msi; ++m) {
        auto f = domain->map_fixed(msi[m].value(), msi[m], 4096, kIommuWrite);
        if (!f.ok()) {
          tear_down(unit, "MSI page mapping", f.code());
          return false;
        }
      }
    }
    g_entries[g_num_entries++] = Entry{bdf, id, domain, false};
  }
  for (size_t i = 0; i < g_num_entries; ++i) {
    auto r = g_entries[i].domain->attach(g_entries[i].device_id);
    if (!r.ok()) {
      tear_down(unit, "attach", r.code());
      return false;
    }
    g_entries[i].attached = true;
  }
  g_unit = unit;

  kprintf("iommu: %s", unit->name());
  for (size_t i = 0; i < g_num_entries; ++i) {
    char name[8];
    format_bdf(g_entries[i].bdf, name);
    kprintf("%s %s -> domain %u", i == 0 ? ";" : ",", name, g_entries[i].domain->domain_id());
  }
  kprintf("%s\n", g_num_entries == 0 ? "; no device covered" : "");
  if (num_msi > 0) {
    kprintf("iommu: %zu MSI page(s) mapped at their own address in every domain\n", num_msi);
  }
  return true;
}

bool active() {
  return g_unit != nullptr;
}

IommuUnit* unit() {
  return g_unit;
}

uint32_t device_id_of(uint16_t bdf) {
  return arch::iommu_device_id(bdf);
}

IommuDomain* domain_of(uint16_t bdf) {
  if (g_unit == nullptr) return nullptr;
  for (size_t i = 0; i < g_num_entries; ++i) {
    if (g_entries[i].bdf == bdf) return g_entries[i].domain;
  }
  return nullptr;
}

DmaOp* dma_op_for(const PciDevice* dev) {
  IommuDomain* d = dev != nullptr ? domain_of(bdf_of(dev)) : nullptr;
  if (d != nullptr) return d;
  return kernel_env().dma;
}

size_t poll_faults(IommuFault* out, size_t max) {
  if (g_unit == nullptr) return 0;
  struct Sink {
    IommuFault* out;
    size_t max;
    size_t n;
  } sink{out, max, 0};
  g_unit->drain_faults(
      +[](void* ctx, const IommuFault& f) {
        auto* s = static_cast<Sink*>(ctx);
        char name[8] = "?";
        bool known = false;
        for (size_t i = 0; i < g_num_entries; ++i) {
          if (g_entries[i].device_id == f.device_id) {
            format_bdf(g_entries[i].bdf, name);
            known = true;
            break;
          }
        }
        if (known) {
          kprintf("iommu: fault: %s iova 0x%llx %s: %s\n", name,
                  static_cast<unsigned long long>(f.iova), f.write ? "write" : "read", f.reason);
        } else {
          kprintf("iommu: fault: device 0x%x iova 0x%llx %s: %s\n", f.device_id,
                  static_cast<unsigned long long>(f.iova), f.write ? "write" : "read", f.reason);
        }
        if (s->out != nullptr && s->n < s->max) s->out[s->n] = f;
        ++s->n;
      },
      &sink);
  return sink.n;
}

}  // namespace iommu
